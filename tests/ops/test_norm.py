"""layer_norm, rms_norm and group_norm, forward and backward, through torch.nn.functional."""
import pytest
import torch
import torch.nn.functional as F

import flag_gems
from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, count_kernels, gems_ran, to_reference


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _check_grads(got, ref, dtype, reduce_dim, baseline=None):
    """``baseline``: torch's own gradients in ``dtype`` (see assert_close)."""
    for i, (g, r) in enumerate(zip(got, ref)):
        if r is None:
            assert g is None
            continue
        # dx is a per-row reduction; dw/db sum over every row
        assert_close(g, r, dtype, reduce_dim=reduce_dim if i else 1, baseline=None if baseline is None else baseline[i])


def _torch_grads(fn, ins, dy):
    """torch's own gradients of ``fn`` in the inputs' dtype (flag_gems off)."""
    leaves = [_leaf(t) for t in ins]
    fn(*leaves).backward(dy)
    return [t.grad for t in leaves]


# -- layer_norm -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,norm", [((1, 7), (7,)), ((5, 33), (33,)), ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(dtype, shape, norm, affine):
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(norm, dtype=dtype, device=DEVICE) if affine else None
    b = torch.randn(norm, dtype=dtype, device=DEVICE) if affine else None
    dy = torch.randn(shape, dtype=dtype, device=DEVICE)
    ins = [_leaf(x)] + ([_leaf(w), _leaf(b)] if affine else [])
    with gems_ran("layer_norm_fwd_kernel", "layer_norm_bwd_dx_kernel"):
        y = F.layer_norm(ins[0], norm, *ins[1:], eps=1e-5)
        y.backward(dy)
    refs = [_leaf(to_reference(t)) for t in ins]
    y_ref = F.layer_norm(refs[0], norm, *refs[1:], eps=1e-5)
    y_ref.backward(to_reference(dy))
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype)
    rows = x.numel() // w.numel() if affine else 1
    base = _torch_grads(lambda *t: F.layer_norm(t[0], norm, *t[1:], eps=1e-5), ins, dy)
    _check_grads([t.grad for t in ins], [t.grad for t in refs], dtype, rows, base)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("params", ["affine", "none", "fp32 weight only"])
def test_layer_norm_without_grad_stores_no_stats(monkeypatch, dtype, params):
    """No graph to record: F.layer_norm runs the kernel for y alone (no mean and rstd
    allocated or stored), under inference_mode too (which skips the Autograd key: the op
    is served on the backend key as well)."""
    from flag_gems.ops import layer_norm as ln

    x = torch.randn(5, 3, 40, dtype=dtype, device=DEVICE)[:, 1]  # rows of a strided view
    w = torch.randn(40, dtype=torch.float32 if params == "fp32 weight only" else dtype, device=DEVICE)
    b = torch.randn(40, dtype=dtype, device=DEVICE) if params == "affine" else None
    if params == "none":
        w = None
    stats = []
    forward = ln._forward
    monkeypatch.setattr(ln, "_forward", lambda *a: stats.append(a[4] is not None) or forward(*a))
    refs = [to_reference(t) if t is not None else None for t in (x, w, b)]
    expect = F.layer_norm(refs[0], (40,), refs[1], refs[2], eps=1e-5)
    with gems_ran("layer_norm_fwd_kernel"):
        y = F.layer_norm(x, (40,), w, b, eps=1e-5)
    assert stats == [False] and y.dtype == dtype and y.shape == x.shape
    assert_close(y, expect, dtype)
    with torch.inference_mode(), gems_ran("layer_norm_fwd_kernel"):
        y = F.layer_norm(x, (40,), w, b, eps=1e-5)
    assert stats == [False, False]
    assert_close(y, expect, dtype)
    xc = x.contiguous()  # (aten's own .contiguous() would run flag_gems' copy)
    with count_kernels() as launched, flag_gems.use_gems(unused=["native_layer_norm"]):
        F.layer_norm(xc, (40,), w if params != "fp32 weight only" else None, b, eps=1e-5)  # (aten: one dtype)
    assert not launched


def test_layer_norm_noncontiguous_weight_only():
    x = torch.randn(33, 6, device=DEVICE).t()  # [6, 33] transposed
    w = torch.randn(33, device=DEVICE)
    xl, wl = _leaf(x), _leaf(w)
    with gems_ran("layer_norm_fwd_kernel", "layer_norm_bwd_dwdb_kernel"):
        y = F.layer_norm(xl, (33,), wl, None)
        y.sum().backward()
    xr, wr = _leaf(to_reference(x)), _leaf(to_reference(w))
    F.layer_norm(xr, (33,), wr, None).sum().backward()
    assert_close(y, F.layer_norm(to_reference(x), (33,), to_reference(w)), torch.float32)
    _check_grads([xl.grad, wl.grad], [xr.grad, wr.grad], torch.float32, 6)


def test_layer_norm_bias_only_of_another_dtype():
    """bf16 rows, an fp32 bias and no weight: db comes back in fp32 (the kernel casts as it
    stores, the one buffer standing in for the absent dw)."""
    x, b, dy = (torch.randn(6, 40, device=DEVICE, dtype=torch.bfloat16), torch.randn(40, device=DEVICE),
                torch.randn(6, 40, device=DEVICE, dtype=torch.bfloat16))
    xl, bl = _leaf(x), _leaf(b)
    with gems_ran("layer_norm_bwd_dwdb_kernel"):
        F.layer_norm(xl, (40,), None, bl).backward(dy)
    xr, br = _leaf(to_reference(x)), _leaf(to_reference(b))
    F.layer_norm(xr, (40,), None, br).backward(to_reference(dy))
    assert bl.grad.dtype == torch.float32
    assert_close(bl.grad, br.grad, torch.bfloat16, reduce_dim=6)
    assert_close(xl.grad, xr.grad, torch.bfloat16, reduce_dim=40)


def test_layer_norm_chunked_rows():
    """Rows longer than the block take the looped path (forward and dx)."""
    from flag_gems.ops.layer_norm import layer_norm_bwd_dx_kernel, layer_norm_fwd_kernel

    M, N = 3, 70
    x = torch.randn(M, N, device=DEVICE)
    w, b = torch.randn(N, device=DEVICE), torch.randn(N, device=DEVICE)
    y, mean, rstd = torch.empty_like(x), torch.empty(M, device=DEVICE), torch.empty(M, device=DEVICE)
    layer_norm_fwd_kernel.fn[(M,)](x, y, w, b, mean, rstd, N, 1e-5, HAS_W=True, HAS_B=True, STORE_STATS=True, BLOCK=16)
    assert_close(y, F.layer_norm(to_reference(x), (N,), to_reference(w), to_reference(b)), torch.float32)
    dy, dx = torch.randn(M, N, device=DEVICE), torch.empty_like(x)
    layer_norm_bwd_dx_kernel.fn[(M,)](dy, x, w, mean, rstd, dx, N, HAS_W=True, BLOCK=16)
    xr = _leaf(to_reference(x))
    F.layer_norm(xr, (N,), to_reference(w), to_reference(b)).backward(to_reference(dy))
    assert_close(dx, xr.grad, torch.float32)


def test_layer_norm_empty():
    x = torch.randn(0, 8, device=DEVICE)
    import flag_gems

    with flag_gems.use_gems():
        y = F.layer_norm(x, (8,))
    assert y.shape == (0, 8)


# -- rms_norm -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,norm", [((1, 7), (7,)), ((5, 33), (33,)), ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm(dtype, shape, norm, affine):
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(norm, dtype=dtype, device=DEVICE) if affine else None
    dy = torch.randn(shape, dtype=dtype, device=DEVICE)
    ins = [_leaf(x)] + ([_leaf(w)] if affine else [])
    with gems_ran("rms_norm_fwd_kernel", "rms_norm_bwd_dx_kernel"):
        y = F.rms_norm(ins[0], norm, *ins[1:], eps=1e-6)
        y.backward(dy)
    with gems_ran() as ran:  # again, every key tuned now (tuning copies arguments): the op's own launches
        F.rms_norm(_leaf(x), norm, *[_leaf(t) for t in ins[1:]], eps=1e-6).backward(dy)
    assert ran["rms_norm_bwd_dw_kernel"] == affine  # dw written whole, in the weight's dtype:
    assert not [k for k in ran if k.startswith("fill")], dict(ran)  # no zeroed buffer (the interpreter copies)
    refs = [_leaf(to_reference(t)) for t in ins]
    y_ref = F.rms_norm(refs[0], norm, *refs[1:], eps=1e-6)
    y_ref.backward(to_reference(dy))
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype)
    rows = x.numel() // w.numel() if affine else 1
    base = _torch_grads(lambda *t: F.rms_norm(t[0], norm, *t[1:], eps=1e-6), ins, dy)
    _check_grads([t.grad for t in ins], [t.grad for t in refs], dtype, rows, base)


def test_rms_norm_backward_weight_of_another_dtype():
    """bf16 rows, an fp32 weight: dw comes back in fp32 (the kernel casts as it stores)."""
    x, w, dy = (torch.randn(6, 40, device=DEVICE, dtype=torch.bfloat16), torch.randn(40, device=DEVICE),
                torch.randn(6, 40, device=DEVICE, dtype=torch.bfloat16))
    ins = [_leaf(x), _leaf(w)]
    with gems_ran("rms_norm_bwd_dw_kernel"):
        F.rms_norm(ins[0], (40,), ins[1], eps=1e-6).backward(dy)
    refs = [_leaf(to_reference(t)) for t in ins]
    F.rms_norm(refs[0], (40,), refs[1], eps=1e-6).backward(to_reference(dy))
    assert ins[1].grad.dtype == torch.float32
    assert_close(ins[1].grad, refs[1].grad, torch.bfloat16, reduce_dim=6)


def test_rms_norm_default_eps_noncontiguous_no_grad():
    x = torch.randn(17, 4, device=DEVICE).t()
    w = torch.randn(17, device=DEVICE)
    with torch.no_grad(), gems_ran("rms_norm_fwd_kernel"):
        y = F.rms_norm(x, (17,), w)
    assert_close(y, F.rms_norm(to_reference(x), (17,), to_reference(w), eps=torch.finfo(torch.float32).eps), torch.float32)


def test_rms_norm_chunked_rows_with_residual():
    from flag_gems.fused.rms_norm import rms_norm_fwd_kernel

    M, N = 3, 70
    x, r, w = torch.randn(M, N, device=DEVICE), torch.randn(M, N, device=DEVICE), torch.randn(N, device=DEVICE)
    ref_r = to_reference(x) + to_reference(r)
    ref = F.rms_norm(ref_r, (N,), to_reference(w), eps=1e-6)
    rstd = torch.empty(M, device=DEVICE)
    rms_norm_fwd_kernel.fn[(M,)](x, N, r, N, x, N, w, rstd, N, 1e-6, HAS_W=True, HAS_RES=True, STORE_RSTD=True, BLOCK=16)
    assert_close(r, ref_r, torch.float32)
    assert_close(x, ref, torch.float32)
    assert_close(rstd, ref_r.pow(2).mean(-1).add(1e-6).rsqrt(), torch.float32)


# -- group_norm -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# (a group of two elements normalizes to +-1: its gradient is rounding noise, not a test)
@pytest.mark.parametrize("shape,groups", [((2, 6, 5), 3), ((1, 4, 3, 3), 2), ((3, 12), 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(dtype, shape, groups, affine):
    C = shape[1]
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(C, dtype=dtype, device=DEVICE) if affine else None
    b = torch.randn(C, dtype=dtype, device=DEVICE) if affine else None
    dy = torch.randn(shape, dtype=dtype, device=DEVICE)
    ins = [_leaf(x)] + ([_leaf(w), _leaf(b)] if affine else [])
    with gems_ran("group_norm_fwd_kernel", "group_norm_bwd_dx_kernel"):
        y = F.group_norm(ins[0], groups, *ins[1:], eps=1e-5)
        y.backward(dy)
    refs = [_leaf(to_reference(t)) for t in ins]
    y_ref = F.group_norm(refs[0], groups, *refs[1:], eps=1e-5)
    y_ref.backward(to_reference(dy))
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype)
    base = _torch_grads(lambda *t: F.group_norm(t[0], groups, *t[1:], eps=1e-5), ins, dy)
    _check_grads([t.grad for t in ins], [t.grad for t in refs], dtype, x.numel() // C, base)


def test_group_norm_noncontiguous_chunked():
    from flag_gems.ops import group_norm as gn

    x = torch.randn(2, 8, 40, device=DEVICE).transpose(1, 2).transpose(1, 2)[:, :, ::2]  # strided HxW
    w, b = torch.randn(8, device=DEVICE), torch.randn(8, device=DEVICE)
    with gems_ran("group_norm_fwd_kernel"):
        y = F.group_norm(x, 2, w, b)
    assert_close(y, F.group_norm(to_reference(x), 2, to_reference(w), to_reference(b)), torch.float32)
    # a group (4 channels x 20) longer than the block: the looped path
    xc = x.contiguous()
    y2, mean, rstd = torch.empty_like(xc), torch.empty(2, 2, device=DEVICE), torch.empty(2, 2, device=DEVICE)
    gn.group_norm_fwd_kernel.fn[(4,)](xc, y2, w, b, mean, rstd, 80, 20, 4, 2, 1e-5, HAS_W=True, HAS_B=True, BLOCK=32)
    assert_close(y2, F.group_norm(to_reference(x), 2, to_reference(w), to_reference(b)), torch.float32)
