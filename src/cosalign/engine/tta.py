"""Optional test-time augmentation: multi-scale, horizontal flip, sliding window.

Off by default (the published protocol is one forward pass at the configured input size). With
scales s_1..s_n and flip, the prediction is the mean over scales and flips of
softmax(upsample(logits(resize(x, s)))) at label resolution. With a window (w, h) and stride, the
network sees overlapping crops of each scaled input and the logits of overlapping crops are
averaged before upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.models.upsample import upsample_logits


@dataclass(frozen=True)
class TTA:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None  # (width, height) of the sliding window
    stride: tuple[int, int] | None = None  # (x, y) step; default 2/3 of the window
    align_corners: bool | None = True  # None: the checkpoint's model.align_corners (the CLI)

    @property
    def enabled(self) -> bool:
        return self.scales != (1.0,) or self.flip or self.window is not None

    def describe(self) -> str:
        if not self.enabled:
            return "single scale, no flip (published protocol)"
        parts = [f"scales {list(self.scales)}"] + (["flip"] if self.flip else [])
        if self.window:
            parts.append(f"sliding window {self.window[0]}x{self.window[1]}, stride {self.stride}")
        return "TTA: " + ", ".join(parts)

    def _logits(self, model, x: Tensor) -> Tensor:
        """(B, K, h, w) logits at the network's output grid for input x, maybe by windows."""
        if self.window is None:
            return model(x).logits.float()
        ww, wh = self.window
        H, W = x.shape[-2:]
        sx, sy = self.stride or (max(1, ww * 2 // 3), max(1, wh * 2 // 3))
        ys = sorted({*range(0, max(H - wh, 0) + 1, sy), max(H - wh, 0)})
        xs = sorted({*range(0, max(W - ww, 0) + 1, sx), max(W - ww, 0)})
        acc = count = None
        for y0 in ys:
            for x0 in xs:
                crop = x[..., y0 : y0 + wh, x0 : x0 + ww]
                out = upsample_logits(model(crop).logits, crop.shape[-2:], self.align_corners)
                if acc is None:
                    acc = x.new_zeros(x.shape[0], out.shape[1], H, W, dtype=torch.float32)
                    count = x.new_zeros(1, 1, H, W, dtype=torch.float32)
                acc[..., y0 : y0 + wh, x0 : x0 + ww] += out
                count[..., y0 : y0 + wh, x0 : x0 + ww] += 1
        return acc / count  # at input resolution

    @torch.no_grad()
    def __call__(self, model, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, 3, H, W) input -> (B, K, size) class scores."""
        total = None
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                  align_corners=self.align_corners)
            for flip in (False, True) if self.flip else (False,):
                inp = xs.flip(-1) if flip else xs
                logits = upsample_logits(self._logits(model, inp), size, self.align_corners)
                probs = logits.softmax(1)
                probs = probs.flip(-1) if flip else probs
                total = probs if total is None else total + probs
        return total
