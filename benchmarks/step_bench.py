"""Cost of adaptation per training step: source-only vs MinEnt vs ours vs self-training (DACS,
ours + DACS), in one run.

    .venv/bin/python benchmarks/step_bench.py            # MiniCity scale and ResNet-101 scale
    .venv/bin/python benchmarks/step_bench.py --quick    # MiniCity scale only
    .venv/bin/python benchmarks/step_bench.py --transformer [--paper]   # MiT: DACS, MIC, ours
    .venv/bin/python benchmarks/step_bench.py --transformer --embed 32  # a narrower head
    .venv/bin/python benchmarks/step_bench.py --hrda --repeat 3          # HRDA on MiniCity

Every step is the real ``train_step`` on random tensors of the benchmark's shapes (no data
loading), methods interleaved round-robin so that machine noise hits them alike; the median of
the repeats is reported. Source-only runs the network on the source batch only; MinEnt and ours
also run it on the target batch, so ours/MinEnt compares the two losses (MinEnt works on
upsampled full-resolution predictions) and ours/source-only is the whole cost of adapting. The
floor is source-only plus a forward and backward of the target batch through the backbone with
a free loss: what any
method that adapts through the target features pays before its loss; ours/floor is the cost of
the cosine loss and the dictionary. DACS adds a teacher forward on the target batch and a
student forward and backward on the mixed batch (the size of the target batch); ours + DACS
adds the alignment's pass over the clean target batch to that (``selftrain.align_on=clean``).

``--hrda``: HRDA on MiniCity as the ablation's ``hrda`` plan sets it (MiT-B0, head width 32,
8 + 8 outer crops of 192x192, context 96x96, detail 96x96, fp32): DAFormer's DACS at the
matching half resolution (96x96 crops) and at MiniCity's usual 192x96 crops, HRDA, MIC(HRDA)
and ours + MIC(HRDA), with each step's peak of allocated tensor bytes (engine/memory.py's
counter on the real step) and ``cosalign memory``'s estimate of it.

``--transformer``: the MiT network with DAFormer's head and AdamW, source-only, DACS, MIC (one
more student pass on the masked target batch) and ours + MIC (the alignment on the mixed
batch's stride-4 features, no extra pass), at MiniCity scale (MiT-B0, 8 + 8 images) and with
``--paper`` at DAFormer's (MiT-B5, 2 + 2 crops of 512x512: a GPU's size). At MiniCity scale
``--embed E`` sets the head's width (``model.embed``; DAFormer's 256 by default), and the table
has one more row: the MiniCity preset's own network (DeepLab-v2, ResNet-18 x1/4, SGD),
source-only, the compute budget a MiniCity transformer is compared at.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

from cosalign.config import load_config
from cosalign.engine.runtime import autocast_for
from cosalign.engine.train import train_step
from cosalign.losses import ClassFeatureDictionary
from cosalign.methods import apply_method, build_terms
from cosalign.models import build_model

SCALES = {
    # name: (config preset overrides, source (H, W), target (H, W))
    "MiniCity (R18 x1/4, 8+8 images, 108x192 / 96x192, bf16)": (
        "minicity", [], (108, 192), (96, 192)),
    "ResNet-101 (1+1 images, 360x640 / 256x512, fp32)": (
        "gta5_to_cityscapes", ["model.weights=null"], (360, 640), (256, 512)),
}


TRANSFORMER = {
    "MiniCity, MiT-B0 + DAFormer head (8+8 images, 108x192 / 96x192)": (
        "minicity", ["model.arch=mit_b0", "loss.aux=0", "optim.name=adamw", "loss.cos=0.1"],
        (108, 192), (96, 192)),
    "DAFormer, MiT-B5 + DAFormer head (2+2 crops, 512x512)": (
        "gta5_to_cityscapes_daformer", ["model.weights=null"], (512, 512), (512, 512)),
}
FLOOR = "source-only + target forward/backward, no loss"
DEEPLAB = "source-only, DeepLab-v2 R18 x1/4 (the MiniCity preset's network)"


def full_dictionary(cfg, model) -> ClassFeatureDictionary:
    """The run's dictionary, every slot filled with a random unit vector."""
    c = cfg.dictionary
    d = ClassFeatureDictionary(19, c.capacity, model.feature_dim, c.per_image)
    d.push(torch.nn.functional.normalize(torch.randn(19 * c.capacity, model.feature_dim), dim=1),
           torch.arange(19).repeat_interleave(c.capacity))
    return d


def bench(preset: str, overrides: list[str], size_s, size_t, qs, repeat: int) -> list[tuple]:
    base = load_config(preset, overrides)
    device = torch.device("cpu")
    b = base.data.batch_size
    x_s, x_t = torch.randn(b, 3, *size_s), torch.randn(b, 3, *size_t)
    y_s = torch.randint(0, 19, (b, *size_s))
    runs = {"source-only": apply_method(copy.deepcopy(base), "source_only"),
            "MinEnt": apply_method(copy.deepcopy(base), "minent"),
            "DACS": apply_method(copy.deepcopy(base), "dacs")}
    ours_dacs = copy.deepcopy(base)
    ours_dacs.loss.cos = ours_dacs.loss.cos or 0.01
    runs["ours + DACS"] = apply_method(ours_dacs, "ours_dacs")
    for q in qs:
        cfg = copy.deepcopy(base)
        cfg.loss.cos, cfg.dictionary.capacity = cfg.loss.cos or 0.01, q
        runs[f"ours Q={q}"] = cfg
    state = {}
    for name, cfg in runs.items():
        torch.manual_seed(0)
        model = build_model(cfg.model, 19).to(device).train()
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        d = full_dictionary(cfg, model)
        opt = torch.optim.SGD(model.param_groups(1e-4), lr=1e-4, momentum=0.9)
        state[name] = (build_terms(cfg, 19, device, model), model, d, opt,
                       autocast_for(cfg.train.amp, device))
    # the floor of any method that adapts through the target batch: source-only plus a target
    # forward and backward through the backbone, with a loss that costs nothing
    state[FLOOR] = state.pop("source-only")
    state["source-only"] = state[FLOOR]
    times = {name: [] for name in [*runs, FLOOR]}
    for it in range(repeat + 1):
        for name, (parts, model, d, opt, ac) in state.items():
            t0 = time.perf_counter()
            if name == FLOOR:  # its gradient is computed, then cleared by train_step
                with ac():
                    features = model(x_t).features
                features.float().mean().backward()
            train_step(model, {"image": x_s, "label": y_s}, {"image": x_t}, 10**6, parts, d,
                       opt, autocast=ac)
            if it > 0:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return [(name, sec, sec / med["source-only"], sec / med["MinEnt"], sec / med[FLOOR],
             sec / med["DACS"]) for name, sec in med.items()]


def bench_transformer(preset: str, overrides: list[str], size_s, size_t,
                      repeat: int) -> list[tuple]:
    """(method, s / step, / source-only, / DACS, / MIC) of the transformer's methods."""
    base = load_config(preset, overrides)
    device = torch.device("cpu")
    b = base.data.batch_size
    x_s, x_t = torch.randn(b, 3, *size_s), torch.randn(b, 3, *size_t)
    y_s = torch.randint(0, 19, (b, *size_s))
    names = {"source-only": "source_only", "DACS": "dacs", "MIC": "mic", "ours + MIC": "ours_mic"}
    cfgs = {name: apply_method(copy.deepcopy(base), m) for name, m in names.items()}
    if preset == "minicity":  # the preset's own network: the budget to compare with
        cfgs[DEEPLAB] = apply_method(load_config(preset), "source_only")
    state = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build_model(cfg.model, 19).to(device).train()
        d = full_dictionary(cfg, model)
        if name == DEEPLAB:
            opt = torch.optim.SGD(model.param_groups(0.02), lr=0.02, momentum=0.9)
        else:
            opt = torch.optim.AdamW(model.param_groups(6e-5), lr=6e-5)
        state[name] = (build_terms(cfg, 19, device, model), model, d, opt,
                       autocast_for(cfg.train.amp, device), cfg.loss.aux)
    times = {name: [] for name in state}
    for it in range(repeat + 1):
        for name, (parts, model, d, opt, ac, aux) in state.items():
            t0 = time.perf_counter()
            train_step(model, {"image": x_s, "label": y_s}, {"image": x_t}, 10**6, parts, d,
                       opt, aux=aux, autocast=ac)
            if it > 0:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return [(name, sec, sec / med["source-only"], sec / med["DACS"], sec / med["MIC"])
            for name, sec in med.items()]


HRDA_MIT = ["model.arch=mit_b0", "model.embed=32", "loss.aux=0", "optim.name=adamw",
            "model.align_corners=false", "loss.seg_reduction=all", "selftrain.ema=daformer",
            "train.amp=none"]
HRDA_ROWS = {  # name: (method, overrides, source (H, W), target (H, W))
    "DACS, 96x96 crops (DAFormer at half resolution)": (
        "dacs", ["selftrain.mask_patch=6"], (96, 96), (96, 96)),
    "DACS, 192x96 crops (MiniCity's MiT runs)": ("dacs", [], (96, 192), (96, 192)),
    "HRDA": ("dacs", ["model.hrda.enabled=true"], (192, 192), (192, 192)),
    "MIC(HRDA)": ("mic", ["model.hrda.enabled=true"], (192, 192), (192, 192)),
    "ours + MIC(HRDA)": ("ours_mic", ["model.hrda.enabled=true"], (192, 192), (192, 192)),
}
HRDA_SET = ["model.hrda.detail_crop=96,96", "model.hrda.window=192,192",
            "model.hrda.attention_embed=32", "selftrain.mask_patch=12"]


def bench_hrda(repeat: int) -> list[tuple]:
    """(row, s / step, / DACS at 96x96, / HRDA, peak MiB, estimate MiB) of :data:`HRDA_ROWS`."""
    from cosalign.engine.memory import PeakBytes, estimate_memory

    device = torch.device("cpu")
    state = {}
    for name, (method, overrides, size_s, size_t) in HRDA_ROWS.items():
        sets = [*HRDA_MIT, *HRDA_SET, *overrides,
                f"data.source.crop={size_s[1]},{size_s[0]}",
                f"data.target.crop={size_t[1]},{size_t[0]}"]
        cfg = apply_method(load_config("minicity", sets), method)
        torch.manual_seed(0)
        model = build_model(cfg.model, 19).to(device).train()
        d = full_dictionary(cfg, model)
        b = cfg.data.batch_size
        batches = ({"image": torch.randn(b, 3, *size_s),
                    "label": torch.randint(0, 19, (b, *size_s))},
                   {"image": torch.randn(b, 3, *size_t)})
        opt = torch.optim.AdamW(model.param_groups(6e-5), lr=6e-5)
        estimate = estimate_memory(cfg, "fp32")
        state[name] = (build_terms(cfg, 19, device, model), model, d, opt, batches, cfg,
                       (estimate.step + estimate.grads) / 2**20)
    times = {name: [] for name in state}
    peaks = {}
    for it in range(repeat + 2):
        for name, (parts, model, d, opt, (bs, bt), _cfg, _) in state.items():
            count = PeakBytes()
            t0 = time.perf_counter()
            with count if it == 1 else contextlib.nullcontext():  # its peak, once, untimed
                train_step(model, bs, bt, 10**6, parts, d, opt, seg_reduction="all",
                           align_corners=False)
            if it == 1:
                peaks[name] = count.peak / 2**20
            elif it > 1:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    first = next(iter(med))
    return [(name, sec, sec / med[first], sec / med["HRDA"], peaks[name], state[name][-1])
            for name, sec in med.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--transformer", action="store_true", help="the MiT network's methods")
    p.add_argument("--paper", action="store_true", help="with --transformer: DAFormer's size too")
    p.add_argument("--embed", type=int, default=256,
                   help="with --transformer: the MiniCity network's head width (model.embed)")
    p.add_argument("--hrda", action="store_true", help="HRDA on MiniCity (the hrda plan)")
    args = p.parse_args()
    print(f"# step_bench: {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.hrda:
        print("\n## HRDA on MiniCity (MiT-B0, head 32, 8 + 8 images, fp32)\n\n| row | s / step "
              "| / DACS at 96x96 | / HRDA | step's peak MiB | estimate MiB |\n"
              "|---|---|---|---|---|---|")
        for name, sec, r_lo, r_h, peak, est in bench_hrda(args.repeat):
            print(f"| {name} | {sec:.3f} | {r_lo:.2f}x | {r_h:.2f}x | {peak:.0f} | {est:.0f} |",
                  flush=True)
        return
    if args.transformer:
        for title, (preset, overrides, size_s, size_t) in TRANSFORMER.items():
            if preset != "minicity" and not args.paper:
                continue
            if preset == "minicity":
                overrides = [*overrides, f"model.embed={args.embed}"]
                title += f", head width {args.embed}"
            print(f"\n## {title}\n\n| method | s / step | / source-only | / DACS | / MIC |\n"
                  "|---|---|---|---|---|")
            repeat = args.repeat if preset == "minicity" else max(2, args.repeat // 4)
            for name, sec, r_so, r_st, r_mic in bench_transformer(preset, overrides, size_s,
                                                                   size_t, repeat):
                print(f"| {name} | {sec:.3f} | {r_so:.2f}x | {r_st:.2f}x | {r_mic:.2f}x |",
                      flush=True)
        return
    for title, (preset, overrides, size_s, size_t) in SCALES.items():
        if args.quick and not preset == "minicity":
            continue
        qs = (50, 200, 1000) if preset == "minicity" else (100, 1000)
        repeat = args.repeat if preset == "minicity" else max(2, args.repeat // 4)
        print(f"\n## {title}\n")
        print("| method | s / step | / source-only | / MinEnt | / floor | / DACS |\n"
              "|---|---|---|---|---|---|")
        for name, sec, r_so, r_me, r_fl, r_st in bench(preset, overrides, size_s, size_t, qs,
                                                        repeat):
            print(f"| {name} | {sec:.3f} | {r_so:.2f}x | {r_me:.2f}x | {r_fl:.2f}x | "
                  f"{r_st:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
