"""``cosalign pretrain --arch mit_b0``: the MiT encoder's stand-in for ImageNet in MiniCity.

The same set and task as the ResNet's stand-in (minicity/pretrain.py: MiniCity's street layouts
under a random appearance per image, 14 materials to segment, the encoder kept and the head
dropped), with the transformer's own optimizer: AdamW (betas 0.9 / 0.999, weight decay 0.01,
none on the encoder's norms), a linear warm-up then poly 1.0, the head's learning rate x10, as
DAFormer trains it (docs/METHOD.md section 11), at a learning rate for training from scratch
(10x DAFormer's 6e-5, which fine-tunes ImageNet weights). fp32 on every machine.

Written next to pretrain.py rather than into it: the ResNet file that ships with the package
is keyed by the hash of pretrain.py's text, so an edit there would remake it. The file written
here has the same layout (``{"model": encoder state with "backbone." keys, "pretrain": {"key",
...}}``), so ``model.weights=<out>/backbone.pt`` loads it into a ``model.arch: mit_*`` network
whatever its head; it is not shipped (MiT-B0's encoder is 13 MB in fp32).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cosalign.engine.checkpoint import save_atomic
from cosalign.minicity.cache import code_hash
from cosalign.minicity.pretrain import SOURCES as RESNET_SOURCES
from cosalign.minicity.pretrain import _batch, _held_out_miou, read_key
from cosalign.minicity.randomized import MATERIALS, render_set
from cosalign.models.transformer import MiTSegmenter
from cosalign.models.upsample import upsample_logits
from cosalign.outputs import write_text
from cosalign.schedule import poly_lr

FORMAT_VERSION = 1
# the set's code (the ResNet's list less its network), the transformer's, and this file
SOURCES = (*[s for s in RESNET_SOURCES if s not in ("models/resnet.py", "models/deeplab.py")],
           "models/mit.py", "models/fusion_heads.py", "models/transformer.py",
           "minicity/pretrain_mit.py")


@dataclass(frozen=True)
class MiTPretrainSpec:
    """What to pretrain. ``arch``, ``head`` and ``embed`` name the network that trains (its
    encoder is kept; ``arch`` must match the network that loads it)."""

    images: int = 2000  # the last tenth is held out to report pretraining accuracy
    size: tuple[int, int] = (192, 108)  # (width, height), MiniCity's source training size
    iters: int = 3000
    batch_size: int = 8
    lr: float = 6e-4
    warmup: int = 300
    weight_decay: float = 0.01
    arch: str = "mit_b0"
    head: str = "daformer"
    embed: int = 32
    seed: int = 0

    def key(self) -> dict:
        return {"version": FORMAT_VERSION, "code": code_hash(*SOURCES),
                **json.loads(json.dumps(asdict(self)))}


def pretrain_mit(out: str | Path, spec: MiTPretrainSpec = MiTPretrainSpec(), workers: int = 2,
                 progress: bool = True) -> Path:
    """Write ``out/backbone.pt`` (and ``out/pretrain.json``) unless an identical one is there.
    Returns the weights path."""
    if not spec.arch.startswith("mit_"):
        raise ValueError(f"arch: expected mit_b0 ... mit_b5, got {spec.arch!r}")
    out = Path(out)
    weights = out / "backbone.pt"
    key = spec.key()
    if read_key(weights) == key:
        print(f"{weights}: already up to date (same spec and code)")
        return weights
    t0 = time.perf_counter()
    images, labels = render_set(spec.images, spec.size, spec.seed, workers, progress)
    n_train = spec.images - spec.images // 10
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    model = MiTSegmenter(len(MATERIALS), spec.arch[len("mit_"):], spec.head, spec.embed)
    model.train()
    # the encoder's norms in a group of their own without weight decay; the head at lr x 10
    opt = torch.optim.AdamW(model.param_groups(spec.lr), lr=spec.lr, betas=(0.9, 0.999),
                            weight_decay=spec.weight_decay)
    bar = tqdm(range(spec.iters), desc=f"pretrain {spec.arch}", disable=not progress)
    for it in bar:
        for g in opt.param_groups:
            g["lr"] = poly_lr(spec.lr, it, spec.iters, 1.0, spec.warmup) * g["lr_mult"]
        idx = rng.integers(0, n_train, spec.batch_size)
        x, y = _batch(images, labels, idx, rng.random(spec.batch_size) < 0.5)
        loss = F.cross_entropy(upsample_logits(model(x).logits, y.shape[-2:]), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretraining diverged at iteration {it} (loss {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    miou = _held_out_miou(model, images[n_train:], labels[n_train:])
    meta = {"key": key, "materials": list(MATERIALS), "held_out_miou": miou,
            "held_out_images": spec.images - n_train, "seconds": time.perf_counter() - t0,
            "torch": str(torch.__version__), "numpy": np.__version__}
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    save_atomic({"model": encoder, "pretrain": meta}, weights)
    write_text(out / "pretrain.json", json.dumps(meta, indent=1))
    print(f"{weights}: held-out material mIoU {miou:.1f} ({meta['seconds'] / 60:.1f} min)")
    return weights
