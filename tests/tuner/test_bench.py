"""The benchmark timer's argument rotation (copies of a small working set, so timing
reads memory as a model does rather than a warm L2) and, on a GPU, the graph timer."""
import math

import pytest
import torch

from tuner import bench
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
