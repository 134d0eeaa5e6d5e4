"""Datasets in their native layouts, the embedded MiniCity benchmark, and transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cosalign.data.adverse import CONDITIONS, adverse_pairs
from cosalign.data.cityscapes import cityscapes_pairs, read_cityscapes_label
from cosalign.data.classes import ClassSet, ClassSetError, load_class_set
from cosalign.data.dataset import DatasetError, InfiniteSampler, SegmentationDataset
from cosalign.data.folder import FolderLabels, folder_pairs, value_map
from cosalign.data.gta5 import gta5_pairs, read_gta5_label
from cosalign.data.labels import CLASS_NAMES, map_ids
from cosalign.data.synthia import read_synthia_label, synthia_pairs
from cosalign.data.transforms import JointTransform
from cosalign.datasets import DATASETS

READERS = {"gta5": read_gta5_label, "synthia": read_synthia_label,
           "cityscapes": read_cityscapes_label, "acdc": read_cityscapes_label,
           "darkzurich": read_cityscapes_label}  # -> Cityscapes trainIds


def dataset_pairs(dataset: str, root: str | Path, split: str = "train",
                  list_file: str | Path | None = None, labels: bool = True, *,
                  conditions: list[str] | None = None, image_suffix: str = "",
                  label_suffix: str = ".png"):
    """(image, label) paths of a dataset in its native layout; label None when not wanted."""
    lf = None if list_file is None else Path(list_file)
    if dataset == "gta5":
        pairs = gta5_pairs(Path(root), lf)
    elif dataset == "synthia":
        pairs = synthia_pairs(Path(root), lf)
    elif dataset == "cityscapes":
        return cityscapes_pairs(Path(root), split, lf, labels=labels)
    elif dataset in ("acdc", "darkzurich"):
        return adverse_pairs(dataset, Path(root), split, conditions, lf, labels)
    elif dataset == "folder":
        return folder_pairs(Path(root), image_suffix, label_suffix, lf, labels)
    else:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    return pairs if labels else [(image, None) for image, _ in pairs]


def domain_pairs(domain, labels: bool = True):
    """:func:`dataset_pairs` of a :class:`cosalign.config.DomainConfig`."""
    return dataset_pairs(domain.dataset, domain.root, domain.split, domain.list_file, labels,
                         conditions=domain.conditions, image_suffix=domain.image_suffix,
                         label_suffix=domain.label_suffix)


class Remapped:
    """A built-in dataset's label reader (Cityscapes trainIds) followed by a 256-entry LUT onto
    the run's class set (picklable for the loader's worker processes)."""

    def __init__(self, read, lut: np.ndarray) -> None:
        self.read, self.lut = read, lut

    def __call__(self, path: Path) -> np.ndarray:
        return map_ids(self.read(path), self.lut)


def label_reader(domain, class_set: ClassSet):
    """Label file -> (H, W) uint8 class indices of ``class_set`` (255: ignore)."""
    if domain.dataset == "folder":
        return FolderLabels(value_map(class_set, domain.label_values))
    read = READERS[domain.dataset]
    identity = class_set.names == CLASS_NAMES  # the 19 trainIds themselves
    return read if identity else Remapped(read, class_set.from_cityscapes())


def check_domain(domain, class_set: ClassSet) -> None:
    """What a domain's settings must satisfy before any file is read; raises ValueError
    starting with the key (``conditions: ...``)."""
    d = domain.dataset
    if d in ("cityscapes", "acdc", "darkzurich") and not domain.split.strip():
        raise ValueError(f"split: expected a split of {d} (train, val...), got {domain.split!r}")
    if domain.conditions and d not in CONDITIONS:
        raise ValueError(f"conditions: only acdc and darkzurich have conditions, got "
                         f"{domain.conditions} for {d}")
    bad = [c for c in domain.conditions if c not in CONDITIONS.get(d, ())]
    if bad:
        raise ValueError(f"conditions: expected some of {', '.join(CONDITIONS[d])} for {d}, "
                         f"got {bad[0]!r}")
    if d != "folder" and (domain.label_values or domain.image_suffix or
                          domain.label_suffix != ".png"):
        raise ValueError(f"label_values, image_suffix, label_suffix: for dataset folder only "
                         f"(this one is {d})")
    try:
        label_reader(domain, class_set)
    except ClassSetError as e:
        key = "label_values" if d == "folder" else "dataset"
        raise ValueError(f"{key}: {e}") from None


def build_dataset(domain, data, *, train: bool, labels: bool = True,
                  class_set: ClassSet | None = None) -> SegmentationDataset:
    """A dataset from a :class:`cosalign.config.DomainConfig` and the shared
    :class:`cosalign.config.DataConfig` options, its labels as indices of ``class_set``
    (default: the one ``data.class_set`` names). ``train=False`` keeps labels at full
    resolution and disables augmentation (evaluation protocol)."""
    transform = JointTransform(
        size=None if domain.size is None else tuple(domain.size),
        keep_ratio=domain.keep_ratio,
        crop=tuple(domain.crop) if (train and domain.crop) else None,
        cat_max_ratio=domain.cat_max_ratio,
        flip=train and domain.flip,
        photometric=domain.photometric if train else 0.0,
        interpolation=data.interpolation,
        normalization=data.normalization,
        resize_label=train,
    )
    class_set = class_set or load_class_set(data.class_set)
    margins = tuple(domain.margins) if (train and not labels and domain.margins) else None
    return SegmentationDataset(domain_pairs(domain, labels), label_reader(domain, class_set),
                               transform, cache=data.cache, margins=margins)


__all__ = ["DATASETS", "DatasetError", "InfiniteSampler", "SegmentationDataset",
           "build_dataset", "check_domain", "dataset_pairs", "domain_pairs", "label_reader"]
