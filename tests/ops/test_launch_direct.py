"""Direct relaunches of a plan's ``Launch`` (norms, softmax, reductions, embedding, cat,
the gated activations, rotary): a call whose caller-given ``direct`` key repeats
relaunches the kept kernel without the launcher's key; a new key, or a new device, goes
through it.

The interpreter compiles nothing, so the compiled kernel is a stand-in that records its
launches (see tests/tuner/test_launch.py); the op tests check the results."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from flag_gems.ops import _reduce_common as rc
from flag_gems.fused import rotary_embedding as rotary_ops
from flag_gems.ops import cat as cat_ops
from tests.helpers import DEVICE, assert_close, count_kernels
from tests.tuner.test_launch import FakeJit
from tuner import libtuner
from tuner.launch import forget_direct
from tuner.libtuner import clear_caches

from flag_gems.ops import reduction as red_ops
from tuner import launch as launching
from tuner.launch import KeptCache

pytestmark = pytest.mark.usefixtures("stand_in_kernels")  # stand-ins must not outlive a test


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


# -- the ops' own call sites: a direct relaunch passes what the launcher would --------
class _Recording:
    """Every tuner.launch Launcher on stand-ins: compiled kernels record their launches."""

    def __init__(self, monkeypatch) -> None:
        from tuner import launch

        self.log: list = []
        self.mp = monkeypatch
        for _, lc in list(launch._LAUNCHERS.values()):
            self.fake(lc)
        init = launch.Launcher.__init__

        def fake_init(lc, fn):
            init(lc, fn)
            self.fake(lc)

        monkeypatch.setattr(launch.Launcher, "__init__", fake_init)

    def fake(self, lc) -> None:
        fake = FakeJit()
        fake.log = self.log
        for name, value in (("fn", fake), ("fast", True), ("compiled", {}), ("current_device", lambda: 0),
                            ("current_stream", lambda d: 1000 + d)):
            self.mp.setattr(lc, name, value, raising=False)


def _shape_of(v):
    """An argument as a kernel sees it: a tensor is its dtype and address (compared by
    alignment, the addresses of new outputs differ) and, as a check of its layout, its
    strides; its shape is not passed (a relaunch may pass q for q's and k's heads)."""
    return (v.dtype, v.stride(), v.data_ptr() & 15) if isinstance(v, torch.Tensor) else v


def _ops():
    import torch.nn.functional as F

    from flag_gems import fused

    x = torch.randn(6, 48, dtype=torch.bfloat16)
    w, b = torch.randn(48, dtype=torch.bfloat16), torch.randn(48, dtype=torch.bfloat16)
    table = torch.randn(20, 48)
    ids = torch.randint(0, 20, (2, 3))
    cache, new = torch.randn(2, 4, 5, 16), torch.randn(2, 4, 1, 16)
    q, k, qkv = torch.randn(3, 2, 8), torch.randn(3, 1, 8), torch.randn(3, 32)
    cos, sin, pos = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([2, 0, 1])
    return {
        "rms_norm": lambda: F.rms_norm(x, (48,), w, 1e-6),
        "layer_norm": lambda: F.layer_norm(x, (48,), w, b, 1e-5),
        "embedding": lambda: F.embedding(ids, table),
        "softmax": lambda: torch.softmax(x, -1),
        "sum": lambda: x.sum(-1),
        "mean 2-stage": lambda: torch.randn(4, 70000).mean(0),
        "cat kv": lambda: torch.cat([cache, new], dim=-2),
        "cat rotate_half": lambda: torch.cat((-cache[..., 8:], cache[..., :8]), dim=-1),
        "silu_and_mul": lambda: fused.silu_and_mul(x),
        "arange": lambda: torch.arange(5, 13),
        "arange float": lambda: torch.arange(0.5, 3.0, 0.25),
        "rotary": lambda: fused.apply_rotary_pos_emb(q, k, cos, sin),
        "rotary adjacent heads": lambda: fused.apply_rotary_pos_emb(qkv[..., :16].view(3, 2, 8), qkv[..., 16:24].view(3, 1, 8), cos, sin),
        "rotary merged qkv": lambda: fused.apply_rotary_pos_emb(qkv[..., :16].view(3, 2, 8), qkv[..., 16:24].view(3, 1, 8),
                                                              cos, sin, position_ids=pos),
    }


@pytest.mark.parametrize("name", list(_ops()))
def test_a_call_sites_direct_relaunch_passes_what_the_launcher_would(monkeypatch, name):
    import flag_gems

    if DEVICE != "cpu":
        pytest.skip("the stand-ins take CPU tensors; the GPU suite runs the ops for real")
    rec = _Recording(monkeypatch)
    fn = _ops()[name]
    relaunched = []

    def spy(owner, attr):
        orig = getattr(owner, attr)
        monkeypatch.setattr(owner, attr, lambda *a: relaunched.append(orig(*a)) or relaunched[-1])

    spy(rc.Launch, "_relaunch")
    spy(cat_ops, "_relaunch")  # cat's repeated signatures relaunch their own plan (which a Launch filed)
    spy(rotary_ops, "_relaunch")
    spy(red_ops, "_repeat")  # a one-launch reduction's own per-signature cache
    spy(KeptCache, "relaunch")  # rms_norm's, layer_norm's and embedding's (no Launch on the repeat)
    forget_direct()
    with flag_gems.use_gems():
        fn()  # compiles (the stand-in), files the direct relaunches
        start = len(rec.log)
        relaunched.clear()
        fn()
        direct = rec.log[start:]
        assert relaunched and all(x is not None and x is not False for x in relaunched), f"not relaunched directly: {relaunched}"
        filed = {**rc._DIRECT, **red_ops._REPEAT}
        for cache in launching._DIRECT:
            if isinstance(cache, KeptCache):
                filed.update({(id(cache), k): v for k, v in cache.items()})
        for owner, attr in ((rc.Launch, "_file"), (red_ops, "_file_repeat"), (KeptCache, "file")):
            monkeypatch.setattr(owner, attr, lambda *a, **k: None)
        forget_direct()
        start = len(rec.log)
        fn()
        through_launcher = rec.log[start:]
    forget_direct()
    assert filed and all(v is not None for v in filed.values()), "nothing filed for a direct relaunch"
    assert direct and [e[0] for e in direct] == ["fast"] * len(direct)
    assert [(grid, [_shape_of(a) for a in args], stream) for _, grid, args, stream in direct] == \
        [(grid, [_shape_of(a) for a in args], stream) for _, grid, args, stream in through_launcher]


def test_a_cat_plan_takes_each_calls_own_inputs(monkeypatch):
    """A repeated cat signature relaunches its plan with this call's tensors in their
    slots (a plan filed for ``cat([x, x])`` must not pass x twice for ``cat([a, b])``)."""
    import flag_gems

    if DEVICE != "cpu":
        pytest.skip("the stand-ins take CPU tensors; the GPU suite runs the ops for real")
    rec = _Recording(monkeypatch)
    x = torch.randn(2, 3, 8)
    a, b = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    forget_direct()
    with flag_gems.use_gems():
        torch.cat([x, x], dim=1)
        start = len(rec.log)
        out = torch.cat([a, b], dim=1)
    forget_direct()
    (kind, grid, passed, _), = rec.log[start:]
    assert kind == "fast" and passed[0] is out and out.shape == (2, 6, 8)
    tensors = [p for p in passed[1:] if isinstance(p, torch.Tensor)]
    assert tensors[0] is a and tensors[1] is b and all(t is a for t in tensors[2:])


# -- repeats compute the op: fresh inputs each call (on a GPU the repeats are direct) -----
def _repeated_ops():
    import torch.nn.functional as F

    bf = torch.bfloat16

    def r(*shape, dtype=bf):
        return torch.randn(*shape, device=DEVICE, dtype=dtype)

    w, b, table = r(64), r(64), r(50, 64)
    return {  # name -> (inputs(), op(*inputs), the float64 reference, reduced length)
        "rms_norm": (lambda: (r(6, 64),), lambda x: F.rms_norm(x, (64,), w, 1e-6),
                     lambda x: F.rms_norm(x.double(), (64,), w.double(), 1e-6), 64),
        "layer_norm": (lambda: (r(6, 64),), lambda x: F.layer_norm(x, (64,), w, b),
                       lambda x: F.layer_norm(x.double(), (64,), w.double(), b.double()), 64),
        "embedding": (lambda: (torch.randint(0, 50, (3, 5), device=DEVICE),), lambda i: F.embedding(i, table),
                      lambda i: F.embedding(i, table.double()), 1),
        "sum": (lambda: (r(6, 64),), lambda x: x.sum(-1), lambda x: x.double().sum(-1), 64),
        "mean": (lambda: (r(6, 64),), lambda x: x.mean(-1), lambda x: x.double().mean(-1), 64),
        "linear 3-D": (lambda: (r(2, 3, 64),), lambda x: F.linear(x, table), lambda x: F.linear(x.double(), table.double()), 64),
        "linear bias": (lambda: (r(5, 64),), lambda x: F.linear(x, table, b[:50]),
                        lambda x: F.linear(x.double(), table.double(), b[:50].double()), 64),
        "cat kv": (lambda: (r(2, 4, 7, 16), r(2, 4, 1, 16)), lambda c, n: torch.cat([c, n], dim=-2),
                   lambda c, n: torch.cat([c.double(), n.double()], dim=-2), 1),
        "mul broadcast": (lambda: (r(6, 64),), lambda x: x * w, lambda x: x.double() * w.double(), 1),
    }


@pytest.mark.parametrize("name", list(_repeated_ops()))
def test_repeats_compute_the_op(name):
    """Three calls of one signature with fresh inputs each give each call's own result:
    what a direct relaunch passes is this call's tensors (on a GPU, where repeats are
    direct, a stale tensor or a wrong argument shows here)."""
    import flag_gems

    inputs, op, ref, n = _repeated_ops()[name]
    calls = [inputs() for _ in range(3)]
    with count_kernels() as ran, flag_gems.use_gems():
        outs = [op(*c) for c in calls]
    assert sum(ran.values()) == 3, dict(ran)
    for c, out in zip(calls, outs):
        assert_close(out, ref(*c), torch.bfloat16, reduce_dim=n)
