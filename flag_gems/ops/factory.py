"""Copies, casts, fills and factories: copy_, _to_copy (``tensor.to(dtype)``), fill_,
zero_, zeros/ones/full and their ``_like`` forms, arange.

torch.zeros/ones/full and arange(...) reach the backend key (BackendSelect picks it from
``device``); their aten composites would anyway end in zero_/fill_/arange.start_out,
which are registered here too."""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops._reduce_common import cached_launch
from flag_gems.registry import as_from_outside, aten_fallback, register, switched_on
from flag_gems.utils import cdiv
from flag_gems.utils.pointwise import CONFIGS, DEFAULT, HALF, INT32_MAX, TL_DTYPES, Pointwise, checked_scalar, compute_dtype
from tuner.launch import int_spec
from tuner.libtuner import libtuner

log = logging.getLogger(__name__)

Scalar = bool | int | float


@triton.jit
def _identity(x):
    return x


# The source is loaded in its compute dtype (fp32 for half types) and the store casts it
# to the destination's dtype.
COPY = Pointwise("copy", _identity, out_checks=("overlap",))  # (casts into any dtype)
FILL = Pointwise("fill", _identity, out_checks=())  # (and fills an expanded tensor, as torch)


def _supported(*tensors: torch.Tensor) -> bool:
    return all(t.dtype in TL_DTYPES and t.layout == torch.strided for t in tensors)


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@register("copy_")
def copy_(self: torch.Tensor, src: torch.Tensor | bool | int | float, non_blocking: bool = False) -> torch.Tensor:
    if not isinstance(src, torch.Tensor):  # a wrapped number reaches Python unwrapped
        return _fill(self, src)
    if src.device != self.device or not _supported(self, src):
        return aten_fallback("copy_")(self, src, non_blocking)
    if self.numel() == 0:
        return self
    if _overlaps(self, src) and src is not self:
        src = src.clone()  # an aliasing source (x.copy_(x.t())) must be read before written
    return COPY(src.expand(self.shape), out=self)


@register("_to_copy")
def _to_copy(
    self: torch.Tensor, *, dtype: torch.dtype | None = None, layout: Any = None, device: Any = None,
    pin_memory: bool | None = None, non_blocking: bool = False, memory_format: Any = None,
) -> torch.Tensor:
    if dtype is not None and device is None and layout is None and not pin_memory and memory_format is None and type(self) is torch.Tensor:
        # tensor.to(dtype), the common case: COPY's fast path allocates with empty_like
        # (preserve_format, as below) and casts in the store
        if dtype in TL_DTYPES and self.dtype in TL_DTYPES and self.layout == torch.strided:
            return COPY(self, out_dtype=dtype)
    if not isinstance(self, torch.Tensor):  # a wrapped number (x % 4 casts one)
        return aten_fallback("_to_copy")(self, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory, non_blocking=non_blocking, memory_format=memory_format)
    same_device = device is None or torch.device(device) == self.device
    out_dtype = dtype or self.dtype
    if not same_device or layout not in (None, torch.strided) or pin_memory or out_dtype not in TL_DTYPES or not _supported(self):
        return aten_fallback("_to_copy")(
            self, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory, non_blocking=non_blocking, memory_format=memory_format
        )
    out = torch.empty_like(self, dtype=out_dtype, memory_format=memory_format or torch.preserve_format)
    if out.numel() == 0:
        return out
    return COPY(self, out=out)


@register("to.dtype", autograd=True)
def to_dtype(self: torch.Tensor, dtype: torch.dtype, non_blocking: bool = False, copy: bool = False, memory_format: Any = None) -> torch.Tensor:
    """``tensor.to(dtype)`` without a graph to record: the cast kernel, without aten's
    composite ``to`` going through the dispatcher a second time for ``_to_copy``. Anything
    else (autograd, a memory format, other dtypes) takes that composite."""
    if (memory_format is None and type(self) is torch.Tensor and dtype in TL_DTYPES and self.dtype in TL_DTYPES
            and _TO_COPY_ON() and not (self.requires_grad and torch.is_grad_enabled()) and self.layout == torch.strided):
        if dtype == self.dtype and not copy:
            return self  # as aten: no copy asked, none needed
        return COPY(self, out_dtype=dtype)
    return as_from_outside(_TO_DTYPE, self, dtype, non_blocking, copy, memory_format=memory_format)


_TO_DTYPE = aten_fallback("to.dtype")
_TO_COPY_ON = switched_on("_to_copy")  # unused=["_to_copy"]: every cast on aten


def _fill(out: torch.Tensor, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        raise RuntimeError(f"fill_ only supports 0-dimension value tensor but got tensor with {value.dim()} dimensions.")
    if out.numel() == 0:
        return out
    # A 0-d tensor value is read in place (broadcast); a Python value is converted to
    # the destination's type, as torch does.
    if isinstance(value, torch.Tensor):
        return FILL(value.expand(out.shape) if value.device == out.device else value.item(), out=out, compute=compute_dtype(out.dtype))
    value = checked_scalar(value, out.dtype)
    if isinstance(value, float) and out.dtype in HALF:
        value = float(torch.tensor(value, dtype=out.dtype))  # round on the host: exact in fp32
    return FILL(value, out=out, compute=compute_dtype(out.dtype))


@register("fill_.Scalar", "fill_.Tensor")
def fill_(self: torch.Tensor, value: Any) -> torch.Tensor:
    return _fill(self, value)


@register("zero_")
def zero_(self: torch.Tensor) -> torch.Tensor:
    return _fill(self, False if self.dtype == torch.bool else 0)


# -- factories -------------------------------------------------------------------------
def _scalar_dtype(value: Scalar) -> torch.dtype:
    if isinstance(value, bool):
        return torch.bool
    return torch.int64 if isinstance(value, int) else torch.get_default_dtype()


def _new(size: Sequence[int], dtype: torch.dtype | None, layout: Any, device: Any, pin_memory: bool | None) -> torch.Tensor:
    return torch.empty(size=size, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory)


@register("zeros")
def zeros(size: Sequence[int], *, dtype: torch.dtype | None = None, layout: Any = None, device: Any = None, pin_memory: bool | None = None) -> torch.Tensor:
    out = _new(size, dtype, layout, device, pin_memory)
    return _fill(out, False if out.dtype == torch.bool else 0)


@register("ones")
def ones(size: Sequence[int], *, dtype: torch.dtype | None = None, layout: Any = None, device: Any = None, pin_memory: bool | None = None) -> torch.Tensor:
    out = _new(size, dtype, layout, device, pin_memory)
    return _fill(out, True if out.dtype == torch.bool else 1)


@register("full")
def full(size: Sequence[int], fill_value: Scalar, *, dtype: torch.dtype | None = None, layout: Any = None, device: Any = None, pin_memory: bool | None = None) -> torch.Tensor:
    out = _new(size, dtype or _scalar_dtype(fill_value), layout, device, pin_memory)
    return _fill(out, fill_value)


def _new_like(self: torch.Tensor, dtype: Any, layout: Any, device: Any, pin_memory: Any, memory_format: Any) -> torch.Tensor:
    return torch.empty_like(self, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory, memory_format=memory_format or torch.preserve_format)


@register("zeros_like")
def zeros_like(self: torch.Tensor, *, dtype: Any = None, layout: Any = None, device: Any = None, pin_memory: Any = None, memory_format: Any = None) -> torch.Tensor:
    out = _new_like(self, dtype, layout, device, pin_memory, memory_format)
    return _fill(out, False if out.dtype == torch.bool else 0)


@register("ones_like")
def ones_like(self: torch.Tensor, *, dtype: Any = None, layout: Any = None, device: Any = None, pin_memory: Any = None, memory_format: Any = None) -> torch.Tensor:
    out = _new_like(self, dtype, layout, device, pin_memory, memory_format)
    return _fill(out, True if out.dtype == torch.bool else 1)


@register("full_like")
def full_like(self: torch.Tensor, fill_value: Scalar, *, dtype: Any = None, layout: Any = None, device: Any = None, pin_memory: Any = None, memory_format: Any = None) -> torch.Tensor:
    return _fill(_new_like(self, dtype, layout, device, pin_memory, memory_format), fill_value)


# -- arange ----------------------------------------------------------------------------
_LAUNCH: dict = {}  # (n's log bucket, dtypes, INT64) -> its Launch


@libtuner(configs=CONFIGS, key=["n"], strategy=["log"], default=DEFAULT)
@triton.jit
def arange_kernel(out, start_hi, start_lo, step_hi, step_lo, n, COMPUTE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    # start and step come as hi + lo float pairs (a Triton float argument is fp32) so
    # fp64 outputs keep ~48 bits; integer outputs get them exactly in hi (lo = 0).
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    start = tl.cast(start_hi, COMPUTE) + tl.cast(start_lo, COMPUTE)
    step = tl.cast(step_hi, COMPUTE) + tl.cast(step_lo, COMPUTE)
    v = start + offs.to(COMPUTE) * step
    tl.store(out + offs, v, mask=offs < n)


def _split(x: Scalar, integral: bool) -> tuple[Scalar, Scalar]:
    if integral:
        return int(x), 0
    hi = float(torch.tensor(float(x), dtype=torch.float32))
    return hi, float(x) - hi


def _arange_len(start: Scalar, end: Scalar, step: Scalar) -> int:
    if step == 0:
        raise RuntimeError("step must be nonzero")
    if all(isinstance(v, int) for v in (start, end, step)):
        n = -((start - end) // step)  # ceil division
    else:
        n = math.ceil((float(end) - float(start)) / float(step))
    if n < 0:
        raise RuntimeError("upper bound and larger bound inconsistent with step sign")
    return n


@register("arange.start_out")
def arange_out(start: Scalar, end: Scalar, step: Scalar = 1, *, out: torch.Tensor) -> torch.Tensor:
    if out.dtype not in TL_DTYPES or out.dtype == torch.bool:
        return aten_fallback("arange.start_out")(start, end, step, out=out)
    if not out.dtype.is_floating_point:
        # torch takes the bounds in the accumulate type (int64) first: arange(0, 2.5,
        # dtype=int64) is [0, 1], a step of 0.25 is 0; int64's length comes from those
        ints = int(start), int(end), int(step)
        if ints[2] == 0:
            raise ValueError("step must be nonzero")  # (torch's type for this check)
        n = _arange_len(*ints) if out.dtype == torch.int64 else _arange_len(start, end, step)
        start, step = ints[0], ints[2]
    else:
        n = _arange_len(start, end, step)
    if out.numel() != n:
        out.resize_(n)
    if n == 0:
        return out
    integral = not out.dtype.is_floating_point
    compute = torch.int64 if integral else (torch.float64 if out.dtype == torch.float64 else torch.float32)
    target = out if out.is_contiguous() else torch.empty(n, dtype=out.dtype, device=out.device)
    (s_hi, s_lo), (t_hi, t_lo) = _split(start, integral), _split(step, integral)
    int64 = n > INT32_MAX
    lc = cached_launch(arange_kernel, _LAUNCH, ((n - 1).bit_length(), target.dtype, compute, int64))  # the tuner's log bucket of n
    scalars = (s_hi, s_lo, t_hi, t_lo, n)
    # direct relaunch key: each scalar's type, an int's specialization (as Triton's)
    direct = None if target.data_ptr() & 15 else tuple(int_spec(v) if type(v) is int else type(v) for v in scalars)
    lc.fixed(lambda META: (cdiv(n, META["BLOCK"]),), target, *scalars, direct=direct, COMPUTE=TL_DTYPES[compute], INT64=int64)
    if target is not out:
        out.copy_(target)
    return out
