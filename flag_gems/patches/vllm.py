"""Patch vLLM's custom ops to run flag_gems kernels.

vLLM layers dispatch through ``CustomOp.forward`` to ``forward_cuda`` on NVIDIA GPUs;
these are replaced on the classes. A layer binds its choice (``_forward_method``) when it
is built, so each class's ``forward`` is patched too: a layer built before the patch that
bound the original ``forward_cuda`` runs the patched one; any other choice (vLLM's
``forward_native`` when custom ops are off, a subclass's own method) is left alone.

- ``layernorm.RMSNorm.forward_cuda(self, x, residual=None)``: ``rms_norm``, or the
  in-place ``fused_add_rms_norm`` with a residual (vLLM's semantics: returns ``x, residual``
  updated in place).
- ``rotary_embedding.RotaryEmbedding.forward_cuda(self, positions, query, key=None,
  offsets=None)``: the rotary kernel, in place on ``query``/``key`` ``[tokens, heads*head_size]``.
- ``activation.SiluAndMul.forward_cuda(self, x)`` and ``GeluAndMul.forward_cuda``.

Inputs a kernel does not cover (``offsets``, RMSNorm's ``variance_size_override``, a
GeluAndMul approximation other than none/tanh) go to the original method.
"""
from __future__ import annotations

import logging

import torch

from flag_gems import fused
from flag_gems.patches import PatchSet, import_or_raise

log = logging.getLogger(__name__)

PATCHES = PatchSet("vllm")


class VllmNotInstalledError(ImportError):
    """vLLM is not importable in this environment."""


def gems_rms_norm_forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
    if getattr(self, "variance_size_override", None) is not None:
        return gems_rms_norm_forward.__gems_original__(self, x, residual)
    weight = self.weight.data if getattr(self, "has_weight", True) else torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    if residual is not None:
        return fused.fused_add_rms_norm(x, residual, weight, self.variance_epsilon)
    return fused.rms_norm(x, weight, self.variance_epsilon)


def gems_rotary_forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None,
                        offsets: torch.Tensor | None = None):
    if offsets is not None:
        return gems_rotary_forward.__gems_original__(self, positions, query, key, offsets)
    cache = self.cos_sin_cache
    if cache.device != query.device or cache.dtype != query.dtype:
        # vLLM keeps the cache in the model dtype on the query's device; move it once
        cache = self.cos_sin_cache = cache.to(query.device, dtype=query.dtype)
    half = self.rotary_dim // 2
    cos, sin = cache[:, :half], cache[:, half: 2 * half]
    hs = self.head_size
    q = query.unflatten(-1, (-1, hs)) if query.shape[-1] != hs or query.dim() < 3 else query
    if key is not None:
        k = key.unflatten(-1, (-1, hs)) if key.shape[-1] != hs or key.dim() < 3 else key
    else:
        k = q[..., :1, :].clone()  # the kernel rotates a pair; this copy is dropped
    fused.apply_rotary_pos_emb(q, k, cos, sin, position_ids=positions.reshape(q.shape[:-2]),
                               rotary_interleaved=not self.is_neox_style, inplace=True, rotary_dim=self.rotary_dim)
    return query, key


def gems_silu_and_mul_forward(self, x: torch.Tensor) -> torch.Tensor:
    return fused.silu_and_mul(x)


def gems_gelu_and_mul_forward(self, x: torch.Tensor) -> torch.Tensor:
    approximate = getattr(self, "approximate", "none")
    if approximate not in ("none", "tanh"):
        return gems_gelu_and_mul_forward.__gems_original__(self, x)
    return fused.gelu_and_mul(x, approximate)


# (module, class, method, replacement, required)
TARGETS = [
    ("vllm.model_executor.layers.layernorm", "RMSNorm", "forward_cuda", gems_rms_norm_forward, True),
    ("vllm.model_executor.layers.rotary_embedding", "RotaryEmbedding", "forward_cuda", gems_rotary_forward, True),
    ("vllm.model_executor.layers.activation", "SiluAndMul", "forward_cuda", gems_silu_and_mul_forward, True),
    ("vllm.model_executor.layers.activation", "GeluAndMul", "forward_cuda", gems_gelu_and_mul_forward, False),
]


def _dispatching_forward(original_cuda: object):
    """``forward`` for a patched class (see the module docstring)."""

    def forward(self, *args, **kwargs):
        bound = self.__dict__.get("_forward_method")
        if bound is None:  # not vLLM's CustomOp binding: the class's own forward
            return forward.__gems_original__(self, *args, **kwargs)
        if getattr(bound, "__func__", None) is original_cuda:  # bound before the patch
            return type(self).forward_cuda(self, *args, **kwargs)
        return bound(*args, **kwargs)

    return forward


def apply(verbose: bool = False) -> None:
    """Patch the vLLM classes above; a second call does nothing. Raises
    ``VllmNotInstalledError`` (an ImportError) when vLLM cannot be imported."""
    import_or_raise("vllm", "vLLM", VllmNotInstalledError)
    if PATCHES.applied:
        return
    resolved = []
    for module, cls_name, method, fn, required in TARGETS:
        mod = import_or_raise(module, "vLLM", VllmNotInstalledError)
        cls = getattr(mod, cls_name, None)
        if cls is None:
            if required:
                raise VllmNotInstalledError(f"this vLLM has no {module}.{cls_name}: unsupported vLLM version")
            continue
        resolved.append((cls, method, fn))
    for cls, method, fn in resolved:
        original = getattr(cls, method)
        PATCHES.patch(cls, method, fn, verbose)
        PATCHES.patch(cls, "forward", _dispatching_forward(original), verbose)


def revert(verbose: bool = False) -> None:
    PATCHES.revert(verbose)
