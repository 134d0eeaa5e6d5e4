"""MIC's masked image consistency: the patch mask, the weight and the loss against naive code;
``mic`` and ``ours_mic`` train and resume exactly; the term needs self-training."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from cosalign.config import ConfigError, load_config
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.logger import read_metrics
from cosalign.engine.train import train
from cosalign.methods import apply_method
from cosalign.methods.base import Step
from cosalign.methods.masked_consistency import MaskedConsistency, patch_mask


def test_patch_mask_equals_a_loop_over_patches():
    torch.manual_seed(3)
    mask = patch_mask(2, 10, 13, 4, 0.7, torch.device("cpu"))
    torch.manual_seed(3)
    u = torch.rand(2, 1, 3, 4)  # ceil(10 / 4) x ceil(13 / 4) patches
    assert mask.shape == (2, 1, 10, 13)
    for b in range(2):
        for i in range(10):
            for j in range(13):
                assert mask[b, 0, i, j] == float(u[b, 0, i // 4, j // 4] > 0.7)
    torch.manual_seed(0)
    many = patch_mask(64, 64, 64, 8, 0.7, torch.device("cpu"))
    assert abs(float(many.mean()) - 0.3) < 0.02  # 70% of the patches dropped


class Pixelwise(torch.nn.Module):
    """A 1x1 convolution: logits at input resolution, so the naive loss reads them directly."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, k, 1)

    def forward(self, x):
        return SimpleNamespace(logits=self.conv(x))


def test_the_loss_equals_a_naive_computation():
    """Jitter and blur off (their draws still taken), so the masked image is the target image
    times the mask; the loss is the weighted per-pixel cross-entropy, ignored pixels counted as
    0 in the mean, with the self-training weights as they are (border rows at 0)."""
    cfg = load_config("minicity", ["loss.st=1", "loss.mic=1", "selftrain.jitter_p=0",
                                   "selftrain.blur_p=0", "selftrain.mask_patch=2",
                                   "data.normalization=imagenet"])
    torch.manual_seed(0)
    k, b, h, w = 4, 2, 6, 8
    model = Pixelwise(k)
    x_t = torch.randn(b, 3, h, w)
    pseudo = torch.randint(0, k, (b, h, w))
    pseudo[0, 0, :3] = 255
    weight = torch.full((b, h, w), 0.6)
    weight[:, :1] = 0  # an ignored top band
    step = Step(it=0, model=model, x_s=None, y_s=None, x_t=x_t, f_s=None, pred_s=None,
                pred_s_aux=None, dictionary=None, pseudo=(pseudo, weight))
    term = MaskedConsistency(cfg, k, torch.device("cpu"))
    torch.manual_seed(5)
    got = term.losses(step)["mic"]

    torch.manual_seed(5)
    torch.rand(()), torch.rand(())  # whether to jitter and to blur (neither: p = 0)
    u = torch.rand(b, 1, 3, 4)
    total = 0.0
    with torch.no_grad():
        for n in range(b):
            for i in range(h):
                for j in range(w):
                    keep = float(u[n, 0, i // 2, j // 2] > 0.7)
                    logits = model.conv(x_t[n:n + 1, :, i:i + 1, j:j + 1] * keep)[0, :, 0, 0]
                    y = int(pseudo[n, i, j])
                    if y != 255:
                        total += float(weight[n, i, j]) * -float(torch.log_softmax(logits, 0)[y])
    assert float(got.detach()) == pytest.approx(total / (b * h * w), rel=1e-5)


def test_mic_needs_self_training():
    with pytest.raises(ConfigError, match="loss.mic: the masked consistency learns from "
                                          "self-training's pseudo-labels"):
        load_config("minicity", ["loss.mic=1"])


def test_ours_mic_trains_logs_and_resumes_like_a_straight_run(tiny_config, tmp_path):
    cfg = apply_method(copy.deepcopy(tiny_config), "ours_mic")
    cfg.selftrain.mask_patch = 8
    cfg.train.deterministic = True
    train(copy.deepcopy(cfg), tmp_path / "straight", progress=False)
    assert train(copy.deepcopy(cfg), tmp_path / "split", progress=False, stop_at=3) is None
    train(copy.deepcopy(cfg), tmp_path / "split", progress=False)
    rows = [r for r in read_metrics(tmp_path / "straight") if r["kind"] == "train"]
    assert rows and all(math.isfinite(r["mic"]) and "st" in r and "cos" in r for r in rows)
    a, b = (load_checkpoint(list_checkpoints(tmp_path / n)[-1]) for n in ("straight", "split"))
    atol = 1e-6 if cfg.train.device == "cpu" else 1e-5
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=atol, rtol=0)
