"""group_norm: aten ``native_group_norm`` and ``native_group_norm_backward``.

The input is viewed as (N, C, HxW); a group is ``C/G * HxW`` contiguous elements, so
one program normalizes one (n, group) with a chunked loop (the block size is tuned).
dweight/dbias reduce per channel over N and HxW, one program per channel.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.registry import register
from tuner import libtuner

log = logging.getLogger(__name__)

_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(256, 4), (1024, 4), (2048, 8), (4096, 8), (8192, 16)]]
_DEFAULT = triton.Config({"BLOCK": 2048}, num_warps=8)


@libtuner(configs=_CONFIGS, key=["L"], strategy=["log"], default=_DEFAULT)
@triton.jit
def group_norm_fwd_kernel(X, Y, W, B, Mean, Rstd, L, HxW, Cg, G, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # = n * G + g
    base = pid * L
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, L, BLOCK):
        c = off + cols
        acc += tl.load(X + base + c, mask=c < L, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / L
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, L, BLOCK):  # centred second pass: no cancellation
        c = off + cols
        d = tl.where(c < L, tl.load(X + base + c, mask=c < L, other=0.0).to(tl.float32) - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / L + eps)
    ch0 = (pid % G) * Cg
    for off in range(0, L, BLOCK):
        c = off + cols
        m = c < L
        y = (tl.load(X + base + c, mask=m, other=0.0).to(tl.float32) - mean) * rstd
        ch = ch0 + c // HxW
        if HAS_W:
            y = y * tl.load(W + ch, mask=m, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + ch, mask=m, other=0.0).to(tl.float32)
        tl.store(Y + base + c, y, mask=m)
    tl.store(Mean + pid, mean)
    tl.store(Rstd + pid, rstd)


@libtuner(configs=_CONFIGS, key=["L"], strategy=["log"], default=_DEFAULT)
@triton.jit
def group_norm_bwd_dx_kernel(DY, X, W, Mean, Rstd, DX, L, HxW, Cg, G, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w[channel], over the group
    pid = tl.program_id(0).to(tl.int64)
    base = pid * L
    cols = tl.arange(0, BLOCK)
    mean = tl.load(Mean + pid).to(tl.float32)
    rstd = tl.load(Rstd + pid).to(tl.float32)
    ch0 = (pid % G) * Cg
    sg = tl.zeros([BLOCK], dtype=tl.float32)
    sgx = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, L, BLOCK):
        c = off + cols
        m = c < L
        g = tl.load(DY + base + c, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + ch0 + c // HxW, mask=m, other=0.0).to(tl.float32)
        xh = tl.where(m, (tl.load(X + base + c, mask=m, other=0.0).to(tl.float32) - mean) * rstd, 0.0)
        sg += g
        sgx += g * xh
    mg = tl.sum(sg, axis=0) / L
    mgx = tl.sum(sgx, axis=0) / L
    for off in range(0, L, BLOCK):
        c = off + cols
        m = c < L
        g = tl.load(DY + base + c, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            g = g * tl.load(W + ch0 + c // HxW, mask=m, other=0.0).to(tl.float32)
        xh = (tl.load(X + base + c, mask=m, other=0.0).to(tl.float32) - mean) * rstd
        tl.store(DX + base + c, rstd * (g - mg - xh * mgx), mask=m)


@libtuner(configs=_CONFIGS, key=["HxW"], strategy=["log"], default=triton.Config({"BLOCK": 1024}, num_warps=4))
@triton.jit
def group_norm_bwd_dwdb_kernel(DY, X, Mean, Rstd, DW, DB, N, C, HxW, G, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, BLOCK: tl.constexpr):
    ch = tl.program_id(0).to(tl.int64)
    grp = ch // (C // G)
    cols = tl.arange(0, BLOCK)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    for n in range(0, N):
        base = (n * C + ch) * HxW
        mean = tl.load(Mean + n * G + grp).to(tl.float32)
        rstd = tl.load(Rstd + n * G + grp).to(tl.float32)
        for off in range(0, HxW, BLOCK):
            c = off + cols
            m = c < HxW
            dy = tl.load(DY + base + c, mask=m, other=0.0).to(tl.float32)
            if HAS_DW:
                x = tl.load(X + base + c, mask=m, other=0.0).to(tl.float32)
                dw += dy * (x - mean) * rstd
            db += dy
    if HAS_DW:
        tl.store(DW + ch, tl.sum(dw, axis=0).to(DW.dtype.element_ty))
    if HAS_DB:
        tl.store(DB + ch, tl.sum(db, axis=0).to(DB.dtype.element_ty))


@register("native_group_norm")
def native_group_norm(
    input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, N: int, C: int, HxW: int, group: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rc.refuse_fp64(input, "group_norm")
    x = input.contiguous()
    y = torch.empty_like(x)
    # CPU aten keeps the stats in the input dtype; CUDA aten in fp32. fp32 is the safer choice.
    mean = torch.empty(N, group, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    L = C // group * HxW
    if N * group and L:
        w = weight.contiguous() if weight is not None else x
        b = bias.contiguous() if bias is not None else x
        group_norm_fwd_kernel[(N * group,)](
            x, y, w, b, mean, rstd, L, HxW, C // group, group, eps, HAS_W=weight is not None, HAS_B=bias is not None
        )
    return y, mean, rstd


@register("native_group_norm_backward")
def native_group_norm_backward(
    grad_out: torch.Tensor, input: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
    N: int, C: int, HxW: int, group: int, output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    rc.refuse_fp64(input, "group_norm")
    x = input.contiguous()
    dy = grad_out.contiguous()
    mean, rstd = mean.contiguous(), rstd.contiguous()
    L = C // group * HxW
    dx = dw = db = None
    if output_mask[0]:
        dx = torch.empty_like(x)
        if N * group and L:
            w = weight.contiguous() if weight is not None else x
            group_norm_bwd_dx_kernel[(N * group,)](dy, x, w, mean, rstd, dx, L, HxW, C // group, group, HAS_W=weight is not None)
    if output_mask[1] or output_mask[2]:
        # one program per channel sums it over every sample and stores it in the parameter's
        # dtype: no zeroed fp32 buffers, no casts (an empty input: zero gradients)
        new = torch.empty if C and N and HxW else torch.zeros
        dtype = weight.dtype if weight is not None else x.dtype
        dw = new(C, dtype=dtype, device=x.device) if output_mask[1] else None
        db = new(C, dtype=dtype, device=x.device) if output_mask[2] else None
        if C and N and HxW:
            group_norm_bwd_dwdb_kernel[(C,)](dy, x, mean, rstd, dw if dw is not None else db, db if db is not None else dw,
                                             N, C, HxW, group, HAS_DW=output_mask[1], HAS_DB=output_mask[2])
    return dx, dw, db
