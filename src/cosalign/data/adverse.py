"""ACDC (Sakaridis et al., ICCV 2021) and Dark Zurich (Sakaridis et al., ICCV 2019) in their
native layouts: the adverse-condition targets of Cityscapes -> ACDC and Cityscapes -> Dark
Zurich. Both label the 19 Cityscapes classes with Cityscapes label ids.

    ACDC         ROOT/rgb_anon/COND/SPLIT/SEQ/STEM_rgb_anon.png          1920x1080 RGB
                 ROOT/gt/COND/SPLIT/SEQ/STEM_gt_labelIds.png             (train, val)
                 COND: fog, night, rain, snow; SPLIT: train, val, test (no labels)
    Dark Zurich  ROOT/rgb_anon/SPLIT/TIME/SEQ/STEM_rgb_anon.png          1920x1080 RGB
                 ROOT/gt/val/night/SEQ/STEM_gt_labelIds.png              (val only)
                 SPLIT: train (TIME: night, day, twilight), val, test (night)

Both ship ``STEM_gt_labelTrainIds.png`` too; reading prefers it, as for Cityscapes.
``data.<domain>.conditions`` chooses ACDC's conditions (default all four) or Dark Zurich's
times of day (default night).
"""

from __future__ import annotations

from pathlib import Path

from cosalign.data.dataset import (
    DatasetError,
    Pair,
    attach_labels,
    prefer_train_ids,
    read_list_file,
    require_dir,
)

CONDITIONS = {"acdc": ("fog", "night", "rain", "snow"), "darkzurich": ("night", "day", "twilight")}
DEFAULT_CONDITIONS = {"acdc": CONDITIONS["acdc"], "darkzurich": ("night",)}
IMAGE_SUFFIX = "_rgb_anon.png"
LAYOUT = {
    "acdc": "  ROOT/rgb_anon/COND/SPLIT/SEQ/STEM_rgb_anon.png\n"
            "  ROOT/gt/COND/SPLIT/SEQ/STEM_gt_labelIds.png",
    "darkzurich": "  ROOT/rgb_anon/SPLIT/TIME/SEQ/STEM_rgb_anon.png\n"
                  "  ROOT/gt/val/night/SEQ/STEM_gt_labelIds.png",
}


def _folder(dataset: str, kind: str, split: str, condition: str) -> Path:
    """rgb_anon/COND/SPLIT (ACDC) or rgb_anon/SPLIT/TIME (Dark Zurich), relative to ROOT."""
    if dataset == "acdc":
        return Path(kind) / condition / split
    return Path(kind) / split / condition


def label_path(image: Path, root: Path) -> Path:
    """gt/... next to rgb_anon/... with the same sub-path."""
    rel = image.relative_to(root / "rgb_anon")
    stem = image.name[: -len(IMAGE_SUFFIX)]
    folder = root / "gt" / rel.parent
    return prefer_train_ids(folder / f"{stem}_gt_labelIds.png",
                            folder / f"{stem}_gt_labelTrainIds.png")


def adverse_pairs(dataset: str, root: Path, split: str, conditions: list[str] | None = None,
                  list_file: Path | None = None, labels: bool = True) -> list[Pair]:
    """(image, label) pairs of ACDC or Dark Zurich; a list file names images relative to
    ROOT/rgb_anon (e.g. fog/train/GOPR0475/GOPR0475_frame_000041_rgb_anon.png)."""
    root = Path(root)
    conds = list(conditions or DEFAULT_CONDITIONS[dataset])
    if list_file is not None:
        images = [root / "rgb_anon" / e for e in read_list_file(list_file)]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise DatasetError(f"{list_file}: names {missing[0]}, which does not exist")
    else:
        images = []
        for cond in conds:
            folder = root / _folder(dataset, "rgb_anon", split, cond)
            require_dir(folder, LAYOUT[dataset])
            found = sorted(folder.glob(f"*/*{IMAGE_SUFFIX}"))
            if not found:
                raise DatasetError(f"{folder}: no files matching SEQ/*{IMAGE_SUFFIX}")
            images += found
    if not labels:
        return [(image, None) for image in images]
    for cond in conds if list_file is None else []:
        require_dir(root / _folder(dataset, "gt", split, cond), LAYOUT[dataset])
    return attach_labels(images, lambda image: label_path(image, root))


def raw_label_files(dataset: str, root: Path, split: str, conditions: list[str] | None):
    """The label files of the layout (for the data check's orphan search)."""
    out = []
    for cond in conditions or DEFAULT_CONDITIONS[dataset]:
        folder = Path(root) / _folder(dataset, "gt", split, cond)
        out += [p for p in folder.glob("*/*_gt_labelIds.png")]
    return out


def image_of_label(label: Path, root: Path) -> Path:
    rel = label.relative_to(Path(root) / "gt")
    stem = label.name[: -len("_gt_labelIds.png")]
    return Path(root) / "rgb_anon" / rel.parent / f"{stem}{IMAGE_SUFFIX}"
