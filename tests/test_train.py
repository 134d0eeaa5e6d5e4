"""The training loop end to end on a tiny MiniCity: every method, logging, checkpoints, resume,
divergence and bad input."""

import copy
import json
import os

import pytest
import torch

from cosalign.cli import main
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.logger import read_metrics
from cosalign.engine.train import NonFiniteLoss, train
from cosalign.methods import apply_method


@pytest.mark.parametrize("method", ["source_only", "minent", "ours", "ours_advent"])
def test_every_method_trains_logs_and_evaluates(tiny_config, tmp_path, method):
    cfg = apply_method(copy.deepcopy(tiny_config), method)
    results = train(cfg, tmp_path, progress=False)
    assert 0 <= results["miou"]["minicity"] <= 100
    records = read_metrics(tmp_path)
    train_rows = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train_rows] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(r["seg"])) for r in train_rows)
    if method.startswith("ours"):
        assert "cos" in train_rows[-1] and "selected" in train_rows[-1]
        assert "eff_rank" in train_rows[-1] and "pair_cos" in train_rows[-1]
    if method == "minent":
        assert "ent" in train_rows[-1] and "cos" not in train_rows[-1]
    if method == "ours_advent":
        assert "adv" in train_rows[-1] and "d_adv_src" in train_rows[-1]
    assert [r["kind"] for r in records].count("eval") == 1
    state = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert state["iteration"] == 6
    assert int(state["dictionary"]["filled"].sum()) > 0  # updated whatever the method
    assert (tmp_path / "config.yaml").is_file()


def test_cosine_loss_waits_for_start_iter(tiny_config, tmp_path):
    cfg = copy.deepcopy(tiny_config)
    cfg.align.start_iter = 4
    train(cfg, tmp_path, progress=False)
    rows = {r["iter"]: r for r in read_metrics(tmp_path) if r["kind"] == "train"}
    assert "cos" not in rows[2] and "cos" not in rows[4] and "cos" in rows[6]


@pytest.mark.parametrize("method", ["ours", "ours_advent"])
def test_resume_equals_straight_run(tiny_config, tmp_path, method):
    """N iterations straight == N/2, stop, resume for N/2 (deterministic mode). On CUDA the
    resume restores the RNG states of a checkpoint loaded onto the GPU (it once crashed there),
    and a few ops have no deterministic kernel: a looser tolerance."""
    cfg = apply_method(copy.deepcopy(tiny_config), method)
    cfg.train.deterministic = True
    train(cfg, tmp_path / "straight", progress=False)
    assert train(cfg, tmp_path / "split", progress=False, stop_at=3) is None
    train(cfg, tmp_path / "split", progress=False)
    a = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "split")[-1])
    atol = 1e-6 if cfg.train.device == "cpu" else 1e-5
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=atol, rtol=0)
    torch.testing.assert_close(a["dictionary"]["entries"], b["dictionary"]["entries"])
    if method == "ours_advent":
        da = a["terms"]["adversarial"]["discriminators"]
        db = b["terms"]["adversarial"]["discriminators"]
        for key in da:
            torch.testing.assert_close(da[key], db[key], atol=atol, rtol=0)


def test_deterministic_mode_ends_with_the_run(tiny_config, tmp_path):
    # the switch is global to the process: a deterministic run must not leave it on for what
    # runs next (on CUDA an op without a deterministic kernel then failed in later code)
    cfg = copy.deepcopy(tiny_config)
    cfg.train.deterministic = True
    cfg.train.iters = cfg.optim.schedule_iters = 2
    assert not torch.are_deterministic_algorithms_enabled()
    train(cfg, tmp_path, progress=False)  # on CUDA: cross-entropy warns, does not fail
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_deterministic_mode_silences_torchs_warning_for_ops_without_a_deterministic_kernel():
    """On CUDA cross-entropy's NLL loss has no deterministic kernel: torch's two-line warning
    would land in the middle of a run's stderr (and under a failing run's one-line message).
    ``put_`` raises the same alert on a CPU."""
    import warnings

    from cosalign.engine.runtime import deterministic_mode

    def alerts() -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with deterministic_mode(True, torch.device("cpu")):
                torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
                warnings.warn("another warning", stacklevel=1)  # others still show
        return [str(w.message) for w in seen]

    assert alerts() == ["another warning"]
    torch.use_deterministic_algorithms(True, warn_only=True)  # the alert itself, unsilenced
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    finally:
        torch.use_deterministic_algorithms(False)
    assert any("does not have a deterministic" in str(w.message) for w in seen)


def test_deterministic_mode_sets_and_restores(monkeypatch):
    """CPU by nature: checks the switches themselves, for a CUDA device without using one."""
    from cosalign.engine.runtime import deterministic_mode

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_mode(True, torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        # attention on the math backend only: the others' backward passes are not deterministic
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.mem_efficient_sdp_enabled()
    with deterministic_mode(False, torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()


def test_nan_stops_with_iteration_and_term_and_keeps_checkpoint(tiny_config, tmp_path,
                                                                monkeypatch):
    cfg = copy.deepcopy(tiny_config)
    train(cfg, tmp_path, progress=False, stop_at=3)
    before = load_checkpoint(list_checkpoints(tmp_path)[-1])

    import cosalign.methods.alignment as engine

    real = engine.cosine_alignment

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(engine, "cosine_alignment", poisoned)
    with pytest.raises(NonFiniteLoss, match="iteration 3: loss term 'cos' is nan"):
        train(cfg, tmp_path, progress=False)
    after = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert after["iteration"] == 3
    for key in before["model"]:
        torch.testing.assert_close(before["model"][key], after["model"][key])


def test_cli_train_missing_dataset_exits_2(tmp_path, capsys):
    code = main(["train", "--config", "minicity", "--out", str(tmp_path / "run"), "--quiet",
                 "--set", f"data.source.root={tmp_path / 'nowhere'}",
                 "data.source.list_file=null"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nowhere/images" in err and "ROOT/images/NNNNN.png" in err
    assert "Traceback" not in err


def test_cli_train_unknown_key_exits_2(capsys):
    code = main(["train", "--config", "minicity", "--set", "loss.lamda=1"])
    err = capsys.readouterr().err
    assert code == 2 and "loss.lamda" in err and "keys of loss: aux, cos," in err


def test_cli_train_and_resume(tiny_config, tiny_minicity, tmp_path, capsys):
    import yaml

    from cosalign.config import to_dict

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(tiny_config)))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--method", "ours", "--out", str(run),
                 "--quiet", "--set", "train.iters=3"]) == 0
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.iters=6"]) == 0
    out = capsys.readouterr()
    assert "resuming" in out.err + out.out
    assert load_checkpoint(list_checkpoints(run)[-1])["iteration"] == 6
    assert "mIoU (minicity)" in out.out
    json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def test_tensorboard_gets_losses_lr_miou_and_pictures(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = copy.deepcopy(tiny_config)
    cfg.train.eval_every = 3
    train(cfg, tmp_path, progress=False)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ("train/seg", "train/cos", "train/lr", "eval/miou/minicity"):
        assert tag in scalars, (tag, scalars)
    assert [e.step for e in acc.Scalars("eval/miou/minicity")] == [3, 6]
    assert "val/0" in acc.Tags()["images"]


def test_advent_step_trains_discriminators_and_fools_them(tiny_config, device):
    """The generator's adversarial term labels target maps as source (0); the discriminators
    are then trained on source (0) and target (1) maps, and only in that phase."""
    from cosalign.data import build_dataset
    from cosalign.engine.train import batches, train_step
    from cosalign.losses import ClassFeatureDictionary
    from cosalign.methods import build_terms
    from cosalign.models import build_model

    cfg = apply_method(copy.deepcopy(tiny_config), "advent")
    torch.manual_seed(0)
    model = build_model(cfg.model, 19).to(device)
    parts = build_terms(cfg, 19, device)
    assert [p.name for p in parts] == ["adversarial"]
    discs = parts[0].discs
    before = {k: v.clone() for k, v in discs.state_dict().items()}
    opt = torch.optim.SGD(model.param_groups(0.01), lr=0.01)
    d = ClassFeatureDictionary(19, 8, model.feature_dim).to(device)
    src = batches(build_dataset(cfg.data.source, cfg.data, train=True), 2, 0, 0, 0)
    tgt = batches(build_dataset(cfg.data.target, cfg.data, train=True, labels=False), 2, 1, 0, 0)
    terms = train_step(model, next(src), next(tgt), 0, parts, d, opt)
    assert {"adv", "adv_aux", "d_adv_src", "d_adv_tgt", "d_adv_aux_src"} <= set(terms)
    changed = [k for k, v in discs.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every discriminator tensor was updated
    # an untrained discriminator outputs ~0 logits: all its BCE terms are near log 2
    assert abs(terms["adv"] - 0.693) < 0.05 and abs(terms["d_adv_tgt"] - 0.693) < 0.05


def test_target_bn_control_moves_only_batchnorm_statistics(tiny_config, device):
    """One step of the control and of source-only from the same weights: identical parameters
    (no target loss), different BatchNorm running statistics (the target batch went through)."""
    from cosalign.data import build_dataset
    from cosalign.engine.train import batches, train_step
    from cosalign.losses import ClassFeatureDictionary
    from cosalign.methods import build_terms
    from cosalign.models import build_model

    after = {}
    for method in ("source_only", "target_bn"):
        cfg = apply_method(copy.deepcopy(tiny_config), method)
        torch.manual_seed(0)
        model = build_model(cfg.model, 19).to(device)
        opt = torch.optim.SGD(model.param_groups(0.01), lr=0.01)
        d = ClassFeatureDictionary(19, 8, model.feature_dim).to(device)
        src = batches(build_dataset(cfg.data.source, cfg.data, train=True), 2, 0, 0, 0)
        tgt = batches(build_dataset(cfg.data.target, cfg.data, train=True, labels=False), 2, 1,
                      0, 0)
        terms = train_step(model, next(src), next(tgt), 0, build_terms(cfg, 19, device), d, opt)
        assert set(terms) == {"seg", "seg_aux"}  # no target term for either
        after[method] = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = after["source_only"], after["target_bn"]
    params = dict(build_model(tiny_config.model, 19).named_parameters())
    # CUDA: cuDNN's weight gradients and the 2-D NLL loss sum with atomics, so two identical
    # steps differ in the last bits (up to 1.5e-8 seen on an H200); a target loss that leaked
    # into the step would move weights by orders of magnitude more at lr 0.01
    atol = 0 if device.type == "cpu" else 1e-6
    for key in params:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)
    stats = [k for k in a if k.endswith("running_mean")]
    assert stats and all(not torch.equal(a[k], b[k]) for k in stats)


def test_a_run_loads_its_class_set_once(tiny_config, tmp_path, monkeypatch):
    """Not once per checkpoint or evaluation (a file set is read from disk each time)."""
    import copy

    import cosalign.engine.train as loop

    calls = []
    real = loop.class_set_of
    monkeypatch.setattr(loop, "class_set_of", lambda cfg: calls.append(1) or real(cfg))
    cfg = copy.deepcopy(tiny_config)
    cfg.train.checkpoint_every, cfg.train.eval_every = 1, 2
    loop.train(cfg, tmp_path / "run", progress=False)
    assert len(calls) == 1
