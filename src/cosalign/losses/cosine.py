"""The paper's loss: maximize the cosine similarity between target and source spatial features.

Chung, Kim, Kwak, "Maximizing Cosine Similarity Between Spatial Features for Unsupervised Domain
Adaptation in Semantic Segmentation", WACV 2022 (arXiv 2102.13002); our reading is
docs/METHOD.md section 2.

With T = normalize(f_t) flattened to (N, C) and a detached, normalized reference set R (M, C):

    S = T R^T                                    (N, M), values in [-1, 1]
    mask_ij = [S_ij > tau]                       match="all": every element above tau
    mask_ij = [j = argmax_j' S_ij'] [S_ij > tau] match="max": only the row's best element
    L = sum_ij mask_ij (1 - S_ij) / max(sum_ij mask_ij, 1)

With ``ref_cls`` and ``pseudo`` given (class_restrict="pseudo"), row i only sees the entries whose
class is ``pseudo[i]``. The mask is piecewise constant, so with G = mask R (N, C) computed without
gradient, L = (count - sum_i T_i . G_i) / max(count, 1) has the same value and the same gradient,
-G / count, as the literal formula. S is built one block (at most 4096 reference entries x a
chunk of positions: 32 MiB on a CPU, 256 MiB on a GPU) at a time and never held whole: memory is
O(N C + block) instead of the O(N M) that plain autograd keeps. The time is that of the two
products (one for "max") plus a few passes over the N x C features; docs/PERFORMANCE.md
measures both. Nothing in the loss waits for the GPU except, under class restriction, one
transfer of the per-class counts; the selected count stays a tensor until someone reads it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

MATCH_MODES = ("all", "max")
CHUNK_BYTES = 32 << 20  # default bound on the block of S that exists at once, on a CPU
GPU_CHUNK_BYTES = 256 << 20  # on a GPU: one block spans every position at the paper's N


class Alignment(NamedTuple):
    loss: Tensor  # scalar
    selected: Tensor  # 0-dim: number of selected (target, reference) pairs, on f_t's device
    pairs: int  # number of candidate pairs (N * M, or the per-class sum under class restriction)


def default_chunk_bytes(device: torch.device) -> int:
    """The bound on a block of S: cache-sized on a CPU, large on a GPU (fewer, larger
    products; the block is still allocated only as large as the shapes need)."""
    return CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES


def flatten_normalized(f: Tensor) -> Tensor:
    """(B, C, h, w) features -> (B*h*w, C), L2-normalized along C, in at least float32."""
    f = f.to(torch.promote_types(f.dtype, torch.float32))
    return F.normalize(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), dim=1)


def _as_columns(f: Tensor) -> Tensor:
    """(B, C, h, w) -> (C, B*h*w), one column per position: a view of f when B == 1 or f is
    channels_last (the paper's batch of one costs no copy), else a copy."""
    return f.transpose(0, 1).reshape(f.shape[1], -1)


def _column_dots(a: Tensor, b: Tensor, cols: int = 1024) -> Tensor:
    """(P,) column dot products sum_c a[c, j] b[c, j] of (C, P) a and b, in float32 or wider,
    ``cols`` columns at a time: a product into one reused buffer and a matrix-vector sum,
    several times faster on CPU than a reduction along C."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    if a.device.type != "cpu":  # no cache to fit on a GPU: one pass
        return torch.mul(a, b).sum(0, dtype=dtype)
    ones = torch.ones(1, a.shape[0], dtype=dtype, device=a.device)
    buf = torch.empty(a.shape[0], min(cols, a.shape[1]), dtype=dtype, device=a.device)
    out = torch.empty(a.shape[1], dtype=dtype, device=a.device)
    for j in range(0, a.shape[1], cols):
        sl = slice(j, min(j + cols, a.shape[1]))
        prod = torch.mul(a[:, sl], b[:, sl], out=buf[:, : sl.stop - j])
        out[sl] = (ones @ prod).squeeze(0)
    return out


def _block(buf: Tensor, rows: int, cols: int) -> Tensor:
    """A contiguous (rows, cols) matrix at the start of the flat buffer ``buf``: the blocks of S
    reuse one allocation (a fresh 32 MiB one per block costs a third of the product's time in
    page faults on CPU)."""
    return buf[: rows * cols].view(rows, cols)


def _tile_rows(m: int, most: int) -> int:
    """Rows of the first (largest) of the near-equal tiles that split m rows into tiles of at
    most ``most``: ceil(m / ceil(m / most))."""
    return -(-m // -(-m // most))


def _ref_tiles(r: Tensor, most: int = 4096) -> list[tuple[int, Tensor]]:
    """(offset, tile) pairs that split the reference rows into near-equal tiles of at most
    ``most`` entries. S is built one (tile x chunk of positions) block at a time; blocks of
    about 4096 x 2048 keep the products near this CPU's peak rate."""
    size = _tile_rows(r.shape[0], most)
    return [(o, r[o : o + size]) for o in range(0, r.shape[0], size)]


def _groups(pseudo: Tensor | None, n: int, r: Tensor,
            ref_cls: Tensor | None) -> list[tuple[slice | Tensor, Tensor]]:
    """(positions, reference rows) pairs: all n positions (a slice) against the whole reference
    set, or under class restriction the positions predicted as k (an index tensor) against the
    entries of class k. Positions and entries are sorted by class once, so the groups are
    slices of those orders and the host learns only the per-class counts (one transfer)."""
    if pseudo is None:
        return [(slice(0, n), r)] if r.shape[0] > 0 else []
    flat = pseudo.reshape(-1)
    if r.shape[0] == 0 or flat.numel() == 0:
        return []
    k = int(torch.maximum(flat.max(), ref_cls.max())) + 1
    counts = torch.stack((flat.bincount(minlength=k), ref_cls.bincount(minlength=k))).tolist()
    pos_order = torch.argsort(flat, stable=True)
    r_sorted = r[torch.argsort(ref_cls, stable=True)]
    out, p0, q0 = [], 0, 0
    for n_k, m_k in zip(*counts):
        if n_k and m_k:
            out.append((pos_order[p0 : p0 + n_k], r_sorted[q0 : q0 + m_k]))
        p0, q0 = p0 + n_k, q0 + m_k
    return out


def _len(pos: slice | Tensor) -> int:
    return pos.stop - pos.start if isinstance(pos, slice) else len(pos)


def _chunks(pos: slice | Tensor, step: int):
    """``pos`` in pieces of ``step`` positions: slices stay slices (views, not gathers)."""
    n = pos.stop if isinstance(pos, slice) else len(pos)
    for i in range(0, n, step):
        yield slice(i, min(i + step, n)) if isinstance(pos, slice) else pos[i : i + step]


def _match_all(x_mm, thr, tiles, g_c, count, buf):
    """G columns for match="all": g_c = sum over tiles of R_tile^T [R_tile x > thr], written
    over whatever g_c held. x_mm: (C, n) raw features in the matmul dtype; thr: (n,) tau |x|;
    g_c: (C, n) float32 or wider; buf: flat scratch for one block of S."""
    for k, (_, r_t) in enumerate(tiles):
        s = torch.mm(r_t, x_mm, out=_block(buf, r_t.shape[0], x_mm.shape[1]))  # (M_t, n)
        s.gt_(thr)  # S > tau as 1.0 / 0.0, in place
        count += s.sum(1, dtype=torch.float32).sum(dtype=count.dtype)  # exact: rows < 2^24
        if s.dtype == g_c.dtype:
            g_c.addmm_(r_t.T, s, beta=min(k, 1))  # beta=0: g_c's old content is ignored
        elif k == 0:
            g_c.copy_(r_t.T @ s)
        else:
            g_c += r_t.T @ s


def _match_max(x_mm, thr, tiles, r, g_c, count, buf):
    """G columns for match="max": the entry of largest S where it exceeds tau, else 0. Returns
    x . G per column, which is that entry's raw product (or 0)."""
    best = torch.full((x_mm.shape[1],), -torch.inf, dtype=x_mm.dtype, device=x_mm.device)
    idx = torch.zeros(x_mm.shape[1], dtype=torch.long, device=x_mm.device)
    for o, r_t in tiles:
        s = torch.mm(x_mm.T, r_t.T, out=_block(buf, x_mm.shape[1], r_t.shape[0]))  # (n, M_t)
        v, i = s.max(dim=1)  # the max along rows: several times faster than along columns
        better = v > best  # strict: ties keep the first entry, like argmax
        best, idx = torch.where(better, v, best), torch.where(better, i + o, idx)
    keep = best > thr
    count += keep.sum()
    step = 256 if g_c.device.type == "cpu" else len(idx)  # a cache-sized block at a time on CPU
    for j in range(0, len(idx), step):  # the winning rows, transposed
        g_c[:, j : j + step] = r[idx[j : j + step]].T
    g_c.mul_(keep)
    return best.to(g_c.dtype) * keep


class _CosineAlignment(torch.autograd.Function):
    """Forward: L and G = mask R, a block of S at a time, on the (C, N) columns of the features
    with x unnormalized (S_ij > tau  <=>  R_j . x_i > tau |x_i|). Backward, per position:
    dL/dx = -(G - T (T . G)) / (count |x|) = a G + b x with a = -1 / (count |x|) and
    b = (x . G) / (count |x|^3), from x, 1/|x|, x . G and G alone."""

    @staticmethod
    def forward(ctx, f_t, r, ref_cls, pseudo, tau, match, chunk_bytes, mm_dtype):
        x = _as_columns(f_t.detach())  # (C, N)
        N = x.shape[1]
        dtype = torch.promote_types(x.dtype, torch.float32)
        every = pseudo is None and r.shape[0] > 0  # then every column of G gets written
        g = (torch.empty_like if every else torch.zeros_like)(x, dtype=dtype)  # G: (C, N)
        inv_norm = _column_dots(x, x).sqrt_().clamp_min_(1e-12).reciprocal_()  # (N,)
        thr = (tau / inv_norm).to(mm_dtype)  # S_ij > tau  <=>  R_j . x_i > tau |x_i|
        xg = torch.zeros(N, dtype=dtype, device=x.device)  # x . G per position
        count = torch.zeros((), dtype=torch.float64, device=x.device)
        pairs = 0
        elems = max(1, chunk_bytes // 4)  # at most this many elements of S at once
        most = min(4096, elems)  # reference rows per tile
        groups = _groups(pseudo, N, r, ref_cls)
        rows = [(_tile_rows(r_k.shape[0], most), _len(pos)) for pos, r_k in groups]
        need = max((t * min(n, max(1, elems // t)) for t, n in rows), default=1)  # largest block
        buf = torch.empty(need, dtype=mm_dtype, device=x.device)  # one block of S at a time
        for pos, r_k in groups:
            r_mm = r_k.to(mm_dtype)
            tiles = _ref_tiles(r_mm, most=most)
            step = max(1, elems // tiles[0][1].shape[0])
            for p in _chunks(pos, step):
                x_c = x[:, p]  # (C, n): a view for a slice, a gather for an index
                direct = isinstance(p, slice)
                g_c = g[:, p] if direct else torch.empty_like(x_c, dtype=dtype)
                if match == "all":
                    _match_all(x_c.to(mm_dtype), thr[p], tiles, g_c, count, buf)
                else:
                    xg[p] = _match_max(x_c.to(mm_dtype), thr[p], tiles, r_k, g_c, count, buf)
                if not direct:
                    g[:, p] = g_c
            pairs += _len(pos) * r_k.shape[0]
        if match == "all":
            xg = _column_dots(x, g)
        dot = (inv_norm.double() * xg).sum()
        loss = ((count - dot) / count.clamp_min(1)).to(dtype)
        ctx.save_for_backward(x, inv_norm, xg, g, count)
        ctx.f_shape = f_t.shape
        ctx.viewed = x.untyped_storage().data_ptr() == f_t.untyped_storage().data_ptr()
        pairs_t = torch.tensor(pairs)  # a host number: a CPU tensor on purpose, no transfer
        ctx.mark_non_differentiable(count, pairs_t)
        return loss, count, pairs_t

    @staticmethod
    def backward(ctx, grad_loss, _count, _pairs):
        x, inv_norm, xg, g, count = ctx.saved_tensors
        scale = grad_loss.to(g.dtype) / count.clamp_min(1).to(g.dtype)
        a, b = -scale * inv_norm, scale * inv_norm.pow(3) * xg  # (N,) each
        grad = torch.mul(g, a).addcmul_(x, b)  # (C, N), laid out like g, which is like x
        B, C, h, w = ctx.f_shape
        grad = grad.view(C, B, h, w).transpose(0, 1).to(x.dtype)  # f_t's layout if x viewed it
        return (grad if ctx.viewed else grad.contiguous()), None, None, None, None, None, None, None


def cosine_alignment(
    f_t: Tensor,
    ref: Tensor,
    *,
    tau: float,
    match: str = "all",
    ref_cls: Tensor | None = None,
    pseudo: Tensor | None = None,
    chunk_bytes: int | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> Alignment:
    """The loss and its selection counts.

    Shape:
        f_t: (B, C, h, w) target features (gradient flows here only).
        ref: (M, C) reference features, L2-normalized; treated as constant.
        ref_cls: (M,) class of each reference entry; pseudo: (B, h, w) class predicted by the
            head at each target position. Both or neither (class_restrict="pseudo").
    ``matmul_dtype`` is the products' dtype; by default bf16 for bf16 features (what autocast
    makes: the products follow the network's precision) and float32 (or float64 for float64
    features) otherwise; ``torch.bfloat16`` forces bf16 products for fp32 features. Norms,
    thresholds, counts and the loss stay in float32 or wider. ``chunk_bytes`` bounds the block
    of S that exists at once (default: :func:`default_chunk_bytes` of f_t's device); besides
    it, the forward keeps G (the size of f_t, in float32) and two numbers per position (1/|x|
    and x . G), and the backward is two elementwise passes that write the gradient in f_t's
    layout.

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
    if matmul_dtype is None:
        matmul_dtype = torch.bfloat16 if f_t.dtype == torch.bfloat16 else dtype
    r = ref.detach().to(dtype)
    loss, count, pairs = _CosineAlignment.apply(
        f_t, r, ref_cls, pseudo, tau, match, chunk_bytes or default_chunk_bytes(f_t.device),
        matmul_dtype)
    return Alignment(loss, count, int(pairs))


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
