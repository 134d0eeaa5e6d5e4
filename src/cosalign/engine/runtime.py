"""Runtime helpers of every training loop (cosalign train, cosalign pretrain): seeding,
deterministic kernels, autocast, the allocator's settings."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import sys
import warnings

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cosalign.config import ConfigError
from cosalign.engine.precision import resolve_amp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(on: bool, device: torch.device):
    """Deterministic kernels for the duration of a run (``train.deterministic``), then the
    process's previous settings again (the switch is global to the process).

    Ops without a deterministic kernel (on CUDA e.g. the 2-D NLL loss behind cross-entropy)
    run as they are instead of failing, so a run on CUDA is reproducible up to those ops;
    torch's warning about each is silenced for the run (two lines of stderr in the middle of a
    run that docs/USAGE.md already explains, and that would bury a failing run's one-line
    message). On CUDA it sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set; cuBLAS reads it once, so export it before
    starting Python for products that are deterministic too. On CUDA the transformer's
    attention (``F.scaled_dot_product_attention``) runs on its math backend only: the flash,
    memory-efficient and cuDNN kernels' backward passes are not deterministic (under
    ``warn_only`` they warn and stay so); the math backend is matrix products and a softmax,
    and after the encoder's spatial reduction its attention matrices are small (N x N / R^2).
    """
    if not on:
        yield
        return
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    attention = contextlib.nullcontext()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        attention = sdpa_kernel(SDPBackend.MATH)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        with attention, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic")
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


def autocast_for(amp: str, device: torch.device):
    """A factory of autocast contexts for ``train.amp`` (auto | none | bf16 | fp16; auto as
    engine/precision.py resolves it on ``device``)."""
    if amp == "auto":
        amp = resolve_amp(amp, device)[0]
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def retain_freed_memory() -> bool:
    """Let glibc keep the memory a training step frees for the next step (Linux; elsewhere a
    no-op returning False). Each step allocates and frees the same large buffers; by default
    glibc hands them back to the system and the next step faults them in again, zeroed page by
    page. Measured on 2 AVX2 cores, 60 MiniCity source-only steps: 1.35 million minor page
    faults become 15 thousand, the steps 18% faster (``benchmarks/demo_bench.py
    --allocator``, docs/PERFORMANCE.md); the numbers are the same to the last bit (only
    where memory comes from changes). Peak
    memory did not grow (the demo: 700 MiB, 852 MiB before): what is kept is what the next
    step takes again."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc allows: more from the heap
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 34)  # never shrink the heap under 16 GiB of free
    ok &= mallopt(_M_TOP_PAD, 256 << 20)  # grow it in 256 MiB steps
    return bool(ok)
