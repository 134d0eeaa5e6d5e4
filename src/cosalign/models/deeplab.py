"""DeepLab-v2: dilated ResNet + ASPP-v2 classifier, with an auxiliary head on layer3.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2017; the two-head variant of Tsai et al.
("AdaptSegNet", CVPR 2018) and Vu et al. ("ADVENT", CVPR 2019).

For the cosine loss the feature extractor E is the backbone and the head G is the ASPP classifier
(docs/METHOD.md section 2): ``forward`` returns the logits of both heads and the features E
produces, at the layer ``feature_layer`` names.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from cosalign.models.resnet import ResNet

FEATURE_LAYERS = ("layer4", "layer4_pre", "layer3")
BN_MODES = ("train", "affine_frozen", "frozen")


class SegOutput(NamedTuple):
    logits: Tensor  # (B, K, h, w) main head, at output stride 8
    aux: Tensor  # (B, K, h, w) auxiliary head on layer3
    features: Tensor  # (B, C, h, w) features used by the alignment loss


class ASPPClassifier(nn.Module):
    """ASPP-v2: parallel 3x3 convs with dilations ``rates`` straight to K logits, summed.

    All branches are summed (some older code returns after the first two).
    Shape: (B, C, h, w) -> (B, K, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int,
                 rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.branches)


class DeepLabV2(nn.Module):
    """DeepLab-v2 with main and auxiliary ASPP heads.

    Args:
        num_classes: K.
        depth, width: backbone ResNet depth (18/34/50/101) and channel multiplier.
        rates: ASPP dilation rates (paper: 6, 12, 18, 24).
        feature_layer: "layer4" (post-ReLU, the head's input), "layer4_pre" (before the last
            ReLU) or "layer3".
        bn: "train" (ordinary BatchNorm), "affine_frozen" (scale and shift fixed, statistics
            still updated in train mode: the DeepLab/ADVENT setting) or "frozen" (also kept in
            eval mode).
    """

    def __init__(self, num_classes: int = 19, depth: int = 101, width: float = 1.0,
                 rates: tuple[int, ...] = (6, 12, 18, 24), feature_layer: str = "layer4",
                 bn: str = "affine_frozen") -> None:
        super().__init__()
        if feature_layer not in FEATURE_LAYERS:
            raise ValueError(
                f"feature_layer must be one of {FEATURE_LAYERS}, got {feature_layer!r}")
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
        self.backbone = ResNet(depth, width)
        c3, c4 = self.backbone.channels
        self.head = ASPPClassifier(c4, num_classes, tuple(rates))
        self.aux_head = ASPPClassifier(c3, num_classes, tuple(rates))
        self.feature_layer, self.bn = feature_layer, bn
        self.num_classes = num_classes
        self.feature_dim = c3 if feature_layer == "layer3" else c4
        if bn != "train":
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLabV2:
        super().train(mode)
        if self.bn == "frozen":
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> SegOutput:
        c3, c4_pre, c4 = self.backbone(x)
        features = {"layer4": c4, "layer4_pre": c4_pre, "layer3": c3}[self.feature_layer]
        return SegOutput(self.head(c4), self.aux_head(c3), features)

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """SGD parameter groups: backbone at ``lr``, both heads at ``head_lr_mult * lr``."""
        heads = list(self.head.parameters()) + list(self.aux_head.parameters())
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return [
            {"params": backbone, "lr": lr, "lr_mult": 1.0},
            {"params": heads, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult},
        ]

