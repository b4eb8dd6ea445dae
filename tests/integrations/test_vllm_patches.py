"""vLLM patches, against stand-in classes: vLLM needs CUDA and cannot be installed here.

The stand-ins are injected as ``vllm.model_executor.layers.{layernorm,rotary_embedding,
activation}`` in sys.modules, with vLLM's attribute names and exact ``forward_cuda``
signatures (RMSNorm.forward_cuda(self, x, residual=None), RotaryEmbedding.forward_cuda(
self, positions, query, key=None, offsets=None), SiluAndMul.forward_cuda(self, x)); their
original forward_cuda is a torch reference, so a patched call is checked against it."""
import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import flag_gems
from tests.helpers import DEVICE, TOLERANCES, assert_close, count_kernels


class CustomOp(torch.nn.Module):
    """vLLM's CustomOp dispatch: the forward is chosen once, when the layer is built
    (forward_cuda with custom ops on; forward_native when they are off)."""

    enabled = True

    def __init__(self):
        super().__init__()
        self._forward_method = self.forward_cuda if self.enabled else self.forward_native

    def forward(self, *args, **kwargs):
        return self._forward_method(*args, **kwargs)

    def forward_cuda(self, *args, **kwargs):  # the stand-ins' CUDA path is their reference math
        return self.forward_native(*args, **kwargs)


class RMSNorm(CustomOp):
    def __init__(self, hidden_size, eps=1e-6, var_hidden_size=None, has_weight=True, dtype=None):
        super().__init__()
        self.hidden_size, self.variance_epsilon, self.has_weight = hidden_size, eps, has_weight
        self.variance_size_override = None if var_hidden_size == hidden_size else var_hidden_size
        self.weight = torch.nn.Parameter(torch.randn(hidden_size, dtype=dtype))

    def forward_cuda(self, x, residual=None):
        return self.forward_native(x, residual)

    def forward_native(self, x, residual=None):  # the reference (vLLM's forward_native math)
        orig = x.dtype
        if residual is not None:
            x = x.float() + residual.float()
            residual = x.to(orig)
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)).to(orig) * self.weight
        return y if residual is None else (y, residual)


class RotaryEmbedding(CustomOp):
    def __init__(self, head_size, rotary_dim, max_position_embeddings, base, is_neox_style, dtype):
        super().__init__()
        self.head_size, self.rotary_dim, self.is_neox_style = head_size, rotary_dim, is_neox_style
        inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
        f = torch.outer(torch.arange(max_position_embeddings, dtype=torch.float), inv)
        self.register_buffer("cos_sin_cache", torch.cat([f.cos(), f.sin()], -1).to(dtype), persistent=False)

    def forward_cuda(self, positions, query, key=None, offsets=None):
        return self.forward_native(positions, query, key, offsets)

    def forward_native(self, positions, query, key=None, offsets=None):
        cos, sin = self.cos_sin_cache[positions].float().chunk(2, -1)
        out = []
        for t in (query, key):
            x = t.float().unflatten(-1, (-1, self.head_size))
            r, h = self.rotary_dim, self.rotary_dim // 2
            c, s = cos[:, None], sin[:, None]
            y = x.clone()
            if self.is_neox_style:
                a, b = x[..., :h], x[..., h:r]
                y[..., :h], y[..., h:r] = a * c - b * s, b * c + a * s
            else:
                a, b = x[..., 0:r:2], x[..., 1:r:2]
                y[..., 0:r:2], y[..., 1:r:2] = a * c - b * s, b * c + a * s
            t.copy_(y.flatten(-2))
            out.append(t)
        return tuple(out)


class SiluAndMul(CustomOp):
    def forward_cuda(self, x):
        return self.forward_native(x)

    def forward_native(self, x):
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]


@pytest.fixture
def fake_vllm(monkeypatch):
    mods = {}
    for name in ["vllm", "vllm.model_executor", "vllm.model_executor.layers"]:
        mods[name] = types.ModuleType(name)
    for name, classes in [("layernorm", [RMSNorm]), ("rotary_embedding", [RotaryEmbedding]), ("activation", [SiluAndMul])]:
        m = types.ModuleType(f"vllm.model_executor.layers.{name}")
        for c in classes:
            setattr(m, c.__name__, c)
        mods[m.__name__] = m
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    yield mods
    flag_gems.revert_vllm_patches()


ORIGINALS = {c: c.__dict__["forward_cuda"] for c in (RMSNorm, RotaryEmbedding, SiluAndMul)}


def test_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match="vLLM is not installed"):
        flag_gems.apply_gems_patches_to_vllm()


def test_patch_verbose_and_revert(fake_vllm, caplog):
    with caplog.at_level(logging.INFO, logger="flag_gems.patches"):
        flag_gems.apply_gems_patches_to_vllm(verbose=True)
    msgs = [r.getMessage() for r in caplog.records]
    for c in ORIGINALS:
        prefix = f"Patched {c.__module__}.{c.__qualname__}.forward_cuda with flag_gems.patches.vllm.gems_"
        assert any(m.startswith(prefix) for m in msgs), msgs
    assert all(c.__dict__["forward_cuda"] is not ORIGINALS[c] for c in ORIGINALS)
    flag_gems.apply_gems_patches_to_vllm()  # idempotent
    flag_gems.revert_vllm_patches()
    assert all(c.__dict__["forward_cuda"] is ORIGINALS[c] for c in ORIGINALS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(fake_vllm, dtype):
    layer = RMSNorm(32, eps=1e-5, dtype=dtype).to(DEVICE)
    x = torch.randn(5, 32, dtype=dtype, device=DEVICE)
    r = torch.randn(5, 32, dtype=dtype, device=DEVICE)
    with torch.no_grad():
        ref = layer.forward_cuda(x, None)
        ref_y, ref_r = layer.forward_cuda(x.clone(), r.clone())
        flag_gems.apply_gems_patches_to_vllm()
        with count_kernels() as k:
            y = layer.forward_cuda(x)
            xi, ri = x.clone(), r.clone()
            y2, r2 = layer.forward_cuda(xi, ri)
    assert k["rms_norm_fwd_kernel"] == 2
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(y, ref, rtol=tol[0] * 2, atol=tol[1] * 2)
    assert y2 is xi and r2 is ri  # in place, as vLLM's fused_add_rms_norm
    torch.testing.assert_close(r2, ref_r, rtol=tol[0], atol=tol[1])
    torch.testing.assert_close(y2, ref_y, rtol=tol[0] * 2, atol=tol[1] * 4)


@pytest.mark.parametrize("neox,rot", [(True, 16), (False, 8)])
def test_rotary(fake_vllm, neox, rot):
    layer = RotaryEmbedding(16, rot, 64, 10000.0, neox, torch.float32).to(DEVICE)
    pos = torch.tensor([0, 3, 63, 9], device=DEVICE)
    q = torch.randn(4, 3 * 16, device=DEVICE)
    k = torch.randn(4, 1 * 16, device=DEVICE)
    rq, rk = layer.forward_cuda(pos, q.clone(), k.clone())
    flag_gems.apply_gems_patches_to_vllm()
    with count_kernels() as kc:
        oq, ok = layer.forward_cuda(pos, q, k)
    assert kc["rotary_kernel"] >= 1
    assert oq is q and ok is k
    assert_close(oq, rq.double(), torch.float32)
    assert_close(ok, rk.double(), torch.float32)


def test_silu_and_mul(fake_vllm):
    layer = SiluAndMul()
    x = torch.randn(3, 24, device=DEVICE)
    ref = layer.forward_cuda(x)
    flag_gems.apply_gems_patches_to_vllm()
    with count_kernels() as k:
        y = layer.forward_cuda(x)
    assert k["gated_act_kernel"] == 1
    assert_close(y, ref.double(), torch.float32)


def test_layers_built_before_the_patch_and_native_dispatch(fake_vllm):
    """vLLM binds forward_cuda when a layer is built: a layer built before the patch must
    run flag_gems through layer(x); one that chose forward_native (custom ops off) must
    not; after revert none does."""
    x = torch.randn(5, 32, device=DEVICE)
    early = RMSNorm(32, eps=1e-5).to(DEVICE)
    RMSNorm.enabled = False
    try:
        native = RMSNorm(32, eps=1e-5).to(DEVICE)
    finally:
        RMSNorm.enabled = True
    ref = early.forward_native(x)
    flag_gems.apply_gems_patches_to_vllm()
    late = RMSNorm(32, eps=1e-5).to(DEVICE)
    late.weight.data.copy_(early.weight.data)
    for layer, runs_gems in ((early, True), (late, True), (native, False)):
        with count_kernels() as ran:
            y = layer(x)
        assert (ran["rms_norm_fwd_kernel"] > 0) == runs_gems
        if layer is not native:
            assert_close(y, ref.double(), torch.float32)
    flag_gems.revert_vllm_patches()
    with count_kernels() as ran:
        assert_close(early(x), ref.double(), torch.float32)
    assert not ran
