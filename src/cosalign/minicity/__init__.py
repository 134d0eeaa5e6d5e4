"""MiniCity, the embedded benchmark: procedural street scenes (scene.py) rendered in a style
(styles.py, render.py) and written as GTA5 and Cityscapes trees (generate.py); the randomized
pretraining set (randomized.py) and ``cosalign pretrain`` (pretrain.py) that stand in for
ImageNet; the preset with its roots (preset.py). The real dataset readers live in data/."""

from cosalign.minicity.generate import MiniCitySpec, content_hash, make_minicity
from cosalign.minicity.preset import minicity_config
from cosalign.minicity.styles import STYLES, TARGET_STYLES

__all__ = ["STYLES", "TARGET_STYLES", "MiniCitySpec", "content_hash", "make_minicity",
           "minicity_config"]
