"""Joint (image, label) transforms: resize, random crop, flip, and input normalization.

Images resize bilinearly (or bicubically), labels with nearest neighbour so that no new ids
appear. Randomness comes from a ``numpy.random.Generator`` passed in by the dataset, seeded per
sample by the sampler, so a run's augmentations do not depend on workers or on resuming.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cosalign.data.labels import IGNORE_INDEX

# Caffe-style DeepLab input: BGR minus this mean (the ImageNet checkpoint of the ADVENT line).
CAFFE_MEAN_BGR = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
# torchvision-style input: RGB / 255, minus mean, over std.
IMAGENET_MEAN_RGB = np.array((0.485, 0.456, 0.406), dtype=np.float32)
IMAGENET_STD_RGB = np.array((0.229, 0.224, 0.225), dtype=np.float32)
NORMALIZATIONS = ("caffe", "imagenet")
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def normalize(image: np.ndarray, mode: str = "caffe") -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 network input."""
    x = image.astype(np.float32)
    if mode == "caffe":
        x = x[..., ::-1] - CAFFE_MEAN_BGR
    elif mode == "imagenet":
        x = (x / 255.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(x: torch.Tensor, mode: str = "caffe") -> np.ndarray:
    """Inverse of :func:`normalize`: (3, H, W) -> (H, W, 3) uint8 RGB (for figures)."""
    a = x.detach().cpu().numpy().transpose(1, 2, 0)
    if mode == "caffe":
        a = (a + CAFFE_MEAN_BGR)[..., ::-1]
    else:
        a = (a * IMAGENET_STD_RGB + IMAGENET_MEAN_RGB) * 255.0
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def rescaled_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's ``imrescale`` with a (w, h) scale: the image keeps its aspect ratio and fits in
    it, factor f = min(max(scale) / max(w, h), min(scale) / min(w, h)); the new size is
    (int(w f + 0.5), int(h f + 0.5)). 1914x1052 into (1280, 720): 1280x704."""
    f = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * f + 0.5), int(height * f + 0.5)


def resize_pair(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int],
                interpolation: str = "bilinear", resize_label: bool = True):
    """Resize to ``size`` = (width, height); the label (if any and if asked) with NEAREST."""
    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=INTERPOLATIONS[interpolation])
    if label is not None and resize_label and (label.shape[1], label.shape[0]) != tuple(size):
        label = cv2.resize(label, tuple(size), interpolation=cv2.INTER_NEAREST)
    return image, label


def photometric_jitter(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness and contrast factors in [1-s, 1+s], saturation in [1-s, 1+s], and
    per-channel gains in [1-s/2, 1+s/2]: x' = mean + c (b x - mean), blended with grey."""
    x = image.astype(np.float32) * rng.uniform(1 - s, 1 + s)
    x = x.mean() + rng.uniform(1 - s, 1 + s) * (x - x.mean())
    grey = x.mean(axis=2, keepdims=True)
    x = grey + rng.uniform(1 - s, 1 + s) * (x - grey)
    x = x * rng.uniform(1 - s / 2, 1 + s / 2, size=3).astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def crop_origin(label: np.ndarray | None, h: int, w: int, ch: int, cw: int,
                cat_max_ratio: float, rng: np.random.Generator) -> tuple[int, int]:
    """(y0, x0) of a random ch x cw window; with ``cat_max_ratio`` < 1 and a label, the window
    is re-drawn up to 10 times while it holds fewer than two classes or one class covers
    ``cat_max_ratio`` or more of its labelled pixels (mmseg's RandomCrop, as DAFormer's source
    crop uses it); the last window drawn is kept."""

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))

    y0, x0 = draw()
    if cat_max_ratio < 1 and label is not None:
        for _ in range(10):
            counts = np.bincount(label[y0:y0 + ch, x0:x0 + cw].ravel(), minlength=256)
            counts = counts[np.arange(counts.size) != IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, x0 = draw()
    return y0, x0


@dataclass(frozen=True)
class JointTransform:
    """Resize to ``size`` (width, height) (keeping the aspect ratio, mmcv's rule, with
    ``keep_ratio``), then optionally crop ``crop`` (width, height) at a random place (re-drawn
    under ``cat_max_ratio``: :func:`crop_origin`) and flip horizontally with probability 1/2,
    then normalize.

    With ``resize_label=False`` the label keeps its full resolution (evaluation protocol).
    """

    size: tuple[int, int] | None = None
    keep_ratio: bool = False
    crop: tuple[int, int] | None = None
    cat_max_ratio: float = 1.0
    flip: bool = False
    photometric: float = 0.0  # strength s of random brightness/contrast/saturation/colour gains
    interpolation: str = "bilinear"
    normalization: str = "caffe"
    resize_label: bool = True

    def resize(self, image: np.ndarray, label: np.ndarray | None):
        if self.size is None:
            return image, label
        size = (rescaled_size(image.shape[1], image.shape[0], self.size) if self.keep_ratio
                else self.size)
        return resize_pair(image, label, size, self.interpolation, self.resize_label)

    def augment(self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
        if self.crop is not None:
            cw, ch = self.crop
            h, w = image.shape[:2]
            if cw > w or ch > h:
                pad = ((0, max(ch - h, 0)), (0, max(cw - w, 0)))
                image = np.pad(image, pad + ((0, 0),))
                label = None if label is None else np.pad(label, pad, constant_values=IGNORE_INDEX)
                h, w = image.shape[:2]
            y0, x0 = crop_origin(label, h, w, ch, cw, self.cat_max_ratio, rng)
            image = image[y0 : y0 + ch, x0 : x0 + cw]
            label = None if label is None else label[y0 : y0 + ch, x0 : x0 + cw]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            label = None if label is None else label[:, ::-1]
        if self.photometric > 0:
            image = photometric_jitter(image, self.photometric, rng)
        return image, label

    def to_tensors(self, image: np.ndarray, label: np.ndarray | None):
        x = normalize(image, self.normalization)
        y = None if label is None else torch.from_numpy(np.ascontiguousarray(label)).long()
        return x, y
