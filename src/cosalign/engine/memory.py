"""``cosalign memory``: the peak memory of one training step of a preset, estimated without a GPU.

The network is built with fake tensors (``torch._subclasses.FakeTensorMode``: shapes and dtypes,
no storage, no arithmetic) and the passes a step of the method makes run on them under
``autocast`` of the precision asked for, while a dispatch mode adds up the bytes of every tensor
the step creates and subtracts them when the tensor is freed; the largest sum is the step's
activations and transients. To it are added what lives across steps, counted from the network:

    total = W (parameters and buffers) + G (gradients, fp32) + O (the optimizer's state: AdamW 2,
            SGD with momentum 1 per trainable parameter) + copies (the EMA teacher, the feature
            distance's frozen network) + the dictionary + peak of the step

The step is composed as engine/train.py runs it: the source pass (and the frozen network's) and
its backward; then the teacher's pass over the target batch, the student's passes whose losses
are summed into one backward (the mixed image, MIC's masked one, a clean target pass for the
alignment or entropy terms), that backward, and the optimizer's step (its temporaries). Not
counted: the CUDA context and the allocator's cache and fragmentation (a GPU shows more than
this; ``benchmarks/gpu_check.py`` measures it), the cosine alignment's chunked buffers (a few
hundred MB at paper scale, docs/PERFORMANCE.md), AdvEnt's discriminators, the data loader.
On the CPU the same passes run with real tensors; tests/test_memory.py compares the two.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cosalign.config import Config, class_set_of
from cosalign.losses.segmentation import segmentation_loss
from cosalign.models import build_model
from cosalign.models.upsample import upsample_logits

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PeakBytes(TorchDispatchMode):
    """Bytes of the tensors created while active and still alive; ``peak`` the largest sum.
    Each storage is counted once, and leaves the sum when it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _freed(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor)}  # a view or an in-place op makes nothing new
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live and key not in inputs:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._freed, key)
        return out


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def fake_copy(model: nn.Module, mode) -> nn.Module:
    """``model`` with each parameter and buffer replaced by an empty tensor of ``mode`` (its
    shape, dtype and ``requires_grad``), in place."""
    with mode:
        for m in model.modules():
            for k, p in m._parameters.items():
                if p is not None:
                    m._parameters[k] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                    p.requires_grad)
            for k, b in m._buffers.items():
                if b is not None:
                    m._buffers[k] = torch.empty(b.shape, dtype=b.dtype)
    return model


@dataclass
class MemoryEstimate:
    """Bytes, by what holds them (module docstring)."""

    weights: int
    grads: int
    optimizer: int
    copies: int
    dictionary: int
    step: int

    @property
    def total(self) -> int:
        return (self.weights + self.grads + self.optimizer + self.copies + self.dictionary
                + self.step)


def input_size(domain) -> tuple[int, int]:
    """(height, width) of a training sample: the crop, or the resize size without one."""
    w, h = domain.crop or domain.size
    return h, w


def run_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: Config, batch: int,
             dtype: torch.dtype | None, num_classes: int) -> None:
    """The passes of one training step of ``cfg``'s method (module docstring), on whatever
    tensors ``model`` holds (fake or real)."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                              enabled=dtype is not None)
    loss_cfg, st = cfg.loss, cfg.selftrain
    (hs, ws), (ht, wt) = input_size(cfg.data.source), input_size(cfg.data.target)
    x_s = torch.randn(batch, 3, hs, ws, device=device)
    x_t = torch.randn(batch, 3, ht, wt, device=device)
    y_s = torch.zeros(batch, hs, ws, dtype=torch.long, device=device)
    y_t = torch.zeros(batch, ht, wt, dtype=torch.long, device=device)
    w_t = torch.ones(batch, ht, wt, device=device)
    ac, red = cfg.model.align_corners, loss_cfg.seg_reduction
    model.train()

    with autocast:  # 1. source: supervised loss (and the frozen network's pass) and backward
        out = model(x_s)
        if loss_cfg.fd > 0:
            with torch.no_grad():
                frozen = (model.context_encoder(x_s) if hasattr(model, "context_encoder")
                          else getattr(model(x_s), "encoder", None))
            del frozen
    loss = segmentation_loss(out, y_s, reduction=red, align_corners=ac)
    if out.aux is not None:
        loss = loss + upsample_logits(out.aux, (hs, ws), ac).mean()
    del out
    loss.backward()
    del loss

    # 2. target: the teacher's labels, the student's passes, one backward
    losses = []
    if loss_cfg.st > 0:
        with torch.no_grad(), autocast:
            logits = model(x_t).logits
        prob = torch.softmax(upsample_logits(logits, (ht, wt), ac), dim=1)
        del logits, prob
        passes = 2 if loss_cfg.mic > 0 else 1  # the mixed image, MIC's masked image
        for _ in range(passes):
            with autocast:
                out = model(x_t)
            losses.append(segmentation_loss(out, y_t, w_t, align_corners=ac))
            del out
    clean = (loss_cfg.ent > 0 or loss_cfg.adv > 0 or
             (loss_cfg.cos > 0 and not (loss_cfg.st > 0 and st.align_on == "mixed")))
    if clean:
        with autocast:
            out = model(x_t)
        p = torch.softmax(upsample_logits(out.logits, (ht, wt), ac), dim=1)
        losses.append(-(p * torch.log(p + 1e-30)).sum(1).mean() + out.features.float().mean())
        del out, p
    if losses:
        sum(losses).backward()
    del losses
    opt.step()


def estimate_memory(cfg: Config, precision: str = "fp32", batch: int | None = None
                    ) -> MemoryEstimate:
    """The peak memory of one training step of ``cfg`` (its method's weights set) in
    ``precision`` ("fp32", "bf16" or "fp16" autocast) with ``batch`` images per domain (default
    ``data.batch_size``), in bytes (module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cosalign.engine.train import build_optimizer

    K = class_set_of(cfg).num_classes
    model = build_model(cfg.model, K)
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = _nbytes(model.parameters()) + _nbytes(model.buffers())
    copies = weights * ((cfg.loss.st > 0) + (cfg.loss.fd > 0))
    dictionary = (K * cfg.dictionary.capacity * model.feature_dim * 4 if cfg.loss.cos > 0
                  else 0)
    mode = FakeTensorMode()
    fake_copy(model, mode)
    with mode:
        opt = build_optimizer(model, cfg.optim)
        for p in model.parameters():  # the state a step finds: gradients, the optimizer's
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        opt.step()
        optimizer = _nbytes(t for s in opt.state.values() for t in s.values()
                            if isinstance(t, Tensor) and t.dim() > 0)
        tracker = PeakBytes()
        with tracker:
            run_step(model, opt, cfg, batch or cfg.data.batch_size, PRECISIONS[precision], K)
    return MemoryEstimate(weights, _nbytes(trainable), optimizer, copies, dictionary,
                          tracker.peak)
