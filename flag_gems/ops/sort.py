"""sort, topk and unique (_unique2) on a bitonic sort in registers (tl.sort).

One program sorts one row of up to MAX_SORT elements. Each value becomes an int32 key
whose signed order is the value order (floats: flip the non-sign bits of negatives; NaN
canonical, so it sorts last; -0.0 == 0.0); the key goes in the high half of an int64 and
the element's position in the low half, so one ascending sort of int64 is a *stable*
sort that carries the indices (descending: the key is bit-inverted).
Not covered, left to aten: rows longer than MAX_SORT (sort; topk when its reduction
stages cannot shrink the row), and 64-bit dtypes (int64/float64) that need indices.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.registry import aten_fallback, register

log = logging.getLogger(__name__)

MAX_SORT = 4096  # elements one program sorts in registers
KEY_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool}


@triton.jit
def _key32(v):
    """An int32 whose signed order is the order of ``v``."""
    if v.dtype.is_floating():
        f = v.to(tl.float32)
        f = tl.where(f != f, float("nan"), f)  # one NaN bit pattern
        f = tl.where(f == 0.0, 0.0, f)  # -0.0 ties with 0.0
        bits = f.to(tl.int32, bitcast=True)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)
    else:
        return v.to(tl.int32)


@triton.jit
def sort_kernel(
    x, ids, vals_out, idx_out, N, seg, nseg, stride, K,
    HAS_IDS: tl.constexpr, DESC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (row, s) sorts elements [s*seg, s*seg+seg) of row ``row`` and writes the
    first K: values and indices (through ``ids`` when set: an earlier stage's indices;
    an index < 0 marks an empty slot)."""
    pid = tl.program_id(0)
    row = pid // nseg
    start = (pid % nseg) * seg
    o = tl.arange(0, BLOCK)
    pos = start + o
    m = (o < seg) & (pos < N)
    base = x + row.to(tl.int64) * stride
    if HAS_IDS:
        idv = tl.load(ids + row.to(tl.int64) * stride + pos, mask=m, other=-1)
        m = m & (idv >= 0)
    key = _key32(tl.load(base + pos, mask=m, other=0))
    if DESC:
        key = ~key
    key = tl.where(m, key, 0x7FFFFFFF)  # empty slots sort last (their o is larger)
    comp = tl.sort((key.to(tl.int64) << 32) | o.to(tl.int64))
    loc = (comp & 0xFFFFFFFF).to(tl.int32)
    src = start + loc
    ok = (loc < seg) & (src < N) & (o < K)
    if HAS_IDS:
        idx = tl.load(ids + row.to(tl.int64) * stride + src, mask=ok, other=-1)
        valid = ok & (idx >= 0)
    else:
        valid = ok
        idx = tl.where(valid, src.to(tl.int64), -1)
    v = tl.load(base + src, mask=valid)
    out_off = pid.to(tl.int64) * K + o
    tl.store(vals_out + out_off, v, mask=o < K)
    tl.store(idx_out + out_off, idx, mask=o < K)


def _sort_rows(x2d: torch.Tensor, k: int, desc: bool, ids: torch.Tensor | None = None, seg: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of contiguous (R, N) ``x2d`` in segments of ``seg``; first k of each."""
    R, N = x2d.shape
    seg = seg or N
    nseg = triton.cdiv(N, seg)
    block = triton.next_power_of_2(max(seg, 1))
    vals = torch.empty((R, nseg * k), dtype=x2d.dtype, device=x2d.device)
    idx = torch.empty((R, nseg * k), dtype=torch.int64, device=x2d.device)
    if R * nseg and k:
        sort_kernel[(R * nseg,)](
            x2d, ids if ids is not None else x2d, vals, idx, N, seg, nseg, N, k,
            HAS_IDS=ids is not None, DESC=desc, BLOCK=block, num_warps=4 if block <= 1024 else 8,
        )
    return vals, idx


def _rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    nd = max(x.dim(), 1)
    if not -nd <= dim < nd:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], but got {dim})")
    dim %= nd
    xt = x.reshape(1) if x.dim() == 0 else x.movedim(dim, -1)
    return xt.contiguous().reshape(-1, xt.shape[-1]), dim


def _back(t2d: torch.Tensor, x: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    if x.dim() == 0:
        return t2d.reshape(())
    shape = list(x.movedim(dim, -1).shape[:-1]) + [k]
    return t2d.reshape(shape).movedim(-1, dim).contiguous()


# -- sort --------------------------------------------------------------------------------
def _sort(x: torch.Tensor, stable: bool | None, dim: int, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[dim] if x.dim() else 1
    if x.dtype not in KEY_DTYPES or n > MAX_SORT or x.numel() == 0:
        return aten_fallback("sort.stable")(x, stable=stable, dim=dim, descending=descending)
    rows, d = _rows(x, dim)
    vals, idx = _sort_rows(rows, n, descending)
    return _back(vals, x, d, n), _back(idx, x, d, n)


@register("sort.stable")
def sort_stable(x: torch.Tensor, *, stable: bool | None = None, dim: int = -1, descending: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _sort(x, stable, dim, descending)


@register("sort")
def sort(x: torch.Tensor, dim: int = -1, descending: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _sort(x, False, dim, descending)


# -- topk --------------------------------------------------------------------------------
@register("topk")
def topk(x: torch.Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[dim] if x.dim() else 1
    if not 0 <= k <= n:
        raise RuntimeError("selected index k out of range")
    seg = MAX_SORT // 2
    # long rows: stages keep the top k of each segment until one segment holds the rest
    if x.dtype not in KEY_DTYPES or x.numel() == 0 or k == 0 or (n > MAX_SORT and 2 * k > seg):
        return aten_fallback("topk")(x, k, dim, largest, sorted)
    rows, d = _rows(x, dim)
    vals, ids = rows, None
    while vals.shape[1] > MAX_SORT:
        vals, ids = _sort_rows(vals, k, largest, ids, seg)
    vals, idx = _sort_rows(vals, k, largest, ids)
    return _back(vals, x, d, k), _back(idx, x, d, k)


# -- unique ------------------------------------------------------------------------------
@triton.jit
def unique_kernel(sv, perm, uniq, inverse, counts, num, n, HAS_PERM: tl.constexpr, BLOCK: tl.constexpr):
    """One program over the sorted values ``sv`` (and their source positions ``perm``)."""
    o = tl.arange(0, BLOCK)
    m = o < n
    v = tl.load(sv + o, mask=m)
    prev = tl.load(sv + o - 1, mask=m & (o > 0))
    if v.dtype.is_floating():  # compare in fp32/fp64, never on bf16 directly
        if v.dtype.primitive_bitwidth < 64:
            v = v.to(tl.float32)
            prev = prev.to(tl.float32)
    first = m & ((o == 0) | (v != prev))
    gid = tl.cumsum(first.to(tl.int32), axis=0) - 1
    tl.store(uniq + gid, v, mask=first)
    tl.atomic_add(counts + gid, 1, mask=m)
    if HAS_PERM:
        p = tl.load(perm + o, mask=m, other=0)
        tl.store(inverse + p, gid.to(tl.int64), mask=m)
    tl.store(num + o * 0, tl.sum(first.to(tl.int64), axis=0), mask=o == 0)


@triton.jit
def sort_values_kernel(x, out, n, BLOCK: tl.constexpr):
    """Values-only ascending sort of one row (any dtype: no index rides along)."""
    o = tl.arange(0, BLOCK)
    m = o < n
    v = tl.load(x + o, mask=m, other=tl.load(x))
    if v.dtype.is_floating():
        if v.dtype.primitive_bitwidth < 64:
            v = v.to(tl.float32)
    v = tl.where(m, v, tl.max(v, axis=0))  # empty slots take the max: they sort last
    tl.store(out + o, tl.sort(v), mask=m)


@register("_unique2")
def unique2(x: torch.Tensor, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.numel()
    if n == 0 or n > MAX_SORT or (return_inverse and x.dtype not in KEY_DTYPES) or x.dtype == torch.bool or x.is_complex():
        return aten_fallback("_unique2")(x, sorted, return_inverse, return_counts)
    flat = x.reshape(-1).contiguous()
    block = triton.next_power_of_2(n)
    warps = 4 if block <= 1024 else 8
    if return_inverse:
        sv, perm = _sort_rows(flat.reshape(1, n), n, False)
    else:
        sv, perm = torch.empty_like(flat), None
        sort_values_kernel[(1,)](flat, sv, n, BLOCK=block, num_warps=warps)
    uniq = torch.empty(n, dtype=x.dtype, device=x.device)
    inverse = torch.empty(x.shape if return_inverse else (0,), dtype=torch.int64, device=x.device)
    counts = torch.zeros(n, dtype=torch.int64, device=x.device)
    num = torch.empty(1, dtype=torch.int64, device=x.device)
    unique_kernel[(1,)](sv, perm if perm is not None else sv, uniq, inverse, counts, num, n, HAS_PERM=return_inverse, BLOCK=block, num_warps=warps)
    u = int(num.item())  # the output size: one host sync, as in aten
    counts = counts[:u] if return_counts else counts.new_empty(0)
    return uniq[:u], inverse, counts
