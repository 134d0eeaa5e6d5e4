"""torchrun-style training: 2 processes, on 2 GPUs (nccl) when the test device is CUDA and the
machine has two, else on the CPU with gloo (two processes cannot share one GPU under nccl)."""

import copy
import os
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cosalign.engine import distributed
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.train import as_floats, batches, train, train_step
from cosalign.losses import ClassFeatureDictionary
from cosalign.methods import apply_method, build_terms
from cosalign.models import build_model
from tests.conftest import TEST_DEVICE


def _ddp_device() -> str:
    cuda = TEST_DEVICE == "cuda" and torch.cuda.device_count() >= 2
    return "cuda" if cuda else "cpu"


def _rendezvous(tmp_path) -> str:
    """Where the 2 processes meet: a file store in the test's folder, new for every spawn.

    The tests used to pick a free TCP port (bind to port 0, read it, close it) and pass it
    to the workers as MASTER_PORT; between the close and rank 0's bind, seconds later once
    the workers had imported torch, any other process could take that port, and the spawn then
    failed at random ("Terminating process ... via SIGTERM"). A file cannot be taken that way.
    """
    path = tmp_path / f"rendezvous-{uuid.uuid4().hex}"
    assert not path.exists()
    return str(path)


def _env(rank: int, world: int, store: str) -> None:
    """This worker's torchrun-like environment, and its process group joined through the file
    ``store`` (distributed.setup then finds the group started)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    backend = "nccl" if _ddp_device() == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)  # this rank's GPU, before its process group
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)


def _steps_worker(rank, world, store, cfg, out_dir):
    """A few train_step calls under DDP; each rank saves its dictionary and loss terms."""
    _env(rank, world, store)
    from cosalign.data import build_dataset

    device = distributed.setup(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, 19).to(device)
    ddp = distributed.wrap(model, device)
    d = ClassFeatureDictionary(19, cfg.dictionary.capacity, model.feature_dim,
                               cfg.dictionary.per_image)
    d.to(device)
    opt = torch.optim.SGD(model.param_groups(0.01), lr=0.01, momentum=0.9)
    src = batches(build_dataset(cfg.data.source, cfg.data, train=True), 2, 0, 0, 0)
    tgt = batches(build_dataset(cfg.data.target, cfg.data, train=True, labels=False), 2, 1, 0, 0)
    torch.manual_seed(100 + rank)  # different sampling on each rank: the gather must align them
    parts = build_terms(cfg, 19, device)
    terms = [train_step(ddp, next(src), next(tgt), it, parts, d, opt) for it in range(4)]
    torch.save({"entries": d.entries.cpu(), "filled": d.filled.cpu(), "head": d.head.cpu(),
                "terms": [as_floats(t) for t in terms],
                "weight": model.head.branches[0].weight.detach().cpu(),
                "stats": {k: v.cpu() for k, v in model.state_dict().items()
                          if k.endswith("running_var")}}, out_dir / f"rank{rank}.pt")
    distributed.cleanup()


def _worker(rank, world, store, cfg_steps, out_dir, cfg_train, run_dir):
    """One pair of processes for both checks (a process start costs seconds): a few steps that
    fill the dictionary, then ``train``."""
    _steps_worker(rank, world, store, cfg_steps, out_dir)
    _env(rank, world, store + "-train")
    train(cfg_train, run_dir, progress=False)
    distributed.cleanup()


def test_two_processes_share_the_dictionary_and_match_one_with_the_same_global_batch(
        tiny_config, tmp_path):
    # the dictionary and the weights are identical on both ranks after train_step calls that
    # draw different samples on each
    steps = copy.deepcopy(tiny_config)
    steps.train.device = _ddp_device()
    # two processes of batch 2 train as one of batch 4
    cfg = apply_method(copy.deepcopy(tiny_config), "source_only")
    cfg.model.bn = "frozen"  # per-rank BatchNorm statistics would differ from the global batch
    cfg.data.batch_size = 4
    cfg.optim.lr = 1e-3  # a small step: the comparison measures the mechanics, not chaos
    cfg.train.amp = "none"
    cfg.train.device = _ddp_device()
    single = train(cfg, tmp_path / "one", progress=False)
    cfg2 = copy.deepcopy(cfg)
    cfg2.data.batch_size = 2  # per process
    mp.spawn(_worker, args=(2, _rendezvous(tmp_path), steps, tmp_path, cfg2, tmp_path / "two"),
             nprocs=2, join=True)

    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert int(r0["filled"].sum()) > 0
    for key in ("entries", "filled", "head", "weight", "stats"):
        torch.testing.assert_close(r0[key], r1[key], rtol=0, atol=0)
    # the BatchNorm statistics moved (bn: train) and are rank 0's on both ranks
    assert steps.model.bn == "train" and not all(torch.all(v == 1) for v in r0["stats"].values())
    for terms in r0["terms"] + r1["terms"]:
        assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert "cos" in r0["terms"][-1]

    ckpts = list_checkpoints(tmp_path / "two")
    assert ckpts, "rank 0 writes the checkpoints"
    a = load_checkpoint(list_checkpoints(tmp_path / "one")[-1])["model"]
    b = load_checkpoint(ckpts[-1])["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-4, rtol=2e-3)
    metrics = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert metrics and single["miou"]["minicity"] >= 0  # only rank 0 logs (no duplicate lines)
    assert len([m for m in metrics if '"eval"' in m]) == 1


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    """CPU by nature: pretends to be a one-GPU machine asked for a second process."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(distributed.DeviceError, match=r"LOCAL_RANK=1 needs GPU 1, but this "
                       r"machine has 1 visible GPU.*train.device=cpu"):
        distributed.setup("auto")
    assert not distributed.is_distributed()  # refused before any process group


def test_device_names_are_checked():
    """CPU by nature: the refusals of setup()."""
    with pytest.raises(distributed.DeviceError, match="one of"):
        distributed.setup("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(distributed.DeviceError, match="no CUDA device"):
            distributed.setup("cuda")
    assert distributed.setup("cpu") == torch.device("cpu")
