"""Checkpoints of DAFormer, HRDA and MIC (mmseg's layout) read into cosalign's networks.

The files are made here with the names and shapes of mmseg's modules as DAFormer's and HRDA's
code builds them (``embed_layers.{i}.proj`` a Linear, ``fuse_layer.aspp_modules`` of mmcv
ConvModules ``conv`` + ``bn``, the depthwise-separable ones ``depthwise_conv`` and
``pointwise_conv``, ``bottleneck``, ``conv_seg``; HRDA's ``decode_head.head`` and
``decode_head.scale_attention`` with a 1x1 ConvModule ``fuse_layer``), and their heads'
outputs computed from those tensors by a forward written here from DAFormer's definition."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from cosalign.data.classes import load_class_set
from cosalign.engine.checkpoint import CheckpointError, load_trained
from cosalign.models import HRDASegmenter
from cosalign.models.weights import WeightsError, load_weights

B0 = (32, 64, 160, 256)
E, K = 16, 19
NAMES = list(load_class_set("cityscapes").names)


def conv_module(s: dict, prefix: str, cin: int, cout: int, k: int, g, groups: int = 1):
    s[prefix + "conv.weight"] = torch.randn(cout, cin // groups, k, k, generator=g) * 0.2
    s[prefix + "bn.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
    s[prefix + "bn.bias"] = 0.1 * torch.randn(cout, generator=g)
    s[prefix + "bn.running_mean"] = 0.1 * torch.randn(cout, generator=g)
    s[prefix + "bn.running_var"] = 1 + torch.rand(cout, generator=g)
    s[prefix + "bn.num_batches_tracked"] = torch.tensor(7)


def mmseg_head(prefix: str, g, attention: bool = False, classes: int = K) -> dict:
    """A DAFormerHead's tensors as mmseg names them (``attention``: HRDA's scale attention,
    its fusion one 1x1 ConvModule)."""
    s = {}
    for i, c in enumerate(B0):
        s[f"{prefix}embed_layers.{i}.proj.weight"] = torch.randn(E, c, generator=g) * 0.1
        s[f"{prefix}embed_layers.{i}.proj.bias"] = torch.randn(E, generator=g) * 0.1
    if attention:
        conv_module(s, f"{prefix}fuse_layer.", 4 * E, E, 1, g)
    else:
        conv_module(s, f"{prefix}fuse_layer.aspp_modules.0.", 4 * E, E, 1, g)
        for i in (1, 2, 3):
            p = f"{prefix}fuse_layer.aspp_modules.{i}."
            conv_module(s, p + "depthwise_conv.", 4 * E, 4 * E, 3, g, groups=4 * E)
            conv_module(s, p + "pointwise_conv.", 4 * E, E, 1, g)
        conv_module(s, f"{prefix}fuse_layer.bottleneck.", 4 * E, E, 3, g)
    s[prefix + "conv_seg.weight"] = torch.randn(classes, E, 1, 1, generator=g) * 0.1
    s[prefix + "conv_seg.bias"] = torch.randn(classes, generator=g) * 0.1
    return s


def cbr(s: dict, prefix: str, x, padding=0, dilation=1, groups=1):
    x = F.conv2d(x, s[prefix + "conv.weight"], None, 1, padding, dilation, groups)
    x = F.batch_norm(x, s[prefix + "bn.running_mean"], s[prefix + "bn.running_var"],
                     s[prefix + "bn.weight"], s[prefix + "bn.bias"], False, 0.0, 1e-5)
    return F.relu(x)


def naive_head(s: dict, prefix: str, maps, attention: bool = False):
    """DAFormerHead.forward in eval mode from mmseg-named tensors: tokens through each
    Linear, back to maps, resized to stride 4, concatenated; the separable ASPP (dilations
    1, 6, 12, 18) and the 3x3 bottleneck (or one 1x1 ConvModule); conv_seg."""
    size = maps[0].shape[-2:]
    embedded = []
    for i, m in enumerate(maps):
        n, _, h, w = m.shape
        t = F.linear(m.flatten(2).transpose(1, 2), s[f"{prefix}embed_layers.{i}.proj.weight"],
                     s[f"{prefix}embed_layers.{i}.proj.bias"])
        t = t.permute(0, 2, 1).reshape(n, -1, h, w)
        if t.shape[-2:] != size:
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        embedded.append(t)
    x = torch.cat(embedded, 1)
    if attention:
        x = cbr(s, prefix + "fuse_layer.", x)
    else:
        outs = [cbr(s, prefix + "fuse_layer.aspp_modules.0.", x)]
        for i, d in zip((1, 2, 3), (6, 12, 18)):
            p = f"{prefix}fuse_layer.aspp_modules.{i}."
            y = cbr(s, p + "depthwise_conv.", x, padding=d, dilation=d, groups=x.shape[1])
            outs.append(cbr(s, p + "pointwise_conv.", y))
        x = cbr(s, prefix + "fuse_layer.bottleneck.", torch.cat(outs, 1), padding=1)
    return F.conv2d(x, s[prefix + "conv_seg.weight"], s[prefix + "conv_seg.bias"])


def mit_b0_tensors(g) -> dict:
    """The MiT-B0's tensors under SegFormer's names (ours keeps them): a fresh encoder's shapes
    with new values."""
    from cosalign.models.mit import MiT

    return {k: torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v
            for k, v in MiT("b0").state_dict().items()}


def make_checkpoint(path, hrda: bool, classes=NAMES, parts=("model", "ema_model")) -> dict:
    g = torch.Generator().manual_seed(3)
    state = {}
    for part in parts:
        state.update({f"{part}.backbone.{k}": v for k, v in mit_b0_tensors(g).items()})
        if hrda:
            state.update(mmseg_head(f"{part}.decode_head.head.", g))
            state.update(mmseg_head(f"{part}.decode_head.scale_attention.", g, attention=True))
        else:
            state.update(mmseg_head(f"{part}.decode_head.", g))
    torch.save({"meta": {"CLASSES": tuple(classes), "PALETTE": [[0, 0, 0]] * K,
                         "config": "model = dict(...)", "iter": 40000},
                "state_dict": state}, path)
    return state


def preset(tmp_path, hrda: bool):
    cfg = {"model": {"arch": "mit_b0", "head": "daformer", "embed": E, "align_corners": False,
                     "hrda": {"enabled": hrda, "attention_embed": E, "detail_crop": [32, 32],
                              "window": [64, 64]}},
           "loss": {"aux": 0.0}}
    path = tmp_path / ("hrda.yaml" if hrda else "daformer.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_a_daformer_checkpoint_gives_the_heads_logits(tmp_path, which):
    file = tmp_path / "latest.pth"
    state = make_checkpoint(file, hrda=False)
    model, cfg, _ = load_trained(file, which=which, config=preset(tmp_path, False))
    part = {"student": "model.", "teacher": "ema_model."}[which]
    for k, v in sub(state, part + "backbone.").items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.backbone(x)
        want = naive_head(state, part + "decode_head.", maps)
        assert torch.allclose(model(x).logits, want, atol=1e-5)


def test_an_hrda_checkpoint_gives_both_heads_logits(tmp_path):
    file = tmp_path / "iter_40000_relevant.pth"
    state = make_checkpoint(file, hrda=True, parts=("model",))
    model, _, _ = load_trained(file, config=preset(tmp_path, True))
    assert isinstance(model, HRDASegmenter)
    maps = [torch.randn(2, c, 16 // 2 ** i, 24 // 2 ** i) for i, c in enumerate(B0)]
    with torch.no_grad():
        assert torch.allclose(model.head(maps)[0],
                              naive_head(state, "model.decode_head.head.", maps), atol=1e-5)
        assert torch.allclose(model.attention(maps)[0], naive_head(
            state, "model.decode_head.scale_attention.", maps, attention=True), atol=1e-5)
    with pytest.raises(CheckpointError, match="no teacher"):
        load_trained(file, which="teacher", config=preset(tmp_path, True))


def test_the_files_class_order_is_followed(tmp_path):
    file = tmp_path / "latest.pth"
    shuffled = NAMES[::-1]
    state = make_checkpoint(file, hrda=False, classes=shuffled, parts=("model",))
    model, _, _ = load_trained(file, config=preset(tmp_path, False))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        theirs = naive_head(state, "model.decode_head.", model.backbone(x))
        ours = model(x).logits
    for c, name in enumerate(NAMES):  # our class c is the file's row shuffled.index(name)
        assert torch.allclose(ours[:, c], theirs[:, shuffled.index(name)], atol=1e-5)


def test_wrong_network_and_missing_config_are_named(tmp_path):
    file = tmp_path / "hrda.pth"
    make_checkpoint(file, hrda=True, parts=("model",))
    with pytest.raises(CheckpointError, match="--config PRESET"):
        load_trained(file)
    with pytest.raises(CheckpointError, match="unexpected 16.*model.hrda.enabled"):
        load_trained(file, config=preset(tmp_path, False))


def test_training_starts_from_a_published_checkpoint(tmp_path):
    from cosalign.config import load_config
    from cosalign.models import build_model

    file = tmp_path / "mic.pth"
    state = make_checkpoint(file, hrda=True)
    cfg = load_config(preset(tmp_path, True))
    for teacher, part in ((False, "model."), (True, "ema_model.")):
        model = build_model(cfg.model, K)
        report = load_weights(model, file, teacher=teacher, classes=NAMES)
        assert report.loaded == len(model.state_dict()) and not report.missing
        assert torch.equal(model.state_dict()["head.classifier.weight"],
                           state[part + "decode_head.head.conv_seg.weight"])
        assert torch.equal(model.state_dict()["attention.embed.0.weight"][:, :, 0, 0],
                           state[part + "decode_head.scale_attention.embed_layers.0.proj.weight"])
    with pytest.raises(WeightsError, match="does not fit"):
        load_weights(build_model(load_config(preset(tmp_path, False)).model, K), file)


def test_eval_and_predict_read_a_published_checkpoint(tmp_path, capsys):
    """`cosalign eval --checkpoint FILE --config PRESET` and `cosalign predict` on an HRDA file:
    the preset gives the network and the data; without --config, one line says what to add."""
    from cosalign.cli import main
    from tests.trees import make_cityscapes

    cs = tmp_path / "cs"
    make_cityscapes(cs, "val", per_city=1, size=(128, 64))  # two images
    file = tmp_path / "hrda.pth"
    make_checkpoint(file, hrda=True, parts=("model",))
    cfg = yaml.safe_load(open(preset(tmp_path, True)))
    cfg["data"] = {"val": {"dataset": "cityscapes", "root": str(cs), "split": "val",
                           "size": [128, 64]}, "normalization": "imagenet"}
    (tmp_path / "hrda.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--checkpoint", str(file), "--config", str(tmp_path / "hrda.yaml"), "--quiet",
            "--device", "cpu"]
    assert main(["eval", *args]) == 0
    assert (tmp_path / "eval_val.json").is_file()
    assert main(["predict", *args, str(cs / "leftImg8bit"), "--out", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").rglob("*_trainIds.png"))) == 2
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(file), "--quiet"]) == 2
    assert "--config PRESET" in capsys.readouterr().err
