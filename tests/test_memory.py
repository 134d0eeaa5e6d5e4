"""The memory estimate (engine/memory.py): its counter on a hand-worked sequence, and the
estimate of a step on fake tensors against the bytes a real training step (engine/train.py
``train_step``) allocates on the CPU, with the same counter."""

import copy

import pytest
import torch

from cosalign.engine.memory import PeakBytes, estimate_memory
from cosalign.engine.train import build_optimizer, train_step
from cosalign.losses import ClassFeatureDictionary
from cosalign.methods import apply_method, build_terms
from cosalign.models import build_model


def test_the_counter_adds_what_is_made_and_subtracts_what_is_freed():
    x = torch.zeros(1000)  # made before: not counted
    with PeakBytes() as count:
        y = x + 1  # 4000 bytes
        z = y * 2  # 8000 in all
        del y  # 4000
        w = torch.cat([z, z])  # 4000 + 8000 = 12000: the peak
        del z, w
        v = x.view(10, 100) + 0  # 4000, a new storage; its view adds nothing
        u = v.view(1000)
        assert count.now == 4000
        del u, v
    assert count.peak == 12000 and count.now == 0


def real_step_bytes(cfg, steps: int = 2) -> int:
    """The peak bytes the second of ``steps`` real steps allocates (the optimizer's state made
    by the first), gradients included (a step starts without them)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 19).train()
    dictionary = ClassFeatureDictionary(19, cfg.dictionary.capacity, model.feature_dim,
                                        cfg.dictionary.per_image)
    terms = build_terms(cfg, 19, torch.device("cpu"), model)
    opt = build_optimizer(model, cfg.optim)
    (hs, ws), (ht, wt) = [tuple(reversed(d.crop or d.size))
                          for d in (cfg.data.source, cfg.data.target)]
    b = cfg.data.batch_size
    batch_s = {"image": torch.randn(b, 3, hs, ws), "label": torch.randint(0, 19, (b, hs, ws))}
    batch_t = {"image": torch.randn(b, 3, ht, wt)}
    for it in range(steps):
        count = PeakBytes()
        with count:
            train_step(model, batch_s, batch_t, it, terms, dictionary, opt, aux=cfg.loss.aux,
                       seg_reduction=cfg.loss.seg_reduction,
                       align_corners=cfg.model.align_corners)
    return count.peak


@pytest.mark.parametrize("network,method", [("deeplab", "dacs"), ("deeplab", "ours"),
                                            ("mit", "mic"), ("hrda", "mic"),
                                            ("hrda-deeplab", "dacs")])
def test_the_estimate_is_near_what_a_real_step_allocates(tiny_config, network, method):
    cfg = apply_method(copy.deepcopy(tiny_config), method)
    cfg.data.source.crop = cfg.data.target.crop = (64, 64)
    cfg.data.source.size, cfg.data.target.size = (96, 64), (96, 64)
    cfg.selftrain.mask_patch = 16
    if network not in ("deeplab", "hrda-deeplab"):
        cfg.model.arch, cfg.loss.aux, cfg.model.embed = "mit_b0", 0.0, 32
        cfg.model.align_corners = False
        cfg.optim.name = "adamw"
    if network.startswith("hrda"):
        cfg.model.hrda.enabled, cfg.loss.aux = True, 0.0
        cfg.model.hrda.detail_crop, cfg.model.hrda.window = (32, 32), (64, 64)
        cfg.model.hrda.attention_embed = 16
    real = real_step_bytes(cfg)
    e = estimate_memory(cfg, "fp32")
    estimate = e.step + e.grads  # the real step makes its gradients; the estimate holds them
    assert abs(estimate - real) / real < 0.25, (estimate, real)


def test_the_command_prints_every_precision_and_bf16_holds_less(capsys):
    from cosalign.cli import main

    code = main(["memory", "--config", "gta5_to_cityscapes", "--method", "dacs",
                 "--precisions", "fp32,bf16"])  # ResNet-101 at DACS's 512 crops: seconds
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()[2:]]
    assert code == 0 and [r[3].strip() for r in rows] == ["fp32", "bf16"]
    fp32, bf16 = (float(r[-3]) for r in rows)  # the step's GiB
    assert 0 < bf16 < fp32
