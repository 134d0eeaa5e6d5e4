"""Where the commands write: checked before any work, never over what they did not make, and
never half.

Every command that writes files checks its output paths first (:func:`writable_dir`,
:func:`writable_file`), so a mistyped path fails in a second, not after minutes of evaluation.
A folder a command replaces on a rerun (the demo's runs) is claimed with a marker file when the
command creates it (:func:`claim`); only such folders are emptied, and only of the files a
training run writes (:data:`RUN_FILES`).

Files are written whole or not at all: :func:`atomic_write` writes a temporary file next to the
target and renames it over the target; :func:`append_text` appends a line or takes it back.
A write that fails for a reason the user must act on (:data:`WRITE_ERRORS`: a full disk, a quota,
a read-only file system, a permission) is a :class:`WriteError` naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import tempfile
from pathlib import Path

MARKER = ".cosalign-made.json"  # in a folder a command made: {"by": command}
RUN_FILES = ("ckpt_*.pt", "ckpt_*.pt.*", ".ckpt_*.tmp", "config.yaml", ".config.yaml.*.tmp",
             "metrics.jsonl", ".metrics.jsonl.*.tmp", "tb/events.out.tfevents.*")


class OutputError(Exception):
    """An output path cannot be written, or holds something the command did not make."""


class WriteError(OutputError):
    """Writing a file failed for a cause in :data:`WRITE_ERRORS`; nothing partial was left.
    The message is one line: the file, the cause (and, from a training run, what is intact)."""


WRITE_ERRORS = {errno.ENOSPC: "no space left on the device (disk full)",
                errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError that ``e`` is or was raised from (torch's serializer reports a full disk
    as a RuntimeError whose context is the OSError), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_error(path: str | Path, e: BaseException) -> WriteError | None:
    """The :class:`WriteError` for ``e``, raised while writing ``path``, when its cause is one
    of :data:`WRITE_ERRORS`; else None (the caller re-raises ``e``)."""
    if isinstance(e, WriteError):
        return e
    cause = os_error_in(e)
    if cause is None or cause.errno not in WRITE_ERRORS:
        return None
    return WriteError(f"{path}: cannot write: {WRITE_ERRORS[cause.errno]}")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", durable: bool = False):
    """``with atomic_write(path) as f: f.write(...)``: the data go to a temporary file in
    ``path``'s folder (``.<name>.<random>.tmp``, permissions from the umask), which replaces
    ``path`` when the block ends; on any error it is deleted and ``path`` is as it was.
    ``durable``: fsync before the rename (checkpoints), so a machine crash cannot leave an
    empty file under the final name. Write failures of :data:`WRITE_ERRORS` become
    :class:`WriteError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        failure = write_error(path, e)
        if failure is not None and failure is not e:
            raise failure from None
        raise


def write_text(path: str | Path, text: str) -> None:
    """``path.write_text(text)``, whole or not at all (:func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (made if missing); if the write fails the file is cut back
    to its length before, so no half line is left (a :class:`WriteError` for
    :data:`WRITE_ERRORS`)."""
    data = text.encode()
    fd = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except BaseException:
            os.ftruncate(fd, size)
            raise
    except OSError as e:
        failure = write_error(path, e)
        if failure is not None:
            raise failure from None
        raise
    finally:
        if fd is not None:
            os.close(fd)


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
    write_text(marker, json.dumps({"by": by}))


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
