"""``cosalign memory``'s estimate for the steps benchmarks/gpu_check.py measures on a GPU (its
``step`` and ``transformer`` sections, built as that script builds them), to set next to the
peaks it recorded (docs/PERFORMANCE.md, "Peak memory"). Runs on any machine, in about a minute:

    .venv/bin/python benchmarks/memory_check.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from cosalign.config import load_config  # noqa: E402
from cosalign.engine.memory import estimate_memory  # noqa: E402
from cosalign.methods import apply_method  # noqa: E402

STEP = ("source_only", "minent", "ours", "ours_minent", "dacs", "ours_dacs")  # AdvEnt: no
TRANSFORMER = ("source_only", "dacs", "mic", "ours_mic")


def main() -> None:
    print("| section | method | precision | estimate GiB |\n|---|---|---|---|")
    for section, preset, methods in (("step", "gta5_to_cityscapes", STEP),
                                     ("transformer", "gta5_to_cityscapes_daformer", TRANSFORMER)):
        for amp, precision in (("none", "fp32"), ("bf16", "bf16")):
            base = load_config(preset, ["model.weights=null", f"train.amp={amp}"])
            for method in methods:
                cfg = apply_method(copy.deepcopy(base), method)
                e = estimate_memory(cfg, precision)
                print(f"| {section} | {method} | {precision} | {e.total / 2**30:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
