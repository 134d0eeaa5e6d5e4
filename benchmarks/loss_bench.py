"""Cost of the cosine loss at paper scale: efficient vs plain autograd vs the matmul roofline.

    .venv/bin/python benchmarks/loss_bench.py            # N=8385, C=2048, Q in 100 300 1000
    .venv/bin/python benchmarks/loss_bench.py --quick    # a smaller case, seconds
    .venv/bin/python benchmarks/loss_bench.py --stride4  # the transformer's features

``--stride4``: the transformer's case, DAFormer's fused decoder features at stride 4 (C = 256)
for its 2 mixed 512x512 crops: N = 2 x 128 x 128 = 32768 positions, 4x stride 8's per pixel.

Each (implementation, match, Q) case runs forward + backward in a fresh subprocess, so that its
peak resident memory above the inputs ("extra memory") is its own. The roofline time is the
FLOPs the case needs divided by the sustained matrix-multiply rate (2048^3 products back to back
for 1 s, fp32 or bf16 as the case), measured in the case's own process just before each repeat:
eff/roofline is the median over repeats of time x rate / FLOPs, so that each time is compared
with the rate of its own moment on this shared, drifting machine (the "roofline s" column, like
the times, is the best of the repeats: FLOPs / the highest rate). match=all needs two
N x M x C products (S = T R^T, then G = mask R), match=max one.
Also prints how the efficient time grows with N and with M (it should be linear in both).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_case(impl: str, match: str, n: int, m: int, c: int, dtype: str, repeat: int) -> dict:
    """One case in this process: best time of ``repeat`` fwd+bwd, the matmul rate measured
    just before each (so that each time has its own roofline on this drifting machine), and
    peak extra memory (MB)."""
    from cosalign.losses.cosine import cosine_alignment, cosine_alignment_plain

    torch.manual_seed(0)
    f_t = torch.randn(1, c, 1, n)
    ref = torch.nn.functional.normalize(torch.randn(m, c), dim=1)
    tau = 0.02  # selects ~15% of pairs of random 2048-d vectors, like mid-training S
    mm = torch.bfloat16 if dtype == "bf16" else None
    rate = MatmulRate(mm or torch.float32)  # its buffers exist before the memory baseline
    rate.measure(0.2)
    base = _rss_mb()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, rates = [], []
    for _ in range(repeat):
        rates.append(rate.measure())
        x = f_t.clone().requires_grad_()
        t0 = time.perf_counter()
        if impl == "plain":
            loss = cosine_alignment_plain(x, ref, tau=tau, match=match)
        else:
            loss = cosine_alignment(x, ref, tau=tau, match=match, matmul_dtype=mm).loss
        loss.backward()
        times.append(time.perf_counter() - t0)
        del x, loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sec": min(times), "times": times, "rates": rates,
            "extra_mb": max(peak, peak0) - base}


class MatmulRate:
    """Sustained FLOP/s of size^3 matrix products run back to back, into a preallocated output
    (so that measuring allocates nothing): on a shared machine the best of a few short bursts
    overstates what a multi-second loss sees."""

    def __init__(self, dtype: torch.dtype, size: int = 2048) -> None:
        self.a, self.b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        self.out = torch.empty(size, size, dtype=dtype)
        self.flops = 2 * size**3

    def measure(self, seconds: float = 1.0) -> float:
        torch.mm(self.a, self.b, out=self.out)
        count, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            torch.mm(self.a, self.b, out=self.out)
            count += 1
        return self.flops * count / elapsed


def roofline_ratio(case: dict, flops: float) -> float:
    """Median over repeats of time / (flops / rate measured just before that repeat)."""
    return statistics.median(t * r / flops for t, r in zip(case["times"], case["rates"]))


def block_rate_ratios(n: int, m: int, c: int, repeat: int = 5) -> tuple[float, float]:
    """Rate of the loss's two block products (S = R_t x and G += R_t^T mask, on the shapes
    `cosine_alignment` picks for N=n, M=m) over the 2048^3 rate, each measured for 0.3 s right
    after a 0.3 s reference burst; medians over ``repeat`` rounds."""
    from cosalign.losses.cosine import CHUNK_BYTES, _ref_tiles

    x, ref = torch.randn(c, n), torch.nn.functional.normalize(torch.randn(m, c), dim=1)
    r_t = _ref_tiles(ref)[0][1]
    cols = min(n, CHUNK_BYTES // 4 // r_t.shape[0])
    x_c, s = x[:, :cols], torch.empty(r_t.shape[0], cols)
    mask, g = (torch.randn(r_t.shape[0], cols) > 1).float(), torch.zeros(c, n)[:, :cols]
    flops, ref_rate = 2 * r_t.shape[0] * c * cols, MatmulRate(torch.float32)
    products = {"S": lambda: torch.mm(r_t, x_c, out=s), "G": lambda: g.addmm_(r_t.T, mask)}
    ratios = {k: [] for k in products}
    for _ in range(repeat):
        for k, f in products.items():
            rate = ref_rate.measure(0.3)
            f()
            count, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < 0.3:
                f()
                count += 1
            ratios[k].append(flops * count / elapsed / rate)
    return statistics.median(ratios["S"]), statistics.median(ratios["G"])


def product_share(n: int, m: int, c: int) -> float:
    """Share of the efficient match=all forward + backward's CPU time spent in matrix products
    (aten::mm / addmm), from the torch profiler, after one warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    from cosalign.losses.cosine import cosine_alignment

    f_t = torch.randn(1, c, 1, n)
    ref = torch.nn.functional.normalize(torch.randn(m, c), dim=1)
    cosine_alignment(f_t.clone().requires_grad_(), ref, tau=0.02).loss.backward()
    x = f_t.clone().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        cosine_alignment(x, ref, tau=0.02).loss.backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in
               ("aten::mm", "aten::addmm", "aten::addmm_")) / total


def _subprocess(impl, match, n, m, c, dtype, repeat) -> dict:
    code = (f"import json, sys; sys.path.insert(0, 'benchmarks'); import loss_bench; "
            f"print(json.dumps(loss_bench.run_case({impl!r}, {match!r}, {n}, {m}, {c}, "
            f"{dtype!r}, {repeat})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=2048, C=512, Q in 100 300")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--stride4", action="store_true",
                   help="N=32768, C=256: the transformer's stride-4 features, 2 crops of 512x512")
    args = p.parse_args()
    n, c, qs = (2048, 512, (100, 300)) if args.quick else (8385, 2048, (100, 300, 1000))
    if args.stride4:
        n, c = 2 * 128 * 128, 256
    k = 19
    rate32 = MatmulRate(torch.float32).measure(1.5)
    bf16 = "" if args.no_bf16 else (
        f", bf16 {MatmulRate(torch.bfloat16).measure(1.5) / 1e9:.0f} GFLOP/s")
    print(f"# loss_bench: N={n} C={c} K={k}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul rate at the start: fp32 {rate32 / 1e9:.0f} GFLOP/s{bf16} (each case measures "
          "its own before each repeat)\n")
    print("| match | Q | M | plain s | plain MB | efficient s | efficient MB | roofline s "
          "| eff/plain time | eff/roofline | eff/plain memory | bf16 s | bf16/roofline(bf16) |")
    print("|---" * 13 + "|")
    for match in ("all", "max"):
        for q in qs:
            m = k * q
            flops = (2 if match == "all" else 1) * 2 * n * m * c
            plain = _subprocess("plain", match, n, m, c, "fp32", args.repeat)
            eff = _subprocess("efficient", match, n, m, c, "fp32", args.repeat)
            bf = None if args.no_bf16 else _subprocess("efficient", match, n, m, c, "bf16",
                                                       args.repeat)
            roof = flops / max(eff["rates"])  # at the machine's best moment, like "sec"
            bf_txt = "-" if bf is None else f"{bf['sec']:.2f} | {roofline_ratio(bf, flops):.2f}x"
            print(f"| {match} | {q} | {m} | {plain['sec']:.2f} | {plain['extra_mb']:.0f} | "
                  f"{eff['sec']:.2f} | {eff['extra_mb']:.0f} | {roof:.2f} | "
                  f"{eff['sec'] / plain['sec']:.2f}x | {roofline_ratio(eff, flops):.2f}x | "
                  f"{eff['extra_mb'] / max(plain['extra_mb'], 1):.3f} | {bf_txt} |", flush=True)
    print("\nwhere the time goes (match=all, fp32): the block products' rate / the 2048^3 "
          "rate (median of 5 interleaved rounds), and the products' share of the loss's time")
    print("| Q | S product | G product | products' share of the time |")
    print("|---|---|---|---|")
    for q in qs:
        rs, rg = block_rate_ratios(n, k * q, c)
        print(f"| {q} | {rs:.2f}x | {rg:.2f}x | {product_share(n, k * q, c):.0%} |", flush=True)
    print("\nscaling of the efficient loss (match=all, fp32): time vs N and vs M; the last "
          "column divides each repeat's time by N M and by the matmul time of its moment "
          "(1 / rate), median over repeats, relative to the first row")
    print("| N | M | s | s / (N M), rate-normalized |")
    print("|---|---|---|---|")
    base = None
    for nn, mm in ((n // 4, k * qs[0]), (n // 2, k * qs[0]), (n, k * qs[0]), (n, k * qs[-1])):
        r = _subprocess("efficient", "all", nn, mm, c, "fp32", args.repeat)
        per = statistics.median(t * rate for t, rate in zip(r["times"], r["rates"])) / (nn * mm)
        base = base or per
        print(f"| {nn} | {mm} | {r['sec']:.3f} | {per / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
