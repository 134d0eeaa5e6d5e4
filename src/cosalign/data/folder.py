"""Your own data: a folder of images and a folder of labels, with a class set.

    ROOT/images/<path><image_suffix>     any nesting; image_suffix "" = any image extension
    ROOT/labels/<path><label_suffix>     8- or 16-bit single-channel (or palette) PNG of values

An image and a label pair when ``<path>`` (the relative path without the suffix) is the same,
e.g. ``images/day/a.jpg`` with ``labels/day/a.png``, or with ``image_suffix=_leftImg8bit.png``
and ``label_suffix=_gtFine_labelIds.png`` a Cityscapes-like tree copied flat. A list file
instead names the pairs, one ``image label`` per line (paths relative to ROOT; a line with one
path names an image whose label follows the rule). Label values become classes through the
class set's ``values`` map, or the domain's own (``label_values``: a YAML file with ``values``
and ``ignore``), so source and target may encode their labels differently.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from cosalign.data.classes import ClassSet, ClassSetError, parse_class_set
from cosalign.data.dataset import (
    IMAGE_SUFFIXES,
    DatasetError,
    Pair,
    read_8bit_label,
    read_list_file,
    require_dir,
)

LAYOUT = ("  ROOT/images/<path><image_suffix>  (any nesting)\n"
          "  ROOT/labels/<path><label_suffix>  (single-channel PNG of label values)")


def _key(path: Path, folder: Path, suffix: str) -> str | None:
    """``<path>`` of a file under ``folder`` (its relative path without ``suffix``), or None
    when the file does not end with it."""
    rel = path.relative_to(folder).as_posix()
    if suffix:
        return rel[: -len(suffix)] if rel.endswith(suffix) else None
    return rel[: -len(path.suffix)] if path.suffix.lower() in IMAGE_SUFFIXES else None


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.rglob("*")):
        key = _key(p, folder, suffix) if p.is_file() else None
        if key is not None:
            if key in out:
                raise DatasetError(f"{out[key]} and {p}: two files for {key!r} (set the suffix "
                                   "so that one path names one file)")
            out[key] = p
    return out


def folder_pairs(root: Path, image_suffix: str = "", label_suffix: str = ".png",
                 list_file: Path | None = None, labels: bool = True) -> list[Pair]:
    root = Path(root)
    if list_file is not None:
        pairs = []
        for line in read_list_file(list_file):
            parts = line.split()
            image = root / parts[0]
            label = root / parts[1] if len(parts) > 1 else None
            if label is None and labels:
                key = _key(image, root / "images", image_suffix) if image.is_relative_to(
                    root / "images") else None
                label = root / "labels" / f"{key}{label_suffix}" if key is not None else None
            for p in (image, label if labels else None):
                if p is not None and not p.is_file():
                    raise DatasetError(f"{list_file}: names {p}, which does not exist")
            if labels and label is None:
                raise DatasetError(f"{list_file}: {line!r} names no label (expected "
                                   "'image label')")
            pairs.append((image, label if labels else None))
        if not pairs:
            raise DatasetError(f"{list_file}: no pairs listed")
        return pairs
    require_dir(root / "images", LAYOUT)
    images = _files(root / "images", image_suffix)
    if not images:
        raise DatasetError(f"{root / 'images'}: no images"
                           + (f" ending with {image_suffix}" if image_suffix else ""))
    if not labels:
        return [(p, None) for p in images.values()]
    require_dir(root / "labels", LAYOUT)
    found = _files(root / "labels", label_suffix)
    missing = [k for k in images if k not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{images[missing[0]]}: no label {root / 'labels' / missing[0]}"
                           f"{label_suffix}{more}")
    return [(images[k], found[k]) for k in images]


def orphan_labels(root: Path, image_suffix: str = "", label_suffix: str = ".png") -> list[Path]:
    """Label files without an image."""
    if not (Path(root) / "labels").is_dir() or not (Path(root) / "images").is_dir():
        return []
    images = _files(Path(root) / "images", image_suffix)
    return [p for k, p in _files(Path(root) / "labels", label_suffix).items() if k not in images]


def read_label_values(path: Path) -> np.ndarray:
    """(H, W) uint8 or uint16 label values of a single-channel (or palette) PNG."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is not None and raw.ndim == 2 and raw.dtype in (np.uint8, np.uint16):
        return raw
    return read_8bit_label(path)  # palette PNGs: the stored indices, not OpenCV's colours


def value_map(class_set: ClassSet, label_values: str | Path | None = None) -> ClassSet:
    """The class set with the domain's own ``values``/``ignore`` (a YAML file), if given."""
    if label_values is None:
        return class_set
    path = Path(label_values)
    if not path.is_file():
        raise ClassSetError(f"{path}: no such label values file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ClassSetError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or set(data) - {"values", "ignore"}:
        raise ClassSetError(f"{path}: expected a mapping with values (and ignore)")
    own = parse_class_set({"name": class_set.name, "values": data.get("values"),
                           "ignore": data.get("ignore", []),
                           "classes": [{"name": n, "color": list(c)} for n, c in
                                       zip(class_set.names, class_set.colors)]}, str(path))
    return ClassSet(class_set.name, class_set.names, class_set.colors, class_set.subsets,
                    own.values, own.ignore)


class FolderLabels:
    """Label reader: values -> class indices through a class set's map (picklable)."""

    def __init__(self, class_set: ClassSet) -> None:
        self.lut = class_set.lut(65536)

    def __call__(self, path: Path) -> np.ndarray:
        raw = read_label_values(path)
        lut = self.lut[:256] if raw.dtype == np.uint8 else self.lut
        return cv2.LUT(raw, lut) if raw.dtype == np.uint8 else lut[raw]


