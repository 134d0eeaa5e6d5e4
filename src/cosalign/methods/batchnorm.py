"""The BatchNorm control: the target batch goes through the network in train mode, with no
loss, so BatchNorm's running statistics move toward the target as under every adaptation loss.
Ours minus the control is what the cosine alignment adds beyond those statistics."""

from __future__ import annotations

from torch import Tensor

from cosalign.config import LossConfig
from cosalign.methods.base import Step, Term


class TargetBatchNorm(Term):
    name = "target_bn"
    weights = ()
    grad = False

    @classmethod
    def enabled(cls, loss: LossConfig) -> bool:
        return loss.target_bn

    def losses(self, step: Step) -> dict[str, Tensor]:
        return {}  # the step's target pass did it all
