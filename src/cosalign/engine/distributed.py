"""torchrun helpers. In a single process every function is a no-op or the identity."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine; the message says what to change."""


def setup(device: str = "auto") -> torch.device:
    """This process's device, and the process group when launched by torchrun.

    ``device``: "auto" (GPU ``LOCAL_RANK`` when CUDA is there, else the CPU), "cuda" (the same
    but an error without CUDA) or "cpu" (also under torchrun: the gloo backend). Checked before
    the process group starts, so that a bad launch stops with one line instead of inside CUDA.
    """
    if device not in DEVICES:
        raise DeviceError(f"train.device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device=cuda, but torch sees no CUDA device "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda and local >= torch.cuda.device_count():
        raise DeviceError(
            f"process LOCAL_RANK={local} needs GPU {local}, but this machine has "
            f"{torch.cuda.device_count()} visible GPU(s): start at most that many processes per "
            "machine (torchrun --nproc_per_node), or run on CPUs with --set train.device=cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when there are several processes, else itself.

    DDP's default copies rank 0's buffers (BatchNorm's running statistics) into every rank's
    in place before each forward. A step here runs the network up to three times before one
    backward (the clean target pass, the mixed batch, MIC's masked image); on torch 2.6-2.12
    that copy counts as a change to tensors the first pass's backward needs, and the backward
    fails ("modified by an inplace operation"; pytorch/pytorch#175024, seen on torch 2.11 on
    an H200). So buffers are not broadcast per forward; :func:`broadcast_buffers` after each
    step gives every rank rank 0's, which is what DDP's copies leave too (rank 0's own are
    never overwritten, so its statistics and the checkpoints it writes are the same).
    ``find_unused_parameters``: a term may leave a head out of a step (the auxiliary head).
    """
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True, broadcast_buffers=False)


@torch.no_grad()
def broadcast_buffers(model: torch.nn.Module) -> None:
    """Every rank's buffers (BatchNorm's running statistics) set to rank 0's, in place. Call
    it between steps, when no graph holds them."""
    if is_distributed():
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def all_gather_varlen(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (first dimensions may differ), in rank order."""
    if not is_distributed():
        return [t]
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded)
    return [o[: int(s.item())] for o, s in zip(out, sizes)]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t)
    return t

