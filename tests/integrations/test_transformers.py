"""HF transformers: a 1-layer, hidden-64 Llama (random weights, float32, CPU interpreter)
under plain flag_gems (``use_gems()``, i.e. enable() for a block) and with the fused-module
patches, logits compared with torch's, KV-cache decode (torch.cat on the cache) included."""
import pytest
import torch

import flag_gems
from tests.helpers import DEVICE, count_kernels

transformers = pytest.importorskip("transformers")


def _config(cls_name="LlamaConfig", **kw):
    cfg = getattr(transformers, cls_name)(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, **kw,
    )
    cfg._attn_implementation = "eager"  # attention as matmul + softmax: aten ops flag_gems runs
    return cfg


def _model(arch="Llama", seed=0):
    torch.manual_seed(seed)
    m = getattr(transformers, f"{arch}ForCausalLM")(_config(f"{arch}Config")).to(DEVICE).eval()
    with torch.no_grad():  # RMSNorm weights are ones at init: make them count
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


def _prefill_decode(model, ids, next_ids):
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        out2 = model(input_ids=next_ids, past_key_values=out.past_key_values, use_cache=True)
    return out.logits, out2.logits


def _ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 96, (2, 5), generator=g).to(DEVICE), torch.randint(0, 96, (2, 1), generator=g).to(DEVICE)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_llama_plain_enable(tmp_path):
    import json

    model = _model()
    ids, nxt = _ids()
    ref = _prefill_decode(model, ids, nxt)
    rec = tmp_path / "ops.jsonl"
    with count_kernels() as k, flag_gems.use_gems(record=True, path=rec):
        got = _prefill_decode(model, ids, nxt)
    assert sum(k.values()) > 0 and k["_mm_kernel"] > 0, dict(k)
    ran = {json.loads(line)["op"] for line in rec.read_text().splitlines()}
    # cat: the KV cache update; linear: each projection, one GEMM on its input's rows
    # (not aten's composite, whose mm would be recorded too)
    assert {"cat", "linear", "bmm", "embedding", "_softmax"} <= ran and "mm" not in ran, ran
    for a, b in zip(got, ref):
        _close(a, b)


def test_llama_patches_and_revert():
    from transformers.models.llama import modeling_llama as ml

    originals = (ml.LlamaRMSNorm.forward, ml.LlamaMLP.forward, ml.apply_rotary_pos_emb, ml.LlamaRotaryEmbedding.forward)
    model = _model()
    ids, nxt = _ids()
    ref = _prefill_decode(model, ids, nxt)
    flag_gems.apply_gems_patches_to_transformers()
    try:
        assert all(new is not old for new, old in zip((ml.LlamaRMSNorm.forward, ml.LlamaMLP.forward, ml.apply_rotary_pos_emb, ml.LlamaRotaryEmbedding.forward), originals))
        with count_kernels() as k:
            got = _prefill_decode(model, ids, nxt)  # the patches alone: aten GEMMs
        for name in ("rms_norm_fwd_kernel", "rotary_kernel", "gated_act_kernel", "rope_cos_sin_kernel"):
            assert k[name] > 0, dict(k)
        for a, b in zip(got, ref):
            _close(a, b)
        with flag_gems.use_gems():  # patches + every aten op on flag_gems
            got = _prefill_decode(model, ids, nxt)
        for a, b in zip(got, ref):
            _close(a, b)
        # training is left to the originals (the patched functions have no backward)
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert model.model.layers[0].mlp.gate_proj.weight.grad is not None
    finally:
        flag_gems.revert_transformers_patches()
    assert (ml.LlamaRMSNorm.forward, ml.LlamaMLP.forward, ml.apply_rotary_pos_emb, ml.LlamaRotaryEmbedding.forward) == originals


@pytest.mark.parametrize("arch", ["Qwen2", "Mistral"])
def test_other_families_patched(arch):
    model = _model(arch)
    ids, nxt = _ids()
    ref = _prefill_decode(model, ids, nxt)
    flag_gems.apply_gems_patches_to_transformers()
    try:
        with count_kernels() as k:
            got = _prefill_decode(model, ids, nxt)
        for name in ("rms_norm_fwd_kernel", "rotary_kernel", "gated_act_kernel", "rope_cos_sin_kernel"):
            assert k[name] > 0, dict(k)
    finally:
        flag_gems.revert_transformers_patches()
    for a, b in zip(got, ref):
        _close(a, b)


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                                  {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}])
def test_rotary_embedding_tables(rope):
    """The patched rotary embedding builds HF's cos/sin in one kernel, for rope types that
    fix their frequencies at init (scaled ones included); dynamic types keep HF's."""
    from transformers.models.llama import modeling_llama as ml

    cfg = _config(**({} if rope is None else {"rope_parameters": rope}))
    emb = ml.LlamaRotaryEmbedding(cfg).to(DEVICE)
    x = torch.randn(2, 3, 64, device=DEVICE, dtype=torch.bfloat16)
    pos = torch.randint(0, 60, (2, 3), device=DEVICE)
    ref = emb(x, pos)
    flag_gems.apply_gems_patches_to_transformers()
    try:
        with count_kernels() as k:
            got = emb(x, pos)
    finally:
        flag_gems.revert_transformers_patches()
    dynamic = rope is not None and "dynamic" in rope["rope_type"]
    assert (k["rope_cos_sin_kernel"] == 0) == dynamic, dict(k)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-2)


def _linear_weights(monkeypatch) -> list:
    """The weight shapes of every F.linear call from here on (nn.Linear's included)."""
    seen, real = [], torch.nn.functional.linear

    def spy(x, w, b=None):
        seen.append(tuple(w.shape))
        return real(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    return seen


def test_attention_merges_qkv_projections(monkeypatch):
    """With the patches, q/k/v run as one GEMM over a merged weight whose row blocks are
    the projections' own parameters; the serving forwards last one call only; a replaced
    parameter is merged anew; non-plain linears and long calls keep HF's projections."""
    from flag_gems.patches import transformers as tp

    model = _model()
    attn = model.model.layers[0].self_attn
    ids, nxt = _ids()
    flag_gems.apply_gems_patches_to_transformers()
    try:
        seen = _linear_weights(monkeypatch)
        with count_kernels() as k:
            got = _prefill_decode(model, ids, nxt)
        assert seen.count((128, 64)) == 2 and (32, 64) not in seen, seen  # q 64 + k 32 + v 32 rows, twice
        assert k["rotary_kernel"] == 2, dict(k)  # q and k, blocks of one output, rotate in one launch
        weight, bias = attn.__dict__["_gems_qkv"][:2]
        assert bias is None and weight.shape == (128, 64)
        assert attn.q_proj.weight.data_ptr() == weight.data_ptr()
        assert attn.v_proj.weight.data_ptr() == weight[96:].data_ptr()
        assert all("forward" not in lin.__dict__ for lin in (attn.q_proj, attn.k_proj, attn.v_proj))
        with torch.no_grad(), pytest.raises(TypeError):  # HF's forward fails: no position embeddings
            attn(torch.randn(1, 2, 64, device=DEVICE), None, None)
        assert all("forward" not in lin.__dict__ for lin in (attn.q_proj, attn.k_proj, attn.v_proj))
        flag_gems.revert_transformers_patches()
        for a, b in zip(got, _prefill_decode(model, ids, nxt)):  # HF's own, on the re-pointed parameters
            _close(a, b)

        # new k weights (as a load would assign them): merged anew, and they count
        with torch.no_grad():
            attn.k_proj.weight = torch.nn.Parameter(torch.randn_like(attn.k_proj.weight) * 0.1)
        ref = _prefill_decode(model, ids, nxt)
        flag_gems.apply_gems_patches_to_transformers()
        got = _prefill_decode(model, ids, nxt)
        assert attn.__dict__["_gems_qkv"][0].data_ptr() != weight.data_ptr()
        for a, b in zip(got, ref):
            _close(a, b)

        # a call of more than MERGE_QKV_MAX_TOKENS tokens: HF's three projections
        monkeypatch.setattr(tp, "MERGE_QKV_MAX_TOKENS", 4)
        seen.clear()
        _prefill_decode(model, ids, nxt)  # prefill 2 x 5 tokens: separate; decode 2 x 1: merged
        assert seen.count((32, 64)) == 2 and seen.count((128, 64)) == 1, seen
        monkeypatch.setattr(tp, "MERGE_QKV_MAX_TOKENS", 1024)

        # a layer that is not a plain nn.Linear (a LoRA-like subclass): HF's projections
        class Shifted(torch.nn.Linear):
            def forward(self, x):
                return super().forward(x) + 1.0

        shifted = Shifted(64, 32, bias=False).to(DEVICE)
        with torch.no_grad():
            shifted.weight.copy_(attn.v_proj.weight)
        attn.v_proj = shifted
        flag_gems.revert_transformers_patches()
        ref = _prefill_decode(model, ids, nxt)
        flag_gems.apply_gems_patches_to_transformers()
        seen.clear()
        got = _prefill_decode(model, ids, nxt)
        assert (128, 64) not in seen, seen
        for a, b in zip(got, ref):
            _close(a, b)
    finally:
        flag_gems.revert_transformers_patches()


def test_merging_under_inference_mode_keeps_the_model_trainable():
    """A first call under torch.inference_mode() merges the projections' weights; the
    parameters must stay normal tensors, so training the model afterwards works."""
    model = _model()
    ids, nxt = _ids()
    flag_gems.apply_gems_patches_to_transformers()
    try:
        with torch.inference_mode():
            model(input_ids=ids)
        attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
        assert "_gems_qkv" in attn.__dict__ and "_gems_gate_up" in mlp.__dict__
        params = [attn.q_proj.weight, attn.v_proj.weight, mlp.gate_proj.weight, mlp.up_proj.weight]
        assert not any(p.is_inference() for p in params)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is not None for p in params)
    finally:
        flag_gems.revert_transformers_patches()


def test_decoder_layer_fuses_the_post_attention_residual_add():
    """transformers 5's decoder layers: the add after attention runs inside the
    post-attention RMSNorm kernel (one launch fewer per layer), the logits stay HF's; a
    forward hook on the attention (which could keep the output the sum overwrites) gets
    HF's own steps; revert() restores the layer."""
    import inspect

    from transformers.models.llama import modeling_llama as ml

    if inspect.signature(ml.LlamaDecoderLayer.forward).return_annotation is not torch.Tensor:
        pytest.skip("this transformers' decoder layer returns tuples: left unpatched")
    original = ml.LlamaDecoderLayer.forward
    model = _model()
    ids, nxt = _ids()
    ref = _prefill_decode(model, ids, nxt)
    flag_gems.apply_gems_patches_to_transformers()
    try:
        assert ml.LlamaDecoderLayer.forward is not original
        with count_kernels() as fused, flag_gems.use_gems():
            got = _prefill_decode(model, ids, nxt)
        for a, b in zip(got, ref):
            _close(a, b)
        kept = []
        handle = model.model.layers[0].self_attn.register_forward_hook(lambda mod, inp, out: kept.append(out[0].clone()))
        try:
            with count_kernels() as hooked, flag_gems.use_gems():
                got = _prefill_decode(model, ids, nxt)
        finally:
            handle.remove()
        for a, b in zip(got, ref):
            _close(a, b)
        adds = [sum(v for n, v in k.items() if n.startswith("add_")) for k in (fused, hooked)]
        assert adds[1] - adds[0] == 2, (dict(fused), dict(hooked))  # one per layer, prefill and decode
        assert fused["rms_norm_fwd_kernel"] == hooked["rms_norm_fwd_kernel"]
        assert len(kept) == 2
    finally:
        flag_gems.revert_transformers_patches()
    assert ml.LlamaDecoderLayer.forward is original
