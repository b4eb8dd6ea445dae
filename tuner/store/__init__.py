"""Tuning stores: memory -> local DB -> remote tunerd, behind one ``TuningStore`` protocol."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from tuner.store.base import (
    Identity, LayeredStore, MemoryStore, Miss, Record, Timing, TuningStore, canonical_json,
)
from tuner.store.db import TuningDBError

__all__ = [
    "Identity", "LayeredStore", "MemoryStore", "Miss", "Record", "Timing", "TuningStore",
    "TuningDBError", "canonical_json", "default_store", "set_default_store", "using_store",
]

_default: LayeredStore | None = None
_lock = threading.Lock()


def build_default_store() -> LayeredStore:
    """Memory, then the local DB named by settings, then tunerd when
    ``FLAGGEMS_TUNERD_URL`` is set (a tunerd hit is copied into the local DB)."""
    from tuner import settings
    from tuner.store.sql import SQLStore

    layers: list[TuningStore] = [MemoryStore(), SQLStore()]
    s = settings.get()
    if s.tunerd_url:
        from tuner.store.remote import RemoteStore

        layers.append(RemoteStore(s.tunerd_url, s.tunerd_token, timeout_s=s.tunerd_timeout_s))
    return LayeredStore(layers)


def default_store() -> LayeredStore:
    """The process-wide store, opened (and migrated) on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = build_default_store()
    return _default


def set_default_store(store: LayeredStore | None) -> None:
    """Replace the process-wide store (``None``: reopen from settings on next use)."""
    global _default
    _default = store


@contextmanager
def using_store(store: LayeredStore) -> Iterator[LayeredStore]:
    """``store`` as the process-wide store inside the block; the previous one (opened or
    not: entering never opens the default DB) is put back on exit."""
    global _default
    old, _default = _default, store
    try:
        yield store
    finally:
        _default = old
