"""``torch.ops.flag_gems.<op>``: flag_gems' fused kernels as PyTorch custom ops.

Registered when this module is first imported (``flag_gems.ops_lib()`` does it), never
at ``import flag_gems``. Each op has a fake (meta) implementation, so ``torch.compile``
and ``torch.export`` trace through it without running a kernel, and an impl for CPU
(the Triton interpreter) and CUDA.

    ops = flag_gems.ops_lib()
    y = ops.rms_norm(x, w, 1e-6)
    ops.fused_add_rms_norm(x, residual, w, 1e-6)         # in place, returns nothing
    ops.rotary_embedding(positions, q, k, head_size, cos_sin_cache, True)  # in place (vLLM)

The signatures follow vLLM's ``_C`` ops where one exists (rotary_embedding's
``cos_sin_cache`` is ``[max_position, rotary_dim]``: cos in the first half, sin in the
second). Ops that mutate declare it (``Tensor(a!)``) and return nothing, as
``torch.library.custom_op`` requires. No autograd formulas are registered: these are
inference ops (a backward through them raises).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from flag_gems import fused
from flag_gems.ops.mm import gemm

NAMESPACE = "flag_gems"
DEVICES = ("cpu", "cuda")


def _op(name: str, mutates_args=()):
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args, device_types=DEVICES)


# -- normalization ----------------------------------------------------------------------
@_op("rms_norm")
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return fused.rms_norm(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_op("fused_add_rms_norm", mutates_args=("x", "residual"))
def fused_add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> None:
    fused.fused_add_rms_norm(x, residual, weight, eps)


@fused_add_rms_norm.register_fake
def _(x, residual, weight, eps):
    return None


# -- rotary embedding ---------------------------------------------------------------------
def _heads(t: Tensor, head_size: int) -> Tensor:
    return t if t.dim() >= 3 and t.shape[-1] == head_size else t.unflatten(-1, (-1, head_size))


@_op("rotary_embedding", mutates_args=("query", "key"))
def rotary_embedding(
    positions: Tensor, query: Tensor, key: Optional[Tensor], head_size: int, cos_sin_cache: Tensor, is_neox: bool
) -> None:
    """vLLM's ``rotary_embedding``: rotate query/key (``[tokens, heads*head_size]`` or
    ``[..., heads, head_size]``) in place by the angles of ``positions``."""
    rot = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[:, : rot // 2], cos_sin_cache[:, rot // 2:]
    q = _heads(query, head_size)
    k = _heads(key, head_size) if key is not None else q[..., :1, :].clone()  # a throwaway k
    fused.apply_rotary_pos_emb(q, k, cos, sin, position_ids=positions, rotary_interleaved=not is_neox,
                               inplace=True, rotary_dim=rot)


@rotary_embedding.register_fake
def _(positions, query, key, head_size, cos_sin_cache, is_neox):
    return None


# -- gated activations --------------------------------------------------------------------
def _gated_fake(x: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@_op("silu_and_mul")
def silu_and_mul(x: Tensor) -> Tensor:
    return fused.silu_and_mul(x)


@silu_and_mul.register_fake
def _(x):
    return _gated_fake(x)


@_op("gelu_and_mul")
def gelu_and_mul(x: Tensor, approximate: str = "none") -> Tensor:
    return fused.gelu_and_mul(x, approximate)


@gelu_and_mul.register_fake
def _(x, approximate="none"):
    return _gated_fake(x)


# -- GEMMs --------------------------------------------------------------------------------
def _check_mm(a: Tensor, b: Tensor, dims: int, what: str) -> None:
    torch._check(a.dim() == dims and b.dim() == dims, lambda: f"{what}: expected {dims}-D operands")
    torch._check(a.dtype == b.dtype, lambda: f"{what}: dtypes differ: {a.dtype}, {b.dtype}")
    torch._check(a.shape[-1] == b.shape[-2], lambda: f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")


@_op("mm")
def mm(a: Tensor, b: Tensor) -> Tensor:
    _check_mm(a, b, 2, "flag_gems::mm")
    return gemm(a, b, a.new_empty((a.shape[0], b.shape[1])))


@mm.register_fake
def _(a, b):
    _check_mm(a, b, 2, "flag_gems::mm")
    return a.new_empty((a.shape[0], b.shape[1]))


@_op("addmm")
def addmm(bias: Tensor, a: Tensor, b: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    """``beta * bias + alpha * (a @ b)``; ``bias`` broadcasts to ``[M, N]``."""
    _check_mm(a, b, 2, "flag_gems::addmm")
    shape = (a.shape[0], b.shape[1])
    out = a.new_empty(shape)
    return gemm(a, b, out, bias.expand(shape) if beta != 0 else None, float(alpha), float(beta))


@addmm.register_fake
def _(bias, a, b, beta=1.0, alpha=1.0):
    _check_mm(a, b, 2, "flag_gems::addmm")
    return a.new_empty((a.shape[0], b.shape[1]))


@_op("bmm")
def bmm(a: Tensor, b: Tensor) -> Tensor:
    _check_mm(a, b, 3, "flag_gems::bmm")
    torch._check(a.shape[0] == b.shape[0], lambda: "flag_gems::bmm: batch sizes differ")
    return gemm(a, b, a.new_empty((a.shape[0], a.shape[1], b.shape[2])))


@bmm.register_fake
def _(a, b):
    _check_mm(a, b, 3, "flag_gems::bmm")
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


OPS = ["rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul", "gelu_and_mul", "mm", "addmm", "bmm"]
