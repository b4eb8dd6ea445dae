"""What can change a kernel's best config: the device and the software environment.

A tuning row carries its fingerprint and is served only to a process whose fingerprint
matches exactly: another GPU, another Triton or another torch never reuses it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from dataclasses import asdict, dataclass

from tuner import settings


@dataclass(frozen=True)
class Fingerprint:
    vendor: str
    device_name: str
    compute_capability: str
    sm_count: int
    triton_version: str
    torch_version: str

    @functools.cached_property
    def env_id(self) -> str:
        """A stable digest of every field: the index column rows are matched on."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    @property
    def device_slug(self) -> str:
        """A file-name-safe name of the device, e.g. ``nvidia-h100-80gb-hbm3-sm90``."""
        name = self.device_name.lower()
        if not name.startswith(self.vendor.lower()):  # "NVIDIA H100" already names its vendor
            name = f"{self.vendor} {name}"
        name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        cc = self.compute_capability.replace(".", "")
        return f"{name}-sm{cc}" if cc else name

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=None)
def current(device_index: int | None = None) -> Fingerprint:
    """The fingerprint of this process's device (the current CUDA device by default)."""
    import torch
    import triton

    if torch.cuda.is_available() and not settings.get().interpret:
        idx = torch.cuda.current_device() if device_index is None else device_index
        props = torch.cuda.get_device_properties(idx)
        vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
        return Fingerprint(
            vendor=vendor,
            device_name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            triton_version=triton.__version__,
            torch_version=torch.__version__,
        )
    # The Triton interpreter on CPU: timings mean little, but the flow is the same.
    return Fingerprint(
        vendor="interpreter",
        device_name=_cpu_name(),
        compute_capability="",
        sm_count=os.cpu_count() or 1,
        triton_version=triton.__version__,
        torch_version=torch.__version__,
    )
