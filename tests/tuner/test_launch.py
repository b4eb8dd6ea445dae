"""tuner.launch: a compiled kernel is kept per argument specialization and relaunched
without Triton's per-call launch work; anything it cannot key takes Triton's own path.

On CPU the compiled kernels are stand-ins (the interpreter compiles nothing); on a GPU
run (FLAGGEMS_TEST_DEVICE=cuda) the last test launches real compiled kernels."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from tests.helpers import DEVICE, kept_launches
from tuner import launch
from tuner.launch import Launcher

pytestmark = pytest.mark.usefixtures("stand_in_kernels")  # stand-ins must not outlive a test


@triton.jit
def copy_scaled(X, Y, n, alpha, flag, BLOCK: tl.constexpr, EXTRA: tl.constexpr = 3):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=mask) * alpha, mask=mask)


class FakeCompiled:
    """Stands in for Triton's CompiledKernel: ``kernel[grid](*args, stream=...)``."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.made = 0  # runners made

    def __getitem__(self, grid):
        self.made += 1
        return lambda *args, stream=None: self.log.append(("fast", grid, args, stream))


class FakeJit:
    """Stands in for ``JITFunction``: ``fn[grid](*args, **kw)`` compiles (once per call
    here) and returns the compiled kernel."""

    def __init__(self) -> None:
        self.log: list = []

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.log.append(("triton", grid, args, kw))
            return FakeCompiled(self.log)

        return run


@pytest.fixture
def fake():
    lc = Launcher(copy_scaled)
    lc.fn, lc.fast = FakeJit(), True
    lc.current_device, lc.current_stream = (lambda: 0), (lambda device: 1000 + device)
    return lc


def _paths(lc) -> list[str]:
    return [entry[0] for entry in lc.fn.log]


def test_second_call_of_a_specialization_launches_the_kept_kernel(fake):
    x, y = torch.randn(64), torch.empty(64)
    cfg = {"BLOCK": 32, "num_warps": 2}
    fake((2,), (x, y, 64, 0.5, True), {}, cfg)
    fake((2,), (x, y, 64, 0.5, True), {}, cfg)
    assert _paths(fake) == ["triton", "fast"]
    assert fake.fn.log[0][3] == cfg  # Triton's own call got the options
    _, grid, args, stream = fake.fn.log[1]
    assert grid == (2, 1, 1) and stream == 1000
    assert args == (x, y, 64, 0.5, True, 32, 3)  # every parameter in order: constexprs, then the default


def test_the_runner_of_a_grid_is_made_once(fake):
    x, y = torch.randn(64), torch.empty(64)
    cfg = {"BLOCK": 32}
    for grid in [(2,), (2,), (3,), [2, 1, 1], lambda meta: (64 // meta["BLOCK"],)]:
        fake(grid, (x, y, 64, 0.5, True), {}, cfg)
    assert _paths(fake) == ["triton"] + ["fast"] * 4
    assert [entry[1] for entry in fake.fn.log[1:]] == [(2, 1, 1), (3, 1, 1), (2, 1, 1), (2, 1, 1)]
    kept = next(iter(fake.compiled.values()))
    assert kept.kernel.made == 2 and set(kept.runners) == {(2, 1, 1), (3, 1, 1)}


@pytest.mark.parametrize("change", [
    "dtype", "misaligned", "int_one", "int_unaligned", "int64", "constexpr", "option", "bool_for_float", "device",
])
def test_a_different_specialization_goes_through_triton(fake, change):
    x, y = torch.randn(65), torch.empty(65)
    base = dict(args=(x, y, 32, 0.5, True), cfg={"BLOCK": 32, "num_warps": 2})
    fake((1,), base["args"], {}, base["cfg"])
    args, cfg = list(base["args"]), dict(base["cfg"])
    if change == "dtype":
        args[0] = x.half()
    elif change == "misaligned":
        args[0] = x[1:]  # 4 bytes off: not 16-byte aligned
    elif change == "int_one":
        args[2] = 1
    elif change == "int_unaligned":
        args[2] = 33
    elif change == "int64":
        args[2] = 2**33
    elif change == "constexpr":
        cfg["BLOCK"] = 64
    elif change == "option":
        cfg["num_warps"] = 4
    elif change == "bool_for_float":
        args[3] = False
    elif change == "device":
        fake.current_device = lambda: 1
    fake((1,), tuple(args), {}, cfg)
    assert _paths(fake) == ["triton", "triton"]


def test_values_of_one_specialization_share_the_kernel(fake):
    x, y = torch.randn(128), torch.empty(128)
    cfg = {"BLOCK": 32}
    fake((1,), (x, y, 48, 0.5, True), {}, cfg)
    fake((1,), (x[16:], y[32:], 96, -2.0, False), {}, cfg)  # 64-byte offsets stay aligned
    fake((1,), (x, y, 5, 0.5, True), {}, cfg)
    fake((1,), (x, y, 7, 1.5, True), {}, cfg)
    assert _paths(fake) == ["triton", "fast", "triton", "fast"]


def test_tma_descriptors_are_keyed_by_dtype_and_block_shape(fake):
    from triton.tools.tensor_descriptor import TensorDescriptor

    x, y = torch.randn(64, 64), torch.randn(32, 64)

    def desc(t, block):
        return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)

    for d in (desc(x, [16, 32]), desc(y, [16, 32]), desc(x, [32, 32]), desc(x.half(), [32, 32])):
        fake((1,), (d, y, 64, 0.5, True), {}, {"BLOCK": 16})
    assert _paths(fake) == ["triton", "fast", "triton", "triton"]


def test_a_callable_grid_sees_every_parameter(fake):
    x, y = torch.randn(64), torch.empty(64)
    seen = []

    def grid(meta):
        seen.append(dict(meta))
        return (triton.cdiv(meta["n"], meta["BLOCK"]),)

    for _ in range(2):
        fake(grid, (x, y, 64, 0.5, True), {}, {"BLOCK": 16})
    assert seen[-1] == {"X": x, "Y": y, "n": 64, "alpha": 0.5, "flag": True, "BLOCK": 16, "EXTRA": 3}
    assert fake.fn.log[1][1] == (4, 1, 1)


def test_keyword_constexprs_are_keyed_by_value(fake):
    x, y = torch.randn(64), torch.empty(64)
    for extra in (3, 3, 5):
        fake((1,), (x, y, 64, 0.5, True), {"EXTRA": extra}, {"BLOCK": 16})
    assert _paths(fake) == ["triton", "fast", "triton"]
    assert fake.fn.log[1][2][-1] == 3


@pytest.mark.parametrize("case", ["tensor_keyword", "unknown_type", "suspended", "unhashable"])
def test_what_it_cannot_key_always_takes_triton_s_path(fake, case):
    x, y = torch.randn(64), torch.empty(64)
    for _ in range(2):
        if case == "tensor_keyword":
            fake((1,), (x,), {"Y": y, "n": 64, "alpha": 0.5, "flag": True}, {"BLOCK": 16})
        elif case == "unknown_type":
            fake((1,), (x, y, 64, 0.5, object()), {}, {"BLOCK": 16})
        elif case == "unhashable":
            fake((1,), (x, y, 64, 0.5, True), {"EXTRA": [1]}, {"BLOCK": 16})
        else:
            fake((1,), (x, y, 64, 0.5, True), {}, {"BLOCK": 16})
            with launch.suspended():
                fake((1,), (x, y, 64, 0.5, True), {}, {"BLOCK": 16})
            break
    assert _paths(fake) == ["triton", "triton"]


def test_a_launch_that_returns_no_compiled_kernel_is_not_kept(fake):
    x, y = torch.randn(64), torch.empty(64)
    calls = []
    fake.fn = type("Stubbed", (), {"__getitem__": lambda self, grid: lambda *a, **k: calls.append(1)})()
    fake((1,), (x, y, 64, 0.5, True), {}, {"BLOCK": 16})
    fake((1,), (x, y, 64, 0.5, True), {}, {"BLOCK": 16})
    assert calls == [1, 1] and not fake.compiled


def test_observer_sees_the_launches_triton_does_not(fake, monkeypatch):
    seen = []
    monkeypatch.setattr(launch, "observer", seen.append)
    x, y = torch.randn(64), torch.empty(64)
    for _ in range(3):
        fake((1,), (x, y, 64, 0.5, True), {}, {"BLOCK": 16})
    assert len(seen) == 2 and all(s is fake.fn for s in seen)


def test_off_in_the_interpreter_and_by_environment(monkeypatch):
    from tuner import settings

    if settings.get().interpret:
        assert not Launcher(copy_scaled).fast
    monkeypatch.setenv("FLAGGEMS_FAST_LAUNCH", "0")
    assert not Launcher(copy_scaled).fast


def test_launch_computes_through_either_path():
    """On the GPU: real compiled kernels, kept and relaunched, on aligned and misaligned
    views in turn (a kernel compiled for aligned pointers must not serve a misaligned
    call). On CPU: the interpreter, through Triton's path."""
    x = torch.randn(1000, device=DEVICE)
    for _ in range(2):
        for off in (0, 1, 4, 3):
            src = x[off:off + 500]
            y = torch.full((501,), float("nan"), device=DEVICE)[off % 2:][:500]
            launch.launch(copy_scaled, (triton.cdiv(500, 128),), src, y, 500, 2.0, True, BLOCK=128)
            torch.testing.assert_close(y, src * 2.0)
    if DEVICE == "cuda":
        assert launch.launcher(copy_scaled).compiled  # the GPU run exercised the kept kernels


def test_a_replay_relaunches_its_steps_on_the_tensors_it_is_given():
    """Replay: each step's runner, relaunched with the replay's tensors in the slots (no
    launcher key); it holds none of the filing call's tensors; a launch with a tensor
    outside the slots leaves it incomplete."""
    x, y = torch.randn(64, device=DEVICE), torch.empty(64, device=DEVICE)
    args, cfg = (x, y, 64, 0.5, True), {"BLOCK": 32}
    with kept_launches() as counts:
        plan = launch.Replay((y, x))
        plan.launch(copy_scaled, (2,), *args, **cfg)
        assert plan.complete and not any(isinstance(a, torch.Tensor) for step in plan.steps for a in step[1])
        x2, y2 = torch.randn(64, device=DEVICE), torch.empty(64, device=DEVICE)
        counts.clear()
        assert plan((y2, x2)) and counts["keyed"] == 0
        torch.testing.assert_close(y2, x2 * 0.5)
        partial = launch.Replay((x,))
        partial.launch(copy_scaled, (2,), *args, **cfg)
        assert not partial.complete


def test_a_process_that_sees_one_device_skips_the_current_device_query(monkeypatch):
    """torch.cuda.current_device() is Python on every launch; with one visible device the
    answer cannot change. Any other query, or more devices, keeps the query."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fixed = launch._device_query(torch.cuda.current_device)
    assert fixed is not torch.cuda.current_device and fixed() == 0
    other = lambda: 3  # noqa: E731 (another backend's query)
    assert launch._device_query(other) is other
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert launch._device_query(torch.cuda.current_device) is torch.cuda.current_device
