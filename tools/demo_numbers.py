"""Re-make the README's demo numbers and check them (``make numbers``).

    .venv/bin/python tools/demo_numbers.py            # run the demo (~4 min), compare; exit 1
                                                      # naming what is stale
    .venv/bin/python tools/demo_numbers.py --results runs/demo/results.json  # check a result
    .venv/bin/python tools/demo_numbers.py --write    # run, then record the new numbers

``docs/results/demo.json`` records what the demo printed on the development machine with the
locked environment: every mIoU to the last bit and the hash of the MiniCity data it trained on.
The README's demo sentence is made from that record (:func:`readme_sentence`), and a test checks
that the README holds it. This command checks the third link: that the demo run here gives the
recorded numbers. On the same machine kind with the lock they are bit-identical; on another CPU
or a GPU they differ within the seed spread (README, "Reproducibility").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "results" / "demo.json"
README = ROOT / "README.md"
NAMES = ("source-only", "BatchNorm control", "ours")
KEPT = ("miou", "gain", "gain_over_control", "class_subset", "iou", "minicity_content_sha256",
        "environment")


def readme_sentence(record: dict) -> str:
    """The README's demo numbers, as the README states them."""
    m = record["miou"]
    return (f"source-only {m['source-only']:.1f}, the BatchNorm control "
            f"{m['BatchNorm control']:.1f}, ours {m['ours']:.1f} mIoU: ours "
            f"{record['gain']:+.1f} over source-only and {record['gain_over_control']:+.1f} "
            "over the control")


def readme_is_current(record: dict, readme: str) -> str | None:
    """None if the README states ``record``'s numbers, else what it should say."""
    want = readme_sentence(record)
    flat = " ".join(readme.split())  # the sentence may be wrapped over lines
    return None if want in flat else want


def differences(record: dict, fresh: dict) -> list[str]:
    """What differs between the recorded and a fresh demo result (bit for bit)."""
    out = []
    if record["minicity_content_sha256"] != fresh.get("minicity_content_sha256"):
        out.append(f"MiniCity data: recorded {record['minicity_content_sha256'][:12]}, "
                   f"this run {str(fresh.get('minicity_content_sha256'))[:12]}")
    for name in NAMES:
        a, b = record["miou"][name], fresh["miou"][name]
        if a != b:
            out.append(f"{name}: recorded {a!r}, this run {b!r} mIoU")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="a demo's results.json (default: run it)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "numbers",
                        help="where the demo runs (default runs/numbers)")
    parser.add_argument("--write", action="store_true",
                        help="record the fresh numbers in docs/results/demo.json")
    args = parser.parse_args(argv)
    if args.results is None:
        from cosalign.demo import run_demo

        run_demo(ROOT / "data" / "minicity", args.out, progress=False)
        args.results = args.out / "results.json"
    fresh = json.loads(args.results.read_text())
    if args.write:
        RECORD.write_text(json.dumps({k: fresh[k] for k in KEPT}, indent=1) + "\n")
        print(f"recorded {args.results} in {RECORD.relative_to(ROOT)}")
    record = json.loads(RECORD.read_text())
    problems = [f"{RECORD.relative_to(ROOT)} is stale: {d}" for d in differences(record, fresh)]
    stale = readme_is_current(record, README.read_text())
    if stale:
        problems.append(f"README.md's demo numbers are stale; they should read: {stale}")
    print("README demo numbers (this run): " + readme_sentence(fresh))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("to record this run's numbers: .venv/bin/python tools/demo_numbers.py --results "
              f"{args.results} --write, then put the sentence above in README.md",
              file=sys.stderr)
        return 1
    print(f"the demo's numbers equal the recorded ones bit for bit ({RECORD.relative_to(ROOT)})"
          " and the README states them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
