"""Class sets: the classes a run predicts, as data.

A class set names K classes (index = position), their colours, the mIoU subsets reported over
them, and how label values in files map onto them (``values``; the values in ``ignore`` are
ignored, any other value is an error the data check reports). The built-in sets:

- ``cityscapes``: the 19 Cityscapes training classes (trainIds), with the subsets
  ``cityscapes19``, ``synthia16``, ``synthia13`` and ``minicity``; label values are Cityscapes
  label ids (GTA5, Cityscapes, ACDC, Dark Zurich). The default.
- ``synthia16``, ``synthia13``: those SYNTHIA classes alone (a 16- or 13-class head).

Your own set is a YAML file::

    name: minicity5
    classes:                  # index = position
      - {name: flat, color: [128, 64, 128]}
      - {name: construction, color: [70, 70, 70]}
    values: {7: flat, 8: flat, 11: construction}   # label value -> class name (default:
                                                   # the value is the class index)
    ignore: [0, 255]          # label values that are not scored (255 always is)
    subsets: {no_flat: [construction]}               # optional, besides the full set

The built-in datasets (GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich) label the 19 Cityscapes
classes; with another set their labels are mapped by class name (:meth:`ClassSet.from_cityscapes`),
and a class of the set that is not a Cityscapes class is an error (use the ``folder`` dataset
with a ``values`` map for that). A checkpoint records its run's class set (:meth:`to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cosalign.data.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    CLASS_NAMES,
    CLASS_SUBSETS,
    IGNORE_INDEX,
    PALETTE,
)

BUILTIN = ("cityscapes", "synthia16", "synthia13")


class ClassSetError(ValueError):
    """A class set file is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class ClassSet:
    name: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    subsets: tuple[tuple[str, tuple[int, ...]], ...]  # (name, class indices), full set first
    values: tuple[tuple[int, int], ...]  # (label value, class index)
    ignore: tuple[int, ...] = (IGNORE_INDEX,)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def palette(self) -> np.ndarray:
        """(K, 3) uint8 RGB."""
        return np.array(self.colors, dtype=np.uint8).reshape(-1, 3)

    def subset(self, name: str) -> tuple[int, ...]:
        found = dict(self.subsets)
        if name not in found:
            raise ClassSetError(f"{name!r} is not a class subset of the class set {self.name!r} "
                                f"(its subsets: {', '.join(found)})")
        return found[name]

    @property
    def subset_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.subsets)

    def lut(self, size: int = 256) -> np.ndarray:
        """``lut[label value] = class index``; ignored and unknown values -> 255."""
        lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
        for value, index in self.values:
            if value < size:
                lut[value] = index
        return lut

    def to_values(self) -> np.ndarray:
        """256-entry LUT: class index -> its label value (the smallest that maps to it; for the
        Cityscapes set its label id), 255 -> 0; what a test server that takes label ids wants."""
        out = np.zeros(256, dtype=np.uint8)
        for value, index in sorted(self.values, reverse=True):
            if value < 256:
                out[index] = value
        return out

    def unknown_values(self, values) -> list[int]:
        """The label values among ``values`` that the set neither maps nor ignores."""
        known = {v for v, _ in self.values} | set(self.ignore) | {IGNORE_INDEX}
        return sorted(int(v) for v in values if int(v) not in known)

    def colorize(self, y: np.ndarray) -> np.ndarray:
        """(H, W) class map -> (H, W, 3) uint8 RGB; ignore (255) is black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.palette
        return lut[y]

    def from_cityscapes(self) -> np.ndarray:
        """256-entry LUT: Cityscapes trainId -> this set's index, by class name (classes of the
        19 not in the set -> 255). Raises :class:`ClassSetError` for a class of the set that
        is not a Cityscapes class."""
        foreign = [n for n in self.names if n not in CLASS_NAMES]
        if foreign:
            raise ClassSetError(
                f"class set {self.name!r}: {foreign[0]!r} is not one of the 19 Cityscapes "
                "classes, so the labels of GTA5, SYNTHIA, Cityscapes, ACDC and Dark Zurich "
                "cannot be mapped to it; use dataset 'folder' with a values map")
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, name in enumerate(self.names):
            lut[CLASS_NAMES.index(name)] = index
        return lut

    def to_dict(self) -> dict:
        """Plain values (a checkpoint holds it; :func:`class_set_from_dict` reads it back)."""
        return {"name": self.name, "names": list(self.names),
                "colors": [list(c) for c in self.colors],
                "subsets": {n: list(ix) for n, ix in self.subsets},
                "values": [[v, i] for v, i in self.values], "ignore": list(self.ignore)}


def class_set_from_dict(d: dict) -> ClassSet:
    return ClassSet(d["name"], tuple(d["names"]), tuple(tuple(c) for c in d["colors"]),
                    tuple((n, tuple(ix)) for n, ix in d["subsets"].items()),
                    tuple((int(v), int(i)) for v, i in d["values"]), tuple(d["ignore"]))


def _builtin(name: str) -> ClassSet:
    if name == "cityscapes":
        keep = tuple(range(19))
        subsets = tuple(CLASS_SUBSETS.items())
    else:
        keep = CLASS_SUBSETS[name]
        subsets = ((name, tuple(range(len(keep)))),)
    index = {train_id: i for i, train_id in enumerate(keep)}
    values = tuple(sorted((raw, index[t]) for raw, t in CITYSCAPES_ID_TO_TRAINID.items()
                          if t in index))
    return ClassSet(name, tuple(CLASS_NAMES[t] for t in keep),
                    tuple(tuple(int(c) for c in PALETTE[t]) for t in keep), subsets, values,
                    tuple(sorted(set(range(34)) - {v for v, _ in values})) + (IGNORE_INDEX,))


def load_class_set(name_or_path: str | Path) -> ClassSet:
    """A built-in set by name (:data:`BUILTIN`) or a YAML file (module docstring)."""
    if str(name_or_path) in BUILTIN:
        return _builtin(str(name_or_path))
    path = Path(name_or_path)
    if not path.is_file():
        raise ClassSetError(f"{path}: no such class set file (built-in sets: "
                            f"{', '.join(BUILTIN)})")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ClassSetError(f"{path}: not valid YAML ({e})") from None
    return parse_class_set(data, str(path))


def parse_class_set(data, where: str) -> ClassSet:
    """Check and build a class set from its YAML mapping; errors name ``where``."""
    def fail(msg: str):
        raise ClassSetError(f"{where}: {msg}")

    if not isinstance(data, dict):
        fail("expected a mapping with name, classes and values")
    unknown = set(data) - {"name", "classes", "values", "ignore", "subsets"}
    if unknown:
        fail(f"unknown key {sorted(unknown)[0]!r} (expected name, classes, values, ignore, "
             "subsets)")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        fail("name: expected a non-empty string")
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes:
        fail("classes: expected a list of {name, color}")
    if len(classes) > 255:
        fail(f"classes: at most 255 classes, found {len(classes)}")
    names, colors = [], []
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            fail(f"classes[{i}]: expected {{name: ..., color: [r, g, b]}}, found {c!r}")
        color = c.get("color")
        if not (isinstance(color, list) and len(color) == 3 and
                all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255
                    for x in color)):
            fail(f"classes[{i}] ({c['name']}): color: expected [r, g, b] with integers 0-255, "
                 f"found {color!r}")
        if c["name"] in names:
            fail(f"classes: the name {c['name']!r} appears twice")
        names.append(c["name"])
        colors.append(tuple(color))
    values = data.get("values")
    if values is None:  # the values are the class indices
        values = dict(enumerate(names))
    if not isinstance(values, dict) or not values:
        fail("values: expected a mapping of label value -> class name")
    pairs = []
    for value, cls in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
            fail(f"values: {value!r} is not a label value (an integer 0-65535)")
        if value == IGNORE_INDEX:
            fail(f"values: {value} is the ignore value and cannot name a class")
        if cls not in names:
            fail(f"values: {value} -> {cls!r}, which is not a class of the set "
                 f"(classes: {', '.join(names)})")
        pairs.append((value, names.index(cls)))
    ignore = data.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(v, int) for v in ignore):
        fail(f"ignore: expected a list of label values, found {ignore!r}")
    both = sorted(set(ignore) & set(values))
    if both:
        fail(f"the label value {both[0]} is both mapped (values) and ignored (ignore)")
    subsets = [(name, tuple(range(len(names))))]
    extra = data.get("subsets") or {}
    if not isinstance(extra, dict):
        fail("subsets: expected a mapping of subset name -> list of class names")
    for sub, members in extra.items():
        if sub == name:
            fail(f"subsets: {sub!r} is the set's own name (its full subset)")
        if not isinstance(members, list) or not members:
            fail(f"subsets.{sub}: expected a non-empty list of class names")
        bad = [m for m in members if m not in names]
        if bad:
            fail(f"subsets.{sub}: {bad[0]!r} is not a class of the set")
        subsets.append((str(sub), tuple(names.index(m) for m in members)))
    return ClassSet(name, tuple(names), tuple(colors), tuple(subsets), tuple(sorted(pairs)),
                    tuple(sorted(set(ignore) | {IGNORE_INDEX})))
