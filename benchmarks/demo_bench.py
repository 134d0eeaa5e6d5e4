"""Where the demo's time goes on this CPU: one training step of each demo method in fp32 and
bf16 autocast, channels-last or not, 1 or 2 threads; the data pipeline; the share of the step's
operators (torch.profiler).

    .venv/bin/python benchmarks/demo_bench.py            # ~4 min on 2 AVX2 cores
    .venv/bin/python benchmarks/demo_bench.py --repeat 3 --no-bf16   # quicker
    .venv/bin/python benchmarks/demo_bench.py --allocator            # glibc's setting only

The steps are the real ``train_step`` of the MiniCity preset in the demo's regime (the
pretrained backbone, BatchNorm affine fixed), on real MiniCity batches fetched beforehand
(``data/minicity``, made by ``cosalign data make`` or the demo), after the warm-up iteration so
that ours computes its loss. Cases are interleaved round-robin so that machine noise hits them
alike; the median of the repeats is reported, and each row as a ratio to fp32 source-only.
Last, glibc's default allocator settings against engine/runtime.py's
``retain_freed_memory`` (seconds and minor page faults of the same steps, each case in its
own process).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from cosalign.data import build_dataset  # noqa: E402
from cosalign.demo import REGIME  # noqa: E402
from cosalign.engine.precision import cpu_kind  # noqa: E402
from cosalign.engine.runtime import autocast_for, retain_freed_memory  # noqa: E402
from cosalign.engine.train import batches, train_step  # noqa: E402
from cosalign.losses import ClassFeatureDictionary  # noqa: E402
from cosalign.methods import build_terms  # noqa: E402
from cosalign.minicity import minicity_config  # noqa: E402
from cosalign.models import build_model  # noqa: E402
from cosalign.models.weights import load_weights  # noqa: E402

METHODS = ("source_only", "target_bn", "ours")


def data_times(cfg, n: int = 40) -> dict[str, float]:
    """Seconds per (source, target) batch pair: the first ``n`` (images decoded and resized
    into the cache) and the next ``n`` after two epochs (the cache warm)."""
    src = build_dataset(cfg.data.source, cfg.data, train=True)
    tgt = build_dataset(cfg.data.target, cfg.data, train=True, labels=False)
    b = cfg.data.batch_size
    si, ti = batches(src, b, 0, 0, 0), batches(tgt, b, 1, 0, 0)
    t0 = time.perf_counter()
    for _ in range(n):
        next(si), next(ti)
    cold = (time.perf_counter() - t0) / n
    for _ in range(2 * max(len(src), len(tgt)) // b):
        next(si), next(ti)
    t0 = time.perf_counter()
    for _ in range(n):
        next(si), next(ti)
    return {"cold cache": cold, "warm cache": (time.perf_counter() - t0) / n}


def make_case(data_dir: Path, method: str, amp: str, channels_last: bool):
    cfg = minicity_config(data_dir, [*REGIME, f"train.amp={amp}",
                                     f"train.channels_last={channels_last}"], method)
    torch.manual_seed(0)
    model = build_model(cfg.model, 19)
    with contextlib.redirect_stdout(io.StringIO()):  # its one-line load report, per case
        load_weights(model, cfg.model.weights)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    d = ClassFeatureDictionary(19, cfg.dictionary.capacity, model.feature_dim,
                               cfg.dictionary.per_image)
    terms = build_terms(cfg, 19, torch.device("cpu"), model)
    opt = torch.optim.SGD(model.param_groups(1e-3), lr=1e-3, momentum=0.9)
    ac = autocast_for(amp, torch.device("cpu"))
    it = cfg.align.start_iter  # the alignment is on from here

    def step(bs, bt):
        train_step(model, bs, bt, it, terms, d, opt, None, cfg.loss.aux, ac)
    return step


def allocator_child(data_dir: Path, steps: int, retain: bool) -> None:
    """In a fresh process: ``steps`` source-only steps (after one warm-up step) with or without
    :func:`retain_freed_memory`; prints seconds and minor page faults of those steps."""
    torch.set_num_threads(2)
    if retain:
        retain_freed_memory()
    step = make_case(data_dir, "source_only", "none", True)
    cfg = minicity_config(data_dir, REGIME)
    src = build_dataset(cfg.data.source, cfg.data, train=True)
    tgt = build_dataset(cfg.data.target, cfg.data, train=True, labels=False)
    b = cfg.data.batch_size
    si, ti = batches(src, b, 0, 0, 0), batches(tgt, b, 1, 0, 0)
    fixed = [(next(si), next(ti)) for _ in range(steps + 1)]
    step(*fixed[0])
    faults, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for bs, bt in fixed[1:]:
        step(bs, bt)
    print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def allocator(data_dir: Path, steps: int = 60) -> None:
    """glibc's default against engine/runtime.py's retain_freed_memory, each in its own
    process (mallopt is process-wide), alternated twice."""
    rows = {False: [], True: []}
    for retain in (False, True, False, True):
        out = subprocess.run([sys.executable, __file__, "--data", str(data_dir),
                              "--allocator-child", str(steps), str(int(retain))],
                             capture_output=True, text=True, check=True).stdout.split()
        rows[retain].append((float(out[-2]), int(out[-1])))
    print(f"\n## the allocator ({steps} fp32 source-only steps, each case twice)\n")
    print("| glibc | s | minor page faults |\n|---|---|---|")
    for retain, name in ((False, "default"), (True, "retain_freed_memory()")):
        for sec, faults in rows[retain]:
            print(f"| {name} | {sec:.2f} | {faults:,} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "minicity")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast cases")
    p.add_argument("--allocator", action="store_true",
                   help="only the allocator comparison (~2 min)")
    p.add_argument("--allocator-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.allocator_child:
        allocator_child(args.data, args.allocator_child[0], bool(args.allocator_child[1]))
        return 0
    if not (args.data / "minicity.json").is_file():
        p.error(f"--data {args.data}: no MiniCity there (cosalign data make --out {args.data})")
    torch.set_num_threads(2)
    retain_freed_memory()  # as the training loop does
    cfg = minicity_config(args.data, REGIME)
    print(f"# demo_bench: CPU kind {cpu_kind()}, torch {torch.__version__}, "
          f"batch {cfg.data.batch_size} + {cfg.data.batch_size}\n")
    if args.allocator:
        allocator(args.data)
        return 0

    print("## data (main process, s per source + target batch pair)\n")
    print("| cache | s / pair |\n|---|---|")
    for name, sec in data_times(cfg).items():
        print(f"| {name} | {sec:.4f} |")

    src = build_dataset(cfg.data.source, cfg.data, train=True)
    tgt = build_dataset(cfg.data.target, cfg.data, train=True, labels=False)
    si, ti = batches(src, cfg.data.batch_size, 0, 0, 0), batches(tgt, cfg.data.batch_size, 1, 0, 0)
    fixed = [(next(si), next(ti)) for _ in range(args.repeat + 1)]
    cases = {}
    for threads in (2, 1):
        for amp in ("none",) if args.no_bf16 else ("none", "bf16"):
            for cl in (True, False) if threads == 2 else (True,):
                if amp == "bf16" and not cl:
                    continue
                for m in METHODS:
                    cases[(m, "fp32" if amp == "none" else "bf16",
                           "channels-last" if cl else "contiguous", threads)] = \
                        make_case(args.data, m, amp, cl)
    times = {k: [] for k in cases}
    for r in range(args.repeat + 1):
        for key, step in cases.items():
            torch.set_num_threads(key[3])
            t0 = time.perf_counter()
            step(*fixed[r])
            if r > 0:  # the first round warms up
                times[key].append(time.perf_counter() - t0)
    torch.set_num_threads(2)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[("source_only", "fp32", "channels-last", 2)]
    print(f"\n## one training step (median of {args.repeat})\n")
    print("| method | precision | layout | threads | s / step | / fp32 source-only |\n"
          "|---|---|---|---|---|---|")
    for (m, prec, layout, threads), sec in med.items():
        print(f"| {m} | {prec} | {layout} | {threads} | {sec:.3f} | {sec / base:.2f}x |")

    print("\n## where an fp32 step of ours goes (torch.profiler, self time, 3 steps)\n")
    from torch.profiler import ProfilerActivity, profile

    step = cases[("ours", "fp32", "channels-last", 2)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for r in range(min(3, args.repeat)):
            step(*fixed[r])
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print("| operator | share of self time |\n|---|---|")
    for e in rows[:8]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% |")
    allocator(args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
