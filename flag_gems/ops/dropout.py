"""dropout: aten ``native_dropout`` and ``native_dropout_backward``.

The keep mask comes from Philox (``tl.rand``) on (seed, offset + element index), with
seed and offset drawn from torch's default CPU generator, so ``torch.manual_seed``
makes a run repeatable. The bits differ from aten's; the statistics do not.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.registry import Unsupported, register
from flag_gems.utils import cdiv
from tuner import libtuner

log = logging.getLogger(__name__)

_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(512, 4), (1024, 4), (2048, 8), (4096, 8)]]
_DEFAULT = triton.Config({"BLOCK": 1024}, num_warps=4)


@libtuner(configs=_CONFIGS, key=["n"], strategy=["log"], default=_DEFAULT)
@triton.jit
def dropout_fwd_kernel(X, Y, Mask, n, p, scale, seed, offset, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    keep = tl.rand(seed, (offset + i).to(tl.uint32)) >= p  # uint32 counter: wraps past 2**32
    x = tl.load(X + i, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + i, x * (keep.to(tl.float32) * scale), mask=m)  # x * mask * scale, as torch: a dropped NaN stays NaN
    tl.store(Mask + i, keep, mask=m)


@libtuner(configs=_CONFIGS, key=["n"], strategy=["log"], default=_DEFAULT)
@triton.jit
def dropout_bwd_kernel(DY, Mask, DX, n, scale, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    keep = tl.load(Mask + i, mask=m, other=0) != 0
    dy = tl.load(DY + i, mask=m, other=0.0).to(tl.float32)
    tl.store(DX + i, dy * (keep.to(tl.float32) * scale), mask=m)


def _philox_seed() -> tuple[int, int]:
    s = torch.randint(0, 2**31 - 1, (2,), generator=torch.default_generator)
    return int(s[0]), int(s[1])


@register("native_dropout")
def native_dropout(input: torch.Tensor, p: float, train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    if train is not None and not train:
        return input.clone(), torch.ones_like(input, dtype=torch.bool)
    if not 0 <= p <= 1 or not input.is_floating_point():  # aten's call (an error on CPU)
        raise Unsupported("native_dropout takes a float input and p in [0, 1]")
    x = input.contiguous()
    y = torch.empty_like(x)
    mask = torch.empty(size=x.shape, dtype=torch.bool, device=x.device)
    n = x.numel()
    if n == 0:
        return y, mask
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    seed, offset = _philox_seed()
    grid = lambda META: (cdiv(n, META["BLOCK"]),)
    dropout_fwd_kernel[grid](x, y, mask, n, float(p), scale, seed, offset)
    return y, mask


@register("native_dropout_backward")
def native_dropout_backward(grad_output: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    dy = grad_output.contiguous()
    mask = mask.expand_as(dy).contiguous()
    dx = torch.empty_like(dy)
    n = dy.numel()
    if n:
        grid = lambda META: (cdiv(n, META["BLOCK"]),)
        dropout_bwd_kernel[grid](dy, mask, dx, n, float(scale))
    return dx
