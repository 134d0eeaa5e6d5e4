"""Alignment diagnostics: signs of feature collapse, and whether the method's premise holds.

During training (no target labels): quantiles of the similarities S between target features and
the reference set, the mean pairwise cosine of target features, and their effective rank
exp(H(sigma / sum sigma)) (Roy & Vetterli, 2007) with sigma the singular values. Collapse shows
as pairwise cosine -> 1 and effective rank -> 1 long before mIoU drops.

At evaluation (target labels, never used for training): how often a target position's most
similar dictionary entry has the position's class (nearest-neighbour accuracy: the premise),
the mean S of same-class and different-class pairs, and the share of pairs the loss would select
whose classes agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cosalign.data.labels import IGNORE_INDEX
from cosalign.losses.cosine import flatten_normalized
from cosalign.losses.dictionary import labels_to_grid


def _subsample(t: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    if t.shape[0] <= n:
        return t
    return t[torch.randperm(t.shape[0], generator=generator, device="cpu")[:n].to(t.device)]


@torch.no_grad()
def feature_stats(f_t: Tensor, ref: Tensor, max_rows: int = 512) -> dict[str, float]:
    """Similarity quantiles, mean pairwise cosine and effective rank of target features.

    Shape: f_t (B, C, h, w); ref (M, C) normalized.
    """
    g = torch.Generator().manual_seed(0)
    t = _subsample(flatten_normalized(f_t), max_rows, g)  # (n, C)
    gram = t @ t.T
    n = t.shape[0]
    out = {"pair_cos": float((gram.sum() - gram.diagonal().sum()) / max(n * (n - 1), 1))}
    sv = torch.linalg.svdvals(t.double())
    p = sv / sv.sum()
    out["eff_rank"] = float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))
    if ref.shape[0] > 0:
        s = (t @ _subsample(ref.float(), 4096, g).T).flatten()
        q = torch.quantile(s, s.new_tensor([0.1, 0.5, 0.9, 0.99]))
        out.update({"s_q10": float(q[0]), "s_q50": float(q[1]), "s_q90": float(q[2]),
                    "s_q99": float(q[3])})
    return out


class PremiseMeter:
    """Accumulates, over target images with labels, the evaluation-only diagnostics.

    ``update(f_t, y_t, ref, ref_cls, tau)`` with f_t (B, C, h, w) features, y_t (B, H, W) labels.
    ``result()`` gives nn_accuracy (%), chance (% for a uniform guess among classes present),
    s_same / s_diff (mean S of same- and different-class pairs) and selected_agree (% of pairs
    with S > tau whose classes agree).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.n = self.nn_correct = self.selected = self.agree = 0
        self.s_same = self.s_diff = 0.0
        self.n_same = self.n_diff = 0

    @torch.no_grad()
    def update(self, f_t: Tensor, y_t: Tensor, ref: Tensor, ref_cls: Tensor, tau: float) -> None:
        if ref.shape[0] == 0:
            return
        t = flatten_normalized(f_t)
        y = labels_to_grid(y_t, f_t.shape[-2:]).reshape(-1)
        keep = (y != IGNORE_INDEX) & (y < self.num_classes)
        t, y = t[keep], y[keep]
        ref = ref.float()
        # sums through where(), not s[same]: boolean-mask gathers make outputs of a new size
        # every chunk, and the demo's evaluation grew the process by ~0.7 GB of them
        for i in range(0, t.shape[0], 1024):
            s = t[i : i + 1024] @ ref.T  # (rows, M)
            yy = y[i : i + 1024]
            same = yy[:, None] == ref_cls[None, :]
            self.nn_correct += int((ref_cls[s.argmax(1)] == yy).sum())
            n_same = int(same.sum())
            self.s_same += float(torch.where(same, s, 0.0).sum())
            self.n_same += n_same
            self.s_diff += float(torch.where(same, 0.0, s).sum())
            self.n_diff += same.numel() - n_same
            sel = s > tau
            self.selected += int(sel.sum())
            self.agree += int((sel & same).sum())
            self.n += yy.numel()
        self.present = sorted(set(ref_cls.tolist()))

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        return {
            "nn_accuracy": 100 * self.nn_correct / self.n,
            "nn_chance": 100 / max(len(self.present), 1),
            "s_same": self.s_same / max(self.n_same, 1),
            "s_diff": self.s_diff / max(self.n_diff, 1),
            "selected_agree": 100 * self.agree / max(self.selected, 1),
            "selected_fraction": 100 * self.selected / max(self.n_same + self.n_diff, 1),
        }
