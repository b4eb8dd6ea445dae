"""Overloads the family tests don't reach: every out= form, the in-place and Tensor/Scalar
variants (scatter, clamp, masked_fill, floor_divide). Each runs through torch.* under
flag_gems, must launch a flag_gems kernel, return ``out`` itself for out= forms, and equal
aten's result on the same inputs (exactly for integers and bools; per-dtype tolerance
for floats)."""
import pytest
import torch

import flag_gems
from tests.helpers import DEVICE, assert_close, count_kernels, to_reference


def f(*shape, dtype=torch.float32, lo=-2.0, hi=2.0):
    return torch.empty(shape, device=DEVICE).uniform_(lo, hi).to(dtype)


def i(*shape, lo=-5, hi=6, dtype=torch.int64):
    return torch.randint(lo, hi, shape, device=DEVICE, dtype=dtype)


def b(*shape):
    return torch.rand(shape, device=DEVICE) > 0.5


def _out(like, dtype=None):
    return torch.empty_like(like, dtype=dtype or like.dtype)


# name -> (fn(*args, out) -> result, args builder, out builder(args) or None (in place / functional))
UNARY = ["abs", "cos", "exp", "log", "neg", "reciprocal", "rsqrt", "sigmoid", "sin", "sqrt", "tanh"]
POSITIVE = {"log", "rsqrt", "sqrt", "reciprocal"}
CASES = {
    **{f"{n}.out": (lambda x, out, n=n: getattr(torch, n)(x, out=out), (lambda n=n: (f(4, 7, lo=0.5) if n in POSITIVE else f(4, 7),)), lambda a: _out(a[0]))
       for n in UNARY},
    # no torch.* spelling takes out= for these: the aten overloads themselves
    **{f"{n}.out": (lambda x, out, n=n: getattr(torch.ops.aten, n).out(x, out=out), lambda: (f(4, 7),), lambda a: _out(a[0]))
       for n in ("relu", "silu", "gelu")},
    "isnan.out": (lambda x, out: torch.ops.aten.isnan.out(x, out=out), lambda: (f(9).masked_fill(b(9), float("nan")),), lambda a: _out(a[0], torch.bool)),
    **{f"{n}.Tensor_out": (lambda x, y, out, n=n: getattr(torch, n)(x, y, out=out), lambda: (f(3, 5), f(3, 5)), lambda a: _out(a[0], torch.bool))
       for n in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{f"{n}.Scalar_out": (lambda x, out, n=n: getattr(torch, n)(x, 0.25, out=out), lambda: (f(3, 5),), lambda a: _out(a[0], torch.bool))
       for n in ("eq", "ne", "lt", "le", "gt", "ge")},
    "maximum.out": (lambda x, y, out: torch.maximum(x, y, out=out), lambda: (f(4, 3), f(4, 3)), lambda a: _out(a[0])),
    "minimum.out": (lambda x, y, out: torch.minimum(x, y, out=out), lambda: (f(4, 3), f(4, 3)), lambda a: _out(a[0])),
    **{f"logical_{n}.out": (lambda x, y, out, n=n: getattr(torch, f"logical_{n}")(x, y, out=out), lambda: (b(11), b(11)), lambda a: _out(a[0]))
       for n in ("and", "or", "xor")},
    "logical_not.out": (lambda x, out: torch.logical_not(x, out=out), lambda: (b(11),), lambda a: _out(a[0])),
    "bitwise_not.out": (lambda x, out: torch.bitwise_not(x, out=out), lambda: (i(11),), lambda a: _out(a[0])),
    "clamp.out": (lambda x, out: torch.clamp(x, -0.5, 0.7, out=out), lambda: (f(4, 6),), lambda a: _out(a[0])),
    "clamp.Tensor_out": (lambda x, lo, hi, out: torch.clamp(x, lo, hi, out=out), lambda: (f(4, 6), f(4, 6, hi=0.0), f(6, lo=0.0)), lambda a: _out(a[0])),
    "clamp_min.Tensor": (lambda x, lo, out: torch.clamp_min(x, lo), lambda: (f(4, 6), f(4, 6)), None),
    "clamp_max.Tensor": (lambda x, hi, out: torch.clamp_max(x, hi), lambda: (f(4, 6), f(6)), None),
    "pow.Tensor_Tensor_out": (lambda x, y, out: torch.pow(x, y, out=out), lambda: (f(5, lo=0.5), f(5)), lambda a: _out(a[0])),
    "pow.Tensor_Scalar_out": (lambda x, out: torch.pow(x, 3, out=out), lambda: (f(5),), lambda a: _out(a[0])),
    "pow.Scalar_out": (lambda y, out: torch.pow(1.5, y, out=out), lambda: (f(5),), lambda a: _out(a[0])),
    "floor_divide": (lambda x, y, out: torch.floor_divide(x, y), lambda: (f(6, 4), f(6, 4, lo=0.5)), None),
    "floor_divide.int": (lambda x, y, out: torch.floor_divide(x, y), lambda: (i(6, 4), i(6, 4, lo=1)), None),
    "floor_divide.Scalar": (lambda x, out: torch.floor_divide(x, -3), lambda: (i(6, 4),), None),
    "floor_divide_.Tensor": (lambda x, y, out: x.floor_divide_(y), lambda: (f(6, 4), f(6, 4, lo=0.5)), None),
    "floor_divide_.Scalar": (lambda x, out: x.floor_divide_(2.5), lambda: (f(6, 4),), None),
    "where.self_out": (lambda c, x, y, out: torch.where(c, x, y, out=out), lambda: (b(3, 4), f(3, 4), f(4)), lambda a: _out(a[1])),
    "masked_fill.Tensor": (lambda x, m, out: x.masked_fill(m, torch.tensor(0.5, device=DEVICE)), lambda: (f(3, 4), b(3, 4)), None),
    "masked_fill_.Tensor": (lambda x, m, out: x.masked_fill_(m, torch.tensor(-1.5, device=DEVICE)), lambda: (f(3, 4), b(3, 4)), None),
    "gather.out": (lambda x, idx, out: torch.gather(x, 1, idx, out=out), lambda: (f(4, 6), i(4, 3, lo=0, hi=6)), lambda a: _out(a[1], torch.float32)),
    "index_select.out": (lambda x, idx, out: torch.index_select(x, 0, idx, out=out), lambda: (f(5, 3), i(7, lo=0, hi=5)), lambda a: torch.empty(7, 3, device=DEVICE)),
    "stack.out": (lambda x, y, out: torch.stack([x, y], 1, out=out), lambda: (f(3, 4), f(3, 4)), lambda a: torch.empty(3, 2, 4, device=DEVICE)),
    "tril.out": (lambda x, out: torch.tril(x, -1, out=out), lambda: (f(5, 6),), lambda a: _out(a[0])),
    "triu.out": (lambda x, out: torch.triu(x, 1, out=out), lambda: (f(5, 6),), lambda a: _out(a[0])),
    "scatter_add_": (lambda x, idx, src, out: x.scatter_add_(0, idx, src), lambda: (f(4, 5), i(3, 5, lo=0, hi=4), f(3, 5)), None),
    "scatter.value": (lambda x, idx, out: torch.scatter(x, 1, idx, 2.5), lambda: (f(4, 5), i(4, 2, lo=0, hi=5)), None),
    "scatter_.value": (lambda x, idx, out: x.scatter_(1, idx, -0.5), lambda: (f(4, 5), i(4, 2, lo=0, hi=5)), None),
    # (reduce="multiply" has no atomic: flag_gems leaves it to aten on purpose)
    "scatter.value_reduce": (lambda x, idx, out: torch.scatter(x, 1, idx, 2.0, reduce="add"), lambda: (f(4, 5), i(4, 2, lo=0, hi=5)), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_overload(name):
    fn, make, make_out = CASES[name]
    args = make()
    ref_args = [a.clone() for a in args]
    ref_out = make_out(ref_args) if make_out else None
    ref = fn(*ref_args, ref_out)  # aten (flag_gems not enabled)
    gems_out = make_out(args) if make_out else None
    with count_kernels() as ran, flag_gems.use_gems():
        got = fn(*args, gems_out)
    assert sum(ran.values()) > 0, f"{name}: no flag_gems kernel ran"
    if gems_out is not None:
        assert got is gems_out, f"{name}: the out= form must return out"
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{got.dtype}{tuple(got.shape)} vs {ref.dtype}{tuple(ref.shape)}"
    if got.is_floating_point():
        assert_close(got, to_reference(ref), got.dtype)
    else:
        assert torch.equal(got, ref)
    for a, r in zip(args, ref_args):  # in-place effects match too
        if a.is_floating_point():
            assert_close(a, to_reference(r), a.dtype)
        else:
            assert torch.equal(a, r)
