"""RMSNorm, optionally fused with the residual add before it (vLLM semantics)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flag_gems.fused import fused_add_rms_norm, rms_norm
from flag_gems.fused.rms_norm import as_rows, rms_norm_rows
from flag_gems.modules._util import needs_grad


class GemsRMSNorm(torch.nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dim.

    ``forward(x)`` returns ``y``. ``forward(x, residual)`` first forms
    ``residual = x + residual`` and normalizes that, returning ``(y, residual)`` -- the
    pre-norm transformer's "add the block's output to the stream, then normalize" in
    one kernel. With ``inplace=True`` the results overwrite ``x`` (and ``residual``), as
    vLLM's ``fused_add_rms_norm`` does; by default the inputs are left untouched.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, inplace: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.inplace = inplace
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"GemsRMSNorm({self.hidden_size}) got an input of last dim {x.shape[-1]}")
        if needs_grad(x, residual, self.weight):
            return self._torch_forward(x, residual)
        if residual is None:
            if not self.inplace:
                return rms_norm(x, self.weight, self.eps)
            x2 = as_rows(x, self.hidden_size)
            rms_norm_rows(x2, x2, self.weight, self.eps)
            if x2.data_ptr() != x.data_ptr():
                x.copy_(x2.view(x.shape))
            return x
        if not self.inplace:
            x, residual = x.clone(), residual.clone()
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def _torch_forward(self, x, residual):
        # the differentiable path (training): the same math with torch ops
        if residual is not None:
            residual = (x + residual).to(residual.dtype)
            x = residual
        y = F.rms_norm(x, (self.hidden_size,), self.weight.to(x.dtype), self.eps)
        return y if residual is None else (y, residual)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, inplace={self.inplace}"
