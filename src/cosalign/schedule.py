"""The learning-rate schedule of every optimizer here (the network's, AdvEnt's discriminators',
`cosalign pretrain`'s): polynomial decay with an optional linear warm-up. Below `methods/` and
`engine/`, which both read it."""

from __future__ import annotations


def poly_lr(base: float, it: int, total: int, power: float, warmup: int = 0) -> float:
    """base * (1 - it / total) ** power, 0 after ``total``; during the first ``warmup``
    iterations a linear ramp from 1e-6 x base instead (DAFormer's warm-up)."""
    if it < warmup:
        return base * (1e-6 + (1 - 1e-6) * it / warmup)
    return base * max(0.0, 1.0 - it / total) ** power
