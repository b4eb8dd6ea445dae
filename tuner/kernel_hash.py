"""The version of a kernel: a hash of its Triton source, the sources of the jit functions
it calls (by global name, as ``module.helper`` or through a closure), the constants it
reads, and its config space.

An edited kernel, helper or config list gets a new hash, so stale rows are never served.
Works the same for compiled ``triton.jit`` functions and the Triton interpreter.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import types
from typing import Any, Iterable


def python_fn(obj: Any) -> types.FunctionType | None:
    """The Python function under a jit function (through wrappers such as heuristics)."""
    for _ in range(4):
        if isinstance(obj, types.FunctionType):
            return obj
        obj = getattr(obj, "fn", None)
    return None


def _is_jit(obj: Any) -> bool:
    return python_fn(obj) is not None and hasattr(obj, "arg_names")


def _source(fn: types.FunctionType) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return fn.__code__.co_code.hex()


def _names(code: types.CodeType) -> Iterable[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _is_triton(mod: str) -> bool:
    # Triton's own jit functions (tl.sum, ...) change only with Triton, whose version is
    # part of the environment fingerprint: no need to hash them.
    return mod == "triton" or mod.startswith("triton.")


def _walk(obj: Any, seen: dict[str, str]) -> None:
    fn = python_fn(obj)
    qualname = f"{fn.__module__}.{fn.__qualname__}"
    if qualname in seen:
        return
    seen[qualname] = _source(fn)
    names = sorted(set(_names(fn.__code__)))
    refs = [(name, fn.__globals__.get(name)) for name in names]
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:  # a jit function or constant a factory closed over
            refs.append((name, cell.cell_contents))
        except ValueError:  # an empty cell
            pass
    modules: dict[str, types.ModuleType] = {}
    for name, value in refs:
        if isinstance(value, types.ModuleType):
            if not _is_triton(value.__name__):
                modules[name] = value
        else:
            _visit(qualname, name, value, seen)
    # ``mod.helper(...)`` compiles to the names ``mod`` and ``helper``: look up every name
    # the code uses in every module it uses (and their submodules). Hashing a name that is
    # not really called there only costs a needless retune, never a stale row.
    done: set[str] = set()
    while modules:
        label, mod = modules.popitem()
        if mod.__name__ in done:
            continue
        done.add(mod.__name__)
        for name in names:
            value = getattr(mod, name, None)
            if isinstance(value, types.ModuleType):
                if not _is_triton(value.__name__):
                    modules[f"{label}.{name}"] = value
            else:
                _visit(qualname, f"{label}.{name}", value, seen)


def _visit(qualname: str, name: str, value: Any, seen: dict[str, str]) -> None:
    """Hash what one referenced name holds: a jit function's closure, or a constant."""
    if value is None:
        return
    if _is_jit(value):
        if not _is_triton(python_fn(value).__module__):
            _walk(value, seen)
    elif isinstance(value, (int, float, str, bool)):
        seen[f"{qualname}:{name}"] = repr(value)
    elif hasattr(value, "value") and type(value).__name__ == "constexpr":
        seen[f"{qualname}:{name}"] = repr(value.value)


def config_repr(config: Any) -> dict:
    """A plain dict of a ``triton.Config``: its kwargs and launch options."""
    out = dict(getattr(config, "kwargs", {}))
    for opt in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        value = getattr(config, opt, None)
        if value is not None:
            out[opt] = value
    return out


def _walk_host(fn: types.FunctionType, seen: dict[str, str]) -> None:
    """A host-side launcher: its source, the plain functions of its own module it calls,
    and the jit kernels and constants they name."""
    qualname = f"{fn.__module__}.{fn.__qualname__}"
    if qualname in seen:
        return
    seen[qualname] = _source(fn)
    for name in sorted(set(_names(fn.__code__))):
        value = fn.__globals__.get(name)
        if isinstance(value, types.FunctionType) and value.__module__ == fn.__module__:
            _walk_host(value, seen)
        else:
            _visit(qualname, name, value, seen)


def kernel_hash(kernel: Any, configs: Iterable[Any] = (), launcher: Any = None, objective: str | None = None) -> str:
    """sha256 of the kernel's source closure and config space (and of its config
    launcher's, when it has one, and the tuning objective, when given: a config chosen
    for another objective answers another question), hex, 32 chars."""
    sources: dict[str, str] = {}
    _walk(kernel, sources)
    if isinstance(launcher, types.FunctionType):
        _walk_host(launcher, sources)
    space = [config_repr(c) for c in configs]
    parts = {"src": sources, "configs": space}
    if objective is not None:
        parts["objective"] = objective
    blob = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
