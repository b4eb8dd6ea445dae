"""Shared test helpers: the device, per-dtype tolerances against a float64 reference,
and a counter of Triton kernel launches that proves a flag_gems kernel really ran."""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Iterator

import torch

from tuner.launch import jit_classes

DEVICE = os.environ.get("FLAGGEMS_TEST_DEVICE", "cpu")

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int32, torch.int64]

# (rtol, atol) for comparing a low-precision result with a float64 reference.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def to_reference(x):
    """Upcast floating tensors (and those inside lists) to float64 for the reference."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64) if x.is_floating_point() else x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(to_reference(v) for v in x)
    return x


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, *, equal_nan: bool = True, reduce_dim: int = 1, atol: float | None = None, rtol: float | None = None, baseline: torch.Tensor | None = None) -> None:
    """Compare ``actual`` with a (float64) reference under ``dtype``'s tolerance.

    ``reduce_dim`` scales atol for reductions over that many elements. ``baseline``:
    torch's own result in ``dtype``; each element may also be off by twice torch's own
    error there (an ill-conditioned input, e.g. a norm's gradient where a row's variance
    is tiny, amplifies rounding for any implementation)."""
    dtype = dtype or actual.dtype
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not actual.is_floating_point() and not expected.is_floating_point():
        assert actual.dtype == expected.dtype or dtype == actual.dtype, f"dtype {actual.dtype} vs {expected.dtype}"
        torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0)
        return
    r, a = TOLERANCES.get(dtype, (1e-5, 1e-5))
    rtol = r if rtol is None else rtol
    atol = a * max(1.0, reduce_dim ** 0.5) if atol is None else atol
    actual, expected = actual.to(torch.float64).cpu(), expected.to(torch.float64).cpu()
    if baseline is not None:
        nan = expected.isnan()
        assert torch.equal(actual.isnan(), nan) and (equal_nan or not nan.any()), "NaNs differ from the reference"
        slack = 2 * (baseline.to(torch.float64).cpu() - expected).abs().nan_to_num(0.0, 0.0)
        excess = ((actual - expected).abs() - atol - rtol * expected.abs() - slack).masked_fill(nan, 0.0)
        bad = excess.nan_to_num(1.0) > 0  # inf vs finite (or inf of the other sign) is bad
        if bad.any():
            i = int(bad.flatten().nonzero()[0])
            raise AssertionError(
                f"{int(bad.sum())}/{bad.numel()} elements beyond tolerance and twice torch's own error; first at flat index {i}: "
                f"{actual.flatten()[i].item()} vs {expected.flatten()[i].item()} (torch: {baseline.flatten()[i].item()})"
            )
        return
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=False)


@contextlib.contextmanager
def count_kernels() -> Iterator[Counter]:
    """Count Triton kernel launches by kernel function name inside the block.

    A flag_gems op that silently fell back to aten launches nothing, so tests assert
    on this counter."""
    launched: Counter = Counter()

    def count(jit) -> None:
        launched[getattr(getattr(jit, "fn", None), "__name__", "?")] += 1

    patched = []
    for cls in jit_classes():
        orig = cls.run

        def run(self, *args, __orig=orig, **kwargs):
            count(self)
            return __orig(self, *args, **kwargs)

        cls.run = run
        patched.append((cls, orig))
    from tuner import launch

    prev = launch.observer  # the launches tuner.launch makes without JITFunction.run
    launch.observer = count
    try:
        yield launched
    finally:
        launch.observer = prev
        for cls, orig in patched:
            cls.run = orig


@contextlib.contextmanager
def gems_ran(*names: str) -> Iterator[Counter]:
    """``use_gems()`` for a block and assert a Triton kernel (named, if given) launched."""
    import flag_gems

    with count_kernels() as launched, flag_gems.use_gems():
        yield launched
    assert sum(launched.values()) > 0, "no Triton kernel ran: the op fell back to aten"
    for n in names:
        assert launched[n] > 0, f"kernel {n} did not run; ran: {dict(launched)}"


@contextlib.contextmanager
def kept_launches() -> Iterator[Counter]:
    """Inside the block every ``tuner.launch`` launcher keeps and relaunches compiled
    kernels as on a GPU, though the interpreter compiles nothing: the stand-in compiled
    kernels run their kernel in the interpreter, so the direct paths (relaunches, replays)
    compute and are checked on CPU (on a GPU run the real launchers do). Yields a counter
    whose ``"keyed"`` is how many launches took the launcher's keyed path
    (``Launcher._key``)."""
    import sys

    from tuner import launch
    from tuner.kernel_hash import python_fn

    class Compiled:  # CompiledKernel: kernel[grid](*args, stream=...)
        def __init__(self, jit) -> None:
            self.jit = jit

        def __getitem__(self, grid):
            return lambda *args, stream=None: self.jit[grid](*args)

    class Jit:  # JITFunction: its first launch returns the compiled kernel
        def __init__(self, jit) -> None:
            self.jit, self.fn = jit, python_fn(jit)  # (fn: what count_kernels names)

        def __getitem__(self, grid):
            def first(*args, **kwargs):
                self.jit[grid](*args, **kwargs)
                return Compiled(self.jit)

            return first

    counts: Counter = Counter()
    init, key = launch.Launcher.__init__, launch.Launcher._key

    def stand_in_init(lc, fn) -> None:
        init(lc, fn)
        if DEVICE != "cpu":
            return
        lc.capable = lc.fast = True
        lc.fn, lc.current_device, lc.current_stream = Jit(fn), (lambda: 0), (lambda device: 0)

    def counted_key(lc, *args):
        counts["keyed"] += 1
        return key(lc, *args)

    tuners = sys.modules["tuner.libtuner"]._REGISTRY
    saved_launchers, saved_tuners = dict(launch._LAUNCHERS), [(t, t._launcher) for t in tuners]
    launch._LAUNCHERS.clear()
    for t in tuners:
        t._launcher = None
    launch.Launcher.__init__, launch.Launcher._key = stand_in_init, counted_key
    launch.forget_direct()
    try:
        yield counts
    finally:
        launch.Launcher.__init__, launch.Launcher._key = init, key
        launch._LAUNCHERS.clear()
        launch._LAUNCHERS.update(saved_launchers)
        for t, lc in saved_tuners:
            t._launcher = lc
        launch.forget_direct()
