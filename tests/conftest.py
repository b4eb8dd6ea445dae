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
def stand_in_kernels():
    """For tests that launch through stand-in compiled kernels (tests.tuner.test_launch.
    FakeJit): afterwards every direct-launch cache is emptied, so no later test in the
    process relaunches a stand-in that computes nothing."""
    from tuner import launch

    launch.forget_direct()
    yield
    launch.forget_direct()


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


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    from tests.pg import fresh_schema_or_skip

    with fresh_schema_or_skip("t") as url:
        yield url
