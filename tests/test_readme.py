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


def test_readme_states_the_recorded_demo_numbers():
    """The README's demo sentence is made from docs/results/demo.json (what the demo printed,
    bit for bit; `make numbers` re-runs the demo against that record)."""
    from tools.demo_numbers import RECORD, readme_is_current, readme_sentence

    record = json.loads(RECORD.read_text())
    assert readme_is_current(record, README.read_text()) is None, (
        "README.md's demo numbers differ from docs/results/demo.json; they should read: "
        + readme_sentence(record))
    # and the check can fail: a README with other numbers is called stale
    assert readme_is_current({**record, "gain": record["gain"] + 1}, README.read_text())
