"""The README's code runs as written."""

import json
import re
from pathlib import Path

import torch

README = Path(__file__).parent.parent / "README.md"


def test_loss_snippet_runs():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    f_s = torch.randn(2, 2048, 5, 9)
    f_t = torch.randn(2, 2048, 5, 9, requires_grad=True)
    namespace = {
        "f_s": f_s, "f_t": f_t, "y_s": torch.randint(0, 19, (2, 40, 72)),
        "logits_t": torch.randn(2, 19, 5, 9),
        "seg_loss": torch.zeros((), requires_grad=True),
    }
    setup, step = block.split("\n# in your training step")
    step = "#" + step
    exec(setup, namespace)
    exec(step, namespace)  # first step: empty dictionary, loss 0, then filled
    assert namespace["out"].pairs == 0 and len(namespace["dictionary"]) > 0
    exec(step, namespace)  # second step: the dictionary is used
    assert namespace["out"].pairs > 0 and f_t.grad is not None


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_reproducibility_page_states_the_recorded_demo_numbers():
    """docs/REPRODUCIBILITY.md states the demo numbers of every machine signature recorded in
    docs/results/demo.json (what the demo printed there, bit for bit; `make numbers` re-runs the
    demo against the record of the machine it runs on)."""
    from tools.demo_numbers import PAGE, RECORD, page_is_current

    records = json.loads(RECORD.read_text())["records"]
    # the AVX2 kind, which most machines are, and AMX
    assert any(s.startswith("cpu-avx2/fp32/") for s in records)
    assert any(s.startswith("cpu-amx/bf16/") for s in records)
    assert page_is_current(records, PAGE.read_text()) is None, (
        "docs/REPRODUCIBILITY.md's demo numbers differ from docs/results/demo.json; it should "
        "state: " + str(page_is_current(records, PAGE.read_text())))
    # and the check can fail: a page with other numbers is called stale
    sig, record = next(iter(records.items()))
    assert page_is_current({**records, sig: {**record, "gain": record["gain"] + 1}},
                           PAGE.read_text())
