"""Methods are entries of one table: a new one needs one entry, and everything (the parts a run
builds, the names logged, the report's name) follows from it."""

import copy

import pytest

from cosalign.engine.logger import read_metrics
from cosalign.engine.train import train
from cosalign.methods import (
    METHODS,
    apply_method,
    enabled_terms,
    method_name,
    register_method,
)
from cosalign.methods.table import Method


@pytest.fixture
def aux_minent(monkeypatch):
    """A method added from outside the package: MinEnt on the auxiliary head only."""
    monkeypatch.setitem(METHODS, "aux_minent", Method(()))  # restored after the test
    register_method("aux_minent", ("entropy",), {"ent": 0.0, "ent_aux": 1e-3},
                    about="MinEnt on the auxiliary head only")
    return "aux_minent"


def test_a_method_added_outside_the_package_trains_3_steps(aux_minent, tiny_config, tmp_path):
    cfg = apply_method(copy.deepcopy(tiny_config), aux_minent)
    assert (cfg.loss.cos, cfg.loss.ent, cfg.loss.ent_aux) == (0.0, 0.0, 1e-3)
    assert enabled_terms(cfg) == ["entropy"]
    cfg.train.iters = cfg.optim.schedule_iters = 3
    cfg.train.log_every = 1
    train(cfg, tmp_path, progress=False)
    rows = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert [r["iter"] for r in rows] == [1, 2, 3]
    assert all("ent_aux" in r and "ent" not in r and "cos" not in r for r in rows)
    assert method_name(cfg) == "aux_minent"


def test_report_names_come_from_the_table(tiny_config):
    for name in METHODS:
        assert method_name(apply_method(copy.deepcopy(tiny_config), name)) == name
    cfg = apply_method(copy.deepcopy(tiny_config), "minent")
    cfg.loss.ent = 0.1
    assert method_name(cfg) == "minent (loss.ent=0.1)"
    cfg.loss.cos = 0.1  # MinEnt and ours and a weight the table does not know together
    cfg.loss.adv = 0.2
    assert method_name(cfg).startswith("custom (loss.cos=0.1, loss.ent=0.1, ")


def test_each_method_builds_exactly_its_parts(tiny_config):
    for name, method in METHODS.items():
        cfg = apply_method(copy.deepcopy(tiny_config), name)
        assert sorted(enabled_terms(cfg)) == sorted(method.terms), name


def test_an_unknown_term_is_refused():
    with pytest.raises(ValueError, match="unknown terms"):
        register_method("bad", ("no_such_term",))
