"""Tuning bundles: round trip, strict validation of every member and row, refusal of
newer formats, fuzzed input never raising anything but BundleError, and a commutative
``faster`` merge."""
import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from tuner import bundle as B
from tuner.fingerprint import Fingerprint
from tuner.store import Identity, Record, Timing

FP = Fingerprint("interpreter", "Test CPU", "", 4, "3.9.0", "2.13.0")
FP_H100 = Fingerprint("nvidia", "NVIDIA H100 80GB HBM3", "9.0", 132, "3.9.0", "2.13.0")
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def rec(key=128, ms=1.0, fp=FP, block=None, kernel="pkg.mod.kern", created=T0, host="h"):
    ident = Identity(kernel, "h1", json.dumps([key, "float16"], separators=(",", ":")), fp)
    return Record(ident, {"BLOCK": block or key, "num_warps": 4}, ms, ms * 0.9, ms * 1.1, 3,
                  source="pretune", host=host, created_at=created)


def sample_data() -> B.BundleData:
    d = B.BundleData()
    d.records = [rec(128, 1.0), rec(256, 2.0), rec(128, 0.5, fp=FP_H100)]
    for r in d.records:
        d.timings[B.ident_key(r.identity)] = [Timing(r.config, r.median_ms, r.p20_ms, r.p80_ms),
                                              Timing({"BLOCK": 32}, None, error="OutOfResources")]
    d.misses = [B.MissEntry(rec(1024).identity, '{"n":1000}', 2, T0, T0 + timedelta(days=1))]
    return d


def tar_of(members, *, end=True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def members_of(blob: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def with_manifest(members, edit) -> bytes:
    """Rebuild a bundle with its manifest edited by ``edit(dict)``."""
    out = []
    for name, blob in members:
        if name == B.MANIFEST:
            m = json.loads(blob)
            edit(m)
            blob = json.dumps(m).encode()
        out.append((name, blob))
    return tar_of(out)


def refit(members, name, new_blob) -> bytes:
    """Replace a member and fix the manifest's sha256 and size (a consistent tamper)."""
    def edit(m):
        m["files"][name] = {"sha256": hashlib.sha256(new_blob).hexdigest(), "size": len(new_blob)}
    return with_manifest([(n, new_blob if n == name else b) for n, b in members], edit)


@pytest.fixture(scope="module")
def valid() -> bytes:
    return B.bundle_bytes(sample_data(), created_at=T0)


def test_round_trip(valid):
    got = B.read_bundle_bytes(valid)
    want = sample_data()
    by_ident = lambda rs: sorted(rs, key=lambda r: B.ident_key(r.identity))  # noqa: E731
    assert by_ident(got.records) == by_ident(B.normalized(r) for r in want.records)
    assert got.timings == want.timings
    assert got.misses == want.misses
    assert got.manifest.counts.records == 3 and got.manifest.format_version == B.FORMAT_VERSION


def test_bytes_are_deterministic(valid):
    assert B.bundle_bytes(sample_data(), created_at=T0) == valid


def test_write_and_read_file(tmp_path):
    path = B.write_bundle(tmp_path / "x.tdb", sample_data())
    assert B.looks_like_bundle(path)
    assert len(B.read_bundle(path).records) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["x.tdb"]  # no temp file left


def test_naive_created_at_is_utc():
    r = dataclasses.replace(rec(), created_at=datetime(2025, 1, 1))
    d = B.BundleData(records=[r])
    assert B.read_bundle_bytes(B.bundle_bytes(d)).records[0].created_at == T0


@pytest.mark.parametrize("cut", [0, 100, 511, 1024, 2048, -1024, -1, -600])
def test_truncated(valid, cut):
    with pytest.raises(B.BundleError):
        B.read_bundle_bytes(valid[:cut] if cut else b"")


def test_trailing_garbage(valid):
    with pytest.raises(B.BundleError, match="trailing"):
        B.read_bundle_bytes(valid + b"x" * 1024)


def test_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n" * 500)
    with pytest.raises(B.BundleError, match="not"):
        B.read_bundle(tmp_path / "notes.txt")
    with pytest.raises(B.BundleError, match="cannot read"):
        B.read_bundle(tmp_path / "missing.tdb")
    # a tar, but not ours
    with pytest.raises(B.BundleError, match="unexpected member"):
        B.read_bundle_bytes(tar_of([("README", b"hi")]))
    with pytest.raises(B.BundleError, match="first member"):
        B.read_bundle_bytes(tar_of([(B.RECORDS, b"")]))


def test_sha_mismatch(valid):
    members = members_of(valid)
    rows = gzip.decompress(dict(members)[B.RECORDS]).replace(b'"median_ms":1.0', b'"median_ms":0.1')
    tampered = [(n, gzip.compress(rows) if n == B.RECORDS else b) for n, b in members]
    # the same size is not enough: pad/cut so only the sha can tell
    with pytest.raises(B.BundleError, match="(sha256|bytes).*(tampered)"):
        B.read_bundle_bytes(tar_of(tampered))


def test_flipped_byte_in_member(valid):
    members = members_of(valid)
    blob = bytearray(dict(members)[B.TIMINGS])
    blob[20] ^= 0xFF
    with pytest.raises(B.BundleError, match="sha256 of timings"):
        B.read_bundle_bytes(tar_of([(n, bytes(blob) if n == B.TIMINGS else b) for n, b in members]))


def test_newer_format_refused(valid):
    members = members_of(valid)

    def newer(m):
        m["format_version"] = B.FORMAT_VERSION + 1
        m["something_new"] = {"x": 1}

    with pytest.raises(B.BundleError, match="format version 2 is newer.*upgrade flag_gems"):
        B.read_bundle_bytes(with_manifest(members, newer))


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["files"].pop(B.MISSES), "does not match the members"),
    (lambda m: m["files"].__setitem__("kernels/AB/x.json", {"sha256": "0" * 64, "size": 1}), "missing kernels/AB"),
    (lambda m: m["counts"].__setitem__("records", 4), "counts do not match"),
    (lambda m: m.__setitem__("format", "something-else"), "not a flag_gems tuning bundle"),
    (lambda m: m.__setitem__("format_version", "1"), "invalid format_version"),
    (lambda m: m.__setitem__("extra", 1), "invalid manifest"),
    (lambda m: m["files"][B.RECORDS].__setitem__("size", 1), "manifest says 1"),
])
def test_manifest_not_matching(valid, edit, match):
    with pytest.raises(B.BundleError, match=match):
        B.read_bundle_bytes(with_manifest(members_of(valid), edit))


def test_unlisted_member(valid):
    members = members_of(valid) + [("kernels/ABC/k.cubin", b"\0")]
    with pytest.raises(B.BundleError, match="not listed kernels/ABC/k.cubin"):
        B.read_bundle_bytes(tar_of(members))


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "kernels/../../x", "kernels/a/.hidden/x", "kernels/a/b/c"])
def test_unsafe_member_names(valid, name):
    with pytest.raises(B.BundleError, match="unexpected member"):
        B.read_bundle_bytes(tar_of(members_of(valid) + [(name, b"x")]))


def test_symlink_member_refused(valid):
    buf = io.BytesIO(tar_of(members_of(valid)))
    raw = buf.getvalue()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as tf:
        for m in src.getmembers():
            tf.addfile(m, src.extractfile(m))
        link = tarfile.TarInfo("kernels/AB/x.so")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(B.BundleError, match="not a regular file"):
        B.read_bundle_bytes(out.getvalue())


def _row_edit(valid, member, fn):
    members = members_of(valid)
    lines = gzip.decompress(dict(members)[member]).decode().splitlines()
    rows = [json.loads(x) for x in lines]
    fn(rows)
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    return refit(members, member, blob)


@pytest.mark.parametrize("member, fn, match", [
    (B.RECORDS, lambda rows: rows[0].__setitem__("median_ms", "fast"), "median_ms"),
    (B.RECORDS, lambda rows: rows[0].__setitem__("median_ms", -1.0), "median_ms"),
    (B.RECORDS, lambda rows: rows[0].pop("config"), "config"),
    (B.RECORDS, lambda rows: rows[0].__setitem__("bonus", 1), "bonus"),
    (B.RECORDS, lambda rows: rows[0].__setitem__("key", "{not json"), "key"),
    (B.RECORDS, lambda rows: rows[0].__setitem__("key", '{"a":1}'), "key"),
    (B.RECORDS, lambda rows: rows[0]["env"].__setitem__("device_name", "Other GPU"), "env_id is not the digest"),
    (B.RECORDS, lambda rows: rows[0]["config"].__setitem__("BLOCK", [1, 2]), "config"),
    (B.RECORDS, lambda rows: rows.append(dict(rows[0])), "two records"),
    (B.TIMINGS, lambda rows: rows[0].__setitem__("kernel", "pkg.other"), "without its record"),
    (B.MISSES, lambda rows: rows[0].__setitem__("count", 0), "count"),
])
def test_row_schema_violations(valid, member, fn, match):
    blob = _row_edit(valid, member, fn)
    if member == B.RECORDS and match == "two records":
        blob = with_manifest(members_of(blob), lambda m: m["counts"].__setitem__("records", 4))
    with pytest.raises(B.BundleError, match=match):
        B.read_bundle_bytes(blob)


def test_nan_in_rows_refused(valid):
    members = members_of(valid)
    text = gzip.decompress(dict(members)[B.RECORDS]).replace(b'"median_ms":1.0', b'"median_ms":NaN', 1)
    with pytest.raises(B.BundleError, match="median_ms"):
        B.read_bundle_bytes(refit(members, B.RECORDS, gzip.compress(text)))


def test_gzip_bomb_and_garbage(valid, monkeypatch):
    members = members_of(valid)
    with pytest.raises(B.BundleError, match="not valid gzip"):
        B.read_bundle_bytes(refit(members, B.RECORDS, b"not gzip at all"))
    with pytest.raises(B.BundleError, match="truncated or padded"):
        B.read_bundle_bytes(refit(members, B.RECORDS, dict(members)[B.RECORDS][:-4]))
    monkeypatch.setattr(B, "MAX_JSONL_BYTES", 100)
    with pytest.raises(B.BundleError, match="decompresses to more than"):
        B.read_bundle_bytes(refit(members, B.RECORDS, gzip.compress(b"\n" * 1000)))


VALID = B.bundle_bytes(sample_data(), created_at=T0)
VALID_RECORDS = B.read_bundle_bytes(VALID).records


class _Mutated(bytes):
    def __repr__(self) -> str:  # keep hypothesis' failure report short
        return f"<{len(self)} bytes>"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_reader_only_raises_bundle_error(data):
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(blob)), label="pos")
        if op in ("flip", "set") and pos < len(blob):
            blob[pos] = blob[pos] ^ data.draw(st.integers(1, 255)) if op == "flip" else data.draw(st.integers(0, 255))
        elif op == "cut":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del blob[pos:pos + data.draw(st.integers(1, 64))]
    try:
        got = B.read_bundle_bytes(_Mutated(blob))
    except B.BundleError as e:
        assert "\n" not in str(e)
        return
    # A mutation the reader accepts must leave the content intact (e.g. a tar header
    # field nobody reads, like mtime or uname).
    assert got.records == VALID_RECORDS


# -- merge -------------------------------------------------------------------------------
FPS = [FP, FP_H100]
record_st = st.builds(
    rec,
    key=st.sampled_from([64, 128, 256]),
    ms=st.sampled_from([0.5, 1.0, 1.0, 2.0]),
    fp=st.sampled_from(FPS),
    block=st.sampled_from([16, 32, 64]),
    created=st.sampled_from([T0, T0 + timedelta(hours=1)]),
    host=st.sampled_from(["a", "b"]),
)


def data_of(records, tag):
    d = B.BundleData()
    for r in records:
        k = B.ident_key(r.identity)
        if k in d.timings:
            continue
        d.records.append(r)
        d.timings[k] = [Timing(r.config, r.median_ms, r.p20_ms, r.p80_ms), Timing({"BLOCK": 8}, 9.0 + tag)]
    return d


def canon(d: B.BundleData) -> bytes:
    return B.bundle_bytes(d, created_at=T0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(record_st, max_size=6), min_size=2, max_size=4), st.randoms(use_true_random=False))
def test_merge_faster_is_commutative(sets, rnd):
    inputs = [data_of(rs, n) for n, rs in enumerate(sets)]
    merged = B.merge_data(inputs, "faster")
    shuffled = list(inputs)
    rnd.shuffle(shuffled)
    assert canon(B.merge_data(shuffled, "faster")) == canon(merged)
    # and it picks the fastest record of every identity
    for r in merged.records:
        k = B.ident_key(r.identity)
        best = min(x.median_ms for d in inputs for x in d.records if B.ident_key(x.identity) == k)
        assert r.median_ms == best


def test_merge_newer_and_keep_and_replace():
    old, new = rec(ms=1.0, created=T0), rec(ms=2.0, created=T0 + timedelta(days=1), block=64)
    a, b = data_of([old], 0), data_of([new], 1)
    assert B.merge_data([a, b], "newer").records == B.merge_data([b, a], "newer").records == [new]
    assert B.merge_data([a, b], "faster").records == [old]
    assert B.merge_data([a, b], "keep").records == [old]
    assert B.merge_data([a, b], "replace").records == [new]
    # timings travel with the winning record
    assert B.merge_data([a, b], "newer").timings[B.ident_key(new.identity)][0].median_ms == 2.0


# -- Triton cache entries ----------------------------------------------------------------
def test_kernel_cache_collect_and_install(tmp_path):
    src = tmp_path / "src"
    d = src / "ABCDEF234567"
    d.mkdir(parents=True)
    (d / "kern.json").write_text(json.dumps({"name": "kern", "num_warps": 4}))
    (d / "kern.cubin").write_bytes(b"\x7fELF")
    (d / "__grp__kern.json").write_text(json.dumps({"child_paths": {"kern.cubin": str(d / "kern.cubin"), "kern.json": str(d / "kern.json")}}))
    other = src / "OTHER"
    other.mkdir()
    (other / "other.json").write_text(json.dumps({"name": "other"}))
    launcher = src / "LAUNCH"
    launcher.mkdir()
    (launcher / "__triton_launcher.so").write_bytes(b"so")
    files = B.collect_kernel_files(["pkg.mod.kern"], src)
    assert sorted(files) == ["kernels/ABCDEF234567/__grp__kern.json", "kernels/ABCDEF234567/kern.cubin",
                             "kernels/ABCDEF234567/kern.json", "kernels/LAUNCH/__triton_launcher.so"]
    data = sample_data()
    data.kernel_files = files
    got = B.read_bundle_bytes(B.bundle_bytes(data))
    assert got.kernel_files == files

    dst = tmp_path / "dst"
    (dst / "LAUNCH").mkdir(parents=True)
    (dst / "LAUNCH" / "__triton_launcher.so").write_bytes(b"mine")
    res = B.install_kernel_files(got.kernel_files, dst)
    assert res.installed == ["ABCDEF234567"] and res.skipped == ["LAUNCH"]
    assert (dst / "LAUNCH" / "__triton_launcher.so").read_bytes() == b"mine"  # never overwritten
    grp = json.loads((dst / "ABCDEF234567" / "__grp__kern.json").read_text())
    assert grp["child_paths"]["kern.cubin"] == str(dst / "ABCDEF234567" / "kern.cubin")
    assert (dst / "ABCDEF234567" / "kern.cubin").read_bytes() == b"\x7fELF"
    assert sorted(p.name for p in dst.iterdir()) == ["ABCDEF234567", "LAUNCH"]  # no temp dirs left
    assert B.install_kernel_files(got.kernel_files, dst).installed == []


def test_kernel_cache_collects_variant_tuners(tmp_path):
    """Tuners named ``module.function:variant`` (softmax, reductions) share one Triton
    function: its cache entries are packed for them too."""
    assert B.kernel_function_name("flag_gems.ops.softmax._softmax_fwd_kernel:rows") == "_softmax_fwd_kernel"
    assert B.kernel_function_name("pkg.mod.kern:v1.2") == "kern"
    assert B.kernel_function_name("pkg.mod.kern") == "kern"
    src = tmp_path / "cache"
    for d, name in (("SOFTMAX", "_softmax_fwd_kernel"), ("REDUCE", "_reduce_kernel"), ("OTHER", "rows")):
        (src / d).mkdir(parents=True)
        (src / d / f"{name}.json").write_text(json.dumps({"name": name}))
        (src / d / f"{name}.cubin").write_bytes(b"\x7fELF")
    files = B.collect_kernel_files(["flag_gems.ops.softmax._softmax_fwd_kernel:rows",
                                    "flag_gems.ops.reduction._reduce_kernel:inner"], src)
    assert sorted(files) == ["kernels/REDUCE/_reduce_kernel.cubin", "kernels/REDUCE/_reduce_kernel.json",
                             "kernels/SOFTMAX/_softmax_fwd_kernel.cubin", "kernels/SOFTMAX/_softmax_fwd_kernel.json"]
