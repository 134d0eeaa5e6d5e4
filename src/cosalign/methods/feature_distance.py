"""The feature distance of DAFormer (Hoyer et al., CVPR 2022): keep the student's source
features of thing classes close to those of the frozen pretrained network (ImageNet's part),
so that self-training does not forget what pretraining knew about small objects."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from cosalign.config import Config, ConfigError, class_set_of
from cosalign.data.labels import IGNORE_INDEX
from cosalign.methods.base import Step, Term

# the thing classes (DAFormer's imnet_feature_dist_classes, Cityscapes trainIds 6, 7, 11-18);
# in another class set, its classes of these names
THING_NAMES = ("traffic light", "traffic sign", "person", "rider", "car", "truck", "bus",
               "train", "motorcycle", "bicycle")
PURITY = 0.75  # a feature position counts when this share of its patch is one thing class


def pooled_labels(labels: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    """(B, H, W) labels -> (B, h, w): each position's class if at least ``PURITY`` of the
    pixels it covers (adaptive average pooling of the one-hot labels) are that class, else
    the ignore value."""
    valid = labels != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, labels, num_classes), num_classes + 1)
    share = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), size)
    top, cls = share[:, :num_classes].max(dim=1)
    return torch.where(top >= PURITY, cls, torch.full_like(cls, IGNORE_INDEX))


def _last_stage(out) -> Tensor:
    """The backbone's last stage in a network's output (the transformer's ``encoder``)."""
    return getattr(out, "encoder", out.features)


class FeatureDistance(Term):
    """L_fd = mean over thing-class positions of ||f_student - f_frozen||_2 on the source batch,
    at the backbone's last stage (DeepLab-v2: the features it returns, layer4; the transformer:
    its ``encoder`` map, the MiT's stage 4), weight ``loss.fd`` (DAFormer 0.005). The frozen
    network is the student as built with ``model.weights``, before any training or resume (a
    copy made at set-up); it needs ``model.weights``."""

    name = "feature_distance"
    weights = ("fd",)

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        super().__init__(cfg, num_classes, device)
        if not cfg.model.weights:
            raise ConfigError("loss.fd > 0 keeps features close to the pretrained network: it "
                              "needs model.weights")
        self.num_classes = num_classes
        self.things = tuple(i for i, n in enumerate(class_set_of(cfg).names) if n in THING_NAMES)
        self.needs_target = False
        self.frozen: torch.nn.Module | None = None

    def setup(self, model: torch.nn.Module) -> None:
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def source_losses(self, step: Step) -> dict[str, Tensor]:
        f = _last_stage(step.out_s)
        with torch.no_grad(), step.autocast():
            f0 = (self.frozen.context_encoder(step.x_s) if hasattr(self.frozen, "context_encoder")
                  else _last_stage(self.frozen(step.x_s)))  # HRDA: its context's alone
        labels = pooled_labels(step.y_s, tuple(f.shape[-2:]), self.num_classes)
        things = torch.isin(labels, labels.new_tensor(self.things))
        dist = torch.linalg.vector_norm(f.float() - f0.float(), dim=1)  # (B, h, w)
        # the mean over thing positions (0 when there are none), without waiting for the GPU
        return {"fd": (dist * things).sum() / things.sum().clamp(min=1)}
