"""The ``TuningStore`` protocol, the records it carries, and the in-memory and layered
stores. Layers are read in order (memory -> local DB -> remote); a hit in a lower layer
is copied into the layers above it; writes go through every layer."""
from __future__ import annotations

import json
import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from tuner.fingerprint import Fingerprint
from tuner.stats import bump

log = logging.getLogger(__name__)

TOOL_VERSION = "0.1.0"


def canonical_json(value: Any) -> str:
    """The one spelling of a key or config: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Identity:
    """What a record answers: a kernel version, a key and an environment."""

    kernel: str
    kernel_hash: str
    key: str  # canonical JSON
    fingerprint: Fingerprint

    @property
    def env_id(self) -> str:
        return self.fingerprint.env_id


@dataclass(frozen=True)
class Timing:
    config: dict
    median_ms: float | None  # None: the config failed to compile or run
    p20_ms: float | None = None
    p80_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Record:
    identity: Identity
    config: dict
    median_ms: float
    p20_ms: float
    p80_ms: float
    configs_tried: int
    source: str = "online"
    host: str = field(default_factory=socket.gethostname)
    tool_version: str = TOOL_VERSION
    created_at: datetime | None = None

    def with_identity(self, identity: Identity) -> "Record":
        return replace(self, identity=identity)


@dataclass(frozen=True)
class Miss:
    identity: Identity
    raw_args: str | None = None
    count: int = 1


@runtime_checkable
class TuningStore(Protocol):
    def lookup(self, ident: Identity) -> Record | None: ...

    def candidates(self, kernel: str, kernel_hash: str, fingerprint: Fingerprint) -> list[Record]:
        """Every record of one kernel version and environment (for nearest-key fallback)."""
        ...

    def save(self, record: Record, timings: Sequence[Timing] = ()) -> None: ...

    def record_miss(self, miss: Miss) -> None: ...


class MemoryStore:
    """A process-local dict of records; the top layer."""

    def __init__(self) -> None:
        self._records: dict[Identity, Record] = {}
        self._lock = threading.Lock()

    def lookup(self, ident: Identity) -> Record | None:
        return self._records.get(ident)

    def candidates(self, kernel: str, kernel_hash: str, fingerprint: Fingerprint) -> list[Record]:
        return [
            r for i, r in list(self._records.items())
            if i.kernel == kernel and i.kernel_hash == kernel_hash and i.fingerprint == fingerprint
        ]

    def save(self, record: Record, timings: Sequence[Timing] = ()) -> None:
        with self._lock:
            self._records[record.identity] = record

    def record_miss(self, miss: Miss) -> None:
        pass

    def clear(self) -> None:
        self._records.clear()


class LayeredStore:
    """Reads local-first, writes through, counts hits, misses and errors per layer.

    A failing layer (a remote that is down, a locked file) is counted and skipped, never
    raised into a kernel call.
    """

    def __init__(self, layers: Iterable[TuningStore]) -> None:
        self.layers: list[TuningStore] = list(layers)
        self.counters: Counter[str] = Counter()

    def _name(self, layer: TuningStore) -> str:
        return type(layer).__name__

    def _error(self, name: str) -> None:
        self.counters[f"{name}.errors"] += 1
        bump("store_errors")  # the process-wide count that ``tuner.stats()`` reports

    def lookup(self, ident: Identity) -> Record | None:
        for i, layer in enumerate(self.layers):
            name = self._name(layer)
            try:
                rec = layer.lookup(ident)
            except Exception as e:  # a broken layer must not break the kernel call
                self._error(name)
                log.warning("tuning store layer %s failed on lookup: %s", name, e)
                continue
            if rec is None:
                self.counters[f"{name}.misses"] += 1
                continue
            self.counters[f"{name}.hits"] += 1
            for upper in self.layers[:i]:
                self._try(upper, "save", rec)
            return rec
        return None

    def candidates(self, kernel: str, kernel_hash: str, fingerprint: Fingerprint) -> list[Record]:
        for layer in self.layers[1:] or self.layers:
            try:
                found = layer.candidates(kernel, kernel_hash, fingerprint)
            except Exception as e:
                self._error(self._name(layer))
                log.warning("tuning store layer %s failed on candidates: %s", self._name(layer), e)
                continue
            if found:
                return found
        return []

    def _try(self, layer: TuningStore, method: str, *args: Any) -> None:
        try:
            getattr(layer, method)(*args)
            self.counters[f"{self._name(layer)}.writes"] += 1
        except Exception as e:
            self._error(self._name(layer))
            log.warning("tuning store layer %s failed on %s: %s", self._name(layer), method, e)

    def save(self, record: Record, timings: Sequence[Timing] = ()) -> None:
        for layer in self.layers:
            self._try(layer, "save", record, timings)

    def record_miss(self, miss: Miss) -> None:
        for layer in self.layers:
            self._try(layer, "record_miss", miss)
