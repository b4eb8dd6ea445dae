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
