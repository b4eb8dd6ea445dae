"""Shared helpers for op families (kernel generators), and host-side integer math.

``cdiv`` and ``next_power_of_2`` are for grids and launch parameters on the host: Triton's
own (``triton.cdiv``, ``triton.next_power_of_2``) are constexpr-function objects since
Triton 3.5, about 1.5 us a call against 0.02 us for plain arithmetic, and a launch
computes several. Inside kernels use ``tl.cdiv``.
"""
from tuner.keys import next_power_of_2


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ``a`` by positive ``b``."""
    return -(-a // b)


__all__ = ["cdiv", "next_power_of_2"]
