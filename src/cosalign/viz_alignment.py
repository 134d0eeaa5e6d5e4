"""``cosalign viz``: seeing the alignment in a checkpoint.

1. ``features.png``: a 2-D PCA map of source and target features at labelled positions,
   coloured by class (source dots, target crosses), for each checkpoint given (e.g. source-only
   and adapted: before and after adaptation). Target labels only colour the points.
2. ``similarity.png``: for target images, the prediction, and per position the highest cosine
   to the dictionary entries of the predicted class (the S the class-restricted loss sees) and
   whether it passes tau.

Shapes: features (B, C, h, w); the PCA is fitted on each checkpoint's own points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cosalign.config import class_set_of
from cosalign.data import build_dataset
from cosalign.data.labels import IGNORE_INDEX
from cosalign.data.transforms import denormalize
from cosalign.engine.checkpoint import load_checkpoint, load_trained
from cosalign.losses import ClassFeatureDictionary
from cosalign.losses.cosine import flatten_normalized
from cosalign.losses.dictionary import labels_to_grid
from cosalign.outputs import writable_dir
from cosalign.viz import save_figure


@torch.no_grad()
def labelled_points(model, dataset, device, images: int, per_image: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalized features (n, C) and classes (n,) at up to ``per_image`` random labelled
    positions of each of the first ``images`` images."""
    g = torch.Generator().manual_seed(seed)
    feats, classes = [], []
    for i in range(min(images, len(dataset))):
        s = dataset[i]
        f = model(s["image"][None].to(device)).features
        t = flatten_normalized(f).cpu()  # (h*w, C)
        y = labels_to_grid(s["label"][None], f.shape[-2:]).reshape(-1)
        keep = (y != IGNORE_INDEX).nonzero()[:, 0]
        pick = keep[torch.randperm(len(keep), generator=g)[:per_image]]
        feats.append(t[pick])
        classes.append(y[pick])
    return torch.cat(feats).numpy(), torch.cat(classes).numpy()


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(n, C) -> (n, 2): the projection on the two leading principal directions."""
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


@torch.no_grad()
def similarity_map(model, dictionary: ClassFeatureDictionary, image: torch.Tensor, device):
    """(h, w) prediction and (h, w) max cosine to the entries of the predicted class (NaN where
    that class has none) for one (3, H, W) image."""
    out = model(image[None].to(device))
    pred = out.logits.argmax(1)[0]  # (h, w)
    t = flatten_normalized(out.features)  # (h*w, C)
    ref, ref_cls = dictionary.reference()
    s = t @ ref.T  # (h*w, M)
    s = s.masked_fill(pred.reshape(-1, 1) != ref_cls.reshape(1, -1), -torch.inf)
    best = s.max(1).values
    best = torch.where(torch.isinf(best), torch.full_like(best, torch.nan), best)
    return pred.cpu().numpy(), best.reshape(pred.shape).cpu().numpy()


def run_viz(checkpoints: list[str | Path], out_dir: str | Path, images: int = 20,
            per_image: int = 30, examples: int = 3, device: torch.device | None = None) -> None:
    """Write ``features.png`` (one panel per checkpoint, e.g. before and after adaptation) and
    ``similarity.png`` (the last checkpoint, with its dictionary) under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = device or torch.device("cpu")
    out = writable_dir(out_dir, "--out folder")
    loaded = [(path, model, cfg) for model, cfg, path in
              (load_trained(c, device) for c in checkpoints)]  # a run folder: its newest
    cfg = loaded[-1][2]
    source = build_dataset(cfg.data.source, cfg.data, train=False)
    target = build_dataset(cfg.data.val, cfg.data, train=False)  # labels colour points only
    classes = class_set_of(cfg)
    shown = classes.subset(cfg.data.classes)
    palette = classes.palette

    fig, axes = plt.subplots(1, len(loaded), squeeze=False, figsize=(4.6 * len(loaded), 4.4))
    for ax, (path, model, _) in zip(axes[0], loaded):
        f_s, c_s = labelled_points(model, source, device, images, per_image)
        f_t, c_t = labelled_points(model, target, device, images, per_image)
        xy = pca_2d(np.concatenate([f_s, f_t]))
        for part, cls, marker in ((xy[: len(f_s)], c_s, "o"), (xy[len(f_s):], c_t, "x")):
            keep = np.isin(cls, shown)
            ax.scatter(part[keep, 0], part[keep, 1], c=palette[cls[keep]] / 255, s=9,
                       marker=marker, linewidths=0.8, alpha=0.8)
        ax.set_title(f"{path.parent.name}/{path.name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=palette[k] / 255, label=classes.names[k]) for k in shown],
               loc="lower center", ncol=min(10, len(shown)), fontsize=7)
    fig.suptitle("features, PCA: source o, target x, coloured by class", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, out / "features.png")
    plt.close(fig)

    path, model, cfg = loaded[-1]
    d = ClassFeatureDictionary(classes.num_classes, cfg.dictionary.capacity,
                               model.feature_dim).to(device)
    d.load_state_dict(load_checkpoint(path, map_location=device)["dictionary"])
    tau = cfg.align.tau
    fig, axes = plt.subplots(examples, 4, squeeze=False, figsize=(12, 2.0 * examples + 0.5))
    for r, i in enumerate(np.linspace(0, len(target) - 1, examples).astype(int)):
        s = target[int(i)]
        pred, best = similarity_map(model, d, s["image"], device)
        passes = (np.nan_to_num(best, nan=-1) > tau).astype(float)
        cells = (denormalize(s["image"]), classes.colorize(pred), best, passes)
        titles = ("target image", "prediction", "max S to the predicted class", f"S > tau={tau}")
        for c, (a, title) in enumerate(zip(cells, titles)):
            ax = axes[r][c]
            scaled = {"vmin": 0, "vmax": 1, "cmap": "viridis" if c == 2 else "gray"}
            im = ax.imshow(a, interpolation="nearest", **(scaled if c >= 2 else {}))
            if c == 2:
                fig.colorbar(im, ax=ax, fraction=0.03)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle(f"{path.parent.name}/{path.name}: what the loss sees", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "similarity.png")
    plt.close(fig)
    if not len(d):
        print(f"note: {path} has an empty dictionary: the similarity maps are blank")
