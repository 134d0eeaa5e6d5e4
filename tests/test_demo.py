"""`cosalign demo` end to end on a tiny MiniCity."""

import json

import pytest
import torch
import yaml

from cosalign.demo import run_demo
from tests.conftest import TEST_DEVICE, TINY


def test_demo_writes_table_results_and_figure(tiny_minicity, tmp_path, capsys):
    summary = run_demo(tiny_minicity, tmp_path / "demo", spec=TINY, progress=False, overrides=[
        "data.source.size=[64, 36]", "data.target.size=[64, 32]", "data.val.size=[64, 32]",
        "data.source.crop=[64, 32]", "data.target.crop=[64, 32]",
        "data.batch_size=2", "train.iters=6", "optim.schedule_iters=6",
        "align.start_iter=3", "dictionary.capacity=8", "train.log_every=1",
        f"train.device={TEST_DEVICE}"])
    out = capsys.readouterr().out
    assert "| road |" in out and "gain of ours over source-only" in out
    assert "over the BatchNorm control" in out and "shared by all runs" in out
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["gain"] == summary["gain"]
    assert set(saved["miou"]) == {"source-only", "BatchNorm control", "ours"}
    m = saved["miou"]
    assert saved["gain_over_control"] == pytest.approx(m["ours"] - m["BatchNorm control"])
    assert saved["premise"]["source-only"]["nn_accuracy"] >= 0
    assert saved["environment"]["torch"] == torch.__version__
    for png in ("figure.png", "features.png", "similarity.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 10_000
    # the runs share the warm-up: ours and the control resumed from source-only's checkpoint
    for run in ("ours", "target_bn"):
        log = (tmp_path / "demo" / run / "metrics.jsonl").read_text().splitlines()
        assert json.loads(log[0])["iter"] == 4
    control = yaml.safe_load((tmp_path / "demo" / "target_bn" / "config.yaml").read_text())
    assert control["loss"]["target_bn"] and control["loss"]["cos"] == 0
    # the regime: the shipped pretrained backbone, BatchNorm statistics moving
    assert control["model"]["weights"] == "minicity_pretrained"
    assert control["model"]["bn"] == "affine_frozen"


def test_demo_runs_other_methods_and_refuses_a_bad_list(tiny_minicity, tmp_path, capsys):
    summary = run_demo(tiny_minicity, tmp_path / "st", spec=TINY, progress=False,
                       methods=("source_only", "dacs", "ours_dacs"), overrides=[
        "data.source.size=[64, 36]", "data.target.size=[64, 32]", "data.val.size=[64, 32]",
        "data.source.crop=[64, 32]", "data.target.crop=[64, 32]",
        "data.batch_size=2", "train.iters=6", "optim.schedule_iters=6", "align.start_iter=3",
        "dictionary.capacity=8", f"train.device={TEST_DEVICE}"])
    out = capsys.readouterr().out
    assert "gain of DACS over source-only" in out and "gain of ours + DACS over source-only" in out
    assert set(summary["miou"]) == {"source-only", "DACS", "ours + DACS"}
    assert summary["gain_over_control"] is None  # no control in this set
    assert summary["gain"] == summary["miou"]["ours + DACS"] - summary["miou"]["source-only"]
    assert (tmp_path / "st" / "ours_dacs" / "metrics.jsonl").is_file()
    from cosalign.cli import main

    assert main(["demo", "--methods", "dacs,source_only", "--data", str(tiny_minicity),
                 "--out", str(tmp_path / "bad")]) == 2
    assert main(["demo", "--methods", "source_only,nope", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "source_only first" in err and "unknown method 'nope'" in err
    assert not (tmp_path / "bad").exists()  # refused before any work
