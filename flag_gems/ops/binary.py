"""Binary pointwise ops: arithmetic (add, sub, mul, div, pow), comparisons, maximum /
minimum, logical and bitwise ops. Each is a ``triton.jit`` scalar function turned into a
broadcasting, strided, dtype-promoting kernel by ``flag_gems.utils.pointwise``."""
from __future__ import annotations

import logging
from typing import Any

import torch
import triton
import triton.language as tl

from flag_gems.registry import register
from flag_gems.utils.pointwise import Pointwise, inplace

log = logging.getLogger(__name__)

Operand = torch.Tensor | bool | int | float


# -- scalar functions --------------------------------------------------------------------
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _add_alpha(a, b, alpha):
    return a + alpha * b


@triton.jit
def _sub(a, b):
    return a - b


@triton.jit
def _sub_alpha(a, b, alpha):
    return a - alpha * b


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _true_div(a, b):
    return a / b


@triton.jit
def _trunc(x):
    return tl.where(x < 0, tl.ceil(x), tl.floor(x))


@triton.jit
def _trunc_div(a, b):
    if a.dtype.is_floating():
        r = _trunc(a / b)
    else:
        r = a // b  # Triton's integer division truncates, as C does
    return r


@triton.jit
def _floor_div(a, b):
    if a.dtype.is_floating():
        # torch's (Python's) floor division, from fmod's remainder: exact where a / b
        # rounds up to an integer, NaN for an infinite dividend, -1 for -5 // inf
        mod = a % b  # (a float % is C's fmod)
        q = (a - mod) / b
        q = tl.where((mod != 0) & ((b < 0) != (mod < 0)), q - 1, q)
        fq = tl.floor(q)
        r = tl.where(q - fq > 0.5, fq + 1, fq)
        r = tl.where(q == 0, (a / b) * 0.0, r)  # a zero quotient keeps a / b's sign
        r = tl.where(b == 0, a / b, r)
    else:
        q = a // b
        r = tl.where((a % b != 0) & ((a < 0) != (b < 0)), q - 1, q)
    return r


@triton.jit
def _int_pow(a, b):
    # square and multiply; negative exponents: 1 and -1 keep their magnitude, others -> 0
    r = a * 0 + 1
    base = a
    if a.dtype.is_int_unsigned():
        e = b
    else:
        e = tl.where(b < 0, 0, b)
    while tl.max(e, axis=0) > 0:
        r = tl.where((e & 1) != 0, r * base, r)
        base = base * base
        e = e >> 1
    if not a.dtype.is_int_unsigned():
        neg = tl.where(a == 1, 1, tl.where(a == -1, tl.where((b & 1) != 0, -1, 1), 0))
        r = tl.where(b < 0, neg, r)
    return r


@triton.jit
def _sign_bit(a):
    # set for negative numbers, -0.0 and -inf alike (a < 0 misses -0.0)
    if a.dtype == tl.float64:
        s = a.to(tl.int64, bitcast=True) < 0
    else:
        s = a.to(tl.int32, bitcast=True) < 0
    return s


@triton.jit
def _float_pow(a, b):
    # C's pow: |a| ** b, negated for a negative base (-0.0 and -inf too) and an odd
    # integer b; NaN for a finite negative base and a non-integer b; 1 for b == 0,
    # a == 1 and (-1) ** +-inf
    r = tl.exp2(b * tl.log2(tl.abs(a)))
    integral = tl.floor(b) == b  # (true for +-inf)
    odd = integral & (tl.floor(b * 0.5) * 2 != b)
    r = tl.where(_sign_bit(a) & odd, r * -1.0, r)  # (compiled, -r is 0 - r: +0.0 for r = 0)
    r = tl.where((a < 0) & (a > float("-inf")) & (tl.floor(b) != b), float("nan"), r)
    return tl.where((b == 0) | (a == 1) | ((a == -1) & (tl.abs(b) == float("inf"))), 1.0, r)


@triton.jit
def _pow(a, b):
    if a.dtype.is_floating():
        r = _float_pow(a, b)
    else:
        r = _int_pow(a, b)
    return r


@triton.jit
def _eq(a, b):
    return a == b


@triton.jit
def _ne(a, b):
    return a != b


@triton.jit
def _lt(a, b):
    return a < b


@triton.jit
def _le(a, b):
    return a <= b


@triton.jit
def _gt(a, b):
    return a > b


@triton.jit
def _ge(a, b):
    return a >= b


@triton.jit
def _maximum(a, b):
    # NaN propagates, as in torch (a + b is NaN when either is)
    return tl.where((a != a) | (b != b), a + b, tl.maximum(a, b))


@triton.jit
def _minimum(a, b):
    return tl.where((a != a) | (b != b), a + b, tl.minimum(a, b))


@triton.jit
def _logical_and(a, b):
    return (a != 0) & (b != 0)


@triton.jit
def _logical_or(a, b):
    return (a != 0) | (b != 0)


@triton.jit
def _logical_xor(a, b):
    return (a != 0) ^ (b != 0)


@triton.jit
def _bitwise_and(a, b):
    return a & b


@triton.jit
def _bitwise_or(a, b):
    return a | b


@triton.jit
def _bitwise_xor(a, b):
    return a ^ b


ADD, ADD_ALPHA = Pointwise("add", _add), Pointwise("add_alpha", _add_alpha, promote=(0, 1))
SUB, SUB_ALPHA = Pointwise("sub", _sub), Pointwise("sub_alpha", _sub_alpha, promote=(0, 1))
MUL = Pointwise("mul", _mul)
TRUE_DIV = Pointwise("true_div", _true_div, rule="int_to_float")
DIV_MODES = {None: TRUE_DIV, "trunc": Pointwise("trunc_div", _trunc_div), "floor": Pointwise("floor_div", _floor_div)}
POW = Pointwise("pow", _pow)
CMP = {n: Pointwise(n, f, rule="bool") for n, f in (("eq", _eq), ("ne", _ne), ("lt", _lt), ("le", _le), ("gt", _gt), ("ge", _ge))}
MAXIMUM, MINIMUM = Pointwise("maximum", _maximum), Pointwise("minimum", _minimum)
LOGICAL = {n: Pointwise(n, f, rule="bool") for n, f in (("logical_and", _logical_and), ("logical_or", _logical_or), ("logical_xor", _logical_xor))}
BITWISE = {n: Pointwise(n, f) for n, f in (("bitwise_and", _bitwise_and), ("bitwise_or", _bitwise_or), ("bitwise_xor", _bitwise_xor))}


# -- add / sub ---------------------------------------------------------------------------
def _with_alpha(plain: Pointwise, with_alpha: Pointwise, a: Operand, b: Operand, alpha: Any, out: torch.Tensor | None) -> torch.Tensor:
    if alpha == 1:
        return plain(a, b, out=out)
    return with_alpha(a, b, alpha, out=out)


def _check_sub(a: Operand, b: Operand) -> None:
    if (isinstance(a, torch.Tensor) and a.dtype == torch.bool) or (isinstance(b, torch.Tensor) and b.dtype == torch.bool):
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are trying to invert a mask, use the `~` or `logical_not()` operator instead.")


@register("add.Tensor", "add.Scalar")
def add(self: torch.Tensor, other: Operand, *, alpha: Any = 1) -> torch.Tensor:
    return ADD(self, other) if alpha == 1 else ADD_ALPHA(self, other, alpha)


@register("add.out", "add.Scalar_out")
def add_out(self: torch.Tensor, other: Operand, *, alpha: Any = 1, out: torch.Tensor) -> torch.Tensor:
    return _with_alpha(ADD, ADD_ALPHA, self, other, alpha, out)


@register("add_.Tensor", "add_.Scalar")
def add_(self: torch.Tensor, other: Operand, *, alpha: Any = 1) -> torch.Tensor:
    return inplace(ADD, self, other) if alpha == 1 else inplace(ADD_ALPHA, self, other, alpha)


@register("sub.Tensor", "sub.Scalar")
def sub(self: torch.Tensor, other: Operand, *, alpha: Any = 1) -> torch.Tensor:
    _check_sub(self, other)
    return SUB(self, other) if alpha == 1 else SUB_ALPHA(self, other, alpha)


@register("sub.out", "sub.Scalar_out")
def sub_out(self: torch.Tensor, other: Operand, *, alpha: Any = 1, out: torch.Tensor) -> torch.Tensor:
    _check_sub(self, other)
    return _with_alpha(SUB, SUB_ALPHA, self, other, alpha, out)


@register("sub_.Tensor", "sub_.Scalar")
def sub_(self: torch.Tensor, other: Operand, *, alpha: Any = 1) -> torch.Tensor:
    _check_sub(self, other)
    return inplace(SUB, self, other) if alpha == 1 else inplace(SUB_ALPHA, self, other, alpha)


# -- mul / div ---------------------------------------------------------------------------
@register("mul.Tensor", "mul.Scalar")
def mul(self: torch.Tensor, other: Operand) -> torch.Tensor:
    return MUL(self, other)


@register("mul.out", "mul.Scalar_out")
def mul_out(self: torch.Tensor, other: Operand, *, out: torch.Tensor) -> torch.Tensor:
    return MUL(self, other, out=out)


@register("mul_.Tensor", "mul_.Scalar")
def mul_(self: torch.Tensor, other: Operand) -> torch.Tensor:
    return inplace(MUL, self, other)


def _div_op(a: Operand, b: Operand, rounding_mode: str | None) -> Pointwise:
    if rounding_mode not in DIV_MODES:
        raise RuntimeError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{rounding_mode}'")
    op = DIV_MODES[rounding_mode]
    if rounding_mode is not None and not op.dtypes((a, b))[0].is_floating_point:
        if isinstance(b, torch.Tensor) and b.device.type == "cpu" and bool((b == 0).any()) or (not isinstance(b, torch.Tensor) and b == 0):
            raise ZeroDivisionError("ZeroDivisionError")
    return op


@register("div.Tensor", "div.Scalar")
def div(self: torch.Tensor, other: Operand) -> torch.Tensor:
    return TRUE_DIV(self, other)


@register("div.out", "div.Scalar_out")
def div_out(self: torch.Tensor, other: Operand, *, out: torch.Tensor) -> torch.Tensor:
    return TRUE_DIV(self, other, out=out)


@register("div_.Tensor", "div_.Scalar")
def div_(self: torch.Tensor, other: Operand) -> torch.Tensor:
    return inplace(TRUE_DIV, self, other)


@register("div.Tensor_mode", "div.Scalar_mode")
def div_mode(self: torch.Tensor, other: Operand, *, rounding_mode: str | None = None) -> torch.Tensor:
    return _div_op(self, other, rounding_mode)(self, other)


@register("div.out_mode", "div.Scalar_mode_out")
def div_mode_out(self: torch.Tensor, other: Operand, *, rounding_mode: str | None = None, out: torch.Tensor) -> torch.Tensor:
    return _div_op(self, other, rounding_mode)(self, other, out=out)


@register("div_.Tensor_mode", "div_.Scalar_mode")
def div_mode_(self: torch.Tensor, other: Operand, *, rounding_mode: str | None = None) -> torch.Tensor:
    return inplace(_div_op(self, other, rounding_mode), self, other)


@register("floor_divide", "floor_divide.Scalar")
def floor_divide(self: torch.Tensor, other: Operand) -> torch.Tensor:
    return _div_op(self, other, "floor")(self, other)


@register("floor_divide_.Tensor", "floor_divide_.Scalar")
def floor_divide_(self: torch.Tensor, other: Operand) -> torch.Tensor:
    return inplace(_div_op(self, other, "floor"), self, other)


# -- pow ---------------------------------------------------------------------------------
@register("pow.Tensor_Tensor", "pow.Tensor_Scalar")
def pow(self: Operand, exponent: Operand) -> torch.Tensor:
    return POW(self, exponent)


@register("pow.Tensor_Tensor_out", "pow.Tensor_Scalar_out")
def pow_out(self: Operand, exponent: Operand, *, out: torch.Tensor) -> torch.Tensor:
    return POW(self, exponent, out=out)


# aten's CUDA pow(Scalar, Tensor) re-dispatches to pow.Tensor_Tensor with the base as a
# CUDA wrapped number, which cannot reach a Python kernel: switched off, go there directly.
register("pow.Scalar", off_via="pow.Tensor_Tensor")(pow)
register("pow.Scalar_out", off_via="pow.Tensor_Tensor_out")(pow_out)


@register("pow_.Tensor", "pow_.Scalar")
def pow_(self: torch.Tensor, exponent: Operand) -> torch.Tensor:
    return inplace(POW, self, exponent)


# -- comparisons, maximum / minimum, logical, bitwise: generated registrations -------------
def _register_family(name: str, op: Pointwise, overloads: tuple[str, ...], out_overloads: tuple[str, ...], inplace_overloads: tuple[str, ...]) -> None:
    def fn(self: Operand, other: Operand) -> torch.Tensor:
        return op(self, other)

    def fn_out(self: Operand, other: Operand, *, out: torch.Tensor) -> torch.Tensor:
        return op(self, other, out=out)

    def fn_(self: torch.Tensor, other: Operand) -> torch.Tensor:
        return inplace(op, self, other)

    for f, suffix, names in ((fn, "", overloads), (fn_out, "_out", out_overloads), (fn_, "_", inplace_overloads)):
        f.__name__ = f.__qualname__ = f"{name}{suffix}"
        if names:
            register(*names)(f)


for _name, _op in CMP.items():
    _register_family(_name, _op, (f"{_name}.Tensor", f"{_name}.Scalar"), (f"{_name}.Tensor_out", f"{_name}.Scalar_out"), (f"{_name}_.Tensor", f"{_name}_.Scalar"))
for _name, _op in (("maximum", MAXIMUM), ("minimum", MINIMUM)):
    _register_family(_name, _op, (_name,), (f"{_name}.out",), ())
for _name, _op in LOGICAL.items():
    _register_family(_name, _op, (_name,), (f"{_name}.out",), (f"{_name}_",))
for _name, _op in BITWISE.items():
    _register_family(
        _name, _op, (f"{_name}.Tensor", f"{_name}.Scalar", f"{_name}.Scalar_Tensor"),
        (f"{_name}.Tensor_out", f"{_name}.Scalar_out", f"{_name}.Scalar_Tensor_out"), (f"{_name}_.Tensor", f"{_name}_.Scalar"),
    )
