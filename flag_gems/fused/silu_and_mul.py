"""Gated activations of LLM MLPs: ``act(x[..., :d]) * x[..., d:]`` in one pass.

The kernel (shared with ``gelu_and_mul``) runs one program per (row, column block)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from flag_gems.ops._reduce_common import cached_launch
from flag_gems.utils import cdiv
from tuner import libtuner
from tuner.launch import int_spec

SILU, GELU, GELU_TANH = 0, 1, 2


@libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(256, 2), (512, 4), (1024, 4), (2048, 8), (4096, 8)]],
    key=["d", "ACT"],  # silu and gelu share the kernel, not their tuned configs
    strategy=["log", "identity"],
    default=triton.Config({"BLOCK": 1024}, num_warps=4),
)
@triton.jit
def gated_act_kernel(X, x_stride, Out, d, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < d
    a = tl.load(X + row * x_stride + cols, mask=m, other=0.0).to(tl.float32)
    b = tl.load(X + row * x_stride + d + cols, mask=m, other=0.0).to(tl.float32)
    if ACT == 0:
        g = a / (1.0 + tl.exp(-a))
    elif ACT == 1:
        g = 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))
    else:
        # tanh(u) = 1 - 2 / (exp(2u) + 1), safe at both infinities
        u = 0.7978845608028654 * (a + 0.044715 * a * a * a)
        g = 0.5 * a * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))
    tl.store(Out + row * d + cols, g * b, mask=m)


def gated_act(x: torch.Tensor, act: int) -> torch.Tensor:
    if x.shape[-1] % 2:
        raise ValueError(f"the last dim ({x.shape[-1]}) must be even: [gate | up]")
    d = x.shape[-1] // 2
    out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    x2 = x if x.stride(-1) == 1 else x.contiguous()
    try:
        x2 = x2.view(-1, 2 * d)
    except RuntimeError:
        x2 = x2.contiguous().view(-1, 2 * d)
    rows, xs = x2.shape[0], x2.stride(0)
    lc = cached_launch(gated_act_kernel, _LAUNCH, (d, act, x2.dtype, out.dtype))
    # direct relaunch key: d is the Launch's; the row stride's specialization (as Triton's)
    aligned = not (x2.data_ptr() | out.data_ptr()) & 15
    lc.fixed(lambda META: (rows, cdiv(d, META["BLOCK"])), x2, xs, out, d, direct=int_spec(xs) if aligned else None, ACT=act)
    return out


_LAUNCH: dict = {}  # (d, ACT, dtypes) -> its Launch


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``."""
    return gated_act(x, SILU)
