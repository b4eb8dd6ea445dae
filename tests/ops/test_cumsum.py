"""cumsum along first/last/middle dims, non-contiguous inputs, int/bool -> int64."""
import pytest
import torch

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,dim", [((1,), 0), ((33, 65), 1), ((33, 65), 0), ((5, 300, 3), 1), ((4, 7, 9), -1)])
def test_cumsum(shape, dim, dtype):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    with gems_ran("_cumsum_kernel"):
        y = torch.cumsum(x, dim)
    assert y.dtype == dtype
    assert_close(y, to_reference(x).cumsum(dim), dtype, reduce_dim=shape[dim])


def test_cumsum_noncontiguous_and_dtype():
    x = torch.randn(12, 40, device=DEVICE)
    with gems_ran("_cumsum_kernel"):
        a = x.t().cumsum(1)
        b = x[:, ::3].cumsum(-1, dtype=torch.float64)
    assert_close(a, to_reference(x).t().cumsum(1), torch.float32, reduce_dim=12)
    assert b.dtype == torch.float64
    assert_close(b, to_reference(x)[:, ::3].cumsum(-1), torch.float64)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_cumsum_int(dtype):
    x = torch.randint(-9, 10, (6, 37), device=DEVICE).to(dtype)
    with gems_ran("_cumsum_kernel"):
        y, y0 = x.cumsum(1), torch.cumsum(x, 0)
    assert y.dtype == torch.int64
    assert torch.equal(y, x.cumsum(1)) and torch.equal(y0, x.cumsum(0))
