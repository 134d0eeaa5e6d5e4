"""Bad input gets one line naming what is wrong and exit code 2, before any work; nothing the
user made is touched. Every case runs through the CLI entry point in-process."""

import copy
import dataclasses
import json

import pytest

from cosalign.cli import main
from cosalign.config import Config, _fields
from cosalign.engine.train import train
from cosalign.outputs import MARKER, OutputError, claim, remove_run_files


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``cosalign *argv`` (argparse's errors exit via SystemExit)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, word: str, expected: int = 2) -> None:
    assert code == expected, err
    assert err.count("\n") == 1 and err.endswith("\n"), err  # one line
    assert "Traceback" not in err
    assert word in err, err


TRAIN = ["train", "--config", "minicity", "--quiet", "--set"]
CONFIG_CASES = [  # --set values a run must refuse when the config is loaded
    ("loss.reference=foo", "align.reference"),  # an old key: checked under its new name
    ("loss.class_restrict=foo", "align.class_restrict"),
    ("loss.match=bar", "align.match"),
    ("model.bn=foo", "model.bn"),
    ("train.iters=-3", "train.iters"),
    ("train.iters=abc", "train.iters"),
    ("data.classes=foo", "data.classes"),
    ("data.extra_classes=[synthia13, foo]", "data.extra_classes"),
    ("data.batch_size=0", "data.batch_size"),
    ("train.log_every=0", "train.log_every"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("data.source.size=[0, 10]", "data.source.size"),
    ("data.target.crop=[64]", "data.target.crop"),
    ("model.depth=42", "model.depth"),
    ("model.width=0", "model.width"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=[1]", "optim.lr"),
    ("align.tau=2", "align.tau"),
    ("loss.cos=-1", "loss.cos"),
    ("selftrain.threshold=1.5", "selftrain.threshold"),
    ("dictionary.per_image=2000", "dictionary.per_image"),
    ("data.source.dataset=kitti", "data.source.dataset"),
    ("data.source.split=", "data.source.split"),
    ("loss.lamda=1", "unknown config key 'loss.lamda'"),
    ("loss.tua=1", "did you mean align.tau"),
    ("nokey", "expected key=value"),
    ("align.tau=[", "not valid YAML"),
]


@pytest.mark.parametrize("override,word", CONFIG_CASES)
def test_config_values_are_refused_when_loaded(override, word, capsys, tmp_path):
    code, err = run_cli([*TRAIN, override, "--out", str(tmp_path / "run")], capsys)
    assert_one_line(code, err, word)
    assert not (tmp_path / "run").exists()  # before any work


def test_two_values_that_do_not_fit_together(capsys, tmp_path):
    code, err = run_cli([*TRAIN, "selftrain.ignore_top=0.6", "selftrain.ignore_bottom=0.5"],
                        capsys)
    assert_one_line(code, err, "selftrain.ignore_top + selftrain.ignore_bottom")


def _outside(f: dataclasses.Field, value):
    """A value of the field's type outside its declared choices or range."""
    if "choices" in f.metadata:
        return "not_a_choice" if isinstance(value, str) else 7
    r = f.metadata["range"]
    x = r.low - 1 if r.low is not None else r.high + 1
    if isinstance(value, float):
        return x
    if isinstance(value, int):
        return int(x)
    # a list: as many items as the field holds (a None default: as its tuple type says)
    n = len(value) if isinstance(value, list | tuple) else str(f.type).split("]")[0].count(",") + 1
    return [int(x)] * max(n, 2)  # sizes, rates, margins


DECLARED = [(key, f, value) for key, f, value in _fields(Config())
            if "choices" in f.metadata or "range" in f.metadata]


@pytest.mark.parametrize("key,f,value", DECLARED, ids=[k for k, _, _ in DECLARED])
def test_every_declared_field_refuses_a_value_outside_it(key, f, value, capsys):
    """Every field with choices or a range, from the config's own declarations."""
    code, err = run_cli([*TRAIN, f"{key}={json.dumps(_outside(f, value))}"], capsys)
    assert_one_line(code, err, key)
    assert ("expected one of" if "choices" in f.metadata else "expected a number") in err


def test_enough_fields_are_declared():
    keys = {k for k, _, _ in DECLARED}
    assert len(keys) >= 50
    for key in ("model.bn", "align.match", "selftrain.mix", "train.amp", "data.batch_size",
                "train.iters", "selftrain.alpha", "model.depth", "data.val.size"):
        assert key in keys


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_minicity):
    """A 1-iteration tiny run (its checkpoint and folder)."""
    from cosalign.minicity import minicity_config
    from tests.conftest import TEST_DEVICE

    cfg = minicity_config(tiny_minicity, [
        "data.source.size=[64, 36]", "data.target.size=[64, 32]", "data.val.size=[64, 32]",
        "data.source.crop=[64, 32]", "data.target.crop=[64, 32]",
        "model.width=0.125", "train.iters=1", "optim.schedule_iters=1", "train.log_every=1",
        "dictionary.capacity=8", f"train.device={TEST_DEVICE}"])
    run = tmp_path_factory.mktemp("bad_input") / "run"
    train(copy.deepcopy(cfg), run, progress=False)
    return run


def test_command_line_cases(trained, tmp_path, capsys):
    ckpt = str(next(trained.glob("ckpt_*.pt")))
    afile = tmp_path / "afile"
    afile.write_text("the user's")
    image = str(trained / "config.yaml")  # any existing path for argparse-stage errors
    images = tmp_path / "images"
    images.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    for folder in (images, other):
        (folder / "a.png").write_bytes(b"")
    cases = [
        (["eval", "--checkpoint", ckpt, "--size", "0", "0"], "--size"),
        (["eval", "--checkpoint", ckpt, "--scales", "0"], "--scales"),
        (["eval", "--checkpoint", ckpt, "--window", "-4", "4"], "--window"),
        (["eval", "--checkpoint", str(tmp_path / "none.pt")], "checkpoint not found"),
        (["eval", "--checkpoint", str(tmp_path)], "without a loadable checkpoint"),
        (["eval", "--checkpoint", str(afile)], "cannot load checkpoint"),
        (["eval", "--checkpoint", ckpt, "--out", str(afile / "results")], "is a file"),
        (["eval", "--checkpoint", ckpt, "--save-predictions", str(afile)], "is a file"),
        (["eval", "--checkpoint", ckpt, "--model", "teacher", "--quiet"], "no teacher"),
        (["predict", "--checkpoint", ckpt, image, "--out", str(tmp_path), "--size", "-1", "4"],
         "--size"),
        (["predict", "--checkpoint", ckpt, str(tmp_path / "no.png"), "--out", str(tmp_path)],
         "no such image"),
        (["predict", "--checkpoint", ckpt, str(images), "--out", str(afile)], "is a file"),
        (["predict", "--checkpoint", ckpt, str(images / "a.png"), str(other / "a.png"),
          "--out", str(tmp_path / "p")], "both would be written as a.png"),
        (["predict", "--checkpoint", ckpt, str(images), "--out", str(images / "p")],
         "inside the input folder"),
        (["demo", "--out", str(afile)], "is a file"),
        (["train", "--config", "nosuchpreset"], "nosuchpreset"),
        (["train", "--config", "minicity", "--method", "foo"], "--method"),
        (["train", "--resume", str(tmp_path / "nothing")], "no config in the run"),
        (["demo", "--methods", "foo"], "unknown method 'foo'"),
        (["demo", "--methods", "ours,source_only"], "source_only first"),
        (["demo", "--set", "train.iters=-1", "--out", str(tmp_path / "d")], "train.iters"),
        (["data", "make", "--num-source", "20", "--out", str(tmp_path / "m")], "num_source"),
        (["data", "make", "--num-target", "0"], "--num-target"),
        (["data", "make", "--out", str(trained)], "not a MiniCity folder"),
        (["data", "check", str(tmp_path), "--dataset", "kitti"], "--dataset"),
        (["report", str(tmp_path / "nothing")], "nothing"),
        (["report", str(trained), "--out", str(afile)], "is a file"),
        (["viz", ckpt, "--images", "0"], "--images"),
        (["pretrain", "--iters", "0"], "--iters"),
        (["pretrain", "--arch", "mit_b9"], "--arch"),
        (["pretrain", "--arch", "mit_b0", "--embed", "0"], "--embed"),
        (["pretrain", "--embed", "16", "--out", str(tmp_path / "pt")], "--embed"),
        (["nosuchcommand"], "invalid choice"),
    ]
    for argv, word in cases:
        code, err = run_cli(argv, capsys)
        assert_one_line(code, err, word)
    assert afile.read_text() == "the user's"
    for made in ("d", "m", "p", "images/p", "pt"):
        assert not (tmp_path / made).exists()


def test_a_truncated_metrics_line_is_one_line_in_report(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0][:20], *lines[1:]]) + "\n")
    code, err = run_cli(["report", str(run), "--out", str(tmp_path / "r")], capsys)
    assert_one_line(code, err, "metrics.jsonl: line 1 is not a metrics record")


def test_iters_0_evaluates_the_initial_weights(trained, tmp_path, capsys):
    """train.iters=0 is allowed: it means "evaluate only" (the config's weights)."""
    import yaml

    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    cfg["train"]["iters"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"),
                 "--quiet"])
    assert code == 0
    evals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["kind"]) for r in evals] == [(0, "eval")]


def test_demo_refuses_a_folder_holding_what_it_would_write_and_touches_nothing(tmp_path,
                                                                                capsys):
    out = tmp_path / "demo"
    (out / "ours").mkdir(parents=True)
    (out / "ours" / "mine.txt").write_text("the user's")
    code, err = run_cli(["demo", "--out", str(out), "--data", str(tmp_path / "data")], capsys)
    assert_one_line(code, err, "was not made by `cosalign demo`")
    assert (out / "ours" / "mine.txt").read_text() == "the user's"
    assert not (tmp_path / "data").exists() and not (out / MARKER).exists()


def test_demo_replaces_only_its_own_runs_files(tmp_path):
    """A folder claimed by an earlier demo: its runs' files go, a user's file in it stays."""
    out = tmp_path / "demo"
    claim(out, "cosalign demo", ("ours", "results.json"))
    run = out / "ours"
    (run / "tb").mkdir(parents=True)
    for name in ("ckpt_0000001.pt", "ckpt_0000002.pt.diverged", "config.yaml", "metrics.jsonl",
                 "tb/events.out.tfevents.1.host", "mine.txt", "eval_val.json"):
        (run / name).write_text("x")
    claim(out, "cosalign demo", ("ours", "results.json"))  # ours already: no error
    remove_run_files(run)
    assert sorted(p.name for p in run.iterdir()) == ["eval_val.json", "mine.txt"]
    with pytest.raises(OutputError, match="not made by `cosalign other`"):
        claim(out, "cosalign other", ("ours",))
