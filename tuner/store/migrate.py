"""Schema version checks and upgrades, programmatically through Alembic."""
from __future__ import annotations

import functools
from typing import Iterable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from db_migrations import SCRIPT_LOCATION


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.lru_cache(maxsize=1)
def _scripts() -> tuple[str, frozenset[str]]:
    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, f"db_migrations has {len(heads)} heads; merge them"
    return heads[0], frozenset(r.revision for r in script.walk_revisions())


def head_revision() -> str:
    return _scripts()[0]


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def schema_problem(name: str, tables: Iterable[str], rev: str | None) -> str | None:
    """Why a DB with these tables and schema revision cannot be used, or ``None``."""
    head, known = _scripts()
    if rev is None:
        foreign = [t for t in tables if t != "alembic_version"]
        if foreign:
            return f"{name}: not a tuning DB (it has tables {', '.join(sorted(foreign)[:5])} and no schema version); left unchanged"
    elif rev not in known:
        return (
            f"{name}: schema revision {rev!r} is newer than this flag_gems knows (head {head!r}); "
            "upgrade flag_gems or use another DB; left unchanged"
        )
    return None


def ensure_schema(engine: Engine, name: str, *, upgrade: bool = True) -> None:
    """Bring the DB to head, or raise ``TuningDBError`` without touching it.

    Call under the writer lock (``db.open_engine`` does).
    """
    from tuner.store.db import TuningDBError

    head, _ = _scripts()
    with engine.connect() as conn:
        rev = current_revision(conn)
        problem = schema_problem(name, inspect(conn).get_table_names() if rev is None else [], rev)
        if problem is not None:
            raise TuningDBError(problem)
        if rev == head or not upgrade:
            return
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
