"""Run records: what ran the numbers (hardware, threads, library versions) and one JSON file per run under results/."""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.runtime import cpu_has_native_bf16, get_device

__all__ = ["hardware_info", "save_results", "code_commit", "flat_metrics", "show_record"]


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def code_commit() -> str | None:
    """The git commit of the code that runs (with ``+changes`` if the checkout has uncommitted changes), or None
    outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if dirty else "")) or None


def hardware_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What ran the numbers: host, CPU, core count, torch threads, GPU name, library versions."""
    device = torch.device(device) if device is not None else get_device()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"hostname": socket.gethostname(), "device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchvision": _version("torchvision"), "python": platform.python_version(),
            "cpu_native_bf16": cpu_has_native_bf16()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _jsonable(value, where: str):
    """Plain JSON for a run record: tensors and NumPy scalars become numbers or lists; NaN/inf and objects
    JSON cannot hold raise, naming the key, instead of being written as strings or invalid JSON."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"save_results: {where} is {value}; a run record holds finite numbers only. If the run "
                         "diverged, fix it (lower the learning rate); if the value is undefined, pass None.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"save_results: {where} is a {type(value).__name__}, which a JSON record cannot hold; convert "
                    "it to a number, string, list or dict first.")


def save_results(path: str | Path, *, metrics: dict, config: dict, seed: int, dataset: str,
                 wall_time_s: float, device: torch.device | str | None = None, **extra) -> Path:
    """Write one run's record as JSON: metrics, config, seed, hardware, wall time, dataset copy.

    Tensors and NumPy numbers are written as numbers; NaN/inf or an object JSON cannot hold raise a
    ValueError/TypeError naming the key, before anything is written."""
    if not isinstance(metrics, dict) or not isinstance(config, dict):
        raise TypeError("save_results: metrics and config must be dicts.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"save_results: seed must be the run's int seed, got {type(seed).__name__} ({seed!r}).")
    if Path(path).is_dir():
        raise ValueError(f"save_results: {path} is a folder; pass the record's file path, e.g. "
                         f"{Path(path) / 'my-run.json'}.")
    if isinstance(wall_time_s, bool) or not isinstance(wall_time_s, (int, float)) or not math.isfinite(wall_time_s):
        raise TypeError(f"save_results: wall_time_s must be the run's wall-clock time in seconds (a finite number), "
                        f"got {wall_time_s!r}; measure it with time.perf_counter() around the run.")
    record = {"metrics": metrics, "config": config, "seed": seed, "dataset": dataset,
              "wall_time_s": round(float(wall_time_s), 1), "hardware": hardware_info(device),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    text = json.dumps(_jsonable(record, "record"), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flat_metrics(metrics: dict, prefix: str = "") -> dict[str, Any]:
    """The scalar leaves (numbers, strings, booleans) of a record's metrics, keyed by their dotted path; lists are
    left out (curves belong in figures)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def show_record(path: str | Path) -> None:
    """Print which record a run wrote and its scalar metrics, one ``name = value`` per line (floats to 6
    significant digits). A notebook ends with it: the reader sees the numbers its record holds, and the
    stale-output guard (``scripts/execute_notebooks.py``) checks the stored outputs against the file."""
    path = Path(path)
    try:
        shown = path.resolve().relative_to(Path.cwd().resolve())  # no machine paths in stored outputs
    except ValueError:
        shown = path
    try:
        metrics = json.loads(path.read_text())["metrics"]
    except FileNotFoundError:
        raise FileNotFoundError(f"no run record at {path}; the notebook's training cells write it (run them first).") \
            from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a run record ({type(e).__name__}: {e}); it needs a 'metrics' dict, as "
                         "records.save_results writes it.") from None
    print(f"record {shown.as_posix()}")
    for name, value in flat_metrics(metrics).items():
        print(f"  {name} = {value:.6g}" if isinstance(value, float) else f"  {name} = {value}")
