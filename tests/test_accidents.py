"""Ordinary accidents end in one line with the run intact: a second writer in a run folder,
Ctrl-C and SIGTERM, a full disk (or a quota, a read-only file system, a permission)."""

import copy
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import yaml

from cosalign.cli import main
from cosalign.config import to_dict
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.logger import read_metrics
from cosalign.engine.stop import StopSignals
from cosalign.engine.train import train
from cosalign.minicity import minicity_config
from cosalign.outputs import WRITE_ERRORS, WriteError, append_text, atomic_write, write_text
from cosalign.runlock import LOCK_FILE, LockError, run_lock
from tests.conftest import TINY_OVERRIDES
from tests.test_bad_input import assert_one_line, run_cli


def _config_file(cfg, path):
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return str(path)


def _same_weights(a, b):
    wa = load_checkpoint(list_checkpoints(a)[-1])
    wb = load_checkpoint(list_checkpoints(b)[-1])
    assert wa["iteration"] == wb["iteration"]
    atol = 0 if wa["config"]["train"]["device"] == "cpu" else 1e-5  # CUDA: atomics
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=0, atol=atol, msg=k)


def _logged(run):
    keys = [(r["iter"], r["kind"]) for r in read_metrics(run)]
    assert len(keys) == len(set(keys)), keys  # each iteration once
    return keys


def _no_temporary_files(folder):
    assert not [p for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))


def _resumes_to_the_straight_run(run, straight, monkeypatch):
    """No temporary file left; without the test's patches the resume finishes as the
    uninterrupted run, weights bit for bit, each iteration logged once."""
    _no_temporary_files(run)
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_weights(run, straight)
    assert _logged(run) == _logged(straight)


@pytest.fixture(scope="module")
def _short(tiny_minicity):
    return minicity_config(tiny_minicity, [*TINY_OVERRIDES, "train.deterministic=true",
                                           "train.iters=8", "optim.schedule_iters=8",
                                           "train.checkpoint_every=4", "train.eval_every=4"])


@pytest.fixture
def short(_short):
    """The tiny config, 8 iterations, a checkpoint and an evaluation every 4, deterministic."""
    return copy.deepcopy(_short)


@pytest.fixture(scope="module")
def straight(_short, tmp_path_factory):
    """The uninterrupted run of ``short`` (shared: tests only read it)."""
    run = tmp_path_factory.mktemp("accidents") / "straight"
    train(copy.deepcopy(_short), run, progress=False)
    return run


# --- one writer per run folder ------------------------------------------------------------

HOLD = ("import sys; from cosalign.runlock import run_lock; lock = run_lock(sys.argv[1]); "
        "lock.__enter__(); print('held', flush=True); sys.stdin.read()")


@pytest.fixture
def holder():
    """``holder(folder)`` starts another process that holds ``folder``'s lock until the test
    ends; returns its process id."""
    procs = []

    def hold(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc.pid

    yield hold
    for proc in procs:
        proc.communicate("", timeout=30)


def test_a_second_writer_is_refused_naming_the_holder(short, straight, tmp_path, holder,
                                                       capsys):
    run = tmp_path / "run"
    cfg_file = _config_file(short, tmp_path / "c.yaml")
    pid = holder(run)
    (run / "mine.txt").write_text("the holder's")
    for argv in (["train", "--config", cfg_file, "--out", str(run), "--quiet"],
                 ["pretrain", "--out", str(run), "--iters", "1", "--quiet"],
                 ["train", "--config", cfg_file, "--out", str(run / "inner"), "--quiet"],
                 ["demo", "--out", str(run), "--data", str(tmp_path / "data"), "--quiet"]):
        code, err = run_cli(argv, capsys)
        assert_one_line(code, err, f"process {pid} on host ")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "mine.txt"]  # nothing written
    assert not (tmp_path / "data").exists()
    # readers need no lock
    holder(straight)
    assert main(["report", str(straight), "--out", str(tmp_path / "r"), "--baseline",
                 "none"]) == 0
    assert main(["eval", "--checkpoint", str(straight), "--quiet"]) == 0


def test_the_lock_is_reentrant_in_one_process_and_gone_with_the_process(tmp_path, holder):
    with run_lock(tmp_path / "a"):
        with run_lock(tmp_path / "a"):  # the demo's folders, taken again by its trainings
            with run_lock(tmp_path / "a" / "b"):  # below a folder this process holds
                pass
        assert (tmp_path / "a" / LOCK_FILE).is_file()
    assert not (tmp_path / "a").exists()  # made by the lock and left empty: removed
    # a killed holder leaves no stale lock: the kernel drops it with the process
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "c")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(LockError, match=f"process {proc.pid}"):
        with run_lock(tmp_path / "c"):
            pass
    proc.kill()
    proc.wait()
    with run_lock(tmp_path / "c"):
        pass


def test_a_file_system_without_locks_stops_unless_no_lock(short, tmp_path, monkeypatch,
                                                          capsys):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    cfg = copy.deepcopy(short)
    cfg.train.iters = cfg.optim.schedule_iters = 1
    argv = ["train", "--config", _config_file(cfg, tmp_path / "c.yaml"), "--out",
            str(tmp_path / "run"), "--quiet"]
    code, err = run_cli(argv, capsys)
    assert_one_line(code, err, "cannot lock files (No locks available)")
    assert "--no-lock" in err and not (tmp_path / "run").exists()
    assert main([*argv, "--no-lock"]) == 0
    assert not (tmp_path / "run" / LOCK_FILE).exists()


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------


def _signal_during(monkeypatch, module, name, at_call: int, signals=(signal.SIGINT,)):
    """Send ``signals`` to this process inside the ``at_call``-th call (from 1) of
    ``module.name``, before it runs."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            handler = signal.getsignal(signal.SIGINT)
            assert isinstance(handler, StopSignals), "train's handler is not installed"
            for s in signals:
                os.kill(os.getpid(), s)
                time.sleep(0.05)  # delivered before the next one
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers are installed in the main thread only")


@needs_main_thread
def test_ctrl_c_stops_after_the_step_with_its_checkpoint_and_resumes_exactly(
        short, straight, tmp_path, monkeypatch, capsys):
    """(SIGTERM: the test of a real process below.)"""
    import cosalign.engine.train as loop

    run = tmp_path / "run"
    cfg_file = _config_file(short, tmp_path / "c.yaml")
    _signal_during(monkeypatch, loop, "train_step", 6)  # in iteration 6 (of 8)
    got, err = run_cli(["train", "--config", cfg_file, "--out", str(run), "--quiet"], capsys)
    assert_one_line(got, err, "stopped by Ctrl-C (SIGINT) after iteration 6 of 8", expected=130)
    assert f"wrote {run / 'ckpt_0000006.pt'}" in err
    assert f"`cosalign train --resume {run}` continues it" in err
    assert load_checkpoint(list_checkpoints(run)[-1])["iteration"] == 6
    _resumes_to_the_straight_run(run, straight, monkeypatch)


@needs_main_thread
def test_a_second_ctrl_c_stops_at_once_with_the_run_intact(short, straight, tmp_path,
                                                           monkeypatch, capsys):
    import cosalign.engine.train as loop

    run = tmp_path / "run"
    _signal_during(monkeypatch, loop, "train_step", 7, (signal.SIGINT, signal.SIGINT))
    got, err = run_cli(["train", "--config", _config_file(short, tmp_path / "c.yaml"), "--out",
                        str(run), "--quiet"], capsys)
    assert_one_line(got, err, "stopped at once by Ctrl-C (SIGINT)", expected=130)
    assert f"intact: {run / 'ckpt_0000004.pt'} (iteration 4)" in err
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_0000004.pt"]
    _resumes_to_the_straight_run(run, straight, monkeypatch)


@needs_main_thread
def test_a_signal_during_an_evaluation_abandons_it_and_the_resume_makes_it(
        short, straight, tmp_path, monkeypatch, capsys):
    import cosalign.engine.train as loop

    run = tmp_path / "run"
    _signal_during(monkeypatch, loop, "evaluate", 1)  # the evaluation at iteration 4
    got, err = run_cli(["train", "--config", _config_file(short, tmp_path / "c.yaml"), "--out",
                        str(run), "--quiet"], capsys)
    assert_one_line(got, err, "after iteration 4 of 8", expected=130)
    assert (4, "eval") not in _logged(run)
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_weights(run, straight)
    assert (4, "eval") in _logged(run) and _logged(run) == _logged(straight)  # once
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    assert evals == [r for r in read_metrics(straight) if r["kind"] == "eval"]


def test_sigterm_to_a_training_process_while_a_second_writer_is_refused(short, tmp_path):
    """A real process: a second writer is refused while it runs; SIGTERM (a scheduler's) ends
    it with exit 143, one line and a checkpoint of the step it was in, equal to the straight
    run's at that step (that a resume goes on as the straight run: the Ctrl-C tests)."""
    cfg = copy.deepcopy(short)
    cfg.train.iters = cfg.optim.schedule_iters = 400
    cmd = [sys.executable, "-m", "cosalign.cli", "train", "--config",
           _config_file(cfg, tmp_path / "c.yaml"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(run) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    with pytest.raises(LockError, match=f"process {proc.pid} on host"):
        with run_lock(run):
            pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.count("\n") == 1 and "stopped by SIGTERM after iteration" in err, err
    stopped = load_checkpoint(list_checkpoints(run)[-1])["iteration"]
    assert f"ckpt_{stopped:07d}.pt" in err and 4 <= stopped < 400
    _no_temporary_files(run)
    train(copy.deepcopy(cfg), tmp_path / "to_stop", progress=False, stop_at=stopped)
    _same_weights(run, tmp_path / "to_stop")


# --- a full disk and other write errors -------------------------------------------------------


class FullDisk:
    """The files cosalign.outputs writes fail to take more than ``budget`` bytes, with ``code``
    (ENOSPC by default) as a full disk does; only that module sees it (its ``os``)."""

    def __init__(self, monkeypatch, budget: int = 0, code: int = errno.ENOSPC) -> None:
        import cosalign.outputs as outputs

        self.budget, self.code = budget, code
        monkeypatch.setattr(outputs, "os", self)

    def __getattr__(self, name):  # the rest of os
        return getattr(os, name)

    def fdopen(self, fd, mode="r", *args, **kwargs):
        return Limited(os.fdopen(fd, mode, *args, **kwargs), self)

    def write(self, fd, data):
        return os.write(fd, data[:self.take(len(data))])

    def take(self, n: int) -> int:
        if n > self.budget:
            raise OSError(self.code, os.strerror(self.code))
        self.budget -= n
        return n


class Limited:
    def __init__(self, f, disk: FullDisk) -> None:
        self.f, self.disk = f, disk

    def write(self, data):
        self.disk.take(len(data))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.mark.parametrize("code", sorted(WRITE_ERRORS))
def test_atomic_writes_leave_the_old_file_or_nothing(tmp_path, monkeypatch, code):
    path = tmp_path / "report.md"
    path.write_text("before")
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"iter": 1}\n')
    FullDisk(monkeypatch, budget=3, code=code)
    with pytest.raises(WriteError, match=re.escape(f"{path}: cannot write: {WRITE_ERRORS[code]}")):
        write_text(path, "after, longer")
    with pytest.raises(WriteError, match="metrics.jsonl: cannot write"):
        append_text(log, '{"iter": 2, "a long line": 0}\n')  # 3 bytes fit: cut back
    assert path.read_text() == "before" and log.read_text() == '{"iter": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "report.md"]
    with pytest.raises(ValueError):  # any other error: raised as it is, nothing left
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"ab")
            raise ValueError("not a disk error")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "report.md"]


def test_full_disk_for_reports_and_predictions(straight, tmp_path, monkeypatch, capsys):
    out, pred = tmp_path / "report", tmp_path / "pred"
    out.mkdir()
    FullDisk(monkeypatch, budget=0)
    code, err = run_cli(["report", str(straight), "--out", str(out), "--baseline", "none"],
                        capsys)
    assert_one_line(code, err, f"{out / 'report.md'}: cannot write: no space left")
    assert list(out.iterdir()) == []
    frame = tmp_path / "frame.png"
    import cv2
    import numpy as np

    assert cv2.imwrite(str(frame), np.zeros((16, 24, 3), np.uint8))
    code, err = run_cli(["predict", "--checkpoint", str(straight), str(frame), "--out",
                         str(pred), "--quiet"], capsys)
    assert_one_line(code, err, f"{pred / 'frame.png_trainIds.png'}: cannot write: no space")
    assert not [p for p in pred.rglob("*") if p.is_file()]


def _can_mount_tmpfs(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=64k none {probe}"], capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_a_full_disk_at_a_checkpoint_is_one_line_naming_what_is_intact(
        short, straight, tmp_path, monkeypatch, capsys):
    """The second checkpoint (at 8) meets a full disk: exit 2, one line naming that file, the
    cause and the intact checkpoint (at 4), no temporary file; with space again the resume
    finishes as the straight run. A real full disk where the machine lets the test mount a
    small tmpfs in a private mount namespace (``unshare -rm``: room for one checkpoint, not
    two), else a simulated ENOSPC in the checkpoint's writes."""
    run = tmp_path / "run"
    cfg_file = _config_file(short, tmp_path / "c.yaml")
    if _can_mount_tmpfs(tmp_path):
        after = tmp_path / "after"  # the tmpfs goes with the namespace: its files, copied
        run.mkdir()
        size = list_checkpoints(straight)[-1].stat().st_size
        room = (size * 3 // 2) // 4096 * 4096 + 8192  # tmpfs counts whole 4 KiB pages
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        script = (f"mount -t tmpfs -o size={room} none {run} && {sys.executable} -m "
                  f"cosalign.cli train --config {cfg_file} --out {run} --quiet "
                  f"2> {tmp_path}/err; echo $? > {tmp_path}/rc; cp -a {run} {after}")
        subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, check=True,
                       timeout=300)
        code, err = int((tmp_path / "rc").read_text()), (tmp_path / "err").read_text()
    else:
        import cosalign.engine.checkpoint as ck

        after, real_save, saves = run, ck.save_atomic, []

        def save_on_a_full_disk(obj, path):
            saves.append(path)
            with monkeypatch.context() as m:
                if len(saves) == 2:
                    FullDisk(m, budget=1000)
                return real_save(obj, path)

        monkeypatch.setattr(ck, "save_atomic", save_on_a_full_disk)
        code, err = run_cli(["train", "--config", cfg_file, "--out", str(run), "--quiet"],
                            capsys)
        monkeypatch.undo()
    assert_one_line(code, err, f"{run / 'ckpt_0000008.pt'}: cannot write: no space left on "
                    "the device (disk full)")
    assert f"intact: {run / 'ckpt_0000004.pt'} (iteration 4)" in err
    assert f"`cosalign train --resume {run}`" in err
    assert [p.name for p in list_checkpoints(after)] == ["ckpt_0000004.pt"]
    _no_temporary_files(after)
    assert main(["train", "--resume", str(after), "--quiet"]) == 0
    _same_weights(after, straight)


def test_an_unexpected_os_error_of_these_kinds_is_one_line(monkeypatch, capsys):
    """The command line's last catch: an OSError of a full disk or a permission raised where
    no part of cosalign turned it into its own error."""
    import cosalign.cli as cli

    for code, said in ((errno.ENOSPC, "x.json: cannot write: no space left"),
                       (errno.EACCES, "x.json: cannot access: permission denied")):
        def fail(args, code=code):
            raise OSError(code, os.strerror(code), "x.json")

        monkeypatch.setattr(cli, "cmd_report", fail)
        got, err = run_cli(["report", "somewhere"], capsys)
        assert_one_line(got, err, said)
