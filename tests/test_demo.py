"""`cosalign demo` end to end on a tiny MiniCity."""

import json

from cosalign.demo import run_demo
from tests.conftest import TEST_DEVICE, TINY


def test_demo_writes_table_results_and_figure(tiny_minicity, tmp_path, capsys):
    summary = run_demo(tiny_minicity, tmp_path / "demo", spec=TINY, progress=False, overrides=[
        "data.source.size=[64, 36]", "data.target.size=[64, 32]", "data.val.size=[64, 32]",
        "data.batch_size=2", "model.width=0.125", "train.iters=6", "optim.schedule_iters=6",
        "loss.start_iter=3", "loss.capacity=8", "train.log_every=1",
        f"train.device={TEST_DEVICE}"])
    out = capsys.readouterr().out
    assert "| road |" in out and "gain of ours over source-only" in out
    assert "shared by both runs" in out
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["gain"] == summary["gain"]
    assert set(saved["miou"]) == {"source-only", "ours"}
    assert saved["premise"]["source-only"]["nn_accuracy"] >= 0
    assert (tmp_path / "demo" / "figure.png").stat().st_size > 10_000
    # the two runs share the warm-up: ours resumed from source-only's checkpoint at 3
    ours_log = (tmp_path / "demo" / "ours" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(ours_log[0])["iter"] == 4
