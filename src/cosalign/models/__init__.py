"""Networks: DeepLab-v2 on a Caffe-style dilated ResNet, a MiT encoder with SegFormer's or
DAFormer's head, and the AdvEnt discriminator."""

from torch import nn

from cosalign.models.deeplab import DeepLabV2, SegOutput
from cosalign.models.discriminator import Discriminator
from cosalign.models.hrda import HRDAOutput, HRDASegmenter
from cosalign.models.transformer import MiTSegmenter


def build_model(cfg, num_classes: int) -> nn.Module:
    """The network ``cfg.arch`` names, from a :class:`cosalign.config.ModelConfig`: a
    :class:`DeepLabV2` or a :class:`MiTSegmenter` (``mit_b0`` ... ``mit_b5``), either inside
    :class:`HRDASegmenter` with ``cfg.hrda.enabled``."""
    if cfg.arch.startswith("mit_"):
        model = MiTSegmenter(num_classes, preset=cfg.arch[len("mit_"):], head=cfg.head,
                             embed=cfg.embed)
    else:
        model = DeepLabV2(num_classes=num_classes, depth=cfg.depth, width=cfg.width,
                          rates=tuple(cfg.rates), feature_layer=cfg.feature_layer, bn=cfg.bn)
    h = cfg.hrda
    if not h.enabled:
        return model
    return HRDASegmenter(model, tuple(h.detail_crop), h.detail_weight, h.classwise,
                         h.attention_embed, h.overlap, h.window and tuple(h.window),
                         align_features=h.align_features)


__all__ = ["DeepLabV2", "Discriminator", "HRDAOutput", "HRDASegmenter", "MiTSegmenter",
           "SegOutput", "build_model"]
