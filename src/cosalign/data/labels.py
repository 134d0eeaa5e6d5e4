"""Label tables: class names, id -> trainId lookup tables, class subsets and the palette.

Every remapping is a lookup table indexed by the raw id (256 entries for 8-bit labels, 65536 for
SYNTHIA's 16-bit ones), applied as ``lut[label]``: one vectorized gather, never a loop over ids.
The Cityscapes/GTA5 table is tested against ``cityscapesscripts.helpers.labels``.
"""

from __future__ import annotations

import cv2
import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Cityscapes label id -> trainId (GTA5 labels use the same ids).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# SYNTHIA-RAND-CITYSCAPES class id (R channel of GT/LABELS) -> trainId.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15,
    12: 17, 11: 18,
}

# Class subsets over which mIoU is reported (trainIds).
CLASS_SUBSETS: dict[str, tuple[int, ...]] = {
    "cityscapes19": tuple(range(19)),
    "synthia16": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    "synthia13": (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    # The classes that the embedded MiniCity benchmark draws (see minicity/generate.py).
    "minicity": (0, 1, 2, 5, 7, 8, 9, 10, 11, 13),
}

PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # (19, 3) RGB in trainId order


def build_lut(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Lookup table of ``size`` entries: ``lut[id] = trainId``, everything unmapped -> 255."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw_id, train_id in mapping.items():
        lut[raw_id] = train_id
    return lut


def map_ids(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[label]``: an 8-bit label through a 256-entry table with OpenCV's LUT (faster than
    numpy indexing: docs/PERFORMANCE.md, data loading), anything else by indexing."""
    if label.dtype == np.uint8 and lut.shape == (256,) and label.ndim == 2:
        return cv2.LUT(label, lut)
    return lut[label]


CITYSCAPES_LUT = build_lut(CITYSCAPES_ID_TO_TRAINID, 256)
SYNTHIA_LUT = build_lut(SYNTHIA_ID_TO_TRAINID, 65536)

# trainId -> Cityscapes label id (for the official evaluator, which expects label ids).
TRAINID_TO_CITYSCAPES_ID = np.zeros(256, dtype=np.uint8)
for _raw, _train in CITYSCAPES_ID_TO_TRAINID.items():
    TRAINID_TO_CITYSCAPES_ID[_train] = _raw


def colorize(y: np.ndarray) -> np.ndarray:
    """(H, W) trainId map -> (H, W, 3) uint8 RGB image; ignore (255) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[y]
