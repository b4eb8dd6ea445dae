"""gems-tunedb: export, import, merge, inspect and verify tuning DBs.

Exit status: 0 success; 1 an error (bad bundle, unusable DB, ...: one line on stderr,
nothing written); 2 a usage error or a part that needs what this install lacks.
``verify``: 0 every re-timed winner is within the threshold; 1 some moved (or no longer
run); 3 nothing could be re-timed (rows it cannot time are listed with the reason).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import pkgutil
import re
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SUBCOMMANDS = ("export", "import", "merge", "stats", "verify", "explain", "prune")
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")

log = logging.getLogger(__name__)


class CLIError(Exception):
    """A failure reported as one line and exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- helpers -----------------------------------------------------------------------------
def _open_existing(db: str | None):
    """An ``SQLStore`` on an existing DB (a missing SQLite file is an error, not created)."""
    from tuner.store import db as dbmod
    from tuner.store.sql import SQLStore

    url = dbmod.resolve_url(db)
    path = dbmod.sqlite_path(url)
    if path is not None and not path.exists():
        raise CLIError(f"no tuning DB at {path}")
    return SQLStore(url)


def _open_target(db: str | None):
    from tuner.store.sql import SQLStore

    return SQLStore(db)


def _target_exists(db: str | None) -> bool:
    from tuner.store import db as dbmod

    url = dbmod.resolve_url(db)
    path = dbmod.sqlite_path(url)
    return path is None or path.exists()


def _is_db_name(name: str) -> bool:
    return "://" in name or name.lower().endswith(DB_SUFFIXES)


def _load_input(name: str):
    """A bundle or a DB, sniffed by content (a tar is a bundle) then by name."""
    from tuner.bundle import load_store, looks_like_bundle, read_bundle

    if "://" not in name:
        p = Path(name)
        if not p.exists():
            raise CLIError(f"{name}: no such file")
        if looks_like_bundle(p) or not _is_db_name(name):
            with open(p, "rb") as f:
                is_sqlite = f.read(16) == b"SQLite format 3\x00"
            if not is_sqlite:
                return read_bundle(p)
    store = _open_existing(name)
    try:
        return load_store(store)
    finally:
        store.close()


def _here():
    from tuner.fingerprint import current

    return current()


def _load_flag_gems_kernels() -> tuple[dict[str, Any], list[str]]:
    """Import every ``flag_gems.ops`` module so their LibTuners register; name -> tuner."""
    from tuner.libtuner import _REGISTRY

    problems: list[str] = []
    try:
        ops = importlib.import_module("flag_gems.ops")
        for mod in pkgutil.walk_packages(ops.__path__, "flag_gems.ops."):
            try:
                importlib.import_module(mod.name)
            except Exception as e:  # one broken op module must not hide the others
                problems.append(f"{mod.name}: {type(e).__name__}: {e}")
    except Exception as e:
        problems.append(f"flag_gems.ops: {type(e).__name__}: {e}")
    return {t.name: t for t in _REGISTRY}, problems


# -- export / import / merge ----------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from tuner.bundle import collect_kernel_files, load_store, triton_cache_dir, write_bundle

    store = _open_existing(args.db)
    try:
        data = load_store(store, device=args.device, kernel=args.kernel)
    finally:
        store.close()
    if args.with_kernels:
        cache = Path(args.triton_cache_dir) if args.triton_cache_dir else triton_cache_dir()
        data.kernel_files = collect_kernel_files({r.identity.kernel for r in data.records}, cache)
        if not data.kernel_files:
            print(f"gems-tunedb: warning: no Triton cache entries of the exported kernels in {cache}", file=sys.stderr)
    if not data.records:
        print("gems-tunedb: warning: no records matched; writing an empty bundle", file=sys.stderr)
    filters = {"device": args.device, "kernel": args.kernel, "with_kernels": "yes" if args.with_kernels else "no"}
    write_bundle(args.output, data, filters=filters)
    dirs = {n.split("/")[1] for n in data.kernel_files}
    print(
        f"exported {len(data.records)} records, {data.n_timings} timings, {len(data.misses)} misses"
        + (f", {len(data.kernel_files)} kernel cache files in {len(dirs)} entries" if args.with_kernels else "")
        + f" to {args.output}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tuner.bundle import import_into_store, install_kernel_files, read_bundle, triton_cache_dir

    data = read_bundle(args.file)  # validates everything before anything is opened for writing
    cache = Path(args.triton_cache_dir) if args.triton_cache_dir else triton_cache_dir()
    if args.dry_run:
        store = _open_existing(args.db) if _target_exists(args.db) else None
        try:
            report = import_into_store(store, data, policy=args.policy, dry_run=True, here=_here())
        finally:
            if store is not None:
                store.close()
    else:
        store = _open_target(args.db)
        try:
            report = import_into_store(store, data, policy=args.policy, here=_here())
        finally:
            store.close()
    if data.kernel_files and not args.no_kernels:
        report.kernels = install_kernel_files(data.kernel_files, cache, dry_run=args.dry_run)
    print(("dry run: nothing written\n" if args.dry_run else "") + "\n".join(report.lines()))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tuner.bundle import import_into_store, merge_data, write_bundle

    out = args.output
    inputs = [_load_input(name) for name in args.inputs]  # every input validated first
    merged = merge_data(inputs, policy=args.policy)
    if _is_db_name(out):
        if "://" not in out and Path(out).exists():
            raise CLIError(f"{out}: exists; merge writes a new DB (import into an existing one instead)")
        if merged.kernel_files:
            print("gems-tunedb: warning: a DB holds no kernel cache files; write a bundle to keep them", file=sys.stderr)
        store = _open_target(out)
        try:
            import_into_store(store, merged, policy="replace", here=_here())
        finally:
            store.close()
    else:
        write_bundle(out, merged, filters={"merged_from": str(len(inputs)), "policy": args.policy})
    print(f"merged {len(inputs)} inputs under {args.policy}: {len(merged.records)} records, "
          f"{merged.n_timings} timings, {len(merged.misses)} misses to {out}")
    return 0


# -- stats -------------------------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    from tuner.bundle import device_label

    if args.workload:
        return _stats_workload(args)
    store = _open_existing(args.db)
    try:
        records = store.records()
        counts = store.counts()
    finally:
        store.close()
    here = _here()
    per: Counter[tuple[str, str]] = Counter()
    envs: dict[str, dict[str, Any]] = {}
    for r in records:
        fp = r.identity.fingerprint
        per[(r.identity.kernel, device_label(fp))] += 1
        e = envs.setdefault(fp.env_id, {"env_id": fp.env_id, **fp.as_dict(), "records": 0, "current": fp.env_id == here.env_id})
        e["records"] += 1
    if args.json:
        print(json.dumps({
            "db": store.name, "counts": counts,
            "per_kernel_device": [{"kernel": k, "device": d, "records": n} for (k, d), n in sorted(per.items())],
            "environments": sorted(envs.values(), key=lambda e: e["env_id"]),
        }, indent=2))
        return 0
    print(f"{store.name}: {counts['records']} records, {counts['timings']} timings, {counts['misses']} misses")
    if per:
        wk = max(len(k) for k, _ in per)
        wd = max(len(d) for _, d in per)
        print(f"{'kernel':<{wk}}  {'device':<{wd}}  records")
        for (k, d), n in sorted(per.items()):
            print(f"{k:<{wk}}  {d:<{wd}}  {n}")
    for e in sorted(envs.values(), key=lambda e: e["env_id"]):
        mark = " (this machine)" if e["current"] else ""
        print(f"environment {e['env_id'][:8]}{mark}: {e['vendor']} {e['device_name']} cc {e['compute_capability'] or '-'} "
              f"triton {e['triton_version']} torch {e['torch_version']}: {e['records']} records")
    return 0


def _load_jobs(paths: list[str]) -> list:
    from tuner.workload import WorkloadError, load_jobs

    try:
        return load_jobs(paths)
    except WorkloadError as e:
        raise CLIError(str(e), 2) from e


def _provider(name: str) -> Any:
    from tuner.pretune import PretuneError, load_provider

    _, problems = _load_flag_gems_kernels()  # the ops register their LibTuners on import
    for p in problems:
        print(f"gems-tunedb: warning: could not import {p}", file=sys.stderr)
    try:
        return load_provider(name)
    except PretuneError as e:
        raise CLIError(str(e), 2) from e


def _env_line(fp: Any) -> str:
    return (f"environment {fp.env_id[:8]} ({fp.vendor} {fp.device_name}, triton {fp.triton_version}, "
            f"torch {fp.torch_version})")


def _stats_workload(args: argparse.Namespace) -> int:
    """Coverage: run the workloads' calls without tuning and look each requested key up."""
    from tuner.probe import workload_coverage

    jobs = _load_jobs(args.workload)
    prov = _provider(args.provider)
    here = _here()
    store = _open_existing(args.db)
    try:
        cov = workload_coverage(jobs, store, prov, here)
    finally:
        store.close()
    per = cov.per_kernel()
    if args.json:
        print(json.dumps({
            "db": store.name, "workloads": args.workload, "env_id": cov.env_id, "jobs": cov.jobs,
            "failed_jobs": [{"job": j, "error": e} for j, e in cov.failed],
            "keys": len(cov.keys), "stored": cov.stored, "kernels": per, "store_errors": cov.store_errors,
        }, indent=2))
        return 0
    print(f"coverage of {', '.join(args.workload)} in {store.name} for this machine's {_env_line(here)}: "
          f"{cov.jobs} calls ({len(cov.failed)} failed), {len(cov.keys)} keys: {cov.stored} stored, "
          f"{len(cov.keys) - cov.stored} missing")
    if per:
        wk = max(len(r["kernel"]) for r in per)
        print(f"{'kernel':<{wk}}  keys  stored  missing")
        for r in per:
            print(f"{r['kernel']:<{wk}}  {r['keys']:>4}  {r['stored']:>6}  {len(r['missing']):>7}")
    missing = [(r["kernel"], m) for r in per for m in r["missing"]]
    if missing:
        print("missing keys:")
        for kernel, m in missing:
            print(f"  {kernel} {m['key']}: {m['why']}")
    for job, err in cov.failed:
        print(f"failed call {job}: {err} (its keys past the failure are not counted)")
    if cov.store_errors:
        print(f"gems-tunedb: warning: {cov.store_errors} lookups failed; those keys count as missing", file=sys.stderr)
    return 0


# -- verify ------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    from tuner.probe import verify

    if args.threshold < 0:
        raise CLIError("--threshold must not be negative", 2)
    jobs = _load_jobs(args.workload) if args.workload else []
    prov = _provider(args.provider)
    here = _here()
    store = _open_existing(args.db)
    try:
        rep = verify(store, prov, kernel=args.kernel, sample=args.sample, seed=args.seed,
                     threshold=args.threshold, workload_jobs=jobs, here=here)
    finally:
        store.close()
    print(f"verify: {store.name}, this machine's {_env_line(here)}; threshold {args.threshold:.0%}")
    for c in rep.checked:
        if args.verbose or c.status != "verified":
            i = c.record.identity
            on = f" on {c.call}" if c.call and c.status in ("verified", "moved", "failed") else ""
            print(f"{c.status}: {i.kernel} key {i.key} config {json.dumps(c.record.config, sort_keys=True)}: {c.reason}{on}")
    groups: dict[tuple[str, str, str], int] = {}
    for c in rep.skipped:  # one line per kernel and reason: a removed kernel may have many rows
        k = (c.status, c.record.identity.kernel, c.reason)
        groups[k] = groups.get(k, 0) + 1
    for (st, kernel, why), n in sorted(groups.items()):
        print(f"{st}: {kernel} ({n} row{'s' if n != 1 else ''}): {why}")
    n = rep.counts()
    print(f"verify: {len(rep.checked)} of {rep.candidates} re-timable records of this environment sampled "
          f"(of {rep.this_env}; {rep.other_envs} of other environments cannot be timed here): "
          + ", ".join(f"{k} {n[k]}" for k in ("verified", "moved", "failed", "untimed", "stale", "unknown")))
    if rep.exit_code == 3:
        print("verify: nothing could be re-timed", file=sys.stderr)
    return rep.exit_code


# -- explain -----------------------------------------------------------------------------
_ENV_FIELDS = ("vendor", "device_name", "compute_capability", "sm_count", "triton_version", "torch_version")


def _key_diffs(want: list, have: list) -> list[str]:
    if len(want) != len(have):
        return [f"key has {len(have)} values, the lookup {len(want)}"]
    return [f"key[{n}]: stored {b!r}, lookup {a!r}" for n, (a, b) in enumerate(zip(want, have)) if a != b]


def cmd_explain(args: argparse.Namespace) -> int:
    from tuner.libtuner import _distance, nearest
    from tuner.store.base import canonical_json

    try:
        key = json.loads(args.key)
    except ValueError as e:
        raise CLIError(f"KEY must be JSON, e.g. '[4096, \"float16\"]': {e}", 2) from e
    if not isinstance(key, list):
        key = [key]
    key_json = canonical_json(key)
    here = _here()
    kernel_hash = args.kernel_hash
    if kernel_hash is None:
        tuners, _ = _load_flag_gems_kernels()
        t = tuners.get(args.kernel)
        kernel_hash = t.kernel_hash if t is not None else None
    store = _open_existing(args.db)
    try:
        rows = store.records(kernel=args.kernel)
        if not rows:
            names = sorted({r.identity.kernel for r in store.records()})
            close = difflib.get_close_matches(args.kernel, names, n=3)
            print(f"miss: no stored rows of kernel {args.kernel!r} in {store.name}"
                  + (f"; similar names: {', '.join(close)}" if close else ""))
            return 0
    finally:
        store.close()
    print(f"lookup: kernel {args.kernel} key {key_json} environment {here.env_id[:8]} "
          f"({here.vendor} {here.device_name}, triton {here.triton_version}, torch {here.torch_version})"
          + (f" kernel_hash {kernel_hash[:12]}" if kernel_hash else " kernel_hash unknown (pass --kernel-hash)"))
    scored = []
    for r in rows:
        i = r.identity
        diffs = []
        if kernel_hash is not None and i.kernel_hash != kernel_hash:
            diffs.append(f"kernel_hash: stored {i.kernel_hash[:12]}, current {kernel_hash[:12]} (kernel, config list or tuning objective changed)")
        stored_key = json.loads(i.key)
        kd = _key_diffs(key, stored_key)
        diffs += kd
        for f in _ENV_FIELDS:
            a, b = getattr(here, f), getattr(i.fingerprint, f)
            if a != b:
                diffs.append(f"{f}: stored {b!r}, this machine {a!r}")
        dist = _distance(key, stored_key)
        scored.append((len(diffs) - len(kd) + (1 if kd else 0), dist if dist == dist else float("inf"), i.key, r, diffs))
    scored.sort(key=lambda s: (s[0], s[1], s[2]))
    hits = [s for s in scored if not s[4]]
    if hits:
        print(f"hit: a lookup finds the stored row: config {canonical_json(hits[0][3].config)}")
        return 0
    print(f"miss: none of the {len(rows)} stored rows of this kernel matches; the nearest:")
    for _, _, _, r, diffs in scored[: args.limit]:
        print(f"  row key {r.identity.key} env {r.identity.env_id[:8]} config {canonical_json(r.config)}")
        for d in diffs:
            print(f"    {d}")
    if kernel_hash is not None:
        same = [r for r in rows if r.identity.kernel_hash == kernel_hash and r.identity.env_id == here.env_id]
        fb = nearest(key, same)
        if fb is not None:
            print(f"with FLAGGEMS_AUTOTUNE=never the nearest tuned key {fb.identity.key} is used: config {canonical_json(fb.config)}")
        else:
            print("with FLAGGEMS_AUTOTUNE=never the kernel's default config is used (no row of this version and environment)")
    return 0


# -- prune -------------------------------------------------------------------------------
_DEVICE_FIELDS = ("vendor", "device_name", "compute_capability", "sm_count")


def _release(version: str) -> tuple[int, ...] | None:
    """The release numbers of a version ("2.5.1+cu124" -> (2, 5, 1)), trailing zeros
    dropped so 2.5 == 2.5.0; None when it does not start with one."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip())
    if m is None:
        return None
    parts = [int(x) for x in m.group(0).split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _older_software(fp: Any, here: Any) -> bool:
    """Triton and torch both no newer than this machine's and one of them older. A newer
    or an unparsable version is kept: another node of this device may run it."""
    pairs = [(_release(fp.triton_version), _release(here.triton_version)),
             (_release(fp.torch_version), _release(here.torch_version))]
    if any(a is None or b is None for a, b in pairs):
        return False
    return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)


def _same_device(fp: Any, here: Any) -> bool:
    return all(getattr(fp, f) == getattr(here, f) for f in _DEVICE_FIELDS)


def cmd_prune(args: argparse.Namespace) -> int:
    from sqlalchemy import and_, delete, func, select

    from tuner.store.models import ConfigTiming, TuningMiss, TuningRecord
    from tuner.store.sql import row_fingerprint

    if args.older_than is not None and args.older_than < 0:
        raise CLIError("--older-than must not be negative", 2)
    explicit = args.old_versions or args.stale_kernels or args.other_devices or args.other_envs or args.older_than is not None
    # Without a selector only rows that can never be served again go: valid rows of other
    # devices (one DB may hold several) are dropped only when asked for.
    old_versions = args.old_versions or not explicit
    stale_kernels = args.stale_kernels or not explicit
    here = _here()
    current: dict[str, set[str]] = {}
    if stale_kernels:
        from tuner.libtuner import _REGISTRY

        _, problems = _load_flag_gems_kernels()
        for p in problems:
            print(f"gems-tunedb: warning: could not import {p}; its rows are not judged stale", file=sys.stderr)
        for t in _REGISTRY:  # either tuning objective's rows are current
            current.setdefault(t.name, set()).update(t.kernel_hashes())
    models = (TuningRecord, ConfigTiming, TuningMiss)
    store = _open_existing(args.db)
    try:
        envs: dict[str, Any] = {}
        pairs: set[tuple[str, str]] = set()
        with store.session() as s:
            for m in models:
                cols = (m.env_id, m.vendor, m.device_name, m.compute_capability, m.sm_count, m.triton_version, m.torch_version)
                for row in s.execute(select(*cols).distinct()):
                    envs[row.env_id] = row_fingerprint(row)
                if stale_kernels:
                    pairs |= {(k, h) for k, h in s.execute(select(m.kernel, m.kernel_hash).distinct())}
        old_envs = sorted(e for e, fp in envs.items() if e != here.env_id and _same_device(fp, here)
                          and _older_software(fp, here)) if old_versions else []
        other_devs = sorted(e for e, fp in envs.items() if not _same_device(fp, here)) if args.other_devices else []
        stale = sorted((k, h) for k, h in pairs if k in current and h not in current[k])
        cutoff = datetime.now(timezone.utc) - timedelta(days=args.older_than) if args.older_than is not None else None

        def selectors(m: Any) -> list[tuple[str, Any]]:
            out = []
            for e in old_envs:
                fp = envs[e]
                out.append((f"this device under older triton {fp.triton_version} torch {fp.torch_version} ({e[:8]})", m.env_id == e))
            for e in other_devs:
                out.append((f"other device {envs[e].device_slug or envs[e].vendor} ({e[:8]})", m.env_id == e))
            if args.other_envs:
                out.append(("every environment but this one", m.env_id != here.env_id))
            for k, h in stale:
                out.append((f"stale kernel version {k} {h[:12]}", and_(m.kernel == k, m.kernel_hash == h)))
            if cutoff is not None:
                when = m.last_seen if m is TuningMiss else m.created_at
                out.append((f"older than {args.older_than:g} days", when < cutoff))
            return out

        # One statement per selector, not one OR of them all: a DB with many stale kernel
        # versions would exceed SQLite's expression depth.
        counts: dict[str, int] = {}
        with store.session() as s:
            per_reason = [(label, s.scalar(select(func.count()).select_from(TuningRecord).where(c)))
                          for label, c in selectors(TuningRecord)]
        if args.dry_run:
            with store.session() as s:
                for m in models:
                    ids: set[int] = set()
                    for _, c in selectors(m):
                        ids.update(s.scalars(select(m.id).where(c)))
                    counts[m.__tablename__] = len(ids)
        else:
            with store.write() as s:  # one transaction: all of it or nothing
                for m in models:
                    counts[m.__tablename__] = sum(s.execute(delete(m).where(c)).rowcount for _, c in selectors(m))
    finally:
        store.close()
    what = ", ".join(x for x in (
        "older Triton/torch of this device" if old_versions else "",
        "stale kernel versions" if stale_kernels else "",
        "other devices" if args.other_devices else "",
        "other environments" if args.other_envs else "",
        f"rows older than {args.older_than:g} days" if args.older_than is not None else "",
    ) if x)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"prune ({what}; this environment {here.env_id[:8]}): {verb} "
          + ", ".join(f"{n} {t}" for t, n in counts.items()))
    for label, n in per_reason:
        print(f"  {label}: {n} records")
    return 0


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gems-tunedb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    db_help = "tuning DB: a path or SQLAlchemy URL (default: FLAGGEMS_TUNING_DB or this device's DB)"

    e = sub.add_parser("export", help="write a bundle of a DB's records")
    e.add_argument("--db", help=db_help)
    e.add_argument("--device", help="only this device: a slug, a substring of it or of the device name, or an env_id prefix")
    e.add_argument("--kernel", help="only this kernel (qualified name)")
    e.add_argument("-o", "--output", required=True, help="the bundle to write")
    e.add_argument("--with-kernels", action="store_true", help="also pack the Triton cache entries of the exported kernels")
    e.add_argument("--triton-cache-dir", help="default: TRITON_CACHE_DIR or ~/.triton/cache")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="validate a bundle, then write it into a DB in one transaction")
    i.add_argument("file")
    i.add_argument("--db", help=db_help)
    i.add_argument("--policy", choices=("faster", "newer", "keep", "replace"), default="faster")
    i.add_argument("--dry-run", action="store_true", help="print the compatibility report; write nothing")
    i.add_argument("--no-kernels", action="store_true", help="do not unpack the bundle's Triton cache entries")
    i.add_argument("--triton-cache-dir", help="default: TRITON_CACHE_DIR or ~/.triton/cache")
    i.set_defaults(func=cmd_import)

    m = sub.add_parser("merge", help="merge DBs and bundles into a new bundle or DB")
    m.add_argument("inputs", nargs="+", help="DBs (SQLite files, URLs) or bundles")
    m.add_argument("-o", "--output", required=True, help="a bundle, or a new DB if it ends in .db/.sqlite/.sqlite3 or is a URL")
    m.add_argument("--policy", choices=("faster", "newer", "keep", "replace"), default="faster")
    m.set_defaults(func=cmd_merge)

    s = sub.add_parser("stats", help="counts per kernel, device and environment")
    s.add_argument("--db", help=db_help)
    s.add_argument("--workload", action="append", metavar="FILE",
                   help="coverage of a workload (repeatable): run its calls without tuning and report which "
                        "requested keys the DB holds for this environment and kernel version")
    s.add_argument("--provider", default="flag_gems.tuning", help="module that runs the calls (default: flag_gems.tuning)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    v = sub.add_parser("verify", help="re-time a sample of stored winners of this environment on this device")
    v.add_argument("--db", help=db_help)
    v.add_argument("--kernel")
    v.add_argument("--sample", type=int, default=20, help="check this many random records (default 20; 0: all)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threshold", type=float, default=0.25,
                   help="flag a winner whose median moved by more than this fraction (default 0.25)")
    v.add_argument("--workload", action="append", metavar="FILE",
                   help="time winners on this workload's calls (the shapes pretuned) before rebuilding calls from keys")
    v.add_argument("--provider", default="flag_gems.tuning", help="module that runs the calls (default: flag_gems.tuning)")
    v.add_argument("-v", "--verbose", action="store_true", help="also list the verified rows")
    v.set_defaults(func=cmd_verify)

    x = sub.add_parser("explain", help="why a lookup of KERNEL KEY misses")
    x.add_argument("kernel")
    x.add_argument("key", help="the bucketed key as JSON, dtypes included, e.g. '[4096, \"float16\"]'")
    x.add_argument("--db", help=db_help)
    x.add_argument("--kernel-hash", help="the current kernel hash (default: from the registered flag_gems kernel)")
    x.add_argument("--limit", type=int, default=3)
    x.set_defaults(func=cmd_explain)

    r = sub.add_parser("prune", help="drop rows that can never be served again (selectors combine; "
                                       "default: --old-versions --stale-kernels)")
    r.add_argument("--db", help=db_help)
    r.add_argument("--old-versions", action="store_true",
                   help="rows of this machine's device under an older Triton or torch")
    r.add_argument("--stale-kernels", action="store_true",
                   help="rows of a kernel registered here whose kernel hash is not the current one (any device)")
    r.add_argument("--other-devices", action="store_true", help="every row of other devices (valid ones too)")
    r.add_argument("--other-envs", action="store_true", help="every row of an environment other than this one")
    r.add_argument("--older-than", type=float, metavar="DAYS", help="rows created (misses: last seen) before this many days")
    r.add_argument("--dry-run", action="store_true")
    r.set_defaults(func=cmd_prune)
    return p


def main(argv: list[str] | None = None) -> int:
    from tuner.bundle import BundleError
    from tuner.settings import SettingsError
    from tuner.store.db import TuningDBError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"gems-tunedb {args.command}: error: {e}", file=sys.stderr)
        return e.code
    except (BundleError, TuningDBError, SettingsError) as e:
        print(f"gems-tunedb {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gems-tunedb {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
