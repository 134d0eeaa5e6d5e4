"""DeepLab-v2 on the Caffe-style dilated ResNet, and the AdvEnt discriminator."""

import pytest
import torch

from cosalign.models import DeepLabV2, Discriminator
from cosalign.models.resnet import Bottleneck


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_output_stride_8_and_feature_shapes(depth, device):
    model = DeepLabV2(num_classes=5, depth=depth, width=0.125, bn="train").eval().to(device)
    out = model(torch.randn(1, 3, 64, 128, device=device))
    # conv1 /2 -> 32x64, ceil-mode max-pool /2 -> 17x33 (ceil), layer2 /2 -> 9x17
    assert out.logits.shape == (1, 5, 9, 17)
    assert out.aux.shape == (1, 5, 9, 17)
    assert out.features.shape == (1, model.feature_dim, 9, 17)


def test_paper_scale_input_gives_65x129_logits():
    model = DeepLabV2(num_classes=19, depth=101, width=0.0625).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 512, 1024))
    assert out.logits.shape == (1, 19, 65, 129)


def test_resnet101_parameter_count_matches_the_standard_model():
    model = DeepLabV2(num_classes=19, depth=101, width=1.0)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    # torchvision's resnet101 has 44,549,160 parameters, of which fc holds 2048*1000+1000;
    # stride placement does not change the count.
    assert backbone == 44_549_160 - (2048 * 1000 + 1000)
    heads = sum(p.numel() for p in model.head.parameters()) + sum(
        p.numel() for p in model.aux_head.parameters())
    assert heads == 4 * (2048 * 19 * 9 + 19) + 4 * (1024 * 19 * 9 + 19)


def test_caffe_style_stride_on_first_1x1_and_dilations():
    model = DeepLabV2(depth=101, width=0.125)
    first = model.backbone.layer2[0]
    assert isinstance(first, Bottleneck)
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert model.backbone.layer3[1].conv2.dilation == (2, 2)
    assert model.backbone.layer4[1].conv2.dilation == (4, 4)
    assert model.backbone.maxpool.ceil_mode


def test_every_aspp_branch_contributes():
    model = DeepLabV2(num_classes=3, depth=18, width=0.125, bn="train").eval()
    x = torch.randn(1, 3, 64, 128)
    full = model(x).logits
    for branch in model.head.branches:
        saved = branch.weight.data.clone()
        branch.weight.data.zero_()
        assert not torch.allclose(model(x).logits, full)
        branch.weight.data.copy_(saved)
    assert len(model.head.branches) == 4


def test_every_trainable_parameter_gets_a_gradient(device):
    model = DeepLabV2(num_classes=4, depth=50, width=0.125, bn="affine_frozen").to(device)
    out = model(torch.randn(2, 3, 64, 64, device=device))
    (out.logits.sum() + out.aux.sum()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bn_modes():
    frozen = DeepLabV2(depth=18, width=0.125, bn="frozen").train()
    bns = [m for m in frozen.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for m in bns)
    assert all(not m.weight.requires_grad for m in bns)
    affine = DeepLabV2(depth=18, width=0.125, bn="affine_frozen").train()
    bns = [m for m in affine.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.training and not m.weight.requires_grad for m in bns)
    with pytest.raises(ValueError, match="bn"):
        DeepLabV2(bn="sync")


def test_feature_layers_and_preact():
    model = DeepLabV2(depth=18, width=0.125, bn="train", feature_layer="layer4_pre").eval()
    x = torch.randn(1, 3, 64, 64)
    pre = model(x).features
    assert (pre < 0).any()  # before the ReLU
    model.feature_layer = "layer4"
    torch.testing.assert_close(model(x).features, pre.relu())
    model3 = DeepLabV2(depth=18, width=0.125, feature_layer="layer3")
    assert model3.feature_dim == model3.backbone.channels[0]


def test_head_lr_groups():
    model = DeepLabV2(depth=18, width=0.125)
    groups = model.param_groups(lr=0.1, head_lr_mult=10)
    assert groups[0]["lr"] == 0.1 and groups[1]["lr"] == pytest.approx(1.0)
    head_ids = {id(p) for p in groups[1]["params"]}
    assert head_ids == {id(p) for p in [*model.head.parameters(), *model.aux_head.parameters()]}


def test_discriminator_shape():
    d = Discriminator(num_classes=19)
    assert d(torch.randn(2, 19, 64, 128)).shape == (2, 1, 2, 4)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
