"""A run interrupted anywhere (a NaN, a kill, a truncated file) resumes to a finished run equal
to an uninterrupted one, logged once per iteration, that `cosalign report` accepts."""

import copy
import json

import torch

from cosalign.cli import main
from cosalign.config import to_dict
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.divergence import divergence_start
from cosalign.engine.logger import read_metrics
from cosalign.engine.train import train
from cosalign.report import load_run


def _weights(run):
    return load_checkpoint(list_checkpoints(run)[-1])["model"]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


def _logged_once(run):
    keys = [(r["iter"], r["kind"]) for r in read_metrics(run)]
    assert len(keys) == len(set(keys)), keys
    return keys


def _config_file(cfg, path):
    import yaml

    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return str(path)


def test_divergence_start_by_hand():
    sane = [(i, 3.0 - 0.01 * i) for i in range(20)]
    assert divergence_start(sane, 20) == 20  # NaN out of the blue: only its own checkpoint
    blowup = [*sane, (20, 50.0), (21, 1e9)]
    assert divergence_start(blowup, 22) == 20  # 50 > 10 x median 2.9
    assert divergence_start([*sane, (20, 20.0), (21, 1e9)], 22) == 21
    assert divergence_start([], 7) is None  # just resumed: its checkpoint was not made now
    assert divergence_start([(5, float("inf"))], 6) == 5
    # a blow-up from the second iteration on: its own losses must not raise the baseline (the
    # median of all three is 5.5e12, which would call iteration 1 sane)
    assert divergence_start([(0, 3.08), (1, 5.49e12), (2, 5.4e21)], 3) == 1
    assert divergence_start([(0, 3.08), (1, 3.0), (2, 5.4e21)], 3) == 2


def test_blow_up_to_nan_sets_aside_its_checkpoints_and_resumes_to_the_straight_run(
        tiny_config, tmp_path, capsys):
    """optim.lr=1e6 makes the weights huge at once, the loss follows, then NaN: the checkpoints
    written on the way are set aside, and a resume with a sane learning rate finishes as a run
    that never diverged."""
    cfg = copy.deepcopy(tiny_config)
    cfg.train.checkpoint_every = 1
    cfg.train.log_every = 1
    bad = copy.deepcopy(cfg)
    bad.optim.lr = 1e6
    run = tmp_path / "run"
    assert main(["train", "--config", _config_file(bad, tmp_path / "bad.yaml"), "--out",
                 str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is nan" in err and "set aside" in err
    assert "starts from the beginning" in err and "optim.lr (now 1e+06)" in err
    assert not list_checkpoints(run) and list(run.glob("ckpt_*.pt.diverged"))
    assert main(["train", "--resume", str(run), "--quiet", "--set",
                 f"optim.lr={cfg.optim.lr}"]) == 0
    train(cfg, tmp_path / "straight", progress=False)
    _same_weights(run, tmp_path / "straight")
    assert _logged_once(run) == _logged_once(tmp_path / "straight")
    assert load_run(run).final["miou"] == load_run(tmp_path / "straight").final["miou"]


def test_kill_after_a_checkpoint_resumes_to_the_straight_run_logged_once(tiny_config, tmp_path):
    """What a kill leaves: lines logged after the newest checkpoint (one cut short), and a
    newest checkpoint that does not load."""
    cfg = copy.deepcopy(tiny_config)
    cfg.train.eval_every = 3
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(cfg, straight, progress=False)
    train(cfg, run, progress=False, stop_at=3)
    with (run / "metrics.jsonl").open("a") as f:  # iteration 4 logged, then killed mid-line
        f.write(json.dumps({"iter": 4, "kind": "train", "seg": 1.0}) + "\n")
        f.write('{"iter": 5, "kind": "tra')
    assert read_metrics(run)[-1]["iter"] == 4  # the cut line is skipped
    train(cfg, run, progress=False)
    _same_weights(run, straight)
    assert _logged_once(run) == _logged_once(straight)
    # the newest checkpoint truncated: the previous one is taken, and the run ends the same
    newest = list_checkpoints(run)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    (run / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in read_metrics(run) if r["iter"] <= 3))
    train(cfg, run, progress=False)
    assert (run / f"{newest.name}.unreadable").is_file()
    _same_weights(run, straight)
    assert _logged_once(run) == _logged_once(straight)
    # a log with iterations twice (what resumes wrote before): report reads each once
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines + lines[1:3]) + "\n")
    loaded = load_run(run)
    assert [r["iter"] for r in loaded.train] == sorted({r["iter"] for r in loaded.train})


def test_resume_of_a_run_killed_before_its_final_evaluation_writes_it(tiny_config, tmp_path):
    cfg = copy.deepcopy(tiny_config)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    rows = read_metrics(run)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows
                                               if r["kind"] != "eval"))
    results = train(cfg, run, progress=False)  # nothing left to train
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [cfg.train.iters]
    assert evals[0]["miou"] == results["miou"] == [r for r in rows if r["kind"] == "eval"][0][
        "miou"]
    assert load_run(run).final["miou"] == results["miou"]
    train(cfg, run, progress=False)  # and again: still one evaluation line
    assert _logged_once(run)


def test_mismatched_checkpoint_is_one_line_naming_the_layer(tiny_config, tmp_path, capsys):
    cfg = copy.deepcopy(tiny_config)
    cfg.train.iters = 1
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    assert main(["train", "--resume", str(run), "--quiet", "--set", "model.depth=34"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.depth" in err and ("lacks" in err or "has" in err)
    state = load_checkpoint(list_checkpoints(run)[-1])
    head = "head.branches.0.weight"
    state["model"][head] = state["model"][head][:5]  # a 5-class head
    torch.save(state, tmp_path / "five.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "five.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"layer {head} has shape (5," in err and "19" in err
