"""The pretune provider: turns workload jobs (op name, shapes, dtype, args) into real
flag_gems calls on this device, replays recorded misses, and captures workloads.

``gems-pretune`` loads this module by name (``tuner.pretune`` never imports flag_gems).
Running a job under ``FLAGGEMS_AUTOTUNE=miss`` makes every LibTuner the op hits tune
exactly the key it requests. Inputs are built outside ``use_gems()`` (so factory kernels
are not tuned for shapes the model never asks for); the op itself runs inside it, through
the same aten dispatch (or fused function) a model uses.

Provider interface (what ``tuner.pretune`` calls):
- ``OPS``: op name -> ``fn(job)``; ``run_job(job, init=True)``; ``known_op(name)``.
  ``init=False`` (``gems-pretune --dry-run``) leaves floating inputs uninitialized: the
  keys a call requests depend on shapes and dtypes only. Any op with ``args.backward``
  also runs its backward (the gradients of its floating inputs).
- ``replay_job(kernel, raw_args) -> Job | None``: a job whose run requests the key a
  recorded miss (kernel name + unbucketed key values + dtypes) asked for.
- ``replay_key(kernel, key_json) -> Job | None``: a job whose run requests a stored
  (bucketed) key, where the key maps back to a call (``gems-tunedb verify``).
- ``capture_workload(record_jsonl, out_yaml)``: a workload of the aten calls a recorded
  run made (``flag_gems.enable(record=True, path=...)``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Sequence

import torch
import torch.nn.functional as F

import flag_gems
from flag_gems import registry
from tuner.workload import Job, dump_ops_yaml

log = logging.getLogger(__name__)

_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


def _dev() -> str:
    return flag_gems.device


def _dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name.removeprefix("torch.")]
    except KeyError as e:
        raise ValueError(f"unknown dtype {name!r}") from e


# False while a dry run runs jobs: floating inputs stay uninitialized (torch.empty), so a
# 7B-sized call costs an allocation that is never touched
_init_floats = True


def _tensor(shape, dtype: torch.dtype, stride=None) -> torch.Tensor:
    """A random tensor (floats), zeros (integers: always-valid indices), random bools."""
    shape = tuple(int(s) for s in shape)
    if stride is not None:
        t = torch.empty_strided(shape, tuple(int(s) for s in stride), dtype=dtype, device=_dev())
    else:
        t = torch.empty(size=shape, dtype=dtype, device=_dev())
    if dtype.is_floating_point:
        if _init_floats:
            t.normal_()
    elif dtype == torch.bool:
        t.copy_(torch.rand(shape, device=_dev()) > 0.5)
    else:
        t.zero_()
    return t


def _inputs(job: Job) -> list[torch.Tensor]:
    dts = job.dtypes or (job.dtype,) * len(job.shapes)
    strides = job.strides or (None,) * len(job.shapes)
    return [_tensor(s, _dtype(d), st) for s, d, st in zip(job.shapes, dts, strides)]


def _call(job: Job, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, train: bool = False) -> torch.Tensor:
    """``fn(*inputs)`` under ``use_gems()``; with ``args.backward`` (or ``train``) also its backward: the
    gradients of the floating inputs for a (contiguous) gradient of the output, as the
    next op hands it back, or a scalar output's own (autograd's ones_like). Through
    ``torch.autograd.grad``: inputs stand for a model's intermediate tensors, whose
    gradients no AccumulateGrad copies."""
    train = train or bool(job.kwargs.get("backward", False))
    if train:
        inputs = tuple(t.requires_grad_() if t.is_floating_point() else t for t in inputs)
    with flag_gems.use_gems():
        out = fn(*inputs)
    if train:
        grad = _tensor(out.shape, out.dtype) if out.dim() else None  # made outside: no fill kernel
        with flag_gems.use_gems():
            torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad)
    return out


# -- the ops a model workload derives ------------------------------------------------------
def _linear(job: Job) -> Any:
    """x (M, K) @ weight (N, K)^T (+ bias (N,)), as ``F.linear`` dispatches it (mm, or addmm
    with a bias, on a transposed view). Its backward: dX = dY @ W, dW = dY^T @ X."""
    return _call(job, F.linear, *_inputs(job)[:3])


def _mm(job: Job) -> Any:
    a, b = _inputs(job)[:2]
    with flag_gems.use_gems():
        return torch.matmul(a, b)


def _rms_norm(job: Job) -> Any:
    from flag_gems.fused import rms_norm

    (x,) = _inputs(job)[:1]
    w = _tensor((x.shape[-1],), x.dtype)
    return rms_norm(x, w, job.kwargs.get("eps", 1e-6))


def _fused_add_rms_norm(job: Job) -> Any:
    from flag_gems.fused import fused_add_rms_norm

    x, r = _inputs(job)[:2]
    w = _tensor((x.shape[-1],), x.dtype)
    return fused_add_rms_norm(x, r, w, job.kwargs.get("eps", 1e-6))


def _silu_and_mul(job: Job) -> Any:
    from flag_gems.fused import silu_and_mul

    return silu_and_mul(_inputs(job)[0])


def _gelu_and_mul(job: Job) -> Any:
    from flag_gems.fused import gelu_and_mul

    return gelu_and_mul(_inputs(job)[0], approximate=job.kwargs.get("approximate", "none"))


def _rotary(job: Job) -> Any:
    """q (T, heads, head_dim), k (T, kv_heads, head_dim), a (T, head_dim/2) cos/sin cache.
    q and k are blocks of one merged qkv output, as vLLM and the transformers patches pass
    them: one launch rotates heads + kv_heads; with ``layout: "separate"``, two tensors,
    one launch each (a replayed miss of one of them)."""
    from flag_gems.fused import apply_rotary_pos_emb

    (t, hq, hd), (_, hk, _) = job.shapes[:2]
    dtype = _dtype(job.dtypes[0] if job.dtypes else job.dtype)
    if job.kwargs.get("layout") == "separate":
        q, k = _tensor((t, hq, hd), dtype), _tensor((t, hk, hd), dtype)
    else:
        both = _tensor((t, hq + hk, hd), dtype)
        q, k = both[:, :hq], both[:, hq:]
    cos = _tensor((t, hd // 2), q.dtype)
    sin = _tensor((t, hd // 2), q.dtype)
    return apply_rotary_pos_emb(q, k, cos, sin)


def _embedding(job: Job) -> Any:
    """weight (vocab, D), indices (T,) or (B, T)."""
    w = _tensor(job.shapes[0], _dtype(job.dtype))
    idx = torch.randint(0, w.shape[0], tuple(job.shapes[1]), device=_dev())
    return _call(job, lambda w: F.embedding(idx, w), w)


def _softmax_fn(log: bool) -> Callable[[Job], Any]:
    """softmax / log_softmax over ``args.dim`` (default -1), in ``args.dtype`` when given
    (HF eager attention: softmax(x, dtype=float32))."""
    f = F.log_softmax if log else F.softmax

    def run(job: Job) -> Any:
        dt = job.kwargs.get("dtype")
        return _call(job, lambda x: f(x, dim=job.kwargs.get("dim", -1), dtype=_dtype(dt) if dt else None), *_inputs(job)[:1])

    return run


def _add(job: Job) -> Any:
    return _call(job, torch.add, *_inputs(job)[:2])


def _mul(job: Job) -> Any:
    return _call(job, torch.mul, *_inputs(job)[:2])


def _silu(job: Job) -> Any:
    return _call(job, F.silu, *_inputs(job)[:1])


def _gelu(job: Job) -> Any:
    return _call(job, lambda x: F.gelu(x, approximate=job.kwargs.get("approximate", "none")), *_inputs(job)[:1])


def _layer_norm(job: Job) -> Any:
    """x (..., N) with a weight and a bias of (N,)."""
    (x,) = _inputs(job)[:1]
    n = x.shape[-1]
    return _call(job, lambda x, w, b: F.layer_norm(x, (n,), w, b, job.kwargs.get("eps", 1e-5)),
                 x, _tensor((n,), x.dtype), _tensor((n,), x.dtype))


def _nn_rms_norm(job: Job) -> Any:
    """torch's RMSNorm (``F.rms_norm``: the aten op, with its own backward), x (..., N)."""
    (x,) = _inputs(job)[:1]
    n = x.shape[-1]
    return _call(job, lambda x, w: F.rms_norm(x, (n,), w, job.kwargs.get("eps")), x, _tensor((n,), x.dtype))


def _cross_entropy(job: Job) -> Any:
    """logits (T, vocab); targets drawn in range."""
    (x,) = _inputs(job)[:1]
    target = torch.randint(0, x.shape[-1], x.shape[:-1], device=_dev())
    return _call(job, lambda x: F.cross_entropy(x, target), x)


# -- vLLM's sampler, as it runs under flag_gems.enable() -------------------------------------
def vllm_sample(logits: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM v1's native sampler on a batch of logits, op for op (its Sampler and
    random_sample): the float32 cast, the greedy argmax, the temperature, the float32
    softmax and the exponential race (``q.exponential_()`` stays on torch). Returns the
    greedy and the sampled tokens. Top-k / top-p masks are left out: vLLM runs them in its
    own Triton kernels or FlashInfer's (older versions sorted the logits)."""
    logits = logits.to(torch.float32)
    greedy = logits.argmax(dim=-1).view(-1)
    logits = logits.div_(temperature.unsqueeze(dim=1))
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    q = torch.empty_like(probs)
    q.exponential_()
    return greedy, probs.div_(q).argmax(dim=-1).view(-1)


def _vllm_sample(job: Job) -> Any:
    """logits (t, vocab) of the model's dtype; a positive temperature per row."""
    (logits,) = _inputs(job)[:1]
    temperature = _tensor((logits.shape[0],), torch.float32).abs_() + 0.5  # made outside: no kernel
    with flag_gems.use_gems():
        return vllm_sample(logits, temperature)


# -- HF transformers (Llama, Qwen2, Mistral) as it runs under flag_gems.enable() ---------------
# These mirror transformers' own code (5.x: modeling_llama, masking_utils, cache_utils,
# loss_utils) op for op, so a job requests exactly the keys the model's modules do;
# tests/test_pretune_hf.py checks them against a real LlamaForCausalLM.
def _hf_rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm.forward."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def _hf_rms_norm(job: Job) -> Any:
    """x (T, hidden), a weight of the model's dtype."""
    (x,) = _inputs(job)[:1]
    eps = job.kwargs.get("eps", 1e-6)
    return _call(job, lambda x, w: _hf_rms_norm_forward(x, w, eps), x, _tensor((x.shape[-1],), x.dtype))


def _hf_causal_mask(b: int, q: int, past: int, dtype: torch.dtype) -> torch.Tensor:
    """create_causal_mask for eager attention without a padding mask (masking_utils'
    sdpa_mask without vmap, then eager_mask): [b, 1, q, past + q], 0 or dtype's min."""
    dev = _dev()
    batch_arange = torch.arange(b, device=dev)  # made (and unused) by causal masks
    head_arange = torch.arange(1, device=dev)
    q_arange = torch.arange(q, device=dev) + past
    kv_arange = torch.arange(past + q, device=dev) + 0
    del batch_arange, head_arange
    mask = kv_arange[None, None, None, :] <= q_arange[None, None, :, None]
    mask = mask.expand(b, -1, q, past + q)
    return torch.where(mask, torch.zeros(size=(), device=dev, dtype=dtype), torch.finfo(dtype).min)


def _hf_rope(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, rotary: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """LlamaRotaryEmbedding.forward: the installed transformers' own (``rotary``; its
    versions compute the table differently: older ones as a float32 matmul, newer ones as a
    broadcast mul), else transformers 5.2x's, mirrored (default rope: attention_scaling 1.0)."""
    if rotary is not None:
        return rotary(inv_freq.new_empty((1,)), position_ids)
    freqs = position_ids[..., None].float() * inv_freq.to(device=position_ids.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * 1.0
    sin = emb.sin() * 1.0
    return cos.to(dtype=dtype), sin.to(dtype=dtype)


@functools.lru_cache(maxsize=16)
def _installed_rotary(head_dim: int, dtype: torch.dtype, device: str) -> Any:
    """transformers' LlamaRotaryEmbedding for ``head_dim``, cast as ``model.to(dtype)``
    casts its ``inv_freq`` buffer; None without transformers. Made outside ``use_gems()``,
    as a model's is (at load)."""
    try:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    except ImportError:
        return None
    cfg = LlamaConfig(hidden_size=head_dim, num_attention_heads=1, num_key_value_heads=1, head_dim=head_dim)
    return LlamaRotaryEmbedding(cfg).to(device=device, dtype=dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    b, kv, slen, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, slen, hd).reshape(b, kv * n_rep, slen, hd)


@contextlib.contextmanager
def _gems_off() -> Iterator[None]:
    """Every flag_gems op off inside the block (aten runs), whatever was on outside."""
    snap = registry.snapshot()
    registry.switch(set())
    try:
        yield
    finally:
        registry.restore(snap)


def _empty_as(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialized tensor of ``shape`` whose dims are laid out in ``like``'s order."""
    order = sorted(range(like.dim()), key=lambda d: (-like.stride(d), d))
    return torch.empty(size=[shape[d] for d in order], dtype=like.dtype, device=like.device).permute(
        [order.index(d) for d in range(like.dim())])


class _SdpaStandIn(torch.autograd.Function):
    """A dry run's stand-in for SDPA, which no flag_gems op runs: its output and, in the
    backward, the gradients of q, k and v, allocated uncomputed in the layouts a real SDPA
    call (and its backward) on two of the queries and keys gives them -- what the flag_gems
    ops around it see -- without the full attention's CPU time."""

    @staticmethod
    def forward(ctx, q, k, v, run):  # type: ignore[override]
        small = [x[:, :, :2].detach().requires_grad_(x.requires_grad) for x in (q, k, v)]
        with torch.enable_grad(), _gems_off():  # the probe's own aten calls request nothing
            out = run(*small)
            wrt = [x for x in small if x.requires_grad]
            if wrt:  # the gradient arrives through the transpose(1, 2).contiguous() after it
                g = torch.empty(out.shape[0], out.shape[2], out.shape[1], out.shape[3], dtype=out.dtype, device=out.device)
                ctx.grads = torch.autograd.grad(out, wrt, g.transpose(1, 2))
        ctx.shapes = [x.shape for x in (q, k, v)]
        return _empty_as((*q.shape[:3], v.shape[-1]), out)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return (*(_empty_as(shape, g) for shape, g in zip(ctx.shapes, ctx.grads)), None)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, gqa: bool) -> torch.Tensor:
    """sdpa_attention_forward's call (no mask: is_causal for a prefill, GQA in the kernel);
    in a dry run on a CPU its stand-in (on a GPU it runs: cheap, and where PyTorch falls
    back to its math backend, e.g. float32 with GQA, that backend's aten ops reach flag_gems)."""
    causal = q.shape[2] > 1

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=scaling, is_causal=causal, enable_gqa=gqa)

    return run(q, k, v) if _init_floats or q.is_cuda else _SdpaStandIn.apply(q, k, v, run)


def _hf_attention_forward(q, k, v, past_k, past_v, inv_freq, rotary, impl: str, train: bool) -> torch.Tensor:
    """One decoder layer's attention between its q/k/v projections and o_proj, with the
    model's glue (position ids, causal mask, rotary table): LlamaModel.forward's prelude and
    LlamaAttention.forward with a DynamicCache. q/k/v: [b, s, heads * head_dim]."""
    dev, dtype = q.device, q.dtype
    b, s = q.shape[:2]
    hd = inv_freq.shape[0] * 2
    past = 0 if past_k is None else past_k.shape[2]
    position_ids = (torch.arange(s, device=dev) + past).unsqueeze(0)
    mask = _hf_causal_mask(b, s, past, dtype) if impl == "eager" else None  # sdpa: skipped (is_causal)
    cos, sin = _hf_rope(position_ids, inv_freq, dtype, rotary)

    query = q.view(b, s, -1, hd).transpose(1, 2)
    key = k.view(b, s, -1, hd).transpose(1, 2)
    value = v.view(b, s, -1, hd).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    query = (query * cos) + (_rotate_half(query) * sin)
    key = (key * cos) + (_rotate_half(key) * sin)
    cache_k = torch.tensor([], dtype=dtype, device=dev) if past_k is None else past_k  # DynamicLayer.update
    cache_v = torch.tensor([], dtype=dtype, device=dev) if past_v is None else past_v
    key = torch.cat([cache_k, key], dim=-2)
    value = torch.cat([cache_v, value], dim=-2)

    n_rep = query.shape[1] // key.shape[1]
    scaling = hd ** -0.5
    if impl == "eager":  # eager_attention_forward
        key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        weights = weights + mask
        weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = F.dropout(weights, p=0.0, training=train)
        out = torch.matmul(weights, value)
    else:  # sdpa_attention_forward
        out = _sdpa(query, key, value, scaling, n_rep > 1)
    out = out.transpose(1, 2).contiguous()
    return out.reshape(b, s, -1).contiguous()


def _hf_attention(job: Job) -> Any:
    """q [b, s, heads, head_dim], k and v [b, s, kv_heads, head_dim] (the projections'
    outputs, viewed), a KV cache [b, kv_heads, past, head_dim]; ``args.impl``: eager or
    sdpa. The rotary ``inv_freq`` buffer has the model's dtype (``model.to(dtype)``)."""
    (b, s, heads, hd), (_, _, kv, _), _, (_, _, past, _) = job.shapes
    dt = _dtype(job.dtype)
    q, k, v = (_tensor((b, s, n * hd), dt) for n in (heads, kv, kv))
    past_k, past_v = (_tensor((b, kv, past, hd), dt) for _ in range(2)) if past else (None, None)
    inv_freq, rotary = _tensor((hd // 2,), dt), _installed_rotary(hd, dt, str(q.device))
    impl, train = job.kwargs.get("impl", "sdpa"), bool(job.kwargs.get("backward", False))

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _hf_attention_forward(q, k, v, past_k, past_v, inv_freq, rotary, impl, train)

    return _call(job, forward, q, k, v)


def _hf_causal_lm_loss(job: Job) -> Any:
    """LlamaForCausalLM's loss (ForCausalLMLoss, mean reduction) and its backward, logits
    [b, s, vocab] of the model's dtype, the labels the input ids."""
    (b, s, vocab), = job.shapes[:1]
    logits = _tensor((b, s, vocab), _dtype(job.dtype))
    labels = torch.randint(0, vocab, (b, s), device=_dev())

    def loss(logits: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        shift = F.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
        return F.cross_entropy(x.view(-1, vocab), shift.view(-1).to(x.device), ignore_index=-100, reduction="mean")

    return _call(job, loss, logits, train=True)


def _sum(job: Job) -> Any:
    (x,) = _inputs(job)[:1]
    dim = job.kwargs.get("dim")
    with flag_gems.use_gems():
        return x.sum() if dim is None else x.sum(dim=dim)


def _aten(job: Job) -> Any:
    """A captured aten call: ``op`` is ``aten.<name>[.<overload>]``; ``args.argv`` /
    ``args.kwargs`` hold the call with ``{"$t": i}`` standing for the i-th input tensor."""
    name = job.op.removeprefix("aten.")
    base, _, overload = name.partition(".")
    fn = getattr(getattr(torch.ops.aten, base), overload or "default")
    tensors = _inputs(job)
    kw = job.kwargs

    def fill(v: Any) -> Any:
        if isinstance(v, dict) and "$t" in v:
            return tensors[int(v["$t"])]
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, str) and v.startswith("torch.") and v.removeprefix("torch.") in _DTYPES:
            return _dtype(v)
        return v

    argv = fill(kw.get("argv", []))
    kwargs = fill(kw.get("kwargs", {}))
    with flag_gems.use_gems():
        return fn(*argv, **kwargs)


OPS: dict[str, Callable[[Job], Any]] = {
    "linear": _linear,
    "mm": _mm,
    "bmm": _mm,
    "rms_norm": _rms_norm,
    "fused_add_rms_norm": _fused_add_rms_norm,
    "silu_and_mul": _silu_and_mul,
    "gelu_and_mul": _gelu_and_mul,
    "rotary": _rotary,
    "embedding": _embedding,
    "softmax": _softmax_fn(False),
    "log_softmax": _softmax_fn(True),
    "add": _add,
    "mul": _mul,
    "silu": _silu,
    "gelu": _gelu,
    "layer_norm": _layer_norm,
    "nn_rms_norm": _nn_rms_norm,
    "cross_entropy": _cross_entropy,
    "sum": _sum,
    "hf_rms_norm": _hf_rms_norm,
    "vllm_sample": _vllm_sample,
    "hf_attention": _hf_attention,
    "hf_causal_lm_loss": _hf_causal_lm_loss,
}


def known_op(name: str) -> bool:
    return name in OPS or name.startswith("aten.")


def slow_imports(ops: Collection[str]) -> list[str]:
    """Modules that jobs of ``ops`` import on their first run and that take seconds to
    import (transformers: HF attention builds the installed LlamaRotaryEmbedding). A
    pretune process imports them in the background as it starts."""
    return ["transformers.models.llama.modeling_llama"] if "hf_attention" in ops else []


def run_job(job: Job, init: bool = True) -> None:
    """Run one job; ``init=False`` leaves floating inputs uninitialized (a dry run)."""
    global _init_floats
    fn = _aten if job.op.startswith("aten.") else OPS.get(job.op)
    if fn is None:
        raise KeyError(f"unknown op {job.op!r}; known: {sorted(OPS)} or aten.<op>")
    _init_floats = init
    try:
        fn(job)
    finally:
        _init_floats = True


# -- replaying recorded misses -------------------------------------------------------------
# kernel name -> fn(raw_args) -> Job | None. ``raw_args`` is LibTuner's Miss.raw_args:
# the unbucketed key values by argument name, plus "dtypes" (every tensor argument's).
Replay = Callable[[dict[str, Any]], "Job | None"]
REPLAY: dict[str, Replay] = {}


def register_replay(kernel: str) -> Callable[[Replay], Replay]:
    def deco(fn: Replay) -> Replay:
        REPLAY[kernel] = fn
        return fn

    return deco


@register_replay("flag_gems.ops.mm._mm_kernel")
def _replay_mm(raw: dict) -> Job | None:
    m, n, k, batch, dt = raw["M"], raw["N"], raw["K"], raw["BATCH"], raw["dtypes"][0]
    # operand layouts: K-contiguous A (row-major), B with unit K stride (F.linear's
    # transposed weight); a miss holds the strides, a stored key their layout() strings
    a_k1, b_k1 = raw.get("s_ak", 1) in (1, "unit"), raw.get("s_bk", n) in (1, "unit")
    sa = (k, 1) if a_k1 else (1, m)
    sb = (1, k) if b_k1 else (n, 1)
    if batch > 1:
        return Job("bmm", ((batch, m, k), (batch, k, n)), dt, strides=((m * k, *sa), (k * n, *sb)))
    return Job("mm", ((m, k), (k, n)), dt, strides=(sa, sb))


@register_replay("flag_gems.fused.rms_norm.rms_norm_fwd_kernel")
def _replay_rms_norm(raw: dict) -> Job | None:
    x, r, y, w, rstd = raw["dtypes"]  # X, R, Y, W (X for an absent one), Rstd; None: absent
    if r is not None and rstd is not None:  # an older key, X standing in for R and Rstd (never both given)
        r, rstd = None, (rstd if rstd != x else None)
    if y != x or w != x or r not in (None, x):
        return None
    if rstd is not None:  # a float32 rstd buffer: aten rms_norm under autograd
        return _rms_norm_train_job(1, raw["N"], x)
    if r is not None:
        return Job("fused_add_rms_norm", ((1, raw["N"]), (1, raw["N"])), x)
    return Job("rms_norm", ((1, raw["N"]),), x)


@register_replay("flag_gems.fused.silu_and_mul.gated_act_kernel")
def _replay_gated(raw: dict) -> Job | None:
    from flag_gems.fused.silu_and_mul import GELU, GELU_TANH, SILU

    act = raw.get("ACT", SILU)
    if act == SILU:
        return Job("silu_and_mul", ((1, 2 * raw["d"]),), raw["dtypes"][0])
    if act in (GELU, GELU_TANH):
        approx = "tanh" if act == GELU_TANH else "none"
        return Job("gelu_and_mul", ((1, 2 * raw["d"]),), raw["dtypes"][0], (("approximate", json.dumps(approx)),))
    return None


@register_replay("flag_gems.ops.embedding.embedding_fwd_kernel")
def _replay_embedding(raw: dict) -> Job | None:
    w_dt = next(d for d in raw["dtypes"] if d in ("float16", "bfloat16", "float32"))
    return Job("embedding", ((2, raw["D"]), (1,)), w_dt)


@register_replay("flag_gems.fused.rotary_embedding.rotary_kernel")
def _replay_rotary(raw: dict) -> Job | None:
    h, half, d = raw["H"], raw["HALF"], raw["D"]
    if 2 * half != d:  # partial rotary: the provider's rotary job rotates the whole head
        return None
    return Job("rotary", ((1, h, d), (1, h, d)), raw["dtypes"][0], (("layout", json.dumps("separate")),))


def _aten_call(op: str, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str], argv: list, kwargs: dict | None = None) -> Job:
    """A job calling ``aten.<op>(*argv, **kwargs)``, ``{"$t": i}`` standing for a random
    tensor of ``shapes[i]`` and ``dtypes[i]``."""
    args = (("argv", json.dumps(argv)),) + ((("kwargs", json.dumps(kwargs)),) if kwargs else ())
    return Job(f"aten.{op}", tuple(shapes), dtypes[0], args, dtypes=tuple(dtypes))


def _aten_job(op: str, shape: tuple[int, ...], dt: str, *rest: Any) -> Job:
    """A job calling ``aten.<op>`` on one random tensor of ``shape``, then ``rest``."""
    return _aten_call(op, [shape], [dt], [{"$t": 0}, *rest])


@register_replay("flag_gems.ops.nonzero.nonzero_count_kernel")
def _replay_nonzero(raw: dict) -> Job | None:
    return _aten_job("nonzero", (raw["n"],), raw["dtypes"][0])


@register_replay("flag_gems.ops.sort.unique_count_kernel")
def _replay_unique(raw: dict) -> Job | None:
    return _aten_job("_unique2", (raw["n"],), raw["dtypes"][0], True, False, False)


@register_replay("flag_gems.ops.sort.sort_merge_kernel")
def _replay_sort_merge(raw: dict) -> Job | None:
    # keys, ids, keys_out, ids_out, x, ...: the input's dtype is the fifth (the merge runs
    # for rows over 4096, and for 64-bit dtypes at any length)
    return _aten_job("sort", (1, raw["N"]), raw["dtypes"][4], -1, False)


@register_replay("flag_gems.ops.shape.pad_kernel")
def _replay_pad(raw: dict) -> Job | None:
    # any mode's key is (rows, padded last dim): a reflect pad of 1 each side requests it
    rows, width = raw["n_rows"], raw["O2"]
    if width < 4:  # a reflect pad needs at least 2 input columns
        return None
    return _aten_job("reflection_pad1d", (rows, width - 2), raw["dtypes"][0], [1, 1])


@register_replay("flag_gems.ops.shape.pad_backward_kernel")
def _replay_pad_backward(raw: dict) -> Job | None:
    # (rows, padded last dim) as for the forward; dtypes: the gradient's, then dx's buffer
    rows, width, dt = raw["n_rows"], raw["O2"], raw["dtypes"][0]
    if width < 4:
        return None
    return _aten_call("reflection_pad1d_backward", [(rows, width), (rows, width - 2)], [dt, dt],
                      [{"$t": 0}, {"$t": 1}, [1, 1]])


def _nll_forward_job(n: int, x_dt: str, w_dt: str | None, reduction: int, t_dt: str = "int64") -> Job:
    """aten.nll_loss_forward over (n, 2) scores and n in-range (zero) targets."""
    shapes, dts = [(n, 2), (n,)], [x_dt, t_dt]
    if w_dt is not None:
        shapes.append((2,))
        dts.append(w_dt)
    argv = [{"$t": 0}, {"$t": 1}, {"$t": 2} if w_dt is not None else None, reduction, -100]
    return _aten_call("nll_loss_forward", shapes, dts, argv)


@register_replay("flag_gems.ops.cross_entropy._nll_fwd_kernel")
def _replay_nll_forward(raw: dict) -> Job | None:
    # X, T, [W], then the loss or the fp32 partial sums: reduction "none" writes the loss
    # in X's dtype, "mean" / "sum" fp32 parts (the same key for a float32 X)
    dts = raw["dtypes"]
    w_dt = dts[2] if len(dts) == 6 else None  # None: absent (an older key left it out)
    reduction = 0 if dts[-1] != "float32" else 1
    return _nll_forward_job(raw["N"], dts[0], w_dt, reduction, dts[1])


@register_replay("flag_gems.ops.cross_entropy._nll_finish_kernel")
def _replay_nll_finish(raw: dict) -> Job | None:
    # PART_L, PART_W (fp32), OUT, TOTAL_W (X's dtype): a mean over P partial-sum blocks
    from flag_gems.ops.cross_entropy import _MIN_BLOCK

    return _nll_forward_job(raw["P"] * _MIN_BLOCK, raw["dtypes"][2], None, 1)


@register_replay("flag_gems.ops.cross_entropy._nll_bwd_kernel")
def _replay_nll_backward(raw: dict) -> Job | None:
    # G, T, [W], TOTAL_W, DX: every floating one in X's dtype whatever the reduction (the
    # key cannot tell them apart); replayed as "mean", a scalar output gradient
    dts, n = raw["dtypes"], raw["N"]
    x_dt, has_w = dts[-1], len(dts) == 5 and dts[2] is not None  # W None: absent (an older key left it out)
    shapes, types = [(), (n, 2), (n,)], [x_dt, x_dt, dts[1]]
    if has_w:
        shapes.append((2,))
        types.append(dts[2])
    shapes.append(())
    types.append(x_dt)
    argv = [{"$t": 0}, {"$t": 1}, {"$t": 2}, {"$t": 3} if has_w else None, 1, -100, {"$t": len(shapes) - 1}]
    return _aten_call("nll_loss_backward", shapes, types, argv)


def _replay_dim_op(op: str, out_dtype_at: int | None) -> Callable[[str], Replay]:
    """Replays of a size-classed reduction-like tuner (key K, R): ``rows`` kinds reduce the
    last dim of (K, R); ``inner`` reduces dim 1 of (M, R, K), K being the inner size.
    ``out_dtype_at``: where the output's dtype is among the dtypes, passed as ``dtype=``
    (the key does not name the reduction: a sum with that output dtype requests it)."""

    def for_kind(kind: str) -> Replay:
        def replay(raw: dict) -> Job | None:
            k, r, dts = raw["K"], raw["R"], raw["dtypes"]
            var_mean = False
            if op == "sum.dim_IntList":  # X, X2, OUT, OUT2, AUX; None where absent
                _, x2, _, out2, aux = dts
                var_mean = out2 is not None  # (stage 1 reads its shift from AUX)
                if x2 is not None or aux is not None and not var_mean:
                    return None  # the second stage of a split reduction: its input is partial sums
            m = 1
            if kind == "inner" and op == "sum.dim_IntList" and dts[2] == dts[0] and dts[0] in ("bfloat16", "float16"):
                # unsplit (a split's first stage writes fp32 partials): outputs enough to
                # fill a GPU so the replay does not split either, within 2**28 elements
                m = max(1, (1 << 17) // max(k, 1))
                if m * r * k > 1 << 28:
                    return None
            shape, dim = ((m, r, k), 1) if kind == "inner" else ((k, r), -1)
            if var_mean:
                return _aten_call("var_mean.correction", [shape], [dts[0]], [{"$t": 0}, [dim]])
            argv: list[Any] = [{"$t": 0}, [dim] if op == "sum.dim_IntList" else dim]
            if op == "sum.dim_IntList":
                argv.append(False)
            kwargs = {"dtype": f"torch.{dts[out_dtype_at]}"} if out_dtype_at is not None else None
            return _aten_call(op, [shape], [dts[0]], argv, kwargs)

        return replay

    return for_kind


for _kind in ("rows", "inner"):
    REPLAY[f"flag_gems.ops.reduction._reduce_kernel:{_kind}"] = _replay_dim_op("sum.dim_IntList", 2)(_kind)  # OUT
for _kind in ("rows_short", "rows_long", "inner"):
    REPLAY[f"flag_gems.ops.reduction._arg_reduce_kernel:{_kind}"] = _replay_dim_op("argmax", None)(_kind)
    REPLAY[f"flag_gems.ops.cumsum._cumsum_kernel:{_kind}"] = _replay_dim_op("cumsum", -1)(_kind)


@register_replay("flag_gems.ops.cat.cat_kernel")
def _replay_cat(raw: dict) -> Job | None:
    # the key is the elements copied (total) and the dtypes: out's, each input's, then None
    # for each argument of the unused slots: k parts along dim 0 (an older key filled the
    # unused slots with X0's dtype)
    n, (dt, *slots) = raw["total"], raw["dtypes"]
    k = sum(d is not None for d in slots) if None in slots else 2
    if n < k or any(d not in (None, dt) for d in slots):
        return None
    sizes = [n // k + (i < n % k) for i in range(k)]
    return _aten_call("cat", [(s,) for s in sizes], [dt] * k, [[{"$t": i} for i in range(k)], 0])


@register_replay("flag_gems.ops.layer_norm.layer_norm_fwd_kernel")
def _replay_layer_norm(raw: dict) -> Job | None:
    dts = raw["dtypes"]  # x, y, weight, bias (x when absent), then fp32 mean and rstd (None: not stored)
    if len(dts) != 6 or dts[1] != dts[0]:
        return None
    n, stats = raw["N"], dts[4] is not None
    if len(set(dts[:4])) == 1 and not stats:
        return Job("layer_norm", ((1, n),), dts[0])  # F.layer_norm without a graph: y alone
    # native_layer_norm stores the stats; parameters may be of another dtype (fp32 for bf16 rows)
    return _aten_call("native_layer_norm" if stats else "layer_norm", [(1, n), (n,), (n,)], [dts[0], dts[2], dts[3]],
                      [{"$t": 0}, [n], {"$t": 1}, {"$t": 2}, 1e-5])


@register_replay("flag_gems.ops.index.index_select_kernel")
def _replay_index_select(raw: dict) -> Job | None:
    n, (dt, idx_dt) = raw["n"], raw["dtypes"][:2]  # n: the output's elements; one row of n selected
    return _aten_call("index_select", [(1, n), (1,)], [dt, idx_dt], [{"$t": 0}, 0, {"$t": 1}])


@register_replay("flag_gems.ops.index.index_select_rows_kernel")
def _replay_index_select_rows(raw: dict) -> Job | None:
    inner, rows, (dt, idx_dt) = raw["inner"], raw["rows"], raw["dtypes"][:2]  # row 0 of a table, ``rows`` times
    return _aten_call("index_select", [(1, inner), (rows,)], [dt, idx_dt], [{"$t": 0}, 0, {"$t": 1}])


def _replay_softmax(kind: str) -> Replay:
    def replay(raw: dict) -> Job | None:
        r, k, dt = raw["R"], raw["K"], raw["dtypes"][0]
        if raw["dtypes"][1] != dt:  # half_to_float output
            return None
        if kind == "inner":
            return Job("softmax", ((max(r, 2), max(k, 2)),), dt, (("dim", "0"),))
        return Job("softmax", ((max(k, 1), r),), dt)  # rows regimes: K counts the rows

    return replay


for _kind in ("rows", "rows_long", "rows_short", "inner"):  # "rows": the size-classed last-dim tuner
    REPLAY[f"flag_gems.ops.softmax._softmax_fwd_kernel:{_kind}"] = _replay_softmax(_kind)


def _replay_softmax_backward(kind: str) -> Replay:
    def replay(raw: dict) -> Job | None:
        # G, Y, DX: grad, output, then input_dtype (fp32 G and Y with a half DX after a
        # half_to_float forward); the key does not tell softmax from log_softmax
        r, k, (g_dt, y_dt, dx_dt) = raw["R"], raw["K"], raw["dtypes"][:3]
        if kind == "inner" and min(r, k) < 2:  # R or K of 1 is a rows layout
            return None
        shape, dim = ((r, k), 0) if kind == "inner" else ((k, r), -1)  # rows regimes: K counts the rows
        return _aten_call("_softmax_backward_data", [shape, shape], [g_dt, y_dt], [{"$t": 0}, {"$t": 1}, dim, f"torch.{dx_dt}"])

    return replay


for _kind in ("rows_long", "rows_short", "inner"):
    REPLAY[f"flag_gems.ops.softmax._softmax_bwd_kernel:{_kind}"] = _replay_softmax_backward(_kind)


@register_replay("flag_gems.ops.factory.arange_kernel")
def _replay_arange(raw: dict) -> Job | None:
    # the output is the only tensor; arange.start_out resizes it to n
    n = raw["n"]
    return _aten_call("arange.start_out", [(n,)], raw["dtypes"][:1], [0, n, 1], {"out": {"$t": 0}})


@register_replay("flag_gems.ops.dropout.dropout_fwd_kernel")
def _replay_dropout(raw: dict) -> Job | None:
    return _aten_job("native_dropout", (raw["n"],), raw["dtypes"][0], 0.5, True)  # X, Y, bool mask


@register_replay("flag_gems.ops.dropout.dropout_bwd_kernel")
def _replay_dropout_backward(raw: dict) -> Job | None:
    n, (dt, mask_dt) = raw["n"], raw["dtypes"][:2]  # DY, Mask, DX (DY's dtype)
    return _aten_call("native_dropout_backward", [(n,), (n,)], [dt, mask_dt], [{"$t": 0}, {"$t": 1}, 2.0])


@register_replay("flag_gems.ops.shape.tri_kernel")
def _replay_tri(raw: dict) -> Job | None:
    return _aten_job("triu", (1, raw["n"]), raw["dtypes"][0], 0)  # x, out (x's dtype); n: x's elements


@register_replay("flag_gems.ops._tensor_nd.nd_gather_kernel")
def _replay_nd_gather(raw: dict) -> Job | None:
    # flip, repeat and constant_pad_nd: src, out (one dtype), n the output's elements
    return _aten_job("flip", (raw["n"],), raw["dtypes"][0], [0])


@register_replay("flag_gems.ops.index.gather_scatter_kernel")
def _replay_gather_scatter(raw: dict) -> Job | None:
    # idx (int64), the indexed tensor, the dense one (cast to the indexed one's dtype: fp32
    # for a half scatter-add); n: the index's elements. A gather of n zero indices
    n, (idx_dt, dt) = raw["n"], raw["dtypes"][:2]
    return _aten_call("gather", [(1,), (n,)], [dt, idx_dt], [{"$t": 0}, 0, {"$t": 1}])


@register_replay("flag_gems.ops.embedding.embedding_bwd_kernel")
def _replay_embedding_backward(raw: dict) -> Job | None:
    # G, Idx, then fp32 Counts and Acc: one row of D gradients, a zero index into 2 rows
    d, (g_dt, idx_dt) = raw["D"], raw["dtypes"][:2]
    return _aten_call("embedding_dense_backward", [(1, d), (1,)], [g_dt, idx_dt], [{"$t": 0}, {"$t": 1}, 2, -1, False])


@register_replay("flag_gems.ops.group_norm.group_norm_fwd_kernel")
def _replay_group_norm(raw: dict) -> Job | None:
    # X, Y, W, B (X standing in for an absent one), fp32 Mean, Rstd; one group of L = C/G * HxW
    l, dts = raw["L"], raw["dtypes"]
    return _aten_call("native_group_norm", [(1, 1, l), (1,), (1,)], [dts[0], dts[2], dts[3]],
                      [{"$t": 0}, {"$t": 1}, {"$t": 2}, 1, 1, l, 1, 1e-5])


def _group_norm_backward_job(hxw: int, dts: Sequence[str], w_dt: str | None, mask: list[bool]) -> Job:
    """aten.native_group_norm_backward, N = C = G = 1: dy, x (1, 1, hxw), mean, rstd (1, 1)
    of ``dts``, a weight of ``w_dt`` (or none)."""
    shapes, types = [(1, 1, hxw), (1, 1, hxw), (1, 1), (1, 1)], list(dts)
    if w_dt is not None:
        shapes.append((1,))
        types.append(w_dt)
    argv = [{"$t": 0}, {"$t": 1}, {"$t": 2}, {"$t": 3}, {"$t": 4} if w_dt else None, 1, 1, hxw, 1, mask]
    return _aten_call("native_group_norm_backward", shapes, types, argv)


@register_replay("flag_gems.ops.group_norm.group_norm_bwd_dx_kernel")
def _replay_group_norm_dx(raw: dict) -> Job | None:
    dts = raw["dtypes"]  # DY, X, W (X when absent), Mean, Rstd, DX
    return _group_norm_backward_job(raw["L"], [dts[0], dts[1], dts[3], dts[4]], dts[2], [True, False, False])


@register_replay("flag_gems.ops.group_norm.group_norm_bwd_dwdb_kernel")
def _replay_group_norm_dwdb(raw: dict) -> Job | None:
    # DY, X, Mean, Rstd, then DW and DB in the weight's dtype (x's without a weight)
    dts = raw["dtypes"]
    return _group_norm_backward_job(raw["HxW"], dts[:4], None, [False, True, True]) if dts[4] == dts[5] == dts[1] else None


def _layer_norm_backward_job(m: int, n: int, dts: Sequence[str], w_dt: str, mask: list[bool]) -> Job:
    """aten.native_layer_norm_backward: dy, x (m, n), mean, rstd (m, 1) of ``dts``, a
    weight (n,) of ``w_dt``, no bias."""
    argv = [{"$t": 0}, {"$t": 1}, [n], {"$t": 2}, {"$t": 3}, {"$t": 4}, None, mask]
    return _aten_call("native_layer_norm_backward", [(m, n), (m, n), (m, 1), (m, 1), (n,)], [*dts, w_dt], argv)


@register_replay("flag_gems.ops.layer_norm.layer_norm_bwd_dx_kernel")
def _replay_layer_norm_dx(raw: dict) -> Job | None:
    dts = raw["dtypes"]  # DY, X, W (X when absent), Mean, Rstd, DX
    return _layer_norm_backward_job(1, raw["N"], [dts[0], dts[1], dts[3], dts[4]], dts[2], [True, False, False])


@register_replay("flag_gems.ops.layer_norm.layer_norm_bwd_dwdb_kernel")
def _replay_layer_norm_dwdb(raw: dict) -> Job | None:
    # DY, X, Mean, Rstd, then DW and DB in the weight's and the bias's dtypes (the one
    # buffer twice when only one is wanted): a weight's gradient alone
    dts = raw["dtypes"]
    return _layer_norm_backward_job(raw["M"], raw["N"], dts[:4], dts[4], [False, True, False]) if dts[4] == dts[5] else None


def _rms_norm_train_job(m: int, n: int, dt: str) -> Job:
    """rms_norm of (m, n) and its backward, through autograd (rms_norm's own Function: its
    backward is no aten op); the gradient and the weight have x's dtype."""
    return Job("nn_rms_norm", ((m, n),), dt, (("backward", "true"),))


@register_replay("flag_gems.ops.rms_norm.rms_norm_bwd_dx_kernel")
def _replay_rms_norm_dx(raw: dict) -> Job | None:
    dts = raw["dtypes"]  # DY, X, W (X when absent), fp32 Rstd, DX
    if len(set(dts[:3])) != 1:  # a weight of another dtype
        return None
    return _rms_norm_train_job(1, raw["N"], dts[1])


@register_replay("flag_gems.ops.rms_norm.rms_norm_bwd_dw_kernel")
def _replay_rms_norm_dw(raw: dict) -> Job | None:
    dts = raw["dtypes"]  # DY, X, fp32 Rstd, DW (the weight's dtype)
    return _rms_norm_train_job(raw["M"], raw["N"], dts[1]) if dts[0] == dts[1] == dts[3] else None


# flat pointwise kernels that ops run inside themselves (a backward's zeros and casts)
@register_replay("flag_gems.generated.pointwise_copy.copy_t_flat")
def _replay_copy(raw: dict) -> Job | None:
    n, (src, out) = raw["n"], raw["dtypes"][:2]  # a contiguous tensor.to(dtype), or a same-dtype copy
    return _aten_call("_to_copy", [(n,)], [src], [{"$t": 0}], {"dtype": f"torch.{out}"})


@register_replay("flag_gems.generated.pointwise_fill.fill_s_flat")
def _replay_fill(raw: dict) -> Job | None:
    return _aten_job("zero_", (raw["n"],), raw["dtypes"][0])  # out only: a Python scalar fills it


_POINTWISE = re.compile(r"^flag_gems\.generated\.pointwise_(\w+)\.(\w+)_([ts]+)_flat$")
_POINTWISE_OPS = {"add": "add.Tensor", "sub": "sub.Tensor", "mul": "mul.Tensor", "true_div": "div.Tensor"}


def replay_job(kernel: str, raw: dict[str, Any]) -> Job | None:
    """A job that requests the miss's key, or None when this kernel has no replay."""
    fn = REPLAY.get(kernel)
    try:
        if fn is not None:
            return fn(raw)
        m = _POINTWISE.match(kernel)
        if m and m.group(1) in _POINTWISE_OPS:
            n, dts, sig = raw["n"], raw["dtypes"], m.group(3)
            if len(dts) != sig.count("t") + 1:  # the inputs' dtypes, then the output's
                return None
            argv, i = [], 0
            for c in sig:  # a scalar operand ('s') is passed as a Python number
                argv.append({"$t": i} if c == "t" else 2.0)
                i += c == "t"
            return _aten_call(_POINTWISE_OPS[m.group(1)], [(n,)] * i, dts[:i], argv)
    except (KeyError, IndexError, TypeError, StopIteration) as e:
        log.warning("cannot replay a miss of %s from %s: %s", kernel, raw, e)
    return None


def replay_key(kernel: str, key_json: str) -> Job | None:
    """A job whose run requests the stored key ``key_json`` of ``kernel`` (what
    ``gems-tunedb verify`` re-times a stored winner on), or None when the key does not
    map back to a call.

    A stored key holds bucketed values only; the registered LibTuner turns them back into
    raw values where its strategies allow (``LibTuner.raw_from_key``: e.g. N=64 for a
    ``log`` bucket of 33..64, so the call runs at the bucket's upper bound, not
    necessarily at the shape that was tuned), then ``replay_job`` builds the call as for
    a recorded miss.
    """
    from tuner.libtuner import _REGISTRY

    try:
        key = json.loads(key_json)
    except ValueError:
        return None
    if not isinstance(key, list):
        return None
    tuner = next((t for t in reversed(_REGISTRY) if t.name == kernel), None)
    if tuner is not None:
        raw = tuner.raw_from_key(key)
    elif _POINTWISE.match(kernel) and key and isinstance(key[0], int) and not isinstance(key[0], bool):
        # generated on first use, so maybe not registered yet: every flat pointwise
        # kernel is keyed on (log-bucketed n, then the tensors' dtypes)
        raw = {"n": key[0], "dtypes": key[1:]}
    else:
        return None
    return replay_job(kernel, raw) if raw is not None else None


# -- capturing a workload from a recorded run ----------------------------------------------
def _is_tensor_desc(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"shape", "dtype", "stride"}


def _templ(v: Any, tensors: list[dict]) -> Any:
    if _is_tensor_desc(v):
        tensors.append(v)
        return {"$t": len(tensors) - 1}
    if isinstance(v, list):
        return [_templ(x, tensors) for x in v]
    if isinstance(v, dict):
        return {k: _templ(x, tensors) for k, x in v.items()}
    return v


def record_to_ops(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct aten calls of a record (``enable(record=True)``) as workload op entries."""
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        tensors: list[dict] = []
        argv = _templ(line.get("args", []), tensors)
        kwargs = _templ(line.get("kwargs", {}), tensors)
        if not tensors:
            continue
        floats = [t["dtype"] for t in tensors if t["dtype"] in ("float16", "bfloat16", "float32")]
        entry: dict[str, Any] = {
            "op": f"aten.{line['op']}",
            "shapes": [t["shape"] for t in tensors],
            "dtype": floats[0] if floats else "float32",
            "dtypes": [t["dtype"] for t in tensors],
            "strides": [t["stride"] for t in tensors],
            "args": {"argv": argv, **({"kwargs": kwargs} if kwargs else {})},
        }
        key = json.dumps(entry, sort_keys=True)
        if key in out:
            out[key]["repeat"] = out[key].get("repeat", 1) + 1
        else:
            out[key] = entry
    return list(out.values())


def capture_workload(record_jsonl: str | Path, out_yaml: str | Path, name: str | None = None) -> int:
    """Write the distinct op calls of a recorded run as a workload YAML; returns how many."""
    src = Path(record_jsonl)
    lines = [json.loads(s) for s in src.read_text().splitlines() if s.strip()]
    ops = record_to_ops(lines)
    text = dump_ops_yaml(name or f"captured-{src.stem}", ops, description=f"captured from {src.name} ({len(lines)} calls)")
    Path(out_yaml).write_text(text)
    return len(ops)
