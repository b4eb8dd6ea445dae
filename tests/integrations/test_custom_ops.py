"""torch.ops.flag_gems.*: registered lazily, correct, and each passes torch.library.opcheck."""
import subprocess
import sys

import pytest
import torch

import flag_gems
from tests.helpers import DEVICE, assert_close, to_reference

# opcheck's default sub-tests (schema, autograd registration, fake tensor, AOT dispatch
# dynamic). test_aot_dispatch_dynamic re-runs the op several times under AOTAutograd;
# the interpreter makes that the slow part, so shapes stay tiny.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def test_import_registers_nothing():
    code = "import torch, flag_gems; assert not hasattr(torch.ops.flag_gems, 'rms_norm'); " \
           "import sys; assert 'flag_gems.custom_ops' not in sys.modules; " \
           "flag_gems.ops_lib(); assert hasattr(torch.ops.flag_gems, 'rms_norm')"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def ops():
    return flag_gems.ops_lib()


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    T, H, D = 3, 2, 8
    cache = torch.cat([torch.rand(16, D // 2, generator=g), torch.rand(16, D // 2, generator=g)], -1).to(DEVICE)
    pos = torch.tensor([0, 5, 15], device=DEVICE)
    return {
        "rms_norm": (r(3, 16), r(16), 1e-6),
        "fused_add_rms_norm": (r(3, 16), r(3, 16), r(16), 1e-6),
        "rotary_embedding": (pos, r(T, H * D), r(T, D), D, cache, True),
        "silu_and_mul": (r(3, 16),),
        "gelu_and_mul": (r(3, 16), "tanh"),
        "mm": (r(5, 7), r(7, 6)),
        "addmm": (r(6), r(5, 7), r(7, 6), 0.5, 2.0),
        "bmm": (r(2, 3, 7), r(2, 7, 4)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_opcheck(ops, name):
    args = _cases()[name]
    torch.library.opcheck(getattr(ops, name), args, test_utils=OPCHECK_UTILS)


def test_values(ops):
    c = _cases()
    x, w, eps = c["rms_norm"]
    xr = to_reference(x)
    assert_close(ops.rms_norm(x, w, eps), xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + eps) * to_reference(w))
    x, res, w, eps = c["fused_add_rms_norm"]
    s = to_reference(x) + to_reference(res)
    assert ops.fused_add_rms_norm(x, res, w, eps) is None
    assert_close(res, s)
    assert_close(x, s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * to_reference(w), atol=4e-5)
    pos, q, k, D, cache, neox = c["rotary_embedding"]
    q0 = to_reference(q).view(3, 2, D)
    ops.rotary_embedding(pos, q, k, D, cache, neox)
    cos, sin = to_reference(cache[pos, : D // 2])[:, None], to_reference(cache[pos, D // 2:])[:, None]
    ref = torch.cat([q0[..., :4] * cos - q0[..., 4:] * sin, q0[..., 4:] * cos + q0[..., :4] * sin], -1)
    assert_close(q, ref.view(3, -1))
    (x,) = c["silu_and_mul"]
    xr = to_reference(x)
    assert_close(ops.silu_and_mul(x), torch.nn.functional.silu(xr[:, :8]) * xr[:, 8:])
    bias, a, b, beta, alpha = c["addmm"]
    assert_close(ops.addmm(bias, a, b, beta, alpha), beta * to_reference(bias) + alpha * to_reference(a) @ to_reference(b), reduce_dim=7)
    a, b = c["bmm"]
    assert_close(ops.bmm(a, b), to_reference(a) @ to_reference(b), reduce_dim=7)


def test_compile_traces_through_fake(ops):
    # the fake impls let torch.compile trace the ops (no Inductor codegen: aot_eager)
    def f(x, w):
        y = ops.rms_norm(x, w, 1e-6)
        return ops.silu_and_mul(torch.cat([y, y], -1))

    x, w = torch.randn(3, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_close(cf(x, w), to_reference(f(x, w)))
