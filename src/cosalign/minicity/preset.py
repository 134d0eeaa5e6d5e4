"""The MiniCity preset with its dataset roots under one folder (the demo, the tests and the
ablation all train through it)."""

from __future__ import annotations

from pathlib import Path

from cosalign.config import Config
from cosalign.methods import method_config


def minicity_config(data_dir: str | Path, overrides: list[str] | None = None,
                    method: str | None = None) -> Config:
    """The MiniCity preset with its dataset roots under ``data_dir``."""
    d = Path(data_dir)
    return method_config("minicity", [
        f"data.source.root={d / 'gta5'}", f"data.source.list_file={d / 'gta5' / 'train.txt'}",
        f"data.target.root={d / 'cityscapes'}", f"data.val.root={d / 'cityscapes'}",
        *(overrides or []),
    ], method=method)
