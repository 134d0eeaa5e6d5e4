"""`cosalign eval` end to end on the test device, and agreement with the official Cityscapes
evaluator."""

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cosalign.cli import main
from cosalign.data.labels import TRAINID_TO_CITYSCAPES_ID
from cosalign.engine.evaluate import evaluate_checkpoint
from cosalign.engine.tta import TTA
from tests.conftest import official_module
from tests.trees import make_cityscapes


def official_scores(pred_paths, gt_paths, monkeypatch, export_dir):
    export_dir.mkdir()
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(export_dir))
    monkeypatch.setenv("CITYSCAPES_DATASET", str(export_dir))
    ev = official_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    ev = importlib.reload(ev)  # it reads the environment at import time
    ev.args.evalInstLevelScore = False  # its instance score needs np.in1d (gone in numpy 2.4)
    ev.args.JSONOutput = False
    ev.args.quiet = True
    return ev.evaluateImgLists([str(p) for p in pred_paths], [str(p) for p in gt_paths], ev.args)


def test_our_eval_equals_cityscapesscripts(tmp_path, checkpoint, monkeypatch, device):
    official_module("cityscapesscripts")
    data = make_cityscapes(tmp_path / "cs", split="val", per_city=3, size=(64, 32))
    preds = tmp_path / "preds"
    ours = evaluate_checkpoint(checkpoint, data_root=str(data), save_predictions=preds,
                               out=tmp_path / "eval", device=device, progress=False)
    gts = sorted((data / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    assert ours["images"] == len(gts) == 6
    # the official evaluator wants label ids: map our trainId predictions back
    pred_ids = []
    for gt in gts:
        stem = gt.name.replace("_gtFine_labelIds.png", "_leftImg8bit")
        train_ids = np.array(Image.open(preds / f"{stem}_trainIds.png"))
        assert train_ids.shape == (32, 64)  # full label resolution
        out = tmp_path / "pred_ids" / f"{stem}.png"
        out.parent.mkdir(exist_ok=True)
        Image.fromarray(TRAINID_TO_CITYSCAPES_ID[train_ids]).save(out)
        pred_ids.append(out)
    official = official_scores(pred_ids, gts, monkeypatch, tmp_path / "export")
    assert len(set(np.unique(np.array(Image.open(pred_ids[0])))) ) > 2
    for name, iou in ours["iou"].items():
        theirs = official["classScores"][name]
        if np.isnan(theirs):
            assert np.isnan(iou), name
        else:
            assert iou / 100 == pytest.approx(theirs, abs=1e-6), name
    assert ours["miou"]["cityscapes19"] / 100 == pytest.approx(
        official["averageScoreClasses"], abs=1e-6)
    assert list((tmp_path / "export").iterdir()) == []  # nothing written, in site-packages or here


def test_eval_cli_writes_json_markdown_and_predictions(tmp_path, checkpoint, capsys, device):
    data = make_cityscapes(tmp_path / "cs", split="val", per_city=1, size=(64, 32))
    out = tmp_path / "res"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--quiet",
                 "--device", device.type,
                 "--save-predictions", str(tmp_path / "p"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "published protocol" in printed and "mIoU (cityscapes19)" in printed
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["images"] == 2 and results["align_corners"] is True
    assert "| road |" in out.with_suffix(".md").read_text()
    assert len(list((tmp_path / "p").glob("*_trainIds.png"))) == 2
    assert len(list((tmp_path / "p").glob("*_color.png"))) == 2


def test_tta_is_labelled_and_identity_when_trivial(tmp_path, checkpoint, device):
    data = make_cityscapes(tmp_path / "cs", split="val", per_city=1, size=(64, 32))
    plain = evaluate_checkpoint(checkpoint, data_root=str(data), out=tmp_path / "a",
                                device=device, progress=False)
    # a window as large as the input is the plain forward pass, up to the extra resize of
    # its logits to the input size before the resize to label size
    same = evaluate_checkpoint(checkpoint, data_root=str(data), out=tmp_path / "b",
                               tta=TTA(window=(48, 24)), device=device, progress=False)
    diff = np.abs(np.array(same["confusion"]) - np.array(plain["confusion"])).sum()
    assert diff < 0.05 * np.sum(plain["confusion"])
    assert "sliding window 48x24" in same["protocol"]
    ms = evaluate_checkpoint(checkpoint, data_root=str(data), out=tmp_path / "c",
                             tta=TTA(scales=(0.75, 1.0, 1.5), flip=True), device=device,
                             progress=False)
    assert ms["protocol"] == "TTA: scales [0.75, 1.0, 1.5], flip"
    assert np.sum(ms["confusion"]) == np.sum(plain["confusion"])


def test_sliding_window_covers_every_pixel():
    class Ones(torch.nn.Module):
        def forward(self, x):
            from cosalign.models import SegOutput

            z = torch.ones(x.shape[0], 2, x.shape[2] // 4, x.shape[3] // 4)
            return SegOutput(z, z, z)

    tta = TTA(window=(8, 8), stride=(5, 5))
    logits = tta._logits(Ones(), torch.zeros(1, 3, 12, 20))
    assert logits.shape == (1, 2, 12, 20)
    torch.testing.assert_close(logits, torch.ones_like(logits))
