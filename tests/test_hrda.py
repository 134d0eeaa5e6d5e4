"""HRDA's network (models/hrda.py) against HRDA's definitions, written here as naive loops and
hand-worked values: the detail box's grid, the slide windows, the attention fusion, the sliding
inference, the outer test windows and the loss's weights."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosalign.config import ConfigError, load_config
from cosalign.losses.segmentation import segmentation_loss
from cosalign.models import HRDAOutput, HRDASegmenter, MiTSegmenter, build_model
from cosalign.models.hrda import crop_box, window_boxes


def tiny(classes: int = 3, **kw) -> HRDASegmenter:
    torch.manual_seed(0)
    kw = {"detail_crop": (32, 32), **kw}
    return HRDASegmenter(MiTSegmenter(classes, "b0", "daformer", 16), attention_embed=8, **kw)


def test_box_corners_on_the_grid_of_8_and_every_one_drawn():
    # HRDA's get_crop_bbox at 1024 / 512: offset = 8 * randint(0, 513 // 8) -> 0, 8, ..., 504
    np.random.seed(0)
    seen = {crop_box(1024, 1024, (512, 512), 8)[0] for _ in range(3000)}
    assert seen == set(range(0, 505, 8))
    y1, y2, x1, x2 = crop_box(96, 192, (48, 64), 8)
    assert (y2 - y1, x2 - x1) == (48, 64) and y1 % 8 == 0 and x1 % 8 == 0
    assert crop_box(64, 64, (64, 64), 8) == (0, 64, 0, 64)


def test_slide_windows_as_mmseg_lays_them():
    # 1024^2, window 512, stride 256: 3 x 3 windows at 0, 256, 512
    assert window_boxes(1024, 1024, (512, 512), (256, 256)) == [
        (y, y + 512, x, x + 512) for y in (0, 256, 512) for x in (0, 256, 512)]
    # Cityscapes at test time: 1024 x 2048, window 1024, stride 512 -> x = 0, 512, 1024
    assert window_boxes(1024, 2048, (1024, 1024), (512, 512)) == [
        (0, 1024, x, x + 1024) for x in (0, 512, 1024)]
    # rows = (100 - 48 + 23) // 24 + 1 = 4; the last flush with the border: 52
    assert [b[0] for b in window_boxes(100, 48, (48, 48), (24, 24))] == [0, 24, 48, 52]


def up2(t: torch.Tensor) -> torch.Tensor:
    """Bilinear x2, align_corners False, from its definition: output i samples the input at
    (i + 0.5) / 2 - 0.5, clamped at 0, between floor and the next index (clamped at the end)."""
    b, k, h, w = t.shape
    out = torch.zeros(b, k, 2 * h, 2 * w, dtype=t.dtype)

    def taps(i, n):
        x = max((i + 0.5) / 2 - 0.5, 0.0)
        lo = min(math.floor(x), n - 1)
        return lo, min(lo + 1, n - 1), x - lo

    for i in range(2 * h):
        y0, y1, fy = taps(i, h)
        for j in range(2 * w):
            x0, x1, fx = taps(j, w)
            out[:, :, i, j] = ((1 - fy) * (1 - fx) * t[:, :, y0, x0]
                               + (1 - fy) * fx * t[:, :, y0, x1]
                               + fy * (1 - fx) * t[:, :, y1, x0] + fy * fx * t[:, :, y1, x1])
    return out


def naive_fuse(lr, att, hr, box):
    """HRDA's fusion, pixel by pixel: the attention zeroed outside box / 8, the detail logits
    pasted at box / 4 into zeros."""
    a = att.clone()
    if box is not None:
        y1, y2, x1, x2 = box
        for i in range(a.shape[-2]):
            for j in range(a.shape[-1]):
                if not (y1 // 8 <= i < y2 // 8 and x1 // 8 <= j < x2 // 8):
                    a[:, :, i, j] = 0
        full = torch.zeros(*hr.shape[:2], 2 * lr.shape[-2], 2 * lr.shape[-1], dtype=hr.dtype)
        for i in range(hr.shape[-2]):
            for j in range(hr.shape[-1]):
                full[:, :, y1 // 4 + i, x1 // 4 + j] = hr[:, :, i, j]
        hr = full
    return up2((1 - a) * lr) + up2(a) * hr


@pytest.mark.parametrize("classwise", [True, False])
def test_fusion_against_a_naive_loop(classwise):
    g = torch.Generator().manual_seed(1)
    lr = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)
    att = torch.rand(2, 3 if classwise else 1, 6, 8, generator=g, dtype=torch.float64)
    net = tiny()
    box = (16, 40, 8, 40)  # a 24 x 32 box of a 48 x 64 input: logits 6 x 8 at stride 4
    hr = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)
    assert torch.allclose(net.fuse(lr, att, hr, box), naive_fuse(lr, att, hr, box), atol=1e-12)
    full_hr = torch.randn(2, 3, 12, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(net.fuse(lr, att, full_hr), naive_fuse(lr, att, full_hr, None),
                          atol=1e-12)
    # outside the box the output is the context's prediction alone
    out = net.fuse(lr, att, hr, box)
    assert torch.allclose(out[..., :, :1], up2(lr)[..., :, :1])


def test_context_is_the_2x2_mean_and_the_training_pass_fuses_one_box():
    net = tiny().train()
    x = torch.randn(2, 3, 64, 96)
    half = F.avg_pool2d(x, 2)  # HRDA's x0.5 bilinear resize, align_corners False
    assert torch.allclose(F.interpolate(x, scale_factor=0.5, mode="bilinear",
                                        align_corners=False), half, atol=1e-6)
    for m in net.modules():  # determinism: no dropout, no stochastic depth
        if isinstance(m, torch.nn.Dropout2d) or type(m).__name__ == "DropPath":
            m.eval()
    np.random.seed(5)
    out = net(x)
    np.random.seed(5)
    box = crop_box(64, 96, (32, 32), 8)
    assert out.box == box and out.detail.shape == (2, 3, 8, 8)
    assert out.logits.shape == (2, 3, 16, 24)
    y1, y2, x1, x2 = box
    # BatchNorm normalizes each pass with its own batch: run the three passes the same way
    maps = net.backbone(half)
    lr, _ = net.head(maps)
    att = torch.sigmoid(net.attention(maps)[0])
    hr, _ = net.head(net.backbone(x[..., y1:y2, x1:x2]))
    assert torch.allclose(out.detail, hr, atol=1e-5)
    assert torch.allclose(out.logits, naive_fuse(lr, att, hr, box), atol=1e-5)
    assert out.features.shape == (2, 16, 8, 12) and out.encoder.shape == (2, 256, 1, 2)


def test_sliding_inference_against_a_naive_loop():
    net = tiny().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = net(x)
        assert out.box is None and out.detail is None
        # windows of 32 at stride 16: 3 rows x 5 columns, each alone through the network
        total = torch.zeros(1, 3, 16, 24)
        count = torch.zeros(16, 24)
        for y in range(0, 33, 16):
            for xx in range(0, 65, 16):
                total[..., y // 4:(y + 32) // 4, xx // 4:(xx + 32) // 4] += net.head(
                    net.backbone(x[..., y:y + 32, xx:xx + 32]))[0]
                count[y // 4:(y + 32) // 4, xx // 4:(xx + 32) // 4] += 1
        maps = net.backbone(F.avg_pool2d(x, 2))
        lr = net.head(maps)[0]
        att = torch.sigmoid(net.attention(maps)[0])
        assert torch.allclose(out.logits, naive_fuse(lr, att, total / count, None), atol=1e-5)


def test_outer_windows_at_test_time_average_each_windows_resized_logits():
    net = tiny(window=(64, 64)).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        out = net(x)
        assert out.logits.shape == (1, 3, 64, 128) and out.features is None
        want = torch.zeros(1, 3, 64, 128)
        count = torch.zeros(64, 128)
        for x0 in (0, 32, 64):  # window 64, stride 32
            w = F.interpolate(net.infer(x[..., x0:x0 + 64]).logits, size=(64, 64),
                              mode="bilinear", align_corners=False)
            want[..., x0:x0 + 64] += w
            count[:, x0:x0 + 64] += 1
        assert torch.allclose(out.logits, want / count, atol=1e-5)


def test_which_pass_runs():
    net = tiny().train()
    x = torch.randn(2, 3, 64, 64)
    assert net(x).box is not None  # the student: train mode, autograd on
    with torch.no_grad():
        assert net(x).box is None  # the teacher: train mode, no autograd
    assert net(x, detail_crop=False).box is None


def ce_naive(logits, labels, weight=None):
    """Mean over all pixels of weight * -log softmax(logits)[label], an ignored pixel 0."""
    b, _, h, w = logits.shape
    total = 0.0
    for n in range(b):
        for i in range(h):
            for j in range(w):
                c = int(labels[n, i, j])
                if c == 255:
                    continue
                lp = logits[n, :, i, j] - torch.logsumexp(logits[n, :, i, j], 0)
                total += -float(lp[c]) * (1.0 if weight is None else float(weight[n, i, j]))
    return total / (b * h * w)


def test_loss_is_0_9_fused_and_0_1_detail_on_the_cropped_labels_and_weights():
    g = torch.Generator().manual_seed(2)
    fused = torch.randn(1, 3, 8, 12, generator=g)  # at label resolution already
    detail = torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (1, 8, 12), generator=g)
    labels[0, 0, :5] = 255
    weight = torch.rand(1, 8, 12, generator=g)
    box = (2, 6, 4, 8)
    out = HRDAOutput(fused, None, None, None, detail, box, 0.1)
    want = 0.9 * ce_naive(fused, labels, weight) + 0.1 * ce_naive(
        detail, labels[:, 2:6, 4:8], weight[:, 2:6, 4:8])
    got = segmentation_loss(out, labels, weight, align_corners=False)
    assert abs(float(got) - want) < 1e-5
    got_all = segmentation_loss(out, labels, reduction="all", align_corners=False)
    assert abs(float(got_all) - (0.9 * ce_naive(fused, labels)
                                 + 0.1 * ce_naive(detail, labels[:, 2:6, 4:8]))) < 1e-5


def test_attention_trains_with_the_head_and_the_config_builds_it():
    net = tiny()
    groups = net.param_groups(6e-5)
    ids = {id(p) for p in groups[-1]["params"]}
    assert all(id(p) in ids for p in net.attention.parameters())
    assert groups[-1]["lr"] == pytest.approx(6e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    cfg = load_config("minicity", ["model.arch=mit_b0", "loss.aux=0", "model.hrda.enabled=true",
                                   "model.hrda.detail_crop=48,48", "model.hrda.window=null"])
    assert isinstance(build_model(cfg.model, 19), HRDASegmenter)
    with pytest.raises(ConfigError, match="model.hrda.detail_crop"):
        load_config("minicity", ["model.arch=mit_b0", "loss.aux=0", "model.hrda.enabled=true",
                                 "model.hrda.detail_crop=4000,48"])
    with pytest.raises(ConfigError, match="model.hrda.enabled"):
        load_config("minicity", ["model.hrda.enabled=true"])


def test_ours_on_mic_hrda_trains_resumes_and_evaluates(tmp_path, capsys):
    """MiT-B0 in HRDA's wrapper on generated GTA5 and Cityscapes trees, ours + MIC with the
    feature distance from a generated MiT file, shrunk to seconds: every term is finite, a
    resumed run finishes, and the evaluation slides outer windows."""
    from cosalign.cli import main
    from cosalign.engine.logger import read_metrics
    from cosalign.models.mit import MiT
    from tests.conftest import TEST_DEVICE
    from tests.trees import make_cityscapes, make_gta5

    gta = make_gta5(tmp_path / "gta5", n=4, size=(128, 72), odd_one=False)
    cs = tmp_path / "cityscapes"
    make_cityscapes(cs, "train", size=(128, 64))
    make_cityscapes(cs, "val", size=(128, 64))
    torch.manual_seed(0)
    torch.save(MiT("b0").state_dict(), tmp_path / "mit_b0.pth")
    # outer crops of 64 (a context of 32: the MiT-B0's smallest whole input), detail 32
    args = ["train", "--config", "gta5_to_cityscapes_daformer", "--method", "ours_mic",
            "--out", str(tmp_path / "run"), "--quiet", "--set",
            f"data.source.root={gta}", f"data.target.root={cs}", f"data.val.root={cs}",
            "model.arch=mit_b0", "model.embed=32", f"model.weights={tmp_path / 'mit_b0.pth'}",
            "model.hrda.enabled=true", "model.hrda.detail_crop=32,32",
            "model.hrda.attention_embed=16", "model.hrda.window=64,64",
            "data.source.size=[128, 72]", "data.source.crop=[64, 64]",
            "data.target.size=[128, 64]", "data.target.crop=[64, 64]",
            "data.val.size=[128, 64]", "data.workers=0", "optim.warmup_iters=1",
            "optim.schedule_iters=4", "train.log_every=1", "train.eval_every=0",
            "train.checkpoint_every=2", "selftrain.mask_patch=8", "data.rcs_min_pixels=20",
            "dictionary.capacity=8", "dictionary.per_image=4", "align.tau=0.0",
            "data.target.margins=2,8,4,4", f"train.device={TEST_DEVICE}"]
    assert main([*args, "train.iters=2"]) == 0, capsys.readouterr()
    assert main([*args, "train.iters=4"]) == 0, capsys.readouterr()
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    for key in ("seg", "st", "mic", "fd", "cos"):
        assert all(math.isfinite(r[key]) for r in rows), key
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert evals and math.isfinite(evals[-1]["miou"]["cityscapes19"])


def test_pseudo_label_margins_are_cut_and_flipped_with_the_image(tmp_path):
    """HRDA's valid_pseudo_mask: margins (top 3, bottom 10, left 4, right 5) of the resized
    image, then the crop and flip the image gets, drawn as before (the same image)."""
    import dataclasses

    from cosalign.config import Config
    from cosalign.data import build_dataset
    from tests.trees import make_cityscapes

    make_cityscapes(tmp_path / "cs", "train", size=(64, 32))
    cfg = Config()
    dom = dataclasses.replace(cfg.data.target, dataset="cityscapes", root=str(tmp_path / "cs"),
                              size=(64, 32), crop=(24, 20), flip=True)
    plain = build_dataset(dom, cfg.data, train=True, labels=False)
    cut = build_dataset(dataclasses.replace(dom, margins=(3, 10, 4, 5)), cfg.data, train=True,
                        labels=False)
    flips = set()
    for seed in range(12):
        a, b = plain[(0, seed)], cut[(0, seed)]
        assert torch.equal(a["image"], b["image"]) and "valid" not in a
        rng = np.random.default_rng(seed)  # JointTransform's draws: crop origin, then flip
        y0, x0 = int(rng.integers(0, 32 - 20 + 1)), int(rng.integers(0, 64 - 24 + 1))
        flip = rng.random() < 0.5
        want = np.zeros((32, 64), bool)
        want[3:22, 4:59] = True
        want = want[y0:y0 + 20, x0:x0 + 24]
        want = want[:, ::-1] if flip else want
        assert torch.equal(b["valid"], torch.from_numpy(want.copy()))
        flips.add(flip)
    assert flips == {True, False}
