"""cumsum: an inclusive scan along one dim.

Same (M, R, K) view as the reductions: a program owns a tile of K positions (rows, for a
last-dim scan) and walks R in ``BLOCK_R`` steps, carrying the running total between tiles.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.registry import aten_fallback, register

log = logging.getLogger(__name__)


@triton.jit
def _cumsum_kernel(
    X, Y, M, R, K, sxm, sxr, sxk, sym, syr, syk,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    carry = rc.to_acc(tl.zeros([BLOCK_K], tl.int32), ACC)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < R)[:, None] & kmask[None, :]
        x = tl.load(X + pid_m * sxm + offs_r[:, None] * sxr + offs_k[None, :] * sxk, mask=mask, other=0)
        x = rc.to_acc(x, ACC)
        y = tl.cumsum(x, 0) + carry[None, :]
        tl.store(Y + pid_m * sym + offs_r[:, None] * syr + offs_k[None, :] * syk, y, mask=mask)
        carry += tl.sum(x, 0)


_CUMSUM = rc.Tuned(_cumsum_kernel)


@register("cumsum")
def cumsum(x: torch.Tensor, dim: int, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = dtype or (x.dtype if x.is_floating_point() else torch.int64)
    if x.is_complex() or out_dtype.is_complex:
        return aten_fallback("cumsum")(x, dim, dtype=dtype)
    (dim,) = rc.norm_dims(dim, x.dim()) or [0]  # (torch's range check)
    out = torch.empty(size=x.shape, dtype=out_dtype, device=x.device)
    if x.numel() == 0:
        return out
    src = x.view(torch.uint8) if x.dtype == torch.bool else x
    if x.dim() == 0:
        lay = rc.flat_layout(src)
    else:
        lay = rc.layout(src, [dim % x.dim()])
    sym, syr, syk = lay.out_strides
    acc = rc.acc_code(out_dtype)
    _CUMSUM.pick(lay)[rc.grid_mk(lay)](
        lay.x, out, lay.M, lay.R, lay.K, lay.sm, lay.sr, lay.sk, sym, syr, syk, ACC=acc,
    )
    return out
