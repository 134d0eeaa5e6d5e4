"""Using a trained checkpoint: ``cosalign eval`` (a labelled split, the published protocol) and
``cosalign predict`` (any images: trainId, colour and overlay PNGs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cosalign.config import Config, from_dict
from cosalign.data import build_dataset
from cosalign.data.dataset import DatasetError, read_image
from cosalign.data.labels import NUM_CLASSES, colorize
from cosalign.data.transforms import normalize, resize_pair
from cosalign.engine.checkpoint import load_checkpoint
from cosalign.engine.evaluate import confusion_over, format_table, summarize, upsample_logits
from cosalign.engine.tta import TTA
from cosalign.models import DeepLabV2, build_model
from cosalign.viz import overlay, save_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[DeepLabV2, Config]:
    """The network of a cosalign checkpoint, in eval mode, and the config it was trained with."""
    state = load_checkpoint(checkpoint, map_location=device)
    cfg = from_dict(state["config"])
    model = build_model(cfg.model, NUM_CLASSES)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


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


def evaluate_checkpoint(checkpoint: str | Path, *, data_root: str | None = None,
                        split: str = "val", size: tuple[int, int] | None = None,
                        tta: TTA = TTA(), save_predictions: Path | None = None,
                        out: Path | None = None, device: torch.device | None = None,
                        progress: bool = True) -> dict:
    """Evaluate a checkpoint on the val split of its config (or of ``data_root``); writes
    ``<out>.json`` and ``<out>.md`` (default: next to the checkpoint)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = load_model(checkpoint, device)
    val_cfg = cfg.data.val
    if data_root is not None:
        val_cfg = replace(val_cfg, root=str(data_root), list_file=None)
    val_cfg = replace(val_cfg, split=split, size=tuple(size) if size else val_cfg.size)
    dataset = build_dataset(val_cfg, replace(cfg.data, cache=False), train=False)
    loader = DataLoader(dataset, batch_size=1, num_workers=min(2, cfg.data.workers))

    on_batch = None
    if save_predictions is not None:
        def on_batch(batch, pred, _out):
            for name, p in zip(batch["name"], pred.cpu().numpy().astype(np.uint8)):
                save_prediction(Path(save_predictions), Path(name).stem, p)

    cm = confusion_over(model, loader, NUM_CLASSES, device, align_corners=tta.align_corners,
                        progress=progress, predict=tta if tta.enabled else None,
                        on_batch=on_batch)
    subsets = [cfg.data.classes, *cfg.data.extra_classes]
    results = summarize(cm, subsets)
    results.update({"checkpoint": str(checkpoint), "dataset": val_cfg.root, "split": split,
                    "images": len(dataset), "input_size": val_cfg.size,
                    "align_corners": tta.align_corners, "protocol": tta.describe(),
                    "confusion": cm.tolist()})
    out = Path(out) if out else Path(checkpoint).with_name(f"eval_{split}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    tables = "\n\n".join(format_table({Path(checkpoint).parent.name: results}, s) for s in subsets)
    out.with_suffix(".md").write_text(
        f"# {checkpoint} on {val_cfg.root} ({split}, {len(dataset)} images)\n\n"
        f"Input {val_cfg.size}, logits upsampled bilinearly (align_corners={tta.align_corners}) "
        f"to label resolution; {tta.describe()}. Headline: {subsets[0]}.\n\n{tables}\n")
    return results


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
    model, cfg = load_model(checkpoint, device)
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
