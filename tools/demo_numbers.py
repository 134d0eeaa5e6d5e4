"""Re-make the demo's recorded numbers and check them (``make numbers``).

    .venv/bin/python tools/demo_numbers.py            # run the demo (3 min AMX, 11 AVX2), compare;
                                                      # exit 1 naming what is stale
    .venv/bin/python tools/demo_numbers.py --results runs/demo/results.json  # check a result
    .venv/bin/python tools/demo_numbers.py --write    # run, then record this machine's numbers
    .venv/bin/python tools/demo_numbers.py --figures  # run, check, copy its figures to docs/

``docs/results/demo.json`` records what the demo printed, one record per machine signature
(``cpu-avx2/fp32/torch 2.13.0+cpu/2 threads/AMD avx2``: the CPU kind its kernels used, the
precision ``train.amp=auto`` chose, torch, the threads, the chip; engine/precision.py): every
mIoU to the last bit and the hash of the MiniCity data it trained on. docs/REPRODUCIBILITY.md
states each record's numbers (a test checks them).

On a signature with a record, the fresh numbers must equal it bit for bit. On another one (a
new CPU kind or chip, another torch, another thread count) float sums run in another order, so the
numbers are printed, compared with the nearest record within :data:`TOLERANCE`, and the output
says that they are not bit for bit and how to record them; the data hash must still be equal
(MiniCity is generated the same everywhere).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "results" / "demo.json"
PAGE = ROOT / "docs" / "REPRODUCIBILITY.md"  # states every record
FIGURES = {"figure.png": ROOT / "docs" / "demo_figure.png",  # the demo's output: docs' copy
           "features.png": ROOT / "docs" / "demo_features.png"}
NAMES = ("source-only", "BatchNorm control", "ours")
KEPT = ("miou", "gain", "gain_over_control", "class_subset", "iou", "minicity_content_sha256",
        "environment", "precision")
# mIoU a run may move by on a machine without a record: twice the sample standard deviation
# over seeds 1-5 of each method in the demo's regime, rounded up (docs/results/minicity.md,
# MiniCity v2, regime (c): source-only 50.4 +- 2.3, the BatchNorm control 52.7 +- 3.0, ours
# 53.4 +- 3.2). Loose, but a seed moves a run by more than a CPU kind did: AMX/bf16 against
# AVX2/fp32 moved the three demo runs by 1.30, 1.27 and 1.51 on v2 (0.11, 0.02, 0.07 on v1).
TOLERANCE = {"source-only": 4.7, "BatchNorm control": 6.0, "ours": 6.5}


def record_sentence(record: dict) -> str:
    """A record's demo numbers, as :data:`PAGE` states them."""
    m = record["miou"]
    return (f"source-only {m['source-only']:.1f}, the BatchNorm control "
            f"{m['BatchNorm control']:.1f}, ours {m['ours']:.1f} mIoU: ours "
            f"{record['gain']:+.1f} over source-only and {record['gain_over_control']:+.1f} "
            "over the control")


def page_is_current(records: dict, page: str) -> str | None:
    """None if the page states every record's numbers, else the first missing sentence
    (with its signature)."""
    flat = " ".join(page.split())  # the sentence may be wrapped over lines
    for signature, record in records.items():
        want = record_sentence(record)
        if want not in flat:
            return f"{want} (on {signature})"
    return None


def differences(record: dict, fresh: dict) -> list[str]:
    """What differs between a recorded and a fresh demo result (bit for bit)."""
    out = []
    if record["minicity_content_sha256"] != fresh.get("minicity_content_sha256"):
        out.append(f"MiniCity data: recorded {record['minicity_content_sha256'][:12]}, "
                   f"this run {str(fresh.get('minicity_content_sha256'))[:12]}")
    for name in NAMES:
        a, b = record["miou"][name], fresh["miou"][name]
        if a != b:
            out.append(f"{name}: recorded {a!r}, this run {b!r} mIoU")
    return out


def nearest(records: dict, fresh: dict) -> tuple[str, dict[str, float]]:
    """The record closest to ``fresh`` (largest mIoU difference over the runs, smallest first)
    and the differences to it."""
    def gaps(record):
        return {n: fresh["miou"][n] - record["miou"][n] for n in NAMES}

    best = min(records, key=lambda s: max(abs(v) for v in gaps(records[s]).values()))
    return best, gaps(records[best])


def check(records: dict, fresh: dict, page: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of a fresh demo result against the records and :data:`PAGE`."""
    signature = fresh.get("machine")
    problems, notes = [], []
    if signature is None:
        return ["the demo's results.json has no machine signature (made before the records "
                "per machine); run the demo again"], notes
    if signature in records:
        problems += [f"{RECORD.relative_to(ROOT)} is stale on {signature}: {d}"
                     for d in differences(records[signature], fresh)]
    else:
        best, gaps = nearest(records, fresh)
        notes.append(f"no record for this machine ({signature}): these numbers are not "
                     f"compared bit for bit; nearest record {best}: " + ", ".join(
                         f"{n} {g:+.2f}" for n, g in gaps.items()) + " mIoU (tolerance: " +
                     ", ".join(f"{n} {t}" for n, t in TOLERANCE.items()) + ")")
        problems += [f"{n}: {gaps[n]:+.2f} mIoU from the nearest record ({best}), more than "
                     f"the tolerance {TOLERANCE[n]} (twice the seed spread)"
                     for n in NAMES if abs(gaps[n]) > TOLERANCE[n]]
        sha = records[best]["minicity_content_sha256"]
        if fresh.get("minicity_content_sha256") != sha:
            problems.append(f"MiniCity data: recorded {sha[:12]}, this run "
                            f"{str(fresh.get('minicity_content_sha256'))[:12]}")
    stale = page_is_current(records, page)
    if stale:
        problems.append(f"{PAGE.relative_to(ROOT)}'s demo numbers are stale; it should state: "
                        f"{stale}")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="a demo's results.json (default: run it)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "numbers",
                        help="where the demo runs (default runs/numbers)")
    parser.add_argument("--write", action="store_true",
                        help="record the fresh numbers in docs/results/demo.json under this "
                             "machine's signature")
    parser.add_argument("--figures", action="store_true",
                        help="copy the demo's figure.png and features.png to docs/ (the "
                             "README's picture: make figures)")
    args = parser.parse_args(argv)
    if args.results is None:
        from cosalign.demo import run_demo

        run_demo(ROOT / "data" / "minicity", args.out, progress=False)
        args.results = args.out / "results.json"
    fresh = json.loads(args.results.read_text())
    if args.figures:
        for name in FIGURES:
            shutil.copy(args.results.parent / name, FIGURES[name])
        print(f"copied the demo's figures of {fresh.get('machine')} to docs/ "
              f"({', '.join(f.name for f in FIGURES.values())})")
    records = json.loads(RECORD.read_text())["records"]
    if args.write and fresh.get("machine"):
        records[fresh["machine"]] = {k: fresh[k] for k in KEPT if k in fresh}
        RECORD.write_text(json.dumps({"records": records}, indent=1) + "\n")
        print(f"recorded {args.results} in {RECORD.relative_to(ROOT)} under {fresh['machine']}")
    problems, notes = check(records, fresh, PAGE.read_text())
    print(f"demo numbers (this run, {fresh.get('machine')}): " + record_sentence(fresh))
    for n in notes:
        print(n)
    for p in problems:
        print(p, file=sys.stderr)
    if problems or notes:
        print("to record this run's numbers: .venv/bin/python tools/demo_numbers.py --results "
              f"{args.results} --write, then put the sentence above in {PAGE.relative_to(ROOT)}",
              file=sys.stderr if problems else sys.stdout)
    if problems:
        return 1
    if notes:
        print("within the tolerance of the nearest record; not bit for bit (no record for "
              "this machine)")
    else:
        print(f"the demo's numbers equal the record for {fresh['machine']} bit for bit "
              f"({RECORD.relative_to(ROOT)}) and {PAGE.relative_to(ROOT)} states every record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
