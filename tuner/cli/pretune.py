"""gems-pretune: tune a model's kernel shapes offline, so inference never autotunes.

    gems-pretune workloads/llama7b.yaml                 # tune into the per-device DB
    gems-pretune workloads/llama7b.yaml --dry-run       # list the jobs' keys, tune nothing
    gems-pretune --from-misses                          # tune what inference missed
    gems-pretune --from-record run.jsonl --capture-out w.yaml   # record -> workload
    gems-pretune workloads/llama7b.yaml --server http://tunerd:8600   # share the jobs between machines
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gems-pretune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="workload YAML files (workloads/*.yaml)")
    p.add_argument("--db", help="tuning DB path or SQLAlchemy URL (default: the per-device SQLite file)")
    p.add_argument("--server", metavar="URL",
                   help="tunerd URL: queue the jobs there (once, whichever machines submit them), then work through "
                        "the queue with every machine running the same command, uploading the results "
                        "(token: FLAGGEMS_TUNERD_TOKEN or --token-file)")
    p.add_argument("--token-file", metavar="FILE", help="with --server: a file holding tunerd's bearer token")
    p.add_argument("--devices", help="comma-separated GPU indices, one worker process each, one shared DB")
    p.add_argument("--compile-workers", type=int, metavar="N",
                   help="processes compiling configs ahead of benchmarking (default: the CPU cores "
                        "per device, less one; 0: compile as each config is first timed)")
    p.add_argument("--dry-run", action="store_true",
                   help="list per job the kernels, keys and candidate configs it requests, and an estimate; "
                        "tune, launch and write nothing (no GPU needed)")
    p.add_argument("--force", action="store_true", help="retune keys that are already tuned")
    p.add_argument("--from-misses", action="store_true", help="tune the keys inference recorded as misses")
    p.add_argument("--from-record", metavar="JSONL", action="append", default=[],
                   help="a record of a real run (flag_gems.enable(record=True, path=...)): tune the calls it made")
    p.add_argument("--capture-out", metavar="YAML", help="with --from-record: write the captured workload here and tune nothing")
    p.add_argument("--provider", default="flag_gems.tuning", help="module that runs jobs (default: flag_gems.tuning)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _err(msg: str) -> int:
    print(f"gems-pretune: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.server and args.devices:
        return _err("--server and --devices: run one gems-pretune --server per GPU (CUDA_VISIBLE_DEVICES=i) instead")
    if args.token_file and not args.server:
        return _err("--token-file needs --server")
    if args.server and args.capture_out:
        return _err("--capture-out tunes nothing: drop --server")
    if not (args.workloads or args.from_misses or args.from_record):
        return _err("give workload files, --from-misses or --from-record")
    if args.capture_out and len(args.from_record) != 1:
        return _err("--capture-out needs exactly one --from-record file")

    from tuner import settings
    from tuner import workload as wl
    from tuner.store import set_default_store

    if args.dry_run:
        _interpret_without_gpu()

    if args.db:
        from tuner.store.db import resolve_url

        os.environ["FLAGGEMS_TUNING_DB"] = resolve_url(args.db)
        settings.reload()
        set_default_store(None)

    from tuner import pretune as pt

    try:
        if args.capture_out:
            prov = pt.load_provider(args.provider)
            n = prov.capture_workload(args.from_record[0], args.capture_out)
            print(f"wrote {n} op calls to {args.capture_out}")
            return 0
        jobs = wl.load_jobs(args.workloads)  # every file validated before anything runs
        for rec in args.from_record:
            prov = pt.load_provider(args.provider)
            lines = [json.loads(s) for s in Path(rec).read_text().splitlines() if s.strip()]
            jobs += [wl.Job.from_dict(d, phase="record") for d in prov.record_to_ops(lines)]
        unreplayable: list = []
        if args.from_misses:
            mjobs, unreplayable = pt.jobs_from_misses(args.provider)
            jobs += mjobs
    except wl.WorkloadError as e:
        return _err(str(e))
    except (pt.PretuneError, OSError, ValueError) as e:
        return _err(str(e))

    if args.dry_run:
        try:
            dry = pt.dry_run(jobs, provider=args.provider)
        except pt.PretuneError as e:
            return _err(str(e))
        print("\n".join(dry.lines()))
        for u in unreplayable:
            print(f"no replay for a miss of {u['kernel']} key {u['key']} ({u['count']}x)")
        if args.report:
            Path(args.report).write_text(json.dumps(dry.as_dict() | {"workloads": args.workloads}, indent=2))
        return 1 if any(j.error for j in dry.jobs) else 0

    if args.server:
        return _run_server(args, jobs, unreplayable)
    try:
        if args.devices:
            from tuner.store.db import resolve_url

            devices = [d.strip() for d in args.devices.split(",") if d.strip()]
            summary = pt.run_parallel(jobs, devices, db_url=resolve_url(None), provider=args.provider,
                                      compile_workers=_compile_workers(args, len(devices)),
                                      force=args.force, progress=not args.no_progress)
        else:
            summary = pt.run_jobs(jobs, provider=args.provider, force=args.force, progress=not args.no_progress,
                                  compile_workers=_compile_workers(args, 1))
    except pt.PretuneError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print("gems-pretune: interrupted; every key finished so far is stored: rerun to tune the rest", file=sys.stderr)
        return 130
    print(summary.table())
    for u in unreplayable:
        print(f"no replay for a miss of {u['kernel']} key {u['key']} ({u['count']}x)", file=sys.stderr)
    if args.report:
        report = summary.as_dict() | {"unreplayable_misses": unreplayable, "workloads": args.workloads}
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    return 1 if summary.jobs_failed else 0


def _compile_workers(args: argparse.Namespace, devices: int) -> int:
    if args.compile_workers is not None:
        return max(0, args.compile_workers)
    from tuner.precompile import default_workers

    return default_workers(devices)


def _interpret_without_gpu() -> None:
    """A dry run launches nothing, but flag_gems registers its ops on the device it runs
    on: without a GPU, the Triton interpreter's CPU (set before any kernel is defined)."""
    if "TRITON_INTERPRET" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        from tuner import settings

        os.environ["TRITON_INTERPRET"] = "1"
        settings.reload()


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        token = Path(args.token_file).expanduser().read_text().strip()  # OSError: reported by the caller
        if not token:
            raise ValueError(f"the token file {args.token_file} is empty")
        return token
    return os.environ.get("FLAGGEMS_TUNERD_TOKEN") or None


def _run_server(args: argparse.Namespace, jobs: list, unreplayable: list) -> int:
    from tuner import pretune as pt
    from tuner.jobs import JobServerError

    try:
        token = _token(args)
    except (OSError, ValueError) as e:
        return _err(f"--token-file: {e}")
    try:
        run = pt.run_distributed(jobs, url=args.server, token=token, provider=args.provider, force=args.force,
                                 progress=not args.no_progress)
    except (pt.PretuneError, JobServerError) as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print("gems-pretune: interrupted; the job in flight goes back to the queue after its lease: "
              "rerun to continue", file=sys.stderr)
        return 130
    print(run.summary.table())
    for line in run.lines():
        print(line)
    for u in unreplayable:
        print(f"no replay for a miss of {u['kernel']} key {u['key']} ({u['count']}x)", file=sys.stderr)
    if args.report:
        report = run.summary.as_dict() | {
            "unreplayable_misses": unreplayable, "workloads": args.workloads, "server": run.server,
            "worker": run.worker, "env_id": run.env_id, "submitted": run.submitted,
            "worker_report": {k: v for k, v in vars(run.report).items()},
        }
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    return 1 if run.report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
