"""cat and stack: one launch copies up to GROUP inputs into their slices of the output.

Along ``dim`` the output is (rows, out_row) with input k's (rows, w_k) block at column
col_k. Each program copies BLOCK contiguous elements of one row of one input (vectorized
loads and stores, no per-element division); the programs of one launch are split between
the inputs by block counts, so the KV-cache append ``torch.cat([cache, new], dim=-2)`` is
a single kernel launch. Inputs whose trailing dims are one contiguous run are read in
place through two row strides (the dim before ``dim`` and the dims before that, collapsed),
so a transposed KV block of a merged qkv output or HF rotate_half's slices need no
``.contiguous()`` copy.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops._reduce_common import Launch, _collapse
from flag_gems.ops._tensor_nd import finish_out, out_buffer
from flag_gems.ops.factory import COPY
from flag_gems.registry import register
from flag_gems.utils import cdiv
from tuner import libtuner
from tuner import launch as launching
from tuner.launch import direct_cache
from tuner.keys import next_power_of_2

log = logging.getLogger(__name__)

GROUP = 4  # inputs per launch (constexpr-unrolled branches)
_I32 = 2**31


@triton.jit
def _copy_rows(src, s_o, s_i, R1, out, blk, nb, w, col, out_row, BLOCK: tl.constexpr):
    # block blk of a (rows, w) input: row blk // nb, columns (blk % nb) * BLOCK + [0, BLOCK);
    # contiguous on both sides, so loads and stores vectorize. The input's row r is at
    # (r // R1) * s_o + (r % R1) * s_i: its rows need not be one strided axis (a head
    # block of a merged qkv output, a slice of the last dim)
    row = (blk // nb).to(tl.int64)
    cols = (blk % nb) * BLOCK + tl.arange(0, BLOCK)
    m = cols < w
    v = tl.load(src + (row // R1) * s_o + (row % R1) * s_i + cols, mask=m)
    ot: tl.constexpr = out.dtype.element_ty
    if v.dtype != ot and ot.is_floating() and ot.primitive_bitwidth < 64:
        v = v.to(tl.float32)  # mixed dtypes: int -> bf16 directly is wrong in the interpreter
    tl.store(out + row * out_row + col + cols, v.to(ot), mask=m)


@libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(1024, 4), (2048, 4), (4096, 8), (8192, 8), (512, 4)]],
    key=["total"],
    strategy=["log"],
    default=triton.Config({"BLOCK": 2048}, num_warps=4),
)
@triton.jit
def cat_kernel(
    out, out_row, rows, R1, total,
    X0, w0, so0, si0, c0,
    X1, w1, so1, si1, c1,
    X2, w2, so2, si2, c2,
    X3, w3, so3, si3, c3,
    K: tl.constexpr, BLOCK: tl.constexpr,
):
    # input k is a (rows, w_k) block at column c_k of (rows, out_row); its rows are
    # (rows / R1, R1) with strides (so_k, si_k). Slots from K on are all None (constexprs:
    # no arguments to pass), so only the first K are read.
    pid = tl.program_id(0)
    nb0 = tl.cdiv(w0, BLOCK)
    e1 = rows * nb0
    if pid < e1:
        _copy_rows(X0, so0, si0, R1, out, pid, nb0, w0, c0, out_row, BLOCK)
    if K > 1:
        nb1 = tl.cdiv(w1, BLOCK)
        e2 = e1 + rows * nb1
        if (pid >= e1) & (pid < e2):
            _copy_rows(X1, so1, si1, R1, out, pid - e1, nb1, w1, c1, out_row, BLOCK)
        if K > 2:
            nb2 = tl.cdiv(w2, BLOCK)
            e3 = e2 + rows * nb2
            if (pid >= e2) & (pid < e3):
                _copy_rows(X2, so2, si2, R1, out, pid - e2, nb2, w2, c2, out_row, BLOCK)
            if K > 3:
                nb3 = tl.cdiv(w3, BLOCK)
                if pid >= e3:
                    _copy_rows(X3, so3, si3, R1, out, pid - e3, nb3, w3, c3, out_row, BLOCK)


def _launch(out: torch.Tensor, out_row: int, rows: int, r1: int, parts: list[tuple[torch.Tensor, int, int, int, int]]) -> tuple | None:
    """parts: (input, width w, outer row stride, inner row stride, column offset), at most
    GROUP of them; ``r1``: the rows' inner count (see _copy_rows). Returns what a repeat
    of this call may relaunch (see _Plan): (the kept kernel, its grid, the arguments), or
    None."""
    args: list = [out, out_row, rows, r1, 0]
    ptrs = out.data_ptr()
    for p in parts:
        args += p
        ptrs |= p[0].data_ptr()
    args += (None,) * (5 * (GROUP - len(parts)))  # unused slots: constexprs, nothing passed
    total = args[4] = rows * sum([p[1] for p in parts])
    # direct relaunch key: each int argument's specialization (as tuner.launch keys it), so
    # a KV cache growing by a row a step keeps hitting; none for 64-bit ints or misalignment
    ints = (total, out_row, rows, r1, *[v for p in parts for v in p[1:]])
    direct = None if ptrs & 15 or max(ints) >= _I32 else tuple(["one" if v == 1 else not v & 15 for v in ints])  # int_spec, inlined
    # the tuner key is (bucketed total, dtypes): one cached Launch per such key
    key = (next_power_of_2(total), out.dtype, *[p[0].dtype for p in parts])
    lc = _LAUNCH.get(key)
    if lc is None:
        if len(_LAUNCH) > 4096:
            _LAUNCH.clear()
        lc = _LAUNCH[key] = Launch(cat_kernel, None)
    lc.fixed(lambda META: (rows * sum([cdiv(p[1], META["BLOCK"]) for p in parts]),), *args, direct=direct, K=len(parts))
    kept, cfg = lc.kept(direct), lc.config()
    if kept is None or cfg is None:
        return None
    return kept, (rows * sum([cdiv(p[1], cfg["BLOCK"]) for p in parts]), 1, 1), args


_LAUNCH: dict = {}


def _row_strides(t: torch.Tensor, dim: int, w: int, r1: int) -> tuple[int, int] | None:
    """``t``'s rows as (outer, inner) strides (see _copy_rows; inner: dim - 1, outer: the
    dims before it, which must collapse to one stride), when the dims from ``dim`` on are
    one contiguous run of ``w``; else None."""
    if t.is_contiguous():
        return r1 * w, w
    shape, stride = t.shape, t.stride()
    tail = _collapse(shape[dim:], stride[dim:])
    if tail is None or (tail[1] != 1 and tail[0] > 1):
        return None
    if dim == 0:
        return 0, 0
    head = _collapse(shape[:dim - 1], stride[:dim - 1])
    if head is None:
        return None
    return head[1], stride[dim - 1] if r1 > 1 else 0


class _Plan(NamedTuple):
    """A lean cat's launch, for repeats of its signature (each input's dtype, shape and
    strides, and ``dim``): the output's shape, the kept kernel and grid, and the launch's
    arguments with its tensors' places (the inputs' indices; the output is argument 0)."""

    shape: tuple
    bound: Any  # tuner.launch.Bound
    run: Any  # its runner of the plan's grid
    template: tuple  # every argument, the kept kernel's constexprs included
    tensor_args: tuple  # (argument position, input index)


# (dim, (dtype, shape, strides) of each input) -> _Plan: a KV-cache append repeats its
# signature in every layer, rotate_half's every step. Emptied with the direct caches.
_PLANS: dict = direct_cache()


def _signature(tensors: Sequence[torch.Tensor], dim: int) -> tuple:
    return (dim, *[(t.dtype, t.shape, t.stride()) for t in tensors])


def _relaunch(plan: _Plan, tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The plan's launch for these inputs; None where it cannot (another device, an
    input not 16-byte aligned)."""
    bound = plan.bound
    if bound.current_device() != bound.device:
        return None
    args = list(plan.template)
    ptrs = 0
    for pos, i in plan.tensor_args:
        t = args[pos] = tensors[i]
        ptrs |= t.data_ptr()
    buf = args[0] = torch.empty(size=plan.shape, dtype=t.dtype, device=t.device)  # (one dtype: the signature's)
    if (ptrs | buf.data_ptr()) & 15:
        return None
    plan.run(*args, stream=bound.current_stream(bound.device))
    if launching.observer is not None:
        launching.observer(cat_kernel.fn)
    return buf


def _file(sig: tuple, inputs: list[int], found: tuple | None) -> None:
    """File the plan of a lean launch (``_launch``'s result) of the inputs at ``inputs``."""
    if found is None:
        return
    bound, grid, args = found
    # input k's tensor is argument 5 + 5k (the unused slots hold None)
    slots = tuple((5 + 5 * k, inputs[k]) for k in range(len(inputs)))
    if len(_PLANS) >= 4096:
        _PLANS.clear()
    _PLANS[sig] = _Plan(tuple(args[0].shape), bound, bound.runner(grid), (*args, *bound.kept.tail), slots)


def _cat_lean(tensors: Sequence[torch.Tensor], dim: int) -> torch.Tensor | None:
    """The common cats in one launch with little Python: the KV-cache append (and HF's
    first one, ``cat([tensor([]), k])``), rotate_half's: up to GROUP non-empty tensors of
    one dtype and rank (legacy 1-D empty ones of that dtype skipped), sizes matching off
    ``dim``, each read in place (``_row_strides``). None for anything else, which
    ``_cat_into`` handles (and checks). A repeated signature relaunches its plan."""
    if not 0 < len(tensors) <= GROUP + 1:
        return None
    sig = _signature(tensors, dim)
    plan = _PLANS.get(sig)
    if plan is not None:
        done = _relaunch(plan, tensors)
        if done is not None:
            return done
    dtype = tensors[0].dtype
    live, inputs = [], []
    for i, t in enumerate(tensors):
        if t.dtype != dtype:
            return None
        if t.numel() or t.dim() != 1:
            live.append(t)
            inputs.append(i)
    if not 0 < len(live) <= GROUP:
        return None
    shape = live[0].shape
    nd = len(shape)
    if not nd or not -nd <= dim < nd:
        return None
    if len(live) == 1:  # HF's first cache update, cat([tensor([]), k]): a copy (of a transposed k, often)
        buf = torch.empty(size=shape, dtype=dtype, device=live[0].device)
        return COPY(live[0], out=buf)  # (the pointwise copy relaunches a repeated layout directly)
    dim %= nd
    head, rest = shape[:dim], shape[dim + 1:]
    tail = math.prod(rest)
    r1 = shape[dim - 1] if dim else 1
    parts, size = [], 0
    for t in live:
        ts = t.shape
        w = ts[dim] * tail if len(ts) == nd else 0
        if not w or ts[:dim] != head or ts[dim + 1:] != rest:
            return None
        strides = _row_strides(t, dim, w, r1)
        if strides is None:
            return None
        parts.append((t, w, *strides, size * tail))
        size += ts[dim]
    buf = torch.empty(size=(*head, size, *rest), dtype=dtype, device=live[0].device)
    _file(sig, inputs, _launch(buf, size * tail, math.prod(head), r1, parts))
    return buf


def _cat_into(tensors: Sequence[torch.Tensor], dim: int, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        done = _cat_lean(tensors, dim)
        if done is not None:
            return done
    if len(tensors) == 0:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    t0 = tensors[0]
    dtype = t0.dtype
    for t in tensors:
        if t.dtype != dtype:
            dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
            break
    # torch's legacy rule: 1-D tensors of shape (0,) are skipped whatever the dim
    live = [t for t in tensors if not (t.dim() == 1 and t.numel() == 0)]
    if not live:
        shape: list[int] = [0]
        parts: list[torch.Tensor] = []
    else:
        ref = live[0]
        if ref.dim() == 0:
            raise RuntimeError("zero-dimensional tensor cannot be concatenated")
        nd = ref.dim()
        if not -nd <= dim < nd:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], but got {dim})")
        dim %= nd
        rshape = ref.shape
        for i, t in enumerate(live):
            ts = t.shape
            if len(ts) != nd or (ts != rshape and any(ts[d] != rshape[d] for d in range(nd) if d != dim)):
                raise RuntimeError(
                    f"Sizes of tensors must match except in dimension {dim}. Expected {tuple(ref.shape)} but got {tuple(t.shape)} for tensor number {i} in the list."
                )
        shape = list(rshape)
        shape[dim] = sum(t.shape[dim] for t in live)
        parts = [t for t in live if t.numel() > 0]
    device = t0.device
    buf = torch.empty(size=shape, dtype=dtype, device=device) if out is None else out_buffer(out, shape, dtype)
    if parts:
        tail = math.prod(shape[dim + 1:])
        out_row = shape[dim] * tail
        rows = math.prod(shape[:dim])
        r1 = shape[dim - 1] if dim else 1
        col = 0
        items = []
        for t in live:
            w = t.shape[dim] * tail
            if t.numel() > 0:
                strides = _row_strides(t, dim, w, r1)
                if strides is None:  # not readable in place: a strided copy into its slice
                    COPY(t, out=buf.narrow(dim, col // tail, t.shape[dim]))
                else:
                    items.append((t, w, *strides, col))
            col += w
        for g in range(0, len(items), GROUP):
            _launch(buf, out_row, rows, r1, items[g:g + GROUP])
    return buf if out is None else finish_out(out, buf)


@register("cat")
def cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return _cat_into(tensors, dim, None)


@register("cat.out")
def cat_out(tensors: Sequence[torch.Tensor], dim: int = 0, *, out: torch.Tensor) -> torch.Tensor:
    return _cat_into(tensors, dim, out)


def _stack_views(tensors: Sequence[torch.Tensor], dim: int) -> list[torch.Tensor]:
    if len(tensors) == 0:
        raise RuntimeError("stack expects a non-empty TensorList")
    ref = tensors[0]
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {tuple(ref.shape)} at entry 0 and {tuple(t.shape)} at entry {i}")
    nd = ref.dim() + 1
    if not -nd <= dim < nd:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-nd}, {nd - 1}], but got {dim})")
    return [t.unsqueeze(dim % nd) for t in tensors]


@register("stack")
def stack(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    views = _stack_views(tensors, dim)
    return _cat_into(views, dim % views[0].dim(), None)


@register("stack.out")
def stack_out(tensors: Sequence[torch.Tensor], dim: int = 0, *, out: torch.Tensor) -> torch.Tensor:
    views = _stack_views(tensors, dim)
    return _cat_into(views, dim % views[0].dim(), out)
