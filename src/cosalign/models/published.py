"""The checkpoints DAFormer, HRDA and MIC publish (mmcv 1.x's layout), read into this project's
networks.

Such a file is a dict with ``state_dict`` (and ``meta``, maybe ``optimizer``). Its keys are
those of the UDA wrapper: ``model.*`` (the student), ``ema_model.*`` (the EMA teacher) and
``imnet_model.*`` (the frozen ImageNet copy of the feature distance); the published files
hold ``model.*`` only. Below the prefix: ``backbone.*`` (the MiT, with the names of
SegFormer's ImageNet files, which ours keeps) and ``decode_head.*``: DAFormer's head, or for
HRDA ``decode_head.head.*`` (the same head) and ``decode_head.scale_attention.*`` (a DAFormer
head whose fusion is a 1x1 ConvModule: SegFormer's). The head's modules, as mmseg and mmcv
name them, and ours (models/fusion_heads.py):

| mmseg (DAFormerHead) | cosalign |
|---|---|
| ``embed_layers.{i}.proj`` (a Linear, (E, C_i)) | ``embed.{i}`` (a 1x1 conv, (E, C_i, 1, 1)) |
| ``fuse_layer.aspp_modules.0.{conv,bn}`` | ``fuse.branches.0.{0,1}`` |
| ``fuse_layer.aspp_modules.{i}.depthwise_conv.{conv,bn}`` | ``fuse.branches.{i}.0.{0,1}`` |
| ``fuse_layer.aspp_modules.{i}.pointwise_conv.{conv,bn}`` | ``fuse.branches.{i}.1.{0,1}`` |
| ``fuse_layer.bottleneck.{conv,bn}`` | ``fuse.bottleneck.{0,1}`` |
| ``fuse_layer.{conv,bn}`` (the attention head) | ``fuse.{0,1}`` |
| ``conv_seg`` | ``classifier`` |

``meta.CLASSES`` (mmseg writes the dataset's class names there) gives the order of the
classifier's rows; rows are put in the class set's order by name.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

PREFIXES = {"student": "model.", "teacher": "ema_model."}
HEADS = {"decode_head.head.": "head.", "decode_head.scale_attention.": "attention.",
         "decode_head.": "head."}  # the longest prefix first
RULES = [  # (pattern inside a head, replacement)
    (r"embed_layers\.(\d+)\.proj\.", r"embed.\1."),
    (r"fuse_layer\.aspp_modules\.(\d+)\.depthwise_conv\.conv\.", r"fuse.branches.\1.0.0."),
    (r"fuse_layer\.aspp_modules\.(\d+)\.depthwise_conv\.bn\.", r"fuse.branches.\1.0.1."),
    (r"fuse_layer\.aspp_modules\.(\d+)\.pointwise_conv\.conv\.", r"fuse.branches.\1.1.0."),
    (r"fuse_layer\.aspp_modules\.(\d+)\.pointwise_conv\.bn\.", r"fuse.branches.\1.1.1."),
    (r"fuse_layer\.aspp_modules\.(\d+)\.conv\.", r"fuse.branches.\1.0."),
    (r"fuse_layer\.aspp_modules\.(\d+)\.bn\.", r"fuse.branches.\1.1."),
    (r"fuse_layer\.bottleneck\.conv\.", "fuse.bottleneck.0."),
    (r"fuse_layer\.bottleneck\.bn\.", "fuse.bottleneck.1."),
    (r"fuse_layer\.conv\.", "fuse.0."),
    (r"fuse_layer\.bn\.", "fuse.1."),
    (r"conv_seg\.", "classifier."),
]


class PublishedError(ValueError):
    """A published checkpoint that cannot be read into the network."""


def is_published(state: dict) -> bool:
    """Whether ``state`` is an mmseg checkpoint of DAFormer, HRDA or MIC (or its state dict)."""
    inner = state.get("state_dict", state)
    return isinstance(inner, dict) and any(
        k.startswith(p + "backbone.") for k in inner for p in ("", *PREFIXES.values()))


def _rename(key: str) -> str | None:
    if key.startswith("backbone."):
        return key
    for theirs, ours in HEADS.items():
        if key.startswith(theirs):
            rest = key[len(theirs):]
            for pattern, repl in RULES:
                new, n = re.subn("^" + pattern, repl, rest)
                if n:
                    return ours + new
            return None
    return None


def convert_published(state: dict, which: str = "student") -> tuple[dict[str, Tensor],
                                                                     list[str] | None]:
    """(the network's state dict in cosalign's names, the class names of ``meta.CLASSES`` or
    None) of ``which`` copy: "student" (``model.*``) or "teacher" (``ema_model.*``). Raises
    :class:`PublishedError` when the copy is absent or a key has no counterpart."""
    inner = state.get("state_dict", state)
    prefix = PREFIXES[which]
    if not any(k.startswith("backbone.") for k in inner):  # the UDA wrapper's layout
        present = sorted({k.split(".")[0] for k in inner})
        if not any(k.startswith(prefix) for k in inner):
            raise PublishedError(f"no {which} ({prefix}*) in this checkpoint; its parts: "
                                 f"{', '.join(present)}")
        inner = {k[len(prefix):]: v for k, v in inner.items() if k.startswith(prefix)}
    out = {}
    for key, value in inner.items():
        new = _rename(key)
        if new is None:
            raise PublishedError(f"{key}: no counterpart in cosalign's network (expected a "
                                 "DAFormer or HRDA MiT network)")
        if re.fullmatch(r"(head|attention)\.embed\.\d+\.weight", new):
            value = value[:, :, None, None]  # Linear (E, C) -> 1x1 conv (E, C, 1, 1)
        out[new] = value
    return out, class_names(state)


def class_names(state: dict) -> list[str] | None:
    """The class names mmseg records in the checkpoint's ``meta.CLASSES`` (None: none)."""
    meta = state.get("meta") or {}
    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    return None if classes is None else [str(c) for c in classes]


def reorder_classes(state: dict[str, Tensor], theirs: list[str], ours: list[str]
                    ) -> dict[str, Tensor]:
    """The classifiers' rows (``*classifier.weight`` / ``.bias`` with len(theirs) rows) put
    in ``ours``' order, matched by name; an error names a class missing from either."""
    if theirs == ours:
        return state
    missing = [c for c in ours if c not in theirs]
    if missing or len(theirs) != len(ours):
        raise PublishedError(f"the checkpoint's classes ({', '.join(theirs)}) are not the class "
                             f"set's ({', '.join(ours)})")
    order = torch.tensor([theirs.index(c) for c in ours])
    return {k: v[order] if k.split(".")[-2] == "classifier" and v.shape[0] == len(theirs)
            else v for k, v in state.items()}
