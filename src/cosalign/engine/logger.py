"""Run logs: ``metrics.jsonl`` always, TensorBoard when it is installed. Rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cosalign.engine import distributed
from cosalign.outputs import append_text, write_text


class MetricsError(Exception):
    """A metrics.jsonl line (other than a last one cut short by a kill) is not a JSON record."""


class Logger:
    """``resume_at``: the iteration the run continues from; the lines (and TensorBoard events)
    of later iterations, written before an interruption, are dropped, so each iteration is
    logged once however often the run was resumed."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_at: int = 0) -> None:
        self.enabled = distributed.is_main()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if self.enabled and self.path.is_file():
            kept = [r for r in read_metrics(run_dir) if r["iter"] <= resume_at]
            write_text(self.path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                        purge_step=resume_at + 1 if resume_at else None)
            except ImportError:
                self.tb = None

    def log(self, it: int, kind: str, values: dict) -> None:
        """Append ``{"iter": it, "kind": kind, **values}`` to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        record = {"iter": it, "kind": kind, **values}
        append_text(self.path, json.dumps(record, allow_nan=True) + "\n")  # whole or not at all
        if self.tb is not None:
            for key, value in _scalars(values):
                self.tb.add_scalar(f"{kind}/{key}", value, it)

    def image(self, it: int, tag: str, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 image to TensorBoard (no-op without it)."""
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, image, it, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _scalars(values: dict, prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                yield f"{prefix}{key}", value


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` ([] without one). A last line without its
    newline is what a kill leaves mid-write: skipped (a resume drops it). Any other line that is
    not a record is a :class:`MetricsError` naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("iter"), int):
                raise ValueError("not a record with an integer 'iter'")
        except ValueError as e:
            if i == len(lines):  # cut short: the file does not end with a newline
                break
            raise MetricsError(f"{path}: line {i} is not a metrics record ({e})") from None
        out.append(record)
    return out
