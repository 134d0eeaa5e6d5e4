"""ClassMix and the strong augmentation of the mixed image (DACS, Tranheden et al., WACV 2021;
as refined by DAFormer, Hoyer et al., CVPR 2022). Every random draw comes from the global torch
generator on the CPU (saved in checkpoints), so a resumed run draws the same; tensors are made
on the inputs' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.data.transforms import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB


def class_mix_masks(labels: Tensor, per: str = "image") -> Tensor:
    """(B, H, W) bool: for each image, the pixels of ceil(n / 2) of the n classes present in
    its source labels (the ignore value counts as a class, as in DACS), chosen at random; with
    ``per="batch"`` the classes are drawn once from those of the whole batch (DAFormer)."""
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


def _gray(rgb: Tensor) -> Tensor:
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)


def colour_jitter(rgb: Tensor, strength: float, p: float) -> Tensor:
    """Per image with probability ``p``: brightness, contrast and saturation factors drawn from
    U(1 - s, 1 + s) and a hue rotation of U(-s, s) turns of the colour circle (in YIQ space),
    in that order, clamped to [0, 1]; as torchvision's ColorJitter(s, s, s, s)."""
    b = rgb.shape[0]
    draws = torch.rand(b, 5)  # apply?, brightness, contrast, saturation, hue
    on = (draws[:, 0] < p).to(rgb.device).view(b, 1, 1, 1)
    f = (1 - strength + 2 * strength * draws[:, 1:4]).to(rgb.device, rgb.dtype)
    out = (rgb * f[:, 0].view(b, 1, 1, 1)).clamp(0, 1)
    mean = _gray(out).mean((1, 2, 3), keepdim=True)
    out = ((out - mean) * f[:, 1].view(b, 1, 1, 1) + mean).clamp(0, 1)
    gray = _gray(out)
    out = ((out - gray) * f[:, 2].view(b, 1, 1, 1) + gray).clamp(0, 1)
    theta = (2 * draws[:, 4] - 1) * strength * 2 * math.pi
    to_yiq = rgb.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                             [0.211, -0.523, 0.312]])
    cos, sin = torch.cos(theta).to(rgb), torch.sin(theta).to(rgb)
    rot = torch.zeros(b, 3, 3, dtype=rgb.dtype, device=rgb.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    out = torch.einsum("bij,bjhw->bihw", m, out).clamp(0, 1)
    return torch.where(on, out, rgb)


def gaussian_blur(rgb: Tensor, p: float, sigma_range: tuple[float, float] = (0.15, 1.15)) -> Tensor:
    """With probability ``p``, the whole batch blurred with sigma ~ U(sigma_range) and a kernel
    of about a tenth of the image height (odd), reflect-padded, as DACS and DAFormer do."""
    draws = torch.rand(2)
    if draws[0] >= p:
        return rgb
    sigma = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * float(draws[1])
    k = math.ceil(0.1 * rgb.shape[-2])
    k += 1 - k % 2
    x = torch.arange(k, dtype=rgb.dtype, device=rgb.device) - k // 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    w = w / w.sum()
    c = rgb.shape[1]
    pad = k // 2
    out = F.pad(rgb, (pad, pad, 0, 0), mode="reflect")
    out = F.conv2d(out, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    out = F.pad(out, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(out, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


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
