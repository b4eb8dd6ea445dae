"""gems-tunedb in-process: export/import round trip, bad bundles leave the DB byte-for-byte
unchanged, dry-run reports, commutative merge of DBs and bundles, stats and workload
coverage, explain, prune, verify re-timing stored winners with the fake timer."""
import dataclasses
import gzip
import hashlib
import io
import json
import sys
import tarfile
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tuner import bundle as B
from tuner.cli.tunedb import main
from tuner.fingerprint import current
from tuner.store import Identity, Miss, Record, Timing
from tuner.store.sql import SQLStore

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
SMOKE = str(Path(__file__).resolve().parents[2] / "workloads" / "smoke.yaml")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    from tuner import settings as tsettings

    monkeypatch.setenv("FLAGGEMS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FLAGGEMS_TUNING_DB", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    tsettings.reload()
    yield
    monkeypatch.undo()
    tsettings.reload()


def other_fp():
    return dataclasses.replace(current(), vendor="nvidia", device_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", sm_count=9999)


def rec(key=128, ms=1.0, fp=None, block=None, kernel="pkg.mod.kern", created=T0):
    ident = Identity(kernel, "h1", json.dumps([key, "float16"], separators=(",", ":")), fp or current())
    return Record(ident, {"BLOCK": block or key, "num_warps": 4}, ms, ms * 0.9, ms * 1.1, 2,
                  source="pretune", host="node1", created_at=created)


def fill(path, records, miss=True):
    s = SQLStore(path)
    for r in records:
        s.save(r, [Timing(r.config, r.median_ms, r.p20_ms, r.p80_ms), Timing({"BLOCK": 8}, None, error="boom")])
    if miss:
        s.record_miss(Miss(rec(4096).identity, raw_args='{"n":4000}'))
    s.close()
    return str(path)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def all_records(path):
    s = SQLStore(path)
    try:
        return sorted((B.normalized(r) for r in s.records()), key=lambda r: B.ident_key(r.identity))
    finally:
        s.close()


def all_timings(path):
    s = SQLStore(path)
    try:
        return {B.ident_key(r.identity): sorted(s.timings(r.identity), key=lambda t: json.dumps(t.config)) for r in s.records()}
    finally:
        s.close()


@pytest.fixture
def src(tmp_path):
    return fill(tmp_path / "src.db", [rec(128, 1.0), rec(256, 2.0), rec(128, 0.7, fp=other_fp()),
                                      rec(64, 3.0, kernel="pkg.mod.other")])


def test_export_import_round_trip(tmp_path, src, capsys):
    out = tmp_path / "b.tdb"
    assert main(["export", "--db", src, "-o", str(out)]) == 0
    dst = tmp_path / "dst.db"
    assert main(["import", str(out), "--db", str(dst)]) == 0
    assert all_records(dst) == all_records(src)
    assert all_timings(dst) == all_timings(src)
    s = SQLStore(dst)
    assert len(s.misses()) == 1
    # records of another device are kept, and never served here
    assert s.lookup(rec(128, fp=other_fp()).identity).median_ms == 0.7
    assert s.lookup(rec(128).identity).median_ms == 1.0
    assert len(s.candidates("pkg.mod.kern", "h1", current())) == 2
    s.close()
    text = capsys.readouterr().out
    assert "4 records" in text and "new 4" in text


def test_export_filters(tmp_path, src):
    out = tmp_path / "b.tdb"
    assert main(["export", "--db", src, "--kernel", "pkg.mod.kern", "--device", "h100", "-o", str(out)]) == 0
    got = B.read_bundle(out)
    assert [(r.identity.kernel, r.median_ms) for r in got.records] == [("pkg.mod.kern", 0.7)]
    assert got.manifest.filters["device"] == "h100"


def test_import_is_idempotent_and_dry_run_reports(tmp_path, src, capsys):
    out = tmp_path / "b.tdb"
    main(["export", "--db", src, "-o", str(out)])
    dst = fill(tmp_path / "dst.db", [rec(128, 0.5), rec(256, 9.0), rec(64, 3.0, block=32, kernel="pkg.mod.other")], miss=False)
    before = sha(dst)
    capsys.readouterr()
    assert main(["import", str(out), "--db", dst, "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert sha(dst) == before
    assert "3 for this machine's environment, 1 for other environments" in report
    assert "new 1, better 1, worse 1, equal 0, conflicting 1" in report
    assert "would write 2 records" in report  # faster: the new one and the better one
    assert main(["import", str(out), "--db", dst]) == 0
    got = {(r.identity.kernel, r.identity.key, r.identity.env_id): r.median_ms for r in all_records(dst)}
    assert got[("pkg.mod.kern", '[128,"float16"]', current().env_id)] == 0.5  # stored was faster
    assert got[("pkg.mod.kern", '[256,"float16"]', current().env_id)] == 2.0  # bundle was faster
    snapshot = all_records(dst)
    assert main(["import", str(out), "--db", dst]) == 0
    assert all_records(dst) == snapshot


def test_dry_run_on_missing_db_creates_nothing(tmp_path, src):
    out = tmp_path / "b.tdb"
    main(["export", "--db", src, "-o", str(out)])
    assert main(["import", str(out), "--db", str(tmp_path / "nope.db"), "--dry-run"]) == 0
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("policy, ms", [("faster", 0.5), ("keep", 0.5), ("replace", 1.0), ("newer", 1.0)])
def test_import_policies(tmp_path, policy, ms):
    a = fill(tmp_path / "a.db", [rec(128, 1.0, created=T0 + timedelta(days=1), block=64)], miss=False)
    out = tmp_path / "a.tdb"
    main(["export", "--db", a, "-o", str(out)])
    dst = fill(tmp_path / "dst.db", [rec(128, 0.5, created=T0)], miss=False)
    assert main(["import", str(out), "--db", dst, "--policy", policy]) == 0
    assert [r.median_ms for r in all_records(dst)] == [ms]


def _members(path):
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _bad_bundles(good: bytes, good_path):
    members = _members(good_path)
    rows = gzip.decompress(dict(members)[B.RECORDS]).replace(b'"median_ms":1.0', b'"median_ms":0.001')
    tampered = _tar([(n, gzip.compress(rows, mtime=0) if n == B.RECORDS else b) for n, b in members])
    manifest = json.loads(dict(members)[B.MANIFEST])
    newer = _tar([(n, json.dumps({**manifest, "format_version": 99}).encode() if n == B.MANIFEST else b) for n, b in members])
    dropped = _tar([(n, b) for n, b in members if n != B.MISSES])
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0x55
    return {
        "truncated": (good[: len(good) // 2], "truncated|not a readable"),
        "corrupted": (bytes(flipped), "sha256|not a readable|truncated|manifest"),
        "tampered": (tampered, "sha256 of records.jsonl.gz does not match|manifest says"),
        "newer": (newer, "format version 99 is newer"),
        "manifest": (dropped, "manifest does not match the members"),
        "not a bundle": (b"SELECT * FROM nothing;\n" * 100, "not a readable bundle|not a bundle"),
        "empty": (b"", "not a bundle"),
    }


def test_bad_bundles_leave_db_unchanged(tmp_path, src, capsys):
    good = tmp_path / "good.tdb"
    main(["export", "--db", src, "-o", str(good)])
    dst = fill(tmp_path / "dst.db", [rec(128, 5.0)])
    before = sha(dst)
    for name, (blob, match) in _bad_bundles(good.read_bytes(), good).items():
        bad = tmp_path / f"bad-{name.replace(' ', '-')}.tdb"
        bad.write_bytes(blob)
        capsys.readouterr()
        for extra in ([], ["--dry-run"], ["--policy", "replace"]):
            rc = main(["import", str(bad), "--db", dst, *extra])
            err = capsys.readouterr().err
            assert rc == 1, (name, err)
            assert err.count("\n") == 1 and "error:" in err, (name, err)
            assert __import__("re").search(match, err), (name, err)
            assert sha(dst) == before, name
        # a bad input to merge writes no output
        assert main(["merge", src, str(bad), "-o", str(tmp_path / f"m-{bad.name}")]) == 1
        assert not (tmp_path / f"m-{bad.name}").exists()
    assert main(["import", str(tmp_path / "missing.tdb"), "--db", dst]) == 1
    assert sha(dst) == before


def test_bad_bundle_does_not_create_target_db(tmp_path):
    bad = tmp_path / "bad.tdb"
    bad.write_bytes(b"garbage" * 200)
    assert main(["import", str(bad), "--db", str(tmp_path / "new.db")]) == 1
    assert not (tmp_path / "new.db").exists()


def test_merge_dbs_and_bundles_commutative(tmp_path):
    a = fill(tmp_path / "a.db", [rec(128, 1.0), rec(256, 2.0, block=64)])
    b = fill(tmp_path / "b.db", [rec(128, 1.0, block=32, created=T0 + timedelta(hours=1)), rec(256, 1.5)], miss=False)
    c = tmp_path / "c.tdb"
    main(["export", "--db", fill(tmp_path / "c.db", [rec(512, 4.0, fp=other_fp())], miss=False), "-o", str(c)])
    assert main(["merge", a, b, str(c), "-o", str(tmp_path / "m1.tdb")]) == 0
    assert main(["merge", str(c), b, a, "-o", str(tmp_path / "m2.tdb")]) == 0
    m1, m2 = B.read_bundle(tmp_path / "m1.tdb"), B.read_bundle(tmp_path / "m2.tdb")
    assert m1.records == m2.records and m1.timings == m2.timings and m1.misses == m2.misses
    best = {r.identity.key: r.median_ms for r in m1.records if r.identity.env_id == current().env_id}
    assert best == {'[128,"float16"]': 1.0, '[256,"float16"]': 1.5}
    # a tie on median: the deterministic tie-break picks the same row both ways
    assert main(["merge", b, a, "-o", str(tmp_path / "m3.db")]) == 0
    assert main(["merge", a, b, "-o", str(tmp_path / "m4.db")]) == 0
    assert all_records(tmp_path / "m3.db") == all_records(tmp_path / "m4.db")
    assert main(["merge", a, b, "-o", str(tmp_path / "m4.db")]) == 1  # never overwrites a DB


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.sampled_from([64, 128]), st.sampled_from([1.0, 2.0]), st.sampled_from([16, 32])), max_size=3),
    st.lists(st.tuples(st.sampled_from([64, 128]), st.sampled_from([1.0, 2.0]), st.sampled_from([16, 32])), max_size=3),
)
def test_merge_faster_commutative_via_cli(tmp_path_factory, xs, ys):
    tmp = tmp_path_factory.mktemp("m")

    def db(name, rows):
        uniq = {k: (k, ms, blk) for k, ms, blk in rows}
        return fill(tmp / name, [rec(k, ms, block=blk) for k, ms, blk in uniq.values()], miss=False)

    a, b = db("a.db", xs), db("b.db", ys)
    assert main(["merge", a, b, "-o", str(tmp / "ab.tdb")]) == 0
    assert main(["merge", b, a, "-o", str(tmp / "ba.tdb")]) == 0
    ab, ba = B.read_bundle(tmp / "ab.tdb"), B.read_bundle(tmp / "ba.tdb")
    assert ab.records == ba.records and ab.timings == ba.timings


def test_stats(tmp_path, src, capsys):
    assert main(["stats", "--db", src, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["counts"] == {"records": 4, "timings": 8, "misses": 1}
    per = {(x["kernel"], x["device"]): x["records"] for x in got["per_kernel_device"]}
    assert per[("pkg.mod.kern", other_fp().device_slug)] == 1
    assert per[("pkg.mod.kern", current().device_slug)] == 2
    assert sum(e["current"] for e in got["environments"]) == 1
    assert main(["stats", "--db", src]) == 0
    assert "(this machine)" in capsys.readouterr().out
    assert main(["stats", "--db", str(tmp_path / "missing.db")]) == 1
    assert not (tmp_path / "missing.db").exists()


def _registered(name):
    from tuner.libtuner import _REGISTRY

    return next(t for t in reversed(_REGISTRY) if t.name == name)


def _save(db, kernel, key, ms, *, config=None, kernel_hash=None, fp=None):
    """A stored winner of a registered kernel (its current hash and first config unless given)."""
    t = _registered(kernel) if config is None or kernel_hash is None else None
    s = SQLStore(db)
    ident = Identity(kernel, kernel_hash or t.kernel_hash, key, fp or current())
    config = config or t.configs[0]
    s.save(Record(ident, config, ms, ms * 0.9, ms * 1.1, 3, source="pretune", host="node1", created_at=T0),
           [Timing(config, ms, ms * 0.9, ms * 1.1)])
    s.close()


def test_stats_workload_coverage(tmp_path, capsys):
    """Coverage of workloads/smoke.yaml: the calls run (interpreter, never policy, read-only
    DB) and every key they request is reported stored or missing, with why."""
    db = tmp_path / "cov.db"
    SQLStore(db).close()
    before = sha(db)
    assert main(["stats", "--db", str(db), "--workload", SMOKE, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sha(db) == before  # nothing written, not even the misses of the untuned keys
    assert got["failed_jobs"] == [] and got["jobs"] > 0 and got["stored"] == 0
    per = {k["kernel"]: k for k in got["kernels"]}
    rms, mm = "flag_gems.fused.rms_norm.rms_norm_fwd_kernel", "flag_gems.ops.mm._mm_kernel"
    assert {rms, mm, "flag_gems.ops.embedding.embedding_fwd_kernel"} <= set(per)
    assert got["keys"] == sum(k["keys"] for k in got["kernels"]) == sum(len(k["missing"]) for k in got["kernels"])
    assert {m["why"] for k in got["kernels"] for m in k["missing"]} == {"not tuned"}

    rms_keys = [m["key"] for m in per[rms]["missing"]]
    mm_keys = [m["key"] for m in per[mm]["missing"]]
    assert len(mm_keys) >= 3
    for key in rms_keys:
        _save(db, rms, key, 1.0)
    _save(db, mm, mm_keys[0], 1.0)
    _save(db, mm, mm_keys[1], 1.0, config=_registered(mm).configs[0], kernel_hash="0ld")  # an edited kernel's row
    _save(db, mm, mm_keys[2], 1.0, fp=other_fp())  # another device's row
    assert main(["stats", "--db", str(db), "--workload", SMOKE, "--json"]) == 0
    got2 = json.loads(capsys.readouterr().out)
    per2 = {k["kernel"]: k for k in got2["kernels"]}
    assert got2["keys"] == got["keys"] and got2["stored"] == len(rms_keys) + 1
    assert per2[rms]["stored"] == per2[rms]["keys"] and per2[rms]["missing"] == []
    why = {m["key"]: m["why"] for m in per2[mm]["missing"]}
    assert mm_keys[0] not in why and per2[mm]["stored"] == 1
    assert why[mm_keys[1]].startswith("stored only for another kernel version")
    assert why[mm_keys[2]] == "stored only for other environments"

    assert main(["stats", "--db", str(db), "--workload", SMOKE]) == 0
    out = capsys.readouterr().out
    assert f"{got['keys']} keys: {len(rms_keys) + 1} stored, {got['keys'] - len(rms_keys) - 1} missing" in out
    assert "missing keys:" in out and f"{mm} {mm_keys[2]}: stored only for other environments" in out
    assert main(["stats", "--db", str(db), "--workload", str(tmp_path / "nope.yaml")]) == 2


# -- verify --------------------------------------------------------------------------------
SCALE = "tests.tuner.kernels.scale_kernel"


def _scale_provider(monkeypatch, calls):
    """A provider for the test kernel: ``calls`` maps a stored key's n to the n of the call
    that is rebuilt for it (absent: no call can be rebuilt from that key)."""
    import torch

    from tests.tuner import kernels
    from tuner.workload import Job

    mod = types.ModuleType("tests_scale_provider")

    def replay_key(kernel, key_json):
        key = json.loads(key_json)
        n = calls.get(key[0]) if kernel == SCALE else None
        return None if n is None else Job("scale", ((n,),), key[1])

    def run_job(job):
        kernels.scale(torch.ones(job.shapes[0], dtype=getattr(torch, job.dtype)))

    mod.replay_key, mod.run_job, mod.known_op = replay_key, run_job, lambda op: op == "scale"
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def _scale_config(block, warps):
    from tests.tuner.kernels import scale_kernel

    return next(c for c in scale_kernel.configs if c["BLOCK"] == block and c["num_warps"] == warps)


@pytest.fixture
def fake_timer():
    from tests.tuner.kernels import fake_time
    from tuner import bench

    bench.set_timer(fake_time)
    yield fake_time
    bench.set_timer(None)


def _key(n):
    return json.dumps([n, "float32", "float32"], separators=(",", ":"))


def test_verify_retimes_stored_winners(tmp_path, monkeypatch, fake_timer, capsys):
    """The fake timer: BLOCK 64 x 2 warps takes 1.0 ms, BLOCK 16 fails. Each sampled row is
    re-timed on a rebuilt call, or listed with why it could not be."""
    from tests.tuner.kernels import scale_kernel

    prov = _scale_provider(monkeypatch, {128: 100, 256: 256, 512: 512, 2048: 100})
    db = str(tmp_path / "v.db")
    fill(db, [rec(128, 1.0), rec(64, 3.0, kernel="pkg.mod.other")], miss=False)  # kernels this process lacks
    best, broken = _scale_config(64, 2), _scale_config(16, 1)
    _save(db, SCALE, _key(128), 1.0, config=best)  # re-times at 1.0 ms: verified
    _save(db, SCALE, _key(256), 0.5, config=best)  # now 1.0 ms: moved +100 %
    _save(db, SCALE, _key(512), 0.3, config=broken)  # the stored winner fails now
    _save(db, SCALE, _key(1024), 1.0, config=best)  # no call can be rebuilt from this key
    _save(db, SCALE, _key(2048), 1.0, config=best)  # the rebuilt call requests another key
    _save(db, SCALE, _key(128), 1.0, config=best, kernel_hash="0ld")  # an edited kernel's row
    _save(db, SCALE, _key(128), 9.0, config=best, fp=other_fp())  # another device's
    before = sha(db)

    rc = main(["verify", "--db", db, "--provider", prov, "-v"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert sha(db) == before  # verify writes nothing
    assert f"verified: {SCALE} key {_key(128)}" in out and "stored 1 ms, now 1 ms (+0.0%) on scale([100], float32)" in out
    assert f"moved: {SCALE} key {_key(256)}" in out and "stored 0.5 ms, now 1 ms (+100.0%)" in out
    assert f"failed: {SCALE} key {_key(512)}" in out and "no longer runs: RuntimeError: out of resources (fake)" in out
    assert f"untimed: {SCALE} key {_key(1024)}" in out and "no call can be rebuilt from this key" in out
    assert f"untimed: {SCALE} key {_key(2048)}" in out
    assert f"did not request this key (it requested {_key(128)})" in out
    assert f"stale: {SCALE} (1 row): stored for kernel version 0ld, this process has {scale_kernel.kernel_hash[:12]}" in out
    assert "unknown: pkg.mod.kern (1 row): no kernel of this name is registered" in out
    assert "unknown: pkg.mod.other (1 row)" in out
    assert ("5 of 5 re-timable records of this environment sampled (of 8; 1 of other environments cannot be timed "
            "here): verified 1, moved 1, failed 1, untimed 2, stale 1, unknown 2") in out

    # a wider threshold lets the 2x move pass; --kernel and --sample narrow the check
    assert main(["verify", "--db", db, "--provider", prov, "--kernel", SCALE, "--threshold", "1.5", "--sample", "2", "--seed", "3"]) in (0, 1, 3)
    assert "2 of 5 re-timable records" in capsys.readouterr().out
    ok = str(tmp_path / "ok.db")
    _save(ok, SCALE, _key(128), 1.0, config=best)
    _save(ok, SCALE, _key(256), 0.5, config=best)
    assert main(["verify", "--db", ok, "--provider", prov, "--threshold", "1.5"]) == 0
    assert "verified 2, moved 0" in capsys.readouterr().out
    assert main(["verify", "--db", ok, "--provider", prov]) == 1


def test_verify_nothing_timed_exits_3(src, capsys):
    rc = main(["verify", "--db", src])
    out = capsys.readouterr()
    assert rc == 3, out.out
    assert "unknown: pkg.mod.kern (2 rows): no kernel of this name is registered in this process" in out.out
    assert "1 of other environments cannot be timed here" in out.out and "verified 0" in out.out
    assert "nothing could be re-timed" in out.err


def test_verify_flag_gems_kernels_from_keys(tmp_path, capsys):
    """The default provider rebuilds calls from stored keys (flag_gems.tuning.replay_key):
    GEMM (a key with M twice, under m_class and log), RMSNorm, gated activation, softmax."""
    from tuner import bench

    db = str(tmp_path / "fg.db")
    SQLStore(db).close()
    assert main(["stats", "--db", db, "--workload", SMOKE, "--json"]) == 0  # imports the ops, learns keys
    keys = {k["kernel"]: [m["key"] for m in k["missing"]] for k in json.loads(capsys.readouterr().out)["kernels"]}
    mm, rms = "flag_gems.ops.mm._mm_kernel", "flag_gems.fused.rms_norm.rms_norm_fwd_kernel"
    act, sm = "flag_gems.fused.silu_and_mul.gated_act_kernel", "flag_gems.ops.softmax._softmax_fwd_kernel:rows"
    for kernel in (mm, rms, sm):
        _save(db, kernel, keys[kernel][0], 2.0)
    _save(db, act, keys[act][0], 1.0)  # re-times at 2.0: moved
    _save(db, rms, json.dumps([32, "bfloat16", "bfloat16", "bfloat16", "float32", "float32"], separators=(",", ":")), 2.0)  # an fp32 weight: no replay
    bench.set_timer(lambda req: (2.0, 1.8, 2.2))
    try:
        rc = main(["verify", "--db", db, "-v"])
    finally:
        bench.set_timer(None)
    out = capsys.readouterr().out
    assert rc == 1, out
    for kernel in (mm, rms, sm):
        assert f"verified: {kernel} key {keys[kernel][0]}" in out
    assert f"moved: {act} key {keys[act][0]}" in out and "(+100.0%) on silu_and_mul(" in out
    assert f"untimed: {rms} key [32" in out
    assert "verified 3, moved 1, failed 0, untimed 1" in out


def test_explain(tmp_path, src, capsys):
    assert main(["explain", "pkg.mod.kern", '[128, "float16"]', "--db", src, "--kernel-hash", "h1"]) == 0
    assert "hit:" in capsys.readouterr().out
    assert main(["explain", "pkg.mod.kern", '[128, "bfloat16"]', "--db", src, "--kernel-hash", "h1"]) == 0
    out = capsys.readouterr().out
    assert "miss:" in out and "key[1]: stored 'float16', lookup 'bfloat16'" in out
    assert main(["explain", "pkg.mod.kern", "[128,\"float16\"]", "--db", src, "--kernel-hash", "h2"]) == 0
    assert "kernel_hash: stored h1" in capsys.readouterr().out
    assert main(["explain", "pkg.mod.kernn", "[128]", "--db", src, "--kernel-hash", "h1"]) == 0
    assert "similar names: pkg.mod.kern" in capsys.readouterr().out
    # another environment only: the differing env fields are named
    only_other = fill(tmp_path / "o.db", [rec(128, 1.0, fp=other_fp())], miss=False)
    assert main(["explain", "pkg.mod.kern", '[128,"float16"]', "--db", only_other, "--kernel-hash", "h1"]) == 0
    out = capsys.readouterr().out
    assert "device_name: stored 'NVIDIA H100 80GB HBM3'" in out and "sm_count:" in out
    assert main(["explain", "pkg.mod.kern", "[128", "--db", src]) == 2


def test_prune(tmp_path, capsys):
    """Default: only rows that can never be served again (this device under an older
    Triton/torch; stale versions of registered kernels); other devices only when asked."""
    import triton
    import triton.language as tl

    from tuner.libtuner import _REGISTRY, libtuner

    @libtuner(configs=[triton.Config({"BLOCK": 16})], key=["n"], name="tests.prune_probe")
    @triton.jit
    def probe(X, n, BLOCK: tl.constexpr):
        pass

    old_sw = dataclasses.replace(current(), triton_version="0.1.0")  # this device, older Triton
    new_sw = dataclasses.replace(current(), torch_version="999.0")  # this device, newer torch: another node's
    try:
        db = fill(tmp_path / "p.db", [
            rec(128, 1.0), rec(256, 2.0), rec(128, 0.7, fp=other_fp()), rec(64, 3.0, kernel="pkg.mod.other"),
            rec(128, 1.0, fp=old_sw), rec(128, 1.0, fp=new_sw),
            rec(128, 1.0, kernel="tests.prune_probe"), rec(256, 1.0, kernel="tests.prune_probe", fp=other_fp()),
        ])
        _save(db, "tests.prune_probe", '[128,"float16"]', 1.0)  # the current version: kept
        other_objective = (probe.kernel_hashes() - {probe.kernel_hash}).pop()  # FLAGGEMS_TUNE_HOST flipped
        _save(db, "tests.prune_probe", '[64,"float16"]', 1.0, config=probe.configs[0], kernel_hash=other_objective)  # kept too
        before = sha(db)

        def left():
            return sorted((r.identity.kernel, r.identity.kernel_hash[:2], r.identity.key, r.identity.fingerprint.torch_version,
                           r.identity.fingerprint.triton_version, r.identity.env_id == other_fp().env_id) for r in all_records(db))

        everything = left()
        assert main(["prune", "--db", db, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "would delete 3 tuning_records, 6 config_timings, 0 tuning_misses" in out, out
        assert "this device under older triton 0.1.0" in out and "stale kernel version tests.prune_probe h1: 2 records" in out
        assert sha(db) == before
        assert main(["prune", "--db", db]) == 0
        gone = set(everything) - set(left())
        assert {(k, h, tv) for k, h, _, _, tv, _ in gone} == {
            ("pkg.mod.kern", "h1", "0.1.0"), ("tests.prune_probe", "h1", current().triton_version)}
        assert len(gone) == 3
        assert any(other for *_, other in left())  # another device's valid row stays
        assert any(tv == "999.0" for _, _, _, tv, _, _ in left())  # and a newer torch of this device
        assert len(SQLStore(db).misses()) == 1

        assert main(["prune", "--db", db, "--other-devices"]) == 0
        assert "deleted 1 tuning_records" in capsys.readouterr().out
        assert not any(other for *_, other in left())
        assert main(["prune", "--db", db, "--other-envs"]) == 0
        assert {r.identity.env_id for r in all_records(db)} == {current().env_id}
        assert main(["prune", "--db", db, "--older-than", "36500"]) == 0
        assert len(all_records(db)) == 5  # rows of 2025 are younger than 100 years
        assert main(["prune", "--db", db, "--older-than", "0"]) == 0
        assert all_records(db) == []
    finally:
        _REGISTRY.remove(probe)


def test_with_kernels_round_trip(tmp_path, src, monkeypatch, capsys):
    cache = tmp_path / "triton"
    d = cache / "ABC234"
    d.mkdir(parents=True)
    (d / "kern.json").write_text(json.dumps({"name": "kern"}))
    (d / "kern.cubin").write_bytes(b"\x7fELF")
    out = tmp_path / "k.tdb"
    assert main(["export", "--db", src, "--with-kernels", "-o", str(out)]) == 0
    assert "2 kernel cache files in 1 entries" in capsys.readouterr().out
    fresh = tmp_path / "fresh-triton"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(fresh))
    assert main(["import", str(out), "--db", str(tmp_path / "n.db"), "--dry-run"]) == 0
    assert "would write 1 entries" in capsys.readouterr().out and not fresh.exists()
    assert main(["import", str(out), "--db", str(tmp_path / "n.db")]) == 0
    assert (fresh / "ABC234" / "kern.cubin").read_bytes() == b"\x7fELF"
    assert main(["import", str(out), "--db", str(tmp_path / "n.db")]) == 0
    assert "0 entries, 1 already present" in capsys.readouterr().out
