"""Your own data: class sets as files, the folder dataset, ACDC and Dark Zurich as targets,
Cityscapes as a source; every existing test runs with the 19 Cityscapes classes."""

import copy
import os

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from cosalign.cli import main
from cosalign.config import load_config
from cosalign.data import build_dataset, dataset_pairs
from cosalign.data.classes import ClassSetError, load_class_set, parse_class_set
from cosalign.data.labels import CITYSCAPES_LUT, CLASS_NAMES, CLASS_SUBSETS
from cosalign.engine.train import train
from tests.trees import make_acdc, make_cityscapes, make_darkzurich

# MiniCity's ten classes (Cityscapes label ids) merged into five
MINI5 = {
    "name": "mini5",
    "classes": [{"name": "flat", "color": [128, 64, 128]},
                {"name": "structure", "color": [70, 70, 70]},
                {"name": "nature", "color": [107, 142, 35]},
                {"name": "sky", "color": [70, 130, 180]},
                {"name": "dynamic", "color": [220, 20, 60]}],
    "values": {7: "flat", 8: "flat", 11: "structure", 17: "structure", 20: "structure",
               21: "nature", 22: "nature", 23: "sky", 24: "dynamic", 26: "dynamic"},
    "ignore": [v for v in range(34) if v not in (7, 8, 11, 17, 20, 21, 22, 23, 24, 26)],
    "subsets": {"static": ["flat", "structure", "nature", "sky"]},
}


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_builtin_sets_match_the_label_tables():
    cs = load_class_set("cityscapes")
    assert cs.names == CLASS_NAMES and cs.num_classes == 19
    np.testing.assert_array_equal(cs.lut(256), CITYSCAPES_LUT)
    assert dict(cs.subsets) == CLASS_SUBSETS
    s16 = load_class_set("synthia16")
    assert s16.num_classes == 16 and s16.names == tuple(CLASS_NAMES[t] for t in
                                                        CLASS_SUBSETS["synthia16"])
    lut = s16.from_cityscapes()  # trainId -> index by name: terrain (9), truck... ignored
    assert lut[0] == 0 and lut[9] == 255 and lut[10] == 9 and lut[18] == 15


BAD_SETS = [
    ({**MINI5, "classes": MINI5["classes"] + [{"name": "sky", "color": [1, 2, 3]}]},
     "the name 'sky' appears twice"),
    ({**MINI5, "ignore": [7]}, "7 is both mapped (values) and ignored"),
    ({**MINI5, "classes": [{"name": "flat", "color": [1, 2]}] + MINI5["classes"][1:]},
     "color: expected [r, g, b]"),
    ({**MINI5, "values": {7: "road"}}, "'road', which is not a class of the set"),
    ({**MINI5, "values": {255: "flat"}}, "255 is the ignore value"),
    ({**MINI5, "subsets": {"x": ["water"]}}, "subsets.x: 'water' is not a class"),
    ({**MINI5, "colour": 1}, "unknown key 'colour'"),
    ([1, 2], "expected a mapping"),
]


@pytest.mark.parametrize("data,word", BAD_SETS)
def test_a_bad_class_set_file_is_one_error_naming_it(data, word, tmp_path, capsys):
    path = write_yaml(tmp_path / "set.yaml", data)
    with pytest.raises(ClassSetError, match=None) as e:
        load_class_set(path)
    assert str(path) in str(e.value) and word in str(e.value)
    code = main(["train", "--config", "minicity", "--quiet", "--set",
                 f"data.class_set={path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and word in err and "data.class_set" in err


def test_a_set_with_other_classes_cannot_read_builtin_datasets(tmp_path, capsys):
    path = write_yaml(tmp_path / "mini5.yaml", MINI5)
    code = main(["train", "--config", "minicity", "--quiet", "--set", f"data.class_set={path}",
                 "data.classes=mini5"])
    err = capsys.readouterr().err
    assert code == 2 and "'flat' is not one of the 19 Cityscapes classes" in err
    assert "data.source.dataset" in err


def _label(path, values):
    Image.fromarray(np.asarray(values, np.uint8), mode="L").save(path)


def test_folder_check_reports_every_problem_by_file(tmp_path, capsys):
    root = tmp_path / "own"
    for d in ("images/day", "labels/day", "images/night", "labels/night"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "images/day/a.jpg"), rng.integers(0, 255, (8, 10, 3), np.uint8))
    _label(root / "labels/day/a.png", np.full((8, 10), 7))
    cv2.imwrite(str(root / "images/night/b.png"), rng.integers(0, 255, (6, 12, 3), np.uint8))
    _label(root / "labels/night/b.png", np.array([[7, 99] * 6] * 6))  # 99: not in the set
    (root / "images/night/c.png").write_bytes(b"not a png")
    _label(root / "labels/night/c.png", np.full((4, 4), 7))
    _label(root / "labels/night/orphan.png", np.full((4, 4), 7))
    classes = write_yaml(tmp_path / "mini5.yaml", MINI5)
    code = main(["data", "check", str(root), "--dataset", "folder", "--classes", str(classes)])
    out = capsys.readouterr().out
    assert code == 1
    assert "3 images, 3 labels" in out
    assert "labels/night/orphan.png: label without an image" in out
    assert "images/night/c.png: unreadable" in out
    assert "labels/night/b.png: label values [99] are not in the class set 'mini5'" in out
    assert "images of 2 sizes" in out
    assert "flat" in out and "NOT usable" in out
    # an image without a label is named
    (root / "images/day/d.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3)))[1])
    code = main(["data", "check", str(root), "--dataset", "folder", "--classes", str(classes)])
    assert code == 1 and "images/day/d.png: no label" in capsys.readouterr().out


def test_folder_pairs_by_path_and_suffix_and_reads_values_through_the_set(tmp_path):
    root = tmp_path / "own"
    (root / "images/x").mkdir(parents=True)
    (root / "labels/x").mkdir(parents=True)
    cv2.imwrite(str(root / "images/x/s1_leftImg8bit.png"), np.zeros((4, 6, 3), np.uint8))
    _label(root / "labels/x/s1_gtFine_labelIds.png", [[7, 8, 11, 23, 26, 0]] * 4)
    pairs = dataset_pairs("folder", root, image_suffix="_leftImg8bit.png",
                          label_suffix="_gtFine_labelIds.png")
    assert [(p.name, q.name) for p, q in pairs] == [("s1_leftImg8bit.png",
                                                      "s1_gtFine_labelIds.png")]
    cfg = load_config(None, [f"data.class_set={write_yaml(tmp_path / 'm.yaml', MINI5)}",
                             "data.val.dataset=folder", f"data.val.root={root}",
                             "data.val.image_suffix=_leftImg8bit.png",
                             "data.val.label_suffix=_gtFine_labelIds.png", "data.val.size=null",
                             "data.source.dataset=folder", "data.target.dataset=folder"])
    assert cfg.data.classes == "mini5"  # the set's full subset is the default headline
    label = build_dataset(cfg.data.val, cfg.data, train=False)[0]["label"]
    assert label[0].tolist() == [0, 0, 1, 3, 4, 255]
    # a domain with its own values onto the same set (e.g. a target labelled 0..4)
    own = write_yaml(tmp_path / "own_values.yaml", {"values": {1: "flat", 2: "sky"},
                                                    "ignore": [0]})
    cfg.data.val.label_values = str(own)
    _label(root / "labels/x/s1_gtFine_labelIds.png", [[1, 2, 0, 1, 2, 0]] * 4)
    label = build_dataset(cfg.data.val, cfg.data, train=False)[0]["label"]
    assert label[0].tolist() == [0, 3, 255, 0, 3, 255]


def test_acdc_and_darkzurich_layouts(tmp_path):
    acdc = make_acdc(tmp_path / "acdc")
    with pytest.raises(Exception, match="rain/train: folder not found"):
        dataset_pairs("acdc", acdc, "train")  # all four conditions by default
    assert len(dataset_pairs("acdc", acdc, "train", conditions=["fog", "night"])) == 4
    fog = dataset_pairs("acdc", acdc, "val", conditions=["fog"])
    assert len(fog) == 2 and all("/fog/val/" in p.as_posix() and q.name.endswith(
        "_gt_labelIds.png") for p, q in fog)
    dz = make_darkzurich(tmp_path / "dz")
    assert len(dataset_pairs("darkzurich", dz, "train", labels=False)) == 2  # night only
    assert len(dataset_pairs("darkzurich", dz, "train", labels=False,
                             conditions=["night", "day", "twilight"])) == 6
    val = dataset_pairs("darkzurich", dz, "val")
    assert len(val) == 2 and all(q.parent.parent.name == "night" for _, q in val)
    for root, dataset, extra in ((acdc, "acdc", ["--conditions", "fog", "night"]),
                                 (dz, "darkzurich", [])):
        assert main(["data", "check", str(root), "--dataset", dataset, "--split", "val",
                     "--quiet", *extra]) == 0


@pytest.fixture
def small_cfg():
    def make(overrides):
        from tests.conftest import TEST_DEVICE

        return load_config("minicity", [
            "data.batch_size=2", "model.width=0.125", "model.weights=null", "train.iters=2",
            "optim.schedule_iters=2", "train.log_every=1", "train.eval_every=0",
            "train.checkpoint_every=2", "dictionary.capacity=8", "loss.cos=0.1",
            "align.tau=0.0", "align.start_iter=0", f"train.device={TEST_DEVICE}",
            "data.source.size=[48, 24]", "data.target.size=[48, 24]", "data.val.size=[48, 24]",
            "data.source.crop=null", "data.target.crop=null",
            "data.source.list_file=null", *overrides])
    return make


def test_cityscapes_to_acdc_and_to_darkzurich_train(small_cfg, tmp_path):
    cs = make_cityscapes(tmp_path / "cs", split="train")
    acdc = make_acdc(tmp_path / "acdc")
    dz = make_darkzurich(tmp_path / "dz")
    for name, target in (("acdc", ["data.target.dataset=acdc", f"data.target.root={acdc}",
                                   "data.target.conditions=[fog, night]",
                                   "data.val.dataset=acdc", f"data.val.root={acdc}",
                                   "data.val.split=val"]),
                         ("dz", ["data.target.dataset=darkzurich", f"data.target.root={dz}",
                                 "data.val.dataset=darkzurich", f"data.val.root={dz}",
                                 "data.val.split=val"])):
        if name == "acdc":
            target.append("data.val.conditions=[fog, night]")
        cfg = small_cfg(["data.source.dataset=cityscapes", f"data.source.root={cs}",
                         "data.source.split=train", "data.classes=cityscapes19", *target])
        results = train(cfg, tmp_path / name, progress=False)
        assert results["miou"]["cityscapes19"] >= 0 and len(results["iou"]) == 19


def test_five_class_minicity_folder_end_to_end(small_cfg, tiny_minicity, tmp_path, capsys):
    """MiniCity as folder datasets with a 5-class set of merged classes: train, evaluate,
    predict in the set's colours, and report its 5-class table."""
    target = tmp_path / "target"
    for split in ("train", "val"):
        (target / split).mkdir(parents=True)
        os.symlink(tiny_minicity / "cityscapes" / "leftImg8bit" / split, target / split / "images")
        os.symlink(tiny_minicity / "cityscapes" / "gtFine" / split, target / split / "labels")
    classes = write_yaml(tmp_path / "mini5.yaml", MINI5)
    suffixes = ["image_suffix=_leftImg8bit.png", "label_suffix=_gtFine_labelIds.png"]
    cfg = small_cfg([
        f"data.class_set={classes}", "data.classes=mini5", "data.extra_classes=[static]",
        "data.source.dataset=folder", f"data.source.root={tiny_minicity / 'gta5'}",
        "data.target.dataset=folder", f"data.target.root={target / 'train'}",
        *(f"data.target.{s}" for s in suffixes),
        "data.val.dataset=folder", f"data.val.root={target / 'val'}",
        *(f"data.val.{s}" for s in suffixes)])
    results = train(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    assert set(results["iou"]) == {"flat", "structure", "nature", "sky", "dynamic"}
    assert set(results["miou"]) == {"mini5", "static"}
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--quiet"]) == 0
    assert "| dynamic |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "run"), "--baseline", "none", "--out",
                 str(tmp_path / "report")]) == 0
    capsys.readouterr()
    table = (tmp_path / "report" / "report.md").read_text()
    assert "flat | structure | nature | sky | dynamic | mIoU (mini5)" in table
    assert "mIoU (static)" in table
    pred = tmp_path / "pred"
    image = next((target / "val" / "images").rglob("*.png"))
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), str(image), "--out",
                 str(pred), "--quiet"]) == 0
    ids = cv2.imread(str(next(pred.glob("*_trainIds.png"))), cv2.IMREAD_UNCHANGED)
    assert ids.max() < 5
    colours = cv2.imread(str(next(pred.glob("*_color.png"))))[..., ::-1].reshape(-1, 3)
    palette = {tuple(c["color"]) for c in MINI5["classes"]}
    assert {tuple(c) for c in np.unique(colours, axis=0)} <= palette
    assert main(["viz", str(tmp_path / "run"), "--out", str(tmp_path / "viz"), "--images", "2",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "viz" / "features.png").is_file()
    # a run keeps its class set: resuming it with the 19 classes is one clear error
    code = main(["train", "--resume", str(tmp_path / "run"), "--quiet", "--set",
                 "data.class_set=cityscapes", "data.classes=minicity",
                 "data.source.dataset=gta5", "data.target.dataset=cityscapes",
                 f"data.target.root={tiny_minicity / 'cityscapes'}", "data.val.dataset=cityscapes",
                 f"data.val.root={tiny_minicity / 'cityscapes'}", "data.target.image_suffix=''",
                 "data.target.label_suffix=.png", "data.val.image_suffix=''",
                 "data.val.label_suffix=.png", "data.extra_classes=[]"])
    err = capsys.readouterr().err
    assert code == 2 and "trained with class set 'mini5'" in err, err


def test_parse_class_set_default_values_are_indices():
    cs = parse_class_set({"name": "two", "classes": [{"name": "a", "color": [0, 0, 0]},
                                                     {"name": "b", "color": [1, 1, 1]}]}, "x")
    assert cs.lut(256)[:3].tolist() == [0, 1, 255]


def test_the_usage_class_set_is_the_one_tested():
    """docs/USAGE.md's worked example (Your own data) shows this test's 5-class set."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "USAGE.md").read_text()
    block = text.split("# mini5.yaml\n", 1)[1].split("```", 1)[0]
    shown = parse_class_set(yaml.safe_load(block), "USAGE.md")
    tested = parse_class_set(MINI5, "test")
    assert (shown.names, shown.colors, shown.values, shown.subsets) == (
        tested.names, tested.colors, tested.values, tested.subsets)
    assert shown.ignore == (1, 255)  # MiniCity's labels hold the ten ids and the ego vehicle


def test_a_label_value_outside_the_set_stops_train_before_any_work(tmp_path, capsys):
    root = tmp_path / "own"
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    cv2.imwrite(str(root / "images/a.png"), np.zeros((8, 10, 3), np.uint8))
    _label(root / "labels/a.png", [[7, 99] * 5] * 8)
    classes = write_yaml(tmp_path / "mini5.yaml", MINI5)
    folder = ["dataset=folder", f"root={root}"]
    code = main(["train", "--config", "minicity", "--quiet", "--out", str(tmp_path / "run"),
                 "--set", f"data.class_set={classes}", "data.classes=mini5",
                 "data.source.list_file=null", *(f"data.{d}.{kv}" for d in
                                                  ("source", "target", "val") for kv in folder)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "labels/a.png: label values [99] are not in the class set 'mini5'" in err
    assert not (tmp_path / "run").exists()


def test_lossy_and_suspicious_labels_are_flagged_by_data_check_and_train(tmp_path, capsys):
    """Labels of two values (road 7, car 26) saved as JPEG; labels of class indices (0 road,
    13 car) read with the built-in set, which reads label ids (0: unlabeled, 13: fence)."""
    rng = np.random.default_rng(0)
    ignore = set(load_class_set("cityscapes").ignore) - {255}

    def tree(name, label, suffix):
        root = tmp_path / name
        for d in ("images", "labels"):
            (root / d).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(root / "images" / f"{i}.png"),
                        rng.integers(0, 255, (32, 48, 3), np.uint8))
            cv2.imwrite(str(root / "labels" / f"{i}{suffix}"), label)
        return root

    halves = np.full((32, 48), 7, np.uint8)
    halves[np.add.outer(np.arange(32), np.arange(48)) > 37] = 26  # a diagonal edge
    jpeg = tree("jpeg", halves, ".jpg")
    main(["data", "check", str(jpeg), "--dataset", "folder", "--label-suffix", ".jpg",
          "--quiet"])
    out = capsys.readouterr().out
    assert f"2 of 2 label files are JPEG (e.g. {jpeg / 'labels' / '0.jpg'})" in out
    decoded = np.stack([cv2.imread(str(jpeg / "labels" / f"{i}.jpg"), cv2.IMREAD_UNCHANGED)
                        for i in range(2)])
    assert len(np.unique(decoded)) > 2  # JPEG made more values than the two saved
    counts = {int(v): int((decoded == v).sum()) for v in np.unique(decoded) if v in ignore}
    top = max(counts, key=counts.get)  # by hand: the ignored value with most pixels
    files = sum(int((d == top).any()) for d in decoded)
    assert (f"reads as ignore: {top} ({100 * counts[top] / decoded.size:.1f}% of pixels, "
            f"{files} files)") in out

    indices = np.zeros((32, 48), np.uint8)
    indices[:, 36:] = 13  # a quarter car, by index
    own = tree("indices", indices, ".png")
    assert main(["data", "check", str(own), "--dataset", "folder", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reads as ignore: 0 (75.0% of pixels, 2 files)" in out
    assert "75.0% of the labelled pixels are ignored (more than 50%)" in out
    assert "verdict: usable" in out
    # train says it too, before any work
    folder = ["dataset=folder", f"root={own}"]
    assert main(["train", "--config", "minicity", "--quiet", "--out", str(tmp_path / "run"),
                 "--set", "train.iters=0", "data.source.list_file=null",
                 *(f"data.{d}.{kv}" for d in ("source", "target", "val") for kv in folder)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {own}: label values that class set 'cityscapes' reads as ignore" in out
    assert f"warning: {own}: 75.0% of the labelled pixels are ignored" in out
