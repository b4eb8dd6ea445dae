"""Many processes on one SQLite tuning DB: single-flight tuning, no lost or torn rows,
no "database is locked", and a writer killed mid-transaction loses nothing committed."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter

import filelock

from tuner.libtuner import FINALISTS

WORKER = textwrap.dedent(
    """
    import json, os, sys, torch, tuner
    from tuner import bench
    from tests.helpers import DEVICE
    from tests.tuner.kernels import fake_time, scale

    log_path, seed = sys.argv[1], int(sys.argv[2])

    def timer(req):
        with open(log_path, "a") as f:  # O_APPEND lines: atomic between processes
            f.write(json.dumps({"pid": os.getpid(), "key": list(map(str, req.key)), "config": req.config}) + "\\n")
        return fake_time(req)

    bench.set_timer(timer)
    sizes = [2 ** k + 1 for k in range(4, 11)]  # 7 keys, every process all of them
    rng = __import__("random").Random(seed)
    rng.shuffle(sizes)
    for n in sizes:
        x = torch.randn(n, device=DEVICE)
        torch.testing.assert_close(scale(x), x * 2)
    print(json.dumps(tuner.stats()))
    """
)


def test_eight_processes_tune_each_key_exactly_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])), FLAGGEMS_AUTOTUNE="miss",
               FLAGGEMS_TUNING_DB=str(tmp_path / "shared.db"), FLAGGEMS_CACHE_DIR=str(tmp_path / "cache"))
    log = tmp_path / "bench.log"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(log), str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "database is locked" not in err
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    per_key = Counter(tuple(l["key"]) for l in lines)
    assert len(per_key) == 7
    # each key: its 8 configs in a brief round, the finalists in full, all by one process
    assert set(per_key.values()) == {8 + FINALISTS}
    for key in per_key:
        assert len({json.dumps(l["config"], sort_keys=True) for l in lines if tuple(l["key"]) == key}) == 8
    for key in per_key:
        assert len({l["pid"] for l in lines if tuple(l["key"]) == key}) == 1
    assert sum(s["benchmarks_run"] for s in stats) == 7
    assert sum(s["hits"] for s in stats) == 8 * 7 - 7
    con = sqlite3.connect(tmp_path / "shared.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = con.execute("SELECT key, config FROM tuning_records").fetchall()
    assert len(rows) == 7 and all(json.loads(c)["BLOCK"] == 64 for _, c in rows)
    assert con.execute("SELECT count(*) FROM config_timings").fetchone() == (7 * 8,)
    con.close()


TWO_CACHES_WORKER = textwrap.dedent(
    """
    import json, os, sys, time, torch, tuner
    from pathlib import Path
    from tuner import bench
    from tuner.store import default_store
    from tests.helpers import DEVICE
    from tests.tuner.kernels import fake_time, scale, scale_kernel

    barrier, me = Path(sys.argv[1]), sys.argv[2]

    def slow(req):  # a long tuning window, so both processes are in it at once
        time.sleep(0.1)
        return fake_time(req)

    bench.set_timer(slow)
    default_store(), scale_kernel.kernel_hash  # open the DB and hash before the race
    (barrier / me).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.005)
    scale(torch.randn(100, device=DEVICE))
    print(json.dumps(tuner.stats()))
    """
)


def test_processes_with_different_cache_dirs_share_the_tuning_lock(tmp_path):
    """The single-flight lock belongs to the DB file, not to a process's cache dir."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])), FLAGGEMS_AUTOTUNE="miss",
               FLAGGEMS_TUNING_DB=str(tmp_path / "shared.db"))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", TWO_CACHES_WORKER, str(barrier), str(i)], env=env | {"FLAGGEMS_CACHE_DIR": str(tmp_path / f"cache{i}")},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(s["benchmarks_run"] for s in stats) == [0, 1]
    assert sorted(s["hits"] for s in stats) == [0, 1]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from tests.tuner.test_store import make_record
    from tuner.store.sql import SQLStore
    store = SQLStore(sys.argv[1])
    for i in range(20):  # committed before the kill
        store.save(make_record(key=f"[{i}]"))
    with store.write() as s:
        from tuner.store.sql import record_values, upsert_records
        upsert_records(s, store.engine, [record_values(make_record(key=f"[{1000 + i}]")) for i in range(50)])
        s.flush()
        open(sys.argv[2], "w").write("in transaction")
        time.sleep(60)
    """
)


def test_writer_killed_mid_transaction_loses_nothing_committed(tmp_path):
    from tests.tuner.test_store import make_record
    from tuner.store.sql import SQLStore

    db, flag = tmp_path / "k.db", tmp_path / "flag"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])), FLAGGEMS_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db), str(flag)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert p.poll() is None, p.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the lock died with its holder; the DB opens, holds the 20 committed rows, takes writes
    filelock.FileLock(str(db) + ".lock", timeout=5).acquire().lock.release()
    store = SQLStore(db)
    assert store.counts()["records"] == 20
    store.save(make_record(key="[999]"))
    assert store.counts()["records"] == 21
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
