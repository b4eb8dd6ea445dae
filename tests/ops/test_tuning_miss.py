"""A tuning miss (``FLAGGEMS_AUTOTUNE=miss``) times every candidate config by launching it
again and again. An op that writes in place, or accumulates into its output, must still
apply itself once: timing launches on copies of the call's tensors, or, for a working set
too large to copy, on its own tensors, which the kernel's ``restore_value`` /
``reset_to_zero`` then put back. (The other op tests run the ``never`` policy: no timing.)"""
import pytest
import torch
import torch.nn.functional as F

import flag_gems
from flag_gems.modules import GemsRMSNorm, GemsRope
from tests.helpers import DEVICE, TOLERANCES, assert_close, to_reference
from tests.integrations.test_modules import _rms_ref, _rope_ref
from tuner import bench, settings


def _three_launches(req: bench.BenchRequest) -> tuple[float, float, float]:
    """A timer that launches the config three times (a repeated update shows) and ranks
    nothing."""
    for _ in range(3):
        req.fn()
    return 1.0, 1.0, 1.0


@pytest.fixture(params=["copies", "own tensors"])
def tuning_miss(request, isolated_store, monkeypatch):
    """Every key misses and is timed; "own tensors": no working set is small enough to
    copy, so timing launches on the call's own tensors."""
    monkeypatch.setenv("FLAGGEMS_AUTOTUNE", "miss")
    settings.reload()
    bench.set_timer(_three_launches)
    if request.param == "own tensors":
        monkeypatch.setattr(bench, "ROTATE_BYTES", 0)
    yield
    bench.set_timer(None)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


def _timed(fn):
    """``fn()`` with flag_gems on, asserting a key was tuned (timed) in it."""
    import tuner

    before = tuner.stats()["configs_timed"]
    with flag_gems.use_gems():
        out = fn()
    assert tuner.stats()["configs_timed"] > before, "no config was timed: the test tests nothing"
    return out


def test_pointwise_in_place(tuning_miss):
    x, y = rand(6, 40), rand(6, 40)
    expect = to_reference(x) - 2 * to_reference(y)
    got = _timed(lambda: x.sub_(y, alpha=2))
    assert_close(got, expect, torch.float32)
    w = rand(40)
    expect = to_reference(x) * to_reference(w)
    assert_close(_timed(lambda: x.mul_(w)), expect, torch.float32)  # a broadcast: the general kernel
    assert_close(_timed(lambda: torch.add(x, 1.5, out=x)), expect + 1.5, torch.float32)


def test_view_update_and_scatter_add(tuning_miss):
    base, src = rand(5, 8), rand(8)
    expect = to_reference(base)
    expect[4] += 2 * to_reference(src)
    _timed(lambda: base[4].add_(src, alpha=2))  # in place through a view into base
    assert_close(base, expect, torch.float32)
    t, s = rand(2, 6), rand(2, 6)
    sidx = torch.tensor([[0, 1, 1, 5, 5, 5], [2, 2, 3, 3, 4, 4]], device=DEVICE)
    expect = to_reference(t).scatter_add(1, sidx, to_reference(s))
    assert_close(_timed(lambda: t.scatter_add_(1, sidx, s)), expect, torch.float32)


def test_embedding_and_pad_backward_accumulate_once(tuning_miss):
    w = rand(10, 24).requires_grad_()
    ids = torch.tensor([[1, 3, 1], [9, 1, 0]], device=DEVICE)
    g = rand(2, 3, 24)
    _timed(lambda: F.embedding(ids, w).backward(g))
    wr = to_reference(w.detach()).requires_grad_()
    F.embedding(ids, wr).backward(to_reference(g))
    assert_close(w.grad, wr.grad, torch.float32)
    x = rand(2, 3, 16).requires_grad_()
    gp = rand(2, 3, 20)
    _timed(lambda: F.pad(x, (2, 2), mode="reflect").backward(gp))
    xr = to_reference(x.detach()).requires_grad_()
    F.pad(xr, (2, 2), mode="reflect").backward(to_reference(gp))
    assert_close(x.grad, xr.grad, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rms_norm_and_rope_in_place(tuning_miss, dtype):
    m = GemsRMSNorm(40, inplace=True).to(DEVICE, dtype)
    x, r = rand(4, 40, dtype=dtype), rand(4, 40, dtype=dtype)
    ref_res = to_reference(x) + to_reference(r)
    with torch.no_grad():
        y, res = _timed(lambda: m(x, r))
    assert y is x and res is r
    assert_close(res, ref_res, dtype)
    assert_close(y, _rms_ref(ref_res, to_reference(m.weight), 1e-6), dtype, atol=4 * TOLERANCES[dtype][1])
    D, T = 16, 5
    rope = GemsRope(D, D, max_position=64, base=10000.0, is_neox_style=True).to(DEVICE)
    pos = torch.tensor([0, 7, 3, 63, 12], device=DEVICE)
    q = rand(T, 2 * D, dtype=dtype)
    expect = _rope_ref(to_reference(q).view(T, 2, D), pos, 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64, device=DEVICE) / D)), D, True)
    qo, _ = _timed(lambda: rope(pos, q, None, inplace=True))
    assert qo is q
    assert_close(qo, expect.view(T, -1), dtype)


def test_addmm_in_place(tuning_miss):
    c, a, b = rand(8, 24), rand(8, 16), rand(16, 24)
    expect = 0.5 * to_reference(c) + 2 * to_reference(a) @ to_reference(b)
    got = _timed(lambda: torch.addmm(c, a, b, beta=0.5, alpha=2, out=c))  # out is the bias
    assert got is c
    assert_close(got, expect, torch.float32, reduce_dim=16)
