"""Cityscapes (Cordts et al., CVPR 2016) in its native layout.

    ROOT/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png       2048x1024 RGB
    ROOT/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png         8-bit label ids

``cosalign data convert`` adds ``<stem>_gtFine_labelTrainIds.png``; reading prefers it.
Training never reads target labels: ``cityscapes_pairs(..., labels=False)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cosalign.data.dataset import (
    Pair,
    attach_labels,
    prefer_train_ids,
    read_8bit_label,
    require_dir,
    select_images,
)
from cosalign.data.labels import CITYSCAPES_LUT, map_ids

LAYOUT = (
    "  ROOT/leftImg8bit/SPLIT/CITY/STEM_leftImg8bit.png\n"
    "  ROOT/gtFine/SPLIT/CITY/STEM_gtFine_labelIds.png"
)
SUFFIX = "_leftImg8bit.png"


def label_path(image: Path) -> Path:
    split_dir = image.parent.parent.parent.parent / "gtFine" / image.parent.parent.name
    stem = image.name[: -len(SUFFIX)]
    folder = split_dir / image.parent.name
    return prefer_train_ids(folder / f"{stem}_gtFine_labelIds.png",
                            folder / f"{stem}_gtFine_labelTrainIds.png")


def cityscapes_pairs(root: Path, split: str, list_file: Path | None = None,
                     labels: bool = True) -> list[Pair]:
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    require_dir(image_dir, LAYOUT)
    images = select_images(image_dir, f"*/*{SUFFIX}", list_file)
    if not labels:
        return [(image, None) for image in images]
    require_dir(root / "gtFine" / split, LAYOUT)
    return attach_labels(images, label_path)


def read_cityscapes_label(path: Path) -> np.ndarray:
    """(H, W) uint8 trainIds."""
    label = read_8bit_label(path)
    return label if path.name.endswith("_labelTrainIds.png") else map_ids(label, CITYSCAPES_LUT)
