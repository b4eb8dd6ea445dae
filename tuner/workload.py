"""Shape workloads: what a model runs, as YAML, and the op calls (jobs) derived from it.

A workload either lists op calls directly::

    name: my-shapes
    ops:
      - {op: linear, shapes: [[64, 4096], [4096, 4096]], dtype: bfloat16}

or gives a model's dimensions and token-count ranges, from which every op call of the
model's forward pass (optionally a training step's backward) under flag_gems is derived,
for HF transformers and/or vLLM (``model.style``)::

    name: llama-2-7b
    model: {hidden: 4096, intermediate: 11008, heads: 32, kv_heads: 32, head_dim: 128,
            vocab: 32000, dtype: bfloat16}
    tokens: {prefill: [512, 16384], decode: [1, 256]}

Jobs are op calls (op name, input shapes, dtype, extra args), not kernel keys: running a
job under ``FLAGGEMS_AUTOTUNE=miss`` makes every LibTuner the op hits tune the key it
requests, so the tuned keys are by construction the keys the model asks for. Size ranges
expand to one representative per reachable combination of buckets: ``log`` (next power
of two) of every product of adjacent dims of every tensor a call makes, and ``align32`` of
the dims a GEMM takes as N or K (see ``token_counts`` and ``change_points``). See
docs/workloads.md.

This module imports neither torch nor flag_gems.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.keys import align32, next_power_of_2

DTYPES = ("float16", "bfloat16", "float32")
Dtype = Literal["float16", "bfloat16", "float32"]
Style = Literal["hf", "vllm"]
MAX_TOKENS = 1 << 20
DECODE_MAX_M = 256  # flag_gems' GEMM m_class boundary; a power of two, so log buckets never straddle it
MAX_BATCH = 256  # HF prefill steps are enumerated per batch size


class WorkloadError(ValueError):
    """A workload file that cannot be used: names the file, the line and the field."""


# -- the schema ------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class OpSpec(_Strict):
    """One op call: ``op`` is a provider op name (``linear``, ``rms_norm``, ...) or
    ``aten.<overload>`` (a captured aten call)."""

    op: str = Field(min_length=1, max_length=200)
    shapes: list[list[int]] = Field(default_factory=list, max_length=64)
    dtype: Dtype = "bfloat16"
    dtypes: list[str] | None = None  # per-input dtypes (captured calls: int64 indices, ...)
    strides: list[list[int] | None] | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    repeat: int = Field(default=1, ge=1, le=1_000_000)  # informational: calls per forward

    @field_validator("shapes")
    @classmethod
    def _dims(cls, v: list[list[int]]) -> list[list[int]]:
        for s in v:
            if len(s) > 8:
                raise ValueError("a shape has at most 8 dims")
            for d in s:
                if d < 0 or d > 1 << 40:
                    raise ValueError(f"dim {d} out of range 0..2**40")
        return v

    @model_validator(mode="after")
    def _lengths(self) -> "OpSpec":
        if self.dtypes is not None and len(self.dtypes) != len(self.shapes):
            raise ValueError(f"dtypes has {len(self.dtypes)} entries for {len(self.shapes)} shapes")
        if self.strides is not None and len(self.strides) != len(self.shapes):
            raise ValueError(f"strides has {len(self.strides)} entries for {len(self.shapes)} shapes")
        return self


class ModelSpec(_Strict):
    hidden: int = Field(ge=1, le=1 << 20)
    intermediate: int = Field(ge=1, le=1 << 22)
    heads: int = Field(ge=1, le=4096)
    kv_heads: int = Field(ge=1, le=4096)
    head_dim: int = Field(ge=2, le=4096)
    vocab: int = Field(ge=2, le=1 << 24)
    dtype: Dtype = "bfloat16"
    layers: int | None = Field(default=None, ge=1, le=100_000)  # informational: every layer has the same shapes
    experts: int | None = Field(default=None, ge=1, le=4096)  # MoE: routed experts per layer
    experts_per_token: int | None = Field(default=None, ge=1, le=4096)
    rms_eps: float = Field(default=1e-6, gt=0, lt=1)
    attention_bias: bool = False  # q/k/v projections with a bias (Qwen2)
    # which framework's op calls to derive: HF transformers under flag_gems.enable() (separate
    # q/k/v and gate/up projections, RMSNorm and rotary as aten ops) and/or vLLM with
    # flag_gems' patches (merged qkv and gate_up, fused norm, rotary and silu_and_mul)
    style: list[Style] = Field(default_factory=lambda: ["hf", "vllm"], min_length=1)
    # HF attention: "sdpa" (HF's default; F.scaled_dot_product_attention is no op flag_gems
    # serves) or "eager" (matmul + softmax + matmul through flag_gems)
    attention: Literal["eager", "sdpa"] = "sdpa"

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if len(set(self.style)) != len(self.style):
            raise ValueError(f"style lists a framework twice: {self.style}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even (rotary)")
        if (self.experts is None) != (self.experts_per_token is None):
            raise ValueError("give both experts and experts_per_token, or neither")
        if self.experts is not None and self.experts_per_token > self.experts:
            raise ValueError("experts_per_token cannot exceed experts")
        return self


class TokenRange(_Strict):
    """Token counts (batch * seq) of one phase, inclusive."""

    lo: int = Field(ge=1, le=MAX_TOKENS)
    hi: int = Field(ge=1, le=MAX_TOKENS)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise ValueError("a token range is [min, max]")
            return {"lo": v[0], "hi": v[1]}
        if isinstance(v, int) and not isinstance(v, bool):
            return {"lo": v, "hi": v}
        return v

    @model_validator(mode="after")
    def _order(self) -> "TokenRange":
        if self.lo > self.hi:
            raise ValueError(f"min {self.lo} > max {self.hi}")
        return self


class Tokens(_Strict):
    prefill: TokenRange | None = None  # tokens per prefill step (batch * seq)
    decode: TokenRange | None = None  # tokens per decode step (sequences, one new token each)
    # HF: sequence (KV) lengths attention sees; default 1 .. the largest token count
    attention_seq: TokenRange | None = None
    # HF: sequences per prefill step, [batch, seq] with batch * seq in the prefill range
    batch: TokenRange | None = None

    @model_validator(mode="after")
    def _some(self) -> "Tokens":
        if self.prefill is None and self.decode is None:
            raise ValueError("give a prefill and/or a decode range")
        if self.decode is not None and self.decode.hi > DECODE_MAX_M * 64:
            raise ValueError(f"decode max {self.decode.hi} is implausibly large")
        if self.batch is not None and self.batch.hi > MAX_BATCH:
            raise ValueError(f"batch max {self.batch.hi} is implausibly large (at most {MAX_BATCH})")
        return self

    def seq(self) -> TokenRange:
        """The attention (KV) lengths: ``attention_seq`` or 1 .. the largest token count."""
        if self.attention_seq is not None:
            return self.attention_seq
        return TokenRange(lo=1, hi=max(r.hi for r in (self.prefill, self.decode) if r is not None))


class Workload(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    model: ModelSpec | None = None
    tokens: Tokens | None = None
    backward: bool = False
    ops: list[OpSpec] = Field(default_factory=list, max_length=100_000)

    @model_validator(mode="after")
    def _check(self) -> "Workload":
        if self.model is None and not self.ops:
            raise ValueError("a workload needs a model (with tokens) or a list of ops")
        if self.model is not None and self.tokens is None:
            raise ValueError("a model workload needs tokens: {prefill: [min, max], decode: [min, max]}")
        if self.model is None and self.tokens is not None:
            raise ValueError("tokens given without a model")
        if self.backward:  # a training step: an HF forward + backward over the prefill range
            if self.model is None or self.tokens is None or self.tokens.prefill is None:
                raise ValueError("backward: true derives a training step from a model and tokens.prefill")
            if "hf" not in self.model.style:
                raise ValueError("backward: true needs style hf (vLLM is inference-only)")
        return self


# -- loading with line numbers -----------------------------------------------------------
def _line_at(node: yaml.Node | None, loc: Iterable[Any]) -> int:
    """The 1-based line of the deepest YAML node along a pydantic error location (for a
    mapping value: the line of its key)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if node is None:
            break
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if getattr(k, "value", None) == part:
                    nxt, here = v, k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                nxt = node.value[part]
                here = nxt.start_mark.line + 1
        if nxt is None:
            continue  # a validator-internal location part ("lo" of a [min, max] pair, ...)
        node, line = nxt, here
    return line


def _field_name(loc: Iterable[Any]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def load_text(text: str, source: str = "<string>") -> Workload:
    """Parse and validate a workload; any problem is a ``WorkloadError``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise WorkloadError(f"{source}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    except (ValueError, TypeError, RecursionError) as e:
        raise WorkloadError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}:1: a workload is a mapping (name:, model:/ops:), got {type(data).__name__}")
    try:
        return Workload.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "json-")))]
            line = _line_at(root, loc)
            msgs.append(f"{source}:{line}: {_field_name(loc)}: {err['msg']}")
        raise WorkloadError("\n".join(msgs)) from e


def load(path: str | Path) -> Workload:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise WorkloadError(f"{p}: cannot read workload: {e}") from e
    return load_text(text, str(p))


# -- expansion ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One op call to run (and thereby tune): provider op name, input shapes, dtype."""

    op: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "bfloat16"
    args: tuple[tuple[str, Any], ...] = ()
    dtypes: tuple[str, ...] | None = None
    strides: tuple[tuple[int, ...] | None, ...] | None = None
    phase: str = ""  # prefill / decode / ops: where it came from (informational)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.args}

    def describe(self) -> str:
        shp = " x ".join(str(list(s)) for s in self.shapes)
        extra = f" {self.kwargs}" if self.args else ""
        return f"{self.op}({shp}, {self.dtype}){extra}"

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "shapes": [list(s) for s in self.shapes], "dtype": self.dtype}
        if self.args:
            d["args"] = self.kwargs
        if self.dtypes is not None:
            d["dtypes"] = list(self.dtypes)
        if self.strides is not None:
            d["strides"] = [list(s) if s is not None else None for s in self.strides]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], phase: str = "") -> "Job":
        return cls(
            op=d["op"],
            shapes=tuple(tuple(int(x) for x in s) for s in d.get("shapes", [])),
            dtype=d.get("dtype", "bfloat16"),
            args=tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in (d.get("args") or {}).items())),
            dtypes=tuple(d["dtypes"]) if d.get("dtypes") is not None else None,
            strides=tuple(tuple(s) if s is not None else None for s in d["strides"]) if d.get("strides") is not None else None,
            phase=phase,
        )


def token_counts(lo: int, hi: int, per_token: Iterable[int] = (1,)) -> list[int]:
    """One token count T per distinct combination of ``log`` buckets of ``c * T`` (for
    every ``c`` in ``per_token``; 1 is always included) over ``lo <= T <= hi``.

    Each ``c * T`` is monotone in T and a ``log`` bucket is an interval, so the
    combination only changes where some ``c * T`` crosses a power of two; the smallest T
    after every crossing (plus ``lo``) represents each combination exactly once.
    """
    cs = sorted({1, *(int(c) for c in per_token if int(c) >= 1)})
    cands = {lo}
    for c in cs:
        j = 0
        while (1 << j) < c * hi:
            t = (1 << j) // c + 1  # the smallest T with c*T > 2**j
            if lo <= t <= hi:
                cands.add(t)
            j += 1
    seen: dict[tuple[int, ...], int] = {}
    for t in sorted(cands):
        sig = tuple(next_power_of_2(c * t) for c in cs)
        seen.setdefault(sig, t)
    return sorted(seen.values())


def change_points(lo: int, hi: int, f: Callable[[int], Hashable]) -> list[int]:
    """The smallest ``x`` of every run of equal ``f(x)`` over ``lo <= x <= hi``, for an
    ``f`` returning a tuple whose every component is non-decreasing in ``x`` (bucketed
    sizes that grow with ``x``): then ``f(a) == f(b)`` means ``f`` is constant on
    ``[a, b]``, so bisection finds every change with O(changes * log(range)) calls."""
    if lo > hi:
        return []
    out = [lo]
    stack = [(lo, f(lo), hi, f(hi))]
    while stack:
        a, fa, b, fb = stack.pop()
        if fa == fb:
            continue
        if b == a + 1:
            out.append(b)
            continue
        mid = (a + b) // 2
        fm = f(mid)
        stack += [(a, fa, mid, fm), (mid, fm, b, fb)]
    return sorted(out)


Dim = int | str  # a size, or the name of a variable (b, s, kv) of a step


Terms = tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]


def size_terms(shapes: Iterable[Iterable[Dim]]) -> Terms:
    """The distinct products of every run of adjacent dims of ``shapes`` that depend on a
    variable, grouped by their variables: ((variables, constant factors), ...). What a
    kernel may ``log``-bucket: element counts, row counts, a GEMM's batch or M, one dim."""
    out: dict[tuple[str, ...], set[int]] = {}
    for shape in shapes:
        d = list(shape)
        for i in range(len(d)):
            for j in range(i + 1, len(d) + 1):
                names = tuple(sorted(x for x in d[i:j] if isinstance(x, str)))
                if names:
                    out.setdefault(names, set()).add(math.prod(x for x in d[i:j] if isinstance(x, int)))
    return tuple((names, tuple(sorted(cs))) for names, cs in sorted(out.items()))


def bucket_terms(terms: Terms, env: dict[str, int]) -> tuple[int, ...]:
    """The ``log`` bucket of every term at the variables' values ``env``."""
    out: list[int] = []
    for names, cs in terms:
        p = math.prod(env[n] for n in names)
        # next_power_of_2 inlined (this runs ~10^5 times per workload); every term is >= 1
        out += [1 << (c * p - 1).bit_length() for c in cs]
    return tuple(out)


# -- the op calls of one step ----------------------------------------------------------------
Op = tuple[str, list[list[int]], dict[str, Any]]


def _linear(t: int, k: int, n: int, **kw: Any) -> Op:
    return "linear", [[t, k], [n, k]], kw


def _qkv(m: ModelSpec, t: int, n: int, **kw: Any) -> Op:
    """A q/k/v projection (F.linear with a bias when the model has one)."""
    op, shapes, kw = _linear(t, m.hidden, n, **kw)
    return op, shapes + ([[n]] if m.attention_bias else []), kw


def vllm_ops(m: ModelSpec, t: int) -> list[Op]:
    """One vLLM step over ``t`` tokens (one layer + embedding + head + the sampler) with
    flag_gems' patches: merged qkv and gate_up projections, fused norms, rotary and
    silu_and_mul. The sampler is vLLM's native one (``flag_gems.tuning.vllm_sample``)
    over ``t`` rows: more rows than vLLM samples in a prefill, as for the lm_head."""
    h, hd = m.hidden, m.head_dim
    q = m.heads * hd
    ops: list[Op] = [
        ("embedding", [[m.vocab, h], [t]], {}),
        ("rms_norm", [[t, h]], {"eps": m.rms_eps}),
        ("fused_add_rms_norm", [[t, h], [t, h]], {"eps": m.rms_eps}),
        _qkv(m, t, (m.heads + 2 * m.kv_heads) * hd),  # merged qkv
        ("rotary", [[t, m.heads, hd], [t, m.kv_heads, hd]], {}),
        _linear(t, q, h),
        _linear(t, h, m.vocab),
        ("vllm_sample", [[t, m.vocab]], {}),  # the sampler: cast, argmax, temperature, softmax, ...
    ]
    if m.experts is None:
        ops += [
            _linear(t, h, 2 * m.intermediate),  # merged gate_up
            ("silu_and_mul", [[t, 2 * m.intermediate]], {}),
            _linear(t, m.intermediate, h),
        ]
    else:  # router + softmax over experts; each expert's GEMMs see between 1 and t tokens
        ops += [_linear(t, h, m.experts), ("softmax", [[t, m.experts]], {})]
    return ops


def hf_ops(m: ModelSpec, t: int, train: bool = False) -> list[Op]:
    """The token-wise op calls of one HF transformers step over ``t`` tokens under
    flag_gems.enable(): separate q/k/v and gate/up projections, RMSNorm as HF computes it
    (aten pow, mean, rsqrt, mul: ``hf_rms_norm``), act(gate) * up as aten silu and mul,
    residual adds, embedding, lm_head. ``train``: each with its backward."""
    h, hd = m.hidden, m.head_dim
    kw = {"backward": True} if train else {}
    ops: list[Op] = [
        ("embedding", [[m.vocab, h], [t]], kw),
        ("hf_rms_norm", [[t, h]], {"eps": m.rms_eps, **kw}),
        _qkv(m, t, m.heads * hd, **kw),  # q_proj
        _qkv(m, t, m.kv_heads * hd, **kw),  # k_proj, v_proj
        _linear(t, m.heads * hd, h, **kw),  # o_proj
        ("add", [[t, h], [t, h]], kw),  # residual
        _linear(t, h, m.vocab, **kw),  # lm_head
    ]
    if m.experts is None:
        ops += [
            _linear(t, h, m.intermediate, **kw),  # gate_proj, up_proj
            ("silu", [[t, m.intermediate]], kw),
            ("mul", [[t, m.intermediate], [t, m.intermediate]], kw),
            _linear(t, m.intermediate, h, **kw),  # down_proj
        ]
    else:  # the router; HF's routing (topk, one_hot, index ops) is data-dependent: not derived
        ops += [_linear(t, h, m.experts, **kw)]
    return ops


def expert_ops(m: ModelSpec, t: int, style: str) -> list[Op]:
    """One routed expert's GEMMs over ``t`` of its tokens (and vLLM's gated activation)."""
    ops = [_linear(t, m.hidden, 2 * m.intermediate), _linear(t, m.intermediate, m.hidden)]
    if style == "vllm":
        ops.insert(1, ("silu_and_mul", [[t, 2 * m.intermediate]], {}))
    return ops


def _per_token_sizes(shapes: list[list[int]]) -> set[int]:
    """Per-token sizes of every token-indexed input (built at t=1: shape[0] == 1)."""
    return {max(math.prod(s[1:]), 1) for s in shapes if len(s) >= 1 and s[0] == 1}


def _token_reps(lo: int, hi: int, shapes1: list[list[int]], kw: dict[str, Any], op: str) -> list[int]:
    """The token counts that give ``op`` (built at t=1 as ``shapes1``) distinct buckets:
    ``log`` of t times each per-token size; for a linear's backward also ``align32(t)``
    (the weight gradient dW = dY^T @ X has K = t)."""
    sizes = sorted({1, *_per_token_sizes(shapes1)})
    align = op == "linear" and kw.get("backward", False)
    if not align:
        return token_counts(lo, hi, sizes)
    return change_points(lo, hi, lambda t: (*(next_power_of_2(c * t) for c in sizes), align32(t)))


# -- HF attention steps -----------------------------------------------------------------------
def hf_attention_op(m: ModelSpec, b: int, s: int, past: int, train: bool = False) -> Op:
    """One HF attention step (``hf_attention``): q/k/v projection outputs viewed as
    [batch, seq, heads, head_dim] and a KV cache of ``past`` tokens (its rotary table,
    causal mask, rotary embedding, cache update, attention and output transpose)."""
    H, KV, hd = m.heads, m.kv_heads, m.head_dim
    kw: dict[str, Any] = {"impl": m.attention}
    if train:
        kw["backward"] = True
    return "hf_attention", [[b, s, H, hd], [b, s, KV, hd], [b, s, KV, hd], [b, KV, past, hd]], kw


Sig = Callable[..., tuple]


def attention_terms(m: ModelSpec) -> Terms:
    """What the kernels of an attention step over [b, s] tokens with ``kv`` keys may
    ``log``-bucket: every tensor it makes (q/k/v and their views, rotate_half's halves, the
    KV cache and its GQA repeat, the rotary table; eager: the scores and the causal mask).
    Eager attention also takes seq and kv as a GEMM's N or K (``align32``)."""
    H, KV, hd = m.heads, m.kv_heads, m.head_dim
    shapes: list[list[Dim]] = [
        ["b", "s", H, hd], ["b", H, "s", hd], ["b", H, "s", hd // 2], ["b", KV, "s", hd], ["b", KV, "s", hd // 2],
        ["b", KV, "kv", hd], ["b", KV, H // KV, "kv", hd], ["s", hd], ["s", hd // 2],
    ]
    if m.attention == "eager":
        shapes += [["b", H, "s", "kv"], ["b", 1, "s", "kv"], ["s", "kv"]]
    return size_terms(shapes)


def loss_sig(m: ModelSpec) -> Sig:
    """``sig(b, s)`` of the causal-LM loss: the logits, the labels and them padded by one."""
    terms = size_terms([["b", "s", m.vocab], ["b", "s1"], ["b", "s"]])
    return lambda b, s: bucket_terms(terms, {"b": b, "s": s, "s1": s + 1})


def prefill_steps(tk: Tokens, sig: Sig) -> list[tuple[int, int]]:
    """(batch, seq) of HF prefill steps: batch in ``tokens.batch`` (default 1), seq in the
    attention lengths, batch * seq in the prefill range; one per distinct ``sig(b, s)``."""
    if tk.prefill is None:
        return []
    batch, seq = tk.batch or TokenRange(lo=1, hi=1), tk.seq()
    seen: dict[Hashable, tuple[int, int]] = {}
    for b in range(batch.lo, batch.hi + 1):
        lo, hi = max(seq.lo, -(-tk.prefill.lo // b)), min(seq.hi, tk.prefill.hi // b)
        for s in change_points(lo, hi, lambda s: sig(b, s)):
            seen.setdefault(sig(b, s), (b, s))
    return list(seen.values())


def _runs(starts: list[int], hi: int) -> list[tuple[int, int]]:
    """The runs [start, next start - 1] that ``change_points`` starts describe, up to ``hi``."""
    return list(zip(starts, [x - 1 for x in starts[1:]] + [hi]))


def _factor(u0: int, u1: int, b0: int, b1: int, x0: int, x1: int) -> tuple[int, int] | None:
    """The (b, x) with the smallest b in [b0, b1] x [x0, x1] whose product is in [u0, u1]."""
    for b in range(max(b0, -(-u0 // x1)), min(b1, u1 // x0) + 1):
        x = max(x0, -(-u0 // b))
        if x <= x1 and b * x <= u1:
            return b, x
    return None


def decode_steps(tk: Tokens, terms: Terms, align: bool) -> list[tuple[int, int]]:
    """(batch, kv) of HF decode steps -- batch in the decode range, one new token each over
    a cache of kv - 1 >= 1 tokens, kv in the attention lengths -- one per distinct
    combination of the buckets of ``terms`` (at s = 1) and, with ``align``, ``align32(kv)``.

    With s = 1 every term is c*b, c*kv or c*b*kv. Over each cell where the b-only and
    kv-only buckets are constant, the rest is a function of u = b * kv: one (b, kv) per run
    of it that the cell's products reach. Exact, and linear in what it returns."""
    if tk.decode is None:
        return []
    seq = tk.seq()
    x_lo, x_hi = max(seq.lo, 2), seq.hi
    by: dict[tuple[str, ...], set[int]] = {}
    for names, cs in terms:
        by.setdefault(tuple(n for n in names if n != "s"), set()).update(cs)
    if not set(by) <= {(), ("b",), ("kv",), ("b", "kv")}:
        raise ValueError(f"decode terms must be c*b, c*kv or c*b*kv, got {sorted(by)}")
    B, X, P = (sorted(by.get(k, ())) for k in (("b",), ("kv",), ("b", "kv")))

    def buckets(cs: list[int], v: int) -> tuple[int, ...]:
        return tuple(1 << (c * v - 1).bit_length() for c in cs)

    b_runs = _runs(change_points(tk.decode.lo, tk.decode.hi, lambda b: buckets(B, b)), tk.decode.hi)
    x_runs = _runs(change_points(x_lo, x_hi, lambda x: (*buckets(X, x), align32(x) if align else 0)), x_hi)
    points = []
    for b0, b1 in b_runs:
        for x0, x1 in x_runs:
            for u0, u1 in _runs(change_points(b0 * x0, b1 * x1, lambda u: buckets(P, u)), b1 * x1):
                p = _factor(u0, u1, b0, b1, x0, x1)
                if p is not None:
                    points.append(p)
    return sorted(points)


# -- the jobs of a workload ---------------------------------------------------------------------
class _Jobs:
    """Jobs in a stable order, each op call once (the first phase that derives it wins)."""

    def __init__(self) -> None:
        self.jobs: dict[Job, None] = {}
        self.seen: set[Job] = set()

    def add(self, op: str, shapes: list[list[int]], kw: dict[str, Any], dtype: str, phase: str) -> None:
        args = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in kw.items()))
        key = Job(op, tuple(tuple(x) for x in shapes), dtype, args)
        if key not in self.seen:
            self.seen.add(key)
            self.jobs[Job(key.op, key.shapes, key.dtype, key.args, phase=phase)] = None


def _token_wise(out: _Jobs, m: ModelSpec, phase: str, rng: TokenRange, build: Callable[[int], list[Op]], lo: int) -> None:
    for i, (op, shapes1, kw) in enumerate(build(1)):
        for t in _token_reps(lo, rng.hi, shapes1, kw, op):  # this op's own inputs decide which t are distinct
            op_t, shapes, kw_t = build(t)[i]
            out.add(op_t, shapes, kw_t, m.dtype, phase)


def _model_jobs(out: _Jobs, w: Workload) -> None:
    m, tk = w.model, w.tokens
    assert m is not None and tk is not None
    for phase, rng in (("prefill", tk.prefill), ("decode", tk.decode)):
        if rng is None:
            continue
        for style in m.style:
            build = (lambda t: vllm_ops(m, t)) if style == "vllm" else (lambda t: hf_ops(m, t))
            _token_wise(out, m, phase, rng, build, rng.lo)
            if m.experts is not None:  # a routed expert sees between 1 and t tokens
                _token_wise(out, m, phase, rng, lambda t, st=style: expert_ops(m, t, st), 1)
    if {"hf", "vllm"} <= set(m.style) and tk.prefill is not None:
        # HF with flag_gems' transformers patches, which [hf, vllm] covers: a prefill the
        # patches leave unmerged (over MERGE_QKV_MAX_TOKENS tokens) rotates q and k in a
        # launch each. The rotary key has no token count: one job, at the longest prefill
        t = tk.prefill.hi
        out.add("rotary", [[t, m.heads, m.head_dim], [t, m.kv_heads, m.head_dim]], {"layout": "separate"}, m.dtype, "prefill")
    if "hf" not in m.style:
        return
    terms = attention_terms(m)

    def prefill(b: int, s: int) -> tuple:  # no cache yet: kv = s
        # align32(s): seq is a GEMM's N in eager attention, and in the rotary table of
        # transformers versions that compute it as a matmul ([head_dim/2, 1] x [1, seq])
        return bucket_terms(terms, {"b": b, "s": s, "kv": s}) + (align32(s),)

    for b, s in prefill_steps(tk, prefill):
        out.add(*hf_attention_op(m, b, s, 0), m.dtype, "prefill")
    for b, kv in decode_steps(tk, terms, m.attention == "eager"):
        out.add(*hf_attention_op(m, b, 1, kv - 1), m.dtype, "decode")
    if w.backward:
        _training_jobs(out, m, tk, prefill)


def _training_jobs(out: _Jobs, m: ModelSpec, tk: Tokens, attention: Sig) -> None:
    """A training step's forward + backward (HF): the token-wise calls over the prefill
    range, attention over every prefill step, and the causal-LM loss."""
    assert tk.prefill is not None
    _token_wise(out, m, "train", tk.prefill, lambda t: hf_ops(m, t, train=True), tk.prefill.lo)
    for b, s in prefill_steps(tk, attention):
        out.add(*hf_attention_op(m, b, s, 0, train=True), m.dtype, "train")
    for b, s in prefill_steps(tk, loss_sig(m)):
        out.add("hf_causal_lm_loss", [[b, s, m.vocab]], {}, m.dtype, "train")
    for shape in _weight_shapes(m):  # gradient accumulation over micro-batches: grad = grad + new
        out.add("add", [shape, shape], {}, m.dtype, "train")


def _weight_shapes(m: ModelSpec) -> list[list[int]]:
    """The parameters of an HF decoder (one layer) with embedding and head."""
    h, hd = m.hidden, m.head_dim
    q, kv = m.heads * hd, m.kv_heads * hd
    shapes = [[m.vocab, h], [h], [q, h], [kv, h], [h, q]]
    shapes += [[q], [kv]] if m.attention_bias else []
    if m.experts is None:
        shapes += [[m.intermediate, h], [h, m.intermediate]]
    else:
        shapes += [[m.experts, h]]
    return shapes


def expand(w: Workload) -> list[Job]:
    """Every op call the workload reaches, deduplicated, in a stable order."""
    out = _Jobs()
    if w.model is not None and w.tokens is not None:
        _model_jobs(out, w)
    for spec in w.ops:
        job = Job.from_dict(spec.model_dump(exclude_none=True), phase="ops")
        bare = Job(job.op, job.shapes, job.dtype, job.args, job.dtypes, job.strides)
        if bare not in out.seen:
            out.seen.add(bare)
            out.jobs[job] = None
    return list(out.jobs)


def load_jobs(paths: Iterable[str | Path]) -> list[Job]:
    """Load and validate every workload first (nothing runs if one is bad), then expand."""
    workloads = [load(p) for p in paths]
    out: dict[tuple, Job] = {}
    for w in workloads:
        for j in expand(w):
            out.setdefault((j.op, j.shapes, j.dtype, j.args, j.dtypes, j.strides), j)
    return list(out.values())


def dump_ops_yaml(name: str, ops: list[dict[str, Any]], description: str | None = None) -> str:
    """A workload YAML listing ``ops`` directly (what capture writes)."""
    doc: dict[str, Any] = {"name": name}
    if description:
        doc["description"] = description
    doc["ops"] = ops
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200)
