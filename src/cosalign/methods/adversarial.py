"""AdvEnt (Vu et al., CVPR 2019): fool discriminators that tell source from target
self-information maps; the discriminators are trained after the network's step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.config import Config
from cosalign.losses import self_information
from cosalign.methods.base import Step, Term
from cosalign.models import Discriminator
from cosalign.schedule import poly_lr

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0
HEADS = {"adv": "logits", "adv_aux": "aux"}


class Adversarial(Term):
    """Per head with a weight > 0: L_adv = BCE(D(I(p_t)), source), where I is the
    self-information map (B, K, H, W) of the target prediction; then each discriminator D takes
    one Adam step on BCE(D(I(p_s)), 0) / 2 + BCE(D(I(p_t)), 1) / 2 (logged as ``d_<head>_src``
    and ``d_<head>_tgt``). Its checkpoint state: both discriminators and their optimizer."""

    name = "adversarial"
    weights = ("adv", "adv_aux")

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        super().__init__(cfg, num_classes, device)
        self.discs = torch.nn.ModuleDict({k: Discriminator(num_classes)
                                          for k in self.weights}).to(device)
        self.optim = cfg.optim
        self.opt = torch.optim.Adam(self.discs.parameters(), cfg.optim.lr_d, (0.9, 0.99))

    def before_step(self, it: int) -> None:
        o = self.optim
        for group in self.opt.param_groups:
            group["lr"] = poly_lr(o.lr_d, it, o.schedule_iters, o.power)
        self.discs.requires_grad_(False)

    def _heads(self):
        return [k for k in self.weights if self.weight[k] > 0]

    def losses(self, step: Step) -> dict[str, Tensor]:
        out = {}
        for k in self._heads():
            d_out = self.discs[k](self_information(step.pred_t(HEADS[k])))
            out[k] = F.binary_cross_entropy_with_logits(d_out,
                                                        torch.full_like(d_out, SOURCE_LABEL))
        return out

    def after_step(self, step: Step) -> dict[str, Tensor]:
        self.discs.requires_grad_(True)
        self.opt.zero_grad(set_to_none=True)
        logged = {}
        for k in self._heads():
            p_s = step.pred_s if k == "adv" else step.pred_s_aux
            for pred, label in ((p_s, SOURCE_LABEL), (step.pred_t(HEADS[k]), TARGET_LABEL)):
                d_out = self.discs[k](self_information(pred.detach()))
                loss_d = F.binary_cross_entropy_with_logits(d_out, torch.full_like(d_out, label))
                (loss_d / 2).backward()
                logged[f"d_{k}_{'src' if label == SOURCE_LABEL else 'tgt'}"] = loss_d.detach()
        self.opt.step()
        return logged

    def state_dict(self) -> dict:
        return {"discriminators": self.discs.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discs.load_state_dict(state["discriminators"])
        self.opt.load_state_dict(state["optimizer"])
