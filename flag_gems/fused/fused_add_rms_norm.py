"""vLLM's fused residual add + RMSNorm, in place (the kernel lives in ``rms_norm``)."""
from __future__ import annotations

import torch

from flag_gems.fused.rms_norm import as_rows, rms_norm_rows


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual <- x + residual``; ``x <- rms_norm(residual) * weight``; returns both.

    Both tensors are updated in place (through a copy when a row view is impossible)."""
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape")
    n = x.shape[-1]
    x2, r2 = as_rows(x, n), as_rows(residual, n)
    rms_norm_rows(x2, x2, weight, eps, residual=r2)
    # as_rows copied a tensor it could not view (a view starts at the same address): write the result back
    if x2.data_ptr() != x.data_ptr():
        x.copy_(x2.view(x.shape))
    if r2.data_ptr() != residual.data_ptr():
        residual.copy_(r2.view(residual.shape))
    return x, residual
