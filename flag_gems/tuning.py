"""The pretune provider: turns workload jobs (op name, shapes, dtype, args) into real
flag_gems calls on this device, replays recorded misses, and captures workloads.

``gems-pretune`` loads this module by name (``tuner.pretune`` never imports flag_gems).
Running a job under ``FLAGGEMS_AUTOTUNE=miss`` makes every LibTuner the op hits tune
exactly the key it requests. Inputs are built outside ``use_gems()`` (so factory kernels
are not tuned for shapes the model never asks for); the op itself runs inside it, through
the same aten dispatch (or fused function) a model uses.

Provider interface (what ``tuner.pretune`` calls):
- ``OPS``: op name -> ``fn(job)``; ``run_job(job)``; ``known_op(name)``
- ``replay_job(kernel, raw_args) -> Job | None``: a job whose run requests the key a
  recorded miss (kernel name + unbucketed key values + dtypes) asked for.
- ``replay_key(kernel, key_json) -> Job | None``: a job whose run requests a stored
  (bucketed) key, where the key maps back to a call (``gems-tunedb verify``).
- ``capture_workload(record_jsonl, out_yaml)``: a workload of the aten calls a recorded
  run made (``flag_gems.enable(record=True, path=...)``).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import flag_gems
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


def _tensor(shape, dtype: torch.dtype, stride=None) -> torch.Tensor:
    """A random tensor (floats), zeros (integers: always-valid indices), random bools."""
    shape = tuple(int(s) for s in shape)
    if stride is not None:
        t = torch.empty_strided(shape, tuple(int(s) for s in stride), dtype=dtype, device=_dev())
    else:
        t = torch.empty(shape, dtype=dtype, device=_dev())
    if dtype.is_floating_point:
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


# -- the ops a model workload derives ------------------------------------------------------
def _linear(job: Job) -> Any:
    """x (M, K) @ weight (N, K)^T, as ``F.linear`` dispatches it (mm on a transposed view)."""
    x, w = _inputs(job)[:2]
    with flag_gems.use_gems():
        return F.linear(x, w)


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
    """q (T, heads, head_dim), k (T, kv_heads, head_dim), a (T, head_dim/2) cos/sin cache."""
    from flag_gems.fused import apply_rotary_pos_emb

    q, k = _inputs(job)[:2]
    t, hd = q.shape[-3], q.shape[-1]
    cos = _tensor((t, hd // 2), q.dtype)
    sin = _tensor((t, hd // 2), q.dtype)
    return apply_rotary_pos_emb(q, k, cos, sin)


def _embedding(job: Job) -> Any:
    """weight (vocab, D), indices (T,) or (B, T)."""
    w = _tensor(job.shapes[0], _dtype(job.dtype))
    idx = torch.randint(0, w.shape[0], tuple(job.shapes[1]), device=_dev())
    with flag_gems.use_gems():
        return F.embedding(idx, w)


def _softmax(job: Job) -> Any:
    (x,) = _inputs(job)[:1]
    with flag_gems.use_gems():
        return torch.softmax(x, dim=job.kwargs.get("dim", -1))


def _add(job: Job) -> Any:
    a, b = _inputs(job)[:2]
    with flag_gems.use_gems():
        return a + b


def _mul(job: Job) -> Any:
    a, b = _inputs(job)[:2]
    with flag_gems.use_gems():
        return a * b


def _cross_entropy(job: Job) -> Any:
    """logits (T, vocab); targets drawn in range."""
    (x,) = _inputs(job)[:1]
    target = torch.randint(0, x.shape[-1], x.shape[:-1], device=_dev())
    with flag_gems.use_gems():
        return F.cross_entropy(x, target)


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
    "softmax": _softmax,
    "add": _add,
    "mul": _mul,
    "cross_entropy": _cross_entropy,
    "sum": _sum,
}


def known_op(name: str) -> bool:
    return name in OPS or name.startswith("aten.")


def run_job(job: Job) -> None:
    fn = _aten if job.op.startswith("aten.") else OPS.get(job.op)
    if fn is None:
        raise KeyError(f"unknown op {job.op!r}; known: {sorted(OPS)} or aten.<op>")
    fn(job)


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
    dts = raw["dtypes"]
    if len(set(dts)) != 1:  # a float32 rstd buffer: aten rms_norm under autograd
        return None
    return Job("rms_norm", ((1, raw["N"]),), dts[0])


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
            return Job(
                f"aten.{_POINTWISE_OPS[m.group(1)]}", tuple((n,) for _ in range(i)), dts[0],
                (("argv", json.dumps(argv)),), dtypes=tuple(dts[:i]),
            )
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
