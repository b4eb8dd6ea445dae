"""The public API: enable/disable, unused, use_gems nesting and restore, the record log,
device and vendor detection, and that importing flag_gems registers nothing."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import flag_gems
from flag_gems import registry, runtime
from tests.helpers import DEVICE, count_kernels


@pytest.fixture(autouse=True)
def clean_state():
    flag_gems.disable()
    yield
    flag_gems.disable()


REDUCE = "_reduce_kernel"  # flag_gems' sum/mean kernel


def ran_gems(fn, kernel: str = REDUCE) -> bool:
    """Whether ``fn`` launched flag_gems' kernel (aten's own kernels may call other
    flag_gems ops, such as fill_, so only the op's kernel tells)."""
    with count_kernels() as launched:
        fn()
    return launched[kernel] > 0


def x():
    return torch.randn(4, 33, device=DEVICE)


def test_enable_then_disable_restores_aten():
    t = x()
    flag_gems.enable()
    assert ran_gems(lambda: torch.sum(t)) and flag_gems.is_enabled("sum")
    flag_gems.disable()
    assert not ran_gems(lambda: torch.sum(t)) and not flag_gems.is_enabled()
    assert registry.STATE.lib is None


def test_switched_off_ops_are_exactly_aten():
    """After a use_gems() block the wrappers stay installed, switched off: every op must
    give aten's result bit for bit, Python numbers in tensor slots (wrapped numbers) too."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    xb = torch.randn(1000, device=DEVICE, generator=g).to(torch.bfloat16)
    xi = torch.randint(-9, 9, (100,), device=DEVICE, dtype=torch.int32, generator=g)
    flags = torch.rand(10, device=DEVICE, generator=g) > 0.5
    zero_d = torch.tensor(2.0, device=DEVICE)
    cases = [
        lambda: xb * 0.1, lambda: xb + 0.3, lambda: torch.add(xb, 0.7, alpha=3), lambda: xb.half() - 1e-4,
        lambda: xi * 3, lambda: xi * 1.5, lambda: flags + 1, lambda: flags * True, lambda: zero_d * 1.1,
        lambda: torch.sub(xb, 3, alpha=2), lambda: xb.masked_fill(xb > 0, 0.123), lambda: torch.pow(2.0, xb),
    ]
    ref = [c() for c in cases]
    with flag_gems.use_gems():
        pass
    assert registry.STATE.lib is not None  # installed, all off
    for i, (c, r) in enumerate(zip(cases, ref)):
        got = c()
        assert got.dtype == r.dtype and torch.equal(got, r), f"case {i}: {got} vs {r}"


def test_unused_by_name_and_overload():
    t = x()
    flag_gems.enable(unused=["sum"])
    assert not ran_gems(lambda: torch.sum(t)) and not ran_gems(lambda: t.sum(dim=1))
    assert ran_gems(lambda: torch.mean(t))
    flag_gems.enable(unused=["sum.dim_IntList", "aten::mean"])
    assert ran_gems(lambda: torch.sum(t)) and not ran_gems(lambda: t.sum(dim=1)) and not ran_gems(lambda: t.mean())


def test_unknown_unused_name_is_clear_error():
    with pytest.raises(ValueError, match="no_such_op"):
        flag_gems.enable(unused=["no_such_op"])
    assert not flag_gems.is_enabled()


def test_use_gems_nesting_and_restore_on_exception():
    t = x()
    assert not ran_gems(lambda: torch.sum(t))
    with flag_gems.use_gems():
        assert ran_gems(lambda: torch.sum(t))
        with flag_gems.use_gems(unused=["sum"]):
            assert not ran_gems(lambda: torch.sum(t)) and ran_gems(lambda: torch.mean(t))
        assert ran_gems(lambda: torch.sum(t))
        with pytest.raises(KeyError):
            with flag_gems.use_gems(unused=["mean"]):
                raise KeyError("boom")
        assert ran_gems(lambda: torch.mean(t))
    assert not ran_gems(lambda: torch.sum(t))
    torch.testing.assert_close(torch.sum(t), t.double().sum().float())


def test_use_gems_inside_enable_restores_enabled_state():
    t = x()
    flag_gems.enable(unused=["mean"])
    with flag_gems.use_gems():
        assert ran_gems(lambda: torch.mean(t))
    assert not ran_gems(lambda: torch.mean(t)) and ran_gems(lambda: torch.sum(t))


def test_use_gems_does_not_reregister(monkeypatch):
    with flag_gems.use_gems():
        pass
    lib = registry.STATE.lib
    calls = []
    monkeypatch.setattr(torch.library.Library, "impl", lambda *a, **k: calls.append(a))
    t0 = time.perf_counter()
    for _ in range(200):
        with flag_gems.use_gems():
            pass
    per_enter_us = (time.perf_counter() - t0) / 200 * 1e6
    assert calls == [] and registry.STATE.lib is lib
    print(f"use_gems enter+exit: {per_enter_us:.1f} us for {len(registry.entries())} ops")


def test_record_log(tmp_path):
    path = tmp_path / "rec.jsonl"
    t = x()
    flag_gems.enable(record=True, path=path)
    torch.sum(t)
    t.sum(dim=1, keepdim=True)
    flag_gems.enable()
    torch.sum(t)  # not recorded any more
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["op"] for l in lines] == ["sum", "sum.dim_IntList"]
    assert lines[0]["args"][0]["shape"] == [4, 33] and lines[0]["args"][0]["dtype"] == "float32"


def test_nested_scope_keeps_outer_recording(tmp_path):
    path = tmp_path / "rec.jsonl"
    t = x()
    flag_gems.enable(record=True, path=path)
    with flag_gems.use_gems(unused=["mean"]):
        torch.sum(t)
    torch.sum(t)
    assert [json.loads(l)["op"] for l in path.read_text().splitlines()] == ["sum", "sum"]


def test_record_off_formats_nothing(monkeypatch):
    flag_gems.enable()
    monkeypatch.setattr(registry, "_describe", lambda a: pytest.fail("formatted while record is off"))
    torch.sum(x())


def test_device_and_vendor(monkeypatch):
    assert flag_gems.device == DEVICE
    monkeypatch.setenv("GEMS_VENDOR", "nvidia")
    runtime.reset()
    assert flag_gems.vendor_name == "nvidia" and flag_gems.device == "cuda"
    monkeypatch.setenv("GEMS_VENDOR", "acme")
    runtime.reset()
    with pytest.raises(runtime.VendorError, match="known vendors: amd, cpu, nvidia"):
        flag_gems.vendor_name
    monkeypatch.delenv("GEMS_VENDOR")
    runtime.reset()
    assert flag_gems.device == DEVICE


def test_import_registers_nothing_and_parses_no_argv():
    code = (
        "import sys, torch; sys.argv = ['prog', '--bogus-flag'];"
        "import flag_gems; from flag_gems import registry;"
        "assert registry.STATE.lib is None and not registry._ENTRIES, 'registered at import';"
        "assert 'flag_gems.ops' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("inference", [False, True], ids=["grad", "inference_mode"])
def test_torch_compile_traces_ops_served_on_the_autograd_key(backend, inference):
    """torch.compile traces with FakeTensors, which reach an op served on the Autograd key
    before fake mode does: such calls take aten's composite (no launch on a tensor without
    memory). The compiled function still runs flag_gems' kernels on real tensors."""
    import torch.nn.functional as F

    x, w, b = (torch.randn(*s, device=DEVICE) for s in ((4, 3, 8), (6, 8), (6,)))

    def f(x, w, b):
        y = F.linear(x, w, b)
        y = F.layer_norm(y, (6,)) + F.rms_norm(y, (6,), eps=1e-6)
        return y.to(torch.float16), torch.isfinite(y), torch.outer(b, b)

    ref = f(x, w, b)
    torch._dynamo.reset()
    with torch.inference_mode(inference), count_kernels() as ran, flag_gems.use_gems():
        got = torch.compile(f, backend=backend, fullgraph=True)(x, w, b)
    assert sum(ran.values()) > 0
    for g, r in zip(got, ref):
        if g.dtype == torch.bool:
            assert torch.equal(g, r)
        else:
            torch.testing.assert_close(g.float(), r.float(), rtol=2e-3, atol=2e-3)


def _autograd_key_cases():
    import torch.nn.functional as F

    g = torch.Generator(device=DEVICE).manual_seed(3)
    x, w, v = (torch.randn(*s, device=DEVICE, generator=g) for s in ((4, 3, 40), (40,), (7,)))
    m = torch.randn(6, 40, device=DEVICE, generator=g)
    odd = x.clone()
    odd[0, 0, 0], odd[1, 2, 3] = float("inf"), float("nan")
    return {  # op -> (call, the kernel that serves it)
        "rms_norm": (lambda t: F.rms_norm(t(x), (40,), t(w), 1e-6), "rms_norm_fwd_kernel"),
        "layer_norm": (lambda t: F.layer_norm(t(x), (40,), t(w), t(w)), "layer_norm_fwd_kernel"),
        "linear": (lambda t: F.linear(t(x), t(m)), "_mm_kernel"),
        "outer": (lambda t: torch.outer(t(v), t(v)), None),
        "to.dtype": (lambda t: t(x).to(torch.float16), None),
        "isfinite": (lambda t: torch.isfinite(t(odd)), "isfinite_t_flat"),
        "_pad_circular": (lambda t: F.pad(t(x), (2, 3), mode="circular"), "pad_kernel"),
    }


def test_ops_served_on_the_autograd_key_serve_inference_mode_too():
    """torch.inference_mode skips the Autograd keys, where aten's composite would break
    rms_norm into five kernels (pow, mean, add, rsqrt, mul) and isfinite into four: each
    such op is served on the backend key too, by one launch; unused= switches both off."""
    from tests.helpers import assert_close, to_reference

    cases = _autograd_key_cases()
    assert set(cases) == {n for n, e in registry.entries().items() if e.autograd}  # a new one needs a case
    for name, (call, kernel) in cases.items():
        expect = call(to_reference)
        with torch.inference_mode(), count_kernels() as ran, flag_gems.use_gems():
            got = call(lambda t: t)
        assert sum(ran.values()) == 1 and (kernel is None or ran[kernel] == 1), f"{name}: {dict(ran)}"
        if got.dtype == torch.bool:
            assert torch.equal(got, expect), name
        else:
            assert_close(got, expect, got.dtype)
    call, kernel = cases["rms_norm"]
    with torch.inference_mode(), count_kernels() as ran, flag_gems.use_gems(unused=["rms_norm"]):
        got = call(lambda t: t)
    assert ran[kernel] == 0  # aten's composite: torch's fused kernel (CUDA), flag_gems' smaller ops (CPU)
    assert_close(got, call(to_reference), got.dtype)


def _weighted_calls(m: torch.Tensor) -> dict:
    """op served on the Autograd key -> a call of it on (t, w), differentiable in both."""
    import torch.nn.functional as F

    return {
        "rms_norm": lambda t, w: F.rms_norm(t, (40,), w, 1e-6),
        "layer_norm": lambda t, w: F.layer_norm(t, (40,), w, w),
        "linear": lambda t, w: F.linear(t, m.to(t.dtype) * w),
        "to.dtype": lambda t, w: (t * w).to(torch.float16),
        "_pad_circular": lambda t, w: F.pad((t * w)[None], (2, 3), mode="circular"),
        "outer": lambda t, w: torch.outer(t[0], w),
    }


def test_torch_func_transforms_through_ops_served_on_the_autograd_key():
    """Inside torch.func's transforms (grad, vmap) tensors are functorch's wrappers, and an
    autograd.Function cannot be applied from inside the Autograd key: an op served there
    takes aten's composite, whose smaller ops run flag_gems' kernels on the unwrapped
    tensors. (Before, rms_norm under torch.func.grad raised.)"""
    g = torch.Generator(device=DEVICE).manual_seed(5)
    x, w, m = (torch.randn(*s, device=DEVICE, generator=g) for s in ((4, 40), (40,), (6, 40)))
    for name, call in _weighted_calls(m).items():
        def loss(t, w, call=call):
            return call(t, w).to(t.dtype).pow(2).sum()

        expect = torch.func.grad(loss, argnums=(0, 1))(x.double(), w.double())
        batch = torch.stack([x, 2 * x])
        with count_kernels() as ran, flag_gems.use_gems():
            got = torch.func.grad(loss, argnums=(0, 1))(x, w)
            mapped = torch.vmap(lambda t: loss(t, w))(batch)
        assert sum(ran.values()) > 0, name
        for gt, ex in zip(got, expect):
            torch.testing.assert_close(gt.double(), ex, rtol=2e-3, atol=2e-3, msg=lambda s: f"{name}: {s}")
        torch.testing.assert_close(mapped.double(), torch.stack([loss(b.double(), w.double()) for b in batch]).double(),
                                   rtol=2e-3, atol=2e-3, msg=lambda s: f"{name}: {s}")
    with flag_gems.use_gems():
        finite = torch.vmap(torch.isfinite)(torch.stack([x, x / 0]))
    assert torch.equal(finite, torch.isfinite(torch.stack([x, x / 0])))


def test_forward_mode_ad_through_ops_served_on_the_autograd_key():
    """flag_gems' entries on the Autograd key compute no tangents: while a forward-mode AD
    level is open they take aten's composite, op by op. (Before, rms_norm and layer_norm
    returned no tangent at all.)"""
    import torch.autograd.forward_ad as fwAD

    g = torch.Generator(device=DEVICE).manual_seed(7)
    x, tx, w, m = (torch.randn(*s, device=DEVICE, generator=g) for s in ((4, 40), (4, 40), (40,), (6, 40)))
    for name, call in _weighted_calls(m).items():
        with fwAD.dual_level():
            expect = fwAD.unpack_dual(call(fwAD.make_dual(x.double(), tx.double()), w.double())).tangent
        with flag_gems.use_gems(), fwAD.dual_level():
            got = fwAD.unpack_dual(call(fwAD.make_dual(x, tx), w)).tangent
        assert got is not None, f"{name}: no tangent"
        torch.testing.assert_close(got.double(), expect.double(), rtol=2e-3, atol=2e-3, msg=lambda s: f"{name}: {s}")
