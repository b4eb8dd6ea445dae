"""Timing one config of a kernel.

On a GPU: the launches are captured in a CUDA graph and its replays timed with events, so
a kernel shorter than its own launch overhead is timed by what it costs on the device
(an eager loop would time the host's launch path instead, and every config of a decode
GEMM would tie). The launch cycles through copies of the arguments (``rotations``) so the
working set exceeds the L2 cache, as a model's weights do. If a launch cannot be captured,
``triton.testing.do_bench`` times it eagerly. To the device time the GPU timer adds the
host's time to launch the config (``launch_host_ms``): a config that saves 3 us on the
device with a second launch and a workspace (split-K) costs more host time than it
saves, and a small call in an LLM step is host-bound (the device idles while the host
launches). At sizes where the device dominates, the host part is about equal for every
config and decides nothing. Under the Triton interpreter: wall-clock time (host
included), so the whole tuning flow runs on CPU. ``FLAGGEMS_TUNE_HOST=0`` times the
device alone. Tests inject a deterministic timer with
``set_timer``."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from tuner import settings


@dataclass(frozen=True)
class BenchRequest:
    fn: Callable[[], object]  # one launch of the kernel with this config
    kernel: str
    config: dict
    key: tuple
    warmup: int  # ms (GPU) of warm-up
    rep: int  # ms (GPU) of timed repetitions


Timing3 = tuple[float, float, float]  # median, p20, p80 in ms
Timer = Callable[[BenchRequest], Timing3]


ROTATE_BYTES = 256 << 20  # working sets under this are copied until they reach it (L2: 50 MB)
MAX_COPIES = 32


def rotations(args: tuple, kwargs: dict, device_type: str = "cuda", max_copies: int = MAX_COPIES) -> list[tuple[tuple, dict]]:
    """The arguments, plus copies (at most ``max_copies``) of every ``device_type`` tensor
    among them when their storages together are smaller than ``ROTATE_BYTES``. A copy
    keeps each tensor's storage offset and strides (an expanded bias stays stride 0), and
    tensors sharing a storage share its copy."""
    import torch

    def ours(a: object) -> bool:
        return isinstance(a, torch.Tensor) and a.device.type == device_type

    tensors = [a for a in (*args, *kwargs.values()) if ours(a)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    total = sum(storages.values())
    if not tensors or total >= ROTATE_BYTES:
        return [(args, kwargs)]
    sets = [(args, kwargs)]
    for _ in range(min(max_copies + 1, MAX_COPIES, -(-ROTATE_BYTES // max(total, 1))) - 1):
        copies: dict[int, object] = {}

        def copy(a: object) -> object:
            if not ours(a):
                return a
            st = a.untyped_storage()
            if st.data_ptr() not in copies:
                copies[st.data_ptr()] = st.clone()
            return torch.empty(0, dtype=a.dtype, device=a.device).set_(copies[st.data_ptr()], a.storage_offset(), a.size(), a.stride())

        sets.append((tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}))
    return sets


def graph_timer(req: BenchRequest) -> Timing3:
    """Median, p20 and p80 over replays of a CUDA graph of many launches, per launch."""
    import torch

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile, allocate what the launch caches, warm up; outside the capture
            req.fn()
        stream.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            req.fn()
        end.record()
        end.synchronize()
        per_launch = max(start.elapsed_time(end) / 5, 1e-3)  # eager: an upper bound
        n = max(10, min(1000, int(req.rep / 10 / per_launch)))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(n):
                req.fn()
        graph.replay()
        samples = []
        for _ in range(10):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / n)
    p20, _, _, p80 = statistics.quantiles(samples, n=5, method="inclusive")
    return statistics.median(samples), p20, p80


def device_timer(req: BenchRequest) -> Timing3:
    try:
        return graph_timer(req)
    except Exception:  # a launch that cannot be captured: time it eagerly
        import triton.testing

        med, p20, p80 = triton.testing.do_bench(req.fn, warmup=req.warmup, rep=req.rep, quantiles=[0.5, 0.2, 0.8])
        return float(med), float(p20), float(p80)


LONG_MS = 0.1  # device time from which a launch's host part is timed briefly


def launch_host_ms(fn: Callable[[], object], reps: int = 15, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median host time of one call of ``fn``, in ms: the launch path up to the driver's
    enqueue (the device runs on meanwhile; ``reps`` launches cannot fill its queue)."""
    fn()
    samples = []
    for _ in range(reps):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return statistics.median(samples) * 1e3


OBJECTIVES = ("device+host", "device")


def objective() -> str:
    """What a tuned config minimizes (part of its kernel version: a DB shared by eager
    nodes and CUDA-graph nodes keeps their choices apart)."""
    return OBJECTIVES[0] if settings.get().tune_host else OBJECTIVES[1]


def gpu_timer(req: BenchRequest) -> Timing3:
    """The device time (``device_timer``) plus the host's launch time, per call; the
    device time alone with ``FLAGGEMS_TUNE_HOST=0`` (for kernels replayed in CUDA graphs,
    as vLLM's decode, where launches cost the host nothing)."""
    med, p20, p80 = device_timer(req)
    if not settings.get().tune_host:
        return med, p20, p80
    # a long kernel's host part is a few percent at most: fewer launches time it (each
    # queues device work the next timing waits for)
    host = launch_host_ms(req.fn, reps=15 if med < LONG_MS else 3)
    return med + host, p20 + host, p80 + host


def wall_timer(req: BenchRequest, reps: int = 5) -> Timing3:
    """Interpreter timing: one warm-up run, then a few timed runs; median and the 20th and
    80th percentiles (interpolated, as ``do_bench`` reports them) of the runs."""
    req.fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        req.fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    p20, _, _, p80 = statistics.quantiles(samples, n=5, method="inclusive")
    return statistics.median(samples), p20, p80


_timer: Timer | None = None


def set_timer(timer: Timer | None) -> None:
    """Use ``timer`` for every benchmark (``None``: back to the device's own)."""
    global _timer
    _timer = timer


def get_timer() -> Timer:
    if _timer is not None:
        return _timer
    return wall_timer if settings.get().interpret else gpu_timer
