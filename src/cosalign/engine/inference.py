"""``cosalign predict``: a trained model on any images (trainId, colour and overlay PNGs).
``cosalign eval`` lives with the rest of evaluation (engine/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cosalign.data.dataset import DatasetError, read_image
from cosalign.data.labels import colorize
from cosalign.data.transforms import normalize, resize_pair
from cosalign.engine.checkpoint import load_trained
from cosalign.engine.tta import TTA
from cosalign.engine.upsample import upsample_logits
from cosalign.viz import overlay, save_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def save_prediction(out_dir: Path, stem: str, pred: np.ndarray,
                    image: np.ndarray | None = None) -> None:
    """``<stem>_trainIds.png`` (8-bit trainIds), ``<stem>_color.png`` (palette) and, given the
    image, ``<stem>_overlay.png``."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_dir / f"{stem}_trainIds.png"), pred):
        raise OSError(f"{out_dir / f'{stem}_trainIds.png'}: could not write")
    save_rgb(out_dir / f"{stem}_color.png", colorize(pred))
    if image is not None:
        save_rgb(out_dir / f"{stem}_overlay.png", overlay(image, pred))


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (recursively) in folders, sorted."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DatasetError(f"{item}: no such image or folder")
    if not files:
        raise DatasetError(f"no images found in {inputs} (looked for {sorted(IMAGE_SUFFIXES)})")
    return files


@torch.no_grad()
def predict_images(checkpoint: str | Path, inputs: list[str], out_dir: str | Path, *,
                   size: tuple[int, int] | None = None, tta: TTA = TTA(),
                   device: torch.device | None = None, progress: bool = True) -> list[Path]:
    """Segment arbitrary images at the checkpoint's input size (or ``size``), predictions at the
    images' own resolution. Returns the images processed."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, _ = load_trained(checkpoint, device)
    size = tuple(size) if size else tuple(cfg.data.val.size)
    files = find_images(inputs)
    for path in tqdm(files, desc="predict", unit="img", disable=not progress):
        image = read_image(path)
        resized, _ = resize_pair(image, None, size, cfg.data.interpolation)
        x = normalize(resized, cfg.data.normalization)[None].to(device)
        full = image.shape[:2]
        if tta.enabled:
            scores = tta(model, x, full)
        else:
            scores = upsample_logits(model(x).logits, full, tta.align_corners)
        pred = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
        save_prediction(Path(out_dir), path.stem, pred, image)
    return files
