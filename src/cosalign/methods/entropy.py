"""MinEnt (Vu et al., CVPR 2019): minimize the mean entropy of the target predictions."""

from __future__ import annotations

from torch import Tensor

from cosalign.losses import entropy_loss
from cosalign.methods.base import Step, Term

HEADS = {"ent": "logits", "ent_aux": "aux"}


class Entropy(Term):
    """L_ent = mean over pixels of -sum_k p_k log p_k / log K, per head with a weight > 0."""

    name = "entropy"
    weights = ("ent", "ent_aux")

    def losses(self, step: Step) -> dict[str, Tensor]:
        return {k: entropy_loss(step.pred_t(HEADS[k])) for k in self.weights if self.weight[k] > 0}
