"""The BatchNorm control: the target batch goes through the network in train mode, with no
loss, so BatchNorm's running statistics move toward the target as under every adaptation loss.
Ours minus the control is what the cosine alignment adds beyond those statistics."""

from __future__ import annotations

from cosalign.config import LossConfig
from cosalign.methods.base import Term


class TargetBatchNorm(Term):
    """No loss of its own (the base class's ``losses`` returns none): the step's target pass,
    made because this term reads it, is all it does."""

    name = "target_bn"
    weights = ()
    grad = False

    @classmethod
    def enabled(cls, loss: LossConfig) -> bool:
        return loss.target_bn
