"""gems-tunedb in-process: export/import round trip, bad bundles leave the DB byte-for-byte
unchanged, dry-run reports, commutative merge of DBs and bundles, stats, explain, prune,
verify's honest report."""
import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tuner import bundle as B
from tuner.cli.tunedb import main
from tuner.fingerprint import current
from tuner.store import Identity, Miss, Record, Timing
from tuner.store.sql import SQLStore

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


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


def test_stats_workload_needs_issue_5(src, capsys):
    import importlib.util

    if importlib.util.find_spec("tuner.workload") is not None:
        pytest.skip("the workload module exists now")
    assert main(["stats", "--db", src, "--workload", "workloads/llama7b.yaml"]) == 2
    assert "needs the workload module (issue 5)" in capsys.readouterr().err


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


def test_prune(tmp_path, src, capsys):
    before = sha(src)
    assert main(["prune", "--db", src, "--dry-run"]) == 0
    assert "would delete 1 tuning_records, 2 config_timings" in capsys.readouterr().out
    assert sha(src) == before
    assert main(["prune", "--db", src]) == 0
    assert {r.identity.env_id for r in all_records(src)} == {current().env_id}
    assert main(["prune", "--db", src, "--older-than", "36500"]) == 0
    assert len(all_records(src)) == 3  # rows of 2025 are younger than 100 years
    assert main(["prune", "--db", src, "--older-than", "0"]) == 0
    assert all_records(src) == []


def test_verify_reports_what_it_cannot_do(src, capsys):
    rc = main(["verify", "--db", src])
    out = capsys.readouterr()
    assert rc == 4  # pkg.mod.* are no flag_gems kernels: flagged as unknown
    assert "unknown: pkg.mod.kern" in out.out
    assert "1 of other environments cannot be timed here" in out.out


def test_verify_registered_kernel_is_not_faked(tmp_path, capsys):
    """A row of a registered kernel with the current hash: verify must say it did not time it."""
    import triton
    import triton.language as tl

    from tuner.libtuner import _REGISTRY, libtuner

    @libtuner(configs=[triton.Config({"BLOCK": 16})], key=["n"], name="tests.verify_probe")
    @triton.jit
    def probe(X, n, BLOCK: tl.constexpr):
        pass

    try:
        db = fill(tmp_path / "v.db", [rec(16, 1.0, kernel="tests.verify_probe")], miss=False)
        s = SQLStore(db)
        r = s.records()[0]
        s.save(dataclasses.replace(r, identity=dataclasses.replace(r.identity, kernel_hash=probe.kernel_hash)))
        s.close()
        rc = main(["verify", "--db", db, "--kernel", "tests.verify_probe", "-v"])
        out = capsys.readouterr()
        assert "not re-timed" in out.out and "verified 0" in out.out
        assert rc in (3, 4)  # 3: only unverified rows; 4: the stale h1 row is flagged too
        assert "stale" in out.out
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
