"""The transformer network: a MiT encoder (models/mit.py) with SegFormer's or DAFormer's head
(models/fusion_heads.py), the network of DAFormer, HRDA and MIC.

``forward`` returns :class:`MiTOutput`, read as DeepLab-v2's :class:`SegOutput` is: the logits
at stride 4, no auxiliary head (``aux`` is None), and as ``features`` the head's fused map
(B, E, H / 4, W / 4), E = 256: the last map before the classifier, as DeepLab-v2's layer4 is
the map before its ASPP classifier (docs/METHOD.md section 11 says why); and ``encoder``, the
encoder's last stage (B, 512, H / 32, W / 32), which DAFormer's feature distance compares with
ImageNet's.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from cosalign.models.fusion_heads import DAFormerHead, SegFormerHead
from cosalign.models.mit import MiT

HEADS = {"segformer": SegFormerHead, "daformer": DAFormerHead}


class MiTOutput(NamedTuple):
    logits: Tensor  # (B, K, H / 4, W / 4)
    aux: None  # no auxiliary head
    features: Tensor  # (B, E, H / 4, W / 4) the head's fused map: what the alignment sees
    encoder: Tensor  # (B, C_4, H / 32, W / 32) the encoder's last stage (feature distance)


class MiTSegmenter(nn.Module):
    """MiT-``preset`` encoder + ``head`` ("segformer" or "daformer") with E = ``embed``.

    Shapes: (B, 3, H, W) -> logits (B, K, H / 4, W / 4), features (B, E, H / 4, W / 4).
    """

    def __init__(self, num_classes: int = 19, preset: str = "b5", head: str = "daformer",
                 embed: int = 256, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.backbone = MiT(preset, drop_path_rate)
        self.head = HEADS[head](self.backbone.channels, num_classes, embed)
        self.num_classes, self.feature_dim = num_classes, embed

    def forward(self, x: Tensor) -> MiTOutput:
        maps = self.backbone(x)
        logits, features = self.head(maps)
        return MiTOutput(logits, None, features, maps[-1])

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """DAFormer's groups: the encoder at ``lr``, the head at ``head_lr_mult * lr``; the
        encoder's LayerNorms (every parameter whose name holds "norm") take no weight decay,
        the others the optimizer's (the head's BatchNorms too, as in DAFormer, whose rule
        matches names and whose head names its norms "bn")."""
        decay, no_decay = [], []
        for name, p in self.backbone.named_parameters():
            (no_decay if "norm" in name else decay).append(p)
        return [
            {"params": decay, "lr": lr, "lr_mult": 1.0},
            {"params": no_decay, "lr": lr, "lr_mult": 1.0, "weight_decay": 0.0},
            {"params": list(self.head.parameters()), "lr": lr * head_lr_mult,
             "lr_mult": head_lr_mult},
        ]
