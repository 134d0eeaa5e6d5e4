"""The transformer network: MiT encoders against the published sizes and naive attention,
SegFormer's and DAFormer's heads, MiT ImageNet files by name, DAFormer's optimizer groups."""

import math

import pytest
import torch
import torch.nn.functional as F

from cosalign.models.fusion_heads import DAFormerHead, SegFormerHead
from cosalign.models.mit import PRESETS, Attention, DropPath, MiT
from cosalign.models.transformer import MiTSegmenter
from cosalign.models.weights import WeightsError, load_weights

# SegFormer's paper (encoder, M parameters) and its model table (encoder + all-MLP head with
# 150 classes, E = 256 for B0/B1 and 768 for B2-B5), both to 0.1 M. The paper's B0 encoder,
# 3.4, is not what its own total gives
# (3.8 - 0.4 for the head); ours is 3.32, and its total 3.75.
ENCODER = {"b1": 13.1, "b2": 24.2, "b3": 44.0, "b4": 60.8, "b5": 81.4}
TOTAL = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


def _count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts_match_the_published_ones(preset):
    with torch.device("meta"):  # counts only: no memory, no initialization
        encoder = MiT(preset)
        head = SegFormerHead(encoder.channels, 150, 256 if preset in ("b0", "b1") else 768)
    if preset in ENCODER:  # to the paper's last digit (ours: 13.15, 24.20, 44.07, ...)
        assert abs(_count(encoder) - ENCODER[preset]) < 0.1
    assert abs(_count(encoder) + _count(head) - TOTAL[preset]) < 0.05


def test_maps_at_strides_4_to_32_and_heads_at_stride_4():
    torch.manual_seed(0)
    net = MiTSegmenter(num_classes=7, preset="b0", head="daformer").eval()
    x = torch.randn(2, 3, 64, 96)
    maps = net.backbone(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6),
                                             (2, 256, 2, 3)]
    out = net(x)
    assert out.logits.shape == (2, 7, 16, 24) and out.features.shape == (2, 256, 16, 24)
    assert out.aux is None and net.feature_dim == 256
    seg = MiTSegmenter(num_classes=7, preset="b0", head="segformer").eval()
    assert seg(x).logits.shape == (2, 7, 16, 24)


@torch.no_grad()
def test_attention_equals_a_naive_computation():
    """Spatial reduction 2 on a 6x4 map: each query of each head against the 3x2 reduced keys,
    by hand."""
    torch.manual_seed(0)
    dim, heads, h, w = 8, 2, 6, 4
    attn = Attention(dim, heads, ratio=2).eval()
    x = torch.randn(1, h * w, dim)
    got = attn(x, h, w)
    reduced = attn.sr(x.transpose(1, 2).reshape(1, dim, h, w)).flatten(2).transpose(1, 2)
    reduced = F.layer_norm(reduced, (dim,), attn.norm.weight, attn.norm.bias, attn.norm.eps)
    assert reduced.shape == (1, 6, dim)
    q = x[0] @ attn.q.weight.T + attn.q.bias
    kv = reduced[0] @ attn.kv.weight.T + attn.kv.bias
    k, v = kv[:, :dim], kv[:, dim:]
    d = dim // heads
    out = torch.zeros(h * w, dim)
    for head in range(heads):
        s = slice(head * d, (head + 1) * d)
        for i in range(h * w):
            scores = torch.tensor([float(q[i, s] @ k[j, s]) / math.sqrt(d)
                                   for j in range(k.shape[0])])
            weights = torch.softmax(scores, 0)
            out[i, s] = sum(weights[j] * v[j, s] for j in range(k.shape[0]))
    expected = out @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(got[0], expected, rtol=1e-4, atol=1e-5)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2)
    drop = DropPath(0.25)
    y = drop(x)
    per_sample = y.flatten(1)
    kept = per_sample[per_sample != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.75))
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped whole or kept whole
    assert abs(float((per_sample[:, 0] == 0).float().mean()) - 0.25) < 0.03
    assert torch.equal(drop.eval()(x), x)
    rates = [b.drop_path.p for i in range(1, 5) for b in getattr(MiT("b0"), f"block{i}")]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.1) < 1e-7 and rates == sorted(rates)


def test_daformer_fusion_is_the_published_structure():
    head = DAFormerHead((32, 64, 160, 256), 19)
    branches = head.fuse.branches
    assert branches[0][0].kernel_size == (1, 1) and branches[0][0].in_channels == 1024
    for b, rate in zip(branches[1:], (6, 12, 18)):
        depthwise, pointwise = b[0][0], b[1][0]
        assert depthwise.dilation == (rate, rate) and depthwise.groups == 1024
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 256
    assert head.fuse.bottleneck[0].kernel_size == (3, 3)
    assert head.fuse.bottleneck[0].in_channels == 4 * 256
    assert isinstance(SegFormerHead((32, 64, 160, 256), 19).fuse[0], torch.nn.Conv2d)


def test_a_mit_imagenet_file_loads_by_name_into_the_encoder(tmp_path, capsys):
    """A file in SegFormer's layout (made here: the names and shapes of mit_b0.pth, random
    values, a 1000-class head), under ``state_dict``: every encoder tensor lands."""
    torch.manual_seed(1)
    source = MiT("b0")
    for p in source.parameters():
        p.data.normal_()
    state = {**source.state_dict(), "head.weight": torch.randn(1000, 256),
             "head.bias": torch.randn(1000)}
    assert "block1.0.mlp.dwconv.dwconv.weight" in state and "block4.1.attn.kv.bias" in state
    assert "block1.0.attn.sr.weight" in state and "block4.0.attn.sr.weight" not in state
    torch.save({"state_dict": state}, tmp_path / "mit_b0.pth")
    net = MiTSegmenter(num_classes=19, preset="b0")
    report = load_weights(net, tmp_path / "mit_b0.pth")
    assert report.kind == "MiT ImageNet (SegFormer) weights"
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert report.loaded == len(source.state_dict()) and not report.unexpected
    assert all(k.startswith("head.") for k in report.missing)  # the decoder starts afresh
    for k, v in source.state_dict().items():
        torch.testing.assert_close(net.backbone.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:for .*a meta parameter in the current model")
def test_a_mit_b5_file_maps_by_name_and_shape(tmp_path, capsys):
    """The file DAFormer's B5 presets start from: SegFormer's names with B5's depths (3, 6, 40,
    3), widths (64, 128, 320, 512) and reduction ratios (8, 4, 2, 1). Written without its
    values (every tensor a broadcast zero, so 82 M parameters take bytes) and loaded into a
    network on the meta device: names and shapes are what is checked."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in MiT("b5").state_dict().items()}
    published = {  # SegFormer's mit_b5.pth
        "patch_embed1.proj.weight": (64, 3, 7, 7), "patch_embed4.proj.weight": (512, 320, 3, 3),
        "block1.0.attn.q.weight": (64, 64), "block1.0.attn.kv.weight": (128, 64),
        "block1.0.attn.sr.weight": (64, 64, 8, 8), "block2.5.attn.sr.weight": (128, 128, 4, 4),
        "block3.39.attn.sr.weight": (320, 320, 2, 2), "block3.39.mlp.fc1.weight": (1280, 320),
        "block3.39.mlp.dwconv.dwconv.weight": (1280, 1, 3, 3), "block4.2.mlp.fc2.weight":
        (512, 2048), "norm4.weight": (512,)}
    for k, shape in published.items():
        assert tuple(shapes[k]) == shape, k
    assert "block3.40.attn.q.weight" not in shapes and "block4.0.attn.sr.weight" not in shapes
    zero = torch.zeros(1)
    state = {k: zero.expand(v) for k, v in shapes.items()}
    state.update({"head.weight": zero.expand(1000, 512), "head.bias": zero.expand(1000)})
    torch.save({"state_dict": state}, tmp_path / "mit_b5.pth")
    assert (tmp_path / "mit_b5.pth").stat().st_size < 2**20
    with torch.device("meta"):
        net = MiTSegmenter(num_classes=19, preset="b5")
    report = load_weights(net, tmp_path / "mit_b5.pth")
    assert report.loaded == len(shapes) and not report.unexpected
    assert all(k.startswith("head.") for k in report.missing)
    bad = {**state, "block3.39.mlp.fc1.weight": zero.expand(1024, 320)}
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"block3\.39\.mlp\.fc1\.weight has shape"):
        load_weights(net, tmp_path / "bad.pth")


def test_daformer_optimizer_groups():
    net = MiTSegmenter(num_classes=19, preset="b0")
    groups = torch.optim.AdamW(net.param_groups(6e-5, head_lr_mult=10.0), lr=6e-5,
                               weight_decay=0.01).param_groups
    names = {p: n for n, p in net.named_parameters()}
    seen = [names[p] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter once
    for g in groups:
        for p in g["params"]:
            n = names[p]
            head = n.startswith("head.")
            assert g["lr"] == pytest.approx(6e-4 if head else 6e-5)
            no_decay = not head and "norm" in n  # LayerNorms of the encoder
            assert g["weight_decay"] == (0.0 if no_decay else 0.01), n
    norms = [n for n in seen if "norm" in n]
    assert "backbone.block1.0.norm1.weight" in norms and "backbone.norm4.bias" in norms
    assert "backbone.patch_embed1.norm.weight" in norms and "backbone.block1.0.attn.norm.bias" \
        in norms


@pytest.mark.parametrize("method", ["ours", "ours_dacs"])
def test_the_transformer_trains_with_adamw_and_resumes_exactly(tiny_config, tmp_path, method):
    """MiT-B0 with DAFormer's head and AdamW, the alignment on its fused features (and on top
    of self-training): finite losses, a run split by a checkpoint equal to the straight one,
    AdamW's moments in the checkpoint, and the norms' weight decay 0 after the resume."""
    import copy

    from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
    from cosalign.engine.logger import read_metrics
    from cosalign.engine.train import train
    from cosalign.methods import apply_method

    cfg = apply_method(copy.deepcopy(tiny_config), method)
    # a 64-wide head: the same structure, a third of the time of DAFormer's 256 on a CPU
    cfg.model.arch, cfg.model.embed, cfg.loss.aux = "mit_b0", 64, 0.0
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adamw", 6e-5, 0.01
    cfg.train.deterministic = True
    results = train(copy.deepcopy(cfg), tmp_path / "straight", progress=False)
    assert 0 <= results["miou"][cfg.data.classes] <= 100
    rows = [r for r in read_metrics(tmp_path / "straight") if r["kind"] == "train"]
    assert rows and all(math.isfinite(r["cos"]) and "seg_aux" not in r for r in rows)
    assert train(copy.deepcopy(cfg), tmp_path / "split", progress=False, stop_at=3) is None
    train(copy.deepcopy(cfg), tmp_path / "split", progress=False)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / n)[-1]) for n in ("straight", "split"))
    atol = 1e-6 if cfg.train.device == "cpu" else 1e-5
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=atol, rtol=0)
    state = b["optimizer"]
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state["state"].values())))
    decay = {n: g["weight_decay"] for g in state["param_groups"]
             for n in (state["param_names"][i] for i in g["params"])}
    assert decay["backbone.block1.0.norm1.weight"] == 0.0
    assert decay["backbone.block1.0.attn.q.weight"] == 0.01


def test_a_transformer_with_an_auxiliary_loss_is_refused(capsys):
    from cosalign.cli import main

    code = main(["train", "--config", "minicity", "--set", "model.arch=mit_b0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "loss.aux: model.arch mit_b0 has no auxiliary head; expected 0, got 0.1" in err


def test_the_daformer_presets_carry_daformers_recipe():
    """The values of DAFormer's gta2cs/syn2cs ..._daformer_mitb5_s0.py configs and their
    _base_ files, entered here by hand from those files."""
    from cosalign.methods import method_config

    for preset, size in (("gta5_to_cityscapes_daformer", (1280, 720)),
                         ("synthia_to_cityscapes_daformer", (1280, 760))):
        base = method_config(preset, [], "source_only")
        cfg = method_config(preset, [], "dacs")
        for c in (base, cfg):
            assert (c.model.arch, c.model.head, c.model.embed) == ("mit_b5", "daformer", 256)
            o = c.optim
            assert (o.name, o.lr, o.weight_decay, o.head_lr_mult) == ("adamw", 6e-5, 0.01, 10)
            assert (o.warmup_iters, o.power, o.schedule_iters, c.train.iters) == (
                1500, 1.0, 40000, 40000)
            assert c.data.batch_size == 2 and c.data.normalization == "imagenet"
            assert tuple(c.data.source.size) == size and tuple(c.data.target.size) == (1024, 512)
            assert tuple(c.data.source.crop) == tuple(c.data.target.crop) == (512, 512)
            assert c.data.source.flip and c.data.target.flip and c.data.source.photometric == 0
            assert c.train.eval_every == 4000 and c.loss.aux == 0
            # mmseg's conventions: keep-ratio resize, the source crop's cat_max_ratio, logits
            # upsampled without corners, the cross-entropy's mean over all pixels
            assert c.data.source.keep_ratio and c.data.target.keep_ratio and c.data.val.keep_ratio
            assert c.data.source.cat_max_ratio == 0.75 and c.data.target.cat_max_ratio == 1
            assert not c.model.align_corners and c.loss.seg_reduction == "all"
        assert base.loss.fd == 0 and base.data.rcs_temperature == 0  # self-training's parts
        st = cfg.selftrain
        assert (st.alpha, st.ema, st.threshold, st.mix) == (0.999, "daformer", 0.968, "batch")
        assert st.ignore_top * 512 == 15 and st.ignore_bottom * 512 == 120
        assert (st.jitter, st.jitter_p, st.blur_p) == (0.2, 0.8, 0.5)
        assert cfg.loss.fd == 0.005 and cfg.data.rcs_temperature == 0.01
        assert (cfg.data.rcs_min_pixels, cfg.data.rcs_min_crop_ratio) == (3000, 0.5)


def test_the_daformer_preset_trains_mic_from_a_mit_file(tmp_path, capsys):
    """`cosalign train --config gta5_to_cityscapes_daformer --method mic` on generated GTA5
    and Cityscapes trees from a generated MiT file (B0's names and shapes; B5's file maps the
    same way, test above), shrunk to seconds: the weights load, the feature distance, rare
    class sampling and the masked consistency run, the run finishes."""
    from cosalign.cli import main
    from tests.conftest import TEST_DEVICE
    from tests.trees import make_cityscapes, make_gta5

    gta = make_gta5(tmp_path / "gta5", n=4, size=(64, 36), odd_one=False)
    cs = tmp_path / "cityscapes"
    make_cityscapes(cs, "train", size=(64, 32))
    make_cityscapes(cs, "val", size=(64, 32))
    torch.manual_seed(0)
    torch.save({"state_dict": {**MiT("b0").state_dict(), "head.weight": torch.zeros(1000, 256),
                               "head.bias": torch.zeros(1000)}}, tmp_path / "mit_b0.pth")
    code = main(["train", "--config", "gta5_to_cityscapes_daformer", "--method", "mic",
                 "--out", str(tmp_path / "run"), "--quiet", "--set",
                 f"data.source.root={gta}", f"data.target.root={cs}", f"data.val.root={cs}",
                 "model.arch=mit_b0", "model.embed=64", f"model.weights={tmp_path / 'mit_b0.pth'}",
                 "data.source.size=[64, 36]", "data.source.crop=[32, 32]",
                 "data.target.size=[64, 32]", "data.target.crop=[32, 32]",
                 "data.val.size=[64, 32]", "data.workers=0", "train.iters=3",
                 "optim.warmup_iters=1", "optim.schedule_iters=3", "train.log_every=1",
                 "train.eval_every=0", "train.checkpoint_every=3",
                 "data.rcs_min_pixels=20",  # DAFormer's 3000 is more than a tiny label holds
                 f"train.device={TEST_DEVICE}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MiT ImageNet (SegFormer) weights: loaded" in out
    from cosalign.engine.logger import read_metrics

    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(rows) == 3
    assert all(math.isfinite(r["fd"]) and math.isfinite(r["mic"]) and "st" in r for r in rows)
