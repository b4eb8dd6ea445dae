"""embedding forward (aten embedding) and backward (aten embedding_dense_backward)."""
import pytest
import torch

from tests.helpers import DEVICE, FLOAT_DTYPES, assert_close, gems_ran, to_reference


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("idx_shape,num,dim", [((7,), 10, 33), ((2, 5), 4, 16), ((1,), 1, 1)])
def test_embedding_forward(dtype, idx_shape, num, dim):
    w = torch.randn(num, dim, dtype=dtype, device=DEVICE)
    idx = torch.randint(0, num, idx_shape, device=DEVICE)
    with gems_ran("embedding_fwd_kernel"):
        y = torch.nn.functional.embedding(idx, w)
    assert y.dtype == dtype
    assert_close(y, to_reference(w)[idx], dtype)


def test_embedding_forward_int32_noncontiguous_weight():
    w = torch.randn(12, 9, device=DEVICE).t()  # [9, 12], column stride 9
    idx = torch.tensor([[8, 0, 3], [3, 3, 1]], dtype=torch.int32, device=DEVICE)
    with gems_ran("embedding_fwd_kernel"):
        y = torch.nn.functional.embedding(idx, w)
    assert_close(y, to_reference(w)[idx.long()], torch.float32)


def _ref_grad(idx, g, num, padding_idx, scale):
    ref = torch.zeros(num, g.shape[-1], dtype=torch.float64, device=g.device)
    flat_i, flat_g = idx.reshape(-1), to_reference(g).reshape(-1, g.shape[-1])
    counts = torch.bincount(flat_i, minlength=num).double()
    for i, row in zip(flat_i.tolist(), flat_g):
        if i != padding_idx:
            ref[i] += row / (counts[i] if scale else 1.0)
    return ref


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("padding_idx,scale", [(None, False), (2, False), (None, True), (-1, True)])
def test_embedding_backward(dtype, padding_idx, scale):
    num, dim = 6, 17
    w = torch.randn(num, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    idx = torch.tensor([[0, 2, 2, 5], [1, 2, 0, 5]], device=DEVICE)  # repeats and the padding row
    g = torch.randn(2, 4, dim, dtype=dtype, device=DEVICE)
    with gems_ran("embedding_fwd_kernel", "embedding_bwd_kernel"):
        y = torch.nn.functional.embedding(idx, w, padding_idx=padding_idx, scale_grad_by_freq=scale)
        y.backward(g)
    pad = -1 if padding_idx is None else padding_idx % num
    assert w.grad.dtype == dtype
    assert_close(w.grad, _ref_grad(idx, g, num, pad, scale), dtype, reduce_dim=4)


def test_embedding_dense_backward_direct_empty():
    g = torch.randn(0, 5, device=DEVICE)
    idx = torch.empty(0, dtype=torch.long, device=DEVICE)
    import flag_gems

    with flag_gems.use_gems():
        out = torch.ops.aten.embedding_dense_backward(g, idx, 3, -1, False)
    assert out.shape == (3, 5) and not out.any()
