"""Where and how to run: the device, seeds, the precision (bf16 only where the hardware has it natively) and whether
to compile. ``fit``, ``evaluate``, the bench and the records all ask here, so that every hardware-dependent choice
comes from one place (the attention kernel is the model's own choice: ``vit_helpers.use_fused_attention``).
"""
from __future__ import annotations

import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitkit.checks import check_number

__all__ = ["set_seed", "get_device", "cpu_has_native_bf16", "resolve_precision", "precision_reason", "autocast",
           "resolve_compile", "trains_with_dropout", "compile_options", "import_inductor_quietly", "NotebookSetup",
           "notebook_setup"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    check_number("seed", seed, low=0, high=2 ** 32 - 1, integer=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given (e.g. ``"cpu"``, ``"cuda:1"``), else CUDA, then Apple MPS, then CPU.

    A device that is not there raises a ValueError saying which ones are, before any work is done."""
    if preferred:
        try:
            device = torch.device(preferred)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"unknown device {preferred!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps' (or None to pick "
                             "the best one available).") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available here (no GPU, or a CPU-only "
                             "torch build); use 'cpu', or leave the device unset (None) to pick what is available.")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} GPU(s) are "
                             "visible; use 'cuda:0'..")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but Apple's MPS backend is not available here; use 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with bf16 matrix instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo.

    Without them PyTorch emulates bf16 matrix products, which is far slower than fp32 (measured on an AMD
    EPYC without AVX-512: 1.3 GFLOP/s in bf16 vs 170 GFLOP/s in fp32); with them bf16 is several times
    faster than fp32. Elsewhere (macOS, Windows, ARM) this returns False and training stays in fp32.
    """
    try:
        return _cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def _cpuinfo_has_bf16(cpuinfo: str) -> bool:
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """The precision :func:`fit` and :func:`evaluate` run in: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    ``"auto"`` picks the fastest one that trains correctly on ``device``: bf16 autocast on CUDA GPUs with
    native bf16 (Ampere and newer); fp16 autocast with a gradient scaler on older CUDA GPUs (T4, V100);
    bf16 autocast on CPUs with native bf16 (:func:`cpu_has_native_bf16`); fp32 elsewhere (other CPUs, MPS).
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(map(repr, _PRECISIONS))} "
                         "('auto' picks the fastest correct one for the device).")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def precision_reason(device: torch.device, precision: str) -> str:
    """Why ``precision`` runs on ``device``, for fit's set-up line: the hardware's support, or that it was asked for."""
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        where = f"{torch.cuda.get_device_name(device)}, {'native bf16' if native else 'no native bf16'}"
        if precision == resolve_precision(device):
            return where + ("" if native else ": fp16 with a gradient scaler")
        return f"{where}; {precision} as asked"
    if device.type == "cpu":
        where = "CPU with AVX512-BF16/AMX" if cpu_has_native_bf16() else "CPU without native bf16 (AVX512-BF16/AMX)"
        return where if precision == resolve_precision(device) else f"{where}; {precision} as asked"
    return f"{device.type}"


def autocast(device: torch.device, precision: str):
    """Autocast context for an already resolved precision (``resolve_precision``)."""
    precision = resolve_precision(device, precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def channels_last_convolutions(model: torch.nn.Module, device: torch.device, precision: str,
                               setting: bool | str = "auto") -> bool:
    """Whether ``fit`` trains ``model`` with its convolutions in channels-last layout: ``setting`` (FitConfig's
    ``channels_last``) if True or False; ``"auto"``: eager and channels-last for our ViT with CCT's
    convolutional tokenizer (``stem="cct"``) on a CPU in bf16, the one case measured (bench/profile_step.py's record
    in docs/speed.md: faster per step than compiled in the standard layout, where oneDNN reorders every
    convolution's input and output). Other convolutional models keep fit's usual choice until measured."""
    if setting != "auto":
        return bool(setting)
    config = getattr(model, "config", None)
    return device.type == "cpu" and precision == "bf16" and getattr(config, "stem", None) == "cct"


def resolve_compile(compile: bool | str, device: torch.device, precision: str, long_run: bool,
                    model: torch.nn.Module | None = None) -> bool:
    """``compile="auto"``: torch.compile where bench/bench_throughput.py measured a gain (GPUs; CPUs, where
    inductor fuses the explicit attention path and GELU: +17 % measured in fp32) and the run is long enough to
    repay the 30-60 s of compilation (``long_run``: :func:`vitkit.budget.repays_compilation`). On a CPU only on
    Linux with a C++ compiler (inductor builds C++ code; macOS and Windows need extra set-up), and not for a
    ``model`` that trains with channels-last convolutions (:func:`channels_last_convolutions`), which runs eager."""
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}.")
    if compile != "auto":
        return compile
    if model is not None and channels_last_convolutions(model, device, precision):
        return False
    if device.type == "cuda":
        return long_run
    if device.type == "cpu" and platform.system() == "Linux":
        import shutil
        return long_run and any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return False


def trains_with_dropout(model: torch.nn.Module) -> bool:
    """Whether training draws dropout masks: an ``nn.Dropout`` (``vh.Dropout`` included) with p > 0, or an attention
    module that applies its own probability ``attention_dropout`` > 0 (HF's ViT)."""
    def draws(m: torch.nn.Module) -> bool:
        p = getattr(m, "attention_dropout", None)
        return ((isinstance(m, torch.nn.Dropout) and m.p > 0)
                or (isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0))
    return any(draws(m) for m in model.modules())


def compile_options(model: torch.nn.Module, device: torch.device) -> dict | None:
    """Inductor options for compiling ``model`` to train on ``device``. On a CPU, a model trained with dropout draws
    its random numbers with aten's generator (``fallback_random``, seeded by torch's seed): inductor's own
    per-element generator made a compiled step slower than an eager one there (bench/bench_dropout.py)."""
    return {"fallback_random": True} if device.type == "cpu" and trains_with_dropout(model) else None


def import_inductor_quietly() -> None:
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


@dataclass(frozen=True)
class NotebookSetup:
    """What every notebook's set-up cell establishes (see :func:`notebook_setup`)."""
    mode: str  # "smoke" or "full"
    device: torch.device
    out_dir: Path  # results/ go under it
    fig_dir: Path  # figures; smoke runs write to images/smoke/, so they never overwrite the README's
    checkpoint_dir: Path  # one checkpoint per training run
    started: float  # time.perf_counter() at set-up

    def elapsed_s(self) -> float:
        """Seconds since the set-up cell (imports done): the notebook's wall time in its record."""
        return time.perf_counter() - self.started


def notebook_setup(smoke: bool, device: str | torch.device | None, seed: int, output_dir: str | Path,
                   checkpoint_dir: str | Path | None = None) -> NotebookSetup:
    """The shared set-up of the notebooks: mode, device, seeds, output folders (figures folder created); prints one
    line saying what runs where."""
    out_dir = Path(output_dir)
    setup = NotebookSetup(mode="smoke" if smoke else "full", device=get_device(device), out_dir=out_dir,
                          fig_dir=out_dir / "images" / ("smoke" if smoke else ""),
                          checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints" / "runs",
                          started=time.perf_counter())
    setup.fig_dir.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    threads = torch.get_num_threads()
    print(f"mode {setup.mode} | device {setup.device} | torch {torch.__version__}, {threads} "
          f"thread{'s' * (threads != 1)} | seed {seed} | outputs under {out_dir.as_posix()}/")
    return setup
