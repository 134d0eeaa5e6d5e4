"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016) in its native layout.

    ROOT/RGB/NNNNNNN.png          1280x760 RGB
    ROOT/GT/LABELS/NNNNNNN.png    16-bit, 3-channel PNG; the class id is in the R channel

Pillow misreads these labels (values like 3 or 976): they are read unchanged with OpenCV, which
returns channels in BGR order, so the class id is channel 2.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cosalign.data.dataset import (
    DatasetError,
    Pair,
    attach_labels,
    prefer_train_ids,
    read_8bit_label,
    require_dir,
    select_images,
)
from cosalign.data.labels import SYNTHIA_LUT

LAYOUT = "  ROOT/RGB/NNNNNNN.png\n  ROOT/GT/LABELS/NNNNNNN.png  (16-bit, class id in the R channel)"


def label_path(image: Path) -> Path:
    labels = image.parent.parent / "GT" / "LABELS"
    return prefer_train_ids(labels / image.name, labels / f"{image.stem}_labelTrainIds.png")


def synthia_pairs(root: Path, list_file: Path | None = None) -> list[Pair]:
    root = Path(root)
    require_dir(root / "RGB", LAYOUT)
    require_dir(root / "GT" / "LABELS", LAYOUT)
    return attach_labels(select_images(root / "RGB", "*.png", list_file), label_path)


def read_synthia_class_ids(path: Path) -> np.ndarray:
    """(H, W) uint16 SYNTHIA class ids from the R channel of a GT/LABELS PNG."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"{path}: cannot read label (missing, truncated or not a PNG)")
    if raw.ndim != 3 or raw.shape[2] < 3:
        raise DatasetError(f"{path}: expected a 3-channel 16-bit SYNTHIA label, found shape "
                           f"{raw.shape} ({raw.dtype})")
    return raw[:, :, 2]


def read_synthia_label(path: Path) -> np.ndarray:
    """(H, W) uint8 trainIds."""
    if path.name.endswith("_labelTrainIds.png"):
        return read_8bit_label(path)
    return SYNTHIA_LUT[read_synthia_class_ids(path)]
