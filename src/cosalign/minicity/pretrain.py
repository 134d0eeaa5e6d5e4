"""``cosalign pretrain``: a backbone pretrained on randomized scenes, ImageNet's part in MiniCity.

The paper starts from an ImageNet-pretrained ResNet-101. MiniCity's network cannot use those
weights (it is a 1/4-width ResNet-18) and nothing can be downloaded, so this command makes the
equivalent: it trains the backbone to segment the 14 materials of MiniCity's street layouts
under a random appearance per image (minicity/randomized.py: random colours, noise textures and
lighting; never the target's photographs, fog or dusk), then keeps the backbone only. Training
on MiniCity then starts from features that already separate things, as with ImageNet, while the
heads start from scratch. docs/METHOD.md section 9 says why this design and what it leaves out.
It computes in fp32 on every machine, so one recipe makes the file whatever the CPU.

The weights file is cached by the hash of everything that made it (the spec, and the text of
the scene, rendering, set, model and this file): an identical call returns at once. The
default spec's file ships with the package (``model.weights: minicity_pretrained``), so the
benchmark needs no pretraining run; ``tests/test_pretrain.py`` checks that it is up to date.
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

from cosalign.data.transforms import normalize
from cosalign.engine.checkpoint import save_atomic
from cosalign.engine.evaluate import confusion_matrix, mean_iou, per_class_iou
from cosalign.minicity.cache import code_hash
from cosalign.minicity.randomized import MATERIALS, render_set
from cosalign.models import DeepLabV2
from cosalign.models.upsample import upsample_logits
from cosalign.models.weights import BUNDLED
from cosalign.outputs import write_text
from cosalign.schedule import poly_lr

FORMAT_VERSION = 1
SOURCES = ("minicity/scene.py", "minicity/render.py", "minicity/styles.py",
           "minicity/randomized.py", "minicity/pool.py", "minicity/cache.py", "models/resnet.py",
           "models/deeplab.py", "models/upsample.py", "schedule.py", "minicity/pretrain.py")


@dataclass(frozen=True)
class PretrainSpec:
    """What to pretrain. The model fields must match the network that will load the weights
    (the MiniCity preset's)."""

    images: int = 2000  # the last tenth is held out to report pretraining accuracy
    size: tuple[int, int] = (192, 108)  # (width, height), MiniCity's source training size
    iters: int = 3000
    batch_size: int = 8
    lr: float = 0.02
    depth: int = 18
    width: float = 0.25
    rates: tuple[int, ...] = (2, 4, 6, 8)
    seed: int = 0

    def key(self) -> dict:
        return {"version": FORMAT_VERSION, "code": code_hash(*SOURCES),
                **json.loads(json.dumps(asdict(self)))}


def read_key(path: Path) -> dict | None:
    """The spec key stored in a pretrained weights file (None if it has none)."""
    if not Path(path).is_file():
        return None
    meta = torch.load(path, map_location="cpu", weights_only=True).get("pretrain", {})
    return meta.get("key")


def bundled_is_current() -> bool:
    """Whether the shipped ``minicity_pretrained`` file is what the default spec makes today."""
    return read_key(BUNDLED["minicity_pretrained"]) == PretrainSpec().key()


def _batch(images: np.ndarray, labels: np.ndarray, idx: np.ndarray,
           flips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([normalize(images[i][:, ::-1] if f else images[i])
                     for i, f in zip(idx, flips)])
    y = torch.from_numpy(np.stack([labels[i][:, ::-1] if f else labels[i]
                                   for i, f in zip(idx, flips)]).astype(np.int64))
    return x, y


@torch.no_grad()
def _held_out_miou(model: DeepLabV2, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    k = len(MATERIALS)
    cm = np.zeros((k, k), np.int64)
    for i in range(0, len(images), 16):
        idx = np.arange(i, min(i + 16, len(images)))
        x, y = _batch(images, labels, idx, np.zeros(len(idx), bool))
        pred = upsample_logits(model(x).logits, y.shape[-2:]).argmax(1)
        cm += confusion_matrix(pred, y, k).numpy()
    model.train()
    return 100 * mean_iou(per_class_iou(cm), tuple(np.flatnonzero(cm.sum(1) > 0)))


def pretrain(out: str | Path, spec: PretrainSpec = PretrainSpec(), workers: int = 2,
             progress: bool = True) -> Path:
    """Write ``out/backbone.pt`` (and ``out/pretrain.json``) unless an identical one is there.
    Returns the weights path. The file holds ``{"model": backbone state dict with "backbone."
    keys, "pretrain": {"key", "held_out_miou", "seconds", ...}}``."""
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
    model = DeepLabV2(len(MATERIALS), spec.depth, spec.width, spec.rates, bn="train")
    model.train()
    opt = torch.optim.SGD(model.param_groups(spec.lr), lr=spec.lr, momentum=0.9,
                          weight_decay=5e-4)
    bar = tqdm(range(spec.iters), desc="pretrain", disable=not progress)
    for it in bar:
        for g in opt.param_groups:
            g["lr"] = poly_lr(spec.lr, it, spec.iters, 0.9) * g["lr_mult"]
        idx = rng.integers(0, n_train, spec.batch_size)
        x, y = _batch(images, labels, idx, rng.random(spec.batch_size) < 0.5)
        o = model(x)  # fp32: the same recipe on every CPU (no native bf16 on most)
        loss = (F.cross_entropy(upsample_logits(o.logits, y.shape[-2:]), y)
                + 0.1 * F.cross_entropy(upsample_logits(o.aux, y.shape[-2:]), y))
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
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    save_atomic({"model": backbone, "pretrain": meta}, weights)
    write_text(out / "pretrain.json", json.dumps(meta, indent=1))
    print(f"{weights}: held-out material mIoU {miou:.1f} ({meta['seconds'] / 60:.1f} min)")
    return weights
