"""LLM building blocks as plain ``torch.nn.Module``s over flag_gems' fused kernels.

    from flag_gems.modules import GemsRMSNorm, GemsRope, GemsDeepseekYarnRoPE, GemsSiluAndMul

They run the fused Triton kernels when no gradient is needed (inference). When autograd
must track the call (an input or the weight requires grad), they compute the same
function with torch ops instead, so they can sit in a model that is trained; under
``flag_gems.use_gems()`` those torch ops run on flag_gems' aten kernels.
"""
from flag_gems.modules.activation import GemsGeluAndMul, GemsSiluAndMul
from flag_gems.modules.normalization import GemsRMSNorm
from flag_gems.modules.rotary_embedding import GemsDeepseekYarnRoPE, GemsRope, yarn_cos_sin

__all__ = ["GemsRMSNorm", "GemsRope", "GemsDeepseekYarnRoPE", "GemsSiluAndMul", "GemsGeluAndMul", "yarn_cos_sin"]
