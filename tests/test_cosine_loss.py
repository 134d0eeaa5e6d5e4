"""The cosine loss against a naive loop over target pixels and reference entries, on the test
device (COSALIGN_TEST_DEVICE)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cosalign.losses import (
    ClassFeatureDictionary,
    CosineAlignmentLoss,
    cosine_alignment,
    cosine_alignment_plain,
    labelled_features,
)
from cosalign.losses.cosine import _ref_tiles


def naive_loss(f_t, ref, ref_cls, pseudo, tau, match):
    """Loop over every target position i and every entry j, in float64 Python arithmetic."""
    B, C, h, w = f_t.shape
    f, r = f_t.double(), ref.double()
    total, count = 0.0, 0
    for b, y, x in itertools.product(range(B), range(h), range(w)):
        v = f[b, :, y, x]
        v = v / v.norm()
        sims = []
        for j in range(r.shape[0]):
            if pseudo is not None and int(ref_cls[j]) != int(pseudo[b, y, x]):
                continue
            sims.append(float(v @ r[j]))
        if match == "all":
            chosen = [s for s in sims if s > tau]
        else:
            chosen = [max(sims)] if sims and max(sims) > tau else []
        total += sum(1 - s for s in chosen)
        count += len(chosen)
    return total / max(count, 1), count


def make_case(seed, reference, device):
    g = torch.Generator().manual_seed(seed)
    f_t = torch.randn(2, 6, 3, 4, generator=g)
    if reference == "dictionary":
        d = ClassFeatureDictionary(num_classes=4, capacity=5, dim=6, per_image=3)
        for _ in range(3):
            d.update(torch.randn(2, 6, 3, 4, generator=g),
                     torch.randint(0, 4, (2, 6, 8), generator=g))
        ref, ref_cls = d.reference()
    else:
        y = torch.randint(0, 5, (2, 6, 8), generator=g)
        y[y == 4] = 255
        ref, ref_cls = labelled_features(torch.randn(2, 6, 3, 4, generator=g), y)
    pseudo = torch.randint(0, 4, (2, 3, 4), generator=g)
    return f_t.to(device), ref.to(device), ref_cls.to(device), pseudo.to(device)


@pytest.mark.parametrize("match", ["all", "max"])
@pytest.mark.parametrize("class_restrict", ["none", "pseudo"])
@pytest.mark.parametrize("reference", ["dictionary", "batch"])
@pytest.mark.parametrize("tau", [-0.2, 0.1, 0.5])
def test_loss_equals_naive_loop(match, class_restrict, reference, tau, device):
    f_t, ref, ref_cls, pseudo = make_case(0, reference, device)
    if class_restrict == "none":
        ref_cls_arg, pseudo_arg = None, None
    else:
        ref_cls_arg, pseudo_arg = ref_cls, pseudo
    expected, expected_count = naive_loss(f_t, ref, ref_cls, pseudo_arg, tau, match)
    out = cosine_alignment(
        f_t, ref, tau=tau, match=match, ref_cls=ref_cls_arg, pseudo=pseudo_arg, chunk_bytes=64
    )
    assert out.selected == expected_count
    assert expected_count > 0
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    plain = cosine_alignment_plain(
        f_t, ref, tau=tau, match=match, ref_cls=ref_cls_arg, pseudo=pseudo_arg
    )
    assert plain.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("match", ["all", "max"])
@pytest.mark.parametrize("restrict", [False, True])
def test_gradient_equals_plain_autograd(match, restrict, device):
    f_t, ref, ref_cls, pseudo = make_case(1, "dictionary", device)
    kw = dict(ref_cls=ref_cls, pseudo=pseudo) if restrict else {}
    a = f_t.clone().requires_grad_()
    b = f_t.clone().requires_grad_()
    cosine_alignment(a, ref, tau=0.1, match=match, chunk_bytes=100, **kw).loss.backward()
    cosine_alignment_plain(b, ref, tau=0.1, match=match, **kw).backward()
    assert a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("match", ["all", "max"])
def test_gradcheck_float64(match, device):
    f_t, ref, _, _ = make_case(2, "dictionary", device)
    f_t = f_t.double().requires_grad_()
    ref = ref.double()
    assert torch.autograd.gradcheck(
        lambda f: cosine_alignment(f, ref, tau=0.2, match=match).loss, (f_t,), eps=1e-7, atol=1e-6
    )


@pytest.mark.parametrize("match", ["all", "max"])
def test_nothing_selected_gives_zero_and_zero_gradient(match, device):
    f_t, ref, _, _ = make_case(3, "dictionary", device)
    f_t.requires_grad_()
    out = cosine_alignment(f_t, ref, tau=1.0, match=match)
    out.loss.backward()
    assert out.selected == 0
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss)
    assert torch.count_nonzero(f_t.grad) == 0
    # An empty reference set (empty dictionary) behaves the same.
    empty = cosine_alignment(f_t, ref[:0], tau=0.0, match=match)
    assert empty.loss.item() == 0.0 and empty.pairs == 0


@pytest.mark.parametrize("restrict", [False, True])
def test_selected_count_stays_on_the_device(restrict, device):
    # reading it would wait for the GPU: the training loop reads it only when it logs
    f_t, ref, ref_cls, pseudo = make_case(9, "dictionary", device)
    kw = dict(ref_cls=ref_cls, pseudo=pseudo) if restrict else {}
    out = cosine_alignment(f_t, ref, tau=0.1, **kw)
    assert isinstance(out.selected, torch.Tensor) and out.selected.device == f_t.device
    assert out.loss.device == f_t.device and isinstance(out.pairs, int)
    expected = naive_loss(f_t, ref, ref_cls, pseudo if restrict else None, 0.1, "all")[1]
    assert int(out.selected) == expected


def test_products_follow_bf16_features(device, product_dtypes):
    # features made under bf16 autocast: the products run in bf16, normalization in fp32
    f_t, ref, _, _ = make_case(10, "dictionary", device)
    assert cosine_alignment(f_t.bfloat16(), ref, tau=0.1).loss.dtype == torch.float32
    assert cosine_alignment(f_t, ref, tau=0.1).loss.dtype == torch.float32
    assert product_dtypes == [torch.bfloat16, torch.float32]


def test_gradient_reaches_target_features_only(device):
    f_t, ref, _, _ = make_case(4, "dictionary", device)
    f_t.requires_grad_()
    ref = ref.clone().requires_grad_()
    cosine_alignment(f_t, ref, tau=0.0).loss.backward()
    assert f_t.grad is not None and f_t.grad.abs().sum() > 0
    assert ref.grad is None


def test_loss_is_one_minus_cosine_for_a_single_pair(device):
    # One target vector at 60 degrees from the only entry: cos = 0.5, loss = 0.5.
    f_t = torch.tensor([1.0, math.sqrt(3.0)], device=device).reshape(1, 2, 1, 1)
    ref = torch.tensor([[1.0, 0.0]], device=device)
    assert cosine_alignment(f_t, ref, tau=0.4).loss.item() == pytest.approx(0.5)
    assert cosine_alignment(f_t, ref, tau=0.6).loss.item() == 0.0


def test_bf16_matmul_close_to_fp32(device):
    g = torch.Generator().manual_seed(5)
    f_t = torch.randn(2, 64, 8, 8, generator=g).to(device)
    ref = F.normalize(torch.randn(300, 64, generator=g), dim=1).to(device)
    a = cosine_alignment(f_t, ref, tau=0.1).loss
    b = cosine_alignment(f_t, ref, tau=0.1, matmul_dtype=torch.bfloat16).loss
    assert b.item() == pytest.approx(a.item(), rel=2e-2)


def test_module_form_and_bad_switches(device):
    f_t, ref, ref_cls, pseudo = make_case(6, "dictionary", device)
    loss = CosineAlignmentLoss(tau=0.1, class_restrict="pseudo")(f_t, ref, ref_cls, pseudo)
    expected, _ = naive_loss(f_t, ref, ref_cls, pseudo, 0.1, "all")
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="match"):
        cosine_alignment(f_t, ref, tau=0.1, match="best")
    with pytest.raises(ValueError, match="class_restrict"):
        CosineAlignmentLoss(tau=0.1, class_restrict="labels")
    with pytest.raises(ValueError, match="pseudo"):
        CosineAlignmentLoss(tau=0.1, class_restrict="pseudo")(f_t, ref, ref_cls)


@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (2, 6, 3, 4)])
def test_inputs_are_left_unchanged(shape, device):
    # the loss works on a (C, positions) view of f_t: it must never write through it
    g = torch.Generator().manual_seed(6)
    f_t = (torch.randn(*shape, generator=g) * 3).to(device)
    ref = F.normalize(torch.randn(10, 6, generator=g), dim=1).to(device)
    f_copy, ref_copy = f_t.clone(), ref.clone()
    cosine_alignment(f_t.requires_grad_(), ref, tau=-1.0).loss.backward()
    torch.testing.assert_close(f_t.detach(), f_copy, rtol=0, atol=0)
    torch.testing.assert_close(ref, ref_copy, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["one image", "channels_last", "transposed", "bf16"])
def test_gradient_in_every_feature_layout(layout, device):
    # one image, or channels_last features, are read in place as (C, positions) and get a
    # gradient in their own layout; any other layout (a batch of several contiguous images, h
    # and w swapped in memory) is copied first and gets a contiguous gradient
    f_t, ref, ref_cls, pseudo = make_case(7, "dictionary", device)
    if layout == "one image":
        f_t, pseudo = f_t[:1], pseudo[:1]
    elif layout == "channels_last":
        f_t = f_t.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        f_t = f_t.transpose(2, 3).contiguous().transpose(2, 3)
        assert not f_t.is_contiguous()
    else:
        f_t = f_t.bfloat16()
    a = f_t.clone().requires_grad_()
    b = f_t.clone().float().requires_grad_()
    # autograd.grad returns the gradient as the loss made it (.grad would be restrided like a)
    (grad,) = torch.autograd.grad(
        cosine_alignment(a, ref, tau=0.1, ref_cls=ref_cls, pseudo=pseudo).loss, a)
    cosine_alignment_plain(b, ref, tau=0.1, ref_cls=ref_cls, pseudo=pseudo).backward()
    assert grad.dtype == f_t.dtype and grad.abs().sum() > 0
    if layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)
    else:
        assert grad.is_contiguous()
    tol = dict(atol=1e-2, rtol=1e-2) if layout == "bf16" else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.float(), b.grad, **tol)


@pytest.mark.parametrize("match", ["all", "max"])
@pytest.mark.parametrize("restrict", [False, True])
def test_reference_set_split_into_tiles(match, restrict, device):
    # M = 9000 > 4096: S is built in tiles of reference rows (3 here), with the default chunk
    g = torch.Generator().manual_seed(8)
    f_t = torch.randn(2, 16, 4, 8, generator=g).to(device)
    ref = F.normalize(torch.randn(9000, 16, generator=g), dim=1).to(device)
    ref_cls = torch.randint(0, 3, (9000,), generator=g).to(device)
    pseudo = torch.randint(0, 3, (2, 4, 8), generator=g).to(device)
    kw = dict(ref_cls=ref_cls, pseudo=pseudo) if restrict else {}
    a = f_t.clone().requires_grad_()
    b = f_t.clone().requires_grad_()
    out = cosine_alignment(a, ref, tau=0.3, match=match, **kw)
    out.loss.backward()
    expected = cosine_alignment_plain(b, ref, tau=0.3, match=match, **kw)
    expected.backward()
    assert out.selected > 0
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_reference_tiles_cover_every_entry_once():
    r = torch.arange(10007.0)[:, None]
    tiles = _ref_tiles(r, most=4096)
    assert [len(t) for _, t in tiles] == [3336, 3336, 3335]
    assert torch.equal(torch.cat([t for _, t in tiles]), r)
    assert all(torch.equal(t, r[o : o + len(t)]) for o, t in tiles)


@pytest.mark.parametrize("chunk_bytes", [4 * 4097 * 3 + 4, 4 * 5000 * 7 + 12])
def test_blocks_fit_their_buffer_for_any_chunk_size(chunk_bytes, device):
    # chunk sizes that are no multiple of the tile: the buffer must hold the largest block
    g = torch.Generator().manual_seed(11)
    f_t = torch.randn(1, 8, 3, 7, generator=g).to(device)
    ref = F.normalize(torch.randn(9000, 8, generator=g), dim=1).to(device)
    for match in ("all", "max"):
        out = cosine_alignment(f_t, ref, tau=0.3, match=match, chunk_bytes=chunk_bytes)
        expected = cosine_alignment_plain(f_t, ref, tau=0.3, match=match)
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
