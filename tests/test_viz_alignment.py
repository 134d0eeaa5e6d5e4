"""`cosalign viz`: the PCA projection and the similarity map against direct computations."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosalign.cli import main
from cosalign.engine.checkpoint import list_checkpoints
from cosalign.engine.train import train
from cosalign.losses import ClassFeatureDictionary
from cosalign.models import DeepLabV2
from cosalign.viz_alignment import pca_2d, similarity_map


def test_pca_equals_the_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 0.5, 0.1, 0.1]) + 3.0
    xy = pca_2d(x)
    vals, vecs = np.linalg.eigh(np.cov(x.T))
    expected = (x - x.mean(0)) @ vecs[:, ::-1][:, :2]
    for k in range(2):  # up to the sign of each direction
        assert min(np.abs(xy[:, k] - expected[:, k]).max(),
                   np.abs(xy[:, k] + expected[:, k]).max()) < 1e-8


def test_similarity_map_equals_a_loop_over_positions(device):
    torch.manual_seed(0)
    model = DeepLabV2(num_classes=19, depth=18, width=0.125, bn="train").eval().to(device)
    d = ClassFeatureDictionary(19, 4, model.feature_dim).to(device)
    d.push(F.normalize(torch.randn(12, model.feature_dim, device=device), dim=1),
           torch.tensor([0, 1, 2] * 4, device=device))
    image = torch.randn(3, 32, 48)
    pred, best = similarity_map(model, d, image, device)
    with torch.no_grad():
        out = model(image[None].to(device))
    ref, ref_cls = d.reference()
    for i, j in np.ndindex(*pred.shape):
        v = F.normalize(out.features[0, :, i, j], dim=0)
        mine = ref[ref_cls == int(pred[i, j])]
        if len(mine):
            assert best[i, j] == pytest.approx(float((mine @ v).max()), abs=1e-5)
        else:
            assert np.isnan(best[i, j])


def test_viz_command_writes_both_figures(tiny_config, tmp_path, capsys):
    cfg = copy.deepcopy(tiny_config)
    train(cfg, tmp_path / "run", progress=False)
    ckpts = list_checkpoints(tmp_path / "run")
    out = tmp_path / "viz"
    assert main(["viz", str(ckpts[0]), str(ckpts[-1]), "--out", str(out), "--images", "3",
                 "--device", cfg.train.device]) == 0
    assert (out / "features.png").stat().st_size > 10_000
    assert (out / "similarity.png").stat().st_size > 10_000
