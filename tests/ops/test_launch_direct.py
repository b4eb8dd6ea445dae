"""Direct relaunches of a plan's ``Launch`` (norms, softmax, reductions, embedding): a call
whose caller-given ``direct`` key repeats relaunches the kept kernel without the
launcher's key; a new key, or a new device, goes through it.

The interpreter compiles nothing, so the compiled kernel is a stand-in that records its
launches (see tests/tuner/test_launch.py); the op tests check the results."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from tests.tuner.test_launch import FakeJit
from tuner import libtuner
from tuner.libtuner import clear_caches


@libtuner(configs=[triton.Config({"BLOCK": 32}, num_warps=1)], key=["n"], strategy=["log"])
@triton.jit
def _scaled(X, Y, n, s, HALF: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n) * s, mask=offs < n)


@pytest.fixture
def lc(monkeypatch):
    """The kernel's launcher on stand-ins; its log gets ("key",) for each launcher key."""
    launcher = _scaled.kernel_launcher()
    fake = FakeJit()
    monkeypatch.setattr(launcher, "fn", fake)
    monkeypatch.setattr(launcher, "fast", True)
    monkeypatch.setattr(launcher, "compiled", {})
    device = [0]
    monkeypatch.setattr(launcher, "current_device", lambda: device[0], raising=False)
    monkeypatch.setattr(launcher, "current_stream", lambda d: 1000 + d, raising=False)
    key = launcher._key

    def counted(*a):
        fake.log.append(("key",))
        return key(*a)

    monkeypatch.setattr(launcher, "_key", counted)
    launcher.log, launcher.device = fake.log, device
    rc._DIRECT.clear()
    yield launcher
    rc._DIRECT.clear()


def kinds(lc) -> list[str]:
    return [e[0] for e in lc.log]


def args(n: int = 64) -> tuple:
    return torch.randn(n), torch.empty(n), n, 0.5


def test_fixed_relaunches_a_repeated_key_on_the_calls_grid(lc):
    launch = rc.Launch(_scaled, None)
    launch.fixed((2,), *args(), direct=("k",), HALF=True)
    before = len(lc.log)
    x, y, n, s = args()
    launch.fixed((3,), x, y, n, s, direct=("k",), HALF=True)
    assert kinds(lc)[before:] == ["fast"]  # no launcher key
    _, grid, passed, stream = lc.log[-1]
    assert grid == (3, 1, 1) and passed == (x, y, n, s, True, 32) and stream == 1000


def test_call_relaunches_on_the_configs_grid(lc):
    launch = rc.Launch(_scaled, lambda meta: (64 // meta["BLOCK"],))
    launch(*args(), direct=True, HALF=False)
    before = len(lc.log)
    launch(*args(), direct=True, HALF=False)
    assert kinds(lc)[before:] == ["fast"] and lc.log[-1][1] == (2, 1, 1)


@pytest.mark.parametrize("change", ["key", "device", "none"])
def test_what_the_key_does_not_cover_goes_through_the_launcher(lc, change):
    launch = rc.Launch(_scaled, None)
    launch.fixed((2,), *args(), direct=("k",), HALF=True)
    direct = ("other",) if change == "key" else None if change == "none" else ("k",)
    if change == "device":
        lc.device[0] = 1
    before = len(lc.log)
    launch.fixed((2,), *args(), direct=direct, HALF=True)
    assert kinds(lc)[before] == "key"


def test_clearing_configs_forgets_them(lc):
    launch = rc.Launch(_scaled, None)
    launch.fixed((2,), *args(), direct=("k",), HALF=True)
    assert rc._DIRECT
    clear_caches()
    assert not rc._DIRECT
