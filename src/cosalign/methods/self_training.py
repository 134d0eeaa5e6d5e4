"""Self-training with an EMA teacher, class mixing and confidence-weighted pseudo-labels: DACS
(Tranheden et al., WACV 2021) as refined by DAFormer (Hoyer et al., CVPR 2022); the switches
and their sources are in docs/METHOD.md section 10.

Each step (shapes: target batch (B, 3, H, W)):

1. the teacher (train mode, its dropout and stochastic depth off) labels the clean target
   batch: p = softmax(teacher(x_t)) at (H, W), pseudo-label argmax p, and one weight per batch,
   q = share of pixels with max p >= ``threshold``; rows in the ignored top and bottom bands
   weigh 0, and so do the image's margins (``data.target.margins``, HRDA's);
2. ClassMix: half of the classes of each source image (or of the batch) pasted onto the target
   image (the source batch cropped to the target's size when it is larger); label and weight
   mixed with the same mask (source pixels weigh 1); colour jitter and blur on the mixed image
   (methods/mixing.py);
3. L_st = mean over pixels of weight * CE(student(mixed), mixed label);
4. after the optimizer step, the teacher's parameters (not its buffers) follow the student,
   theta_T <- a theta_T + (1 - a) theta_S, by ``selftrain.ema``:
   - ``daformer``: the student is copied into the teacher at the first self-training step and
     the k-th update (k = 1, 2, ...) has a = min(1 - 1/(k + 1), alpha): the teacher is the
     running mean of theta_0 .. theta_k, then a fixed momentum (DAFormer's ``dacs.py``);
   - ``dacs``: the k-th update (k = 0, 1, ...) has a = min(1 - 1/(k + 1), alpha), so the first
     one copies the student after its first step and theta_0 drops out (DACS's ``trainUDA.py``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from cosalign.config import Config
from cosalign.losses.segmentation import segmentation_loss
from cosalign.methods.base import Step, Term
from cosalign.methods.mixing import (
    augment_mixed,
    class_mix_masks,
    from_unit_rgb,
    random_crop_like,
    to_unit_rgb,
)
from cosalign.models.mit import DropPath
from cosalign.models.upsample import upsample_logits


def stochastic_layers_off(model: torch.nn.Module) -> None:
    """Dropout and stochastic depth off, everything else as it is (the teacher stays in train
    mode: BatchNorm normalizes with the target batch), as DAFormer and MIC do before labelling."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd | DropPath):
            m.training = False


class SelfTraining(Term):
    name = "self_training"
    weights = ("st",)

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        super().__init__(cfg, num_classes, device)
        self.cfg = cfg.selftrain
        self.normalization = cfg.data.normalization
        self.needs_target = False  # it makes its own passes: the teacher's and the mixed image's
        self.teacher: torch.nn.Module | None = None
        self.student: torch.nn.Module | None = None
        self.t0: int | None = None  # the first iteration it ran

    def setup(self, model: torch.nn.Module) -> None:
        """The teacher starts as a copy of the student (after its weights are loaded)."""
        self.student = model
        self.teacher = copy.deepcopy(model).requires_grad_(False)

    def before_step(self, it: int) -> None:
        if self.teacher is None:
            raise RuntimeError("SelfTraining.setup(model) must be called before training")
        if self.t0 is None:
            self.t0 = it
            if self.cfg.ema == "daformer":  # DAFormer's _init_ema_weights: parameters only
                with torch.no_grad():
                    for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                        pt.copy_(ps)

    @torch.no_grad()
    def _pseudo_labels(self, step: Step) -> tuple[Tensor, Tensor, Tensor]:
        """(B, H, W) teacher labels, (B, H, W) weights, and the teacher's logits at output
        stride, for the clean target batch."""
        c = self.cfg
        if c.teacher == "eval":  # the student's BatchNorm statistics (ProDA copies buffers)
            for bt, bs in zip(self.teacher.buffers(), self.student.buffers()):
                bt.copy_(bs)
        self.teacher.train(c.teacher == "train")
        stochastic_layers_off(self.teacher)
        with step.autocast():
            logits = self.teacher(step.x_t).logits
        prob = torch.softmax(upsample_logits(logits, step.x_t.shape[-2:], step.align_corners),
                             dim=1)
        conf, pseudo = prob.max(dim=1)
        q = (conf >= c.threshold).float().mean()
        weight = q.expand_as(conf).clone()
        h = weight.shape[1]
        top, bottom = round(c.ignore_top * h), round(c.ignore_bottom * h)
        weight[:, :top] = 0
        if bottom:
            weight[:, h - bottom:] = 0
        if step.valid_t is not None:  # HRDA's margins, cropped with the image
            weight = weight * step.valid_t
        step.stats["pseudo_weight"] = q
        return pseudo, weight, logits.float()

    def losses(self, step: Step) -> dict[str, Tensor]:
        c = self.cfg
        pseudo, weight, teacher_logits = self._pseudo_labels(step)
        x_s, y_s = random_crop_like(step.x_s, step.y_s, tuple(step.x_t.shape[-2:]))
        with torch.no_grad():
            source = class_mix_masks(y_s, c.mix)  # (B, H, W): pasted source pixels
            x = torch.where(source.unsqueeze(1), x_s, step.x_t)
            rgb = augment_mixed(to_unit_rgb(x, self.normalization), c.jitter, c.jitter_p,
                                c.blur_p)
            x = from_unit_rgb(rgb, self.normalization)
            y = torch.where(source, y_s, pseudo)
            w = torch.where(source, torch.ones_like(weight), weight)
        with step.autocast():
            out = step.model(x)
        loss = segmentation_loss(out, y, w, align_corners=step.align_corners)
        step.mixed, step.mixed_target, step.teacher_logits = out, ~source, teacher_logits
        step.pseudo = pseudo, weight
        return {"st": loss}

    @torch.no_grad()
    def after_step(self, step: Step) -> dict[str, Tensor]:
        k = step.it - self.t0 + (self.cfg.ema == "daformer")  # this update's number
        alpha = min(1 - 1 / (k + 1), self.cfg.alpha)
        for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
            pt.mul_(alpha).add_(ps.detach(), alpha=1 - alpha)
        return {}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "t0": self.t0}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.t0 = state["t0"]
