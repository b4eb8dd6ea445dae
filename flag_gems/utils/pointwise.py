"""A generator of N-ary pointwise Triton kernels.

    @triton.jit
    def _add(a, b, alpha):
        return a + alpha * b

    add = Pointwise("add", _add, promote=(0, 1))
    add(x, y, 2.0)                 # broadcasting, strides, promotion, a new output
    add(x, y, 2.0, out=x)          # out= / in place

Every argument of the scalar function is a tensor or a Python scalar at call time. The
launcher broadcasts the tensors, picks the output dtype with torch's promotion rules
(over the ``promote`` arguments), casts each loaded value to the compute dtype (fp32 for
half types, the natural type otherwise) and stores the result, which casts it to the
output dtype.

Indexing: dims of size 1 are dropped, the rest are ordered by the output's strides and
adjacent dims that are contiguous in *every* operand are merged (as TensorIterator does).
If one dim with unit strides remains, a flat 1-D kernel runs; otherwise a kernel for that
rank decomposes the flat index into per-dim indices and per-operand strided offsets, so
transposed, sliced and broadcast inputs are read in place, without copies. Offsets are
int32 unless an operand can reach 2**31 elements.

The hot path: a call whose tensor operands are all contiguous, of one (non-0-d) shape and
on one device, with Python scalars for the rest and no ``out=``, skips all of the above. Its
decisions (output and compute dtype, the flat kernel, the per-argument load casts) are
looked up in a dict keyed by the argument dtypes / scalar types, so a call costs the
checks, one ``empty_like`` and the launch. Everything else takes the general path, whose
dtype promotion is memoized the same way.

Kernel source is generated per (op, which arguments are tensors, rank), exec'd once and
cached; its text is registered with ``linecache`` so Triton (and the tuner's kernel hash)
can read it like any other source.
"""
from __future__ import annotations

import functools
import linecache
import logging
import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from flag_gems.registry import Unsupported
from tuner import launch as _launch
from tuner.launch import int_spec
from tuner.libtuner import libtuner

log = logging.getLogger(__name__)

Scalar = bool | int | float

TL_DTYPES: dict[torch.dtype, Any] = {
    torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64,
    torch.int8: tl.int8, torch.int16: tl.int16, torch.int32: tl.int32, torch.int64: tl.int64,
    torch.uint8: tl.uint8, torch.bool: tl.int1,
}
HALF = (torch.float16, torch.bfloat16)
INT32_MAX = 2**31 - 1
EXACT_LIMIT = 4096  # exact-size direct launches kept per op

# Memory-bound kernels: a few block sizes; 1024 x 4 warps (8 fp32 per thread) is a good
# default on a big GPU.
CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((512, 4), (1024, 4), (1024, 8), (2048, 8), (4096, 8), (8192, 16))]
DEFAULT = triton.Config({"BLOCK": 1024}, num_warps=4)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: fp32 for half types, int8 for bool (True + True is
    True, not an int1 overflow), the natural type otherwise."""
    if dtype in HALF:
        return torch.float32
    return torch.int8 if dtype == torch.bool else dtype


# -- promotion rules: (dtypes of args, promoted dtype) -> (output dtype, compute dtype) ---
def _rule_default(args: Sequence[Any], promoted: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    return promoted, compute_dtype(promoted)


def _rule_int_to_float(args: Sequence[Any], promoted: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    out = promoted if promoted.is_floating_point else torch.get_default_dtype()
    return out, compute_dtype(out)


def _rule_bool(args: Sequence[Any], promoted: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    return torch.bool, compute_dtype(promoted)


def _rule_first(args: Sequence[Any], promoted: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    dtype = args[0].dtype
    return dtype, compute_dtype(dtype)


RULES: dict[str, Callable] = {"default": _rule_default, "int_to_float": _rule_int_to_float, "bool": _rule_bool, "first": _rule_first}


# -- source generation ------------------------------------------------------------------
def _kernel_source(kname: str, is_tensor: Sequence[bool], rank: int) -> str:
    """Triton source of one kernel. rank 0 means the flat, all-contiguous kernel."""
    n_in = len(is_tensor)
    tensors = [f"in{i}" for i in range(n_in) if is_tensor[i]] + ["out0"]
    params = [f"in{i}" for i in range(n_in)] + ["out0", "n"]
    params += [f"s{d}" for d in range(rank)]
    params += [f"st_{t}_{d}" for t in tensors for d in range(rank)]
    params += [f"C{i}: tl.constexpr" for i in range(n_in)] + ["OUT_BOOL: tl.constexpr", "INT64: tl.constexpr", "BLOCK: tl.constexpr"]
    body = [
        "pid = tl.program_id(0)",
        "if INT64:",
        "    pid = pid.to(tl.int64)",
        "offs = pid * BLOCK + tl.arange(0, BLOCK)",
        "mask = offs < n",
    ]
    if rank == 0:
        offset = {t: "offs" for t in tensors}
    else:
        body.append("rem = offs")
        for d in range(rank - 1, 0, -1):
            body += [f"i{d} = rem % s{d}", f"rem = rem // s{d}"]
        body.append("i0 = rem")
        for t in tensors:
            body.append(f"o_{t} = " + " + ".join(f"i{d} * st_{t}_{d}" for d in range(rank)))
        offset = {t: f"o_{t}" for t in tensors}
    args = []
    for i in range(n_in):
        if is_tensor[i]:
            body.append(f"v{i} = tl.load(in{i} + {offset[f'in{i}']}, mask=mask).to(C{i})")
        else:
            body.append(f"v{i} = tl.full((BLOCK,), in{i}, C{i})")
        args.append(f"v{i}")
    body.append(f"r = scalar_fn({', '.join(args)})")
    body += ["if OUT_BOOL:", "    r = r != 0"]
    body.append(f"tl.store(out0 + {offset['out0']}, r, mask=mask)")
    lines = [
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@libtuner(configs=CONFIGS, key=['n'], strategy=['log'], default=DEFAULT)",
        "@triton.jit",
        f"def {kname}({', '.join(params)}):",
    ] + [f"    {b}" for b in body]
    return "\n".join(lines) + "\n"


def _build_kernel(op_name: str, scalar_fn: Any, is_tensor: tuple[bool, ...], rank: int) -> Any:
    sig = "".join("t" if t else "s" for t in is_tensor)
    kname = f"{op_name}_{sig}_{'flat' if rank == 0 else f'rank{rank}'}"
    module = f"flag_gems.generated.pointwise_{op_name}"
    src = _kernel_source(kname, is_tensor, rank)
    filename = f"<flag_gems.pointwise:{kname}>"
    # mtime None: linecache.checkcache never evicts the entry (there is no file on disk).
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    ns: dict[str, Any] = {"__name__": module, "scalar_fn": scalar_fn, "libtuner": libtuner, "CONFIGS": CONFIGS, "DEFAULT": DEFAULT}
    exec(compile(src, filename, "exec"), ns)
    log.debug("generated pointwise kernel %s", kname)
    return ns[kname]


# -- launcher helpers -------------------------------------------------------------------
def _collapse(shape: Sequence[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims, order dims by the output's strides (the last operand), merge
    dims contiguous in every operand. Returns the new shape and per-operand strides."""
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    out_st = strides[-1]
    dims.sort(key=lambda d: -out_st[d])  # stable: ties keep their order
    new_shape: list[int] = []
    new_st: list[list[int]] = [[] for _ in strides]
    for d in dims:
        if new_shape and all(st[d] * shape[d] == ns[-1] for st, ns in zip(strides, new_st)):
            new_shape[-1] *= shape[d]
            for st, ns in zip(strides, new_st):
                ns[-1] = st[d]
            continue
        new_shape.append(shape[d])
        for st, ns in zip(strides, new_st):
            ns.append(st[d])
    return new_shape, new_st


def _needs_int64(numel: int, shape: Sequence[int], strides: list[list[int]]) -> bool:
    if numel > INT32_MAX:
        return True
    return any(sum((s - 1) * abs(st) for s, st in zip(shape, sts)) > INT32_MAX for sts in strides)


def _arg_dtype(x: Any) -> torch.dtype:
    if isinstance(x, torch.Tensor):
        return x.dtype
    if isinstance(x, bool):
        return torch.bool
    return torch.int64 if isinstance(x, int) else torch.float64


_Tensor = torch.Tensor
_get_default_dtype = torch.get_default_dtype
_SCALAR_TYPES = (bool, int, float)
_BOOL = torch.bool
_NO_PLAN = object()  # a signature whose fast-path plan was not built yet


class Pointwise:
    """A pointwise op built from a ``triton.jit`` scalar function.

    ``promote``: indices of the arguments that take part in dtype promotion (default:
    all); the others are loaded as they are (fp32 for half types), e.g. ``where``'s
    condition or ``add``'s alpha. ``rule``: how the output dtype follows from the
    promoted dtype: "default", "int_to_float", "bool" or "first" (the first argument's
    dtype, as masked_fill)."""

    def __init__(self, name: str, scalar_fn: Any, *, promote: Sequence[int] | None = None, rule: str = "default",
                 out_checks: tuple[str, ...] = ("cast", "overlap")) -> None:
        self.name = name
        # torch's checks of a given ``out`` (see _check_out): a copy casts into any dtype,
        # a fill also writes an expanded tensor
        self.cast_check, self.overlap_check = "cast" in out_checks, "overlap" in out_checks
        self.scalar_fn = scalar_fn
        self.n_in = len(scalar_fn.arg_names)
        self.promote = tuple(range(self.n_in)) if promote is None else tuple(promote)
        self.rule = RULES[rule]
        self._kernels: dict[tuple, Any] = {}
        # (out_dtype, default dtype, dtype or scalar type of each argument) -> the fast
        # path's plan (see _plan), or None where that signature takes the general path
        self._plans: dict[tuple, Any] = {}
        # (default dtype, (dtype, 0-d?) or scalar type of each argument) -> dtypes()
        self._dtypes: dict[tuple, tuple[torch.dtype, torch.dtype]] = {}
        # (plan key, numel's log bucket, numel 16-divisible[, a given output's dtype]: see
        # _bucket_key) -> _Direct, or None where the kernel was not kept (the interpreter);
        # for all-aligned tensors. General-path keys (see _general_key) share the dict.
        self._direct: dict[tuple, Any] = _launch.direct_cache()
        # (out_dtype, default dtype, each argument's dtype or scalar type, numel[, a given
        # output's dtype]) -> (the runner of its grid, consts, odt, fn, and the Bound's
        # device, current_device, current_stream): the hot path's one lookup, filled from
        # _direct by _from_bucket
        self._exact: dict[tuple, tuple] = _launch.direct_cache()

    def kernel(self, is_tensor: tuple[bool, ...], rank: int) -> Any:
        key = (is_tensor, rank)
        k = self._kernels.get(key)
        if k is None:
            k = self._kernels[key] = _build_kernel(self.name, self.scalar_fn, is_tensor, rank)
        return k

    def dtypes(self, args: Sequence[Any]) -> tuple[torch.dtype, torch.dtype]:
        """(output dtype, compute dtype) of a call with ``args``; memoized per signature
        (each tensor's dtype and whether it is 0-d, each scalar's type)."""
        key = [_get_default_dtype()]
        for a in args:
            if isinstance(a, _Tensor):
                key.append((a.dtype, a.dim() == 0))
            elif type(a) in _SCALAR_TYPES:
                key.append(type(a))
            else:  # something unusual (a numpy scalar, complex, None): no memo
                return self.rule(args, _promote([args[i] for i in self.promote]))
        key = tuple(key)
        r = self._dtypes.get(key)
        if r is None:
            r = self._dtypes[key] = self.rule(args, _promote([args[i] for i in self.promote]))
        return r

    def __call__(self, *args: Any, out: torch.Tensor | None = None, out_dtype: torch.dtype | None = None, compute: torch.dtype | None = None) -> torch.Tensor:
        """Apply the op. ``out``: write there (resized if its shape differs; in-place ops
        pass an input; with no tensor argument, fills ``out``). ``out_dtype``: the dtype of
        a new output instead of the rule's. ``compute``: the arithmetic dtype instead of
        the rule's."""
        if len(args) != self.n_in:
            raise TypeError(f"{self.name} takes {self.n_in} arguments, got {len(args)}")
        if compute is None:
            # -- the fast path: contiguous tensors of one shape, Python scalars (see _plan)
            t0 = None
            ptrs = 0  # every tensor's address OR-ed: 16-byte aligned iff all are
            key = [out_dtype, _get_default_dtype()]
            for a in args:
                if isinstance(a, _Tensor):  # subclasses too (a Parameter is a tensor, not a scalar)
                    if t0 is None:
                        t0, shape = a, a.shape
                    elif a.shape != shape:
                        break
                    if not a.is_contiguous():
                        break
                    key.append(a.dtype)
                    ptrs |= a.data_ptr()
                elif type(a) is int:  # its specialization (1, 16-divisible, width), as Triton's
                    key.append(int_spec(a))
                else:
                    key.append(type(a))
            else:
                if t0 is not None and shape:
                    numel = t0.numel()
                    # -- the direct launch: this signature's kept kernel, no tuner, no launcher
                    ekey = None
                    if 0 < numel <= INT32_MAX and not ptrs & 15:
                        key.append(numel)
                        if out is None:
                            ekey = tuple(key)
                        elif isinstance(out, _Tensor) and out.shape == shape and out.is_contiguous() and not out.data_ptr() & 15:
                            key.append(out.dtype)  # out= / in place: the output's dtype too
                            ekey = tuple(key)
                        if ekey is not None:
                            hit = self._exact.get(ekey) or self._from_bucket(ekey, len(args) + 2)
                            if hit is not None:
                                run, consts, odt, fn, device, current_device, current_stream = hit
                                if current_device() == device:  # (Bound.stream, inline: this is the hot path)
                                    dst = out if out is not None else _empty_like(t0) if odt is None else _empty_like(t0, dtype=odt)
                                    if not dst.data_ptr() & 15:  # always, from torch's allocators
                                        run(*args, dst, numel, *consts, stream=current_stream(device))
                                        if _launch.observer is not None:
                                            _launch.observer(fn)
                                        return dst
                    key = tuple(key[:len(args) + 2])  # the signature: dtypes and scalar types
                    plan = self._plans.get(key, _NO_PLAN)
                    if plan is _NO_PLAN:
                        plan = self._plans[key] = self._plan(args, out_dtype)
                    if plan is not None:
                        odt, kernel, casts, same_dtype, out_bool, int_checks = plan
                        fast = True
                        for i in int_checks:  # an int scalar loaded as itself: int32 or int64
                            if args[i] > INT32_MAX or args[i] < -INT32_MAX:
                                fast = False
                        if out is None:
                            if fast:
                                out = _empty_like(t0) if same_dtype else _empty_like(t0, dtype=odt)
                        elif isinstance(out, _Tensor) and out.shape == shape and out.is_contiguous():
                            _check_out(out, odt if self.cast_check else None, False)  # (contiguous: no overlap)
                            out_bool = out_bool or out.dtype == _BOOL  # (a bool result into a wider out: 1, not 2)
                        else:
                            fast = False
                        if fast:
                            if numel:
                                call = (*args, out, numel, *casts, out_bool, numel > INT32_MAX)
                                kernel.run(*call, grid=lambda meta: ((numel + meta["BLOCK"] - 1) // meta["BLOCK"],))
                                if ekey is not None:
                                    self._direct[_bucket_key(ekey, len(args) + 2)] = _direct(kernel, call, self.n_in, None if same_dtype else odt)
                            return out
        # -- the general path; a repeat of a call it launched before relaunches directly
        gkey = _general_key(args, out, out_dtype, compute)
        if gkey is not None:
            hit = self._direct.get(gkey)
            if hit is not None:
                done = self._relaunch(hit, args, out)
                if done is not None:
                    return done
        if any(isinstance(a, _Tensor) and a.dtype not in TL_DTYPES or type(a) is complex for a in args):
            raise Unsupported(f"{self.name}: no flag_gems kernel for these dtypes")
        rule_out, rule_compute = self.dtypes(args)
        compute = compute or rule_compute
        odt = out_dtype or rule_out
        if compute not in TL_DTYPES or (out.dtype if out is not None else odt) not in TL_DTYPES:
            raise Unsupported(f"{self.name}: no flag_gems kernel for {compute} arithmetic into {odt}")
        if out is not None:
            _check_out(out, rule_out if self.cast_check else None, self.overlap_check)
        tensors = [a for a in args if isinstance(a, _Tensor)]
        if tensors:
            shape = _broadcast_shape(tensors)
        else:
            shape = out.shape if out is not None else torch.Size()
        if out is None:
            out = _new_output(tensors, shape, odt)
        elif out.shape != shape:
            if any(a is out for a in args):
                raise RuntimeError(f"{self.name}: output with shape {list(out.shape)} doesn't match the broadcast shape {list(shape)}")
            out.resize_(shape)
            gkey = None  # resized: its key described the old shape
        if out.numel() == 0:
            return out
        kernel, call = self.launch(args, out, compute, rule_out == _BOOL)
        if gkey is not None and all(c is a for c, a in zip(call, args)):  # no argument converted
            self._direct[gkey] = _direct(kernel, call, self.n_in, None if gkey[-1] is _GIVEN else odt, shape)
        return out

    def _from_bucket(self, ekey: tuple, n_sig: int) -> tuple | None:
        """The direct launch of a fast-path call whose exact key (see __call__) is new, from
        what a launch of the same signature in its tuner bucket kept (the same kernel and
        config); filed under the exact key, whose runner fixes the grid. None if nothing."""
        found = self._direct.get(_bucket_key(ekey, n_sig))
        if found is None:
            return None
        numel = ekey[n_sig]
        bound, consts, block, odt, fn = found[:5]
        hit = (bound.runner(((numel + block - 1) // block, 1, 1)), consts, odt, fn, bound.device, bound.current_device, bound.current_stream)
        if len(self._exact) >= EXACT_LIMIT:  # many sizes (prefill lengths): keep the recent ones
            self._exact.clear()
        self._exact[ekey] = hit
        return hit

    def _relaunch(self, hit: "_Direct", args: Sequence[Any], out: torch.Tensor | None) -> torch.Tensor | None:
        """The general path's direct relaunch of a filed call (see _general_key); None
        where it cannot (another device, an unaligned new output)."""
        bound, consts, _, odt, fn, shape, like, numel, run, alloc = hit
        device = bound.device
        if bound.current_device() != device:
            return None
        if out is None:  # as the first call made it (its layout follows from the key)
            if like < 0:  # no tensor to place it by (not filed by a call that needed one)
                return None
            src = args[like]
            out = _empty_like(src) if alloc == _LIKE else _empty_like(src, dtype=odt) if alloc == _LIKE_AS else torch.empty(size=shape, dtype=odt, device=src.device)
            if out.data_ptr() & 15:
                return None
        run(*args, out, numel, *consts, stream=bound.current_stream(device))
        if _launch.observer is not None:
            _launch.observer(fn)
        return out

    def _plan(self, args: Sequence[Any], out_dtype: torch.dtype | None) -> tuple | None:
        """The fast path's decisions for the signature of ``args`` (contiguous tensors of
        one shape, the rest scalars): (output dtype, flat kernel, load casts, output dtype
        is the first tensor's?, bool output?, indices of int scalars whose load type depends
        on their value), or
        None where the general path must run (unusual scalars or dtypes, a float scalar in
        fp64 arithmetic)."""
        if any(not isinstance(a, _Tensor) and type(a) not in _SCALAR_TYPES for a in args):
            return None
        if any(isinstance(a, _Tensor) and a.dtype not in TL_DTYPES for a in args):
            return None
        rule_out, compute = self.dtypes(args)
        odt = out_dtype or rule_out
        if compute not in TL_DTYPES or odt not in TL_DTYPES:
            return None
        if compute == torch.float64 and any(type(a) is float for a in args):
            return None  # passed as a 0-d fp64 tensor (_as_operand): general path
        promote = self.promote
        casts = tuple(_cast_dtype(a, compute, i in promote) for i, a in enumerate(args))
        wide = compute in (torch.float64, torch.int64)
        int_checks = tuple(i for i, a in enumerate(args) if type(a) is int and i not in promote and not wide)
        if int_checks:  # the casts above were computed for these values; make them int32
            casts = tuple(tl.int32 if i in int_checks else c for i, c in enumerate(casts))
        kernel = self.kernel(tuple(isinstance(a, _Tensor) for a in args), 0)
        first = next(a for a in args if isinstance(a, _Tensor))
        return odt, kernel, casts, odt == first.dtype, odt == torch.bool, int_checks

    def launch(self, args: Sequence[Any], out: torch.Tensor, compute: torch.dtype, bool_result: bool = False) -> tuple[Any, tuple]:
        """The general path's launch: (the kernel, the arguments it was called with).
        ``bool_result``: the op's result is a bool, whatever ``out``'s dtype (True + True
        written to an int64 ``out`` is 1)."""
        args = [_as_operand(a, out, compute, i in self.promote) for i, a in enumerate(args)]
        is_tensor = tuple(isinstance(a, _Tensor) for a in args)
        rank, extra, int64 = _layout(out.shape, out.stride(), tuple((a.shape, a.stride()) for a in args if isinstance(a, _Tensor)))
        numel = out.numel()
        casts = [_cast_dtype(a, compute, i in self.promote) for i, a in enumerate(args)]
        kernel = self.kernel(is_tensor, rank)
        call = (*args, out, numel, *extra, *casts, bool_result or out.dtype == torch.bool, int64)
        kernel.run(*call, grid=lambda meta: ((numel + meta["BLOCK"] - 1) // meta["BLOCK"],))
        return kernel, call


_empty_like = torch.empty_like


class _Direct(NamedTuple):
    """A filed call's compiled kernel, relaunched without the tuner's and the launcher's
    per-call keys: its direct key (the fast path's signature, numel's bucket and
    16-divisibility; or the general path's _general_key) covers both, with every operand
    aligned, so neither could decide differently."""

    bound: Any  # tuner.launch.Bound: the compiled kernel, its device
    consts: tuple  # the arguments after numel: (the general path's shape and strides,) load casts, OUT_BOOL, INT64, the config's
    block: int
    odt: torch.dtype | None  # a new output's dtype; None: the first tensor's (fast path) or out= given (general)
    fn: Any  # the jit function (tuner.launch.observer reports it)
    shape: torch.Size | None  # the general path's broadcast shape; None: the call's own (fast path)
    like: int  # the general path's new output: empty_like of this argument where its shape is the output's, else torch.empty on its device (as _new_output); -1: no tensor argument
    numel: int = 0  # the general path's output elements, and the runner of its grid (both fixed by its key)
    run: Any = None
    alloc: int = 0  # the general path's new output: _LIKE, _LIKE_AS or _SHAPED (fixed by its key)


# how the general path's relaunch allocates a new output: empty_like(args[like]) (same shape
# and dtype), the same with dtype=odt, or torch.empty of its shape on args[like]'s device
_LIKE, _LIKE_AS, _SHAPED = 0, 1, 2


def _direct(kernel: Any, call: tuple, n_in: int, odt: torch.dtype | None, shape: torch.Size | None = None) -> _Direct | None:
    """What the launch of ``call`` just kept, for direct relaunches; None if nothing."""
    found = kernel.kept(call, {})
    if found is None:
        return None
    bound, cfg = found
    block, consts = cfg["BLOCK"], (*call[n_in + 2:], *bound.kept.tail)
    if shape is None:
        return _Direct(bound, consts, block, odt, kernel.fn, None, 0)
    # the general path: the argument _new_output allocates like (-1: none, out= given)
    tensors = [i for i, a in enumerate(call[:n_in]) if isinstance(a, _Tensor)]
    like = next((i for i in tensors if call[i].shape == shape), tensors[0] if tensors else -1)
    alloc = _SHAPED if like < 0 or call[like].shape != shape else _LIKE if call[like].dtype == odt else _LIKE_AS
    numel = shape.numel()
    run = bound.runner(((numel + block - 1) // block, 1, 1))
    return _Direct(bound, consts, block, odt, kernel.fn, shape, like, numel, run, alloc)


def _bucket_key(ekey: tuple, n_sig: int) -> tuple:
    """A fast-path call's key in the tuner's terms: the exact key's signature, numel's log
    bucket and 16-divisibility (what the tuner and the launcher key on), a given output's
    dtype."""
    numel = ekey[n_sig]
    return (ekey[:n_sig], (numel - 1).bit_length(), not numel & 15, *ekey[n_sig + 1:])


_GIVEN = object()  # a general key's last item where the call gave ``out``


def _general_key(args: Sequence[Any], out: torch.Tensor | None, out_dtype: torch.dtype | None, compute: torch.dtype | None) -> tuple | None:
    """A general-path call's key for direct relaunches: every tensor's dtype, shape and
    strides, every scalar's type (an int's specialization, as Triton's), a given output's
    layout, the dtype arguments. That fixes the layout, the kernel, its casts and its
    config. None where the launch depends on more (a 0-d tensor's value, an unusual
    scalar) or an operand is not 16-byte aligned."""
    key: list = [out_dtype, compute, _get_default_dtype()]
    ptrs = 0
    for a in args:
        if isinstance(a, _Tensor):
            shape = a.shape
            if not shape:
                return None
            key.append((a.dtype, shape, a.stride()))
            ptrs |= a.data_ptr()
        elif type(a) is int:
            key.append(int_spec(a))
        elif type(a) is float or type(a) is bool:
            key.append(type(a))
        else:
            return None
    if out is not None:
        key += [(out.dtype, out.shape, out.stride()), _GIVEN]
        ptrs |= out.data_ptr()
    return None if ptrs & 15 else tuple(key)


@functools.lru_cache(maxsize=4096)  # a model repeats its few broadcast layouts every step
def _layout(shape: torch.Size, out_stride: tuple[int, ...], operands: tuple[tuple[torch.Size, tuple[int, ...]], ...]) -> tuple[int, tuple[int, ...], bool]:
    """How a kernel walks ``operands`` (shape, strides) broadcast to an output of ``shape``
    and ``out_stride``: its rank (0: one flat index), the collapsed shape and per-operand
    strides it takes as arguments, and whether offsets need int64."""
    strides = [_expanded_strides(s, st, shape) for s, st in operands]
    strides.append(list(out_stride))
    cshape, cstrides = _collapse(shape, strides)
    if len(cshape) == 0 or (len(cshape) == 1 and all(s[0] == 1 for s in cstrides)):
        return 0, (), _needs_int64(shape.numel(), cshape, cstrides)
    return len(cshape), (*cshape, *(s for sts in cstrides for s in sts)), _needs_int64(shape.numel(), cshape, cstrides)


def _broadcast_shape(tensors: Sequence[torch.Tensor]) -> torch.Size:
    """torch.broadcast_shapes of the tensors' shapes; equal shapes cost one compare."""
    shape = tensors[0].shape
    for t in tensors[1:]:
        s = t.shape
        if s == shape:
            continue
        n = max(len(s), len(shape))
        a = (1,) * (n - len(shape)) + tuple(shape)
        b = (1,) * (n - len(s)) + tuple(s)
        merged = []
        for x, y in zip(a, b):
            if x == y or y == 1:
                merged.append(x)
            elif x == 1:
                merged.append(y)
            else:  # torch's own error message
                return torch.broadcast_shapes(*(t.shape for t in tensors))
        shape = torch.Size(merged)
    return shape


def _expanded_strides(ts: Sequence[int], st: Sequence[int], shape: Sequence[int]) -> list[int]:
    """The strides of a tensor of shape ``ts`` and strides ``st`` expanded to ``shape``
    (``t.expand(shape).stride()``, without making the view)."""
    if ts == shape:
        return list(st)
    pad = len(shape) - len(ts)
    return [0] * pad + [0 if ts[i] == 1 and shape[pad + i] != 1 else st[i] for i in range(len(ts))]


def _check_out(out: torch.Tensor, result: torch.dtype | None, overlap: bool) -> None:
    """torch's checks of an ``out=`` tensor: it can hold the ``result`` dtype, and (with
    ``overlap``) no two of its elements share memory (an expanded tensor)."""
    if result is not None and not torch.can_cast(result, out.dtype):
        raise RuntimeError(f"result type {_dtype_name(result)} can't be cast to the desired output type {_dtype_name(out.dtype)}")
    if overlap:
        check_no_internal_overlap(out)


def check_no_internal_overlap(t: torch.Tensor) -> None:
    """torch's error for a write into a tensor whose elements share memory (expanded)."""
    if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
        raise RuntimeError("unsupported operation: more than one element of the written-to tensor refers to a single memory location. "
                           "Please clone() the tensor before performing the operation.")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checked_scalar(value: Any, dtype: torch.dtype) -> Any:
    """A Python ``value`` to store into ``dtype`` elements (a fill, a pad, a scatter value):
    truthiness for bool, and torch's error where it does not fit (c10's ``overflows``:
    infinities and NaN fit a float dtype; an unsigned dtype takes a negative int of its
    width, which wraps). Tensors and other types pass unchanged."""
    if isinstance(value, torch.Tensor) or dtype.is_complex:
        return value
    if dtype == torch.bool:
        return bool(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if dtype.is_floating_point:
        top = torch.finfo(dtype).max
        bad = isinstance(value, float) and math.isfinite(value) and abs(value) > top or isinstance(value, int) and abs(value) > top
    else:
        info = torch.iinfo(dtype)
        if isinstance(value, float):
            bad = not info.min <= value <= info.max  # (NaN and infinities too)
        elif info.min == 0:
            bad = value > info.max or -value > info.max
        else:
            bad = not info.min <= value <= info.max
    if bad:
        raise RuntimeError(f"value cannot be converted to type {_dtype_name(dtype)} without overflow")
    return value


def inplace(op: Pointwise, self: torch.Tensor, *args: Any) -> torch.Tensor:
    """``op(self, *args)`` written into ``self``, with torch's in-place cast check."""
    result, _ = op.dtypes((self, *args))
    if not torch.can_cast(result, self.dtype):
        raise RuntimeError(f"result type {_dtype_name(result)} can't be cast to the desired output type {_dtype_name(self.dtype)}")
    return op(self, *args, out=self)


def _promote(args: Sequence[Any]) -> torch.dtype:
    """torch's promotion over any number of tensors and scalars: dimensioned tensors
    rank over 0-d tensors over Python scalars, unless a lower rank has a higher category
    (bool < int < float). Folds each rank into one representative, then folds the ranks
    with torch.result_type, which implements that rule for two operands."""
    groups: list[Any] = []
    for rank_of in (lambda a: isinstance(a, torch.Tensor) and a.dim() > 0, lambda a: isinstance(a, torch.Tensor) and a.dim() == 0, lambda a: not isinstance(a, torch.Tensor)):
        members = [a for a in args if rank_of(a)]
        if members:
            dtype = _arg_dtype(members[0])
            for m in members[1:]:
                dtype = torch.promote_types(dtype, _arg_dtype(m))
            groups.append((members[0], dtype))
    first, dtype = groups[0]
    if not isinstance(first, torch.Tensor):
        return torch.get_default_dtype() if dtype == torch.float64 else dtype
    for member, gdtype in groups[1:]:
        rep = torch.empty(size=(0,) if first.dim() else (), dtype=dtype)
        other = torch.empty(size=(), dtype=gdtype) if isinstance(member, torch.Tensor) else _scalar_of(gdtype)
        dtype = torch.result_type(rep, other)
    return dtype


def _scalar_of(d: torch.dtype) -> Scalar:
    if d == torch.bool:
        return True
    return 1.0 if d.is_floating_point else 1


def _new_output(tensors: Sequence[torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    # a 0-d CPU tensor may ride along with CUDA tensors: take the device of the others
    device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device if tensors else torch.device("cpu"))
    dims = [t for t in tensors if t.dim() > 0]
    # empty_like keeps the strides of a dense input (a transposed input gives a
    # transposed output, as TensorIterator does) and is contiguous otherwise.
    for t in dims:
        if t.shape == shape:
            return torch.empty_like(t, dtype=dtype)
    return torch.empty(size=shape, dtype=dtype, device=device)


def _as_operand(a: Any, out: torch.Tensor, compute: torch.dtype, promoted: bool) -> Any:
    """Tensors stay; 0-d tensors on another device become scalars; a float scalar in
    fp64 arithmetic becomes a 0-d fp64 tensor (a Triton float argument is fp32)."""
    if isinstance(a, torch.Tensor):
        if a.device != out.device and a.dim() == 0:
            return a.item()
        return a
    if isinstance(a, float) and compute == torch.float64:
        return torch.tensor(a, dtype=torch.float64, device=out.device)
    return a


def _cast_dtype(a: Any, compute: torch.dtype, promoted: bool) -> Any:
    if promoted:
        return TL_DTYPES[compute]
    if isinstance(a, torch.Tensor):
        return TL_DTYPES[compute_dtype(a.dtype)]
    if isinstance(a, bool):
        return tl.int1
    if isinstance(a, int):
        return TL_DTYPES[compute] if compute in (torch.float64, torch.int64) else (tl.int64 if abs(a) > INT32_MAX else tl.int32)
    return tl.float64 if compute == torch.float64 else tl.float32
