"""HRDA's multi-resolution network (Hoyer et al., "HRDA: Context-Aware High-Resolution Domain-
Adaptive Semantic Segmentation", ECCV 2022), as a wrapper around a segmenter: the encoder and
head of a :class:`~cosalign.models.transformer.MiTSegmenter` (DAFormer's head, output stride
o = 4) or of a :class:`~cosalign.models.deeplab.DeepLabV2` (its ASPP classifier, o = 8), used
at two scales, and a second head of the same kind that learns where to trust which scale.

Shapes for an input (the *outer* crop) x of (B, 3, H, W), context scale s = 0.5, output
stride o and a detail crop of (h_d, w_d) pixels:

- context: x_c = bilinear resize of x by s (align_corners False; at s = 0.5 the 2 x 2 mean),
  (B, 3, H/2, W/2); its logits y_c (B, K, H/2o, W/2o) and attention
  a = sigmoid(attention head(encoder(x_c))) (B, K, H/2o, W/2o) (K = 1 when not class-wise);
- detail, training: one box (y1, y2, x1, x2) of (h_d, w_d) pixels for the whole batch, new on
  every call, its corner a multiple of 8 (HRDA's ``crop_coord_divisible`` for both networks;
  = o / s for the MiT: the box falls on whole cells of the context's logits), drawn
  uniformly: y1 = 8 * randint(0, (H - h_d + 1) // 8); the detail logits
  y_d = head(encoder(x[box])) (B, K, h_d/o, w_d/o);
- detail, inference: windows of (h_d, w_d) over all of x, stride half a window (or a whole
  one), the last window flush with the border, run as one batch; logits averaged where windows
  overlap, (B, K, H/o, W/o);
- fusion (HRDA's ``HRDAHead.forward``): in training a is set to 0 outside
  floor(box / (o / s)), then

      fused = up2((1 - a) * y_c) + up2(a) * insert(y_d),

  up2 a bilinear x2 (align_corners False), insert pasting y_d at box / o into zeros of
  (B, K, H/o, W/o); outside the box the output is the context's alone.

DeepLab-v2 in HRDA (HRDA's ``HRDAHead`` with ``single_scale_head='DLV2Head'``): the attention
head is a second ASPP classifier with the head's rates, on the last stage; the auxiliary head is
not used (``loss.aux`` must be 0). This project's ResNet pools with ``ceil_mode`` (ADVENT's),
which gives H/8 + 1 cells; here its maps are cut to the first H/8 x W/8 cells, so that the
fusion's grid is exact (HRDA's ResNetV1c gives H/8).

At test time (:meth:`HRDASegmenter.forward` without a box) an input larger than ``window`` is
covered by outer windows (stride half a window), each fused as above and resized to the
window's size; their logits are averaged (mmseg's ``slide`` test mode, which HRDA's configs set).

The loss (losses/segmentation.py ``segmentation_loss``) is
(1 - lambda_d) CE(fused) + lambda_d CE(y_d, labels[box]), lambda_d = ``detail_weight``.
What the feature distance sees: the context's last encoder stage (``encoder``), as HRDA's
(``feature_scale=0.5``). What the alignment sees (``features``: the MiT head's fused map, or
DeepLab-v2's ``feature_layer``), by ``align_features``: the context's (B, E, H/2o, W/2o), the
default, or in training the detail crop's (B, E, h_d/o, w_d/o), which covers ``feature_box`` of
the input (:func:`cut`);
docs/METHOD.md section 15 says why and what each measured.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosalign.models.deeplab import ASPPClassifier, DeepLabV2
from cosalign.models.fusion_heads import SegFormerHead
from cosalign.models.transformer import MiTSegmenter

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2) in input pixels


class HRDAOutput(NamedTuple):
    logits: Tensor  # (B, K, H / o, W / o) fused; (B, K, H, W) when slid over outer windows
    aux: None
    features: Tensor | None  # (B, E, H / 2o, W / 2o) the context's (or the detail crop's,
    # (B, E, h_d / o, w_d / o), with align_features="detail"); None when slid
    encoder: Tensor | None  # (B, C_4, ., .) the context's last stage; None when slid
    detail: Tensor | None = None  # (B, K, h_d / o, w_d / o) training only
    box: Box | None = None  # where ``detail`` lies in the input, training only
    detail_weight: float = 0.0  # lambda_d of the loss
    feature_box: Box | None = None  # where ``features`` lies in the input; None: all of it


def cut(t: Tensor, box: Box | None, size: tuple[int, int]) -> Tensor:
    """The part of ``t`` (..., h, w), a map over an input of ``size`` (H, W), that ``box`` (in
    input pixels) covers: t[..., y1 / f : y2 / f, x1 / f : x2 / f] with f = H / h (= W / w, a
    whole number dividing the box's corners); t itself when box is None."""
    if box is None:
        return t
    h, w = t.shape[-2:]
    f = size[0] // h
    if f * h != size[0] or f * w != size[1] or any(c % f for c in box):
        raise ValueError(f"cannot cut box {box} of a {size[1]}x{size[0]} input from a "
                         f"{w}x{h} map")
    y1, y2, x1, x2 = (c // f for c in box)
    return t[..., y1:y2, x1:x2]


def crop_box(height: int, width: int, crop: tuple[int, int], divisible: int) -> Box:
    """A random (h_d, w_d) = ``crop`` box inside (height, width) whose corner is a multiple of
    ``divisible``: y1 = divisible * randint(0, (height - h_d + 1) // divisible), then x1 alike,
    from numpy's global generator (HRDA's ``get_crop_bbox``, the same draws; the whole input
    when it is the crop's size)."""
    h_d, w_d = crop
    if (height, width) == (h_d, w_d):
        return 0, height, 0, width
    if h_d > height or w_d > width:
        raise ValueError(f"detail crop {w_d}x{h_d} larger than the input {width}x{height}")
    y1, x1 = (divisible * int(np.random.randint(0, (m + 1) // divisible))
              for m in (height - h_d, width - w_d))
    return y1, y1 + h_d, x1, x1 + w_d


def window_boxes(height: int, width: int, window: tuple[int, int], stride: tuple[int, int]
                 ) -> list[Box]:
    """Boxes of ``window`` (h, w) over (height, width) in steps of ``stride``, the last one in
    each direction flush with the border (mmseg's slide grid), row by row."""
    (wh, ww), (sh, sw) = window, stride
    rows = max(height - wh + sh - 1, 0) // sh + 1
    cols = max(width - ww + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + wh, height), min(c * sw + ww, width)
            boxes.append((max(y2 - wh, 0), y2, max(x2 - ww, 0), x2))
    return boxes


def average_windows(logits: Tensor, boxes: list[Box], size: tuple[int, int], scale: int
                    ) -> Tensor:
    """(N B, K, h, w) logits of N windows (window-major) -> (B, K, size) their mean where
    windows overlap; a box (in input pixels) covers box / ``scale`` of the output."""
    n = len(boxes)
    b = logits.shape[0] // n
    out = logits.new_zeros(b, logits.shape[1], *size)
    count = logits.new_zeros(1, 1, *size)
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        y1, y2, x1, x2 = y1 // scale, y2 // scale, x1 // scale, x2 // scale
        out[..., y1:y2, x1:x2] += logits[i * b:(i + 1) * b]
        count[..., y1:y2, x1:x2] += 1
    return out / count


class HRDASegmenter(nn.Module):
    """A segmenter at two scales with a learned scale attention (module docstring).

    Args:
        base: the MiT or DeepLab-v2 segmenter whose ``backbone`` and ``head`` serve both
            scales (DeepLab-v2's ``aux_head`` is left out).
        detail_crop: (width, height) of the detail crop in input pixels (HRDA: 512 x 512 of a
            1024 x 1024 outer crop).
        detail_weight: lambda_d, the detail logits' share of the loss (HRDA 0.1).
        classwise: one attention map per class (HRDA) or one for all.
        attention_embed: E of the MiT's attention head (HRDA 256; a SegFormer head).
        overlap: detail windows at stride half a window at inference (HRDA), else a whole one.
        window: (width, height) of the outer windows at test time (HRDA 1024 x 1024), or None.
        scale: the context's scale (HRDA 0.5); divisible: the boxes' corner grid (HRDA 8).
        align_features: "context" (HRDA's feature distance's scale) or "detail": which head
            map training passes return as ``features`` (the alignment's and the dictionary's).
    """

    def __init__(self, base: MiTSegmenter | DeepLabV2, detail_crop: tuple[int, int] = (512, 512),
                 detail_weight: float = 0.1, classwise: bool = True, attention_embed: int = 256,
                 overlap: bool = True, window: tuple[int, int] | None = (1024, 1024),
                 scale: float = 0.5, divisible: int = 8, align_features: str = "context"
                 ) -> None:
        super().__init__()
        self.backbone, self.head = base.backbone, base.head
        k = base.num_classes if classwise else 1
        self.deeplab = isinstance(base, DeepLabV2)
        if self.deeplab:  # HRDA's DLV2Head attention: the head's ASPP, k outputs
            rates = tuple(conv.dilation[0] for conv in base.head.branches)
            self.attention = ASPPClassifier(base.backbone.channels[-1], k, rates)
            self.feature_index = ("layer3", "layer4_pre", "layer4").index(base.feature_layer)
            self.stride, self.bn = 8, base.bn
        else:
            self.attention = SegFormerHead(base.backbone.channels, k, attention_embed)
            self.stride, self.bn = 4, "train"
        self.num_classes, self.feature_dim = base.num_classes, base.feature_dim
        self.crop = (detail_crop[1], detail_crop[0])  # (h, w) from here on
        self.window = None if window is None else (window[1], window[0])
        self.detail_weight, self.overlap = detail_weight, overlap
        self.scale, self.divisible = scale, divisible
        if align_features not in ("context", "detail"):
            raise ValueError(f"align_features: expected context or detail, got {align_features}")
        self.align_features = align_features

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """The segmenter's groups, the attention head in the head's (HRDA's ``decode_head``
        holds both heads): the MiT's (:meth:`MiTSegmenter.param_groups`), or DeepLab-v2's
        trainable backbone at ``lr`` and both heads at ``head_lr_mult * lr``."""
        if not self.deeplab:
            groups = MiTSegmenter.param_groups(self, lr, head_lr_mult)
            groups[-1]["params"] += list(self.attention.parameters())
            return groups
        return [{"params": [p for p in self.backbone.parameters() if p.requires_grad],
                 "lr": lr, "lr_mult": 1.0},
                {"params": [*self.head.parameters(), *self.attention.parameters()],
                 "lr": lr * head_lr_mult, "lr_mult": head_lr_mult}]

    def train(self, mode: bool = True) -> HRDASegmenter:
        super().train(mode)
        if self.bn == "frozen":  # DeepLab-v2's bn: frozen (DeepLabV2.train)
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def encode(self, x: Tensor) -> list[Tensor]:
        """The encoder's maps; DeepLab-v2's cut to H/8 x W/8 cells (the module docstring)."""
        maps = self.backbone(x)
        if not self.deeplab:
            return maps
        h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        return [m[..., :h, :w] for m in maps]

    def decode(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(logits (B, K, h, w), the alignment's features) of the encoder's maps."""
        if not self.deeplab:
            return self.head(maps)
        return self.head(maps[-1]), maps[self.feature_index]

    def context(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The context pass: (logits (B, K, H/2o, W/2o), attention (B, K or 1, H/2o, W/2o)
        after the sigmoid, features, the encoder's last stage)."""
        x_c = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        maps = self.encode(x_c)
        logits, features = self.decode(maps)
        att = self.attention(maps[-1]) if self.deeplab else self.attention(maps)[0]
        return logits, torch.sigmoid(att), features, maps[-1]

    def context_encoder(self, x: Tensor) -> Tensor:
        """The context's last encoder stage alone (the feature distance's frozen network)."""
        x_c = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.encode(x_c)[-1]

    def _detail(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))[0]

    def slide_detail(self, x: Tensor) -> Tensor:
        """(B, K, H/o, W/o): detail windows over all of x in one batch, logits averaged."""
        h, w = x.shape[-2:]
        step = tuple(c // 2 for c in self.crop) if self.overlap else self.crop
        boxes = window_boxes(h, w, self.crop, step)
        crops = torch.cat([x[..., y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        return average_windows(self._detail(crops), boxes, (h // self.stride, w // self.stride),
                               self.stride)

    def fuse(self, lr: Tensor, att: Tensor, hr: Tensor, box: Box | None = None) -> Tensor:
        """up2((1 - a) lr) + up2(a) insert(hr); a masked to the box (input pixels) if given."""
        up = round(1 / self.scale)
        if box is not None:
            s = self.stride * up
            y1, y2, x1, x2 = box
            mask = torch.zeros_like(att[:, :1])
            mask[..., y1 // s:y2 // s, x1 // s:x2 // s] = 1
            att = att * mask
            y1, y2, x1, x2 = (c // self.stride for c in box)
            full = hr.new_zeros(*hr.shape[:2], lr.shape[-2] * up, lr.shape[-1] * up)
            full[..., y1:y2, x1:x2] = hr
            hr = full
        up_lr = F.interpolate((1 - att) * lr, scale_factor=up, mode="bilinear",
                              align_corners=False)
        up_att = F.interpolate(att, scale_factor=up, mode="bilinear", align_corners=False)
        return up_att * hr + up_lr

    def infer(self, x: Tensor) -> HRDAOutput:
        """One input, no box: the context and the detail windows over all of it, fused."""
        lr, att, features, encoder = self.context(x)
        return HRDAOutput(self.fuse(lr, att, self.slide_detail(x)), None, features, encoder,
                          detail_weight=self.detail_weight)

    def forward(self, x: Tensor, detail_crop: bool | None = None) -> HRDAOutput:
        """(B, 3, H, W) -> :class:`HRDAOutput`. With ``detail_crop`` (default: in train mode
        with autograd on, i.e. the student's passes) one random detail box; without, the
        inference path, slid over outer windows when x is larger than ``window``."""
        if detail_crop is None:
            detail_crop = self.training and torch.is_grad_enabled()
        if detail_crop:
            box = crop_box(*x.shape[-2:], self.crop, self.divisible)
            y1, y2, x1, x2 = box
            lr, att, features, encoder = self.context(x)
            hr, hr_features = self.decode(self.encode(x[..., y1:y2, x1:x2]))
            detail = self.align_features == "detail"
            return HRDAOutput(self.fuse(lr, att, hr, box), None,
                              hr_features if detail else features, encoder, hr, box,
                              self.detail_weight, box if detail else None)
        h, w = x.shape[-2:]
        if self.window is None or (h <= self.window[0] and w <= self.window[1]):
            return self.infer(x)
        boxes = window_boxes(h, w, self.window, tuple(c // 2 for c in self.window))
        total = x.new_zeros(x.shape[0], self.num_classes, h, w, dtype=torch.float32)
        count = x.new_zeros(1, 1, h, w, dtype=torch.float32)
        for y1, y2, x1, x2 in boxes:
            logits = self.infer(x[..., y1:y2, x1:x2]).logits.float()
            total[..., y1:y2, x1:x2] += F.interpolate(logits, size=(y2 - y1, x2 - x1),
                                                      mode="bilinear", align_corners=False)
            count[..., y1:y2, x1:x2] += 1
        return HRDAOutput(total / count, None, None, None, detail_weight=self.detail_weight)
