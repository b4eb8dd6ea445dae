"""F.pad modes reflect / replicate / circular (reflection_pad{1,2,3}d, replication_pad{1,2,3}d,
_pad_circular) forward and backward. The forward is a copy: bit-exact against torch; the
backward sums a few gradients per element: float64 reference under per-dtype tolerance."""
import pytest
import torch
import torch.nn.functional as F

import flag_gems
from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference

DTYPES = FLOAT_DTYPES + [torch.int32, torch.int64, torch.uint8]
MODES = ["reflect", "replicate", "circular"]

# (input shape, pad): 1d, 2d and 3d pads, with and without a batch dim, negative pads, odd sizes
CASES = [
    ((3, 7), (2, 3)),
    ((2, 3, 7), (-1, 4)),
    ((3, 5, 6), (1, 2, 3, 0)),
    ((2, 3, 5, 6), (2, -2, 1, 4)),
    ((2, 4, 3, 5), (0, 0, 2, 1, 1, 2)),
    ((2, 2, 3, 4, 5), (1, 2, -1, 2, 2, 1)),
]


def rand(shape, dtype):
    if dtype.is_floating_point:
        return (torch.randn(shape, device=DEVICE) + 0.1).to(dtype)
    return torch.randint(1, 100, shape, device=DEVICE, dtype=dtype)


def strided(shape, dtype):
    """A non-contiguous tensor of ``shape`` (its last two dims transposed in memory)."""
    return rand(shape[:-2] + (shape[-1], shape[-2]), dtype).transpose(-1, -2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pad_forward(mode, dtype):
    for shape, pad in CASES:
        x = strided(shape, dtype)
        with gems_ran("pad_kernel"):
            out = F.pad(x, pad, mode=mode)
        ref = F.pad(x, pad, mode=mode)
        assert out.dtype == ref.dtype and out.shape == ref.shape, (shape, pad)
        assert torch.equal(out, ref), (shape, pad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_pad_backward(mode, dtype):
    for shape, pad in CASES:
        x = strided(shape, dtype).requires_grad_()
        xr = to_reference(x).requires_grad_()
        ref = F.pad(xr, pad, mode=mode)
        g = torch.randn(ref.shape, device=DEVICE).to(dtype)
        if shape == (2, 3, 5, 6):
            g = g.transpose(-1, -2).contiguous().transpose(-1, -2)  # a non-contiguous gradient
        (dxr,) = torch.autograd.grad(ref, xr, to_reference(g))
        with gems_ran("pad_kernel", "pad_backward_kernel"):
            out = F.pad(x, pad, mode=mode)
            (dx,) = torch.autograd.grad(out, x, g)
        assert torch.equal(out.detach(), F.pad(x.detach(), pad, mode=mode))
        assert dx.dtype == dtype
        assert_close(dx, dxr, dtype, reduce_dim=8)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pad_backward_ops_direct(nd):
    """The aten backward overloads themselves (what autograd calls for reflect/replicate)."""
    shape = (2, 3, 4, 5, 6)[: nd + 2]
    pad = (2, 1, 1, 3, 0, 2)[: 2 * nd]
    x = rand(shape, torch.float32)
    for name in ("reflection_pad", "replication_pad"):
        fwd = getattr(torch.ops.aten, f"{name}{nd}d")
        bwd = getattr(torch.ops.aten, f"{name}{nd}d_backward")
        g = torch.randn(fwd(x, pad).shape, device=DEVICE)
        with gems_ran("pad_backward_kernel"):
            got = bwd(g, x, pad)
        assert_close(got, bwd(to_reference(g), to_reference(x), pad), torch.float32, reduce_dim=8)


def test_pad_circular_bool_and_wraparound():
    x = torch.rand(2, 3, 5, device=DEVICE) > 0.5
    with gems_ran("pad_kernel"):
        out = F.pad(x, (5, 3), mode="circular")  # a pad as long as the dim
    assert torch.equal(out, F.pad(x, (5, 3), mode="circular"))


def test_pad_replicate_long_pad_and_one_element():
    x = rand((2, 1, 1), torch.float32)
    with gems_ran("pad_kernel"):
        out = F.pad(x, (9, 4), mode="replicate")  # pads longer than the dim: replicate allows them
    assert torch.equal(out, F.pad(x, (9, 4), mode="replicate"))


@pytest.mark.parametrize("mode", MODES)
def test_pad_empty_batch(mode):
    x = rand((0, 3, 5), torch.float32)
    with flag_gems.use_gems():
        out = F.pad(x, (2, 1), mode=mode)
    assert out.shape == F.pad(x, (2, 1), mode=mode).shape == (0, 3, 8)


@pytest.mark.parametrize("mode,pad", [("reflect", (5, 0)), ("reflect", (1, 7)), ("replicate", (-3, -3)), ("circular", (6, 0))])
def test_pad_errors_match_torch(mode, pad):
    x = rand((2, 3, 5), torch.float32)
    with pytest.raises(RuntimeError) as expected:
        F.pad(x, pad, mode=mode)
    with flag_gems.use_gems(), pytest.raises(RuntimeError) as got:
        F.pad(x, pad, mode=mode)
    assert str(got.value) == str(expected.value)
