"""Reversible monkey patches that route other libraries' layers to flag_gems kernels.

    flag_gems.apply_gems_patches_to_vllm(verbose=True)   # flag_gems.patches.vllm
    flag_gems.apply_gems_patches_to_transformers()        # flag_gems.patches.transformers

Each target library gets one ``PatchSet``: applying twice patches once, ``revert()``
restores every original attribute exactly (the object that was there before).
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, Callable

log = logging.getLogger(__name__)

_MISSING = object()


class PatchSet:
    def __init__(self, library: str) -> None:
        self.library = library
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, original or _MISSING)

    @property
    def applied(self) -> bool:
        return bool(self._saved)

    def patch(self, owner: Any, attr: str, new: Callable, verbose: bool = False) -> None:
        original = owner.__dict__.get(attr, _MISSING) if hasattr(owner, "__dict__") else getattr(owner, attr, _MISSING)
        # what the replacement falls back to (an inherited method too); restored: the own entry
        new.__gems_original__ = getattr(owner, attr, None)  # type: ignore[attr-defined]
        setattr(owner, attr, new)
        self._saved.append((owner, attr, original))
        if verbose:
            log.info("Patched %s.%s with %s.%s", _name(owner), attr, new.__module__, new.__qualname__)

    def revert(self, verbose: bool = False) -> None:
        while self._saved:
            owner, attr, original = self._saved.pop()
            if original is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
            if verbose:
                log.info("Restored %s.%s", _name(owner), attr)


def _name(owner: Any) -> str:
    if isinstance(owner, ModuleType):
        return owner.__name__
    return f"{owner.__module__}.{owner.__qualname__}"


def import_or_raise(module: str, library: str, error: type[ImportError]) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise error(
            f"{library} is not installed (could not import {module}); install it to use flag_gems' {library} patches"
        ) from e
