"""`cosalign report`: numbers against a hand computation, real short runs, and refusals."""

import copy
import csv
import json
import math

import pytest
import yaml

from cosalign.cli import main
from cosalign.config import load_config, to_dict
from cosalign.engine.train import train
from cosalign.methods import apply_method, method_config
from cosalign.report import ReportError, method_name, report

T975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def fake_run(path, method, seed, miou, road=50.0, iters=100, extra=(), premise=None):
    """A run folder as `cosalign train` leaves it: config.yaml and metrics.jsonl."""
    cfg = method_config("minicity", [f"train.seed={seed}", f"train.iters={iters}", *extra],
                        method)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    rows = [{"iter": i, "kind": "train", "seg": 1.0 / i, "lr": 0.01} for i in (50, 100)]
    rows.append({"iter": iters, "kind": "eval", "miou": {"minicity": miou},
                 "iou": {"road": road, "sidewalk": 2 * miou - road}, "premise": premise or {}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tables_equal_a_hand_computation(tmp_path):
    src = {1: 30.0, 2: 32.0, 3: 37.0}
    ours = {1: 31.0, 2: 34.0, 3: 40.0}  # gains 1, 2, 3
    for s in src:
        fake_run(tmp_path / f"so{s}", "source_only", s, src[s], road=60 + s)
        fake_run(tmp_path / f"ours{s}", "ours", s, ours[s])
    text = report([tmp_path], tmp_path / "out")
    # mean ± sample std: source-only 33.0 ± 3.6 (std of 30, 32, 37 = sqrt(13)), ours 35.0 ± 4.6
    assert "| source_only |" in text and "**33.0 ± 3.6**" in text and "**35.0 ± 4.6**" in text
    half = T975_DF2 * 1.0 / math.sqrt(3)  # sd of the gains 1, 2, 3 is 1
    assert f"+2.00 [{2 - half:+.2f}, {2 + half:+.2f}] (n=3)" in text
    assert "62.0 ± 1.0" in text  # road IoU of source-only: 61, 62, 63
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    row = next(r for r in rows if r["method"] == "ours" and r["metric"] == "miou")
    assert float(row["mean"]) == pytest.approx(35.0)
    assert float(row["std"]) == pytest.approx(math.sqrt(21))  # 31, 34, 40
    assert float(row["gain_mean"]) == pytest.approx(2.0)
    assert float(row["gain_ci95_low"]) == pytest.approx(2 - half)
    assert float(row["gain_ci95_high"]) == pytest.approx(2 + half)
    assert row["pairs"] == "3"
    for png in ("miou.png", "train.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5_000


def test_gains_pair_by_seed_and_say_when_there_is_no_interval(tmp_path):
    fake_run(tmp_path / "so1", "source_only", 1, 30.0)
    fake_run(tmp_path / "so2", "source_only", 2, 40.0)
    fake_run(tmp_path / "mi2", "minent", 2, 41.5)  # only seed 2 is shared
    text = report([tmp_path], tmp_path / "out")
    assert "+1.50 (fewer than 2 pairs: no interval)" in text


def test_by_splits_groups_and_unsplit_differences_warn(tmp_path):
    for s in (1, 2):
        fake_run(tmp_path / f"a{s}", "ours", s, 30.0 + s, extra=["align.tau=0.5"])
        fake_run(tmp_path / f"b{s}", "ours", s, 33.0 + s, extra=["align.tau=0.6"])
    with pytest.raises(ReportError, match="several runs with seed 1"):
        report([tmp_path], tmp_path / "out")
    text = report([tmp_path], tmp_path / "out", by=("align.tau",))
    assert "| ours [align.tau=0.5] |" in text and "| ours [align.tau=0.6] |" in text
    fake_run(tmp_path / "c3", "ours", 3, 30.0, extra=["align.tau=0.5", "dictionary.capacity=50"])
    text = report([tmp_path / "a1", tmp_path / "c3"], tmp_path / "out")
    assert "warning: runs of 'ours' differ in dictionary.capacity" in text


def test_method_names_from_loss_weights():
    base = load_config("minicity")
    for name in ("source_only", "target_bn", "minent", "advent", "ours", "ours_minent",
                 "ours_advent"):
        assert method_name(apply_method(copy.deepcopy(base), name)) == name
    control = method_config("minicity", ["loss.ent=1e-12", "loss.ent_aux=0"], "minent")
    assert method_name(control) == "minent (loss.ent=1e-12, loss.ent_aux=0)"
    three = method_config("minicity", ["loss.ent=0.001", "loss.adv=0.001"], "ours")
    assert method_name(three).startswith("custom (loss.cos=0.1, loss.ent=0.001")


def test_refusals_name_the_folder(tmp_path, capsys):
    good = fake_run(tmp_path / "good", "source_only", 1, 30.0)
    with pytest.raises(ReportError, match="notarun: not a run folder"):
        report([good, tmp_path / "notarun"], tmp_path / "out")
    unfinished = fake_run(tmp_path / "unfinished", "ours", 1, 30.0)
    rows = (unfinished / "metrics.jsonl").read_text().splitlines()
    (unfinished / "metrics.jsonl").write_text("\n".join(rows[:2]) + "\n")  # no final eval
    with pytest.raises(ReportError, match="unfinished: unfinished run .*up to iteration 100"):
        report([good, unfinished], tmp_path / "out")
    other = fake_run(tmp_path / "other", "ours", 1, 30.0, extra=["data.val.split=train"])
    with pytest.raises(ReportError, match="other: evaluated with data.val.split='train'"):
        report([good, other], tmp_path / "out")
    subset = fake_run(tmp_path / "subset", "ours", 1, 30.0, extra=["data.classes=cityscapes19"])
    with pytest.raises(ReportError, match="subset: evaluated with data.classes"):
        report([good, subset], tmp_path / "out")
    selected = fake_run(tmp_path / "selected", "ours", 1, 30.0)
    with (selected / "metrics.jsonl").open("a") as f:  # it went on to 150, then was cut back
        f.write(json.dumps({"iter": 150, "kind": "eval", "miou": {"minicity": 28.0}}) + "\n")
    with pytest.raises(ReportError, match="selected: .*chosen after seeing them"):
        report([good, selected], tmp_path / "out")
    assert main(["report", str(good), str(unfinished), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and "Traceback" not in err


def test_other_input_sizes_only_when_asked(tmp_path, capsys):
    """A half-resolution baseline against full-resolution runs: the labels are scored at full
    resolution either way, so --mixed-input-sizes pairs them, and the report says which group
    saw which input; without it, the refusal names the switch; another split stays refused."""
    for s, (low, full) in {1: (30.0, 33.0), 2: (32.0, 36.0)}.items():
        fake_run(tmp_path / f"low{s}", "dacs", s, low, extra=["data.val.size=[192, 96]"])
        fake_run(tmp_path / f"full{s}", "ours_dacs", s, full)
    runs = sorted(tmp_path.glob("*[12]"))
    with pytest.raises(ReportError, match=r"evaluated with data.val.size=.*--mixed-input-sizes"):
        report(runs, tmp_path / "out", baseline="dacs")
    text = report(runs, tmp_path / "out", baseline="dacs", mixed_input=True)
    assert "+3.50 [" in text and "(n=2)" in text  # gains 3 and 4
    assert "dacs: [192, 96]" in text and "ours_dacs: [384, 192]" in text
    split = fake_run(tmp_path / "split", "ours", 1, 30.0, extra=["data.val.split=train"])
    with pytest.raises(ReportError, match="split: evaluated with data.val.split='train'"):
        report([*runs, split], tmp_path / "out2", mixed_input=True)
    assert main(["report", *map(str, runs), "--baseline", "dacs", "--mixed-input-sizes",
                 "--out", str(tmp_path / "o")]) == 0
    assert "dacs: [192, 96]" in capsys.readouterr().out


def test_report_on_short_minicity_runs(tiny_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        for method in ("source_only", "ours"):
            cfg = apply_method(copy.deepcopy(tiny_config), method)
            cfg.train.seed, cfg.train.eval_every = seed, 3
            train(cfg, runs / f"{method}_{seed}", progress=False)
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text in capsys.readouterr().out
    finals = {}
    for d in runs.iterdir():
        last = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()][-1]
        assert last["kind"] == "eval" and last["iter"] == 6
        finals[d.name] = last["miou"]["minicity"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    ours = next(r for r in rows if r["method"] == "ours" and r["metric"] == "miou")
    assert float(ours["mean"]) == pytest.approx((finals["ours_0"] + finals["ours_1"]) / 2)
    gain = ((finals["ours_0"] - finals["source_only_0"])
            + (finals["ours_1"] - finals["source_only_1"])) / 2
    assert float(ours["gain_mean"]) == pytest.approx(gain) and ours["pairs"] == "2"
    assert (out / "miou.png").is_file() and (out / "train.png").is_file()


def test_premise_columns_and_groups_by_run_folder(tmp_path):
    """The premise diagnostics of the final evaluation: mean ± std over seeds, by hand; --by
    run splits groups by folder name (the ablation's sweep, whose variants share a seed)."""
    for seed, (acc, same) in zip((1, 2), ((30.0, 0.4), (40.0, 0.5))):
        fake_run(tmp_path / f"s{seed}", "source_only", seed, 30.0,
                 premise={"nn_accuracy": acc, "s_same": same, "s_diff": 0.2})
    text = report([tmp_path / "s1", tmp_path / "s2"], tmp_path / "out")
    assert "| NN class acc. (%) | S same class | S other class |" in text
    sd = math.sqrt(((30 - 35) ** 2 + (40 - 35) ** 2) / 1)
    assert f"| 35.0 ± {sd:.1f} | 0.450 ± 0.071 | 0.200 ± 0.000 |" in text
    fake_run(tmp_path / "x", "ours", 0, 31.0)
    fake_run(tmp_path / "y", "ours", 0, 32.0, extra=["align.tau=0.6"])
    text = report([tmp_path / "x", tmp_path / "y"], tmp_path / "out2", by=("run",))
    assert "| ours [run=x] |" in text and "| ours [run=y] |" in text
    assert "NN class acc." not in text  # no premise logged: no columns
