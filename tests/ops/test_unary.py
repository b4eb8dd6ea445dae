"""Unary pointwise ops, clamp, where and masked_fill."""
import pytest
import torch
import torch.nn.functional as F

import flag_gems
from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, to_reference
from tests.ops.test_pointwise import rand, ran

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# (kernel name prefix, op, input range)
UNARY = [
    ("neg", torch.neg, (-3, 3)),
    ("abs", torch.abs, (-3, 3)),
    ("exp", torch.exp, (-3, 3)),
    ("log", torch.log, (0.1, 5)),
    ("sqrt", torch.sqrt, (0.1, 5)),
    ("rsqrt", torch.rsqrt, (0.1, 5)),
    ("reciprocal", torch.reciprocal, (0.2, 5)),
    ("sin", torch.sin, (-3, 3)),
    ("cos", torch.cos, (-3, 3)),
    ("tanh", torch.tanh, (-6, 6)),
    ("sigmoid", torch.sigmoid, (-6, 6)),
    ("silu", F.silu, (-6, 6)),
    ("gelu", F.gelu, (-4, 4)),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), (-4, 4)),
    ("relu", torch.relu, (-3, 3)),
]


def _layouts(shape, dtype, lo, hi):
    x = rand(shape, dtype, lo, hi)
    return {"contiguous": x, "transposed": x.t() if x.dim() == 2 else x, "sliced": rand((shape[0], 2 * shape[-1]), dtype, lo, hi)[:, ::2]}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("name, fn, rng", UNARY, ids=[u[0] for u in UNARY])
def test_unary_float(name, fn, rng, dtype, layout):
    x = _layouts((33, 65), dtype, *rng)[layout]
    with ran(name):
        out = fn(x)
    assert out.dtype == dtype
    assert_close(out, fn(to_reference(x)), dtype)


@pytest.mark.parametrize("name, fn, rng", UNARY, ids=[u[0] for u in UNARY])
def test_unary_int_and_special(name, fn, rng):
    x = rand((7,), torch.int32, 1, 4)
    if name in ("neg", "abs", "relu"):
        with ran(name):
            out = fn(-x)
        assert out.dtype == torch.int32 and torch.equal(out.cpu(), fn(-x.cpu()))
    elif name not in ("silu", "gelu", "gelu_tanh"):  # torch rejects ints for those
        with ran(name):
            out = fn(x)
        assert out.dtype == torch.float32
        assert_close(out, fn(x.double()), torch.float32)
    # inf / nan propagate like torch (torch's CPU gelu turns +-inf into NaN: not copied)
    specials = [float("nan"), 0.0, 40.0, -40.0] + ([] if name.startswith("gelu") else [float("inf"), -float("inf")])
    s = torch.tensor(specials, device=DEVICE)
    with ran(name):
        out = fn(s)
    torch.testing.assert_close(out.cpu(), fn(s.cpu()), equal_nan=True, rtol=1e-5, atol=1e-6)


def test_unary_out_inplace_and_0d_empty():
    x = rand((5, 6), torch.float16, 0.1, 3)
    out = torch.empty(5, 6, device=DEVICE)
    with ran("sqrt"):
        torch.sqrt(x, out=out)
    assert out.dtype == torch.float32
    assert_close(out, to_reference(x).sqrt(), torch.float16)
    y = x.clone()
    with ran("exp"):
        y.exp_()
    assert_close(y, to_reference(x).exp(), torch.float16)
    z = x.clone()
    with ran("gelu_tanh"):
        F.gelu(z, approximate="tanh").shape
        torch.ops.aten.gelu_(z, approximate="tanh")
    assert_close(z, F.gelu(to_reference(x), approximate="tanh"), torch.float16)
    s = torch.tensor(0.5, device=DEVICE)
    with ran("sigmoid"):
        assert torch.sigmoid(s).shape == ()
    with flag_gems.use_gems():
        assert torch.exp(torch.empty(0, 4, device=DEVICE)).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32])
def test_isnan_isinf_isfinite(dtype):
    x = rand((9, 5), dtype)
    if dtype.is_floating_point:
        x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -float("inf")
    for name, fn in (("isnan", torch.isnan), ("isinf", torch.isinf), ("isfinite", torch.isfinite)):
        with ran(name):
            out = fn(x.t())
        assert torch.equal(out.cpu(), fn(x.t().cpu())), name


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float16])
def test_logical_not_bitwise_not(dtype):
    x = rand((6, 7), dtype, -20, 20, nonzero=False)
    with ran("logical_not"):
        out = torch.logical_not(x)
    assert torch.equal(out.cpu(), torch.logical_not(x.cpu()))
    if dtype != torch.float16:
        with ran("logical_not" if dtype == torch.bool else "bitwise_not"):
            out = ~x
        assert torch.equal(out.cpu(), ~x.cpu())


# -- clamp / where / masked_fill ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int32])
def test_clamp(dtype):
    x = rand((33, 17), dtype, -5, 5)
    lo, hi = rand((17,), dtype, -3, 0), rand((33, 1), dtype, 0, 3)
    cases = [
        ("clamp", lambda t, a, b: torch.clamp(t, -1, 2)),
        ("clamp_min", lambda t, a, b: t.clamp(min=-1)),
        ("clamp_max", lambda t, a, b: t.clamp(max=2)),
        ("clamp", lambda t, a, b: torch.clamp(t, a, b)),
        ("clamp_min", lambda t, a, b: torch.clamp(t, min=a)),
    ]
    for name, fn in cases:
        with ran(name):
            out = fn(x, lo, hi)
        ref = fn(to_reference(x), to_reference(lo), to_reference(hi))
        assert out.dtype == dtype
        assert_close(out, ref, dtype)


def test_clamp_promotion_nan_inplace():
    i = rand((8,), torch.int32, -5, 5)
    with ran("clamp"):
        out = i.clamp(min=0.5)
    ref = i.cpu().clamp(min=0.5)
    assert out.dtype == ref.dtype and torch.equal(out.cpu(), ref)
    f = torch.tensor([float("nan"), -3.0, 3.0], device=DEVICE)
    with ran("clamp"):
        out = f.clamp(-1, 1)
        f.clamp_(max=0.5)
    torch.testing.assert_close(out, torch.tensor([float("nan"), -1.0, 1.0], device=DEVICE), equal_nan=True)
    torch.testing.assert_close(f, torch.tensor([float("nan"), -3.0, 0.5], device=DEVICE), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_where(dtype):
    c = rand((9, 1, 5), torch.bool)
    a, b = rand((4, 5), dtype), rand((9, 4, 1), dtype)
    with ran("where"):
        out = torch.where(c, a, b)
        out_s = torch.where(c, a, 2)
    assert_close(out, torch.where(c, to_reference(a), to_reference(b)), dtype)
    ref_s = torch.where(c.cpu(), a.cpu(), 2)
    assert out_s.dtype == ref_s.dtype
    assert_close(out_s, to_reference(ref_s), dtype)
    o = torch.empty_like(out)
    with ran("where"):
        torch.where(c, a, b, out=o)
    assert torch.equal(o, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32])
def test_masked_fill(dtype):
    x = rand((6, 9), dtype)
    m = rand((9,), torch.bool)
    with ran("masked_fill"):
        out = x.masked_fill(m, 2.5)
        out_t = x.t().masked_fill(m[None, :6], torch.tensor(-1, device=DEVICE))
    assert out.dtype == dtype
    assert torch.equal(out.cpu(), x.cpu().masked_fill(m.cpu(), 2.5))
    assert torch.equal(out_t.cpu(), x.t().cpu().masked_fill(m[None, :6].cpu(), -1))
    y = x.clone()
    with ran("masked_fill"):
        y.masked_fill_(m, 7)
    assert torch.equal(y.cpu(), x.cpu().masked_fill(m.cpu(), 7))


# the gradients autograd calls for F.silu / F.gelu (a training step's MLP)
ACTIVATION_GRADS = [
    ("silu_backward", F.silu),
    ("gelu_backward", F.gelu),
    ("gelu_tanh_backward", lambda x: F.gelu(x, approximate="tanh")),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name, fn", ACTIVATION_GRADS, ids=[a[0] for a in ACTIVATION_GRADS])
def test_activation_backward(name, fn, dtype):
    x = rand((33, 65), dtype, -6, 6).requires_grad_()
    dy = rand((33, 65), dtype, -2, 2)
    with ran(name):
        fn(x).backward(dy)
    xr = to_reference(x).requires_grad_()
    fn(xr).backward(to_reference(dy))
    assert x.grad.dtype == dtype
    assert_close(x.grad, xr.grad, dtype)
