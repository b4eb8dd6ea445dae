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
rms_norm_fwd_kernel = rc.row_tuners(rms_norm_fwd_kernel)  # the name now holds the tuners; .fn is the kernel
_LAUNCH: dict = {}


def as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as a 2-D (rows, n) view with unit column stride; a copy only if none exists."""
    if t.numel() and t.stride(-1) != 1:
        t = t.contiguous()
    try:
        return t.view(-1, n)
    except RuntimeError:
        return t.contiguous().view(-1, n)


def rms_norm_rows(
    x2: torch.Tensor, y2: torch.Tensor, weight: torch.Tensor | None, eps: float,
    residual2: torch.Tensor | None = None, rstd: torch.Tensor | None = None,
) -> None:
    """Launch the row kernel on 2-D row views (unit column stride)."""
    M, N = x2.shape
    if M == 0 or N == 0:
        return
    w = weight.contiguous() if weight is not None else x2
    r = residual2 if residual2 is not None else x2
    rstd_buf = rstd if rstd is not None else x2
    has_w, has_res, has_rstd = weight is not None, residual2 is not None, rstd is not None
    key = (N, x2.dtype, r.dtype, y2.dtype, w.dtype, rstd_buf.dtype, has_w, has_res, has_rstd)
    xs, rs, ys = x2.stride(0), r.stride(0), y2.stride(0)
    aligned = not (x2.data_ptr() | r.data_ptr() | y2.data_ptr() | w.data_ptr() | rstd_buf.data_ptr()) & 15
    rms_norm_fwd_kernel.launcher(N, _LAUNCH, key).fixed(
        (M,), x2, xs, r, rs, y2, ys, w, rstd_buf, N, eps,
        direct=(xs, rs, ys, type(eps)) if aligned else None, HAS_W=has_w, HAS_RES=has_res, STORE_RSTD=has_rstd,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight``."""
    n = x.shape[-1]
    x2 = as_rows(x, n)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rms_norm_rows(x2, y.view(-1, n), weight, eps)
    return y
