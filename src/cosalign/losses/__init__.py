"""Adaptation losses, each usable in your own training loop."""

from cosalign.losses.cosine import CosineAlignmentLoss, cosine_alignment, cosine_alignment_plain
from cosalign.losses.dictionary import ClassFeatureDictionary, labelled_features
from cosalign.losses.entropy import entropy_loss, self_information

__all__ = [
    "ClassFeatureDictionary",
    "CosineAlignmentLoss",
    "cosine_alignment",
    "cosine_alignment_plain",
    "entropy_loss",
    "labelled_features",
    "self_information",
]
