"""MiniCity: the embedded benchmark, a synthetic-to-"real" street-scene pair that needs no download.

The source domain is rendered in the "game" style and written exactly as a GTA5 tree; the target
in the "photo" style (textures from photographs bundled with scikit-image, camera effects, an
ego-vehicle hood) and written exactly as a Cityscapes tree. Both domains share the scene
distribution (minicity/scene.py) and differ in rendering (minicity/render.py, styles.py), as
GTA5 and Cityscapes do. Everything is a deterministic function of the seed.

    ROOT/gta5/images/NNNNN.png, labels/NNNNN.png, train.txt, val.txt
    ROOT/cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    ROOT/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png
    ROOT/minicity.json    the generator's parameters (a cache key) and the content's hash

It is written into a new or empty folder, or over an earlier MiniCity (whose files the new one
does not replace are removed: a smaller target split must not keep the old images); an
interrupted generation is finished by the next call (the stamp has no content hash until the
last file is written).

The content hash (``content_sha256``) covers the decoded pixels and labels of every file in
order, not the PNG bytes (which another zlib could encode differently): equal hashes mean equal
data. ``tests/test_minicity.py`` compares a small MiniCity's hash with a recorded one, so a
dependency or code change that alters the data fails there; the demo records the hash in
``results.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cosalign.config import ConfigError
from cosalign.minicity.cache import code_hash
from cosalign.minicity.pool import render_pool
from cosalign.minicity.render import render
from cosalign.minicity.scene import sample_scene
from cosalign.minicity.styles import GAME, PHOTO, Style
from cosalign.outputs import OutputError, writable_dir

FORMAT_VERSION = 2
CONTENT = "content_sha256"  # the stamp's field holding the content hash


GENERATOR = ("minicity/generate.py", "minicity/scene.py", "minicity/render.py",
             "minicity/styles.py", "minicity/pool.py", "minicity/cache.py")


@dataclass(frozen=True)
class MiniCitySpec:
    """What to generate. Sizes are (width, height) as written on disk."""

    num_source: int = 600  # the last ``num_source_val`` form the source val split
    num_source_val: int = 100
    num_target_train: int = 600
    num_target_val: int = 100
    source_size: tuple[int, int] = (320, 180)  # 16:9 like GTA5
    target_size: tuple[int, int] = (384, 192)  # 2:1 like Cityscapes
    source_style: Style = field(default=GAME)
    target_style: Style = field(default=PHOTO)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_source <= self.num_source_val:
            raise ConfigError(f"num_source (--num-source): expected more than num_source_val "
                              f"({self.num_source_val}, the source val split), so that the "
                              f"source train list is not empty; got {self.num_source}")
        if self.num_source_val < 0:
            raise ConfigError(f"num_source_val: expected >= 0, got {self.num_source_val}")
        for name in ("num_target_train", "num_target_val"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected at least 1 image (an empty split is not "
                                  f"usable), got {getattr(self, name)}")

    def key(self) -> dict:
        return {"version": FORMAT_VERSION, "generator": code_hash(*GENERATOR),
                **json.loads(json.dumps(asdict(self)))}


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 of arrays' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def combine_digests(items: list[tuple[str, str]]) -> str:
    """One sha256 of ``(name, digest)`` pairs, in the order given."""
    h = hashlib.sha256()
    for name, digest in items:
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def _write(job: tuple) -> str:
    """Render and write one image and its label; returns the digest of both arrays."""
    image_path, label_path, size, style, seed = job
    rng = np.random.default_rng(seed)
    cam, surfaces = sample_scene(rng, *size)
    image, label = render(cam, surfaces, style, rng)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(label_path), label)
    return array_digest(image, label)


def _jobs(root: Path, spec: MiniCitySpec) -> list[tuple]:
    jobs = []
    gta = root / "gta5"
    for i in range(spec.num_source):
        jobs.append((gta / "images" / f"{i:05d}.png", gta / "labels" / f"{i:05d}.png",
                     spec.source_size, spec.source_style, [spec.seed, 0, i]))
    cs = root / "cityscapes"
    for split, n, city, domain in (("train", spec.num_target_train, "minitown", 1),
                                   ("val", spec.num_target_val, "minival", 2)):
        for i in range(n):
            stem = f"{city}_{i // 100:06d}_{i % 100:06d}"
            jobs.append((cs / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         cs / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                         spec.target_size, spec.target_style, [spec.seed, domain, i]))
    return jobs


def _counts(recorded: dict) -> MiniCitySpec:
    """A spec with the image counts of a recorded key (what names its files); the default
    counts where the record has none."""
    counts = {k: recorded[k] for k in ("num_source", "num_source_val", "num_target_train",
                                       "num_target_val") if isinstance(recorded.get(k), int)}
    try:
        return MiniCitySpec(**counts)
    except ConfigError:
        return MiniCitySpec()


def content_hash(root: Path) -> str | None:
    """The content hash recorded when MiniCity under ``root`` was generated (None if none)."""
    stamp = Path(root) / "minicity.json"
    return json.loads(stamp.read_text()).get(CONTENT) if stamp.is_file() else None


def make_minicity(root: Path, spec: MiniCitySpec = MiniCitySpec(), workers: int = 2,
                  progress: bool = True) -> bool:
    """Write MiniCity under ``root`` unless an identical one is there. Returns True if written."""
    root = Path(root)
    stamp = root / "minicity.json"
    jobs = _jobs(root, spec)
    if stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            recorded = {}
        if CONTENT in recorded and {k: v for k, v in recorded.items() if k != CONTENT} \
                == spec.key():
            return False
        # another MiniCity was here: remove its files that this one does not write over
        # (they would join the target split), and only those
        new = {job[i] for job in jobs for i in (0, 1)}
        for job in _jobs(root, _counts(recorded)):
            for path in job[:2]:
                if path not in new:
                    path.unlink(missing_ok=True)
    elif root.is_dir() and any(root.iterdir()):
        raise OutputError(f"{root}: not empty and not a MiniCity folder (no minicity.json); "
                          "MiniCity is written into a new or empty folder")
    writable_dir(root, "MiniCity folder")
    stamp.write_text(json.dumps(spec.key(), indent=1))  # in progress: no content hash yet
    digests = list(render_pool(_write, jobs, workers, "MiniCity", progress))
    content = combine_digests([(job[0].relative_to(root).as_posix(), d)
                               for job, d in zip(jobs, digests)])
    names = [f"{i:05d}.png" for i in range(spec.num_source)]
    split = spec.num_source - spec.num_source_val
    (root / "gta5").mkdir(parents=True, exist_ok=True)
    (root / "gta5" / "train.txt").write_text("\n".join(names[:split]) + "\n")
    (root / "gta5" / "val.txt").write_text("\n".join(names[split:]) + "\n")
    stamp.write_text(json.dumps({**spec.key(), CONTENT: content}, indent=1))
    return True
