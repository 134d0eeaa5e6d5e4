"""GTA5 (Richter et al., "Playing for Data", ECCV 2016) in its native layout.

    ROOT/images/NNNNN.png    RGB, mostly 1914x1052 (a few differ)
    ROOT/labels/NNNNN.png    8-bit Cityscapes label ids (palette PNG)

``cosalign data convert`` adds ``labels/NNNNN_labelTrainIds.png``; reading prefers it.
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

LAYOUT = "  ROOT/images/NNNNN.png\n  ROOT/labels/NNNNN.png  (8-bit Cityscapes label ids)"


def label_path(image: Path) -> Path:
    labels = image.parent.parent / "labels"
    return prefer_train_ids(labels / image.name, labels / f"{image.stem}_labelTrainIds.png")


def gta5_pairs(root: Path, list_file: Path | None = None) -> list[Pair]:
    root = Path(root)
    require_dir(root / "images", LAYOUT)
    require_dir(root / "labels", LAYOUT)
    return attach_labels(select_images(root / "images", "*.png", list_file), label_path)


def read_gta5_label(path: Path) -> np.ndarray:
    """(H, W) uint8 trainIds."""
    label = read_8bit_label(path)
    return label if path.name.endswith("_labelTrainIds.png") else map_ids(label, CITYSCAPES_LUT)
