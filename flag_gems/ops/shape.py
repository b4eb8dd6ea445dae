"""Shape ops that copy with a remapped index: flip, repeat (tile), constant_pad_nd, triu/tril."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops._tensor_nd import COPY, MAX_RANK, PAD, WRAP, drop_unit_dims, finish_out, merge_dims, nd_gather, out_buffer
from flag_gems.registry import aten_fallback, register
from tuner import libtuner

log = logging.getLogger(__name__)


def _norm_dim(d: int, ndim: int) -> int:
    n = max(ndim, 1)
    if not -n <= d < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    return d % n


# -- flip --------------------------------------------------------------------------------
@register("flip")
def flip(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    flipped = {_norm_dim(d, x.dim()) for d in dims}
    if len(flipped) != len(dims):
        raise RuntimeError("dims has duplicates")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.dim() == 0:
        out.copy_(x)
        return out
    # a flipped dim is read with a negated stride, starting from its last element
    strides = [-t if d in flipped else t for d, t in enumerate(x.stride())]
    base = sum((x.shape[d] - 1) * x.stride(d) for d in flipped if x.shape[d] > 0)
    return nd_gather(x, out, strides=strides, base=base, mode=COPY)


# -- repeat (tile is composite and lands here) -------------------------------------------
@register("repeat")
def repeat(x: torch.Tensor, repeats: Sequence[int]) -> torch.Tensor:
    repeats = [int(r) for r in repeats]
    if len(repeats) < x.dim():
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor")
    lead = len(repeats) - x.dim()
    src_shape = [1] * lead + list(x.shape)
    strides = [0] * lead + list(x.stride())
    out_shape = [r * s for r, s in zip(repeats, src_shape)]
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    shape, src_shape, strides = drop_unit_dims(out_shape, src_shape, strides)
    if len(shape) > MAX_RANK:
        return aten_fallback("repeat")(x, repeats)
    return nd_gather(x, out, shape=shape, strides=strides, src_shape=src_shape, mode=WRAP)


# -- constant_pad_nd (F.pad mode="constant") ---------------------------------------------
@register("constant_pad_nd")
def constant_pad_nd(x: torch.Tensor, pad: Sequence[int], value: float = 0) -> torch.Tensor:
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > x.dim():
        raise RuntimeError("Length of pad must be even and at most twice the number of dimensions of the input")
    lo, hi = [0] * x.dim(), [0] * x.dim()
    for k in range(len(pad) // 2):  # pairs start from the last dim
        lo[x.dim() - 1 - k], hi[x.dim() - 1 - k] = pad[2 * k], pad[2 * k + 1]
    out_shape = [s + a + b for s, a, b in zip(x.shape, lo, hi)]
    if any(s < 0 for s in out_shape):
        raise RuntimeError(f"The input size {tuple(x.shape)} with padding {pad} gives a negative output size {out_shape}")
    if x.dim() > MAX_RANK:
        return aten_fallback("constant_pad_nd")(x, pad, value)
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    fill = value if x.is_floating_point() or x.is_complex() else (bool(value) if x.dtype == torch.bool else int(value))
    return nd_gather(x, out, strides=list(x.stride()), src_shape=list(x.shape), lo=lo, mode=PAD, fill=fill)


# -- triu / tril -------------------------------------------------------------------------
@libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(512, 4), (1024, 4), (2048, 8), (4096, 8)]],
    key=["n"],
    strategy=["log"],
    default=triton.Config({"BLOCK": 1024}, num_warps=4),
)
@triton.jit
def tri_kernel(x, out, n, M, N, sb, sm, sn, diag, UPPER: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = i % N
    r = (i // N) % M
    b = i // (N * M)
    if UPPER:
        keep = c - r >= diag
    else:
        keep = c - r <= diag
    v = tl.load(x + b * sb + r * sm + c * sn, mask=m & keep, other=0)
    tl.store(out + i, v, mask=m)


def _tri(x: torch.Tensor, diagonal: int, upper: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    if x.dim() < 2:
        raise RuntimeError(f"{'triu' if upper else 'tril'}: input tensor must have at least 2 dimensions")
    M, N = x.shape[-2], x.shape[-1]
    buf = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out_buffer(out, x.shape, x.dtype)
    if x.numel() == 0:
        return buf if out is None else finish_out(out, buf)
    bshape, bstride = x.shape[:-2], x.stride()[:-2]
    # the batch dims must merge into one stride; otherwise read a contiguous copy
    ms, mt = merge_dims(bshape, bstride) if len(bshape) else ([1], [0])
    if len(ms) > 1:
        x = x.contiguous()
        mt = [M * N]
    n = x.numel()
    grid = lambda META: (triton.cdiv(n, META["BLOCK"]),)
    tri_kernel[grid](x, buf, n, M, N, mt[0], x.stride(-2), x.stride(-1), int(diagonal), UPPER=upper)
    return buf if out is None else finish_out(out, buf)


@register("triu")
def triu(x: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return _tri(x, diagonal, True)


@register("triu.out")
def triu_out(x: torch.Tensor, diagonal: int = 0, *, out: torch.Tensor) -> torch.Tensor:
    return _tri(x, diagonal, True, out)


@register("tril")
def tril(x: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return _tri(x, diagonal, False)


@register("tril.out")
def tril_out(x: torch.Tensor, diagonal: int = 0, *, out: torch.Tensor) -> torch.Tensor:
    return _tri(x, diagonal, False, out)
