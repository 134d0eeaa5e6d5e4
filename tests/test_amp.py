"""Mixed precision: bf16 autocast on the test device, the loss normalizing in fp32."""

import copy

import pytest
import torch

from cosalign.engine.runtime import autocast_for
from cosalign.engine.train import train
from cosalign.losses import cosine_alignment
from cosalign.models import DeepLabV2


def test_loss_under_bf16_features_matches_fp32(device):
    torch.manual_seed(0)
    model = DeepLabV2(num_classes=19, depth=18, width=0.25, bn="train").eval().to(device)
    x = torch.randn(2, 3, 64, 128, device=device)
    with torch.no_grad():
        f32 = model(x).features
        with torch.autocast(device.type, dtype=torch.bfloat16):
            f16 = model(x).features
    assert f16.dtype == torch.bfloat16
    ref = torch.nn.functional.normalize(torch.randn(300, f32.shape[1], device=device), dim=1)
    a = cosine_alignment(f32, ref, tau=0.0)
    b = cosine_alignment(f16, ref, tau=0.0)
    assert b.loss.dtype == torch.float32  # normalized and reduced in fp32
    assert b.loss.item() == pytest.approx(a.loss.item(), abs=2e-2)


def test_bf16_training_run_is_finite_and_close(tiny_config, tmp_path):
    cfg = copy.deepcopy(tiny_config)
    cfg.train.amp = "none"
    fp32 = train(cfg, tmp_path / "fp32", progress=False)
    cfg.train.amp = "bf16"
    bf16 = train(cfg, tmp_path / "bf16", progress=False)
    assert abs(fp32["miou"]["minicity"] - bf16["miou"]["minicity"]) < 15


def test_fp16_needs_cuda():
    """CPU by nature: it checks the refusal on a machine without CUDA."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        autocast_for("fp16", torch.device("cpu"))


@pytest.mark.parametrize("setting, expected", [(None, torch.bfloat16), (False, torch.float32),
                                               (True, torch.bfloat16)])
def test_loss_products_follow_autocast_unless_set(tiny_config, device, product_dtypes, setting,
                                                  expected):
    from cosalign.data import build_dataset
    from cosalign.engine.train import batches, train_step
    from cosalign.losses import ClassFeatureDictionary
    from cosalign.methods import build_terms
    from cosalign.models import build_model

    cfg = copy.deepcopy(tiny_config)
    cfg.align.matmul = {None: "auto", False: "fp32", True: "bf16"}[setting]
    cfg.align.class_restrict = "none"
    model = build_model(cfg.model, 19).to(device)
    d = ClassFeatureDictionary(19, 8, model.feature_dim).to(device)
    src = batches(build_dataset(cfg.data.source, cfg.data, train=True), 2, 0, 0, 0)
    tgt = batches(build_dataset(cfg.data.target, cfg.data, train=True, labels=False), 2, 1, 0, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for it in range(2):  # the first step fills the dictionary, the second uses it
        train_step(model, next(src), next(tgt), it, build_terms(cfg, 19, device), d, opt,
                   autocast=autocast_for("bf16", device))
    assert product_dtypes and set(product_dtypes) == {expected}
