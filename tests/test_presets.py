"""Every preset at its real image sizes, with small networks (benchmarks/preset_bench.py
--shrink): generated full-size trees in the published layouts and generated initial weights
files; 2 iterations with a stop and a resume between them, then the evaluation of the 2
full-size val images at the preset's resolution (labels scored at full resolution)."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "preset_bench.py"
_spec = importlib.util.spec_from_file_location("preset_bench", PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
PRESETS, make_trees, run_row = bench.PRESETS, bench.make_trees, bench.run_row

# the richest method of each preset: self-training with the alignment (and MIC on DAFormer's
# and HRDA's)
ROWS = [(p, "ours_mic" if "daformer" in p or "hrda" in p else "ours_dacs") for p in PRESETS]
ROWS += [("gta5_to_cityscapes", "ours")]  # the paper's step: whole 1280x720 images, batch 1


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    make_trees(root / "trees")
    return root


@pytest.mark.parametrize("preset, method", ROWS)
def test_each_preset_trains_resumes_and_evaluates_at_real_size(bench_root, preset, method):
    row = run_row(preset, method, bench_root, shrink=True, extra=[])
    assert row["scored_pixels"] == row["labelled_pixels"] > 0  # at the labels' resolution
    assert row["step1_s"] > 0 and row["step2_s"] > 0
    expected = {"seg", "cos"} | ({"st", "mic"} if "mic" in method else set()) | (
        {"st"} if "dacs" in method else set())
    assert expected <= set(row["terms"])
