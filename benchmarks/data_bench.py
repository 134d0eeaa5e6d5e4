"""Data and evaluation speed: label mapping, our evaluation vs cityscapesscripts, loader rate.

    .venv/bin/python benchmarks/data_bench.py

1. id -> trainId of a 1914x1052 GTA5 label: our 256-entry lookup table vs the per-id loop of
   older UDA code (``for k, v in mapping: out[label == k] = v``); equal outputs asserted.
2. Scoring 2048x1024 predictions: our bincount confusion matrix (engine/evaluate.py) vs
   cityscapesscripts' evaluateImgLists on the same PNG files; equal per-class IoU asserted.
3. Images per second of the GTA5 training pipeline (PNG decode, resize to 1280x720, label
   mapping, normalization) through a DataLoader with 0, 1 and 2 workers, on GTA5-sized
   MiniCity scenes written as a GTA5 tree.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cosalign.config import DataConfig, DomainConfig
from cosalign.data import build_dataset
from cosalign.data.dataset import read_8bit_label
from cosalign.data.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_LUT,
    CLASS_NAMES,
    TRAINID_TO_CITYSCAPES_ID,
)
from cosalign.data.minicity_render import GAME, render
from cosalign.data.minicity_scene import sample_scene
from cosalign.engine.evaluate import confusion_matrix, per_class_iou


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def loop_mapping(label: np.ndarray) -> np.ndarray:
    out = np.full(label.shape, 255, dtype=np.uint8)
    for k, v in CITYSCAPES_ID_TO_TRAINID.items():
        out[label == k] = v
    return out


def bench_mapping(rng) -> None:
    label = rng.integers(0, 34, (1052, 1914)).astype(np.uint8)
    assert np.array_equal(CITYSCAPES_LUT[label], loop_mapping(label))
    t_lut = best_of(lambda: CITYSCAPES_LUT[label])
    t_loop = best_of(lambda: loop_mapping(label))
    print("| label mapping, 1914x1052 | per-id loop | lookup table | loop / table |")
    print("|---|---|---|---|")
    print(f"| GTA5 ids -> trainIds | {1e3 * t_loop:.1f} ms | {1e3 * t_lut:.2f} ms | "
          f"{t_loop / t_lut:.0f}x |\n")


def bench_eval(rng, tmp: Path, n: int = 10) -> None:
    gts, preds = [], []
    for i in range(n):
        gt = rng.integers(0, 34, (1024, 2048)).astype(np.uint8)
        pred_train = rng.integers(0, 19, (1024, 2048)).astype(np.uint8)
        gt_path, pred_path = tmp / f"{i}_gtFine_labelIds.png", tmp / f"{i}_pred.png"
        Image.fromarray(gt).save(gt_path)
        Image.fromarray(TRAINID_TO_CITYSCAPES_ID[pred_train]).save(pred_path)
        gts.append(gt_path)
        preds.append(pred_path)

    def ours():
        cm = torch.zeros(19, 19, dtype=torch.long)
        lut = np.full(256, 255, np.uint8)
        lut[TRAINID_TO_CITYSCAPES_ID[:19]] = np.arange(19)
        for g, p in zip(gts, preds):
            y = torch.from_numpy(CITYSCAPES_LUT[read_8bit_label(g)])
            x = torch.from_numpy(lut[read_8bit_label(p)])
            cm += confusion_matrix(x, y, 19)
        return per_class_iou(cm.numpy())

    os.environ["CITYSCAPES_EXPORT_DIR"] = str(tmp)
    ev = importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    ev.args.evalInstLevelScore, ev.args.JSONOutput, ev.args.quiet = False, False, True

    def theirs():
        return ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], ev.args)

    iou, official = ours(), theirs()
    for k, name in enumerate(CLASS_NAMES):
        assert abs(iou[k] - official["classScores"][name]) < 1e-9, name
    t_ours, t_theirs = best_of(ours, 2), best_of(theirs, 2)
    print(f"| scoring {n} predictions, 2048x1024 (read + score) | cityscapesscripts | ours | "
          "theirs / ours |")
    print("|---|---|---|---|")
    print(f"| per image | {1e3 * t_theirs / n:.0f} ms | {1e3 * t_ours / n:.0f} ms | "
          f"{t_theirs / t_ours:.1f}x |  (per-class IoU identical to 1e-9)\n")


def bench_loader(rng, tmp: Path, n: int = 16) -> None:
    root = tmp / "gta5"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        cam, surfaces = sample_scene(np.random.default_rng(i), 1914, 1052)
        image, label = render(cam, surfaces, GAME, np.random.default_rng(i))
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), image[..., ::-1])
        Image.fromarray(label, mode="L").save(root / "labels" / f"{i:05d}.png")
    ds = build_dataset(DomainConfig(dataset="gta5", root=str(root), size=(1280, 720)),
                       DataConfig(), train=True)
    print("| GTA5 pipeline (decode 1914x1052, resize 1280x720, map, normalize) | images/s |")
    print("|---|---|")
    for workers in (0, 1, 2):
        loader = DataLoader(ds, batch_size=1, num_workers=workers, shuffle=False)
        next(iter(loader))  # start-up
        t0 = time.perf_counter()
        count = sum(1 for _ in loader)
        print(f"| {workers} worker(s) | {count / (time.perf_counter() - t0):.1f} |", flush=True)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"# data_bench: {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as d:
        bench_mapping(rng)
        bench_eval(rng, Path(d))
        bench_loader(rng, Path(d))


if __name__ == "__main__":
    main()
