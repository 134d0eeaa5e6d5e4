"""``cosalign score``: mIoU of predictions made by any tool, against a dataset's labels.

A prediction is a PNG per labelled image, found in ``PRED_DIR`` (any nesting) by the image's
identifier: its file name without the extension and without the dataset's image suffix
(``berlin_000000_000019`` for ``berlin_000000_000019_leftImg8bit.png``,
``GOPR0475_frame_000041`` for ACDC); a prediction's own name may add ``_leftImg8bit``,
``_rgb_anon``, ``_trainIds`` or ``_labelIds`` (what ``cosalign predict`` and the usual tools
write). ``--format trainids`` reads class indices of the class set (255: no prediction),
``labelids`` Cityscapes label ids (mapped through the class set's values). A labelled image
without a prediction, a prediction without an image, two predictions for one image, one of
another size than its label, or a value outside the class set (every pixel needs a class) is
an error naming the file.
Scores are those of ``cosalign eval``: one confusion matrix over all pixels, IoU per class,
mIoU over each subset of the class set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cosalign.data import domain_pairs, label_reader
from cosalign.data.classes import ClassSet
from cosalign.data.dataset import DatasetError
from cosalign.data.folder import read_label_values
from cosalign.engine.evaluate import confusion_matrix, summarize

FORMATS = ("trainids", "labelids")
SUFFIXES = ("_trainIds", "_labelIds", "_leftImg8bit", "_rgb_anon", "_color")


def identifier(name: str) -> str:
    """A file name without its extension and the known suffixes (module docstring)."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    changed = True
    while changed:
        changed = False
        for suffix in SUFFIXES:
            if stem.endswith(suffix):
                stem, changed = stem[: -len(suffix)], True
        if "." in stem:  # predict's <name>.<ext>_trainIds.png
            stem, changed = stem.rsplit(".", 1)[0], True
    return stem


def match_predictions(pred_dir: Path, images: list[Path]) -> dict[Path, Path]:
    """``{image: prediction}``; errors for missing, extra and doubled predictions."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: no such folder of predictions")
    preds: dict[str, Path] = {}
    for p in sorted(pred_dir.rglob("*.png")):
        if p.name.endswith(("_color.png", "_overlay.png")):
            continue  # the pictures cosalign predict writes next to the ids
        key = identifier(p.name)
        if key in preds:
            raise DatasetError(f"{preds[key]} and {p}: two predictions for the image {key}")
        preds[key] = p
    keys = {identifier(image.name): image for image in images}
    missing = [k for k in keys if k not in preds]
    if missing:
        raise DatasetError(f"{pred_dir}: no prediction for {keys[missing[0]]} (looked for a PNG "
                           f"named {missing[0]}*.png; {len(missing)} of {len(keys)} missing)")
    extra = [k for k in preds if k not in keys]
    if extra:
        raise DatasetError(f"{preds[extra[0]]}: a prediction for no labelled image of the "
                           f"dataset ({len(extra)} such file(s)); score the split it was made on")
    return {image: preds[k] for k, image in keys.items()}


def score(pred_dir: str | Path, domain, class_set: ClassSet, subsets: list[str],
          fmt: str = "trainids", progress: bool = True) -> dict:
    """Confusion matrix and :func:`summarize` of the predictions in ``pred_dir`` against the
    labels of ``domain`` (a :class:`cosalign.config.DomainConfig`)."""
    pairs = domain_pairs(domain, labels=True)
    read = label_reader(domain, class_set)
    found = match_predictions(Path(pred_dir), [image for image, _ in pairs])
    k = class_set.num_classes
    lut = class_set.lut(256)
    cm = torch.zeros(k, k, dtype=torch.long)
    for image, label_path in tqdm(pairs, desc="score", unit="img", disable=not progress):
        pred_path = found[image]
        label = read(label_path)
        try:
            pred = read_label_values(pred_path)
        except DatasetError as e:
            raise DatasetError(f"{pred_path}: not a prediction PNG ({e})") from None
        if pred.shape != label.shape:
            raise DatasetError(f"{pred_path}: {pred.shape[1]}x{pred.shape[0]}, but the label of "
                               f"{image.name} is {label.shape[1]}x{label.shape[0]}; predictions "
                               "are scored at label resolution")
        if pred.dtype != np.uint8:
            raise DatasetError(f"{pred_path}: a 16-bit PNG; expected 8-bit {fmt}")
        raw = pred
        if fmt == "labelids":
            pred = lut[pred]
        bad = np.unique(raw[pred >= k])
        if bad.size:  # every pixel needs a class: a "no prediction" would not count as a miss
            kind = (f"classes of {class_set.name}" if fmt == "trainids"
                    else "label ids of its classes")
            raise DatasetError(f"{pred_path}: values {bad[:5].tolist()} are not {kind} "
                               f"(--format {fmt}; every pixel needs a class)")
        cm += confusion_matrix(torch.from_numpy(pred.astype(np.int64)),
                               torch.from_numpy(label.astype(np.int64)), k)
    results = summarize(cm.numpy(), subsets, class_set)
    results.update({"images": len(pairs), "predictions": str(pred_dir), "format": fmt,
                    "confusion": cm.tolist()})
    return results
