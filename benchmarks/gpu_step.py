"""A ResNet-101 training step at paper sizes on a GPU: speed, memory, and the loss's share.

    python benchmarks/gpu_step.py                 # on a CUDA machine: fp32 and bf16
    python benchmarks/gpu_step.py --device cpu --small   # a smoke run of this script on a CPU

Source 1280x720 and target 1024x512 (batch 1 + 1), DeepLab-v2 ResNet-101, ours with a full
dictionary of 19 x Q entries: iterations per second of the whole ``train_step``, peak GPU memory,
and the share of the step taken by the cosine loss (forward + backward) and by the dictionary
update, each timed alone on the step's real feature shapes with the device synchronized.
"""

from __future__ import annotations

import argparse
import time

import torch

from cosalign.config import load_config
from cosalign.engine.train import autocast_for, train_step
from cosalign.losses import ClassFeatureDictionary, cosine_alignment
from cosalign.models import build_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat):
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def measure(amp: str, args, device, size_s, size_t) -> str:
    """One precision: a Markdown row."""
    cfg = load_config("gta5_to_cityscapes", ["model.weights=null", f"train.amp={amp}",
                                             f"loss.capacity={args.capacity}"], "ours")
    if args.small:
        cfg.model.width = 0.125
    torch.manual_seed(0)
    model = build_model(cfg.model, 19).to(device).train()
    d = ClassFeatureDictionary(19, args.capacity, model.feature_dim, cfg.loss.per_image)
    d = d.to(device)
    d.push(torch.nn.functional.normalize(
        torch.randn(19 * args.capacity, model.feature_dim, device=device), dim=1),
        torch.arange(19, device=device).repeat_interleave(args.capacity))
    opt = torch.optim.SGD(model.param_groups(1e-4), lr=1e-4, momentum=0.9)
    ac = autocast_for(amp, device)
    x_s = torch.randn(1, 3, *size_s, device=device)
    y_s = torch.randint(0, 19, (1, *size_s), device=device)
    x_t = torch.randn(1, 3, *size_t, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        train_step(model, {"image": x_s, "label": y_s}, {"image": x_t}, 10**6, cfg.loss, d,
                   opt, autocast=ac)

    sec = timed(step, device, args.repeat)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0
    with torch.no_grad(), ac():
        out_t, out_s = model(x_t), model(x_s)
    f_t = out_t.features.detach().requires_grad_()
    pseudo = out_t.logits.argmax(1)
    ref, ref_cls = d.reference()

    def loss():
        cosine_alignment(f_t, ref, tau=cfg.loss.tau, match=cfg.loss.match,
                         ref_cls=ref_cls, pseudo=pseudo).loss.backward()

    def update():
        d.update(out_s.features, y_s)

    t_loss, t_dict = timed(loss, device, args.repeat), timed(update, device, args.repeat)
    return (f"| {amp if amp != 'none' else 'fp32'} | {1 / sec:.2f} | {sec:.3f} | {peak:.1f} | "
            f"{100 * t_loss / sec:.1f}% | {100 * t_dict / sec:.1f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="1/8 sizes and width (smoke test)")
    p.add_argument("--capacity", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    device = torch.device(args.device)
    scale = 8 if args.small else 1
    size_s, size_t = (720 // scale, 1280 // scale), (512 // scale, 1024 // scale)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# gpu_step on {name}, torch {torch.__version__}, Q={args.capacity}")
    print("| precision | it/s | s/step | peak memory (GiB) | cosine loss share | "
          "dictionary update share |")
    print("|---|---|---|---|---|---|")
    for amp in ("none", "bf16"):
        print(measure(amp, args, device, size_s, size_t), flush=True)


if __name__ == "__main__":
    main()
