"""``gelu(x[..., :d]) * x[..., d:]`` (exact erf or tanh approximation)."""
from __future__ import annotations

import torch

from flag_gems.fused.silu_and_mul import GELU, GELU_TANH, gated_act


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return gated_act(x, GELU if approximate == "none" else GELU_TANH)
