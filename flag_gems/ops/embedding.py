"""embedding: aten ``embedding`` (a row gather) and ``embedding_dense_backward``.

The backward scatters each grad row into an fp32 buffer with atomic adds (indices may
repeat), skipping ``padding_idx``; ``scale_grad_by_freq`` first counts each index's
occurrences the same way and divides by them.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.ops.index import check_index
from flag_gems.registry import register
from flag_gems.utils import cdiv
from tuner import launch as launching
from tuner import libtuner
from tuner.launch import int_spec

log = logging.getLogger(__name__)

_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(128, 2), (256, 4), (512, 4), (1024, 4), (2048, 8)]]


@triton.jit
def embedding_fwd_kernel(W, sw_r, sw_c, Idx, Out, V, D, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    row = tl.load(Idx + i).to(tl.int64)
    rows = cols * 0 + row  # (block-shaped: the interpreter takes no scalar in a mask)
    ok = (rows >= 0) & (rows < V)  # an index out of range reads nothing (a row of zeros)
    tl.device_assert(ok, "embedding: index out of range")
    v = tl.load(W + row * sw_r + cols * sw_c, mask=m & ok, other=0)
    tl.store(Out + i * D + cols, v, mask=m)


# tuned per size class of D: the default copies a whole row (up to 8192) per program with
# BLOCK = next_power_of_2(D), see _reduce_common.ROW_CLASSES
embedding_fwd_kernel = rc.row_tuners(embedding_fwd_kernel, key="D")  # .fn is the kernel
_FWD: dict = {}
_FWD_KEPT = launching.KeptCache(embedding_fwd_kernel.fn)  # the forward's signature -> its kept kernel


@triton.jit
def embedding_count_kernel(Idx, Counts, n, V, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    idx = tl.load(Idx + i, mask=m, other=0).to(tl.int64)
    tl.atomic_add(Counts + idx, tl.full([BLOCK], 1.0, tl.float32), mask=m & (idx >= 0) & (idx < V))


@libtuner(configs=_CONFIGS, key=["D"], strategy=["log"], default=triton.Config({"BLOCK": 1024}, num_warps=4),
          reset_to_zero=["Acc"])
@triton.jit
def embedding_bwd_kernel(G, Idx, Counts, Acc, V, D, padding_idx, SCALE_BY_FREQ: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(Idx + i).to(tl.int64)
    # a block-shaped comparison: the interpreter rejects a scalar-broadcast mask in atomics
    rows = cols * 0 + row
    m = (cols < D) & (rows != padding_idx) & (rows >= 0) & (rows < V)
    g = tl.load(G + i * D + cols, mask=m, other=0.0).to(Acc.dtype.element_ty)
    if SCALE_BY_FREQ:
        g = g / tl.load(Counts + row)
    tl.atomic_add(Acc + row * D + cols, g, mask=m)


@register("embedding")
def embedding(weight: torch.Tensor, indices: torch.Tensor, padding_idx: int = -1, scale_grad_by_freq: bool = False, sparse: bool = False) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"embedding weight must be 2-D, got {tuple(weight.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise RuntimeError(f"Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int; but got {indices.dtype} instead")
    check_index(indices, weight.shape[0], "index out of range in self")
    V, D = weight.shape
    idx = indices.contiguous()  # (read flat: no view needed)
    out = torch.empty(size=(*indices.shape, D), dtype=weight.dtype, device=weight.device)
    n = idx.numel()
    if n and D:
        s0, s1 = weight.stride()
        args = (weight, s0, s1, idx, out, V, D)
        aligned = not (weight.data_ptr() | idx.data_ptr() | out.data_ptr()) & 15
        sig = (D, weight.dtype, idx.dtype, s0, s1, int_spec(V)) if aligned else None  # fixes the tuner's key and the launcher's
        grid = lambda META: (n, cdiv(D, META["BLOCK"]), 1)
        if sig is not None and _FWD_KEPT.relaunch(sig, grid, args):
            return out
        lc = embedding_fwd_kernel.launcher(D, _FWD, (D, weight.dtype, idx.dtype))
        lc.fixed(grid, *args)
        if sig is not None and sig not in _FWD_KEPT:
            _FWD_KEPT.file(sig, lc.tuner.kept(args, {}))
    return out


@register("embedding_dense_backward")
def embedding_dense_backward(grad_output: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool) -> torch.Tensor:
    D = grad_output.shape[-1]
    idx = indices.contiguous().view(-1)
    n = idx.numel()
    g = grad_output.contiguous().view(n, D)
    # sums in fp32 (fp64 for an fp64 gradient)
    acc_dtype = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
    acc = torch.zeros(num_weights, D, dtype=acc_dtype, device=grad_output.device)
    if n and D:
        counts = acc  # unused unless scaling
        if scale_grad_by_freq:
            counts = torch.zeros(num_weights, dtype=torch.float32, device=grad_output.device)
            embedding_count_kernel[(cdiv(n, 1024),)](idx, counts, n, num_weights, BLOCK=1024)
        grid = lambda META: (n, cdiv(D, META["BLOCK"]))
        embedding_bwd_kernel[grid](g, idx, counts, acc, num_weights, D, padding_idx, SCALE_BY_FREQ=scale_grad_by_freq)
    return acc.to(grad_output.dtype)
