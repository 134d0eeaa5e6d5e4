"""Evaluation: a bincount confusion matrix, per-class IoU and mIoU over a class subset.

Protocol (docs/METHOD.md section 5): the network sees the image at the configured input size;
its logits are upsampled bilinearly (``align_corners`` True by default, as in the ADVENT line)
to the label's full resolution and scored there. IoU_k = TP_k / (TP_k + FP_k + FN_k); a class
with no ground-truth and no predicted pixel has IoU NaN and is left out of the mean, as the
official Cityscapes evaluator does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from cosalign.data.labels import CLASS_NAMES, class_subset


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


def summarize(cm: np.ndarray, subsets: list[str]) -> dict:
    """Per-class IoU (in %) and mIoU for each named class subset; the first is the headline."""
    iou = per_class_iou(cm)
    classes = sorted({c for name in subsets for c in class_subset(name)})
    return {
        "headline": subsets[0],
        "miou": {name: 100 * mean_iou(iou, class_subset(name)) for name in subsets},
        "iou": {CLASS_NAMES[c]: 100 * float(iou[c]) for c in classes},
        "pixel_accuracy": 100 * float(np.trace(cm) / max(cm.sum(), 1)),
    }


def interpolation_matrix(n_out: int, n_in: int, align_corners: bool, device=None) -> Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation weights, as F.interpolate computes them."""
    i = torch.arange(n_out, dtype=torch.float64, device=device)
    if align_corners:
        x = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        x = ((i + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = x.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = x - lo
    a = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    a[i.long(), lo] += 1 - frac
    a[i.long(), hi] += frac
    return a.float()


def upsample_logits(logits: Tensor, size: tuple[int, int], align_corners: bool = True) -> Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size`` in float32, as
    ``F.interpolate(mode="bilinear")`` but as two matrix products, A_h L A_w^T, whose forward
    and backward are several times faster on CPUs than the interpolation kernels."""
    h, w = logits.shape[-2:]
    a_h = interpolation_matrix(size[0], h, align_corners, logits.device)
    a_w = interpolation_matrix(size[1], w, align_corners, logits.device)
    return a_h @ logits.float() @ a_w.T


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


def format_table(results: dict[str, dict], subset: str) -> str:
    """Markdown table: one row per class of ``subset``, one column per result, mIoU last."""
    names = list(results)
    classes = [CLASS_NAMES[c] for c in class_subset(subset)]
    lines = ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c in classes:
        cells = [f"{results[n]['iou'].get(c, float('nan')):.1f}" for n in names]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    cells = [f"**{results[n]['miou'][subset]:.1f}**" for n in names]
    lines.append(f"| mIoU ({subset}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
