"""Rotary position embedding for q and k, neox (rotate-half) or GPT-J (interleaved).

Layout: ``q`` is ``[..., seq, heads, head_dim]`` (``[tokens, heads, head_dim]`` too),
``k`` the same with its own head count. The cos/sin cache is 2-D, ``[max_seq, R/2]``
(one value per rotated pair) or ``[max_seq, R]`` (the full-width cache HF builds:
``cat(f, f)`` for neox, ``repeat_interleave(f, 2)`` for interleaved). ``R`` (rotary_dim)
may be smaller than head_dim: the remaining dims pass through unchanged.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from flag_gems.ops._reduce_common import cached_launch
from flag_gems.utils import cdiv, next_power_of_2
from tuner import libtuner
from tuner.launch import direct_cache, int_spec, launch


def _prune_heads(configs: list[dict], named: dict) -> list[dict]:
    """Head blocks past the head count only waste lanes: keep those up to it."""
    cap = next_power_of_2(max(int(named["H"]), 1))
    return [c for c in configs if c["BLOCK_H"] <= cap]


# BLOCK_HALF / BLOCK_REST are the rotated and passed-through widths rounded up to powers
# of two (fully determined by the shape); BLOCK_H, the heads one program rotates, is tuned.
@libtuner(
    configs=[triton.Config({"BLOCK_H": h}, num_warps=w) for h, w in [(1, 1), (2, 2), (4, 4), (8, 4), (16, 4), (16, 8), (32, 8)]],
    key=["H", "HALF", "D"],
    strategy=["log", "log", "log"],
    default=triton.Config({"BLOCK_H": 4}, num_warps=4),
    prune_configs_by=_prune_heads,
)
@triton.jit
def rotary_kernel(
    X, sx_t, sx_h, sx_d, Out, so_t, so_h, so_d,
    Cos, sc_s, sc_j, Sin, ss_s, ss_j, Pos, seq_len, H, HALF, D,
    HAS_POS: tl.constexpr, INTERLEAVED: tl.constexpr, COPY_REST: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_REST: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.arange(0, BLOCK_HALF)
    if HAS_POS:
        pos = tl.load(Pos + t).to(tl.int64)
    else:
        pos = t % seq_len
    jm = j < HALF
    c = tl.load(Cos + pos * sc_s + j * sc_j, mask=jm, other=0.0).to(tl.float32)[None, :]
    s = tl.load(Sin + pos * ss_s + j * ss_j, mask=jm, other=0.0).to(tl.float32)[None, :]
    if INTERLEAVED:
        d1 = 2 * j
        d2 = 2 * j + 1
    else:
        d1 = j
        d2 = j + HALF
    m = (heads < H)[:, None] & jm[None, :]
    xh = X + t * sx_t + heads[:, None] * sx_h
    oh = Out + t * so_t + heads[:, None] * so_h
    x1 = tl.load(xh + d1[None, :] * sx_d, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(xh + d2[None, :] * sx_d, mask=m, other=0.0).to(tl.float32)
    tl.store(oh + d1[None, :] * so_d, x1 * c - x2 * s, mask=m)
    tl.store(oh + d2[None, :] * so_d, x2 * c + x1 * s, mask=m)
    if COPY_REST:  # not in place: the dims past rotary_dim are copied through
        r = 2 * HALF + tl.arange(0, BLOCK_REST)
        rm = (heads < H)[:, None] & (r < D)[None, :]
        v = tl.load(xh + r[None, :] * sx_d, mask=rm)
        tl.store(oh + r[None, :] * so_d, v, mask=rm)


_LAUNCH: dict = {}  # (H, rotary dim, D, dtypes, constexprs) -> its Launch


def _half_cache(t: torch.Tensor, rot: int, full: bool, interleaved: bool) -> torch.Tensor:
    if not full:
        return t
    return t[:, ::2] if interleaved else t[:, : rot // 2]


def _rotary_dim(cache_dim: int, head_dim: int, rotary_dim: int | None) -> tuple[int, bool]:
    """(R, whether the cache is full width)."""
    if rotary_dim is None:
        rotary_dim = cache_dim if 2 * cache_dim > head_dim else 2 * cache_dim
    if rotary_dim % 2 or rotary_dim > head_dim or cache_dim not in (rotary_dim, rotary_dim // 2):
        raise ValueError(f"cos/sin last dim {cache_dim} does not fit rotary_dim {rotary_dim} (head_dim {head_dim})")
    return rotary_dim, cache_dim == rotary_dim


class _Plan(NamedTuple):
    """A repeat of one ``apply_rotary_pos_emb`` signature whose q and k heads rotate in one
    launch (no position ids, not in place): the output's shape (q's token dims, q's and
    k's heads, head_dim), the head split, the kept kernel and grid, and the launch's
    arguments (X and Pos are q, Out the new output, then cos and sin: see _SLOTS)."""

    shape: tuple
    heads: tuple
    bound: Any  # tuner.launch.Bound
    grid: tuple
    template: tuple


_SLOTS = (0, 4, 8, 11, 14)  # rotary_kernel's X, Out, Cos, Sin, Pos
# (options, each tensor's dtype, shape and strides, k's address relative to q's) -> _Plan:
# every layer of a model repeats its signature. Emptied with the direct caches.
_PLANS: dict = direct_cache()


def _relaunch(plan: _Plan, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The plan's launch for these tensors; None where it cannot (another device,
    misalignment)."""
    stream = plan.bound.stream()
    if stream is None:
        return None
    out = torch.empty(size=plan.shape, dtype=q.dtype, device=q.device)
    if (q.data_ptr() | out.data_ptr() | cos.data_ptr() | sin.data_ptr()) & 15:
        return None
    args = list(plan.template)
    args[0] = args[14] = q
    args[4], args[8], args[11] = out, cos, sin
    plan.bound.launch(plan.grid, args, stream, rotary_kernel.fn)
    return out.split(plan.heads, -2)


def _rotate(x, cos, sin, pos, seq_len, rot, interleaved, inplace, kept: list | None = None) -> torch.Tensor:
    """``kept``: receives (the kept kernel, its grid, the launch's arguments) where a
    repeat could relaunch them with new tensors in the same places (see _Plan)."""
    shape = x.shape
    H, D = shape[-2], shape[-1]
    x3 = x.reshape(-1, H, D)  # a view when the token dims merge, else a copy
    T = x3.shape[0]
    out3 = x3 if inplace else torch.empty(size=(T, H, D), dtype=x.dtype, device=x.device)
    if T and H:
        rest = D - rot
        p = pos if pos is not None else x3
        consts = {"HAS_POS": pos is not None, "INTERLEAVED": interleaved, "COPY_REST": not inplace and rest > 0,
                  "BLOCK_HALF": next_power_of_2(max(rot // 2, 1)), "BLOCK_REST": next_power_of_2(max(rest, 1))}
        lc = cached_launch(rotary_kernel, _LAUNCH, (H, rot, D, x.dtype, cos.dtype, sin.dtype, p.dtype, *consts.values()))
        sx, so, sc, ss = x3.stride(), out3.stride(), cos.stride(), sin.stride()
        # direct relaunch key: H, HALF and D are the Launch's; every other int's specialization
        aligned = not (x3.data_ptr() | out3.data_ptr() | cos.data_ptr() | sin.data_ptr() | p.data_ptr()) & 15
        direct = tuple([int_spec(v) for v in (*sx, *so, *sc, *ss, seq_len)]) if aligned else None
        args = (x3, *sx, out3, *so, cos, *sc, sin, *ss, p, seq_len, H, rot // 2, D)
        lc.fixed(lambda META: (T, cdiv(H, META["BLOCK_H"])), *args, direct=direct, **consts)
        bound, cfg = lc.kept(direct), lc.config()
        if kept is not None and bound is not None and cfg is not None and x3.data_ptr() == x.data_ptr() and p is x3:
            kept.append((bound, (T, cdiv(H, cfg["BLOCK_H"]), 1), args))
    if inplace:
        if x3.data_ptr() != x.data_ptr():
            x.copy_(x3.view(shape))
        return x
    return out3.view(shape)


def apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    rotary_interleaved: bool = False,
    inplace: bool = False,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by the angles of each token's position.

    Without ``position_ids`` a token's position is its index along the seq dim
    (``q.shape[-3]``). ``rotary_dim`` defaults to the cache width for a full-width
    cache wider than head_dim/2, else twice the cache width; pass it when a
    full-width cache is used for a partial rotary dim."""
    sig = None
    if position_ids is None and not inplace:
        sig = (rotary_interleaved, rotary_dim, q.dtype, q.shape, q.stride(), k.dtype, k.shape, k.stride(), k.data_ptr() - q.data_ptr(),
               cos.dtype, cos.shape, cos.stride(), sin.dtype, sin.shape, sin.stride())
        plan = _PLANS.get(sig)
        if plan is not None:
            done = _relaunch(plan, q, cos, sin)
            if done is not None:
                return done
    if cos.dim() != 2 or sin.shape != cos.shape:
        raise ValueError(f"cos/sin must be 2-D [max_seq, dim] of one shape, got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in token dims or head_dim")
    rot, full = _rotary_dim(cos.shape[-1], q.shape[-1], rotary_dim)
    cos = _half_cache(cos, rot, full, rotary_interleaved)
    sin = _half_cache(sin, rot, full, rotary_interleaved)
    pos = None
    if position_ids is not None:
        pos = position_ids.expand(q.shape[:-2]).reshape(-1).contiguous()
    seq_len = q.shape[-3] if q.dim() >= 3 else 1
    both = _adjacent_heads(q, k)
    if both is not None:  # q's and k's heads in one launch
        kept: list = []
        out = _rotate(both, cos, sin, pos, seq_len, rot, rotary_interleaved, inplace, kept if sig is not None else None)
        if inplace:
            return q, k
        heads = (q.shape[-2], k.shape[-2])
        # a plan where the launch read q's, cos's and sin's own addresses (cos and sin are
        # sliced from their start) and wrote a new contiguous output of ``out``'s shape
        if kept and both.data_ptr() == q.data_ptr() and cos.data_ptr() == kept[0][2][8].data_ptr() and sin.data_ptr() == kept[0][2][11].data_ptr():
            if len(_PLANS) >= 4096:
                _PLANS.clear()
            _PLANS[sig] = _Plan(tuple(out.shape), heads, *kept[0])
        return out.split(heads, -2)
    q_out = _rotate(q, cos, sin, pos, seq_len, rot, rotary_interleaved, inplace)
    k_out = _rotate(k, cos, sin, pos, seq_len, rot, rotary_interleaved, inplace)
    return q_out, k_out


def _adjacent_heads(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """One view of q's and k's heads where k's continue q's in one buffer (blocks of a
    merged qkv projection's output: same strides, k right after q's last head)."""
    nd = q.dim()
    if nd < 2 or q.dtype != k.dtype:
        return None
    qs, ks, shape = q.stride(), k.stride(), q.shape
    hq, sh, off = shape[-2], qs[-2], q.storage_offset()
    # one storage (addresses and offsets differ alike), k's first head where q's next would be
    if k.storage_offset() != off + hq * sh or k.data_ptr() - q.data_ptr() != hq * sh * q.element_size():
        return None
    # strides agree where a dim has more than one index (a size-1 dim's is arbitrary)
    for i in range(nd):
        if qs[i] != ks[i] and shape[i] != 1 and i != nd - 2:
            return None
    hk = k.shape[-2]
    if hk != 1 and ks[-2] != sh:
        return None
    return q.as_strided((*shape[:-2], hq + hk, shape[-1]), (*qs[:-2], sh, qs[-1]))


# -- the angle tables --------------------------------------------------------------------
@triton.jit
def rope_cos_sin_kernel(Pos, InvFreq, Cos, Sin, n, HALF, scaling, BLOCK_N: tl.constexpr, BLOCK_HALF: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.arange(0, BLOCK_HALF)
    rm, jm = rows < n, j < HALF
    # fp32 as HF computes it: position.float() * inv_freq, then cos / sin, then the scale
    pos = tl.load(Pos + rows, mask=rm, other=0).to(tl.float32)
    f = tl.load(InvFreq + j, mask=jm, other=0.0).to(tl.float32)
    ang = pos[:, None] * f[None, :]
    c = tl.cos(ang) * scaling
    s = tl.sin(ang) * scaling
    m = rm[:, None] & jm[None, :]
    off = rows.to(tl.int64)[:, None] * (2 * HALF) + j[None, :]
    tl.store(Cos + off, c, mask=m)
    tl.store(Cos + off + HALF, c, mask=m)  # full width: cat(freqs, freqs)
    tl.store(Sin + off, s, mask=m)
    tl.store(Sin + off + HALF, s, mask=m)


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-width (neox) rotary tables of positions, as HF's rotary embeddings build
    them: ``cat(f, f).cos() * scaling`` and ``.sin()``, ``f = position * inv_freq`` in
    fp32, cast to ``dtype``; each ``[*position_ids.shape, 2 * len(inv_freq)]``. One
    kernel instead of HF's eight (multiply, cat, cos, sin, two scales, two casts)."""
    if inv_freq.dim() != 1 or position_ids.is_floating_point() or inv_freq.device != position_ids.device:
        raise ValueError(f"rope_cos_sin: integer position_ids and a 1-D inv_freq on one device, got "
                         f"{position_ids.dtype} on {position_ids.device}, {tuple(inv_freq.shape)} on {inv_freq.device}")
    half = inv_freq.shape[0]
    shape = (*position_ids.shape, 2 * half)
    cos = torch.empty(size=shape, dtype=dtype, device=position_ids.device)
    sin = torch.empty(size=shape, dtype=dtype, device=position_ids.device)
    n = position_ids.numel()
    if n and half:
        block_half = next_power_of_2(half)
        block_n = min(next_power_of_2(n), max(1, 2048 // block_half))
        launch(rope_cos_sin_kernel, (cdiv(n, block_n),), position_ids.reshape(-1), inv_freq, cos, sin, n, half,
               float(scaling), BLOCK_N=block_n, BLOCK_HALF=block_half)
    return cos, sin
