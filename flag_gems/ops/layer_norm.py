"""layer_norm: aten ``native_layer_norm`` and ``native_layer_norm_backward``.

The forward runs one program per row. When the row fits in one block it stays in
registers (one read, one write); longer rows take a chunked three-pass path. The block
size is the tuned parameter, keyed on the normalized size.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.registry import as_from_outside, aten_fallback, register, switched_on
from flag_gems.utils import cdiv
from tuner import launch as launching
from tuner import libtuner

log = logging.getLogger(__name__)

# Row kernels: one block covers a whole LLM hidden row (4096..8192) in the common case.
ROW_CONFIGS = [
    triton.Config({"BLOCK": b}, num_warps=w)
    for b, w in [(512, 4), (1024, 4), (2048, 8), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]
]
ROW_DEFAULT = triton.Config({"BLOCK": 4096}, num_warps=8)  # the backward's (one config for every N)


@triton.jit
def layer_norm_fwd_kernel(
    X, Y, W, B, Mean, Rstd, N, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_STATS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * N
    y_row = Y + row * N
    cols = tl.arange(0, BLOCK)
    if N <= BLOCK:
        m = cols < N
        x = tl.load(x_row + cols, mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / N
        d = tl.where(m, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / N + eps)
        y = d * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_row + cols, y, mask=m)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, N, BLOCK):
            c = off + cols
            acc += tl.load(x_row + c, mask=c < N, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / N
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, N, BLOCK):  # centred second pass: no cancellation
            c = off + cols
            x = tl.load(x_row + c, mask=c < N, other=0.0).to(tl.float32)
            d = tl.where(c < N, x - mean, 0.0)
            acc += d * d
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        for off in range(0, N, BLOCK):
            c = off + cols
            m = c < N
            y = (tl.load(x_row + c, mask=m, other=0.0).to(tl.float32) - mean) * rstd
            if HAS_W:
                y = y * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
            if HAS_B:
                y = y + tl.load(B + c, mask=m, other=0.0).to(tl.float32)
            tl.store(y_row + c, y, mask=m)
    if STORE_STATS:  # (not for inference: Mean and Rstd are None)
        tl.store(Mean + row, mean)
        tl.store(Rstd + row, rstd)


# tuned per size class of N: each class's default fits it (BLOCK = next_power_of_2(N) up
# to 8192, 4/8/16 warps), see _reduce_common.ROW_CLASSES
layer_norm_fwd_kernel = rc.row_tuners(layer_norm_fwd_kernel)  # the name now holds the tuners; .fn is the kernel
_FWD: dict = {}
_FWD_KEPT = launching.KeptCache(layer_norm_fwd_kernel.fn)  # the forward's signature -> its kept kernel


@libtuner(configs=ROW_CONFIGS, key=["N"], strategy=["log"], default=ROW_DEFAULT)
@triton.jit
def layer_norm_bwd_dx_kernel(DY, X, W, Mean, Rstd, DX, N, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mean = tl.load(Mean + row).to(tl.float32)
    rstd = tl.load(Rstd + row).to(tl.float32)
    sg = tl.zeros([BLOCK], dtype=tl.float32)
    sgx = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        c = off + cols
        m = c < N
        g = tl.load(DY + row * N + c, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
        xh = tl.where(m, (tl.load(X + row * N + c, mask=m, other=0.0).to(tl.float32) - mean) * rstd, 0.0)
        sg += g
        sgx += g * xh
    mg = tl.sum(sg, axis=0) / N
    mgx = tl.sum(sgx, axis=0) / N
    for off in range(0, N, BLOCK):
        c = off + cols
        m = c < N
        g = tl.load(DY + row * N + c, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
        xh = (tl.load(X + row * N + c, mask=m, other=0.0).to(tl.float32) - mean) * rstd
        tl.store(DX + row * N + c, rstd * (g - mg - xh * mgx), mask=m)


@libtuner(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4) for bm, bn in [(32, 32), (64, 32), (32, 64), (128, 16)]],
    key=["M", "N"],
    strategy=["log", "log"],
    default=triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4),
)
@triton.jit
def layer_norm_bwd_dwdb_kernel(DY, X, Mean, Rstd, DW, DB, M, N, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program per column block, walking every row: no atomics, deterministic
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cm = cols < N
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r0 in range(0, M, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rm = rows < M
        m = rm[:, None] & cm[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_DW:
            x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
            mean = tl.load(Mean + rows, mask=rm, other=0.0).to(tl.float32)
            rstd = tl.load(Rstd + rows, mask=rm, other=0.0).to(tl.float32)
            dw += dy * (x - mean[:, None]) * rstd[:, None]
        db += dy
    if HAS_DW:
        tl.store(DW + cols, tl.sum(dw, axis=0).to(DW.dtype.element_ty), mask=cm)
    if HAS_DB:
        tl.store(DB + cols, tl.sum(db, axis=0).to(DB.dtype.element_ty), mask=cm)


def _split(x: torch.Tensor, normalized_shape: Sequence[int]) -> tuple[int, int, int]:
    axis = x.dim() - len(normalized_shape)
    N = math.prod(normalized_shape)
    M = math.prod(x.shape[:axis])
    return axis, M, N


def _stat_shape(x: torch.Tensor, axis: int) -> list[int]:
    return list(x.shape[:axis]) + [1] * (x.dim() - axis)


@register("native_layer_norm")
def native_layer_norm(
    input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rc.check_norm_args(input, normalized_shape, weight, bias)
    M, N, stat_shape = _dims(input, normalized_shape)
    x = input.contiguous()
    dev = x.device
    y = torch.empty_like(x)
    # CPU aten keeps the stats in the input dtype; CUDA aten in fp32. fp32 is the safer choice.
    mean = torch.empty(size=stat_shape, dtype=torch.float32, device=dev)
    rstd = torch.empty(size=stat_shape, dtype=torch.float32, device=dev)
    _forward(x, y, weight, bias, mean, rstd, M, N, eps)
    return y, mean, rstd


@register("layer_norm", autograd=True)
def layer_norm(
    input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None, eps: float = 1e-5, cudnn_enable: bool = True,
) -> torch.Tensor:
    """Without a graph to record, only y: no mean and rstd to allocate and store (aten's
    composite layer_norm would call native_layer_norm for all three)."""
    if not _NATIVE_ON() or torch.is_grad_enabled() and (
        input.requires_grad or weight is not None and weight.requires_grad or bias is not None and bias.requires_grad
    ):
        # aten's composite: native_layer_norm (flag_gems') with autograd's backward (flag_gems')
        return as_from_outside(_COMPOSITE, input, normalized_shape, weight, bias, eps, cudnn_enable)
    rc.check_norm_args(input, normalized_shape, weight, bias)
    M, N, _ = _dims(input, normalized_shape)
    x = input.contiguous()
    y = torch.empty_like(x)
    _forward(x, y, weight, bias, None, None, M, N, eps)
    return y


_COMPOSITE = aten_fallback("layer_norm")
_NATIVE_ON = switched_on("native_layer_norm")  # unused=["native_layer_norm"]: aten's layer_norm altogether


def _dims(x: torch.Tensor, normalized_shape: Sequence[int]) -> tuple[int, int, list[int]]:
    """(rows, row length, the stats' shape), cached per shape."""
    dims = _DIMS.get((x.shape, len(normalized_shape)))
    if dims is None:
        if len(_DIMS) > 4096:
            _DIMS.clear()
        axis, M, N = _split(x, normalized_shape)
        dims = _DIMS[(x.shape, len(normalized_shape))] = (M, N, _stat_shape(x, axis))
    return dims


def _forward(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             mean: torch.Tensor | None, rstd: torch.Tensor | None, M: int, N: int, eps: float) -> None:
    """Launch the row kernel (x, y contiguous); no stats stored where mean is None."""
    if M == 0 or N == 0:
        return
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    has_w, has_b, stats = weight is not None, bias is not None, mean is not None
    key = (N, x.dtype, w.dtype, b.dtype, has_w, has_b, stats)
    ptrs = x.data_ptr() | y.data_ptr() | w.data_ptr() | b.data_ptr()
    if stats:
        ptrs |= mean.data_ptr() | rstd.data_ptr()
    args = (x, y, w, b, mean, rstd, N, eps)
    sig = (*key, type(eps)) if not ptrs & 15 else None  # fixes the tuner's key and the launcher's
    if sig is not None and _FWD_KEPT.relaunch(sig, (M, 1, 1), args):
        return
    lc = layer_norm_fwd_kernel.launcher(N, _FWD, key)
    kw = {"HAS_W": has_w, "HAS_B": has_b, "STORE_STATS": stats}
    lc.fixed((M,), *args, **kw)
    if sig is not None and sig not in _FWD_KEPT:
        _FWD_KEPT.file(sig, lc.tuner.kept(args, kw))


_DIMS: dict = {}


@register("native_layer_norm_backward")
def native_layer_norm_backward(
    grad_out: torch.Tensor,
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    rc.check_norm_args(input, normalized_shape)  # (fp64: aten's, as the forward)
    axis, M, N = _split(input, normalized_shape)
    x = input.contiguous()
    dy = grad_out.contiguous()
    mean, rstd = mean.contiguous(), rstd.contiguous()
    dx = dw = db = None
    if output_mask[0]:
        dx = torch.empty_like(x)
        if M and N:
            w = weight.contiguous() if weight is not None else x
            layer_norm_bwd_dx_kernel[(M,)](dy, x, w, mean, rstd, dx, N, HAS_W=weight is not None)
    want_dw = output_mask[1] and weight is not None
    want_db = output_mask[2] and bias is not None
    if want_dw or want_db:
        # each program sums its columns over every row and stores them in the parameter's
        # dtype: no zeroed fp32 buffers, no cast kernels (an empty input: zero gradients)
        new = torch.empty if M and N else torch.zeros
        dw = new(weight.shape, dtype=weight.dtype, device=x.device) if want_dw else None
        db = new(bias.shape, dtype=bias.dtype, device=x.device) if want_db else None
        if M and N:
            grid = lambda META: (cdiv(N, META["BLOCK_N"]),)
            layer_norm_bwd_dwdb_kernel[grid](dy, x, mean, rstd, dw if want_dw else db, db if want_db else dw, M, N,
                                             HAS_DW=want_dw, HAS_DB=want_db)
    return dx, dw, db
