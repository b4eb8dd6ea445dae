"""sum/mean/prod/amax/amin/max/min/argmax/argmin/all/any/var_mean/vector_norm against a
float64 torch reference (values) or torch itself (indices, bools, ints)."""
import math

import pytest
import torch

import flag_gems

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference

RK = "_reduce_kernel"
ARG = "_arg_reduce_kernel"

# (shape, dim, keepdim); dim None = every dim
CASES = [
    ((33, 65), None, False),
    ((33, 65), 1, False),
    ((7, 9, 5), 0, True),
    ((7, 9, 5), (0, 2), False),
    ((7, 9, 5), (-2, -1), True),
]


def _rand(shape, dtype, lo=-2.0, hi=2.0):
    return (torch.rand(shape, device=DEVICE) * (hi - lo) + lo).to(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,dim,keepdim", CASES)
def test_sum_mean(shape, dim, keepdim, dtype):
    x = _rand(shape, dtype)
    with gems_ran(RK):
        s = torch.sum(x) if dim is None else x.sum(dim, keepdim=keepdim)
        m = x.mean() if dim is None else torch.mean(x, dim, keepdim=keepdim)
    ref = to_reference(x)
    n = x.numel() // max(s.numel(), 1)
    assert s.dtype == dtype and m.dtype == dtype
    assert_close(s, ref.sum() if dim is None else ref.sum(dim, keepdim=keepdim), dtype, reduce_dim=n)
    assert_close(m, ref.mean() if dim is None else ref.mean(dim, keepdim=keepdim), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_noncontiguous(dtype):
    base = _rand((20, 34), dtype)
    xt, xs = base.t(), base[:, ::3]  # transposed, and strided rows
    with gems_ran(RK):
        a, b, c = xt.sum(-1), xs.sum(1), xt.amax(0)
        d = xs.argmax(1)
    assert_close(a, to_reference(xt).sum(-1), dtype, reduce_dim=20)
    assert_close(b, to_reference(xs).sum(1), dtype, reduce_dim=12)
    assert_close(c, to_reference(xt).amax(0), dtype)
    assert torch.equal(d, xs.argmax(1))


def test_sum_int_bool_and_dtype_arg():
    x = torch.randint(-50, 50, (17, 33), dtype=torch.int32, device=DEVICE)
    b = x > 0
    with gems_ran(RK):
        s, s0, sb = x.sum(), x.sum(0), b.sum(1)
        sf = torch.sum(x, 1, dtype=torch.float32)
    assert s.dtype == torch.int64 and torch.equal(s, x.sum())
    assert torch.equal(s0, x.sum(0)) and torch.equal(sb, b.sum(1))
    assert_close(sf, x.double().sum(1), torch.float32)


@pytest.mark.parametrize("op", ["sum", "amax", "argmax", "argmin", "var_mean", "norm"])
def test_full_reduction_two_stages(op):
    # big enough to be split across programs (the split keeps >= 16K elements a program)
    x = _rand((3, 11111), torch.float32)
    x[1, 700] = 9.0
    x[2, 5] = -9.0
    fn = {
        "sum": torch.sum, "amax": torch.amax, "argmax": torch.argmax, "argmin": torch.argmin,
        "var_mean": torch.var_mean, "norm": torch.linalg.vector_norm,
    }[op]
    with gems_ran() as launched:
        out = fn(x)
    assert sum(launched.values()) >= 2
    ref = fn(to_reference(x))
    if op.startswith("arg"):
        assert torch.equal(out, ref)
    elif op == "var_mean":
        assert_close(out[0], ref[0], torch.float32, reduce_dim=x.numel())
        assert_close(out[1], ref[1], torch.float32)
    else:
        assert_close(out, ref, torch.float32, reduce_dim=x.numel())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int32])
@pytest.mark.parametrize("dim", [0, -1, 1])
def test_max_min_dim_ties(dtype, dim):
    # few distinct values: many ties; indices must be torch's (first occurrence)
    x = torch.randint(-3, 4, (9, 17, 5), device=DEVICE).to(dtype)
    with gems_ran(ARG):
        mx, mn = x.max(dim, keepdim=dim == 1), torch.min(x, dim)
        am, an = x.argmax(dim), torch.argmin(x, dim, keepdim=True)
    ex, en = x.max(dim, keepdim=dim == 1), torch.min(x, dim)
    assert torch.equal(mx.values, ex.values) and torch.equal(mx.indices, ex.indices)
    assert torch.equal(mn.values, en.values) and torch.equal(mn.indices, en.indices)
    assert torch.equal(am, x.argmax(dim)) and torch.equal(an, torch.argmin(x, dim, keepdim=True))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int64])
def test_max_min_amax_full(dtype):
    x = torch.randint(-100, 100, (13, 21), device=DEVICE).to(dtype)
    with gems_ran(RK):
        a, b, c, d = torch.max(x), torch.min(x), x.amax((0, 1)), torch.amin(x, 0, keepdim=True)
    assert torch.equal(a, x.max()) and torch.equal(b, x.min())
    assert torch.equal(c, x.amax((0, 1))) and torch.equal(d, x.amin(0, keepdim=True))
    with gems_ran(ARG):
        i, j = x.argmax(), x.argmin()
    assert i == x.argmax() and j == x.argmin()


def test_max_nan_and_empty():
    x = torch.randn(4, 9, device=DEVICE)
    x[1, 3] = math.nan
    with gems_ran(ARG):
        v = x.max(1)
        i = x.argmin(1)
    assert torch.isnan(v.values[1]) and v.indices[1] == 3 and i[1] == 3
    with gems_ran(RK):
        assert torch.isnan(x.amax(1)[1]) and torch.isnan(torch.max(x))
        assert torch.sum(torch.empty(0, 3, device=DEVICE)).item() == 0
        assert torch.equal(torch.empty(0, 3, device=DEVICE).sum(0), torch.zeros(3, device=DEVICE))
    with pytest.raises(RuntimeError), flag_gems.use_gems():
        torch.max(torch.empty(0, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extremes_nan_anywhere_in_long_rows(dtype):
    # rows longer than one block, a NaN at a different column of each row (a late block,
    # a last lane), infinities beside it: NaN must win wherever the reduction tree meets it
    x = torch.randn(4, 5000, device=DEVICE).to(dtype)
    x[0, 4999] = math.nan
    x[1, 0] = math.nan
    x[2, 2048] = math.nan
    x[:3, 7] = math.inf
    x[:3, 9] = -math.inf
    x[3, 11] = math.inf
    with gems_ran(RK):
        hi, lo = x.amax(1), x.amin(1)
        col_hi = x.t().amax(0)  # the strided (inner) form of the same rows
    for r in range(3):
        assert torch.isnan(hi[r]) and torch.isnan(lo[r]) and torch.isnan(col_hi[r])
    assert hi[3] == math.inf and lo[3] == x[3].float().min().to(dtype) and col_hi[3] == math.inf


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.int64])
def test_prod(dtype):
    if dtype.is_floating_point:
        x = _rand((6, 11, 3), dtype, 0.6, 1.4)
    else:
        x = torch.randint(-3, 4, (6, 11, 3), device=DEVICE)
    with gems_ran(RK):
        p, p1 = x.prod(), torch.prod(x, 1, keepdim=True)
    if dtype.is_floating_point:
        assert_close(p, to_reference(x).prod(), dtype, rtol=TOL_PROD[dtype], atol=1e-3)
        assert_close(p1, to_reference(x).prod(1, keepdim=True), dtype, reduce_dim=11)
    else:
        assert torch.equal(p, x.prod()) and torch.equal(p1, x.prod(1, keepdim=True))


TOL_PROD = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.int32, torch.uint8])
def test_all_any(dtype):
    keep = torch.rand(7, 13, 4, device=DEVICE) < 0.8
    x = keep.to(dtype) if dtype != torch.float32 else torch.randn(7, 13, 4, device=DEVICE) * keep
    x[0] = 1  # a row where every element is true
    with gems_ran(RK):
        got = [x.all(), x.any(), x.all(1), torch.any(x, 2, keepdim=True), torch.all(x, (0, 2)), x.any((1,))]
    exp = [x.all(), x.any(), x.all(1), torch.any(x, 2, keepdim=True), torch.all(x, (0, 2)), x.any((1,))]
    for g, e in zip(got, exp):
        assert g.dtype == e.dtype and torch.equal(g, e)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("dim,correction,keepdim", [(None, 1, False), (1, 0, True), ((0, 2), 1, False)])
def test_var_mean(dtype, dim, correction, keepdim):
    x = _rand((7, 33, 5), dtype) + 3.0
    with gems_ran(RK):
        v, m = torch.var_mean(x, dim, correction=correction, keepdim=keepdim)
    ev, em = torch.var_mean(to_reference(x), dim, correction=correction, keepdim=keepdim)
    assert v.dtype == dtype and m.dtype == dtype
    assert_close(v, ev, dtype)
    assert_close(m, em, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ord", [2, 1, math.inf, -math.inf, 0, 3.0, 0.5])
def test_vector_norm(dtype, ord):
    x = _rand((9, 37), dtype)
    x[0, :5] = 0
    dim = None if ord in (2, 0) else (1 if ord != 3.0 else 0)
    with gems_ran(RK):
        n = torch.linalg.vector_norm(x, ord, dim=dim, keepdim=ord == 1)
    ref = torch.linalg.vector_norm(to_reference(x), ord, dim=dim, keepdim=ord == 1)
    assert n.dtype == dtype
    assert_close(n, ref, dtype, rtol=TOL_NORM.get(dtype))


TOL_NORM = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


# -- split reductions: few outputs, long reduced axis -> R is split across programs ---------
def _kernel_launches(launched):
    return launched["_reduce_kernel"]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_split_outer_dim(dtype):
    """sum/amax/mean/var_mean over dim 0 of a tall tensor: the outputs alone would give
    too few programs, so R is split (partials + one combine launch)."""
    x = _rand((600, 67), dtype)
    x[431, 3] = 7.0
    ref = to_reference(x)
    with gems_ran(RK) as launched:
        s, m, a = x.sum(0), x.mean(0, keepdim=True), x.amax(0)
        v, mu = torch.var_mean(x, 0)
    assert _kernel_launches(launched) == 2 * 4
    assert_close(s, ref.sum(0), dtype, reduce_dim=600)
    assert_close(m, ref.mean(0, keepdim=True), dtype)
    assert_close(a, ref.amax(0), dtype)
    ev, em = torch.var_mean(ref, 0)
    assert_close(v, ev, dtype)
    assert_close(mu, em, dtype)


def test_split_rows_few_long_rows():
    """Two very long rows (last-dim reduction): each row is split across programs."""
    x = _rand((2, 40000), torch.float32)
    ref = to_reference(x)
    with gems_ran(RK) as launched:
        s = x.sum(-1)
        v, mu = torch.var_mean(x, -1, correction=0)
        n = torch.linalg.vector_norm(x, dim=-1)
    assert _kernel_launches(launched) == 6
    assert_close(s, ref.sum(-1), torch.float32, reduce_dim=40000)
    ev, em = torch.var_mean(ref, -1, correction=0)
    assert_close(v, ev, torch.float32)
    assert_close(mu, em, torch.float32)
    assert_close(n, torch.linalg.vector_norm(ref, dim=-1), torch.float32)


def test_split_int_and_prod_and_strided():
    x = torch.randint(-50, 50, (700, 5), dtype=torch.int32, device=DEVICE)
    p = 1 + _rand((300, 3), torch.float64, -1e-3, 1e-3)
    base = _rand((900, 8), torch.float32)
    xs = base[::2]  # strided rows: R strided -> inner regime, split
    with gems_ran(RK):
        s = x.sum(0)
        pr = p.prod(0)
        mn = xs.amin(0)
        full = xs.sum()
    assert s.dtype == torch.int64 and torch.equal(s, x.sum(0))
    assert_close(pr, p.prod(0), torch.float64)
    assert torch.equal(mn, xs.amin(0))
    assert_close(full, to_reference(xs).sum(), torch.float32, reduce_dim=xs.numel())


def test_var_mean_shifted_is_stable():
    """A large common offset: the shifted one-pass sums keep the variance exact."""
    x = 1000.0 + _rand((4, 3000), torch.float32, -1.0, 1.0)
    with gems_ran(RK):
        v, m = torch.var_mean(x, -1)
        vf, mf = torch.var_mean(x)
    ev, em = torch.var_mean(to_reference(x), -1)
    assert_close(v, ev, torch.float32)
    assert_close(m, em, torch.float32)
    evf, emf = torch.var_mean(to_reference(x))
    assert_close(vf, evf, torch.float32)
    assert_close(mf, emf, torch.float32)


def test_plan_cache_reuse_and_empty():
    x = _rand((5, 33), torch.float32)
    with gems_ran(RK):
        for _ in range(3):
            a = x.sum(1)
            b = x.t().sum(1)  # same shape, other strides: another plan
    assert_close(a, to_reference(x).sum(1), torch.float32)
    assert_close(b, to_reference(x).sum(0), torch.float32)
    e = torch.empty(0, 4, device=DEVICE)
    with flag_gems.use_gems():
        z = e.sum(0)
        v, m = torch.var_mean(e, 0)
    assert torch.equal(z, torch.zeros(4, device=DEVICE)) and torch.isnan(v).all() and torch.isnan(m).all()


def test_empty_kept_dims():
    """Nothing kept (an empty batch, an idle MoE expert): an empty result, as torch's."""
    e = torch.empty(0, 5, device=DEVICE)
    ops = [
        lambda t: t.sum(1), lambda t: t.mean(1), lambda t: torch.var_mean(t, 1)[0], lambda t: t.prod(1),
        lambda t: t.any(1), lambda t: torch.linalg.vector_norm(t, dim=1), lambda t: t.amax(1), lambda t: t.argmax(1),
        lambda t: t.sum(1, keepdim=True),
    ]
    for op in ops:
        ref = op(e)
        with flag_gems.use_gems():
            got = op(e)
        assert got.shape == ref.shape and got.dtype == ref.dtype
