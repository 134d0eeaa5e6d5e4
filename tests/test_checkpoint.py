"""Checkpoints: atomic writes, the last K kept, clear errors, and resume after a kill."""

import copy
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from cosalign.config import to_dict
from cosalign.engine import checkpoint as ck
from cosalign.engine.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from cosalign.outputs import WriteError


def _state(i):
    return {"model": {"w": torch.full((3,), float(i))}, "config": {}, "iteration": i}


def test_keeps_the_last_k(tmp_path):
    for i in range(1, 6):
        save_checkpoint(_state(i), tmp_path, i, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000004.pt", "ckpt_0000005.pt"]


def test_failed_write_leaves_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    save_checkpoint(_state(1), tmp_path, 1)

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(WriteError, match="ckpt_0000002.pt: cannot write: no space left"):
        save_checkpoint(_state(2), tmp_path, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_0000001.pt"]
    assert load_checkpoint(tmp_path / "ckpt_0000001.pt")["iteration"] == 1


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    path = save_checkpoint(_state(1), tmp_path, 1)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="ckpt_0000001.pt: cannot load checkpoint"):
        load_checkpoint(path)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a cosalign checkpoint.*conv1.weight"):
        load_checkpoint(foreign)


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_rng_state_restores_from_a_checkpoint_loaded_onto_the_device(tmp_path, device):
    # a resume on a GPU loads the checkpoint with map_location=cuda: the RNG states arrive
    # there, and the generators need CPU byte tensors
    import random

    import numpy as np

    def draw():
        return (random.random(), np.random.rand(), torch.rand(1).item(),
                torch.rand(1, device=device).item())

    save_checkpoint({**_state(1), "rng": ck.rng_state()}, tmp_path, 1)
    a = draw()
    state = load_checkpoint(tmp_path / "ckpt_0000001.pt", map_location=device)
    assert state["rng"]["torch"].device.type == device.type  # cuda:0 against cuda
    ck.set_rng_state(state["rng"])
    assert draw() == a


def test_killed_process_resumes_to_the_same_weights(tiny_config, tmp_path):
    """Kill -9 a training process after its first checkpoint; resuming (`cosalign train
    --resume`) reaches the weights of an uninterrupted run (deterministic mode, on the test
    device). The killed run is a process of its own; the others run here, with its threads."""
    cfg = copy.deepcopy(tiny_config)
    cfg.train.deterministic = True
    cfg.train.iters, cfg.optim.schedule_iters, cfg.train.checkpoint_every = 16, 16, 4
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    cmd = [sys.executable, "-m", "cosalign.cli", "train", "--config", str(cfg_file), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    from cosalign.engine.train import train

    train(copy.deepcopy(cfg), tmp_path / "straight", progress=False)  # the same threads
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "ckpt_0000004.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "ckpt_0000004.pt").exists()
    assert not (run / "ckpt_0000016.pt").exists(), "the process finished before the kill"
    from cosalign.cli import main

    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # in this process: one start less
    a = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1])
    b = load_checkpoint(list_checkpoints(run)[-1])
    assert a["iteration"] == b["iteration"] == 16
    atol = 1e-6 if cfg.train.device == "cpu" else 1e-5  # CUDA: ops without deterministic kernels
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=atol, rtol=0)


def test_optimizer_state_maps_by_name_when_the_parameter_set_changes():
    from cosalign.models import DeepLabV2

    torch.manual_seed(0)
    model = DeepLabV2(num_classes=3, depth=18, width=0.125, bn="train")
    opt = torch.optim.SGD(model.param_groups(0.1), lr=0.1, momentum=0.9)
    out = model(torch.randn(2, 3, 32, 32))
    (out.logits.sum() + out.aux.sum()).backward()
    opt.step()
    saved = ck.optimizer_state(opt, model)
    momentum = {n: opt.state[p]["momentum_buffer"] for n, p in model.named_parameters()}

    same = torch.optim.SGD(model.param_groups(0.1), lr=0.1, momentum=0.9)
    assert ck.load_optimizer(same, model, saved) == ""  # same set: a plain load

    frozen = DeepLabV2(num_classes=3, depth=18, width=0.125, bn="frozen")  # no BN parameters
    opt2 = torch.optim.SGD(frozen.param_groups(0.1), lr=0.1, momentum=0.9)
    note = ck.load_optimizer(opt2, frozen, saved)
    trained = [n for n, p in frozen.named_parameters() if p.requires_grad]
    assert f"{len(trained)} of {len(trained)} parameters keep theirs" in note
    for n, p in frozen.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(opt2.state[p]["momentum_buffer"], momentum[n])
    old_style = {k: v for k, v in saved.items() if k != "param_names"}
    opt3 = torch.optim.SGD(frozen.param_groups(0.1), lr=0.1, momentum=0.9)
    assert "starts afresh" in ck.load_optimizer(opt3, frozen, old_style)
    assert not opt3.state


def test_resume_into_frozen_batchnorm_is_not_a_traceback(tiny_config, tmp_path, capsys):
    from cosalign.engine.train import train

    cfg = copy.deepcopy(tiny_config)
    assert cfg.model.bn == "train"
    train(cfg, tmp_path, progress=False, stop_at=3)
    cfg.model.bn = "frozen"  # branch: BatchNorm frozen from here on
    train(cfg, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert "config changed: model.bn" in out and "mapped by parameter name" in out
    assert load_checkpoint(list_checkpoints(tmp_path)[-1])["iteration"] == 6


def test_a_checkpoint_of_the_layout_before_the_method_table_resumes_the_same(tiny_config,
                                                                           tmp_path):
    """Before 0.2 a checkpoint kept AdvEnt's discriminators and their optimizer as top-level
    keys, and the alignment's and dictionary's settings under loss:. Such a checkpoint
    resumes exactly as today's does."""
    from cosalign.engine.train import train
    from cosalign.methods import apply_method

    cfg = apply_method(copy.deepcopy(tiny_config), "ours_advent")
    cfg.train.deterministic = True
    for name in ("new", "old"):
        train(cfg, tmp_path / name, progress=False, stop_at=3)
    path = list_checkpoints(tmp_path / "old")[-1]
    state = torch.load(path, weights_only=True)
    adv = state.pop("terms")["adversarial"]
    state["discriminators"], state["optimizer_d"] = adv["discriminators"], adv["optimizer"]
    loss = state["config"]["loss"]
    loss.update({**state["config"].pop("align"), **state["config"].pop("dictionary")})
    loss["bf16_matmul"] = {"auto": None, "fp32": False, "bf16": True}[loss.pop("matmul")]
    torch.save(state, path)
    for name in ("new", "old"):
        train(cfg, tmp_path / name, progress=False)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / n)[-1]) for n in ("new", "old"))
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    da, db = (s["terms"]["adversarial"]["discriminators"] for s in (a, b))
    for key in da:
        torch.testing.assert_close(da[key], db[key], rtol=0, atol=0)
