"""A segmentation dataset over (image, label) file pairs, and the sampler that feeds training.

Each on-disk format (data/gta5.py, data/synthia.py, data/cityscapes.py) only lists its file
pairs and says how to read a label as trainIds; decoding, resizing, augmentation and caching are
shared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cosalign.data.transforms import JointTransform

Pair = tuple[Path, Path | None]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what OpenCV reads


class DatasetError(Exception):
    """A dataset on disk is missing, incomplete or malformed; the message names the path, what
    was expected and what was found."""


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: cannot read image (missing, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_list_file(list_file: Path) -> list[str]:
    """The entries of a list file (one relative path or stem per line, blank lines skipped)."""
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: list file not found (expected one path per line)")
    return [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


def require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        shown = "; ".join(line.strip() for line in layout.splitlines() if line.strip())
        raise DatasetError(f"{path}: folder not found; expected layout: {shown}")


class SegmentationDataset(Dataset):
    """(image, label) pairs read from disk.

    ``__getitem__`` takes an index or an ``(index, seed)`` pair (from :class:`InfiniteSampler`;
    the seed drives this sample's random crop and flip), or an ``(index, seed, c, n)`` tuple
    from rare class sampling (data/rcs.py): the augmentation is then re-drawn, up to 10 times,
    until the crop holds more than n pixels of class c, as DAFormer's ``UDADataset`` re-runs
    its pipeline. It returns a dict with ``image``
    (3, H, W) float32, ``label`` (H, W) int64 trainIds (absent when the pair has no label) and
    ``name``. With ``cache=True`` decoded, resized samples are kept in memory (small datasets).
    With ``margins`` (top, bottom, left, right) an unlabelled sample also has ``valid`` (H, W)
    bool: False within that many pixels of the resized image's sides, cropped and flipped with
    the image (HRDA's ``valid_pseudo_mask``); the augmentation's draws are unchanged.
    """

    def __init__(self, pairs: list[Pair], read_label: Callable[[Path], np.ndarray],
                 transform: JointTransform, cache: bool = False,
                 margins: tuple[int, int, int, int] | None = None) -> None:
        if not pairs:
            raise DatasetError("no images found")
        self.pairs, self.read_label, self.transform = pairs, read_label, transform
        self.margins = margins
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded and resized (image, label) of pair ``i``, before augmentation."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image_path, label_path = self.pairs[i]
        image = read_image(image_path)
        label = None if label_path is None else self.read_label(label_path)
        if label is not None and label.shape[:2] != image.shape[:2] and self.transform.size is None:
            raise DatasetError(
                f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                f"{image_path.name} is {image.shape[1]}x{image.shape[0]}; set a resize size"
            )
        out = self.transform.resize(image, label)
        if self._cache is not None:
            self._cache[i] = out
        return out

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i, seed, *rcs = item if isinstance(item, tuple) else (item, None)
        image, label = self.load(i)
        if self.margins is not None and label is None and seed is not None:
            top, bottom, left, right = self.margins
            valid = np.zeros(image.shape[:2], np.uint8)
            valid[top:image.shape[0] - bottom, left:image.shape[1] - right] = 1
            image, valid = self.transform.augment(image, valid, np.random.default_rng(seed))
            x, _ = self.transform.to_tensors(image, None)
            return {"image": x, "name": self.pairs[i][0].name,
                    "valid": torch.from_numpy(np.ascontiguousarray(valid) == 1)}
        if seed is not None:
            rng = np.random.default_rng(seed)
            base = image, label
            image, label = self.transform.augment(*base, rng)
            if rcs and label is not None:
                c, n = rcs
                for _ in range(10):
                    if np.count_nonzero(label == c) > n:
                        break
                    image, label = self.transform.augment(*base, rng)
        x, y = self.transform.to_tensors(image, label)
        sample = {"image": x, "name": self.pairs[i][0].name}
        if y is not None:
            sample["label"] = y
        return sample


class InfiniteSampler(Sampler):
    """Endless shuffled indices, each with a per-sample augmentation seed.

    The stream is a pure function of ``seed``: epoch e is ``randperm(n)`` seeded by (seed, e),
    and sample number k gets augmentation seed (seed, k). Rank r of ``world`` takes every
    world-th element starting at r. ``start`` skips the first ``start`` elements of this rank's
    stream, which is how a resumed run continues the data order exactly.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start * self.world + self.rank  # global position of this rank's next element
        while True:
            epoch, pos = divmod(k, self.n)
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            while pos < self.n:
                yield perm[pos], self.seed * 1_000_003 + k
                k += self.world
                pos += self.world


def select_images(image_dir: Path, pattern: str, list_file: Path | None) -> list[Path]:
    """Images under ``image_dir`` matching ``pattern``, or those a list file names (paths
    relative to ``image_dir``, with or without the extension), sorted."""
    if list_file is None:
        images = sorted(image_dir.glob(pattern))
        if not images:
            raise DatasetError(f"{image_dir}: no files matching {pattern}")
        return images
    images = []
    for entry in read_list_file(list_file):
        path = image_dir / entry
        if not path.suffix:
            path = path.with_suffix(".png")
        if not path.is_file():
            raise DatasetError(f"{list_file}: names {entry!r}, but {path} does not exist")
        images.append(path)
    return images


def attach_labels(images: list[Path], label_for: Callable[[Path], Path]) -> list[Pair]:
    """Pair each image with its label; an error lists images whose label is missing."""
    pairs = [(image, label_for(image)) for image in images]
    missing = [str(lbl) for _, lbl in pairs if not lbl.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DatasetError(f"{len(missing)} label file(s) missing: {', '.join(missing[:3])}{more}")
    return pairs


def prefer_train_ids(label: Path, train_ids: Path) -> Path:
    """The converted ``*_labelTrainIds.png`` (cosalign data convert) when it exists."""
    return train_ids if train_ids.is_file() else label


def read_8bit_label(path: Path) -> np.ndarray:
    """An 8-bit single-channel or palette PNG -> (H, W) uint8 of its stored values (ids)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DatasetError(f"{path}: expected an 8-bit label image (mode L or P), "
                                   f"found mode {im.mode}")
            return np.array(im)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot read label ({e})") from None
