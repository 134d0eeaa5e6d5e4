"""The GPU check: the test suite, step and loss costs at paper size, and a paper-preset run that
is killed and resumed, in one command that writes Markdown tables.

    python benchmarks/gpu_check.py --out runs/gpu_check                 # on a CUDA machine
    python benchmarks/gpu_check.py --out /tmp/gc --device cpu --small   # smoke run on a CPU

Sections (``--sections`` picks some; all by default), each a table in OUT/gpu_check.md:

- tests: the test suite with ``COSALIGN_TEST_DEVICE`` set to the device, 8 workers where
  pytest-xdist is installed (its summary line);
- step: one ``train_step`` at paper size (source 1280x720, target 1024x512, batch 1 + 1,
  DeepLab-v2 ResNet-101, a full dictionary of 19 x 1000 entries) for source-only, MinEnt,
  AdvEnt, ours, ours+MinEnt, DACS and ours+DACS, fp32 and bf16 autocast: s/step, ratio to
  source-only, peak GPU memory;
- transformer: one ``train_step`` of DAFormer's preset (MiT-B5, DAFormer head, AdamW, 2 + 2
  crops of 512x512, the feature distance on) for source-only, DACS, MIC and ours + MIC, fp32
  and bf16: s/step, ratios to source-only, DACS and MIC, peak GPU memory;
- hrda: one ``train_step`` of HRDA's preset (MiT-B5 in HRDA's wrapper, 2 + 2 crops of
  1024x1024) for HRDA, MIC(HRDA) and ours + MIC(HRDA), fp32 and bf16: s/step, ratio to HRDA,
  peak GPU memory and ``cosalign memory``'s estimate of it;
- loss: the cosine loss alone (N = 8385 positions, C = 2048), efficient vs plain autograd,
  Q = 100 and 1000, both match modes, fp32 and bf16 products: ms, ratio to the matrix-multiply
  roofline (FLOPs / the fp32 or bf16 product rate measured in this run), extra memory;
- e2e: the gta5_to_cityscapes preset on generated trees in the real formats (GTA5 1914x1052
  palette PNGs, Cityscapes 2048x1024 label ids): train 2N iterations straight; train again,
  kill -9 the process after its checkpoint at N, resume to 2N; compare the two final
  checkpoints; ``cosalign eval`` and ``cosalign predict`` on the result.

``--small`` shrinks the sizes and the network's width by 8 (the step's by 16), the dictionary
by 10, runs one test file, and times each case once with no untimed call (a fifth of a second
for the product rates): a smoke run of this script in about a minute on a CPU, whose times mean
nothing (tests/test_gpu_check.py runs it). The exit
code is 1 when a check failed (a test, a resume mismatch, a command's exit code).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # runnable with nothing installed

from cosalign.config import load_config  # noqa: E402
from cosalign.engine.checkpoint import (  # noqa: E402
    checkpoint_iteration,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
)
from cosalign.engine.runtime import autocast_for, deterministic_mode  # noqa: E402
from cosalign.engine.train import train_step  # noqa: E402
from cosalign.losses import ClassFeatureDictionary  # noqa: E402
from cosalign.losses.cosine import cosine_alignment, cosine_alignment_plain  # noqa: E402
from cosalign.methods import apply_method, build_terms  # noqa: E402
from cosalign.models import build_model  # noqa: E402

STEP_METHODS = ("source_only", "minent", "advent", "ours", "ours_minent", "dacs", "ours_dacs")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Best of ``repeat`` timed calls (seconds), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}"


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the bytes allocated now (0 on a CPU)."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# --- tests -----------------------------------------------------------------------------------

def section_tests(args, device) -> tuple[str, bool]:
    targets = ["tests/test_diagnostics.py"] if args.small else ["tests"]
    # 8 workers where pytest-xdist is installed (the suite took 132 s so on an H200 with 16
    # cores); one process for the smoke run
    workers = [] if args.small or importlib.util.find_spec("xdist") is None else \
        ["-n", "8", "--dist", "worksteal"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
           *workers, *targets, "--ignore=tests/test_gpu_check.py"]  # not itself: no recursion
    env = {**os.environ, "COSALIGN_TEST_DEVICE": device.type,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    text = table(["command", "device", "result", "wall s"],
                 [[f"`COSALIGN_TEST_DEVICE={device.type} pytest {' '.join(workers + targets)}`",
                   device.type, summary, f"{time.perf_counter() - t0:.0f}"]])
    if failed:
        text += "\n\n" + "\n".join(f"- {ln}" for ln in failed[:30])
    return text, out.returncode == 0


# --- one training step -----------------------------------------------------------------------

def full_dictionary(capacity: int, dim: int, device) -> ClassFeatureDictionary:
    d = ClassFeatureDictionary(19, capacity, dim).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    d.push(torch.nn.functional.normalize(torch.randn(19 * capacity, dim, generator=g), dim=1)
           .to(device), torch.arange(19, device=device).repeat_interleave(capacity))
    return d


def section_step(args, device) -> tuple[str, bool]:
    scale = 16 if args.small else 1  # --small: a smoke run (bf16 is emulated on AVX2 CPUs)
    size_s, size_t = (720 // scale, 1280 // scale), (512 // scale, 1024 // scale)
    rows = []
    for amp in ("none", "bf16"):
        base = load_config("gta5_to_cityscapes", ["model.weights=null", f"train.amp={amp}",
                                                  f"model.width={1 / scale}"])
        torch.manual_seed(0)
        model = build_model(base.model, 19).to(device).train()
        x_s = torch.randn(1, 3, *size_s, device=device)
        y_s = torch.randint(0, 19, (1, *size_s), device=device)
        x_t = torch.randn(1, 3, *size_t, device=device)
        d = full_dictionary(base.dictionary.capacity, model.feature_dim, device)
        first = None
        for method in STEP_METHODS:
            cfg = apply_method(copy.deepcopy(base), method)
            opt = torch.optim.SGD(model.param_groups(1e-6), lr=1e-6, momentum=0.9)
            # AdvEnt: discriminators and their optimizer; self-training: the teacher
            parts = build_terms(cfg, 19, device, model)
            reset_peak(device)
            step = functools.partial(train_step, model, {"image": x_s, "label": y_s},
                                     {"image": x_t}, 10**6, parts, d, opt, None, cfg.loss.aux,
                                     autocast_for(amp, device))
            sec = best_time(step, device, args.repeat, warmup=0 if args.small else 2)
            first = first or sec
            rows.append([method, "bf16" if amp == "bf16" else "fp32", f"{sec:.3f}",
                         f"{sec / first:.2f}x", peak_gib(device)])
            del step, opt, parts
        del model, d
        if device.type == "cuda":
            torch.cuda.empty_cache()
    header = ["method", "precision", "s/step", "/ source-only", "peak memory GiB"]
    note = (f"source {size_s[1]}x{size_s[0]}, target {size_t[1]}x{size_t[0]}, batch 1 + 1, "
            f"ResNet-101 width {1 / scale:g}, dictionary 19 x 1000, best of {args.repeat}")
    return note + "\n\n" + table(header, rows), True


def square_batch(args, preset: str, amp: str, small: list[str], crop: int, device):
    """The preset's config (``small``'s overrides with ``--small``) and a random batch of its
    size, (x_s, y_s, x_t) of crop x crop."""
    base = load_config(preset, ["model.weights=null", f"train.amp={amp}",
                                *(small if args.small else [])])
    b = base.data.batch_size
    return base, (torch.randn(b, 3, crop, crop, device=device),
                  torch.randint(0, 19, (b, crop, crop), device=device),
                  torch.randn(b, 3, crop, crop, device=device))


def time_mit_step(args, cfg, amp: str, batch: tuple, device, warmup: int,
                  **step_kw) -> tuple[float, str]:
    """(best s/step, peak GiB) of ``train_step`` for ``cfg`` on ``batch`` = (x_s, y_s, x_t):
    a new network, a full dictionary, AdamW and the method's parts (the teacher, the feature
    distance's frozen copy); ``--small`` times with no untimed call (its times mean nothing)."""
    x_s, y_s, x_t = batch
    torch.manual_seed(0)
    model = build_model(cfg.model, 19).to(device).train()
    d = full_dictionary(cfg.dictionary.capacity, model.feature_dim, device)
    opt = torch.optim.AdamW(model.param_groups(6e-5), lr=6e-5)
    parts = build_terms(cfg, 19, device, model)
    reset_peak(device)
    step = functools.partial(train_step, model, {"image": x_s, "label": y_s}, {"image": x_t},
                             10**6, parts, d, opt, None, cfg.loss.aux, autocast_for(amp, device),
                             **step_kw)
    sec = best_time(step, device, args.repeat, warmup=0 if args.small else warmup)
    peak = peak_gib(device)
    del step, opt, parts, model, d
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return sec, peak


# --- one training step of the transformer ---------------------------------------------------

TRANSFORMER_METHODS = ("source_only", "dacs", "mic", "ours_mic")


def section_transformer(args, device) -> tuple[str, bool]:
    """DAFormer's preset (MiT-B5, DAFormer head, AdamW, 2 + 2 crops of 512x512, the feature
    distance on): one ``train_step`` of source-only, DACS, MIC and ours + MIC, fp32 and bf16.
    ``--small``: MiT-B0 with a 32-wide head on 32x32 crops."""
    scale = 16 if args.small else 1
    crop = 512 // scale
    small = ["model.arch=mit_b0", "model.embed=32", f"selftrain.mask_patch={32 // scale}"]
    rows = []
    for amp in ("none", "bf16"):
        base, batch = square_batch(args, "gta5_to_cityscapes_daformer", amp, small, crop, device)
        secs = {}
        for method in TRANSFORMER_METHODS:
            cfg = apply_method(copy.deepcopy(base), method)
            secs[method], peak = time_mit_step(args, cfg, amp, batch, device, 2)
            rows.append([method, "bf16" if amp == "bf16" else "fp32", secs[method], peak])
        for row in rows[-len(TRANSFORMER_METHODS):]:
            sec = row[2]
            row[2:3] = [f"{sec:.3f}", f"{sec / secs['source_only']:.2f}x",
                        f"{sec / secs['dacs']:.2f}x", f"{sec / secs['mic']:.2f}x"]
    header = ["method", "precision", "s/step", "/ source-only", "/ DACS", "/ MIC",
              "peak memory GiB"]
    arch = "MiT-B0, head width 32" if args.small else "MiT-B5, DAFormer head (256)"
    note = (f"gta5_to_cityscapes_daformer: {arch}, batch {len(batch[0])} + {len(batch[0])} crops "
            f"of {crop}x{crop}, "
            f"AdamW, the feature distance on, dictionary 19 x {base.dictionary.capacity}, "
            f"best of {args.repeat} (targets: MIC <= 1.4x DACS, ours + MIC <= 1.15x "
            "MIC)")
    same = {on: encoder_gradients_repeat(base, batch[0], device, on) for on in (False, True)}
    det = ("The encoder's gradients (attention included), two identical fp32 passes: "
           f"train.deterministic=false: {same[False]}; train.deterministic=true: {same[True]}")
    return note + "\n\n" + table(header, rows) + "\n\n" + det, same[True] == "bit-equal"


# --- one training step of HRDA and MIC(HRDA), and the memory estimate -----------------------

HRDA_METHODS = ("dacs", "mic", "ours_mic")


def section_hrda(args, device) -> tuple[str, bool]:
    """HRDA's preset (MiT-B5 in HRDA's wrapper, 2 + 2 crops of 1024x1024, detail 512, AdamW,
    the feature distance on): one ``train_step`` of HRDA (dacs), MIC(HRDA) and ours + MIC(HRDA),
    fp32 and bf16: s/step and the peak GPU memory next to ``cosalign memory``'s estimate (which
    leaves out the CUDA context and the allocator's cache; max_memory_allocated does too).
    ``--small``: MiT-B0, 64x64 crops."""
    from cosalign.engine.memory import estimate_memory

    crop = 64 if args.small else 1024
    small = ["model.arch=mit_b0", "model.embed=32", "model.hrda.detail_crop=32,32",
             "model.hrda.window=64,64", "model.hrda.attention_embed=16", "selftrain.mask_patch=8"]
    rows = []
    for amp, precision in (("none", "fp32"), ("bf16", "bf16")):
        base, batch = square_batch(args, "gta5_to_cityscapes_hrda", amp, small, crop, device)
        secs = {}
        for method in HRDA_METHODS:
            cfg = apply_method(copy.deepcopy(base), method)
            cfg.data.source.crop = cfg.data.target.crop = (crop, crop)
            estimate = estimate_memory(cfg, precision).total / 2**30
            secs[method], peak = time_mit_step(args, cfg, amp, batch, device, 1,
                                               seg_reduction="all", align_corners=False)
            ratio = "-" if peak == "-" else f"{float(peak) / estimate:.2f}"
            rows.append([method, precision, f"{secs[method]:.3f}",
                         f"{secs[method] / secs['dacs']:.2f}x", peak, f"{estimate:.2f}", ratio])
    header = ["method", "precision", "s/step", "/ HRDA", "peak memory GiB",
              "estimate GiB (cosalign memory)", "peak / estimate"]
    arch = "MiT-B0, 64x64 crops" if args.small else "MiT-B5, 1024x1024 crops, detail 512"
    note = (f"gta5_to_cityscapes_hrda: {arch}, batch {len(batch[0])} + {len(batch[0])}, AdamW, "
            "the feature distance on, "
            f"best of {args.repeat} (target: MIC(HRDA) in bf16 within 16 GB)")
    return note + "\n\n" + table(header, rows), True


def encoder_gradients_repeat(cfg, x: torch.Tensor, device, deterministic: bool) -> str:
    """Whether two identical forward + backward passes of the MiT encoder (stochastic depth
    seeded alike) give bit-equal weight gradients: "bit-equal" or the largest difference.
    The encoder alone: the head's bilinear upsampling has no deterministic CUDA backward."""
    torch.manual_seed(0)
    encoder = build_model(cfg.model, 19).backbone.to(device).train()
    grads = []
    with deterministic_mode(deterministic, device):
        for _ in range(2):
            encoder.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            sum(m.square().mean() for m in encoder(x)).backward()
            grads.append([p.grad.clone() for p in encoder.parameters()])
    diff = max(float((a - b).abs().max()) for a, b in zip(*grads))
    return "bit-equal" if diff == 0 else f"differ by up to {diff:.1e}"


# --- the loss alone --------------------------------------------------------------------------

def matmul_rate(dtype: torch.dtype, device, size: int, seconds: float = 1.0) -> float:
    """FLOP/s of size^3 products run back to back (the roofline's denominator)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b, out = torch.randn_like(a), torch.empty_like(a)
    torch.mm(a, b, out=out)
    sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            torch.mm(a, b, out=out)
        sync(device)
        count += 10
    return 2 * size**3 * count / (time.perf_counter() - t0)


def loss_step(impl: str, f_t, ref, match: str, dt: torch.dtype, kw: dict) -> None:
    """Forward and backward of the efficient or the plain loss on a fresh leaf."""
    x = f_t.clone().requires_grad_()
    if impl == "plain":
        cosine_alignment_plain(x, ref, tau=0.02, match=match, **kw).backward()
    else:
        cosine_alignment(x, ref, tau=0.02, match=match, matmul_dtype=dt, **kw).loss.backward()


def section_loss(args, device) -> tuple[str, bool]:
    n, c = (1024, 256) if args.small else (8385, 2048)
    size = 256 if args.small else 8192  # the rate's products (emulated bf16 is slow)
    rates = {dt: matmul_rate(dt, device, size, 0.2 if args.small else 1.0)
             for dt in (torch.float32, torch.bfloat16)}
    g = torch.Generator(device="cpu").manual_seed(0)
    f_t = torch.randn(1, c, 1, n, generator=g).to(device)
    pseudo = torch.randint(0, 19, (1, 1, n), generator=g).to(device)
    rows = []
    # --small: 1/10 of the entries too (a CPU without native bf16 emulates the bf16 products,
    # ~9 s a call at Q = 1000 on 2 AVX2 cores)
    qs = (10, 100) if args.small else (100, 1000)
    cases = [(q, match, False) for q in qs for match in ("all", "max")]
    cases.insert(1, (qs[0], "all", True))  # the class-restricted path
    for q, match, restrict in cases:
        m = 19 * q
        ref = torch.nn.functional.normalize(torch.randn(m, c, generator=g), dim=1).to(device)
        ref_cls = torch.arange(19, device=device).repeat_interleave(q)
        kw = dict(ref_cls=ref_cls, pseudo=pseudo) if restrict else {}
        plain_mem = None
        for impl, dt in (("plain", torch.float32), ("efficient", torch.float32),
                         ("efficient", torch.bfloat16)):
            before = reset_peak(device)
            run = functools.partial(loss_step, impl, f_t, ref, match, dt, kw)
            sec = best_time(run, device, args.repeat, warmup=0 if args.small else 2)
            extra = (torch.cuda.max_memory_allocated(device) - before) / 2**20 \
                if device.type == "cuda" else None
            plain_mem = extra if impl == "plain" else plain_mem
            products = (1 if match == "max" else 2) * (1 if not restrict else 1 / 19)
            roof = products * 2 * n * m * c / rates[dt]
            mem = "-" if extra is None else f"{extra:.0f}"
            vs = "-" if extra is None or impl == "plain" else f"{extra / plain_mem:.3f}"
            rows.append([match + (", restricted" if restrict else ""), q, impl,
                         "bf16" if dt == torch.bfloat16 else "fp32", f"{1e3 * sec:.2f}",
                         f"{sec / roof:.2f}x", mem, vs])
    head = ["match", "Q", "implementation", "products", "ms fwd+bwd", "/ roofline",
            "extra MiB", "extra / plain's"]
    where = where_the_time_goes(f_t, ref, device)  # ref: the last case's, Q = 1000
    note = (f"N = {n}, C = {c}, M = 19 Q, tau 0.02, best of {args.repeat}; product rates "
            f"measured here ({size}^3): fp32 {rates[torch.float32] / 1e12:.1f} TFLOP/s, "
            f"bf16 {rates[torch.bfloat16] / 1e12:.1f} TFLOP/s. The roofline counts the "
            "products alone (restricted: 1/19 of them, one class per position).")
    return note + "\n\n" + table(head, rows) + "\n\n" + where, True


def where_the_time_goes(f_t, ref, device, top: int = 10) -> str:
    """The profiler's busiest ops in one efficient match=all forward + backward with bf16
    products (the case farthest from its roofline): device time on a GPU, CPU time on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    run = functools.partial(loss_step, "efficient", f_t, ref, "all", torch.bfloat16, {})
    run()
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in events) or 1
    rows = [[e.key, e.count, f"{getattr(e, key) / 1e3:.2f}", f"{getattr(e, key) / total:.0%}"]
            for e in events[:top]]
    return (f"Where the time goes (match=all, Q = {ref.shape[0] // 19}, bf16 products, one "
            f"call, torch profiler, {'device' if device.type == 'cuda' else 'CPU'} self time):"
            "\n\n" + table(["op", "calls", "ms", "share"], rows))


# --- the paper preset end to end ------------------------------------------------------------

def make_trees(root: Path, small: bool) -> tuple[Path, Path]:
    """A GTA5 and a Cityscapes tree in their real formats and sizes (1/8 with --small)."""
    from tests.trees import make_cityscapes, make_gta5

    s = 8 if small else 1
    gta, cs = root / "gta5", root / "cityscapes"
    if not gta.is_dir():
        make_gta5(gta, n=4, size=(1914 // s, 1052 // s), odd_one=False)
    if not cs.is_dir():
        make_cityscapes(cs, "train", per_city=2, size=(2048 // s, 1024 // s))
        make_cityscapes(cs, "val", per_city=1, size=(2048 // s, 1024 // s))
    return gta, cs


def section_e2e(args, device) -> tuple[str, bool]:
    out = Path(args.out) / "e2e"
    gta, cs = make_trees(out / "data", args.small)
    n = 2 if args.small else 4
    sets = [f"data.source.root={gta}", f"data.target.root={cs}", f"data.val.root={cs}",
            "model.weights=null", f"train.iters={2 * n}", f"train.checkpoint_every={n}",
            "train.eval_every=0", f"train.log_every={n}", "train.deterministic=true",
            f"train.amp={args.amp}", f"train.device={device.type}", "data.workers=2"]
    if args.small:
        sets += ["model.width=0.125", "data.source.size=[160, 90]",
                 "data.target.size=[128, 64]", "data.val.size=[128, 64]"]
    cli = [sys.executable, "-m", "cosalign.cli"]
    train = cli + ["train", "--config", "gta5_to_cityscapes", "--method", "ours", "--quiet"]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    rows, ok = [], True

    def run(name: str, cmd: list[str]) -> subprocess.CompletedProcess:
        nonlocal ok
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        ok &= done.returncode == 0
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        rows.append([name, f"{time.perf_counter() - t0:.0f}",
                     "ok" if done.returncode == 0 else f"exit {done.returncode}: {tail[0][:120]}"])
        return done

    for d in ("straight", "killed", "pred"):  # a fresh pair of runs each time
        shutil.rmtree(out / d, ignore_errors=True)
    run(f"train {2 * n} iterations straight", train + ["--out", str(out / "straight"),
                                                       "--set", *sets])
    t0 = time.perf_counter()
    proc = subprocess.Popen(train + ["--out", str(out / "killed"), "--set", *sets], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "killed" / checkpoint_name(n)
    while not first.exists() and proc.poll() is None and time.perf_counter() - t0 < 900:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = [checkpoint_iteration(p) for p in list_checkpoints(out / "killed")]
    early = killed_at == [n]
    ok &= early
    rows.append([f"train again, kill -9 after the checkpoint at {n}",
                 f"{time.perf_counter() - t0:.0f}",
                 f"killed with checkpoints {killed_at}" + ("" if early else " (expected only "
                                                           f"[{n}]: NOT a mid-run kill)")])
    run(f"resume to {2 * n}", cli + ["train", "--resume", str(out / "killed"), "--quiet"])
    a = load_checkpoint(list_checkpoints(out / "straight")[-1])
    b = load_checkpoint(list_checkpoints(out / "killed")[-1])
    diff = max(float((a["model"][k].float() - b["model"][k].float()).abs().max())
               for k in a["model"])
    tol = 1e-6 if device.type == "cpu" else 1e-5  # CUDA: a few ops have no deterministic kernel
    same_dict = torch.allclose(a["dictionary"]["entries"], b["dictionary"]["entries"], rtol=0,
                               atol=tol)
    match = a["iteration"] == b["iteration"] == 2 * n and diff <= tol and same_dict
    ok &= match
    rows.append(["resumed vs straight", "-",
                 f"{'match' if match else 'MISMATCH'}: iterations {a['iteration']} / "
                 f"{b['iteration']}, max weight difference {diff:.2e} (tolerance {tol:g}), "
                 f"dictionaries {'equal' if same_dict else 'differ'}"])
    ckpt = list_checkpoints(out / "killed")[-1]
    run("eval (cityscapes val, full resolution)",
        cli + ["eval", "--checkpoint", str(ckpt), "--data", str(cs), "--quiet", "--device",
               device.type, "--out", str(out / "eval_val")])
    if (out / "eval_val.json").is_file():
        res = json.loads((out / "eval_val.json").read_text())
        rows[-1][2] += f", {res['images']} images, mIoU {res['miou']['cityscapes19']:.2f}"
    pred = out / "pred"
    run("predict (val images)", cli + ["predict", "--checkpoint", str(ckpt),
                                       str(cs / "leftImg8bit" / "val"), "--out", str(pred),
                                       "--quiet", "--device", device.type])
    rows[-1][2] += f", {len(list(pred.rglob('*_color.png')))} coloured predictions"
    note = (f"`cosalign train --config gta5_to_cityscapes --method ours` with train.amp="
            f"{args.amp}, train.deterministic=true, N = {n}, trees under {out / 'data'}")
    return note + "\n\n" + table(["step", "wall s", "result"], rows), ok


SECTIONS = {"tests": section_tests, "step": section_step, "transformer": section_transformer,
            "hrda": section_hrda, "loss": section_loss, "e2e": section_e2e}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.md and the e2e run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="1/8 sizes and width (smoke run)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16"],
                   help="e2e precision (auto: bf16 where the device computes it natively)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device (use --device cpu --small)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    report = [f"# GPU check on {name}",
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{datetime.date.today()}, `python benchmarks/gpu_check.py "
              f"{' '.join(sys.argv[1:])}`"]
    all_ok = True
    for key in args.sections:
        t0 = time.perf_counter()
        print(f"[gpu_check] {key} ...", flush=True)
        text, ok = SECTIONS[key](args, device)
        all_ok &= ok
        report.append(f"## {key}{'' if ok else ' (FAILED)'} ({time.perf_counter() - t0:.0f} s)"
                      f"\n\n{text}")
        print(report[-1] + "\n", flush=True)
        (out / "gpu_check.md").write_text("\n\n".join(report) + "\n")
    print(f"wrote {out / 'gpu_check.md'}: {'all checks passed' if all_ok else 'FAILED'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
