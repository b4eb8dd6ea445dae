"""Typed settings of the tuner, read from ``FLAGGEMS_*`` environment variables.

Read once on first use; ``reload()`` re-reads them (tests, long-lived tools). An
unparsable value is a clear error naming the variable, never a silent default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

AUTOTUNE_POLICIES = ("never", "miss", "always")


class SettingsError(ValueError):
    """An environment variable holds a value the tuner cannot use."""


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise SettingsError(f"{name}={raw!r} is not a number") from e
    if value < 0:
        raise SettingsError(f"{name}={raw!r} must not be negative")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


@dataclass(frozen=True)
class Settings:
    autotune: str = "miss"
    tuning_db: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir("flag_gems")))
    tunerd_url: str | None = None
    tunerd_token: str | None = None
    tunerd_timeout_s: float = 0.02  # tunerd's p99 goal: a healthy server answers within it
    interpret: bool = False
    # count each config's host launch time in its score (eager); off for CUDA-graph replay
    tune_host: bool = True

    @classmethod
    def from_env(cls) -> "Settings":
        cache = os.environ.get("FLAGGEMS_CACHE_DIR")
        return cls(
            autotune=_choice("FLAGGEMS_AUTOTUNE", "miss", AUTOTUNE_POLICIES),
            tuning_db=os.environ.get("FLAGGEMS_TUNING_DB") or None,
            cache_dir=Path(cache) if cache else Path(platformdirs.user_cache_dir("flag_gems")),
            tunerd_url=os.environ.get("FLAGGEMS_TUNERD_URL") or None,
            tunerd_token=os.environ.get("FLAGGEMS_TUNERD_TOKEN") or None,
            tunerd_timeout_s=_float("FLAGGEMS_TUNERD_TIMEOUT_MS", 20.0) / 1000.0,
            interpret=_flag("TRITON_INTERPRET", False),
            tune_host=_flag("FLAGGEMS_TUNE_HOST", True),
        )


_settings: Settings | None = None


def get() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def reload() -> Settings:
    global _settings
    _settings = Settings.from_env()
    return _settings
