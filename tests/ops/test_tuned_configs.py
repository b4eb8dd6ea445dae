"""Every declared config of the pad, nll, sort/unique, nonzero and rotary tuners gives
torch's result: each config is forced through ``resolve_hook`` (the op tests run only the
defaults), so a config a tuning run may pick can never change an answer."""
import pytest
import torch
import torch.nn.functional as F

from flag_gems.fused import apply_rotary_pos_emb
from flag_gems.fused.rotary_embedding import rotary_kernel
from flag_gems.ops import cross_entropy, nonzero, shape, sort
from tests.helpers import DEVICE, assert_close, gems_ran, to_reference
from tuner.libtuner import resolve_hook


def _pad():
    x = torch.randn(2, 3, 9, 7, device=DEVICE).requires_grad_()
    out = F.pad(x, (2, 3, 1, 4), mode="reflect")
    g = torch.randn(out.shape, device=DEVICE)
    (dx,) = torch.autograd.grad(out, x, g)
    xr = to_reference(x).requires_grad_()
    ref = F.pad(xr, (2, 3, 1, 4), mode="reflect")
    (dxr,) = torch.autograd.grad(ref, xr, to_reference(g))
    assert torch.equal(out.detach(), F.pad(x.detach(), (2, 3, 1, 4), mode="reflect"))
    assert_close(dx, dxr, torch.float32, reduce_dim=4)


def _nll():
    x = torch.randn(3, 5, 31, 23, device=DEVICE).log_softmax(1).requires_grad_()
    t = torch.randint(0, 5, (3, 31, 23), device=DEVICE)
    loss = F.nll_loss(x, t, ignore_index=1)
    (dx,) = torch.autograd.grad(loss, x)
    xr = to_reference(x).requires_grad_()
    ref = F.nll_loss(xr, t, ignore_index=1)
    (dxr,) = torch.autograd.grad(ref, xr)
    assert_close(loss, ref, torch.float32, reduce_dim=t.numel())
    assert_close(dx, dxr, torch.float32)


def _sort_merge():
    x = torch.randint(-50, 50, (2, 300), device=DEVICE, dtype=torch.int64)  # 16-chunks (shrunk), 5 merge passes
    v, i = torch.sort(x, stable=True)
    rv, ri = torch.sort(x, stable=True)
    assert torch.equal(v, rv) and torch.equal(i, ri)


def _unique():
    x = torch.randint(-300, 300, (600,), device=DEVICE, dtype=torch.int32)
    got = torch.unique(x, return_inverse=True, return_counts=True)
    for a, b in zip(got, torch.unique(x, return_inverse=True, return_counts=True)):
        assert torch.equal(a, b)


def _nonzero():
    x = torch.rand(37, 171, device=DEVICE) < 0.3
    assert torch.equal(torch.nonzero(x), torch.nonzero(x.cpu()).to(x.device))


def _rotary():
    T, H, D = 5, 13, 16
    q, k = torch.randn(T, H, D, device=DEVICE), torch.randn(T, 3, D, device=DEVICE)
    ang = torch.randn(T, D // 2, device=DEVICE)
    qo, ko = apply_rotary_pos_emb(q, k, ang.cos(), ang.sin())
    for x, o in ((q, qo), (k, ko)):
        x1, x2 = to_reference(x).chunk(2, -1)
        c, s = to_reference(ang.cos())[:, None], to_reference(ang.sin())[:, None]
        assert_close(o, torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1), torch.float32)


def _cases():
    return [
        (shape.pad_kernel, _pad),
        (shape.pad_backward_kernel, _pad),
        (cross_entropy._nll_fwd_kernel, _nll),
        (cross_entropy._nll_finish_kernel, _nll),
        (cross_entropy._nll_bwd_kernel, _nll),
        (sort.sort_merge_kernel, _sort_merge),
        (sort.unique_count_kernel, _unique),
        (nonzero.nonzero_count_kernel, _nonzero),
        (rotary_kernel, _rotary),
    ]


@pytest.mark.parametrize("case", range(len(_cases())), ids=[t.name.rsplit(".", 1)[-1] for t, _ in _cases()])
def test_every_config(case, monkeypatch):
    monkeypatch.setattr(sort, "MAX_SORT", 64)  # small chunks: the interpreter is slow
    monkeypatch.setattr(sort, "CHUNK_WIDE", 16)
    tuner, run = _cases()[case]
    for cfg in tuner.configs:
        if tuner is rotary_kernel and cfg["BLOCK_H"] > 16:
            continue  # pruned for these head counts
        with resolve_hook(lambda t, *_: cfg if t is tuner else None):
            if tuner is rotary_kernel:
                run()
            else:
                with gems_ran(tuner.fn.__name__):
                    run()
