"""Opening a tuning DB: URL resolution, SQLite pragmas, the writer lock, and the schema
check and migration through Alembic (never ``create_all``)."""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

import filelock
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, OperationalError

from tuner import settings
from tuner.fingerprint import current as current_fingerprint

BUSY_TIMEOUT_MS = 30_000
# Any constant: PostgreSQL sessions serialize migrations on this advisory lock.
_PG_MIGRATION_LOCK = 0x7475_6E65


class TuningDBError(RuntimeError):
    """A tuning DB that cannot be used as it is; the file is left untouched."""


def default_location() -> Path:
    """``<cache>/tuning/<device-slug>.db``: one SQLite file per device."""
    return settings.get().cache_dir / "tuning" / f"{current_fingerprint().device_slug}.db"


def resolve_url(db: str | Path | None = None) -> str:
    """An SQLAlchemy URL from a URL, a path, ``FLAGGEMS_TUNING_DB`` or the default file."""
    db = db if db is not None else settings.get().tuning_db
    if db is None:
        db = default_location()
    db = str(db)
    if "://" in db:
        return db
    path = Path(db).expanduser().resolve()
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _on_sqlite_connect(dbapi_conn: sqlite3.Connection, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_schema(path: Path) -> tuple[list[str], str | None] | None:
    """The tables and schema revision of an existing SQLite file, read without changing
    it or creating a file beside it; ``None`` for a missing or empty file."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return None
    if not header:
        return None
    # A plain read-only open of a WAL-mode file still creates -wal and -shm beside it.
    # With no -wal there, the file holds every committed page: read it as immutable.
    wal_mode = header.startswith(b"SQLite format 3\0") and len(header) > 18 and header[18] == 2
    immutable = wal_mode and not Path(f"{path}-wal").exists()
    uri = path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)) as con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'")]
            rev = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                rev = row[0] if row else None
            return tables, rev
    except sqlite3.OperationalError:  # locked, unreadable: the open under the writer lock decides
        return None
    except sqlite3.DatabaseError:
        if immutable:  # perhaps read mid-checkpoint of another process: the locked open decides
            return None
        raise  # not a database, or a corrupt one


def _refuse_unusable_sqlite(url: str) -> bool:
    """Raise ``TuningDBError`` for an SQLite file that is not a tuning DB or has a newer
    schema, before the engine's connect hook (WAL) or the writer lock touch the file.
    True when the file is already at the newest revision (revisions only move forward,
    so nothing needs reading again)."""
    from db_migrations import HEAD

    path = sqlite_path(url)
    if path is None:
        return False
    try:
        found = _sqlite_schema(path)
    except (sqlite3.DatabaseError, OSError) as e:
        raise TuningDBError(f"{describe(url)}: cannot open as a tuning DB: {e}") from e
    if found is None:
        return False
    tables, rev = found
    if rev == HEAD:  # current: nothing to refuse (and no need to import Alembic)
        return True
    if rev is None and "alembic_version" in tables:
        # Alembic creates its version table first and fills it last, and SQLite commits
        # each CREATE TABLE at once: another process may be creating the schema right
        # now. The check under the writer lock decides.
        return False
    from tuner.store.migrate import schema_problem

    problem = schema_problem(describe(url), tables, rev)
    if problem is not None:
        raise TuningDBError(problem)
    return False


def create_db_engine(url: str) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(url, pool_pre_ping=True)


def writer_lock(url: str) -> contextlib.AbstractContextManager:
    """The ``filelock`` beside an SQLite file, taken around every write and migration.

    Other backends serialize writes themselves; they get a no-op lock.
    """
    path = sqlite_path(url)
    if path is None:
        return contextlib.nullcontext()
    return filelock.FileLock(str(path) + ".lock", timeout=BUSY_TIMEOUT_MS / 1000)


def describe(url: str) -> str:
    path = sqlite_path(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def _migration_guard(engine: Engine, url: str) -> Iterator[None]:
    with writer_lock(url):
        if engine.dialect.name != "postgresql":
            yield
            return
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()


def _at_head(engine: Engine) -> bool:
    """Whether the DB's schema revision is already the newest (read without Alembic,
    whose import costs a process's first tuned call about 0.1 s)."""
    from db_migrations import HEAD

    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    except (DatabaseError, OperationalError):  # no such table, not a DB: the full check says why
        return False


def open_engine(db: str | Path | None = None, *, migrate: bool = True) -> Engine:
    """An engine on a tuning DB whose schema is at Alembic's head.

    Creates and upgrades the schema under the writer lock. Raises ``TuningDBError``
    naming the file for a file that is not a tuning DB or a DB of a newer schema.
    """
    url = resolve_url(db)
    at_head = _refuse_unusable_sqlite(url)
    engine = create_db_engine(url)
    if at_head or _at_head(engine):
        return engine
    from tuner.store.migrate import ensure_schema

    try:
        with _migration_guard(engine, url):
            ensure_schema(engine, describe(url), upgrade=migrate)
    except (DatabaseError, OperationalError) as e:
        engine.dispose()
        raise TuningDBError(f"{describe(url)}: cannot open as a tuning DB: {e.orig or e}") from e
    except BaseException:
        engine.dispose()
        raise
    return engine


def table_names(engine: Engine) -> list[str]:
    return inspect(engine).get_table_names()
