"""Label tables, readers of the three native layouts, data check and data convert."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cosalign.cli import main
from cosalign.config import DataConfig, DomainConfig
from cosalign.data import build_dataset, dataset_pairs
from cosalign.data.check import check_dataset, convert_labels, require_usable
from cosalign.data.dataset import DatasetError, InfiniteSampler
from cosalign.data.gta5 import read_gta5_label
from cosalign.data.labels import (
    CITYSCAPES_LUT,
    CLASS_NAMES,
    CLASS_SUBSETS,
    PALETTE,
    SYNTHIA_LUT,
    map_ids,
)
from cosalign.data.synthia import read_synthia_label
from tests.conftest import official_module
from tests.trees import make_cityscapes, make_gta5, make_synthia, synthia_label

# docs/METHOD.md section 6, transcribed: SYNTHIA id -> trainId.
SYNTHIA_TABLE = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12,
                 8: 13, 19: 15, 12: 17, 11: 18}


def test_cityscapes_table_equals_cityscapesscripts():
    labels = official_module("cityscapesscripts.helpers.labels").labels

    official = {l.id: (255 if l.trainId in (-1, 255) else l.trainId) for l in labels if l.id >= 0}
    for raw in range(256):
        assert CITYSCAPES_LUT[raw] == official.get(raw, 255), raw
    for l in labels:
        if 0 <= l.trainId < 19:
            assert CLASS_NAMES[l.trainId] == l.name
            assert tuple(PALETTE[l.trainId]) == l.color


def test_map_ids_equals_table_indexing():
    rng = np.random.default_rng(0)
    label8 = rng.integers(0, 256, (37, 53)).astype(np.uint8)  # OpenCV's LUT
    np.testing.assert_array_equal(map_ids(label8, CITYSCAPES_LUT), CITYSCAPES_LUT[label8])
    np.testing.assert_array_equal(map_ids(label8[:, ::2], CITYSCAPES_LUT),
                                  CITYSCAPES_LUT[label8[:, ::2]])  # a strided view
    label16 = rng.integers(0, 65536, (37, 53)).astype(np.uint16)  # numpy indexing
    np.testing.assert_array_equal(map_ids(label16, SYNTHIA_LUT), SYNTHIA_LUT[label16])


def test_synthia_table_and_subsets():
    for raw in range(65536):
        assert SYNTHIA_LUT[raw] == SYNTHIA_TABLE.get(raw, 255), raw
    assert set(CLASS_SUBSETS["synthia16"]) == set(SYNTHIA_TABLE.values())
    assert set(CLASS_SUBSETS["synthia13"]) == set(SYNTHIA_TABLE.values()) - {3, 4, 5}


def test_gta5_reader_palette_labels_and_size_mismatch(tmp_path):
    root = make_gta5(tmp_path / "gta5", n=3)
    pairs = dataset_pairs("gta5", root)
    assert [p[0].name for p in pairs] == ["00000.png", "00001.png", "00002.png"]
    raw = np.array(Image.open(pairs[0][1]))  # palette indices = ids
    # per-id loop of old UDA code as the reference
    expected = np.full(raw.shape, 255, np.uint8)
    for k, v in {7: 0, 8: 1, 11: 2, 26: 13, 33: 18}.items():
        expected[raw == k] = v
    got = read_gta5_label(pairs[0][1])
    mask = np.isin(raw, [7, 8, 11, 26, 33]) | ~np.isin(raw, list(range(7, 34)))
    np.testing.assert_array_equal(got[mask], expected[mask])
    # the odd one: label 42x25 for a 40x24 image; resized together to the training size
    ds = build_dataset(DomainConfig(dataset="gta5", root=str(root), size=(20, 12)), DataConfig(),
                       train=True)
    sample = ds[2]
    assert sample["image"].shape == (3, 12, 20) and sample["label"].shape == (12, 20)
    assert set(sample["label"].unique().tolist()) <= set(CITYSCAPES_LUT.tolist())
    no_resize = build_dataset(DomainConfig(dataset="gta5", root=str(root), size=None),
                              DataConfig(), train=True)
    with pytest.raises(DatasetError, match="00002.png: label is 42x25 but its image"):
        no_resize[2]


def test_synthia_reader_takes_the_r_channel(tmp_path):
    root = make_synthia(tmp_path / "synthia", n=2)
    pairs = dataset_pairs("synthia", root)
    raw = cv2.imread(str(pairs[0][1]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape[2] == 3
    r = raw[..., 2]
    expected = np.full(r.shape, 255, np.uint8)
    for k, v in SYNTHIA_TABLE.items():
        expected[r == k] = v
    np.testing.assert_array_equal(read_synthia_label(pairs[0][1]), expected)
    # the trap this avoids: Pillow reduces the 16-bit channels to 8 bits and the ids are lost
    pillow_r = np.array(Image.open(pairs[0][1]))[..., 0]
    assert (pillow_r == r).mean() < 0.5


def test_cityscapes_reader_cities_and_list_file(tmp_path):
    root = make_cityscapes(tmp_path / "cs", split="val", per_city=2)
    pairs = dataset_pairs("cityscapes", root, "val")
    assert [p[0].parent.name for p in pairs] == ["lindau", "lindau", "munster", "munster"]
    assert all(p[1].name.endswith("_gtFine_labelIds.png") for p in pairs)
    lst = tmp_path / "val.txt"
    lst.write_text("munster/munster_000001_000019_leftImg8bit.png\n\n")
    assert [p[0].name for p in dataset_pairs("cityscapes", root, "val", lst)] == [
        "munster_000001_000019_leftImg8bit.png"]
    lst.write_text("munster/nope.png\n")
    with pytest.raises(DatasetError, match="val.txt: names 'munster/nope.png'"):
        dataset_pairs("cityscapes", root, "val", lst)
    assert dataset_pairs("cityscapes", root, "val", labels=False)[0][1] is None


def test_missing_layout_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as e:
        dataset_pairs("synthia", tmp_path)
    assert str(tmp_path / "RGB") in str(e.value) and "GT/LABELS" in str(e.value)
    root = make_gta5(tmp_path / "gta5", n=2)
    (root / "labels" / "00001.png").unlink()
    with pytest.raises(DatasetError, match="1 label file.*00001.png"):
        dataset_pairs("gta5", root)


def test_transforms_keep_ids_and_align_image_with_label(tmp_path):
    root = make_gta5(tmp_path / "gta5", n=1, odd_one=False)
    ds = build_dataset(DomainConfig(dataset="gta5", root=str(root), size=(30, 18), crop=(16, 8),
                                    flip=True, photometric=0.3), DataConfig(), train=True)
    full = build_dataset(DomainConfig(dataset="gta5", root=str(root), size=(30, 18)),
                         DataConfig(), train=True)[0]["label"]
    for seed in range(6):
        y = ds[(0, seed)]["label"]
        assert y.shape == (8, 16)
        # the crop (maybe mirrored) is a window of the resized label
        found = any(
            (full[r : r + 8, c : c + 16] == y).all()
            or (full[r : r + 8, c : c + 16].flip(-1) == y).all()
            for r in range(11) for c in range(15))
        assert found
    assert ds[(0, 1)]["image"].equal(ds[(0, 1)]["image"])  # same seed, same augmentation


def test_infinite_sampler_resume_and_shards():
    straight = InfiniteSampler(5, seed=1)
    it = iter(straight)
    first = [next(it) for _ in range(12)]
    resumed = iter(InfiniteSampler(5, seed=1, start=7))
    assert [next(resumed) for _ in range(5)] == first[7:12]
    assert sorted(i for i, _ in first[:5]) == list(range(5))  # each epoch is a permutation
    r0 = iter(InfiniteSampler(5, 1, rank=0, world=2))
    r1 = iter(InfiniteSampler(5, 1, rank=1, world=2))
    a, b = [next(r0) for _ in range(6)], [next(r1) for _ in range(6)]
    inter = [x for pair in zip(a, b) for x in pair]
    assert inter == first


def test_data_check_good_trees(tmp_path):
    for dataset, root in (("gta5", make_gta5(tmp_path / "g")),
                          ("synthia", make_synthia(tmp_path / "s")),
                          ("cityscapes", make_cityscapes(tmp_path / "c", split="train"))):
        report = check_dataset(root, dataset, progress=False)
        assert report.usable, report.format()
        assert sum(report.histogram) > 0
    gta = check_dataset(tmp_path / "g", "gta5", progress=False)
    assert any("00002.png: label 42x25 vs image 40x24" in w for w in gta.warnings)


def test_data_check_finds_every_problem(tmp_path, capsys):
    root = make_gta5(tmp_path / "g", n=4, odd_one=False)
    (root / "images" / "00000.png").write_bytes((root / "images" / "00000.png").read_bytes()[:60])
    ids = np.full((24, 40), 7, np.uint8)
    ids[0, 0] = 200
    Image.fromarray(ids, mode="L").save(root / "labels" / "00001.png")
    (root / "labels" / "00009.png").write_bytes((root / "labels" / "00002.png").read_bytes())
    report = check_dataset(root, "gta5", progress=False)
    text = report.format()
    assert not report.usable
    assert "00000.png: unreadable or truncated image" in text
    assert "00001.png: ids [200] are not gta5 ids" in text
    assert "00009.png: label without an image" in text
    assert main(["data", "check", str(root), "--dataset", "gta5", "--quiet"]) == 1
    assert "NOT usable" in capsys.readouterr().out


def test_data_check_covers_every_cityscapes_split_and_counts_what_is_there(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "c", split="train")
    make_cityscapes(root, split="val", per_city=1, cities=("lindau", "munster"))
    next((root / "gtFine" / "val" / "munster").glob("*_labelIds.png")).unlink()  # 2 images, 1 label
    assert main(["data", "check", str(root), "--dataset", "cityscapes", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "(train): 4 images, 4 labels" in out and "verdict: usable" in out
    assert "(val): 2 images, 1 labels" in out and "1 label file(s) missing" in out
    assert "2 splits (train, val): NOT usable (val)" in out
    assert main(["data", "check", str(root), "--dataset", "cityscapes", "--split", "train",
                 "--quiet"]) == 0
    assert "(val)" not in capsys.readouterr().out
    assert main(["data", "check", str(root), "--dataset", "cityscapes", "--split", "val",
                 "--quiet"]) == 1
    assert "(val): 2 images, 1 labels" in capsys.readouterr().out


def test_data_check_flags_pillow_round_tripped_synthia_label(tmp_path):
    root = make_synthia(tmp_path / "s", n=2)
    path = root / "GT" / "LABELS" / "0000001.png"
    Image.fromarray(np.array(Image.open(path).convert("L"))).save(path)  # what Pillow makes
    report = check_dataset(root, "synthia", progress=False)
    assert not report.usable
    assert "0000001.png: expected a 3-channel 16-bit SYNTHIA label" in report.format()
    assert "Pillow" in report.format()


def usable(root, dataset, split="train", list_file=None):
    from cosalign.data.classes import load_class_set

    domain = DomainConfig(dataset=dataset, root=str(root), split=split,
                          list_file=None if list_file is None else str(list_file))
    require_usable(domain, load_class_set("cityscapes"), progress=False)


def test_require_usable_refuses_before_training_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr("cosalign.data.check.CACHE_DIR", tmp_path / "cache")
    good = make_cityscapes(tmp_path / "c", split="train")
    usable(good, "cityscapes", "train")
    assert len(list((tmp_path / "cache" / "checks").iterdir())) == 1
    usable(good, "cityscapes", "train")  # cached, still fine
    bad = make_gta5(tmp_path / "g", n=2)
    (bad / "images" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="(?s)not a usable gta5 tree.*00001.png: unreadable"):
        usable(bad, "gta5")


def test_data_convert_writes_train_ids_that_readers_prefer(tmp_path):
    for dataset, root, split in (("gta5", make_gta5(tmp_path / "g", odd_one=False), "train"),
                                 ("synthia", make_synthia(tmp_path / "s"), "train"),
                                 ("cityscapes", make_cityscapes(tmp_path / "c", "val"), "val")):
        before = [build_dataset(DomainConfig(dataset=dataset, root=str(root), split=split,
                                             size=None), DataConfig(), train=True)[i]["label"]
                  for i in range(2)]
        assert main(["data", "convert", str(root), "--dataset", dataset, "--split", split,
                     "--quiet"]) == 0
        pairs = dataset_pairs(dataset, root, split)
        assert all(p[1].name.endswith("_labelTrainIds.png") for p in pairs)
        after = [build_dataset(DomainConfig(dataset=dataset, root=str(root), split=split,
                                            size=None), DataConfig(), train=True)[i]["label"]
                 for i in range(2)]
        for a, b in zip(before, after):
            assert a.equal(b)
        assert convert_labels(root, dataset, split, progress=False) == 0  # nothing left to do
        assert check_dataset(root, dataset, split, progress=False).usable


def test_synthia_fixture_is_a_real_16bit_three_channel_png(tmp_path):
    root = make_synthia(tmp_path / "s", n=1)
    raw = cv2.imread(str(next((root / "GT" / "LABELS").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.ndim == 3
    assert synthia_label(np.random.default_rng(0), 4, 2).dtype == np.uint16
    assert Path(root / "RGB" / "0000000.png").is_file()


def test_require_usable_rechecks_a_changed_list_file_or_linked_folder(tmp_path, monkeypatch):
    """The cached verdict keys on what the check read: a list file outside the tree and files
    behind a symlinked folder count."""
    monkeypatch.setattr("cosalign.data.check.CACHE_DIR", tmp_path / "cache")
    real = make_gta5(tmp_path / "real", n=3, odd_one=False)
    root = tmp_path / "g"
    root.mkdir()
    for sub in ("images", "labels"):
        (root / sub).symlink_to(real / sub)
    listed = tmp_path / "lists" / "train.txt"
    listed.parent.mkdir()
    listed.write_text("00000.png\n00001.png\n")
    usable(root, "gta5", list_file=listed)
    (real / "images" / "00001.png").write_bytes(b"not a png")  # behind the link
    with pytest.raises(DatasetError, match="00001.png: unreadable"):
        usable(root, "gta5", list_file=listed)
    listed.write_text("00000.png\n")  # the list no longer names it: usable again
    usable(root, "gta5", list_file=listed)
    listed.write_text("00000.png\n00001.png\n")  # and names it again: checked again
    with pytest.raises(DatasetError, match="00001.png: unreadable"):
        usable(root, "gta5", list_file=listed)
