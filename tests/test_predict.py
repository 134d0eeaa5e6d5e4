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
    ids = cv2.imread(str(out / "photo.jpg_trainIds.png"), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (50, 70)  # the image's own resolution
    assert ids.max() < 19
    colour = cv2.imread(str(out / "photo.jpg_color.png"))[..., ::-1]
    np.testing.assert_array_equal(colour, PALETTE[ids])
    assert cv2.imread(str(out / "photo.jpg_overlay.png")).shape == (50, 70, 3)
    # the folder's images keep their path inside it
    assert len(list(out.glob("minival/*_leftImg8bit.png_trainIds.png"))) == 4


def test_predict_missing_input_exits_2(tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path / "x.png"),
                 "--out", str(tmp_path)])
    assert code == 2 and "x.png: no such image or folder" in capsys.readouterr().err


def test_predict_keeps_paths_and_extensions_and_refuses_clashes(tiny_config, tmp_path, capsys):
    cfg = copy.deepcopy(tiny_config)
    cfg.train.iters = 1
    train(cfg, tmp_path / "run", progress=False)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("a/x.png", "b/x.png", "photo.jpg", "photo.png"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / name), rng.integers(0, 255, (20, 30, 3), np.uint8))
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(tmp_path / "run"), "--quiet", "--device", "cpu"]
    assert main([*args, str(images), "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_trainIds.png"))
    assert written == ["a/x.png_trainIds.png", "b/x.png_trainIds.png",
                       "photo.jpg_trainIds.png", "photo.png_trainIds.png"]
    capsys.readouterr()
    # the same name from two inputs, and an output folder inside the input: refused, nothing made
    for argv, word in (([str(images / "a"), str(images / "b"), "--out", str(tmp_path / "o")],
                        "both would be written as x.png"),
                       ([str(images), "--out", str(images / "pred")], "inside the input folder")):
        assert main([*args, *argv]) == 2
        err = capsys.readouterr().err
        assert word in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (images / "pred").exists()


def test_predict_with_a_missing_checkpoint_makes_no_output_folder(tmp_path, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    code = main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(image), "--out",
                 str(tmp_path / "out")])
    assert code == 2 and "none.pt: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
