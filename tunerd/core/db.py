"""tunerd's database: one engine opened through ``tuner.store.db.open_engine`` (which
runs the Alembic upgrade under the migration lock and refuses a newer schema), sessions,
and the writer lock that SQLite writes share with local tools on the same file."""
from __future__ import annotations

import contextlib
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tuner.store import db as dbmod


class Database:
    def __init__(self, db: str | None) -> None:
        self.url = dbmod.resolve_url(db)
        self.name = dbmod.describe(self.url)
        self.engine: Engine = dbmod.open_engine(self.url)  # TuningDBError: refuse to start

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self.session() as s:
            yield s

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction under the writer lock; rolled back whole on any error."""
        with dbmod.writer_lock(self.url):
            with self.session() as s:
                with s.begin():
                    yield s

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
