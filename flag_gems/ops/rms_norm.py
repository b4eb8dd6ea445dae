"""rms_norm: aten ``rms_norm`` is CompositeImplicitAutograd, so it is taken over on the
Autograd key with its own backward (an autograd.Function). The registry serves it on the
backend key too, for calls that skip Autograd (``torch.inference_mode``), where aten's
composite would run torch's ``_fused_rms_norm`` (CUDA) or five smaller ops (CPU).

The forward row kernel lives in ``flag_gems.fused.rms_norm``; the backward is here.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import triton
import triton.language as tl

from flag_gems.fused.rms_norm import ROW_CONFIGS, ROW_DEFAULT, as_rows, rms_norm_rows
from flag_gems.ops._reduce_common import check_norm_args
from flag_gems.registry import register
from flag_gems.utils import cdiv
from tuner import libtuner

log = logging.getLogger(__name__)


@libtuner(configs=ROW_CONFIGS, key=["N"], strategy=["log"], default=ROW_DEFAULT)
@triton.jit
def rms_norm_bwd_dx_kernel(DY, X, W, Rstd, DX, N, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    # dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = x * rstd
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    rstd = tl.load(Rstd + row).to(tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        c = off + cols
        m = c < N
        g = tl.load(DY + row * N + c, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
        acc += g * tl.load(X + row * N + c, mask=m, other=0.0).to(tl.float32)
    mgx = tl.sum(acc, axis=0) * rstd / N
    for off in range(0, N, BLOCK):
        c = off + cols
        m = c < N
        g = tl.load(DY + row * N + c, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
        xh = tl.load(X + row * N + c, mask=m, other=0.0).to(tl.float32) * rstd
        tl.store(DX + row * N + c, rstd * (g - xh * mgx), mask=m)


@libtuner(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4) for bm, bn in [(32, 32), (64, 32), (32, 64), (128, 16)]],
    key=["M", "N"],
    strategy=["log", "log"],
    default=triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4),
)
@triton.jit
def rms_norm_bwd_dw_kernel(DY, X, Rstd, DW, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program per column block, walking every row: no atomics, deterministic
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cm = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r0 in range(0, M, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rm = rows < M
        m = rm[:, None] & cm[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + rows, mask=rm, other=0.0).to(tl.float32)
        acc += dy * x * rstd[:, None]
    tl.store(DW + cols, tl.sum(acc, axis=0).to(DW.dtype.element_ty), mask=cm)


def _eps(x: torch.Tensor, eps: float | None) -> float:
    """torch's default: the epsilon of the dtype it computes in (fp32 for half types)."""
    if eps is not None:
        return eps
    return torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps


def _forward(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y (input dtype, contiguous) and rstd (fp32, one per row)."""
    n = math.prod(normalized_shape)
    y = torch.empty(size=x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty(x.numel() // n if n else 0, dtype=torch.float32, device=x.device)
    rms_norm_rows(as_rows(x, n), as_rows(y, n), weight, eps, rstd=rstd)
    return y, rstd


def _backward(
    dy: torch.Tensor, x: torch.Tensor, n: int, rstd: torch.Tensor, weight: torch.Tensor | None, want_dx: bool, want_dw: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    x2 = x.contiguous().view(-1, n)
    dy2 = dy.contiguous().view(-1, n)
    rstd = rstd.contiguous().view(-1).to(torch.float32)
    M = x2.shape[0]
    dx = dw = None
    if want_dx:
        dx = torch.empty(size=x.shape, dtype=x.dtype, device=x.device)
        if M and n:
            w = weight.contiguous() if weight is not None else x2
            rms_norm_bwd_dx_kernel[(M,)](dy2, x2, w, rstd, dx, n, HAS_W=weight is not None)
    if want_dw and weight is not None:
        if M and n:  # each program sums its columns over every row and casts: no zeroed buffer, no cast kernel
            dw = torch.empty(size=weight.shape, dtype=weight.dtype, device=x.device)
            grid = lambda META: (cdiv(n, META["BLOCK_N"]),)
            rms_norm_bwd_dw_kernel[grid](dy2, x2, rstd, dw, M, n)
        else:
            dw = torch.zeros(size=weight.shape, dtype=weight.dtype, device=x.device)
    return dx, dw


class RmsNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):
        y, rstd = _forward(x, normalized_shape, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.n = math.prod(normalized_shape)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw = _backward(dy, x, ctx.n, rstd, weight, need[0], weight is not None and need[2])
        return dx, None, dw, None


@register("rms_norm", autograd=True)
def rms_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    check_norm_args(input, normalized_shape, weight)
    if torch.is_grad_enabled() and (input.requires_grad or (weight is not None and weight.requires_grad)):
        return RmsNormFunction.apply(input, list(normalized_shape), weight, _eps(input, eps))
    # no graph to record: skip autograd.Function (its per-call cost is most of the launch's)
    n = input.shape[-1] if len(normalized_shape) == 1 else math.prod(normalized_shape)
    if n == input.shape[-1] and input.is_contiguous():  # the common case: no view, and empty_like
        y = torch.empty_like(input)  # (a third of torch.empty(shape, ...)'s host time)
        rms_norm_rows(input, y, weight, eps if eps is not None else _eps(input, eps))
        return y
    y = torch.empty(size=input.shape, dtype=input.dtype, device=input.device)
    rms_norm_rows(as_rows(input, n), as_rows(y, n), weight, eps if eps is not None else _eps(input, eps))
    return y
