"""The ablation's table (benchmarks/minicity_ablation.py) is well formed: every experiment's
method, overrides and base load as a config, run names are unique, and the report tables
select the runs they name."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from cosalign.methods import METHODS
from cosalign.minicity import minicity_config

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "minicity_ablation.py"


@pytest.fixture
def ablation(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("minicity_ablation", PATH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "minicity_ablation", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "ablation")
    return module


def all_experiments(ablation) -> dict:
    out = {}
    for steps in ablation.PLAN.values():
        for _, experiments in steps:
            for name, exp in experiments.items():
                # a name is one experiment; its seeds may be spread over steps
                same = name not in out or dataclasses.replace(out[name], seeds=()) == \
                    dataclasses.replace(exp, seeds=())
                assert same, f"{name} defined twice, differently"
                out[name] = exp
    out.update(ablation.sweep({"q50": 0.4, "q90": 0.6}))
    return out


def test_every_experiment_loads_as_a_config(ablation, tmp_path):
    experiments = all_experiments(ablation)
    assert len(experiments) > 60
    for name, exp in experiments.items():
        assert exp.method in METHODS, name
        assert exp.base in ablation.BASES and exp.target in ablation.DATA, name
        assert exp.branch is None or exp.branch in ablation.WARMUP_ITERS, name
        cfg = minicity_config(tmp_path, [f"train.seed={exp.seeds[0]}",
                                         *ablation.base_overrides(exp.base), *exp.overrides],
                              exp.method)
        if exp.base.startswith("select"):
            assert cfg.data.val.split == "train", name  # scored on the selection split
        if "pretrained" in exp.base:
            assert cfg.model.weights == "minicity_pretrained", name


def test_the_control_runs_as_target_bn_and_tables_pick_their_runs(ablation):
    experiments = all_experiments(ablation)
    controls = {n: e for n, e in experiments.items() if "control" in n or "target BN" in n}
    assert controls and all(e.method == "target_bn" for e in controls.values())
    keep = {t: ablation.TABLES[t][0] for t in ablation.TABLES}
    assert keep["c"](1, "pretrained ours") and not keep["c"](1, "pretrained frozen-bn ours")
    assert keep["c-frozen"](2, "pretrained frozen-bn ours")
    assert keep["fog"](1, "fog pretrained ours")
    assert keep["gap"](1, "gap: source-only") and not keep["a"](1, "gap: source-only")
    assert keep["c"](3, "selected pretrained MinEnt loss.ent=0.1 loss.ent_aux=0.02")
