"""How long a run is and where its learning rate stands: pure functions of the config and the run's counters.

* ``epochs``, capped by ``max_steps`` and by a compute budget (``max_tflop``: whole optimizer steps at the FLOPs of
  one training image, counted once with ``torch.utils.flop_counter``), fixes the number of optimizer steps; the
  warmup-cosine schedule is a function of the step.
* A wall-clock budget (``time_budget_s``) fixes no step count: the schedule is a function of the fraction of the
  budget spent (wall time since fit began; validation and checkpoints included). It is continuous and, after
  warmup, never increases, whatever the pace does; the run stops when the budget is spent. Its clock starts when
  the first optimizer step has finished: that step pays for compilation (30-60 s on a CPU), which would otherwise
  use up a short warmup before the second step; the budget still pays for it.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from vit_helpers import warmup_cosine_factor
from vitkit.config import FitConfig
from vitkit.steps import model_logits

__all__ = ["flops_per_image", "planned_steps", "progress", "lr_factor", "time_is_up", "repays_compilation"]


def _input_shape(model: nn.Module, loader) -> tuple[int, ...]:
    """One training image's shape, from the model's config (ours or HF's), else from the data set."""
    cfg = getattr(model, "config", None)
    channels = getattr(cfg, "in_channels", None) or getattr(cfg, "num_channels", None)
    size = getattr(cfg, "image_size", None)
    if isinstance(channels, int) and isinstance(size, int):
        return channels, size, size
    with torch.random.fork_rng(devices=[]):  # the sample's augmentation must not move the run's random state
        return tuple(loader.dataset[0][0].shape)


def flops_per_image(model: nn.Module, loader, device: torch.device) -> float:
    """Forward + backward FLOPs of one training image (``torch.utils.flop_counter``, on a copy of the model, so the
    run's own weights, statistics and random state are untouched). Matrix products and convolutions, as the counter
    counts them: what a compute budget measures."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).to(device).train()
    x = torch.zeros(2, *_input_shape(model, loader), device=device)  # two images: BatchNorm needs more than one
    # SDPA's math backend spells attention out as matrix products, which the counter counts; it has no formula for
    # the fused CPU kernel, which it would count as 0 FLOPs
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:  # dropout in the probe draws no number of the run's
        model_logits(probe, x).float().sum().backward()
    del probe
    return counter.get_total_flops() / len(x)


def planned_steps(cfg: FitConfig, steps_per_epoch: int, images_per_step: int, image_flops: float,
                  step_flops: float = 0.0) -> int:
    """Optimizer steps of the run: ``epochs`` of them, capped by ``max_steps`` and by the whole steps that fit in
    ``max_tflop`` (each step costs its images and ``step_flops``, e.g. a weight-average update). A time budget may
    end the run earlier; this is then its cap."""
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if cfg.max_tflop is not None:
        total = min(total, max(1, int(cfg.max_tflop * 1e12 / (image_flops * images_per_step + step_flops))))
    return total


def progress(cfg: FitConfig, step: int, total_steps: int, elapsed_s: float, start_s: float | None = None) -> float:
    """How far through its budget the run is, in [0, 1]: step / planned steps, or under a time budget the wall time
    since ``start_s`` (the end of the first optimizer step; None before it) over what the budget had left then, or
    the share of the step cap if that is further (both only grow, so their maximum is continuous too)."""
    steps = min(1.0, step / total_steps)
    if cfg.time_budget_s is None:
        return steps
    if start_s is None:
        return 0.0
    spent = min(1.0, max(0.0, elapsed_s - start_s) / max(1e-9, cfg.time_budget_s - start_s))
    return max(spent, steps)  # a step or epoch cap that comes first still ends the schedule at 0


def lr_factor(cfg: FitConfig, step: int, total_steps: int, epoch: int, epochs: int, elapsed_s: float,
              start_s: float | None = None) -> float:
    """The multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based) in epoch ``epoch`` (1-based): linear
    warmup, then cosine decay to 0 (:func:`vit_helpers.warmup_cosine_factor`), counted in

    * epochs with ``lr_update="epoch"`` (epoch 1 at position 0, so at LR 0 when there is a warmup), or a step
      decay by epochs instead (``lr_step_decay``);
    * optimizer steps, for a run of a fixed number of steps;
    * the fraction of a time budget spent, with warmup over ``warmup_fraction`` of the budget (or over
      ``warmup_steps`` optimizer steps, the decay then running over the whole budget)."""
    if cfg.lr_update == "epoch" and cfg.lr_step_decay is not None:  # StepLR: factor ** (epochs completed // every)
        return cfg.lr_step_decay[1] ** ((epoch - 1) // cfg.lr_step_decay[0])
    if cfg.lr_update == "epoch":
        return warmup_cosine_factor(cfg.warmup(epochs), epochs)(epoch - 1)
    if cfg.time_budget_s is None:
        return warmup_cosine_factor(cfg.warmup(total_steps), total_steps)(step)
    p = progress(cfg, step, total_steps, elapsed_s, start_s)
    if cfg.warmup_steps is not None:  # warm up by steps; the decay cannot know when they end
        ramp = step / cfg.warmup_steps if cfg.warmup_steps else 1.0
        return min(ramp, 0.5 * (1.0 + math.cos(math.pi * p)))
    w = cfg.warmup_fraction
    if p < w:
        return p / w
    return 0.5 * (1.0 + math.cos(math.pi * (p - w) / (1.0 - w))) if w < 1 else 1.0


def repays_compilation(cfg: FitConfig, total_steps: int, device_type: str) -> bool:
    """Whether the run is long enough to repay 30-60 s of torch.compile: 300 optimizer steps and a 2-minute time
    budget on a GPU; 1,000 steps and a 10-minute budget elsewhere."""
    steps, seconds = (300, 120) if device_type == "cuda" else (1000, 600)
    return total_steps >= steps and (cfg.time_budget_s is None or cfg.time_budget_s >= seconds)


def time_is_up(cfg: FitConfig, elapsed_s: float, reserve_s: float) -> bool:
    """A time-budget run stops training when what is left of the budget is what the end of an epoch (validation,
    checkpoint) took last time."""
    return cfg.time_budget_s is not None and elapsed_s + reserve_s >= cfg.time_budget_s
