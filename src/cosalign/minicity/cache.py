"""The one cache key of MiniCity's generated things (the benchmark's trees, the pretrained
backbone): a hash of the text of the code that makes them."""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # src/cosalign


def code_hash(*names: str) -> str:
    """sha1 (16 hex digits) of the text of ``names`` (paths under src/cosalign/), line endings
    normalized. The text, not the syntax tree: ``ast.dump`` differs between Python versions, and
    a shipped file must read as current on every one. Comments count: edit them, remake."""
    h = hashlib.sha1()
    for name in names:
        h.update((PACKAGE / name).read_text().replace("\r\n", "\n").encode())
    return h.hexdigest()[:16]
