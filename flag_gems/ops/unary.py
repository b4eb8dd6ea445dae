"""Unary pointwise ops (neg, abs, exp, log, sqrt, rsqrt, reciprocal, sin, cos, tanh,
sigmoid, silu, gelu, relu, isnan/isinf/isfinite, logical_not, bitwise_not) and the
ternary-ish ones built on the same generator: clamp, where, masked_fill."""
from __future__ import annotations

import logging
from typing import Any

import torch
import triton
import triton.language as tl

from flag_gems.registry import register
from flag_gems.utils.pointwise import Pointwise, checked_scalar, inplace

log = logging.getLogger(__name__)

Operand = torch.Tensor | bool | int | float


@triton.jit
def _neg(x):
    return -x


@triton.jit
def _abs(x):
    return tl.abs(x)


@triton.jit
def _exp(x):
    return tl.exp(x)


@triton.jit
def _log(x):
    return tl.log(x)


@triton.jit
def _sqrt(x):
    return tl.sqrt(x)


@triton.jit
def _rsqrt(x):
    return tl.rsqrt(x)


@triton.jit
def _reciprocal(x):
    return 1.0 / x


@triton.jit
def _sin(x):
    return tl.sin(x)


@triton.jit
def _cos(x):
    return tl.cos(x)


@triton.jit
def _tanh_of(x):
    # from exp(-2|x|) <= 1: no overflow for large |x|
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _tanh(x):
    return _tanh_of(x)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _gelu(x):
    r = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    return tl.where(x < -20.0, x * 0.0, r)  # below -20 gelu underflows to -0.0 (NaN at -inf, as torch)


@triton.jit
def _gelu_tanh(x):
    # 0.5 * (1 + tanh(z)) == sigmoid(2z): one exp and one division, no sign juggling
    # (the exp overflows to inf for very negative x, which the where covers)
    z2 = 1.5957691216057308 * (x + 0.044715 * x * x * x)
    r = x / (1.0 + tl.exp(-z2))
    return tl.where(x < -20.0, x * 0.0, r)


@triton.jit
def _relu(x):
    return tl.where(x < 0, 0, x)  # NaN stays NaN


@triton.jit
def _isnan(x):
    return x != x


@triton.jit
def _isinf(x):
    return tl.abs(x) == float("inf")


@triton.jit
def _isfinite(x):
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def _logical_not(x):
    return x == 0


@triton.jit
def _bitwise_not(x):
    return ~x


UNARY = {
    "neg": Pointwise("neg", _neg),
    "abs": Pointwise("abs", _abs),
    "exp": Pointwise("exp", _exp, rule="int_to_float"),
    "log": Pointwise("log", _log, rule="int_to_float"),
    "sqrt": Pointwise("sqrt", _sqrt, rule="int_to_float"),
    "rsqrt": Pointwise("rsqrt", _rsqrt, rule="int_to_float"),
    "reciprocal": Pointwise("reciprocal", _reciprocal, rule="int_to_float"),
    "sin": Pointwise("sin", _sin, rule="int_to_float"),
    "cos": Pointwise("cos", _cos, rule="int_to_float"),
    "tanh": Pointwise("tanh", _tanh, rule="int_to_float"),
    "sigmoid": Pointwise("sigmoid", _sigmoid, rule="int_to_float"),
    "silu": Pointwise("silu", _silu, rule="int_to_float"),
    "relu": Pointwise("relu", _relu),
}
GELU = {"none": Pointwise("gelu", _gelu, rule="int_to_float"), "tanh": Pointwise("gelu_tanh", _gelu_tanh, rule="int_to_float")}
ISNAN, ISINF, ISFINITE = (Pointwise(n, f, rule="bool") for n, f in (("isnan", _isnan), ("isinf", _isinf), ("isfinite", _isfinite)))
LOGICAL_NOT = Pointwise("logical_not", _logical_not, rule="bool")
BITWISE_NOT = Pointwise("bitwise_not", _bitwise_not)


def _register_unary(name: str, op: Pointwise, *, inplace_ok: bool = True) -> None:
    def fn(self: torch.Tensor) -> torch.Tensor:
        return op(self)

    def fn_out(self: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        return op(self, out=out)

    def fn_(self: torch.Tensor) -> torch.Tensor:
        return inplace(op, self)

    for f, suffix, overload in ((fn, "", name), (fn_out, "_out", f"{name}.out"), (fn_, "_", f"{name}_" if inplace_ok else None)):
        f.__name__ = f.__qualname__ = f"{name}{suffix}"
        if overload:
            register(overload)(f)


for _name, _op in UNARY.items():
    _register_unary(_name, _op)
_register_unary("logical_not", LOGICAL_NOT)
_register_unary("isnan", ISNAN, inplace_ok=False)


@register("isinf")
def isinf(self: torch.Tensor) -> torch.Tensor:
    return ISINF(self)


# isfinite is CompositeImplicitAutograd: only the Autograd key reaches a kernel.
@register("isfinite", autograd=True)
def isfinite(self: torch.Tensor) -> torch.Tensor:
    return ISFINITE(self)


def _bitwise_not_op(self: torch.Tensor) -> Pointwise:
    if self.dtype.is_floating_point:
        raise RuntimeError('"bitwise_not_cpu" not implemented for \'' + str(self.dtype).removeprefix("torch.").capitalize() + "'")
    return LOGICAL_NOT if self.dtype == torch.bool else BITWISE_NOT


@register("bitwise_not")
def bitwise_not(self: torch.Tensor) -> torch.Tensor:
    return _bitwise_not_op(self)(self)


@register("bitwise_not.out")
def bitwise_not_out(self: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
    return _bitwise_not_op(self)(self, out=out)


@register("bitwise_not_")
def bitwise_not_(self: torch.Tensor) -> torch.Tensor:
    return inplace(_bitwise_not_op(self), self)


def _gelu_op(approximate: str) -> Pointwise:
    if approximate not in GELU:
        raise RuntimeError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return GELU[approximate]


@register("gelu")
def gelu(self: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return _gelu_op(approximate)(self)


@register("gelu.out")
def gelu_out(self: torch.Tensor, *, approximate: str = "none", out: torch.Tensor) -> torch.Tensor:
    return _gelu_op(approximate)(self, out=out)


@register("gelu_")
def gelu_(self: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return inplace(_gelu_op(approximate), self)


# -- activation gradients (what autograd calls for F.silu / F.gelu in training) -------------
@triton.jit
def _silu_backward(grad, x):
    s = 1.0 / (1.0 + tl.exp(-x))
    return grad * s * (1.0 + x * (1.0 - s))


@triton.jit
def _gelu_backward(grad, x):  # d/dx x * Phi(x) = Phi(x) + x * phi(x)
    cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
    pdf = 0.3989422804014327 * tl.exp(-0.5 * x * x)
    return grad * (cdf + x * pdf)


@triton.jit
def _gelu_tanh_backward(grad, x):
    x2 = x * x
    t = _tanh_of(0.7978845608028654 * (x + 0.044715 * x2 * x))
    d_inner = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x2)
    return grad * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner)


SILU_BACKWARD = Pointwise("silu_backward", _silu_backward, rule="int_to_float")
GELU_BACKWARD = {
    "none": Pointwise("gelu_backward", _gelu_backward, rule="int_to_float"),
    "tanh": Pointwise("gelu_tanh_backward", _gelu_tanh_backward, rule="int_to_float"),
}


@register("silu_backward")
def silu_backward(grad_output: torch.Tensor, self: torch.Tensor) -> torch.Tensor:
    return SILU_BACKWARD(grad_output, self)


@register("gelu_backward")
def gelu_backward(grad_output: torch.Tensor, self: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    _gelu_op(approximate)  # torch's error for an unknown approximation
    return GELU_BACKWARD[approximate](grad_output, self)


# -- clamp ---------------------------------------------------------------------------------
@triton.jit
def _clamp(x, lo, hi):
    # a NaN input or bound gives NaN, as torch (x + lo + hi is NaN then)
    return tl.where((x != x) | (lo != lo) | (hi != hi), x + lo + hi, tl.minimum(tl.maximum(x, lo), hi))


@triton.jit
def _clamp_min(x, lo):
    return tl.where((x != x) | (lo != lo), x + lo, tl.maximum(x, lo))


@triton.jit
def _clamp_max(x, hi):
    return tl.where((x != x) | (hi != hi), x + hi, tl.minimum(x, hi))


CLAMP, CLAMP_MIN, CLAMP_MAX = Pointwise("clamp", _clamp), Pointwise("clamp_min", _clamp_min), Pointwise("clamp_max", _clamp_max)


def _clamp_call(self: torch.Tensor, lo: Any, hi: Any, out: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
    if lo is None and hi is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    op, args = (CLAMP, (self, lo, hi)) if lo is not None and hi is not None else (CLAMP_MIN, (self, lo)) if hi is None else (CLAMP_MAX, (self, hi))
    return inplace(op, *args) if in_place else op(*args, out=out)


@register("clamp", "clamp.Tensor")
def clamp(self: torch.Tensor, min: Any = None, max: Any = None) -> torch.Tensor:
    return _clamp_call(self, min, max, None)


@register("clamp.out", "clamp.Tensor_out")
def clamp_out(self: torch.Tensor, min: Any = None, max: Any = None, *, out: torch.Tensor) -> torch.Tensor:
    return _clamp_call(self, min, max, out)


@register("clamp_", "clamp_.Tensor")
def clamp_(self: torch.Tensor, min: Any = None, max: Any = None) -> torch.Tensor:
    return _clamp_call(self, min, max, None, in_place=True)


@register("clamp_min", "clamp_min.Tensor")
def clamp_min(self: torch.Tensor, min: Any) -> torch.Tensor:
    return CLAMP_MIN(self, min)


@register("clamp_max", "clamp_max.Tensor")
def clamp_max(self: torch.Tensor, max: Any) -> torch.Tensor:
    return CLAMP_MAX(self, max)


# -- where / masked_fill -----------------------------------------------------------------
@triton.jit
def _where(cond, a, b):
    return tl.where(cond != 0, a, b)


@triton.jit
def _masked_fill(x, mask, value):
    return tl.where(mask != 0, value, x)


WHERE = Pointwise("where", _where, promote=(1, 2))
# masked_fill(self, mask, value): the result keeps self's dtype
MASKED_FILL = Pointwise("masked_fill", _masked_fill, promote=(0, 2), rule="first")


def _check_masked(mask: torch.Tensor, value: Operand) -> None:
    if mask.dtype != torch.bool:
        raise RuntimeError(f"masked_fill_ only supports boolean masks, but got mask with dtype {str(mask.dtype).removeprefix('torch.')}")
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        raise RuntimeError(f"masked_fill_ only supports a 0-dimensional value tensor, but got tensor with {value.dim()} dimension(s).")


@register("where.self")
def where(condition: torch.Tensor, self: Operand, other: Operand) -> torch.Tensor:
    return WHERE(condition, self, other)


@register("where.self_out")
def where_out(condition: torch.Tensor, self: Operand, other: Operand, *, out: torch.Tensor) -> torch.Tensor:
    return WHERE(condition, self, other, out=out)


@register("masked_fill.Scalar", "masked_fill.Tensor")
def masked_fill(self: torch.Tensor, mask: torch.Tensor, value: Operand) -> torch.Tensor:
    _check_masked(mask, value)
    return MASKED_FILL(self, mask, checked_scalar(value, self.dtype))


@register("masked_fill_.Scalar", "masked_fill_.Tensor")
def masked_fill_(self: torch.Tensor, mask: torch.Tensor, value: Operand) -> torch.Tensor:
    _check_masked(mask, value)
    return MASKED_FILL(self, mask, checked_scalar(value, self.dtype), out=self)
