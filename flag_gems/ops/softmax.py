"""softmax / log_softmax, forward and backward (``_softmax``, ``_log_softmax`` and their
``*_backward_data``), so torch.softmax and F.cross_entropy train on these kernels.

Forward: one online pass over R computes each row's max and sum of exponentials, a second
pass writes the result. Backward: one pass computes sum(g * y) (or sum(g)), a second writes.
Rows use the (M, R, K) view of ``_reduce_common``.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.registry import aten_fallback, register
from flag_gems.utils import cdiv

log = logging.getLogger(__name__)


@triton.jit
def _softmax_rows(X, Y, R, K, sxk, syk, LOG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    # R contiguous: tile [BLOCK_K rows, BLOCK_R], R the fast axis (vectorized loads)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < K
    cols = tl.arange(0, BLOCK_R)
    if R <= BLOCK_R:  # the row stays in registers: one read, one write
        mask = rmask[:, None] & (cols < R)[None, :]
        x = tl.load(X + rows[:, None] * sxk + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        mx = tl.max(x, 1)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        z = x - mx[:, None]
        e = tl.exp(z)
        ssum = tl.sum(e, 1)
        if LOG:
            y = z - tl.log(ssum)[:, None]
        else:
            y = e * (1.0 / ssum)[:, None]
        tl.store(Y + rows[:, None] * syk + cols[None, :], y, mask=mask)
    else:
        row_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_K], tl.float32)
        for r0 in range(0, R, BLOCK_R):
            c = r0 + cols
            mask = rmask[:, None] & (c < R)[None, :]
            x = tl.load(X + rows[:, None] * sxk + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(x, 1))
            safe = tl.where(new_max == float("-inf"), 0.0, new_max)
            row_sum = row_sum * tl.exp(row_max - safe) + tl.sum(tl.exp(x - safe[:, None]), 1)
            row_max = new_max
        log_sum = tl.log(row_sum)
        inv_sum = 1.0 / row_sum
        for r0 in range(0, R, BLOCK_R):
            c = r0 + cols
            mask = rmask[:, None] & (c < R)[None, :]
            x = tl.load(X + rows[:, None] * sxk + c[None, :], mask=mask, other=0.0).to(tl.float32)
            x = x - row_max[:, None]
            if LOG:
                y = x - log_sum[:, None]
            else:
                y = tl.exp(x) * inv_sum[:, None]
            tl.store(Y + rows[:, None] * syk + c[None, :], y, mask=mask)


@triton.jit
def _softmax_fwd_kernel(
    X, Y, M, R, K, sxm, sxr, sxk, sym, syr, syk,
    LOG: tl.constexpr, ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    if ROWS:
        _softmax_rows(X, Y, R, K, sxk, syk, LOG, BLOCK_R, BLOCK_K)
    else:
        _softmax_cols(X, Y, M, R, K, sxm, sxr, sxk, sym, syr, syk, LOG, BLOCK_R, BLOCK_K)


@triton.jit
def _softmax_cols(
    X, Y, M, R, K, sxm, sxr, sxk, sym, syr, syk,
    LOG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    row_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < R)[:, None] & kmask[None, :]
        x = tl.load(X + pid_m * sxm + offs_r[:, None] * sxr + offs_k[None, :] * sxk, mask=mask, other=float("-inf"))
        x = x.to(tl.float32)
        new_max = tl.maximum(row_max, tl.max(x, 0))
        # a column of the tile that is all padding keeps max -inf: avoid (-inf) - (-inf)
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp(row_max - safe) + tl.sum(tl.exp(x - safe[None, :]), 0)
        row_max = new_max
    log_sum = tl.log(row_sum)
    inv_sum = 1.0 / row_sum
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < R)[:, None] & kmask[None, :]
        x = tl.load(X + pid_m * sxm + offs_r[:, None] * sxr + offs_k[None, :] * sxk, mask=mask, other=0.0)
        x = x.to(tl.float32) - row_max[None, :]
        if LOG:
            y = x - log_sum[None, :]
        else:
            y = tl.exp(x) * inv_sum[None, :]
        tl.store(Y + pid_m * sym + offs_r[:, None] * syr + offs_k[None, :] * syk, y, mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    G, Y, DX, M, R, K, sm, sr, sk,
    LOG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # G, Y and DX share one contiguous layout
    pid_m = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    dot = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < R)[:, None] & kmask[None, :]
        offs = pid_m * sm + offs_r[:, None] * sr + offs_k[None, :] * sk
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dot += tl.sum(g, 0)
        else:
            dot += tl.sum(g * tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32), 0)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < R)[:, None] & kmask[None, :]
        offs = pid_m * sm + offs_r[:, None] * sr + offs_k[None, :] * sk
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dx = g - tl.exp(y) * dot[None, :]
        else:
            dx = y * (g - dot[None, :])
        tl.store(DX + offs, dx, mask=mask)


_FWD = rc.Tuned(_softmax_fwd_kernel)
# R contiguous (softmax over the last dim): size classes of R, default BLOCK_R =
# next_power_of_2(R) up to 8192 (row in registers), 4/8/16 warps
_FWD_ROWS = rc.SizeClassed(_softmax_fwd_kernel, rc.ROWS_CLASSES, key=["R", "K"], strategy=["log", "log"], size="R",
                           name=f"{__name__}._softmax_fwd_kernel:rows")
_BWD = rc.Tuned(_softmax_bwd_kernel)


def _layout(x: torch.Tensor, dim: int) -> rc.Layout:
    return rc.layout(x, [dim % x.dim()]) if x.dim() else rc.flat_layout(x)


def _forward(x: torch.Tensor, dim: int, half_to_float: bool, log_: bool, name: str) -> torch.Tensor:
    key = (x.shape, x.stride(), x.dtype, dim, half_to_float, log_)
    plan = _PLANS.get(key)
    if plan is None:
        if not x.is_floating_point():
            return aten_fallback(name)(x, dim, half_to_float)
        plan = _PLANS.put(key, _fwd_plan(x, dim, half_to_float, log_))
    out_dtype, launch, copy, contiguous = plan
    # empty_like keeps a contiguous input's layout (and costs a third of torch.empty(shape, ...))
    out = torch.empty_like(x, dtype=out_dtype) if contiguous else torch.empty(size=x.shape, dtype=out_dtype, device=x.device)
    if launch is not None:
        launch(x.contiguous() if copy else x, out)
    return out


def _fwd_plan(x: torch.Tensor, dim: int, half_to_float: bool, log_: bool) -> tuple:
    out_dtype = torch.float32 if half_to_float and x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if x.numel() == 0:
        return out_dtype, None, False, False
    lay = _layout(x, dim)
    copy = lay.x.data_ptr() != x.data_ptr()
    sym, syr, syk = lay.out_strides
    rows = lay.is_rows and lay.sr == 1
    tuner = _FWD_ROWS.pick(lay.R) if rows else _FWD.pick(lay)
    launch = rc.Launch(tuner, _grid_fn(rows, lay.M, lay.K))  # no tensor kept in a plan
    args = (lay.M, lay.R, lay.K, lay.sm, lay.sr, lay.sk, sym, syr, syk)
    return out_dtype, _bind(launch, args, log_, rows), copy, x.is_contiguous()


def _grid_fn(rows: bool, M: int, K: int):
    if rows:
        return lambda META: (cdiv(K, META["BLOCK_K"]),)
    return lambda META: (M, cdiv(K, META["BLOCK_K"]))


def _bind(launch: rc.Launch, args: tuple, log_: bool, rows: bool):
    def run(x: torch.Tensor, out: torch.Tensor) -> None:
        # the plan fixes every other argument: a kept kernel per alignment
        launch(x, out, *args, direct=not (x.data_ptr() | out.data_ptr()) & 15 or None, LOG=log_, ROWS=rows)

    return run


_PLANS = rc.PlanCache()


def _backward(grad: torch.Tensor, out: torch.Tensor, dim: int, input_dtype: torch.dtype, log_: bool) -> torch.Tensor:
    rc.refuse_fp64(out, "softmax")
    grad, out = grad.contiguous(), out.contiguous()
    dx = torch.empty(size=out.shape, dtype=input_dtype, device=out.device)
    if out.numel() == 0:
        return dx
    lay = _layout(out, dim)
    _BWD.pick(lay)[rc.grid_mk(lay)](grad, out, dx, lay.M, lay.R, lay.K, lay.sm, lay.sr, lay.sk, LOG=log_)
    return dx


@register("_softmax")
def softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    rc.refuse_fp64(x, "softmax")
    return _forward(x, dim, half_to_float, False, "_softmax")


@register("_log_softmax")
def log_softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    rc.refuse_fp64(x, "log_softmax")
    return _forward(x, dim, half_to_float, True, "_log_softmax")


@register("_softmax_backward_data")
def softmax_backward(grad_output: torch.Tensor, output: torch.Tensor, dim: int, input_dtype: torch.dtype) -> torch.Tensor:
    return _backward(grad_output, output, dim, input_dtype, False)


@register("_log_softmax_backward_data")
def log_softmax_backward(grad_output: torch.Tensor, output: torch.Tensor, dim: int, input_dtype: torch.dtype) -> torch.Tensor:
    return _backward(grad_output, output, dim, input_dtype, True)
