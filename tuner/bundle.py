"""Tuning bundles: portable, checksummed files of tuning records (``docs/bundle-format.md``).

A bundle is an uncompressed POSIX tar holding, in this order::

    manifest.json          format name and version, counts, sha256 and size of every member
    records.jsonl.gz       one tuning record per line (gzip'd JSON lines)
    timings.jsonl.gz       every config's timing of the exported records
    misses.jsonl.gz        keys that ran untuned (FLAGGEMS_AUTOTUNE=never)
    kernels/<dir>/<file>   optional: Triton compiled-kernel cache entries (--with-kernels)

``read_bundle`` validates everything (archive structure, format version, every member's
size and sha256, every row's schema and environment digest, the manifest's counts) before
it returns, and raises only ``BundleError``; nothing is written by reading. Writers of a DB
(import, merge) call it first, so a bad file changes nothing.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Annotated, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.fingerprint import Fingerprint
from tuner.store.base import TOOL_VERSION, Identity, Record, Timing, canonical_json

log = logging.getLogger(__name__)

FORMAT_NAME = "flaggems-tunedb-bundle"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
RECORDS = "records.jsonl.gz"
TIMINGS = "timings.jsonl.gz"
MISSES = "misses.jsonl.gz"
DATA_MEMBERS = (RECORDS, TIMINGS, MISSES)

MAX_BUNDLE_BYTES = 4 << 30  # a bundle larger than this is refused
MAX_MANIFEST_BYTES = 16 << 20
MAX_JSONL_BYTES = 2 << 30  # decompressed size of one data member
MAX_MEMBERS = 200_000

_KERNEL_MEMBER = re.compile(r"^kernels/([A-Za-z0-9_\-]{1,128})/([A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,254})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(Exception):
    """A file that is not a valid bundle this tool can read; one line, naming the file."""


# -- row schemas -------------------------------------------------------------------------
Str32 = Annotated[str, Field(max_length=32)]
Str64 = Annotated[str, Field(max_length=64)]
Str256 = Annotated[str, Field(max_length=256)]
NonEmpty256 = Annotated[str, Field(min_length=1, max_length=256)]
NonEmpty64 = Annotated[str, Field(min_length=1, max_length=64)]
Ms = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
ConfigValue = Union[bool, int, float, str, None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class EnvRow(_Strict):
    env_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    vendor: Str64
    device_name: Str256
    compute_capability: Str32
    sm_count: Annotated[int, Field(ge=0, le=1 << 31)]
    triton_version: Str64
    torch_version: Str64

    @model_validator(mode="after")
    def _digest_matches(self) -> "EnvRow":
        if self.fingerprint().env_id != self.env_id:
            raise ValueError("env_id is not the digest of the environment fields")
        return self

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(
            vendor=self.vendor, device_name=self.device_name, compute_capability=self.compute_capability,
            sm_count=self.sm_count, triton_version=self.triton_version, torch_version=self.torch_version,
        )


class _IdentityRow(_Strict):
    kernel: NonEmpty256
    kernel_hash: NonEmpty64
    key: Annotated[str, Field(min_length=2, max_length=1 << 16)]
    env: EnvRow

    @field_validator("key")
    @classmethod
    def _key_is_json_list(cls, v: str) -> str:
        try:
            parsed = json.loads(v)
        except ValueError as e:
            raise ValueError("key is not JSON") from e
        if not isinstance(parsed, list):
            raise ValueError("key is not a JSON list")
        return v

    def identity(self) -> Identity:
        return Identity(self.kernel, self.kernel_hash, self.key, self.env.fingerprint())


class RecordRow(_IdentityRow):
    config: dict[Annotated[str, Field(min_length=1, max_length=128)], ConfigValue]
    median_ms: Ms
    p20_ms: Ms
    p80_ms: Ms
    configs_tried: Annotated[int, Field(ge=0)]
    source: Str32
    host: Str256
    tool_version: Str64
    created_at: datetime


class TimingRow(_IdentityRow):
    config: dict[Annotated[str, Field(min_length=1, max_length=128)], ConfigValue]
    median_ms: Optional[Ms]
    p20_ms: Optional[Ms]
    p80_ms: Optional[Ms]
    error: Optional[Annotated[str, Field(max_length=1 << 16)]]


class MissRow(_IdentityRow):
    raw_args: Optional[Annotated[str, Field(max_length=1 << 16)]]
    count: Annotated[int, Field(ge=1)]
    first_seen: datetime
    last_seen: datetime


class FileEntry(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0)]


class Counts(_Strict):
    records: Annotated[int, Field(ge=0)]
    timings: Annotated[int, Field(ge=0)]
    misses: Annotated[int, Field(ge=0)]
    kernel_files: Annotated[int, Field(ge=0)]


class Manifest(_Strict):
    format: Literal["flaggems-tunedb-bundle"]
    format_version: Literal[1]
    created_at: datetime
    tool_version: Str64
    host: Str256
    filters: dict[Annotated[str, Field(max_length=64)], Optional[Annotated[str, Field(max_length=1024)]]]
    counts: Counts
    files: dict[str, FileEntry]


# -- in-memory bundle content ------------------------------------------------------------
@dataclass(frozen=True)
class MissEntry:
    identity: Identity
    raw_args: str | None
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass
class BundleData:
    """What a bundle carries. ``timings`` is keyed by ``ident_key`` of a record."""

    records: list[Record] = field(default_factory=list)
    timings: dict[tuple, list[Timing]] = field(default_factory=dict)
    misses: list[MissEntry] = field(default_factory=list)
    kernel_files: dict[str, bytes] = field(default_factory=dict)  # "kernels/<dir>/<file>" -> bytes
    manifest: Manifest | None = None

    @property
    def n_timings(self) -> int:
        return sum(len(v) for v in self.timings.values())


def ident_key(ident: Identity) -> tuple[str, str, str, str]:
    return (ident.kernel, ident.kernel_hash, ident.key, ident.env_id)


def utc(dt: datetime | None) -> datetime:
    """Aware UTC; a naive datetime (SQLite gives those back) is taken as UTC."""
    if dt is None:
        return datetime.now(timezone.utc)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _iso(dt: datetime | None) -> str:
    return utc(dt).isoformat()


def _env_row(fp: Fingerprint) -> dict[str, Any]:
    return {"env_id": fp.env_id, **fp.as_dict()}


def _ident_row(ident: Identity) -> dict[str, Any]:
    return {"kernel": ident.kernel, "kernel_hash": ident.kernel_hash, "key": ident.key, "env": _env_row(ident.fingerprint)}


def record_row(rec: Record) -> dict[str, Any]:
    return {
        **_ident_row(rec.identity),
        "config": rec.config, "median_ms": rec.median_ms, "p20_ms": rec.p20_ms, "p80_ms": rec.p80_ms,
        "configs_tried": rec.configs_tried, "source": rec.source, "host": rec.host,
        "tool_version": rec.tool_version, "created_at": _iso(rec.created_at),
    }


def timing_row(ident: Identity, t: Timing) -> dict[str, Any]:
    return {
        **_ident_row(ident), "config": t.config, "median_ms": t.median_ms, "p20_ms": t.p20_ms,
        "p80_ms": t.p80_ms, "error": t.error,
    }


def miss_row(m: MissEntry) -> dict[str, Any]:
    return {
        **_ident_row(m.identity), "raw_args": m.raw_args, "count": m.count,
        "first_seen": _iso(m.first_seen), "last_seen": _iso(m.last_seen),
    }


def _record_from_row(r: RecordRow) -> Record:
    return Record(
        identity=r.identity(), config=dict(r.config), median_ms=r.median_ms, p20_ms=r.p20_ms,
        p80_ms=r.p80_ms, configs_tried=r.configs_tried, source=r.source, host=r.host,
        tool_version=r.tool_version, created_at=utc(r.created_at),
    )


def normalized(rec: Record) -> Record:
    """The record as it reads back from any DB or bundle (created_at aware UTC)."""
    from dataclasses import replace

    return replace(rec, created_at=utc(rec.created_at))


# -- writing -----------------------------------------------------------------------------
def _jsonl_gz(rows: Iterable[dict[str, Any]]) -> tuple[bytes, int]:
    lines = [json.dumps(r, sort_keys=True, separators=(",", ":"), allow_nan=False) for r in rows]
    lines.sort()
    text = "".join(line + "\n" for line in lines)
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0), len(lines)


def bundle_bytes(data: BundleData, *, filters: dict[str, str | None] | None = None, created_at: datetime | None = None) -> bytes:
    """The bytes of a bundle of ``data`` (rows sorted, so equal content gives equal members)."""
    created = utc(created_at)
    records, n_rec = _jsonl_gz(record_row(r) for r in data.records)
    by_ident = {ident_key(r.identity): r.identity for r in data.records}
    timing_rows = [timing_row(by_ident[k], t) for k, ts in data.timings.items() if k in by_ident for t in ts]
    timings, n_tim = _jsonl_gz(timing_rows)
    misses, n_mis = _jsonl_gz(miss_row(m) for m in data.misses)
    members: list[tuple[str, bytes]] = [(RECORDS, records), (TIMINGS, timings), (MISSES, misses)]
    for name in sorted(data.kernel_files):
        if not _KERNEL_MEMBER.match(name):
            raise BundleError(f"refusing to pack kernel cache file with an unsafe name: {name!r}")
        members.append((name, data.kernel_files[name]))
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_at": created.isoformat(),
        "tool_version": TOOL_VERSION,
        "host": _hostname(),
        "filters": dict(filters or {}),
        "counts": {"records": n_rec, "timings": n_tim, "misses": n_mis, "kernel_files": len(data.kernel_files)},
        "files": {name: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for name, b in members},
    }
    buf = io.BytesIO()
    mtime = int(created.timestamp())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, blob in [(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())] + members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(blob), mtime, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _hostname() -> str:
    import socket

    return socket.gethostname()[:256]


def write_bundle(path: str | Path, data: BundleData, *, filters: dict[str, str | None] | None = None) -> Path:
    """Write atomically: a partly written bundle never appears under ``path``."""
    path = Path(path)
    blob = bundle_bytes(data, filters=filters)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    return path


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


# -- reading -----------------------------------------------------------------------------
def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "row"
    return f"{loc}: {err.get('msg', 'invalid')}"


def _gunzip(blob: bytes, name: str, label: str) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(blob, MAX_JSONL_BYTES + 1)
    except zlib.error as e:
        raise BundleError(f"{label}: {name} is not valid gzip data ({e})") from e
    if len(out) > MAX_JSONL_BYTES:
        raise BundleError(f"{label}: {name} decompresses to more than {MAX_JSONL_BYTES} bytes")
    if not d.eof or d.unused_data:
        raise BundleError(f"{label}: {name} is a truncated or padded gzip stream")
    return out


def _rows(blob: bytes, name: str, model: type[_Strict], label: str) -> list[Any]:
    text = _gunzip(blob, name, label)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{label}: {name} is not UTF-8") from e
    rows = []
    lines = decoded.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        try:
            rows.append(model.model_validate_json(line))
        except ValidationError as e:
            raise BundleError(f"{label}: {name} line {n}: {_first_error(e)}") from e
    return rows


def _check_manifest_header(raw: Any, label: str) -> None:
    if not isinstance(raw, dict):
        raise BundleError(f"{label}: manifest.json is not a JSON object")
    if raw.get("format") != FORMAT_NAME:
        raise BundleError(f"{label}: not a flag_gems tuning bundle (manifest format is {str(raw.get('format'))[:64]!r})")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{label}: manifest has an invalid format_version {str(version)[:32]!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{label}: bundle format version {version} is newer than this gems-tunedb reads "
            f"(up to {FORMAT_VERSION}); upgrade flag_gems to import it"
        )


def _members(blob: bytes, label: str) -> list[tuple[str, bytes]]:
    """Every member of the tar, in order, refusing anything but safe regular files and a
    properly terminated archive (a truncated file fails here or on its checksums)."""
    out: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
            while True:
                m = tf.next()
                if m is None:
                    break
                if len(out) >= MAX_MEMBERS:
                    raise BundleError(f"{label}: more than {MAX_MEMBERS} members")
                name = m.name
                if not m.isreg():
                    raise BundleError(f"{label}: member {name[:200]!r} is not a regular file")
                if name not in (MANIFEST, *DATA_MEMBERS) and not _KERNEL_MEMBER.match(name):
                    raise BundleError(f"{label}: unexpected member {name[:200]!r}")
                if name in seen:
                    raise BundleError(f"{label}: member {name!r} appears twice")
                seen.add(name)
                f = tf.extractfile(m)
                if f is None:
                    raise BundleError(f"{label}: member {name!r} cannot be read")
                data = f.read()
                if len(data) != m.size:
                    raise BundleError(f"{label}: member {name!r} is truncated")
                out.append((name, data))
            end = tf.offset
    except tarfile.TarError as e:
        raise BundleError(f"{label}: not a readable bundle archive ({e})") from e
    except (EOFError, zlib.error, UnicodeError, ValueError, OverflowError) as e:
        raise BundleError(f"{label}: not a readable bundle archive ({type(e).__name__}: {e})") from e
    trailer = blob[end:]
    if len(trailer) < 2 * tarfile.BLOCKSIZE or trailer.count(0) != len(trailer) or len(blob) % tarfile.RECORDSIZE:
        raise BundleError(f"{label}: archive is truncated or has trailing data")
    return out


def read_bundle_bytes(blob: bytes, label: str = "bundle") -> BundleData:
    if len(blob) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{label}: larger than {MAX_BUNDLE_BYTES} bytes")
    if len(blob) < tarfile.BLOCKSIZE:
        raise BundleError(f"{label}: not a bundle (too short: {len(blob)} bytes)")
    members = _members(blob, label)
    if not members or members[0][0] != MANIFEST:
        raise BundleError(f"{label}: not a bundle (first member is not {MANIFEST})")
    manifest_blob = members[0][1]
    if len(manifest_blob) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{label}: manifest.json is too large")
    try:
        raw = json.loads(manifest_blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{label}: manifest.json is not valid JSON") from e
    _check_manifest_header(raw, label)
    try:
        manifest = Manifest.model_validate_json(manifest_blob)
    except ValidationError as e:
        raise BundleError(f"{label}: invalid manifest: {_first_error(e)}") from e

    files = {name: data for name, data in members[1:]}
    listed, present = set(manifest.files), set(files)
    if listed != present:
        missing, extra = sorted(listed - present), sorted(present - listed)
        what = "; ".join(
            s for s in (f"missing {', '.join(missing[:3])}" if missing else "", f"not listed {', '.join(extra[:3])}" if extra else "") if s
        )
        raise BundleError(f"{label}: manifest does not match the members ({what})")
    for name in DATA_MEMBERS:
        if name not in files:
            raise BundleError(f"{label}: manifest does not match the members (missing {name})")
    for name, data in files.items():
        entry = manifest.files[name]
        if entry.size != len(data):
            raise BundleError(f"{label}: {name} is {len(data)} bytes, the manifest says {entry.size} (truncated or tampered)")
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise BundleError(f"{label}: sha256 of {name} does not match the manifest (corrupted or tampered)")

    rec_rows = _rows(files[RECORDS], RECORDS, RecordRow, label)
    tim_rows = _rows(files[TIMINGS], TIMINGS, TimingRow, label)
    mis_rows = _rows(files[MISSES], MISSES, MissRow, label)
    kernel_files = {n: d for n, d in files.items() if n.startswith("kernels/")}
    got = {"records": len(rec_rows), "timings": len(tim_rows), "misses": len(mis_rows), "kernel_files": len(kernel_files)}
    want = manifest.counts.model_dump()
    if got != want:
        diff = ", ".join(f"{k} {got[k]} (manifest {want[k]})" for k in got if got[k] != want[k])
        raise BundleError(f"{label}: counts do not match the manifest: {diff}")

    data = BundleData(manifest=manifest, kernel_files=kernel_files)
    seen: set[tuple] = set()
    for r in rec_rows:
        rec = _record_from_row(r)
        k = ident_key(rec.identity)
        if k in seen:
            raise BundleError(f"{label}: {RECORDS} holds two records of {rec.identity.kernel} key {rec.identity.key}")
        seen.add(k)
        data.records.append(rec)
    timing_seen: set[tuple] = set()
    for t in tim_rows:
        ident = t.identity()
        k = ident_key(ident)
        if k not in seen:
            raise BundleError(f"{label}: {TIMINGS} has a timing of {ident.kernel} key {ident.key} without its record")
        tk = (k, canonical_json(dict(t.config)))
        if tk in timing_seen:
            raise BundleError(f"{label}: {TIMINGS} holds a config of {ident.kernel} key {ident.key} twice")
        timing_seen.add(tk)
        data.timings.setdefault(k, []).append(Timing(dict(t.config), t.median_ms, t.p20_ms, t.p80_ms, t.error))
    miss_seen: set[tuple] = set()
    for m in mis_rows:
        ident = m.identity()
        k = ident_key(ident)
        if k in miss_seen:
            raise BundleError(f"{label}: {MISSES} holds {ident.kernel} key {ident.key} twice")
        miss_seen.add(k)
        data.misses.append(MissEntry(ident, m.raw_args, m.count, utc(m.first_seen), utc(m.last_seen)))
    return data


def read_bundle(path: str | Path) -> BundleData:
    """Read and validate a whole bundle; raises only ``BundleError``."""
    label = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{label}: larger than {MAX_BUNDLE_BYTES} bytes")
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise BundleError(f"{label}: cannot read: {e.strerror or e}") from e
    return read_bundle_bytes(blob, label)


def looks_like_bundle(path: str | Path) -> bool:
    """A cheap sniff (tar magic at offset 257) to tell bundles from SQLite files."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return len(head) == 512 and head[257:262] == b"ustar"


# -- merging (commutative under ``faster`` and ``newer``) ------------------------------------
def _finite(x: float | None) -> float:
    return x if x is not None and not math.isnan(x) else math.inf


def record_order(rec: Record) -> tuple:
    """The total order ``faster`` picks the least of: median, then p20, p80, and, for
    exact timing ties, the canonical JSON of every other field. Two records that compare
    equal are the same record, so the pick does not depend on input order."""
    return (
        _finite(rec.median_ms), _finite(rec.p20_ms), _finite(rec.p80_ms),
        canonical_json(record_row(rec)),
    )


def newer_order(rec: Record) -> tuple:
    """``newer`` picks the least: latest created_at first, then as ``faster``."""
    return (-utc(rec.created_at).timestamp(), *record_order(rec))


def timing_order(t: Timing) -> tuple:
    return (_finite(t.median_ms), _finite(t.p20_ms), _finite(t.p80_ms), canonical_json([t.config, t.error]))


def merge_data(inputs: list[BundleData], policy: str = "faster") -> BundleData:
    """Merge bundles: per identity one record chosen by ``policy``.

    faster/newer: the least under ``record_order``/``newer_order`` (commutative);
    keep: the first input's record stays; replace: the last input's record wins.
    Timings travel with the winning record (from every input holding that exact record);
    misses are unioned (max count, earliest first_seen, latest last_seen) and dropped
    where a record exists; kernel cache files are unioned (same path: smallest sha256).
    """
    if policy not in ("faster", "newer", "keep", "replace"):
        raise ValueError(f"unknown merge policy {policy!r}")
    chosen: dict[tuple, Record] = {}
    for data in inputs:
        for rec in data.records:
            rec = normalized(rec)
            k = ident_key(rec.identity)
            old = chosen.get(k)
            if old is None or policy == "replace":
                chosen[k] = rec
            elif policy == "faster" and record_order(rec) < record_order(old):
                chosen[k] = rec
            elif policy == "newer" and newer_order(rec) < newer_order(old):
                chosen[k] = rec
    out = BundleData()
    out.records = [chosen[k] for k in sorted(chosen)]
    for k, winner in chosen.items():
        row = canonical_json(record_row(winner))
        per_config: dict[str, Timing] = {}
        for data in inputs:
            src = next((r for r in data.records if ident_key(r.identity) == k), None) if k in data.timings else None
            if src is None or canonical_json(record_row(normalized(src))) != row:
                continue
            for t in data.timings[k]:
                ck = canonical_json(t.config)
                if ck not in per_config or timing_order(t) < timing_order(per_config[ck]):
                    per_config[ck] = t
        if per_config:
            out.timings[k] = [per_config[c] for c in sorted(per_config)]
    misses: dict[tuple, MissEntry] = {}
    for data in inputs:
        for m in data.misses:
            k = ident_key(m.identity)
            if k in chosen:
                continue
            old = misses.get(k)
            if old is None:
                misses[k] = m
                continue
            raw = min((x for x in (old.raw_args, m.raw_args) if x is not None), default=None)
            misses[k] = MissEntry(
                old.identity, raw, max(old.count, m.count), min(utc(old.first_seen), utc(m.first_seen)),
                max(utc(old.last_seen), utc(m.last_seen)),
            )
    out.misses = [misses[k] for k in sorted(misses)]
    for data in inputs:
        for name, blob in data.kernel_files.items():
            old_blob = out.kernel_files.get(name)
            if old_blob is None or hashlib.sha256(blob).hexdigest() < hashlib.sha256(old_blob).hexdigest():
                out.kernel_files[name] = blob
    return out


# -- Triton compiled-kernel cache ----------------------------------------------------------
def triton_cache_dir() -> Path:
    """``TRITON_CACHE_DIR``, else ``$TRITON_HOME/.triton/cache`` (Triton's own default)."""
    env = os.environ.get("TRITON_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("TRITON_HOME") or Path.home()) / ".triton" / "cache"


_SUPPORT_FILES = ("__triton_launcher.so", "cuda_utils.so", "hip_utils.so")


def kernel_function_name(kernel: str) -> str:
    """The Triton function name of a record's kernel: the last dotted component of its
    qualified name, without the ``:variant`` suffix of tuners that share one function
    (``pkg.softmax._softmax_fwd_kernel:rows`` -> ``_softmax_fwd_kernel``)."""
    return kernel.split(":", 1)[0].rsplit(".", 1)[-1]


def collect_kernel_files(kernel_names: Iterable[str], cache_dir: Path | None = None) -> dict[str, bytes]:
    """The Triton cache entries of these kernels, as bundle members.

    Triton keys a cache dir by a hash that needs the compile-time specialization to
    recompute, so the pick is by name: every cache dir holding a metadata JSON whose
    ``name`` is the function name of an exported kernel (``kernel_function_name``), all
    files of it; plus the dirs of the compiled launcher stubs (``__triton_launcher.so``,
    ``cuda_utils.so``), which a first call also needs.
    """
    cache_dir = cache_dir or triton_cache_dir()
    fn_names = {kernel_function_name(k) for k in kernel_names}
    out: dict[str, bytes] = {}
    if not cache_dir.is_dir():
        return out
    for d in sorted(cache_dir.iterdir()):
        if not d.is_dir() or d.is_symlink() or not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", d.name):
            continue
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink())
        names = {p.name for p in files}
        wanted = bool(names) and names <= set(_SUPPORT_FILES)
        if not wanted:
            for p in files:
                if p.suffix != ".json" or p.name.startswith("__grp__"):
                    continue
                try:
                    meta = json.loads(p.read_text())
                except (OSError, ValueError, UnicodeDecodeError):
                    continue
                if isinstance(meta, dict) and meta.get("name") in fn_names:
                    wanted = True
                    break
        if not wanted:
            continue
        for p in files:
            member = f"kernels/{d.name}/{p.name}"
            if _KERNEL_MEMBER.match(member):
                out[member] = p.read_bytes()
    return out


@dataclass
class KernelInstall:
    installed: list[str] = field(default_factory=list)  # cache dirs written
    skipped: list[str] = field(default_factory=list)  # already present: left as they are


def install_kernel_files(files: dict[str, bytes], cache_dir: Path | None = None, *, dry_run: bool = False) -> KernelInstall:
    """Unpack kernel cache entries; a cache dir that exists already is never touched.

    Each dir is written to a temporary dir beside it and renamed into place, so a
    concurrent Triton process sees a whole entry or none. Triton's group files
    (``__grp__*.json``) hold absolute paths; they are rewritten to this cache dir.
    """
    cache_dir = cache_dir or triton_cache_dir()
    by_dir: dict[str, dict[str, bytes]] = {}
    for name, blob in files.items():
        m = _KERNEL_MEMBER.match(name)
        if not m:
            raise BundleError(f"unsafe kernel cache member {name!r}")
        by_dir.setdefault(m.group(1), {})[m.group(2)] = blob
    result = KernelInstall()
    for dname in sorted(by_dir):
        final = cache_dir / dname
        if final.exists():
            result.skipped.append(dname)
            continue
        if dry_run:
            result.installed.append(dname)
            continue
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dname}.", dir=cache_dir))
        try:
            for fname, blob in by_dir[dname].items():
                if fname.startswith("__grp__") and fname.endswith(".json"):
                    blob = _rewrite_group(blob, final)
                (tmp / fname).write_bytes(blob)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():  # another process installed it meanwhile
                    result.skipped.append(dname)
                    continue
                raise
            result.installed.append(dname)
        finally:
            if tmp.exists():
                for p in tmp.iterdir():
                    p.unlink()
                tmp.rmdir()
    return result


def _rewrite_group(blob: bytes, final: Path) -> bytes:
    try:
        grp = json.loads(blob)
        child = grp["child_paths"]
        grp["child_paths"] = {c: str(final / Path(str(p)).name) for c, p in child.items()}
        return json.dumps(grp).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return blob  # Triton treats an unreadable group as a cache miss


# -- tuning DBs ---------------------------------------------------------------------------
def device_label(fp: Fingerprint) -> str:
    return fp.device_slug or fp.vendor


def device_matches(fp: Fingerprint, spec: str) -> bool:
    """``--device``: a device slug, a case-insensitive substring of the slug or device
    name, or a prefix of the env_id."""
    s = spec.strip().lower()
    return bool(s) and (s in fp.device_slug or s in fp.device_name.lower() or fp.env_id.startswith(s))


def load_store(store: Any, *, device: str | None = None, kernel: str | None = None, with_misses: bool = True) -> BundleData:
    """The records of a DB (``tuner.store.sql.SQLStore``), their timings and the misses,
    filtered by device and kernel."""
    from sqlalchemy import select

    from tuner.store.models import ConfigTiming, TuningMiss
    from tuner.store.sql import row_fingerprint

    def keep(fp: Fingerprint) -> bool:
        return device is None or device_matches(fp, device)

    data = BundleData()
    data.records = [normalized(r) for r in store.records(kernel=kernel) if keep(r.identity.fingerprint)]
    wanted = {ident_key(r.identity) for r in data.records}
    with store.session() as s:
        q = select(ConfigTiming).order_by(ConfigTiming.id)
        if kernel is not None:
            q = q.where(ConfigTiming.kernel == kernel)
        for t in s.scalars(q):
            k = (t.kernel, t.kernel_hash, t.key, t.env_id)
            if k in wanted:
                data.timings.setdefault(k, []).append(Timing(json.loads(t.config), t.median_ms, t.p20_ms, t.p80_ms, t.error))
        if with_misses:
            q = select(TuningMiss).order_by(TuningMiss.id)
            if kernel is not None:
                q = q.where(TuningMiss.kernel == kernel)
            for m in s.scalars(q):
                fp = row_fingerprint(m)
                if keep(fp):
                    ident = Identity(m.kernel, m.kernel_hash, m.key, fp)
                    data.misses.append(MissEntry(ident, m.raw_args, max(1, m.count or 1), utc(m.first_seen), utc(m.last_seen)))
    return data


VERDICTS = ("new", "better", "worse", "equal", "conflicting")


def verdict(incoming: Record, stored: Record | None) -> str:
    """new: no stored row; equal: same config and median; better/worse: lower/higher
    median; conflicting: the same median but another config (timing cannot decide)."""
    if stored is None:
        return "new"
    if incoming.median_ms < stored.median_ms:
        return "better"
    if incoming.median_ms > stored.median_ms:
        return "worse"
    return "equal" if canonical_json(incoming.config) == canonical_json(stored.config) else "conflicting"


def accepts(policy: str, incoming: Record, stored: Record | None) -> bool:
    """Whether ``upsert_records(policy)`` writes ``incoming`` over ``stored`` (same rule)."""
    if stored is None or policy == "replace":
        return True
    if policy == "faster":
        return incoming.median_ms < stored.median_ms
    if policy == "newer":
        return utc(incoming.created_at) > utc(stored.created_at)
    return False  # keep


@dataclass
class ImportReport:
    policy: str
    dry_run: bool
    records: int = 0
    this_env: int = 0
    other_envs: dict[str, int] = field(default_factory=dict)  # device label (env id) -> records
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    records_written: int = 0
    timings_written: int = 0
    misses_written: int = 0
    kernels: KernelInstall | None = None

    def lines(self) -> list[str]:
        head = "would write" if self.dry_run else "wrote"
        out = [
            f"records in bundle: {self.records} ({self.this_env} for this machine's environment, "
            f"{self.records - self.this_env} for other environments)",
        ]
        for label, n in sorted(self.other_envs.items()):
            out.append(f"  other environment {label}: {n}")
        out.append("against the target DB: " + ", ".join(f"{v} {self.verdicts[v]}" for v in VERDICTS))
        out.append(
            f"policy {self.policy}: {head} {self.records_written} records, {self.timings_written} timings, "
            f"{self.misses_written} misses"
        )
        if self.kernels is not None:
            out.append(
                f"kernel cache: {head} {len(self.kernels.installed)} entries, "
                f"{len(self.kernels.skipped)} already present (left as they are)"
            )
        return out


def _upsert_misses(session: Any, engine: Any, misses: list[MissEntry]) -> None:
    from sqlalchemy import case

    from tuner.store.models import TuningMiss
    from tuner.store.sql import _insert, fingerprint_columns

    if not misses:
        return
    table = TuningMiss.__table__
    values = [
        {
            "kernel": m.identity.kernel, "kernel_hash": m.identity.kernel_hash, "key": m.identity.key,
            **fingerprint_columns(m.identity.fingerprint), "raw_args": m.raw_args, "count": m.count,
            "first_seen": utc(m.first_seen), "last_seen": utc(m.last_seen),
        }
        for m in misses
    ]
    stmt = _insert(engine, table).values(values)
    c, x = table.c, stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=["kernel", "kernel_hash", "key", "env_id"],
        set_={
            "count": case((x["count"] > c["count"], x["count"]), else_=c["count"]),
            "first_seen": case((x.first_seen < c.first_seen, x.first_seen), else_=c.first_seen),
            "last_seen": case((x.last_seen > c.last_seen, x.last_seen), else_=c.last_seen),
        },
    )
    session.execute(stmt)


def _chunks(seq: list, n: int = 500) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def import_into_store(store: Any, data: BundleData, *, policy: str = "faster", dry_run: bool = False,
                      here: Fingerprint | None = None) -> ImportReport:
    """Write a validated bundle into a DB in one transaction under its writer lock.

    A record is written where ``accepts(policy, ...)``; its timings go with it and its
    miss row is cleared. Misses are merged (max count) unless the key has a record.
    ``dry_run`` computes the same report and writes nothing.
    """
    from tuner.store.sql import POLICIES, record_values, timing_values, upsert_records, upsert_timings

    if policy not in POLICIES:
        raise ValueError(f"unknown import policy {policy!r}; use one of {POLICIES}")
    if here is None:
        from tuner.fingerprint import current

        here = current()
    report = ImportReport(policy=policy, dry_run=dry_run, records=len(data.records))
    for rec in data.records:
        fp = rec.identity.fingerprint
        if fp.env_id == here.env_id:
            report.this_env += 1
        else:
            label = f"{device_label(fp)} triton {fp.triton_version} torch {fp.torch_version} ({fp.env_id[:8]})"
            report.other_envs[label] = report.other_envs.get(label, 0) + 1

    def plan() -> tuple[list[Record], list[MissEntry]]:
        stored: dict[tuple, Record] = {}
        if store is not None:
            for kernel in sorted({r.identity.kernel for r in data.records} | {m.identity.kernel for m in data.misses}):
                for r in store.records(kernel=kernel):
                    stored[ident_key(r.identity)] = r
        accepted = []
        for rec in data.records:
            old = stored.get(ident_key(rec.identity))
            report.verdicts[verdict(rec, old)] += 1
            if accepts(policy, rec, old):
                accepted.append(rec)
        have = set(stored) | {ident_key(r.identity) for r in data.records}
        misses = [m for m in data.misses if ident_key(m.identity) not in have]
        report.records_written = len(accepted)
        report.timings_written = sum(len(data.timings.get(ident_key(r.identity), ())) for r in accepted)
        report.misses_written = len(misses)
        return accepted, misses

    if dry_run:
        plan()
        return report
    with store.write() as s:
        accepted, misses = plan()
        for part in _chunks(accepted):
            tvals = [timing_values(r.identity, t) for r in part for t in data.timings.get(ident_key(r.identity), ())]
            for tpart in _chunks(tvals):
                upsert_timings(s, store.engine, tpart)
            upsert_records(s, store.engine, [record_values(r) for r in part], policy)
            for r in part:
                store._clear_miss(s, r.identity)
        for part in _chunks(misses):
            _upsert_misses(s, store.engine, part)
    return report
