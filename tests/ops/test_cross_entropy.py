"""F.cross_entropy forward + backward (log_softmax + nll_loss kernels) and nll_loss."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy(dtype, reduction, weighted):
    n, c = 19, 37
    x = torch.randn(n, c, device=DEVICE).to(dtype).requires_grad_()
    t = torch.randint(0, c, (n,), device=DEVICE)
    t[3] = t[11] = -100  # ignore_index
    w = torch.rand(c, device=DEVICE).to(dtype) + 0.5 if weighted else None
    g = torch.randn(n if reduction == "none" else (), device=DEVICE).to(dtype)
    with gems_ran("_nll_fwd_kernel", "_nll_bwd_kernel", "_softmax_fwd_kernel", "_softmax_bwd_kernel"):
        loss = F.cross_entropy(x, t, weight=w, reduction=reduction)
        (dx,) = torch.autograd.grad(loss, x, g)
    xr = to_reference(x).requires_grad_()
    lr = F.cross_entropy(xr, t, weight=to_reference(w), reduction=reduction)
    (dxr,) = torch.autograd.grad(lr, xr, to_reference(g))
    assert loss.dtype == dtype and dx.dtype == dtype
    assert_close(loss, lr, dtype, reduce_dim=n)
    assert_close(dx, dxr, dtype, reduce_dim=c)
    assert torch.all(dx[3] == 0)


def test_nll_loss_1d_input_and_ignore_all():
    x = torch.randn(11, device=DEVICE).log_softmax(0)
    t = torch.tensor(4, device=DEVICE)
    with gems_ran("_nll_fwd_kernel"):
        a = F.nll_loss(x, t)
        b = F.nll_loss(x.expand(3, 11), torch.full((3,), 7, device=DEVICE), ignore_index=7)
    assert_close(a, to_reference(-x[4]), torch.float32)
    assert torch.isnan(b)  # every target ignored: 0 / 0, as torch


# -- nll_loss2d (N, C, H, W) and the spatial ranks torch views as it ----------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss2d(dtype, reduction, weighted):
    n, c, h, w = 3, 5, 7, 6
    # log-probabilities in a channels-last layout: non-contiguous for the (N, C, H, W) view
    x = torch.randn(n, h, w, c, device=DEVICE).log_softmax(-1).to(dtype).permute(0, 3, 1, 2).requires_grad_()
    t = torch.randint(0, c, (n, h, w), device=DEVICE)
    t[0, 1, :3] = 2  # ignore_index
    wt = torch.rand(c, device=DEVICE).to(dtype) + 0.5 if weighted else None
    g = torch.randn((n, h, w) if reduction == "none" else (), device=DEVICE).to(dtype)
    if reduction == "none":
        g = g.transpose(1, 2).contiguous().transpose(1, 2)  # a non-contiguous gradient
    with gems_ran("_nll_fwd_kernel", "_nll_bwd_kernel"):
        loss = F.nll_loss(x, t, weight=wt, ignore_index=2, reduction=reduction)
        (dx,) = torch.autograd.grad(loss, x, g)
    xr = to_reference(x).contiguous().requires_grad_()  # aten's CPU backward needs it contiguous
    lr = F.nll_loss(xr, t, weight=to_reference(wt), ignore_index=2, reduction=reduction)
    (dxr,) = torch.autograd.grad(lr, xr, to_reference(g))
    assert loss.dtype == dtype and dx.dtype == dtype and loss.shape == lr.shape
    assert_close(loss, lr, dtype, reduce_dim=n * h * w)
    assert_close(dx, dxr, dtype)
    assert torch.all(dx[0, :, 1, :3] == 0)


@pytest.mark.parametrize("shape", [(2, 4, 9), (2, 3, 2, 3, 4)])
def test_cross_entropy_other_spatial_ranks(shape):
    """torch views (N, C, d) and (N, C, d1, d2, d3) as (N, C, 1, d) for nll_loss2d."""
    x = torch.randn(shape, device=DEVICE).requires_grad_()
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=DEVICE)
    with gems_ran("_nll_fwd_kernel", "_nll_bwd_kernel"):
        loss = F.cross_entropy(x, t, label_smoothing=0.0)
        (dx,) = torch.autograd.grad(loss, x)
    xr = to_reference(x).requires_grad_()
    lr = F.cross_entropy(xr, t)
    (dxr,) = torch.autograd.grad(lr, xr)
    assert_close(loss, lr, torch.float32, reduce_dim=t.numel())
    assert_close(dx, dxr, torch.float32)


def test_nll_loss2d_uint8_target_empty_and_errors():
    x = torch.randn(2, 3, 4, 5, device=DEVICE).log_softmax(1)
    t = torch.randint(0, 3, (2, 4, 5), device=DEVICE, dtype=torch.uint8)
    with gems_ran("_nll_fwd_kernel"):
        got = torch.ops.aten.nll_loss2d_forward(x, t, None, 2, -100)
    ref = torch.ops.aten.nll_loss2d_forward(to_reference(x), t.long(), None, 2, -100)  # (aten's CPU kernel takes no uint8)
    assert_close(got[0], ref[0], torch.float32, reduce_dim=40)
    assert_close(got[1], ref[1], torch.float32)
    import flag_gems

    e = torch.randn(0, 3, 4, 5, device=DEVICE)
    et = torch.zeros(0, 4, 5, dtype=torch.int64, device=DEVICE)
    with flag_gems.use_gems():
        mean, total = torch.ops.aten.nll_loss2d_forward(e, et, None, 1, -100)
        none = F.nll_loss(e, et, reduction="none")
    assert torch.isnan(mean) and total.item() == 0 and none.shape == (0, 4, 5)
    with pytest.raises(RuntimeError) as expected:
        F.nll_loss(x, t.int())
    with flag_gems.use_gems(), pytest.raises(RuntimeError) as got:
        F.nll_loss(x, t.int())  # int32 targets: aten's own error
    assert str(got.value) == str(expected.value)
