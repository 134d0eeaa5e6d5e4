"""What a method is made of: target-side terms, and the step they see.

A :class:`Term` is one part with one job (an adaptation loss, or the BatchNorm control's
target pass). The training step (engine/train.py ``train_step``) runs the source pass, the
student's pass over the clean target batch when an active term needs it, then every active
term of the run in the fixed order of ``methods.table.TERMS``, sums their
weighted losses into one backward pass, steps the optimizer, calls each term's
:meth:`Term.after_step` (e.g. the discriminators' own update), and updates the dictionary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from cosalign.config import Config, LossConfig
from cosalign.models.upsample import upsample_logits


@dataclass
class Step:
    """What the terms of one iteration see. Shapes: ``x_s`` (B, 3, H_s, W_s), ``y_s``
    (B, H_s, W_s) the source batch; ``x_t`` (B, 3, H, W) the target batch; ``f_s``
    (B, C, h, w) detached source features; ``pred_s``/``pred_s_aux`` (B, K, H_s, W_s) source
    logits at label resolution; ``out_t`` the student's pass over the clean target batch
    (features, logits, aux at output stride), set by the step before the terms run when a term
    needs it; ``model`` the student (DDP-wrapped under torchrun); ``autocast`` a factory of the
    run's autocast context. Self-training adds ``mixed`` (the student's pass over the mixed
    batch), ``mixed_target`` (B, H, W) True at target-origin pixels, ``teacher_logits``
    (B, K, h, w), and ``pseudo``: the teacher's (B, H, W) pseudo-labels of the clean target
    batch and their (B, H, W) weights (MIC learns from them too); ``valid_t`` (B, H, W) bool,
    where the target's pseudo-labels may weigh (data.target.margins; None: everywhere);
    ``y_f`` the labels of the area ``f_s`` covers (HRDA's detail box, models/hrda.py ``cut``;
    None: all of ``y_s``), read through :attr:`f_labels`."""

    it: int
    model: Any
    x_s: Tensor
    y_s: Tensor
    x_t: Tensor
    f_s: Tensor
    pred_s: Tensor
    pred_s_aux: Tensor | None  # None: the network has no auxiliary head
    dictionary: Any  # losses.ClassFeatureDictionary
    autocast: Callable = contextlib.nullcontext
    diagnose: bool = False  # a logging step: terms may add diagnostics to ``stats``
    align_corners: bool = True  # how logits are upsampled (model.align_corners)
    out_s: Any = None  # the student's source pass, during the source losses only
    out_t: Any = None
    mixed: Any = None
    mixed_target: Tensor | None = None
    teacher_logits: Tensor | None = None
    pseudo: tuple[Tensor, Tensor] | None = None
    valid_t: Tensor | None = None
    y_f: Tensor | None = None
    stats: dict = field(default_factory=dict)
    _pred_t: dict = field(default_factory=dict)

    @property
    def f_labels(self) -> Tensor:
        """(B, H_f, W_f) the source labels under ``f_s``."""
        return self.y_s if self.y_f is None else self.y_f

    def pred_t(self, head: str = "logits") -> Tensor:
        """(B, K, H, W) target logits of ``head`` ("logits" or "aux") at input resolution, fp32,
        computed once per step."""
        if head not in self._pred_t:
            self._pred_t[head] = upsample_logits(getattr(self.out_t, head), self.x_t.shape[-2:],
                                                 self.align_corners)
        return self._pred_t[head]


class Term:
    """One target-side part of a method.

    ``weights`` names its weights in ``cfg.loss``; each is also the name its loss is logged
    under. A term is part of a run when one of them is > 0 (:meth:`enabled`). Subclasses
    implement :meth:`losses` and, when they need them, the hooks below.
    """

    name: ClassVar[str]
    weights: ClassVar[tuple[str, ...]]
    grad: ClassVar[bool] = True  # False: the target pass runs without autograd for this term
    needs_target: bool = True  # whether it reads ``out_t``, the student's clean target pass

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        self.weight = {k: float(getattr(cfg.loss, k)) for k in self.weights}

    def setup(self, model: torch.nn.Module) -> None:
        """Called once with the student (not DDP-wrapped), its weights loaded, before a resume
        loads the term's state."""

    @classmethod
    def enabled(cls, loss: LossConfig) -> bool:
        return any(getattr(loss, k) > 0 for k in cls.weights)

    def active(self, it: int) -> bool:
        """Whether the term runs at iteration ``it`` (e.g. not before a start iteration)."""
        return True

    def before_step(self, it: int) -> None:
        """Called before the source pass."""

    def source_losses(self, step: Step) -> dict[str, Tensor]:
        """Unweighted 0-dim losses on the source pass (``step.out_s``), back-propagated with
        the segmentation loss."""
        return {}

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Unweighted 0-dim losses by name (a subset of ``weights``)."""
        return {}

    def after_step(self, step: Step) -> dict[str, Tensor]:
        """Called after the network's optimizer step; returns extra values to log."""
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint must hold to resume this term exactly (empty: nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

