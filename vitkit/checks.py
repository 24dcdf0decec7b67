"""Argument checks shared by the harness (numbers, class labels): one message style, raised before work starts."""
from __future__ import annotations

import math

import torch

__all__ = ["check_number", "check_labels"]


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


def check_labels(labels, num_classes: int | None = None) -> None:
    """TypeError/ValueError unless ``labels`` is a (B,) tensor of class indices in [0, num_classes). The range is
    checked only for labels on the CPU (where loaders yield them), so that no step waits for a GPU."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor of class indices, got {type(labels).__name__}.")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise ValueError(f"labels have shape {tuple(labels.shape)}: one-hot or per-class targets. Pass class indices "
                         "(B,) instead: labels.argmax(1).")
    if labels.ndim != 1:
        raise ValueError(f"labels must be class indices of shape (B,), got shape {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}: convert them with labels.long().")
    if num_classes is not None and labels.device.type == "cpu" and labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes - 1}] for a model with {num_classes} "
                             f"classes, got values from {low} to {high}; check the data set's labels or build the "
                             f"model with num_classes={high + 1}.")
