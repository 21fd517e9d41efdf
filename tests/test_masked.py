"""masked linear: every backend against the torch reference ``(x * m) @ W.T + b``."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import HAVE_TRITON
from pydebias import reference
from pydebias.nn import MaskedLinear, fold_masks, masked_linear, masked_linear_many

BACKENDS = ["cpp", "torch"] + (["triton"] if HAVE_TRITON else [])
RTOL, ATOL = 1e-5, 1e-5  # float32 sums of ~100 products of O(1) values


def data(n, m, c, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g).to(dtype)
    w = torch.randn(c, m, generator=g)
    b = torch.randn(c, generator=g)
    return x, w, b, g


def mask_of(kind, c, m, g, k=None):
    lead = () if k is None else (k,)
    if kind == "none":
        return None
    shape = lead + ((m,) if kind == "input" else (c, m))
    return (torch.rand(shape, generator=g) > 0.4).float()


def ref_many(x, w, b, masks):
    return torch.stack([reference.masked_linear(x, w, b, masks[k]) for k in range(masks.shape[0])], dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["none", "input", "per_class"])
@pytest.mark.parametrize("n,m,c", [(97, 37, 3), (1, 5, 2), (40, 1, 4), (130, 70, 1), (33, 16, 17)])
def test_single_mask_matches_reference(backend, kind, n, m, c):
    x, w, b, g = data(n, m, c, seed=n + m + c)
    mask = mask_of(kind, c, m, g)
    got = masked_linear(x, w, b, mask, backend=backend)
    assert got.shape == (n, c) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference.masked_linear(x, w, b, mask), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["input", "per_class"])
@pytest.mark.parametrize("n,m,c,k", [(61, 29, 2, 32), (1, 3, 3, 1), (20, 1, 2, 5), (45, 40, 5, 7)])
def test_many_masks_match_reference(backend, kind, n, m, c, k):
    x, w, b, g = data(n, m, c, seed=3 * n + m)
    masks = mask_of(kind, c, m, g, k=k)
    got = masked_linear_many(x, w, b, masks, backend=backend)
    assert got.shape == (n, k, c)
    torch.testing.assert_close(got, ref_many(x, w, b, masks), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_and_leading_dims(backend):
    x, w, _, g = data(24, 10, 3, seed=5)
    mask = mask_of("per_class", 3, 10, g)
    x3 = x.reshape(2, 3, 4, 10)
    got = masked_linear(x3, w, None, mask, backend=backend)
    assert got.shape == (2, 3, 4, 3)
    torch.testing.assert_close(got.reshape(24, 3), reference.masked_linear(x, w, None, mask), rtol=RTOL, atol=ATOL)
    many = masked_linear_many(x3, w, None, mask[None], backend=backend)
    assert many.shape == (2, 3, 4, 1, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_and_all_one_masks(backend):
    x, w, b, _ = data(50, 12, 3, seed=7)
    zero = masked_linear(x, w, b, torch.zeros(12), backend=backend)
    torch.testing.assert_close(zero, b.expand(50, 3), rtol=0, atol=0)
    zero_pc = masked_linear(x, w, b, torch.zeros(3, 12), backend=backend)
    torch.testing.assert_close(zero_pc, b.expand(50, 3), rtol=0, atol=0)
    one = masked_linear(x, w, b, torch.ones(12), backend=backend)
    torch.testing.assert_close(one, nn.functional.linear(x, w, b), rtol=RTOL, atol=ATOL)
    both = masked_linear_many(x, w, b, torch.stack([torch.zeros(12), torch.ones(12)]), backend=backend)
    torch.testing.assert_close(both[:, 0], b.expand(50, 3), rtol=0, atol=0)
    torch.testing.assert_close(both[:, 1], nn.functional.linear(x, w, b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_features(backend, dtype):
    x, w, b, g = data(70, 33, 3, seed=11, dtype=dtype)
    mask = mask_of("input", 3, 33, g)
    got = masked_linear(x, w, b, mask, backend=backend)
    want = reference.masked_linear(x, w, b, mask)
    assert got.dtype == torch.promote_types(dtype, torch.float32)
    tol = 1e-10 if dtype == torch.float64 else RTOL  # half inputs are widened exactly, then summed in float32
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol if dtype == torch.float64 else ATOL)
    masks = mask_of("per_class", 3, 33, g, k=4)
    torch.testing.assert_close(masked_linear_many(x, w, b, masks, backend=backend).double(),
                               ref_many(x, w, b, masks).double(), rtol=RTOL, atol=ATOL)


def test_half_weights_compute_in_float32():
    x, w, b, g = data(30, 8, 2, seed=2, dtype=torch.float16)
    got = masked_linear(x, w.half(), b.half(), mask_of("input", 2, 8, g))
    assert got.dtype == torch.float16


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_types_and_real_values(backend):
    x, w, b, g = data(40, 9, 2, seed=13)
    mb = torch.rand(9, generator=g) > 0.5
    want = reference.masked_linear(x, w, b, mb.float())
    torch.testing.assert_close(masked_linear(x, w, b, mb, backend=backend), want, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(masked_linear(x, w, b, mb.to(torch.int64), backend=backend), want,
                               rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(masked_linear(x, w, b, mb.numpy(), backend=backend), want, rtol=RTOL, atol=ATOL)
    real = torch.rand(2, 9, generator=g) * 1.5 - 0.25  # partial scaling, even negative: a linear map
    torch.testing.assert_close(masked_linear(x, w, b, real, backend=backend),
                               reference.masked_linear(x, w, b, real), rtol=RTOL, atol=ATOL)


def test_binary_masks_fold_bit_exactly():
    """For 0/1 masks every folded product equals the masked one, so a 1-term sum is exact.

    With a bias the two may round once apart: F.linear may add the bias inside the GEMM
    (a fused multiply-add, one rounding) where the reference adds it after (two); which
    one it does depends on the CPU's kernels (seen on an AVX-512 + AMX machine)."""
    x, w, b, g = data(64, 1, 3, seed=17)
    for mask in (torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([[1.0], [0.0], [1.0]])):
        assert torch.equal(masked_linear(x, w, None, mask, backend="cpp"),
                           reference.masked_linear(x, w, None, mask))
        got, want = masked_linear(x, w, b, mask, backend="cpp"), reference.masked_linear(x, w, b, mask)
        # one rounding of the product plus one of the sum, at most
        bound = torch.finfo(torch.float32).eps * (x.abs() @ w.abs().T + b.abs())
        assert ((got - want).abs() <= bound).all()


def test_fold_masks_layout():
    _, w, _, g = data(1, 6, 3, seed=1)
    masks = mask_of("input", 3, 6, g, k=4)
    ws = fold_masks(w, masks)
    assert ws.shape == (12, 6)
    assert torch.equal(ws[2 * 3 + 1], w[1] * masks[2])
    pc = mask_of("per_class", 3, 6, g, k=4)
    assert torch.equal(fold_masks(w, pc)[3 * 3 + 2], w[2] * pc[3, 2])


# ---------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x, w, b, _ = data(10, 6, 2)
    with pytest.raises(ValueError, match="x: expected last dimension 6"):
        masked_linear(torch.randn(10, 5), w, b, torch.ones(6))
    with pytest.raises(ValueError, match=r"mask: expected shape \(6,\).*\(2, 6\)"):
        masked_linear(x, w, b, torch.ones(5))
    with pytest.raises(ValueError, match=r"mask: expected shape"):
        masked_linear(x, w, b, torch.ones(3, 6))
    with pytest.raises(ValueError, match="mask: contains NaN or inf"):
        masked_linear(x, w, b, torch.tensor([1.0, float("nan"), 1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"masks: expected shape \(K, 6\)"):
        masked_linear_many(x, w, b, torch.ones(6))
    with pytest.raises(ValueError, match=r"masks: expected shape"):
        masked_linear_many(x, w, b, torch.ones(4, 3, 6))
    with pytest.raises(ValueError, match="masks: no masks"):
        masked_linear_many(x, w, b, torch.ones(0, 6))
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\)"):
        masked_linear(x, w, torch.ones(3))
    with pytest.raises(ValueError, match="weight: expected shape"):
        masked_linear(x, torch.ones(6), b)
    with pytest.raises(TypeError, match="x: dtype"):
        masked_linear(x.to(torch.int64), w, b)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        masked_linear(x.numpy(), w, b)
    with pytest.raises(ValueError, match="backend"):
        masked_linear(x, w, b, backend="cuda")


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_triton_refuses_gradients_but_auto_trains():
    x, w, b, _ = data(10, 6, 2)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward"):
        masked_linear(x, w, b, torch.ones(6), backend="triton")
    with torch.no_grad():
        masked_linear(x, w, b, torch.ones(6), backend="triton")


# ---------------------------------------------------------------- the module

@pytest.mark.parametrize("kind", ["none", "input", "per_class"])
def test_module_fold_equals_forward(kind):
    x, w, b, g = data(80, 20, 3, seed=19)
    lin = nn.Linear(20, 3)
    mod = MaskedLinear.from_linear(lin, mask_of(kind, 3, 20, g))
    folded = mod.fold()
    assert type(folded) is nn.Linear
    with torch.no_grad():
        out = mod(x)
        assert torch.equal(out, folded(x))  # bit-identical: same GEMM on the same folded weights
        torch.testing.assert_close(out, reference.masked_linear(x, lin.weight, lin.bias, mod.mask),
                                   rtol=RTOL, atol=ATOL)
    if kind == "none":
        assert torch.equal(out, lin(x))


def test_module_constructor_and_repr():
    mod = MaskedLinear(7, 2, mask=np.array([1, 0, 1, 1, 0, 1, 1], dtype=bool), bias=False)
    assert mod.bias is None and mod.mask.dtype == mod.weight.dtype
    assert "mask=input, kept=5/7" in repr(mod)
    assert mod.fold().bias is None
    with pytest.raises(ValueError, match="mask: expected shape"):
        MaskedLinear(7, 2, mask=torch.ones(2, 6))
    with pytest.raises(TypeError, match="linear: expected a torch.nn.Linear"):
        MaskedLinear.from_linear(nn.Conv1d(1, 1, 1), None)


@pytest.mark.parametrize("kind", ["none", "input", "per_class"])
def test_module_state_dict_round_trip(kind, tmp_path):
    _, _, _, g = data(1, 11, 4, seed=23)
    mod = MaskedLinear(11, 4, mask=mask_of(kind, 4, 11, g))
    path = tmp_path / "head.pt"
    torch.save(mod.state_dict(), path)
    sd = torch.load(path)
    assert ("mask" in sd) == (kind != "none")
    fresh = MaskedLinear(11, 4)  # no mask: the mask (and its shape) come from the state dict
    fresh.load_state_dict(sd)
    x = torch.randn(9, 11)
    with torch.no_grad():
        assert torch.equal(fresh(x), mod(x))
    if kind != "none":
        assert torch.equal(fresh.mask, mod.mask)
        other = MaskedLinear(11, 4, mask=torch.ones(4, 11) if kind == "input" else torch.ones(11))
        other.load_state_dict(sd)  # a differently shaped mask is replaced by the saved one
        assert torch.equal(other.mask, mod.mask)
        bad = dict(sd, mask=torch.ones(5))
        with pytest.raises(ValueError, match="mask: expected shape"):
            fresh.load_state_dict(bad)


def test_module_training_keeps_masked_weights_silent():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0]])
    mod = MaskedLinear(4, 2, mask=mask)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    nn.functional.cross_entropy(mod(x), y).backward()
    assert (mod.weight.grad[mask == 0] == 0).all()
    assert (mod.weight.grad[mask == 1] != 0).any()


def test_module_moves_and_casts_with_its_mask():
    mod = MaskedLinear(5, 2, mask=torch.tensor([1.0, 0, 1, 0, 1])).double()
    assert mod.mask.dtype == torch.float64
    x = torch.randn(3, 5, dtype=torch.float64)
    out = mod(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, mod.fold()(x), rtol=0, atol=0)
    mod.set_mask(None)
    assert mod.mask is None and "mask=none" in repr(mod)
