"""Gated MLP activations: ``act(x[..., :d]) * x[..., d:]``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flag_gems.fused import gelu_and_mul, silu_and_mul
from flag_gems.modules._util import needs_grad


class GemsSiluAndMul(torch.nn.Module):
    """``silu(x[..., :d]) * x[..., d:]``, ``d = x.shape[-1] // 2`` (vLLM's SiluAndMul)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(x):
            d = x.shape[-1] // 2
            return F.silu(x[..., :d]) * x[..., d:]
        return silu_and_mul(x)


class GemsGeluAndMul(torch.nn.Module):
    """``gelu(x[..., :d]) * x[..., d:]`` with ``approximate`` "none" (erf) or "tanh"."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(x):
            d = x.shape[-1] // 2
            return F.gelu(x[..., :d], approximate=self.approximate) * x[..., d:]
        return gelu_and_mul(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
