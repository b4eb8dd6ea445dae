"""Launch a Triton kernel without repeating, on every call, what its first call decided.

``fn[grid](*args)`` (``JITFunction.run``) re-derives per call what stays fixed from one
call of a call site to the next: it reads Triton's environment knobs, stringifies the
launch options, specializes every argument into a cache key, and looks the compiled kernel
up again. On a GPU host that costs more than torch's whole op.

Here the first call of each argument specialization goes through Triton's launch as
usual, which returns its ``CompiledKernel``. That kernel is kept under a key at least as
fine as Triton's own: each tensor's dtype and 16-byte alignment; each int's 1-ness,
divisibility by 16 and integer width; a TMA descriptor's dtype and block shape; every
constexpr and launch option by value; the device. Later calls launch it as
``compiled[grid](*args, stream=...)``, the public way Triton's own tutorials launch a
compiled kernel.

Everything else (the Triton interpreter, heuristics wrappers, arguments of a kind this
module does not key) takes Triton's own path, every call. ``FLAGGEMS_FAST_LAUNCH=0`` or
``set_enabled(False)`` turns this off.

A caller that knows more about its calls than this module can derive cheaply (the
pointwise generator knows every dtype and constexpr from its own plan) can skip even this
module's key: it asks ``Launcher.kept`` for what a launch kept, files it under its own,
finer key in a ``direct_cache()``, and relaunches it itself. Those caches are emptied
whenever a kept kernel may no longer be the right one (``set_enabled``,
``tuner.libtuner.clear_caches``).
"""
from __future__ import annotations

import inspect
import itertools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch

from tuner.kernel_hash import python_fn

_Tensor = torch.Tensor
_I32, _U64 = 2**31, 2**63
_NONE_CONST = itertools.repeat(False)  # positional arguments that hold no constexpr
try:  # a host-side TMA descriptor: Triton specializes it on dtype and block shape only
    from triton.tools.tensor_descriptor import TensorDescriptor as _HostDesc
except ImportError:  # a Triton without TMA descriptors
    _HostDesc = None


# Called with the jit function after each launch this module makes itself (the first
# call of a specialization goes through ``JITFunction.run``): tests count launches.
observer: Callable[[Any], None] | None = None


class Kept(NamedTuple):
    """A compiled kernel kept for one argument specialization, relaunched as
    ``kernel[grid](*args, *tail, stream=...)``."""

    kernel: Any  # Triton's CompiledKernel
    tail: tuple  # the parameters after the caller's positional arguments (constexprs, defaults)
    meta: dict  # ``tail`` by parameter name (what a grid function reads)
    runners: dict  # grid -> ``kernel[grid]``, see runner()

    def runner(self, grid: tuple) -> Callable[..., Any]:
        """``kernel[grid]``, made once per grid: making it is a good part of the launch's
        cost, and a model repeats its few grids every step."""
        run = self.runners.get(grid)
        if run is None:
            if len(self.runners) >= 64:  # many sizes (prefill lengths): keep the recent ones
                self.runners.clear()
            run = self.runners[grid] = self.kernel[grid]
        return run


class Bound(NamedTuple):
    """A kept kernel and the device it was compiled for: what callers' direct caches hold."""

    kept: Kept
    device: int
    current_device: Callable[[], int]
    current_stream: Callable[[int], int]

    def stream(self) -> int | None:
        """The current stream where the current device is the kernel's, else None (the
        caller then takes its regular path, which keeps a kernel for that device)."""
        return self.current_stream(self.device) if self.current_device() == self.device else None

    def runner(self, grid: tuple) -> Callable[..., Any]:
        return self.kept.runner(grid)

    def launch(self, grid: tuple, args: Sequence[Any], stream: int, fn: Any) -> None:
        """``kernel[grid](*args, *tail, stream=stream)``, reported to ``observer`` as a
        launch of the jit function ``fn``."""
        self.kept.runner(grid)(*args, *self.kept.tail, stream=stream)
        if observer is not None:
            observer(fn)


class Replay:
    """The launches of one call of a multi-kernel op (a sort's passes), relaunched for the
    next calls of the same signature with their own tensors: no launcher key, no tuner
    lookup, no grid function per launch.

    The first call launches through ``launch``, which files what each launch kept.
    The call's tensors are its ``slots``: an argument that is one of them is taken from
    each replay's tensors; every other argument must be the same for every call the
    caller files the replay under. A launch that kept nothing (the interpreter, fast launch
    off, a config resolved for this call only) or took a tensor outside the slots leaves
    the replay incomplete: not to be filed. Keep replays in a ``direct_cache()``."""

    def __init__(self, slots: Sequence[_Tensor]) -> None:
        self._slot = {id(t): i for i, t in enumerate(slots)}
        self.steps: list[tuple[Callable[..., Any], list, tuple, Any]] = []
        self.complete = True
        self._bound: Bound | None = None

    def launch(self, fn: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
        """``fn[grid](*args, **kwargs)`` (``fn``: a jit function or a LibTuner), filed."""
        tuned = hasattr(fn, "kernel_launcher")  # a LibTuner: its resolved config's kernel
        if tuned:
            fn[grid](*args, **kwargs)
        else:
            launch(fn, grid, *args, **kwargs)
        if not self.complete:
            return
        if tuned:
            found = fn.kept(args, kwargs)
            bound, jit = (found[0] if found else None), fn.fn
        else:
            bound, jit = launcher(fn).kept(args, kwargs), fn
        template, subs = [*args, *(bound.kept.tail if bound else ())], []
        for i, a in enumerate(args):
            if isinstance(a, _Tensor):
                template[i] = None  # (a replay holds no tensor of the call that made it)
                subs.append((i, self._slot.get(id(a))))
        if bound is None or any(j is None for _, j in subs):
            self.complete = False
            return
        if callable(grid):
            grid = grid(bound.kept.meta)
        self.steps.append((bound.runner((*grid, 1, 1)[:3]), template, tuple(subs), jit))
        self._bound = bound

    def __call__(self, tensors: Sequence[_Tensor]) -> bool:
        """Relaunch every step with ``tensors`` in the slots; False, launching nothing,
        where the current device is not the kernels'."""
        stream = self._bound.stream() if self._bound is not None else None
        if stream is None:
            return False
        for run, template, subs, fn in self.steps:
            args = template.copy()
            for i, j in subs:
                args[i] = tensors[j]
            run(*args, stream=stream)
            if observer is not None:
                observer(fn)
        return True


def _only_device() -> int:
    return 0


def _device_query(query: Callable[[], int]) -> Callable[[], int]:
    """Triton's current-device query (torch.cuda.current_device: Python, about 0.3 us per
    launch on a GPU host); in a process that sees one device, which is then the current
    one for good, a constant."""
    if query is torch.cuda.current_device and torch.cuda.device_count() == 1:
        return _only_device
    return query


class _Unkeyed(Exception):
    """An argument this module does not key: the call takes Triton's own path."""


def int_spec(a: int) -> Any:
    """An int's specialization: 1, divisible by 16 (or not), and its integer width (0, 1
    and 1 < a < 2**31, the common values, are inlined in ``Launcher._key`` alike)."""
    if a == 1:
        return "one"
    if -_I32 <= a < _I32:
        return a & 15 == 0
    return ("u64" if a >= _U64 else "i64"), a & 15 == 0


def _is_constexpr(p: inspect.Parameter) -> bool:
    ann = p.annotation
    return ann is not inspect.Parameter.empty and "constexpr" in (ann if isinstance(ann, str) else repr(ann))


class Launcher:
    """The compiled kernels of one ``triton.jit`` function, by argument specialization."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        params = list(inspect.signature(python_fn(fn)).parameters.values())
        self.names = [p.name for p in params]
        self.constexpr = [_is_constexpr(p) for p in params]
        self.defaults = [p.default for p in params]
        # what a keyword argument may name and still be keyed by value: anything but a
        # runtime parameter (a constexpr or a launch option; never a tensor)
        self.runtime = frozenset(n for n, c in zip(self.names, self.constexpr) if not c)
        self.first_constexpr = self.constexpr.index(True) if True in self.constexpr else len(params)
        self.compiled: dict[tuple, Kept] = {}
        from tuner import settings

        self.capable = _is_plain_jit(fn) and not settings.get().interpret
        self.fast = self.capable and _enabled()
        if self.capable:
            from triton.runtime import driver

            # Triton's own: a kernel is compiled for, and launched on, the current device
            self.current_device, self.current_stream = _device_query(driver.active.get_current_device), driver.active.get_current_stream

    def __call__(self, grid: Any, args: tuple, kwargs: dict, cfg: dict | None = None) -> Any:
        """``fn[grid](*args, **kwargs, **cfg)``."""
        if not self.fast or _suspended:
            return self.fn[grid](*args, **kwargs, **(cfg or {}))
        device = self.current_device()
        try:
            key = self._key(args, kwargs, cfg, device)
            hit = self.compiled.get(key)
        except (_Unkeyed, TypeError):  # TypeError: an unhashable constexpr
            return self.fn[grid](*args, **kwargs, **(cfg or {}))
        if hit is None:
            return self._first(key, grid, args, kwargs, cfg)
        if callable(grid):
            try:  # a grid function reads constexprs, the same for every call of this entry
                grid = grid(hit.meta)
            except KeyError:
                grid = grid(dict(zip(self.names, args + hit.tail)))
        if type(grid) is not tuple or len(grid) != 3:
            grid = (*grid, 1, 1)[:3]
        run = hit.runners.get(grid) or hit.runner(grid)
        run(*args, *hit.tail, stream=self.current_stream(device))
        if observer is not None:
            observer(self.fn)
        return hit.kernel

    def _key(self, args: tuple, kwargs: dict, cfg: dict | None, device: int) -> tuple:
        """What Triton specializes the call on, or finer: one entry per argument (inline,
        not a call per argument: this runs on every launch)."""
        spec = [device, len(args)]
        add = spec.append
        consts = self.constexpr if len(args) > self.first_constexpr else _NONE_CONST
        for a, const in zip(args, consts):
            if const:
                add(a)
            elif type(a) is int:  # the common values inline; int_spec gives the same for them
                add(a & 15 == 0 if 1 < a < _I32 else True if a == 0 else "one" if a == 1 else int_spec(a))
            elif isinstance(a, _Tensor):
                add((a.dtype, a.data_ptr() & 15 == 0))
            elif type(a) is float or type(a) is bool or a is None:
                add(type(a))
            elif type(a) is _HostDesc:
                add((_HostDesc, a.base.dtype, tuple(a.block_shape), getattr(a, "padding", None)))
            else:
                raise _Unkeyed
        if kwargs:  # by keyword: constexprs and options, keyed by value
            if not self.runtime.isdisjoint(kwargs):
                raise _Unkeyed  # a runtime argument (a tensor, say) by keyword
            add(tuple(kwargs.items()))
        if cfg:
            add(tuple(cfg.items()))
        return tuple(spec)

    def _first(self, key: tuple, grid: Any, args: tuple, kwargs: dict, cfg: dict | None) -> Any:
        """Triton's own launch; its compiled kernel kept for the calls that follow."""
        given = {**kwargs, **(cfg or {})}
        kernel = self.fn[grid](*args, **given)
        if kernel is None or not hasattr(type(kernel), "__getitem__"):
            return kernel  # not a compiled kernel (Triton's launch stubbed): nothing to keep
        names, tail = self.names[len(args):], []
        for name, default in zip(names, self.defaults[len(args):]):
            if name in given:
                tail.append(given[name])
            elif default is not inspect.Parameter.empty:
                tail.append(default)
            else:
                return kernel  # Triton accepted a call this module cannot replay: not kept
        self.compiled[key] = Kept(kernel, tuple(tail), dict(zip(names, tail)), {})
        return kernel

    def kept(self, args: tuple, kwargs: dict, cfg: dict | None = None) -> Bound | None:
        """What an earlier launch of this very call (same specialization, on the current
        device) kept, or None: not launched yet, not keyable, or keeping is off."""
        if not self.fast or _suspended:
            return None
        device = self.current_device()
        try:
            found = self.compiled.get(self._key(args, kwargs, cfg, device))
        except (_Unkeyed, TypeError):
            return None
        return None if found is None else Bound(found, device, self.current_device, self.current_stream)


_on: bool | None = None  # set_enabled's word; None: FLAGGEMS_FAST_LAUNCH decides


def _enabled() -> bool:
    if _on is not None:
        return _on
    return os.environ.get("FLAGGEMS_FAST_LAUNCH", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(on: bool | None) -> None:
    """Keep and relaunch compiled kernels (True) or launch every call through Triton
    (False), for the launchers made so far and later; None: the environment decides."""
    global _on
    _on = on
    for _, lc in _LAUNCHERS.values():
        lc.fast = lc.capable and _enabled()
    forget_direct()


_DIRECT: list[dict] = []


def direct_cache() -> dict:
    """A new dict for a caller's own keys -> what it relaunches directly (built from
    ``Launcher.kept``); emptied by ``forget_direct``."""
    cache: dict = {}
    _DIRECT.append(cache)
    return cache


class KeptCache(dict):
    """A caller's call signature -> the kernel (a ``Bound``) a launch of that signature
    kept, or None where nothing was kept (the interpreter). The signature must fix every
    input of the tuner's key and of the launcher's (aligned tensors only); a repeat then
    relaunches with neither. A ``direct_cache()``: emptied by ``forget_direct``."""

    LIMIT = 4096

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn  # the jit function (what ``observer`` reports)
        _DIRECT.append(self)

    def relaunch(self, key: Any, grid: Any, args: Sequence[Any]) -> bool:
        """Launch the kernel kept for ``key`` on ``grid`` (a 3-tuple, or a function of the
        kept config's constexprs); False where none is kept (or not on this device)."""
        bound = self.get(key)
        if bound is None:
            return False
        device = bound.device
        if bound.current_device() != device:
            return False
        kept = bound.kept
        if callable(grid):
            grid = grid(kept.meta)
        # Bound.launch, inline (every repeat runs this)
        (kept.runners.get(grid) or kept.runner(grid))(*args, *kept.tail, stream=bound.current_stream(device))
        if observer is not None:
            observer(self.fn)
        return True

    def file(self, key: Any, found: tuple | None) -> None:
        """Keep what ``LibTuner.kept`` found for the call just launched under ``key``."""
        if key in self:
            return
        if len(self) >= self.LIMIT:
            self.clear()
        self[key] = found[0] if found else None


def forget_direct() -> None:
    """Empty every ``direct_cache()``: its kernels or configs may be stale."""
    for cache in _DIRECT:
        cache.clear()


def jit_classes() -> list[type]:
    """Triton's kernel classes whose ``run`` launches (what a launch stub or counter
    patches): ``JITFunction``, and ``InterpretedFunction`` where Triton has it."""
    from triton.runtime.jit import JITFunction

    classes: list[type] = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return classes
    return [*classes, InterpretedFunction]


def _is_plain_jit(fn: Any) -> bool:
    from triton.runtime import JITFunction

    return isinstance(fn, JITFunction)


_LAUNCHERS: dict[int, tuple[Any, Launcher]] = {}  # id(fn) -> (fn, its launcher)
_suspended = 0


@contextmanager
def suspended() -> Iterator[None]:
    """Every launch in the block goes through ``JITFunction.run`` (which a caller may have
    stubbed, as ``tuner.pretune.no_launches`` does)."""
    global _suspended
    _suspended += 1
    forget_direct()  # callers' direct launches bypass JITFunction.run too
    try:
        yield
    finally:
        _suspended -= 1
        forget_direct()  # what they filed meanwhile: "not kept"


def values_unknown() -> bool:
    """Inside ``suspended()``, where a caller may have stubbed every launch
    (``tuner.pretune.no_launches``: a dry run's tensors hold no data): host checks of
    tensor values (index bounds) must not decide anything there."""
    return _suspended > 0


def launcher(fn: Any) -> Launcher:
    """The launcher of a jit function (one per function, for the process's lifetime)."""
    found = _LAUNCHERS.get(id(fn))
    if found is None or found[0] is not fn:  # (an id is reused once its function is gone)
        found = _LAUNCHERS[id(fn)] = (fn, Launcher(fn))
    return found[1]


def launch(fn: Any, grid: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn[grid](*args, **kwargs)`` through the kernel's launcher."""
    return launcher(fn)(grid, args, kwargs)
