"""Training: :func:`fit` (warmup-cosine schedule per optimizer step, precision and compilation per device, time
budgets, best-epoch restore, divergence guard), :func:`evaluate` and the :class:`History` of a run.

``fit`` reads top to bottom as a loop over small steps: check the arguments, plan the schedule (or resume a
checkpoint), set up the run, then per epoch train, validate, re-plan and checkpoint, and finally restore the best
weights.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vit_helpers import warmup_cosine_schedule
from vitkit import budget
from vitkit import checkpoint as ckpt
from vitkit.budget import Plan
from vitkit.checks import check_fit_args, check_labels
from vitkit.runtime import attention_path, autocast, get_device, precision_reason, resolve_compile, resolve_precision
from vitkit.steps import batch_loss, make_optimizer, model_logits, num_classes

__all__ = ["History", "fit", "evaluate", "TrainingDivergedError"]


@dataclass
class History:
    """Per-epoch curves of a :func:`fit` run (train metrics are running averages over the epoch)."""
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # per optimizer step
    best_epoch: int | None = None
    best_val_acc: float | None = None
    total_steps: int = 0
    wall_time_s: float = 0.0
    train_images_per_s: float = 0.0  # training time only, validation excluded
    device: str = ""
    precision: str = ""  # what precision="auto" resolved to (resolve_precision)
    attention: str = ""  # SDPA or explicit, and whether chosen automatically
    compiled: bool = False  # torch.compile used
    gflop_per_image: float = 0.0  # forward + backward of one training image (torch.utils.flop_counter)
    train_tflop: float = 0.0  # training compute: gflop_per_image x training images processed
    resumes: int = 0  # how often the run was resumed from its checkpoint
    stretches: list[dict] = field(default_factory=list)  # per stretch between resumes: epochs, machine, precision, commit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
             precision: str = "auto", return_predictions: bool = False, flip: bool = False) -> dict[str, Any]:
    """Loss and accuracy over the whole split: ``{"loss", "acc", "n", "nonfinite"}`` (+ ``"preds"``, ``"labels"``).

    ``flip=True``: test-time augmentation, the class probabilities of each image and of its mirror image averaged
    (for data whose class survives a left-right flip: CIFAR-10, photos; not digits). Costs a second forward pass.

    Images whose loss is NaN or infinite (a NaN pixel, an overflow) are counted in ``"nonfinite"`` with a warning;
    ``"loss"`` averages the others, ``"acc"`` counts every image."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(device, precision)
    was_training, classes = model.training, num_classes(model)
    model.eval()
    total_loss, correct, n, nonfinite = 0.0, 0, 0, 0
    preds, labels = [], []
    for x, y in loader:
        check_labels(y, classes)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model_logits(model, x)
            if flip:  # log of the mean probability of the image and its mirror image
                both = torch.stack([logits.float(), model_logits(model, x.flip(-1)).float()])
                logits = torch.logsumexp(both.log_softmax(-1), dim=0) - math.log(2)
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        finite = torch.isfinite(losses)
        total_loss += losses[finite].sum().item()
        nonfinite += int((~finite).sum())
        pred = logits.argmax(dim=-1)
        correct += (pred == y).sum().item()
        n += y.numel()
        if return_predictions:
            preds.append(pred.cpu())
            labels.append(y.cpu())
    model.train(was_training)
    if n == 0:
        raise ValueError("the loader yielded no samples.")
    if nonfinite:
        warnings.warn(f"evaluate: {nonfinite} of {n} images gave a NaN or infinite loss (NaN/inf pixels or an "
                      "overflow); the loss averages the others, the accuracy counts all.", stacklevel=2)
    out = {"loss": total_loss / max(1, n - nonfinite), "acc": correct / n, "n": n, "nonfinite": nonfinite}
    if return_predictions:
        out["preds"], out["labels"] = torch.cat(preds), torch.cat(labels)
    return out


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the likely causes and what to change."""


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _diverged(loss: torch.Tensor, x: torch.Tensor, epoch: int, batch: int, step: int, lr: float, precision: str,
              restored_epoch: int | None) -> TrainingDivergedError:
    data = "the batch itself contains NaN/inf inputs: clean the data first. " if not torch.isfinite(x).all() else ""
    restored = (f"The weights of epoch {restored_epoch} (the best finite epoch) were restored into the model."
                if restored_epoch else "The model's weights are left as they were when the loss went bad.")
    return TrainingDivergedError(
        f"training diverged: the loss became {loss.item()} at epoch {epoch}, batch {batch} (optimizer step {step}). "
        f"{data}Likely causes: a learning rate too high for this model and batch (lr={lr:g}: try lr/10 or a "
        f"longer warmup), no gradient clipping (try grad_clip=1.0), NaN/inf values in the data"
        f"{', or fp16 overflow (try precision=' + repr('bf16') + ' or ' + repr('fp32') + ')' if precision == 'fp16' else ''}. "
        f"{restored}")


@dataclass(frozen=True)
class _Options:
    """The per-step settings of one :func:`fit` call."""
    device: torch.device
    precision: str
    lr: float
    label_smoothing: float
    mixup_alpha: float
    cutmix_alpha: float
    grad_clip: float | None
    accumulation_steps: int
    warmup_steps: int | None
    warmup_fraction: float
    time_budget_s: float | None
    progress: bool
    verbose: bool


@dataclass
class _Run:
    """The state of one :func:`fit` call, handed from step to step."""
    model: nn.Module
    runner: nn.Module  # the compiled model, or the model itself; both share the parameters
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    plan: Plan
    opts: _Options
    hist: History
    bar: Any
    start: float
    epoch: int = 0
    step: int = 0
    images: int = 0
    train_s: float = 0.0
    best_state: dict[str, torch.Tensor] | None = None
    steady_from: float | None = None  # when epoch 1's steady pace began (after compilation and warm-up)
    epoch_end: float | None = None  # when the last epoch ended (the pace of the next one is timed from it)
    image_flops: float = 0.0  # forward + backward FLOPs of one training image
    elapsed_before: float = 0.0  # wall time of the stretches before a resume
    checkpoint: Path | None = None
    identity: dict | None = None
    num_classes: int | None = None  # to check the labels against

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start


def _import_cpp_extension_quietly() -> None:
    """Import torch.utils.cpp_extension (inductor imports it at the first compiled step) with its logger at ERROR
    for the import only: on a machine with a CUDA folder but no GPU it logs a timestamped "No CUDA runtime is
    found" warning that says nothing about the run. The logger is restored; nothing global changes."""
    import logging
    import sys

    if "torch.utils.cpp_extension" in sys.modules:
        return
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        logger.setLevel(level)


def _start(model, make_opt, plan: Plan, opts: _Options, compile) -> _Run:
    """Compile (where it pays), optimizer, gradient scaler (fp16), schedule, History and the one progress bar."""
    from tqdm.auto import tqdm

    compiled = resolve_compile(compile, opts.device, opts.precision, plan.total_steps)
    if compiled:
        _import_cpp_extension_quietly()
    opt = make_opt(model)
    hist = History(total_steps=plan.total_steps, precision=opts.precision, compiled=compiled, device=str(opts.device),
                   attention=attention_path(model, opts.device, opts.precision, compiled))
    if opts.verbose:
        print(f"fit: {opts.device} in {opts.precision} ({precision_reason(opts.device, opts.precision)}), attention "
              f"{hist.attention}, torch.compile {'on' if compiled else 'off'}, torch threads "
              f"{torch.get_num_threads()}, {plan.total_steps} optimizer steps", flush=True)
    # One bar over the whole run, so that its remaining time is the run's (validation not included).
    # TQDM_DISABLE=1 (tqdm's own switch) turns it off too: scripts/execute_notebooks.py stores outputs without bars.
    bars_off = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    bar = tqdm(total=plan.bar_total(opts), unit="batch", disable=not opts.progress or bars_off, dynamic_ncols=True)
    return _Run(model=model, runner=torch.compile(model) if compiled else model, opt=opt,
                sched=warmup_cosine_schedule(opt, plan.warmup(opts), plan.total_steps),
                scaler=torch.amp.GradScaler(opts.device.type) if opts.precision == "fp16" else None,  # fp16 underflows
                plan=plan, opts=opts, hist=hist, bar=bar, start=time.perf_counter())


def _optimizer_step(run: _Run) -> None:
    """Unscale (fp16), clip, step, zero the gradients, log the LR and advance the schedule."""
    opt, scaler = run.opt, run.scaler
    if scaler:
        scaler.unscale_(opt)  # clip the true gradients
    if run.opts.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.opts.grad_clip)
    if scaler:
        scaler.step(opt)  # skipped when the scaled gradients overflowed
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    run.hist.lr.append(opt.param_groups[0]["lr"])
    run.sched.step()
    run.step += 1


def _stop_diverged(run: _Run, loss, x, batch: int) -> None:
    """Close the bar, restore the best finite epoch's weights if there are any, and raise."""
    run.bar.close()
    restored = None
    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
        restored = run.hist.best_epoch
    raise _diverged(loss, x, run.epoch, batch, run.step, run.opts.lr, run.opts.precision, restored)


def _train_epoch(run: _Run, loader) -> tuple[float, float, int]:
    """One pass over ``loader`` (or up to the planned last step); returns (start, end, index of the last batch)."""
    opts, device = run.opts, run.opts.device
    run.runner.train()
    t0, seen = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=device)  # running sums stay on the device: no sync per step on GPUs
    correct = torch.zeros((), device=device, dtype=torch.long)
    run.bar.set_description(f"epoch {run.epoch}/{run.plan.epochs}")
    for i, (x, y) in enumerate(loader):
        run.bar.update(1)
        if run.epoch == 1 and i == run.plan.steady_batch:  # time the pace from here (see vitkit.budget)
            run.steady_from = time.perf_counter()
        check_labels(y, run.num_classes)  # on the CPU copy: no wait for a GPU
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, logits = batch_loss(run.runner, x, y, device, opts.precision, opts.label_smoothing, opts.mixup_alpha,
                                   opts.cutmix_alpha)
        # A NaN/inf loss: checked every step on a CPU (free) and at the progress updates on a GPU.
        if (device.type != "cuda" or i % 25 == 0) and not torch.isfinite(loss):
            _stop_diverged(run, loss, x, i + 1)
        scaled = loss / opts.accumulation_steps
        (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        last_batch = i + 1 == run.plan.batches_per_epoch
        if (i + 1) % opts.accumulation_steps == 0 or last_batch:
            _optimizer_step(run)
        loss_sum += loss.detach() * y.numel()
        correct += (logits.argmax(-1) == y).sum()  # against the unmixed labels
        seen += y.numel()
        if opts.progress and (i % 25 == 0 or last_batch):
            run.bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        if run.step >= run.plan.total_steps:
            break
    train_end = time.perf_counter()
    run.images += seen
    run.train_s += train_end - t0
    run.hist.epoch.append(run.epoch)
    run.hist.train_loss.append(loss_sum.item() / seen)
    run.hist.train_acc.append(correct.item() / seen)
    if not math.isfinite(run.hist.train_loss[-1]):  # a bad step the GPU check above did not sample
        raise _diverged(loss_sum, x, run.epoch, i + 1, run.step, opts.lr, opts.precision, None)
    return t0, train_end, i


def _validate(run: _Run, val_loader, t0: float) -> None:
    """Validation loss and accuracy; keep a copy of the weights when the accuracy is the best so far."""
    hist = run.hist
    if val_loader is not None:
        val = evaluate(run.model, val_loader, run.opts.device, run.opts.precision)  # eager: no recompiles
        hist.val_loss.append(val["loss"])
        hist.val_acc.append(val["acc"])
        if hist.best_val_acc is None or val["acc"] > hist.best_val_acc:
            state = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
            if _all_finite(state):
                hist.best_val_acc, hist.best_epoch, run.best_state = val["acc"], run.epoch, state
    hist.epoch_time_s.append(time.perf_counter() - t0)


def _log_epoch(run: _Run) -> None:
    from tqdm.auto import tqdm

    h = run.hist
    val_txt = "" if not h.val_acc else f" | val loss {h.val_loss[-1]:.4f} acc {h.val_acc[-1]:.4f}"
    tqdm.write(f"epoch {run.epoch:3d} | train loss {h.train_loss[-1]:.4f} acc {h.train_acc[-1]:.4f}"
               f"{val_txt} | {h.epoch_time_s[-1]:.1f}s")


def _restore(run: _Run, saved: dict, loader) -> None:
    """Put a checkpoint's state into a freshly set-up run, so that the next epoch is the one the run would have run."""
    run.model.load_state_dict(saved["model"])
    run.opt.load_state_dict(saved["optimizer"])
    run.sched.load_state_dict(saved["scheduler"])
    if run.scaler is not None and saved["scaler"] is not None:
        run.scaler.load_state_dict(saved["scaler"])
    run.epoch, run.step, run.images, run.train_s = saved["epoch"], saved["step"], saved["images"], saved["train_s"]
    run.elapsed_before, run.best_state = saved["elapsed_s"], saved["best_state"]
    stretch = run.hist.stretches[-1]
    stretch["first_epoch"] = run.epoch + 1
    run.hist = History(**{**saved["history"], "precision": run.opts.precision, "device": run.hist.device,
                          "attention": run.hist.attention, "compiled": run.hist.compiled})
    run.hist.resumes += 1
    run.hist.stretches.append(stretch)
    ckpt.set_rng_state(saved["rng"], loader)
    run.bar.update(min(run.bar.total, run.epoch * run.plan.batches_per_epoch))
    if run.opts.verbose:
        print(f"fit: resumed {run.checkpoint} after epoch {run.epoch} (optimizer step {run.step}, "
              f"{run.elapsed_before / 60:.1f} min so far, resume {run.hist.resumes})")
    if run.opts.time_budget_s is not None and run.hist.epoch_time_s:
        if run.opts.verbose:
            print("fit: a resumed time-budget run is re-planned to the budget left; it is not bit-identical to a run "
                  "that never stopped")
        epoch_s = sorted(run.hist.epoch_time_s)[len(run.hist.epoch_time_s) // 2]
        budget.fit_budget(run, epoch_s, f"the recorded {epoch_s:.0f} s/epoch")
    run.epoch_end = time.perf_counter()


def _finished(model: nn.Module, saved: dict, restore_best: bool, verbose: bool) -> History:
    """Resuming a run that already ended: its final (or best) weights and its History, with no training."""
    model.load_state_dict(saved["best_state"] if restore_best and saved["best_state"] is not None else saved["model"])
    hist = History(**saved["history"])
    if verbose:
        print(f"fit: the run in this checkpoint finished after {saved['epoch']} epochs; returning its History "
              "(nothing to train)")
    return hist


def _finish(run: _Run, restore_best: bool) -> History:
    """Close the bar, record time and pace, and put the best validation epoch's weights back."""
    run.bar.close()
    run.hist.wall_time_s = run.elapsed()
    run.hist.train_images_per_s = run.images / max(1e-9, run.train_s)  # training only, validation excluded
    run.hist.gflop_per_image, run.hist.train_tflop = run.image_flops / 1e9, run.image_flops * run.images / 1e12
    if restore_best and run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    return run.hist


def _end_epoch(run: _Run, train_loader, val_loader, t0: float, train_end: float, last_batch: int) -> bool:
    """Validate, re-plan a time budget, log, checkpoint; True when the run is done."""
    _validate(run, val_loader, t0)
    if run.opts.time_budget_s is not None:
        budget.replan_after_epoch(run, t0, train_end, last_batch)
    if run.opts.verbose:
        _log_epoch(run)
    done = run.step >= run.plan.total_steps or run.epoch >= run.plan.epochs
    if run.checkpoint is not None:
        saving = time.perf_counter()
        ckpt.save_run(run, train_loader, finished=done)
        run.hist.epoch_time_s[-1] += time.perf_counter() - saving  # part of what an epoch costs
    return done


def _interrupted(run: _Run) -> None:
    """Ctrl-C (or a kill that Python sees): the checkpoint keeps the last complete epoch; say how to go on."""
    run.bar.close()
    if run.checkpoint is not None and run.opts.verbose:
        print(f"fit: interrupted in epoch {run.epoch}; {run.checkpoint} holds the run after epoch "
              f"{run.epoch - 1}: fit(..., resume=True) redoes epoch {run.epoch}")


def fit(model: nn.Module, train_loader, val_loader=None, *, epochs: int, lr: float = 1e-3,
        optimizer: str = "adamw", weight_decay: float = 0.05, momentum: float = 0.9,
        warmup_fraction: float = 0.2, warmup_steps: int | None = None, label_smoothing: float = 0.0,
        grad_clip: float | None = None, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
        accumulation_steps: int = 1, max_steps: int | None = None, device: torch.device | str | None = None,
        precision: str = "auto", compile: bool | str = "auto", time_budget_s: float | None = None,
        max_tflop: float | None = None,
        restore_best: bool = True, progress: bool = True, verbose: bool = True,
        checkpoint: str | Path | None = None, resume: bool = False, run_info: dict | None = None) -> History:
    """Train ``model`` with the warmup-cosine schedule stepped per optimizer step; returns a :class:`History`.

    optimizer: ``"adamw"`` (decoupled weight decay, not on biases/norms/embeddings), ``"adam"`` or ``"sgd"``
    (momentum). ``warmup_steps`` overrides ``warmup_fraction`` (the original notebooks used 1/5).
    ``accumulation_steps`` sums gradients over several batches per optimizer step (big effective batches);
    ``max_steps`` caps the optimizer steps (the schedule is fitted to the cap).
    ``precision="auto"`` picks the fastest precision that trains correctly on the device
    (:func:`vitkit.runtime.resolve_precision`: bf16 on recent GPUs and on CPUs with AVX512-BF16/AMX, fp16 with a
    gradient scaler on older GPUs, fp32 elsewhere); ``"bf16"``, ``"fp16"`` or ``"fp32"`` force one.
    ``compile``: ``torch.compile`` the model (``"auto"``: where it pays, see :func:`vitkit.runtime.resolve_compile`).
    ``time_budget_s`` times a few steps on a copy of the model first and shortens the schedule so that
    training and validation fit the budget, and re-plans after every epoch at the steady pace; ``max_tflop`` plans
    the schedule to a compute budget (FLOPs of one training image x images, see :mod:`vitkit.budget`). With a
    ``val_loader``, the weights of the best validation epoch are restored at the end. A NaN or infinite loss
    stops the run with :class:`TrainingDivergedError`.
    ``progress`` shows one tqdm bar (with the run's time left); ``verbose`` prints the set-up and one line per
    epoch. Works with HF models (anything whose output is logits or has ``.logits``).

    ``checkpoint``: a file written at the end of every epoch (atomically; the one before is kept as ``.prev``) that
    holds the whole state of the run. ``resume=True`` continues the run in it: a run stopped after epoch k (Ctrl-C,
    a kill, a lost notebook) and resumed ends with exactly the weights of a run that never stopped (same device and
    precision; a time-budget run is re-planned to the budget left instead). ``run_info`` (e.g. recipe, seed)
    joins the model config, data set, batch size and fit's settings in what a checkpoint must match to be resumed;
    a mismatch, a corrupt file or a finished run is reported before any training.
    """
    batches_per_epoch = check_fit_args(
        model, train_loader, val_loader, checkpoint, resume, epochs=epochs, lr=lr, optimizer=optimizer,
        weight_decay=weight_decay, momentum=momentum, warmup_fraction=warmup_fraction, warmup_steps=warmup_steps,
        label_smoothing=label_smoothing, grad_clip=grad_clip, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
        accumulation_steps=accumulation_steps, max_steps=max_steps, time_budget_s=time_budget_s, max_tflop=max_tflop)
    device = get_device(device)
    saved, identity = None, None
    if checkpoint is not None:
        settings = dict(epochs=epochs, max_steps=max_steps, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                        time_budget_s=time_budget_s, **({"max_tflop": max_tflop} if max_tflop is not None else {}))
        identity = ckpt.run_identity(model, train_loader, settings, run_info)
        saved = ckpt.open_run(Path(checkpoint), resume, identity, verbose)
    if saved is not None and saved["finished"]:
        return _finished(model.to(device), saved, restore_best, verbose)
    precision = resolve_precision(device, precision) if saved is None else ckpt.resumed_precision(saved, device, verbose)
    opts = _Options(device, precision, lr, label_smoothing, mixup_alpha, cutmix_alpha, grad_clip, accumulation_steps,
                    warmup_steps, warmup_fraction, time_budget_s, progress, verbose)
    model.to(device)
    make_opt = lambda m: make_optimizer(m, optimizer, lr, weight_decay, momentum, device)  # noqa: E731
    image_flops = budget.flops_per_image(model, train_loader, device)
    plan = (Plan(**saved["plan"], batches_per_epoch=batches_per_epoch,
                 steps_per_epoch=math.ceil(batches_per_epoch / accumulation_steps)) if saved is not None
            else budget.plan(model, train_loader, val_loader, make_opt, opts, epochs, batches_per_epoch, max_steps,
                             max_tflop, image_flops))
    run = _start(model, make_opt, plan, opts, compile)
    run.checkpoint, run.identity = (Path(checkpoint) if checkpoint is not None else None), identity
    run.num_classes, run.image_flops = num_classes(model), image_flops
    run.hist.stretches.append(ckpt.stretch(opts, 1))
    if saved is not None:
        _restore(run, saved, train_loader)
    try:
        while run.epoch < plan.epochs:  # not a range: a re-plan may add epochs
            run.epoch += 1
            t0, train_end, last_batch = _train_epoch(run, train_loader)
            if _end_epoch(run, train_loader, val_loader, t0, train_end, last_batch):
                break
    except KeyboardInterrupt:
        _interrupted(run)
        raise
    return _finish(run, restore_best)
