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
from cosalign.models.hrda import crop_box, cut, window_boxes


def tiny(classes: int = 3, **kw) -> HRDASegmenter:
    torch.manual_seed(0)
    kw = {"detail_crop": (32, 32), **kw}
    return HRDASegmenter(MiTSegmenter(classes, "b0", "daformer", 16), attention_embed=8, **kw)


def deterministic(net: HRDASegmenter) -> None:
    """No dropout, no stochastic depth: two training passes compute the same."""
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout2d) or type(m).__name__ == "DropPath":
            m.eval()


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


def naive_fuse(lr, att, hr, box, o=4):
    """HRDA's fusion, pixel by pixel, at output stride o: the attention zeroed outside
    int(box / 2o) (HRDA's ``scale_box`` truncates), the detail logits pasted at box / o into
    zeros."""
    a = att.clone()
    if box is not None:
        y1, y2, x1, x2 = box
        for i in range(a.shape[-2]):
            for j in range(a.shape[-1]):
                if not (int(y1 / (2 * o)) <= i < int(y2 / (2 * o))
                        and int(x1 / (2 * o)) <= j < int(x2 / (2 * o))):
                    a[:, :, i, j] = 0
        full = torch.zeros(*hr.shape[:2], 2 * lr.shape[-2], 2 * lr.shape[-1], dtype=hr.dtype)
        for i in range(hr.shape[-2]):
            for j in range(hr.shape[-1]):
                full[:, :, y1 // o + i, x1 // o + j] = hr[:, :, i, j]
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
    deterministic(net)
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
    with pytest.raises(ConfigError, match="loss.aux: model.hrda.enabled"):
        load_config("minicity", ["model.hrda.enabled=true"])  # DeepLab-v2's aux head


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


def test_cut_takes_the_box_of_a_map_at_any_stride():
    t = torch.arange(24.0).reshape(1, 1, 4, 6)  # a stride-2 map of an 8x12 input
    assert torch.equal(cut(t, (2, 6, 4, 8), (8, 12)), torch.tensor([[[[8.0, 9.0],
                                                                       [14.0, 15.0]]]]))
    assert cut(t, None, (8, 12)) is t
    with pytest.raises(ValueError, match="cannot cut box"):
        cut(t, (1, 5, 4, 8), (8, 12))  # an odd corner on a stride-2 map


def test_detail_features_come_from_the_detail_pass_and_name_their_box():
    x = torch.randn(2, 3, 64, 96)
    context, detail = tiny(), tiny(align_features="detail")
    detail.load_state_dict(context.state_dict())
    deterministic(context)
    deterministic(detail)
    np.random.seed(5)
    out_c = context(x)
    np.random.seed(5)
    out_d = detail(x)
    y1, y2, x1, x2 = out_d.box
    assert out_c.feature_box is None and out_d.feature_box == out_d.box
    _, want = detail.head(detail.backbone(x[..., y1:y2, x1:x2]))
    assert out_d.features.shape == (2, 16, 8, 8)
    assert torch.allclose(out_d.features, want, atol=1e-5)
    assert torch.allclose(out_d.logits, out_c.logits, atol=1e-5)  # the same network otherwise
    with torch.no_grad():  # the teacher's pass: the context's features, no box
        assert detail(x).feature_box is None
    with pytest.raises(ValueError, match="align_features"):
        tiny(align_features="both")


@pytest.mark.parametrize("on", ["clean", "mixed"])
def test_the_alignment_cuts_pseudo_labels_and_the_mix_to_the_feature_box(on):
    """Detail features (stride 4 of a 16x16 box at (8, 16) of a 32x48 input): each position
    (i, j) reads the pseudo-label of the stride-4 cell (2 + i, 4 + j) and, for the mixed batch,
    the mask at input pixel (8 + 4 i, 16 + 4 j); the loss is the cosine term of the kept
    positions alone."""
    from cosalign.losses import cosine_alignment
    from cosalign.methods.alignment import CosineAlignment
    from cosalign.methods.base import Step

    cfg = load_config("minicity", ["loss.st=1", "loss.cos=1", "align.class_restrict=pseudo",
                                   f"selftrain.align_on={on}", "selftrain.align_pseudo=teacher",
                                   "align.reference=batch", "align.tau=0.0"])
    g = torch.Generator().manual_seed(3)
    k, c, box = 3, 5, (8, 24, 16, 32)
    x_t = torch.randn(2, 3, 32, 48, generator=g)
    f_t = torch.randn(2, c, 4, 4, generator=g)
    teacher = torch.randn(2, k, 8, 12, generator=g)  # the teacher's logits at stride 4
    mixed_target = torch.rand(2, 32, 48, generator=g) > 0.4
    f_s = torch.randn(2, c, 4, 4, generator=g)
    y_s = torch.randint(0, k, (2, 32, 48), generator=g)
    y_f = torch.randint(0, k, (2, 16, 16), generator=g)
    out = HRDAOutput(teacher, None, f_t, None, feature_box=box)
    step = Step(it=0, model=None, x_s=None, y_s=y_s, x_t=x_t, f_s=f_s, pred_s=None,
                pred_s_aux=None, dictionary=None, out_t=out, mixed=out,
                mixed_target=mixed_target, teacher_logits=teacher, y_f=y_f)
    got = CosineAlignment(cfg, k, torch.device("cpu")).losses(step)["cos"]

    from cosalign.losses.dictionary import labelled_features
    ref, ref_cls = labelled_features(f_s, y_f)  # the source's labels under its features
    feats, pseudo = [], []
    for n in range(2):
        for i in range(4):
            for j in range(4):
                if on == "mixed" and not mixed_target[n, 8 + 4 * i, 16 + 4 * j]:
                    continue
                feats.append(f_t[n, :, i, j])
                pseudo.append(int(teacher[n, :, 2 + i, 4 + j].argmax()))
    want = cosine_alignment(torch.stack(feats, 1)[None, :, None], ref, tau=0.0,
                            ref_cls=ref_cls, pseudo=torch.tensor(pseudo)[None, None])
    assert float(got) == pytest.approx(float(want.loss), rel=1e-6)


def test_one_step_fills_the_dictionary_from_the_detail_box():
    """The source's detail features enter the dictionary with the labels cut to their box."""
    from cosalign.engine.train import train_step
    from cosalign.losses import ClassFeatureDictionary
    from cosalign.methods import build_terms

    cfg = load_config("minicity", ["model.arch=mit_b0", "loss.aux=0", "loss.cos=1",
                                   "dictionary.enqueue=mean"])  # the terms only
    net = tiny(align_features="detail")
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(o))
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 3, (2, 16, 16), generator=g)
    y_s = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (2, 64, 64), 4x4 blocks
    batch_s = {"image": torch.randn(2, 3, 64, 64, generator=g), "label": y_s}
    batch_t = {"image": torch.randn(2, 3, 64, 64, generator=g)}
    d = ClassFeatureDictionary(3, 4, net.feature_dim, enqueue="mean")
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    np.random.seed(0)
    train_step(net, batch_s, batch_t, 5, build_terms(cfg, 3, torch.device("cpu"), net), d, opt,
               align_corners=False)
    out_s = seen[0]
    y1, y2, x1, x2 = out_s.feature_box
    cells = blocks[:, y1 // 4:y2 // 4, x1 // 4:x2 // 4]  # the detail map's own grid
    for cls in range(3):
        want = [F.normalize(out_s.features[n].detach().permute(1, 2, 0)[cells[n] == cls]
                            .mean(0), dim=0) for n in range(2) if (cells[n] == cls).any()]
        have = d.entries[cls, :int(d.filled[cls])]
        assert torch.allclose(have, torch.stack(want), atol=1e-5), cls


def tiny_deeplab(classes: int = 3, **kw) -> HRDASegmenter:
    from cosalign.models import DeepLabV2

    torch.manual_seed(0)
    kw = {"detail_crop": (32, 32), **kw}
    return HRDASegmenter(DeepLabV2(classes, 18, 0.125, rates=(6, 12), bn="train"), **kw)


def test_deeplab_fusion_truncates_the_box_on_the_context_grid_as_hrda():
    """DeepLab-v2 at output stride 8: the context's cells are 16 pixels, the box's corners
    multiples of 8 (HRDA's crop_coord_divisible), so the mask's bounds are truncated."""
    g = torch.Generator().manual_seed(4)
    net = tiny_deeplab()
    box = (8, 40, 24, 56)  # a 32 x 32 box of a 48 x 64 input
    lr = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)  # stride 16
    att = torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64)
    hr = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)  # stride 8
    assert torch.allclose(net.fuse(lr, att, hr, box), naive_fuse(lr, att, hr, box, o=8),
                          atol=1e-12)


def test_deeplab_in_hrda_cuts_ceil_modes_extra_cell_and_fuses_its_two_passes():
    net = tiny_deeplab(align_features="detail").train()
    x = torch.randn(2, 3, 64, 96)
    np.random.seed(3)
    out = net(x)
    np.random.seed(3)
    box = crop_box(64, 96, (32, 32), 8)
    y1, y2, x1, x2 = box
    assert out.logits.shape == (2, 3, 8, 12) and out.detail.shape == (2, 3, 4, 4)
    # each pass alone: ceil_mode gives 64 / 16 + 1 rows at the context; the first 4 are kept
    c3, _, c4 = net.backbone(F.avg_pool2d(x, 2))
    assert c4.shape[-2:] == (5, 7)
    lr = net.head(c4[..., :4, :6])
    att = torch.sigmoid(net.attention(c4[..., :4, :6]))
    d4 = net.backbone(x[..., y1:y2, x1:x2])[2][..., :4, :4]
    assert torch.allclose(out.detail, net.head(d4), atol=1e-5)
    assert torch.allclose(out.logits, naive_fuse(lr, att, net.head(d4), box, o=8), atol=1e-5)
    assert torch.allclose(out.features, d4, atol=1e-5)  # layer4 of the detail crop
    assert out.encoder.shape == (2, c4.shape[1], 4, 6)
    # the attention head: an ASPP classifier with the head's rates, trained with the heads
    groups = net.param_groups(0.01)
    assert {id(p) for p in net.attention.parameters()} <= {id(p) for p in groups[1]["params"]}
    assert [b.dilation for b in net.attention.branches] == [(6, 6), (12, 12)]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    with torch.no_grad():  # the teacher's pass: detail windows of 32 at stride 16 over x
        slid = net.eval()(x).logits
    assert slid.shape == (2, 3, 8, 12)


def test_deeplab_hrda_trains_and_resumes_to_the_straight_run(tiny_config, tmp_path):
    """DACS on DeepLab-v2 in HRDA's wrapper (64x32 crops, 32x16 detail crops): a run stopped
    and resumed ends with the straight run's weights (numpy's box draws are in the
    checkpoint)."""
    from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
    from cosalign.engine.train import train
    from cosalign.methods import apply_method

    cfg = apply_method(tiny_config, "ours_dacs")
    cfg.loss.aux, cfg.train.deterministic = 0.0, True
    cfg.model.hrda.enabled, cfg.model.hrda.window = True, None
    cfg.model.hrda.detail_crop = (32, 16)
    train(cfg, tmp_path / "straight", progress=False)
    assert train(cfg, tmp_path / "split", progress=False, stop_at=3) is None
    train(cfg, tmp_path / "split", progress=False)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / d)[-1])["model"]
            for d in ("straight", "split"))
    assert any(k.startswith("attention.") for k in a) and not any("aux_head" in k for k in a)
    atol = 1e-6 if cfg.train.device == "cpu" else 1e-5
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)
