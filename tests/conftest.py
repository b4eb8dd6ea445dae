"""Every test runs kernels in the Triton interpreter on CPU tensors (unless a GPU run sets
FLAGGEMS_TEST_DEVICE=cuda), with a private cache dir so no test sees another's DB."""
import os
import tempfile

if os.environ.get("FLAGGEMS_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Op tests run the declared default configs; the tuner tests set their policy per test.
os.environ.setdefault("FLAGGEMS_AUTOTUNE", "never")
os.environ.setdefault("FLAGGEMS_CACHE_DIR", tempfile.mkdtemp(prefix="flaggems-test-"))

import pytest  # noqa: E402

from tests.helpers import DEVICE  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seeded(request):
    """Random inputs, but the same ones on every run of a test (seeded from its id), so
    a result never depends on which worker ran what before it."""
    import zlib

    import torch

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def isolated_store(tmp_path, monkeypatch):
    """A fresh tuning DB and cache dir for one test; restores the process store after."""
    import tuner
    from tuner import settings
    from tuner.store import set_default_store

    monkeypatch.setenv("FLAGGEMS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLAGGEMS_TUNING_DB", str(tmp_path / "tuning.db"))
    settings.reload()
    set_default_store(None)
    tuner.clear_caches()
    tuner.reset_stats()
    yield tmp_path
    monkeypatch.undo()
    settings.reload()
    set_default_store(None)
    tuner.clear_caches()


PG_BASE_URL = os.environ.get("FLAGGEMS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    import uuid

    import sqlalchemy as sa

    try:
        admin = sa.create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
        conn = admin.connect()
    except Exception as e:  # the server is down: say so rather than fail obscurely
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE_URL}: {e}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.close()
        admin.dispose()
