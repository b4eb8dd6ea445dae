"""sort, topk and unique (_unique2): a bitonic sort in registers; longer rows by radix
passes or merged across chunks.

Short rows (up to MAX_SORT elements of a 32-bit-or-narrower dtype): one program sorts one
row in registers (tl.sort). Each value becomes an int32 key whose signed order is the
value order (floats: flip the non-sign bits of negatives; NaN canonical, so it sorts last;
-0.0 == 0.0); the key goes in the high half of an int64 and the element's position in the
low half, so one ascending sort of int64 is a *stable* sort that carries the indices
(descending: the key is bit-inverted).

Large sorts (RADIX_NUMEL_PER_PASS elements a pass and up, or any size in a CUDA-graph
capture) of those dtypes: an LSD radix sort of the same int32 keys, 4 bits a pass (only
the bits that can differ: 4 passes for bf16), each pass a stable counting scatter; the
last pass gathers the values through the positions. A long sort's launches are replayed
for the next sort of the same signature (tuner.launch.Replay).

Smaller long rows, and 64-bit dtypes (int64 / float64, whose int64 key leaves no room for
the position): each chunk of a row is sorted in registers (32-bit keys as above; 64-bit
keys by a bitonic network over (key, position) pairs), then merge passes double the
sorted run length until one run holds the row. A merge places each element by a binary
search of the partner run (left run: partner keys < its key; right run: <=), so equal
keys keep their order.

topk of a row longer than one program's sort keeps the top k of each segment, stage by
stage, until one program sorts what is left. Its first stage, where the row has at least
k segments, keeps only keys at least as good as the k-th best of the segments' best keys
(a bound no better than the row's k-th best): for sampling logits a few per segment,
written in order without a sort; later stages move a segment's filled slots the same way
where it has at most k.

Every path is stable, as torch's stable sort; NaN sorts last (first when descending), as
in torch.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from flag_gems.registry import aten_fallback, register
from flag_gems.utils import cdiv, next_power_of_2
from tuner import libtuner
from tuner.libtuner import capturing_graph
from tuner.launch import Replay, direct_cache

log = logging.getLogger(__name__)

MAX_SORT = 4096  # elements one program sorts in registers (32-bit keys packed with positions)
CHUNK_WIDE = 1024  # elements one program sorts in registers as (64-bit key, position) pairs
KEY_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool}
WIDE_DTYPES = {torch.int64, torch.float64}
SORT_DTYPES = KEY_DTYPES | WIDE_DTYPES
_BLOCK_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(256, 2), (512, 4), (1024, 4), (2048, 8)]]
_BLOCK_DEFAULT = triton.Config({"BLOCK": 1024}, num_warps=4)


_HAS_TOPK = hasattr(tl, "topk")  # Triton's bitonic top-k (a partial sort), where it has one


def _follower_warps(block: int) -> int:
    return 4 if block <= 1024 else 8


@triton.jit
def _f32_bits(v):
    """The fp32 bit pattern of a float ``v``; bf16 by its bits, as fp32's top half (the
    interpreter's bf16 conversion flushes subnormals to zero)."""
    if v.dtype == tl.bfloat16:
        return v.to(tl.int16, bitcast=True).to(tl.int32) << 16
    else:
        return v.to(tl.float32).to(tl.int32, bitcast=True)


@triton.jit
def _key32(v):
    """An int32 whose signed order is the order of ``v``. Floats: from their fp32 bits
    alone (no float compare, which may flush a subnormal to zero)."""
    if v.dtype.is_floating():
        bits = _f32_bits(v)
        mag = bits & 0x7FFFFFFF
        bits = tl.where(mag > 0x7F800000, 0x7FC00000, bits)  # one NaN bit pattern
        bits = tl.where(mag == 0, 0, bits)  # -0.0 ties with 0.0
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)
    else:
        return v.to(tl.int32)


@triton.jit
def _best_first(v, DESC: tl.constexpr):
    """``_key32(v)``, bit-inverted for a descending order: the smallest key is the best."""
    key = _key32(v)
    if DESC:
        key = ~key
    return key


@triton.jit
def _segment(N, seg, nseg, BLOCK: tl.constexpr):
    """Program (row, s) of a launch over segments of ``seg`` of rows of N: the program id,
    the row, the segment's start, its positions in the row and which of them are in it."""
    pid = tl.program_id(0)
    o = tl.arange(0, BLOCK)
    start = (pid % nseg) * seg
    pos = start + o
    return pid, pid // nseg, start, pos, (o < seg) & (pos < N)


@triton.jit
def segment_best_kernel(x, best, N, seg, nseg, stride, DESC: tl.constexpr, BLOCK: tl.constexpr):
    """best[row, s]: the smallest key (see sort_kernel: bit-inverted when DESC, so the
    best element's) of elements [s*seg, s*seg+seg) of row ``row``."""
    pid, row, _, pos, m = _segment(N, seg, nseg, BLOCK)
    key = _best_first(tl.load(x + row.to(tl.int64) * stride + pos, mask=m, other=0), DESC)
    tl.store(best + pid, tl.min(tl.where(m, key, 0x7FFFFFFF), axis=0))


@triton.jit
def row_threshold_kernel(best, thresh, nseg, K, NSEG: tl.constexpr):
    """thresh[row]: the K-th smallest of the row's nseg segment best keys (NSEG >= nseg
    >= K). They are nseg different elements of the row, so it is no better than the
    row's K-th best key: only keys at least as good can be in the row's top K."""
    row = tl.program_id(0)
    b = tl.arange(0, NSEG)
    bests = tl.sort(tl.load(best + row * nseg + b, mask=b < nseg, other=0x7FFFFFFF))
    tl.store(thresh + row, tl.sum(tl.where(b == K - 1, bests, 0), axis=0))


@triton.jit
def sort_kernel(
    x, ids, thresh, vals_out, idx_out, N, seg, nseg, stride, K,
    HAS_IDS: tl.constexpr, DESC: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, FILTER: tl.constexpr,
):
    """Program (row, s) sorts elements [s*seg, s*seg+seg) of row ``row`` and writes the
    first K: values and indices (through ``ids`` when set: an earlier stage's indices;
    an index < 0 marks an empty slot). KP < BLOCK (a power of two >= K): only the first
    KP are ordered, by a bitonic top-k, which discards half of the rest at each merge.

    A top-k's stages before its last (FILTER): with ``thresh`` (row_threshold_kernel) only
    keys at least as good as the row's threshold are candidates, without it every filled
    slot is. Where a segment holds at most K candidates (sampling logits: a few), they are
    written in their order, the rest of its K slots empty, and no sort runs."""
    pid, row, start, pos, m = _segment(N, seg, nseg, BLOCK)
    base = x + row.to(tl.int64) * stride
    if HAS_IDS:
        idv = tl.load(ids + row.to(tl.int64) * stride + pos, mask=m, other=-1)
        m = m & (idv >= 0)
    else:
        idv = pos.to(tl.int64)
    xv = tl.load(base + pos, mask=m, other=0)
    key = _best_first(xv, DESC)
    key = tl.where(m, key, 0x7FFFFFFF)  # empty slots sort last (their o is larger)
    if FILTER:
        cand = m
        if thresh is not None:
            cand = cand & (key <= tl.load(thresh + row))
        n_cand = tl.sum(cand.to(tl.int32), axis=0)
        if n_cand <= K:
            slot = pid.to(tl.int64) * K + tl.cumsum(cand.to(tl.int32), axis=0) - 1
            tl.store(vals_out + slot, xv, mask=cand)
            tl.store(idx_out + slot, idv, mask=cand)
            e = tl.arange(0, KP)
            tl.store(idx_out + pid.to(tl.int64) * K + e, tl.full((KP,), -1, tl.int64), mask=(e >= n_cand) & (e < K))
        else:
            _top_of_segment(ids, vals_out, idx_out, N, seg, stride, K, pid, row, start, base, key, HAS_IDS, BLOCK, KP)
    else:
        _top_of_segment(ids, vals_out, idx_out, N, seg, stride, K, pid, row, start, base, key, HAS_IDS, BLOCK, KP)


@triton.jit
def _top_of_segment(ids, vals_out, idx_out, N, seg, stride, K, pid, row, start, base, key,
                    HAS_IDS: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr):
    """sort_kernel's sort of one segment's keys (see there), its first K written."""
    o = tl.arange(0, BLOCK)
    comp = (key.to(tl.int64) << 32) | o.to(tl.int64)
    if KP < BLOCK:  # the KP smallest, ascending (tl.topk keeps the largest, descending)
        comp = ~tl.topk(~comp, KP)
    else:
        comp = tl.sort(comp)
    o = tl.arange(0, KP)
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


def _sort_rows(x2d: torch.Tensor, k: int, desc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of contiguous (R, N) ``x2d`` in one program; its first k (a top-k
    where k is under the row)."""
    R, N = x2d.shape
    vals = torch.empty(size=(R, k), dtype=x2d.dtype, device=x2d.device)
    idx = torch.empty(size=(R, k), dtype=torch.int64, device=x2d.device)
    _launch_sort(sort_kernel.__getitem__, x2d, None, None, vals, idx, k, desc, N, False)
    return vals, idx


def _launch_sort(launch: Callable[[tuple], Callable[..., Any]], x2d: torch.Tensor, ids: torch.Tensor | None, thresh: torch.Tensor | None,
                 vals: torch.Tensor, idx: torch.Tensor, k: int, desc: bool, seg: int, compact: bool) -> None:
    """sort_kernel over the rows of contiguous (R, N) ``x2d`` in segments of ``seg``, the
    first k of each into ``vals`` / ``idx`` (R, nseg * k); ``thresh``, ``compact``: a
    top-k's stage before its last (see sort_kernel). ``launch(grid)`` is the launch
    (``sort_kernel[grid]``, or a Replay's).

    Not tuned: BLOCK is the segment rounded up to a power of two (the whole segment sits
    in registers), fully determined by the shape, and num_warps follows it."""
    R, N = x2d.shape
    nseg = cdiv(N, seg)
    block = next_power_of_2(max(seg, 1))
    if R * nseg and k:
        kp = min(max(next_power_of_2(k), 2), block) if _HAS_TOPK else block  # (Triton 3.6's top-k needs k >= 2)
        launch((R * nseg,))(
            x2d, ids, thresh, vals, idx, N, seg, nseg, N, k,
            HAS_IDS=ids is not None, DESC=desc, BLOCK=block, KP=kp, FILTER=compact or thresh is not None,
            num_warps=_follower_warps(block),
        )


# -- long rows (small sorts and 64-bit keys): chunk sort + merge passes -----------------
@triton.jit
def _key64(v):
    """An int64 whose signed order is the order of int64 / float64 ``v`` (NaN last,
    -0.0 == 0.0): the merge sort's keys of 64-bit dtypes."""
    if v.dtype.is_floating():
        f = tl.where(v != v, float("nan"), v)
        f = tl.where(f == 0.0, 0.0, f)
        bits = f.to(tl.int64, bitcast=True)
        return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    else:
        return v.to(tl.int64)


@triton.jit
def _indicator(NDIM: tl.constexpr, j: tl.constexpr):
    ar = tl.arange(0, 2)
    return tl.reshape(ar, [1] * (NDIM - j - 1) + [2] + [1] * j)


@triton.jit
def _swap_pairs(k, i, flip, s: tl.constexpr, NDIM: tl.constexpr):
    """Compare-and-swap of (key, position) pairs along the s-th innermost hypercube dim."""
    pk = k ^ tl.xor_sum(k, NDIM - 1 - s, True)  # the partner's key
    pi = i ^ tl.xor_sum(i, NDIM - 1 - s, True)
    right = _indicator(NDIM, s)
    greater = (k > pk) | ((k == pk) & (i > pi))
    swap = greater != (flip ^ right).to(tl.int1)
    return tl.where(swap, pk, k), tl.where(swap, pi, i)


@triton.jit
def _merge_pairs(k, i, stage: tl.constexpr, ALTERNATE: tl.constexpr, NDIM: tl.constexpr):
    if ALTERNATE:
        flip = _indicator(NDIM, stage)
    else:
        flip = 0
    for j in tl.static_range(stage):
        k, i = _swap_pairs(k, i, flip, stage - 1 - j, NDIM)
    return k, i


@triton.jit
def _sort_pairs(k, i, NDIM: tl.constexpr):
    """Ascending bitonic sort of 2**NDIM (key, position) pairs, ordered by key then position."""
    if NDIM > 0:
        hk = tl.reshape(k, [2] * NDIM)
        hi = tl.reshape(i, [2] * NDIM)
        for stage in tl.static_range(1, NDIM + 1):
            hk, hi = _merge_pairs(hk, hi, stage, stage < NDIM, NDIM)
        k = tl.reshape(hk, [1 << NDIM])
        i = tl.reshape(hi, [1 << NDIM])
    return k, i


@triton.jit
def sort_chunk_kernel(
    x, keys, ids, vals_out, idx_out, N, nchunk,
    DESC: tl.constexpr, WIDE: tl.constexpr, FINAL: tl.constexpr, CHUNK: tl.constexpr, LOG_CHUNK: tl.constexpr,
):
    """Program (row, c) sorts elements [c*CHUNK, c*CHUNK+CHUNK) of row ``row`` of the
    contiguous (R, N) ``x``: their keys and row positions go to ``keys`` / ``ids``
    (FINAL, the row is one chunk: the values and positions go to the outputs)."""
    pid = tl.program_id(0)
    row = (pid // nchunk).to(tl.int64)
    start = (pid % nchunk) * CHUNK
    o = tl.arange(0, CHUNK)
    m = start + o < N
    v = tl.load(x + row * N + start + o, mask=m, other=0)
    if WIDE:
        key = _key64(v)
        if DESC:
            key = ~key
        key = tl.where(m, key, 0x7FFFFFFFFFFFFFFF)  # empty slots sort last (their o is larger)
        key, loc = _sort_pairs(key, o, LOG_CHUNK)
    else:
        k32 = tl.where(m, _best_first(v, DESC), 0x7FFFFFFF)
        comp = tl.sort((k32.to(tl.int64) << 32) | o.to(tl.int64))
        key = comp >> 32  # arithmetic: the int32 key, sign-extended
        loc = (comp & 0xFFFFFFFF).to(tl.int32)
    src = (start + loc).to(tl.int64)
    out = row * N + start + o
    if FINAL:
        tl.store(vals_out + out, tl.load(x + row * N + src, mask=m), mask=m)
        tl.store(idx_out + out, src, mask=m)
    else:
        tl.store(keys + out, key, mask=m)
        tl.store(ids + out, src, mask=m)


@libtuner(configs=_BLOCK_CONFIGS, key=["N"], strategy=["log"], default=_BLOCK_DEFAULT)
@triton.jit
def sort_merge_kernel(
    keys, ids, keys_out, ids_out, x, vals_out, idx_out, N, L, STEPS,
    FINAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """Merge sorted runs of length L of each row of (R, N) into runs of 2L: the element at
    p of run r goes to its place in r's pair, found by a binary search of the partner run
    (STEPS = bits of L). The last pass writes values (gathered from ``x``) and indices."""
    nblk = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    row = (pid // nblk).to(tl.int64)
    p = (pid % nblk).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = p < N
    base = row * N
    k = tl.load(keys + base + p, mask=m, other=0)
    r = p // L
    left = (r % 2) == 0
    pstart = (r ^ 1) * L
    plen = tl.minimum(tl.maximum(N - pstart, 0), L)
    lo = tl.zeros([BLOCK], dtype=tl.int64)
    hi = tl.where(m, plen, 0)
    for _ in range(STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        pk = tl.load(keys + base + pstart + mid, mask=active, other=0)
        before = tl.where(left, pk < k, pk <= k)  # the partner element goes before this one
        lo = tl.where(active & before, mid + 1, lo)
        hi = tl.where(active & ~before, mid, hi)
    dst = base + (r // 2) * (2 * L) + (p - r * L) + lo
    src = tl.load(ids + base + p, mask=m, other=0)
    if FINAL:
        tl.store(vals_out + dst, tl.load(x + base + src, mask=m), mask=m)
        tl.store(idx_out + dst, src, mask=m)
    else:
        tl.store(keys_out + dst, k, mask=m)
        tl.store(ids_out + dst, src, mask=m)


def _sort_long(src: torch.Tensor, out_vals: torch.Tensor, idx: torch.Tensor, desc: bool) -> None:
    """Stable sort of each row of contiguous (R, N) ``src`` into ``out_vals`` / ``idx``:
    chunks in registers, then merge passes. Any length, any SORT_DTYPES dtype (bool as
    uint8)."""
    R, N = src.shape
    wide = src.dtype in WIDE_DTYPES
    chunk = min(CHUNK_WIDE if wide else MAX_SORT, next_power_of_2(N))
    nchunk = cdiv(N, chunk)
    final = nchunk == 1
    keys = ids = keys2 = ids2 = idx  # placeholders when one chunk is the row
    if not final:
        keys = torch.empty(size=(R, N), dtype=torch.int64, device=src.device)
        ids = torch.empty(size=(R, N), dtype=torch.int64, device=src.device)
        keys2, ids2 = torch.empty_like(keys), torch.empty_like(ids)
    tensors = (src, out_vals, idx, keys, ids, keys2, ids2)
    sig = ("merge", R, N, src.dtype, desc, not src.data_ptr() & 15, src.get_device())
    if _replayed(sig, tensors):
        return
    plan = Replay(tensors)
    warps = 4 if chunk <= 1024 else 8
    plan.launch(
        sort_chunk_kernel, (R * nchunk,), src, keys, ids, out_vals, idx, N, nchunk,
        DESC=desc, WIDE=wide, FINAL=final, CHUNK=chunk, LOG_CHUNK=chunk.bit_length() - 1, num_warps=warps,
    )
    L = chunk
    while L < N:
        last = 2 * L >= N
        grid = lambda META: (R * cdiv(N, META["BLOCK"]),)
        plan.launch(sort_merge_kernel, grid, keys, ids, keys2, ids2, src, out_vals, idx, N, L, L.bit_length(), FINAL=last)
        keys, ids, keys2, ids2 = keys2, ids2, keys, ids
        L *= 2
    _file(sig, plan)


# -- replays: a long sort's launches, relaunched for the next sort of the same signature ---
_REPLAYS: dict = direct_cache()


def _replayed(sig: tuple, tensors: tuple) -> bool:
    plan = _REPLAYS.get(sig)
    return plan is not None and plan(tensors)


def _file(sig: tuple, plan: Replay) -> None:
    if plan.complete:
        if len(_REPLAYS) >= 4096:
            _REPLAYS.clear()
        _REPLAYS[sig] = plan


# -- large sorts of 32-bit-or-narrower keys: LSD radix sort ---------------------------------
# 4 bits a pass; 64-bit keys stay on the merge sort (their 16 passes measured slower)
RADIX_BLOCK = 256  # elements one program ranks per pass (512 for rows over RADIX_LONG_ROW)
# Eager, a small radix sort is host-bound (3 launches a pass): it takes sorts of at least
# this many elements per pass (fp32: 8 passes, 2M elements; bf16: 4, 1M), measured where it
# starts to beat the merge sort's 4 to 7 launches. In a CUDA-graph capture, where a launch
# costs nothing on replay, every sort the radix sort can take takes it: it has the least
# device time at every size measured (docs/performance.md).
RADIX_NUMEL_PER_PASS = 250_000  # (64x32000 fp32 logits, 2.05M elements, take it)
RADIX_LONG_ROW = 1 << 20  # past it a row has so many blocks that the per-digit scan is long
# The digit shifts a sort must visit, by dtype: the others are the same for every element
# (bf16 / fp16 keys are fp32 bit patterns with zero low bits) or, for small integers, the
# sign extension that the top digit (28) already orders.
RADIX_SHIFTS = {
    torch.float32: list(range(0, 32, 4)), torch.int32: list(range(0, 32, 4)),
    torch.bfloat16: [16, 20, 24, 28], torch.float16: [12, 16, 20, 24, 28],
    torch.int16: [0, 4, 8, 12, 28], torch.int8: [0, 4, 28], torch.uint8: [0, 4], torch.bool: [0],
}


@triton.jit
def _radix_digit(x, keys, base, o, m, shift, FIRST: tl.constexpr, DESC: tl.constexpr):
    """Keys at row positions ``o`` (FIRST: made from the values) and their digit at
    ``shift``; the top digit's sign bit is turned, so signed keys sort as unsigned."""
    if FIRST:
        key = _best_first(tl.load(x + base + o, mask=m, other=0), DESC)
    else:
        key = tl.load(keys + base + o, mask=m, other=0)
    return key, ((key >> shift) & 15) ^ tl.where(shift == 28, 8, 0)


@triton.jit
def radix_count_kernel(x, keys, counts, totals, N, nblk, shift, FIRST: tl.constexpr, DESC: tl.constexpr, BLOCK: tl.constexpr):
    """counts[row, d, b]: how many keys of block b of the row have digit d; totals[row, d]
    (zeroed): how many in the row."""
    pid = tl.program_id(0)
    row = (pid // nblk).to(tl.int64)
    b = pid % nblk
    o = b * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    _, d = _radix_digit(x, keys, row * N, o, m, shift, FIRST, DESC)
    r = tl.arange(0, 16)
    # empty slots (in a row's last block) count as digit 0: take them off
    hist = tl.histogram(tl.where(m, d, 0), 16) - tl.where(r == 0, BLOCK - tl.sum(m.to(tl.int32), axis=0), 0)
    tl.store(counts + (row * 16 + r) * nblk + b, hist)
    tl.atomic_add(totals + row * 16 + r, hist, sem="relaxed")


@triton.jit
def radix_scan_kernel(counts, totals, offsets, nblk, CH: tl.constexpr):
    """offsets[row, d, b]: where block b's keys of digit d start in the row (the row's keys
    of smaller digits, then digit d's of earlier blocks). Program (row, d)."""
    row = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1)
    r = tl.arange(0, 16)
    carry = tl.sum(tl.where(r < d, tl.load(totals + row * 16 + r), 0), axis=0)
    col = (row * 16 + d) * nblk
    c = tl.arange(0, CH)
    for s in range(0, nblk, CH):
        ok = s + c < nblk
        t = tl.load(counts + col + s + c, mask=ok, other=0)
        tl.store(offsets + col + s + c, tl.cumsum(t, axis=0) - t + carry, mask=ok)
        carry += tl.sum(t, axis=0)


@triton.jit
def radix_scatter_kernel(
    x, keys, ids, offsets, keys_out, ids_out, vals_out, idx_out, N, nblk, shift,
    FIRST: tl.constexpr, LAST: tl.constexpr, DESC: tl.constexpr, BLOCK: tl.constexpr, FIELD: tl.constexpr,
):
    """One pass: each key goes to its digit's start for its block plus its rank among the
    block's keys of that digit (stable). The last pass writes values and indices."""
    pid = tl.program_id(0)
    row = (pid // nblk).to(tl.int64)
    b = pid % nblk
    o = b * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    base = row * N
    key, d = _radix_digit(x, keys, base, o, m, shift, FIRST, DESC)
    # rank: an inclusive count per digit, digits packed PER to an int32 in fields of FIELD
    # bits (one scan per word). Counts are mod 2**FIELD >= BLOCK, so each rank (< BLOCK) is
    # exact: only a block of one digit overflows, at its last element, after all others.
    PER: tl.constexpr = 32 // FIELD
    group = d // PER
    field = (d % PER) * FIELD
    one = tl.where(m, tl.full([BLOCK], 1, tl.int32) << field, 0)
    seen = tl.zeros([BLOCK], dtype=tl.int32)
    for g in tl.static_range((16 + PER - 1) // PER):
        seen = tl.where(group == g, tl.cumsum(tl.where(group == g, one, 0), axis=0), seen)
    rank = ((seen >> field) - 1) & ((1 << FIELD) - 1)
    dst = base + tl.load(offsets + (row * 16 + d) * nblk + b, mask=m, other=0) + rank
    if FIRST:
        src = o
    else:
        src = tl.load(ids + base + o, mask=m, other=0)
    if LAST:
        tl.store(vals_out + dst, tl.load(x + base + src, mask=m), mask=m)
        tl.store(idx_out + dst, src.to(tl.int64), mask=m)
    else:
        tl.store(keys_out + dst, key, mask=m)
        tl.store(ids_out + dst, src.to(tl.int32), mask=m)


def _sort_radix(src: torch.Tensor, out_vals: torch.Tensor, idx: torch.Tensor, desc: bool, shifts: list[int]) -> None:
    """Stable sort of each row of contiguous (R, N) ``src`` into ``out_vals`` / ``idx`` by
    LSD radix passes over its keys at ``shifts`` (its dtype's RADIX_SHIFTS): count each
    block's digits, scan them per row and digit, scatter. Positions ride along as int32,
    so a row holds under 2**31 elements.

    Not tuned: the three kernels of a pass must share the block (the counts are per
    block), so a LibTuner of one of them alone would mix sizes; the sizes were measured
    (docs/performance.md)."""
    R, N = src.shape
    block = min(RADIX_BLOCK * (2 if N > RADIX_LONG_ROW else 1), next_power_of_2(N))
    nblk = cdiv(N, block)
    dev = src.device
    keys = [torch.empty(size=(R, N), dtype=torch.int32, device=dev) for _ in range(2)]
    ids = [torch.empty(size=(R, N), dtype=torch.int32, device=dev) for _ in range(2)]
    counts = torch.empty(size=(R, 16, nblk), dtype=torch.int32, device=dev)
    offsets = torch.empty_like(counts)
    totals = torch.zeros(size=(len(shifts), R, 16), dtype=torch.int32, device=dev)  # one zeroing for all passes
    tot = totals.unbind(0)
    tensors = (src, out_vals, idx, *keys, *ids, counts, offsets, *tot)
    sig = ("radix", R, N, src.dtype, desc, not src.data_ptr() & 15, src.get_device())
    if _replayed(sig, tensors):
        return
    plan = Replay(tensors)
    warps = max(block // 128, 1)
    for p, shift in enumerate(shifts):
        first = p == 0
        kin, kout, iin, iout = keys[p % 2], keys[1 - p % 2], ids[p % 2], ids[1 - p % 2]
        plan.launch(radix_count_kernel, (R * nblk,), src, kin, counts, tot[p], N, nblk, shift, FIRST=first, DESC=desc, BLOCK=block, num_warps=warps)
        plan.launch(radix_scan_kernel, (R, 16), counts, tot[p], offsets, nblk, CH=min(1024, next_power_of_2(nblk)), num_warps=4)
        plan.launch(
            radix_scatter_kernel, (R * nblk,), src, kin, iin, offsets, kout, iout, out_vals, idx, N, nblk, shift,
            FIRST=first, LAST=p == len(shifts) - 1, DESC=desc, BLOCK=block, FIELD=block.bit_length() - 1, num_warps=warps,
        )
    _file(sig, plan)


def _sort_rows_long(x2d: torch.Tensor, desc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of rows too long for one program: radix passes for 32-bit-or-narrower
    keys once the sort is large enough that its 3 launches a pass cost less than the
    merge sort's device time (RADIX_NUMEL_PER_PASS), or in a CUDA-graph capture; the merge
    sort otherwise, and for 64-bit keys (whose 16 radix passes measured slower)."""
    R, N = x2d.shape
    vals = torch.empty(size=(R, N), dtype=x2d.dtype, device=x2d.device)
    idx = torch.empty(size=(R, N), dtype=torch.int64, device=x2d.device)
    if R * N == 0:
        return vals, idx
    # bool sorts as uint8 (its keys are 0 and 1)
    src = x2d.view(torch.uint8) if x2d.dtype == torch.bool else x2d
    out_vals = vals.view(torch.uint8) if x2d.dtype == torch.bool else vals
    shifts = RADIX_SHIFTS.get(x2d.dtype)
    if shifts and N < 2**31 and (R * N >= RADIX_NUMEL_PER_PASS * len(shifts) or capturing_graph()):  # (int32 positions)
        _sort_radix(src, out_vals, idx, desc, shifts)
    else:
        _sort_long(src, out_vals, idx, desc)
    return vals, idx


def _floor_pow2(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


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
    if x.dtype not in SORT_DTYPES or x.numel() == 0:
        return aten_fallback("sort.stable")(x, stable=stable, dim=dim, descending=descending)
    rows, d = _rows(x, dim)
    if x.dtype in KEY_DTYPES and n <= MAX_SORT:
        vals, idx = _sort_rows(rows, n, descending)
    else:
        vals, idx = _sort_rows_long(rows, descending)
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
    if x.dtype not in SORT_DTYPES or x.numel() == 0 or k == 0:
        return aten_fallback("topk")(x, k, dim, largest, sorted)
    rows, d = _rows(x, dim)
    if _selects(x, n, k):
        vals, idx = _topk_select(rows, k, largest)
        return _back(vals, x, d, k), _back(idx, x, d, k)
    if x.dtype in WIDE_DTYPES or (n > MAX_SORT and 2 * k > seg):  # a full sort, cut to k
        vals, idx = _sort_rows_long(rows, largest)
        return _back(vals[:, :k], x, d, k), _back(idx[:, :k], x, d, k)
    vals, idx = _topk_rows(rows, k, largest)
    return _back(vals, x, d, k), _back(idx, x, d, k)


def _topk_stages(n: int, k: int) -> tuple[int | None, list[int]]:
    """A top-k of rows of n: the first stage's segment where it takes a row threshold
    (else None), and every stage's segment (the last: the whole rest of a row).

    Stages keep the top k of each segment until one segment holds the rest. The first
    keeps only keys that can be in the top k (a row's threshold: at least k segments of
    at least k elements, at most MAX_SORT of them); the later ones move the filled slots
    of a segment that has at most k without sorting them. Segments are MAX_SORT / 2 while
    a row is wider than one program's sort, then, after a first stage, MAX_SORT / 8 while
    wide enough to spread over several programs a row (a final sort of a whole row in one
    program is the slowest step where rows are few). A row one program can sort takes
    that one sort."""
    seg, small = MAX_SORT // 2, MAX_SORT // 8
    first, segs, width = None, [], n
    if n > MAX_SORT:
        f = min(seg, _floor_pow2(n // k))
        if f >= k and cdiv(n, f) <= MAX_SORT:
            first, width = f, cdiv(n, f) * k
            segs.append(f)
    while width > MAX_SORT or (segs and width >= 4 * small and 4 * k <= small):
        s = seg if width > MAX_SORT else small
        segs.append(s)
        width = cdiv(width, s) * k
    return first, segs + [width]


def _filed_sort(plan: Replay) -> Callable[[tuple], Callable[..., Any]]:
    """``sort_kernel[grid]`` as a launch filed in ``plan`` (what _launch_sort takes)."""
    return lambda grid: functools.partial(plan.launch, sort_kernel, grid)


def _topk_rows(rows: torch.Tensor, k: int, desc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of each row of contiguous (R, n) ``rows`` by sort_kernel stages (see
    _topk_stages). Every buffer is allocated first, so that a repeat of the signature
    relaunches the filed launches (tuner.launch.Replay): a sampling step's top-k is one."""
    R, n = rows.shape
    dev = rows.device
    first, segs = _topk_stages(n, k)
    outs, w = [], n
    for s in segs:
        w = cdiv(w, s) * k
        outs.append((torch.empty(size=(R, w), dtype=rows.dtype, device=dev), torch.empty(size=(R, w), dtype=torch.int64, device=dev)))
    tensors = [rows, *[t for pair in outs for t in pair]]
    thresh = None
    if first is not None:
        best = torch.empty(size=(R, cdiv(n, first)), dtype=torch.int32, device=dev)
        thresh = torch.empty(size=(R,), dtype=torch.int32, device=dev)
        tensors += [best, thresh]
    sig = ("topk", R, n, rows.dtype, k, desc, not rows.data_ptr() & 15, rows.get_device())
    if _replayed(sig, tuple(tensors)):
        return outs[-1]
    plan = Replay(tensors)
    if first is not None:
        nseg = cdiv(n, first)
        block, nb = next_power_of_2(first), next_power_of_2(nseg)
        plan.launch(segment_best_kernel, (R * nseg,), rows, best, n, first, nseg, n, DESC=desc, BLOCK=block, num_warps=_follower_warps(block))
        plan.launch(row_threshold_kernel, (R,), best, thresh, nseg, k, NSEG=nb, num_warps=_follower_warps(nb))
    src, ids = rows, None
    for i, (s, (vals, idx)) in enumerate(zip(segs, outs)):
        _launch_sort(_filed_sort(plan), src, ids, thresh if i == 0 else None, vals, idx, k, desc, s, i < len(segs) - 1)
        src, ids = vals, idx
    _file(sig, plan)
    return outs[-1]


# -- topk of a large k: radix select ------------------------------------------------------
# The k-th best key of each row, found 8 bits at a time from the top: each pass
# histograms the digit of the keys that match the digits chosen so far, and the row's
# last program to finish (an atomic ticket) chooses the next digit. Where three or more
# passes follow the first (fp32, int32, fp16, int16), the keys with the k-th best's top
# digit are gathered after it and the later passes read only them. A count and a write
# pass then put the keys better than the k-th best and the first of its equals, exactly k
# a row, in slots for one program's sort: for any k up to MAX_SORT, where the threshold
# stages above grow slow from k of about 512. A 256-bin tl.histogram pass costs ~40 us at
# 64x128256 on an H200 (instruction-bound); 4-bit digits measured slower (docs/performance.md).
SELECT_SHIFTS = {  # the 8-bit digits a key's order depends on, top first: the other bits
    # are the same for keys equal in these (see RADIX_SHIFTS)
    torch.float32: (24, 16, 8, 0), torch.int32: (24, 16, 8, 0), torch.float16: (24, 16, 8),
    torch.bfloat16: (24, 16), torch.int16: (24, 8, 0), torch.int8: (24, 0), torch.uint8: (0,), torch.bool: (0,),
}
SELECT_MIN_K = 512  # smaller k take the threshold stages where the row has them (faster up to 256)
# elements a program reads (under 2**16: counts are packed 16 bits), halved (not below
# SELECT_SEG_MIN) while the rows give under 512 programs, a few per streaming multiprocessor
SELECT_SEG = 4096
SELECT_SEG_MIN = 1024
SELECT_MAX_SEGS = 4096  # segments a row may have (its last program scans their counts at once)


@triton.jit
def _select_key(x, row, N, pos, m, DESC: tl.constexpr):
    """The keys at row positions ``pos`` (best first, see sort_kernel) as unsigned order
    in int32 bits (sign bit turned), and the values."""
    xv = tl.load(x + row.to(tl.int64) * N + pos, mask=m, other=0)
    return _best_first(xv, DESC) ^ -2147483648, xv


@triton.jit
def _select_rows(scratch, row, W, PASSES: tl.constexpr):
    """A row's zeroed scratch: PASSES histograms of 256 digits, PASSES + 1 tickets (how
    many of the row's programs finished each launch), and the state: the digits of the
    row's K-th best key chosen so far (``prefix``, on the bits of ``mask``), how many
    keys rank before the keys with that prefix (``below``), and how many keys share the
    K-th best's top digit (gathered for the later passes)."""
    hist = scratch + row.to(tl.int64) * W
    tickets = hist + PASSES * 256
    state = tickets + PASSES + 1
    return hist, tickets, state


@triton.jit
def _last_of_row(tickets, nseg):
    """Whether this program is the last of its row to finish the launch (its earlier
    writes released to, and the others' acquired by, the last)."""
    return tl.atomic_add(tickets, 1, sem="acq_rel") == nseg - 1


@triton.jit
def select_hist_kernel(x, cand, scratch, N, W, seg, nseg, K, PASS: tl.constexpr, PASSES: tl.constexpr,
                       SHIFTS: tl.constexpr, GATHERED: tl.constexpr, DESC: tl.constexpr, BLOCK: tl.constexpr):
    """Histogram PASS += how many keys of this segment match the digits the earlier
    passes chose and have digit d at this pass's shift (SHIFTS: 5 bits a pass): the row's
    keys, or (GATHERED) those select_gather_kernel gathered into ``cand``. The row's last
    program then chooses this pass's digit, once for every later launch."""
    _, row, start, pos, m = _segment(N, seg, nseg, BLOCK)
    hist, tickets, state = _select_rows(scratch, row, W, PASSES)
    if GATHERED:
        limit = tl.load(state + 3)
    else:
        limit = N
    m = m & (pos < limit)
    prefix, mask = tl.load(state), tl.load(state + 1)
    shift = (SHIFTS >> (5 * PASS)) & 31
    b = tl.arange(0, 256)
    if start < limit:  # (the gathered keys fill the first segments of a row's)
        if GATHERED:
            u = tl.load(cand + row.to(tl.int64) * N + pos, mask=m, other=0)
        else:
            u, _vals = _select_key(x, row, N, pos, m, DESC)  # (not `_`: a branch may not retype a name)
        m = m & ((u & mask) == prefix)
        # keys outside the segment or the prefix count as digit 0: take them off
        h = tl.histogram(tl.where(m, (u >> shift) & 255, 0), 256) - tl.where(b == 0, BLOCK - tl.sum(m.to(tl.int32), axis=0), 0)
        tl.atomic_add(hist + PASS * 256 + b, h, mask=h != 0, sem="relaxed")
    if _last_of_row(tickets + PASS, nseg):
        h = tl.atomic_add(hist + PASS * 256 + b, tl.zeros_like(b), sem="relaxed")  # (read where the adds went)
        below = tl.load(state + 2)
        before = tl.cumsum(h, axis=0) < K - below  # digits whose keys all rank before the K-th best
        tl.store(state, prefix | (tl.sum(before.to(tl.int32), axis=0) << shift))
        tl.store(state + 1, mask | (tl.full((), 255, tl.int32) << shift))
        tl.store(state + 2, below + tl.sum(tl.where(before, h, 0), axis=0))


@triton.jit
def select_gather_kernel(x, cand, scratch, N, W, seg, nseg, PASSES: tl.constexpr, DESC: tl.constexpr, BLOCK: tl.constexpr):
    """After the first pass: the row's keys with the K-th best's top digit, appended to
    ``cand[row]`` in any order (the later passes only count them), so those passes read
    a few keys instead of the row."""
    _, row, _, pos, m = _segment(N, seg, nseg, BLOCK)
    u, _ = _select_key(x, row, N, pos, m, DESC)
    _, _, state = _select_rows(scratch, row, W, PASSES)
    hit = m & ((u & tl.load(state + 1)) == tl.load(state))
    n_hit = tl.sum(hit.to(tl.int32), axis=0)
    if n_hit > 0:
        at = tl.atomic_add(state + 3, n_hit, sem="relaxed") + tl.cumsum(hit.to(tl.int32), axis=0) - 1
        tl.store(cand + row.to(tl.int64) * N + at, u, mask=hit)


@triton.jit
def _select_split(x, scratch, row, N, W, pos, m, PASSES: tl.constexpr, DESC: tl.constexpr):
    """The values at ``pos``, which keys are better than the row's K-th best (lt) and
    equal to it (eq), the row's tickets and how many keys rank before its equals."""
    u, xv = _select_key(x, row, N, pos, m, DESC)
    _, tickets, state = _select_rows(scratch, row, W, PASSES)
    prefix, mask = tl.load(state), tl.load(state + 1)
    um = u & mask
    lt = m & ((um ^ -2147483648) < (prefix ^ -2147483648))  # unsigned compare
    return xv, lt, m & (um == prefix), tickets, tl.load(state + 2)


@triton.jit
def select_count_kernel(x, scratch, counts, offsets, N, W, seg, nseg, PASSES: tl.constexpr, DESC: tl.constexpr,
                        BLOCK: tl.constexpr, NSEG: tl.constexpr):
    """How many of the segment's keys are better than the row's K-th best and equal to
    it (packed: lt << 16 | eq); the row's last program turns them into each segment's
    start among the row's (offsets[row, 0 / 1, s]: lt / eq keys of earlier segments)."""
    pid, row, _, pos, m = _segment(N, seg, nseg, BLOCK)
    _, lt, eq, tickets, _ = _select_split(x, scratch, row, N, W, pos, m, PASSES, DESC)
    tl.store(counts + pid, tl.sum(lt.to(tl.int32) * 65536 + eq.to(tl.int32), axis=0))
    if _last_of_row(tickets + PASSES, nseg):
        j = tl.arange(0, NSEG)
        c = tl.atomic_add(counts + row * nseg + j, tl.zeros_like(j), mask=j < nseg, sem="relaxed")
        c = tl.where(j < nseg, c, 0)
        lt_c, eq_c = c >> 16, c & 65535
        out = offsets + row.to(tl.int64) * 2 * nseg + j
        tl.store(out, tl.cumsum(lt_c, axis=0) - lt_c, mask=j < nseg)
        tl.store(out + nseg, tl.cumsum(eq_c, axis=0) - eq_c, mask=j < nseg)


@triton.jit
def select_write_kernel(x, scratch, offsets, vals_out, idx_out, N, W, seg, nseg, K, PASSES: tl.constexpr,
                        DESC: tl.constexpr, BLOCK: tl.constexpr):
    """Row slots [0, below): the keys better than the K-th best, in row order; then the
    first K - below keys equal to it, in row order. Equal keys are in row order within
    either group: a stable sort of the slots is the row's stable top K."""
    pid, row, _, pos, m = _segment(N, seg, nseg, BLOCK)
    xv, lt, eq, _, below = _select_split(x, scratch, row, N, W, pos, m, PASSES, DESC)
    start = offsets + row.to(tl.int64) * 2 * nseg + pid % nseg
    seen = tl.cumsum(lt.to(tl.int32) * 65536 + eq.to(tl.int32), axis=0)  # both ranks in one scan
    eq_rank = tl.load(start + nseg) + (seen & 65535) - 1
    take = lt | (eq & (eq_rank < K - below))
    slot = tl.where(lt, tl.load(start) + (seen >> 16) - 1, below + eq_rank)
    out = row.to(tl.int64) * K + slot
    tl.store(vals_out + out, xv, mask=take)
    tl.store(idx_out + out, pos.to(tl.int64), mask=take)


def _select_seg(R: int, n: int) -> int:
    """Elements per program: SELECT_SEG, halved while the rows give few programs."""
    seg = SELECT_SEG
    while seg > SELECT_SEG_MIN and R * cdiv(n, seg) < 512:
        seg //= 2
    return seg


def _selects(x: torch.Tensor, n: int, k: int) -> bool:
    """Whether a top-k of rows of n takes the radix select (see SELECT_SHIFTS)."""
    if n <= MAX_SORT or k > MAX_SORT or x.dtype not in SELECT_SHIFTS or cdiv(n, SELECT_SEG) > SELECT_MAX_SEGS:
        return False
    return k >= SELECT_MIN_K or 2 * k > MAX_SORT // 2 or _topk_stages(n, k)[0] is None


def _topk_select(rows: torch.Tensor, k: int, desc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of each row of contiguous (R, n) ``rows``: radix select, then one sort of
    k a row. Launches filed and replayed as ``_topk_rows``'."""
    R, n = rows.shape
    dev = rows.device
    src = rows.view(torch.uint8) if rows.dtype == torch.bool else rows
    shifts = SELECT_SHIFTS[rows.dtype]
    passes, packed = len(shifts), sum(s << (5 * i) for i, s in enumerate(shifts))
    seg = _select_seg(R, n)
    nseg = cdiv(n, seg)
    block = next_power_of_2(seg)
    width = passes * 256 + passes + 5  # histograms, tickets, state (see _select_rows)
    scratch = torch.zeros(size=(R, width), dtype=torch.int32, device=dev)  # zeroed every call
    gather = passes > 2  # (for one pass after the first, reading the row costs less than gathering)
    cand = torch.empty(size=(R, n if gather else 1), dtype=torch.int32, device=dev)  # (a row may share one digit)
    counts = torch.empty(size=(R, nseg), dtype=torch.int32, device=dev)
    offsets = torch.empty(size=(R, 2, nseg), dtype=torch.int32, device=dev)
    sel_vals = torch.empty(size=(R, k), dtype=src.dtype, device=dev)
    sel_idx = torch.empty(size=(R, k), dtype=torch.int64, device=dev)
    vals = torch.empty(size=(R, k), dtype=rows.dtype, device=dev)
    idx = torch.empty(size=(R, k), dtype=torch.int64, device=dev)
    out_vals = vals.view(torch.uint8) if rows.dtype == torch.bool else vals
    tensors = (src, cand, scratch, counts, offsets, sel_vals, sel_idx, out_vals, idx)
    sig = ("topk-select", R, n, rows.dtype, k, desc, not rows.data_ptr() & 15, rows.get_device())
    if _replayed(sig, tensors):
        return vals, idx
    plan = Replay(tensors)
    grid, common = (R * nseg,), dict(PASSES=passes, DESC=desc, BLOCK=block, num_warps=_follower_warps(block))
    for p in range(passes):
        if p == 1 and gather:
            plan.launch(select_gather_kernel, grid, src, cand, scratch, n, width, seg, nseg, **common)
        plan.launch(select_hist_kernel, grid, src, cand, scratch, n, width, seg, nseg, k, PASS=p, SHIFTS=packed,
                    GATHERED=p > 0 and gather, **common)
    plan.launch(select_count_kernel, grid, src, scratch, counts, offsets, n, width, seg, nseg, NSEG=next_power_of_2(nseg), **common)
    plan.launch(select_write_kernel, grid, src, scratch, offsets, sel_vals, sel_idx, n, width, seg, nseg, k, **common)
    _launch_sort(_filed_sort(plan), sel_vals, sel_idx, None, out_vals, idx, k, desc, k, False)
    _file(sig, plan)
    return vals, idx


# -- unique ------------------------------------------------------------------------------
@triton.jit
def _first_of_run(sv, i, m):
    """The sorted values at ``i`` and whether each starts a run of equal values."""
    v = tl.load(sv + i, mask=m)
    prev = tl.load(sv + i - 1, mask=m & (i > 0))
    a, b = v, prev
    if v.dtype.is_floating():  # compare in fp32/fp64, never on bf16 directly
        if v.dtype.primitive_bitwidth < 64:
            a = _f32_bits(v).to(tl.float32, bitcast=True)
            b = _f32_bits(prev).to(tl.float32, bitcast=True)
    return v, m & ((i == 0) | (a != b))


@libtuner(configs=_BLOCK_CONFIGS, key=["n"], strategy=["log"], default=_BLOCK_DEFAULT)
@triton.jit
def unique_count_kernel(sv, block_counts, n, BLOCK: tl.constexpr):
    """How many runs of equal values start in each block of the sorted values ``sv``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _, first = _first_of_run(sv, i, i < n)
    tl.store(block_counts + tl.program_id(0), tl.sum(first.to(tl.int64), axis=0))


@triton.jit
def unique_kernel(sv, perm, offsets, uniq, inverse, counts, n, HAS_PERM: tl.constexpr, BLOCK: tl.constexpr):
    """Each block writes its runs' values at its offset (the runs before it), counts each
    run's elements, and (HAS_PERM) each source element's run through ``perm``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    v, first = _first_of_run(sv, i, m)
    gid = tl.load(offsets + tl.program_id(0)) + tl.cumsum(first.to(tl.int64), axis=0) - 1
    tl.store(uniq + gid, v, mask=first)
    tl.atomic_add(counts + gid, 1, mask=m)
    if HAS_PERM:
        p = tl.load(perm + i, mask=m, other=0)
        tl.store(inverse + p, gid, mask=m)


@triton.jit
def sort_values_kernel(x, out, n, BLOCK: tl.constexpr):
    """Values-only ascending sort of one row of integers (no index rides along).
    Not tuned: BLOCK is the row rounded up to a power of two (all of it in registers)."""
    o = tl.arange(0, BLOCK)
    m = o < n
    v = tl.load(x + o, mask=m, other=tl.load(x))
    v = tl.where(m, v, tl.max(v, axis=0))  # empty slots take the max: they sort last
    tl.store(out + o, tl.sort(v), mask=m)


UNIQUE_DTYPES = SORT_DTYPES - {torch.bool}


@register("_unique2")
def unique2(x: torch.Tensor, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.numel()
    if n == 0 or x.dtype not in UNIQUE_DTYPES:
        return aten_fallback("_unique2")(x, sorted, return_inverse, return_counts)
    flat = x.reshape(-1).contiguous()
    if not return_inverse and n <= MAX_SORT and not x.is_floating_point():  # (floats: keys order NaN)
        block = next_power_of_2(n)
        sv, perm = torch.empty_like(flat), None
        sort_values_kernel[(1,)](flat, sv, n, BLOCK=block, num_warps=_follower_warps(block))
    elif x.dtype in KEY_DTYPES and n <= MAX_SORT:
        sv, perm = _sort_rows(flat.view(1, n), n, False)
    else:
        sv, perm = _sort_rows_long(flat.view(1, n), False)
    sv = sv.view(n)
    used: dict = {}

    def grid(META):
        used.update(META)
        return (cdiv(n, META["BLOCK"]),)

    nblocks = cdiv(n, _BLOCK_CONFIGS[0].kwargs["BLOCK"])  # enough for the smallest block
    block_counts = torch.zeros(nblocks, dtype=torch.int64, device=x.device)
    unique_count_kernel[grid](sv, block_counts, n)
    block = used["BLOCK"]
    # the counts of this BLOCK's blocks only: tuning on this call ran smaller blocks too,
    # whose counts are still in the buffer past them
    block_counts = block_counts[:cdiv(n, block)]
    offsets = torch.cumsum(block_counts, 0)
    u = int(offsets[-1].item())  # the output size: one host sync, as in aten
    uniq = torch.empty(u, dtype=x.dtype, device=x.device)
    inverse = torch.empty(size=x.shape if return_inverse else (0,), dtype=torch.int64, device=x.device)
    counts = torch.zeros(u, dtype=torch.int64, device=x.device)
    # the same BLOCK as the counts: the blocks' offsets are the counts' exclusive scan
    unique_kernel[(cdiv(n, block),)](
        sv, perm if perm is not None else sv, offsets - block_counts, uniq, inverse, counts, n,
        HAS_PERM=return_inverse, BLOCK=block, num_warps=_follower_warps(block),
    )
    return uniq, inverse, counts if return_counts else counts.new_empty(0)
