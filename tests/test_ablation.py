"""The ablation's table (benchmarks/minicity_ablation.py) is well formed: every experiment's
method, overrides and base load as a config, run names are unique, and the report tables
select the runs they name."""

import dataclasses
import importlib.util
import shutil
import sys
import types
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
    monkeypatch.setattr(module, "RECORDS", tmp_path / "records")
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


def test_a_table_mixes_input_sizes_only_where_it_says_so(ablation, tmp_path):
    """`cosalign report` refuses runs of other input sizes unless asked: each table's runs see
    one input size, except the tables named in MIXED_INPUT (the HRDA ones: DACS at half
    resolution against HRDA), which hold two."""
    experiments = all_experiments(ablation)
    sizes = {}
    for name, exp in experiments.items():
        if exp.method in METHODS and exp.base in ablation.BASES:
            cfg = minicity_config(tmp_path, [f"train.seed={exp.seeds[0]}",
                                             *ablation.base_overrides(exp.base), *exp.overrides],
                                  exp.method)
            sizes[name] = tuple(cfg.data.val.size)
    for table, (keep, _, _) in ablation.TABLES.items():
        kept = {sizes[n] for n, e in experiments.items() if keep(max(e.seeds), n)}
        assert len(kept) <= 1 or table in ablation.MIXED_INPUT, (table, kept)
        if table in ablation.MIXED_INPUT:
            assert kept == {(192, 96), (384, 192)}, table


def test_the_transformer_plan_follows_its_learning_rate_selection(ablation, tmp_path,
                                                                   monkeypatch):
    """The MiT's plan is its selection until the three selection runs are done; then the rule
    fixed beforehand picks the lr (highest selection mIoU, the lower lr on a tie), and the
    runner goes on into the steps that choice makes, in one `run mit`."""
    scores = {"6e-5": 40.0, "2e-4": 45.0, "6e-4": 45.0}

    def fake_load_run(folder):
        lr = Path(folder).name.split("lr=")[1]
        return types.SimpleNamespace(final={"miou": {"minicity": scores[lr]}},
                                     cfg=minicity_config(tmp_path))

    monkeypatch.setattr(ablation, "load_run", fake_load_run)
    trained = []

    def fake_run(name, exp, seed):
        record = ablation.record_of(seed, name)
        if record.is_dir():  # recorded: as run() does, not trained again
            return
        trained.append((name, seed))
        record.mkdir(parents=True)
        (record / "done.json").write_text("{}")

    monkeypatch.setattr(ablation, "run", fake_run)
    assert ablation.chosen_mit_lr() is None and len(ablation.mit_steps()) == 1
    ablation.cmd_run(types.SimpleNamespace(group="mit", steps=None, only=1))
    assert len(trained) == 3  # --only 1: the selection, not the steps it makes
    assert ablation.chosen_mit_lr() == "2e-4"  # 45.0 twice: the lower lr
    ablation.cmd_run(types.SimpleNamespace(group="mit", steps=None, only=None))
    steps = ablation.mit_steps()
    assert len(steps) == 5
    names = {(n, s) for _, exps in steps for n, e in exps.items() for s in e.seeds}
    assert set(trained) == names and len(trained) == 3 + 5 * (3 + 2 + 5 + 5)
    for _, exps in steps[1:]:
        for name, exp in exps.items():
            cfg = minicity_config(tmp_path, [f"train.seed={exp.seeds[0]}",
                                             *ablation.base_overrides(exp.base),
                                             *exp.overrides], exp.method)
            assert (cfg.model.arch, cfg.model.embed, cfg.optim.name, cfg.optim.lr) == (
                "mit_b0", 32, "adamw", 2e-4), name
            assert cfg.model.weights == str(ablation.MIT_WEIGHTS) and cfg.loss.aux == 0
            assert exp.branch == 500 and cfg.selftrain.mask_patch == 12
    keep = ablation.TABLES["mit"][0]
    assert keep(1, "mit MIC") and keep(2, "pretrained DACS") and keep(3, "mit ours + MIC")
    assert not keep(1, "fog mit MIC") and not keep(1, "pretrained MinEnt (1e-3, ADVENT)")
    assert not keep(0, "select-mit source-only lr=2e-4")
    assert ablation.TABLES["mit-fog"][0](1, "fog mit DACS")


def test_a_table_without_records_says_so(ablation, capsys):
    """`report` on a table with no recorded run names the table instead of printing nothing."""
    ablation.cmd_report(types.SimpleNamespace(tables=["mit", "c"]))
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.split(":")[0] for line in err.splitlines()] == ["### mit", "### c"]
    assert "no finished run" in err


def test_a_finished_run_is_recorded_and_never_trained_again(ablation, monkeypatch):
    """A run folder finished before records existed is recorded, not retrained; a recorded run
    is skipped even when runs/ is gone; the tables read the records."""
    monkeypatch.setattr(ablation, "train", lambda *a, **k: pytest.fail("trained again"))
    name = "pretrained DACS"
    exp = ablation.regime("c", ("DACS",))[name]
    folder = ablation.OUT / "seed1" / name
    folder.mkdir(parents=True)
    for f, text in zip(ablation.RECORDED, ("model: {}\n", '{"iter": 1}\n', "{}")):
        (folder / f).write_text(text)
    (folder / "last.pt").write_text("weights")  # not part of a record
    record = ablation.run(name, exp, 1)
    assert record == ablation.record_of(1, name)
    assert sorted(p.name for p in record.iterdir()) == sorted(ablation.RECORDED)
    assert (record / "metrics.jsonl").read_text() == '{"iter": 1}\n'
    shutil.rmtree(ablation.OUT)
    assert ablation.run(name, exp, 1) == record
    assert ablation.finished(ablation.TABLES["c"][0]) == [record]
