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


@torch.no_grad()
def _select_in_chunks(select, t: Tensor, r: Tensor, tau: float, chunk_bytes: int,
                      dtype: torch.dtype) -> tuple[Tensor, int]:
    """G (N, C) and the selected count, building S = T R^T a chunk of rows at a time so that
    at most ``chunk_bytes`` of it exist at once."""
    g = torch.empty_like(t)
    count = 0
    rows = max(1, chunk_bytes // (4 * max(r.shape[0], 1)))
    r_mm = r.to(dtype)
    for i in range(0, t.shape[0], rows):
        g_chunk, n = select(t[i : i + rows].to(dtype) @ r_mm.T, r, r_mm, tau)  # S: (rows, M)
        g[i : i + rows] = g_chunk
        count += n
    return g, count


def cosine_alignment(
    f_t: Tensor,
    ref: Tensor,
    *,
    tau: float,
    match: str = "all",
    ref_cls: Tensor | None = None,
    pseudo: Tensor | None = None,
    chunk_bytes: int = 64 << 20,
    matmul_dtype: torch.dtype | None = None,
) -> Alignment:
    """The loss and its selection counts.

    Shape:
        f_t: (B, C, h, w) target features (gradient flows here only).
        ref: (M, C) reference features, L2-normalized; treated as constant.
        ref_cls: (M,) class of each reference entry; pseudo: (B, h, w) class predicted by the
            head at each target position. Both or neither (class_restrict="pseudo").
    ``matmul_dtype=torch.bfloat16`` runs the products in bf16 (normalization stays fp32); the
    default is the features' dtype promoted to at least float32.

    Example:
        >>> f_t = torch.randn(2, 16, 4, 8, requires_grad=True)
        >>> ref = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
        >>> cosine_alignment(f_t, ref, tau=0.2).loss.backward()
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if (ref_cls is None) != (pseudo is None):
        raise ValueError("class restriction needs both ref_cls and pseudo (or neither)")
    select = _select_all if match == "all" else _select_max
    t = flatten_normalized(f_t)  # (N, C)
    r = ref.detach().to(t.dtype)
    matmul_dtype = matmul_dtype or t.dtype
    g, count, pairs = torch.zeros_like(t), 0, 0
    if pseudo is None and r.shape[0] > 0:
        g, count = _select_in_chunks(select, t.detach(), r, tau, chunk_bytes, matmul_dtype)
        pairs = t.shape[0] * r.shape[0]
    elif pseudo is not None:
        rows_cls = pseudo.reshape(-1)
        for k in torch.unique(rows_cls).tolist():
            rows, r_k = rows_cls == k, r[ref_cls == k]
            if r_k.shape[0] == 0:
                continue
            g_k, count_k = _select_in_chunks(select, t.detach()[rows], r_k, tau, chunk_bytes,
                                             matmul_dtype)
            g[rows] = g_k
            count += count_k
            pairs += int(rows.sum()) * r_k.shape[0]
    loss = (count - (t * g).sum()) / max(count, 1)
    return Alignment(loss, count, pairs)


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
