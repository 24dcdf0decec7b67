"""Argument checks shared by the harness: one message style, raised before any work starts."""
from __future__ import annotations

import math


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, hint: str = "") -> None:
    """TypeError unless ``value`` is a real number (an int if ``integer``); ValueError unless it is finite and
    within the bounds. ``hint`` is appended to the ValueError."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {type(value).__name__} ({value!r}).")
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        if integer and low == 1 and high is None:
            where = "a positive int"
        elif high is None:
            where = f"{'>' if low_open else '>='} {low}"
        else:
            where = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {where}, got {value}.{' ' + hint if hint else ''}")
