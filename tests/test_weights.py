"""Initial weights from local files: DeepLab 'Scale.' checkpoints, torchvision state dicts, our
own checkpoints, and refusals."""

import pytest
import torch

from cosalign.engine.checkpoint import save_checkpoint
from cosalign.models import DeepLabV2
from cosalign.models.weights import WeightsError, load_weights


def small(**kw):
    return DeepLabV2(num_classes=19, depth=50, width=0.125, **kw)


def test_deeplab_scale_checkpoint_skips_layer5(tmp_path):
    src = small()
    state = {f"Scale.{k[len('backbone.'):]}": torch.randn_like(v) if v.is_floating_point() else v
             for k, v in src.state_dict().items() if k.startswith("backbone.")
             and not k.endswith("num_batches_tracked")}  # the Caffe file has no such keys
    state["Scale.layer5.conv2d_list.0.weight"] = torch.randn(19, 256, 3, 3)
    path = tmp_path / "DeepLab_resnet_pretrained_imagenet.pth"
    torch.save(state, path)
    model = small()
    head_before = model.head.branches[0].weight.clone()
    report = load_weights(model, path)
    assert report.kind.startswith("DeepLab")
    assert report.skipped == ["Scale.layer5.conv2d_list.0.weight"] and not report.unexpected
    assert all(k.startswith(("head.", "aux_head.")) for k in report.missing)
    torch.testing.assert_close(model.backbone.conv1.weight, state["Scale.conv1.weight"])
    torch.testing.assert_close(model.backbone.layer4[2].bn3.running_var,
                               state["Scale.layer4.2.bn3.running_var"])
    torch.testing.assert_close(model.head.branches[0].weight, head_before)


def test_torchvision_state_dict_loads_by_name_and_warns(tmp_path):
    src = small()
    state = {k[len("backbone."):]: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in src.state_dict().items() if k.startswith("backbone.")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 256), torch.randn(1000)
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    model = small()
    with pytest.warns(UserWarning, match="stride.*normaliz"):
        report = load_weights(model, path)
    assert report.kind.startswith("torchvision")
    torch.testing.assert_close(model.backbone.layer1[0].conv2.weight,
                               state["layer1.0.conv2.weight"])
    assert report.skipped == ["fc.weight", "fc.bias"] and not report.unexpected


def test_own_checkpoint_loads_everything(tmp_path):
    src = small()
    path = save_checkpoint({"model": src.state_dict(), "config": {}}, tmp_path, 7)
    model = small()
    report = load_weights(model, path)
    assert report.kind == "cosalign checkpoint" and not report.missing
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_refusals(tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsError, match="no key matches this model"):
        load_weights(small(), foreign)
    wrong = tmp_path / "wrong.pth"
    state = {k: v for k, v in DeepLabV2(19, 50, 0.25).state_dict().items()}
    torch.save({"model": state, "config": {}}, wrong)
    with pytest.raises(WeightsError, match="shape.*wrong depth, width or class count"):
        load_weights(small(), wrong)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(WeightsError, match="corrupt.pth: cannot load"):
        load_weights(small(), corrupt)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(small(), tmp_path / "missing.pth")


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": NotATensor(), "config": {}}, path)
    with pytest.raises(WeightsError, match="cannot load"):  # weights_only=True
        load_weights(small(), path)
