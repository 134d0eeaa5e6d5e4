"""MinEnt and AdvEnt terms (Vu et al., "ADVENT", CVPR 2019; docs/METHOD.md section 4).

With p = softmax(logits) over K classes at every pixel:

    entropy_map = -sum_k p_k log p_k / log K            (B, H, W), in [0, 1]
    entropy_loss = mean(entropy_map)                   MinEnt
    self_information = -p log p / log K                 (B, K, H, W), the discriminator's input
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def self_information(logits: Tensor) -> Tensor:
    """Weighted self-information: (B, K, H, W) logits -> (B, K, H, W), terms in [0, 1/(e log K)]."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -log_p.exp() * log_p / math.log(logits.shape[1])


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean normalized entropy: uniform logits give 1, a one-hot prediction gives 0.

    Shape: logits (B, K, H, W) -> scalar.
    """
    return self_information(logits).sum(dim=1).mean()
