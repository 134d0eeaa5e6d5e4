"""Networks: DeepLab-v2 on a Caffe-style dilated ResNet, and the AdvEnt discriminator."""

from cosalign.models.deeplab import DeepLabV2, SegOutput
from cosalign.models.discriminator import Discriminator


def build_model(cfg, num_classes: int) -> DeepLabV2:
    """A :class:`DeepLabV2` from a :class:`cosalign.config.ModelConfig`."""
    return DeepLabV2(num_classes=num_classes, depth=cfg.depth, width=cfg.width,
                     rates=tuple(cfg.rates), feature_layer=cfg.feature_layer, bn=cfg.bn)


__all__ = ["DeepLabV2", "Discriminator", "SegOutput", "build_model"]
