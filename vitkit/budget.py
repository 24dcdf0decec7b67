"""Budgets: how long a training run is. ``epochs``, capped by ``max_steps``; a compute budget (``max_tflop``) turns
into optimizer steps at the FLOPs of one training image, counted once with ``torch.utils.flop_counter``; a wall-clock
budget (``time_budget_s``) is planned from a few timed steps and re-planned at the end of every epoch at the steady
pace (compilation and epoch 1's warm-up excluded), so that the run spends its budget rather than leaving part of it.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from vit_helpers import warmup_cosine_factor
from vitkit.steps import model_logits, seconds_per_batch

__all__ = ["Plan", "flops_per_image", "plan", "replan_after_epoch", "fit_budget"]


@dataclass
class Plan:
    """How long the run is; a time budget re-plans it after every epoch."""
    epochs: int
    total_steps: int
    batches_per_epoch: int
    steps_per_epoch: int

    @property
    def steady_batch(self) -> int:
        """The batch of epoch 1 from which the pace is timed: after compilation and warm-up."""
        return min(20, self.batches_per_epoch // 2)

    def warmup(self, opts) -> int:
        return min(self.total_steps, opts.warmup_steps if opts.warmup_steps is not None
                   else int(opts.warmup_fraction * self.total_steps))

    def bar_total(self, opts) -> int:
        """Batches the progress bar counts (accumulated ones included)."""
        return min(self.epochs * self.batches_per_epoch, self.total_steps * opts.accumulation_steps)


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
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).to(device).train()
    x = torch.zeros(2, *_input_shape(model, loader), device=device)  # two images: BatchNorm needs more than one
    with FlopCounterMode(display=False) as counter:
        model_logits(probe, x).float().sum().backward()
    del probe
    return counter.get_total_flops() / len(x)


def plan(model, train_loader, val_loader, make_opt, opts, epochs: int, batches_per_epoch: int,
         max_steps: int | None, max_tflop: float | None, image_flops: float) -> Plan:
    """Epochs and optimizer steps: ``epochs``, capped by ``max_steps``, by a compute budget (whole optimizer steps
    that fit in ``max_tflop``) and by a time budget at the pace of a few timed eager steps."""
    steps_per_epoch = math.ceil(batches_per_epoch / opts.accumulation_steps)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    if max_tflop is not None:
        images_per_step = (getattr(train_loader, "batch_size", None) or 1) * opts.accumulation_steps
        total_steps = min(total_steps, max(1, int(max_tflop * 1e12 / (image_flops * images_per_step))))
    if opts.time_budget_s is not None:
        spb = seconds_per_batch(model, train_loader, make_opt, opts.device, opts.precision)
        eval_batches = len(val_loader) if val_loader is not None else 0
        epoch_s = spb * batches_per_epoch + spb / 3 * eval_batches  # eval ~ a third of a train step per batch
        total_steps = min(total_steps, max(1, int(opts.time_budget_s / epoch_s * steps_per_epoch)))
    return Plan(math.ceil(total_steps / steps_per_epoch), total_steps, batches_per_epoch, steps_per_epoch)


def replan_after_epoch(run, t0: float, train_end: float, last_batch: int) -> None:
    """The end of an epoch of a time-budget run: fit the rest of the schedule to what is left of the budget at the
    steady pace. Epoch 1 is timed from its 20th batch on (after compilation and warm-up) and extrapolated; later
    epochs count whole, from the end of one to the end of the next (validation and checkpoint included)."""
    now, plan = time.perf_counter(), run.plan
    if run.epoch == 1:
        if last_batch <= plan.steady_batch:
            return
        s_per_batch = (train_end - run.steady_from) / (last_batch - plan.steady_batch)
        epoch_s = s_per_batch * plan.batches_per_epoch + (now - train_end)
        pace = f"the measured {s_per_batch:.3f} s/batch"
    else:
        epoch_s = now - run.epoch_end
        pace = f"{epoch_s:.1f} s per epoch"
    run.epoch_end = now
    if run.step < plan.total_steps:
        fit_budget(run, epoch_s, pace)


def fit_budget(run, epoch_s: float, pace: str) -> None:
    """Re-plan the remaining schedule to what is left of the time budget at ``epoch_s`` seconds per epoch: the
    cosine is re-fitted to the new end from the very next step."""
    plan, opts = run.plan, run.opts
    left = opts.time_budget_s - run.elapsed()
    new_total = max(run.step, run.step + int(left / epoch_s * plan.steps_per_epoch))
    if new_total == plan.total_steps:
        return
    noticeable = abs(new_total - plan.total_steps) > 0.02 * plan.total_steps
    plan.total_steps, plan.epochs = new_total, max(run.epoch, math.ceil(new_total / plan.steps_per_epoch))
    sched, opt = run.sched, run.opt
    sched.lr_lambdas = [warmup_cosine_factor(plan.warmup(opts), plan.total_steps)] * len(opt.param_groups)
    for group, base_lr, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base_lr * factor(sched.last_epoch)  # the next step already follows the new plan
    run.hist.total_steps = plan.total_steps
    run.bar.total = plan.bar_total(opts)
    run.bar.refresh()
    if opts.verbose and noticeable:
        from tqdm.auto import tqdm
        tqdm.write(f"fit: re-planned to {plan.total_steps} optimizer steps ({plan.epochs} epochs) to fit the "
                   f"{opts.time_budget_s / 60:.1f}-minute budget at {pace}")
