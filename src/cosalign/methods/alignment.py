"""The paper's term: maximize the cosine similarity between target features and the source
features of the class-wise dictionary (losses/cosine.py, losses/dictionary.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from cosalign.config import Config
from cosalign.engine.diagnostics import feature_stats
from cosalign.losses import cosine_alignment, labelled_features
from cosalign.methods.base import Step, Term

MATMUL_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}  # align.matmul


class CosineAlignment(Term):
    """L_cos over the target features ``out_t.features`` (B, C, h, w) and the reference: the
    dictionary's entries (``align.reference=dictionary``) or this batch's labelled source
    features (``batch``); with ``align.class_restrict=pseudo`` a position is compared only with
    entries of its predicted class. Applied from ``align.start_iter`` on. Logs ``cos`` and the
    share of selected pairs; on logging steps the feature diagnostics too."""

    name = "alignment"
    weights = ("cos",)

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        super().__init__(cfg, num_classes, device)
        self.cfg = cfg.align

    def active(self, it: int) -> bool:
        return it >= self.cfg.start_iter

    def losses(self, step: Step) -> dict[str, Tensor]:
        c = self.cfg
        if c.reference == "dictionary":
            ref, ref_cls = step.dictionary.reference()
        else:
            ref, ref_cls = labelled_features(step.f_s, step.y_s)
        pseudo = step.out_t.logits.argmax(1) if c.class_restrict == "pseudo" else None
        out = cosine_alignment(step.out_t.features, ref, tau=c.tau, match=c.match,
                               ref_cls=None if pseudo is None else ref_cls, pseudo=pseudo,
                               matmul_dtype=MATMUL_DTYPES[c.matmul])
        step.stats["selected"] = out.selected / max(out.pairs, 1)  # a tensor: no wait here
        if step.diagnose:
            step.stats.update(feature_stats(step.out_t.features, ref))
        return {"cos": out.loss}
