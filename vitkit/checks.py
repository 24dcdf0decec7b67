"""Argument checks shared by the harness (numbers, class labels): one message style, raised before work starts."""
from __future__ import annotations

import math
import os

import torch
from torch import nn

__all__ = ["check_number", "check_labels", "check_fit_args"]


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


def check_fit_args(model, train_loader, val_loader, checkpoint, resume, *, epochs, lr, optimizer, weight_decay, momentum, warmup_fraction,
                   warmup_steps, label_smoothing, grad_clip, mixup_alpha, cutmix_alpha, accumulation_steps, max_steps,
                   time_budget_s, max_tflop=None) -> int:
    """Every argument of ``vitkit.train.fit``, checked before any work; returns the number of batches per epoch."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    check_number("epochs", epochs, low=1, integer=True)
    check_number("lr", lr, low=0, low_open=True)
    check_number("weight_decay", weight_decay, low=0, hint="Use 0 to turn weight decay off.")
    check_number("momentum", momentum, low=0, high=1, high_open=True)
    check_number("warmup_fraction", warmup_fraction, low=0, high=1)
    if warmup_steps is not None:
        check_number("warmup_steps", warmup_steps, low=0, integer=True)
    check_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True)
    if grad_clip is not None:
        check_number("grad_clip", grad_clip, low=0, low_open=True,
                     hint="grad_clip=0 would scale every gradient to zero; pass grad_clip=None to turn clipping off.")
    check_number("mixup_alpha", mixup_alpha, low=0, hint="0 turns MixUp off.")
    check_number("cutmix_alpha", cutmix_alpha, low=0, hint="0 turns CutMix off.")
    check_number("accumulation_steps", accumulation_steps, low=1, integer=True)
    if max_steps is not None:
        check_number("max_steps", max_steps, low=1, integer=True)
    if time_budget_s is not None:
        check_number("time_budget_s", time_budget_s, low=0, low_open=True)
    if max_tflop is not None:
        check_number("max_tflop", max_tflop, low=0, low_open=True, hint="It is the training compute in TFLOP.")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}.")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or Path) or None, got {type(checkpoint).__name__}.")
    if val_loader is not None and not hasattr(val_loader, "__iter__"):
        raise TypeError(f"val_loader must be a DataLoader (or None), got {type(val_loader).__name__}.")
    if optimizer not in ("adamw", "adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adamw', 'adam' or 'sgd'.")
    try:
        batches_per_epoch = len(train_loader)
    except TypeError:
        raise TypeError(f"train_loader must have a length (a DataLoader over a map-style data set), "
                        f"got {type(train_loader).__name__}.") from None
    if batches_per_epoch == 0:
        raise ValueError("train_loader yields no batches: the training set is empty (or smaller than the batch "
                         "size with drop_last=True).")
    return batches_per_epoch
