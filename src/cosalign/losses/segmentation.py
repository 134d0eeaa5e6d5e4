"""The supervised cross-entropy, with the two means the published pipelines take
(``loss.seg_reduction``).

Shapes: logits (B, K, H, W) at label resolution, labels (B, H, W) with ``IGNORE_INDEX``.

- ``labelled``: sum over labelled pixels of CE / their number (ADVENT's and DACS's
  ``CrossEntropy2d``, which drops ignored pixels first; ``F.cross_entropy``'s default);
- ``all``: sum over labelled pixels of CE / all B H W pixels, an ignored pixel counting 0
  (mmseg's ``CrossEntropyLoss``, DAFormer's, HRDA's and MIC's: ``reduction='none'`` then a
  plain mean). With a share r of pixels ignored it is (1 - r) times the first.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cosalign.data.labels import IGNORE_INDEX


def ce_over_labelled(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def ce_over_all(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none").mean()


SEG_LOSSES = {"labelled": ce_over_labelled, "all": ce_over_all}
