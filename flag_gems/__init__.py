"""flag_gems: Triton kernels for PyTorch's aten ops, tuned offline per device.

    import flag_gems
    flag_gems.enable()                 # every supported aten op now runs a Triton kernel
    with flag_gems.use_gems(): ...     # the same, for a block

Importing flag_gems registers nothing, touches no device and parses no command line.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from flag_gems import registry, runtime

__version__ = "0.1.0"
__all__ = [
    "enable", "disable", "use_gems", "is_enabled", "device", "vendor_name", "ops_lib",
    "apply_gems_patches_to_vllm", "revert_vllm_patches",
    "apply_gems_patches_to_transformers", "revert_transformers_patches",
]


def _default_record_path() -> Path:
    from tuner import settings

    return settings.get().cache_dir / "records" / f"gems-{os.getpid()}.jsonl"


def _apply(unused: Iterable[str] | None, record: bool, path: str | Path | None, *, stop_recording: bool) -> None:
    off = registry.resolve_unused(unused)
    registry.install()
    registry.switch(set(registry.entries()) - off)
    if record:
        registry.set_recorder(registry.recorder_for(Path(path) if path else _default_record_path()))
    elif stop_recording:
        registry.set_recorder(None)


def enable(unused: Iterable[str] | None = None, record: bool = False, path: str | Path | None = None) -> None:
    """Run flag_gems' kernels for every supported aten op, except those in ``unused``
    ("sum", "add", or an overload such as "add.Tensor"). ``record=True`` appends one JSON
    line per op call (op, shapes, dtypes) to ``path``; ``enable()`` without it stops
    recording."""
    _apply(unused, record, path, stop_recording=True)


def disable() -> None:
    """Remove every flag_gems kernel from the dispatcher: aten as if never enabled."""
    registry.uninstall()


def is_enabled(op: str | None = None) -> bool:
    """Whether any op (or the overload ``op``) currently runs on flag_gems."""
    ents = registry.entries()
    if op is not None:
        return op in ents and ents[op].on
    return any(e.on for e in ents.values())


@contextlib.contextmanager
def use_gems(unused: Iterable[str] | None = None, record: bool = False, path: str | Path | None = None) -> Iterator[None]:
    """``enable()`` for a block; nestable; the previous state is restored on exit, also
    on an exception. Registration happens once per process: entering flips flags.
    A recording started outside goes on inside the block (``record=True`` starts one)."""
    snap = registry.snapshot()
    try:
        _apply(unused, record, path, stop_recording=False)
        yield
    finally:
        registry.restore(snap)


def ops_lib() -> Any:
    """Register the ``torch.ops.flag_gems.*`` custom ops (first call only) and return
    the ``torch.ops.flag_gems`` namespace."""
    import importlib

    import torch

    importlib.import_module("flag_gems.custom_ops")
    return torch.ops.flag_gems


def apply_gems_patches_to_vllm(verbose: bool = False) -> None:
    """Route vLLM's RMSNorm, RotaryEmbedding and SiluAndMul (``forward_cuda``) to flag_gems."""
    from flag_gems.patches import vllm

    vllm.apply(verbose=verbose)


def revert_vllm_patches() -> None:
    from flag_gems.patches import vllm

    vllm.revert()


def apply_gems_patches_to_transformers(verbose: bool = False) -> None:
    """Route HF Llama/Qwen2/Mistral RMSNorm, rotary application and MLP activation to flag_gems."""
    from flag_gems.patches import transformers

    transformers.apply(verbose=verbose)


def revert_transformers_patches() -> None:
    from flag_gems.patches import transformers

    transformers.revert()


def __getattr__(name: str) -> Any:
    # Lazy: detecting the device must not happen at import.
    if name == "device":
        return runtime.device()
    if name == "vendor_name":
        return runtime.vendor_name()
    if name == "modules":
        import importlib

        return importlib.import_module("flag_gems.modules")
    raise AttributeError(f"module 'flag_gems' has no attribute {name!r}")
