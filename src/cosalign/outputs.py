"""Where the commands write: checked before any work, and never over what they did not make.

Every command that writes files checks its output paths first (:func:`writable_dir`,
:func:`writable_file`), so a mistyped path fails in a second, not after minutes of evaluation.
A folder a command replaces on a rerun (the demo's runs) is claimed with a marker file when the
command creates it (:func:`claim`); only such folders are emptied, and only of the files a
training run writes (:data:`RUN_FILES`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

MARKER = ".cosalign-made.json"  # in a folder a command made: {"by": command}
RUN_FILES = ("ckpt_*.pt", "ckpt_*.pt.*", ".ckpt_*.tmp", "config.yaml", "metrics.jsonl",
             "tb/events.out.tfevents.*")


class OutputError(Exception):
    """An output path cannot be written, or holds something the command did not make."""


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Make ``path`` (and its parents) if missing and check a file can be created in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {what} is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cosalign-write-test-"):
            pass
    except OSError as e:
        raise OutputError(f"{path}: {what} is not writable ({e.strerror or e})") from None
    return path


def writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check ``path`` can be written (its folder made if missing); it is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: {what} is a folder; expected a file path")
    writable_dir(path.parent, f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: {what} exists and is not writable")
    return path


def claim(folder: Path, by: str, names: tuple[str, ...]) -> None:
    """Make sure command ``by`` may write ``names`` (files or folders) at the top of ``folder``,
    replacing them on a rerun: a folder that holds ``by``'s marker is ours already; otherwise
    none of ``names`` may exist there (they would be the user's), and the marker is written.
    Other files in ``folder`` are never touched."""
    folder = Path(folder)
    marker = folder / MARKER
    try:
        if json.loads(marker.read_text()).get("by") == by:
            return
    except (OSError, ValueError, AttributeError):
        pass
    clash = [n for n in names if (folder / n).exists()]
    if clash:
        raise OutputError(f"{folder / clash[0]}: exists and was not made by `{by}` (no "
                          f"{MARKER} in {folder}); choose another output folder or move it away")
    writable_dir(folder)
    marker.write_text(json.dumps({"by": by}))


def remove_run_files(run_dir: Path) -> list[Path]:
    """Delete the files a training run writes (:data:`RUN_FILES`) from ``run_dir`` and nothing
    else; the folders they leave empty too. Returns what was deleted."""
    run_dir = Path(run_dir)
    gone = []
    for pattern in RUN_FILES:
        for p in sorted(run_dir.glob(pattern)):
            if p.is_file() or p.is_symlink():
                p.unlink()
                gone.append(p)
    tb = run_dir / "tb"
    if tb.is_dir() and not any(tb.iterdir()):
        tb.rmdir()
    return gone
