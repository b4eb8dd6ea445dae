"""Rotary position embeddings (vLLM's layout and semantics) and DeepSeek's YaRN variant.

``forward(positions, q, k)`` takes q/k as ``[num_tokens, heads * head_dim]`` (vLLM) or
``[..., heads, head_dim]``, and ``positions`` with q's token shape. The cos/sin cache is
built once, in float32, with one value per rotated pair (``[max_position, rotary_dim/2]``);
the kernel computes in float32 and writes q/k's dtype.
"""
from __future__ import annotations

import math

import torch

from flag_gems.fused import apply_rotary_pos_emb
from flag_gems.modules._util import needs_grad


def _heads_view(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x if x.shape[-1] == head_dim and x.dim() >= 3 else x.unflatten(-1, (-1, head_dim))


def rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, is_neox_style: bool) -> torch.Tensor:
    """The differentiable reference path: ``x [..., heads, D]``, ``cos/sin [..., R/2]`` gathered per token."""
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if is_neox_style:
        x1, x2 = rot.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((out, rest), dim=-1)


class GemsRope(torch.nn.Module):
    """vLLM's ``RotaryEmbedding``: rotate the first ``rotary_dim`` dims of each head by
    ``position * base^(-2i/rotary_dim)``; neox (rotate-half) or interleaved (GPT-J) pairs."""

    def __init__(
        self, head_dim: int, rotary_dim: int | None = None, max_position: int = 2048, base: float = 10000.0,
        is_neox_style: bool = True, device=None,
    ) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_dim {head_dim}")
        self.head_dim, self.rotary_dim, self.max_position = head_dim, rotary_dim, max_position
        self.base, self.is_neox_style = base, is_neox_style
        cos, sin = self._compute_cos_sin(device)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        exp = torch.arange(0, self.rotary_dim, 2, dtype=torch.float64, device=device) / self.rotary_dim
        return 1.0 / (self.base ** exp)

    def _compute_cos_sin(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(self.max_position, dtype=torch.float64, device=device)
        freqs = torch.outer(t, self._inv_freq(device))
        return freqs.cos().float(), freqs.sin().float()

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor | None = None, inplace: bool = False):
        qh = _heads_view(q, self.head_dim)
        # no key (vLLM allows it): rotate a one-head copy of q as the kernel's k and drop it
        kh = _heads_view(k, self.head_dim) if k is not None else qh[..., :1, :].clone()
        if needs_grad(q, k):
            c, s = self.cos_cache[positions], self.sin_cache[positions]
            qo = rope_torch(qh, c, s, self.rotary_dim, self.is_neox_style).view(q.shape)
            ko = rope_torch(kh, c, s, self.rotary_dim, self.is_neox_style).view(k.shape) if k is not None else None
            return qo, ko
        cos, sin = self.cos_cache, self.sin_cache
        if cos.device != q.device:
            cos, sin = cos.to(q.device), sin.to(q.device)
        qo, ko = apply_rotary_pos_emb(
            qh, kh, cos, sin, position_ids=positions, rotary_interleaved=not self.is_neox_style,
            inplace=inplace, rotary_dim=self.rotary_dim,
        )
        if inplace:
            return q, k
        return qo.view(q.shape), (ko.view(k.shape) if k is not None else None)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, max_position={self.max_position}, "
                f"base={self.base}, is_neox_style={self.is_neox_style}")


# -- YaRN (DeepSeek-V2/V3) ------------------------------------------------------------
def _yarn_correction_dim(num_rotations: float, dim: int, base: float, max_position: int) -> float:
    # the dim index whose wavelength makes ``num_rotations`` turns over max_position
    return (dim * math.log(max_position / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def _yarn_correction_range(beta_fast: float, beta_slow: float, dim: int, base: float, max_position: int) -> tuple[int, int]:
    low = math.floor(_yarn_correction_dim(beta_fast, dim, base, max_position))
    high = math.ceil(_yarn_correction_dim(beta_slow, dim, base, max_position))
    return max(low, 0), min(high, dim - 1)


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_cos_sin(
    rotary_dim: int, max_position: int, base: float, scaling_factor: float, original_max_position: int,
    beta_fast: float, beta_slow: float, mscale: float, mscale_all_dim: float, device=None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's YaRN cos/sin tables, ``[max_position, rotary_dim/2]``.

    Per pair i: extrapolated frequency ``base^(-2i/R)`` for the fast-rotating dims
    (more than ``beta_fast`` turns over the original context), interpolated
    ``base^(-2i/R) / scaling_factor`` for the slow ones (fewer than ``beta_slow``), a
    linear ramp between; cos and sin scaled by
    ``yarn_get_mscale(s, mscale) / yarn_get_mscale(s, mscale_all_dim)``."""
    half = rotary_dim // 2
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim)
    extra, inter = 1.0 / pos_freqs, 1.0 / (scaling_factor * pos_freqs)
    low, high = _yarn_correction_range(beta_fast, beta_slow, rotary_dim, base, original_max_position)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(half, dtype=torch.float64, device=device) - low) / (high - low)).clamp(0, 1)
    extra_mask = 1.0 - ramp  # 1: keep the original frequency
    inv_freq = inter * (1 - extra_mask) + extra * extra_mask
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float64, device=device), inv_freq)
    m = yarn_get_mscale(scaling_factor, mscale) / yarn_get_mscale(scaling_factor, mscale_all_dim)
    return (freqs.cos() * m).to(dtype), (freqs.sin() * m).to(dtype)


class GemsDeepseekYarnRoPE(GemsRope):
    """DeepSeek-V2/V3's YaRN-scaled rotary embedding (vLLM's DeepseekScalingRotaryEmbedding).

    The cache covers ``original_max_position * scaling_factor`` positions. Pairs are
    interleaved (``is_neox_style=False``) by default, as DeepSeek's checkpoints store
    the rope dims; the layout of q/k is kept (HF's DeepSeek code de-interleaves q/k
    first, which permutes q and k alike and leaves q.k unchanged)."""

    def __init__(
        self, head_dim: int, rotary_dim: int | None = None, original_max_position: int = 4096, base: float = 10000.0,
        scaling_factor: float = 1.0, beta_fast: float = 32.0, beta_slow: float = 1.0, mscale: float = 1.0,
        mscale_all_dim: float = 0.0, is_neox_style: bool = False, device=None,
    ) -> None:
        self.scaling_factor, self.original_max_position = scaling_factor, original_max_position
        self.beta_fast, self.beta_slow, self.mscale, self.mscale_all_dim = beta_fast, beta_slow, mscale, mscale_all_dim
        super().__init__(head_dim, rotary_dim, int(original_max_position * scaling_factor), base, is_neox_style, device)

    def _compute_cos_sin(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        return yarn_cos_sin(
            self.rotary_dim, self.max_position, self.base, self.scaling_factor, self.original_max_position,
            self.beta_fast, self.beta_slow, self.mscale, self.mscale_all_dim, device=device,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scaling_factor={self.scaling_factor}, original_max_position={self.original_max_position}"
