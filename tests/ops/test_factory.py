"""copy_, _to_copy (tensor.to), fill_/zero_, zeros/ones/full(+_like), arange."""
import json

import pytest
import torch

import flag_gems
from tests.helpers import DEVICE, assert_close, to_reference
from tests.ops.test_pointwise import rand, ran

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CASTS = [
    (torch.float32, torch.float16), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16), (torch.float64, torch.float32), (torch.float32, torch.int32),
    (torch.int64, torch.float16), (torch.int32, torch.int64), (torch.float32, torch.bool), (torch.bool, torch.float32),
    (torch.uint8, torch.int8), (torch.int64, torch.int8),
]


@pytest.mark.parametrize("src, dst", CASTS, ids=[f"{str(a)[6:]}->{str(b)[6:]}" for a, b in CASTS])
def test_to_dtype(src, dst):
    x = rand((33, 17), src, -100 if src.is_floating_point or src.is_signed else 0, 100, nonzero=False)
    with ran("copy"):
        out = x.t().to(dst)
    ref = x.t().cpu().to(dst)
    assert out.dtype == dst and out.shape == ref.shape and out.stride() == ref.stride()
    if dst.is_floating_point:
        assert_close(out, to_reference(x.t()).to(dst).double(), dst)  # one rounding step
    else:
        assert torch.equal(out.cpu(), ref)


def test_to_dtype_serves_no_grad_calls_and_leaves_the_rest_to_the_composite():
    """tensor.to(dtype) is taken over on the Autograd key: without a graph, one cast
    kernel (the same dtype: the tensor itself, as aten; copy=True: a copy); with one,
    aten's composite (its _to_copy is flag_gems', its backward casts back); and
    ``unused=["_to_copy"]`` leaves casts to aten's _to_copy (whose copy_ is flag_gems'
    unless switched off too)."""
    from tests.helpers import count_kernels

    x = rand((6, 10), torch.float32)
    with ran("copy"):
        y = x.to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.grad_fn is None
    assert_close(y, to_reference(x), torch.bfloat16)
    with flag_gems.use_gems():
        assert x.to(torch.float32) is x
        c = x.to(torch.float32, copy=True)
    assert c is not x and torch.equal(c, x)
    w = x.clone().requires_grad_()
    with ran("copy"):
        h = w.to(torch.bfloat16)
        h.float().sum().backward()
    assert h.grad_fn is not None and torch.equal(w.grad, torch.ones_like(x))
    with count_kernels() as launched, flag_gems.use_gems(unused=["_to_copy", "copy_"]):
        z = x.to(torch.bfloat16)
    assert not launched and torch.equal(z, x.to(torch.bfloat16))


def test_copy_strided_broadcast_and_cast():
    dst = torch.empty(8, 10, device=DEVICE, dtype=torch.float16)[:, ::2]
    src = rand((8, 5), torch.float32).t().contiguous().t()  # column-major source
    with ran("copy"):
        dst.copy_(src)
    assert_close(dst, to_reference(src), torch.float16)
    row = rand((5,), torch.bfloat16)
    with ran("copy"):
        dst.copy_(row)
    assert_close(dst, to_reference(row).expand(8, 5), torch.bfloat16)
    x = rand((4, 4), torch.float32)
    expected = x.t().clone()
    with ran("copy"):
        x.copy_(x.t())  # aliasing source
    assert torch.equal(x, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.bool])
def test_fill_and_zero(dtype):
    x = torch.empty(7, 9, device=DEVICE, dtype=dtype)[:, 1::2]
    v = True if dtype == torch.bool else 3 if not dtype.is_floating_point else 0.1
    with ran("fill"):
        x.fill_(v)
    assert torch.equal(x.cpu(), torch.full((7, 4), v, dtype=dtype))
    with ran("fill"):
        x.zero_()
    assert not x.any()
    with ran("fill"):
        x.fill_(torch.tensor(v, dtype=dtype, device=DEVICE))
    assert torch.equal(x.cpu(), torch.full((7, 4), v, dtype=dtype))


def test_fill_large_int64_and_float64_exact():
    x = torch.empty(5, dtype=torch.int64, device=DEVICE)
    with ran("fill"):
        x.fill_(2**40 + 3)
    assert (x == 2**40 + 3).all()
    y = torch.empty(5, dtype=torch.float64, device=DEVICE)
    with ran("fill"):
        y.fill_(0.1)
    assert (y == 0.1).all()


FACTORIES = [
    ("zeros", lambda: torch.zeros(3, 5, device=DEVICE)),
    ("ones", lambda: torch.ones(7, dtype=torch.int32, device=DEVICE)),
    ("full", lambda: torch.full((2, 3), 1.5, device=DEVICE)),
    ("full", lambda: torch.full((4,), 7, device=DEVICE)),
    ("zeros_like", lambda: torch.zeros_like(torch.empty(3, 4, device=DEVICE).t())),
    ("ones_like", lambda: torch.ones_like(torch.empty(3, 4, device=DEVICE), dtype=torch.bfloat16)),
    ("full_like", lambda: torch.full_like(torch.empty(6, device=DEVICE, dtype=torch.int32), -2)),
]


@pytest.mark.parametrize("op, make", FACTORIES, ids=[f[0] + str(i) for i, f in enumerate(FACTORIES)])
def test_factories_reach_flag_gems(op, make, tmp_path):
    ref = make()
    path = tmp_path / "rec.jsonl"
    with ran("fill"), flag_gems.use_gems(record=True, path=path):
        out = make()
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.stride() == ref.stride()
    assert torch.equal(out, ref)
    # the factory op itself dispatched to flag_gems (not only the fill_ inside aten's composite)
    ops = [json.loads(line)["op"] for line in path.read_text().splitlines()]
    assert op in ops, ops


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((10,), {}), ((3, 40, 7), {}), ((5, -6, -2), {}), ((0, 1, 0.1), {}), ((-2.5, 3.0, 0.75), {}),
        ((1, 2, 0.01), {"dtype": torch.float64}), ((0, 50), {"dtype": torch.bfloat16}), ((4, 4), {}),
    ],
)
def test_arange(args, kwargs):
    ref = torch.arange(*args, **kwargs, device=DEVICE)
    with ran("arange_kernel") if ref.numel() else flag_gems.use_gems():
        out = torch.arange(*args, **kwargs, device=DEVICE)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert_close(out, ref.double() if ref.dtype != torch.bfloat16 else torch.arange(*args, dtype=torch.float64), ref.dtype)
    o = torch.empty(3, dtype=torch.int32, device=DEVICE)
    with ran("arange_kernel"):
        torch.arange(2, 9, out=o)
    assert o.tolist() == list(range(2, 9))
