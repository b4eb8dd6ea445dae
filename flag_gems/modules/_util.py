from __future__ import annotations

import torch


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record an op on these tensors (the fused kernels have no backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
