"""Initial weights from local files (nothing is downloaded).

Five kinds of file are recognized by their keys:
- the DeepLab ImageNet checkpoint of the AdaptSegNet/ADVENT line (``Scale.conv1.weight``, ...):
  its ``Scale.layer5`` classifier is skipped, the rest goes into the backbone;
- a torchvision ``resnet101`` state dict (``conv1.weight``, ``layer1.0...``, ``fc``): loaded by
  name into the backbone, with a warning, because torchvision puts the bottleneck stride on the
  3x3 conv and expects RGB/255 input normalized by ImageNet mean and std (set
  ``data.normalization: imagenet``);
- a MiT ImageNet file of SegFormer's (``mit_b0.pth`` ... ``mit_b5.pth``, as DAFormer uses them:
  ``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ..., maybe under ``state_dict`` or
  ``model``): loaded by name into the transformer's encoder, its classification ``head`` skipped;
- a cosalign checkpoint (``model`` and ``config`` keys): the whole network;
- a backbone from ``cosalign pretrain`` (``model`` and ``pretrain`` keys): the backbone only;
- a checkpoint of DAFormer's, HRDA's or MIC's (mmseg's layout; models/published.py): the whole
  network, its student or (``teacher``) its EMA teacher, loaded strictly, the classifier's rows
  in the class set's order by the file's class names.
The name ``minicity_pretrained`` stands for the pretrained MiniCity backbone that ships with the
package (see cosalign/minicity/pretrain.py). Files are always read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cosalign.models.published import (
    PublishedError,
    class_names,
    convert_published,
    is_published,
    reorder_classes,
)

# names that stand for weights shipped with the package
BUNDLED = {"minicity_pretrained": Path(__file__).parents[1] / "weights" / "minicity_pretrained.pt"}


class WeightsError(Exception):
    """A weights file cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    kind: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # dropped on purpose (Caffe layer5, fc)

    def __str__(self) -> str:
        text = f"{self.kind}: loaded {self.loaded} tensors"
        if self.missing:
            text += f"; missing {len(self.missing)} (e.g. {self.missing[:3]})"
        if self.unexpected:
            text += f"; unexpected {len(self.unexpected)} (e.g. {self.unexpected[:3]})"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} by design (e.g. {self.skipped[:2]})"
        return text


def _read(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def convert(state: dict, teacher: bool = False) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Recognize a state dict and rename its keys to this project's model:
    (kind, renamed state, keys dropped on purpose). ``teacher``: a published checkpoint's EMA
    teacher instead of its student."""
    if is_published(state):
        which = "teacher" if teacher else "student"
        try:
            renamed, _ = convert_published(state, which)
        except PublishedError as e:
            raise WeightsError(str(e)) from None
        return f"DAFormer/HRDA/MIC checkpoint ({which})", renamed, []
    for wrapper in ("state_dict", "model"):  # a MiT file saved with a wrapper
        inner = state.get(wrapper)
        if isinstance(inner, dict) and "patch_embed1.proj.weight" in inner:
            state = inner
    if "model" in state and "config" in state:
        return "cosalign checkpoint", state["model"], []
    if "model" in state and "pretrain" in state:
        return "cosalign pretrained backbone", state["model"], []
    keys = list(state)
    if any(k.startswith("Scale.") for k in keys):
        skipped = [k for k in keys if k.startswith("Scale.layer5")]
        return "DeepLab ImageNet (Caffe) checkpoint", {
            "backbone." + k[len("Scale."):]: v for k, v in state.items()
            if k.startswith("Scale.") and k not in skipped
        }, skipped
    if "patch_embed1.proj.weight" in state and any(k.startswith("block1.") for k in keys):
        skipped = [k for k in keys if k.startswith("head.")]
        return "MiT ImageNet (SegFormer) weights", {
            "backbone." + k: v for k, v in state.items() if k not in skipped
        }, skipped
    if "conv1.weight" in state and any(k.startswith("layer4.") for k in keys):
        skipped = [k for k in keys if k.startswith("fc.")]
        return "torchvision ResNet state dict", {
            "backbone." + k: v for k, v in state.items() if k not in skipped
        }, skipped
    return "unknown", {}, []


def load_weights(model: nn.Module, path: str | Path, *, teacher: bool = False,
                 classes: list[str] | None = None) -> LoadReport:
    """Load a weights file into ``model``; refuse a file that matches nothing or whose shapes
    disagree. Missing and unexpected keys are reported (and returned); a published
    checkpoint must match every key (``classes``: the class set's names, to order its
    classifier's rows)."""
    path = BUNDLED.get(str(path), Path(path))
    raw = _read(path)
    kind, state, skipped = convert(raw, teacher)
    own = model.state_dict()
    if is_published(raw):
        state = strict_published(model, state, raw, classes, path)
    matched = {k: v for k, v in state.items() if k in own}
    if not matched:
        raise WeightsError(
            f"{path}: no key matches this model (expected a DeepLab 'Scale.*' checkpoint, a "
            f"torchvision ResNet state dict, a MiT ImageNet file for a MiT network or a "
            f"cosalign checkpoint; found keys like "
            f"{list(state)[:3] or list(_read(path))[:3]})"
        )
    for k, v in matched.items():
        if v.shape != own[k].shape:
            raise WeightsError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects "
                               f"{tuple(own[k].shape)} (wrong depth, width or class count?)")
    model.load_state_dict(matched, strict=False)
    report = LoadReport(
        kind, len(matched),
        missing=[k for k in own if k not in matched and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in state if k not in own],
        skipped=skipped,
    )
    if kind.startswith("torchvision"):
        warnings.warn(
            f"{path}: torchvision ResNet weights put the bottleneck stride on the 3x3 conv and "
            "expect RGB input normalized by ImageNet mean/std (data.normalization: imagenet); "
            "results will differ from the DeepLab protocol", stacklevel=2)
    print(report)
    return report


def strict_published(model: nn.Module, state: dict[str, torch.Tensor], raw: dict,
                     classes: list[str] | None, path: Path) -> dict[str, torch.Tensor]:
    """A published checkpoint's renamed ``state`` checked key by key against ``model`` (every
    key on both sides) and its classifier's rows put in ``classes``' order."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise WeightsError(
            f"{path}: does not fit this network (missing {len(missing)}, e.g. {missing[:3]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:3]}): is the preset's "
            "architecture the checkpoint's (MiT size, model.hrda.enabled)?")
    theirs = class_names(raw)
    if theirs is not None and classes is not None:
        try:
            state = reorder_classes(state, theirs, classes)
        except PublishedError as e:
            raise WeightsError(f"{path}: {e}") from None
    return state
