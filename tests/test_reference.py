"""The self-training step against its published reference, point by point (docs/METHOD.md
section 14): each test computes what DACS's, DAFormer's, MIC's, mmcv 1.x's, mmseg's or kornia
0.5.8's code computes, from its definition (a naive loop, Python's colorsys, hand-worked
values), and compares it with cosalign's."""

import colorsys
import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosalign.config import ModelConfig, load_config
from cosalign.data.dataset import SegmentationDataset
from cosalign.data.transforms import JointTransform, crop_origin, rescaled_size
from cosalign.engine.lr import learning_rate
from cosalign.losses.segmentation import ce_over_all, ce_over_labelled
from cosalign.methods import apply_method
from cosalign.methods.base import Step
from cosalign.methods.mixing import (
    JitterDraws,
    augment_masked,
    augment_mixed,
    blur_kernel_size,
    colour_jitter,
    gaussian_blur,
    jitter_draws,
)
from cosalign.methods.self_training import SelfTraining
from cosalign.models import build_model

# -- 1. the teacher labels without dropout and stochastic depth, in train mode


def test_the_teachers_labels_are_the_same_on_two_calls(tiny_config):
    """DAFormer's dacs.py switches every _DropoutNd and DropPath of the EMA teacher off before
    labelling; an untrained MiT-B0 with them on flips many labels between two calls."""
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.model = ModelConfig(arch="mit_b0", embed=32)
    torch.manual_seed(0)
    model = build_model(cfg.model, 19)
    for block in model.backbone.block4:
        block.drop_path.p = 0.5  # make the stochastic depth visible on a tiny input
    term = SelfTraining(cfg, 19, torch.device("cpu"))
    term.setup(model)
    x = torch.randn(2, 3, 64, 64)
    step = Step(it=0, model=None, x_s=x, y_s=None, x_t=x, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None)
    a, b = term._pseudo_labels(step)[0], term._pseudo_labels(step)[0]
    assert torch.equal(a, b)
    assert term.teacher.training and term.teacher.head.fuse.bottleneck[1].training  # BN: batch
    model.train()  # the student keeps both on: two calls differ
    with torch.no_grad():
        assert not torch.equal(model(x).logits.argmax(1), model(x).logits.argmax(1))


# -- 2. the EMA teacher: DAFormer's running mean from theta_0, DACS's first update


@pytest.mark.parametrize("steps", [1, 5, 100])
def test_daformer_ema_is_the_running_mean_of_the_students(tiny_config, steps):
    """DAFormer copies the student at local_iter 0, then alpha = min(1 - 1/(k + 1), 0.999) at
    the k-th update: the teacher is the mean of theta_0 .. theta_k for k < 999."""
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.selftrain.ema, cfg.selftrain.alpha = "daformer", 0.999
    student = torch.nn.Linear(3, 2)
    term = SelfTraining(cfg, 2, torch.device("cpu"))
    term.setup(copy.deepcopy(student))  # a teacher made from other weights: replaced at t0
    term.student = student
    seen = []
    step = Step(it=0, model=None, x_s=None, y_s=None, x_t=None, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None)
    for it in range(40, 40 + steps):
        term.before_step(it)
        if it == 40:
            seen.append(student.weight.detach().clone())  # theta_0
            torch.testing.assert_close(term.teacher.weight, student.weight, rtol=0, atol=0)
        with torch.no_grad():
            student.weight.normal_()  # the optimizer step
        seen.append(student.weight.detach().clone())
        step.it = it
        term.after_step(step)
    expected = torch.stack(seen).mean(0)  # theta_0 .. theta_steps
    torch.testing.assert_close(term.teacher.weight, expected, rtol=1e-5, atol=1e-6)


def test_dacs_ema_drops_the_initial_weights(tiny_config):
    """DACS: update_ema_variables after every optimizer step with iteration i_iter from 0, so
    alpha_0 = 0 and the teacher is the mean of theta_1 .. theta_k."""
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    cfg.selftrain.ema, cfg.selftrain.alpha = "dacs", 0.99
    student = torch.nn.Linear(3, 2)
    term = SelfTraining(cfg, 2, torch.device("cpu"))
    term.setup(student)
    seen = []
    step = Step(it=0, model=None, x_s=None, y_s=None, x_t=None, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None)
    for it in range(5):
        term.before_step(it)
        with torch.no_grad():
            student.weight.normal_()
        seen.append(student.weight.detach().clone())
        step.it = it
        term.after_step(step)
    torch.testing.assert_close(term.teacher.weight, torch.stack(seen).mean(0))


# -- 3. colour jitter: kornia 0.5.8's ColorJitter, op by op, against colorsys


def _draws(n, b=1.0, c=1.0, s=1.0, h=0.0, order=(0, 1, 2, 3)):
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return JitterDraws(full(b), full(c), full(s), full(h), torch.tensor(order))


def _naive(rgb: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn(r, g, b) -> (r, g, b)`` pixel by pixel."""
    out = rgb.clone().double()
    for i in range(rgb.shape[0]):
        for y in range(rgb.shape[2]):
            for x in range(rgb.shape[3]):
                out[i, :, y, x] = torch.tensor(fn(*rgb[i, :, y, x].tolist()))
    return out.float()


def test_each_jitter_operation_is_korniae():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 5, 6)
    rgb[0, :, 0, 0] = 0.3  # a grey pixel: no hue
    clamp = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    got = colour_jitter(rgb, _draws(2, b=1.15))  # brightness: x + (f - 1), clamped
    torch.testing.assert_close(got, _naive(rgb, lambda *c: [clamp(v + 0.15) for v in c]))
    got = colour_jitter(rgb, _draws(2, c=1.3))  # contrast: x * f, clamped
    torch.testing.assert_close(got, _naive(rgb, lambda *c: [clamp(v * 1.3) for v in c]))

    def saturate(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(h, clamp(s * 1.4), v)

    got = colour_jitter(rgb, _draws(2, s=1.4))
    torch.testing.assert_close(got, _naive(rgb, saturate), atol=2e-5, rtol=0)  # kornia's eps

    def hue(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h - 0.15) % 1.0, s, v)  # a shift of -0.15 turns

    got = colour_jitter(rgb, _draws(2, h=-0.15))
    torch.testing.assert_close(got, _naive(rgb, hue), atol=2e-5, rtol=0)


def test_jitter_applies_the_operations_in_the_drawn_order():
    rgb = torch.rand(1, 3, 4, 4)
    d = _draws(1, b=1.2, c=0.8)
    add_then_mul = ((rgb + 0.2).clamp(0, 1) * 0.8).clamp(0, 1)
    mul_then_add = (rgb * 0.8 + 0.2).clamp(0, 1)
    torch.testing.assert_close(colour_jitter(rgb, d._replace(order=torch.tensor([0, 1, 2, 3]))),
                               add_then_mul)
    torch.testing.assert_close(colour_jitter(rgb, d._replace(order=torch.tensor([3, 1, 2, 0]))),
                               mul_then_add)


def test_jitter_draws_are_korniae_ranges_per_image_with_one_order():
    torch.manual_seed(1)
    d = jitter_draws(4000, 0.2)
    for name, (lo, hi) in {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2),
                           "saturation": (0.8, 1.2), "hue": (-0.2, 0.2)}.items():
        v = getattr(d, name)
        assert v.shape == (4000,) and lo <= float(v.min()) and float(v.max()) <= hi
        assert float(v.mean()) == pytest.approx((lo + hi) / 2, abs=0.01)
    assert sorted(d.order.tolist()) == [0, 1, 2, 3]
    strong = jitter_draws(10, 0.9)  # kornia's bounds: brightness in [0, 2], hue in [-0.5, 0.5]
    assert float(strong.hue.abs().max()) <= 0.5 and float(strong.brightness.max()) <= 1.9


def test_the_step_jitters_the_whole_mixed_batch_or_none_of_it_with_p_08():
    """DAFormer draws color_jitter = U(0, 1) once per step and jitters when it exceeds 0.2;
    each mixed image then gets its own kornia call (its own factors)."""
    torch.manual_seed(2)
    rgb = torch.rand(2, 3, 6, 6) * 0.5 + 0.25
    jittered = []
    for _ in range(500):
        out = augment_mixed(rgb, 0.2, jitter_p=0.8, blur_p=0.0)
        changed = [not torch.equal(o, r) for o, r in zip(out, rgb)]
        assert changed[0] == changed[1]  # all or none
        jittered.append(changed[0])
        if changed[0]:
            assert not torch.allclose(out[0] - rgb[0], out[1] - rgb[1])  # own factors
    assert np.mean(jittered) == pytest.approx(0.8, abs=0.05)


# -- 4. blur: kornia's GaussianBlur2d, a sigma per mixed image, one per MIC batch


def test_blur_kernel_size_is_daformers():
    """floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2), worked by hand."""
    assert [blur_kernel_size(n) for n in (512, 60, 96, 192, 61, 1024)] == [51, 5, 9, 19, 7, 103]


def test_gaussian_blur_per_image_equals_a_naive_convolution():
    torch.manual_seed(3)
    rgb = torch.rand(2, 3, 21, 33)
    sigmas = torch.tensor([0.3, 1.1])
    got = gaussian_blur(rgb, sigmas)
    kh, kw = 3, 3  # ceil(2.1) = 3 rows; ceil(3.3) = 4 -> 3 columns
    for i, sigma in enumerate(sigmas.tolist()):
        gy = np.exp(-((np.arange(kh) - kh // 2) ** 2) / (2 * sigma**2))
        gx = np.exp(-((np.arange(kw) - kw // 2) ** 2) / (2 * sigma**2))
        kernel = np.outer(gy / gy.sum(), gx / gx.sum())
        img = np.pad(rgb[i].numpy(), ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2), mode="reflect")
        ref = np.zeros((3, 21, 33))
        for c in range(3):
            for y in range(21):
                for x in range(33):
                    ref[c, y, x] = (img[c, y:y + kh, x:x + kw] * kernel).sum()
        np.testing.assert_allclose(got[i].numpy(), ref, atol=1e-5)


def test_mixed_images_get_their_own_sigma_and_mics_batch_one():
    rgb = torch.rand(1, 3, 40, 40).expand(3, -1, -1, -1).contiguous()
    torch.manual_seed(4)
    mixed = augment_mixed(rgb, 0.2, jitter_p=0.0, blur_p=1.0)
    masked = augment_masked(rgb, 0.2, jitter_p=0.0, blur_p=1.0)
    assert not torch.allclose(mixed[0], mixed[1]) and not torch.allclose(mixed[1], mixed[2])
    assert torch.equal(masked[0], masked[1]) and torch.equal(masked[1], masked[2])
    assert not torch.allclose(masked[0], rgb[0])


# -- 5. align_corners: the run's convention in every upsampling of logits


class _Fixed(torch.nn.Module):
    """A teacher whose logits are given, whatever its input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return SimpleNamespace(logits=self.logits)


@pytest.mark.parametrize("align", [True, False])
def test_pseudo_labels_upsample_as_the_run_says(tiny_config, align):
    cfg = apply_method(copy.deepcopy(tiny_config), "dacs")
    term = SelfTraining(cfg, 3, torch.device("cpu"))
    term.setup(torch.nn.Linear(1, 1))
    torch.manual_seed(5)
    logits = torch.randn(1, 3, 4, 4) * 3
    term.teacher = _Fixed(logits)
    x_t = torch.zeros(1, 3, 16, 16)
    step = Step(it=0, model=None, x_s=x_t, y_s=None, x_t=x_t, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None, align_corners=align)
    pseudo = term._pseudo_labels(step)[0]
    ref = F.interpolate(logits, (16, 16), mode="bilinear", align_corners=align).argmax(1)
    assert torch.equal(pseudo, ref)


def test_the_daformer_presets_upsample_without_corners_and_deeplab_with():
    for name in ("gta5_to_cityscapes_daformer", "synthia_to_cityscapes_daformer"):
        assert load_config(name).model.align_corners is False
    for name in ("gta5_to_cityscapes", "synthia_to_cityscapes", "cityscapes_to_acdc",
                 "cityscapes_to_darkzurich", "minicity"):
        assert load_config(name).model.align_corners is True


# -- 6. mmcv's linear warm-up scales the poly rate


@pytest.mark.parametrize("it", [0, 1, 750, 1499, 1500, 20000])
def test_warmup_is_mmcvs(it):
    """mmcv 1.x LrUpdaterHook: regular = (base - 0) (1 - it / T) ** power; for it < W,
    lr = regular (1 - (1 - it / W) (1 - ratio)); DAFormer: 6e-5, T 40000, power 1, W 1500."""
    hand = {0: 6e-5 * 1e-6,
            1: 6e-5 * (39999 / 40000) * (1 - (1499 / 1500) * (1 - 1e-6)),
            750: 6e-5 * (39250 / 40000) * (1 - 0.5 * (1 - 1e-6)),
            1499: 6e-5 * (38501 / 40000) * (1 - (1 / 1500) * (1 - 1e-6)),
            1500: 6e-5 * (38500 / 40000),
            20000: 3e-5}
    assert learning_rate(6e-5, it, 40000, 1.0, 1500) == pytest.approx(hand[it], rel=1e-12)


# -- 7. the source loss's mean


def test_source_loss_means_over_labelled_or_all_pixels():
    """Uniform logits give log K at every labelled pixel; with 20% ignored, mmseg's mean over
    all pixels is 0.8 log K and ADVENT's over labelled pixels log K."""
    logits = torch.zeros(2, 5, 4, 5)
    y = torch.randint(0, 5, (2, 4, 5))
    y.view(-1)[torch.randperm(40)[:8]] = 255
    assert float(ce_over_labelled(logits, y)) == pytest.approx(math.log(5))
    assert float(ce_over_all(logits, y)) == pytest.approx(0.8 * math.log(5))
    logits = torch.randn(2, 5, 4, 5)
    naive = sum(-torch.log_softmax(logits[b, :, i, j], 0)[y[b, i, j]]
                for b in range(2) for i in range(4) for j in range(5) if y[b, i, j] != 255)
    torch.testing.assert_close(ce_over_all(logits, y), naive / 40)


# -- 8. the keep-ratio resize


def test_keep_ratio_resize_is_mmcvs_imrescale():
    """mmcv: f = min(max(scale) / max(w, h), min(scale) / min(w, h)), (int(w f + .5), ...)."""
    assert rescaled_size(1914, 1052, (1280, 720)) == (1280, 704)  # 0.66876: 703.5 -> 704
    assert rescaled_size(2048, 1024, (1024, 512)) == (1024, 512)
    assert rescaled_size(1920, 1080, (960, 540)) == (960, 540)
    assert rescaled_size(1280, 760, (1280, 760)) == (1280, 760)
    image = np.zeros((1052, 1914, 3), np.uint8)
    label = np.zeros((1052, 1914), np.uint8)
    im, lb = JointTransform(size=(1280, 720), keep_ratio=True).resize(image, label)
    assert im.shape == (704, 1280, 3) and lb.shape == (704, 1280)
    im, _ = JointTransform(size=(1280, 720)).resize(image, label)
    assert im.shape == (720, 1280, 3)  # stretched (ADVENT, DACS)


# -- 9. mmseg's cat_max_ratio crop and DAFormer's rare class re-crops


def _mmseg_crop(label, ch, cw, ratio, rng):
    """mmseg RandomCrop.__call__ with cat_max_ratio, drawing offsets as cosalign does."""
    def bbox():
        return (int(rng.integers(0, label.shape[0] - ch + 1)),
                int(rng.integers(0, label.shape[1] - cw + 1)))

    y0, x0 = bbox()
    for _ in range(10):
        labels, cnt = np.unique(label[y0:y0 + ch, x0:x0 + cw], return_counts=True)
        cnt = cnt[labels != 255]
        if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < ratio:
            break
        y0, x0 = bbox()
    return y0, x0


def test_cat_max_ratio_redraws_the_crop_as_mmseg():
    label = np.zeros((40, 60), np.uint8)  # road everywhere
    label[:, 50:] = 1  # a sidewalk strip: most 20x20 crops hold road alone
    label[:3] = 255
    for seed in range(30):
        got = crop_origin(label, 40, 60, 20, 20, 0.75, np.random.default_rng(seed))
        assert got == _mmseg_crop(label, 20, 20, 0.75, np.random.default_rng(seed))
    ones = np.zeros((40, 60), np.uint8)  # never satisfiable: 11 windows drawn, the last kept
    rng = np.random.default_rng(0)
    got = crop_origin(ones, 40, 60, 20, 20, 0.75, rng)
    ref_rng = np.random.default_rng(0)
    draws = [(int(ref_rng.integers(0, 21)), int(ref_rng.integers(0, 41))) for _ in range(11)]
    assert got == draws[-1] and rng.integers(0, 10**9) == ref_rng.integers(0, 10**9)


def test_rare_class_sampling_recrops_until_the_class_is_in_the_crop(tmp_path):
    """DAFormer's get_rare_class_sample: up to 10 new crops of the image until the crop holds
    more than min_pixels x min_crop_ratio pixels of the sampled class."""
    import cv2

    image = np.zeros((40, 80, 3), np.uint8)
    label = np.zeros((40, 80), np.uint8)
    label[10:30, 70:80] = 5  # 200 pixels of class 5 at the right edge
    cv2.imwrite(str(tmp_path / "a.png"), image)
    ds = SegmentationDataset([(tmp_path / "a.png", tmp_path / "a.png")], lambda p: label,
                             JointTransform(crop=(20, 20), normalization="imagenet"))
    for seed in range(20):
        out = ds[(0, seed, 5, 50.0)]
        rng = np.random.default_rng(seed)
        for _ in range(11):  # the naive loop: the first crop, then up to 10 more
            y0, x0 = int(rng.integers(0, 21)), int(rng.integers(0, 61))
            if (label[y0:y0 + 20, x0:x0 + 20] == 5).sum() > 50:
                break
        assert torch.equal(out["label"], torch.from_numpy(label[y0:y0 + 20, x0:x0 + 20]).long())
    plain = ds[(0, 3)]  # an index without a class: one crop
    rng = np.random.default_rng(3)
    y0, x0 = int(rng.integers(0, 21)), int(rng.integers(0, 61))
    assert torch.equal(plain["label"], torch.from_numpy(label[y0:y0 + 20, x0:x0 + 20]).long())


def test_rare_class_candidates_need_more_than_min_pixels():
    from cosalign.data.rcs import RareClassSampler

    counts = np.array([[3000, 5], [3001, 0]])
    sampler = RareClassSampler(counts, 0.01, min_pixels=3000, min_crop_ratio=2.0, seed=0)
    assert [list(c) for c in sampler.candidates] == [[1], []]  # strictly more than 3000
    assert sampler.crop_pixels == 6000  # HRDA's ratio 2


# -- 10. the heads start as DAFormer's (mmcv ConvModule, mmseg conv_seg)


@pytest.mark.parametrize("head", ["daformer", "segformer"])
def test_heads_start_from_mmcvs_initialization(head):
    torch.manual_seed(6)
    model = build_model(ModelConfig(arch="mit_b0", head=head, embed=256), 19)
    convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    classifier = model.head.classifier
    for m in convs:
        if m is classifier or m in model.head.embed:
            continue
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]  # torch's, any groups
        assert m.bias is None
        assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert float(classifier.weight.detach().std()) == pytest.approx(0.01, rel=0.1)
    assert torch.equal(classifier.bias, torch.zeros(19))
    for e in model.head.embed:  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1 / math.sqrt(e.in_channels)
        largest = float(e.weight.detach().abs().max())
        assert 0.9 * bound < largest <= bound


def test_a_run_upsamples_every_logit_map_as_model_align_corners_says(tiny_config, tmp_path,
                                                                      monkeypatch):
    """Source loss, pseudo-labels, mixed and masked losses and the evaluation: all follow the
    run's ``model.align_corners`` (DAFormer: False everywhere)."""
    import cosalign.engine.evaluate
    import cosalign.engine.train
    import cosalign.losses.segmentation
    import cosalign.methods.base
    import cosalign.methods.self_training
    from cosalign.engine.train import train
    from cosalign.models.upsample import upsample_logits

    seen = []

    def spy(logits, size, align_corners=True):
        seen.append(align_corners)
        return upsample_logits(logits, size, align_corners)

    for module in (cosalign.engine.train, cosalign.engine.evaluate, cosalign.methods.base,
                   cosalign.methods.self_training, cosalign.losses.segmentation):
        monkeypatch.setattr(module, "upsample_logits", spy)
    cfg = apply_method(copy.deepcopy(tiny_config), "ours_mic")
    cfg.model.align_corners, cfg.train.iters, cfg.align.start_iter = False, 2, 0
    train(cfg, tmp_path / "run", progress=False)
    assert len(seen) >= 2 * 4 + 1 and not any(seen)
