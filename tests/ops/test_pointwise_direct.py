"""The pointwise fast path's direct launch: once a signature's kernel was kept, later
calls of that signature relaunch it without the tuner's and the launcher's keys, and any
change those keys would see (a dtype, an int scalar's specialization, numel's bucket or
16-divisibility, a misaligned tensor, another device) goes back through them.

The interpreter compiles nothing, so the compiled kernel is a stand-in that records its
launches (as in tests/tuner/test_launch.py); the results are not computed here. On a GPU
run (FLAGGEMS_TEST_DEVICE=cuda) the last test checks real results of direct launches."""
from __future__ import annotations

import pytest
import torch
import triton

from flag_gems.ops.binary import ADD, CMP, _add, _add_alpha
from flag_gems.ops.factory import FILL
from flag_gems.utils.pointwise import Pointwise
from tests.helpers import DEVICE, assert_close, count_kernels
from tests.tuner.test_launch import FakeJit
from tuner import launch
from tuner.libtuner import clear_caches

pytestmark = pytest.mark.usefixtures("stand_in_kernels")  # stand-ins must not outlive a test


@pytest.fixture
def op(monkeypatch):
    """A fresh add whose flat kernel launches through a stand-in Triton; ``op.log`` lists
    "triton" (compiled), "fast" (a kept kernel relaunched) and "tuner" (LibTuner.run)."""
    add = Pointwise("direct_test_add", _add_alpha, promote=(0, 1))
    kernel = add.kernel((True, True, False), 0)
    lc = kernel.kernel_launcher()
    monkeypatch.setattr(lc, "fn", FakeJit())
    monkeypatch.setattr(lc, "fast", True)
    add.device = [0]  # the current device, as the stand-in driver reports it
    monkeypatch.setattr(lc, "current_device", lambda: add.device[0], raising=False)
    monkeypatch.setattr(lc, "current_stream", lambda device: 1000 + device, raising=False)
    run = kernel.run

    def counted(*args, **kwargs):
        lc.fn.log.append(("tuner",))
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", counted)
    add.log, add.lc = lc.fn.log, lc
    return add


def paths(op) -> list[str]:
    return [entry[0] for entry in op.log]


def x(n: int = 64, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, dtype=dtype)


def test_the_second_call_of_a_signature_launches_directly(op):
    a, b = x(), x()
    op(a, b, 2)
    op(a, b, 3)  # 2 and 3: one int specialization
    assert paths(op) == ["tuner", "triton", "fast"]
    _, grid, args, stream = op.log[-1]
    block = next(iter(op.kernel((True, True, False), 0).cache.values()))["BLOCK"]
    assert grid == (triton.cdiv(64, block), 1, 1) and stream == 1000
    assert args[:2] == (a, b) and args[2] == 3 and args[4] == 64 and args[-1] == block
    out = args[3]
    assert out.shape == a.shape and out.dtype == a.dtype and out.data_ptr() not in (a.data_ptr(), b.data_ptr())


def test_out_and_in_place_calls_launch_directly_too(op):
    a, b = x(), x()
    op(a, b, 2, out=torch.empty(64))
    out = torch.empty(64)
    assert op(a, b, 2, out=out) is out
    op(a, b, 2, out=a)  # in place
    assert paths(op) == ["tuner", "triton", "fast", "fast"]
    assert op.log[-2][2][3] is out and op.log[-1][2][3] is a


def test_a_new_size_in_a_launched_bucket_launches_directly_with_its_own_grid(op, monkeypatch):
    """The hot path's exact-size entries come from the bucket's kept kernel: a new numel of
    the same log bucket and 16-divisibility takes no tuner, and gets its own grid."""
    op(x(96), x(96), 2)  # 96 and 112: one bucket, both 16-divisible
    a, b = x(112), x(112)
    op(a, b, 2)
    op(a, b, 2)
    assert paths(op) == ["tuner", "triton", "fast", "fast"]
    block = next(iter(op.kernel((True, True, False), 0).cache.values()))["BLOCK"]
    assert [e[1] for e in op.log[2:]] == [(triton.cdiv(112, block), 1, 1)] * 2
    assert op.log[-1][2][4] == 112
    monkeypatch.setattr("flag_gems.utils.pointwise.EXACT_LIMIT", 2)
    for n in (80, 128):  # the bucket's other sizes; the third exact entry clears the two before it
        op(x(n), x(n), 2)
    assert paths(op)[-2:] == ["fast"] * 2 and [key[-1] for key in op._exact] == [128]  # (an exact key ends in its numel)


@pytest.mark.parametrize("change", ["dtype", "int_one", "int_16", "bucket", "not_16_divisible", "misaligned", "device", "out"])
def test_what_the_keys_would_see_goes_through_them(op, change):
    a, b, alpha, n = x(96), x(96), 2, 96
    op(a, b, alpha)
    if change == "dtype":
        b = b.double()
    elif change == "int_one":
        alpha = 1
    elif change == "int_16":
        alpha = 32
    elif change == "bucket":
        a, b = x(200), x(200)
    elif change == "not_16_divisible":
        a, b = x(95), x(95)  # same log bucket as 96
    elif change == "misaligned":
        a, b = x(97)[1:], x(97)[1:]  # contiguous, 4 bytes off
    elif change == "device":
        op.device[0] = 1
    if change == "out":
        op(a, b, alpha, out=torch.empty(n))
    else:
        op(a, b, alpha)
    assert paths(op)[2] == "tuner", f"{change}: launched directly"


def test_switching_launch_modes_or_clearing_configs_forgets_direct_launches(op):
    a, b = x(), x()
    op(a, b, 2)
    for forget in (lambda: launch.set_enabled(None), clear_caches):
        assert op._direct
        forget()
        assert not op._direct
        op.lc.fast = True  # set_enabled recomputed it: off under the interpreter
        op(a, b, 2)
    with launch.suspended():  # pretune's no-launch mode: every launch through JITFunction.run
        op(a, b, 2)
        op(a, b, 2)
    assert "fast" not in paths(op)[-4:]
    op(a, b, 2)
    op(a, b, 2)
    assert paths(op)[-1] == "fast"


def test_direct_launches_compute_the_op():
    add = Pointwise("direct_test_add_real", _add)
    a, b = torch.randn(1000, device=DEVICE, dtype=torch.bfloat16), torch.randn(1000, device=DEVICE, dtype=torch.bfloat16)
    with count_kernels() as ran:
        outs = [add(a, b * k) for k in (1, 2, 3)]
    assert sum(ran.values()) == 3
    for k, out in zip((1, 2, 3), outs):
        assert_close(out, a.double() + (b * k).double(), torch.bfloat16)
    if DEVICE != "cpu":
        assert add._direct and all(v is not None for v in add._direct.values()), "not launched directly"


# -- the general path (broadcasting, strided operands, out=): its own direct relaunch ----
@pytest.mark.parametrize("case", ["broadcast", "transposed", "out", "scalar_first", "bool_out", "fill_out", "outer", "promoted"])
def test_the_general_path_relaunches_what_it_launched(case):
    """On stand-in compiled kernels: the second call of a general-path key relaunches
    with the grid, arguments and stream the launcher's kept path would pass."""
    from tests.ops.test_launch_direct import _Recording, _shape_of

    mp = pytest.MonkeyPatch()
    try:
        rec = _Recording(mp)
        a, b = torch.randn(6, 8), torch.randn(6, 1)
        calls = {
            "broadcast": lambda: ADD(a, b),
            "transposed": lambda: ADD(a.t(), a.t()),
            "out": lambda: ADD(a, b, out=torch.empty(6, 8)),
            "scalar_first": lambda: ADD(2.0, a.t()),
            "bool_out": lambda: CMP["lt"](a, b),
            "fill_out": lambda: FILL(1.5, out=torch.empty(6, 8), compute=torch.float32),  # no tensor argument
            "outer": lambda: ADD(b, a[:1]),  # no operand of the output's shape: a new (6, 8) tensor
            "promoted": lambda: ADD(a.to(torch.bfloat16), b),  # shaped like a, the dtype of b
        }
        fn = calls[case]
        relaunched = []
        op = {"bool_out": CMP["lt"], "fill_out": FILL}.get(case, ADD)
        orig = type(op)._relaunch
        mp.setattr(type(op), "_relaunch", lambda self, *x: relaunched.append(orig(self, *x)) or relaunched[-1])
        fn()
        start = len(rec.log)
        out = fn()
        direct = rec.log[start:]
        assert relaunched and relaunched[-1] is out, "not relaunched directly"
        op._direct.clear()
        start = len(rec.log)
        fn()
        through_launcher = rec.log[start:]
        assert [e[0] for e in direct] == ["fast"] and [e[0] for e in through_launcher] == ["fast"]
        assert [(g, [_shape_of(x) for x in args], st) for _, g, args, st in direct] == \
            [(g, [_shape_of(x) for x in args], st) for _, g, args, st in through_launcher]
    finally:
        mp.undo()
        for each in (ADD, CMP["lt"], FILL):
            each._direct.clear()


def test_general_calls_the_key_cannot_cover_are_not_filed():
    a = torch.randn(6, 8, dtype=torch.float64, device=DEVICE)
    ADD(a, torch.randn(6, 1, dtype=torch.float64, device=DEVICE))  # broadcast: filed (as None under the interpreter)
    before = dict(ADD._direct)
    ADD(a, torch.tensor(2.0, device=DEVICE))  # a 0-d tensor: its value may become an argument
    ADD(a[:, 1:], 2.5)  # misaligned
    assert dict(ADD._direct).keys() == before.keys()
