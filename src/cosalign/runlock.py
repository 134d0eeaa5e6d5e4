"""One writer per run folder: an operating-system lock held for the writing command's lifetime.

``train``, the demo, ``pretrain`` and the ablation runner (through ``train``) hold
:func:`run_lock` on the folder they write. The lock is a POSIX record lock (``fcntl.lockf``) on
``<folder>/.cosalign-lock``: the kernel drops it when the process ends however it ends (a kill
-9 never leaves a stale lock), and it is the lock NFS (v3 through lockd, v4 natively), Lustre
(mounted with ``flock``) and GPFS carry between machines (BeeGFS only with its global file
locks switched on). The file holds the holder's
process id, host and command, which a refused writer prints; it is left in place (deleting a
lock file would let two processes lock two different files).

A folder is also refused while a folder above it is locked by another process (the demo locks
``runs/demo``; a ``train --out runs/demo/ours`` would write into its runs). Readers (``report``,
``eval``, ``viz``) take no lock. In one process the lock is re-entrant: the demo holds its
folders and its ``train`` calls take them again.

Where the file system has no locks (ENOLCK, ENOSYS, EOPNOTSUPP: e.g. NFS mounted ``nolock``),
the command stops and says so; ``--no-lock`` runs without the guard.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from cosalign.outputs import OutputError, writable_dir, write_error

LOCK_FILE = ".cosalign-lock"
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
_held: dict[Path, list] = {}  # folder (resolved) -> [fd, count] held by this process


class LockError(OutputError):
    """The run folder is being written by another process, or cannot be locked."""


def _holder(lock_file: Path) -> str:
    """"process 1234 on host gpu07 (cosalign train ...), since 12:03:04" as the holder wrote it."""
    try:
        h = json.loads(lock_file.read_text())
        return (f"process {h['pid']} on host {h['host']} ({h['command']}), since "
                f"{h['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its name yet)"


def _try_lock(lock_file: Path) -> int | None:
    """An open descriptor holding the lock on ``lock_file`` (made if missing), or None when
    another process holds it. :class:`LockError` when the file system cannot lock."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        failure = write_error(lock_file, e)
        raise (failure or LockError(f"{lock_file}: cannot open the lock file ({e.strerror})")) \
            from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        if e.errno in NO_LOCKS:
            raise LockError(
                f"{lock_file.parent}: the file system cannot lock files ({e.strerror}), so "
                "nothing stops a second command writing this run folder at the same time; "
                "pass --no-lock to run without that guard") from None
        raise LockError(f"{lock_file}: cannot lock ({e.strerror})") from None


def _locked_above(folder: Path) -> Path | None:
    """The nearest folder above ``folder`` locked by another process, if any."""
    for parent in folder.parents:
        lock_file = parent / LOCK_FILE
        if parent in _held or not lock_file.is_file():
            continue
        try:
            fd = os.open(lock_file, os.O_RDWR)
        except OSError:  # another user's folder: not ours to test
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return parent
        finally:
            os.close(fd)
    return None


@contextlib.contextmanager
def run_lock(folder: str | Path, enabled: bool = True):
    """Hold the lock on ``folder`` (made if missing) for the block; a :class:`LockError` naming
    the holder when another process holds it or one above it. ``enabled=False``
    (``--no-lock``) takes none. A folder this call made and that holds nothing but the lock
    file at the end (a command refused before it wrote) is removed again."""
    if not enabled:
        yield
        return
    folder = Path(folder).absolute()
    key = folder.resolve() if folder.exists() else folder
    if key in _held:  # this process holds it already (the demo's runs)
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    made = not folder.exists()
    writable_dir(folder, "run folder")  # made if missing; a file or a read-only one: one line
    key = folder.resolve()
    lock_file = key / LOCK_FILE
    try:
        fd = _try_lock(lock_file)
        if fd is None:
            raise LockError(f"{folder}: another command is writing this run folder: "
                            f"{_holder(lock_file)}; wait for it or stop it (readers such as "
                            "report and eval need no lock)")
        try:
            above = _locked_above(key)
            if above is not None:
                raise LockError(f"{folder}: {above} above it is being written by "
                                f"{_holder(above / LOCK_FILE)}; wait for it or write elsewhere")
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "command": " ".join(["cosalign", *sys.argv[1:]])[:200],
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            with contextlib.suppress(OSError):  # a courtesy: the lock holds without the name
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
            _held[key] = [fd, 1]
            try:
                yield
            finally:
                del _held[key]
        finally:
            os.close(fd)  # releases the lock
    finally:
        if made:  # refused before it wrote anything: the folder goes again
            with contextlib.suppress(OSError):
                if [p.name for p in key.iterdir()] == [LOCK_FILE]:
                    lock_file.unlink()
                    key.rmdir()
