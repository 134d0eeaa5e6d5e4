"""``cosalign predict``: a trained model on any images (trainId, colour and overlay PNGs).
``cosalign eval`` lives with the rest of evaluation (engine/evaluate.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cosalign.config import class_set_of
from cosalign.data.dataset import IMAGE_SUFFIXES, DatasetError, read_image
from cosalign.data.labels import colorize
from cosalign.data.transforms import normalize, rescaled_size, resize_pair
from cosalign.engine.checkpoint import load_trained
from cosalign.engine.tta import TTA
from cosalign.models.upsample import upsample_logits
from cosalign.outputs import OutputError, writable_dir
from cosalign.viz import overlay, save_png, save_rgb


def save_prediction(base: Path, pred: np.ndarray, image: np.ndarray | None = None,
                    colorize=colorize) -> None:
    """``<base>_trainIds.png`` (8-bit class indices), ``<base>_color.png`` (``colorize``: the
    class set's palette) and, given the image, ``<base>_overlay.png``; ``base`` is a path
    without suffix, its folder made if missing."""
    base = Path(base)
    save_png(base.with_name(f"{base.name}_trainIds.png"), pred)
    save_rgb(base.with_name(f"{base.name}_color.png"), colorize(pred))
    if image is not None:
        save_rgb(base.with_name(f"{base.name}_overlay.png"), overlay(image, pred, colorize))


def find_images(inputs: list[str]) -> list[tuple[Path, Path]]:
    """``(image file, name for its outputs)`` for the image files named directly (their file
    name) or found recursively in folders (their path inside the folder), sorted per input.
    The names keep the folders and the extension (``a/x.png``, ``a/x.jpg``), so two inputs
    never share outputs; the same name from two inputs is an error."""
    found: dict[Path, Path] = {}  # output name -> file
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            pairs = [(p, p.relative_to(item)) for p in files]
        elif item.is_file():
            pairs = [(item, Path(item.name))]
        else:
            raise DatasetError(f"{item}: no such image or folder")
        for path, name in pairs:
            other = found.setdefault(name, path)
            if other.resolve() != path.resolve():
                raise DatasetError(f"{other} and {path}: both would be written as {name}_*.png; "
                                   "predict them into separate --out folders")
    if not found:
        raise DatasetError(f"no images found in {inputs} (looked for {sorted(IMAGE_SUFFIXES)})")
    return [(path, name) for name, path in found.items()]


def check_output(out_dir: Path, inputs: list[str]) -> Path:
    """``out_dir`` is writable and not inside an input folder (whose next read would take the
    predictions for images)."""
    out = Path(out_dir).resolve()
    for item in map(Path, inputs):
        if item.is_dir() and out.is_relative_to(item.resolve()):
            raise OutputError(f"{out_dir}: --out is inside the input folder {item}; choose a "
                              "folder outside it")
    return writable_dir(out_dir, "--out folder")


@torch.no_grad()
def predict_images(checkpoint: str | Path, inputs: list[str], out_dir: str | Path, *,
                   size: tuple[int, int] | None = None, tta: TTA = TTA(),
                   device: torch.device | None = None, progress: bool = True,
                   fmt: str | None = None, which: str = "student",
                   config: str | None = None) -> list[Path]:
    """Segment arbitrary images at the checkpoint's input size (or ``size``), predictions at the
    images' own resolution, written as ``out_dir/<name>_trainIds.png`` (and ``_color``,
    ``_overlay``) where ``<name>`` is the image's path inside its input folder, extension
    included (:func:`find_images`). With ``fmt`` (:func:`save_format`) one PNG per image
    instead, named as the image with the extension .png, all in ``out_dir``
    (:func:`server_name`). ``which`` and ``config`` as in
    :func:`cosalign.engine.checkpoint.load_trained`. Returns the images processed."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = find_images(inputs)
    if fmt is not None:  # one PNG per image, named as the image, in one folder
        named: dict[str, Path] = {}
        for path, name in files:
            other = named.setdefault(server_name(name), path)
            if other != path:
                raise DatasetError(f"{other} and {path}: both would be written as "
                                   f"{server_name(name)} (--format {fmt})")
    model, cfg, _ = load_trained(checkpoint, device, which, config)
    if tta.align_corners is None:  # the run's own convention
        tta = replace(tta, align_corners=cfg.model.align_corners)
    check_output(Path(out_dir), inputs)  # before any image is segmented
    classes = class_set_of(cfg)
    keep_ratio = cfg.data.val.keep_ratio and not size
    size = tuple(size) if size else tuple(cfg.data.val.size)
    for path, name in tqdm(files, desc="predict", unit="img", disable=not progress):
        image = read_image(path)
        to = rescaled_size(image.shape[1], image.shape[0], size) if keep_ratio else size
        resized, _ = resize_pair(image, None, to, cfg.data.interpolation)
        x = normalize(resized, cfg.data.normalization)[None].to(device)
        full = image.shape[:2]
        if tta.enabled:
            scores = tta(model, x, full)
        else:
            scores = upsample_logits(model(x).logits, full, tta.align_corners)
        pred = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
        if fmt is None:
            save_prediction(Path(out_dir) / name, pred, image, classes.colorize)
        else:
            save_format(Path(out_dir) / server_name(name), pred, fmt, classes)
    return [path for path, _ in files]


FORMATS = ("trainids", "labelids", "color")


def server_name(name: Path) -> str:
    """The image's file name with the extension .png: the name the Cityscapes and ACDC
    servers match on (their images' names are unique across folders; DAFormer and mmseg write
    their submissions the same way, flat)."""
    return Path(name).with_suffix(".png").name


def save_format(path: Path, pred: np.ndarray, fmt: str, classes) -> None:
    """One prediction PNG in a test server's format: ``trainids`` (class indices; ACDC, Dark
    Zurich), ``labelids`` (the class set's label values; Cityscapes) or ``color``."""
    if fmt == "color":
        save_rgb(path, classes.colorize(pred))
        return
    save_png(path, classes.to_values()[pred] if fmt == "labelids" else pred)
