"""RMSNorm row kernel, shared by ``rms_norm``, ``fused_add_rms_norm`` and aten ``rms_norm``.

One program per row. When the row fits in one block it stays in registers (one read,
one write); longer rows take a chunked two-pass path. With a residual the kernel first
forms ``z = x + residual`` (rounded to the residual dtype, as vLLM does), writes it back
to the residual and normalizes ``z``.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from tuner import launch as launching

log = logging.getLogger(__name__)

ROW_CONFIGS = [
    triton.Config({"BLOCK": b}, num_warps=w)
    for b, w in [(512, 4), (1024, 4), (2048, 8), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]
]
ROW_DEFAULT = triton.Config({"BLOCK": 4096}, num_warps=8)  # the backward's (one config for every N)


@triton.jit
def _load_row(X, R, x_stride, r_stride, row, c, m, HAS_RES: tl.constexpr):
    x = tl.load(X + row * x_stride + c, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        z = x + tl.load(R + row * r_stride + c, mask=m, other=0.0).to(tl.float32)
        z = z.to(R.dtype.element_ty)
        tl.store(R + row * r_stride + c, z, mask=m)
        x = z.to(tl.float32)
    return x


@triton.jit
def rms_norm_fwd_kernel(
    X, x_stride, R, r_stride, Y, y_stride, W, Rstd, N, eps,
    HAS_W: tl.constexpr, HAS_RES: tl.constexpr, STORE_RSTD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if N <= BLOCK:
        m = cols < N
        x = _load_row(X, R, x_stride, r_stride, row, cols, m, HAS_RES)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
        y = x * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(Y + row * y_stride + cols, y, mask=m)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, N, BLOCK):
            c = off + cols
            x = _load_row(X, R, x_stride, r_stride, row, c, c < N, HAS_RES)
            acc += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        for off in range(0, N, BLOCK):
            c = off + cols
            m = c < N
            if HAS_RES:  # the sum was written back to the residual in the first pass
                x = tl.load(R + row * r_stride + c, mask=m, other=0.0).to(tl.float32)
            else:
                x = tl.load(X + row * x_stride + c, mask=m, other=0.0).to(tl.float32)
            y = x * rstd
            if HAS_W:
                y = y * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
            tl.store(Y + row * y_stride + c, y, mask=m)
    if STORE_RSTD:
        tl.store(Rstd + row, rstd)


# tuned per size class of N: the default config of each class fits it (BLOCK =
# next_power_of_2(N) up to 8192, 4/8/16 warps), see _reduce_common.ROW_CLASSES
_KERNEL = rms_norm_fwd_kernel
# (the residual is updated in place: LibTuner's restore_value)
rms_norm_fwd_kernel = rc.row_tuners(rms_norm_fwd_kernel, restore_value=["R"])  # the name now holds the tuners; .fn is the kernel
_LAUNCH: dict = {}  # the kernel's tuner key -> its Launch
# the whole call's signature (aligned tensors only) -> the kept kernel (a tuner.launch.Bound), or
# None where nothing was kept (the interpreter): a repeat launches it with no tuner or launcher key
_KEPT = launching.KeptCache(_KERNEL)


def as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as rows of ``n`` for ``rms_norm_rows``: itself where it is contiguous with a
    last dim of ``n`` (no view to make), else a 2-D (rows, n) view with unit column stride;
    a copy only if none exists (a copy starts at another address)."""
    if t.is_contiguous() and t.shape[-1] == n:
        return t
    if t.numel() and t.stride(-1) != 1:
        t = t.contiguous()
    try:
        return t.view(-1, n)
    except RuntimeError:
        return t.contiguous().view(-1, n)


def _row_stride(t: torch.Tensor, n: int) -> int:
    return n if t.is_contiguous() else t.stride(0)


def rms_norm_rows(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float,
    residual: torch.Tensor | None = None, rstd: torch.Tensor | None = None,
) -> None:
    """Launch the row kernel over the last dim. ``x``, ``y`` and ``residual``: contiguous,
    or 2-D with unit column stride (``as_rows``); no view is made here (a view costs about
    as much as the rest of the call's Python)."""
    N = x.shape[-1]
    M = x.numel() // N if N else 0
    if M == 0:
        return
    xs, ys = _row_stride(x, N), _row_stride(y, N)
    ptrs = x.data_ptr() | y.data_ptr()
    rs, wd, rd = 0, None, None
    if weight is not None:
        weight = weight.contiguous()
        ptrs |= weight.data_ptr()
        wd = weight.dtype
    if residual is not None:
        rs, rd = _row_stride(residual, N), residual.dtype
        ptrs |= residual.data_ptr()
    if rstd is not None:
        ptrs |= rstd.data_ptr()
    eps = float(eps)
    # an absent residual or rstd is passed as None: Triton makes it a constexpr, not a pointer
    # to check (an absent weight, rare, stands in as x: the tuning key keeps its dtype)
    args = (x, xs, residual, rs, y, ys, weight if weight is not None else x, rstd, N, eps)
    key = (N, xs, rs, ys, x.dtype, rd, y.dtype, wd, rstd is not None) if not ptrs & 15 else None
    if key is not None and _KEPT.relaunch(key, (M, 1, 1), args):
        return
    lc = rms_norm_fwd_kernel.launcher(N, _LAUNCH, (N, x.dtype, rd, y.dtype, wd, rstd is not None))
    kw = {"HAS_W": weight is not None, "HAS_RES": residual is not None, "STORE_RSTD": rstd is not None}
    lc.fixed((M,), *args, **kw)
    if key is not None and key not in _KEPT:
        _KEPT.file(key, lc.tuner.kept(args, kw))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight``."""
    y = torch.empty_like(x) if x.is_contiguous() else torch.empty(size=x.shape, dtype=x.dtype, device=x.device)
    rms_norm_rows(as_rows(x, x.shape[-1]), y, weight, eps)
    return y
