"""``make numbers`` (tools/demo_numbers.py): bit for bit on a recorded machine signature,
within the stated tolerance of the nearest record on another, and docs/REPRODUCIBILITY.md
states every record."""

import copy
import json

from tools.demo_numbers import PAGE, RECORD, TOLERANCE, check


def _fresh(record: dict, machine: str, shift: dict[str, float] | None = None) -> dict:
    fresh = copy.deepcopy(record)
    for name, delta in (shift or {}).items():
        fresh["miou"][name] += delta
    return {**fresh, "machine": machine}


def test_a_recorded_machine_is_checked_bit_for_bit():
    records = json.loads(RECORD.read_text())["records"]
    page = PAGE.read_text()
    machine, record = next(iter(records.items()))
    assert check(records, _fresh(record, machine), page) == ([], [])
    problems, _ = check(records, _fresh(record, machine, {"ours": 1e-12}), page)
    assert len(problems) == 1 and "ours" in problems[0] and machine in problems[0]


def test_another_machine_is_within_the_tolerance_of_the_nearest_record_and_says_so():
    records = json.loads(RECORD.read_text())["records"]
    page = PAGE.read_text()
    machine, record = next(iter(records.items()))
    other = "cpu-avx512/fp32/torch 9.9.9/2 threads"
    near = {name: 0.9 * tol for name, tol in TOLERANCE.items()}
    problems, notes = check(records, _fresh(record, other, near), page)
    assert problems == [] and len(notes) == 1
    assert "not compared bit for bit" in notes[0] and other in notes[0]
    far = {"source-only": 1.1 * TOLERANCE["source-only"]}
    problems, _ = check({machine: record}, _fresh(record, other, far), page)
    assert len(problems) == 1 and "source-only" in problems[0] and "tolerance" in problems[0]
    # the data must still be the same MiniCity
    wrong = {**_fresh(record, other), "minicity_content_sha256": "0" * 64}
    problems, _ = check(records, wrong, page)
    assert problems and "MiniCity data" in problems[0]


def test_a_page_without_a_records_numbers_is_stale():
    records = json.loads(RECORD.read_text())["records"]
    machine, record = next(iter(records.items()))
    problems, _ = check(records, _fresh(record, machine), "no numbers here")
    assert len(problems) == 1 and "REPRODUCIBILITY.md" in problems[0] and machine in problems[0]
