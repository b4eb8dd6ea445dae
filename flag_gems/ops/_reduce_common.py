"""Shared pieces of the reduction-like families (reduction, cumsum, softmax).

Every op reduces (or scans) one axis of a tensor seen as ``(M, R, K)`` with arbitrary
strides: M outer rows, R the reduced length, K the inner length. A kernel program owns one
``m`` and a tile of ``BLOCK_K`` inner positions and loops over R in ``BLOCK_R`` steps, so
the tile is ``[BLOCK_R, BLOCK_K]``. When K == 1 (reduction over the last dim, the LLM hot
case) the rows are moved to the K axis, ``(1, R, rows)``, so one program handles a block of
rows and small-R shapes still fill the tile. Collapsible strided inputs need no copy.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from flag_gems.registry import Unsupported
from flag_gems.utils import cdiv
from tuner import launch as launching
from tuner.kernel_hash import config_repr
from tuner.libtuner import LibTuner

# accumulator codes (constexpr ints: portable across Triton versions)
ACC_F32, ACC_F64, ACC_I64 = 0, 1, 2


def acc_code(dtype: torch.dtype) -> int:
    if dtype == torch.float64:
        return ACC_F64
    if dtype.is_floating_point:
        return ACC_F32
    return ACC_I64


@triton.jit
def to_acc(x, ACC: tl.constexpr):
    if ACC == 0:
        return x.to(tl.float32)
    elif ACC == 1:
        return x.to(tl.float64)
    else:
        return x.to(tl.int64)


@dataclass
class Layout:
    x: torch.Tensor  # the tensor the strides refer to (the input, or a contiguous copy)
    M: int
    R: int
    K: int
    sm: int
    sr: int
    sk: int
    is_rows: bool = False  # K holds the rows of a last-dim reduction

    @property
    def out_strides(self) -> tuple[int, int, int]:
        """Strides, in (M, R, K) coordinates, of a contiguous tensor shaped like ``x``."""
        if self.is_rows:
            return 0, 1, self.R
        return self.R * self.K, self.K, 1


def _collapse(sizes: Sequence[int], strides: Sequence[int]) -> tuple[int, int] | None:
    """(numel, stride) of dims that address memory as one strided axis, else None."""
    if 0 in sizes:  # nothing to address (an empty tensor's strides need not nest)
        return 0, 1
    dims = [(n, s) for n, s in zip(sizes, strides) if n != 1]
    for (n0, s0), (n1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * n1:
            return None
    if not dims:
        return 1, 0
    return math.prod(n for n, _ in dims), dims[-1][1]


def _rows(x: torch.Tensor, M: int, R: int, sm: int, sr: int) -> Layout:
    return Layout(x, 1, R, M, 0, sr, sm, is_rows=True)


def layout(x: torch.Tensor, dims: Sequence[int]) -> Layout:
    """View ``x`` as (M, R, K) reducing the (sorted, unique, non-empty) ``dims``."""
    shape, stride = list(x.shape), list(x.stride())
    d0, d1 = dims[0], dims[-1]
    if list(dims) == list(range(d0, d1 + 1)):
        parts = [_collapse(shape[a:b], stride[a:b]) for a, b in ((0, d0), (d0, d1 + 1), (d1 + 1, len(shape)))]
        if None in parts:
            x = x.contiguous()
            shape, stride = list(x.shape), list(x.stride())
            parts = [_collapse(shape[a:b], stride[a:b]) for a, b in ((0, d0), (d0, d1 + 1), (d1 + 1, len(shape)))]
        (M, sm), (R, sr), (K, sk) = parts
    else:
        keep = [d for d in range(x.dim()) if d not in dims]
        x = x.permute(keep + list(dims)).contiguous()
        M, R = math.prod(shape[d] for d in keep), math.prod(shape[d] for d in dims)
        return _rows(x, M, R, R, 1)
    if K == 1:
        return _rows(x, M, R, sm, sr)
    return Layout(x, M, R, K, sm, sr, sk)


def flat_layout(x: torch.Tensor) -> Layout:
    """All of ``x`` as one reduced axis."""
    x = x.reshape(-1)
    if x.numel() > 1 and x.stride(0) != 1:  # (a strided 1-D tensor reshapes to itself)
        x = x.contiguous()
    return _rows(x, 1, x.numel(), 0, 1)


def norm_dims(dim: Any, ndim: int) -> list[int]:
    """Sorted unique non-negative dims; [] for None / empty (= every dim)."""
    if dim is None:
        return []
    if isinstance(dim, int):
        dim = [dim]
    n = max(ndim, 1)
    for d in dim:
        if not -n <= d < n:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    out = sorted({d % n for d in dim})
    if len(out) != len(dim):
        raise RuntimeError(f"dim {next(d for d in dim if sum(e % n == d % n for e in dim) > 1)} appears multiple times in the list of dims")
    return out if ndim > 0 else []


def keep_shape(shape: Sequence[int], dims: Sequence[int], keepdim: bool) -> list[int]:
    if keepdim:
        return [1 if i in dims else s for i, s in enumerate(shape)]
    return [s for i, s in enumerate(shape) if i not in dims]


# -- tuned launch configs -----------------------------------------------------------------
def _cfg(br: int, bk: int, w: int) -> triton.Config:
    return triton.Config({"BLOCK_R": br, "BLOCK_K": bk}, num_warps=w)


# R contiguous and long: one (or two) rows per program, wide tiles along R.
ROWS_LONG = [_cfg(512, 1, 4), _cfg(1024, 1, 4), _cfg(2048, 1, 8), _cfg(4096, 1, 8), _cfg(4096, 1, 16), _cfg(1024, 2, 8)]
ROWS_LONG_DEFAULT = _cfg(2048, 1, 8)
# R contiguous and short: a block of rows per program.
ROWS_SHORT = [_cfg(32, 32, 4), _cfg(64, 16, 4), _cfg(128, 8, 4), _cfg(256, 4, 4), _cfg(512, 2, 4), _cfg(64, 32, 8)]
ROWS_SHORT_DEFAULT = _cfg(128, 8, 4)
# R strided (inner-dim reduction): wide tiles along the contiguous K axis.
INNER = [_cfg(4, 256, 4), _cfg(8, 128, 4), _cfg(16, 64, 4), _cfg(32, 32, 4), _cfg(16, 128, 8), _cfg(8, 256, 8)]
INNER_DEFAULT = _cfg(16, 64, 4)

SHORT_R = 512


class Tuned:
    """Three tuned variants of one (M, R, K) kernel, one per layout regime, each keyed on
    the bucketed R and K; ``pick`` chooses the regime in Python."""

    def __init__(self, fn: Any) -> None:
        py = getattr(fn, "fn", fn)
        name = f"{py.__module__}.{py.__qualname__}"
        kw = dict(key=["R", "K"], strategy=["log", "log"])
        self.long = LibTuner(fn, ROWS_LONG, default=ROWS_LONG_DEFAULT, name=f"{name}:rows_long", **kw)
        self.short = LibTuner(fn, ROWS_SHORT, default=ROWS_SHORT_DEFAULT, name=f"{name}:rows_short", **kw)
        self.inner = LibTuner(fn, INNER, default=INNER_DEFAULT, name=f"{name}:inner", **kw)

    def pick(self, lay: Layout) -> LibTuner:
        if lay.sr == 1 or lay.R == 1:
            return self.short if lay.R <= SHORT_R else self.long
        return self.inner


def grid_mk(lay: Layout):
    return lambda META: (lay.M, cdiv(lay.K, META["BLOCK_K"]))


# -- low-overhead launches and size-classed defaults -------------------------------------
class Launch:
    """One kernel launch of a cached per-shape plan: the tuning key is computed once (the
    plan fixes every key input), then each call is one dict lookup in the tuner's cache
    and the launch. A miss of that cache (first call, or after ``clear_caches``) goes
    through ``LibTuner.run``, which resolves and memoizes the config."""

    __slots__ = ("tuner", "grid_fn", "key", "cfg", "grid")

    def __init__(self, tuner: LibTuner, grid_fn: Any) -> None:
        self.tuner, self.grid_fn = tuner, grid_fn
        self.key = self.cfg = self.grid = None

    def __call__(self, *args: Any, direct: Any = None, **kw: Any) -> None:
        """Launch on the grid of the resolved config. ``direct``: see ``fixed``."""
        if direct is not None and self._relaunch(direct, None, args):
            return
        t = self.tuner
        if self.key is None:
            self.key = t.key_of(args, kw)
        cfg = t.cache.get(self.key)
        if cfg is None:
            t.run(*args, grid=self.grid_fn, **kw)
        else:
            if cfg is not self.cfg:
                self.cfg, self.grid = cfg, self.grid_fn(cfg)
            t.kernel_launcher()(self.grid, args, kw, cfg)
        if direct is not None:
            self._file(direct, args, kw, fixed_grid=False)

    def fixed(self, grid: Any, *args: Any, direct: Any = None, **kw: Any) -> None:
        """Launch on this call's grid: a tuple, or a function of the config (as Triton's
        grid functions), evaluated here once this Launch's config is resolved.

        ``direct``: the caller's key of this call, or None. With this ``Launch``'s own key
        it must fix everything ``tuner.launch`` keys (each tensor's 16-byte alignment, each
        int argument's value or specialization, the scalars' types); for ``fixed`` the
        grid may differ. A repeat then relaunches the kept kernel without the launcher's key."""
        t = self.tuner
        if callable(grid) and self.key is not None:
            cfg = t.cache.get(self.key)
            if cfg is not None:
                grid = grid(cfg)
        if direct is not None and self._relaunch(direct, grid, args):
            return
        if self.key is None:
            self.key = t.key_of(args, kw)
        cfg = t.cache.get(self.key)
        if cfg is None:
            t.run(*args, grid=grid, **kw)
        else:
            t.kernel_launcher()(grid, args, kw, cfg)
        if direct is not None:
            self._file(direct, args, kw, fixed_grid=True)

    def kept(self, direct: Any) -> Any:
        """The kept kernel (a ``tuner.launch.Bound``) filed for the caller's key ``direct``,
        or None."""
        hit = None if direct is None else _DIRECT.get((self, direct))
        return None if hit is None else hit[0]

    def filed(self, direct: Any) -> tuple | None:
        """(the kept kernel, its grid) filed by a ``__call__`` under the caller's key
        ``direct``, or None."""
        hit = None if direct is None else _DIRECT.get((self, direct))
        return None if hit is None or hit[1] is None else hit

    def config(self) -> dict | None:
        """The resolved config, once a call has resolved it."""
        return None if self.key is None else self.tuner.cache.get(self.key)

    def _relaunch(self, direct: Any, grid: tuple | None, args: tuple) -> bool:
        hit = _DIRECT.get((self, direct))
        if hit is None:
            return False
        bound, cfg_grid = hit
        device = bound.device
        if bound.current_device() != device:
            return False
        if grid is None:
            grid = cfg_grid
        elif callable(grid):  # a grid from the config (not resolved for this call's caller yet)
            return False
        elif len(grid) != 3:
            grid = (*grid, 1, 1)[:3]
        # Bound.launch, inline (every plan's repeat runs this)
        kept = bound.kept
        (kept.runners.get(grid) or kept.runner(grid))(*args, *kept.tail, stream=bound.current_stream(device))
        if launching.observer is not None:
            launching.observer(self.tuner.fn)
        return True

    def _file(self, direct: Any, args: tuple, kw: dict, fixed_grid: bool) -> None:
        """Keep what the launch just made for ``_relaunch`` (once per key)."""
        if (self, direct) in _DIRECT:
            return
        if len(_DIRECT) >= 4096:
            _DIRECT.clear()
        found = self.tuner.kept(args, kw)
        if found is None:
            _DIRECT[(self, direct)] = None
            return
        bound, cfg = found
        _DIRECT[(self, direct)] = (bound, None if fixed_grid else (*self.grid_fn(cfg), 1, 1)[:3])


def cached_launch(tuner: LibTuner, cache: dict, key: Any) -> Launch:
    """The ``Launch`` of ``tuner`` cached in ``cache`` under ``key``, made on first use;
    ``key`` must determine every input of the tuner's key, dtypes included (a ``Launch``
    computes that key once)."""
    lc = cache.get(key)
    if lc is None:
        if len(cache) > 4096:
            cache.clear()
        lc = cache[key] = Launch(tuner, None)
    return lc


# (Launch, the caller's key) -> (tuner.launch.Bound, its grid (None: the call's)), or None
# where nothing was kept (the interpreter): see Launch.fixed
_DIRECT: dict = launching.direct_cache()


class SizeClassed(LibTuner):
    """A LibTuner whose configs and default depend on the size class of one key argument
    (``size``): each class has its own config list (the benchmarked candidates are pruned
    to the class of the call) and its own default, used when the store has nothing near
    (miss policy ``never``). So what runs before, or without, pretuning fits the size --
    e.g. a 4096-wide row gets BLOCK 4096 / 8 warps -- under one kernel name.
    ``default`` (what tools report) is the class default of ``size`` 4096."""

    def __init__(self, fn: Any, classes: Sequence[tuple[int, Sequence[triton.Config], triton.Config]], *,
                 key: Sequence[str], strategy: Any, name: str, size: str | None = None,
                 restore_value: Sequence[str] = ()) -> None:
        size = size or key[0]
        self._classes = [(lim, [config_repr(c) for c in cfgs], config_repr(d)) for lim, cfgs, d in classes]
        union: list[triton.Config] = []
        seen: list[dict] = []
        for _, cfgs, d in classes:
            for c in [d, *cfgs]:
                if config_repr(c) not in seen:
                    seen.append(config_repr(c))
                    union.append(c)
        self._size_arg, self._size_pos = size, list(key).index(size)
        default = next(d for lim, _, d in classes if lim >= 4096)
        super().__init__(fn, union, key=key, strategy=strategy, default=default, name=name, prune_configs_by=self._prune,
                         restore_value=restore_value)

    def _of(self, n: Any) -> tuple:
        n = int(n)
        for c in self._classes:
            if n <= c[0]:
                return c
        return self._classes[-1]

    def _prune(self, configs: list, named: dict) -> list:
        allowed = self._of(named[self._size_arg])[1]
        return [c for c in configs if c in allowed]

    def _fallback(self, ident: Any, store: Any) -> dict:
        cfg = super()._fallback(ident, store)
        if cfg is self.default:  # nothing tuned near this key: the class default
            return self._of(json.loads(ident.key)[self._size_pos])[2]
        return cfg

    def launcher(self, n: int, cache: dict, key: Any) -> "Launch":
        """The cached ``Launch`` of ``key`` (see ``cached_launch``)."""
        return cached_launch(self, cache, key)

    def pick(self, n: int) -> "SizeClassed":
        return self


def _row_cfg(block: int, w: int, **extra: int) -> triton.Config:
    return triton.Config({"BLOCK": block, **extra}, num_warps=w)


# Row kernels (norms, softmax): one program per row, the row in registers when it fits.
# Default: BLOCK = next_power_of_2(N), 4 warps up to 1024, 8 up to 4096, 16 above.
ROW_CLASSES = [
    (256, [_row_cfg(256, 2), _row_cfg(256, 4)], _row_cfg(256, 4)),
    (512, [_row_cfg(512, 4), _row_cfg(512, 2)], _row_cfg(512, 4)),
    (1024, [_row_cfg(1024, 4), _row_cfg(1024, 8), _row_cfg(512, 4)], _row_cfg(1024, 4)),
    (2048, [_row_cfg(2048, 8), _row_cfg(2048, 4), _row_cfg(1024, 4)], _row_cfg(2048, 8)),
    (4096, [_row_cfg(4096, 8), _row_cfg(4096, 16), _row_cfg(4096, 4), _row_cfg(2048, 8)], _row_cfg(4096, 8)),
    (8192, [_row_cfg(8192, 16), _row_cfg(8192, 8), _row_cfg(4096, 8)], _row_cfg(8192, 16)),
    (1 << 62, [_row_cfg(8192, 16), _row_cfg(4096, 8), _row_cfg(16384, 16)], _row_cfg(8192, 16)),
]


def row_tuners(fn: Any, key: str = "N", restore_value: Sequence[str] = ()) -> SizeClassed:
    py = getattr(fn, "fn", fn)
    return SizeClassed(fn, ROW_CLASSES, key=[key], strategy=["log"], name=f"{py.__module__}.{py.__qualname__}",
                       restore_value=restore_value)


_SM: dict[Any, int] = {}


def sm_count(device: torch.device) -> int:
    n = _SM.get(device)
    if n is None:
        n = 132  # the interpreter: plan as for an H100/H200
        if device.type == "cuda":
            n = torch.cuda.get_device_properties(device).multi_processor_count
        _SM[device] = n
    return n


class PlanCache(dict):
    """Per-shape launch plans; bounded (dynamic shapes must not grow it forever)."""

    LIMIT = 4096

    def put(self, key: Any, plan: Any) -> Any:
        if len(self) >= self.LIMIT:
            self.clear()
        self[key] = plan
        return plan


# -- (M, R, K) kernels in the ROWS regime: tile [BLOCK_K rows, BLOCK_R] ---------------------
def rcfg(br: int, bk: int, w: int) -> triton.Config:
    return triton.Config({"BLOCK_R": br, "BLOCK_K": bk}, num_warps=w)


# ROWS regime (R contiguous): size classes of R; BLOCK_R = next_power_of_2(R) up to 8192
# (one pass, 4 warps up to 1024, 8 up to 4096, 16 above), several rows per program when
# rows are short.
ROWS_CLASSES = [
    (32, [rcfg(32, 32, 4), rcfg(32, 64, 4), rcfg(32, 16, 2)], rcfg(32, 32, 4)),
    (128, [rcfg(128, 16, 4), rcfg(128, 8, 4), rcfg(128, 32, 8)], rcfg(128, 16, 4)),
    (512, [rcfg(512, 4, 4), rcfg(512, 2, 4), rcfg(512, 8, 8)], rcfg(512, 4, 4)),
    (1024, [rcfg(1024, 1, 4), rcfg(1024, 2, 4), rcfg(1024, 2, 8)], rcfg(1024, 1, 4)),
    (2048, [rcfg(2048, 1, 8), rcfg(2048, 1, 4), rcfg(1024, 1, 4)], rcfg(2048, 1, 8)),
    (4096, [rcfg(4096, 1, 8), rcfg(4096, 1, 16), rcfg(2048, 1, 8)], rcfg(4096, 1, 8)),
    (8192, [rcfg(8192, 1, 16), rcfg(8192, 1, 8), rcfg(4096, 1, 8)], rcfg(8192, 1, 16)),
    (1 << 62, [rcfg(4096, 1, 8), rcfg(8192, 1, 16), rcfg(2048, 1, 4)], rcfg(4096, 1, 8)),
]


_F64 = torch.float64


def check_norm_args(x: torch.Tensor, normalized_shape: Sequence[int], *params: torch.Tensor | None) -> None:
    """torch's checks of a layer / RMS norm call: ``x`` ends in ``normalized_shape`` and
    each given weight / bias has that shape. fp64 goes to aten: these kernels keep their
    statistics in fp32."""
    ns = tuple(normalized_shape)
    shape = x.shape  # (read once: each read makes a torch.Size; this runs on every call)
    k = len(ns)
    if k == 1:  # the common case, without slicing a Size
        ok = len(shape) > 0 and shape[-1] == ns[0]
    else:
        ok = 0 < k <= len(shape) and shape[len(shape) - k:] == ns
    if not ok:
        raise RuntimeError(f"Given normalized_shape={list(ns)}, expected input with shape [*, {', '.join(map(str, ns))}], "
                           f"but got input of size{list(shape)}")
    for p in params:
        if p is not None and p.shape != ns:
            raise RuntimeError(f"Expected weight to be of same shape as normalized_shape, but got weight of shape {list(p.shape)} "
                               f"and normalized_shape = {list(ns)}")
    refuse_fp64(x, "layer / RMS norm")


def refuse_fp64(x: torch.Tensor, op: str) -> None:
    """Hand an fp64 call to aten: ``op``'s kernels keep their statistics in fp32."""
    if x.dtype is _F64:
        raise Unsupported(f"flag_gems' {op} computes in fp32")
