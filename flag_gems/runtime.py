"""Which device and vendor flag_gems runs on. Detected lazily, on first use: importing
flag_gems touches no device. ``GEMS_VENDOR`` overrides the detected vendor."""
from __future__ import annotations

import functools
import os

from tuner import settings

# vendor -> torch device type its kernels run on
VENDORS: dict[str, str] = {"nvidia": "cuda", "amd": "cuda", "cpu": "cpu"}


class VendorError(ValueError):
    """``GEMS_VENDOR`` names a vendor flag_gems does not know."""


def _detect_vendor() -> str:
    import torch

    if settings.get().interpret or not torch.cuda.is_available():
        return "cpu"
    return "amd" if getattr(torch.version, "hip", None) else "nvidia"


@functools.lru_cache(maxsize=1)
def vendor_name() -> str:
    forced = os.environ.get("GEMS_VENDOR")
    if forced:
        vendor = forced.strip().lower()
        if vendor not in VENDORS:
            raise VendorError(f"GEMS_VENDOR={forced!r} is not a known vendor; known vendors: {', '.join(sorted(VENDORS))}")
        return vendor
    return _detect_vendor()


def device() -> str:
    """The torch device type: ``cuda`` on a GPU, ``cpu`` under the Triton interpreter."""
    return VENDORS[vendor_name()]


def dispatch_key() -> str:
    """The aten dispatch key flag_gems registers its kernels on."""
    return "CUDA" if device() == "cuda" else "CPU"


def reset() -> None:
    """Forget the detected vendor (tests that change ``GEMS_VENDOR``)."""
    vendor_name.cache_clear()
