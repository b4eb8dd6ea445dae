"""Request and response bodies of the tunerd API (pydantic v2).

Every field a client sends is bounded: string lengths (within the column sizes), integer
ranges (within a 32-bit column), finite non-negative timings, keys that are canonical
JSON and configs that are flat JSON objects, so no request can store a row that breaks
a reader or fails in the database.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tuner.fingerprint import Fingerprint
from tuner.store.base import canonical_json

# Hard caps (the configured limits may only be lower).
HARD_MAX_BATCH = 10_000
MAX_KEY_CHARS = 4096
MAX_TEXT_CHARS = 4096
MAX_CONFIG_ITEMS = 64
INT32_MAX = 2**31 - 1
MAX_MS = 1e9
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # for query parameters (PostgreSQL rejects NUL)


def _printable(s: str) -> str:
    """No control characters (PostgreSQL rejects NUL) and valid UTF-8 (no lone surrogates)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise ValueError("must not contain control characters")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("must be valid UTF-8") from e
    return s


def _text(s: str) -> str:
    """Free text (an error message, raw arguments): newlines and tabs allowed, no NUL."""
    if "\x00" in s:
        raise ValueError("must not contain NUL characters")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("must be valid UTF-8") from e
    return s


def _canonical_key(s: str) -> str:
    try:
        value = json.loads(s)
    except ValueError as e:
        raise ValueError("key must be JSON (the canonical JSON of the bucketed key values)") from e
    if not isinstance(value, list):
        raise ValueError("key must be a JSON list")
    if canonical_json(value) != s:
        raise ValueError("key must be canonical JSON (sorted keys, no spaces, ASCII)")
    return s


def _flat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    if len(cfg) > MAX_CONFIG_ITEMS:
        raise ValueError(f"config has more than {MAX_CONFIG_ITEMS} entries")
    for k, v in cfg.items():
        if not k or len(k) > 64:
            raise ValueError("config names must be 1..64 characters")
        _printable(k)
        if isinstance(v, str):
            if len(v) > 256:
                raise ValueError(f"config value {k!r} is longer than 256 characters")
            _printable(v)
        elif isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, int):
            if abs(v) > 2**53:
                raise ValueError(f"config value {k!r} is out of range")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"config value {k!r} must be finite")
        else:
            raise ValueError(f"config value {k!r} must be a number, string, boolean or null")
    return cfg


def _utc(dt: Optional[datetime]) -> Optional[datetime]:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def Name(max_length: int):  # noqa: N802 - a type factory
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_printable)]


KernelName = Name(256)
KernelHash = Name(64)
Key = Annotated[str, Field(min_length=2, max_length=MAX_KEY_CHARS), AfterValidator(_canonical_key)]
EnvId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]
Ms = Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]
Config = Annotated[
    dict[str, Optional[int | float | str | bool]],
    AfterValidator(_flat_config),
]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FingerprintIn(Strict):
    vendor: Annotated[str, Field(max_length=64), AfterValidator(_printable)]
    device_name: Annotated[str, Field(max_length=256), AfterValidator(_printable)]
    compute_capability: Annotated[str, Field(max_length=32), AfterValidator(_printable)]
    sm_count: Annotated[int, Field(ge=0, le=INT32_MAX)]
    triton_version: Annotated[str, Field(max_length=64), AfterValidator(_printable)]
    torch_version: Annotated[str, Field(max_length=64), AfterValidator(_printable)]

    def to_fingerprint(self) -> Fingerprint:
        return Fingerprint(**self.model_dump())

    @classmethod
    def of(cls, fp: Fingerprint) -> "FingerprintIn":
        return cls(**fp.as_dict())


class FingerprintOut(FingerprintIn):
    env_id: str


class LookupRequest(Strict):
    """Many keys of one kernel version on one environment."""

    kernel: KernelName
    kernel_hash: KernelHash
    fingerprint: FingerprintIn
    keys: Annotated[list[Key], Field(min_length=1, max_length=HARD_MAX_BATCH)]


class TimingIn(Strict):
    config: Config
    median_ms: Optional[Ms] = None  # None: the config failed to compile or run
    p20_ms: Optional[Ms] = None
    p80_ms: Optional[Ms] = None
    error: Optional[Text] = None


class RecordIn(Strict):
    kernel: KernelName
    kernel_hash: KernelHash
    key: Key
    fingerprint: FingerprintIn
    config: Config
    median_ms: Ms
    p20_ms: Ms
    p80_ms: Ms
    configs_tried: Annotated[int, Field(ge=1, le=INT32_MAX)]
    source: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")] = "online"
    host: Annotated[str, Field(max_length=256), AfterValidator(_printable)] = ""
    tool_version: Annotated[str, Field(max_length=64), AfterValidator(_printable)] = ""
    created_at: Annotated[Optional[datetime], AfterValidator(_utc)] = None
    timings: Annotated[list[TimingIn], Field(max_length=1024)] = []


class UpsertRequest(Strict):
    """Tuning results; for one identity the faster result (and its provenance) is kept."""

    records: Annotated[list[RecordIn], Field(min_length=1, max_length=HARD_MAX_BATCH)]


class UpsertResponse(BaseModel):
    received: int
    identities: int  # distinct (kernel, kernel_hash, key, env) among them


class RecordOut(BaseModel):
    id: int
    kernel: str
    kernel_hash: str
    key: str
    env_id: str
    fingerprint: FingerprintOut
    config: dict[str, Any]
    median_ms: float
    p20_ms: float
    p80_ms: float
    configs_tried: int
    source: str
    host: str
    tool_version: str
    created_at: Optional[datetime]


class LookupResponse(BaseModel):
    records: list[RecordOut]
    missing: list[str]  # the requested keys with no record


class RecordPage(BaseModel):
    items: list[RecordOut]
    next_after: Optional[int]  # pass as ``after`` for the next page; None: last page


class MissIn(Strict):
    kernel: KernelName
    kernel_hash: KernelHash
    key: Key
    fingerprint: FingerprintIn
    raw_args: Optional[Text] = None
    count: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class MissBatch(Strict):
    misses: Annotated[list[MissIn], Field(min_length=1, max_length=HARD_MAX_BATCH)]


class MissBatchResponse(BaseModel):
    received: int


class MissOut(BaseModel):
    id: int
    kernel: str
    kernel_hash: str
    key: str
    env_id: str
    fingerprint: FingerprintOut
    raw_args: Optional[str]
    count: int
    first_seen: Optional[datetime]
    last_seen: Optional[datetime]


class MissPage(BaseModel):
    items: list[MissOut]
    next_after: Optional[int]


class Stats(BaseModel):
    records: int
    timings: int
    misses: int
    kernels: int
    environments: int
    database: str  # the backend: sqlite | postgresql


class Health(BaseModel):
    status: str
