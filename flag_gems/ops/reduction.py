"""Reductions: sum, mean, prod, amax/amin, max/min (+indices), argmax/argmin, all/any,
var_mean and linalg_vector_norm.

One value kernel (``_reduce_kernel``) covers every value reduction through a constexpr
``OP`` (what each element contributes and how contributions combine) and ``POST`` (the
epilogue: mean's scale, a norm's root); one arg kernel covers max/min with indices. Both
work on the (M, R, K) view of ``_reduce_common``. Full reductions run in two stages
(per-chunk partials, then one program over the partials): no atomics, deterministic.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.registry import aten_fallback, register
from flag_gems.utils import cdiv, next_power_of_2
from tuner import launch as launching
from tuner import settings

log = logging.getLogger(__name__)

# OP codes: each element's contribution, and the combine (additive / mul / max / min)
SUM, ABS_SUM, SQ_SUM, NONZERO, POW_SUM, SQDEV = 0, 1, 2, 3, 4, 5  # additive
VAR_MEAN, VAR_MEAN_MERGE = 40, 41  # two accumulators (see _reduce_kernel)
PROD = 10
MAX, ABS_MAX, ANY = 20, 21, 22
MIN, ABS_MIN, ALL = 30, 31, 32
# POST codes
P_NONE, P_SCALE, P_SQRT, P_ROOT = 0, 1, 2, 3

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)  # one instruction (max.NaN) compiled


@triton.jit
def _min_nan(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


# Compiled, one NaN-propagating tree reduction (_max_nan as the combine) beats tl.max plus
# a second reduction that looks for NaNs. Triton's interpreter runs tl.max natively but
# any other combine element by element in Python, far too slow for tests, so there the
# two-reduction form runs.
_ONE_PASS_NAN = tl.constexpr(not settings.get().interpret)


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _identity_tile(OP: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    if ACC == 0:
        dt: tl.constexpr = tl.float32
    elif ACC == 1:
        dt: tl.constexpr = tl.float64
    else:
        dt: tl.constexpr = tl.int64
    if OP == 10 or OP == 32:
        return tl.full([BLOCK_R, BLOCK_K], 1, dt)
    elif OP == 20:
        if ACC == 2:
            return tl.full([BLOCK_R, BLOCK_K], -9223372036854775808, dt)
        else:
            return tl.full([BLOCK_R, BLOCK_K], float("-inf"), dt)
    elif OP == 30 or OP == 31:
        if ACC == 2:
            return tl.full([BLOCK_R, BLOCK_K], 9223372036854775807, dt)
        else:
            return tl.full([BLOCK_R, BLOCK_K], float("inf"), dt)
    else:
        return tl.zeros([BLOCK_R, BLOCK_K], dt)


@triton.jit
def _contribution(x_raw, aux, p, OP: tl.constexpr, ACC: tl.constexpr):
    if OP == 22 or OP == 32:  # any / all: truth of the raw value (0.5 is true)
        return (x_raw != 0).to(tl.float32)
    x = rc.to_acc(x_raw, ACC)
    if OP == 1 or OP == 21 or OP == 31:
        return tl.abs(x)
    elif OP == 2:
        return x * x
    elif OP == 3:
        return (x != 0).to(x.dtype)
    elif OP == 4:
        return tl.exp2(tl.log2(tl.abs(x)) * p)
    elif OP == 5:
        d = x - aux
        return d * d
    else:
        return x


@triton.jit
def _combine(acc, v, OP: tl.constexpr):
    if OP < 10:
        return acc + v
    elif OP == 10:
        return acc * v
    elif OP < 30:
        return _max_nan(acc, v)
    else:
        return _min_nan(acc, v)


@triton.jit
def _nan_if_any(res, acc, AXIS: tl.constexpr):
    # built-in max/min may drop NaNs; torch propagates them
    has_nan = tl.max((acc != acc).to(tl.int32), AXIS) > 0
    return tl.where(has_nan, float("nan"), res)


@triton.jit
def _finish(acc, OP: tl.constexpr, ACC: tl.constexpr, AXIS: tl.constexpr):
    # built-in reductions where possible: a custom combine is slower (and very slow in
    # the interpreter)
    if OP < 10:
        return tl.sum(acc, AXIS)
    elif OP == 10:
        return tl.reduce(acc, AXIS, _mul)
    elif OP < 30:  # one assignment per constexpr branch: Triton types every return it sees
        if ACC == 2:
            res = tl.max(acc, AXIS)
        elif _ONE_PASS_NAN:
            res = tl.reduce(acc, AXIS, _max_nan)
        else:
            res = _nan_if_any(tl.max(acc, AXIS), acc, AXIS)
        return res
    else:
        if ACC == 2:
            res = tl.min(acc, AXIS)
        elif _ONE_PASS_NAN:
            res = tl.reduce(acc, AXIS, _min_nan)
        else:
            res = _nan_if_any(tl.min(acc, AXIS), acc, AXIS)
        return res


@triton.jit
def _post(res, POST: tl.constexpr, p, scale):
    if POST == 1:
        res = res * scale
    elif POST == 2:
        res = tl.sqrt(res)
    elif POST == 3:
        res = tl.exp2(tl.log2(res) / p)
    return res


@triton.jit
def _reduce_kernel(
    X, X2, OUT, OUT2, AUX, M, R, K, sxm, sxr, sxk, chunk, S, aux_sm, aux_sk, p, scale,
    OP: tl.constexpr, POST: tl.constexpr, ACC: tl.constexpr, HAS_AUX: tl.constexpr,
    ROWS: tl.constexpr, FINAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Reduce R of the (M, R, K) view, split in S chunks of ``chunk`` (S > 1: this is
    stage 1 and OUT/OUT2 get acc-dtype partials laid out (M, S, K)).

    ROWS (R contiguous, M == 1, K = the rows): tile [BLOCK_K rows, BLOCK_R], R the fast
    axis; grid (cdiv(K, BLOCK_K), S). Else tile [BLOCK_R, BLOCK_K], K the fast axis;
    grid (M, cdiv(K, BLOCK_K), S).
    OP 40 (var_mean): sums of d and d*d, d = x - shift (shift = first element of the
    reduction, read from AUX); FINAL writes var to OUT and mean to OUT2 (p = n,
    scale = 1 / (n - correction)). OP 41 merges OP-40 partials (X: sums of d, X2: of d*d).
    """
    if ROWS:
        pid_m = 0
        offs_k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
        s = tl.program_id(1).to(tl.int64)
    else:
        pid_m = tl.program_id(0).to(tl.int64)
        offs_k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
        s = tl.program_id(2).to(tl.int64)
    kmask = offs_k < K
    r_lo = s * chunk
    r_hi = tl.minimum(r_lo + chunk, R)
    if ROWS:
        SHAPE_A: tl.constexpr = BLOCK_K
        SHAPE_B: tl.constexpr = BLOCK_R
        RAX: tl.constexpr = 1
    else:
        SHAPE_A: tl.constexpr = BLOCK_R
        SHAPE_B: tl.constexpr = BLOCK_K
        RAX: tl.constexpr = 0
    aux = 0.0
    if HAS_AUX:
        a = tl.load(AUX + pid_m * aux_sm + offs_k * aux_sk, mask=kmask & (offs_k * 0 < R), other=0)
        a = rc.to_acc(a, ACC)
        if ROWS:
            aux = a[:, None]
        else:
            aux = a[None, :]
    acc = _identity_tile(OP, ACC, SHAPE_A, SHAPE_B)
    ident = _identity_tile(OP, ACC, SHAPE_A, SHAPE_B)
    acc2 = _identity_tile(OP, ACC, SHAPE_A, SHAPE_B)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        if ROWS:
            offs = offs_r[None, :] * sxr + offs_k[:, None] * sxk
            mask = (offs_r < r_hi)[None, :] & kmask[:, None]
        else:
            offs = pid_m * sxm + offs_r[:, None] * sxr + offs_k[None, :] * sxk
            mask = (offs_r < r_hi)[:, None] & kmask[None, :]
        x = tl.load(X + offs, mask=mask, other=0)
        if OP == 40:
            d = tl.where(mask, rc.to_acc(x, ACC) - aux, 0.0)
            acc += d
            acc2 += d * d
        elif OP == 41:
            acc += rc.to_acc(x, ACC)
            acc2 += rc.to_acc(tl.load(X2 + offs, mask=mask, other=0), ACC)
        else:
            v = tl.where(mask, _contribution(x, aux, p, OP, ACC), ident)
            acc = _combine(acc, v, OP)
    if ROWS:
        o = offs_k * S + s
    else:
        o = (pid_m * S + s) * K + offs_k
    if OP >= 40:
        s1 = tl.sum(acc, RAX)
        s2 = tl.sum(acc2, RAX)
        if FINAL:
            mean_d = s1 / p
            v = s2 - s1 * mean_d
            var = tl.where(v < 0.0, 0.0, v) * scale  # (rounding can dip below 0; a NaN stays NaN)
            shift = tl.reshape(aux, [BLOCK_K])
            tl.store(OUT + o, var, mask=kmask)
            tl.store(OUT2 + o, shift + mean_d, mask=kmask)
        else:
            tl.store(OUT + o, s1, mask=kmask)
            tl.store(OUT2 + o, s2, mask=kmask)
    else:
        res = _finish(acc, OP, ACC, RAX)
        if FINAL:
            res = _post(res, POST, p, scale)
        tl.store(OUT + o, res, mask=kmask)




@triton.jit
def _argmax_combine(v1, i1, v2, i2):
    n1 = v1 != v1
    n2 = v2 != v2
    better = (v1 > v2) | (n1 & ~n2)
    tie = (v1 == v2) | (n1 & n2)
    take1 = better | (tie & (i1 < i2))
    return tl.where(take1, v1, v2), tl.where(take1, i1, i2)


@triton.jit
def _argmin_combine(v1, i1, v2, i2):
    n1 = v1 != v1
    n2 = v2 != v2
    better = (v1 < v2) | (n1 & ~n2)
    tie = (v1 == v2) | (n1 & n2)
    take1 = better | (tie & (i1 < i2))
    return tl.where(take1, v1, v2), tl.where(take1, i1, i2)


@triton.jit
def _arg_reduce_kernel(
    X, IDX_IN, OUT_V, OUT_I, M, R, K, sxm, sxr, sxk, limit, idx_sk,
    IS_MAX: tl.constexpr, HAS_IDX_IN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    OP: tl.constexpr = 20 if IS_MAX else 30
    ident = _identity_tile(OP, ACC, BLOCK_R, BLOCK_K)
    far = tl.full([BLOCK_R, BLOCK_K], 9223372036854775807, tl.int64)
    best_v = ident
    best_i = far
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        offs = pid_m * sxm + offs_r[:, None] * sxr + offs_k[None, :] * sxk
        mask = (offs_r < R)[:, None] & kmask[None, :] & (offs < limit)
        x = tl.where(mask, rc.to_acc(tl.load(X + offs, mask=mask, other=0), ACC), ident)
        if HAS_IDX_IN:
            i = tl.load(IDX_IN + offs, mask=mask, other=0)
        else:
            i = offs_r[:, None] + offs_k[None, :] * idx_sk
        i = tl.where(mask, i, far)
        if IS_MAX:
            best_v, best_i = _argmax_combine(best_v, best_i, x, i)
        else:
            best_v, best_i = _argmin_combine(best_v, best_i, x, i)
    # final: the extreme value, then its smallest index (NaN counts as the extreme)
    is_nan = best_v != best_v
    has_nan = tl.max(is_nan.to(tl.int32), 0) > 0
    if IS_MAX:
        v = tl.max(best_v, 0)
    else:
        v = tl.min(best_v, 0)
    hit = tl.where(has_nan[None, :], is_nan, best_v == v[None, :])
    i = tl.min(tl.where(hit, best_i, far), 0)
    if ACC != 2:
        v = tl.where(has_nan, float("nan"), v)
    tl.store(OUT_V + pid_m * K + offs_k, v, mask=kmask)
    tl.store(OUT_I + pid_m * K + offs_k, i, mask=kmask)


_ARG = rc.Tuned(_arg_reduce_kernel)

NO_LIMIT = 2**62


# -- launchers ------------------------------------------------------------------------
def _chunk(n: int) -> int:
    """Stage-1 chunk length of a full arg-reduction: ~sqrt(n) partials of ~sqrt(n) each."""
    return max(1024, next_power_of_2(math.isqrt(max(n, 1))))


def _acc_dtype(acc: int) -> torch.dtype:
    return (torch.float32, torch.float64, torch.int64)[acc]


_rcfg = rc.rcfg
_ROWS_CLASSES = rc.ROWS_CLASSES
# strided R (reduction over an outer dim): K is the contiguous axis of the tile.
_INNER_CLASSES = [
    (32, [_rcfg(64, 32, 4), _rcfg(32, 32, 4), _rcfg(128, 16, 4)], _rcfg(64, 32, 4)),
    (1 << 62, [_rcfg(16, 128, 4), _rcfg(8, 256, 4), _rcfg(32, 64, 4), _rcfg(32, 128, 8), _rcfg(16, 256, 8)], _rcfg(16, 128, 4)),
]
_KEY = dict(key=["R", "K"], strategy=["log", "log"])
_NAME = f"{__name__}._reduce_kernel"
_ROWS_T = rc.SizeClassed(_reduce_kernel, _ROWS_CLASSES, name=f"{_NAME}:rows", size="R", **_KEY)
_INNER_T = rc.SizeClassed(_reduce_kernel, _INNER_CLASSES, name=f"{_NAME}:inner", size="K", **_KEY)

_PROGRAMS_PER_SM = 4  # split a reduction until it has this many programs per SM
_MIN_SPLIT_WORK = 16384  # ... but each program still reduces at least this many elements


def _grid(rows: bool, M: int, K: int, S: int):
    if rows:
        return lambda META: (cdiv(K, META["BLOCK_K"]), S)
    return lambda META: (M, cdiv(K, META["BLOCK_K"]), S)


def _stage2_op(op: int) -> int:
    if op >= 40:
        return 41
    if op < 10:
        return SUM
    if op == PROD:
        return PROD
    if op < 30:
        return MAX
    return MIN


class _Plan:
    """Everything about a reduction that depends only on shapes, strides, dtypes and the
    op: computed once per such key, then each call allocates and launches."""

    __slots__ = ("prep", "out_shape", "empty", "S", "chunk", "part_shape", "l1", "l2", "a1", "a2")


def _pick(rows: bool, R: int, K: int):
    return _ROWS_T.pick(R) if rows else _INNER_T.pick(K)


def _make_plan(x: torch.Tensor, dims: list[int], keepdim: bool, op: int, acc: int, post: int, p: float,
               scale: float | None, correction: float) -> _Plan:
    plan = _Plan()
    dims = dims if dims else list(range(x.dim()))
    plan.out_shape = tuple(rc.keep_shape(x.shape, dims, keepdim))  # (torch.empty takes a list's size slower)
    lay = rc.layout(x, dims) if x.dim() else rc.flat_layout(x)
    # how to get lay.x from x on later calls: as is, or a copy
    if lay.x.data_ptr() == x.data_ptr() or x.numel() == 0:
        plan.prep = None
    elif dims == list(range(dims[0], dims[-1] + 1)) or not x.dim():
        plan.prep = ()  # .contiguous()
    else:
        plan.prep = tuple([d for d in range(x.dim()) if d not in dims] + list(dims))
    plan.empty = lay.M * lay.K == 0  # no tensor kept: a plan must not hold memory
    M, R, K = lay.M, lay.R, lay.K
    rows = lay.is_rows and (lay.sr == 1 or R == 1)
    t1 = _pick(rows, R, K)
    # split R across programs when the outputs alone cannot fill the GPU
    d1 = t1._of(R if rows else K)[2]  # the class default: what the split is planned for
    bk = d1["BLOCK_K"]
    tiles = M * cdiv(K, bk)
    target = _PROGRAMS_PER_SM * rc.sm_count(x.device)
    S = 1
    if 0 < tiles < target and R > 1:  # no tiles (nothing kept): no split, an empty output
        min_chunk = max(1, _MIN_SPLIT_WORK // bk)
        S = max(1, min(cdiv(target, tiles), R // min_chunk))
    br = d1["BLOCK_R"]
    chunk = R if S == 1 else cdiv(cdiv(R, S), br) * br
    S = cdiv(R, chunk) if R else 1
    plan.S, plan.chunk = S, chunk
    n = R
    if op >= 40:
        c = correction
        denom = max(n - c, 0)
        p, scale = float(n), (1.0 / denom if denom > 0 else math.inf)  # 0 * inf = nan, as torch's 0 / 0
    elif scale is None:
        scale = 1.0 / n if n else math.nan
    plan.l1 = rc.Launch(t1, _grid(rows, M, K, S))
    # constant arguments of stage 1 (after X, X2, OUT, OUT2, AUX)
    final1 = S == 1
    plan.a1 = (M, R, K, lay.sm, lay.sr, lay.sk, chunk, S, lay.sm, lay.sk, float(p), float(scale))
    kw1 = dict(OP=op, POST=post, ACC=acc, HAS_AUX=op == 40, ROWS=rows, FINAL=final1)
    plan.a1 = (plan.a1, kw1)
    plan.part_shape = None
    plan.l2 = plan.a2 = None
    if not final1:
        plan.part_shape = (M * S * K,)
        # partials: (K, S) after the rows regime, else (M, S, K); combined over S
        rows2 = rows or K == 1
        if rows:  # K rows of S
            M2, R2, K2, sm2, sr2, sk2 = 1, S, K, 0, 1, S
        elif rows2:  # M rows of S
            M2, R2, K2, sm2, sr2, sk2 = 1, S, M, 0, 1, S
        else:
            M2, R2, K2, sm2, sr2, sk2 = M, S, K, S * K, K, 1
        t2 = _pick(rows2, R2, K2)
        plan.l2 = rc.Launch(t2, _grid(rows2, M2, K2, 1))
        a2 = (M2, R2, K2, sm2, sr2, sk2, R2, 1, lay.sm, lay.sk, float(p), float(scale))
        kw2 = dict(OP=_stage2_op(op), POST=post, ACC=acc, HAS_AUX=op == 40, ROWS=rows2, FINAL=True)
        plan.a2 = (a2, kw2)
    return plan


_PLANS = rc.PlanCache()
# plan key -> (out shape, kept kernel (a tuner.launch.Bound), its runner, the arguments after
# X, X2, OUT, OUT2, AUX) of a one-launch plan that reads its input in place; None where
# nothing was kept (the interpreter). A repeat then allocates and launches, nothing else.
_REPEAT: dict = launching.direct_cache()


def _run(x: torch.Tensor, dim: Any, keepdim: bool, op: int, out_dtype: torch.dtype, acc: int,
         post: int = P_NONE, p: float = 0.0, scale: float | None = None, correction: float = 1.0,
         out2_dtype: torch.dtype | None = None) -> Any:
    """Reduce ``dim`` (None / [] = every dim) of ``x``; ``scale`` None means 1/R (mean).
    OP 40 (var_mean) returns (var, mean)."""
    key = (x.shape, x.stride(), x.dtype, dim if dim is None or type(dim) is int else tuple(dim), keepdim, op,
           out_dtype, post, p, scale, correction)
    hit = _REPEAT.get(key)
    if hit is not None:
        out = _repeat(hit, x, out_dtype)
        if out is not None:
            return out
    plan = _PLANS.get(key)
    if plan is None:
        if x.dtype == torch.bool:
            x = x.view(torch.uint8)
        plan = _PLANS.put(key, _make_plan(x, rc.norm_dims(dim, x.dim()), keepdim, op, acc, post, p, scale, correction))
    elif x.dtype == torch.bool:
        x = x.view(torch.uint8)
    dev = x.device
    out = torch.empty(size=plan.out_shape, dtype=out_dtype, device=dev)
    store = out.view(torch.uint8) if out_dtype == torch.bool else out
    out2 = store2 = None
    if op >= 40:
        out2 = store2 = torch.empty(size=plan.out_shape, dtype=out2_dtype, device=dev)
    if plan.empty:
        return out if op < 40 else (out, out2)
    prep = plan.prep
    if prep is not None:
        x = x.contiguous() if not prep else x.permute(prep).contiguous()
    args, kw = plan.a1
    # the plan fixes every other argument: a kept kernel per alignment
    direct = not (x.data_ptr() | store.data_ptr() | (store2.data_ptr() if store2 is not None else 0)) & 15 or None
    # tensors only var_mean reads (X2, OUT2, AUX) are None otherwise: constexprs to Triton,
    # so no pointer for its launcher to check (a second stage's AUX, unread, names the
    # input's dtype in its tuning key: what tells it from a first stage)
    if plan.l2 is None:
        plan.l1(x, None, store, store2, x if op >= 40 else None, *args, direct=direct, **kw)
        if direct and prep is None and store is out and op < 40 and key[2] != torch.bool and key not in _REPEAT:
            _file_repeat(key, plan, args)
    else:
        adt = _acc_dtype(acc)
        part = torch.empty(size=plan.part_shape, dtype=adt, device=dev)
        part2 = torch.empty(size=plan.part_shape, dtype=adt, device=dev) if op >= 40 else None
        plan.l1(x, None, part, part2, x if op >= 40 else None, *args, direct=direct, **kw)
        args2, kw2 = plan.a2
        plan.l2(part, part2, store, store2, x, *args2, direct=direct, **kw2)
    return out if op < 40 else (out, out2)


def _repeat(hit: tuple, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor | None:
    """A filed one-launch plan's launch for ``x``; None where it cannot (another device,
    an unaligned tensor)."""
    shape, bound, run, args = hit
    device = bound.device
    if bound.current_device() != device:
        return None
    out = torch.empty(size=shape, dtype=out_dtype, device=x.device)
    if (x.data_ptr() | out.data_ptr()) & 15:
        return None
    run(x, None, out, None, None, *args, stream=bound.current_stream(device))
    if launching.observer is not None:
        launching.observer(_reduce_kernel)
    return out


def _file_repeat(key: tuple, plan: _Plan, args: tuple) -> None:
    """File a one-launch plan's kept kernel under its key for ``_run``'s repeats."""
    if len(_REPEAT) >= rc.PlanCache.LIMIT:
        _REPEAT.clear()
    found = plan.l1.filed(True)
    if found is None:
        _REPEAT[key] = None
        return
    bound, grid = found
    _REPEAT[key] = (plan.out_shape, bound, bound.runner(grid), (*args, *bound.kept.tail))


def _arg_reduce(x: torch.Tensor, dim: int | None, keepdim: bool, is_max: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out_dtype = x.dtype
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    acc = rc.acc_code(x.dtype)
    if dim is None:
        shape = [1] * x.dim() if keepdim else []
        lay = rc.flat_layout(x)
    else:
        d = dim % max(x.dim(), 1)
        shape = rc.keep_shape(x.shape, [d], keepdim) if x.dim() else []
        lay = rc.layout(x, [d]) if x.dim() else rc.flat_layout(x)
    vals = torch.empty(size=shape, dtype=x.dtype, device=x.device)
    idx = torch.empty(size=shape, dtype=torch.int64, device=x.device)
    ret = vals.view(torch.bool) if out_dtype == torch.bool else vals
    n = lay.R
    if dim is None and n > _chunk(n):
        chunk = _chunk(n)
        parts = cdiv(n, chunk)
        pv = torch.empty(parts, dtype=x.dtype, device=x.device)
        pi = torch.empty(parts, dtype=torch.int64, device=x.device)
        s1 = rc.Layout(lay.x, 1, chunk, parts, 0, 1, chunk, is_rows=True)
        _arg_launch(s1, None, pv, pi, is_max, acc, limit=n, idx_sk=chunk)
        _arg_launch(rc.flat_layout(pv), pi, vals, idx, is_max, acc)
    else:
        _arg_launch(lay, None, vals, idx, is_max, acc)
    return ret, idx


def _arg_launch(lay: rc.Layout, idx_in: torch.Tensor | None, vals: torch.Tensor, idx: torch.Tensor, is_max: bool, acc: int,
                *, limit: int = NO_LIMIT, idx_sk: int = 0) -> None:
    if lay.M * lay.K == 0:
        return
    _ARG.pick(lay)[rc.grid_mk(lay)](
        lay.x, idx_in if idx_in is not None else idx, vals, idx, lay.M, lay.R, lay.K, lay.sm, lay.sr, lay.sk, limit, idx_sk,
        IS_MAX=is_max, HAS_IDX_IN=idx_in is not None, ACC=acc,
    )


def _check_nonempty(x: torch.Tensor, dims: list[int], name: str) -> None:
    if x.numel() == 0 and (not dims or any(x.shape[d] == 0 for d in dims)):
        raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() == 0")


# -- sum / mean / prod ------------------------------------------------------------------
def _sum_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.int64 if not x.is_floating_point() and not x.is_complex() else x.dtype


@register("sum")
def sum_(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return sum_dim(x, None, False, dtype=dtype)


@register("sum.dim_IntList")
def sum_dim(x: torch.Tensor, dim: Sequence[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = _sum_dtype(x, dtype)
    if x.is_complex() or out_dtype.is_complex:
        return aten_fallback("sum.dim_IntList")(x, dim, keepdim, dtype=dtype)
    return _run(x, dim, keepdim, SUM, out_dtype, rc.acc_code(out_dtype))


@register("mean")
def mean(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return mean_dim(x, None, False, dtype=dtype)


@register("mean.dim")
def mean_dim(x: torch.Tensor, dim: Sequence[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = dtype or x.dtype
    if not out_dtype.is_floating_point:
        return aten_fallback("mean.dim")(x, dim, keepdim, dtype=dtype)
    return _run(x, dim, keepdim, SUM, out_dtype, rc.acc_code(out_dtype), post=P_SCALE)


@register("prod")
def prod(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = _sum_dtype(x, dtype)
    return _run(x, None, False, PROD, out_dtype, rc.acc_code(out_dtype))


@register("prod.dim_int")
def prod_dim(x: torch.Tensor, dim: int, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = _sum_dtype(x, dtype)
    return _run(x, dim, keepdim, PROD, out_dtype, rc.acc_code(out_dtype))


# -- max / min ----------------------------------------------------------------------------
def _extreme(x: torch.Tensor, dims: Any, keepdim: bool, is_max: bool, name: str) -> torch.Tensor:
    if x.is_complex():
        return aten_fallback(name)(x, dims, keepdim) if name in ("amax", "amin") else aten_fallback(name)(x)
    if x.numel() == 0:
        _check_nonempty(x, rc.norm_dims(dims, x.dim()), name)
    op = MAX if is_max else MIN
    return _run(x, dims, keepdim, op, x.dtype, rc.acc_code(x.dtype))


@register("amax")
def amax(x: torch.Tensor, dim: Sequence[int] = (), keepdim: bool = False) -> torch.Tensor:
    return _extreme(x, dim, keepdim, True, "amax")


@register("amin")
def amin(x: torch.Tensor, dim: Sequence[int] = (), keepdim: bool = False) -> torch.Tensor:
    return _extreme(x, dim, keepdim, False, "amin")


@register("max")
def max_(x: torch.Tensor) -> torch.Tensor:
    return _extreme(x, None, False, True, "max")


@register("min")
def min_(x: torch.Tensor) -> torch.Tensor:
    return _extreme(x, None, False, False, "min")


def _dim_extreme(x: torch.Tensor, dim: int, keepdim: bool, is_max: bool, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_complex():
        return aten_fallback(name)(x, dim, keepdim)
    _check_nonempty(x, rc.norm_dims(dim, x.dim()), name)
    return _arg_reduce(x, dim, keepdim, is_max)


@register("max.dim")
def max_dim(x: torch.Tensor, dim: int, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _dim_extreme(x, dim, keepdim, True, "max.dim")


@register("min.dim")
def min_dim(x: torch.Tensor, dim: int, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _dim_extreme(x, dim, keepdim, False, "min.dim")


def _argext(x: torch.Tensor, dim: int | None, keepdim: bool, is_max: bool, name: str) -> torch.Tensor:
    if x.is_complex():
        return aten_fallback(name)(x, dim, keepdim)
    if x.dtype == torch.bool:
        raise RuntimeError(f"{name}(): does not support bool input")
    _check_nonempty(x, [] if dim is None else rc.norm_dims(dim, x.dim()), name)
    return _arg_reduce(x, dim, keepdim, is_max)[1]


@register("argmax")
def argmax(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    return _argext(x, dim, keepdim, True, "argmax")


@register("argmin")
def argmin(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    return _argext(x, dim, keepdim, False, "argmin")


# -- all / any --------------------------------------------------------------------------
def _truth(x: torch.Tensor, dim: Any, keepdim: bool, op: int) -> torch.Tensor:
    out_dtype = torch.uint8 if x.dtype == torch.uint8 else torch.bool  # as aten
    if isinstance(dim, (list, tuple)) and not dim:  # all / any over no dim: each element's truth
        return (x != 0).to(out_dtype)
    return _run(x, dim, keepdim, op, out_dtype, rc.ACC_F32)


@register("all")
def all_(x: torch.Tensor) -> torch.Tensor:
    return _truth(x, None, False, ALL)


@register("all.dim", "all.dims")
def all_dim(x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return _truth(x, dim, keepdim, ALL)


@register("any")
def any_(x: torch.Tensor) -> torch.Tensor:
    return _truth(x, None, False, ANY)


@register("any.dim", "any.dims")
def any_dim(x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return _truth(x, dim, keepdim, ANY)


# -- var_mean ---------------------------------------------------------------------------
@register("var_mean.correction")
def var_mean(x: torch.Tensor, dim: Sequence[int] | None = None, *, correction: float | None = None,
             keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if not x.is_floating_point():
        return aten_fallback("var_mean.correction")(x, dim, correction=correction, keepdim=keepdim)
    acc = rc.acc_code(x.dtype)
    # one pass: shifted sums of d and d*d (d = x - first element), fp32 (fp64) accumulators
    c = 1.0 if correction is None else float(correction)
    return _run(x, dim, keepdim, VAR_MEAN, x.dtype, acc, correction=c, out2_dtype=x.dtype)


# -- linalg_vector_norm -----------------------------------------------------------------
@register("linalg_vector_norm")
def vector_norm(x: torch.Tensor, ord: float = 2, dim: Sequence[int] | None = None, keepdim: bool = False, *,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = dtype or x.dtype
    if not x.is_floating_point() or not out_dtype.is_floating_point or torch.promote_types(x.dtype, out_dtype) != out_dtype:
        # (a narrowing dtype: aten's error)
        return aten_fallback("linalg_vector_norm")(x, ord, dim, keepdim, dtype=dtype)
    src = x.to(out_dtype) if dtype is not None else x
    dims = rc.norm_dims(dim, x.dim())
    acc = rc.acc_code(out_dtype)
    ord = float(ord)
    if ord in (math.inf, -math.inf):
        _check_nonempty(x, dims, "linalg.vector_norm")
        return _run(src, dims, keepdim, ABS_MAX if ord > 0 else ABS_MIN, out_dtype, acc)
    if ord == 2:
        return _run(src, dims, keepdim, SQ_SUM, out_dtype, acc, post=P_SQRT)
    if ord == 1:
        return _run(src, dims, keepdim, ABS_SUM, out_dtype, acc)
    if ord == 0:
        return _run(src, dims, keepdim, NONZERO, out_dtype, acc)
    return _run(src, dims, keepdim, POW_SUM, out_dtype, acc, post=P_ROOT, p=ord)
