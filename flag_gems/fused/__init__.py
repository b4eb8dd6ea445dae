"""Fused LLM building blocks that are not aten ops: call them directly.

    from flag_gems.fused import rms_norm, fused_add_rms_norm, silu_and_mul
"""
from flag_gems.fused.fused_add_rms_norm import fused_add_rms_norm
from flag_gems.fused.gelu_and_mul import gelu_and_mul
from flag_gems.fused.rms_norm import rms_norm
from flag_gems.fused.rotary_embedding import apply_rotary_pos_emb, rope_cos_sin
from flag_gems.fused.silu_and_mul import silu_and_mul

__all__ = ["rms_norm", "fused_add_rms_norm", "silu_and_mul", "gelu_and_mul", "apply_rotary_pos_emb", "rope_cos_sin"]
