"""GEMM direct launches: a call with the shapes, strides, dtypes, scalars and flags of an
earlier one (all operands 16-byte aligned) relaunches that call's kept kernels (split-K's
pair; a TMA config with descriptors of the new operands) without the tuner's and the
launcher's keys; anything those keys would see differently goes back through them.

The interpreter compiles nothing, so the compiled kernels are stand-ins that record their
launches (see tests/tuner/test_launch.py); results are not computed on them. The last
test checks real results (and, on a GPU run, that the launches were direct). On a GPU run
the stand-ins get CUDA tensors (flag_gems serves the CUDA key there) and launch nothing."""
from __future__ import annotations

import pytest
import torch

import flag_gems
from flag_gems.ops import mm as mm_ops
from tests.helpers import DEVICE, assert_close, count_kernels
from tests.tuner.test_launch import FakeJit
from tuner.launch import launcher
from tuner.libtuner import clear_caches, resolve_hook

pytestmark = pytest.mark.usefixtures("stand_in_kernels")  # stand-ins must not outlive a test


class _Log(list):
    device: list  # the current device, as the stand-in driver reports it


@pytest.fixture
def log(monkeypatch):
    """Stand-in Triton for the GEMM kernels; the list of launches: "tuner" (LibTuner.run),
    "triton" (compiled), "fast" (a kept kernel relaunched), each with its kernel's name."""
    entries, device = _Log(), [0]
    for fn in (mm_ops._mm_kernel.fn, mm_ops._splitk_reduce_kernel, mm_ops._mm_tma_kernel):
        lc, fake = launcher(fn), FakeJit()
        fake.log = entries
        monkeypatch.setattr(lc, "fn", fake)
        monkeypatch.setattr(lc, "fast", True)
        monkeypatch.setattr(lc, "compiled", {})  # the stand-ins' kernels stay out of the real ones
        monkeypatch.setattr(lc, "current_device", lambda: device[0], raising=False)
        monkeypatch.setattr(lc, "current_stream", lambda d: 1000 + d, raising=False)
    run = mm_ops._mm_kernel.run

    def counted(*args, **kwargs):
        entries.append(("tuner",))
        return run(*args, **kwargs)

    monkeypatch.setattr(mm_ops._mm_kernel, "run", counted)
    mm_ops._DIRECT.clear()
    entries.device = device
    with flag_gems.use_gems():
        yield entries
    mm_ops._DIRECT.clear()


def kinds(log) -> list[str]:
    return [e[0] for e in log]


def mat(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, device=DEVICE)  # where flag_gems is registered


def _only(cfg_filter):
    """A resolve hook that picks the first config ``cfg_filter`` accepts."""
    return lambda tuner, key, args, kwargs, grid: next(c for c in tuner.configs if cfg_filter(c)) if tuner is mm_ops._mm_kernel else None


def test_the_second_call_of_a_shape_launches_directly(log):
    a, b = mat(8, 32), mat(32, 48)
    torch.mm(a, b)
    a2, b2 = mat(8, 32), mat(32, 48)
    out = torch.mm(a2, b2)
    assert kinds(log) == ["tuner", "triton", "fast"]
    _, grid, args, stream = log[-1]
    assert args[:5] == (a2, b2, out, None, None) and stream == 1000  # no bias, no split-K workspace
    assert args[5:9] == (8, 48, 32, 1)  # M, N, K, BATCH


def test_a_repeated_mm_relaunches_before_gemms_own_checks(log, monkeypatch):
    """mm's repeats (a projection's weight, transposed as F.linear passes it) take the
    plan gemm() filed straight from mm, with the new operands."""
    w = mat(48, 32)
    torch.mm(mat(8, 32), w.t())
    monkeypatch.setattr(mm_ops, "gemm", lambda *a, **k: pytest.fail("went through gemm()"))
    a = mat(8, 32)
    out = torch.mm(a, w.t())
    assert kinds(log) == ["tuner", "triton", "fast"] and out.shape == (8, 48)
    assert log[-1][2][0] is a and log[-1][2][2] is out


@pytest.mark.parametrize("bias", [False, True])
def test_a_repeated_linear_relaunches_with_its_own_tensors(log, monkeypatch, bias):
    """F.linear's repeats take the plan gemm() filed for input's rows, passing input, the
    weight and the bias themselves (no views made)."""
    import torch.nn.functional as F

    w, b = mat(48, 32), mat(48) if bias else None
    F.linear(mat(2, 4, 32), w, b)
    monkeypatch.setattr(mm_ops, "gemm", lambda *a, **k: pytest.fail("went through gemm()"))
    x = mat(2, 4, 32)
    out = F.linear(x, w, b)
    assert kinds(log) == ["tuner", "triton", "fast"] and out.shape == (2, 4, 48)
    args = log[-1][2]
    assert args[0] is x and args[1] is w and args[2] is out and args[3] is b
    assert args[5:9] == (8, 48, 32, 1)  # M (rows of x), N, K, BATCH


@pytest.mark.parametrize("change", ["M", "transposed_b", "misaligned", "dtype", "bias", "alpha", "device"])
def test_what_the_keys_would_see_goes_through_them(log, change):
    a, b = mat(8, 32), mat(32, 48)
    torch.mm(a, b)
    if change == "M":
        torch.mm(mat(9, 32), b)
    elif change == "transposed_b":
        torch.mm(a, mat(48, 32).t())
    elif change == "misaligned":
        torch.mm(mat(8 * 32 + 1)[1:].view(8, 32), b)  # contiguous, 4 bytes off
    elif change == "dtype":
        torch.mm(a.half(), b.half())
    elif change == "bias":
        torch.addmm(mat(48), a, b)
    elif change == "alpha":
        torch.addmm(mat(8, 48), a, b, alpha=2.0)
        torch.addmm(mat(8, 48), a, b, alpha=3.0)
        assert kinds(log)[2:] == ["tuner", "triton", "tuner", "fast"]
        return
    elif change == "device":
        log.device[0] = 1
        torch.mm(a, b)
    assert kinds(log)[2] == "tuner", f"{change}: launched directly: {kinds(log)}"


def test_a_split_k_config_relaunches_both_kernels(log):
    with resolve_hook(_only(lambda c: c["SPLIT_K"] == 4 and not c.get("TMA"))):
        a, b = mat(4, 64), mat(64, 32)
        torch.mm(a, b)
        out = torch.mm(a, b)
    assert kinds(log) == ["tuner", "triton", "triton", "fast", "fast"]
    (_, _, main, _), (_, _, reduce, _) = log[-2:]
    ws = main[4]
    assert ws.shape == (1, 4, 4, 32) and ws.dtype == torch.float32 and reduce[0] is ws and reduce[1] is out


def test_a_tma_config_relaunches_with_descriptors_of_the_new_operands(log):
    with resolve_hook(_only(lambda c: c.get("TMA"))):
        a, b = mat(64, 32), mat(32, 48)
        torch.mm(a, b)
        a2, b2 = mat(64, 32), mat(32, 48)
        out = torch.mm(a2, b2)
    assert kinds(log) == ["tuner", "triton", "fast"]
    _, _, args, _ = log[-1]
    a_desc, b_desc = args[:2]
    assert a_desc.base is a2 and list(a_desc.shape) == [64, 32] and b_desc.base is b2 and args[2] is out


def test_a_tma_config_without_describable_operands_runs_the_pointer_kernel(log):
    with resolve_hook(_only(lambda c: c.get("TMA"))):
        a, b = mat(32, 64).t(), mat(32, 48)  # A not contiguous along K: the tile runs through the pointer kernel
        torch.mm(a, b)
        torch.mm(a, b)
    assert kinds(log) == ["tuner", "triton", "fast"]
    assert isinstance(log[-1][2][0], torch.Tensor)


def test_clearing_configs_forgets_direct_launches(log):
    a, b = mat(8, 32), mat(32, 48)
    torch.mm(a, b)
    assert any(mm_ops._DIRECT.values())
    clear_caches()
    assert not mm_ops._DIRECT


def test_direct_launches_compute_the_product():
    a = torch.randn(16, 64, device=DEVICE, dtype=torch.bfloat16)
    ws = [torch.randn(64, 32, device=DEVICE, dtype=torch.bfloat16) for _ in range(3)]
    bias = torch.randn(32, device=DEVICE, dtype=torch.bfloat16)
    with count_kernels() as ran, flag_gems.use_gems():
        outs = [torch.addmm(bias, a, w) for w in ws]
    assert ran["_mm_kernel"] == 3
    for w, out in zip(ws, outs):
        assert_close(out, bias.double() + a.double() @ w.double(), torch.bfloat16)
    if DEVICE != "cpu":
        assert any(mm_ops._DIRECT.values()), "not launched directly"
