"""Stopping a run on Ctrl-C (SIGINT) or SIGTERM at a safe point, with the run intact.

While :func:`stop_signals` is installed (``train`` installs it for its lifetime), a signal
raises :class:`Stopped` at once, except inside a :meth:`StopSignals.deferred` block (a training
step, a checkpoint being written): there the first signal is remembered and the block finishes;
the loop then writes a checkpoint of that iteration and raises :class:`Stopped`. A second signal
raises at once wherever the run is. Schedulers send SIGTERM and kill some seconds later (Slurm's
KillWait: 30 s by default), so what a signal costs is the end of one step and one checkpoint.

:class:`Stopped` derives from KeyboardInterrupt, so ``except Exception`` never swallows it and a
script that catches Ctrl-C catches it too. The command line prints its one line and exits with
128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process the
signal killed.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import torch

from cosalign.engine import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
AGREE_EVERY = 10  # steps between the ranks' agreements on a stop (torchrun)


class Stopped(KeyboardInterrupt):
    """A run stopped by ``signum``; ``str()`` says where and what is intact (the training loop
    adds that), :attr:`code` is the exit code."""

    def __init__(self, signum: int, what: str = "") -> None:
        super().__init__(what or f"stopped by {NAMES.get(signum, signum)}")
        self.signum = signum
        self.where = ""  # set where the message says what is intact

    @property
    def code(self) -> int:
        return 128 + int(self.signum)


class StopSignals:
    """The handler :func:`stop_signals` installs; :attr:`requested` is the first signal seen."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._defer = 0

    def __call__(self, signum, frame) -> None:
        if self._defer and self.requested is None:  # no line now: the stop prints one
            self.requested = signum
            return
        self.requested = self.requested or signum
        raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self):
        """A block a first signal does not interrupt (it is remembered in :attr:`requested`)."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1

    def agreed(self, device: torch.device, it: int) -> int | None:
        """The signal to act on after step ``it``: this process's at once; under torchrun any
        rank's, agreed by one all-reduce every :data:`AGREE_EVERY` steps (reading it waits for
        the GPU, which the loop otherwise does only when it logs), so that all ranks stop after
        the same step."""
        if distributed.world_size() == 1:
            return self.requested
        if (it + 1) % AGREE_EVERY:
            return None
        flag = torch.tensor([self.requested or 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None


@contextlib.contextmanager
def stop_signals():
    """Install a :class:`StopSignals` for SIGINT and SIGTERM for the block (yielded), and put
    the previous handlers back after it. Outside the main thread, where Python cannot install
    handlers, it yields one that never sees a signal."""
    handler = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield handler
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGINT and SIGTERM to the main process
    (a terminal's Ctrl-C reaches every process of the group; a worker that died of it would
    break the step the main process is finishing)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
