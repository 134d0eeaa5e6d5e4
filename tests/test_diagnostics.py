"""Alignment diagnostics against numpy and naive loops, on the test device."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosalign.losses.diagnostics import PremiseMeter, feature_stats


def test_feature_stats_equal_numpy(device):
    g = torch.Generator().manual_seed(0)
    f_t = torch.randn(2, 8, 3, 5, generator=g)
    ref = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    out = feature_stats(f_t.to(device), ref.to(device), max_rows=512)  # 30 rows: all of them
    t = f_t.permute(0, 2, 3, 1).reshape(-1, 8).double().numpy()
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    s = (t @ ref.double().numpy().T).ravel()
    for q, key in ((0.1, "s_q10"), (0.5, "s_q50"), (0.9, "s_q90"), (0.99, "s_q99")):
        assert out[key] == pytest.approx(np.quantile(s, q), abs=1e-5)
    n = len(t)
    pair = sum(t[i] @ t[j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert out["pair_cos"] == pytest.approx(pair, abs=1e-5)
    sv = np.linalg.svd(t, compute_uv=False)
    p = sv / sv.sum()
    assert out["eff_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_collapsed_features_have_rank_one_and_cosine_one(device):
    f_t = torch.ones(1, 4, 2, 3, device=device) * torch.arange(1.0, 7.0, device=device).view(
        1, 1, 2, 3)  # every position the same direction
    out = feature_stats(f_t, torch.zeros(0, 4, device=device))
    assert out["pair_cos"] == pytest.approx(1.0, abs=1e-6)
    assert out["eff_rank"] == pytest.approx(1.0, abs=1e-4)
    assert "s_q50" not in out  # no reference set yet


def test_premise_meter_equals_a_loop(device):
    g = torch.Generator().manual_seed(1)
    f_t = torch.randn(1, 6, 2, 2, generator=g)
    y_t = torch.tensor([[[0, 1], [255, 2]]])
    ref = F.normalize(torch.randn(9, 6, generator=g), dim=1)
    ref_cls = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    meter = PremiseMeter(num_classes=19)
    meter.update(f_t.to(device), y_t.to(device), ref.to(device), ref_cls.to(device), tau=0.1)
    res = meter.result()
    correct = sel = agree = 0
    same, diff = [], []
    for (i, j), cls in np.ndenumerate(y_t[0].numpy()):
        if cls == 255:
            continue
        s = F.normalize(f_t[0, :, i, j], dim=0) @ ref.T
        correct += int(ref_cls[s.argmax()] == cls)
        sel += int((s > 0.1).sum())
        agree += int(((s > 0.1) & (ref_cls == cls)).sum())
        same += s[ref_cls == cls].tolist()
        diff += s[ref_cls != cls].tolist()
    assert res["nn_accuracy"] == pytest.approx(100 * correct / 3)
    assert res["s_same"] == pytest.approx(np.mean(same), abs=1e-6)
    assert res["s_diff"] == pytest.approx(np.mean(diff), abs=1e-6)
    assert res["selected_agree"] == pytest.approx(100 * agree / max(sel, 1))
    assert res["nn_chance"] == pytest.approx(100 / 3)
