"""``cosalign data check`` and ``cosalign data convert``: is a dataset tree usable, and a
pre-mapped copy of its labels.

The check reads every image and label once and reports, with file names: missing folders,
images without labels and labels without images, unreadable or truncated files, image/label size
mismatches, raw ids that do not belong to the dataset, SYNTHIA labels that are not 16-bit
3-channel PNGs (the tell-tale of a Pillow round trip), and the class pixel histogram. It warns of
labels a lossy format (JPEG) has changed, of a tree more than half ignored, and of label values a
built-in class set reads as ignore (with their pixel and file counts). A verdict is
cached per tree (keyed by the resolved path, size and time of every file the check reads,
list files and symlinked folders included) so ``cosalign train`` can refuse a
bad tree before its first iteration at no cost the second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cosalign.config import DomainConfig
from cosalign.data import dataset_pairs, label_reader
from cosalign.data.adverse import image_of_label, raw_label_files
from cosalign.data.classes import BUILTIN, ClassSet, load_class_set
from cosalign.data.dataset import DatasetError, read_8bit_label
from cosalign.data.folder import orphan_labels, read_label_values, value_map
from cosalign.data.labels import CITYSCAPES_LUT, CLASS_NAMES, IGNORE_INDEX, SYNTHIA_LUT, map_ids
from cosalign.data.synthia import read_synthia_class_ids

# Raw ids that exist in each built-in dataset's label files.
KNOWN_IDS = {"gta5": set(range(34)), "cityscapes": set(range(34)), "synthia": set(range(23)),
             "acdc": set(range(34)), "darkzurich": set(range(34))}
CACHE_DIR = Path(os.environ.get("COSALIGN_CACHE", Path.home() / ".cache" / "cosalign"))
# label files in these formats have had their values changed at every edge (JPEG's loss);
# WebP may be lossy or not, and a label never needs the risk
LOSSY = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jp2": "JPEG 2000", ".webp": "WebP"}
MOSTLY_IGNORED = 0.5  # a tree with more of its labelled pixels ignored than this is suspicious


@dataclass
class CheckReport:
    dataset: str
    root: str
    split: str
    images: int = 0
    labels: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)  # pixels per class, then ignore

    @property
    def usable(self) -> bool:
        return not self.errors

    def format(self, max_lines: int = 20, histogram: bool = True) -> str:
        split = f" ({self.split})" if self.dataset in ("cityscapes", "acdc", "darkzurich") else ""
        lines = [f"{self.dataset} at {self.root}{split}: {self.images} images, "
                 f"{self.labels} labels"]
        for kind, items in (("error", self.errors), ("warning", self.warnings)):
            for item in items[:max_lines]:
                lines.append(f"  {kind}: {item}")
            if len(items) > max_lines:
                lines.append(f"  ... and {len(items) - max_lines} more {kind}s")
        total = sum(self.histogram)
        if total and histogram:
            lines.append("  class pixel histogram:")
            for k, n in enumerate(self.histogram):
                name = self.class_names[k] if k < len(self.class_names) else "ignore"
                if n:
                    lines.append(f"    {name:14s} {100 * n / total:6.2f}%")
        lines.append("verdict: " + ("usable" if self.usable else
                                    f"NOT usable ({len(self.errors)} error(s))"))
        return "\n".join(lines)


def _raw_label(dataset: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(raw ids, trainIds) of a label file; raises DatasetError for unreadable files."""
    if path.name.endswith("_labelTrainIds.png"):
        train = read_8bit_label(path)
        return train, train
    if dataset == "synthia":
        raw = read_synthia_class_ids(path)
        return raw, SYNTHIA_LUT[raw]
    raw = read_8bit_label(path)
    return raw, map_ids(raw, CITYSCAPES_LUT)


def check_dataset(root: str | Path, dataset: str, split: str = "train",
                  list_file: str | Path | None = None, progress: bool = True,
                  labels: bool = True, *, class_set: ClassSet | None = None,
                  conditions: list[str] | None = None, image_suffix: str = "",
                  label_suffix: str = ".png", label_values: str | None = None) -> CheckReport:
    """Read every pair of the tree (only the images with ``labels=False``) and report what is
    wrong with it; the histogram is over ``class_set`` (default: the 19 Cityscapes classes)."""
    class_set = class_set or load_class_set("cityscapes")
    domain = DomainConfig(dataset=dataset, root=str(root), split=split,
                          list_file=None if list_file is None else str(list_file),
                          conditions=list(conditions or []), image_suffix=image_suffix,
                          label_suffix=label_suffix, label_values=label_values)
    report = CheckReport(dataset, str(root), split, class_names=list(class_set.names),
                         histogram=[0] * (class_set.num_classes + 1))
    try:
        pairs = dataset_pairs(dataset, root, split, list_file, labels=labels,
                              conditions=domain.conditions, image_suffix=image_suffix,
                              label_suffix=label_suffix)
        label_reader(domain, class_set)  # a class set the labels cannot map to
    except (DatasetError, ValueError) as e:
        report.errors.append(str(e))
        report.images, report.labels = _count_on_disk(domain)
        return report
    report.images = len(pairs)
    report.labels = len(pairs) if labels else 0
    if list_file is None and labels:
        for p in _orphan_labels(domain):
            report.errors.append(f"{p}: label without an image")
    values = value_map(class_set, label_values) if dataset == "folder" else None
    lut16 = values.lut(65536) if values is not None else None
    hist = np.zeros(256, dtype=np.int64)
    lossy = [p for _, p in pairs if p is not None and p.suffix.lower() in LOSSY]
    if lossy:
        report.warnings.append(
            f"{len(lossy)} of {len(pairs)} label files are {LOSSY[lossy[0].suffix.lower()]} "
            f"(e.g. {lossy[0]}): a lossy format changes label values along every edge, so "
            "they no longer name classes there; save labels as PNG")
    # a built-in set read through the folder dataset: values it ignores, counted
    ignored = (np.setdiff1d(np.array(values.ignore), [IGNORE_INDEX])
               if values is not None and class_set.name in BUILTIN and label_values is None
               else np.zeros(0, dtype=np.int64))
    ignored_pixels, ignored_files = np.zeros(65536, np.int64), np.zeros(65536, np.int64)
    known = KNOWN_IDS.get(dataset)
    sizes: dict[tuple[int, int], int] = {}
    for image_path, label_path in tqdm(pairs, desc=f"check {dataset}", unit="img",
                                       disable=not progress):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            report.errors.append(f"{image_path}: unreadable or truncated image")
            continue
        sizes[image.shape[:2]] = sizes.get(image.shape[:2], 0) + 1
        if label_path is None:
            continue
        try:
            if values is not None:
                raw = read_label_values(label_path)
                classes = map_ids(raw, lut16[:256]) if raw.dtype == np.uint8 else lut16[raw]
            else:
                raw, classes = _raw_label(dataset, label_path)
                classes = classes if class_set.names == CLASS_NAMES else map_ids(
                    classes, class_set.from_cityscapes())
        except DatasetError as e:
            msg = str(e)
            if dataset == "synthia" and "expected a 3-channel" in msg:
                msg += " (looks like a label saved through Pillow; use the original GT/LABELS)"
            report.errors.append(msg)
            continue
        if raw.shape[:2] != image.shape[:2]:
            report.warnings.append(
                f"{label_path.name}: label {raw.shape[1]}x{raw.shape[0]} vs image "
                f"{image.shape[1]}x{image.shape[0]}; both are resized to the training size")
        if ignored.size:
            present, counts = np.unique(raw, return_counts=True)
            hit = np.isin(present, ignored)
            ignored_pixels[present[hit]] += counts[hit]
            ignored_files[present[hit]] += 1
        if values is not None:
            unknown = values.unknown_values(np.unique(raw))
            if unknown:
                report.errors.append(f"{label_path}: label values {unknown[:5]} are not in the "
                                     f"class set {class_set.name!r} (neither in values nor in "
                                     "ignore)")
        elif not label_path.name.endswith("_labelTrainIds.png"):
            unknown = sorted(set(np.unique(raw).tolist()) - known)
            if unknown:
                hint = " (Pillow-misread SYNTHIA label?)" if dataset == "synthia" else ""
                report.errors.append(f"{label_path}: ids {unknown[:5]} are not {dataset} ids "
                                     f"(expected {min(known)}-{max(known)}){hint}")
        hist += np.bincount(classes.ravel(), minlength=256)
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sorted(sizes.items(),
                                                                     key=lambda kv: -kv[1])[:4])
        report.warnings.append(f"images of {len(sizes)} sizes: {shown}; all are resized to "
                               "the run's size")
    k = class_set.num_classes
    report.histogram = [int(h) for h in hist[:k]] + [int(hist[IGNORE_INDEX])]
    total = sum(report.histogram)
    if ignored_pixels.any():
        top = np.argsort(-ignored_pixels)[:5]
        shown = ", ".join(f"{v} ({100 * ignored_pixels[v] / total:.1f}% of pixels, "
                          f"{ignored_files[v]} files)" for v in top if ignored_pixels[v])
        report.warnings.append(
            f"label values that class set {class_set.name!r} reads as ignore: {shown}; the "
            "built-in sets read Cityscapes label ids (7 road, 8 sidewalk, 11 building, ..., "
            "26 car); labels of other values need --label-values (a YAML values map)")
    if labels and total and report.histogram[-1] > MOSTLY_IGNORED * total:
        report.warnings.append(
            f"{100 * report.histogram[-1] / total:.1f}% of the labelled pixels are ignored "
            f"(more than {MOSTLY_IGNORED:.0%}): check the labels' format, the class set and "
            "--label-values")
    if labels and sum(report.histogram[:k]) == 0 and report.images:
        report.errors.append("no labelled pixel of any class of the class set in the whole tree")
    return report


def cityscapes_splits(root: str | Path) -> list[str]:
    """The splits a Cityscapes tree holds (folders of leftImg8bit/ or gtFine/), sorted."""
    root = Path(root)
    found = {d.name for sub in ("leftImg8bit", "gtFine") if (root / sub).is_dir()
             for d in (root / sub).iterdir() if d.is_dir()}
    return sorted(found)


def check_splits(root: str | Path, dataset: str, split: str | None = None,
                 list_file: str | Path | None = None, progress: bool = True,
                 **options) -> list[CheckReport]:
    """``cosalign data check``: one report per split; for Cityscapes without ``split``, every
    split the tree holds (so a tree whose val labels are missing is not called usable).
    ``options``: :func:`check_dataset`'s (class set, conditions, suffixes, label values)."""
    if dataset == "cityscapes" and split is None:
        splits = cityscapes_splits(root) or ["train"]  # none: the report says what is missing
    else:
        splits = [split or ("val" if dataset == "darkzurich" else "train")]
    return [check_dataset(root, dataset, s, list_file, progress, **options) for s in splits]


_ON_DISK = {  # (image glob, label glob) of each layout; {split} for Cityscapes
    "gta5": ("images/*.png", "labels/*.png"),
    "synthia": ("RGB/*.png", "GT/LABELS/*.png"),
    "cityscapes": ("leftImg8bit/{split}/*/*_leftImg8bit.png",
                   "gtFine/{split}/*/*_gtFine_labelIds.png"),
}


def _count_on_disk(domain: DomainConfig) -> tuple[int, int]:
    """Images and raw label files present, for a tree whose pairs cannot be built."""
    root, d = Path(domain.root), domain.dataset
    if d == "folder":
        count = lambda sub: sum(1 for p in (root / sub).rglob("*") if p.is_file())  # noqa: E731
        return count("images"), count("labels")
    if d not in _ON_DISK:
        return 0, len(_raw_labels(domain))
    images = root.glob(_ON_DISK[d][0].format(split=domain.split))
    return sum(1 for _ in images), len(_raw_labels(domain))


def _raw_labels(domain: DomainConfig) -> list[Path]:
    """Raw label files of the layout (not the converted ``*_labelTrainIds.png``)."""
    root, d = Path(domain.root), domain.dataset
    if d in ("acdc", "darkzurich"):
        return raw_label_files(d, root, domain.split, domain.conditions)
    if d == "folder":
        return []
    pattern = _ON_DISK[d][1].format(split=domain.split)
    return [p for p in root.glob(pattern) if not p.name.endswith("_labelTrainIds.png")]


def _orphan_labels(domain: DomainConfig) -> list[Path]:
    """Raw label files whose image does not exist."""
    root, d, split = Path(domain.root), domain.dataset, domain.split
    if d == "folder":
        return orphan_labels(root, domain.image_suffix, domain.label_suffix)
    if d == "gta5":
        image_of = lambda p: root / "images" / p.name  # noqa: E731
    elif d == "synthia":
        image_of = lambda p: root / "RGB" / p.name  # noqa: E731
    elif d in ("acdc", "darkzurich"):
        image_of = lambda p: image_of_label(p, root)  # noqa: E731
    else:
        image_of = lambda p: (root / "leftImg8bit" / split / p.parent.name /  # noqa: E731
                              p.name.replace("_gtFine_labelIds", "_leftImg8bit"))
    return [p for p in _raw_labels(domain) if not image_of(p).is_file()]


def _signature(domain: DomainConfig, labels: bool, class_set: ClassSet) -> str | None:
    """A key of everything the check reads: the list file (wherever it is) and every file of
    the pairs and of the orphan-label search, by resolved path, size and time (symlinks
    followed), and the class set. None when the pairs cannot be listed (the check reports why;
    nothing cached)."""
    root = Path(domain.root)
    h = hashlib.sha1(f"{root.resolve()}|{domain}|labels={labels}|{class_set}".encode())
    try:
        pairs = dataset_pairs(domain.dataset, root, domain.split, domain.list_file,
                              labels=labels, conditions=domain.conditions,
                              image_suffix=domain.image_suffix, label_suffix=domain.label_suffix)
        files = [p for pair in pairs for p in pair if p is not None]
        files += [Path(f) for f in (domain.list_file, domain.label_values) if f is not None]
        if domain.list_file is None and labels:
            files += _raw_labels(domain)
            if domain.dataset == "folder" and (root / "labels").is_dir():
                files += sorted(p for p in (root / "labels").rglob("*") if p.is_file())
        for path in files:
            st = os.stat(path)  # follows symlinks: the file that is read
            h.update(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    except (DatasetError, OSError):
        return None
    return h.hexdigest()


def require_usable(domain: DomainConfig, class_set: ClassSet, progress: bool = True,
                   labels: bool = True, shown: int = 3) -> list[str]:
    """Raise :class:`DatasetError` with ``data check``'s report unless the domain's tree is
    usable with ``class_set``; the verdict for an unchanged tree is cached under
    ~/.cache/cosalign (COSALIGN_CACHE). Returns the check's warnings for the run to print
    (the first ``shown``, then how many more ``data check`` lists), from the cache too."""
    key = _signature(domain, labels, class_set)
    cache = CACHE_DIR / "checks" / f"{key}.json"
    if key is not None and cache.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):  # unreadable: check again
            return _summary(domain, json.loads(cache.read_text()).get("warnings", []), shown)
    report = check_dataset(domain.root, domain.dataset, domain.split, domain.list_file,
                           progress, labels, class_set=class_set, conditions=domain.conditions,
                           image_suffix=domain.image_suffix, label_suffix=domain.label_suffix,
                           label_values=domain.label_values)
    if not report.usable:
        n = len(report.errors)
        more = (f" (and {n - 1} more: `cosalign data check {domain.root} --dataset "
                f"{domain.dataset}` lists them)" if n > 1 else "")
        raise DatasetError(f"{domain.root} is not a usable {domain.dataset} tree: "
                           f"{report.errors[0]}{more}")
    if key is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(asdict(report)))
        except OSError:  # a read-only home: the check runs again next time
            pass
    return _summary(domain, report.warnings, shown)


def _summary(domain: DomainConfig, warnings: list[str], shown: int) -> list[str]:
    out = [f"{domain.root}: {w}" for w in warnings[:shown]]
    if len(warnings) > shown:
        out.append(f"{domain.root}: {len(warnings) - shown} more warnings (`cosalign data check "
                   f"{domain.root} --dataset {domain.dataset}` lists them)")
    return out


def convert_labels(root: str | Path, dataset: str, split: str = "train",
                   list_file: str | Path | None = None, force: bool = False,
                   progress: bool = True) -> int:
    """Write ``*_labelTrainIds.png`` (8-bit trainIds) next to every label. Returns the count."""
    if dataset == "folder":
        raise DatasetError("data convert: a folder dataset's labels are read through its class "
                           "set's values map; there is nothing to convert")
    pairs = dataset_pairs(dataset, root, split, list_file, labels=True)
    written = 0
    for _, label_path in tqdm(pairs, desc=f"convert {dataset}", unit="img", disable=not progress):
        if label_path.name.endswith("_labelTrainIds.png") and not force:
            continue  # already converted
        stem = label_path.stem.replace("_gtFine_labelIds", "_gtFine").replace("_gt_labelIds",
                                                                               "_gt")
        out = label_path.with_name(f"{stem}_labelTrainIds.png")
        _, train = _raw_label(dataset, label_path)
        tmp = out.with_name(f".{out.name}.tmp.png")
        if not cv2.imwrite(str(tmp), train):
            raise DatasetError(f"{out}: could not write")
        os.replace(tmp, out)
        written += 1
    return written
