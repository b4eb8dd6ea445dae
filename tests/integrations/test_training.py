"""One training step of a tiny HF Llama inside ``with flag_gems.use_gems():``: loss and
every parameter's gradient match torch's (float32, CPU interpreter)."""
import pytest
import torch

import flag_gems
from tests.helpers import count_kernels

pytest.importorskip("transformers")
from tests.integrations.test_transformers import _ids, _model  # noqa: E402


def _step(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_llama_training_step():
    model = _model().train()
    ids, _ = _ids()
    ref_loss, ref_grads = _step(model, ids)
    with count_kernels() as k, flag_gems.use_gems():
        loss, grads = _step(model, ids)
    # the forward and the backward ran on flag_gems: the GEMMs (gradients included), the
    # MLP activation's gradient, the softmax gradients, the loss's and the embedding's gradients
    for prefix in ("_mm_kernel", "silu_backward", "_softmax_bwd", "_nll_bwd", "embedding_bwd"):
        assert any(name.startswith(prefix) for name in k), (prefix, dict(k))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.parameters()))
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-5, msg=lambda m: f"grad of {n}: {m}")
    # and the optimizer step with flag_gems' pointwise ops
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with flag_gems.use_gems():
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * ref_grads[n], rtol=1e-5, atol=1e-6)
