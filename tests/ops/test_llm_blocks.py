"""Fused LLM blocks of flag_gems.fused, called directly, against float64 torch references."""
import pytest
import torch

from flag_gems.fused import apply_rotary_pos_emb, fused_add_rms_norm, gelu_and_mul, rms_norm, rope_cos_sin, silu_and_mul
from tests.helpers import DEVICE, FLOAT_DTYPES, TOLERANCES, assert_close, count_kernels, to_reference


def _ran(launched, name):
    assert launched[name] > 0, f"kernel {name} did not run; ran: {dict(launched)}"


def _rms_ref(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


# -- rms_norm / fused_add_rms_norm ----------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (2, 3, 64)])
def test_rms_norm(dtype, shape):
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(shape[-1], dtype=dtype, device=DEVICE)
    with count_kernels() as k:
        y = rms_norm(x, w, 1e-6)
    _ran(k, "rms_norm_fwd_kernel")
    assert y.dtype == dtype
    assert_close(y, _rms_ref(to_reference(x), to_reference(w), 1e-6), dtype)


def test_rms_norm_strided_rows():
    base = torch.randn(6, 40, device=DEVICE)
    x = base[:, 3:36]  # rows with a stride of 40, not contiguous
    w = torch.randn(33, device=DEVICE)
    with count_kernels() as k:
        y = rms_norm(x, w, 1e-5)
    _ran(k, "rms_norm_fwd_kernel")
    assert_close(y, _rms_ref(to_reference(x), to_reference(w), 1e-5), torch.float32)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 16), (4, 33), (2, 3, 48)])
def test_fused_add_rms_norm(dtype, shape):
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    res = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(shape[-1], dtype=dtype, device=DEVICE)
    ref_res = to_reference(x) + to_reference(res)
    ref = _rms_ref(ref_res, to_reference(w), 1e-6)
    x_ptr, r_ptr = x.data_ptr(), res.data_ptr()
    with count_kernels() as k:
        out, out_res = fused_add_rms_norm(x, res, w, 1e-6)
    _ran(k, "rms_norm_fwd_kernel")
    assert out is x and out_res is res and x.data_ptr() == x_ptr and res.data_ptr() == r_ptr
    assert_close(res, ref_res, dtype)
    # the output is normalized from the sum rounded to dtype (vLLM semantics): 2 roundings
    assert_close(x, ref, dtype, atol=4 * TOLERANCES[dtype][1])


def test_fused_add_rms_norm_noncontiguous_in_place():
    x = torch.randn(33, 5, device=DEVICE).t()  # column stride != 1: goes through a copy
    res = torch.randn(5, 33, device=DEVICE)
    w = torch.randn(33, device=DEVICE)
    ref_res = to_reference(x) + to_reference(res)
    ref = _rms_ref(ref_res, to_reference(w), 1e-6)
    fused_add_rms_norm(x, res, w, 1e-6)
    assert_close(res, ref_res, torch.float32)
    assert_close(x, ref, torch.float32)


# -- gated activations ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (7, 66), (2, 3, 128)])
def test_silu_and_mul(dtype, shape):
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    with count_kernels() as k:
        y = silu_and_mul(x)
    _ran(k, "gated_act_kernel")
    r = to_reference(x)
    d = shape[-1] // 2
    assert_close(y, torch.nn.functional.silu(r[..., :d]) * r[..., d:], dtype)


def test_silu_and_mul_noncontiguous():
    x = torch.randn(40, 9, device=DEVICE).t()
    y = silu_and_mul(x)
    r = to_reference(x)
    assert_close(y, torch.nn.functional.silu(r[..., :20]) * r[..., 20:], torch.float32)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_and_mul(dtype, approximate):
    x = torch.randn(5, 2 * 33, dtype=dtype, device=DEVICE) * 3
    with count_kernels() as k:
        y = gelu_and_mul(x, approximate=approximate)
    _ran(k, "gated_act_kernel")
    r = to_reference(x)
    assert_close(y, torch.nn.functional.gelu(r[..., :33], approximate=approximate) * r[..., 33:], dtype)


def test_gated_odd_last_dim_rejected():
    with pytest.raises(ValueError):
        silu_and_mul(torch.randn(3, 5, device=DEVICE))


# -- rotary ---------------------------------------------------------------------------
def _freqs(max_seq, rot):
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float64, device=DEVICE) / rot))
    return torch.outer(torch.arange(max_seq, dtype=torch.float64, device=DEVICE), inv)  # [max_seq, rot/2]


def _rope_ref(x, cos_half, sin_half, pos, rot, interleaved):
    """x [..., seq, heads, D] float64; cos/sin [max_seq, rot/2]; pos of shape x.shape[:-2]."""
    c, s = cos_half[pos].unsqueeze(-2), sin_half[pos].unsqueeze(-2)
    xr = x[..., :rot]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), -1).flatten(-2)
    else:
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)
    return torch.cat((out, x[..., rot:]), -1)


def _cache(max_seq, rot, full, interleaved, dtype):
    """(cos, sin) as passed to the op, and their float64 [max_seq, rot/2] reference."""
    f = _freqs(max_seq, rot)
    cos_h, sin_h = f.cos().to(dtype), f.sin().to(dtype)  # the reference sees the rounded cache
    ref = (to_reference(cos_h), to_reference(sin_h))
    if full:
        widen = (lambda t: t.repeat_interleave(2, -1)) if interleaved else (lambda t: torch.cat((t, t), -1))
        cos_h, sin_h = widen(cos_h), widen(sin_h)
    return cos_h.to(DEVICE), sin_h.to(DEVICE), ref


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("interleaved,full,rot", [(False, False, 16), (True, False, 16), (False, True, 12), (True, True, 16), (False, False, 8)])
def test_rotary(dtype, interleaved, full, rot):
    B, S, Hq, Hk, D = 2, 5, 3, 1, 16  # GQA: k has fewer heads
    q = torch.randn(B, S, Hq, D, dtype=dtype, device=DEVICE)
    k = torch.randn(B, S, Hk, D, dtype=dtype, device=DEVICE)
    cos, sin, (rc, rs) = _cache(12, rot, full, interleaved, dtype)
    with count_kernels() as kc:
        qo, ko = apply_rotary_pos_emb(q, k, cos, sin, rotary_interleaved=interleaved)
    _ran(kc, "rotary_kernel")
    pos = torch.arange(S, device=DEVICE).expand(B, S)
    assert qo.shape == q.shape and ko.shape == k.shape
    assert_close(qo, _rope_ref(to_reference(q), rc, rs, pos, rot, interleaved), dtype)
    assert_close(ko, _rope_ref(to_reference(k), rc, rs, pos, rot, interleaved), dtype)


def test_rotary_full_cache_partial_dim_needs_rotary_dim():
    q = torch.randn(1, 3, 2, 16, device=DEVICE)
    cos, sin, (rc, rs) = _cache(4, 8, True, False, torch.float32)  # width 8 < head_dim/2: ambiguous
    qo, _ = apply_rotary_pos_emb(q, q.clone(), cos, sin, rotary_dim=8)
    assert_close(qo, _rope_ref(to_reference(q), rc, rs, torch.arange(3, device=DEVICE).expand(1, 3), 8, False), torch.float32)


def test_rotary_position_ids_tokens_inplace():
    T, H, D, rot = 6, 2, 12, 8  # vLLM layout [tokens, heads, head_dim], partial rotary
    q = torch.randn(T, H, D, device=DEVICE)
    k = torch.randn(T, H, D, device=DEVICE)
    pos = torch.tensor([3, 0, 9, 1, 1, 7], device=DEVICE)
    cos, sin, (rc, rs) = _cache(10, rot, False, False, torch.float32)
    rq, rk = _rope_ref(to_reference(q), rc, rs, pos, rot, False), _rope_ref(to_reference(k), rc, rs, pos, rot, False)
    with count_kernels() as kc:
        qo, ko = apply_rotary_pos_emb(q, k, cos, sin, position_ids=pos, inplace=True)
    _ran(kc, "rotary_kernel")
    assert qo is q and ko is k
    assert_close(q, rq, torch.float32)
    assert_close(k, rk, torch.float32)


def test_rotary_strided_q_from_packed_qkv():
    S, H, D = 4, 2, 8
    qkv = torch.randn(S, 3 * H * D, device=DEVICE)
    q = qkv[:, : H * D].view(S, H, D)  # token stride 3*H*D
    k = qkv[:, H * D: 2 * H * D].view(S, H, D)
    cos, sin, (rc, rs) = _cache(8, D, False, True, torch.float32)
    pos = torch.arange(S, device=DEVICE)
    rq, rk = _rope_ref(to_reference(q), rc, rs, pos, D, True), _rope_ref(to_reference(k), rc, rs, pos, D, True)
    v = qkv[:, 2 * H * D:].clone()
    with count_kernels() as kc:
        apply_rotary_pos_emb(q, k, cos, sin, rotary_interleaved=True, inplace=True)
    assert kc["rotary_kernel"] == 1, dict(kc)  # k's heads continue q's: one launch for both
    assert_close(q, rq, torch.float32)
    assert_close(k, rk, torch.float32)
    assert torch.equal(qkv[:, 2 * H * D:], v)  # v untouched


@pytest.mark.parametrize("dtype,S,Hk", [(torch.float32, 3, 2), (torch.float16, 1, 2), (torch.bfloat16, 3, 1)])
def test_rotary_merged_qkv_blocks_out_of_place(dtype, S, Hk):
    """HF's layout after a merged qkv GEMM (GQA: fewer k heads): q and k are blocks of one
    [B, S, Hq*D + 2*Hk*D] output; one launch rotates both into one new buffer. (Decode's
    S = 1 and MQA's Hk = 1 give dims whose strides differ between q and k: size 1.)"""
    B, Hq, D = 2, 4, 16
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, dtype=dtype, device=DEVICE)
    q, k, _ = qkv.split([Hq * D, Hk * D, Hk * D], -1)
    q, k = q.view(B, S, Hq, D), k.view(B, S, Hk, D)
    cos, sin, (rc, rs) = _cache(8, D, True, False, dtype)
    pos = torch.randint(0, 8, (B, S), device=DEVICE)
    before = qkv.clone()
    with count_kernels() as kc:
        qo, ko = apply_rotary_pos_emb(q, k, cos, sin, position_ids=pos)
    assert kc["rotary_kernel"] == 1, dict(kc)
    assert qo.shape == q.shape and ko.shape == k.shape and torch.equal(qkv, before)
    assert_close(qo, _rope_ref(to_reference(q), rc, rs, pos, D, False), dtype)
    assert_close(ko, _rope_ref(to_reference(k), rc, rs, pos, D, False), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,half,scaling", [((2, 5), 8, 1.0), ((1, 1), 12, 0.7), ((3, 40), 64, 1.3)])
def test_rope_cos_sin(dtype, shape, half, scaling):
    """HF's tables: cat(f, f).cos() * scaling with f = position.float() * inv_freq (the
    angle rounded to fp32, as HF computes it; the rest in float64 for the reference)."""
    pos = torch.randint(0, 3000, shape, device=DEVICE)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 2 * half, 2, dtype=torch.float32, device=DEVICE) / (2 * half)))
    with count_kernels() as kc:
        cos, sin = rope_cos_sin(pos, inv_freq, scaling, dtype)
    _ran(kc, "rope_cos_sin_kernel")
    f = (pos[..., None].float() * inv_freq).double()
    ang = torch.cat((f, f), -1)
    assert cos.shape == sin.shape == (*shape, 2 * half) and cos.dtype == sin.dtype == dtype
    assert_close(cos, ang.cos() * scaling, dtype)
    assert_close(sin, ang.sin() * scaling, dtype)


def test_rope_cos_sin_edges():
    inv_freq = torch.rand(4, device=DEVICE)
    cos, sin = rope_cos_sin(torch.zeros(0, 3, dtype=torch.long, device=DEVICE), inv_freq)
    assert cos.shape == sin.shape == (0, 3, 8)
    with pytest.raises(ValueError, match="integer position_ids"):
        rope_cos_sin(torch.rand(2, 3, device=DEVICE), inv_freq)
    with pytest.raises(ValueError, match="1-D inv_freq"):
        rope_cos_sin(torch.zeros(2, 3, dtype=torch.long, device=DEVICE), inv_freq[None])
