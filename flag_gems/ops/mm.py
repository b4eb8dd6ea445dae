"""GEMM family: mm, addmm, bmm, baddbmm, mv, addmv, outer, dot (and their out= forms).

One batched, tiled Triton kernel serves all of them: any row/column-major operand is read
through its strides (``F.linear``'s transposed weight included), so nothing is copied.
Tiles walk in grouped order (GROUP_M rows of tiles share B in L2).

The config space (tuned per device and key): tile sizes, num_warps, num_stages, GROUP_M,
and for decode-class shapes SPLIT_K. When M and N leave most SMs idle (decode: M = 1..64
against a 4096-wide weight), K is split across programs that write fp32 partials, and a
second small kernel sums them, scales, adds the bias and casts. The tuner times a split
config as that pair (LibTuner's ``config_launcher``). On Hopper and newer, prefill-sized
TMA configs load A and B through Triton's host-side tensor descriptors instead
(``_mm_tma_kernel``: one batch, A contiguous along K, B along K or N, 16-byte aligned),
with a tile per program or persistent (a program per SM walks the tiles); a call such a
config cannot describe runs the same tile through the pointer kernel.
Configs that cannot fit the device's shared memory or would spill their accumulator are
pruned before benchmarking.

Key strategy: ``[m_class(M), log(M), align32(N), align32(K), log(batch), layout(A),
layout(B)]`` plus dtypes. ``m_class`` is "decode" for M <= 256 and "prefill" above, and
``layout`` is "unit" or "strided" (the operand's K stride); both are strings, so the
nearest-key fallback under ``FLAGGEMS_AUTOTUNE=never`` never hands a decode config to a
prefill shape or a config tuned for one layout to another (strings must match exactly;
numbers are compared in log2 distance). ``log(M)`` buckets decode sizes 1, 2, 4, ... 256
and prefill 512 ... 16384 apart.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, NamedTuple

import torch
import triton
import triton.language as tl

from flag_gems.ops.binary import MUL
from flag_gems.registry import as_from_outside, aten_fallback, register, switched_on
from flag_gems.utils import cdiv, next_power_of_2
from tuner import launch as launching
from tuner import libtuner, settings
from tuner.launch import direct_cache, launch, launcher

log = logging.getLogger(__name__)

DECODE_MAX_M = 256
_FALLBACK_SMEM = 227 * 1024  # Hopper's opt-in per-block maximum


def m_class(m: int) -> str:
    return "decode" if int(m) <= DECODE_MAX_M else "prefill"


def layout(stride: int | str) -> str:
    """Key strategy for an operand's K stride: "unit" (contiguous along K) or "strided".
    A string, so the nearest-key fallback never crosses layouts (numbers are compared in
    log2 distance; strings must match). Idempotent, so a stored key maps back to a call."""
    if isinstance(stride, str):
        return stride
    return "unit" if stride == 1 else "strided"


TILE_PER_PROGRAM, PERSISTENT = 1, 2  # the values of a TMA config's "TMA"


def _cfg(bm, bn, bk, warps, stages, group=8, split=1, tma=0):
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "SPLIT_K": split}
    if tma:  # launched as _mm_tma_kernel (see _launch)
        kw["TMA"] = tma
    return triton.Config(kw, num_warps=warps, num_stages=stages)


# decode / skinny M: narrow N tiles so a 4096-wide weight still fills every SM, and split-K
# (fp32 partials, summed by a second kernel) when even those leave SMs idle
_DECODE_TILES = [
    (16, 32, 256, 4, 4), (16, 64, 64, 4, 4), (16, 64, 128, 4, 4), (16, 64, 256, 4, 3), (16, 128, 128, 4, 4),
    (32, 32, 256, 4, 4), (32, 64, 128, 4, 4), (64, 64, 128, 4, 4), (64, 128, 64, 4, 4),
]
# prefill: wgmma-sized tiles, 3-4 stages; the likeliest winners also in wider L2 groups
_PREFILL = [
    _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 4), _cfg(128, 128, 64, 4, 4), _cfg(128, 256, 64, 8, 3),
    _cfg(128, 256, 64, 8, 4), _cfg(256, 128, 64, 8, 3), _cfg(64, 256, 64, 4, 4), _cfg(128, 64, 64, 4, 4),
    _cfg(128, 256, 64, 8, 3, group=16), _cfg(128, 128, 64, 8, 4, group=16), _cfg(128, 256, 64, 8, 3, group=4),
]
# Hopper's tensor-memory accelerator: operand tiles loaded through TMA descriptors, a tile
# per program or persistent (one program per SM walks the tiles; the next tile's loads
# overlap this one's epilogue)
# (64 x 64: for M = 65 ... 256 only, where 128 x 128 tiles leave most SMs idle)
_TMA = [_cfg(*t, tma=TILE_PER_PROGRAM) for t in [
    (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (64, 256, 64, 4, 4), (128, 64, 64, 4, 4),
    (128, 128, 128, 8, 3), (64, 64, 128, 4, 4)]] + [_cfg(*t, tma=PERSISTENT) for t in [
    (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 128, 8, 3)]]
MM_CONFIGS = [_cfg(*t, group=1, split=s) for t in _DECODE_TILES for s in (1, 2, 4, 8)] + _PREFILL + _TMA
MAX_ACC_REGS = 128  # fp32 accumulator registers per thread; above this the tile spills


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    if not torch.cuda.is_available() or settings.get().interpret:
        return 8
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _smem_bytes(device_index: int) -> int:
    """Shared memory one block may opt into on this device (the interpreter: Hopper's)."""
    if not torch.cuda.is_available() or settings.get().interpret:
        return _FALLBACK_SMEM
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or _FALLBACK_SMEM)


@functools.lru_cache(maxsize=None)
def _has_tma(device_index: int) -> bool:
    """Whether TMA configs can run here: Hopper or newer with Triton's host-side tensor
    descriptors (the interpreter emulates them)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    if settings.get().interpret:
        return True
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device_index)[0] >= 9


def _tma_operands(a: dict) -> bool:
    """Whether a call's operands can be TMA descriptors: one batch, A contiguous along K,
    B along K or N, base addresses and row strides 16-byte aligned (else a TMA config
    runs its tile through the pointer kernel)."""
    if a["BATCH"] != 1 or a["s_ak"] != 1 or not (a["s_bk"] == 1 or a["s_bn"] == 1):
        return False
    elt = a["A"].element_size()
    b_row = a["s_bn"] if a["s_bk"] == 1 else a["s_bk"]
    return all(x > 0 and x * elt % 16 == 0 for x in (a["s_am"], b_row)) and \
        a["A"].data_ptr() % 16 == 0 and a["B"].data_ptr() % 16 == 0


def _fits(c: dict, elt: int, smem: int) -> bool:
    """The tile's pipelined operands fit shared memory and its accumulator registers."""
    bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
    if c["num_stages"] * (bm * bk + bk * bn) * elt > smem:
        return False
    return bm * bn // (32 * c["num_warps"]) <= MAX_ACC_REGS


def prune_mm_configs(configs: list[dict], named: dict) -> list[dict]:
    """Drop tiles far larger than the problem, tiles that cannot fit (shared memory,
    registers), and splits of K that are too short or would oversubscribe the GPU."""
    m, n, k, batch = named["M"], named["N"], named["K"], named["BATCH"]
    a = named["A"]
    smem = _smem_bytes(a.device.index or 0) if a.device.type == "cuda" else _FALLBACK_SMEM
    sms = _sm_count(a.device.index or 0) if a.device.type == "cuda" else 8
    tma_ok = _has_tma(a.device.index or 0) and _tma_operands(named)
    kept = []
    for c in configs:
        bm, bn, bk, split = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], c["SPLIT_K"]
        if bm > max(16, next_power_of_2(m)) or bn > max(32, next_power_of_2(n)) or bk > max(32, next_power_of_2(k)):
            continue
        if m > DECODE_MAX_M and c["GROUP_M"] == 1:  # decode tiles: too narrow for prefill
            continue
        if m <= 64 and c["GROUP_M"] > 1:  # wgmma-sized tiles from the M bucket 128 up
            continue
        if not _fits(c, a.element_size(), smem):
            continue
        if c.get("TMA") and (not tma_ok or m > DECODE_MAX_M and bm * bn <= 64 * 64):
            continue
        if split > 1:  # decode-class only (the key's m_class): partials cost M x N x split
            tiles = cdiv(m, bm) * cdiv(n, bn) * batch
            if m > DECODE_MAX_M or k < 2 * bk * split or tiles * split > 8 * sms:
                continue
        kept.append(c)
    return kept


@triton.jit
def _grouped_tile(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The (row, column) of output tile number ``tile`` in grouped order: GROUP_M rows of
    tiles walk the columns together, so they share B's tiles in L2."""
    grid_m = tl.cdiv(M, BLOCK_M)
    width = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (tile // width) * GROUP_M
    group_size = min(grid_m - first_m, GROUP_M)
    return first_m + (tile % width) % group_size, (tile % width) // group_size


@libtuner(
    configs=MM_CONFIGS,
    key=["M", "M", "N", "K", "BATCH", "s_ak", "s_bk"],
    strategy=[m_class, "log", "align32", "align32", "log", layout, layout],
    default=_cfg(64, 128, 64, 4, 4),
    prune_configs_by=prune_mm_configs,
    config_launcher=lambda fn, grid, args, kwargs, cfg, warmup=False: _launch(fn, grid, args, kwargs, cfg, warmup),  # below
)
@triton.jit
def _mm_kernel(
    A, B, C, Bias, WS, M, N, K, BATCH,
    s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_bias_b, s_bias_m, s_bias_n,
    alpha, beta,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    # unit strides as constexprs: the compiler then knows which way each operand is
    # contiguous and vectorizes its loads (row-major A, and B either way: F.linear's
    # weight is read transposed, contiguous along K)
    A_K1: tl.constexpr, B_K1: tl.constexpr, B_N1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows/cols read row/col 0 instead of masking: loads stay unmasked in M/N.
    ram = tl.where(rm < M, rm, 0).to(tl.int64)
    rbn = tl.where(rn < N, rn, 0).to(tl.int64)
    k_chunk = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_chunk
    k_hi = min(k_lo + k_chunk, K)
    rk = k_lo + tl.arange(0, BLOCK_K)
    if A_K1:
        a_ptrs = A + batch * s_ab + ram[:, None] * s_am + rk[None, :]
    else:
        a_ptrs = A + batch * s_ab + ram[:, None] * s_am + rk[None, :].to(tl.int64) * s_ak
    if B_K1:
        b_ptrs = B + batch * s_bb + rk[:, None] + rbn[None, :] * s_bn
    elif B_N1:
        b_ptrs = B + batch * s_bb + rk[:, None].to(tl.int64) * s_bk + rbn[None, :]
    else:
        b_ptrs = B + batch * s_bb + rk[:, None].to(tl.int64) * s_bk + rbn[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:  # unmasked loads pipeline best
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_mask = (k + tl.arange(0, BLOCK_K)) < k_hi
            a = tl.load(a_ptrs, mask=k_mask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
        if UPCAST:  # the Triton interpreter's bf16 dot is wrong; compiled code never takes this
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * (1 if A_K1 else s_ak)
        b_ptrs += BLOCK_K * (1 if B_K1 else s_bk)

    mask = (rm < M)[:, None] & (rn < N)[None, :]
    # int64 offsets: a prefill's logits (16k x 152k) pass 2**31 elements
    cm = rm[:, None].to(tl.int64)
    cn = rn[None, :].to(tl.int64)
    if SPLIT_K > 1:  # fp32 partials: WS is [BATCH, SPLIT_K, M, N], summed by _splitk_reduce_kernel
        tl.store(WS + (batch * SPLIT_K + pid_k) * M * N + cm * N + cn, acc, mask=mask)
    else:
        acc = acc * alpha
        if HAS_BIAS:
            bias = tl.load(Bias + batch * s_bias_b + cm * s_bias_m + cn * s_bias_n, mask=mask, other=0.0)
            acc += bias.to(tl.float32) * beta
        tl.store(C + batch * s_cb + cm * s_cm + cn * s_cn, acc.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _splitk_reduce_kernel(
    WS, C, Bias, M, N, s_cb, s_cm, s_cn, s_bias_b, s_bias_m, s_bias_n, alpha, beta,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    rm = offs // N
    rn = offs % N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(WS + (batch * SPLIT_K + s) * M * N + offs, mask=mask, other=0.0)
    acc = acc * alpha
    if HAS_BIAS:
        acc += tl.load(Bias + batch * s_bias_b + rm * s_bias_m + rn * s_bias_n, mask=mask, other=0.0).to(tl.float32) * beta
    tl.store(C + batch * s_cb + rm * s_cm + rn * s_cn, acc.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _mm_tma_kernel(
    A_desc, B_desc, C, Bias, M, N, K, s_cm, s_cn, s_bias_m, s_bias_n, alpha, beta,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, B_K1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    """_mm_kernel's tile loop with A and B read through TMA descriptors (one batch): the
    hardware copies each tile to shared memory and pads past the edges with zeros, so the
    loop has no masks or pointer arithmetic. B_K1: B's descriptor is over (N, K) (F.linear's
    weight), else over (K, N). Each program takes every num_programs-th tile: one when the
    grid covers the tiles, several when it is persistent (a program per SM), where FLATTEN
    lets the pipeliner run the next tile's loads under this tile's epilogue."""
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=FLATTEN):
        pid_m, pid_n = _grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = A_desc.load([off_m, k])
            b = B_desc.load([off_n, k]).T if B_K1 else B_desc.load([k, off_n])
            if UPCAST:  # the Triton interpreter's bf16 dot is wrong; compiled code never takes this
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        cm = (off_m + tl.arange(0, BLOCK_M))[:, None].to(tl.int64)
        cn = (off_n + tl.arange(0, BLOCK_N))[None, :].to(tl.int64)
        mask = (cm < M) & (cn < N)
        acc = acc * alpha
        if HAS_BIAS:
            acc += tl.load(Bias + cm * s_bias_m + cn * s_bias_n, mask=mask, other=0.0).to(tl.float32) * beta
        tl.store(C + cm * s_cm + cn * s_cn, acc.to(C.dtype.element_ty), mask=mask)


def _tma_call(a: dict, cfg: dict) -> tuple[tuple, tuple, dict]:
    """(grid, args, kwargs) of a TMA config's launch of _mm_tma_kernel: descriptors of
    this config's tile shapes over A (M, K) and over B as (N, K) or (K, N)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    m, n, k = a["M"], a["N"], a["K"]
    a_desc = TensorDescriptor(a["A"], [m, k], [a["s_am"], 1], [bm, bk])
    b_k1 = a["s_bk"] == 1
    if b_k1:
        b_desc = TensorDescriptor(a["B"], [n, k], [a["s_bn"], 1], [bn, bk])
    else:
        b_desc = TensorDescriptor(a["B"], [k, n], [a["s_bk"], 1], [bk, bn])
    tiles = cdiv(m, bm) * cdiv(n, bn)
    persistent = cfg["TMA"] == PERSISTENT
    grid = (min(tiles, _sm_count(a["A"].device.index or 0)) if persistent else tiles,)
    opts = {key: v for key, v in cfg.items() if key not in ("TMA", "SPLIT_K")}
    args = (a_desc, b_desc, a["C"], a["Bias"], m, n, k, a["s_cm"], a["s_cn"], a["s_bias_m"], a["s_bias_n"], a["alpha"], a["beta"])
    flags = {"HAS_BIAS": a["HAS_BIAS"], "PRECISION": a["PRECISION"], "UPCAST": a["UPCAST"], "B_K1": b_k1, "FLATTEN": persistent}
    return grid, args, {**flags, **opts}


def _launch_tma(a: dict, cfg: dict, warmup: bool) -> None:
    """A TMA config: its descriptors, then _mm_tma_kernel."""
    grid, args, kwargs = _tma_call(a, cfg)
    if warmup:
        _mm_tma_kernel.warmup(*args, grid=grid, **kwargs)
    else:
        launch(_mm_tma_kernel, grid, *args, **kwargs)


_WS, _K = 4, 7  # the positions of _mm_kernel's WS and K arguments (gemm passes both positionally)


def _launch(fn, grid, args: tuple, kwargs: dict, cfg: dict, warmup: bool = False) -> None:
    """Launch (or, with ``warmup``, only compile) a resolved config: one kernel; with TMA
    the descriptor kernel (where the operands allow TMA, else the same tile through the
    pointer kernel); or with SPLIT_K > 1 the fp32 partials into a fresh workspace (every
    element is written, so it needs no zeroing) and their sum, with the epilogue, into the
    output. LibTuner times the same pair, so a split wins only by what the whole call costs."""
    named, cfg = _route(args, kwargs, cfg)
    if named is not None:
        _launch_tma(named, cfg, warmup)
        return
    split, main_kw = cfg["SPLIT_K"], _main_kwargs(args, kwargs, cfg)
    if split == 1 or warmup:  # warming a split compiles its partials kernel
        if warmup:
            if split > 1:  # a stand-in workspace: a launch specializes on its dtype and alignment only
                args = (*args[:_WS], torch.empty(1, device=args[0].device, dtype=torch.float32), *args[_WS + 1:])
            fn.warmup(*args, grid=grid, **main_kw)
        else:
            launch(fn, grid, *args, **main_kw)
        return
    ws = torch.empty(size=_ws_shape(args, split), device=args[0].device, dtype=torch.float32)
    launch(fn, grid, *args[:_WS], ws, *args[_WS + 1:], **main_kw)
    rgrid, rargs, rkwargs = _reduce_call(args, kwargs, ws, split)
    launch(_splitk_reduce_kernel, rgrid, *rargs, **rkwargs)


def _route(args: tuple, kwargs: dict, cfg: dict) -> tuple[dict | None, dict]:
    """Which kernel runs a resolved config: (the operands by name, cfg) for the TMA
    kernel, or (None, the config for the pointer kernel): a TMA config whose operands
    cannot be described runs its tile through the pointer kernel."""
    if not cfg.get("TMA"):
        return None, cfg
    named = dict(zip(_ARG_NAMES, args)) | kwargs
    if _tma_operands(named):
        return named, cfg
    return None, {key: v for key, v in cfg.items() if key != "TMA"}


def _main_kwargs(args: tuple, kwargs: dict, cfg: dict) -> dict:
    """_mm_kernel's keyword arguments for a pointer config (unmasked K loads where K
    divides evenly: decided here, not by a heuristics layer per call)."""
    return {**kwargs, **cfg, "EVEN_K": args[_K] % (cfg["BLOCK_K"] * cfg["SPLIT_K"]) == 0}


def _ws_shape(args: tuple, split: int) -> tuple[int, int, int, int]:
    """The split-K workspace of a call: [BATCH, SPLIT_K, M, N] fp32 partials."""
    return args[_BATCH], split, args[_M], args[_N]


def _reduce_call(args: tuple, kwargs: dict, ws: torch.Tensor, split: int) -> tuple[tuple, tuple, dict]:
    """(grid, args, kwargs) of the split-K sum of ``_mm_kernel(*args, **kwargs)``'s partials."""
    a = dict(zip(_ARG_NAMES, args)) | kwargs
    m, n = a["M"], a["N"]
    block = 1024
    rargs = (ws, a["C"], a["Bias"], m, n, a["s_cb"], a["s_cm"], a["s_cn"], a["s_bias_b"], a["s_bias_m"], a["s_bias_n"], a["alpha"], a["beta"])
    return (cdiv(m * n, block), a["BATCH"]), rargs, {"HAS_BIAS": a["HAS_BIAS"], "SPLIT_K": split, "BLOCK": block}


_ARG_NAMES = _mm_kernel.arg_names
_M, _N, _BATCH = 5, 6, 8
assert [_ARG_NAMES[i] for i in (_WS, _M, _N, _K, _BATCH)] == ["WS", "M", "N", "K", "BATCH"]


# -- direct launches ---------------------------------------------------------------------
# A call whose operands match an earlier call's shapes, strides, dtypes, scalars and flags
# (and are all 16-byte aligned) launches that call's kept kernels directly: the plan key
# below fixes every input of the tuner's key and of the launcher's, so neither could
# decide differently. A TMA config's call makes its descriptors anew (same shapes,
# strides and tiles; this call's A and B).
_DIRECT: dict = direct_cache()


class _GemmDirect(NamedTuple):
    launch: Callable[..., None]  # (a, b, out, bias or None, stream): the call's kept kernels
    kernels: tuple  # the jit functions it launches (tuner.launch.observer reports them)
    bound: Any  # tuner.launch.Bound of the first: the device they were compiled for


def _plan_key(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None, strides: tuple, alpha: float, beta: float) -> tuple:
    """``strides``: (a's, b's, out's, bias's or None), as the call has them."""
    sa, sb, so, sbias = strides
    key = (a.dtype, a.shape, sa, b.dtype, b.shape, sb, out.dtype, out.shape, so, alpha, beta, _precision(a.dtype))
    return key if bias is None else (*key, bias.dtype, sbias)


def _direct_plan(args: tuple, kwargs: dict) -> _GemmDirect | None:
    """The direct launch of the call just made with ``args``/``kwargs`` (its config is
    resolved, its kernels kept), or None. It replays what ``_launch`` decides."""
    cfg = _mm_kernel.cache.get(_mm_kernel.key_of(args, kwargs))
    if cfg is None:
        return None
    named, cfg = _route(args, kwargs, cfg)
    found = _direct_tma(named, cfg) if named is not None else _direct_pointer(args, kwargs, cfg)
    return None if found is None else _GemmDirect(*found)


def _direct_pointer(args: tuple, kwargs: dict, cfg: dict) -> tuple[Callable[..., None], tuple, Any] | None:
    split, main_kw = cfg["SPLIT_K"], _main_kwargs(args, kwargs, cfg)
    # a stand-in workspace: a launch is keyed on its dtype and alignment only
    ws = args[_WS] if split == 1 else torch.empty(1, device=args[0].device, dtype=torch.float32)
    bound = launcher(_mm_kernel.fn).kept((*args[:_WS], ws, *args[_WS + 1:]), main_kw)
    if bound is None:
        return None
    main = bound.runner((cdiv(args[_M], cfg["BLOCK_M"]) * cdiv(args[_N], cfg["BLOCK_N"]), split, args[_BATCH]))
    rest = (*args[_WS + 1:], *bound.kept.tail)
    if split == 1:
        def plain(a, b, out, bias, stream):
            main(a, b, out, bias, None, *rest, stream=stream)

        return plain, (_mm_kernel.fn,), bound
    rgrid, rargs, rkwargs = _reduce_call(args, kwargs, ws, split)
    rbound = launcher(_splitk_reduce_kernel).kept(rargs, rkwargs)
    if rbound is None:
        return None
    reduce, reduce_rest, ws_shape = rbound.runner((*rgrid, 1)), (*rargs[3:], *rbound.kept.tail), _ws_shape(args, split)

    def split_k(a, b, out, bias, stream):
        ws = torch.empty(size=ws_shape, device=a.device, dtype=torch.float32)
        main(a, b, out, bias, ws, *rest, stream=stream)
        reduce(ws, out, bias, *reduce_rest, stream=stream)

    return split_k, (_mm_kernel.fn, _splitk_reduce_kernel), bound


def _direct_tma(named: dict, cfg: dict) -> tuple[Callable[..., None], tuple, Any] | None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    grid, targs, tkwargs = _tma_call(named, cfg)
    bound = launcher(_mm_tma_kernel).kept(targs, tkwargs)
    if bound is None:
        return None
    run = bound.runner((*grid, 1, 1)[:3])
    a_desc, b_desc = targs[:2]  # each call describes its own A and B alike
    a_spec, b_spec = (a_desc.shape, a_desc.strides, a_desc.block_shape), (b_desc.shape, b_desc.strides, b_desc.block_shape)
    rest = (*targs[4:], *bound.kept.tail)

    def tma(a, b, out, bias, stream):
        run(TensorDescriptor(a, *a_spec), TensorDescriptor(b, *b_spec), out, bias, *rest, stream=stream)

    return tma, (_mm_tma_kernel,), bound


def _launch_direct(plan: _GemmDirect, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None) -> bool:
    run, kernels, bound = plan
    stream = bound.stream()
    if stream is None:
        return False
    run(a, b, out, bias, stream)
    if launching.observer is not None:
        for fn in kernels:
            launching.observer(fn)
    return True


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _as3d(stride: tuple[int, ...]) -> tuple[int, int, int]:
    """(batch, row, column) strides of a 2-D (batch stride 0) or 3-D operand."""
    return (0, *stride) if len(stride) == 2 else stride


GEMM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _on_kernel(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernel serves a call: every operand (and out=, and a bias) of one fp16,
    bf16 or fp32 dtype. Anything else (float64, integers, mixed dtypes) runs on aten,
    which computes it, or raises torch's own error, exactly as torch would."""
    dtype = tensors[0].dtype
    return dtype in GEMM_DTYPES and all(t is None or t.dtype == dtype for t in tensors)


def _on_aten(name: str, out: torch.Tensor | None, *args: object, **kwargs: object) -> torch.Tensor:
    if out is None:
        return aten_fallback(name)(*args, **kwargs)
    return aten_fallback(f"{name}.out")(*args, **kwargs, out=out)


def _check(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")


def gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """out = alpha * (a @ b) + beta * bias, for 2-D (mm) or 3-D (bmm) operands.

    ``bias`` must already be broadcast (expanded) to ``out``'s shape; strides may be 0.
    """
    batch = a.shape[0] if a.dim() == 3 else 1
    m, k = a.shape[-2], a.shape[-1]
    n = b.shape[-1]
    if out.numel() == 0:
        return out
    if k == 0:
        # an empty sum: alpha * 0 + beta * bias
        return out.copy_(bias * beta if bias is not None else torch.zeros_like(out))
    if k == 1 and bias is None and alpha == 1.0:
        # an outer product (HF's rotary angles: inv_freq x positions): one broadcast multiply,
        # keyed by its size, instead of a GEMM key per sequence length with nothing to tune
        return MUL(a, b, out=out)
    strides = (a.stride(), b.stride(), out.stride(), None if bias is None else bias.stride())
    s_ab, s_am, s_ak = _as3d(strides[0])
    s_bb, s_bk, s_bn = _as3d(strides[1])
    s_cb, s_cm, s_cn = _as3d(strides[2])
    has_bias = bias is not None
    s_bias = _as3d(strides[3]) if has_bias else (0, 0, 0)
    plan_key = None
    if not (a.data_ptr() | b.data_ptr() | out.data_ptr() | (bias.data_ptr() if has_bias else 0)) & 15:
        plan_key = _plan_key(a, b, out, bias, strides, alpha, beta)
        plan = _DIRECT.get(plan_key)
        if plan is not None and _launch_direct(plan, a, b, out, bias):
            return out
    upcast = settings.get().interpret and a.dtype == torch.bfloat16
    # Bias and WS (the split-K workspace, which _launch allocates for a split config) are
    # None until then: constexprs to Triton, no pointers for its launcher to check
    args = (a, b, out, bias, None, m, n, k, batch, s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, *s_bias, alpha, beta)
    kwargs = {"HAS_BIAS": has_bias, "PRECISION": _precision(a.dtype), "UPCAST": upcast, "A_K1": s_ak == 1, "B_K1": s_bk == 1, "B_N1": s_bn == 1}
    _mm_kernel[lambda META: (cdiv(m, META["BLOCK_M"]) * cdiv(n, META["BLOCK_N"]), META["SPLIT_K"], batch)](*args, **kwargs)
    if plan_key is not None and plan_key not in _DIRECT:
        if len(_DIRECT) >= 4096:  # many prefill lengths: start over
            _DIRECT.clear()
        _DIRECT[plan_key] = _direct_plan(args, kwargs)
    return out


def _out_like(a: torch.Tensor, shape: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty(size=shape, device=a.device, dtype=a.dtype)
    if tuple(out.shape) != tuple(shape):
        out.resize_(shape)
    return out


# -- aten-facing ----------------------------------------------------------------------
# mm's repeats (every projection of every step): (each operand's dtype, shape and strides,
# the precision) -> (the output's shape, the direct plan gemm() filed for that call). The
# key fixes the new output's shape and strides, so gemm's own key would be the same.
_MM_PLANS: dict = direct_cache()


@register("mm", "mm.out")
def mm(self: torch.Tensor, mat2: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    if out is None:
        key = (self.dtype, self.shape, self.stride(), mat2.dtype, mat2.shape, mat2.stride(), self.dtype is torch.float32 and _precision(self.dtype))
        hit = _MM_PLANS.get(key)
        if hit is not None:
            res = _relaunch_plan(hit, self, mat2, None)
            if res is not None:
                return res
    if not _on_kernel(self, mat2, out):
        return _on_aten("mm", out, self, mat2)
    _check(self, mat2, "mm")
    res = _out_like(self, (self.shape[0], mat2.shape[1]), out)
    gemm(self, mat2, res)
    if out is None and res.numel():
        _file_plan(_MM_PLANS, key, self, mat2, res, None)
    return res


def _relaunch_plan(hit: tuple, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """A plan ``_file_plan`` filed (the output's shape, gemm()'s direct plan) launched on
    these operands into a new output; None where it cannot (a misaligned operand, another
    device)."""
    res = torch.empty(size=hit[0], device=a.device, dtype=a.dtype)
    if (a.data_ptr() | b.data_ptr() | res.data_ptr() | (0 if bias is None else bias.data_ptr())) & 15:
        return None
    return res if _launch_direct(hit[1], a, b, res, bias) else None


def _file_plan(plans: dict, key: tuple, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None,
               shape: torch.Size | None = None) -> None:
    """File in ``plans`` under the caller's ``key`` (``shape``: the output's as the caller
    allocates it, default ``out``'s) the direct plan gemm() filed for ``gemm(a, b, out,
    bias)``; nothing where it filed none."""
    if (a.data_ptr() | b.data_ptr() | out.data_ptr() | (0 if bias is None else bias.data_ptr())) & 15 or key in plans:
        return
    strides = (a.stride(), b.stride(), out.stride(), None if bias is None else bias.stride())
    plan = _DIRECT.get(_plan_key(a, b, out, bias, strides, 1.0, 1.0))
    if plan is not None:
        if len(plans) >= 4096:
            plans.clear()
        plans[key] = (out.shape if shape is None else shape, plan)


# F.linear's repeats: (input's, weight's and bias's dtype, shape and strides, the precision)
# -> (the output's shape, the direct plan gemm() filed for the call on input's rows)
_LINEAR_PLANS: dict = direct_cache()


@register("linear", autograd=True)
def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` without a graph to record: the GEMM of input's rows by the weight read
    transposed in place, where aten's composite dispatches linear, matmul, a view and mm
    (and a reshape back, for a 3-D input) to reach it. With a graph to record, or an input
    the kernel does not serve, aten's composite (whose mm and addmm are flag_gems')."""
    if _MM_ON() and not (torch.is_grad_enabled() and (
            input.requires_grad or weight.requires_grad or bias is not None and bias.requires_grad)):
        key = (input.dtype, input.shape, input.stride(), weight.dtype, weight.shape, weight.stride(),
               None if bias is None else (bias.dtype, bias.shape, bias.stride()), input.dtype is torch.float32 and _precision(input.dtype))
        hit = _LINEAR_PLANS.get(key)
        if hit is not None:
            res = _relaunch_plan(hit, input, weight, bias)
            if res is not None:
                return res
        res = _linear(input, weight, bias, key)
        if res is not None:
            return res
    return as_from_outside(_LINEAR, input, weight, bias)


def _linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, key: tuple) -> torch.Tensor | None:
    """The GEMM on a (rows, K) view of ``input``, its plan filed under ``key``; None where
    aten's composite must run (dtypes, ranks, shapes it checks, an input with no such view)."""
    if not _on_kernel(input, weight, bias) or input.dim() < 2 or weight.dim() != 2 or (bias is not None and bias.dim() > 1):
        return None
    k, n = input.shape[-1], weight.shape[0]
    if weight.shape[1] != k or (bias is not None and bias.numel() not in (1, n)):
        return None
    try:
        a = input.view(-1, k)  # the same memory: a repeat passes input itself
    except RuntimeError:
        return None
    res = torch.empty(size=(*input.shape[:-1], n), device=input.device, dtype=input.dtype)
    out, wt = res.view(-1, n), weight.t()
    full = None if bias is None else bias.expand(out.shape)
    gemm(a, wt, out, full)
    if res.numel():
        _file_plan(_LINEAR_PLANS, key, a, wt, out, full, res.shape)
    return res


_LINEAR = aten_fallback("linear")
_MM_ON = switched_on("mm")  # unused=["mm"]: linear on aten's composite too


@register("addmm", "addmm.out")
def addmm(self: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *, beta: float = 1, alpha: float = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    if not _on_kernel(mat1, mat2, self, out):
        return _on_aten("addmm", out, self, mat1, mat2, beta=beta, alpha=alpha)
    _check(mat1, mat2, "addmm")
    shape = (mat1.shape[0], mat2.shape[1])
    res = _out_like(mat1, shape, out)
    bias = self.expand(shape) if beta != 0 else None
    return gemm(mat1, mat2, res, bias, float(alpha), float(beta))


@register("bmm", "bmm.out")
def bmm(self: torch.Tensor, mat2: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    if not _on_kernel(self, mat2, out):
        return _on_aten("bmm", out, self, mat2)
    _check(self, mat2, "bmm")
    if self.shape[0] != mat2.shape[0]:
        raise RuntimeError(f"bmm: batch sizes differ: {self.shape[0]} vs {mat2.shape[0]}")
    res = _out_like(self, (self.shape[0], self.shape[1], mat2.shape[2]), out)
    return gemm(self, mat2, res)


@register("baddbmm", "baddbmm.out")
def baddbmm(self: torch.Tensor, batch1: torch.Tensor, batch2: torch.Tensor, *, beta: float = 1, alpha: float = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    if not _on_kernel(batch1, batch2, self, out):
        return _on_aten("baddbmm", out, self, batch1, batch2, beta=beta, alpha=alpha)
    _check(batch1, batch2, "baddbmm")
    shape = (batch1.shape[0], batch1.shape[1], batch2.shape[2])
    res = _out_like(batch1, shape, out)
    bias = self.expand(shape) if beta != 0 else None
    return gemm(batch1, batch2, res, bias, float(alpha), float(beta))


@register("mv", "mv.out")
def mv(self: torch.Tensor, vec: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    if not _on_kernel(self, vec, out):
        return _on_aten("mv", out, self, vec)
    _check(self, vec.unsqueeze(1), "mv")
    res = _out_like(self, (self.shape[0],), out)
    gemm(self, vec.unsqueeze(1), res.unsqueeze(1))
    return res


@register("addmv", "addmv.out")
def addmv(self: torch.Tensor, mat: torch.Tensor, vec: torch.Tensor, *, beta: float = 1, alpha: float = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    if not _on_kernel(mat, vec, self, out):
        return _on_aten("addmv", out, self, mat, vec, beta=beta, alpha=alpha)
    _check(mat, vec.unsqueeze(1), "addmv")
    res = _out_like(mat, (mat.shape[0],), out)
    bias = self.expand(mat.shape[0]).unsqueeze(1) if beta != 0 else None
    gemm(mat, vec.unsqueeze(1), res.unsqueeze(1), bias, float(alpha), float(beta))
    return res


@register("dot", "dot.out")
def dot(self: torch.Tensor, tensor: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    if self.dim() != 1 or tensor.dim() != 1 or self.numel() != tensor.numel():
        raise RuntimeError(f"dot: expected two 1-D tensors of equal size, got {tuple(self.shape)} and {tuple(tensor.shape)}")
    if not _on_kernel(self, tensor, out):
        return _on_aten("dot", out, self, tensor)
    _check(self.unsqueeze(0), tensor.unsqueeze(1), "dot")
    res = _out_like(self, (), out)
    gemm(self.unsqueeze(0), tensor.unsqueeze(1), res.view(1, 1))
    return res


class _Outer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        res = torch.empty(size=(a.shape[0], b.shape[0]), device=a.device, dtype=torch.promote_types(a.dtype, b.dtype))
        return gemm(a.unsqueeze(1).to(res.dtype), b.unsqueeze(0).to(res.dtype), res)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        return grad @ b.to(grad.dtype), grad.t() @ a.to(grad.dtype)


@register("outer", autograd=True)
def outer(self: torch.Tensor, vec2: torch.Tensor) -> torch.Tensor:
    if self.dim() != 1 or vec2.dim() != 1:
        raise RuntimeError("outer: expected 1-D tensors")
    if torch.promote_types(self.dtype, vec2.dtype) not in GEMM_DTYPES:
        return aten_fallback("outer")(self, vec2)
    return _Outer.apply(self, vec2)
