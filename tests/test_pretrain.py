"""The pretraining stage: its set, its command and cache, and the weights file it ships."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosalign.cli import main
from cosalign.minicity import minicity_config
from cosalign.minicity.pretrain import PretrainSpec, bundled_is_current, read_key
from cosalign.minicity.pretrain_mit import MiTPretrainSpec
from cosalign.minicity.randomized import MATERIALS, MIN_EXPOSURE, random_style, render_one
from cosalign.minicity.render import render
from cosalign.minicity.scene import CAR, PERSON, SKY, VEGETATION, sample_scene
from cosalign.models import build_model
from cosalign.models.transformer import MiTSegmenter
from cosalign.models.weights import BUNDLED, WeightsError, load_weights


def test_random_styles_never_look_like_a_target():
    rng = np.random.default_rng(0)
    styles = [random_style(rng) for _ in range(300)]
    assert all(s.texture_set == "noise" and s.fog == 0 and not s.ego_vehicle
               and s.exposure >= MIN_EXPOSURE and s.vignette == 0 for s in styles)
    # the palettes really are random: every material's colour varies across draws
    colours = np.array([[c for _, c in s.palette] for s in styles])  # (300, materials, 3)
    assert colours.std(0).min() > 30


def test_material_labels_agree_with_the_scene_classes():
    """Each material falls inside exactly one Cityscapes class of the same scene (so the labels
    are drawn from the scene, pixel for pixel), and sky is what nothing covers."""
    expected = {"sky": {SKY}, "trunk": {VEGETATION}, "foliage": {VEGETATION},
                "car_body": {CAR}, "car_window": {CAR}, "wheel": {CAR},
                "cloth": {PERSON}, "skin": {PERSON}}
    seen = set()
    for i in range(6):
        image, material = render_one((0, i, 96, 54))
        rng = np.random.default_rng([0, 3, i])
        cam, surfaces = sample_scene(rng, 96, 54)
        image2, label = render(cam, surfaces, random_style(rng), rng)
        np.testing.assert_array_equal(image, image2)  # a deterministic function of (seed, i)
        assert image.shape == (54, 96, 3) and material.shape == (54, 96)
        for m, name in enumerate(MATERIALS):
            classes = set(np.unique(label[material == m]).tolist())
            assert len(classes) <= 1, (name, classes)
            if classes and name in expected:
                assert classes == expected[name], (name, classes)
            seen |= {name} if classes else set()
    assert {"sky", "road", "wall", "car_body"} <= seen


def test_pretrain_command_writes_caches_and_loads(tmp_path, capsys):
    out = tmp_path / "pt"
    args = ["pretrain", "--out", str(out), "--images", "12", "--iters", "3", "--batch-size", "2",
            "--workers", "1", "--quiet"]
    assert main(args) == 0
    weights = out / "backbone.pt"
    stamp = weights.stat().st_mtime_ns
    assert read_key(weights) == PretrainSpec(images=12, iters=3, batch_size=2).key()
    assert main(args) == 0  # cached: the same spec and code do not train again
    out = capsys.readouterr().out
    assert "already up to date" in out
    assert "emulates" not in out  # fp32 on every CPU: no emulated bf16 to warn of
    assert weights.stat().st_mtime_ns == stamp

    model = build_model(minicity_config("data/minicity").model, 19)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    report = load_weights(model, weights)
    saved = torch.load(weights, weights_only=True)["model"]
    assert report.kind == "cosalign pretrained backbone"
    assert report.loaded == len(saved) and all(k.startswith("backbone.") for k in saved)
    own = model.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    for k, v in head.items():  # the heads start from scratch, as with ImageNet weights
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    assert any(k.startswith("head.") for k in report.missing)


def test_pretrain_mit_writes_caches_and_loads_into_a_transformer_with_another_head(tmp_path,
                                                                                     capsys):
    out = tmp_path / "pt"
    args = ["pretrain", "--arch", "mit_b0", "--embed", "16", "--out", str(out), "--images", "12",
            "--iters", "3", "--batch-size", "2", "--workers", "1", "--quiet"]
    assert main(args) == 0
    weights = out / "backbone.pt"
    spec = MiTPretrainSpec(images=12, iters=3, batch_size=2, embed=16)
    assert read_key(weights) == spec.key() != PretrainSpec(images=12, iters=3,
                                                           batch_size=2).key()
    assert main(args) == 0  # cached
    printed = capsys.readouterr().out
    assert "already up to date" in printed and "model.arch=mit_b0" in printed

    saved = torch.load(weights, weights_only=True)["model"]
    torch.manual_seed(0)  # the pretraining's own seed: its network before the first step
    fresh = MiTSegmenter(len(MATERIALS), "b0", "daformer", 16).state_dict()
    assert set(saved) == {k for k in fresh if k.startswith("backbone.")}
    # AdamW moved every trained weight of the encoder in 3 steps (the first at the warm-up's
    # 1e-6 x lr, then up the ramp)
    moved = [k for k, v in saved.items() if v.is_floating_point() and not torch.equal(v, fresh[k])]
    assert len(moved) == sum(v.is_floating_point() for v in saved.values())

    # MiniCity's transformer loads the encoder, whatever its head's width; the head stays as built
    model = build_model(minicity_config("data/minicity", ["model.arch=mit_b0", "model.embed=32",
                                                          "loss.aux=0"]).model, 19)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    report = load_weights(model, weights)
    assert report.kind == "cosalign pretrained backbone" and report.loaded == len(saved)
    own = model.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    for k, v in head.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0)
    with pytest.raises(WeightsError, match="backbone.patch_embed1.proj.weight has shape"):
        load_weights(build_model(minicity_config("data/minicity", [
            "model.arch=mit_b1", "loss.aux=0"]).model, 19), weights)


@pytest.mark.skipif(not BUNDLED["minicity_pretrained"].is_file(), reason="no bundled weights")
def test_bundled_weights_are_made_by_todays_code_and_fit_the_preset():
    """The shipped file's key is what `cosalign pretrain` with defaults makes today: edit the
    scene, rendering, set, model or pretraining code and this fails until the file is remade."""
    assert bundled_is_current(), (
        "src/cosalign/weights/minicity_pretrained.pt is out of date: run `cosalign pretrain` "
        "and copy data/pretrain/backbone.pt over it")
    assert BUNDLED["minicity_pretrained"].stat().st_size <= 5 * 2**20
    model = build_model(minicity_config("data/minicity").model, 19)
    assert load_weights(model, "minicity_pretrained").loaded > 0
