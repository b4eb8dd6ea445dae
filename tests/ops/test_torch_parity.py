"""Edge cases where flag_gems once differed from torch (found by differential fuzzing):
special float values, dtype rules, ops handed back to aten, and torch's argument checks.
Each value case runs flag_gems' kernel (``gems_ran``) and compares with torch's own result
on the same inputs; each error case must raise where torch raises, an exception of
torch's type (up to torch's own moves between RuntimeError, ValueError and IndexError
across versions); out-of-range indices also leave the indexed tensor as it was."""
import pytest
import torch
import torch.nn.functional as F

import flag_gems
from tests.helpers import DEVICE, assert_close, count_kernels, gems_ran, to_reference

INF, NAN = float("inf"), float("nan")
CPU_ONLY_UINT16 = pytest.mark.skipif(DEVICE != "cpu", reason="torch's CUDA kernels do not take uint16 either")
CPU_ONLY = pytest.mark.skipif(DEVICE != "cpu", reason="torch checks these indices on the host only (CUDA: device asserts)")


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


def same_as_torch(fn, kernel: bool = True):
    """``fn()`` with flag_gems (a kernel must run, with ``kernel``) equals torch's ``fn()``,
    NaNs and the sign of zero included."""
    expect = fn()
    with gems_ran() if kernel else flag_gems.use_gems():
        got = fn()
    assert got.dtype == expect.dtype and got.shape == expect.shape
    if got.is_floating_point():
        assert torch.equal(got.isnan(), expect.isnan()), (got, expect)
        keep = ~expect.isnan()
        assert torch.equal(got[keep], expect[keep]), (got, expect)
        assert torch.equal(got[keep].signbit(), expect[keep].signbit()), (got, expect)
    else:
        assert torch.equal(got, expect), (got, expect)


VALUE_CASES = {
    "pow special values": lambda dt: torch.pow(t([-INF, -INF, -1., -1., -0., -0., -INF, 2., .5, -2., 0., NAN], dt),
                                               t([.5, -.5, INF, -INF, -1., 3., 3., -INF, -INF, .5, -2., 0.], dt)),
    "pow of a -0.0 base": lambda dt: torch.pow(-0.0, t([-1., 3., -2., 2.], dt)),
    "floor division by and of infinities": lambda dt: torch.div(t([INF, -INF, -5., 0., -5., 7., -7.5, 0.], dt),
                                                                t([2., 2., INF, -INF, -INF, 2., 2.5, -3.], dt), rounding_mode="floor"),
    "clamp with a NaN tensor bound": lambda dt: torch.clamp(t([1., 2., 3.], dt), min=t([NAN, 0., 0.], dt), max=t([5., NAN, 1.], dt)),
    # (+inf is left out of the erf form: torch's AVX-512 CPU kernel makes it NaN in fp32,
    # its AVX2 one and its fp64 kernel inf, as flag_gems)
    "gelu of -inf": lambda dt: F.gelu(t([-INF, 1., 40.], dt)),
    "gelu (tanh) of -inf": lambda dt: F.gelu(t([-INF, 1., INF], dt), approximate="tanh"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", VALUE_CASES)
def test_special_values(case, dtype):
    same_as_torch(lambda: VALUE_CASES[case](dtype))


@pytest.mark.parametrize("fn", [
    lambda: torch.pow(t([2, 3, 0, 1], torch.uint8), 2),
    lambda: torch.pow(t([2, 3], torch.uint8), t([7, 2], torch.uint8)),
    lambda: torch.add(t([True, True, False], torch.bool), t([True, False, False], torch.bool), out=torch.empty(3, dtype=torch.int64, device=DEVICE)),
    lambda: torch.add(t([True, True], torch.bool), t([[True], [False]], torch.bool), out=torch.empty(2, 2, device=DEVICE)),
    lambda: torch.full((3,), 0.5, dtype=torch.bool, device=DEVICE),
    lambda: torch.zeros(3, dtype=torch.bool, device=DEVICE).fill_(NAN),
    lambda: torch.zeros(2, dtype=torch.bool, device=DEVICE).masked_fill(t([True, False], torch.bool), 2**40),
    lambda: torch.arange(0, 2.5, dtype=torch.int64, device=DEVICE),
    lambda: torch.arange(-1.5, 4.7, 1.5, dtype=torch.int32, device=DEVICE),
    lambda: torch.gather(t([[1., 2.], [3., 4.]]), 1, t([[1, 0], [0, 0]], torch.int32)),
    lambda: torch.scatter(torch.zeros(2, 3, device=DEVICE), 0, torch.empty(0, dtype=torch.long, device=DEVICE), torch.ones(2, 3, device=DEVICE)),
    lambda: torch.tensor(3., device=DEVICE).repeat(()) + 1,
], ids=["pow uint8", "pow uint8^uint8", "bool add into int64", "bool add broadcast into float", "bool full of 0.5",
        "bool fill of NaN", "bool masked_fill of 2**40", "int64 arange of float bounds", "int32 arange of float bounds",
        "gather int32 index", "scatter empty index", "repeat a 0-d tensor by ()"])
def test_values_as_torch(fn):
    same_as_torch(fn)


@pytest.mark.parametrize("fn", [
    lambda: torch.argmax(t([0., 9., 1., 9., 2., 9., 3.])[::2]),
    lambda: torch.argmin(t([5., 1.]).expand(3, 2).t()),
    lambda: torch.var_mean(t([1., NAN, 2.]))[0],
    lambda: torch.var_mean(t([[1., NAN, 2.], [1., 2., 4.]]), 1)[0],
    lambda: torch.zeros(3, 0, device=DEVICE).sum() + 1,
], ids=["argmax of a strided 1-D tensor", "argmin of an expanded tensor", "var_mean of a NaN", "var_mean of a NaN row",
        "sum of an empty 2-D tensor"])
def test_reductions_as_torch(fn):
    same_as_torch(fn)


@pytest.mark.parametrize("fn", [
    lambda: torch.all(t([[0., 1.], [2., 3.]]), dim=()),
    lambda: torch.zeros(2, 3, 0, device=DEVICE).amax(0),
    lambda: torch.max(torch.zeros(2, 3, 0, device=DEVICE), 0)[0],
], ids=["all over no dim", "amax of an empty dim", "max of an empty dim"])
def test_reductions_without_work_as_torch(fn):
    same_as_torch(fn, kernel=False)  # (nothing to launch: no kernel need run)


def test_norms_and_softmax_leave_fp64_to_aten():
    """These kernels keep statistics in fp32; fp64 calls get aten's fp64 results."""
    x = t([[1000., 1000.0001, 999.9999, 1000.00005]], torch.float64)
    wide, grouped = x * 1000, x.view(1, 4, 1).repeat(2, 1, 1)
    for fn in (lambda: F.layer_norm(x, (4,)), lambda: torch.softmax(wide, 1), lambda: torch.log_softmax(wide, 1),
               lambda: F.group_norm(grouped, 2)):
        expect = fn()
        with count_kernels() as launched, flag_gems.use_gems():
            got = fn()
        assert sum(launched.values()) == 0 and torch.equal(got, expect)
    with flag_gems.use_gems():  # aten's composite of smaller ops, flag_gems' in fp64
        got = F.rms_norm(x, (4,))
    assert_close(got, F.rms_norm(x, (4,)), torch.float64)


def test_rms_norm_default_eps_is_that_of_its_compute_dtype():
    x = torch.full((1, 4), 0.01, dtype=torch.bfloat16, device=DEVICE)
    with gems_ran():
        y = F.rms_norm(x, (4,))
    assert_close(y, to_reference(F.rms_norm(x.float(), (4,))), torch.bfloat16)  # ~1.0, not 0.11 (bf16's eps)


@pytest.mark.parametrize("p, dtype", [(1.5, torch.float32), (0.5, torch.int64)])
def test_dropout_leaves_what_it_does_not_take_to_aten(p, dtype):
    x = torch.ones(4, dtype=dtype, device=DEVICE)
    try:
        expect = torch.ops.aten.native_dropout(x, p, True)
    except RuntimeError:  # torch's CPU kernel rejects these; its CUDA kernel takes them
        with flag_gems.use_gems(), pytest.raises(RuntimeError):
            torch.ops.aten.native_dropout(x, p, True)
        return
    with count_kernels() as launched, flag_gems.use_gems():
        got = torch.ops.aten.native_dropout(x, p, True)
    assert sum(launched.values()) == 0 and got[0].shape == expect[0].shape


def test_dropout_keeps_nan_of_dropped_elements():
    x = t([NAN, INF, 1.0] * 20)
    with gems_ran("dropout_fwd_kernel"):
        y, mask = torch.ops.aten.native_dropout(x, 1.0, True)
    assert not mask.any() and torch.equal(y.isnan(), x.isnan() | x.isinf())  # x * 0 * scale, as torch


def test_embedding_backward_sums_fp64_in_fp64():
    w = torch.zeros(3, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    g = t([[1e8], [1.], [-1e8]], torch.float64)
    with gems_ran("embedding_bwd_kernel"):
        F.embedding(t([1, 1, 1], torch.int64), w).backward(g)
    assert w.grad[:, 0].tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("op, make", [
    (lambda a, b: a + b, lambda: (t([1 + 2j], torch.complex64), t([3 - 1j], torch.complex64))),
    (lambda a: a * 1j, lambda: (t([1.0, 2.0]),)),
    pytest.param(lambda a: a * 2, lambda: (t([1, 3, 5], torch.int32).to(torch.uint16),), marks=CPU_ONLY_UINT16),
    pytest.param(lambda c, a: torch.where(c, a, 0), lambda: (t([True, False], torch.bool), t([4, 5], torch.int32).to(torch.uint16)),
                 marks=CPU_ONLY_UINT16),
], ids=["complex add", "complex scalar", "uint16 mul", "uint16 where"])
def test_dtypes_without_a_kernel_go_to_aten(op, make):
    inputs = make()
    expect = op(*inputs)
    with count_kernels() as launched, flag_gems.use_gems():
        got = op(*inputs)
    assert sum(launched.values()) == 0
    assert torch.equal(got, expect)


def _bad_calls() -> dict:
    x = torch.arange(12.0, device=DEVICE).reshape(4, 3)
    h = torch.zeros(2, dtype=torch.float16, device=DEVICE)
    idx = lambda *v: t(list(v), torch.int64)  # noqa: E731
    return {
        "add: float into an int32 out": lambda: torch.add(x, x, out=torch.empty(4, 3, dtype=torch.int32, device=DEVICE)),
        "exp: float into an int64 out": lambda: torch.exp(x, out=torch.empty(4, 3, dtype=torch.int64, device=DEVICE)),
        "add_: into an expanded tensor": lambda: torch.ones(3, 1, device=DEVICE).expand(3, 4).add_(1.0),
        "copy_: into an expanded tensor": lambda: torch.ones(3, 1, device=DEVICE).expand(3, 4).copy_(x[:3, :1].expand(3, 4) + 1),
        "fill_: fp16 overflow": lambda: h.fill_(1e5),
        "fill_: int8 overflow": lambda: torch.zeros(2, dtype=torch.int8, device=DEVICE).fill_(200),
        "full: fp16 overflow": lambda: torch.full((2,), 1e5, dtype=torch.float16, device=DEVICE),
        "masked_fill: fp16 overflow": lambda: h.masked_fill(t([True, False], torch.bool), 1e5),
        "pad: fp16 value overflow": lambda: F.pad(h, (1, 1), value=1e6),
        "pad: crops past the input": lambda: F.pad(torch.ones(2, 1, device=DEVICE), (1, -2)),
        "index_select: float index": lambda: torch.index_select(x, 0, t([1.0])),
        "index_select: out of another dtype": lambda: torch.index_select(x, 0, idx(1), out=torch.empty(1, 3, dtype=torch.float64, device=DEVICE)),
        "gather: out of another dtype": lambda: torch.gather(x, 0, idx(1).view(1, 1), out=torch.empty(1, 1, dtype=torch.float64, device=DEVICE)),
        "embedding: float indices": lambda: F.embedding(t([1.0]), x),
        "scatter: src smaller than index": lambda: torch.scatter(torch.zeros(2, 4, device=DEVICE), 1, idx(0, 1, 2, 3).view(1, 4), torch.ones(1, 2, device=DEVICE)),
        "scatter_add: src of another dtype": lambda: torch.scatter_add(torch.zeros(2, 3, device=DEVICE), 0, idx(1, 0, 1).view(1, 3), torch.ones(1, 3, dtype=torch.float64, device=DEVICE)),
        "scatter_: into an expanded tensor": lambda: torch.ones(1, 4, device=DEVICE).expand(3, 4).scatter_(0, idx(0).view(1, 1), 5.0),
        "scatter: fp16 value overflow": lambda: torch.scatter(h, 0, idx(1), 1e5),
        "sum: dim out of range": lambda: torch.sum(x, dim=2),
        "sum: a dim twice": lambda: torch.sum(x, dim=(0, 0)),
        "amax: dim out of range": lambda: torch.amax(x, dim=-3),
        "max: dim out of range": lambda: torch.max(x, 2),
        "cumsum: dim out of range": lambda: torch.cumsum(x[0], 1),
        "vector_norm: a narrowing dtype": lambda: torch.linalg.vector_norm(x, dtype=torch.float16),
        "argmax: bool input": lambda: torch.argmax(t([False, True], torch.bool)),
        "layer_norm: normalized_shape not the input's": lambda: F.layer_norm(torch.ones(2, 8, device=DEVICE), (4,)),
        "rms_norm: normalized_shape not the input's": lambda: F.rms_norm(torch.ones(2, 8, device=DEVICE), (4,)),
        "layer_norm: weight of another shape": lambda: F.layer_norm(x, (3,), torch.ones(2, device=DEVICE)),
        "rms_norm: weight of another shape": lambda: F.rms_norm(x, (3,), torch.ones(2, device=DEVICE)),
    }


BAD = list(_bad_calls())
OUT_OF_RANGE = {
    "index_select past the end": lambda x, i: torch.index_select(x, 0, i(4)),
    "index_select negative": lambda x, i: torch.index_select(x, 0, i(-1)),
    "gather past the end": lambda x, i: torch.gather(x, 1, i(3).view(1, 1)),
    "gather negative": lambda x, i: torch.gather(x, 1, i(-1).view(1, 1)),
    "scatter past the end": lambda x, i: torch.scatter(x, 1, i(3).view(1, 1), 9.0),
    "scatter_add negative": lambda x, i: torch.scatter_add(x, 0, i(-1).view(1, 1), torch.ones(1, 1, device=DEVICE)),
    "embedding past the end": lambda x, i: F.embedding(i(4), x),
    "index_select of an empty dim": lambda x, i: torch.index_select(x[:0], 0, i(0)),
    "cross_entropy target past the end": lambda x, i: F.cross_entropy(x, i(1, 3, 0, 2)),
    "cross_entropy negative target": lambda x, i: F.cross_entropy(x, i(1, -1, 0, 2)),
}


def _raises_as_torch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (torch's own exception type is the reference)
        expected = type(e)
    else:
        pytest.fail("torch accepted the call")
    # (torch has moved checks between these types across versions and devices)
    loose = (ValueError, RuntimeError, IndexError)
    family = loose if issubclass(expected, loose) else expected  # (NotImplementedError is a RuntimeError)
    with flag_gems.use_gems(), pytest.raises(family):
        fn()


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_raise_as_torch(case):
    _raises_as_torch(_bad_calls()[case])


@CPU_ONLY
@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_out_of_range_indices_raise_as_torch(case):
    x = torch.arange(12.0, device=DEVICE).reshape(4, 3)
    before = x.clone()
    _raises_as_torch(lambda: OUT_OF_RANGE[case](x, lambda *v: t(list(v), torch.int64)))
    assert torch.equal(x, before)


@pytest.mark.skipif(DEVICE == "cpu", reason="on the host the indices are checked (an error), see above")
def test_out_of_range_indices_touch_nothing_on_the_device():
    """Unchecked on a GPU (a check would synchronize): a read gives 0, a write is
    skipped; memory around the tensors stays as it was."""
    big = torch.arange(40.0, device=DEVICE).reshape(10, 4)
    x, guard = big[2:6], big.clone()
    i = lambda *v: t(list(v), torch.int64)  # noqa: E731
    with gems_ran():
        sel = torch.index_select(x, 0, i(1, 7, -3))
        gat = torch.gather(x, 1, t([[0, 9, -1, 2]], torch.int64))
        emb = F.embedding(i(0, 4, -1), x)
        x.scatter_(1, t([[5, -2, 1, 8]], torch.int64), -1.0)
        x.scatter_add_(0, t([[9, -1, 0, 4]], torch.int64), torch.ones(1, 4, device=DEVICE))
    assert_close(sel, to_reference(torch.stack([guard[3], torch.zeros(4, device=DEVICE), torch.zeros(4, device=DEVICE)])), torch.float32)
    assert gat[0].tolist() == [guard[2, 0].item(), 0.0, 0.0, guard[2, 2].item()]
    assert emb[1:].abs().sum().item() == 0.0
    # x's first row: the one in-range scatter write (column 1) and the one in-range add (column 2)
    assert big[2, 1].item() == -1.0 and big[2, 2].item() == guard[2, 2].item() + 1.0
    assert torch.equal(big[:2], guard[:2]) and torch.equal(big[6:], guard[6:])  # nothing around x
