"""Self-training (dacs, ours_dacs): the mixing and augmentation against naive computations, the
EMA rule, the pseudo-label weight, training, resume, the teacher under torchrun, eval --model."""

import copy
import json
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cosalign.cli import main
from cosalign.data.transforms import denormalize, normalize
from cosalign.engine import distributed
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.logger import read_metrics
from cosalign.engine.train import batches, train, train_step
from cosalign.losses import ClassFeatureDictionary
from cosalign.methods import apply_method, build_terms
from cosalign.methods.base import Step
from cosalign.methods.mixing import class_mix_masks, from_unit_rgb, random_crop_like, to_unit_rgb
from cosalign.methods.self_training import SelfTraining
from cosalign.models import build_model
from tests.test_distributed import _ddp_device, _env, _rendezvous


def test_class_mix_takes_half_of_each_images_classes():
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 0, 1, 2], [3, 3, 255, 2]],   # 5 classes with 255: 3 chosen
                           [[5, 5, 5, 5], [6, 6, 6, 6]]])     # 2 classes: 1 chosen
    for _ in range(20):
        masks = class_mix_masks(labels, "image")
        for y, m in zip(labels, masks):
            classes = torch.unique(y)
            chosen = torch.unique(y[m])
            assert len(chosen) == math.ceil(len(classes) / 2)
            assert torch.equal(m, torch.isin(y, chosen))  # every pixel of a chosen class


def test_class_mix_per_batch_draws_half_of_the_batchs_classes_for_each_image():
    """DAFormer: each image gets its own draw of half the classes of the whole batch, so an
    image can get none of its own."""
    labels = torch.tensor([[[0, 1]], [[2, 3]]])
    batch_classes = torch.tensor([0, 1, 2, 3])
    seen_empty = False
    for seed in range(20):
        torch.manual_seed(seed)
        masks = class_mix_masks(labels, "batch")
        torch.manual_seed(seed)
        for y, m in zip(labels, masks):
            chosen = batch_classes[torch.randperm(4)[:2]]
            assert torch.equal(m, torch.isin(y, chosen))
            seen_empty |= not m.any()
    assert seen_empty


@pytest.mark.parametrize("mode", ["caffe", "imagenet"])
def test_unit_rgb_inverts_the_normalization(mode):
    image = np.random.default_rng(0).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    x = normalize(image, mode)[None]
    rgb = to_unit_rgb(x, mode)
    np.testing.assert_allclose(rgb[0].permute(1, 2, 0).numpy() * 255, image, atol=1e-3)
    torch.testing.assert_close(from_unit_rgb(rgb, mode), x, atol=1e-3, rtol=0)
    np.testing.assert_allclose(denormalize(x[0], mode), image, atol=1)


def test_random_crop_keeps_image_and_label_aligned():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).view(2, 3, 6, 5)
    y = x[:, 0].long()
    cx, cy = random_crop_like(x, y, (4, 5))
    assert cx.shape[-2:] == (4, 5) and torch.equal(cx[:, 0].long(), cy)
    with pytest.raises(ValueError, match="at least as large"):
        random_crop_like(x, y, (7, 5))


class _Out(NamedTuple):
    logits: torch.Tensor
    aux: torch.Tensor
    features: torch.Tensor


class _Fixed(torch.nn.Module):
    """A 'teacher' that outputs the given logits whatever its input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return _Out(self.logits, self.logits, self.logits)


def test_pseudo_label_weight_is_the_share_of_confident_pixels(tiny_config):
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.selftrain.ignore_top, cfg.selftrain.ignore_bottom = 0.25, 0.25
    term = SelfTraining(cfg, 3, torch.device("cpu"))
    term.setup(torch.nn.Linear(1, 1))
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, :, :2] = 10.0  # half the pixels are class 1 with p ~ 1; the rest uniform
    term.teacher = _Fixed(logits)
    x_t = torch.zeros(1, 3, 8, 8)
    step = Step(it=0, model=None, x_s=x_t, y_s=None, x_t=x_t, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None)
    pseudo, weight, _ = term._pseudo_labels(step)
    # upsampled bilinearly (align_corners) to 8 columns at x = 3j/7: the class-1 logit is
    # 10, 10, 10, 7.1, 2.9, 0, 0, 0, so p(1) = e^l / (e^l + 2) >= 0.968 in columns 0-3 only
    assert float(step.stats["pseudo_weight"]) == pytest.approx(0.5)
    assert (weight[0, :2] == 0).all() and (weight[0, 6:] == 0).all()  # the ignored bands
    assert torch.allclose(weight[0, 2:6], torch.tensor(0.5))
    assert (pseudo[0, :, :4] == 1).all()
    # HRDA's margins (data.target.margins) weigh 0 too, as the sample's mask says
    step.valid_t = torch.ones(1, 8, 8, dtype=torch.bool)
    step.valid_t[0, :, 7] = False
    _, weight, _ = term._pseudo_labels(step)
    assert (weight[0, :, 7] == 0).all() and torch.allclose(weight[0, 2:6, :7], torch.tensor(0.5))


def test_teacher_is_an_ema_of_parameters_not_buffers(tiny_config):
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.selftrain.alpha = 0.9
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    term = SelfTraining(cfg, 2, torch.device("cpu"))
    term.setup(student)
    step = Step(it=7, model=None, x_s=None, y_s=None, x_t=None, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None)
    term.before_step(7)  # t counts from here
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.add_(5.0)
    term.after_step(step)  # t = 0: a_0 = 0, the teacher becomes the student
    torch.testing.assert_close(term.teacher[0].weight, student[0].weight, rtol=0, atol=0)
    assert torch.equal(term.teacher[1].running_mean, torch.zeros(2))  # buffers stay
    before = term.teacher[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(2.0)
    step.it = 8  # t = 1: a_1 = min(1 - 1/2, 0.9) = 0.5
    term.after_step(step)
    torch.testing.assert_close(term.teacher[0].weight, 0.5 * before + 0.5 * student[0].weight)
    step.it = 100  # t = 93: a = min(1 - 1/94, 0.9) = 0.9
    before = term.teacher[0].weight.clone()
    term.after_step(step)
    torch.testing.assert_close(term.teacher[0].weight, 0.9 * before + 0.1 * student[0].weight)


@pytest.mark.parametrize("method, switches", [
    ("dacs", {}), ("ours_dacs", {}),  # the default: the mixed batch's target positions
    ("ours_dacs", {"align_on": "clean", "align_pseudo": "teacher"})])
def test_trains_logs_and_resumes_like_a_straight_run(tiny_config, tmp_path, method, switches):
    cfg = apply_method(copy.deepcopy(tiny_config), method)
    for key, value in switches.items():
        setattr(cfg.selftrain, key, value)
    cfg.train.deterministic = True
    train(cfg, tmp_path / "straight", progress=False)
    assert train(cfg, tmp_path / "split", progress=False, stop_at=3) is None
    train(cfg, tmp_path / "split", progress=False)
    rows = [r for r in read_metrics(tmp_path / "straight") if r["kind"] == "train"]
    assert all("st" in r and 0 <= r["pseudo_weight"] <= 1 for r in rows)
    assert all(("cos" in r) == (method == "ours_dacs") for r in rows)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / n)[-1]) for n in ("straight", "split"))
    atol = 1e-6 if cfg.train.device == "cpu" else 1e-5
    for part in ("model", "teacher"):
        sa = a["model"] if part == "model" else a["terms"]["self_training"]["teacher"]
        sb = b["model"] if part == "model" else b["terms"]["self_training"]["teacher"]
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=0)
    teacher = a["terms"]["self_training"]["teacher"]
    assert any(not torch.equal(teacher[k], a["model"][k]) for k in teacher
               if k.endswith("weight"))  # an average, not a copy


def test_eval_teacher_and_a_clear_error_without_one(tiny_config, tmp_path, capsys):
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    train(cfg, tmp_path / "dacs", progress=False)
    ckpt = list_checkpoints(tmp_path / "dacs")[-1]
    assert main(["eval", "--checkpoint", str(ckpt), "--model", "teacher", "--quiet",
                 "--out", str(tmp_path / "teacher"), "--device", cfg.train.device]) == 0
    assert json.loads((tmp_path / "teacher.json").read_text())["model"] == "teacher"
    src = apply_method(copy.deepcopy(tiny_config), "source_only")
    train(src, tmp_path / "so", progress=False)
    assert main(["eval", "--checkpoint", str(tmp_path / "so"), "--model", "teacher",
                 "--quiet"]) == 2
    assert "no teacher" in capsys.readouterr().err


def _teacher_worker(rank, world, store, cfg, out_dir):
    _env(rank, world, store)
    from cosalign.data import build_dataset

    device = distributed.setup(cfg.train.device)
    default = cfg.selftrain.align_on
    for align_on in ("mixed", "clean"):  # clean: two passes, one backward
        cfg.selftrain.align_on = align_on
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, 19).to(device)
        parts = build_terms(cfg, 19, device, model)
        ddp = distributed.wrap(model, device)  # two passes before one backward: see wrap
        d = ClassFeatureDictionary(19, 8, model.feature_dim).to(device)
        opt = torch.optim.SGD(model.param_groups(0.01), lr=0.01, momentum=0.9)
        src = batches(build_dataset(cfg.data.source, cfg.data, train=True), 2, 0, 0, 0)
        tgt = batches(build_dataset(cfg.data.target, cfg.data, train=True, labels=False), 2, 1,
                      0, 0)
        torch.manual_seed(100 + rank)  # other mixing draws on each rank: the teacher must agree
        for it in range(4):
            train_step(ddp, next(src), next(tgt), it, parts, d, opt)
        teacher = {k: v.cpu() for k, v in parts[0].teacher.state_dict().items()}
        torch.save(teacher, out_dir / f"teacher-{align_on}{rank}.pt")
    cfg.selftrain.align_on = default
    train(cfg, out_dir / "two", progress=False)  # the training loop, in the same processes
    distributed.cleanup()


def test_dacs_under_two_processes_keeps_one_teacher_and_checkpoints_it(tiny_config, tmp_path):
    """One pair of processes (a process start costs seconds): a few steps with each alignment
    input (the mixed batch; the clean target batch) and other mixing draws on each rank, after
    which the teachers are identical; then ``train`` under the two processes, whose checkpoint
    holds the teacher."""
    cfg = apply_method(copy.deepcopy(tiny_config), "ours_dacs")
    cfg.train.device = _ddp_device()
    mp.spawn(_teacher_worker, args=(2, _rendezvous(tmp_path), cfg, tmp_path), nprocs=2, join=True)
    for align_on in ("mixed", "clean"):
        t0, t1 = (torch.load(tmp_path / f"teacher-{align_on}{r}.pt") for r in (0, 1))
        params = [k for k in t0 if not k.endswith(("running_mean", "running_var", "tracked"))]
        for key in params:
            torch.testing.assert_close(t0[key], t1[key], rtol=0, atol=0, msg=align_on)
    state = load_checkpoint(list_checkpoints(tmp_path / "two")[-1])
    assert state["iteration"] == cfg.train.iters and "teacher" in state["terms"]["self_training"]
    rows = read_metrics(tmp_path / "two")
    assert [r["kind"] for r in rows].count("eval") == 1 and "st" in rows[0]


def test_rare_class_probabilities_and_draws():
    from cosalign.data.rcs import RareClassSampler, class_probabilities

    counts = np.array([[90, 10, 0], [80, 0, 20], [100, 0, 0], [50, 50, 0]])
    f = counts.sum(0) / counts.sum()  # 0.8, 0.15, 0.05
    expected = np.exp((1 - f) / 0.1) / np.exp((1 - f) / 0.1).sum()
    np.testing.assert_allclose(class_probabilities(counts, 0.1), expected)
    sampler = RareClassSampler(counts, 0.1, min_pixels=15, min_crop_ratio=0.5, seed=3)
    # class 0 has > 15 pixels in images 0-3, class 1 in image 3 only, class 2 in image 1 only
    assert [list(c) for c in sampler.candidates] == [[0, 1, 2, 3], [3], [1]]
    it = iter(sampler)
    draws = [next(it) for _ in range(400)]
    assert all(n == 7.5 and (i, c) in {(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (1, 2)}
               for i, _, c, n in draws)  # the image is one of its class's candidates
    share = np.bincount([i for i, *_ in draws], minlength=4) / 400
    p = expected  # image 3 comes from class 1 and class 0, image 1 from class 2 and class 0
    assert share[3] == pytest.approx(p[1] + p[0] / 4, abs=0.07)
    assert share[1] == pytest.approx(p[2] + p[0] / 4, abs=0.07)
    resumed = iter(RareClassSampler(counts, 0.1, 15, 0.5, seed=3, start=100))
    assert [next(resumed) for _ in range(5)] == draws[100:105]  # a resume continues the order
    ranks = [iter(RareClassSampler(counts, 0.1, 15, 0.5, seed=3, rank=r, world=2))
             for r in (0, 1)]
    assert [next(ranks[0]), next(ranks[1]), next(ranks[0])] == draws[:3]


def test_class_pixel_counts_equal_a_count_and_are_cached(tiny_config, monkeypatch):
    from cosalign.data import build_dataset
    from cosalign.data.rcs import class_pixel_counts

    source = build_dataset(tiny_config.data.source, tiny_config.data, train=True)
    counts = class_pixel_counts(source, 19, progress=False)
    for i, (_, label) in enumerate(source.pairs):
        y = source.read_label(label)
        assert all(counts[i, c] == (y == c).sum() for c in range(19))
    monkeypatch.setattr(source, "read_label", lambda p: 1 / 0)  # cached: labels not read
    np.testing.assert_array_equal(class_pixel_counts(source, 19, progress=False), counts)


def test_pooled_labels_keep_pure_patches_only():
    from cosalign.methods.feature_distance import pooled_labels

    y = torch.full((1, 4, 4), 13)
    y[0, 0, 0] = 11  # one pixel of four in the top-left patch: 75% car there
    y[0, 2:, 2:] = torch.tensor([[11, 11], [13, 255]])  # bottom-right: 2 person, 1 car, 1 void
    out = pooled_labels(y, (2, 2), 19)
    assert out.tolist() == [[[13, 13], [13, 255]]]


def test_feature_distance_is_the_mean_l2_distance_on_thing_positions(tiny_config, tmp_path):
    from cosalign.methods.feature_distance import FeatureDistance

    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.loss.fd, cfg.model.weights = 0.005, "unused-here"
    term = FeatureDistance(cfg, 19, torch.device("cpu"))
    f0 = torch.randn(1, 5, 2, 2)
    term.frozen = _Fixed(f0)
    f = torch.randn(1, 5, 2, 2, requires_grad=True)
    y = torch.tensor([[[13, 13, 0, 0], [13, 13, 0, 0], [11, 11, 2, 2], [11, 11, 2, 2]]])
    step = Step(it=0, model=None, x_s=torch.zeros(1, 3, 4, 4), y_s=y, x_t=None, f_s=None,
                pred_s=None, pred_s_aux=None, dictionary=None,
                out_s=_Out(None, None, f))
    got = term.source_losses(step)["fd"]
    d = [(f[0, :, i, j] - f0[0, :, i, j]).norm() for i, j in ((0, 0), (1, 0))]  # car, person
    torch.testing.assert_close(got, (d[0] + d[1]) / 2)
    got.backward()
    assert f.grad[0, :, 0, 1].abs().sum() == 0  # road: no gradient


def test_dacs_with_feature_distance_and_rare_class_sampling_trains(tiny_config, tmp_path):
    from cosalign.methods import method_name
    from cosalign.models import build_model

    model = build_model(tiny_config.model, 19)
    weights = tmp_path / "backbone.pt"
    torch.save({"model": {k: v for k, v in model.state_dict().items()
                          if k.startswith("backbone.")}, "pretrain": {}}, weights)
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.loss.fd, cfg.model.weights, cfg.data.rcs_temperature = 0.005, str(weights), 0.01
    cfg.data.rcs_min_pixels = 20  # of a tiny label
    assert method_name(cfg) == "dacs (loss.fd=0.005)"
    train(cfg, tmp_path / "run", progress=False)
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert all("fd" in r and r["fd"] >= 0 for r in rows)
