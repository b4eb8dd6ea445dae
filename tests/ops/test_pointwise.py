"""The pointwise generator (broadcast, strides, promotion, out=, in place) and the binary
ops: add/sub/mul/div/pow, comparisons, maximum/minimum, logical and bitwise ops."""
import contextlib

import pytest
import torch

import flag_gems
from flag_gems.utils import pointwise
from tuner import launch as _launch
from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference

# masked-off lanes of the interpreter compute on zeros (x / 0 warnings): harmless
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@contextlib.contextmanager
def ran(prefix: str):
    """flag_gems on for the block; a kernel whose name starts with ``prefix`` launched."""
    with gems_ran() as launched:
        yield launched
    assert any(k.startswith(prefix) for k in launched), f"no {prefix}* kernel ran: {dict(launched)}"


def rand(shape, dtype, low=-3.0, high=3.0, nonzero=True):
    if dtype.is_floating_point:
        x = torch.empty(shape, dtype=torch.float32, device=DEVICE).uniform_(low, high)
        if nonzero:
            x = torch.where(x.abs() < 0.1, torch.full_like(x, 0.5), x)
        return x.to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, device=DEVICE) > 0.5
    x = torch.randint(int(low), int(high) + 1, shape, device=DEVICE, dtype=dtype)
    return torch.where(x == 0, torch.ones_like(x), x) if nonzero else x


def check(out, ref, dtype):
    assert out.dtype == ref.dtype or ref.dtype == torch.float64, f"{out.dtype} vs {ref.dtype}"
    assert_close(out, ref, dtype)


# -- the generator ------------------------------------------------------------------------
def test_collapse_merges_contiguous_dims_and_orders_by_output_strides():
    shape, strides = pointwise._collapse([4, 5, 6], [[30, 6, 1], [30, 6, 1]])
    assert shape == [120] and strides == [[1], [1]]
    # a transposed input with a transposed (empty_like) output is one flat dim
    shape, strides = pointwise._collapse([5, 4], [[1, 5], [1, 5]])
    assert shape == [20] and strides == [[1], [1]]
    # broadcast row: stride 0 stays a separate dim
    shape, strides = pointwise._collapse([3, 1, 7], [[0, 0, 1], [7, 7, 1]])
    assert shape == [3, 7] and strides == [[0, 1], [7, 1]]


def test_broadcast_layout_is_computed_once_per_layout():
    """The general path's layout (rank, collapsed shape and strides, int64) is memoized on
    the operands' shapes and strides: a repeated broadcast reuses it; another layout gets
    its own, and the results stay right. (On the GPU a repeat relaunches its kept kernel
    directly, before any layout: forgotten here, the repeat takes the general path.)"""
    x, row = torch.randn(6, 5, device=DEVICE), torch.randn(1, 5, device=DEVICE)
    with flag_gems.use_gems():
        torch.add(x, row)
        before = pointwise._layout.cache_info()
        _launch.forget_direct()
        y = torch.add(x, row)
        z = torch.add(x.t().contiguous().t(), row)  # the same shape, column-major: a new layout
        after = pointwise._layout.cache_info()
    assert after.hits == before.hits + 1 and after.misses >= before.misses + 1
    assert_close(y, x.double() + row.double(), torch.float32)
    assert_close(z, x.double() + row.double(), torch.float32)
    assert pointwise._layout(torch.Size([6, 5]), (5, 1), ((torch.Size([1, 5]), (5, 1)),)) == (2, (6, 5, 0, 1, 5, 1), False)


def test_int64_offsets_only_when_needed():
    assert not pointwise._needs_int64(1 << 20, [1 << 20], [[1]])
    assert pointwise._needs_int64(1 << 31, [1 << 31], [[1]])
    assert pointwise._needs_int64(1 << 20, [1024, 1024], [[1 << 22, 1], [1024, 1]])


@pytest.mark.parametrize(
    "args, expected",
    [
        ((torch.ones(2, dtype=torch.int32), 2.5), torch.float32),
        ((torch.ones(2, dtype=torch.int32), 2), torch.int32),
        ((torch.ones(2, dtype=torch.int32), torch.ones(2, dtype=torch.float16)), torch.float16),
        ((torch.ones(2, dtype=torch.float16), torch.tensor(2.0, dtype=torch.float64)), torch.float16),
        ((torch.ones(2, dtype=torch.int32), torch.tensor(2.0, dtype=torch.float64)), torch.float64),
        ((torch.ones(2, dtype=torch.bool), True), torch.bool),
        ((torch.ones(2, dtype=torch.int8), torch.ones(2, dtype=torch.uint8), 1.0), torch.float32),
    ],
)
def test_promotion_matches_torch(args, expected):
    assert pointwise._promote(args) == expected


def test_generated_kernel_is_cached():
    from flag_gems.ops.binary import _mul
    from flag_gems.utils.pointwise import Pointwise

    mul = Pointwise("mul", _mul)  # its own cache, whatever other tests made
    x = torch.randn(3, 4, device=DEVICE)
    mul(x, x)
    mul(x, x)
    assert len(mul._kernels) == 1
    mul(x, 2.0)  # a scalar operand is another kernel
    mul(x, x)
    assert len(mul._kernels) == 2


# -- binary ops -----------------------------------------------------------------------------
SHAPES = [((7,), (7,)), ((33, 65), (65,)), ((4, 1, 5), (3, 1))]

ARITH = [
    ("add", lambda a, b: torch.add(a, b)),
    ("add_alpha", lambda a, b: torch.add(a, b, alpha=2)),
    ("sub", lambda a, b: a - b),
    ("sub_alpha", lambda a, b: torch.sub(a, b, alpha=0.5)),
    ("mul", lambda a, b: a * b),
    ("true_div", lambda a, b: a / b),
    ("trunc_div", lambda a, b: torch.div(a, b, rounding_mode="trunc")),
    ("floor_div", lambda a, b: torch.div(a, b, rounding_mode="floor")),
    ("maximum", torch.maximum),
    ("minimum", torch.minimum),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name, fn", ARITH, ids=[a[0] for a in ARITH])
@pytest.mark.parametrize("shapes", SHAPES[1:], ids=["row_broadcast", "outer_broadcast"])
def test_binary_float(name, fn, dtype, shapes):
    a, b = rand(shapes[0], dtype), rand(shapes[1], dtype)
    with ran(name):
        out = fn(a, b)
    ref = fn(to_reference(a), to_reference(b))
    if name in ("trunc_div", "floor_div"):
        # the rounding of a / b decides the integer part: compare where it is not a tie
        ref_q = fn(to_reference(a).to(dtype).double(), to_reference(b).to(dtype).double())
        mask = ((a.double() / b.double()) - ref_q).abs() > 1e-2
        out, ref = out.double()[mask], ref[mask]
    assert out.dtype == dtype or name in ("trunc_div", "floor_div")
    assert_close(out, ref, dtype)


INT_OPS = ARITH + [("pow", lambda a, b: torch.pow(a, b.abs() % 4))]


@pytest.mark.parametrize("name, fn", INT_OPS, ids=[a[0] for a in INT_OPS])
def test_binary_int(name, fn):
    if name in ("true_div", "sub_alpha"):
        pytest.skip("float results / float alpha are covered by the promotion tests")
    a, b = rand((33, 65), torch.int32, -50, 50), rand((65,), torch.int32, -7, 7)
    with ran(name if name != "pow" else "pow"):
        out = fn(a, b)
    ref = fn(a.cpu(), b.cpu())
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.cpu(), ref)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "name, fn",
    [
        ("pow", lambda a, b: torch.pow(a.abs(), b)),
        ("pow", lambda a, b: a ** 3),
        ("pow", lambda a, b: a ** 0.5 if False else a.abs() ** 0.5),
        # (a Python-number base as a 0-d tensor: on CUDA, aten's own pow.Scalar makes a
        # CUDA wrapped number that PyTorch cannot hand to a Python kernel for the reference)
        ("pow", lambda a, b: 2.0 ** b if b.dtype != torch.float64 else torch.pow(b.new_tensor(2.0), b)),
        ("pow", lambda a, b: a ** -2),
    ],
    ids=["tensor_tensor", "tensor_int", "tensor_half", "scalar_tensor", "negative_int"],
)
def test_pow(name, fn, dtype):
    a, b = rand((33, 65), dtype, -2, 2), rand((65,), dtype, -2, 2)
    with ran(name):
        out = fn(a, b)
    check(out, fn(to_reference(a), to_reference(b)), dtype)


def test_pow_special_values():
    a = torch.tensor([0.0, 0.0, -2.0, -2.0, 1.0, float("nan"), -8.0, 3.0], device=DEVICE)
    b = torch.tensor([2.0, -1.0, 3.0, 0.5, float("nan"), 0.0, 1.0 / 3, -0.5], device=DEVICE)
    with ran("pow"):
        out = a ** b
    torch.testing.assert_close(out, (a.double() ** b.double()).float(), equal_nan=True)


CMP = [("eq", torch.eq), ("ne", torch.ne), ("lt", torch.lt), ("le", torch.le), ("gt", torch.gt), ("ge", torch.ge)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32])
@pytest.mark.parametrize("name, fn", CMP, ids=[c[0] for c in CMP])
def test_comparisons(name, fn, dtype):
    a, b = rand((33, 65), dtype, -3, 3), rand((65,), dtype, -3, 3)
    b[::3] = a[0, ::3]  # some equal pairs
    with ran(name):
        out_t, out_s = fn(a, b), fn(a, 1)
    assert out_t.dtype == torch.bool
    assert torch.equal(out_t, fn(a.cpu(), b.cpu()).to(out_t.device))
    assert torch.equal(out_s, fn(a.cpu(), 1).to(out_s.device))


LOGIC = [
    ("logical_and", torch.logical_and), ("logical_or", torch.logical_or), ("logical_xor", torch.logical_xor),
    ("bitwise_and", torch.bitwise_and), ("bitwise_or", torch.bitwise_or), ("bitwise_xor", torch.bitwise_xor),
]


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.int64])
@pytest.mark.parametrize("name, fn", LOGIC, ids=[c[0] for c in LOGIC])
def test_logical_bitwise(name, fn, dtype):
    a, b = rand((9, 17), dtype, -40, 40, nonzero=False), rand((17,), dtype, -40, 40, nonzero=False)
    with ran(name):
        out = fn(a, b)
    ref = fn(a.cpu(), b.cpu())
    assert out.dtype == ref.dtype
    assert torch.equal(out.cpu(), ref)


def test_logical_on_floats_and_bitwise_scalar():
    a, b = rand((5, 6), torch.float16), rand((6,), torch.int32, -2, 2, nonzero=False)
    with ran("logical_or"):
        out = torch.logical_or(a * 0, b)
    assert torch.equal(out.cpu(), torch.logical_or(a.cpu() * 0, b.cpu()))
    x = rand((6,), torch.int64, -100, 100)
    with ran("bitwise_xor"):
        out = x ^ 0x55
    assert torch.equal(out.cpu(), x.cpu() ^ 0x55)


# -- layouts, 0-d, empty, out=, in place, promotion -----------------------------------------
def test_non_contiguous_inputs_are_read_in_place():
    base = rand((40, 66), torch.float32)
    a = base[::2, 1::2]  # sliced: strides (132, 2)
    b = rand((33, 20), torch.float32).t()  # transposed
    with ran("mul_tt_rank2"):
        out = a * b
    assert_close(out, to_reference(a) * to_reference(b), torch.float32)
    with ran("add_tt_flat"):
        out = b + b  # transposed, same layout: one flat kernel, transposed output
    assert out.stride() == b.stride()
    assert_close(out, to_reference(b) * 2, torch.float32)


def test_zero_dim_and_empty():
    a, s = rand((5, 7), torch.float16), torch.tensor(1.5, device=DEVICE)
    with ran("add"):
        out = a + s
    assert out.dtype == torch.float16
    assert_close(out, to_reference(a) + 1.5, torch.float16)
    with ran("mul"):
        out = s * s
    assert out.shape == () and out.item() == 2.25
    e = torch.empty(0, 3, device=DEVICE)
    import flag_gems

    with flag_gems.use_gems():
        assert (e + 1).shape == (0, 3)


def test_out_and_inplace():
    a, b = rand((6, 8), torch.float32), rand((8,), torch.float32)
    out = torch.empty(3, device=DEVICE)  # resized
    with ran("sub"):
        torch.sub(a, b, out=out)
    assert_close(out, to_reference(a) - to_reference(b), torch.float32)
    out16 = torch.empty(6, 8, device=DEVICE, dtype=torch.float16)
    with ran("mul"):
        torch.mul(a, b, out=out16)
    assert_close(out16, to_reference(a) * to_reference(b), torch.float16)
    x = a.clone()
    with ran("add_alpha"):
        x.add_(b, alpha=3)
    assert_close(x, to_reference(a) + 3 * to_reference(b), torch.float32)
    y = a.clone()[:, ::2]  # in place on a strided view
    with ran("true_div"):
        y.div_(2)
    assert_close(y, to_reference(a)[:, ::2] / 2, torch.float32)
    c = a.clone()
    with ran("gt"):
        c.gt_(0)
    assert torch.equal(c, (a > 0).float())


def test_inplace_errors_like_torch():
    import flag_gems

    x = torch.ones(4, dtype=torch.int32, device=DEVICE)
    with flag_gems.use_gems():
        with pytest.raises(RuntimeError, match="can't be cast"):
            x.add_(1.5)
        with pytest.raises(RuntimeError):
            torch.ones(3, device=DEVICE).add_(torch.ones(2, 3, device=DEVICE))
        with pytest.raises(RuntimeError, match="bool"):
            torch.ones(2, dtype=torch.bool, device=DEVICE) - True


@pytest.mark.parametrize(
    "fn",
    [
        lambda i, h: i + 2.5, lambda i, h: i + h, lambda i, h: i * True, lambda i, h: i / 2,
        lambda i, h: h + h.new_tensor(2, dtype=torch.int64), lambda i, h: i > 1.5, lambda i, h: (i > 0) + (i > 1),
    ],
    ids=["int+float", "int+half", "int*bool", "int/int", "half+0d_int", "int>float", "bool+bool"],
)
def test_result_dtype_matches_torch(fn):
    i, h = rand((3, 4), torch.int32, -5, 5), rand((4,), torch.float16)
    with gems_ran():
        out = fn(i, h)
    ref = fn(i.cpu(), h.cpu())
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
