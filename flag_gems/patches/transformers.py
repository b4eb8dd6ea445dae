"""Patch HF transformers' Llama, Qwen2 and Mistral to run flag_gems' fused kernels.

For each model family (``transformers.models.<m>.modeling_<m>``) four things change,
on the classes / the module, so existing and future model instances are covered:

- ``<M>RMSNorm.forward``: the one-pass ``rms_norm`` kernel.
- the module's ``apply_rotary_pos_emb`` (looked up by name by ``<M>Attention.forward``):
  the rotary kernel, reading q/k ``[batch, heads, seq, head_dim]`` through strides and
  the ``cos``/``sin`` HF passes (``[batch or 1, seq, head_dim]``, full width, neox).
- ``<M>RotaryEmbedding.forward``: the cos/sin tables of the positions in one kernel
  (``fused.rope_cos_sin``) instead of eight; rope types that update their frequencies
  per call (dynamic, longrope) keep the original.
- ``<M>MLP.forward``: gate and up projections as one GEMM over a fused ``[2I, H]``
  weight, then one ``silu_and_mul`` (or ``gelu_and_mul``) kernel, then down_proj. The
  fused weight is built on first use and gate_proj/up_proj's parameters are re-pointed
  to its two halves (same Parameter objects and values, no extra memory); that storage
  change stays after ``revert()``.

The patched functions are inference paths: when autograd records (an input or weight
requires grad), or an input is outside what a kernel covers (another dtype for the
norm weight, partial rotary, an activation without a fused kernel, MLP biases), they
call the original. Combine with ``flag_gems.enable()`` for the GEMMs, attention
softmax, embedding and the rest.
"""
from __future__ import annotations

import importlib
import logging

import torch
import torch.nn.functional as F

from flag_gems import fused
from flag_gems.modules._util import needs_grad
from flag_gems.patches import PatchSet, import_or_raise

log = logging.getLogger(__name__)

PATCHES = PatchSet("transformers")

# model family -> class prefix in modeling_<family>
MODELS = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
GATED_ACTS = {"silu": ("silu", None), "swish": ("silu", None), "gelu": ("gelu", "none"),
              "gelu_pytorch_tanh": ("gelu", "tanh"), "gelu_new": ("gelu", "tanh")}


class TransformersNotInstalledError(ImportError):
    """HF transformers is not importable in this environment."""


def make_rms_norm_forward(original):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype != hidden_states.dtype or needs_grad(hidden_states, w):
            return original(self, hidden_states)
        return fused.rms_norm(hidden_states, w, self.variance_epsilon)

    forward.__qualname__ = "gems_rms_norm_forward"
    return forward


def make_apply_rotary_pos_emb(original):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        unsqueeze_dim = kwargs.get("unsqueeze_dim", 1)
        b, h, s, d = q.shape if q.dim() == 4 else (0, 0, 0, 0)
        if (args or set(kwargs) - {"unsqueeze_dim"} or unsqueeze_dim != 1 or q.dim() != 4 or k.dim() != 4
                or cos.dim() != 3 or cos.shape[1:] != (s, d) or cos.shape[0] not in (1, b) or sin.shape != cos.shape
                or k.shape[0] != b or k.shape[2:] != (s, d) or needs_grad(q, k, cos, sin)):
            return original(q, k, cos, sin, *args, **kwargs)
        if cos.shape[0] == 1:  # one table for the batch: position = index along seq
            cc, ss, pos = cos[0], sin[0], None
        else:  # per-sequence tables: address row (batch, seq) of the flattened table
            cc, ss = cos.reshape(b * s, d), sin.reshape(b * s, d)
            pos = torch.arange(b * s, device=q.device).view(b, s)
        qo, ko = fused.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cc, ss, position_ids=pos, rotary_dim=d)
        return qo.transpose(1, 2), ko.transpose(1, 2)

    apply_rotary_pos_emb.__qualname__ = "gems_apply_rotary_pos_emb"
    return apply_rotary_pos_emb


def make_rotary_embedding_forward(original):
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args, **kwargs):
        rope_type, inv_freq = getattr(self, "rope_type", None), getattr(self, "inv_freq", None)
        if (args or kwargs or not isinstance(rope_type, str) or "dynamic" in rope_type or rope_type == "longrope"
                or not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1 or inv_freq.device != x.device
                or position_ids.device != x.device or position_ids.is_floating_point()):
            return original(self, x, position_ids, *args, **kwargs)
        return fused.rope_cos_sin(position_ids, inv_freq, self.attention_scaling, x.dtype)

    forward.__qualname__ = "gems_rotary_embedding_forward"
    return forward


def _gate_up_weight(mlp) -> torch.Tensor | None:
    """One ``[2I, H]`` weight whose halves are gate_proj's and up_proj's parameters."""
    g, u = mlp.gate_proj.weight, mlp.up_proj.weight
    fused_w = mlp.__dict__.get("_gems_gate_up")
    n = g.shape[0]
    if (fused_w is not None and fused_w.device == g.device and fused_w.dtype == g.dtype
            and g.data_ptr() == fused_w.data_ptr() and u.data_ptr() == fused_w[n:].data_ptr()
            and g.shape == fused_w[:n].shape and u.shape == fused_w[n:].shape):
        return fused_w
    if g.dtype != u.dtype or g.device != u.device or g.shape[1] != u.shape[1] or g.is_meta:
        return None
    with torch.no_grad():
        fused_w = torch.cat([g.detach(), u.detach()], 0)
        g.data = fused_w[:n]
        u.data = fused_w[n:]
    mlp.__dict__["_gems_gate_up"] = fused_w
    return fused_w


def make_mlp_forward(original):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = GATED_ACTS.get(getattr(getattr(self, "config", None), "hidden_act", None))
        if (act is None or self.gate_proj.bias is not None or self.up_proj.bias is not None
                or needs_grad(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)):
            return original(self, x)
        w = _gate_up_weight(self)
        if w is None or w.dtype != x.dtype:
            return original(self, x)
        gu = F.linear(x, w)
        h = fused.silu_and_mul(gu) if act[0] == "silu" else fused.gelu_and_mul(gu, act[1])
        return self.down_proj(h)

    forward.__qualname__ = "gems_mlp_forward"
    return forward


def apply(verbose: bool = False) -> None:
    """Patch every installed model family of ``MODELS``; a second call does nothing."""
    import_or_raise("transformers", "HF transformers", TransformersNotInstalledError)
    if PATCHES.applied:
        return
    for family, prefix in MODELS.items():
        try:
            mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError as e:
            log.debug("transformers has no %s model (%s): not patched", family, e)
            continue
        for cls_name, make in ((f"{prefix}RMSNorm", make_rms_norm_forward), (f"{prefix}MLP", make_mlp_forward),
                               (f"{prefix}RotaryEmbedding", make_rotary_embedding_forward)):
            cls = getattr(mod, cls_name, None)
            if cls is not None:
                PATCHES.patch(cls, "forward", make(cls.forward), verbose)
        if hasattr(mod, "apply_rotary_pos_emb"):
            PATCHES.patch(mod, "apply_rotary_pos_emb", make_apply_rotary_pos_emb(mod.apply_rotary_pos_emb), verbose)


def revert(verbose: bool = False) -> None:
    PATCHES.revert(verbose)
