"""Mix Transformer (MiT) encoders B0-B5: SegFormer's (Xie et al., "SegFormer: Simple and
Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021), the encoder of
DAFormer, HRDA and MIC.

Four stages; stage i embeds its input with an overlapping patch embedding (a convolution of
kernel 7 and stride 4 for the first stage, 3 and 2 for the others, then LayerNorm), runs
``depths[i]`` transformer blocks on the tokens, and normalizes them; its output is the map
(B, C_i, H / s_i, W / s_i) at stride s_i = 4, 8, 16, 32. A block is

    x = x + DropPath(Attention(LN(x))),   x = x + DropPath(MixFFN(LN(x)))

Attention is multi-head self-attention whose keys and values come from the token map reduced
by a strided convolution of ratio R (8, 4, 2, 1 by stage; then LayerNorm), so a stage-1 map of
N tokens attends over N / R^2 keys. Mix-FFN is Linear(C, 4C), a 3x3 depthwise convolution on
the map (the only positional information: no position embeddings), GELU, Linear(4C, C).
Stochastic depth rises linearly from 0 to 0.1 over all blocks.

Module names are those of SegFormer's ImageNet files (``patch_embed1.proj.weight``,
``block1.0.attn.q.weight``, ``block1.0.mlp.dwconv.dwconv.weight``, ``norm1.weight``), so a file
loads by name (models/weights.py).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

# channels, blocks per stage; every preset: heads (1, 2, 5, 8), reduction ratios (8, 4, 2, 1)
PRESETS = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
HEADS = (1, 2, 5, 8)
REDUCTION = (8, 4, 2, 1)
EPS = 1e-6  # the blocks' and stages' LayerNorm (the embeddings' and reductions' use 1e-5)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: (B, C_in, H, W) -> tokens (B, H' W', C) and (H', W')."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    """Multi-head self-attention with keys and values from the map reduced by ``ratio``:
    (B, N, C) tokens of an (h, w) map -> (B, N, C); softmax(q k^T / sqrt(C / heads)) v."""

    def __init__(self, dim: int, heads: int, ratio: int) -> None:
        super().__init__()
        self.heads, self.ratio = heads, ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if ratio > 1:
            self.sr = nn.Conv2d(dim, dim, ratio, ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        src = x
        if self.ratio > 1:
            src = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            src = self.norm(src)
        k, v = self.kv(src).reshape(b, -1, 2, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution of tokens as an (h, w) map (named as in the weight files)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear(C, 4C) -> 3x3 depthwise conv -> GELU -> Linear(4C, C), on (B, N, C) tokens."""

    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.dwconv = DepthwiseConv(ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class DropPath(nn.Module):
    """Stochastic depth: each sample's residual branch dropped with probability ``p`` (and the
    kept ones scaled by 1 / (1 - p)); identity when not training. A module, as timm's, so that
    self-training can switch it off in the teacher alone."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ratio: int, drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, heads, ratio)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = MixFFN(dim)
        self.drop_path = DropPath(drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MiT(nn.Module):
    """A MiT encoder: (B, 3, H, W) -> four maps (B, C_i, H / s_i, W / s_i), s_i = 4, 8, 16, 32.

    Args:
        preset: "b0" ... "b5" (:data:`PRESETS`).
        drop_path_rate: stochastic depth of the last block (0 for the first, linear between).
    """

    def __init__(self, preset: str = "b5", drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"MiT preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        dims, depths = PRESETS[preset]
        self.channels = dims
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # 0 ... rate
        first = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            setattr(self, f"patch_embed{i + 1}",
                    PatchEmbed(3 if i == 0 else dims[i - 1], dim, kernel, stride))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(dim, HEADS[i], REDUCTION[i], rates[first + j]) for j in range(depth)))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=EPS))
            first += depth
        self.apply(_init)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            maps.append(x)
        return maps


def _init(m: nn.Module) -> None:
    """From scratch as SegFormer: Linear truncated normal (std 0.02) with zero bias; LayerNorm
    1 and 0; Conv2d normal with std sqrt(2 / fan_out), fan_out = k * k * out / groups."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(m.bias)
