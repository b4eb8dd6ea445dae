"""The tuning store: Alembic-created schema on SQLite and PostgreSQL, round trips,
fingerprint isolation, merge policies, and clear errors for unusable files."""
import dataclasses
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tuner.fingerprint import current
from tuner.store import Identity, LayeredStore, MemoryStore, Miss, Record, Timing, TuningDBError
from tuner.store import migrate
from tuner.store.db import open_engine, resolve_url
from tuner.store.sql import SQLStore

TABLES = {"tuning_records", "config_timings", "tuning_misses", "alembic_version"}


def make_record(key="[128,\"float16\"]", ms=1.0, fp=None, config=None, kernel="pkg.kern"):
    ident = Identity(kernel, "h1", key, fp or current())
    return Record(ident, config or {"BLOCK": 128, "num_warps": 4}, ms, ms * 0.9, ms * 1.1, 3)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "t.db")
    return request.getfixturevalue("pg_url")


def test_schema_created_by_alembic_at_head(db_url):
    engine = open_engine(db_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    engine.dispose()


def test_db_at_head_opens_without_alembic(db_url):
    """db_migrations.HEAD is Alembic's head, and a DB already there opens in a fresh
    process without importing Alembic (a tuned call's first lookup pays no import)."""
    from db_migrations import HEAD

    assert HEAD == migrate.head_revision()
    open_engine(db_url).dispose()
    code = ("import sys; from tuner.store.db import open_engine; open_engine(sys.argv[1]).dispose(); "
            "print(sorted(m for m in sys.modules if m.startswith('alembic')))")
    run = subprocess.run([sys.executable, "-c", code, db_url], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr[-2000:] + run.stdout


def test_alembic_command_line_takes_x_url(tmp_path):
    """The command documented in db_migrations/alembic.ini, run from another directory."""
    ini = Path(__file__).resolve().parents[2] / "db_migrations" / "alembic.ini"
    path = tmp_path / "cli.db"
    run = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), "-x", f"url=sqlite:///{path}", "upgrade", "head"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrate.head_revision(),)]
    assert TABLES <= {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()


def test_schema_matches_models(db_url):
    """The Alembic revisions and the SQLAlchemy models describe the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tuner.store.models import Base

    engine = open_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_round_trip_and_timings(db_url):
    store = SQLStore(db_url)
    rec = make_record()
    timings = [Timing({"BLOCK": 128, "num_warps": 4}, 1.0, 0.9, 1.1), Timing({"BLOCK": 64}, None, error="OutOfResources")]
    store.save(rec, timings)
    got = store.lookup(rec.identity)
    assert got.config == rec.config and got.median_ms == rec.median_ms and got.identity == rec.identity
    assert sorted(store.timings(rec.identity), key=lambda t: str(t.config)) == sorted(timings, key=lambda t: str(t.config))
    assert store.candidates("pkg.kern", "h1", current()) == [got]
    store.close()


def test_other_environment_never_served(db_url):
    store = SQLStore(db_url)
    here = current()
    for field, value in [("device_name", "Other GPU"), ("triton_version", "0.0.1"), ("torch_version", "1.0"), ("sm_count", 999)]:
        other = dataclasses.replace(here, **{field: value})
        store.save(make_record(fp=other, ms=0.1))
    assert store.lookup(make_record().identity) is None
    assert store.candidates("pkg.kern", "h1", here) == []
    # another kernel version (hash) is not served either
    store.save(make_record())
    stale = Identity("pkg.kern", "h2", make_record().identity.key, here)
    assert store.lookup(stale) is None
    store.close()


@pytest.mark.parametrize("policy,expected_ms", [("replace", 2.0), ("faster", 1.0), ("keep", 1.0), ("newer", 2.0)])
def test_save_policies(tmp_path, policy, expected_ms):
    store = SQLStore(tmp_path / "p.db")
    store.save(make_record(ms=1.0))
    store.save(dataclasses.replace(make_record(ms=2.0), created_at=None), policy=policy)
    assert store.lookup(make_record().identity).median_ms == expected_ms
    assert store.counts()["records"] == 1


def test_misses_count_and_clear_on_tune(tmp_path):
    store = SQLStore(tmp_path / "m.db")
    rec = make_record()
    store.record_miss(Miss(rec.identity, raw_args='{"n": 100}'))
    store.record_miss(Miss(rec.identity))
    (miss,) = store.misses()
    assert miss.count == 2 and miss.raw_args == '{"n": 100}'
    store.save(rec)
    assert store.misses() == []


def snapshot(path):
    """The DB file's bytes and every file beside it (-wal, -shm, .lock, ...)."""
    return path.read_bytes(), sorted(p.name for p in path.parent.iterdir())


def test_garbage_file_is_clear_error_and_untouched(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(TuningDBError, match="garbage.db"):
        SQLStore(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_foreign_sqlite_db_is_refused(tmp_path):
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users (name) VALUES ('ada')")
    con.commit()
    con.close()
    before = snapshot(path)
    with pytest.raises(TuningDBError, match="not a tuning DB"):
        SQLStore(path)
    assert snapshot(path) == before  # not a byte changed, no -wal/-shm/.lock created
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall() == [("users",)]
    con.close()


def test_foreign_wal_sqlite_db_is_refused_without_side_files(tmp_path):
    path = tmp_path / "wal.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    before = snapshot(path)
    with pytest.raises(TuningDBError, match="not a tuning DB"):
        SQLStore(path)
    assert snapshot(path) == before


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    store = SQLStore(path)
    store.save(make_record())
    store.close()
    # as copied from a host with a newer flag_gems: the file alone, not in WAL mode
    (tmp_path / "new.db.lock").unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    before = snapshot(path)
    assert before[1] == ["new.db"]
    with pytest.raises(TuningDBError, match="newer"):
        SQLStore(path)
    assert snapshot(path) == before
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM tuning_records").fetchone() == (1,)
    con.close()


def test_sqlite_uses_wal(tmp_path):
    store = SQLStore(tmp_path / "w.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_resolve_url_forms(tmp_path, monkeypatch):
    from tuner import settings

    assert resolve_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_url("postgresql://h/db") == "postgresql://h/db"
    monkeypatch.setenv("FLAGGEMS_TUNING_DB", str(tmp_path / "env.db"))
    settings.reload()
    try:
        assert resolve_url() == f"sqlite:///{tmp_path / 'env.db'}"
        monkeypatch.delenv("FLAGGEMS_TUNING_DB")
        monkeypatch.setenv("FLAGGEMS_CACHE_DIR", str(tmp_path / "c"))
        settings.reload()
        url = resolve_url()
        assert url.startswith(f"sqlite:///{tmp_path / 'c' / 'tuning'}/") and url.endswith(".db")
        assert current().device_slug in url
    finally:
        monkeypatch.undo()
        settings.reload()


class Broken:
    def lookup(self, ident):
        raise ConnectionError("down")

    def candidates(self, *a):
        raise ConnectionError("down")

    def save(self, *a):
        raise ConnectionError("down")

    def record_miss(self, miss):
        raise ConnectionError("down")


def test_layered_store_reads_local_first_backfills_and_survives_broken_layer(tmp_path):
    mem, sql = MemoryStore(), SQLStore(tmp_path / "l.db")
    rec = make_record()
    sql.save(rec)
    layered = LayeredStore([mem, sql, Broken()])
    assert layered.lookup(rec.identity).config == rec.config
    assert mem.lookup(rec.identity) is not None  # backfilled
    assert layered.lookup(rec.identity) is not None
    assert layered.counters["MemoryStore.hits"] == 1 and layered.counters["SQLStore.hits"] == 1
    missing = make_record(key="[1]").identity
    assert layered.lookup(missing) is None
    assert layered.counters["Broken.errors"] == 1
    layered.save(make_record(key="[2]"))
    assert sql.lookup(make_record(key="[2]").identity) is not None
    assert layered.counters["Broken.errors"] == 2


def test_layer_errors_are_counted_in_tuner_stats(tmp_path):
    import tuner

    tuner.reset_stats()
    layered = LayeredStore([MemoryStore(), Broken()])
    rec = make_record()
    assert layered.lookup(rec.identity) is None
    assert tuner.stats()["store_errors"] == 1
    layered.save(rec)
    layered.record_miss(Miss(rec.identity))
    assert layered.candidates("pkg.kern", "h1", current()) == []
    assert tuner.stats()["store_errors"] == 4
    assert layered.counters["Broken.errors"] == 4
    tuner.reset_stats()
