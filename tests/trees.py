"""Tiny dataset trees in the exact on-disk formats of GTA5, SYNTHIA and Cityscapes."""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cosalign.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID


def _image(rng, w, h):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def cityscapes_ids(rng, w, h):
    """Random Cityscapes label ids, all 34 of them (including ignored ones)."""
    return rng.integers(0, 34, (h, w)).astype(np.uint8)


def write_palette_png(path: Path, ids: np.ndarray) -> None:
    """GTA5 stores labels as palette PNGs whose indices are the ids."""
    im = Image.fromarray(ids, mode="P")
    im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im.save(path)


def make_gta5(root: Path, n: int = 3, size=(40, 24), odd_one: bool = True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        w, h = size
        lw, lh = (w + 2, h + 1) if (odd_one and i == n - 1) else (w, h)  # GTA5 has a few
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), _image(rng, w, h))
        write_palette_png(root / "labels" / f"{i:05d}.png", cityscapes_ids(rng, lw, lh))
    return root


def synthia_label(rng, w, h) -> np.ndarray:
    """(H, W, 3) uint16 in RGB order: R = class id (0-22), G = instance id (large values)."""
    label = np.zeros((h, w, 3), dtype=np.uint16)
    label[..., 0] = rng.integers(0, 23, (h, w))
    label[..., 1] = rng.integers(0, 3000, (h, w))  # values like 976: not a class
    return label


def make_synthia(root: Path, n: int = 3, size=(40, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "RGB" / f"{i:07d}.png"), _image(rng, *size))
        label = synthia_label(rng, *size)
        cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), label[..., ::-1])  # BGR
    return root


def make_cityscapes(root: Path, split: str = "val", per_city: int = 2, size=(48, 24),
                    cities=("lindau", "munster"), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for city in cities:
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for j in range(per_city):
            stem = f"{city}_{j:06d}_000019"
            cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), _image(rng, *size))
            Image.fromarray(cityscapes_ids(rng, *size), mode="L").save(
                gt_dir / f"{stem}_gtFine_labelIds.png")
    return root


def expected_cityscapes_lut():
    lut = np.full(256, 255, np.uint8)
    for k, v in CITYSCAPES_ID_TO_TRAINID.items():
        lut[k] = v
    return lut


def expected_synthia(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.uint8)
    for k, v in SYNTHIA_ID_TO_TRAINID.items():
        out[ids == k] = v
    return out


def make_acdc(root: Path, conditions=("fog", "night"), splits=("train", "val"), per_seq: int = 2,
              size=(48, 27), seed=0) -> Path:
    """ACDC's layout: rgb_anon/COND/SPLIT/SEQ/*_rgb_anon.png, gt/COND/SPLIT/SEQ/*_gt_labelIds.png
    (no labels for test)."""
    rng = np.random.default_rng(seed)
    for a, cond in enumerate(conditions):
        for b, split in enumerate(splits):
            seq = f"GOPR{a}{b}00"
            img_dir = root / "rgb_anon" / cond / split / seq
            img_dir.mkdir(parents=True)
            gt_dir = root / "gt" / cond / split / seq
            if split != "test":
                gt_dir.mkdir(parents=True)
            for j in range(per_seq):
                stem = f"{seq}_frame_{j:06d}"
                cv2.imwrite(str(img_dir / f"{stem}_rgb_anon.png"), _image(rng, *size))
                if split != "test":
                    Image.fromarray(cityscapes_ids(rng, *size), mode="L").save(
                        gt_dir / f"{stem}_gt_labelIds.png")
    return root


def make_darkzurich(root: Path, per_seq: int = 2, size=(48, 27), seed=0) -> Path:
    """Dark Zurich's layout: rgb_anon/train/{night,day,twilight}/SEQ/*_rgb_anon.png,
    rgb_anon/val/night/SEQ/..., gt/val/night/SEQ/*_gt_labelIds.png."""
    rng = np.random.default_rng(seed)
    for split, time in (("train", "night"), ("train", "day"), ("train", "twilight"),
                        ("val", "night")):
        seq = {"night": "GOPR0356", "day": "GOPR0351", "twilight": "GOPR0353"}[time]
        img_dir = root / "rgb_anon" / split / time / seq
        img_dir.mkdir(parents=True)
        for j in range(per_seq):
            stem = f"{seq}_frame_{j:06d}"
            cv2.imwrite(str(img_dir / f"{stem}_rgb_anon.png"), _image(rng, *size))
            if split == "val":
                gt_dir = root / "gt" / split / time / seq
                gt_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(cityscapes_ids(rng, *size), mode="L").save(
                    gt_dir / f"{stem}_gt_labelIds.png")
    return root
