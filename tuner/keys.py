"""Key strategies: how a kernel's raw argument values are bucketed into a tuning key.

A strategy maps one raw value to its bucket. Bucketing keeps the number of tuned keys
small (every M in 65..128 shares one config under ``log``) and lets offline pretuning
enumerate every bucket a model can reach.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

Strategy = Callable[[Any], Any]
StrategySpec = Union[str, Strategy, None]


def identity(value: Any) -> Any:
    return value


def next_power_of_2(value: int) -> int:
    """``log`` bucketing: 0 and 1 stay, anything else rounds up to a power of two."""
    value = int(value)
    if value <= 1:
        return value
    return 1 << (value - 1).bit_length()


def align32(value: int) -> int:
    """Round up to a multiple of 32."""
    value = int(value)
    return (value + 31) // 32 * 32


STRATEGIES: dict[str, Strategy] = {
    "identity": identity,
    "default": identity,
    "log": next_power_of_2,
    "align32": align32,
}


def resolve(spec: StrategySpec) -> Strategy:
    if spec is None:
        return identity
    if callable(spec):
        return spec
    try:
        return STRATEGIES[spec]
    except KeyError as e:
        raise ValueError(f"unknown key strategy {spec!r}; use one of {sorted(STRATEGIES)} or a callable") from e


def resolve_all(specs: StrategySpec | Sequence[StrategySpec], n: int) -> tuple[Strategy, ...]:
    """One strategy per key argument: a single spec applies to all of them."""
    if specs is None or isinstance(specs, str) or callable(specs):
        return (resolve(specs),) * n
    specs = list(specs)
    if len(specs) != n:
        raise ValueError(f"{len(specs)} key strategies given for {n} key arguments")
    return tuple(resolve(s) for s in specs)
