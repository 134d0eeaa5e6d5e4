"""Evaluation, in one room: a bincount confusion matrix, per-class IoU and mIoU over a class
subset; a dataset's mIoU with the premise meter during training (:func:`evaluate`); and a
checkpoint's evaluation as ``cosalign eval`` runs it (:func:`evaluate_checkpoint`).

Protocol (docs/METHOD.md section 5): the network sees the image at the configured input size;
its logits are upsampled bilinearly (``align_corners`` True by default, as in the ADVENT line)
to the label's full resolution and scored there. IoU_k = TP_k / (TP_k + FP_k + FN_k); a class
with no ground-truth and no predicted pixel has IoU NaN and is left out of the mean, as the
official Cityscapes evaluator does.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cosalign.config import class_set_of
from cosalign.data import build_dataset
from cosalign.data.classes import ClassSet, load_class_set
from cosalign.engine import distributed
from cosalign.engine.checkpoint import load_trained
from cosalign.engine.inference import save_prediction
from cosalign.engine.tta import TTA
from cosalign.losses.diagnostics import PremiseMeter
from cosalign.models.upsample import upsample_logits
from cosalign.outputs import writable_dir, writable_file, write_text

CITYSCAPES = load_class_set("cityscapes")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction. Pixels whose target is
    outside [0, K) (ignore, 255) are not counted, nor are predictions outside [0, K).

    One bincount of target * W + pred: W = 256 when both maps hold values in [0, 256) (label
    maps and predictions do), so rows and columns >= K are simply dropped; otherwise the
    out-of-range values are first moved to K and W = K + 1.
    """
    k = num_classes
    if target.dtype == pred.dtype == torch.uint8 and target.device.type == "cpu" and k <= 256:
        index = (target.numpy().astype(np.uint16) << 8) | pred.numpy()  # 8-bit maps: no checks
        counts = np.bincount(index.reshape(-1), minlength=1 << 16).reshape(256, 256)
        return torch.from_numpy(counts[:k, :k].copy())
    t, p = target.to(torch.int32), pred.to(torch.int32)
    lo_t, hi_t = torch.aminmax(t)
    lo_p, hi_p = torch.aminmax(p)
    w = 256
    if k > w or min(int(lo_t), int(lo_p)) < 0 or max(int(hi_t), int(hi_p)) >= w:
        t = torch.where((t >= 0) & (t < k), t, k)
        p = torch.where((p >= 0) & (p < k), p, k)
        w = k + 1
    index = (t * w + p).reshape(-1)
    if index.device.type == "cpu":  # numpy's bincount is several times faster than torch's
        counts = torch.from_numpy(np.bincount(index.numpy(), minlength=w * w))
    else:
        counts = torch.bincount(index, minlength=w * w)
    return counts.reshape(w, w)[:k, :k]


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """(K,) IoU from a confusion matrix; NaN where a class is absent from both maps."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(iou: np.ndarray, classes: tuple[int, ...]) -> float:
    vals = iou[list(classes)]
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def summarize(cm: np.ndarray, subsets: list[str], class_set: ClassSet = CITYSCAPES) -> dict:
    """Per-class IoU (in %) and mIoU for each named class subset of ``class_set``; the first is
    the headline."""
    iou = per_class_iou(cm)
    classes = sorted({c for name in subsets for c in class_set.subset(name)})
    return {
        "headline": subsets[0],
        "miou": {name: 100 * mean_iou(iou, class_set.subset(name)) for name in subsets},
        "iou": {class_set.names[c]: 100 * float(iou[c]) for c in classes},
        "pixel_accuracy": 100 * float(np.trace(cm) / max(cm.sum(), 1)),
    }


@torch.no_grad()
def confusion_over(model: torch.nn.Module, loader, num_classes: int, device: torch.device,
                   align_corners: bool = True, progress: bool = True,
                   predict=None, on_batch=None) -> np.ndarray:
    """Sum of confusion matrices over a loader of {"image", "label", "name"} batches.

    By default the main head's logits are upsampled to the label's resolution; ``predict(model,
    x, size)`` replaces that with other (B, K, H, W) scores (engine/tta.py). ``on_batch(batch,
    pred, out)`` sees each batch, its (B, H, W) prediction and the network output (None under
    ``predict``), e.g. to save predictions or to measure the premise diagnostics.
    """
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for batch in tqdm(loader, desc="eval", unit="img", disable=not progress, leave=False):
        x, y = batch["image"].to(device), batch["label"].to(device)
        out = None
        if predict is None:
            out = model(x)
            scores = upsample_logits(out.logits, y.shape[-2:], align_corners)
        else:
            scores = predict(model, x, y.shape[-2:])
        pred = scores.argmax(1)
        cm += confusion_matrix(pred, y, num_classes)
        if on_batch is not None:
            on_batch(batch, pred, out)
    model.train(was_training)
    return cm.cpu().numpy()


def format_table(results: dict[str, dict], subset: str, class_set: ClassSet = CITYSCAPES) -> str:
    """Markdown table: one row per class of ``subset``, one column per result, mIoU last."""
    names = list(results)
    classes = [class_set.names[c] for c in class_set.subset(subset)]
    lines = ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c in classes:
        cells = [f"{results[n]['iou'].get(c, float('nan')):.1f}" for n in names]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    cells = [f"**{results[n]['miou'][subset]:.1f}**" for n in names]
    lines.append(f"| mIoU ({subset}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(model, val_set, device, *, dictionary=None, tau: float = 0.5,
             subsets: list[str], progress: bool = True, batch_size: int = 1,
             class_set: ClassSet = CITYSCAPES, align_corners: bool = True) -> dict:
    """mIoU on ``val_set`` (sharded over ranks, confusion matrices summed) and, when a
    dictionary is given, the premise diagnostics of engine/diagnostics.py; logits upsampled
    with ``align_corners`` (the run's ``model.align_corners``)."""
    K = class_set.num_classes
    shard = Subset(val_set, range(distributed.rank(), len(val_set), distributed.world_size()))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=0)
    meter = PremiseMeter(K)
    on_batch = None
    if dictionary is not None and len(dictionary) > 0:
        ref, ref_cls = dictionary.reference()

        def on_batch(batch, pred, out):
            if out.features is not None:  # None: HRDA slid over outer windows
                meter.update(out.features, batch["label"].to(device), ref, ref_cls, tau)

    cm = confusion_over(model, loader, K, device, align_corners, progress=progress,
                        on_batch=on_batch)
    cm = distributed.all_reduce_sum(torch.as_tensor(cm, device=device)).cpu().numpy()
    results = summarize(cm, subsets, class_set)
    results["premise"] = meter.result()  # per rank (rank 0's shard under torchrun)
    results["confusion"] = cm.tolist()
    return results


def evaluate_checkpoint(checkpoint: str | Path, *, data_root: str | None = None,
                        split: str = "val", size: tuple[int, int] | None = None,
                        tta: TTA = TTA(), save_predictions: Path | None = None,
                        out: Path | None = None, device: torch.device | None = None,
                        progress: bool = True, which: str = "student",
                        config: str | None = None) -> dict:
    """Evaluate a checkpoint (or a run folder's newest) on the val split of its config (or of
    ``data_root``); writes ``<out>.json`` and ``<out>.md`` (default: next to the checkpoint).
    ``which="teacher"`` evaluates a self-training run's EMA teacher; ``config`` gives the network
    and data of a DAFormer/HRDA/MIC checkpoint (engine/checkpoint.py ``load_trained``)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, checkpoint = load_trained(checkpoint, device, which, config)
    if tta.align_corners is None:  # the run's own convention
        tta = replace(tta, align_corners=cfg.model.align_corners)
    classes = class_set_of(cfg)
    suffix = "" if which == "student" else f"_{which}"
    out = Path(out) if out else Path(checkpoint).with_name(f"eval_{split}{suffix}")
    for path in (out.with_suffix(".json"), out.with_suffix(".md")):  # before minutes of work
        writable_file(path, "results file")
    if save_predictions is not None:
        writable_dir(save_predictions, "--save-predictions folder")
    val_cfg = cfg.data.val
    if data_root is not None:
        val_cfg = replace(val_cfg, root=str(data_root), list_file=None)
    val_cfg = replace(val_cfg, split=split, size=tuple(size) if size else val_cfg.size)
    dataset = build_dataset(val_cfg, replace(cfg.data, cache=False), train=False,
                            class_set=classes)
    loader = DataLoader(dataset, batch_size=1, num_workers=min(2, cfg.data.workers))

    on_batch = None
    if save_predictions is not None:
        def on_batch(batch, pred, _out):
            for name, p in zip(batch["name"], pred.cpu().numpy().astype(np.uint8)):
                save_prediction(Path(save_predictions) / Path(name).stem, p,
                                colorize=classes.colorize)

    cm = confusion_over(model, loader, classes.num_classes, device,
                        align_corners=tta.align_corners,
                        progress=progress, predict=tta if tta.enabled else None,
                        on_batch=on_batch)
    subsets = [cfg.data.classes, *cfg.data.extra_classes]
    results = summarize(cm, subsets, classes)
    results["class_set"] = classes.to_dict()
    results.update({"checkpoint": str(checkpoint), "dataset": val_cfg.root, "split": split,
                    "images": len(dataset), "input_size": val_cfg.size,
                    "align_corners": tta.align_corners, "protocol": tta.describe(),
                    "model": which,
                    "confusion": cm.tolist()})
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1))
    tables = "\n\n".join(format_table({Path(checkpoint).parent.name: results}, s, classes)
                         for s in subsets)
    write_text(
        out.with_suffix(".md"),
        f"# {checkpoint} ({which}) on {val_cfg.root} ({split}, {len(dataset)} images)\n\n"
        f"Input {val_cfg.size}, logits upsampled bilinearly (align_corners={tta.align_corners}) "
        f"to label resolution; {tta.describe()}. Headline: {subsets[0]}.\n\n{tables}\n")
    return results
