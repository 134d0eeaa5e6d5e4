"""cosalign: unsupervised domain adaptation for semantic segmentation by maximizing cosine
similarity between spatial features (Chung, Kim, Kwak, WACV 2022)."""

__version__ = "0.1.0"
