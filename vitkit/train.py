"""Training: :func:`fit` (one loop: warmup-cosine schedule, precision and compilation per device, epoch, step,
compute and time budgets, checkpoints and exact resume, best-epoch restore, divergence guard, TensorBoard, many
processes under torchrun) and :func:`evaluate`.

Every knob is a field of :class:`vitkit.config.FitConfig`; where a run stands is a :class:`vitkit.state.RunState`;
how long it is and where its learning rate stands come from :mod:`vitkit.budget`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vitkit import budget, distributed
from vitkit import checkpoint as ckpt
from vitkit.checks import check_labels
from vitkit.config import FitConfig
from vitkit.runtime import (autocast, channels_last_convolutions, compile_options, get_device,
                            import_inductor_quietly, precision_reason, resolve_compile, resolve_precision)
from vitkit.state import History, RunState
from vitkit.steps import WeightAverage, attention_report, make_optimizer, mix, mixed_loss, model_logits, num_classes

__all__ = ["FitConfig", "History", "fit", "evaluate", "TrainingDivergedError"]


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


def fit(model: nn.Module, train_loader, val_loader=None, config: FitConfig | None = None, **overrides) -> History:
    """Train ``model``; returns its :class:`History`. Settings: a :class:`FitConfig`, keywords (its field names), or
    both (the keywords replace the config's fields): ``fit(model, loader, val, epochs=10, lr=2e-3)``.

    The learning rate warms up linearly and decays along a cosine to 0, per optimizer step (``lr_update="epoch"``:
    per epoch). A run lasts ``epochs``, capped by ``max_steps`` and ``max_tflop`` (compute: FLOPs of one training
    image x images) or ended by ``time_budget_s`` (wall clock since fit began); under a time budget the schedule
    follows the fraction of the budget spent, so it never jumps. With a ``val_loader`` the best validation epoch's
    weights are restored at the end. A NaN or infinite loss stops the run with :class:`TrainingDivergedError`.

    ``checkpoint``: a file written at the end of every epoch (atomically; the one before is kept as ``.prev``).
    ``resume=True`` continues the run in it: a run stopped after epoch k and resumed ends with exactly the weights
    of a run that never stopped (same device and precision; a time-budget run continues on its budget's clock). A
    checkpoint of another run, a corrupt one or a finished one is reported before any training.

    Under ``torchrun --nproc_per_node N`` the model trains with DistributedDataParallel: the loader's batch is the
    global batch, and only rank 0 prints and writes. Works with HF models (logits or an output with ``.logits``).
    """
    cfg = FitConfig.build(config, **overrides)
    batches = _check_inputs(model, train_loader, val_loader)
    device = get_device(cfg.device)
    dist = distributed.setup(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    lock = _lock(cfg, dist)
    try:
        return _fit(model, train_loader, val_loader, cfg, device, dist, batches, lock)
    finally:
        if lock is not None:
            lock.release()


def _lock(cfg: FitConfig, dist: distributed.Dist) -> ckpt.RunLock | None:
    """The checkpoint's lock, taken by rank 0; a refusal reaches every process, so that none waits for the others."""
    if cfg.checkpoint is None:
        return None
    lock, refusal = ckpt.RunLock(Path(cfg.checkpoint)), ""
    if dist.main:
        try:
            lock.acquire(cfg.verbose)
        except ckpt.CheckpointError as e:
            refusal = str(e)
    refusal = distributed.gather(refusal, dist)[0]
    if refusal:
        raise ckpt.CheckpointError(refusal)
    return lock


def _fit(model, train_loader, val_loader, cfg: FitConfig, device, dist, batches: int, lock) -> History:
    """fit after its checks: open (or refuse) the checkpoint, set the run up, run the loop, finish."""
    verbose = cfg.verbose and dist.main
    identity, saved = None, None
    if cfg.checkpoint is not None:
        identity = ckpt.run_identity(model, train_loader, cfg, val_loader)
        saved = ckpt.open_run(Path(cfg.checkpoint), cfg.resume, identity, verbose, cfg.overwrite)
    if saved is not None and saved["state"].finished:
        return _finished(model.to(device), saved, cfg, verbose)
    precision = (resolve_precision(device, cfg.precision) if saved is None or cfg.precision != "auto"
                 else ckpt.resumed_precision(saved["state"].history.precision, device, verbose))
    loader = distributed.shard(train_loader, dist)
    run = _Run.start(model.to(device), loader, cfg, device, precision, dist, batches, identity, saved)
    run.lock, run.saved_epoch = lock, (run.state.epoch if saved is not None else None)
    try:
        _loop(run, loader, val_loader)
    except KeyboardInterrupt:
        saved_epoch = run.saved_epoch
        run.say("" if cfg.checkpoint is None else
                f"fit: interrupted in epoch {run.state.epoch}; {cfg.checkpoint} holds this run after epoch "
                f"{saved_epoch}: fit(..., resume=True) continues from there" if saved_epoch is not None else
                f"fit: interrupted in epoch {run.state.epoch}, before this run wrote its first checkpoint")
        raise
    finally:
        run.close()
    return run.finish()


def _loop(run: "_Run", loader, val_loader) -> None:
    """Epochs of optimizer steps; after each epoch: validate, keep the best weights, checkpoint."""
    cfg, state, opt, scaler = run.cfg, run.state, run.opt, run.scaler
    accumulation, batches = cfg.accumulation_steps, len(loader)
    while not run.done():
        state.epoch += 1
        run.runner.train()
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: this epoch's order
            sampler.set_epoch(state.epoch)
        t0, seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), device=run.device)  # running sums stay on the device: no sync per step on GPUs
        correct = torch.zeros((), device=run.device, dtype=torch.long)
        for i, (x, y) in enumerate(loader):
            check_labels(y, run.classes)  # on the CPU copy: no wait for a GPU
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x, y_a, y_b, lam = mix(x, y, cfg.mixup_alpha, cfg.cutmix_alpha)  # unchanged when both are off
            with autocast(run.device, run.precision):
                logits = model_logits(run.runner, x).float()  # the one forward pass
            loss = mixed_loss(logits, y_a, y_b, lam, cfg.label_smoothing)
            if (run.device.type != "cuda" or i % 25 == 0) and run.bad(loss):  # free on a CPU; every rank agrees
                raise run.diverged(loss.item(), x, i + 1)
            group = accumulation if i < batches - batches % accumulation else batches % accumulation
            scaler.scale(loss / group).backward()  # the mean over the group; the scaler is a no-op unless fp16
            if (i + 1) % accumulation == 0 or i + 1 == batches:
                lr = cfg.lr * run.lr_factor()
                for group in opt.param_groups:
                    group["lr"] = lr
                scaler.unscale_(opt)  # clip the true gradients
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
                scaler.step(opt)  # skipped when fp16 gradients overflowed
                scaler.update()
                opt.zero_grad(set_to_none=True)
                state.history.lr.append(lr)
                state.step += 1
                if run.average is not None:
                    run.average.update(run.model)
                run.log_step(loss, lr)
            loss_sum += loss.detach() * y.numel()
            correct += (logits.argmax(-1) == y).sum()  # against the unmixed labels
            seen += y.numel()
            run.show(i, batches, loss_sum, correct, seen)
            if state.step >= state.total_steps or run.time_is_up():
                break
        run.end_epoch(t0, loss_sum.item(), correct.item(), seen, i + 1, val_loader)


def _check_inputs(model, train_loader, val_loader) -> int:
    """The model and loaders, checked before any work; returns the number of batches per epoch."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if val_loader is not None and not hasattr(val_loader, "__iter__"):
        raise TypeError(f"val_loader must be a DataLoader (or None), got {type(val_loader).__name__}.")
    try:
        batches = len(train_loader)
    except TypeError:
        raise TypeError(f"train_loader must have a length (a DataLoader over a map-style data set), "
                        f"got {type(train_loader).__name__}.") from None
    if batches == 0:
        raise ValueError("train_loader yields no batches: the training set is empty (or smaller than the batch "
                         "size with drop_last=True).")
    return batches


@dataclasses.dataclass
class _Run:
    """One fit call's objects, private to this module: the loop above reads them; the state it saves is typed."""
    cfg: FitConfig
    model: nn.Module
    runner: nn.Module  # what the loop calls: the model, wrapped for DDP and compiled where that applies
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: RunState
    device: torch.device
    precision: str
    dist: distributed.Dist
    loader: Any  # the training loader as this process reads it
    bar: Any
    writer: Any  # a TensorBoard SummaryWriter, or None
    identity: dict | None
    classes: int | None
    image_flops: float
    step_flops: float  # what an optimizer step costs beyond its images: every process's weight-average update
    batches: int
    average: WeightAverage | None  # the weight average (ema_decay), or None
    start: float  # time.perf_counter() when this stretch began
    now_s: float = 0.0  # the run's wall time at the last optimizer step (rank 0's under torchrun)
    lock: Any = None  # the checkpoint's RunLock: its heartbeat is refreshed at every checkpoint
    save_s: float = 0.0  # what the last checkpoint write took (rank 0's)
    saved_epoch: int | None = None  # the last epoch this call wrote a checkpoint of
    first_epoch: int = 1  # of this stretch
    channels_last: bool = False  # the model's convolutions, and so its input batches, in channels-last layout

    @classmethod
    def start(cls, model, loader, cfg: FitConfig, device, precision, dist, batches, identity, saved) -> "_Run":
        """Plan (or restore), optimizer, gradient scaler, compilation, DDP, progress bar and TensorBoard."""
        start = time.perf_counter()
        image_flops = budget.flops_per_image(model, loader, device)
        steps_per_epoch = math.ceil(batches / cfg.accumulation_steps)
        if saved is not None:
            model.load_state_dict(saved["model"])
        channels_last = channels_last_convolutions(model, device, precision, cfg.channels_last)
        if channels_last:  # the layout oneDNN's bf16 convolutions run in; put back when the run ends (close)
            model.to(memory_format=torch.channels_last)
        average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        step_flops = 0.0 if average is None else float(average.flops() * dist.world)
        if saved is None:
            total = budget.planned_steps(cfg, steps_per_epoch, (getattr(loader, "batch_size", None) or 1) * dist.world
                                         * cfg.accumulation_steps, image_flops, step_flops)
            state = RunState(total_steps=total, epochs=math.ceil(total / steps_per_epoch))
        else:
            state = saved["state"]
            if average is not None:
                average.model.load_state_dict(state.average_state)
                average.updates = state.step
        opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, device)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 gradients underflow
        if saved is not None:
            ckpt.load_optimizer(opt, saved["optimizer"])
            if saved["scaler"]:
                scaler.load_state_dict(saved["scaler"])
        compiled = resolve_compile(cfg.compile, device, precision,
                                   budget.repays_compilation(cfg, state.total_steps, device.type), model)
        if compiled:
            import_inductor_quietly()
        runner = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        runner = torch.compile(runner, options=compile_options(model, device)) if compiled else runner
        hist = state.history
        hist.device, hist.precision, hist.compiled, hist.world_size = str(device), precision, compiled, dist.world
        hist.channels_last = channels_last
        first_epoch = state.epoch + 1
        if saved is not None:
            hist.resumes += 1
            ckpt.set_rng_state(state.rng[min(dist.rank, len(state.rng) - 1)], loader)
        hist.stretches.append(ckpt.stretch(device, precision, first_epoch))
        verbose = cfg.verbose and dist.main
        if verbose:
            resumed = (f"resumed {cfg.checkpoint} after epoch {state.epoch} (optimizer step {state.step}, "
                       f"{state.elapsed_s / 60:.1f} min so far, resume {hist.resumes}); " if saved is not None else "")
            length = (f"a {cfg.time_budget_s / 60:.1f}-minute budget" if cfg.time_budget_s is not None
                      else f"{state.total_steps} optimizer steps")
            threads = torch.get_num_threads()
            print(f"fit: {resumed}{device} in {precision} ({precision_reason(device, precision)}), torch.compile "
                  f"{'on' if compiled else 'off'}{', channels-last convolutions' if channels_last else ''}, "
                  f"{threads} torch thread{'s' * (threads != 1)}"
                  f"{f', {dist.world} processes' if dist.world > 1 else ''}, {length}", flush=True)
        run = cls(cfg=cfg, model=model, runner=runner, opt=opt, scaler=scaler, state=state, device=device,
                  precision=precision, dist=dist, loader=loader, bar=None, writer=None, identity=identity, classes=num_classes(model),
                  image_flops=image_flops, step_flops=step_flops, batches=batches, average=average, start=start,
                  first_epoch=first_epoch, channels_last=channels_last)
        run.now_s = distributed.broadcast([run.elapsed()], dist)[0]  # rank 0's clock from the start
        run.bar = run._make_bar(loader)
        if cfg.log_dir is not None and dist.main:
            from torch.utils.tensorboard import SummaryWriter
            run.writer = SummaryWriter(log_dir=str(cfg.log_dir))
        return run

    def elapsed(self) -> float:
        """Wall time of the whole run: the stretches before a resume, and this one."""
        return self.state.elapsed_s + time.perf_counter() - self.start

    def lr_factor(self) -> float:
        """The schedule at this optimizer step. Under a time budget rank 0's clock decides, sent to every process."""
        s = self.state
        if self.cfg.time_budget_s is not None:
            self.now_s = distributed.broadcast([self.elapsed()], self.dist)[0]
            if s.step == 1 and s.clock_start_s is None:  # the first step (and its compilation) has just ended
                s.clock_start_s = self.now_s
        return budget.lr_factor(self.cfg, s.step, s.total_steps, s.epoch, s.epochs, self.now_s, s.clock_start_s)

    def time_is_up(self) -> bool:
        """Rank 0's clock and reserve (broadcast), so that every process stops at the same batch."""
        return budget.time_is_up(self.cfg, self.now_s, self.state.end_reserve_s)

    def done(self) -> bool:
        """The one stop decision between epochs: decided at the end of the last epoch (and saved with it)."""
        s = self.state
        return s.finished or s.epoch >= s.epochs or s.step >= s.total_steps

    def bad(self, loss: torch.Tensor) -> bool:
        """A NaN or infinite loss on any process (under torchrun all of them stop together)."""
        bad = not bool(torch.isfinite(loss))
        return bool(distributed.all_sum([float(bad)], self.dist)[0]) if self.dist.world > 1 else bad

    def say(self, text: str) -> None:
        """One line from rank 0, under the progress bar."""
        if text and self.cfg.verbose and self.dist.main:
            from tqdm.auto import tqdm
            tqdm.write(text)

    def _make_bar(self, loader):
        """One bar over the whole run, so that its time left is the run's: batches, or a time budget's seconds.
        TQDM_DISABLE=1 (tqdm's own switch) turns it off too: scripts/execute_notebooks.py stores no bars."""
        from tqdm.auto import tqdm

        bars_off = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
        off = not self.cfg.progress or bars_off or not self.dist.main
        s = self.state
        if self.cfg.time_budget_s is not None:
            bar = tqdm(total=round(self.cfg.time_budget_s), unit="s", disable=off, dynamic_ncols=True)
            bar.update(min(bar.total, round(self.now_s)))
            return bar
        total = min(s.epochs * self.batches, s.total_steps * self.cfg.accumulation_steps)
        bar = tqdm(total=total, unit="batch", disable=off, dynamic_ncols=True)
        bar.update(min(total, s.epoch * self.batches))
        return bar

    def show(self, i: int, batches: int, loss_sum, correct, seen: int) -> None:
        """Advance the bar; every 25 batches, the epoch's running loss and accuracy."""
        if self.cfg.time_budget_s is not None:
            self.bar.update(max(0, min(self.bar.total, round(self.now_s)) - self.bar.n))
        else:
            self.bar.update(1)
        if not self.bar.disable and (i % 25 == 0 or i + 1 == batches):
            self.bar.set_description(f"epoch {self.state.epoch}/{self.state.epochs}", refresh=False)
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")

    def log_step(self, loss: torch.Tensor, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("step/train_loss", loss.item(), self.state.step)
            self.writer.add_scalar("step/lr", lr, self.state.step)

    def diverged(self, loss: float, x: torch.Tensor | None, batch: int) -> TrainingDivergedError:
        """The one place a bad loss is handled: close the bar, put the best finite epoch's weights back, explain."""
        self.bar.close()
        restored = None
        if self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
            restored = self.state.history.best_epoch
        data = ("the batch itself contains NaN/inf inputs: clean the data first. "
                if x is not None and not torch.isfinite(x).all() else "")
        kept = (f"The weights of epoch {restored} (the best finite epoch) were restored into the model."
                if restored else "The model's weights are left as they were when the loss went bad.")
        fp16 = f", or fp16 overflow (try precision={'bf16'!r} or {'fp32'!r})" if self.precision == "fp16" else ""
        where = f"batch {batch}" if x is not None else f"the mean over its {batch} batches"
        return TrainingDivergedError(
            f"training diverged: the loss became {loss} at epoch {self.state.epoch}, {where} (optimizer step "
            f"{self.state.step}). {data}Likely causes: a learning rate too high for this model and batch "
            f"(lr={self.cfg.lr:g}: try lr/10 or a longer warmup), no gradient clipping (try grad_clip=1.0), NaN/inf "
            f"values in the data{fp16}. {kept}")

    def end_epoch(self, t0: float, loss_sum: float, correct: float, seen: int, batches_run: int, val_loader) -> None:
        """Epoch statistics (summed over processes), validation, best weights, log line, TensorBoard, checkpoint."""
        s, hist, cfg = self.state, self.state.history, self.cfg
        train_end = time.perf_counter()
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], self.dist)
        s.images += int(seen)
        s.train_s += train_end - t0
        hist.epoch.append(s.epoch)
        hist.train_loss.append(loss_sum / seen)
        hist.train_acc.append(correct / seen)
        hist.attention = attention_report(self.model)
        if not math.isfinite(hist.train_loss[-1]):  # a bad step the GPU's sampled check missed
            raise self.diverged(hist.train_loss[-1], None, batches_run)
        evaluated = self.model if self.average is None else self.average.model  # what validation, best and end use
        if val_loader is not None:
            val = evaluate(evaluated, val_loader, self.device, self.precision)  # eager: no recompiles
            hist.val_loss.append(val["loss"])
            hist.val_acc.append(val["acc"])
            if hist.best_val_acc is None or val["acc"] > hist.best_val_acc:
                best = ckpt.cpu_state(evaluated)
                if all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point()):
                    hist.best_val_acc, hist.best_epoch, s.best_state = val["acc"], s.epoch, best
        if s.epoch == self.first_epoch and hist.attention is not None:
            self.say(f"fit: attention ran {hist.attention}")
        val_txt = f" | val loss {hist.val_loss[-1]:.4f} acc {hist.val_acc[-1]:.4f}" if val_loader is not None else ""
        self.say(f"epoch {s.epoch:3d} | train loss {hist.train_loss[-1]:.4f} acc {hist.train_acc[-1]:.4f}{val_txt} | "
                 f"{time.perf_counter() - t0:.1f}s")
        if self.writer is not None:
            for name, values in (("train_loss", hist.train_loss), ("train_acc", hist.train_acc),
                                 ("val_loss", hist.val_loss), ("val_acc", hist.val_acc)):
                if values:
                    self.writer.add_scalar(f"epoch/{name}", values[-1], s.epoch)
        # The one stop decision, on rank 0's clock: the end of an epoch costs its validation and the last checkpoint.
        now, validation_s = distributed.broadcast([self.elapsed(), time.perf_counter() - train_end], self.dist)
        s.end_reserve_s = validation_s + self.save_s
        s.finished = s.epoch >= s.epochs or s.step >= s.total_steps or budget.time_is_up(cfg, now, s.end_reserve_s)
        hist.epoch_time_s.append(time.perf_counter() - t0)  # training and validation; the checkpoint added below
        self.summarize()
        if cfg.checkpoint is not None:
            rng = distributed.gather(ckpt.rng_state(self.loader), self.dist)  # every process's
        if cfg.checkpoint is not None and self.dist.main:
            saving = time.perf_counter()
            s.rng = rng
            s.average_state = None if self.average is None else ckpt.cpu_state(self.average.model)
            saved = dataclasses.replace(s, elapsed_s=self.elapsed())  # the whole run's wall time so far
            ckpt.save_run(Path(cfg.checkpoint), self.model, self.opt, self.scaler, saved, self.identity)
            if self.lock is not None:
                self.lock.refresh(epoch_s=hist.epoch_time_s[-1])
            hist.epoch_time_s[-1] += time.perf_counter() - saving
            self.save_s = time.perf_counter() - saving
        self.saved_epoch = s.epoch if cfg.checkpoint is not None else None
        self.now_s, self.save_s = distributed.broadcast([self.elapsed(), self.save_s], self.dist)

    def close(self) -> None:
        if self.channels_last:  # the model leaves fit in the standard layout
            self.model.to(memory_format=torch.contiguous_format)
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def summarize(self) -> None:
        """The run's totals so far in its History: time, steps, pace, compute, this stretch's end."""
        s, hist = self.state, self.state.history
        hist.wall_time_s = self.elapsed()
        hist.total_steps = s.step
        hist.stretches[-1]["last_epoch"] = s.epoch
        hist.stretches[-1]["wall_time_s"] = time.perf_counter() - self.start
        hist.train_images_per_s = s.images / max(1e-9, s.train_s)  # training only, validation excluded
        hist.gflop_per_image, hist.train_images = self.image_flops / 1e9, s.images
        hist.train_tflop = (self.image_flops * s.images + self.step_flops * s.step) / 1e12

    def finish(self) -> History:
        """Record time, pace and compute, and put the best validation epoch's weights back."""
        self.summarize()
        self.opt.zero_grad(set_to_none=True)  # a budget may stop inside an accumulation group
        if self.cfg.restore_best and self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
        elif self.average is not None:
            self.model.load_state_dict(self.average.model.state_dict())
        return self.state.history


def _finished(model: nn.Module, saved: dict, cfg: FitConfig, verbose: bool) -> History:
    """Resuming a run that already ended: its final (or best) weights and its History, with no training."""
    state = saved["state"]
    best = cfg.restore_best and state.best_state is not None
    model.load_state_dict(state.best_state if best else state.average_state or saved["model"])
    if verbose:
        print(f"fit: the run in this checkpoint finished after {state.epoch} epochs; returning its History "
              "(nothing to train)")
    return state.history
