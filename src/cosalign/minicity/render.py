"""MiniCity rendering: a scene's surfaces drawn in a :class:`~cosalign.minicity.styles.Style`
(colours or textures per material, shading, sky, fog, camera effects), with its label map."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from cosalign.minicity.scene import EGO_VEHICLE, SKY, Camera, Surface, rasterize
from cosalign.minicity.styles import PALETTES, TEXTURES, Style

NOISE_TEXTURES = 6  # procedural textures "noise0" ... "noise5" of the "noise" texture set


def _noise(k: int, n: int = 512) -> np.ndarray:
    """Texture number ``k`` of the noise set: octaves of smoothly upsampled Gaussian noise, with
    a per-texture spectrum (a fixed function of k, no photograph)."""
    rng = np.random.default_rng([7, k])
    tex = np.zeros((n, n), np.float32)
    for octave in range(2, 8):
        cells = 2**octave
        layer = rng.normal(size=(cells, cells)).astype(np.float32)
        tex += rng.uniform(0.2, 1.0) * cv2.resize(layer, (n, n), interpolation=cv2.INTER_CUBIC)
    return tex


@cache
def _mipmaps(name: str) -> np.ndarray:
    """A texture (a scikit-image photograph, or ``noiseK``) as (5, 512, 512) float32 levels,
    each blurred twice as much, normalized to mean 0 and std 1."""
    if name.startswith("noise"):
        tex = _noise(int(name[len("noise"):]))
    else:
        import skimage.data

        tex = getattr(skimage.data, name)().astype(np.float32)
    tex = (tex - tex.mean()) / tex.std()
    return np.stack([tex] + [cv2.GaussianBlur(tex, (0, 0), 2.0**k) for k in range(1, 5)])


def _metric_coords(cam: Camera, surf: Surface, u: np.ndarray, v: np.ndarray):
    """Metric in-plane coordinates (a, b) and depth Z of pixels (u, v) on a surface."""
    if surf.plane[0] == "ground":
        z = cam.f * cam.cam_h / np.maximum(v - cam.horizon, 1e-3)
        return (u - cam.vx) * z / cam.f, z, z
    if surf.plane[0] == "x":
        z = cam.f * surf.plane[1] / np.where(np.abs(u - cam.vx) < 1e-3, 1e-3, u - cam.vx)
        z = np.abs(z)
        return z, cam.cam_h - (v - cam.horizon) * z / cam.f, z
    z = np.full_like(u, surf.plane[1])
    return (u - cam.vx) * z / cam.f, cam.cam_h - (v - cam.horizon) * z / cam.f, z


def _texture(name: str, size_m: float, a, b, z, f: float) -> np.ndarray:
    levels = _mipmaps(name)
    px_per_m = levels.shape[1] / size_m
    footprint = px_per_m * z / f  # texture pixels per image pixel
    lvl = np.clip(np.log2(np.maximum(footprint, 1.0)), 0, 4).astype(np.int64)
    n = levels.shape[1]
    return levels[lvl, (b * px_per_m).astype(np.int64) % n, (a * px_per_m).astype(np.int64) % n]


def _surface_colors(cam, surf: Surface, u, v, style: Style, pal) -> tuple[np.ndarray, np.ndarray]:
    a, b, z = _metric_coords(cam, surf, u, v)
    col = np.array(pal[surf.material], np.float32)[None] * surf.tint[None].astype(np.float32)
    col = np.repeat(col, len(u), 0)
    if surf.material in ("facade", "front"):
        a_, b_ = a % 2.6, b % 3.2
        win = (a_ > 0.6) & (a_ < 2.0) & (b_ > 1.0) & (b_ < 2.4) & (b > 0.8)
        col[win] = np.array(pal["window"], np.float32)
    if surf.material == "road":
        mark = (np.abs((a % 3.5) - 1.75) > 1.67) & ((z % 9.0) < 3.0)
        col[mark] = np.array(pal["marking"], np.float32)
    if style.texture > 0 and style.texture_set == "noise":
        k = sorted(PALETTES["game"]).index(surf.material) % NOISE_TEXTURES
        tex = _texture(f"noise{k}", 1.0 + k / 2, a, b, z, cam.f)
        col *= np.clip(1 + 0.5 * style.texture * tex, 0.15, 2.5)[:, None]
    elif style.texture > 0 and surf.material in TEXTURES:
        name, size = TEXTURES[surf.material]
        tex = _texture(name, size, a, b, z, cam.f)
        col *= np.clip(1 + 0.5 * style.texture * tex, 0.15, 2.5)[:, None]
    # shading: the sun is on the right, so left-side facades are darker; camera-facing faces
    # are a little darker; upright surfaces darken towards the ground
    shade = np.float32(1.0)
    if surf.plane[0] == "x" and surf.plane[1] < 0:
        shade = 1 - style.shading
    if surf.plane[0] == "z":
        shade = 1 - style.shading / 2
    if surf.plane[0] != "ground":
        shade = shade * (1 - style.shading * np.exp(-np.maximum(b, 0) / 1.5))
    return col * np.asarray(shade, np.float32).reshape(-1, 1), z


def _sky(cam: Camera, style: Style, pal, rng: np.random.Generator) -> np.ndarray:
    t = np.clip(np.arange(cam.height) / max(cam.horizon, 1), 0, 1)[:, None, None] ** 1.5
    top, hor = np.array(pal["sky_top"], np.float32), np.array(pal["sky_horizon"], np.float32)
    sky = np.broadcast_to(top * (1 - t) + hor * t, (cam.height, cam.width, 3)).copy()
    if style.clouds > 0:
        field = cv2.resize(rng.normal(size=(6, 12)).astype(np.float32), (cam.width, cam.height),
                           interpolation=cv2.INTER_CUBIC)
        field += 0.3 * cv2.resize(rng.normal(size=(24, 48)).astype(np.float32),
                                  (cam.width, cam.height), interpolation=cv2.INTER_CUBIC)
        cover = np.clip(field - 1 + 2 * style.clouds * 0.8, 0, 1)[..., None]
        sky = sky * (1 - cover) + np.float32(225) * cover
    return sky


def render(cam: Camera, surfaces: list[Surface], style: Style,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> (H, W, 3) uint8 RGB image and (H, W) uint8 Cityscapes label ids."""
    pal = PALETTES[style.palette] if isinstance(style.palette, str) else dict(style.palette)
    idx = rasterize(cam, surfaces)  # (H, W)
    label_of = np.array([s.label for s in surfaces] + [SKY], dtype=np.uint8)
    label = label_of[idx]  # idx -1 -> SKY
    img = _sky(cam, style, pal, rng)
    depth = np.full((cam.height, cam.width), 1e4, np.float32)
    flat = idx.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(-1, len(surfaces) + 1))
    img_flat, depth_flat = img.reshape(-1, 3), depth.ravel()
    for i, surf in enumerate(surfaces):
        pix = order[bounds[i + 1] : bounds[i + 2]]
        if len(pix) == 0:
            continue
        v, u = np.divmod(pix, cam.width)
        img_flat[pix], depth_flat[pix] = _surface_colors(cam, surf, u + 0.5, v + 0.5, style, pal)
    if style.ego_vehicle:
        hood = np.zeros_like(label)
        cv2.ellipse(hood, (cam.width // 2, cam.height + int(cam.height * 0.02)),
                    (int(cam.width * 0.75), int(cam.height * rng.uniform(0.08, 0.12))), 0, 180,
                    360, 1, -1)
        label[hood > 0] = EGO_VEHICLE
        rows = np.arange(cam.height, dtype=np.float32)[:, None, None] / cam.height
        img = np.where(hood[..., None] > 0, 40 + 60 * (rows - 0.85) * np.ones(3, np.float32), img)
    return _camera(img, depth, style, rng), label


def _camera(img: np.ndarray, depth: np.ndarray, style: Style, rng) -> np.ndarray:
    """Fog, exposure, colour cast, saturation, vignette, gamma, blur and noise."""
    if style.fog > 0:
        t = np.exp(-style.fog * depth)[..., None]
        img = img * t + np.array(style.fog_color, np.float32) * (1 - t)
    img = img * style.exposure * np.array(style.cast, np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + style.saturation * (img - grey)
    if style.vignette > 0:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        img = img * (1 - style.vignette * r2 / 2)[..., None]
    img = 255 * (np.clip(img, 0, 255) / 255) ** style.gamma
    if style.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), style.blur)
    if style.noise > 0:
        img = img + rng.normal(0, style.noise, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
