"""tunerd settings, read from ``TUNERD_*`` environment variables (and overridden by the
command line). An unparsable value is a clear error naming the variable."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A ``TUNERD_*`` variable or a command-line option holds an unusable value."""


def _number(name: str, default: float, parse: type, what: str, minimum: float) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r} is not {what}") from e
    if not value >= minimum or value == float("inf"):  # also refuses NaN
        raise ConfigError(f"{name}={raw!r} must be a finite number of at least {minimum}")
    return value


def _int(name: str, default: int, *, minimum: int = 0) -> int:
    return _number(name, default, int, "an integer", minimum)


def _float(name: str, default: float, *, minimum: float = 0.0) -> float:
    return _number(name, default, float, "a number", minimum)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def read_token_file(path: str | Path) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the token file {path}: {e}") from e
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    db: str | None = None  # SQLAlchemy URL or SQLite path; None: the tuner's default file
    host: str = "127.0.0.1"
    port: int = 8600
    token: str | None = None  # bearer token for writes (and reads when auth_reads)
    auth_reads: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 1000  # records, keys or misses in one request
    max_page: int = 1000
    # A running pretune job whose worker sent no heartbeat for this long goes back to the
    # queue; after ``job_max_attempts`` claims it is failed instead (a job that kills its workers).
    job_lease_s: float = 60.0
    job_max_attempts: int = 3
    log_level: str = "info"

    @classmethod
    def from_env(cls) -> "Settings":
        token = os.environ.get("TUNERD_TOKEN") or None
        token_file = os.environ.get("TUNERD_TOKEN_FILE") or None
        if token is None and token_file:
            token = read_token_file(token_file)
        return cls(
            db=os.environ.get("TUNERD_DB") or None,
            host=os.environ.get("TUNERD_HOST") or "127.0.0.1",
            port=_int("TUNERD_PORT", 8600, minimum=0),
            token=token,
            auth_reads=_flag("TUNERD_AUTH_READS", False),
            max_body_bytes=_int("TUNERD_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024),
            max_batch=_int("TUNERD_MAX_BATCH", 1000, minimum=1),
            max_page=_int("TUNERD_MAX_PAGE", 1000, minimum=1),
            job_lease_s=_float("TUNERD_JOB_LEASE_S", 60.0, minimum=0.1),
            job_max_attempts=_int("TUNERD_JOB_MAX_ATTEMPTS", 3, minimum=1),
            log_level=(os.environ.get("TUNERD_LOG_LEVEL") or "info").lower(),
        )

    def override(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
