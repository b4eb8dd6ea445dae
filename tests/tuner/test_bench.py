"""The benchmark timer's argument rotation (copies of a small working set, so timing
reads memory as a model does rather than a warm L2) and, on a GPU, the graph timer."""
import math

import pytest
import torch

from tuner import bench, settings
from tests.helpers import DEVICE


def test_small_working_set_is_copied_keeping_layout_and_aliasing(monkeypatch):
    monkeypatch.setattr(bench, "ROTATE_BYTES", 4096)
    base = torch.randn(8, 16)
    view = base[2:, 4:]  # storage offset, non-contiguous
    bias = torch.randn(16).expand(8, 16)  # stride 0
    sets = bench.rotations((base, view, bias, 3), {"scale": 2.0, "out": base}, device_type="cpu")
    total = base.untyped_storage().nbytes() + bias.untyped_storage().nbytes()
    assert len(sets) == min(bench.MAX_COPIES, math.ceil(4096 / total))
    for args, kwargs in sets[1:]:
        b, v, bi, n = args
        assert n == 3 and kwargs["scale"] == 2.0
        assert b.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
        assert v.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() == kwargs["out"].untyped_storage().data_ptr()
        assert v.storage_offset() == view.storage_offset() and v.stride() == view.stride()
        assert bi.stride() == (0, 1)
        assert torch.equal(b, base) and torch.equal(v, view) and torch.equal(bi, bias)


def test_large_working_set_is_not_copied(monkeypatch):
    monkeypatch.setattr(bench, "ROTATE_BYTES", 64)
    x = torch.randn(64)
    assert bench.rotations((x,), {}, device_type="cpu") == [((x,), {})]


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")
def test_graph_timer_times_a_captured_launch():
    x = torch.randn(1 << 20, device="cuda")
    y = torch.empty_like(x)
    req = bench.BenchRequest(lambda: torch.mul(x, 2, out=y), "mul", {}, (), 5, 20)
    med, p20, p80 = bench.graph_timer(req)
    assert 0 < p20 <= med <= p80 < 10
    torch.testing.assert_close(y, x * 2)


class FakeClock:
    """A clock that only the fake launches below move (in seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_launch_host_ms_is_the_median_host_time_of_one_call():
    clock, costs = FakeClock(), iter([9.0, 1e-5, 3e-5, 2e-5])  # a slow first call is not timed

    def launch():
        clock.now += next(costs)

    assert bench.launch_host_ms(launch, reps=3, clock=clock) == pytest.approx(0.02)


def test_gpu_timer_charges_each_config_its_host_launch_time(monkeypatch):
    """A split-K config a little faster on the device but with a second launch and a
    workspace loses to the single launch once the host's part is counted."""
    clock = FakeClock()
    device = {"single": (0.010, 0.009, 0.011), "split": (0.007, 0.006, 0.008)}
    host_s = {"single": 20e-6, "split": 32e-6}
    monkeypatch.setattr(bench, "device_timer", lambda req: device[req.kernel])
    real = bench.launch_host_ms
    calls = []
    monkeypatch.setattr(bench, "launch_host_ms", lambda fn, reps: calls.append(reps) or real(fn, reps=reps, clock=clock))

    def request(name):
        def launch():
            clock.now += host_s[name]
        return bench.BenchRequest(launch, name, {}, (), 1, 1)

    single, split = bench.gpu_timer(request("single")), bench.gpu_timer(request("split"))
    assert calls == [15, 15]
    assert single == pytest.approx((0.030, 0.029, 0.031))
    assert split == pytest.approx((0.039, 0.038, 0.040))
    assert min([("single", single), ("split", split)], key=lambda t: t[1][0])[0] == "single"
    device["long"], host_s["long"] = (2.0, 1.9, 2.1), 30e-6  # a long kernel: its host part timed briefly
    assert bench.gpu_timer(request("long")) == pytest.approx((2.03, 1.93, 2.13)) and calls[-1] == 3
    # for CUDA-graph replay, where launches cost the host nothing: the device time alone
    monkeypatch.setenv("FLAGGEMS_TUNE_HOST", "0")
    settings.reload()
    try:
        assert bench.gpu_timer(request("split")) == device["split"]
    finally:
        monkeypatch.delenv("FLAGGEMS_TUNE_HOST")
        settings.reload()
