"""The supervised cross-entropy, with the two means the published pipelines take
(``loss.seg_reduction``).

Shapes: logits (B, K, H, W) at label resolution, labels (B, H, W) with ``IGNORE_INDEX``.

- ``labelled``: sum over labelled pixels of CE / their number (ADVENT's and DACS's
  ``CrossEntropy2d``, which drops ignored pixels first; ``F.cross_entropy``'s default);
- ``all``: sum over labelled pixels of CE / all B H W pixels, an ignored pixel counting 0
  (mmseg's ``CrossEntropyLoss``, DAFormer's, HRDA's and MIC's: ``reduction='none'`` then a
  plain mean). With a share r of pixels ignored it is (1 - r) times the first.

:func:`segmentation_loss` is the loss of a network's output: with pixel weights w, the mean
over all pixels of w CE (mmseg's weighted loss, DACS's and DAFormer's pseudo-labelled loss); for
an HRDA output with a detail box (models/hrda.py), HRDA's
(1 - lambda_d) L(fused) + lambda_d L(detail, labels and weights cropped to the box).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cosalign.data.labels import IGNORE_INDEX
from cosalign.models.upsample import upsample_logits


def ce_over_labelled(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def ce_over_all(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none").mean()


SEG_LOSSES = {"labelled": ce_over_labelled, "all": ce_over_all}


def weighted_ce(logits: Tensor, labels: Tensor, weight: Tensor | None = None,
                reduction: str = "labelled") -> Tensor:
    """``SEG_LOSSES[reduction]`` without weights; with (B, H, W) ``weight``, the mean over all
    pixels of weight * CE."""
    if weight is None:
        return SEG_LOSSES[reduction](logits, labels)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weight).mean()


def segmentation_loss(out, labels: Tensor, weight: Tensor | None = None, *,
                      reduction: str = "labelled", align_corners: bool = True,
                      pred: Tensor | None = None) -> Tensor:
    """The loss of ``out`` (a network's output; ``pred``: its logits already at the labels'
    resolution) against (B, H, W) ``labels``, logits upsampled bilinearly to the labels."""
    if pred is None:
        pred = upsample_logits(out.logits, labels.shape[-2:], align_corners)
    loss = weighted_ce(pred, labels, weight, reduction)
    detail = getattr(out, "detail", None)
    if detail is None:
        return loss
    y1, y2, x1, x2 = out.box
    labels = labels[:, y1:y2, x1:x2]
    weight = None if weight is None else weight[:, y1:y2, x1:x2]
    pred_d = upsample_logits(detail, labels.shape[-2:], align_corners)
    lam = out.detail_weight
    return (1 - lam) * loss + lam * weighted_ce(pred_d, labels, weight, reduction)
