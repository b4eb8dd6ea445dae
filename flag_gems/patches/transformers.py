"""Patch HF transformers' Llama, Qwen2 and Mistral to run flag_gems' fused kernels.

For each model family (``transformers.models.<m>.modeling_<m>``) six things change,
on the classes / the module, so existing and future model instances are covered:

- ``<M>RMSNorm.forward``: the one-pass ``rms_norm`` kernel.
- the module's ``apply_rotary_pos_emb`` (looked up by name by ``<M>Attention.forward``):
  the rotary kernel, reading q/k ``[batch, heads, seq, head_dim]`` through strides and
  the ``cos``/``sin`` HF passes (``[batch or 1, seq, head_dim]``, full width, neox).
- ``<M>RotaryEmbedding.forward``: the cos/sin tables of the positions in one kernel
  (``fused.rope_cos_sin``) instead of eight; rope types that update their frequencies
  per call (dynamic, longrope) keep the original.
- ``<M>Attention.forward``: q, k and v projections as one GEMM over a merged weight
  (and bias), built and re-pointed as the MLP's below; HF's forward then receives each
  projection's block of the output from its ``q_proj``/``k_proj``/``v_proj`` call (for
  that call only, and only for plain ``nn.Linear`` layers). Calls of up to
  ``MERGE_QKV_MAX_TOKENS`` tokens.
- ``<M>MLP.forward``: gate and up projections as one GEMM over a fused ``[2I, H]``
  weight, then one ``silu_and_mul`` (or ``gelu_and_mul``) kernel, then down_proj. The
  fused weight is built on first use and gate_proj/up_proj's parameters are re-pointed
  to its two halves (same Parameter objects and values, no extra memory); that storage
  change stays after ``revert()``.
- ``<M>DecoderLayer.forward`` (transformers 5's layers, which return a tensor): the
  residual add after attention happens inside the ``post_attention_layernorm`` kernel.

The patched functions are inference paths: when autograd records (an input or weight
requires grad), or an input is outside what a kernel covers (another dtype for the
norm weight, partial rotary, an activation without a fused kernel, MLP biases), they
call the original. Combine with ``flag_gems.enable()`` for the GEMMs, attention
softmax, embedding and the rest.
"""
from __future__ import annotations

import importlib
import inspect
import logging

import torch
import torch.nn.functional as F
from torch.nn.modules import module as nn_module

from flag_gems import fused
from flag_gems.fused.rms_norm import as_rows, rms_norm_rows
from flag_gems.modules._util import needs_grad
from flag_gems.patches import PatchSet, import_or_raise
from flag_gems.registry import aten_fallback

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
        w = self._parameters.get("weight")
        if w is None or w.dtype != hidden_states.dtype or needs_grad(hidden_states, w):
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


# Calls of up to this many tokens merge q/k/v: an empty DynamicCache keeps the first
# step's k and v, views into the merged output, so its q part stays allocated until the
# next step; past this the separate GEMMs are long enough to hide their host cost anyway.
MERGE_QKV_MAX_TOKENS = 1024


def _merged(owner: torch.nn.Module, name: str, linears: tuple) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of one ``F.linear`` that computes ``linears`` side by side: a
    ``[sum of N, K]`` weight (and bias) whose row blocks are the linears' own parameters,
    re-pointed to it on first use (same Parameter objects and values, no extra memory;
    the storage change stays after ``revert()``). None where they cannot share one
    (dtypes, devices, widths, a bias on some only, meta tensors)."""
    params = [(lin._parameters["weight"], lin._parameters.get("bias")) for lin in linears]  # (not Module.__getattr__: per call)
    found = owner.__dict__.get(name)
    if found is not None and found[2] == _addresses(params):
        return found[:2]
    w0 = params[0][0]
    biased = [b is not None for _, b in params]
    if (any(w.dtype != w0.dtype or w.device != w0.device or w.dim() != 2 or w.shape[1] != w0.shape[1] or w.is_meta for w, _ in params)
            or (any(biased) and not all(biased))
            or any(b is not None and (b.dtype != w0.dtype or b.device != w0.device or b.dim() != 1) for _, b in params)):
        return None
    # outside inference mode: under it the parameters would become inference tensors,
    # which a later backward (fine-tuning the same model) cannot use. aten's cat, even
    # under enable(): a one-time setup, not a model step (its sizes are no workload's keys)
    cat = aten_fallback("cat")
    with torch.inference_mode(False), torch.no_grad():
        weight = cat([w.detach() for w, _ in params], 0)
        bias = cat([b.detach() for _, b in params], 0) if all(biased) else None
        lo = 0
        for w, b in params:
            hi = lo + w.shape[0]
            w.data = weight[lo:hi]
            if b is not None:
                b.data = bias[lo:hi]
            lo = hi
    # the parameters' addresses now: another address later means a parameter was replaced
    # (a load, .to(), a new tensor assigned), and the merge is redone
    owner.__dict__[name] = (weight, bias, _addresses(params))
    return weight, bias


def _addresses(params: list) -> tuple:
    return tuple((w.data_ptr(), w.shape, 0 if b is None else b.data_ptr()) for w, b in params)


def _plain_linears(owner: torch.nn.Module, names: tuple[str, ...]) -> tuple | None:
    """The owner's submodules ``names`` if each is a plain ``nn.Linear`` (not a LoRA,
    quantized or parametrized layer, whose forward is not ``F.linear`` of its weight)."""
    mods = tuple(owner.__dict__["_modules"].get(n) for n in names)
    return mods if all(type(m) is torch.nn.Linear for m in mods) else None


def _serving(linear: torch.nn.Linear, x: torch.Tensor, out: torch.Tensor):
    """A forward for ``linear`` that returns its precomputed ``out`` for ``x`` (anything
    else it computes)."""
    def forward(inp: torch.Tensor) -> torch.Tensor:
        return out if inp is x else F.linear(inp, linear.weight, linear.bias)

    return forward


def make_attention_forward(original):
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        lins = _plain_linears(self, ("q_proj", "k_proj", "v_proj"))
        if (lins is None or hidden_states.numel() > MERGE_QKV_MAX_TOKENS * hidden_states.shape[-1]
                or (torch.is_grad_enabled() and needs_grad(hidden_states, *(p for lin in lins for p in (lin.weight, lin.bias))))):
            return original(self, hidden_states, *args, **kwargs)
        merged = _merged(self, "_gems_qkv", lins)
        if merged is None or merged[0].dtype != hidden_states.dtype:
            return original(self, hidden_states, *args, **kwargs)
        # one GEMM for q, k and v; HF's forward then gets each projection's block of it
        outs = F.linear(hidden_states, *merged).split([lin.out_features for lin in lins], -1)
        for lin, out in zip(lins, outs):
            lin.__dict__["forward"] = _serving(lin, hidden_states, out)
        try:
            return original(self, hidden_states, *args, **kwargs)
        finally:
            for lin in lins:
                lin.__dict__.pop("forward", None)

    forward.__qualname__ = "gems_attention_forward"
    return forward


def make_mlp_forward(original):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = _activation(self)
        if act is None or (torch.is_grad_enabled() and needs_grad(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)):
            return original(self, x)
        lins = _plain_linears(self, ("gate_proj", "up_proj"))
        if lins is None or any(lin._parameters.get("bias") is not None for lin in lins):
            return original(self, x)
        merged = _merged(self, "_gems_gate_up", lins)
        if merged is None or merged[0].dtype != x.dtype:
            return original(self, x)
        gu = F.linear(x, merged[0])
        h = fused.silu_and_mul(gu) if act[0] == "silu" else fused.gelu_and_mul(gu, act[1])
        return self._modules["down_proj"](h)

    forward.__qualname__ = "gems_mlp_forward"
    return forward


def _activation(mlp: torch.nn.Module) -> tuple[str, str | None] | None:
    """The fused kernel for the MLP's ``config.hidden_act`` (None: none), read once per
    module: HF binds its ``act_fn`` from the config at construction too."""
    found = mlp.__dict__.get("_gems_act", False)
    if found is False:
        found = mlp.__dict__["_gems_act"] = GATED_ACTS.get(getattr(getattr(mlp, "config", None), "hidden_act", None))
    return found


def _hooked(*mods: torch.nn.Module) -> bool:
    """Whether a forward hook could see (and keep) these modules' outputs."""
    return bool(nn_module._global_forward_hooks) or any(m._forward_hooks for m in mods)


def make_decoder_layer_forward(original, norm_cls):
    """``<M>DecoderLayer.forward`` with the post-attention residual add done by the
    ``post_attention_layernorm`` kernel (``z = residual + attn`` rounded as HF's add, then
    normalized): one launch instead of two per layer. Only for layers that return a tensor
    and hand every keyword to ``self_attn`` (transformers 5); the sum is written over the
    attention output, so not when a hook could hold that tensor."""
    ann = inspect.signature(original).return_annotation
    if ann not in (torch.Tensor, "torch.Tensor"):  # another HF layout (4.x returns tuples)
        return None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mods = self._modules  # (not Module.__getattr__: this runs per layer and step)
        norm, attention = mods.get("post_attention_layernorm"), mods.get("self_attn")
        weight = norm._parameters.get("weight") if type(norm) is norm_cls else None
        if (args or weight is None or weight.dtype != hidden_states.dtype or attention is None
                or _hooked(attention, attention._modules.get("o_proj", attention))
                or (torch.is_grad_enabled() and needs_grad(hidden_states, weight))):
            return original(self, hidden_states, *args, **kwargs)
        attn, _ = attention(hidden_states=mods["input_layernorm"](hidden_states), **kwargs)
        if attn.shape != hidden_states.shape or attn.dtype != hidden_states.dtype or not attn.is_contiguous() or needs_grad(attn):
            hidden_states = hidden_states + attn  # HF's own steps from here
            return hidden_states + mods["mlp"](norm(hidden_states))
        n = attn.shape[-1]
        normed = torch.empty_like(attn)
        rms_norm_rows(as_rows(hidden_states, n), normed, weight,
                      norm.variance_epsilon, residual=attn)  # attn now holds hidden_states + attn
        return attn + mods["mlp"](normed)

    forward.__qualname__ = "gems_decoder_layer_forward"
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
                               (f"{prefix}RotaryEmbedding", make_rotary_embedding_forward),
                               (f"{prefix}Attention", make_attention_forward)):
            cls = getattr(mod, cls_name, None)
            if cls is not None:
                PATCHES.patch(cls, "forward", make(cls.forward), verbose)
        layer, norm = getattr(mod, f"{prefix}DecoderLayer", None), getattr(mod, f"{prefix}RMSNorm", None)
        fused_layer = None if layer is None or norm is None else make_decoder_layer_forward(layer.forward, norm)
        if fused_layer is not None:
            PATCHES.patch(layer, "forward", fused_layer, verbose)
        if hasattr(mod, "apply_rotary_pos_emb"):
            PATCHES.patch(mod, "apply_rotary_pos_emb", make_apply_rotary_pos_emb(mod.apply_rotary_pos_emb), verbose)


def revert(verbose: bool = False) -> None:
    PATCHES.revert(verbose)
