"""The training loop's learning rate: poly decay and mmcv 1.x's linear warm-up, as DAFormer,
HRDA and MIC schedule it (``_base_/schedules/poly10warm.py``: warm-up 1500 iterations from a
ratio of 1e-6, poly power 1.0, min_lr 0).

mmcv's ``LrUpdaterHook`` scales the rate the poly rule gives at this iteration: for it < W,

    lr(it) = poly(it) x (1 - (1 - it / W) (1 - ratio)),   poly(it) = base (1 - it / T) ** power

so iteration 0 trains at ratio x base and iteration W at poly(W). ``cosalign.schedule.poly_lr``
ramps the base rate instead; MiniCity's pretraining keeps that (its own recipe).
"""

from __future__ import annotations

from cosalign.schedule import poly_lr


def learning_rate(base: float, it: int, total: int, power: float, warmup: int = 0,
                  ratio: float = 1e-6) -> float:
    """The rate of iteration ``it`` (0-based): poly over ``total`` iterations, 0 after it,
    scaled by mmcv's linear warm-up during the first ``warmup`` iterations."""
    lr = poly_lr(base, it, total, power)
    if it < warmup:
        lr *= 1 - (1 - it / warmup) * (1 - ratio)
    return lr
