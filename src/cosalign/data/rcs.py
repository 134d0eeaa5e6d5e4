"""Rare class sampling (DAFormer, Hoyer et al., CVPR 2022): source images are drawn so that rare
classes come up more often.

Each draw picks a class c with p(c) = softmax_c((1 - f_c) / T), f_c the share of the source
tree's labelled pixels that are class c (T = ``data.rcs_temperature``, DAFormer 0.01), then an
image uniformly among those whose label holds more than ``data.rcs_min_pixels`` pixels of c (an
absolute count at the label file's resolution: DAFormer's 3000), then the dataset re-draws the
image's crop up to 10 times until it holds more than ``rcs_min_crop_ratio`` x
``rcs_min_pixels`` pixels of c (DAFormer 0.5, HRDA 2.0), as DAFormer's ``UDADataset`` does. The
per-image class pixel counts are computed once per source tree, at the labels' native
resolution (DAFormer's ``tools/convert_datasets``), and cached under ~/.cache/cosalign
(COSALIGN_CACHE), keyed by the label files' names, sizes and times.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from cosalign.data.check import CACHE_DIR
from cosalign.data.dataset import DatasetError, SegmentationDataset


def class_pixel_counts(dataset: SegmentationDataset, num_classes: int,
                       progress: bool = True, key: str = "") -> np.ndarray:
    """(n_images, K) int64: pixels of each class in each label of ``dataset``, cached by the
    label files and ``key`` (what maps their values to classes: the class set)."""
    labels = [Path(label) for _, label in dataset.pairs]
    h = hashlib.sha1(f"{num_classes}|{key}".encode())
    for p in labels:
        st = os.stat(p)
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = CACHE_DIR / "class_stats" / f"{h.hexdigest()}.npy"
    if cache.is_file():
        return np.load(cache)
    counts = np.zeros((len(labels), num_classes), np.int64)
    for i, p in enumerate(tqdm(labels, desc="class statistics", disable=not progress)):
        y = dataset.read_label(p)
        counts[i] = np.bincount(y[y < num_classes].ravel(), minlength=num_classes)[:num_classes]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, counts)
    return counts


def class_probabilities(counts: np.ndarray, temperature: float) -> np.ndarray:
    """(K,) p(c) = softmax((1 - f_c) / T) over the classes that occur; 0 for the others."""
    total = counts.sum(0).astype(np.float64)
    present = total > 0
    f = total / max(total.sum(), 1)
    logits = np.where(present, (1 - f) / temperature, -np.inf)
    p = np.exp(logits - logits[present].max())
    return p / p.sum()


class RareClassSampler(Sampler):
    """Endless (index, augmentation seed, class, crop pixels) tuples: the index and seed as
    :class:`~cosalign.data.dataset.InfiniteSampler` yields them (the same seeds, the same
    ``start``/``rank``/``world`` contract, so a resumed run continues the order), the index
    drawn by rare class sampling for the class, and the pixels of it the crop must exceed."""

    def __init__(self, counts: np.ndarray, temperature: float, min_pixels: float,
                 min_crop_ratio: float, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        enough = counts > min_pixels
        self.crop_pixels = min_pixels * min_crop_ratio if min_crop_ratio > 0 else -1.0
        self.candidates = [np.flatnonzero(enough[:, c]) for c in range(counts.shape[1])]
        p = class_probabilities(counts, temperature)
        p = np.where([len(c) > 0 for c in self.candidates], p, 0.0)
        if p.sum() == 0:
            raise DatasetError(f"rare class sampling: no source label holds more than "
                               f"data.rcs_min_pixels={min_pixels:g} pixels of any class; lower it")
        self.p = torch.as_tensor(p / p.sum())
        self.seed, self.start, self.rank, self.world = seed, start, rank, world

    def __iter__(self) -> Iterator[tuple[int, int, int, float]]:
        k = self.start * self.world + self.rank
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            c = int(torch.multinomial(self.p, 1, generator=g))
            pool = self.candidates[c]
            yield (int(pool[int(torch.randint(len(pool), (), generator=g))]),
                   self.seed * 1_000_003 + k, c, self.crop_pixels)
            k += self.world
