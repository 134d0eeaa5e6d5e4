"""docs/USAGE.md's table of presets, made from ``src/cosalign/configs/`` (a test checks that the
page holds what this prints, so the list cannot go stale).

    .venv/bin/python tools/presets_table.py            # print the table
    .venv/bin/python tools/presets_table.py --write    # put it between the page's markers

Each row is a preset as ``cosalign train --config NAME --method M`` loads it: its first comment
sentence, the network, and the iterations and batch per method where its ``methods:`` section
changes them (DACS's setting for self-training on the DeepLab-v2 presets).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosalign.config import PRESET_DIR, ConfigError, preset_names
from cosalign.methods.table import METHODS, method_config

ROOT = Path(__file__).resolve().parents[1]
USAGE = ROOT / "docs" / "USAGE.md"
BEGIN, END = "<!-- presets: begin -->", "<!-- presets: end -->"


def summary(name: str) -> str:
    """The preset's first sentence: its leading comment lines up to the first full stop."""
    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _by_method(name: str, value) -> str:
    """``value(cfg)`` for source-only, and for the methods whose preset section changes it."""
    base = value(method_config(name, [], "source_only"))
    other = {}
    for method in METHODS:
        try:
            v = value(method_config(name, [], method))
        except ConfigError:  # a method the preset cannot run (e.g. ours without loss.cos)
            continue
        if v != base:
            other.setdefault(v, []).append(method)
    extra = "; ".join(f"{', '.join(ms)}: {v}" for v, ms in other.items())
    return f"{base} ({extra})" if extra else str(base)


def table() -> str:
    rows = ["| preset | what it trains | network | iterations | batch (source + target) |",
            "|---|---|---|---|---|"]
    for name in preset_names():
        cfg = method_config(name, [], "source_only")
        rows.append(f"| `{name}` | {summary(name)} | {cfg.model.arch} | "
                    f"{_by_method(name, lambda c: c.train.iters)} | "
                    f"{_by_method(name, lambda c: f'{c.data.batch_size} + {c.data.batch_size}')} |")
    return "\n".join(rows)


def current(page: str) -> str:
    """The table between the page's markers."""
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    return page[start:end].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"update {USAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    made = table()
    if not args.write:
        print(made)
        return 0
    page = USAGE.read_text()
    USAGE.write_text(page.replace(current(page), made))
    print(f"wrote the presets table of {USAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
