"""Command-line options the training scripts share, each defined once: the machine's (``--threads``, ``--device``)
and, for the studies that add runs to one record, where the record and the run checkpoints go."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_script(main) -> None:
    """A script's entry point: ``main()``'s return value is the exit status; a missing data set or weights file ends
    the script with its message (which names the folder and the files that go there), not with a traceback."""
    from vitkit.data import DataNotFoundError

    try:
        sys.exit(main())
    except DataNotFoundError as e:
        sys.exit(f"error: {e}")


def add_machine_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, one per core)")
    ap.add_argument("--device", default=None, help="cuda, mps or cpu (default: the fastest there is)")


def apply_machine_options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check ``--threads`` (a 0 or a negative is an error, not "unset") and apply it, before any work."""
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)


def add_study_options(ap: argparse.ArgumentParser, record: str) -> None:
    """``--smoke``, ``--out`` (default ``results/<record>[-smoke].json``) and ``--checkpoint-dir``."""
    ap.add_argument("--smoke", action="store_true", help="tiny models and data, a separate record: checks the pipeline")
    ap.add_argument("--out", default=None, help=f"default: results/{record}[-smoke].json")
    ap.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints" / "runs"),
                    help="one checkpoint per run: a killed study resumes where it stopped")


def study_record(args: argparse.Namespace, record: str) -> Path:
    return Path(args.out or ROOT / "results" / f"{record}{'-smoke' if args.smoke else ''}.json")
