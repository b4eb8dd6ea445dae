"""Request and response bodies of the tunerd API (pydantic v2).

Every field a client sends is bounded: string lengths (within the column sizes), integer
ranges (within a 32-bit column), finite non-negative timings, keys that are canonical
JSON and configs that are flat JSON objects, so no request can store a row that breaks
a reader or fails in the database.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tuner.fingerprint import Fingerprint
from tuner.store.base import canonical_json

# Hard caps (the configured limits may only be lower).
HARD_MAX_BATCH = 10_000
# The unique btree indexes hold (kernel, kernel_hash, key, env_id[, config]); PostgreSQL
# refuses an index row over 2704 bytes (an incompressible value is stored as it is). With
# kernel <= 256 bytes, kernel_hash <= 64 bytes, env_id 32, a key <= 1536 and a timing's
# config <= 640 characters (both ASCII: canonical JSON), the widest row is ~2.6 KB, so every
# valid request can be stored on every backend instead of failing in the database.
MAX_KEY_CHARS = 1536
MAX_CONFIG_JSON_CHARS = 640
MAX_TEXT_CHARS = 4096
MAX_SPEC_CHARS = 16_384  # a pretune job's canonical JSON
MAX_CONFIG_ITEMS = 64
INT32_MAX = 2**31 - 1
MAX_MS = 1e9
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # for query parameters (PostgreSQL rejects NUL)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _utf8(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("must be valid UTF-8") from e
    return s


def _printable(s: str) -> str:
    """No control characters (PostgreSQL rejects NUL) and valid UTF-8 (no lone surrogates)."""
    if _CONTROL.search(s):
        raise ValueError("must not contain control characters")
    return _utf8(s)


def _text(s: str) -> str:
    """Free text (an error message, raw arguments): newlines and tabs allowed, no NUL."""
    if "\x00" in s:
        raise ValueError("must not contain NUL characters")
    return _utf8(s)


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
    if len(canonical_json(cfg)) > MAX_CONFIG_JSON_CHARS:
        raise ValueError(f"config is longer than {MAX_CONFIG_JSON_CHARS} characters as canonical JSON")
    return cfg


def _utc(dt: Optional[datetime]) -> Optional[datetime]:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _max_bytes(n: int):
    def check(s: str) -> str:
        if len(s.encode("utf-8")) > n:
            raise ValueError(f"must be at most {n} bytes as UTF-8")
        return s

    return check


def Name(max_length: int):  # noqa: N802 - a type factory
    """An indexed name: at most ``max_length`` characters and as many UTF-8 bytes."""
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_printable),
                     AfterValidator(_max_bytes(max_length))]


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


# -- distributed pretuning jobs ------------------------------------------------------------
JobStatus = Literal["queued", "running", "done", "failed"]
Dim = Annotated[int, Field(strict=True, ge=-(2**53), le=2**53)]
Shape = Annotated[list[Dim], Field(max_length=8)]
ShortText = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_printable)]
WorkerName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
JobId = Annotated[int, Field(ge=1, le=INT32_MAX)]


class JobSpecIn(Strict):
    """One op call of a workload, as ``tuner.workload.Job.as_dict()`` writes it. The server
    stores its canonical JSON, so the same call submitted by any client is one job."""

    op: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
    shapes: Annotated[list[Shape], Field(max_length=64)] = []
    dtype: ShortText = "bfloat16"
    args: Optional[dict[Annotated[str, Field(min_length=1, max_length=64)], Any]] = None
    dtypes: Optional[Annotated[list[ShortText], Field(max_length=64)]] = None
    strides: Optional[Annotated[list[Optional[Shape]], Field(max_length=64)]] = None

    def canonical(self) -> str:
        """``canonical_json(Job.as_dict())`` of the same job (empty args omitted)."""
        d: dict[str, Any] = {"op": self.op, "shapes": self.shapes, "dtype": self.dtype}
        if self.args:
            d["args"] = self.args
        if self.dtypes is not None:
            d["dtypes"] = self.dtypes
        if self.strides is not None:
            d["strides"] = self.strides
        return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def model_post_init(self, _context: Any) -> None:
        # Refuse here (422) what cannot be stored: NaN in args, absurd nesting, huge specs.
        try:
            text = self.canonical()
        except (ValueError, TypeError, RecursionError) as e:
            raise ValueError(f"job spec is not JSON-encodable: {e}") from e
        if len(text) > MAX_SPEC_CHARS:
            raise ValueError(f"job spec is longer than {MAX_SPEC_CHARS} characters as canonical JSON")


class JobSubmit(Strict):
    """A workload's jobs for one environment; a job already in the queue (any status) is
    counted in ``already`` and left as it is, unless ``requeue`` puts a finished one back."""

    fingerprint: FingerprintIn
    jobs: Annotated[list[JobSpecIn], Field(min_length=1, max_length=HARD_MAX_BATCH)]
    requeue: bool = False


class JobSubmitResponse(BaseModel):
    env_id: str
    submitted: int  # new jobs queued by this request
    already: int  # jobs of the request the queue already held
    requeued: int  # finished jobs put back in the queue (requeue=true)


class JobCounts(BaseModel):
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0


class JobOut(BaseModel):
    id: int
    env_id: str
    spec: dict[str, Any]
    status: str
    worker: Optional[str]
    attempts: int
    heartbeat_at: Optional[datetime]
    error: Optional[str]
    created_at: Optional[datetime]
    finished_at: Optional[datetime]


class JobClaim(Strict):
    fingerprint: FingerprintIn
    worker: WorkerName
    limit: Annotated[int, Field(ge=1, le=100)] = 1


class JobClaimResponse(BaseModel):
    jobs: list[JobOut]  # now running for the worker; empty: nothing claimable right now
    lease_s: float  # send a heartbeat well within this, or the job goes back to the queue
    counts: JobCounts  # of the environment, after the claim


class JobHeartbeat(Strict):
    worker: WorkerName


class JobFinish(Strict):
    worker: WorkerName
    ok: bool
    error: Optional[Text] = None


class JobPage(BaseModel):
    env_id: Optional[str]
    counts: JobCounts
    items: list[JobOut]
    next_after: Optional[int]


# -- bundles (export / import) -------------------------------------------------------------
class ImportResponse(BaseModel):
    policy: str
    records: int  # records in the bundle
    records_written: int
    timings_written: int
    misses_written: int
    verdicts: dict[str, int]  # against the stored rows: new, better, worse, equal, conflicting
    kernel_files_ignored: int  # Triton cache files travel with bundles, not into the DB


_checks: dict[str, TypeAdapter] = {
    "kernel": TypeAdapter(KernelName),
    "kernel_hash": TypeAdapter(KernelHash),
    "key": TypeAdapter(Key),
    "config": TypeAdapter(Config),
    "fingerprint": TypeAdapter(FingerprintIn),
    "text": TypeAdapter(Optional[Text]),
    "name": TypeAdapter(Annotated[str, Field(max_length=256), AfterValidator(_printable)]),
    "int32": TypeAdapter(Annotated[int, Field(ge=0, le=INT32_MAX)]),
}


def _check(kind: str, value: Any, where: str) -> None:
    try:
        _checks[kind].validate_python(value)
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{where}: {err.get('msg', 'invalid')}") from e


def check_bundle(data: Any) -> None:
    """Raise ``ValueError`` naming the first row of a (valid) bundle this server would not
    accept through its API: the same limits as ``RecordIn``/``MissIn``, so an import can
    neither fail in the database nor store a row a reader chokes on."""

    def identity(ident: Any, where: str) -> None:
        _check("kernel", ident.kernel, f"{where} kernel")
        _check("kernel_hash", ident.kernel_hash, f"{where} kernel_hash")
        _check("key", ident.key, f"{where} key")
        _check("fingerprint", ident.fingerprint.as_dict(), f"{where} environment")

    for n, rec in enumerate(data.records, 1):
        where = f"record {n} ({rec.identity.kernel[:100]})"
        identity(rec.identity, where)
        _check("config", rec.config, f"{where} config")
        _check("int32", rec.configs_tried, f"{where} configs_tried")
        for name in ("source", "host", "tool_version"):
            _check("name", getattr(rec, name), f"{where} {name}")
    for ts in data.timings.values():
        for t in ts:
            _check("config", t.config, "timing config")
            _check("text", t.error, "timing error")
    for n, m in enumerate(data.misses, 1):
        where = f"miss {n} ({m.identity.kernel[:100]})"
        identity(m.identity, where)
        _check("text", m.raw_args, f"{where} raw_args")
        _check("int32", m.count, f"{where} count")
