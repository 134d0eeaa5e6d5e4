"""MiniCity rendering styles: how a scene's surfaces look in each domain.

The "game" style (the source, like GTA5) paints flat, clean colours with light per-face shading.
The "photo" style (the target, like Cityscapes) textures every surface with real photographs that
ship with scikit-image (gravel roads, brick sidewalks and facades, grass and foliage), mip-mapped
by distance, with a cloudy sky, duller colours, a colour cast, vignetting, lens blur, camera noise
and an ego-vehicle hood. A :class:`Style` is plain data, so other target domains (fog, dusk) are
one constructor call away; the pretraining set (minicity/randomized.py) draws a random one per
image, with a palette of its own and procedural noise in place of the photographs.
"""

from __future__ import annotations

from dataclasses import dataclass

# Base colours (RGB) of each material in the two palettes.
PALETTES: dict[str, dict[str, tuple[int, int, int]]] = {
    "game": {
        "road": (88, 84, 92), "sidewalk": (178, 172, 160), "terrain": (118, 178, 70),
        "facade": (196, 176, 146), "front": (196, 176, 146), "foliage": (56, 138, 46),
        "trunk": (96, 70, 44), "pole": (132, 132, 138), "sign": (236, 206, 30),
        "car_body": (128, 120, 132), "car_window": (40, 52, 64), "wheel": (26, 26, 26),
        "cloth": (104, 92, 124), "skin": (226, 182, 150), "window": (62, 84, 116),
        "marking": (236, 236, 236), "sky_top": (88, 150, 236), "sky_horizon": (182, 212, 246),
    },
    "photo": {  # the same hues, duller and darker, as photographs are
        "road": (82, 80, 86), "sidewalk": (162, 154, 144), "terrain": (108, 150, 64),
        "facade": (184, 166, 140), "front": (184, 166, 140), "foliage": (50, 108, 38),
        "trunk": (82, 62, 44), "pole": (120, 120, 126), "sign": (222, 196, 44),
        "car_body": (120, 114, 124), "car_window": (36, 44, 54), "wheel": (24, 24, 24),
        "cloth": (92, 84, 108), "skin": (214, 172, 142), "window": (78, 92, 114),
        "marking": (214, 214, 208), "sky_top": (102, 150, 214), "sky_horizon": (196, 212, 232),
    },
}

# Which bundled photograph textures a material, and its size in metres (photo style).
TEXTURES: dict[str, tuple[str, float]] = {
    "road": ("gravel", 1.5), "sidewalk": ("brick", 2.5), "terrain": ("grass", 1.2),
    "facade": ("brick", 3.0), "front": ("brick", 3.0), "foliage": ("grass", 0.8),
    "trunk": ("gravel", 0.6), "cloth": ("gravel", 0.4),
}


@dataclass(frozen=True)
class Style:
    """How a domain looks. All fields are plain numbers so new domains are easy to make."""

    palette: str | tuple = "game"  # a name in PALETTES, or ((material, (r, g, b)), ...)
    texture: float = 0.0  # contrast of textures on surfaces (0 = flat colour)
    texture_set: str = "photo"  # "photo": TEXTURES; "noise": procedural noise on every material
    shading: float = 0.15  # strength of per-face and height shading
    clouds: float = 0.0  # cloud cover of the sky, 0-1
    exposure: float = 1.0
    gamma: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB multipliers
    saturation: float = 1.0
    vignette: float = 0.0
    blur: float = 0.0  # Gaussian sigma in pixels
    noise: float = 0.0  # camera noise std on the 0-255 scale
    fog: float = 0.0  # extinction per metre
    fog_color: tuple[int, int, int] = (200, 202, 206)
    ego_vehicle: bool = False


GAME = Style()
PHOTO = Style(palette="photo", texture=0.9, shading=0.3, clouds=0.6, exposure=0.92, gamma=1.1,
              cast=(1.06, 1.0, 0.9), saturation=0.75, vignette=0.35, blur=0.7, noise=5.0,
              ego_vehicle=True)
FOG = Style(**{**PHOTO.__dict__, "fog": 0.02, "clouds": 1.0})
DUSK = Style(**{**PHOTO.__dict__, "exposure": 0.55, "cast": (1.15, 0.95, 0.8), "noise": 9.0})
STYLES: dict[str, Style] = {"game": GAME, "photo": PHOTO, "fog": FOG, "dusk": DUSK}
TARGET_STYLES = ("photo", "fog", "dusk")  # the targets `cosalign data make` writes
