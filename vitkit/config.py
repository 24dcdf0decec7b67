"""FitConfig: every knob of :func:`vitkit.train.fit`, documented and checked once.

    cfg = FitConfig(epochs=30, lr=1e-3, optimizer="adam")
    fit(model, loaders.train, loaders.val, cfg)                    # or fit(..., epochs=30, lr=1e-3, ...)
    fit(model, loaders.train, loaders.val, cfg, time_budget_s=600)  # a config with one field changed

The fields fall in three groups: what the run computes (its identity: a checkpoint resumes only a run that agrees
on them), where and how fast it runs (device, precision, compile: a resumed run may differ in them), and what it
shows and where it writes (never part of the identity).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.checks import check_number

__all__ = ["FitConfig", "OPTIMIZERS", "LR_UPDATES"]

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_UPDATES = ("step", "epoch")
_RUNTIME = {"kind": "runtime"}  # where and how fast: a resumed run may change these
_DISPLAY = {"kind": "display"}  # what fit shows and writes: never part of a run's identity


@dataclass(frozen=True)
class FitConfig:
    """The settings of one :func:`vitkit.train.fit` run."""

    # --- How long -------------------------------------------------------------------------------------------------
    epochs: int  # passes over the training set (the cap when a step, compute or time budget is given)
    max_steps: int | None = None  # cap on optimizer steps; the schedule is fitted to the cap
    max_tflop: float | None = None  # training compute budget in TFLOP (FLOPs of one training image x images)
    # Wall-clock budget in seconds, counted from fit's start (compilation, validation, checkpoints included). The
    # schedule is a function of the fraction of the budget spent, so the LR never jumps when the pace changes.
    time_budget_s: float | None = None
    # --- Optimizer and schedule ---------------------------------------------------------------------------------------
    optimizer: str = "adamw"  # "adamw" (decoupled decay, not on biases/norms/embeddings), "adam" or "sgd"
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD only
    warmup_fraction: float = 0.2  # linear warmup over this fraction of the schedule, then cosine decay to 0
    warmup_steps: int | None = None  # overrides warmup_fraction with a number of optimizer steps
    # "step": the LR changes every optimizer step; "epoch": once per epoch (warmup and cosine counted in epochs,
    # epoch 1 at LR 0, as the original notebooks' WarmupCosineSchedule stepped per epoch).
    lr_update: str = "step"
    # (every, factor): with lr_update="epoch" and no warmup, step decay instead of the cosine: the LR is multiplied by
    # factor after every `every` epochs (torch's StepLR, as an earlier version of the original's MNIST notebook ran).
    lr_step_decay: tuple[int, float] | None = None
    # --- Loss and gradients -------------------------------------------------------------------------------------------
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha); 0 turns it off
    cutmix_alpha: float = 0.0  # CutMix's Beta(alpha, alpha); with both on, each batch picks one with equal odds
    grad_clip: float | None = None  # clip the global gradient norm to this (None: no clipping)
    # An exponential moving average of the weights, updated after every optimizer step (vitkit.steps.WeightAverage);
    # validation, the best epoch and the returned model use the average. None: off.
    ema_decay: float | None = None
    accumulation_steps: int = 1  # batches summed into one optimizer step (a larger effective batch)
    restore_best: bool = field(default=True, metadata=_DISPLAY)  # end with the best validation epoch's weights
    # Extra entries of the run's identity (recipe, seed, ...): a checkpoint resumes only when they agree.
    run_info: dict | None = None
    # --- Where and how fast -------------------------------------------------------------------------------------------
    device: str | torch.device | None = field(default=None, metadata=_RUNTIME)  # None: CUDA, then MPS, then CPU
    # "auto": bf16 on GPUs and CPUs with native bf16, fp16 + gradient scaler on older GPUs, fp32 elsewhere.
    precision: str = field(default="auto", metadata=_RUNTIME)
    compile: bool | str = field(default="auto", metadata=_RUNTIME)  # torch.compile; "auto": where it pays
    channels_last: bool | str = field(default="auto", metadata=_RUNTIME)  # convolutions' layout; "auto": where measured
    # --- What it shows and writes -------------------------------------------------------------------------------------
    checkpoint: str | Path | None = field(default=None, metadata=_DISPLAY)  # written after every epoch
    resume: bool = field(default=False, metadata=_DISPLAY)  # continue the run in `checkpoint`
    overwrite: bool = field(default=False, metadata=_DISPLAY)  # replace the run in `checkpoint` (never asked by default)
    log_dir: str | Path | None = field(default=None, metadata=_DISPLAY)  # TensorBoard event files
    progress: bool = field(default=True, metadata=_DISPLAY)  # one tqdm bar with the run's time left
    verbose: bool = field(default=True, metadata=_DISPLAY)  # the set-up line and one line per epoch

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def build(cls, config: FitConfig | None = None, **overrides: Any) -> FitConfig:
        """``config`` with ``overrides`` applied (or a new config from the overrides alone); an unknown name is a
        TypeError listing the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"fit got unknown setting(s) {', '.join(map(repr, unknown))}; FitConfig's fields are: "
                            f"{', '.join(names)}.")
        if config is None:
            if "epochs" not in overrides:
                raise TypeError("fit needs epochs=... (or a FitConfig): how many passes over the training set, the "
                                "cap when a step, compute or time budget is given.")
            return cls(**overrides)
        if not isinstance(config, cls):
            raise TypeError(f"config must be a FitConfig, got {type(config).__name__}; pass settings as keywords "
                            "(fit(model, loader, epochs=10)) or build one with FitConfig(epochs=10, ...).")
        return dataclasses.replace(config, **overrides)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what the run computes (not device, precision, compile or display), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata}

    def warmup(self, total: int) -> int:
        """Warmup length in the schedule's units (optimizer steps, or epochs with ``lr_update="epoch"``)."""
        count = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_fraction * total)
        return min(total, count)


def _check_plain(value, where: str) -> None:
    """Plain values only (str, int, float, bool, None, lists and dicts of them): a checkpoint stores them and loads
    them back with torch.load(weights_only=True), which refuses any other object."""
    if value is None or type(value) in (str, int, float, bool):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a key {k!r}; its keys must be strings.")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r}); a run's identity holds plain values (str, int, "
                    "float, bool, None, lists and dicts): convert it, e.g. str(path) or int(n).")


def _check(cfg: FitConfig) -> None:
    """Every field, with a message that names it and the fix."""
    check_number("epochs", cfg.epochs, low=1, integer=True)
    check_number("lr", cfg.lr, low=0, low_open=True)
    check_number("weight_decay", cfg.weight_decay, low=0, hint="Use 0 to turn weight decay off.")
    check_number("momentum", cfg.momentum, low=0, high=1, high_open=True)
    check_number("warmup_fraction", cfg.warmup_fraction, low=0, high=1)
    if cfg.warmup_steps is not None:
        check_number("warmup_steps", cfg.warmup_steps, low=0, integer=True)
    check_number("label_smoothing", cfg.label_smoothing, low=0, high=1, high_open=True)
    if cfg.grad_clip is not None:
        check_number("grad_clip", cfg.grad_clip, low=0, low_open=True,
                     hint="grad_clip=0 would scale every gradient to zero; pass grad_clip=None to turn clipping off.")
    if cfg.ema_decay is not None:
        check_number("ema_decay", cfg.ema_decay, low=0, high=1, low_open=True, high_open=True,
                     hint="e.g. 0.999; None turns the weight average off.")
    check_number("mixup_alpha", cfg.mixup_alpha, low=0, hint="0 turns MixUp off.")
    check_number("cutmix_alpha", cfg.cutmix_alpha, low=0, hint="0 turns CutMix off.")
    check_number("accumulation_steps", cfg.accumulation_steps, low=1, integer=True)
    if cfg.max_steps is not None:
        check_number("max_steps", cfg.max_steps, low=1, integer=True)
    if cfg.time_budget_s is not None:
        check_number("time_budget_s", cfg.time_budget_s, low=0, low_open=True)
    if cfg.max_tflop is not None:
        check_number("max_tflop", cfg.max_tflop, low=0, low_open=True, hint="It is the training compute in TFLOP.")
    for name in ("resume", "overwrite", "restore_best", "progress", "verbose"):
        if not isinstance(getattr(cfg, name), bool):
            raise TypeError(f"{name} must be True or False, got {getattr(cfg, name)!r}.")
    for name, kind in (("checkpoint", "file"), ("log_dir", "folder")):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a {kind} path (str or Path) or None, got {type(value).__name__}.")
    if cfg.run_info is not None and not isinstance(cfg.run_info, dict):
        raise TypeError(f"run_info must be a dict (e.g. {{'recipe': ..., 'seed': ...}}) or None, got "
                        f"{type(cfg.run_info).__name__}.")
    _check_plain(cfg.run_info, "run_info")
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume=True continues the run in the checkpoint and overwrite=True replaces it; pass one of "
                         "them.")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'adamw', 'adam' or 'sgd'.")
    if cfg.lr_update not in LR_UPDATES:
        raise ValueError(f"lr_update must be 'step' (the LR changes every optimizer step) or 'epoch' (once per epoch), "
                         f"got {cfg.lr_update!r}.")
    if cfg.lr_update == "epoch" and cfg.warmup_steps is not None:
        raise ValueError("lr_update='epoch' counts the schedule in epochs; give its warmup as warmup_fraction (of the "
                         "epochs), not warmup_steps.")
    if cfg.lr_step_decay is not None:
        if not isinstance(cfg.lr_step_decay, (tuple, list)) or len(cfg.lr_step_decay) != 2:
            raise TypeError(f"lr_step_decay must be (every, factor), e.g. (3, 0.1), got {cfg.lr_step_decay!r}.")
        object.__setattr__(cfg, "lr_step_decay", tuple(cfg.lr_step_decay))  # a list from JSON resumes as a tuple
        check_number("lr_step_decay's every (epochs)", cfg.lr_step_decay[0], low=1, integer=True)
        check_number("lr_step_decay's factor", cfg.lr_step_decay[1], low=0, high=1, low_open=True)
        if cfg.lr_update != "epoch" or cfg.warmup_fraction != 0:
            raise ValueError("lr_step_decay counts epochs and replaces the warmup and the cosine: give it with "
                             "lr_update='epoch' and warmup_fraction=0.")
    if cfg.lr_update == "epoch" and cfg.time_budget_s is not None:
        raise ValueError("lr_update='epoch' counts the schedule in epochs, which a time budget does not fix in "
                         "advance; use lr_update='step' with time_budget_s, or give epochs without a time budget.")
    if cfg.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"unknown precision {cfg.precision!r}; use one of 'auto', 'bf16', 'fp16', 'fp32' "
                         "('auto' picks the fastest correct one for the device).")
    if cfg.compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {cfg.compile!r}.")
    if cfg.channels_last not in (True, False, "auto"):
        raise ValueError(f"channels_last must be True, False or 'auto', got {cfg.channels_last!r}.")
