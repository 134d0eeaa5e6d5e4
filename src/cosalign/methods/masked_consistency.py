"""MIC's masked image consistency (Hoyer et al., "MIC: Masked Image Consistency for
Context-Enhanced Domain Adaptation", CVPR 2023), as a term after self-training's.

Each step, after the mixed image's loss (methods/self_training.py), one more student pass on the
target batch (B, 3, H, W): colour-jittered and blurred as MIC does (methods/mixing.py,
``augment_masked``: one jitter call for the batch, one sigma; new draws), then
multiplied by a patch mask M (B, 1, H, W) that keeps each ``mask_patch`` x ``mask_patch`` patch
when u > ``mask_ratio``, u ~ U(0, 1) per patch (so 0.7 drops 70% of the patches; a dropped
patch becomes 0, the mean colour, in the normalized input). The loss is

    L_mic = mean over pixels of q_ij * CE(student(M * aug(x_t)), y_ij)

with the teacher's pseudo-labels y and weights q of the clean target batch, the ones the mixed
loss used (border bands at 0 included): no extra teacher pass. Weight ``loss.mic`` (MIC: 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cosalign.config import Config
from cosalign.losses.segmentation import segmentation_loss
from cosalign.methods.base import Step, Term
from cosalign.methods.mixing import augment_masked, from_unit_rgb, to_unit_rgb


def patch_mask(batch: int, height: int, width: int, patch: int, ratio: float,
               device: torch.device) -> Tensor:
    """(B, 1, H, W) float mask: ceil(H / patch) x ceil(W / patch) patches, each kept (1) when
    its draw u ~ U(0, 1), from the CPU generator, exceeds ``ratio``, else 0."""
    rows, cols = -(-height // patch), -(-width // patch)
    keep = (torch.rand(batch, 1, rows, cols) > ratio).float().to(device)
    mask = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return mask[..., :height, :width]


class MaskedConsistency(Term):
    name = "masked_consistency"
    weights = ("mic",)

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        super().__init__(cfg, num_classes, device)
        self.cfg = cfg.selftrain
        self.normalization = cfg.data.normalization
        self.needs_target = False  # its own pass, on the masked image

    def losses(self, step: Step) -> dict[str, Tensor]:
        if step.pseudo is None:
            raise RuntimeError("masked consistency runs after self-training, which makes the "
                               "pseudo-labels it learns from")
        pseudo, weight = step.pseudo
        c = self.cfg
        with torch.no_grad():
            rgb = augment_masked(to_unit_rgb(step.x_t, self.normalization), c.jitter,
                                 c.jitter_p, c.blur_p)
            b, _, h, w = rgb.shape
            x = from_unit_rgb(rgb, self.normalization) * patch_mask(
                b, h, w, c.mask_patch, c.mask_ratio, rgb.device)
        with step.autocast():
            out = step.model(x)
        return {"mic": segmentation_loss(out, pseudo, weight, align_corners=step.align_corners)}
