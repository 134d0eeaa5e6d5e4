"""Data and evaluation speed: label mapping, our evaluation vs cityscapesscripts, loader rate.

    .venv/bin/python benchmarks/data_bench.py

1. id -> trainId of a 1914x1052 GTA5 label: our 256-entry lookup table (labels.map_ids) vs
   the per-id loop of older UDA code (``for k, v in mapping: out[label == k] = v``); equal
   outputs asserted.
2. Scoring 2048x1024 predictions against labelIds files: our bincount confusion matrix
   (engine/evaluate.py) vs cityscapesscripts' evaluateImgLists (with and without writing the
   prediction PNGs it needs); equal per-class IoU asserted.
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
    map_ids,
)
from cosalign.engine.evaluate import confusion_matrix, per_class_iou
from cosalign.minicity.render import render
from cosalign.minicity.scene import sample_scene
from cosalign.minicity.styles import GAME


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
    assert np.array_equal(map_ids(label, CITYSCAPES_LUT), loop_mapping(label))
    t_lut = best_of(lambda: map_ids(label, CITYSCAPES_LUT))
    t_loop = best_of(lambda: loop_mapping(label))
    print("| label mapping, 1914x1052 | per-id loop | lookup table | loop / table |")
    print("|---|---|---|---|")
    print(f"| GTA5 ids -> trainIds | {1e3 * t_loop:.1f} ms | {1e3 * t_lut:.2f} ms | "
          f"{t_loop / t_lut:.0f}x |\n")


def _blocky(rng, high: int, cells: tuple[int, int], size=(1024, 2048)) -> np.ndarray:
    """A label-like map: random ids on a coarse grid, upsampled (regions and edges, so that its
    PNG is as compressible as a real label map)."""
    grid = rng.integers(0, high, cells).astype(np.uint8)
    return cv2.resize(grid, size[::-1], interpolation=cv2.INTER_NEAREST)


def bench_eval(rng, tmp: Path, n: int = 10) -> None:
    """Scoring n 2048x1024 predictions held in memory, as a network produces them, against
    labelIds files. Ours reads each label, maps it and counts with one bincount. The official
    evaluator needs the predictions as labelIds PNGs first, then reads both files and counts."""
    gts, preds = [], []
    for i in range(n):
        gt_path = tmp / f"{i}_gtFine_labelIds.png"
        Image.fromarray(_blocky(rng, 34, (64, 128))).save(gt_path)
        gts.append(gt_path)
        preds.append(torch.from_numpy(_blocky(rng, 19, (48, 96))))

    def ours():
        cm = torch.zeros(19, 19, dtype=torch.long)
        for g, p in zip(gts, preds):
            y = map_ids(read_8bit_label(g), CITYSCAPES_LUT)
            cm += confusion_matrix(p, torch.from_numpy(y), 19)
        return per_class_iou(cm.numpy())

    os.environ["CITYSCAPES_EXPORT_DIR"] = str(tmp)
    ev = importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    ev.args.evalInstLevelScore, ev.args.JSONOutput, ev.args.quiet = False, False, True
    pred_paths = [str(tmp / f"{i}_pred.png") for i in range(n)]

    def write_predictions():
        for p, path in zip(preds, pred_paths):
            Image.fromarray(TRAINID_TO_CITYSCAPES_ID[p.numpy()]).save(path)

    def theirs():
        return ev.evaluateImgLists(pred_paths, [str(g) for g in gts], ev.args)

    write_predictions()
    iou, official = ours(), theirs()
    for k, name in enumerate(CLASS_NAMES):
        assert abs(iou[k] - official["classScores"][name]) < 1e-9, name
    t_ours, t_write, t_theirs = best_of(ours, 3), best_of(write_predictions, 3), best_of(theirs, 3)
    print(f"| scoring {n} predictions of 2048x1024, per image | time | / ours |")
    print("|---|---|---|")
    print(f"| ours: read label, map, bincount | {1e3 * t_ours / n:.1f} ms | 1.0x |")
    print(f"| cityscapesscripts: write prediction PNG + evaluateImgLists | "
          f"{1e3 * (t_write + t_theirs) / n:.1f} ms | {(t_write + t_theirs) / t_ours:.1f}x |")
    print(f"| cityscapesscripts: evaluateImgLists alone (PNGs already written) | "
          f"{1e3 * t_theirs / n:.1f} ms | {t_theirs / t_ours:.1f}x |")
    print("\nper-class IoU identical to 1e-9 (asserted)\n")


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
