"""nonzero: count per block, an exclusive scan of the counts, then each block writes the
coordinates of its nonzeros at its offset. The output size needs one host sync, as in aten.

The count kernel's BLOCK is tuned; the write kernel takes the same BLOCK (its blocks'
offsets are the scan of the count kernel's blocks)."""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.registry import register
from flag_gems.utils import cdiv
from tuner import libtuner

log = logging.getLogger(__name__)

_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(256, 2), (512, 4), (1024, 4), (2048, 8), (4096, 8)]]
MIN_BLOCK = 256  # the smallest BLOCK of _CONFIGS: the per-block counts are sized for it


@triton.jit
def _nonzero(v):
    if v.dtype.is_floating():  # never compare bf16 directly (wrong in the interpreter)
        if v.dtype.primitive_bitwidth < 64:
            v = v.to(tl.float32)
    return v != 0


@libtuner(configs=_CONFIGS, key=["n"], strategy=["log"], default=triton.Config({"BLOCK": 1024}, num_warps=4))
@triton.jit
def nonzero_count_kernel(x, counts, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    nz = _nonzero(tl.load(x + i, mask=i < n, other=0)) & (i < n)
    tl.store(counts + tl.program_id(0), tl.sum(nz.to(tl.int64), axis=0))


@triton.jit
def nonzero_write_kernel(x, offsets, shape, out, n, NDIM: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    nz = _nonzero(tl.load(x + i, mask=i < n, other=0)) & (i < n)
    row = tl.load(offsets + tl.program_id(0)) + tl.cumsum(nz.to(tl.int64), axis=0) - 1
    rest = i
    for d in tl.static_range(NDIM - 1, -1, -1):  # coordinates from the innermost dim
        size = tl.load(shape + d)
        tl.store(out + row * NDIM + d, rest % size, mask=nz)
        rest = rest // size


@register("nonzero")
def nonzero(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1).contiguous()
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    n, ndim = flat.numel(), x.dim()
    if n == 0:
        return torch.empty(size=(0, ndim), dtype=torch.int64, device=x.device)
    used: dict = {}

    def grid(META):
        used.update(META)
        return (cdiv(n, META["BLOCK"]),)

    counts = torch.empty(cdiv(n, MIN_BLOCK), dtype=torch.int64, device=x.device)
    nonzero_count_kernel[grid](flat, counts, n)
    block = used["BLOCK"]
    nblocks = cdiv(n, block)
    counts = counts[:nblocks]
    offsets = torch.cumsum(counts, 0)
    total = int(offsets[-1].item())
    out = torch.empty(size=(total, ndim), dtype=torch.int64, device=x.device)
    if total and ndim:
        shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)
        nonzero_write_kernel[(nblocks,)](flat, offsets - counts, shape, out, n, NDIM=ndim, BLOCK=block,
                                         num_warps=4 if block <= 1024 else 8)
    return out
