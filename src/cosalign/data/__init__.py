"""Datasets in their native layouts, the embedded MiniCity benchmark, and transforms."""

from __future__ import annotations

from pathlib import Path

from cosalign.config import DATASETS  # noqa: E402  (declared next to the config field)
from cosalign.data.cityscapes import cityscapes_pairs, read_cityscapes_label
from cosalign.data.dataset import DatasetError, InfiniteSampler, SegmentationDataset
from cosalign.data.gta5 import gta5_pairs, read_gta5_label
from cosalign.data.synthia import read_synthia_label, synthia_pairs
from cosalign.data.transforms import JointTransform

READERS = {"gta5": read_gta5_label, "synthia": read_synthia_label,
           "cityscapes": read_cityscapes_label}


def dataset_pairs(dataset: str, root: str | Path, split: str = "train",
                  list_file: str | Path | None = None, labels: bool = True):
    """(image, label) paths of a dataset in its native layout; label None when not wanted."""
    lf = None if list_file is None else Path(list_file)
    if dataset == "gta5":
        pairs = gta5_pairs(Path(root), lf)
    elif dataset == "synthia":
        pairs = synthia_pairs(Path(root), lf)
    elif dataset == "cityscapes":
        return cityscapes_pairs(Path(root), split, lf, labels=labels)
    else:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return pairs if labels else [(image, None) for image, _ in pairs]


def build_dataset(domain, data, *, train: bool, labels: bool = True) -> SegmentationDataset:
    """A dataset from a :class:`cosalign.config.DomainConfig` and the shared
    :class:`cosalign.config.DataConfig` options. ``train=False`` keeps labels at full
    resolution and disables augmentation (evaluation protocol)."""
    transform = JointTransform(
        size=None if domain.size is None else tuple(domain.size),
        crop=tuple(domain.crop) if (train and domain.crop) else None,
        flip=train and domain.flip,
        photometric=domain.photometric if train else 0.0,
        interpolation=data.interpolation,
        normalization=data.normalization,
        resize_label=train,
    )
    pairs = dataset_pairs(domain.dataset, domain.root, domain.split, domain.list_file, labels)
    return SegmentationDataset(pairs, READERS[domain.dataset], transform, cache=data.cache)


__all__ = ["DATASETS", "DatasetError", "InfiniteSampler", "SegmentationDataset",
           "build_dataset", "dataset_pairs"]
