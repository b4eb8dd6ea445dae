"""Cross entropy: ``nll_loss_forward`` / ``nll_loss_backward`` (what F.cross_entropy runs
after ``_log_softmax``) and ``nll_loss2d_forward`` / ``nll_loss2d_backward`` (F.nll_loss
and F.cross_entropy on (N, C, d1, ...) inputs: torch views every spatial rank but 2 as
(N, C, 1, d)), with ignore_index, class weights and every reduction.

One kernel family serves both: element ``e`` of the target (N, H, W) reads
``x[n, target[e], h, w]`` through x's strides (H = W = 1 for nll_loss).
The forward reduces deterministically: per-block partial sums, then one program.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.registry import aten_fallback, register
from flag_gems.utils import cdiv
from tuner import launch as launching
from tuner import libtuner

log = logging.getLogger(__name__)

NONE, MEAN, SUM = 0, 1, 2
_BLOCKS = [(256, 2), (512, 4), (1024, 4), (2048, 8)]
_MIN_BLOCK = _BLOCKS[0][0]  # the partial-sum buffers are sized for the smallest block
_CONFIGS = [triton.Config({"BLOCK_N": b}, num_warps=w) for b, w in _BLOCKS]
_DEFAULT = triton.Config({"BLOCK_N": 1024}, num_warps=4)
TARGET_DTYPES = (torch.int64, torch.uint8)  # what aten's nll_loss accepts


@triton.jit
def _x_offset(offs, t, HW, SW, sxn, sxc, sxh, sxw):
    """Offset of x[n, t, h, w] for flat target index ``offs`` of (N, H, W), W == SW."""
    n = offs // HW
    s = offs % HW
    return n * sxn + t * sxc + (s // SW) * sxh + (s % SW) * sxw


@libtuner(configs=_CONFIGS, key=["N"], strategy=["log"], default=_DEFAULT)
@triton.jit
def _nll_fwd_kernel(
    X, T, W, LOSS, PART_L, PART_W, N, HW, SW, sxn, sxc, sxh, sxw, ignore_index, C,
    HAS_W: tl.constexpr, REDUCE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    t = tl.load(T + offs, mask=mask, other=0).to(tl.int64)
    valid = mask & (t != ignore_index) & (t >= 0) & (t < C)  # (a target out of range reads nothing)
    t_safe = tl.where(valid, t, 0)
    if HAS_W:
        w = tl.load(W + t_safe, mask=valid, other=0.0).to(tl.float32)
    else:
        w = valid.to(tl.float32)
    x = tl.load(X + _x_offset(offs, t_safe, HW, SW, sxn, sxc, sxh, sxw), mask=valid, other=0.0).to(tl.float32)
    loss = tl.where(valid, -w * x, 0.0)
    if REDUCE:
        tl.store(PART_L + pid, tl.sum(loss, 0))
        tl.store(PART_W + pid, tl.sum(w, 0))
    else:
        tl.store(LOSS + offs, loss, mask=mask)


@libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(128, 1), (512, 4), (1024, 4)]],
    key=["P"],
    strategy=["log"],
    default=triton.Config({"BLOCK": 1024}, num_warps=4),
)
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


@libtuner(configs=_CONFIGS, key=["N"], strategy=["log"], default=_DEFAULT)
@triton.jit
def _nll_bwd_kernel(
    G, T, W, TOTAL_W, DX, N, HW, SW, sdn, sdc, sdh, sdw, ignore_index, C,
    HAS_W: tl.constexpr, REDUCE: tl.constexpr, MEAN: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    t = tl.load(T + offs, mask=mask, other=0).to(tl.int64)
    valid = mask & (t != ignore_index) & (t >= 0) & (t < C)  # (a target out of range reads nothing)
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
    tl.store(DX + _x_offset(offs, t_safe, HW, SW, sdn, sdc, sdh, sdw), -w * g, mask=valid)


def _spatial(x: torch.Tensor) -> tuple[int, int, list[int]]:
    """(H*W, W, strides (n, c, h, w)) of x viewed as (N, C, H, W); nll_loss: H = W = 1."""
    if x.dim() == 1:
        return 1, 1, [0, x.stride(0), 0, 0]
    if x.dim() == 2:
        return 1, 1, [x.stride(0), x.stride(1), 0, 0]
    return x.shape[2] * x.shape[3], x.shape[3], list(x.stride())


def _nll_forward(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int,
                 ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = target.contiguous()
    n = t.numel()
    hw, sw, strides = _spatial(x)
    w = weight.contiguous() if weight is not None else None
    total_w = torch.zeros(size=(), dtype=x.dtype, device=x.device)
    if reduction == NONE:
        loss = torch.empty(size=target.shape, dtype=x.dtype, device=x.device)
        if n:
            grid = lambda META: (cdiv(n, META["BLOCK_N"]),)
            _nll_fwd_kernel[grid](x, t, w, loss, loss, loss, n, hw, sw, *strides, ignore_index, _classes(x),
                                  HAS_W=w is not None, REDUCE=False)
        return loss, total_w
    parts = max(cdiv(n, _MIN_BLOCK), 1)  # a larger tuned block fills fewer; the rest stay 0
    part_l = torch.zeros(parts, dtype=torch.float32, device=x.device)
    part_w = torch.zeros(parts, dtype=torch.float32, device=x.device)
    if n:
        grid = lambda META: (cdiv(n, META["BLOCK_N"]),)
        _nll_fwd_kernel[grid](x, t, w, part_l, part_l, part_w, n, hw, sw, *strides, ignore_index, _classes(x),
                              HAS_W=w is not None, REDUCE=True)
    out = torch.empty(size=(), dtype=x.dtype, device=x.device)
    _nll_finish_kernel[(1,)](part_l, part_w, out, total_w, parts, MEAN=reduction == MEAN)
    return out, total_w


def _nll_backward(grad_output: torch.Tensor, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                  reduction: int, ignore_index: int, total_weight: torch.Tensor) -> torch.Tensor:
    dx = torch.zeros(size=x.shape, dtype=x.dtype, device=x.device)
    n = target.numel()
    if n == 0:
        return dx
    hw, sw, strides = _spatial(dx)
    w = weight.contiguous() if weight is not None else None
    grid = lambda META: (cdiv(n, META["BLOCK_N"]),)
    _nll_bwd_kernel[grid](
        grad_output.contiguous(), target.contiguous(), w, total_weight, dx, n, hw, sw, *strides, ignore_index, _classes(x),
        HAS_W=w is not None, REDUCE=reduction != NONE, MEAN=reduction == MEAN,
    )
    return dx


def _classes(x: torch.Tensor) -> int:
    return x.shape[1] if x.dim() > 1 else x.shape[0]


def _ok(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, spatial: bool, ignore_index: int) -> bool:
    """Inputs the kernels take; anything else goes to aten (its checks, its messages).
    A target in host memory out of [0, classes) (but ignore_index) goes there for torch's
    error; on a GPU the kernels treat such a target as ignored (no read outside x)."""
    if not x.is_floating_point() or target.dtype not in TARGET_DTYPES or target.device != x.device:
        return False
    if target.device.type == "cpu" and target.numel() and not launching.values_unknown():
        live = target[target != ignore_index]
        if live.numel() and (int(live.min()) < 0 or int(live.max()) >= _classes(x)):
            return False
    if weight is not None and (weight.dim() != 1 or weight.numel() != (x.shape[1] if x.dim() > 1 else x.shape[0])):
        return False
    if spatial:
        return x.dim() == 4 and target.dim() == 3 and tuple(target.shape) == (x.shape[0], *x.shape[2:])
    if x.dim() == 1:
        return target.dim() in (0, 1) and target.numel() == 1
    return x.dim() == 2 and target.dim() == 1 and target.shape[0] == x.shape[0]


@register("nll_loss_forward")
def nll_loss_forward(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int,
                     ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not _ok(x, target, weight, False, ignore_index):
        return aten_fallback("nll_loss_forward")(x, target, weight, reduction, ignore_index)
    return _nll_forward(x, target, weight, reduction, ignore_index)


@register("nll_loss_backward")
def nll_loss_backward(grad_output: torch.Tensor, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                      reduction: int, ignore_index: int, total_weight: torch.Tensor) -> torch.Tensor:
    if not _ok(x, target, weight, False, ignore_index):
        return aten_fallback("nll_loss_backward")(grad_output, x, target, weight, reduction, ignore_index, total_weight)
    return _nll_backward(grad_output, x, target, weight, reduction, ignore_index, total_weight)


@register("nll_loss2d_forward")
def nll_loss2d_forward(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int,
                       ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not _ok(x, target, weight, True, ignore_index):
        return aten_fallback("nll_loss2d_forward")(x, target, weight, reduction, ignore_index)
    return _nll_forward(x, target, weight, reduction, ignore_index)


@register("nll_loss2d_backward")
def nll_loss2d_backward(grad_output: torch.Tensor, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                        reduction: int, ignore_index: int, total_weight: torch.Tensor) -> torch.Tensor:
    if not _ok(x, target, weight, True, ignore_index):
        return aten_fallback("nll_loss2d_backward")(grad_output, x, target, weight, reduction, ignore_index, total_weight)
    return _nll_backward(grad_output, x, target, weight, reduction, ignore_index, total_weight)
