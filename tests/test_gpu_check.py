"""The GPU check command, smoke-run on the CPU at 1/8 to 1/16 size (it runs on CUDA in the same
way); in two halves, which the suite's two workers run side by side."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *sections: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out",
                           str(out), "--device", "cpu", "--small", "--repeat", "1",
                           "--sections", *sections], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (out / "gpu_check.md").read_text()
    for heading in sections:
        assert f"## {heading}" in report
    assert "FAILED" not in report
    return report


def test_gpu_check_smoke_run_writes_the_tests_step_transformer_and_loss_tables(tmp_path):
    report = _run(tmp_path / "gc", "tests", "step", "transformer", "loss")
    assert " passed in " in report  # the suite's summary line
    for method in ("source_only", "minent", "advent", "ours", "ours_minent", "dacs", "mic",
                   "ours_mic"):
        assert f"| {method} | bf16 |" in report and f"| {method} | fp32 |" in report
    assert report.count("| efficient |") == 10 and report.count("| plain |") == 5
    assert "train.deterministic=true: bit-equal" in report  # the encoder's attention included


def test_gpu_check_smoke_run_kills_resumes_evaluates_and_predicts(tmp_path):
    report = _run(tmp_path / "gc", "e2e", "hrda")
    for method in ("dacs", "mic", "ours_mic"):  # HRDA's step with the memory estimate
        row = next(r for r in report.splitlines() if r.startswith(f"| {method} | bf16 |"))
        assert float(row.split("|")[6]) > 0
    assert "killed with checkpoints [2]" in report
    assert "match: iterations 4 / 4" in report
    assert "2 coloured predictions" in report
