"""The class-wise source feature dictionary and the entropy terms, on the test device."""

import math

import pytest
import torch
import torch.nn.functional as F

from cosalign.losses import (
    ClassFeatureDictionary,
    entropy_loss,
    labelled_features,
    self_information,
)
from cosalign.losses.dictionary import labels_to_grid


def test_ring_buffer_keeps_exactly_the_newest_entries():
    d = ClassFeatureDictionary(num_classes=3, capacity=4, dim=2)
    pushed = {0: [], 1: []}
    for _ in range(5):  # 2 + 3 entries per step for classes 0 and 1
        n0, n1 = 2, 3
        v = F.normalize(torch.randn(n0 + n1, 2), dim=1)
        cls = torch.tensor([0] * n0 + [1] * n1)
        d.push(v, cls)
        pushed[0] += list(v[:n0])
        pushed[1] += list(v[n0:])
    ref, ref_cls = d.reference()
    assert d.filled.tolist() == [4, 4, 0]
    for k in (0, 1):
        kept = ref[ref_cls == k]
        newest = torch.stack(pushed[k][-4:])
        # same set (ring order differs from insertion order)
        assert sorted(map(tuple, kept.tolist())) == sorted(map(tuple, newest.tolist()))
    assert (ref_cls == 2).sum() == 0


def test_push_more_than_capacity_at_once_keeps_last_ones():
    d = ClassFeatureDictionary(num_classes=1, capacity=3, dim=1)
    d.push(torch.arange(1.0, 8.0)[:, None], torch.zeros(7, dtype=torch.long))
    assert sorted(d.reference()[0][:, 0].tolist()) == [5.0, 6.0, 7.0]
    d.push(torch.tensor([[8.0]]), torch.zeros(1, dtype=torch.long))
    assert sorted(d.reference()[0][:, 0].tolist()) == [6.0, 7.0, 8.0]


def test_update_skips_ignore_and_samples_per_image(device):
    d = ClassFeatureDictionary(num_classes=3, capacity=100, dim=4, per_image=2).to(device)
    f = torch.randn(2, 4, 2, 2, device=device)
    y = torch.full((2, 4, 4), 255, device=device)
    y[0, :2, :2] = 0  # grid cell (0, 0) of image 0 -> class 0
    y[1, 2:, :] = 1  # bottom row of image 1 -> class 1 (2 cells)
    y[1, :2, :2] = 2  # 1 cell of class 2
    d.update(f, y)
    assert d.filled.tolist() == [1, 2, 1]
    ref, cls = d.reference()
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(4, device=device))
    # class 0's entry is exactly image 0's normalized feature at cell (0, 0)
    torch.testing.assert_close(ref[cls == 0][0], F.normalize(f[0, :, 0, 0], dim=0))


def test_update_mean_mode():
    d = ClassFeatureDictionary(num_classes=2, capacity=10, dim=3, enqueue="mean")
    f = torch.randn(1, 3, 2, 2)
    y = torch.tensor([[[0, 0], [1, 1]]])
    d.update(f, y)
    ref, cls = d.reference()
    torch.testing.assert_close(ref[cls == 0][0], F.normalize(f[0, :, 0, :].mean(dim=1), dim=0))


def test_state_dict_round_trip(device):
    d = ClassFeatureDictionary(num_classes=3, capacity=5, dim=4, per_image=2).to(device)
    for _ in range(4):
        d.update(torch.randn(2, 4, 3, 3, device=device),
                 torch.randint(0, 3, (2, 6, 6), device=device))
    e = ClassFeatureDictionary(num_classes=3, capacity=5, dim=4, per_image=2).to(device)
    e.load_state_dict(d.state_dict())
    for a, b in zip(d.reference(), e.reference()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(d.head, e.head)


def test_labels_to_grid_is_nearest():
    y = torch.arange(16).reshape(1, 4, 4)
    assert labels_to_grid(y, (2, 2)).tolist() == [[[0, 2], [8, 10]]]


def test_labelled_features_drops_ignore():
    f = torch.randn(1, 3, 2, 2)
    y = torch.tensor([[[0, 255], [255, 1]]])
    ref, cls = labelled_features(f, y)
    assert cls.tolist() == [0, 1]
    torch.testing.assert_close(ref[1], F.normalize(f[0, :, 1, 1], dim=0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="enqueue"):
        ClassFeatureDictionary(3, 5, 4, enqueue="random")
    with pytest.raises(ValueError, match="capacity"):
        ClassFeatureDictionary(3, 0, 4)


def test_entropy_uniform_is_one_and_onehot_is_zero():
    assert entropy_loss(torch.zeros(2, 19, 3, 5)).item() == pytest.approx(1.0, abs=1e-6)
    onehot = torch.full((2, 19, 3, 5), -1e4)
    onehot[:, 3] = 1e4
    assert entropy_loss(onehot).item() == pytest.approx(0.0, abs=1e-6)


def test_self_information_against_formula():
    logits = torch.randn(1, 4, 2, 3)
    p = logits.softmax(dim=1)
    expected = -p * p.log() / math.log(4)
    torch.testing.assert_close(self_information(logits), expected)


@pytest.mark.parametrize("new_capacity", [2, 3, 6])
def test_loading_into_another_capacity_keeps_the_newest(new_capacity, device):
    # saved on the CPU, loaded into a dictionary on the test device (a resume on a GPU)
    d = ClassFeatureDictionary(num_classes=2, capacity=4, dim=1)
    for v in range(1, 8):  # class 0 gets 1..7 (wraps), class 1 gets 10, 20
        d.push(torch.tensor([[float(v)]]), torch.tensor([0]))
    d.push(torch.tensor([[10.0], [20.0]]), torch.tensor([1, 1]))
    e = ClassFeatureDictionary(num_classes=2, capacity=new_capacity, dim=1).to(device)
    e.load_state_dict(d.state_dict())
    ref, cls = e.reference()
    kept0 = sorted(ref[cls == 0][:, 0].tolist())
    assert kept0 == [float(v) for v in range(8 - min(4, new_capacity), 8)]
    assert sorted(ref[cls == 1][:, 0].tolist()) == [10.0, 20.0][-new_capacity:]
    e.push(torch.tensor([[99.0]], device=device), torch.tensor([0], device=device))  # ring goes on
    assert 99.0 in e.reference()[0][:, 0].tolist()
    with pytest.raises(ValueError, match="channels differ"):
        ClassFeatureDictionary(num_classes=2, capacity=4, dim=3).load_state_dict(d.state_dict())
