"""gems-tunedb: export, import, merge, inspect and verify tuning DBs.

Exit status: 0 success; 1 an error (bad bundle, unusable DB, ...: one line on stderr,
nothing written); 2 a usage error or a part that needs what this install lacks;
3 ``verify`` found rows it could not verify; 4 ``verify`` flagged rows.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import json
import logging
import pkgutil
import random
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

    if args.workload is not None and importlib.util.find_spec("tuner.workload") is None:
        raise CLIError("stats --workload needs the workload module (issue 5), which this flag_gems does not have yet", 2)
    if args.workload is not None:
        raise CLIError("stats --workload: coverage against a workload is not implemented yet (issue 5)", 2)
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


# -- verify ------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    here = _here()
    store = _open_existing(args.db)
    try:
        records = store.records(kernel=args.kernel)
    finally:
        store.close()
    other = [r for r in records if r.identity.env_id != here.env_id]
    mine = [r for r in records if r.identity.env_id == here.env_id]
    rng = random.Random(args.seed)
    sample = mine if args.sample is None or args.sample >= len(mine) else rng.sample(mine, args.sample)
    tuners, problems = _load_flag_gems_kernels()
    for p in problems:
        print(f"warning: could not import {p}", file=sys.stderr)
    has_workload = importlib.util.find_spec("tuner.workload") is not None
    status: Counter[str] = Counter()
    for rec in sample:
        i = rec.identity
        t = tuners.get(i.kernel)
        if t is None:
            why, st = "no flag_gems kernel of this name is registered", "unknown"
        elif t.kernel_hash != i.kernel_hash:
            why, st = (f"stale: kernel source or config space changed (stored hash {i.kernel_hash[:12]}, "
                       f"current {t.kernel_hash[:12]}); this row is never served"), "stale"
        else:
            reason = ("building arguments for a key needs the workload module (issue 5)" if not has_workload
                      else "re-timing from a workload is not implemented yet")
            why, st = f"not re-timed: {reason}", "unverified"
        status[st] += 1
        if args.verbose or st != "unverified":
            print(f"{st}: {i.kernel} key {i.key}: {why}")
    print(f"verify: {len(sample)} of {len(mine)} records of this environment checked "
          f"({len(other)} of other environments cannot be timed here): "
          + ", ".join(f"{k} {status[k]}" for k in ("verified", "moved", "stale", "unknown", "unverified")))
    if status["unverified"] and not has_workload:
        print("verify: re-timing needs real arguments for each key, which only a workload provides (issue 5); "
              "nothing was timed", file=sys.stderr)
    if status["stale"] or status["unknown"] or status["moved"]:
        return 4
    return 3 if status["unverified"] else 0


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
            diffs.append(f"kernel_hash: stored {i.kernel_hash[:12]}, current {kernel_hash[:12]} (kernel or config list edited)")
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
def cmd_prune(args: argparse.Namespace) -> int:
    from sqlalchemy import delete, func, or_, select

    from tuner.store.models import ConfigTiming, TuningMiss, TuningRecord

    if args.older_than is not None and args.older_than < 0:
        raise CLIError("--older-than must not be negative", 2)
    other_envs = args.other_envs or args.older_than is None
    here = _here()
    store = _open_existing(args.db)
    conds: dict[Any, list] = {TuningRecord: [], ConfigTiming: [], TuningMiss: []}
    if other_envs:
        for m in conds:
            conds[m].append(m.env_id != here.env_id)
    if args.older_than is not None:
        cutoff = datetime.now(timezone.utc) - timedelta(days=args.older_than)
        conds[TuningRecord].append(TuningRecord.created_at < cutoff)
        conds[ConfigTiming].append(ConfigTiming.created_at < cutoff)
        conds[TuningMiss].append(TuningMiss.last_seen < cutoff)
    counts = {}
    try:
        if args.dry_run:
            with store.session() as s:
                for m, cs in conds.items():
                    counts[m.__tablename__] = s.scalar(select(func.count()).select_from(m).where(or_(*cs)))
        else:
            with store.write() as s:
                for m, cs in conds.items():
                    counts[m.__tablename__] = s.execute(delete(m).where(or_(*cs))).rowcount
    finally:
        store.close()
    what = " and ".join(
        x for x in ("rows of other environments" if other_envs else "",
                    f"rows older than {args.older_than} days" if args.older_than is not None else "") if x
    )
    verb = "would delete" if args.dry_run else "deleted"
    print(f"prune ({what}; this environment {here.env_id[:8]}): {verb} "
          + ", ".join(f"{n} {t}" for t, n in counts.items()))
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
    s.add_argument("--workload", help="coverage of a workload's keys (needs the workload module)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    v = sub.add_parser("verify", help="re-time stored winners of this environment")
    v.add_argument("--db", help=db_help)
    v.add_argument("--kernel")
    v.add_argument("--sample", type=int, default=None, help="check this many random records (default: all)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threshold", type=float, default=0.2, help="flag a winner whose time moved by more than this fraction")
    v.add_argument("-v", "--verbose", action="store_true")
    v.set_defaults(func=cmd_verify)

    x = sub.add_parser("explain", help="why a lookup of KERNEL KEY misses")
    x.add_argument("kernel")
    x.add_argument("key", help="the bucketed key as JSON, dtypes included, e.g. '[4096, \"float16\"]'")
    x.add_argument("--db", help=db_help)
    x.add_argument("--kernel-hash", help="the current kernel hash (default: from the registered flag_gems kernel)")
    x.add_argument("--limit", type=int, default=3)
    x.set_defaults(func=cmd_explain)

    r = sub.add_parser("prune", help="drop rows of other environments or old rows")
    r.add_argument("--db", help=db_help)
    r.add_argument("--other-envs", action="store_true", help="rows of environments other than this one (the default)")
    r.add_argument("--older-than", type=float, metavar="DAYS")
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
