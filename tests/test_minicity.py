"""MiniCity: deterministic, written in the real formats, read through the real readers."""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cosalign.data import dataset_pairs
from cosalign.data.check import check_dataset
from cosalign.data.cityscapes import read_cityscapes_label
from cosalign.data.gta5 import read_gta5_label
from cosalign.data.labels import CLASS_SUBSETS
from cosalign.minicity.generate import (
    MiniCitySpec,
    _jobs,
    array_digest,
    combine_digests,
    content_hash,
    make_minicity,
)
from cosalign.minicity.render import render
from cosalign.minicity.scene import sample_scene
from cosalign.minicity.styles import DUSK, FOG, GAME, PHOTO
from cosalign.outputs import OutputError
from tests.conftest import TINY


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    spec = dataclasses.replace(TINY, num_source=3, num_source_val=1, num_target_train=2,
                               num_target_val=1)
    make_minicity(tmp_path / "a", spec, workers=1, progress=False)
    make_minicity(tmp_path / "b", spec, workers=2, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert not make_minicity(tmp_path / "a", spec, progress=False)  # cached: nothing written
    other = dataclasses.replace(spec, seed=spec.seed + 1)
    assert make_minicity(tmp_path / "a", other, workers=1, progress=False)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "b")


def test_trees_are_gta5_and_cityscapes(tiny_minicity):
    src = dataset_pairs("gta5", tiny_minicity / "gta5",
                        list_file=tiny_minicity / "gta5" / "train.txt")
    assert len(src) == TINY.num_source - TINY.num_source_val
    assert len(dataset_pairs("gta5", tiny_minicity / "gta5",
                             list_file=tiny_minicity / "gta5" / "val.txt")) == TINY.num_source_val
    val = dataset_pairs("cityscapes", tiny_minicity / "cityscapes", "val")
    assert len(val) == TINY.num_target_val
    assert len(dataset_pairs("cityscapes", tiny_minicity / "cityscapes", "train")) == 8
    present = set()
    for _, label in src:
        present |= set(np.unique(read_gta5_label(label)).tolist())
    for _, label in val:
        y = read_cityscapes_label(label)
        assert y.shape == (TINY.target_size[1], TINY.target_size[0])
        present |= set(np.unique(y).tolist())
    assert present - {255} <= set(CLASS_SUBSETS["minicity"])
    assert {0, 1, 2, 10} <= present  # road, sidewalk, building, sky in every street
    for dataset, root, split in (("gta5", tiny_minicity / "gta5", "train"),
                                 ("cityscapes", tiny_minicity / "cityscapes", "val")):
        assert check_dataset(root, dataset, split, progress=False).usable


def test_target_has_ego_vehicle_ignored_and_photo_textures():
    rng = np.random.default_rng(0)
    cam, surfaces = sample_scene(rng, 160, 80)
    game, y_game = render(cam, surfaces, GAME, np.random.default_rng(1))
    photo, y_photo = render(cam, surfaces, PHOTO, np.random.default_rng(1))
    assert (y_photo[-2:] == 1).all() and (y_game[-2:] != 1).all()  # ego vehicle id 1 -> ignore
    # flat colours vs textured, noisy surfaces: neighbouring road pixels differ in the photo
    road = (y_game[:, 1:] == 7) & (y_game[:, :-1] == 7)

    def roughness(img):
        return np.abs(np.diff(img.astype(float), axis=1)).sum(-1)[road].mean()

    assert roughness(photo) > 5 * roughness(game)
    fog, _ = render(cam, surfaces, FOG, np.random.default_rng(1))
    far = y_photo == 11  # buildings: fog pulls them towards the fog colour
    to_fog = lambda img: np.abs(img[far].astype(float) - FOG.fog_color).mean()  # noqa: E731
    assert to_fog(fog) < 0.8 * to_fog(photo)


def test_styles_are_arguments(tmp_path):
    spec = MiniCitySpec(num_source=1, num_source_val=0, num_target_train=1, num_target_val=1,
                        source_size=(64, 36), target_size=(64, 32), target_style=FOG)
    make_minicity(tmp_path, spec, workers=1, progress=False)
    assert len(list((tmp_path / "cityscapes" / "leftImg8bit").rglob("*.png"))) == 2


RECORDED = Path(__file__).parent / "minicity_content.json"
SMALL = MiniCitySpec(num_source=2, num_source_val=1, num_target_train=1, num_target_val=1,
                     source_size=(96, 54), target_size=(96, 48))
CONTENT_CASES = {"game-photo": SMALL, "fog": dataclasses.replace(SMALL, target_style=FOG),
                 "dusk": dataclasses.replace(SMALL, target_style=DUSK)}


def test_content_hash_is_the_recorded_one(tmp_path):
    """MiniCity is the same data on every machine with the lock's libraries. When this fails,
    numpy, OpenCV, scikit-image or the generator changed the images: every MiniCity number may
    move. If the change is intended, re-record and re-make the numbers:
    ``COSALIGN_RECORD=1 .venv/bin/python -m pytest tests/test_minicity.py -k content_hash``,
    then ``make numbers``."""
    got = {}
    for name, spec in CONTENT_CASES.items():
        make_minicity(tmp_path / name, spec, workers=1, progress=False)
        got[name] = content_hash(tmp_path / name)
    if os.environ.get("COSALIGN_RECORD") == "1":
        RECORDED.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(RECORDED.read_text())
    changed = sorted(n for n in got if got[n] != expected.get(n))
    assert not changed, (
        f"MiniCity's generated content changed ({', '.join(changed)}): a dependency or code "
        "change alters the data, so MiniCity numbers may move. If intended: COSALIGN_RECORD=1 "
        ".venv/bin/python -m pytest tests/test_minicity.py -k content_hash; then make numbers")


def test_content_hash_is_the_hash_of_the_files_written(tmp_path):
    make_minicity(tmp_path, SMALL, workers=2, progress=False)
    items = []
    for image_path, label_path, *_ in _jobs(tmp_path, SMALL):
        image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        items.append((image_path.relative_to(tmp_path).as_posix(), array_digest(image, label)))
    assert content_hash(tmp_path) == combine_digests(items)
    # one changed pixel changes it; the order of the files counts
    assert combine_digests(items[::-1]) != combine_digests(items)
    label[0, 0] ^= 1
    assert array_digest(image, label) != items[-1][1]


def test_make_refuses_empty_splits_and_foreign_folders_and_drops_its_stale_files(tmp_path,
                                                                                  capsys):
    from cosalign.cli import main

    assert main(["data", "make", "--out", str(tmp_path / "m"), "--num-source", "20"]) == 2
    assert "source train list is not empty; got 20" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    spec = dataclasses.replace(SMALL, num_target_train=3)
    with pytest.raises(OutputError, match="not a MiniCity folder"):
        make_minicity(mine, spec, workers=1, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # a smaller MiniCity over a larger one: the old target images beyond its count are gone,
    # nothing else is touched
    root = tmp_path / "m"
    make_minicity(root, spec, workers=1, progress=False)
    (root / "cityscapes" / "notes.txt").write_text("mine")
    make_minicity(root, dataclasses.replace(spec, num_target_train=1), workers=1, progress=False)
    assert len(dataset_pairs("cityscapes", root / "cityscapes", "train")) == 1
    assert (root / "cityscapes" / "notes.txt").read_text() == "mine"
    # an interrupted generation (stamp without content hash) is finished by the next call
    stamp = json.loads((root / "minicity.json").read_text())
    (root / "minicity.json").write_text(json.dumps({k: v for k, v in stamp.items()
                                                    if k != "content_sha256"}))
    assert make_minicity(root, dataclasses.replace(spec, num_target_train=1), workers=1,
                         progress=False)
