"""softmax / log_softmax forward and backward (torch.softmax autograd runs the
``_softmax_backward_data`` kernels), checked against float64 autograd."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference

SHAPES = [((7,), 0), ((33, 65), -1), ((33, 65), 0), ((4, 9, 6), 1), ((3, 1500), 1)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_fwd_bwd(shape, dim, dtype, log):
    fn = torch.log_softmax if log else torch.softmax
    x = (torch.randn(shape, device=DEVICE) * 3).to(dtype).requires_grad_()
    g = torch.randn(shape, device=DEVICE).to(dtype)
    with gems_ran("_softmax_fwd_kernel", "_softmax_bwd_kernel"):
        y = fn(x, dim)
        (dx,) = torch.autograd.grad(y, x, g)
    xr = to_reference(x).requires_grad_()
    yr = fn(xr, dim)
    (dxr,) = torch.autograd.grad(yr, xr, to_reference(g))
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, yr, dtype)
    assert_close(dx, dxr, dtype, reduce_dim=shape[dim])


def test_softmax_half_to_float_noncontiguous_and_masked():
    x = torch.randn(10, 24, device=DEVICE, dtype=torch.float16)
    xt = x.t()
    with gems_ran("_softmax_fwd_kernel"):
        y = torch.softmax(x, -1, dtype=torch.float32)  # upcast first, then _softmax
        yt = F.softmax(xt, dim=1)
        ym = torch.softmax(torch.tensor([[0.0, float("-inf"), 1.0]], device=DEVICE), -1)
        yl = torch.ops.aten._log_softmax(x, 1, True)
    assert_close(y, to_reference(x).softmax(-1), torch.float32, atol=1e-5)
    assert_close(yt, to_reference(xt).softmax(1), torch.float16)
    assert ym[0, 1] == 0 and abs(ym.sum().item() - 1) < 1e-6
    assert yl.dtype == torch.float32
    assert_close(yl, to_reference(x).log_softmax(1), torch.float32, atol=1e-5)


@pytest.mark.parametrize("log_", [False, True])
def test_softmax_rows_looped(log_):
    """Rows longer than the tile take the online two-pass path of the row kernel."""
    from flag_gems.ops.softmax import _softmax_fwd_kernel

    x = torch.randn(5, 70, device=DEVICE) * 4
    x[1, 3:40] = float("-inf")
    y = torch.empty_like(x)
    _softmax_fwd_kernel[(3,)](x, y, 1, 70, 5, 0, 1, 70, 0, 1, 70, LOG=log_, ROWS=True, BLOCK_R=16, BLOCK_K=2)
    ref = torch.log_softmax(to_reference(x), -1) if log_ else torch.softmax(to_reference(x), -1)
    assert_close(y, ref, torch.float32)
