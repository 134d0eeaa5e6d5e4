"""The class-wise source feature dictionary (docs/METHOD.md section 3).

K classes x Q slots x C channels, one ring buffer per class: the newest entries overwrite the
oldest. After each step the training loop calls :meth:`ClassFeatureDictionary.update` with the
source features and labels; labels are downsampled to the feature grid by nearest neighbour,
ignore positions are skipped, and for each class present in an image up to ``per_image`` positions
are sampled uniformly (``enqueue="pixels"``) or the class mean is taken (``enqueue="mean"``).
Entries are L2-normalized and detached. The dictionary is a buffer-only module: it travels in
``state_dict`` and therefore in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.data.labels import IGNORE_INDEX

ENQUEUE_MODES = ("pixels", "mean")


def labels_to_grid(y: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H, W) label map -> (B, h, w) by nearest neighbour (PyTorch's "nearest" rule)."""
    return F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()


def labelled_features(f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Normalized features at labelled positions: (B, C, h, w), (B, H, W) -> (n, C), (n,).

    This is the reference set of ``reference="batch"`` (the paper's setting without a dictionary).
    """
    y_grid = labels_to_grid(y, f.shape[-2:]).reshape(-1)  # (B*h*w,)
    flat = f.detach().float().permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    keep = y_grid != IGNORE_INDEX
    return F.normalize(flat[keep], dim=1), y_grid[keep]


class ClassFeatureDictionary(torch.nn.Module):
    """Ring buffers of the latest normalized source features of every class.

    Args:
        num_classes: K.
        capacity: Q, slots per class.
        dim: C, feature channels.
        per_image: q, positions sampled per image and class at each update (``enqueue="pixels"``).
        enqueue: "pixels" or "mean" (one class-mean vector per image and class).
    Buffers: ``entries`` (K, Q, C), ``filled`` (K,) number of valid slots, ``head`` (K,) next slot.
    """

    def __init__(
        self, num_classes: int, capacity: int, dim: int, per_image: int = 16,
        enqueue: str = "pixels",
    ) -> None:
        super().__init__()
        if enqueue not in ENQUEUE_MODES:
            raise ValueError(f"enqueue must be one of {ENQUEUE_MODES}, got {enqueue!r}")
        if capacity < 1 or per_image < 1:
            raise ValueError(f"capacity and per_image must be >= 1, got {capacity}, {per_image}")
        self.num_classes, self.capacity, self.dim = num_classes, capacity, dim
        self.per_image, self.enqueue = per_image, enqueue
        self.register_buffer("entries", torch.zeros(num_classes, capacity, dim))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled.sum())

    def reference(self) -> tuple[Tensor, Tensor]:
        """All filled entries and their classes: (M, C), (M,)."""
        valid = torch.arange(self.capacity, device=self.filled.device)[None] < self.filled[:, None]
        cls = torch.arange(self.num_classes, device=self.filled.device)[:, None].expand_as(valid)
        return self.entries[valid], cls[valid]

    def oldest_first_order(self, k: int) -> Tensor:
        """Slot indices of class k from oldest to newest."""
        n = int(self.filled[k])
        start = int(self.head[k]) if n == self.capacity else 0
        return (start + torch.arange(n, device=self.filled.device)) % self.capacity

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a dictionary; one saved with another capacity Q keeps the newest
        min(Q_saved, Q) entries of each class (resuming a run with a different Q)."""
        entries = state_dict["entries"]
        if entries.shape == self.entries.shape:
            return super().load_state_dict(state_dict, strict, assign)
        if entries.shape[0] != self.num_classes or entries.shape[2] != self.dim:
            raise ValueError(f"saved dictionary has shape {tuple(entries.shape)}, this one "
                             f"{tuple(self.entries.shape)}: classes or channels differ")
        saved = ClassFeatureDictionary(self.num_classes, entries.shape[1], self.dim)
        saved.to(self.entries.device).load_state_dict(state_dict)  # wherever the state was
        self.filled.zero_()
        self.head.zero_()
        for k in range(self.num_classes):
            order = saved.oldest_first_order(k)
            self.push(saved.entries[k, order], torch.full((len(order),), k, device=order.device))
        return torch.nn.modules.module._IncompatibleKeys([], [])

    @torch.no_grad()
    def select(self, f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The new entries one source batch contributes: (B, C, h, w), (B, H, W) -> (n, C), (n,)."""
        y_grid = labels_to_grid(y, f.shape[-2:])  # (B, h, w)
        new_f, new_c = [], []
        for f_b, y_b in zip(f.detach().float(), y_grid):
            flat, cls = f_b.reshape(f_b.shape[0], -1).T, y_b.reshape(-1)  # (h*w, C), (h*w,)
            for k in torch.unique(cls).tolist():
                if k == IGNORE_INDEX or k >= self.num_classes:
                    continue
                pos = (cls == k).nonzero()[:, 0]
                if self.enqueue == "mean":
                    new_f.append(flat[pos].mean(dim=0, keepdim=True))
                else:
                    pick = torch.randperm(pos.numel(), device=pos.device)[: self.per_image]
                    new_f.append(flat[pos[pick]])
                new_c.append(torch.full((new_f[-1].shape[0],), k, device=f.device))
        if not new_f:
            return f.new_zeros(0, f.shape[1]), torch.zeros(0, dtype=torch.long, device=f.device)
        return F.normalize(torch.cat(new_f), dim=1), torch.cat(new_c)

    @torch.no_grad()
    def push(self, feats: Tensor, cls: Tensor) -> None:
        """Enqueue normalized entries (n, C) with classes (n,) in order; oldest overwritten."""
        for k in torch.unique(cls).tolist():
            new = feats[cls == k][-self.capacity :]  # only the newest Q can survive
            slots = (self.head[k] + torch.arange(new.shape[0], device=new.device)) % self.capacity
            self.entries[k, slots] = new.to(self.entries.dtype)
            self.head[k] = (self.head[k] + new.shape[0]) % self.capacity
            self.filled[k] = min(self.capacity, int(self.filled[k]) + new.shape[0])

    @torch.no_grad()
    def update(
        self, f: Tensor, y: Tensor,
        gather: Callable[[Tensor], list[Tensor]] | None = None,
    ) -> None:
        """Select this batch's entries, gather them from every rank (``gather``, e.g.
        :func:`cosalign.engine.distributed.all_gather_varlen`), and enqueue them in rank order so
        that every rank holds the same dictionary."""
        feats, cls = self.select(f, y)
        if gather is not None:
            feats = torch.cat(gather(feats))
            cls = torch.cat(gather(cls))
        self.push(feats, cls)
