"""A throwaway schema on the PostgreSQL test server (``FLAGGEMS_TEST_PG_URL``), for the
store and tunerd tests and ``benchmarks/load_tunerd.py``. No torch import."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

PG_BASE_URL = os.environ.get("FLAGGEMS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_schema(prefix: str) -> Iterator[tuple[str, str]]:
    """(a URL whose search_path is a new schema, the server's version); the schema is
    dropped on exit. Raises when no server answers."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar()
            schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            try:
                yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}", version
            finally:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def fresh_schema_or_skip(prefix: str) -> Iterator[str]:
    """``fresh_schema``'s URL, or the test skipped with a message when the server is down."""
    import pytest

    with contextlib.ExitStack() as stack:
        try:
            url, _ = stack.enter_context(fresh_schema(prefix))
        except Exception as e:  # the server is down: say so rather than fail obscurely
            pytest.skip(f"PostgreSQL not reachable at {PG_BASE_URL}: {e}")
        yield url
