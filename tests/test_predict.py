"""`cosalign predict` on MiniCity images and on a folder of arbitrary ones, on the test
device."""

import copy

import cv2
import numpy as np

from cosalign.cli import main
from cosalign.data.labels import PALETTE
from cosalign.engine.checkpoint import list_checkpoints
from cosalign.engine.train import train


def test_predict_writes_train_ids_colour_and_overlay(tiny_config, tiny_minicity, tmp_path,
                                                      capsys):
    cfg = copy.deepcopy(tiny_config)
    train(cfg, tmp_path / "run", progress=False)
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    folder = tiny_minicity / "cityscapes" / "leftImg8bit" / "val"
    own = tmp_path / "mine" / "photo.jpg"
    own.parent.mkdir()
    cv2.imwrite(str(own), np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8))
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), str(own), "--out", str(out),
                 "--quiet", "--device", cfg.train.device]) == 0
    assert "5 image(s)" in capsys.readouterr().out
    ids = cv2.imread(str(out / "photo_trainIds.png"), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (50, 70)  # the image's own resolution
    assert ids.max() < 19
    colour = cv2.imread(str(out / "photo_color.png"))[..., ::-1]
    np.testing.assert_array_equal(colour, PALETTE[ids])
    assert cv2.imread(str(out / "photo_overlay.png")).shape == (50, 70, 3)
    assert len(list(out.glob("*_trainIds.png"))) == 5


def test_predict_missing_input_exits_2(tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path / "x.png"),
                 "--out", str(tmp_path)])
    assert code == 2 and "none.pt: checkpoint not found" in capsys.readouterr().err
