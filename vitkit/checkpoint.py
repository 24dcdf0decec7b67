"""Checkpoints that let a training run survive a disconnect: one file per run, written atomically at the end of every
epoch, holding the weights, the optimizer, the gradient scaler and the :class:`~vitkit.state.RunState` (counters,
plan, best epoch, History, every random-number state), so that a resumed run continues the run that stopped.
:func:`vitkit.train.fit` writes and reads them (``checkpoint=``, ``resume=True``).

A write goes to ``<name>.tmp`` first and then replaces the file in one rename, keeping the one before as
``<name>.prev``: a kill during the write leaves the last complete checkpoint in place.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.records import code_commit, hardware_info
from vitkit.config import FitConfig
from vitkit.runtime import precision_reason, resolve_precision
from vitkit.state import RunState

__all__ = ["CheckpointError", "save", "load", "cpu_state", "run_identity", "check_identity", "data_fingerprint", "describe",
           "rng_state", "set_rng_state", "stretch", "save_run", "open_run", "resumed_precision", "set_aside", "RunLock"]

VERSION = 2  # 1: the same content before RunState existed (read and converted by load)


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, truncated, corrupt, or from another run. The message says what to do."""


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, then one rename); the previous file becomes ``.prev``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"version": VERSION, **state}, tmp)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """The state saved by :func:`save`; a truncated, corrupt or foreign file raises :class:`CheckpointError`
    naming it and what to do instead."""
    path = Path(path)
    prev = path.with_name(path.name + ".prev")
    if not path.is_file():
        hint = (f" Only {prev.name} is there (a write was interrupted): rename it to {path.name} to resume from it."
                if prev.is_file() else "")
        raise CheckpointError(f"no checkpoint at {path}.{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, unpickling error, wrong format
        alternative = f" or resume from the previous one, {prev.name} (rename it to {path.name})" if prev.is_file() else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e}); start the run afresh "
                              f"(overwrite=True){alternative}.") from e
    if not isinstance(state, dict) or state.get("version") not in (1, VERSION):
        raise CheckpointError(f"{path} is not a vitkit training checkpoint (version {VERSION}); pass the right file, or "
                              "start a run afresh on it with overwrite=True.")
    return _from_version_1(state) if state["version"] == 1 else state


def _from_version_1(old: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before RunState, in today's layout (its LR schedule was a function of the step too)."""
    state = {"total_steps": old["plan"]["total_steps"], "epochs": old["plan"]["epochs"], "rng": [old["rng"]],
             **{k: old[k] for k in ("epoch", "step", "images", "train_s", "finished", "best_state", "history")},
             "elapsed_s": old["elapsed_s"]}
    return {"version": VERSION, "identity": old["identity"], "model": old["model"], "optimizer": old["optimizer"],
            "scaler": old["scaler"], "state": state}


_DATA_KEYS = {"model", "dataset", "batch_size", "data", "split_sizes", "loader_seed", "augmentation"}


def data_fingerprint(dataset) -> str | None:
    """A hash of a data set's images and labels when it holds them in memory (well under a second for MNIST or the
    CIFAR-10 copy), so that a resume on changed data is refused; None for other data sets (not read, too slow)."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return None
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for t in (images, labels):
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _transform_name(transform) -> str | None:
    """The augmentation as text: its repr where that is stable (torchvision's lists every op and parameter), else
    its class name (a repr with a memory address changes from process to process)."""
    if transform is None:
        return None
    text = repr(transform)
    return type(transform).__qualname__ if " at 0x" in text else text


def run_identity(model: nn.Module, train_loader, cfg: FitConfig, val_loader=None) -> dict[str, Any]:
    """What makes a checkpoint belong to a run: the model's config (its parameter shapes where it has no dataclass
    config), the training data (source, a fingerprint of its images and labels, the split sizes, the loader's seed,
    batch size and augmentation), every setting of ``cfg`` that changes what the run computes
    (:meth:`FitConfig.identity`) and the entries of ``cfg.run_info`` (seed, recipe, ...), which may not redefine the
    others. Machine paths are not part of it: the data's source line shows its folder as
    :func:`vitkit.sources.shown_path` does (as given where relative, else relative to the repository), so a checkpoint
    moves with the repository to another machine; but a data folder that moved, or is named by another relative
    path, shows another source, and resuming is refused."""
    settings = cfg.identity()
    run_info = settings.pop("run_info") or {}
    clash = sorted(set(run_info) & (_DATA_KEYS | set(settings)))
    if clash:
        raise ValueError(f"run_info may not set {', '.join(map(repr, clash))}: fit records those itself; name your "
                         "entries otherwise (e.g. 'pretrained' for a model id).")
    config = getattr(model, "config", None)
    if is_dataclass(config):
        model_id = asdict(config)
    else:
        model_id = {k: list(v.shape) for k, v in model.state_dict().items()}
    dataset = getattr(train_loader, "dataset", None)
    generator = getattr(train_loader, "generator", None)
    sizes = [len(d) for d in (dataset, getattr(val_loader, "dataset", None)) if hasattr(d, "__len__")]
    return {"model": model_id, "dataset": getattr(dataset, "source", None), "data": data_fingerprint(dataset),
            "split_sizes": sizes, "loader_seed": generator.initial_seed() if generator is not None else None,
            "batch_size": getattr(train_loader, "batch_size", None),
            "augmentation": _transform_name(getattr(dataset, "transform", None)), **settings, **run_info}


def check_identity(saved: dict[str, Any], current: dict[str, Any], path: str | Path, verbose: bool = True) -> None:
    """:class:`CheckpointError` naming every setting in which the checkpoint's run differs from this one. Settings
    that an older checkpoint did not record are named in one line and not compared."""
    differ = []
    for key in sorted(set(saved) & set(current)):
        a, b = saved[key], current[key]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            differ += [f"{key}.{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in fields[:5]]
        else:
            differ.append(f"{key}: checkpoint {a!r}, now {b!r}")
    differ += [f"{key}: checkpoint {saved[key]!r}, now not set" for key in sorted(set(saved) - set(current))]
    if differ:
        raise CheckpointError(f"checkpoint {path} belongs to another run; it differs in " + "; ".join(differ)
                              + ". Resume with the run's own settings, or start fresh with another checkpoint path.")
    lacking = sorted(set(current) - set(saved))
    if lacking and verbose:
        print(f"fit: {Path(path).name} was written by an older version, which did not record "
              f"{', '.join(lacking)}; those are not checked")


def rng_state(loader) -> dict[str, Any]:
    """Every random-number state that decides the data order, augmentation, dropout and mixing: torch (CPU and
    CUDA), Python, NumPy, and the loader's own generator (which also seeds its worker processes each epoch)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    generator = getattr(loader, "generator", None)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "loader": generator.get_state() if generator is not None else None}


def set_rng_state(state: dict[str, Any], loader) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    generator = getattr(loader, "generator", None)
    if state["loader"] is not None and generator is not None:
        generator.set_state(state["loader"])


def stretch(device: torch.device, precision: str, first_epoch: int) -> dict[str, Any]:
    """What runs this stretch of the run (from the start or a resume to the next stop)."""
    hw = hardware_info(device)
    return {"first_epoch": first_epoch, "last_epoch": None, "wall_time_s": 0.0, "precision": precision,
            "machine": hw.get("gpu", hw["cpu"]), "native_bf16": hw["cpu_native_bf16"], "threads": hw["torch_threads"],
            "commit": code_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights and buffers (a checkpoint's, the best epoch's, the weight average's)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``opt.load_state_dict(state)`` with every per-parameter tensor (Adam's moments, SGD's momentum) laid out as
    its parameter: a run resumed in another memory layout (channels-last convolutions in bf16, not in fp32) would
    otherwise hand a fused optimizer a moment and a parameter whose elements it pairs wrongly, silently."""
    opt.load_state_dict(state)
    for param, moments in opt.state.items():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                moments[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save_run(path: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
             state: RunState, identity: dict[str, Any]) -> None:
    """Everything the rest of the run depends on, in one atomic write (``state.rng`` holds every process's RNG)."""
    save(path, {"identity": identity, "model": cpu_state(model),
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "state": state.to_dict()})


def describe(path: Path) -> str:
    """What a checkpoint holds, in a few words: recipe (or model), epochs reached, when it was saved."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    try:
        saved = load(path)
    except CheckpointError:
        return f"an unreadable checkpoint, saved {when}"
    ident, state = saved["identity"], saved["state"]
    model = ident.get("model", {})
    what = (f"recipe {ident['recipe']!r}" if ident.get("recipe") else
            f"a model of dim {model['dim']} and depth {model['depth']}" if isinstance(model, dict) and "dim" in model
            else "a model")
    done = "finished" if state.get("finished") else "unfinished"
    return f"{what}, {done} after epoch {state['epoch']} of {state['epochs']}, saved {when}"


def open_run(path: Path, resume: bool, identity: dict, verbose: bool, overwrite: bool = False) -> dict | None:
    """The saved run to continue from (``"state"`` a :class:`RunState`), or None to start fresh. A checkpoint of
    another run, and any checkpoint when neither ``resume`` nor ``overwrite`` is given, raise before any work."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint={str(path)!r} is a folder; pass a file path in it, e.g. "
                              f"{str(path / 'run.pt')!r}.")
    if not resume:
        if path.exists() and not overwrite:
            raise CheckpointError(f"{path} already holds a run ({describe(path)}); fit does not replace it unasked. "
                                  "Pass resume=True to continue it (a notebook: RESUME = True), another checkpoint "
                                  "path to start a new run beside it, or overwrite=True (or delete the file) to "
                                  "replace it.")
        if path.exists() and verbose:
            print(f"fit: starting fresh; {path} ({describe(path)}) will be replaced after epoch 1 (overwrite=True)")
        return None
    if not path.exists() and not path.with_name(path.name + ".prev").exists():
        if verbose:
            print(f"fit: no checkpoint at {path} yet: starting the run")
        return None
    saved = load(path)
    check_identity(saved["identity"], identity, path, verbose)
    return {**saved, "state": RunState.from_dict(saved["state"])}


def resumed_precision(precision: str, device: torch.device, verbose: bool) -> str:
    """The checkpoint's precision, unless this device lacks native support for it: then fp32, never emulated bf16."""
    if precision == "bf16" and resolve_precision(device) != "bf16":
        if verbose:
            print(f"fit: the run started in bf16, which this {device.type} has no native support for "
                  f"({precision_reason(device, 'fp32')}): continuing in fp32")
        return "fp32"
    return precision


def set_aside(folder: Path, prefix: str) -> int:
    """Move the checkpoints in ``folder`` whose names start with ``prefix`` (and their ``.prev`` copies) to
    ``folder/previous/``, replacing older ones there, so that a run started afresh is neither refused by them nor handed
    a stale finished run; returns how many files moved. A held lock stays where it is."""
    old = [p for p in Path(folder).glob(f"{prefix}*") if p.is_file() and not p.name.endswith(".lock")]
    if old:
        (Path(folder) / "previous").mkdir(parents=True, exist_ok=True)
        for p in old:
            os.replace(p, Path(folder) / "previous" / p.name)
    return len(old)


@contextlib.contextmanager
def _folder_guard(folder: Path):
    """Within the block, no other process of this host takes a lock in ``folder``: two that found the same stale lock
    would otherwise both take it over, each deleting the other's fresh lock. An exclusive flock on the folder itself
    (no file left behind), held for the few milliseconds a lock takes; none where the platform or the file system has
    no flock (Windows, some network drives), where the holder's host and heartbeat remain the only check."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)  # which releases the flock


class RunLock:
    """One process per checkpoint: ``<checkpoint>.lock``, created exclusively (which also proves the folder
    writable), holding host, pid, start time and a heartbeat refreshed at every checkpoint. The same process (a
    notebook cell run again) reuses its own lock; a dead holder on this host is taken over, and said so; another
    host's lock only after ``stale_s`` without a heartbeat (best effort on network drives such as Colab's Drive)."""

    def __init__(self, checkpoint: Path, stale_s: float = 2 * 3600):
        self.path, self.stale_s, self.held = checkpoint.with_name(checkpoint.name + ".lock"), stale_s, False

    def acquire(self, verbose: bool = True) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"the checkpoint folder {folder} cannot be created ({e.strerror}); pass checkpoint= a "
                                  "path in a folder you can write.") from None
        with _folder_guard(folder):
            self._take(verbose)

    def _take(self, verbose: bool) -> None:
        import json
        import socket

        folder = self.path.parent
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
                    self.held = True  # this process's own lock (a cell run again in one kernel)
                    return
                if not self._stale(holder):
                    raise CheckpointError(
                        f"{self.path.with_suffix('')} is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('started')}, last heartbeat "
                        f"{self._age(holder):.0f} s ago): two runs would overwrite each other's checkpoints. Wait "
                        f"for it, stop it, or pass another checkpoint path. If that machine is gone (a notebook "
                        f"host that disconnected), delete {self.path} and run again.") from None
                if verbose:
                    print(f"fit: taking over {self.path.name}: its holder (process {holder.get('pid')} on "
                          f"{holder.get('host')}) is gone")
                self.path.unlink(missing_ok=True)
                continue
            except OSError as e:
                raise CheckpointError(f"cannot write in the checkpoint folder {folder} ({e.strerror}); pass "
                                      "checkpoint= a path in a folder you can write.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(started=time.strftime("%Y-%m-%d %H:%M:%S")), f)
            self.held = True
            return
        raise CheckpointError(f"could not take {self.path}: other processes keep creating it.")

    def in_use(self) -> dict[str, Any] | None:
        """The holder's info (host, pid, started) where another live process holds the lock; None where it is free,
        stale or this process's own: how a queue of runs tells that a run is going on elsewhere, without taking it."""
        if not self.path.exists():
            return None
        holder = self._holder()
        return None if self._ours() or self._stale(holder) else holder

    def refresh(self, epoch_s: float | None = None) -> None:
        """The heartbeat: the lock's time (and how long an epoch takes, so that another host waits long enough),
        rewritten at every checkpoint, unless another process has taken the lock over meanwhile."""
        import json

        if self.held and self._ours():
            info = {**self._holder(), **self._info(), **({"epoch_s": epoch_s} if epoch_s is not None else {})}
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, self.path)

    def release(self) -> None:
        if self.held and self._ours():
            self.path.unlink(missing_ok=True)
        self.held = False

    def _ours(self) -> bool:
        import socket
        holder = self._holder()
        return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()

    def _info(self, **extra) -> dict[str, Any]:
        import socket
        return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(), **extra}

    def _holder(self) -> dict[str, Any]:
        import json
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # empty or half-written: its writer is creating it, or died doing so

    def _age(self, holder: dict) -> float:
        beat = holder.get("heartbeat")
        return time.time() - beat if isinstance(beat, (int, float)) else float("inf")

    def _stale(self, holder: dict) -> bool:
        """The holder is gone: a dead process on this host, a lock left unreadable for 10 s, or another host's silent
        too long."""
        import socket
        pid = holder.get("pid")
        if not holder or not isinstance(pid, int):  # unreadable: stale, unless its writer is still filling it in
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except OSError:
                return True
        if holder.get("host") != socket.gethostname():  # silent for longer than a few of its epochs, and 2 hours
            epoch_s = holder.get("epoch_s") if isinstance(holder.get("epoch_s"), (int, float)) else 0
            return self._age(holder) > max(self.stale_s, 3 * epoch_s)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False
