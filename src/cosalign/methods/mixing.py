"""ClassMix and the strong augmentation of self-training (DACS, Tranheden et al., WACV 2021;
DAFormer, Hoyer et al., CVPR 2022; MIC, Hoyer et al., CVPR 2023), as their code computes it:
DACS's ``utils/transformsgpu.py`` and DAFormer's ``mmseg/models/utils/dacs_transforms.py``, whose
colour jitter is kornia 0.5.8's ``ColorJitter(s, s, s, s)`` and whose blur is kornia's
``GaussianBlur2d`` (docs/METHOD.md section 14 has the table against them).

Every random draw comes from the global torch generator on the CPU (saved in checkpoints), so
a resumed run draws the same; tensors are made on the inputs' device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.data.transforms import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB


def class_mix_masks(labels: Tensor, per: str = "image") -> Tensor:
    """(B, H, W) bool: for each image, the pixels of ceil(n / 2) of the n classes present in
    its source labels (the ignore value counts as a class, as in DACS), chosen at random; with
    ``per="batch"`` the n classes are those of the whole batch (DAFormer), drawn anew for each
    image."""
    masks = []
    batch_classes = torch.unique(labels) if per == "batch" else None
    for y in labels:
        classes = torch.unique(y) if batch_classes is None else batch_classes
        n = len(classes)
        chosen = classes[torch.randperm(n)[: (n + n % 2) // 2].to(classes.device)]
        masks.append(torch.isin(y, chosen))
    return torch.stack(masks)


def to_unit_rgb(x: Tensor, normalization: str) -> Tensor:
    """(B, 3, H, W) network input -> RGB in [0, 1] (inverse of data.transforms.normalize)."""
    if normalization == "caffe":
        mean = x.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
        return ((x + mean) / 255.0).flip(1)
    mean, std = (x.new_tensor(a).view(1, 3, 1, 1) for a in (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB))
    return x * std + mean


def from_unit_rgb(rgb: Tensor, normalization: str) -> Tensor:
    if normalization == "caffe":
        return rgb.flip(1) * 255.0 - rgb.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    mean, std = (rgb.new_tensor(a).view(1, 3, 1, 1) for a in (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB))
    return (rgb - mean) / std


# -- colour jitter: kornia 0.5.8's ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)

class JitterDraws(NamedTuple):
    """One ColorJitter call's draws for n images: factors (n,) each, and one order of the four
    operations (0 brightness, 1 contrast, 2 saturation, 3 hue) for the whole call."""

    brightness: Tensor  # U(max(0, 1 - s), min(2, 1 + s)); applied as x + (f - 1)
    contrast: Tensor  # U(max(0, 1 - s), 1 + s); applied as x * f
    saturation: Tensor  # U(max(0, 1 - s), 1 + s); HSV saturation * f
    hue: Tensor  # U(max(-0.5, -s), min(0.5, s)) turns; HSV hue + 2 pi f
    order: Tensor  # (4,) a permutation


def jitter_draws(n: int, s: float) -> JitterDraws:
    """Draws in kornia 0.5.8's order: brightness, contrast, hue, saturation, then the order."""

    def uniform(low: float, high: float) -> Tensor:
        return low + torch.rand(n) * (high - low)

    b = uniform(max(0.0, 1 - s), min(2.0, 1 + s))
    c = uniform(max(0.0, 1 - s), 1 + s)
    h = uniform(max(-0.5, -s), min(0.5, s))
    sat = uniform(max(0.0, 1 - s), 1 + s)
    return JitterDraws(b, c, sat, h, torch.randperm(4))


def rgb_to_hsv(rgb: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with H in [0, 2 pi), S = (max - min) / (max + eps),
    V = max; the hue from the first channel (R, G, B) that holds the maximum."""
    r, g, b = rgb.unbind(1)
    v, argmax = rgb.max(1)  # first maximum
    delta = v - rgb.min(1).values
    s = delta / (v + eps)
    d = torch.where(delta == 0, torch.ones_like(delta), delta)
    h = torch.where(argmax == 0, (g - b) / d,
                    torch.where(argmax == 1, 2 + (b - r) / d, 4 + (r - g) / d))
    return torch.stack([2 * math.pi * ((h / 6) % 1.0), s, v], 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv` (any real hue, taken modulo 2 pi)."""
    h, s, v = hsv.unbind(1)
    h6 = (h / (2 * math.pi) * 6) % 6
    sector = h6.floor().long() % 6
    f = h6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = torch.stack([torch.stack(c, 1) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1)
    return table.gather(1, sector[:, None, None].expand(-1, 1, 3, -1, -1)).squeeze(1)


def colour_jitter(rgb: Tensor, d: JitterDraws) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] jittered with the draws ``d`` (B images), each operation
    clamped to [0, 1] as kornia does (saturation in HSV)."""
    f = {k: getattr(d, k).to(rgb.device, rgb.dtype).view(-1, 1, 1)
         for k in ("brightness", "contrast", "saturation", "hue")}
    out = rgb
    for op in d.order.tolist():
        if op == 0:
            out = (out + f["brightness"][:, None] - 1).clamp(0, 1)
        elif op == 1:
            out = (out * f["contrast"][:, None]).clamp(0, 1)
        elif op == 2:
            h, s, v = rgb_to_hsv(out).unbind(1)
            out = hsv_to_rgb(torch.stack([h, (s * f["saturation"]).clamp(0, 1), v], 1))
        else:
            h, s, v = rgb_to_hsv(out).unbind(1)
            h = torch.fmod(h + 2 * math.pi * f["hue"], 2 * math.pi)
            out = hsv_to_rgb(torch.stack([h, s, v], 1))
    return out


# -- Gaussian blur: kornia's GaussianBlur2d, reflect padding

def blur_kernel_size(n: int) -> int:
    """Taps along an axis of n pixels: floor(ceil(n / 10) - 0.5 + ceil(n / 10) mod 2), i.e.
    ceil(n / 10) when odd, one less when even (51 at 512, 5 at 60)."""
    c = math.ceil(0.1 * n)
    return int(math.floor(c - 0.5 + c % 2))


def _kernel(k: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(k, dtype=like.dtype, device=like.device) - k // 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def gaussian_blur(rgb: Tensor, sigmas: Tensor) -> Tensor:
    """(B, C, H, W) each image blurred with its own sigma (``sigmas`` (B,)), a separable kernel
    of :func:`blur_kernel_size` (H) rows and (W) columns, reflect-padded."""
    kh, kw = blur_kernel_size(rgb.shape[-2]), blur_kernel_size(rgb.shape[-1])
    out = []
    c = rgb.shape[1]
    for img, sigma in zip(rgb, sigmas.tolist()):
        x = F.pad(img[None], (kw // 2, kw // 2, 0, 0), mode="reflect")
        x = F.conv2d(x, _kernel(kw, sigma, rgb).view(1, 1, 1, kw).expand(c, 1, 1, kw), groups=c)
        x = F.pad(x, (0, 0, kh // 2, kh // 2), mode="reflect")
        out.append(F.conv2d(x, _kernel(kh, sigma, rgb).view(1, 1, kh, 1).expand(c, 1, kh, 1),
                            groups=c))
    return torch.cat(out)


def _sigma() -> Tensor:
    return 0.15 + torch.rand(1)  # U(0.15, 1.15)


def augment_mixed(rgb: Tensor, s: float, jitter_p: float, blur_p: float) -> Tensor:
    """DACS's and DAFormer's strong augmentation of the mixed images (B, 3, H, W) RGB in
    [0, 1]: one draw per step decides jitter (applied when u > 1 - ``jitter_p``) and one blur
    (u > 1 - ``blur_p``) for the whole batch; then image by image (their ``strong_transform``
    is called per image) its own jitter draws, its own order, and its own sigma."""
    jitter_on = float(torch.rand(())) > 1 - jitter_p
    blur_on = float(torch.rand(())) > 1 - blur_p
    out = []
    for img in rgb.split(1):
        if jitter_on:
            img = colour_jitter(img, jitter_draws(1, s))
        if blur_on:
            img = gaussian_blur(img, _sigma())
        out.append(img)
    return torch.cat(out)


def augment_masked(rgb: Tensor, s: float, jitter_p: float, blur_p: float) -> Tensor:
    """MIC's augmentation of the target batch before masking (``mask_mode='separatetrgaug'``):
    the same two batch-level decisions, then one ColorJitter call for the batch (a factor per
    image, one order) and one sigma for the batch."""
    jitter_on = float(torch.rand(())) > 1 - jitter_p
    blur_on = float(torch.rand(())) > 1 - blur_p
    if jitter_on:
        rgb = colour_jitter(rgb, jitter_draws(rgb.shape[0], s))
    if blur_on:
        rgb = gaussian_blur(rgb, _sigma().expand(rgb.shape[0]))
    return rgb


def random_crop_like(x: Tensor, y: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The same random (h, w) window of images (B, C, H, W) and labels (B, H, W); the input
    itself when it already has that size (DACS crops source and target alike, so there it
    never crops; MiniCity's source images are taller than its target images)."""
    h, w = size
    if x.shape[-2:] == (h, w):
        return x, y
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"self-training mixes source into target images: the source batch "
                         f"({x.shape[-1]}x{x.shape[-2]}) must be at least as large as the target "
                         f"batch ({w}x{h}); set data.source.crop or data.target.size")
    top = int(torch.randint(0, x.shape[-2] - h + 1, ()))
    left = int(torch.randint(0, x.shape[-1] - w + 1, ()))
    return x[..., top:top + h, left:left + w], y[..., top:top + h, left:left + w]
