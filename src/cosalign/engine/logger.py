"""Run logs: ``metrics.jsonl`` always, TensorBoard when it is installed. Rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cosalign.engine import distributed


class Logger:
    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.enabled = distributed.is_main()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                self.tb = None

    def log(self, it: int, kind: str, values: dict) -> None:
        """Append ``{"iter": it, "kind": kind, **values}`` to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        record = {"iter": it, "kind": kind, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
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
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
