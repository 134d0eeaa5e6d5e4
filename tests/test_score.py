"""`cosalign score` (predictions made anywhere) against the official Cityscapes evaluator, its
errors, and `cosalign predict --format` writing what the test servers take."""

import numpy as np
import pytest
from PIL import Image

from cosalign.cli import main
from cosalign.data.labels import CITYSCAPES_ID_TO_TRAINID
from tests.conftest import official_module
from tests.test_eval_protocol import official_scores
from tests.trees import make_acdc, make_cityscapes

EVAL_IDS = np.array(sorted(CITYSCAPES_ID_TO_TRAINID), np.uint8)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _predictions(data, out, fmt="labelids", seed=0):
    """Random predictions named as the Cityscapes images, one flat folder."""
    rng = np.random.default_rng(seed)
    paths = []
    for image in sorted((data / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")):
        ids = EVAL_IDS[rng.integers(0, len(EVAL_IDS), (32, 64))]
        value = ids if fmt == "labelids" else np.vectorize(CITYSCAPES_ID_TO_TRAINID.get)(ids)
        _write(out / image.name, value)
        paths.append(out / image.name)
    return paths


def test_score_equals_cityscapesscripts(tmp_path, monkeypatch, capsys):
    official_module("cityscapesscripts")
    data = make_cityscapes(tmp_path / "cs", split="val", per_city=3, size=(64, 32))
    preds = _predictions(data, tmp_path / "preds")
    gts = [data / "gtFine" / "val" / p.name.split("_")[0] /
           p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png") for p in preds]
    official = official_scores(preds, gts, monkeypatch, tmp_path / "export")
    import json

    out = tmp_path / "score.json"
    assert main(["score", str(tmp_path / "preds"), str(data), "--dataset", "cityscapes",
                 "--format", "labelids", "--out", str(out), "--quiet"]) == 0
    ours = json.loads(out.read_text())
    assert ours["images"] == 6
    for name, iou in ours["iou"].items():
        theirs = official["classScores"][name]
        assert (np.isnan(iou) and np.isnan(theirs)) or iou / 100 == pytest.approx(theirs,
                                                                                  abs=1e-6), name
    assert ours["miou"]["cityscapes19"] / 100 == pytest.approx(official["averageScoreClasses"],
                                                              abs=1e-6)
    assert "mIoU (synthia16)" in capsys.readouterr().out  # every subset of the class set
    # the same predictions as trainIds score the same
    _predictions(data, tmp_path / "train_ids", fmt="trainids")
    out2 = tmp_path / "score2.json"
    assert main(["score", str(tmp_path / "train_ids"), str(data), "--dataset", "cityscapes",
                 "--out", str(out2), "--quiet"]) == 0
    assert json.loads(out2.read_text())["miou"] == ours["miou"]


def test_score_errors_name_the_file(tmp_path, capsys):
    data = make_cityscapes(tmp_path / "cs", split="val", per_city=2, size=(64, 32))
    base = ["score", str(tmp_path / "p"), str(data), "--dataset", "cityscapes", "--quiet",
            "--format", "labelids"]

    def run(word):
        code = main(base)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and word in err, err

    run("no such folder of predictions")
    preds = _predictions(data, tmp_path / "p")
    preds[0].unlink()
    run(f"no prediction for {data}")
    _predictions(data, tmp_path / "p")
    _write(tmp_path / "p" / "x" / preds[1].name.replace("_leftImg8bit", "_labelIds"),
           np.full((32, 64), 7))
    run("two predictions for the image")
    (tmp_path / "p" / "x" / preds[1].name.replace("_leftImg8bit", "_labelIds")).unlink()
    _write(tmp_path / "p" / "aachen_000000_000019_leftImg8bit.png", np.full((32, 64), 7))
    run("a prediction for no labelled image")
    (tmp_path / "p" / "aachen_000000_000019_leftImg8bit.png").unlink()
    _write(preds[0], np.full((16, 64), 7))
    run("64x16, but the label of")
    _write(preds[0], np.full((32, 64), 3))  # id 3 (out of roi) is no evaluated class
    run("values [3] are not label ids of its classes")


def test_predict_format_writes_server_names_that_score_reads(tmp_path, checkpoint, capsys):
    data = make_cityscapes(tmp_path / "cs", split="val", per_city=1, size=(64, 32))
    out = tmp_path / "server"
    assert main(["predict", "--checkpoint", str(checkpoint), str(data / "leftImg8bit" / "val"),
                 "--out", str(out), "--format", "labelids", "--quiet", "--device", "cpu"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["lindau_000000_000019_leftImg8bit.png",
                       "munster_000000_000019_leftImg8bit.png"]
    ids = np.array(Image.open(out / written[0]))
    assert ids.shape == (32, 64) and set(np.unique(ids)) <= set(EVAL_IDS.tolist())
    assert main(["score", str(out), str(data), "--dataset", "cityscapes", "--format",
                 "labelids", "--quiet"]) == 0
    # ACDC takes trainIds named as the images
    acdc = make_acdc(tmp_path / "acdc", conditions=("fog",), splits=("val",), size=(64, 32))
    out = tmp_path / "acdc_server"
    assert main(["predict", "--checkpoint", str(checkpoint), str(acdc / "rgb_anon"), "--out",
                 str(out), "--format", "trainids", "--quiet", "--device", "cpu"]) == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(names) == 2 and "/" not in names[0] and names[0].endswith("_rgb_anon.png")
    assert np.array(Image.open(out / names[0])).max() < 19
    capsys.readouterr()
    assert main(["score", str(out), str(acdc), "--dataset", "acdc", "--conditions", "fog",
                 "--quiet"]) == 0
    assert "mIoU (cityscapes19)" in capsys.readouterr().out
    # colour: the palette
    assert main(["predict", "--checkpoint", str(checkpoint), str(acdc / "rgb_anon"), "--out",
                 str(tmp_path / "c"), "--format", "color", "--quiet", "--device", "cpu"]) == 0
    assert np.array(Image.open(next((tmp_path / "c").rglob("*.png")))).shape == (32, 64, 3)
