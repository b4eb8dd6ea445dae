"""index_select, gather, scatter (src/value, reduce add) and scatter_add.

gather/scatter walk the index tensor (rank <= 6, padded with size-1 dims); the "indexed"
tensor's offset takes the index value along ``dim`` and the walk position elsewhere.
Out-of-range indices: an index tensor in host memory is checked as torch checks it (an
error); on a GPU that check would cost a synchronization (torch's CUDA kernels use device
asserts), so there the kernels mask any index outside the indexed dim: nothing outside
the tensors is read or written (a read gives 0, a write is skipped), and with Triton's
debug mode (``TRITON_DEBUG=1``) a device assert reports it.
"""
from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

from flag_gems.ops._tensor_nd import MAX_RANK, finish_out, out_buffer
from flag_gems.registry import aten_fallback, register
from flag_gems.utils import cdiv
from flag_gems.utils.pointwise import check_no_internal_overlap, checked_scalar
from tuner import launch as launching
from tuner import libtuner

log = logging.getLogger(__name__)

_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(256, 4), (512, 4), (1024, 4), (2048, 8)]]
_DEFAULT = triton.Config({"BLOCK": 1024}, num_warps=4)


def _norm_dim(dim: int, ndim: int) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


# -- index_select ------------------------------------------------------------------------
# Rows of at least _ROW_MIN elements (a table's rows, heads of a (tokens, heads, dim)
# tensor): a program copies a tile of ROWS selected rows x BLOCK of their elements, reading
# each row's index once and addressing its elements without a division; short rows take
# several rows per tile. Shorter rows (dim -1, say): one flat walk over the output,
# dividing each position into (outer, selected, inner).
_ROW_MIN = 32
_ROW_CONFIGS = [triton.Config({"ROWS": r, "BLOCK": b}, num_warps=w) for r, b, w in
                [(1, 4096, 8), (1, 2048, 8), (1, 1024, 4), (2, 512, 4), (4, 256, 4), (8, 128, 4), (16, 64, 4), (32, 32, 4)]]
_ROW_DEFAULT = triton.Config({"ROWS": 4, "BLOCK": 256}, num_warps=4)


@libtuner(configs=_ROW_CONFIGS, key=["inner", "rows"], strategy=["log", "log"], default=_ROW_DEFAULT)
@triton.jit
def index_select_rows_kernel(x, idx, out, rows, K, D, inner, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # output rows: (outer, selected)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rm = row < rows
    src = tl.load(idx + row % K, mask=rm, other=0).to(tl.int64)
    ok = (src >= 0) & (src < D)
    tl.device_assert(ok | ~rm, "index_select(): index out of range")
    base = ((row // K) * D + src) * inner
    m = rm[:, None] & (cols < inner)[None, :]
    v = tl.load(x + base[:, None] + cols[None, :], mask=m & ok[:, None], other=0)
    tl.store(out + (row * inner)[:, None] + cols[None, :], v, mask=m)


@libtuner(configs=_CONFIGS, key=["n"], strategy=["log"], default=_DEFAULT)
@triton.jit
def index_select_kernel(x, idx, out, n, K, D, inner, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    r = i % inner
    j = (i // inner) % K
    o = i // (inner * K)
    src_j = tl.load(idx + j, mask=m, other=0).to(tl.int64)
    ok = (src_j >= 0) & (src_j < D)
    tl.device_assert(ok | ~m, "index_select(): index out of range")
    v = tl.load(x + (o * D + src_j) * inner + r, mask=m & ok, other=0)
    tl.store(out + i, v, mask=m)


def check_index(index: torch.Tensor, size: int, what: str, error: type[Exception] = IndexError) -> None:
    """torch's checks of an index tensor into a dim of ``size``: int32 / int64, and, in
    host memory, every value in [0, size) (``what`` is the error's message there; on a
    GPU the kernels mask what is out of range, see the module's docstring)."""
    if index.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"Expected an index tensor of dtype int32 or int64, got {index.dtype}")
    if index.device.type == "cpu" and index.numel() and not launching.values_unknown():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= size:
            raise error(what.format(index=lo if lo < 0 else hi))


def _index_select(x: torch.Tensor, dim: int, index: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if index.dim() > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    if out is not None and out.dtype != x.dtype:
        raise RuntimeError("index_select(): self and result must have the same scalar type")
    if x.dim() == 0:  # scalar self: nothing to gather along
        res = aten_fallback("index_select")(x, dim, index)
        return res if out is None else finish_out(out, res)
    dim = _norm_dim(dim, x.dim())
    if x.shape[dim] == 0 and index.numel():
        raise RuntimeError("index_select(): self indexing axis dim should be positive")
    check_index(index, x.shape[dim], "index out of range in self")
    xs, index = x.contiguous(), index.reshape(-1).contiguous()
    K, D = index.numel(), x.shape[dim]
    shape = list(x.shape)
    shape[dim] = K
    buf = torch.empty(size=shape, dtype=x.dtype, device=x.device) if out is None else out_buffer(out, shape, x.dtype)
    n = buf.numel()
    if n:
        inner = math.prod(x.shape[dim + 1:])
        rows = n // inner
        if _ROW_MIN <= inner <= 65535 * 32 and rows < 2**31:  # within the grid's limits at any tile
            grid = lambda META: (cdiv(rows, META["ROWS"]), cdiv(inner, META["BLOCK"]))
            index_select_rows_kernel[grid](xs, index, buf, rows, K, D, inner)
        else:
            index_select_kernel[lambda META: (cdiv(n, META["BLOCK"]),)](xs, index, buf, n, K, D, inner)
    return buf if out is None else finish_out(out, buf)


@register("index_select")
def index_select(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    return _index_select(x, dim, index, None)


@register("index_select.out")
def index_select_out(x: torch.Tensor, dim: int, index: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return _index_select(x, dim, index, out)


# -- gather / scatter: one walk over the index tensor -------------------------------------
GATHER, STORE, ADD = 0, 1, 2


@triton.jit
def _walk(i, a_off, b_off, i_off, O, A, B, I):
    k = i % O
    return i // O, a_off + k * A, b_off + k * B, i_off + k * I


@libtuner(configs=_CONFIGS, key=["n"], strategy=["log"], default=_DEFAULT, restore_value=["a"])  # (ADD: a += ...)
@triton.jit
def gather_scatter_kernel(
    idx, a, b, n, AD, AN, value,
    O0, O1, O2, O3, O4, O5,
    I0, I1, I2, I3, I4, I5,
    A0, A1, A2, A3, A4, A5,
    B0, B1, B2, B3, B4, B5,
    MODE: tl.constexpr, HAS_SRC: tl.constexpr, BLOCK: tl.constexpr,
):
    """``a`` is the indexed tensor (strides A, dim stride AD, AN long); ``b`` the dense one
    (B). GATHER: b[walk] = a[idx]; STORE: a[idx] = b[walk] (or value); ADD: a[idx] += ..."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    z = tl.zeros([BLOCK], dtype=tl.int64)
    a_off, b_off, i_off = z, z, z
    i, a_off, b_off, i_off = _walk(i, a_off, b_off, i_off, O5, A5, B5, I5)
    i, a_off, b_off, i_off = _walk(i, a_off, b_off, i_off, O4, A4, B4, I4)
    i, a_off, b_off, i_off = _walk(i, a_off, b_off, i_off, O3, A3, B3, I3)
    i, a_off, b_off, i_off = _walk(i, a_off, b_off, i_off, O2, A2, B2, I2)
    i, a_off, b_off, i_off = _walk(i, a_off, b_off, i_off, O1, A1, B1, I1)
    i, a_off, b_off, i_off = _walk(i, a_off, b_off, i_off, O0, A0, B0, I0)
    j = tl.load(idx + i_off, mask=m, other=0).to(tl.int64)
    ok = (j >= 0) & (j < AN)
    tl.device_assert(ok | ~m, "gather/scatter: index out of bounds")
    a_off += j * AD
    if MODE == 0:
        tl.store(b + b_off, tl.load(a + a_off, mask=m & ok, other=0), mask=m)
    else:
        m = m & ok
        if HAS_SRC:
            v = tl.load(b + b_off, mask=m)
        else:
            v = tl.full([BLOCK], value, a.dtype.element_ty)
        if MODE == 1:
            tl.store(a + a_off, v.to(a.dtype.element_ty), mask=m)
        else:
            tl.atomic_add(a + a_off, v.to(a.dtype.element_ty), mask=m)


def _pad6(v: list[int], fill: int) -> list[int]:
    return [fill] * (MAX_RANK - len(v)) + v


def _launch(index: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, dim: int, mode: int, value=0) -> None:
    n = index.numel()
    if n == 0:
        return
    A = list(a.stride())
    AD, A[dim] = A[dim], 0
    AN = a.shape[dim]
    B = list(b.stride()) if b is not None else [0] * index.dim()
    O = _pad6(list(index.shape), 1)
    grid = lambda META: (cdiv(n, META["BLOCK"]),)
    gather_scatter_kernel[grid](
        index, a, b if b is not None else a, n, AD, AN, value,
        *O, *_pad6(list(index.stride()), 0), *_pad6(A, 0), *_pad6(B, 0),
        MODE=mode, HAS_SRC=b is not None,
    )


def _check(x: torch.Tensor, dim: int, index: torch.Tensor, name: str, src: torch.Tensor | None = None) -> int:
    """torch's checks of a gather / scatter call; returns ``dim`` normalized."""
    if index.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index")
    dim = _norm_dim(dim, x.dim())
    if index.numel() == 0:  # an empty index does nothing, whatever its rank
        return dim
    if max(index.dim(), 1) != max(x.dim(), 1):
        raise RuntimeError(f"Index tensor must have the same number of dimensions as {name} tensors")
    for d in range(index.dim()):
        if d != dim and index.shape[d] > x.shape[d]:
            raise RuntimeError(f"Size does not match at dimension {d} expected index {tuple(index.shape)} to be smaller than self {tuple(x.shape)} apart from dimension {dim}")
    if src is not None:
        if src.dim() != index.dim():
            raise RuntimeError("Index tensor must have the same number of dimensions as src tensor")
        if any(i > s for i, s in zip(index.shape, src.shape)):
            raise RuntimeError(f"Expected index {list(index.shape)} to be no larger than self {list(x.shape)} apart from dimension {dim} and to be no larger size than src {list(src.shape)}")
    size = x.shape[dim] if x.dim() else 1
    check_index(index, size, f"index {{index}} is out of bounds for dimension {dim} with size {size}", RuntimeError)
    return dim


def _as1d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1) if t.dim() == 0 else t


def _gather(x: torch.Tensor, dim: int, index: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    dim = _check(x, dim, index, "gather")
    if out is not None and out.dtype != x.dtype:
        raise RuntimeError(f"Expected out tensor to have dtype {x.dtype}, but got {out.dtype} instead")
    buf = torch.empty(size=index.shape, dtype=x.dtype, device=x.device) if out is None else out_buffer(out, index.shape, x.dtype)
    if index.dim() > MAX_RANK:
        res = aten_fallback("gather")(x, dim, index)
        return res if out is None else finish_out(out, res)
    _launch(_as1d(index), _as1d(x), _as1d(buf), dim, GATHER)
    return buf if out is None else finish_out(out, buf)


@register("gather")
def gather(x: torch.Tensor, dim: int, index: torch.Tensor, *, sparse_grad: bool = False) -> torch.Tensor:
    return _gather(x, dim, index, None)


@register("gather.out")
def gather_out(x: torch.Tensor, dim: int, index: torch.Tensor, *, sparse_grad: bool = False, out: torch.Tensor) -> torch.Tensor:
    return _gather(x, dim, index, out)


def _scatter_into(target: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor | None, value, reduce: str | None) -> torch.Tensor:
    """Scatter into ``target`` in place (any strides); returns ``target``."""
    if src is not None and src.dtype != target.dtype:
        raise RuntimeError("scatter(): Expected self.dtype to be equal to src.dtype")
    dim = _check(target, dim, index, "scatter", src)
    check_no_internal_overlap(target)
    if index.numel() == 0:
        return target
    if reduce is None:
        _launch(_as1d(index), _as1d(target), None if src is None else _as1d(src), dim, STORE, value)
        return target
    # atomics: low-precision floats accumulate in an fp32 copy
    acc = target.float() if target.dtype in (torch.float16, torch.bfloat16) else target
    if src is not None:
        src = src.to(acc.dtype)
    _launch(_as1d(index), _as1d(acc), None if src is None else _as1d(src), dim, ADD, value)
    if acc is not target:
        target.copy_(acc)
    return target


def _scalar(value, dtype: torch.dtype):
    value = checked_scalar(value, dtype)
    return float(value) if dtype.is_floating_point else (bool(value) if dtype == torch.bool else int(value))


def _reduce_kind(reduce: str) -> str:
    if reduce not in ("add", "multiply"):
        raise RuntimeError(f"reduce argument must be either add or multiply, got {reduce}")
    return reduce


@register("scatter.src")
def scatter_src(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return _scatter_into(x.clone(), dim, index, src, 0, None)


@register("scatter.value")
def scatter_value(x: torch.Tensor, dim: int, index: torch.Tensor, value) -> torch.Tensor:
    return _scatter_into(x.clone(), dim, index, None, _scalar(value, x.dtype), None)


@register("scatter.reduce")
def scatter_reduce_src(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, *, reduce: str) -> torch.Tensor:
    if _reduce_kind(reduce) == "multiply":  # no atomic multiply: aten
        return aten_fallback("scatter.reduce")(x, dim, index, src, reduce=reduce)
    return _scatter_into(x.clone(), dim, index, src, 0, "add")


@register("scatter.value_reduce")
def scatter_value_reduce(x: torch.Tensor, dim: int, index: torch.Tensor, value, *, reduce: str) -> torch.Tensor:
    if _reduce_kind(reduce) == "multiply":
        return aten_fallback("scatter.value_reduce")(x, dim, index, value, reduce=reduce)
    return _scatter_into(x.clone(), dim, index, None, _scalar(value, x.dtype), "add")


@register("scatter_.src")
def scatter_src_(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return _scatter_into(x, dim, index, src, 0, None)


@register("scatter_.value")
def scatter_value_(x: torch.Tensor, dim: int, index: torch.Tensor, value) -> torch.Tensor:
    return _scatter_into(x, dim, index, None, _scalar(value, x.dtype), None)


@register("scatter_add")
def scatter_add(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return _scatter_into(x.clone(), dim, index, src, 0, "add")


@register("scatter_add_")
def scatter_add_(x: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return _scatter_into(x, dim, index, src, 0, "add")
