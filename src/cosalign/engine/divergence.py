"""What a diverged run leaves: the checkpoints written while the loss was already blowing up
are set aside, so ``train --resume`` starts from one that trains.

A loss term that becomes NaN or inf stops the run before its gradient is applied. But the
weights may have gone bad earlier with every loss still finite: with a learning rate far too
high the first steps make the weights huge (1e18), the loss follows (1e18), and only then
becomes NaN. A checkpoint written in between holds finite but useless weights, and resuming
from it fails again at once, whatever the new settings. So the loop keeps the source
segmentation loss of the last :data:`WINDOW` iterations (on the device: no wait for the GPU),
and on a stop :func:`divergence_start` finds where the blow-up began: the first iteration of
the final stretch whose losses are all non-finite or above :data:`FACTOR` times the median of
the finite losses before it. Checkpoints from that iteration on are renamed ``*.diverged``
(kept for a look); the message names the checkpoint a resume takes and what to change.
"""

from __future__ import annotations

import math

import torch

from cosalign.config import Config
from cosalign.engine.checkpoint import checkpoint_iteration, list_checkpoints, set_aside

WINDOW = 1000  # iterations of loss kept
FACTOR = 10.0  # a loss this many times the window's median counts as blowing up


class LossHistory:
    """One loss per iteration for the last :data:`WINDOW` iterations, kept on its device."""

    def __init__(self, start: int, device: torch.device, window: int = WINDOW) -> None:
        self.start, self.window = start, window
        self.values = torch.full((window,), float("nan"), device=device)
        self.count = 0  # iterations recorded since ``start``

    def add(self, loss: torch.Tensor) -> None:
        """Record the next iteration's loss (a 0-dim tensor; nothing waits for it)."""
        self.values[self.count % self.window] = loss.detach().float()
        self.count += 1

    def recent(self) -> list[tuple[int, float]]:
        """``(iteration, loss)`` of the recorded iterations, oldest first (waits for the GPU)."""
        n = min(self.count, self.window)
        first = self.count - n
        values = self.values.cpu().tolist()
        return [(self.start + i, values[i % self.window]) for i in range(first, self.count)]


def divergence_start(history: list[tuple[int, float]], stop: int) -> int | None:
    """The first iteration of the blow-up that ended in the non-finite loss at ``stop``: the
    earliest iteration ``s`` such that every loss from ``s`` up to ``stop`` is non-finite or
    above :data:`FACTOR` x the median of the finite losses before ``s`` (the baseline is taken
    before the stretch, so a blow-up that began two iterations into a run is not hidden by its
    own huge losses); ``stop`` itself when the loss just before it was sane. None when no
    iteration before ``stop`` was recorded (the run had just resumed: its checkpoint was not
    made now)."""
    before = [(it, v) for it, v in history if it < stop]
    if not before:
        return None
    if not any(math.isfinite(v) for _, v in before):
        return before[0][0]
    start, lowest = stop, math.inf  # lowest: the smallest finite loss of the stretch so far
    for i in range(len(before) - 1, -1, -1):
        it, v = before[i]
        prior = sorted(u for _, u in before[:i] if math.isfinite(u))
        if not prior:
            break  # nothing before it to compare with: the run began here
        limit = FACTOR * max(prior[(len(prior) - 1) // 2], 1e-12)
        if min(lowest, v if math.isfinite(v) else math.inf) <= limit:
            break
        start = it
        lowest = min(lowest, v) if math.isfinite(v) else lowest
    return start


def after_divergence(run_dir, stop: int, history: list[tuple[int, float]], term: str,
                     cfg: Config) -> str:
    """Set aside the checkpoints written from the blow-up's start on (they hold the weights
    that made it); returns the message's advice: where a resume starts, what to change."""
    start = divergence_start(history, stop)
    lines = []
    if start is None:
        resumed = [p for p in list_checkpoints(run_dir) if checkpoint_iteration(p) == stop]
        lines.append(f"it had just resumed from {resumed[0].name if resumed else 'a checkpoint'}"
                     ", whose weights or these settings give it; resume with other settings, "
                     "or rename that checkpoint to resume from the one before")
    else:
        aside = [set_aside(p, "diverged").name for p in list_checkpoints(run_dir)
                 if checkpoint_iteration(p) >= start]
        losses = dict(history)
        if start < stop and start - 1 in losses:
            lines.append(f"the loss grew from {losses[start - 1]:.3g} at iteration {start - 1} "
                         f"to {losses[start]:.3g} at iteration {start} before that")
        if aside:
            lines.append(f"set aside the checkpoints written since: {', '.join(aside)}")
    left = list_checkpoints(run_dir)
    lines.append(f"`cosalign train --resume {run_dir}` starts from "
                 + (left[-1].name if left else "the beginning (no checkpoint before it)"))
    lines.append("first change " + advice(term, cfg) + " (add --set KEY=VALUE to the resume)")
    return "; ".join(lines)


def advice(term: str, cfg: Config) -> str:
    """What to change after a non-finite loss term ``term``."""
    tips = []
    if cfg.train.amp == "fp16":
        tips.append("train.amp=bf16 (fp16 overflows; bf16 has fp32's range)")
    weight = getattr(cfg.loss, term, None)
    if isinstance(weight, float) and term != "aux":
        tips.append(f"a lower loss.{term} (now {weight:g})")
    tips.append(f"a lower optim.lr (now {cfg.optim.lr:g})")
    if cfg.optim.warmup_iters == 0:
        tips.append("a warm-up (optim.warmup_iters)")
    return ", or ".join(tips)
