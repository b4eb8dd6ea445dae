"""native_dropout / native_dropout_backward: statistics, scale and mask consistency."""
import pytest
import torch

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_native_dropout_statistics(dtype, p):
    n = 8192
    x = torch.randn(n, dtype=dtype, device=DEVICE).abs() + 0.5  # never zero: mask readable from y
    with gems_ran("dropout_fwd_kernel"):
        y, mask = torch.native_dropout(x, p, True)
    assert y.dtype == dtype and mask.dtype == torch.bool and mask.shape == x.shape
    kept = mask.double().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma, f"kept {kept} vs {1 - p}"
    assert torch.equal(y != 0, mask)
    assert_close(y[mask], to_reference(x)[mask] / (1 - p), dtype)


def test_dropout_seeded_and_varies():
    x = torch.randn(2048, device=DEVICE)
    with gems_ran("dropout_fwd_kernel"):
        torch.manual_seed(3)
        _, m1 = torch.native_dropout(x, 0.5, True)
        torch.manual_seed(3)
        _, m2 = torch.native_dropout(x, 0.5, True)
        _, m3 = torch.native_dropout(x, 0.5, True)
    assert torch.equal(m1, m2), "the same seed must give the same mask"
    assert not torch.equal(m1, m3), "consecutive calls must draw new masks"
    # neighbouring elements are not correlated (a broken counter repeats patterns)
    a, b = m1[:-1].double(), m1[1:].double()
    assert abs(((a - 0.5) * (b - 0.5)).mean().item()) < 0.03


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropout_backward_uses_forward_mask(dtype):
    x = torch.randn(7, 33, dtype=dtype, device=DEVICE).t().requires_grad_()  # non-contiguous
    g = torch.randn(33, 7, dtype=dtype, device=DEVICE)
    with gems_ran("dropout_fwd_kernel", "dropout_bwd_kernel"):
        y, mask = torch.native_dropout(x, 0.3, True)
        y.backward(g)
    assert_close(x.grad, to_reference(g) * mask / 0.7, dtype)
    assert_close(y, to_reference(x) * mask / 0.7, dtype)


def test_dropout_edge_cases():
    x = torch.randn(5, 3, device=DEVICE)
    with gems_ran("dropout_fwd_kernel"):
        y, mask = torch.native_dropout(x, 1.0, True)
    assert not mask.any() and torch.equal(y, torch.zeros_like(x))
    with gems_ran("dropout_fwd_kernel"):
        y, mask = torch.native_dropout(x, 0.0, True)
    assert mask.all() and torch.equal(y, x)
    import flag_gems

    with flag_gems.use_gems():
        y, mask = torch.native_dropout(x, 0.5, False)
        e, em = torch.native_dropout(torch.empty(0, 4, device=DEVICE), 0.5, True)
    assert torch.equal(y, x) and mask.all() and e.shape == (0, 4) and em.shape == (0, 4)


def test_native_dropout_backward_direct():
    g = torch.randn(4, 9, dtype=torch.float16, device=DEVICE)
    mask = torch.rand(4, 9, device=DEVICE) > 0.5
    with gems_ran("dropout_bwd_kernel"):
        dx = torch.ops.aten.native_dropout_backward(g, mask, 2.0)
    assert_close(dx, to_reference(g) * mask * 2.0, torch.float16)
