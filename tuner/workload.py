"""Shape workloads: what a model runs, as YAML, and the op calls (jobs) derived from it.

A workload either lists op calls directly::

    name: my-shapes
    ops:
      - {op: linear, shapes: [[64, 4096], [4096, 4096]], dtype: bfloat16}

or gives a model's dimensions and token-count ranges, from which every op call of the
model's forward pass (the layer's GEMMs, norms, rope, gated activation, residual adds,
embedding, lm_head, softmax) is derived::

    name: llama-2-7b
    model: {hidden: 4096, intermediate: 11008, heads: 32, kv_heads: 32, head_dim: 128,
            vocab: 32000, dtype: bfloat16}
    tokens: {prefill: [512, 16384], decode: [1, 256]}

Jobs are op calls (op name, input shapes, dtype, extra args), not kernel keys: running a
job under ``FLAGGEMS_AUTOTUNE=miss`` makes every LibTuner the op hits tune the key it
requests, so the tuned keys are by construction the keys inference asks for. Token
ranges expand to one representative token count per reachable bucket: every value where
``log`` bucketing (next power of two) of the token count, or of the token count times
any input's per-token size, changes (see ``token_counts``). See docs/workloads.md.

This module imports neither torch nor flag_gems.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.keys import next_power_of_2

DTYPES = ("float16", "bfloat16", "float32")
Dtype = Literal["float16", "bfloat16", "float32"]
MAX_TOKENS = 1 << 20
DECODE_MAX_M = 256  # flag_gems' GEMM m_class boundary; a power of two, so log buckets never straddle it


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

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
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
    prefill: TokenRange | None = None
    decode: TokenRange | None = None
    # sequence lengths of unfused attention's softmax ([heads, s, s]); default: smallest
    # token count .. prefill max
    attention_seq: TokenRange | None = None

    @model_validator(mode="after")
    def _some(self) -> "Tokens":
        if self.prefill is None and self.decode is None:
            raise ValueError("give a prefill and/or a decode range")
        if self.decode is not None and self.decode.hi > DECODE_MAX_M * 64:
            raise ValueError(f"decode max {self.decode.hi} is implausibly large")
        return self


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
        if self.backward:
            raise ValueError("backward: true is not supported yet (forward-only workloads)")
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


def _linear(t: int, k: int, n: int) -> tuple[str, list[list[int]]]:
    return "linear", [[t, k], [n, k]]


def model_ops(m: ModelSpec, t: int) -> list[tuple[str, list[list[int]], dict[str, Any]]]:
    """The op calls of one forward step over ``t`` tokens (one layer + embedding + head)."""
    h, hd = m.hidden, m.head_dim
    q, kv = m.heads * hd, m.kv_heads * hd
    ops: list[tuple[str, list[list[int]], dict[str, Any]]] = [
        ("embedding", [[m.vocab, h], [t]], {}),
        ("rms_norm", [[t, h]], {"eps": m.rms_eps}),
        ("fused_add_rms_norm", [[t, h], [t, h]], {"eps": m.rms_eps}),
        (*_linear(t, h, q), {}),
        (*_linear(t, h, kv), {}),
        ("rotary", [[t, m.heads, hd], [t, m.kv_heads, hd]], {}),
        (*_linear(t, q, h), {}),
        ("add", [[t, h], [t, h]], {}),
        (*_linear(t, h, m.vocab), {}),
    ]
    if m.experts is None:
        ops += [
            (*_linear(t, h, 2 * m.intermediate), {}),  # merged gate_up projection
            ("silu_and_mul", [[t, 2 * m.intermediate]], {}),
            (*_linear(t, m.intermediate, h), {}),
        ]
    else:  # router + softmax over experts; each expert's GEMMs see between 1 and t tokens
        ops += [(*_linear(t, h, m.experts), {}), ("softmax", [[t, m.experts]], {})]
    return ops


def _expert_ops(m: ModelSpec, t: int) -> list[tuple[str, list[list[int]], dict[str, Any]]]:
    return [
        (*_linear(t, m.hidden, 2 * m.intermediate), {}),
        ("silu_and_mul", [[t, 2 * m.intermediate]], {}),
        (*_linear(t, m.intermediate, m.hidden), {}),
    ]


def _per_token_sizes(ops: list[tuple[str, list[list[int]], dict]]) -> set[int]:
    """Per-token sizes of every token-indexed input (built at t=1: shape[0] == 1)."""
    sizes = set()
    for _, shapes, _ in ops:
        for s in shapes:
            if len(s) >= 1 and s[0] == 1:
                p = 1
                for d in s[1:]:
                    p *= d
                sizes.add(max(p, 1))
    return sizes


def expand(w: Workload) -> list[Job]:
    """Every op call the workload reaches, deduplicated, in a stable order."""
    jobs: dict[Job, None] = {}

    seen: set[Job] = set()

    def add_once(op, shapes, dtype, kw, phase):
        key = Job(op, tuple(tuple(s) for s in shapes), dtype, tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in kw.items())))
        if key in seen:
            return
        seen.add(key)
        jobs[Job(key.op, key.shapes, key.dtype, key.args, phase=phase)] = None

    m, tk = w.model, w.tokens
    if m is not None and tk is not None:
        for phase, rng in (("prefill", tk.prefill), ("decode", tk.decode)):
            if rng is None:
                continue
            templates = [(model_ops, rng.lo)] + ([(_expert_ops, 1)] if m.experts else [])
            for build, lo in templates:  # a routed expert sees between 1 and t tokens
                for i, (_, shapes1, _) in enumerate(build(m, 1)):
                    # this op's own token-indexed inputs decide which counts are distinct
                    for t in token_counts(lo, rng.hi, _per_token_sizes([("", shapes1, {})])):
                        op, shapes, kw = build(m, t)[i]
                        add_once(op, shapes, m.dtype, kw, phase)
        seq = tk.attention_seq
        if seq is None and tk.prefill is not None:  # default: 1 sequence of every token count up to prefill max
            seq = TokenRange(lo=min(r.lo for r in (tk.prefill, tk.decode) if r is not None), hi=tk.prefill.hi)
        if seq is not None:  # attention probabilities of one sequence: [heads, s, s] over the last dim
            for s in token_counts(seq.lo, seq.hi, [m.heads]):
                add_once("softmax", [[m.heads, s, s]], m.dtype, {}, "attention")
    for spec in w.ops:
        job = Job.from_dict(spec.model_dump(exclude_none=True), phase="ops")
        bare = Job(job.op, job.shapes, job.dtype, job.args, job.dtypes, job.strides)
        if bare not in seen:
            seen.add(bare)
            jobs[job] = None
    return list(jobs)


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
