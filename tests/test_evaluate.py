"""Confusion matrix, IoU and mIoU against naive loops and hand-computed values."""

import numpy as np
import pytest
import torch

from cosalign.engine.evaluate import (
    confusion_matrix,
    format_table,
    mean_iou,
    per_class_iou,
    summarize,
)
from cosalign.models.upsample import upsample_logits


@pytest.mark.parametrize("case", ["uint8", "int64", "negative ignore", "large ids"])
def test_confusion_matrix_equals_nested_loop(case, device):
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 6, (3, 7, 9), generator=g)  # 5: a prediction outside the classes
    target = torch.randint(0, 6, (3, 7, 9), generator=g)
    target[target == 5] = {"negative ignore": -1, "large ids": 1000}.get(case, 255)
    if case == "large ids":
        pred[0, 0, :3] = 700
    if case == "uint8":
        pred, target = pred.to(torch.uint8), target.to(torch.uint8)
    cm = confusion_matrix(pred.to(device), target.to(device), 5).cpu().numpy()
    naive = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if 0 <= t < 5 and 0 <= p < 5:
            naive[t, p] += 1
    assert naive.sum() > 100
    np.testing.assert_array_equal(cm, naive)


def test_iou_by_hand():
    # gt: 0 0 1 1, pred: 0 1 1 1 -> class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 2, FP 1 -> 2/3
    cm = confusion_matrix(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), 3).numpy()
    iou = per_class_iou(cm)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(2 / 3)
    assert np.isnan(iou[2])  # absent from both: left out of the mean
    assert mean_iou(iou, (0, 1, 2)) == pytest.approx((0.5 + 2 / 3) / 2)


def test_summary_reports_each_subset_and_headline():
    cm = np.diag(np.arange(1, 20))
    cm[0, 1] = 1  # one road pixel predicted as sidewalk
    s = summarize(cm, ["synthia16", "synthia13"])
    assert s["headline"] == "synthia16"
    assert s["iou"]["road"] == pytest.approx(100 * 1 / 2)
    assert s["iou"]["sidewalk"] == pytest.approx(100 * 2 / 3)
    assert "terrain" not in s["iou"]  # not in either subset
    assert s["miou"]["synthia13"] == pytest.approx(100 * (0.5 + 2 / 3 + 11) / 13)
    table = format_table({"a": s}, "synthia13")
    assert "| road | 50.0 |" in table and "mIoU (synthia13)" in table


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size", [(33, 65), (64, 128), (9, 17)])
def test_upsample_logits_equals_f_interpolate(align_corners, size):
    logits = torch.randn(2, 3, 9, 17, requires_grad=True)
    ours = upsample_logits(logits, size, align_corners)
    ref = torch.nn.functional.interpolate(logits, size=size, mode="bilinear",
                                          align_corners=align_corners)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    (ga,) = torch.autograd.grad(ours, logits, g)
    (gb,) = torch.autograd.grad(ref, logits, g)
    torch.testing.assert_close(ga, gb, atol=1e-4, rtol=1e-4)
