"""The paper's term: maximize the cosine similarity between target features and the source
features of the class-wise dictionary (losses/cosine.py, losses/dictionary.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.config import Config
from cosalign.losses import cosine_alignment, labelled_features
from cosalign.losses.diagnostics import feature_stats
from cosalign.methods.base import Step, Term
from cosalign.models.hrda import cut

MATMUL_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}  # align.matmul


class CosineAlignment(Term):
    """L_cos over the target features ``out_t.features`` (B, C, h, w) and the reference: the
    dictionary's entries (``align.reference=dictionary``) or this batch's labelled source
    features (``batch``); with ``align.class_restrict=pseudo`` a position is compared only with
    entries of its predicted class. Applied from ``align.start_iter`` on. Logs ``cos`` and the
    share of selected pairs; on logging steps the feature diagnostics too. On top of
    self-training (``loss.st > 0``), ``selftrain.align_on=mixed`` aligns the target-origin
    positions of the mixed batch instead of a pass over the clean target batch, and
    ``selftrain.align_pseudo=teacher`` restricts classes by the teacher's predictions."""

    name = "alignment"
    weights = ("cos",)

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        super().__init__(cfg, num_classes, device)
        self.cfg = cfg.align
        with_st = cfg.loss.st > 0  # on top of self-training: its switches apply
        self.on = cfg.selftrain.align_on if with_st else "clean"
        self.teacher_pseudo = with_st and cfg.selftrain.align_pseudo == "teacher"
        self.needs_target = self.on == "clean"

    def active(self, it: int) -> bool:
        return it >= self.cfg.start_iter

    def losses(self, step: Step) -> dict[str, Tensor]:
        c = self.cfg
        if c.reference == "dictionary":
            ref, ref_cls = step.dictionary.reference()
        else:
            ref, ref_cls = labelled_features(step.f_s, step.f_labels)
        out_t = step.mixed if self.on == "mixed" else step.out_t
        features = out_t.features
        # HRDA's detail features cover a box of the input: the maps below are cut to it
        box, size = getattr(out_t, "feature_box", None), tuple(step.x_t.shape[-2:])
        pseudo = None
        if c.class_restrict == "pseudo":
            pseudo = (step.teacher_logits if self.teacher_pseudo else out_t.logits).argmax(1)
            pseudo = cut(pseudo, box, size)
        if pseudo is not None and pseudo.shape[-2:] != features.shape[-2:]:
            # HRDA: the fused logits at stride 4, the context's features at stride 8
            pseudo = F.interpolate(pseudo[:, None].float(), features.shape[-2:],
                                   mode="nearest")[:, 0].long()
        if self.on == "mixed":  # only the target-origin positions of the mixed batch
            keep = F.interpolate(cut(step.mixed_target, box, size)[:, None].float(),
                                 features.shape[-2:], mode="nearest")[:, 0].bool()
            features = features.permute(0, 2, 3, 1)[keep].T[None, :, None]  # (1, C, 1, n)
            pseudo = None if pseudo is None else pseudo[keep][None, None]
        out = cosine_alignment(features, ref, tau=c.tau, match=c.match,
                               ref_cls=None if pseudo is None else ref_cls, pseudo=pseudo,
                               matmul_dtype=MATMUL_DTYPES[c.matmul])
        step.stats["selected"] = out.selected / max(out.pairs, 1)  # a tensor: no wait here
        if step.diagnose and features.shape[-1] * features.shape[-2] > 1:
            step.stats.update(feature_stats(features, ref))
        return {"cos": out.loss}
