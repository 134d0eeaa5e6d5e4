"""The paper's loss: maximize the cosine similarity between target and source spatial features.

Chung, Kim, Kwak, "Maximizing Cosine Similarity Between Spatial Features for Unsupervised Domain
Adaptation in Semantic Segmentation", WACV 2022 (arXiv 2102.13002); our reading is
shared/METHOD.md section 2.

With T = normalize(f_t) flattened to (N, C) and a detached, normalized reference set R (M, C):

    S = T R^T                                    (N, M), values in [-1, 1]
    mask_ij = [S_ij > tau]                       match="all": every element above tau
    mask_ij = [j = argmax_j' S_ij'] [S_ij > tau] match="max": only the row's best element
    L = sum_ij mask_ij (1 - S_ij) / max(sum_ij mask_ij, 1)

With ``ref_cls`` and ``pseudo`` given (class_restrict="pseudo"), row i only sees the entries whose
class is ``pseudo[i]``. The mask is piecewise constant, so with G = mask R (N, C) computed without
gradient, L = (count - sum_i T_i . G_i) / max(count, 1) has the same value and the same gradient,
-G / count, as the literal formula. S is built in chunks of rows and never held whole: memory is
O(N C + chunk M) instead of the O(N M) that plain autograd keeps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

MATCH_MODES = ("all", "max")


class Alignment(NamedTuple):
    loss: Tensor  # scalar
    selected: int  # number of selected (target, reference) pairs
    pairs: int  # number of candidate pairs (N * M, or the per-class sum under class restriction)


def flatten_normalized(f: Tensor) -> Tensor:
    """(B, C, h, w) features -> (B*h*w, C), L2-normalized along C, in at least float32."""
    f = f.to(torch.promote_types(f.dtype, torch.float32))
    return F.normalize(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), dim=1)


def _select_all(s: Tensor, r: Tensor, r_mm: Tensor, tau: float) -> tuple[Tensor, int]:
    """Rows of G = [S > tau] R for one chunk of S (rows, M), and its selected count.
    ``r_mm`` is R in the matmul dtype."""
    s = s.gt_(tau)  # in place: 1.0 where selected, else 0.0
    return s @ r_mm, int(torch.count_nonzero(s))


def _select_max(s: Tensor, r: Tensor, r_mm: Tensor, tau: float) -> tuple[Tensor, int]:
    """Rows of G: the entry of largest S where it exceeds tau, else 0; and the count."""
    best, idx = s.max(dim=1)  # (rows,)
    keep = best > tau
    return r[idx] * keep[:, None], int(keep.sum())


def _groups(pseudo: Tensor | None, n: int, r: Tensor, ref_cls: Tensor | None):
    """(positions, reference rows) pairs: every position (a range) against the whole reference
    set, or under class restriction the positions predicted as k (an index tensor) against the
    entries of class k."""
    if pseudo is None:
        if r.shape[0] > 0:
            yield range(n), r
        return
    flat = pseudo.reshape(-1)
    for k in torch.unique(flat).tolist():
        r_k = r[ref_cls == k]
        if r_k.shape[0] > 0:
            yield (flat == k).nonzero().squeeze(1), r_k


def _rows(f: Tensor) -> Tensor:
    """(B, C, h, w) -> (B*h*w, C), one row per position: a view when B == 1 or f is
    channels_last, else a copy."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


class _CosineAlignment(torch.autograd.Function):
    """Forward: L and G = mask R, a chunk of target positions at a time. Backward:
    dL/dx = -(G - T (T . G)) / (count |x|) per position, from x, 1/|x| and G alone."""

    @staticmethod
    def forward(ctx, f_t, r, ref_cls, pseudo, tau, match, chunk_bytes, mm_dtype):
        select = _select_all if match == "all" else _select_max
        dtype = torch.promote_types(f_t.dtype, torch.float32)
        x = _rows(f_t.detach())  # (N, C)
        inv_norm = 1 / x.to(dtype).norm(dim=1).clamp_min(1e-12)  # (N,)
        g = torch.zeros(x.shape, dtype=dtype, device=x.device)  # G, one row per position
        dot = torch.zeros((), dtype=torch.float64, device=x.device)
        count = pairs = 0
        for pos, r_k in _groups(pseudo, x.shape[0], r, ref_cls):
            r_mm = r_k.to(mm_dtype)
            step = max(1, chunk_bytes // (4 * r_k.shape[0]))
            for i in range(0, len(pos), step):
                p = pos[i : i + step]
                if isinstance(p, range):  # a slice, not a gather
                    p = slice(p.start, p.stop)
                # a row-major copy, never a view of f_t: it is normalized in place
                t = x[p].to(dtype).clone(memory_format=torch.contiguous_format)
                t *= inv_norm[p, None]  # (rows, C)
                g_c, n = select(t.to(mm_dtype) @ r_mm.T, r_k, r_mm, tau)  # S: (rows, M_k)
                g[p] = g_c.to(dtype)
                dot += (t * g_c).sum(dtype=torch.float64)
                count += n
            pairs += len(pos) * r_k.shape[0]
        ctx.save_for_backward(f_t, inv_norm, g)
        ctx.count, ctx.chunk_bytes = count, chunk_bytes
        loss = ((count - dot) / max(count, 1)).to(dtype)
        ctx.mark_non_differentiable(count_t := torch.tensor(count), pairs_t := torch.tensor(pairs))
        return loss, count_t, pairs_t

    @staticmethod
    def backward(ctx, grad_loss, _count, _pairs):
        f_t, inv_norm, g = ctx.saved_tensors
        C = f_t.shape[1]
        x = _rows(f_t.detach())
        grad = torch.empty_like(f_t)  # f_t's layout, so that nothing downstream copies it
        rows = _rows(grad)  # a view when it can be one (B == 1, or channels_last)
        direct = rows.untyped_storage().data_ptr() == grad.untyped_storage().data_ptr()
        scale = -grad_loss.to(g.dtype) / max(ctx.count, 1)
        step = max(1, min(ctx.chunk_bytes, 16 << 20) // (4 * C))  # three (rows, C) temporaries
        for i in range(0, x.shape[0], step):
            sl = slice(i, i + step)
            inv = inv_norm[sl, None]
            t, g_c = x[sl].to(g.dtype) * inv, g[sl]  # (rows, C)
            dots = (t * g_c).sum(1, keepdim=True)  # (rows, 1): T . G
            rows[sl] = torch.addcmul(g_c, t, dots, value=-1).mul_(scale * inv)
        if not direct:
            grad.copy_(rows.reshape(grad.shape[0], *grad.shape[2:], C).permute(0, 3, 1, 2))
        return grad, None, None, None, None, None, None, None


def cosine_alignment(
    f_t: Tensor,
    ref: Tensor,
    *,
    tau: float,
    match: str = "all",
    ref_cls: Tensor | None = None,
    pseudo: Tensor | None = None,
    chunk_bytes: int = 32 << 20,
    matmul_dtype: torch.dtype | None = None,
) -> Alignment:
    """The loss and its selection counts.

    Shape:
        f_t: (B, C, h, w) target features (gradient flows here only).
        ref: (M, C) reference features, L2-normalized; treated as constant.
        ref_cls: (M,) class of each reference entry; pseudo: (B, h, w) class predicted by the
            head at each target position. Both or neither (class_restrict="pseudo").
    ``matmul_dtype=torch.bfloat16`` runs the products in bf16 (normalization stays fp32); the
    default is the features' dtype promoted to at least float32. ``chunk_bytes`` bounds the
    part of S that exists at once; besides it, the forward keeps G (the size of f_t in fp32)
    and 1/|x| per position, and the backward writes the gradient chunk by chunk.

    Example:
        >>> f_t = torch.randn(2, 16, 4, 8, requires_grad=True)
        >>> ref = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
        >>> cosine_alignment(f_t, ref, tau=0.2).loss.backward()
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if (ref_cls is None) != (pseudo is None):
        raise ValueError("class restriction needs both ref_cls and pseudo (or neither)")
    dtype = torch.promote_types(f_t.dtype, torch.float32)
    r = ref.detach().to(dtype)
    loss, count, pairs = _CosineAlignment.apply(
        f_t, r, ref_cls, pseudo, tau, match, chunk_bytes, matmul_dtype or dtype)
    return Alignment(loss, int(count), int(pairs))


def cosine_alignment_plain(
    f_t: Tensor,
    ref: Tensor,
    *,
    tau: float,
    match: str = "all",
    ref_cls: Tensor | None = None,
    pseudo: Tensor | None = None,
) -> Tensor:
    """The literal formula with plain autograd over the whole (N, M) matrix: the reference that
    tests and benchmarks/loss_bench.py compare :func:`cosine_alignment` with."""
    t = flatten_normalized(f_t)
    s = t @ ref.detach().to(t.dtype).T  # (N, M)
    allowed = torch.ones_like(s, dtype=torch.bool)
    if pseudo is not None:
        allowed = pseudo.reshape(-1, 1) == ref_cls.reshape(1, -1)
    s_allowed = s.masked_fill(~allowed, -2.0)
    if match == "all":
        mask = s_allowed > tau
    else:
        best = s_allowed.max(dim=1, keepdim=True).values
        first = torch.zeros_like(allowed)
        first.scatter_(1, s_allowed.argmax(dim=1, keepdim=True), True)
        mask = first & (best > tau)
    return (mask * (1 - s)).sum() / mask.sum().clamp(min=1)


class CosineAlignmentLoss(torch.nn.Module):
    """``nn.Module`` form of :func:`cosine_alignment` for use in your own training loop.

    Example:
        >>> loss_fn = CosineAlignmentLoss(tau=0.5)
        >>> dictionary = ClassFeatureDictionary(num_classes=19, capacity=100, dim=2048)
        >>> ...  # dictionary.update(f_s.detach(), y_s) after each step
        >>> loss = loss_fn(f_t, *dictionary.reference())
    """

    def __init__(self, tau: float, match: str = "all", class_restrict: str = "none") -> None:
        super().__init__()
        if class_restrict not in ("none", "pseudo"):
            raise ValueError(f"class_restrict must be 'none' or 'pseudo', got {class_restrict!r}")
        self.tau, self.match, self.class_restrict = tau, match, class_restrict

    def forward(
        self, f_t: Tensor, ref: Tensor, ref_cls: Tensor, pseudo: Tensor | None = None
    ) -> Tensor:
        if self.class_restrict == "none":
            return cosine_alignment(f_t, ref, tau=self.tau, match=self.match).loss
        if pseudo is None:
            raise ValueError("class_restrict='pseudo' needs the head's predictions as `pseudo`")
        return cosine_alignment(
            f_t, ref, tau=self.tau, match=self.match, ref_cls=ref_cls, pseudo=pseudo
        ).loss
