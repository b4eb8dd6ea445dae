"""Shape ops that copy with a remapped index: flip, repeat (tile), constant_pad_nd,
reflection/replication/circular pad (forward and backward), triu/tril."""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops._tensor_nd import COPY, MAX_RANK, PAD, WRAP, drop_unit_dims, finish_out, merge_dims, nd_gather, out_buffer
from flag_gems.registry import aten_fallback, register
from flag_gems.utils import cdiv, next_power_of_2
from flag_gems.utils.pointwise import checked_scalar
from tuner import libtuner

log = logging.getLogger(__name__)


def _norm_dim(d: int, ndim: int) -> int:
    n = max(ndim, 1)
    if not -n <= d < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    return d % n


# -- flip --------------------------------------------------------------------------------
@register("flip")
def flip(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    flipped = {_norm_dim(d, x.dim()) for d in dims}
    if len(flipped) != len(dims):
        raise RuntimeError("dims has duplicates")
    out = torch.empty(size=x.shape, dtype=x.dtype, device=x.device)
    if x.dim() == 0:
        out.copy_(x)
        return out
    # a flipped dim is read with a negated stride, starting from its last element
    strides = [-t if d in flipped else t for d, t in enumerate(x.stride())]
    base = sum((x.shape[d] - 1) * x.stride(d) for d in flipped if x.shape[d] > 0)
    return nd_gather(x, out, strides=strides, base=base, mode=COPY)


# -- repeat (tile is composite and lands here) -------------------------------------------
@register("repeat")
def repeat(x: torch.Tensor, repeats: Sequence[int]) -> torch.Tensor:
    repeats = [int(r) for r in repeats]
    if len(repeats) < x.dim():
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor")
    lead = len(repeats) - x.dim()
    src_shape = [1] * lead + list(x.shape)
    strides = [0] * lead + list(x.stride())
    out_shape = [r * s for r, s in zip(repeats, src_shape)]
    if not out_shape:  # a 0-d tensor repeated by ()
        return x.clone()
    out = torch.empty(size=out_shape, dtype=x.dtype, device=x.device)
    shape, src_shape, strides = drop_unit_dims(out_shape, src_shape, strides)
    if len(shape) > MAX_RANK:
        return aten_fallback("repeat")(x, repeats)
    return nd_gather(x, out, shape=shape, strides=strides, src_shape=src_shape, mode=WRAP)


# -- constant_pad_nd (F.pad mode="constant") ---------------------------------------------
@register("constant_pad_nd")
def constant_pad_nd(x: torch.Tensor, pad: Sequence[int], value: float = 0) -> torch.Tensor:
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > x.dim():
        raise RuntimeError("Length of pad must be even and at most twice the number of dimensions of the input")
    lo, hi = [0] * x.dim(), [0] * x.dim()
    for k in range(len(pad) // 2):  # pairs start from the last dim
        lo[x.dim() - 1 - k], hi[x.dim() - 1 - k] = pad[2 * k], pad[2 * k + 1]
    out_shape = [s + a + b for s, a, b in zip(x.shape, lo, hi)]
    if any(s + min(a, 0) + min(b, 0) < 0 for s, a, b in zip(x.shape, lo, hi)):  # torch crops before it pads
        raise RuntimeError(f"narrow(): length must be non-negative (padding {pad} crops more than the input {tuple(x.shape)} holds)")
    if any(s < 0 for s in out_shape):
        raise RuntimeError(f"The input size {tuple(x.shape)} with padding {pad} gives a negative output size {out_shape}")
    if x.dim() > MAX_RANK:
        return aten_fallback("constant_pad_nd")(x, pad, value)
    out = torch.empty(size=out_shape, dtype=x.dtype, device=x.device)
    fill = checked_scalar(value, x.dtype)
    fill = fill if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool else int(fill)
    return nd_gather(x, out, strides=list(x.stride()), src_shape=list(x.shape), lo=lo, mode=PAD, fill=fill)


# -- reflection / replication / circular pad (F.pad mode="reflect" / "replicate" / "circular")
# F.pad runs aten::pad -> _pad_enum (both composite) -> reflection_pad{1,2,3}d,
# replication_pad{1,2,3}d or _pad_circular (composite too: registered on Autograd<device>
# with its own backward). Each output element reads one source element; the backward adds
# each output gradient into the input element it read (an atomic scatter-add in fp32 or
# fp64, then cast, as aten's CUDA kernels do).
REFLECT, REPLICATE, CIRCULAR = 0, 1, 2
_PAD_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
               torch.int64, torch.uint8}

# A program writes a [ROWS, BLOCK_W] tile: ROWS rows of the output's last padded dim (their
# source offsets decomposed once per row) by BLOCK_W columns. BLOCK_W is the last dim
# rounded up to a power of two, capped at 1024 (set by the shape); TILE = ROWS * BLOCK_W
# and num_warps are tuned.
_PAD_CONFIGS = [triton.Config({"TILE": t}, num_warps=w) for t, w in [(1024, 4), (2048, 4), (4096, 8), (8192, 8)]]
_PAD_DEFAULT = triton.Config({"TILE": 2048}, num_warps=4)
_PAD_MAX_W = 1024


@triton.jit
def _pad_src(o, S, L, OFF, MODE: tl.constexpr):
    """Source index of output index ``o`` along a dim of source size ``S`` padded by ``L``
    in front (negative ``L`` crops); circular: ``S`` is the cropped size, from ``OFF``."""
    c = o - L
    if MODE == 0:  # reflect (without repeating the edge)
        c = tl.where(c < 0, -c, c)
        c = tl.where(c >= S, 2 * (S - 1) - c, c)
    elif MODE == 1:  # replicate
        c = tl.minimum(tl.maximum(c, 0), S - 1)
    else:  # circular
        c = c % S
        c = tl.where(c < 0, c + S, c)
    return c + OFF


@triton.jit
def _pad_tile(
    n_rows, B1, TB0, TB1, O0, O1, O2, S0, S1, S2, L0, L1, L2, F0, F1, F2, T0, T1, T2,
    MODE: tl.constexpr, TILE: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """(source offsets, output offsets, mask) of this program's tile of (B0, B1, O0, O1, O2)."""
    ROWS: tl.constexpr = TILE // BLOCK_W
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    o1 = r % O1
    q = r // O1
    o0 = q % O0
    q = q // O0
    b1 = q % B1
    b0 = q // B1
    base = b0 * TB0 + b1 * TB1 + _pad_src(o0, S0, L0, F0, MODE) * T0 + _pad_src(o1, S1, L1, F1, MODE) * T1
    c = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    src = base[:, None] + _pad_src(c, S2, L2, F2, MODE).to(tl.int64)[None, :] * T2
    dst = r[:, None] * O2 + c[None, :]
    return src, dst, (r < n_rows)[:, None] & (c < O2)[None, :]


@libtuner(configs=_PAD_CONFIGS, key=["n_rows", "O2"], strategy=["log", "log"], default=_PAD_DEFAULT)
@triton.jit
def pad_kernel(
    x, out, n_rows, B1, TB0, TB1, O0, O1, O2, S0, S1, S2, L0, L1, L2, F0, F1, F2, T0, T1, T2,
    MODE: tl.constexpr, TILE: tl.constexpr, BLOCK_W: tl.constexpr,
):
    src, dst, m = _pad_tile(n_rows, B1, TB0, TB1, O0, O1, O2, S0, S1, S2, L0, L1, L2, F0, F1, F2, T0, T1, T2,
                            MODE, TILE, BLOCK_W)
    tl.store(out + dst, tl.load(x + src, mask=m), mask=m)


@libtuner(configs=_PAD_CONFIGS, key=["n_rows", "O2"], strategy=["log", "log"], default=_PAD_DEFAULT, reset_to_zero=["dx"])
@triton.jit
def pad_backward_kernel(
    g, dx, n_rows, B1, TB0, TB1, O0, O1, O2, S0, S1, S2, L0, L1, L2, F0, F1, F2, T0, T1, T2,
    MODE: tl.constexpr, TILE: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """``g``: the contiguous output gradient; ``dx``: a zeroed fp32/fp64 input gradient."""
    src, dst, m = _pad_tile(n_rows, B1, TB0, TB1, O0, O1, O2, S0, S1, S2, L0, L1, L2, F0, F1, F2, T0, T1, T2,
                            MODE, TILE, BLOCK_W)
    v = tl.load(g + dst, mask=m).to(dx.dtype.element_ty)
    tl.atomic_add(dx + src, v, mask=m)


_PAD_NAMES = {REFLECT: "reflection_pad", REPLICATE: "replication_pad", CIRCULAR: "_pad_circular"}


def _pad_geometry(shape: Sequence[int], pad: Sequence[int], mode: int) -> tuple[list[int], list[tuple[int, int, int, int]]] | None:
    """(output shape, (O, S, L, OFF) per padded dim, outermost first), or None where aten
    decides: an input it rejects (its error message), or one without elements."""
    k = len(pad) // 2
    if len(pad) % 2 or k not in (1, 2, 3) or len(shape) not in (k + 1, k + 2) or math.prod(shape) == 0:
        return None
    lead = len(shape) - k
    dims = []
    for j in range(k):  # pairs start from the last dim
        size, lo, hi = shape[lead + k - 1 - j], pad[2 * j], pad[2 * j + 1]
        if mode == CIRCULAR:  # crop by the negative pads, then wrap around the rest
            off = max(0, -lo)
            cropped = size - off - max(0, -hi)
            lo, hi = max(lo, 0), max(hi, 0)
            if cropped < 1 or lo > cropped or hi > cropped:
                return None
            dims.append((cropped + lo + hi, cropped, lo, off))
        else:
            if (mode == REFLECT and (lo >= size or hi >= size)) or size + lo + hi < 1:
                return None
            dims.append((size + lo + hi, size, lo, 0))
    dims.reverse()
    return list(shape[:lead]) + [d[0] for d in dims], dims


def _pad_args(shape: Sequence[int], strides: Sequence[int], dims: list[tuple[int, int, int, int]]) -> list[int]:
    """n_rows, B1, TB0, TB1, O0..2, S0..2, L0..2, F0..2, T0..2 of a (source) tensor of ``shape``."""
    k = len(dims)
    lead = len(shape) - k
    b = [1] * (2 - lead) + list(shape[:lead])
    tb = [0] * (2 - lead) + list(strides[:lead])
    dims = [(1, 1, 0, 0)] * (3 - k) + dims
    t = [0] * (3 - k) + list(strides[lead:])
    n_rows = b[0] * b[1] * dims[0][0] * dims[1][0]
    return [n_rows, b[1], tb[0], tb[1], *(d[0] for d in dims), *(d[1] for d in dims), *(d[2] for d in dims),
            *(d[3] for d in dims), *t]


def _pad_launch(kernel, a: torch.Tensor, b: torch.Tensor, args: list[int], mode: int) -> None:
    n_rows, width = args[0], args[6]
    block_w = min(next_power_of_2(width), _PAD_MAX_W)
    grid = lambda META: (cdiv(n_rows, META["TILE"] // block_w), cdiv(width, block_w))
    kernel[grid](a, b, *args, MODE=mode, BLOCK_W=block_w)


def _pad_forward(x: torch.Tensor, out_shape: list[int], dims: list, mode: int) -> torch.Tensor:
    out = torch.empty(size=out_shape, dtype=x.dtype, device=x.device)
    src, dst = (x.view(torch.uint8), out.view(torch.uint8)) if x.dtype == torch.bool else (x, out)
    _pad_launch(pad_kernel, src, dst, _pad_args(x.shape, x.stride(), dims), mode)
    return out


def _pad_backward(g: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, dims: list, mode: int) -> torch.Tensor:
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    acc = torch.zeros(size=shape, dtype=acc_dtype, device=g.device)
    _pad_launch(pad_backward_kernel, g.contiguous(), acc, _pad_args(acc.shape, acc.stride(), dims), mode)
    return acc if dtype == acc_dtype else acc.to(dtype)


def _pad_op(mode: int, nd: int) -> tuple[Callable, Callable]:
    name = f"{_PAD_NAMES[mode]}{nd}d"

    @register(name)
    def forward(x: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
        geom = _pad_geometry(x.shape, [int(p) for p in padding], mode) if len(padding) == 2 * nd else None
        if geom is None or x.dtype not in _PAD_DTYPES:
            return aten_fallback(name)(x, padding)
        return _pad_forward(x, *geom, mode)

    @register(f"{name}_backward")
    def backward(grad_output: torch.Tensor, x: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
        geom = _pad_geometry(x.shape, [int(p) for p in padding], mode) if len(padding) == 2 * nd else None
        if geom is None or not x.is_floating_point() or tuple(grad_output.shape) != tuple(geom[0]):
            return aten_fallback(f"{name}_backward")(grad_output, x, padding)
        return _pad_backward(grad_output, x.shape, x.dtype, geom[1], mode)

    forward.__name__, backward.__name__ = name, f"{name}_backward"
    forward.__qualname__, backward.__qualname__ = name, f"{name}_backward"
    return forward, backward


reflection_pad1d, reflection_pad1d_backward = _pad_op(REFLECT, 1)
reflection_pad2d, reflection_pad2d_backward = _pad_op(REFLECT, 2)
reflection_pad3d, reflection_pad3d_backward = _pad_op(REFLECT, 3)
replication_pad1d, replication_pad1d_backward = _pad_op(REPLICATE, 1)
replication_pad2d, replication_pad2d_backward = _pad_op(REPLICATE, 2)
replication_pad3d, replication_pad3d_backward = _pad_op(REPLICATE, 3)


class _PadCircular(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, out_shape: list[int], dims: list) -> torch.Tensor:
        ctx.shape, ctx.dtype, ctx.dims = x.shape, x.dtype, dims
        return _pad_forward(x, out_shape, dims, CIRCULAR)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _pad_backward(g, ctx.shape, ctx.dtype, ctx.dims, CIRCULAR), None, None


@register("_pad_circular", autograd=True)
def pad_circular(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    geom = _pad_geometry(x.shape, [int(p) for p in pad], CIRCULAR)
    if geom is None or x.dtype not in _PAD_DTYPES | {torch.bool}:
        return aten_fallback("_pad_circular")(x, pad)
    if torch.is_grad_enabled() and x.requires_grad:
        return _PadCircular.apply(x, *geom)
    return _pad_forward(x, *geom, CIRCULAR)


# -- triu / tril -------------------------------------------------------------------------
@libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(512, 4), (1024, 4), (2048, 8), (4096, 8)]],
    key=["n"],
    strategy=["log"],
    default=triton.Config({"BLOCK": 1024}, num_warps=4),
)
@triton.jit
def tri_kernel(x, out, n, M, N, sb, sm, sn, diag, UPPER: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = i % N
    r = (i // N) % M
    b = i // (N * M)
    if UPPER:
        keep = c - r >= diag
    else:
        keep = c - r <= diag
    v = tl.load(x + b * sb + r * sm + c * sn, mask=m & keep, other=0)
    tl.store(out + i, v, mask=m)


def _tri(x: torch.Tensor, diagonal: int, upper: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    if x.dim() < 2:
        raise RuntimeError(f"{'triu' if upper else 'tril'}: input tensor must have at least 2 dimensions")
    M, N = x.shape[-2], x.shape[-1]
    buf = torch.empty(size=x.shape, dtype=x.dtype, device=x.device) if out is None else out_buffer(out, x.shape, x.dtype)
    if x.numel() == 0:
        return buf if out is None else finish_out(out, buf)
    bshape, bstride = x.shape[:-2], x.stride()[:-2]
    # the batch dims must merge into one stride; otherwise read a contiguous copy
    ms, mt = merge_dims(bshape, bstride) if len(bshape) else ([1], [0])
    if len(ms) > 1:
        x = x.contiguous()
        mt = [M * N]
    n = x.numel()
    grid = lambda META: (cdiv(n, META["BLOCK"]),)
    tri_kernel[grid](x, buf, n, M, N, mt[0], x.stride(-2), x.stride(-1), int(diagonal), UPPER=upper)
    return buf if out is None else finish_out(out, buf)


@register("triu")
def triu(x: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return _tri(x, diagonal, True)


@register("triu.out")
def triu_out(x: torch.Tensor, diagonal: int = 0, *, out: torch.Tensor) -> torch.Tensor:
    return _tri(x, diagonal, True, out)


@register("tril")
def tril(x: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return _tri(x, diagonal, False)


@register("tril.out")
def tril_out(x: torch.Tensor, diagonal: int = 0, *, out: torch.Tensor) -> torch.Tensor:
    return _tri(x, diagonal, False, out)
