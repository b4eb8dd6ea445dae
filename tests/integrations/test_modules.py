"""flag_gems.modules against float64 references (the YaRN reference is written from the formulas)."""
import math

import pytest
import torch

from flag_gems.modules import GemsDeepseekYarnRoPE, GemsGeluAndMul, GemsRMSNorm, GemsRope, GemsSiluAndMul
from tests.helpers import DEVICE, TOLERANCES, assert_close, count_kernels, to_reference

DTYPES = [torch.float32, torch.bfloat16]


def _rms_ref(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_rms_norm_module(dtype, inplace):
    m = GemsRMSNorm(48, eps=1e-5, inplace=inplace).to(DEVICE, dtype)
    with torch.no_grad():
        m.weight.copy_(torch.randn(48))
    x = torch.randn(3, 5, 48, dtype=dtype, device=DEVICE)
    x0 = x.clone()
    with count_kernels() as k, torch.no_grad():
        y = m(x)
    assert k["rms_norm_fwd_kernel"] == 1
    assert_close(y, _rms_ref(to_reference(x0), to_reference(m.weight), 1e-5), dtype)
    assert (y is x) == inplace
    if not inplace:
        assert torch.equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_rms_norm_module_residual(dtype, inplace):
    m = GemsRMSNorm(33, inplace=inplace).to(DEVICE, dtype)
    x = torch.randn(4, 33, dtype=dtype, device=DEVICE)
    r = torch.randn(4, 33, dtype=dtype, device=DEVICE)
    x0, r0 = x.clone(), r.clone()
    with count_kernels() as k, torch.no_grad():
        y, res = m(x, r)
    assert k["rms_norm_fwd_kernel"] == 1
    ref_res = to_reference(x0) + to_reference(r0)
    assert_close(res, ref_res, dtype)
    assert_close(y, _rms_ref(ref_res, to_reference(m.weight), 1e-6), dtype, atol=4 * TOLERANCES[dtype][1])
    if inplace:
        assert y is x and res is r
    else:
        assert torch.equal(x, x0) and torch.equal(r, r0)


def test_rms_norm_module_grad_path():
    # with autograd recording, the module computes with differentiable torch ops
    m = GemsRMSNorm(16).to(DEVICE)
    x = torch.randn(3, 16, device=DEVICE, requires_grad=True)
    r = torch.randn(3, 16, device=DEVICE)
    y, res = m(x, r)
    (y.sum() + res.sum()).backward()
    xr = to_reference(x).requires_grad_()
    ref = _rms_ref(xr + to_reference(r), to_reference(m.weight), 1e-6)
    (ref.sum() + (xr + to_reference(r)).sum()).backward()
    assert_close(x.grad, xr.grad, torch.float32, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_module(dtype):
    x = torch.randn(3, 2, 40, dtype=dtype, device=DEVICE)
    with count_kernels() as k:
        y = GemsSiluAndMul()(x)
    assert k["gated_act_kernel"] == 1
    xr = to_reference(x)
    assert_close(y, torch.nn.functional.silu(xr[..., :20]) * xr[..., 20:], dtype)
    g = GemsGeluAndMul("tanh")(x)
    assert_close(g, torch.nn.functional.gelu(xr[..., :20], approximate="tanh") * xr[..., 20:], dtype)


# -- rope --------------------------------------------------------------------------------
def _rope_ref(x, pos, inv_freq, rot, neox, scale=1.0):
    """float64: x [T, H, D], pos [T]."""
    ang = pos.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, R/2]
    c, s = (ang.cos() * scale)[:, None, :], (ang.sin() * scale)[:, None, :]
    out = x.clone()
    if neox:
        x1, x2 = x[..., : rot // 2], x[..., rot // 2: rot]
        out[..., : rot // 2], out[..., rot // 2: rot] = x1 * c - x2 * s, x2 * c + x1 * s
    else:
        x1, x2 = x[..., 0:rot:2], x[..., 1:rot:2]
        out[..., 0:rot:2], out[..., 1:rot:2] = x1 * c - x2 * s, x2 * c + x1 * s
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox,rot,inplace", [(True, 16, False), (False, 16, True), (True, 8, True), (False, 8, False)])
def test_rope_module(dtype, neox, rot, inplace):
    D, Hq, Hk, T = 16, 3, 2, 5
    m = GemsRope(D, rot, max_position=64, base=10000.0, is_neox_style=neox).to(DEVICE)
    pos = torch.tensor([0, 7, 3, 63, 12], device=DEVICE)
    q = torch.randn(T, Hq * D, dtype=dtype, device=DEVICE)  # vLLM's flat layout
    k = torch.randn(T, Hk * D, dtype=dtype, device=DEVICE)
    q0, k0 = q.clone(), k.clone()
    with count_kernels() as kc:
        qo, ko = m(pos, q, k, inplace=inplace)
    assert kc["rotary_kernel"] >= 1
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64, device=DEVICE) / rot))
    assert qo.shape == q.shape and ko.shape == k.shape
    assert_close(qo, _rope_ref(to_reference(q0).view(T, Hq, D), pos, inv, rot, neox).view(T, -1), dtype)
    assert_close(ko, _rope_ref(to_reference(k0).view(T, Hk, D), pos, inv, rot, neox).view(T, -1), dtype)
    if inplace:
        assert qo is q and ko is k
    else:
        assert torch.equal(q, q0) and torch.equal(k, k0)


def test_rope_module_no_key_and_grad_path():
    m = GemsRope(8, 8, max_position=16).to(DEVICE)
    pos = torch.tensor([1, 5], device=DEVICE)
    q = torch.randn(2, 2, 8, device=DEVICE)
    qo, ko = m(pos, q, None)
    assert ko is None
    qg = q.clone().requires_grad_()
    qt, _ = m(pos, qg, None)  # differentiable torch path
    assert_close(qo, qt.detach().double(), torch.float32)
    qt.sum().backward()
    assert qg.grad is not None


def _yarn_reference(rot, max_pos, base, s, orig, beta_fast, beta_slow, mscale, mscale_all):
    """The formulas of YaRN as DeepSeek-V2 uses them, in float64, written independently."""
    def corr_dim(n_rot):  # dim index with n_rot full turns over the original context
        return rot * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), rot - 1)
    inv = []
    for i in range(rot // 2):
        f = base ** (-2.0 * i / rot)
        ramp = min(max((i - low) / ((high - low) or 0.001), 0.0), 1.0)
        inv.append(f / s * ramp + f * (1 - ramp))
    ms = lambda m: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0  # noqa: E731
    return torch.tensor(inv, dtype=torch.float64, device=DEVICE), ms(mscale) / ms(mscale_all)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deepseek_yarn_rope(dtype):
    D, rot, T = 24, 16, 6  # partial rotary (the nope dims pass through)
    kw = dict(base=10000.0, scaling_factor=4.0, beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.5)
    m = GemsDeepseekYarnRoPE(D, rot, original_max_position=32, **kw).to(DEVICE)
    assert m.cos_cache.shape == (128, rot // 2)
    inv, scale = _yarn_reference(rot, 128, kw["base"], 4.0, 32, 32.0, 1.0, 0.707, 0.5)
    assert scale != 1.0
    pos = torch.tensor([0, 1, 31, 32, 100, 127], device=DEVICE)
    q = torch.randn(T, 2, D, dtype=dtype, device=DEVICE)
    k = torch.randn(T, 1, D, dtype=dtype, device=DEVICE)
    with count_kernels() as kc:
        qo, ko = m(pos, q, k)
    assert kc["rotary_kernel"] >= 1
    assert_close(qo, _rope_ref(to_reference(q), pos, inv, rot, False, scale), dtype)
    assert_close(ko, _rope_ref(to_reference(k), pos, inv, rot, False, scale), dtype)
