"""Heads that fuse a MiT encoder's four maps at stride 4: SegFormer's all-MLP head and
DAFormer's context-aware fusion head.

Both embed each level's map (B, C_i, H / s_i, W / s_i) to E channels with a linear layer per
position (a 1x1 convolution; no norm, no activation), upsample the four to stride 4 (bilinear,
``align_corners=False``) and concatenate them (B, 4E, H / 4, W / 4). Then

- SegFormer (Xie et al. 2021): a 1x1 convolution to E, BatchNorm, ReLU;
- DAFormer (Hoyer et al., CVPR 2022): branches with dilations (1, 6, 12, 18), no image
  pooling: dilation 1 a 1x1 convolution + BN + ReLU, the others a depthwise-separable 3x3
  convolution (depthwise with that dilation + BN + ReLU, pointwise + BN + ReLU), each to E;
  the branches concatenated (4E) and a 3x3 convolution + BN + ReLU back to E.

The fused map, (B, E, H / 4, W / 4), is what the alignment pulls on (the output's ``features``);
dropout 0.1 and a 1x1 convolution to K classes make the logits.

Initialization as DAFormer's heads start (they are built of mmcv 1.x ``ConvModule``s, which
initialize themselves): every convolution followed by BatchNorm from Kaiming normal with
fan_out and ReLU's gain, std = sqrt(2 / (k * k * out_channels)) (whatever the groups: PyTorch's
fan_out of a depthwise weight (C, 1, k, k) is C k k), BatchNorm 1 and 0; the embeddings (a
``nn.Linear`` in DAFormer) as PyTorch initializes them; the classifier N(0, 0.01) with zero
bias (mmseg's ``conv_seg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1,
                 groups: int = 1) -> nn.Sequential:
    """mmcv's ConvModule: a convolution without bias, Kaiming-normal (fan_out, ReLU), BN, ReLU."""
    conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                     groups=groups, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Fusion(nn.Module):
    """Embedding, upsampling and concatenation (shared); subclasses set ``fuse``."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, embed: int) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed, 1) for c in in_channels)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(embed, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.embed_dim = embed

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Four maps -> (logits (B, K, h, w), fused features (B, E, h, w)), (h, w) the first
        map's size (stride 4)."""
        size = maps[0].shape[-2:]
        x = torch.cat([F.interpolate(e(m), size=size, mode="bilinear", align_corners=False)
                       if m.shape[-2:] != size else e(m) for e, m in zip(self.embed, maps)], 1)
        features = self.fuse(x)
        return self.classifier(self.dropout(features)), features


class SegFormerHead(_Fusion):
    """SegFormer's all-MLP head (E = 256 for MiT-B0/B1, 768 for B2-B5 in SegFormer)."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, embed: int = 256) -> None:
        super().__init__(in_channels, num_classes, embed)
        self.fuse = conv_bn_relu(len(in_channels) * embed, embed)


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__(conv_bn_relu(cin, cin, 3, dilation, groups=cin),
                         conv_bn_relu(cin, cout))


class ContextFusion(nn.Module):
    """DAFormer's fusion: (B, C, h, w) -> (B, E, h, w) through dilated branches."""

    def __init__(self, cin: int, embed: int, rates: tuple[int, ...] = (1, 6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            conv_bn_relu(cin, embed) if r == 1 else DepthwiseSeparable(cin, embed, r)
            for r in rates)
        self.bottleneck = conv_bn_relu(len(rates) * embed, embed, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([b(x) for b in self.branches], 1))


class DAFormerHead(_Fusion):
    """DAFormer's context-aware fusion head (E = 256)."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, embed: int = 256,
                 rates: tuple[int, ...] = (1, 6, 12, 18)) -> None:
        super().__init__(in_channels, num_classes, embed)
        self.fuse = ContextFusion(len(in_channels) * embed, embed, rates)
