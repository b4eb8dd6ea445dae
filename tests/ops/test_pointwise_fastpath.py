"""The pointwise generator's fast path (contiguous tensors of one shape, Python scalars,
memoized per-signature plans) and its boundaries: every case is checked against torch,
and against which path ran (the general path is the only caller of ``Pointwise.launch``
and of its direct relaunch, ``Pointwise._relaunch``)."""
import contextlib

import pytest
import torch

import flag_gems
from flag_gems.ops.binary import ADD
from flag_gems.utils import pointwise
from tests.helpers import DEVICE, assert_close, count_kernels, to_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@contextlib.contextmanager
def paths(monkeypatch):
    """flag_gems on; yields {"general": n, "kernels": Counter} for the block."""
    seen = {"general": 0}
    orig, orig_relaunch = pointwise.Pointwise.launch, pointwise.Pointwise._relaunch

    def launch(self, *a, **k):
        seen["general"] += 1
        return orig(self, *a, **k)

    def relaunch(self, *a, **k):  # the general path's direct relaunch (GPU runs)
        done = orig_relaunch(self, *a, **k)
        seen["general"] += done is not None
        return done

    monkeypatch.setattr(pointwise.Pointwise, "launch", launch)
    monkeypatch.setattr(pointwise.Pointwise, "_relaunch", relaunch)
    with count_kernels() as launched, flag_gems.use_gems():
        seen["kernels"] = launched
        yield seen
    assert sum(launched.values()) > 0, "no Triton kernel ran"


def same_as_torch(fn, *args, monkeypatch, fast: bool | None, **kwargs):
    """Run ``fn`` under flag_gems and under torch on clones; compare; check the path
    (``fast``: True / False, None: either)."""
    ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    ref = fn(*ref_args, **kwargs)
    with paths(monkeypatch) as seen:
        out = fn(*args, **kwargs)
    assert fast is None or (seen["general"] == 0) == fast, f"fast path expected={fast}, general launches={seen['general']}"
    assert out.dtype == ref.dtype and out.shape == ref.shape, f"{out.dtype}{tuple(out.shape)} vs {ref.dtype}{tuple(ref.shape)}"
    assert out.stride() == ref.stride()
    assert_close(out, to_reference(ref), out.dtype if out.is_floating_point() else None)
    for a, r in zip(args, ref_args):  # in-place / out= effects
        if isinstance(a, torch.Tensor):
            assert_close(a, to_reference(r), a.dtype if a.is_floating_point() else None)
    return out


def t(shape, dtype=torch.float32, *, low=-3, high=3):
    if dtype == torch.bool:
        return torch.rand(shape, device=DEVICE) > 0.5
    if dtype.is_floating_point:
        return torch.empty(shape, device=DEVICE).uniform_(low, high).to(dtype)
    return torch.randint(0 if dtype == torch.uint8 else low, high + 1, shape, device=DEVICE, dtype=dtype)


# -- taken: contiguous, one shape, scalars -----------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int64])
def test_fast_binary_same_dtype(dtype, monkeypatch):
    out = same_as_torch(torch.add, t((4, 33), dtype), t((4, 33), dtype), monkeypatch=monkeypatch, fast=True)
    assert out.is_contiguous()


@pytest.mark.parametrize(
    "fn, a_dtype, b_dtype",
    [
        (torch.add, torch.bfloat16, torch.float32),
        (torch.mul, torch.int32, torch.float16),
        (torch.sub, torch.int64, torch.int32),
        (torch.div, torch.int32, torch.int32),  # int_to_float
        (torch.maximum, torch.float16, torch.bfloat16),
        (torch.eq, torch.float32, torch.int64),  # bool result
        (torch.logical_and, torch.bool, torch.float32),
        (torch.bitwise_or, torch.bool, torch.uint8),
    ],
)
def test_fast_mixed_dtypes(fn, a_dtype, b_dtype, monkeypatch):
    same_as_torch(fn, t((3, 5), a_dtype), t((3, 5), b_dtype), monkeypatch=monkeypatch, fast=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.int64, torch.bool])
@pytest.mark.parametrize("scalar", [2, 2.5, True, -3])
def test_fast_python_scalars(dtype, scalar, monkeypatch):
    x = t((7, 3), dtype)
    same_as_torch(torch.mul, x, scalar, monkeypatch=monkeypatch, fast=True)
    if dtype != torch.bool:
        same_as_torch(torch.add, x, scalar, monkeypatch=monkeypatch, fast=True)


def test_fast_scalar_first_and_alpha(monkeypatch):
    x, y = t((6,), torch.bfloat16), t((6,), torch.bfloat16)
    same_as_torch(torch.pow, 2.0, x, monkeypatch=monkeypatch, fast=True)
    same_as_torch(torch.add, x, y, alpha=3, monkeypatch=monkeypatch, fast=True)
    same_as_torch(torch.sub, x, y, alpha=0.5, monkeypatch=monkeypatch, fast=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.bool])
def test_fast_unary(dtype, monkeypatch):
    x = t((5, 8), dtype, low=0, high=2)
    same_as_torch(torch.exp, x, monkeypatch=monkeypatch, fast=True)  # int/bool -> float
    same_as_torch(torch.logical_not, x, monkeypatch=monkeypatch, fast=True)
    if dtype != torch.bool:
        same_as_torch(torch.neg, x, monkeypatch=monkeypatch, fast=True)


def test_fast_where_and_clamp(monkeypatch):
    c, x, y = t((4, 9), torch.bool), t((4, 9), torch.bfloat16), t((4, 9), torch.float32)
    same_as_torch(torch.where, c, x, y, monkeypatch=monkeypatch, fast=True)
    # where's Scalar overloads reach the kernel as where.self with a 0-d tensor: general path
    same_as_torch(torch.where, c, x, 1.5, monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.clamp, x, -1.0, 1.0, monkeypatch=monkeypatch, fast=True)


@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16, torch.int32, torch.bool])
@pytest.mark.parametrize("dst", [torch.float16, torch.float32, torch.int64, torch.bool])
def test_fast_to_dtype(src, dst, monkeypatch):
    if src == dst:
        pytest.skip("no copy: .to() returns self")
    same_as_torch(lambda x: x.to(dst), t((3, 11), src), monkeypatch=monkeypatch, fast=True)


def test_fast_out_and_inplace(monkeypatch):
    x, y = t((4, 6), torch.bfloat16), t((4, 6), torch.bfloat16)
    # a wider out=: torch rounds the bf16 sum first, the kernel stores its fp32 sum
    o = torch.empty(4, 6, dtype=torch.float32, device=DEVICE)
    with paths(monkeypatch) as seen:
        torch.add(x, y, out=o)
    assert seen["general"] == 0
    assert_close(o, to_reference(x) + to_reference(y), torch.bfloat16)
    same_as_torch(lambda a, b: a.add_(b), x, y, monkeypatch=monkeypatch, fast=True)
    same_as_torch(lambda a: a.mul_(0.5), x, monkeypatch=monkeypatch, fast=True)
    same_as_torch(lambda a, b: torch.lt(a, b, out=torch.empty(4, 6, dtype=torch.bool, device=DEVICE)), x, y, monkeypatch=monkeypatch, fast=True)


def test_fast_empty(monkeypatch):
    x = t((0, 4))
    ref = torch.add(x, x)
    with flag_gems.use_gems():
        out = torch.add(x, x)
    assert out.shape == ref.shape and out.dtype == ref.dtype


def test_plans_are_memoized_per_signature():
    x, y = t((8,), torch.bfloat16), t((8,), torch.bfloat16)
    ADD._plans.clear()
    with flag_gems.use_gems():
        torch.add(x, y)
        torch.add(x, y)
        torch.add(x.float(), y)
        torch.add(x, 2)
        torch.add(x, 3)  # an int scalar counts by its specialization, as Triton's: 2 and 3 alike
        torch.add(x, 32)  # divisible by 16
    sigs = [k[2:] for k in ADD._plans]
    assert sorted(map(str, sigs)) == sorted(map(str, [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16), (torch.bfloat16, False), (torch.bfloat16, True)]))


# -- not taken: the general path, same results ------------------------------------------
def test_general_non_contiguous(monkeypatch):
    x = t((6, 5), torch.bfloat16)
    same_as_torch(torch.add, x.t(), t((5, 6), torch.bfloat16), monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.exp, x[:, ::2], monkeypatch=monkeypatch, fast=False)
    same_as_torch(lambda a: a.to(torch.float32), x.t(), monkeypatch=monkeypatch, fast=False)
    cl = t((2, 3, 4, 5)).to(memory_format=torch.channels_last)
    same_as_torch(torch.mul, cl, cl, monkeypatch=monkeypatch, fast=False)


def test_general_broadcasting(monkeypatch):
    same_as_torch(torch.add, t((4, 1, 5), torch.bfloat16), t((3, 1), torch.float32), monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.where, t((4, 5), torch.bool), t((5,)), t((4, 1)), monkeypatch=monkeypatch, fast=False)
    with flag_gems.use_gems(), pytest.raises(RuntimeError):
        torch.add(t((2, 3)), t((3, 2)))


def test_general_zero_dim_tensors(monkeypatch):
    x = t((4, 3), torch.float16)
    same_as_torch(torch.mul, x, torch.tensor(2.5, device=DEVICE), monkeypatch=monkeypatch, fast=False)  # 0-d: promotes like a scalar
    same_as_torch(torch.add, x, torch.tensor(2, dtype=torch.int64, device=DEVICE), monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.add, torch.tensor(1.5, device=DEVICE), torch.tensor(2.0, device=DEVICE), monkeypatch=monkeypatch, fast=False)


def test_general_out_boundaries(monkeypatch):
    x, y = t((4, 6)), t((4, 6))
    same_as_torch(lambda a, b, o: torch.add(a, b, out=o), x, y, torch.empty(6, 4, device=DEVICE).t(), monkeypatch=monkeypatch, fast=False)
    # out= of another shape is resized, as torch does (torch warns about a non-empty one)
    same_as_torch(lambda a, b, o: torch.add(a, b, out=o), x, y, torch.empty(0, device=DEVICE), monkeypatch=monkeypatch, fast=False)


def test_general_fp64_with_float_scalar(monkeypatch):
    # a float scalar in fp64 arithmetic goes as a 0-d fp64 tensor: general path
    same_as_torch(torch.mul, t((5,), torch.float64), 0.1, monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.mul, t((5,), torch.float64), 3, monkeypatch=monkeypatch, fast=True)


def test_general_large_int_alpha(monkeypatch):
    # an unpromoted int (alpha) beyond int32 is loaded as int64: general path, per value
    x, y = t((5,)), t((5,))
    same_as_torch(torch.add, x, y, alpha=3, monkeypatch=monkeypatch, fast=True)
    same_as_torch(torch.add, x, y, alpha=2**33, monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.add, x, y, alpha=-(2**33), monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.add, t((5,), torch.int64), t((5,), torch.int64), alpha=2**33, monkeypatch=monkeypatch, fast=True)


def test_tensor_subclass(monkeypatch):
    # a Parameter may reach the kernel as itself (general path) or as a plain tensor
    p = torch.nn.Parameter(t((3, 4)), requires_grad=False)
    same_as_torch(torch.add, p, t((3, 4)), monkeypatch=monkeypatch, fast=None)
    same_as_torch(torch.add, p, p, monkeypatch=monkeypatch, fast=None)
    # a Parameter broadcast against a plain tensor (an RMSNorm weight times the hidden
    # states): its shape takes part in the fast path's one-shape check, either side
    w = torch.nn.Parameter(t((4,)), requires_grad=False)
    same_as_torch(torch.mul, w, t((2, 3, 4)), monkeypatch=monkeypatch, fast=False)
    same_as_torch(torch.mul, t((2, 3, 4)), w, monkeypatch=monkeypatch, fast=False)


def test_default_dtype_is_part_of_the_signature(monkeypatch):
    x = t((6,), torch.int32, low=0, high=3)
    same_as_torch(torch.exp, x, monkeypatch=monkeypatch, fast=True)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = same_as_torch(torch.exp, x, monkeypatch=monkeypatch, fast=True)
        assert out.dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_inplace_cast_error_kept(monkeypatch):
    x = t((4,), torch.int32)
    with flag_gems.use_gems(), pytest.raises(RuntimeError, match="can't be cast"):
        x.add_(t((4,), torch.float32))
    with flag_gems.use_gems(), pytest.raises(RuntimeError, match="can't be cast"):
        x.mul_(1.5)
