"""Compile recorded kernel launches for a CUDA target, without a GPU.

Tests run kernels in Triton's interpreter, which executes them as Python: a kernel that
Triton's compiler rejects (a type clash on a branch the interpreter never takes, a
construct the compiler does not support) passes on CPU and fails only on the GPU machine.
``record()`` notes each interpreted launch (the kernel, its arguments' types, its
constexprs and launch options); ``main()``, run in a process *without* the interpreter
(so the kernels are Triton's ``JITFunction``), compiles each one with ``triton.compile``
for ``sm_90`` (ptxas ships with Triton) and prints a JSON report.

    python -m tests.compile_cuda SPECS.json
"""
from __future__ import annotations

import functools
import gc
import importlib
import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

TARGET = ("cuda", 90, 32)  # Hopper: the arch the GPU machine has, TMA and wgmma included
_TORCH_TO_TRITON = {
    "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64",
    "torch.int64": "i64", "torch.int32": "i32", "torch.int16": "i16", "torch.int8": "i8",
    "torch.uint8": "u8", "torch.bool": "i1",
}


def _describe(v: Any) -> dict | None:
    """An argument as JSON: enough to rebuild its Triton type (or constexpr value)."""
    import torch
    import triton.language as tl

    if isinstance(v, torch.Tensor):
        return {"t": str(v.dtype)}
    if isinstance(v, bool):
        return {"b": v}
    if isinstance(v, int):
        return {"i": v}
    if isinstance(v, float):
        return {"f": v}
    if v is None:
        return {"n": None}
    if isinstance(v, tl.dtype):
        return {"tl": str(v)}
    if isinstance(v, str):
        return {"s": v}
    return None  # not rebuildable: the launch is not recorded


@contextmanager
def record() -> Iterator[list[dict]]:
    """Note every interpreted launch inside the block (under ``TRITON_INTERPRET=1``)."""
    from triton.runtime.interpreter import InterpretedFunction

    specs: list[dict] = []
    orig = InterpretedFunction.run

    def run(self, *args, **kwargs):
        spec = _spec(self, args, kwargs)
        if spec is not None:
            specs.append(spec)
        return orig(self, *args, **kwargs)

    InterpretedFunction.run = run
    try:
        yield specs
    finally:
        InterpretedFunction.run = orig


def _spec(jit: Any, args: tuple, kwargs: dict) -> dict | None:
    fn = jit.fn
    values = dict(zip(jit.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in jit.arg_names})
    described = {k: _describe(v) for k, v in values.items()}
    if any(d is None for d in described.values()):
        return None
    options = {k: kwargs[k] for k in ("num_warps", "num_stages") if isinstance(kwargs.get(k), int)}
    return {"module": fn.__module__, "name": fn.__qualname__, "args": described, "options": options}


# -- the compiling side (no interpreter) --------------------------------------------------
_GENERATED = "flag_gems.generated.pointwise_"  # the pointwise generator's kernels: built, not imported


@functools.lru_cache(maxsize=None)  # one scan of the heap per kernel, not per specialization
def _find(module: str, name: str) -> Any:
    """The ``JITFunction`` of a recorded kernel (a tuner's ``.fn`` unwrapped)."""
    from triton.runtime.jit import JITFunction

    if module.startswith(_GENERATED):  # rebuild it: op name, which inputs are tensors, rank
        from flag_gems.registry import load_ops
        from flag_gems.utils.pointwise import Pointwise

        load_ops()
        op = module[len(_GENERATED):]
        sig, layout = name[len(op) + 1:].split("_")
        pw = next(p for p in gc.get_objects() if isinstance(p, Pointwise) and p.name == op)
        found = pw.kernel(tuple(c == "t" for c in sig), 0 if layout == "flat" else int(layout.removeprefix("rank")))
    else:
        importlib.import_module(module)
        found = next(j for j in gc.get_objects()
                     if isinstance(j, JITFunction) and j.fn.__module__ == module and j.fn.__qualname__ == name)
    while not isinstance(found, JITFunction):
        found = found.fn
    return found


def _value(d: dict) -> Any:
    import triton.language as tl

    (kind, v), = d.items()
    return tl.dtype(v) if kind == "tl" else v


def _type(d: dict) -> str:
    (kind, v), = d.items()
    if kind == "t":
        return "*" + _TORCH_TO_TRITON[v]
    if kind == "b":
        return "i1"
    if kind == "i":
        return "i32" if -2**31 <= v < 2**31 else "i64"
    if kind == "f":
        return "fp32"
    raise ValueError(f"no runtime type for {d}")


def compile_one(spec: dict) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = _find(spec["module"], spec["name"])
    signature, constexprs = {}, {}
    for i, p in enumerate(jit.params):
        d = spec["args"].get(p.name)
        if d is None:  # not passed: its default
            d = _describe(p.default)
        if p.is_constexpr or "n" in d:
            signature[p.name] = "constexpr"
            constexprs[(i,)] = _value(d)
        else:
            signature[p.name] = _type(d)
    src = ASTSource(fn=jit, signature=signature, constexprs=constexprs)
    triton.compile(src, target=GPUTarget(*TARGET), options=spec["options"] or None)


def main(path: str) -> int:
    specs = json.load(open(path))
    seen, report = set(), {"compiled": [], "failed": []}
    for spec in specs:
        key = json.dumps(spec, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        label = f"{spec['module']}.{spec['name']}"
        try:
            compile_one(spec)
            report["compiled"].append(label)
        except Exception as e:  # report every failure, not only the first
            report["failed"].append({"kernel": label, "args": spec["args"], "error": f"{type(e).__name__}: {str(e)[-600:]}"})
    print(json.dumps(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
