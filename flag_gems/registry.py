"""The aten ops flag_gems implements, and switching them on and off.

Each op file registers its functions beside their code::

    @register("add.Tensor")
    def add(a, b, *, alpha=1): ...

The first ``enable()`` / ``use_gems()`` installs one wrapper per op into a
``torch.library.Library`` on the device's dispatch key (a few ms for the whole set).
After that, switching ops on and off flips a flag per op: entering ``use_gems()`` never
re-registers. A switched-off wrapper calls the original aten kernel. ``disable()``
removes the wrappers altogether.
"""
from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import torch

from flag_gems import runtime

log = logging.getLogger(__name__)

OP_MODULES_PACKAGE = "flag_gems.ops"


@dataclass
class OpEntry:
    name: str  # aten overload, e.g. "add.Tensor" or "softmax" (= .default)
    fn: Callable[..., Any]
    autograd: bool = False  # register on Autograd<device> (the op brings its own backward)
    on: bool = False
    original: Any = None  # the aten kernel it replaced, for the off state and fallbacks
    keyset: Any = None
    tensor_slots: tuple[tuple[int, str], ...] = ()  # (position, name) of Tensor arguments
    off_via: str | None = None  # switched off, run this overload's aten kernel instead (see register)
    # An autograd entry's twin on the backend key: a call that skips the Autograd keys
    # (torch.inference_mode) reaches aten's composite there, which would decompose the op
    # into smaller ones (rms_norm: five kernels); the same fn serves it in one.
    below: OpEntry | None = None

    @property
    def base(self) -> str:
        return self.name.split(".", 1)[0]

    def call_original(self, args: tuple, kwargs: dict) -> Any:
        """Call the replaced aten kernel. The dispatcher hands Python kernels wrapped
        numbers as Python scalars; a boxed call needs them as tensors again."""
        if self.off_via is not None:
            return _ENTRIES[self.off_via].call_original(args, kwargs)
        n = len(args)
        for i, name in self.tensor_slots:
            if i < n:
                if type(args[i]) in _NUMBER_TYPES:
                    args = args[:i] + (_as_wrapped(args[i], args),) + args[i + 1:]
            elif kwargs and type(kwargs.get(name)) in _NUMBER_TYPES:
                kwargs = dict(kwargs, **{name: _as_wrapped(kwargs[name], args)})
        return self.original.call_boxed(self.keyset, *args, **kwargs)


_NUMBER = (int, float, bool, complex)
_NUMBER_TYPES = frozenset(_NUMBER)  # the dispatcher hands Python kernels numbers of exactly these types


def _category(x: Any) -> int:
    if isinstance(x, torch.dtype):
        return 3 if x.is_complex else 2 if x.is_floating_point else 0 if x == torch.bool else 1
    return 0 if isinstance(x, bool) else 1 if isinstance(x, int) else 2 if isinstance(x, float) else 3


_WIDEST = {0: torch.bool, 1: torch.int64, 2: torch.float64, 3: torch.complex128}  # per _category


def _as_wrapped(value: Any, args: tuple) -> torch.Tensor:
    """A 0-d CPU tensor that promotes like the wrapped number it was (aten takes a CPU
    scalar beside device tensors, as it takes the wrapped number itself: no copy to the
    device, no sync). Beside a dimensioned tensor of its own category it keeps full
    precision (float64 / int64: the dimensioned tensor sets the dtype, the kernel reads
    the scalar in its compute type, exactly as for a wrapped number); beside only 0-d
    tensors it takes their dtype; of a higher category it takes torch's default."""
    for ref in args:
        if isinstance(ref, torch.Tensor):
            if _category(ref.dtype) == _category(value):  # (scalar_tensor: half of torch.tensor's host time)
                return torch.scalar_tensor(value, dtype=ref.dtype if ref.dim() == 0 else _WIDEST[_category(value)])
            break
    return torch.tensor(value)


_ENTRIES: dict[str, OpEntry] = {}


class Unsupported(NotImplementedError):
    """Raised by an op, before it changes anything, for a call its kernels do not cover
    (a complex or uint16 tensor, say): the op's wrapper hands the call to aten instead."""


def register(*names: str, autograd: bool = False, off_via: str | None = None) -> Callable[[Callable], Callable]:
    """Declare ``fn`` as flag_gems' implementation of the aten overloads ``names``.

    ``off_via``: while switched off, call that overload's aten kernel (its Tensor slots
    take Python numbers as CPU scalars) instead of the op's own, for an aten kernel that
    cannot run beneath Python kernels: one that re-dispatches with a *device* wrapped
    number, which torch cannot hand to a Python kernel (aten's pow.Scalar on CUDA)."""

    def deco(fn: Callable) -> Callable:
        for name in names:
            if name in _ENTRIES and _ENTRIES[name].fn is not fn:
                raise ValueError(f"aten op {name} registered twice ({_ENTRIES[name].fn.__qualname__}, {fn.__qualname__})")
            _ENTRIES[name] = OpEntry(name, fn, autograd, off_via=off_via, below=OpEntry(name, fn) if autograd else None)
        return fn

    return deco


_loaded = False


def load_ops() -> dict[str, OpEntry]:
    """Import every op family module of ``flag_gems.ops`` (each registers its ops)."""
    global _loaded
    if not _loaded:
        pkg = importlib.import_module(OP_MODULES_PACKAGE)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{OP_MODULES_PACKAGE}.{mod.name}")
        _loaded = True
    return _ENTRIES


def entries() -> dict[str, OpEntry]:
    return load_ops()


def aten_fallback(name: str) -> Callable[..., Any]:
    """Call the original aten kernel of ``name`` (for inputs a kernel does not cover; or
    aten's own op where flag_gems has not registered ``name``, e.g. nothing imported yet)."""
    entry = _ENTRIES.get(name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if entry is None or entry.original is None:
            return getattr(torch.ops.aten, name.split(".", 1)[0]).__getattr__(_overload(name))(*args, **kwargs)
        return entry.call_original(args, kwargs)

    return call


def _overload(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else "default"


# -- recording ------------------------------------------------------------------------
def _describe(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return {"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch."), "stride": list(a.stride())}
    if isinstance(a, (list, tuple)):
        return [_describe(x) for x in a]
    if isinstance(a, (int, float, bool, str)) or a is None:
        return a
    return str(a)


class Recorder:
    """Appends one JSON line per op call: op name, argument shapes and dtypes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a", buffering=1)

    def log(self, op: str, args: tuple, kwargs: dict) -> None:
        line = {"op": op, "args": _describe(args)}
        if kwargs:
            line["kwargs"] = {k: _describe(v) for k, v in kwargs.items()}
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()


# -- the installed state -------------------------------------------------------------
class _State:
    lib: torch.library.Library | None = None
    recorder: Recorder | None = None


STATE = _State()


# Depth of flag_gems op calls on this thread. aten ops called *inside* an op (allocation,
# a .contiguous(), the Triton interpreter's own tensor copies) go straight to aten: no
# wrapper overhead, and no recursion into flag_gems.
class _Depth(threading.local):
    inside = False  # (a class default: every thread starts outside, with no getattr default)


_local = _Depth()


def switched_on(name: str) -> Callable[[], bool]:
    """Whether the op ``name`` is on now (a cheap check for an op that serves a call only
    where another, whose kernel it launches, would: ``unused=`` naming that one leaves
    both to aten)."""
    entry = _ENTRIES[name]
    return lambda: entry.on


def as_from_outside(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` as if called from outside any flag_gems op: the aten ops it
    calls take flag_gems' kernels again. For an op that hands a case back to aten's
    composite of smaller ops (which flag_gems also serves)."""
    was = _local.inside
    _local.inside = False
    try:
        return fn(*args, **kwargs)
    finally:
        _local.inside = was


# An op served on the Autograd key runs before any tensor subclass or dispatch mode sees
# the call (they sit on the Python key, below Autograd): torch.compile's FakeTensors, a
# FunctionalTensor, a DTensor. Those calls take aten's composite, whose smaller ops reach
# the subclass (and, with real tensors, flag_gems' kernels); flag_gems' own launches need
# the memory of a plain tensor (or a Parameter) as their first argument. So do calls
# inside torch.func's transforms (grad, vjp, vmap): their tensors are functorch's wrappers
# there, and an autograd.Function cannot be applied from inside the Autograd key. And
# calls while a forward-mode AD level is open (torch.autograd.forward_ad.dual_level):
# flag_gems' entries compute no tangents, aten's composite does, op by op.
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_TRANSFORMS_ACTIVE = torch._C._are_functorch_transforms_active
_FORWARD_AD = torch.autograd.forward_ad  # its _current_level: the open dual level, -1 if none


def _wrap(entry: OpEntry) -> Callable[..., Any]:
    fn = entry.fn
    local = _local
    plain = _PLAIN if entry.autograd else None
    transforms, forward_ad = _TRANSFORMS_ACTIVE, _FORWARD_AD

    def impl(*args: Any, **kwargs: Any) -> Any:
        if entry.on and not local.inside and (
                plain is None or type(args[0]) in plain and not transforms() and forward_ad._current_level < 0):
            rec = STATE.recorder
            if rec is not None:
                rec.log(entry.name, args, kwargs)
            local.inside = True
            try:
                return fn(*args, **kwargs)
            except Unsupported:
                pass  # aten's kernel takes the call, below
            finally:
                local.inside = False
        return entry.call_original(args, kwargs)

    return impl


class _NoKernel:
    """Stands in for an aten kernel that did not exist on the key: off, aten's error."""

    def __init__(self, name: str, key: str) -> None:
        self.message = f"aten::{name} has no {key} kernel (flag_gems provides it only while enabled)"

    def call_boxed(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(self.message)


def _tensor_slots(name: str) -> tuple[tuple[int, str], ...]:
    schema = getattr(getattr(torch.ops.aten, name.split(".", 1)[0]), _overload(name))._schema
    return tuple(
        (1 << 30 if a.kwarg_only else i, a.name) for i, a in enumerate(schema.arguments) if isinstance(a.type, torch._C.TensorType)
    )


def _original_kernel(name: str, key: str) -> Any:
    try:
        return torch.library.get_kernel(f"aten::{name}", key)
    except RuntimeError:
        return _NoKernel(name, key)


def install() -> None:
    """Register every op's wrapper once (all switched off)."""
    if STATE.lib is not None:
        return
    key = runtime.dispatch_key()
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        for entry in _with_twins(load_ops().values()):
            op_key = f"Autograd{key}" if entry.autograd else key
            entry.on = False
            entry.keyset = torch._C.DispatchKeySet(op_key)
            entry.original = _original_kernel(entry.name, op_key)
            entry.tensor_slots = _tensor_slots(entry.name)
            lib.impl(entry.name, _wrap(entry), op_key)
    STATE.lib = lib


def _with_twins(entries: Iterable[OpEntry]) -> Iterator[OpEntry]:
    for entry in entries:
        yield entry
        if entry.below is not None:
            yield entry.below


def uninstall() -> None:
    if STATE.lib is not None:
        STATE.lib._destroy()
        STATE.lib = None
    for entry in _with_twins(_ENTRIES.values()):
        entry.on = False
        entry.original = None
    close_recorders()


def resolve_unused(unused: Iterable[str] | None) -> set[str]:
    """The overload names ``unused`` switches off; a name that matches none is an error."""
    if not unused:
        return set()
    if isinstance(unused, str):
        unused = [unused]
    ops = load_ops()
    off: set[str] = set()
    for raw in unused:
        name = raw.removeprefix("aten::")
        matched = {n for n in ops if n == name or ops[n].base == name or (name.endswith(".default") and n == name[:-8])}
        if not matched:
            raise ValueError(f"unused={raw!r} names no op flag_gems implements (examples: {', '.join(sorted(ops)[:8])}, ...)")
        off |= matched
    return off


def switch(on_names: set[str]) -> None:
    for name, entry in _ENTRIES.items():
        entry.on = name in on_names
        if entry.below is not None:
            entry.below.on = entry.on


def snapshot() -> tuple[frozenset[str], Recorder | None]:
    return frozenset(n for n, e in _ENTRIES.items() if e.on), STATE.recorder


def restore(snap: tuple[frozenset[str], Recorder | None]) -> None:
    on, recorder = snap
    if on:
        install()
    switch(set(on))
    STATE.recorder = recorder


# One open recorder per path for the process's life: nested scopes may share or restore
# one, so none is closed until disable().
_RECORDERS: dict[Path, Recorder] = {}


def recorder_for(path: Path) -> Recorder:
    path = Path(path).resolve()
    if path not in _RECORDERS:
        _RECORDERS[path] = Recorder(path)
    return _RECORDERS[path]


def set_recorder(rec: Recorder | None) -> None:
    STATE.recorder = rec


def close_recorders() -> None:
    STATE.recorder = None
    for rec in _RECORDERS.values():
        rec.close()
    _RECORDERS.clear()
