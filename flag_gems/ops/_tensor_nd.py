"""A strided N-d gather into a contiguous output, shared by the tensor-shape ops.

Each output dim ``d`` reads source index ``si`` from output index ``oi``:
  MODE 0 (copy):  si = oi                     (flip: negative stride, base offset)
  MODE 1 (wrap):  si = oi % S[d]              (repeat)
  MODE 2 (pad):   si = oi - L[d], masked to [0, S[d]) and filled (constant_pad_nd)
Ranks above MAX_RANK (after merging dims) are left to aten by the callers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from flag_gems.utils import cdiv
from tuner import libtuner

MAX_RANK = 6
COPY, WRAP, PAD = 0, 1, 2


@triton.jit
def _dim_step(i, off, ok, O, S, L, T, MODE: tl.constexpr):
    oi = i % O
    i = i // O
    if MODE == 1:
        si = oi % S
    elif MODE == 2:
        si = oi - L
        ok = ok & (si >= 0) & (si < S)
    else:
        si = oi
    return i, off + si * T, ok


@libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(512, 4), (1024, 4), (2048, 8), (4096, 8)]],
    key=["n"],
    strategy=["log"],
    default=triton.Config({"BLOCK": 1024}, num_warps=4),
)
@triton.jit
def nd_gather_kernel(
    src, out, n, base, fill,
    O0, O1, O2, O3, O4, O5,
    S0, S1, S2, S3, S4, S5,
    L0, L1, L2, L3, L4, L5,
    T0, T1, T2, T3, T4, T5,
    MODE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    off = tl.zeros([BLOCK], dtype=tl.int64) + base
    ok = m
    # innermost dim first: the flat output index peels off from the right
    i, off, ok = _dim_step(i, off, ok, O5, S5, L5, T5, MODE)
    i, off, ok = _dim_step(i, off, ok, O4, S4, L4, T4, MODE)
    i, off, ok = _dim_step(i, off, ok, O3, S3, L3, T3, MODE)
    i, off, ok = _dim_step(i, off, ok, O2, S2, L2, T2, MODE)
    i, off, ok = _dim_step(i, off, ok, O1, S1, L1, T1, MODE)
    i, off, ok = _dim_step(i, off, ok, O0, S0, L0, T0, MODE)
    v = tl.load(src + off, mask=ok)
    if MODE == 2:
        v = tl.where(ok, v, tl.full([BLOCK], fill, v.dtype))
    tl.store(out + (pid * BLOCK + tl.arange(0, BLOCK)), v.to(out.dtype.element_ty), mask=m)


def merge_dims(shape: Sequence[int], strides: Sequence[int]) -> tuple[list[int], list[int]]:
    """Drop size-1 dims and merge neighbours that are contiguous to each other."""
    dims = [(s, t) for s, t in zip(shape, strides) if s != 1]
    if not dims:
        return [1], [0]
    out_s, out_t = [dims[0][0]], [dims[0][1]]
    for s, t in dims[1:]:
        if out_t[-1] == t * s:
            out_s[-1] *= s
            out_t[-1] = t
        else:
            out_s.append(s)
            out_t.append(t)
    return out_s, out_t


def nd_gather(
    src: torch.Tensor,
    out: torch.Tensor,
    *,
    strides: Sequence[int],
    shape: Sequence[int] | None = None,
    src_shape: Sequence[int] | None = None,
    lo: Sequence[int] | None = None,
    base: int = 0,
    mode: int = COPY,
    fill: float | int = 0,
) -> torch.Tensor:
    """Fill contiguous ``out`` (viewed as ``shape``) from ``src`` (``strides`` per out dim)."""
    n = out.numel()
    if n == 0:
        return out
    shape = list(out.shape if shape is None else shape)
    if mode == COPY:
        shape, strides = merge_dims(shape, strides)
    rank = len(shape)
    if rank > MAX_RANK:
        raise ValueError(f"nd_gather supports rank <= {MAX_RANK}, got {rank}")
    pad = MAX_RANK - rank
    O = [1] * pad + list(shape)
    S = [1] * pad + list(src_shape if src_shape is not None else shape)
    L = [0] * pad + list(lo if lo is not None else [0] * rank)
    T = [0] * pad + list(strides)
    grid = lambda META: (cdiv(n, META["BLOCK"]),)
    nd_gather_kernel[grid](src, out, n, base, fill, *O, *S, *L, *T, MODE=mode)
    return out


def drop_unit_dims(out_shape: Sequence[int], *per_dim: Sequence[int]) -> list[list[int]]:
    """Drop the output dims of size 1 (they add nothing to a COPY/WRAP source offset)."""
    keep = [d for d, s in enumerate(out_shape) if s != 1] or [len(out_shape) - 1]
    return [[int(out_shape[d]) for d in keep]] + [[int(v[d]) for d in keep] for v in per_dim]


def out_buffer(out: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Resize an ``out=`` tensor; a buffer to write when it cannot take the kernel's store."""
    if tuple(out.shape) != tuple(shape):
        out.resize_(shape)
    if out.is_contiguous() and out.dtype == dtype:
        return out
    return torch.empty(size=shape, dtype=dtype, device=out.device)


def finish_out(out: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    if buf is not out:
        out.copy_(buf)
    return out
