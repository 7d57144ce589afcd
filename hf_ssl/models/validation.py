"""Argument checks shared by the method configs: a bad value raises a ``ValueError`` naming the argument."""

from __future__ import annotations

import numbers


def check_integer(name: str, value, minimum: int) -> None:
    """``value`` must be an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value, low: float, high: float | None, allowed: str, low_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number {allowed}, got {value!r}")
    too_low = value < low if low_inclusive else value <= low
    too_high = high is not None and value >= high
    if too_low or too_high:
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}")
