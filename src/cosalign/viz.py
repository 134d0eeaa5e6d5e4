"""Pictures: palette-coloured label maps, overlays, and the demo's comparison figure."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cosalign.data.labels import colorize
from cosalign.outputs import atomic_write


def overlay(image: np.ndarray, y: np.ndarray, colorize=colorize,
            alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 RGB image blended with the palette colours (``colorize``: a class set's)
    of an (H, W) class map."""
    if image.shape[:2] != y.shape:
        image = cv2.resize(image, (y.shape[1], y.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = colorize(y).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colour * alpha
    out[y == 255] = image[y == 255]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_png(path: Path, image: np.ndarray) -> None:
    """``image`` (H, W) or (H, W, 3) BGR, uint8 or uint16, as a PNG, whole or not at all (a
    full disk is a :class:`~cosalign.outputs.WriteError` naming ``path``)."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode a {image.dtype} {image.shape} PNG")
    with atomic_write(path) as f:
        f.write(data.tobytes())


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG (110 dpi), whole or not at all."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def save_rgb(path: Path, image: np.ndarray) -> None:
    save_png(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def comparison_figure(rows: list[dict[str, np.ndarray]], path: Path, title: str = "") -> None:
    """A grid with one row per image and one column per entry of each row's dict (an RGB image
    or a trainId map, coloured), column titles from the dict keys. Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(rows[0])
    h, w = next(iter(rows[0].values())).shape[:2]
    fig, axes = plt.subplots(len(rows), len(cols), squeeze=False,
                             figsize=(2.6 * len(cols) * w / h / 2, 1.45 * len(rows) + 0.4))
    for r, row in enumerate(rows):
        for c, key in enumerate(cols):
            a = row[key]
            axes[r][c].imshow(a if a.ndim == 3 else colorize(a), interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(key, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def curves_figure(panels: dict[str, dict[str, list[tuple[list[int], list[float]]]]],
                  path: Path) -> None:
    """One panel per metric; in each, one line per group: the mean over its runs at the
    iterations all of them logged, with a min-max band when there are several. ``panels``:
    {metric: {group: [(iterations, values) of each run]}}. Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(4.2 * cols, 3.0 * rows))
    names = list(dict.fromkeys(g for groups in panels.values() for g in groups))
    colour = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(names)}  # same in each panel
    handles = {}
    for ax, (metric, groups) in zip(axes.flat, panels.items()):
        for group, curves in groups.items():
            common = sorted(set.intersection(*(set(it) for it, _ in curves)))
            vals = np.array([[dict(zip(it, v))[i] for i in common] for it, v in curves], float)
            handles[group] = ax.plot(common, vals.mean(0), color=colour[group],
                                     marker="o" if len(common) < 3 else None, markersize=4,
                                     label=f"{group} (n={len(curves)})")[0]
            if len(curves) > 1:
                ax.fill_between(common, vals.min(0), vals.max(0), alpha=0.15,
                                color=colour[group])
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    labels = [h.get_label() for h in handles.values()]
    if handles:
        fig.legend(list(handles.values()), labels, loc="lower center", fontsize=8,
                   ncol=min(3, len(labels)), bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) + 2) // 3), 1, 1))
    save_figure(fig, path)
    plt.close(fig)
