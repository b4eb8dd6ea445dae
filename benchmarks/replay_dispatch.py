"""Replay a one-GPU pretune run's job durations through the multi-GPU hand-out policies.

No GPU needed: ``python benchmarks/replay_dispatch.py REPORT.json WORKLOAD... [--devices 2]``
takes the per-job ``timeline`` of a one-GPU ``gems-pretune --report`` run of the same
workloads and schedules those durations on N simulated devices, twice: the old hand-out
(every job, in order, to whichever device is free) and ``tuner.pretune.Dispatch``. Every
job is taken as compiled, and a job's duration as the same on any device, so what it
shows is the policy alone: the simulated end time, how many (op group, device) pairs
there are (each pair pays the group's first use once: compiles, kernel loads), and how
many jobs started on one device while their group's first job was still running on
another (the concurrent first uses the two-GPU timeline found costly). A policy check,
not a measurement.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from tuner import workload as wl
from tuner.pretune import Dispatch, op_group, timeline_op


def schedule(durations: list[float], devices: list[str], hand_out: Callable[[dict], list[tuple[str, int]]],
             ran: Callable[[str, int], None]) -> dict[int, tuple[str, float]]:
    """Event-driven: after each job ends, ``hand_out(queues)`` queues jobs on devices; a
    device runs its queue in order. Returns job -> (device, start)."""
    clock, queues, busy, placed = 0.0, {d: [] for d in devices}, {}, {}
    while True:
        for dev, i in hand_out(queues):
            queues[dev].append(i)
        for dev in devices:
            if dev not in busy and queues[dev]:
                i = queues[dev].pop(0)
                placed[i] = (dev, clock)
                busy[dev] = (clock + durations[i], i)
        if not busy:
            return placed
        dev = min(busy, key=lambda d: busy[d][0])
        clock, i = busy.pop(dev)
        ran(dev, i)


def in_order(n: int, devices: list[str]) -> tuple[Callable, Callable]:
    """The old hand-out: the next job to a device with nothing to do."""
    nxt = iter(range(n))

    def hand_out(queues: dict) -> list[tuple[str, int]]:
        return [(d, i) for d in devices if not queues[d] for i in [next(nxt, None)] if i is not None]

    return hand_out, lambda dev, i: None


def with_dispatch(jobs: list[wl.Job], devices: list[str]) -> tuple[Callable, Callable]:
    plan = Dispatch(jobs, devices)

    def hand_out(queues: dict) -> list[tuple[str, int]]:
        return [(d, i) for d in plan.wanting() for i in [plan.pick(d, lambda i, dev: True)] if i is not None]

    return hand_out, plan.ran


def report(name: str, jobs: list[wl.Job], durations: list[float], placed: dict[int, tuple[str, float]]) -> str:
    group = [op_group(j) for j in jobs]
    end = max(start + durations[i] for i, (_, start) in placed.items())
    first: dict[tuple, int] = {}
    for i in sorted(placed, key=lambda i: placed[i][1]):
        first.setdefault(group[i], i)
    concurrent = sum(1 for i, (dev, start) in placed.items()
                     if dev != placed[first[group[i]]][0] and start < placed[first[group[i]]][1] + durations[first[group[i]]])
    pairs = len({(group[i], dev) for i, (dev, _) in placed.items()})
    return f"| {name} | {end:.1f} s | {pairs} (of {len(set(group))} groups) | {concurrent} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report")
    p.add_argument("workloads", nargs="+")
    p.add_argument("--devices", type=int, default=2)
    args = p.parse_args()
    jobs = wl.load_jobs(args.workloads)
    timeline = {e["job"]: e for e in json.loads(open(args.report).read())["timeline"]}
    if sorted(timeline) != list(range(len(jobs))) or any(timeline[i]["op"] != timeline_op(jobs[i]) for i in timeline):
        raise SystemExit("the report's jobs are not these workloads' jobs (run it with the same workloads)")
    durations = [timeline[i]["run_s"] for i in range(len(jobs))]
    devices = [str(d) for d in range(args.devices)]
    print(f"{len(jobs)} jobs, {sum(durations):.1f} s on one device; {args.devices} simulated devices\n")
    print("| hand-out | end | (group, device) pairs | jobs started beside their group's first job |")
    print("|---|---|---|---|")
    print(report("in order, to a free device", jobs, durations, schedule(durations, devices, *in_order(len(jobs), devices))))
    print(report("Dispatch", jobs, durations, schedule(durations, devices, *with_dispatch(jobs, devices))))


if __name__ == "__main__":
    main()
