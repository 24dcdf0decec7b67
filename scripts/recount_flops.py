"""Re-count the training compute of recorded runs with the current FLOP counter.

``vitkit.budget.flops_per_image`` once counted attention's matrix products only where the model took the explicit
path: PyTorch's FLOP counter has no formula for the fused SDPA kernel on a CPU, so a ViT without attention dropout
(which takes that kernel in fp32, where the count is made) was counted without QK^T and AV. The counter now runs its
probe on SDPA's math backend. This script re-counts each model of a record both ways and, where the record's count
(held, or implied by its images) is the old one, rewrites ``gflop_per_image`` and ``train_tflop`` (scaled by
the ratio: a run's compute is its images times the FLOPs of one) of every run whose count changes, keeping the old
numbers in ``flop_recount``. It reads the records of scripts/train_recipe.py, of the data-size study
(``metrics.runs`` with a ``variant``) and of the idea screen (``metrics.runs`` with an ``idea``); a notebook's own
record (``<notebook>-full.json``) is left to a re-run of its notebook, whose stored outputs print it. A run that stopped at a compute budget ran for the steps the old count allowed,
so its re-counted compute exceeds its budget; the tables say so.

    python scripts/recount_flops.py            # rewrites results/*.json where a count changed
    python scripts/recount_flops.py --dry-run  # prints what would change
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vit_helpers as vh  # noqa: E402
from vitkit import budget, study  # noqa: E402

WHY = "counted before the FLOP counter counted attention on the fused CPU SDPA kernel"
# How close a record's GFLOP per image must be to a count to be read as that count: the old and new counts of the
# records here differ by 1 % or more; a count implied by rounded numbers (a study's passes) is within 0.2 %.
TOLERANCE = 5e-3
FIXED = "2026-12-05 06:49"  # when the counter started counting the fused kernel (records' "date" format)


def gflops(model: torch.nn.Module) -> tuple[float, float]:
    """(old, new) GFLOP per training image: as the counter counted before (fp32 on a CPU, the fused kernel's
    attention counted as nothing) and as it counts now."""
    cfg = model.config
    shape = (getattr(cfg, "in_channels", None) or cfg.num_channels, cfg.image_size, cfg.image_size)
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        out = probe(torch.zeros(2, *shape))
        (out if torch.is_tensor(out) else out.logits).float().sum().backward()
    return counter.get_total_flops() / 2e9, budget.flops_per_image(model, None, torch.device("cpu")) / 1e9


def hf_model(config: dict) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification
    return ViTForImageClassification._from_config(ViTConfig(**config), attn_implementation="sdpa")


class Unreadable(ValueError):
    """A record's count matches neither the old way nor the new: it is left as it is."""


def rescale(part: dict, old: float, new: float, recorded: float) -> dict | None:
    """Scale ``part``'s ``gflop_per_image`` and ``train_tflop`` from the old count to the new and return the old
    values; None where ``recorded`` (the GFLOP per image the record holds or implies) is the new count already.
    A run's compute is its images times the FLOPs of one (plus, with a weight average, a per-step cost under 0.1 %
    of these runs', scaled with it)."""
    close = lambda a, b: abs(a - b) <= TOLERANCE * b
    if close(recorded, new):
        return None
    if not close(recorded, old):
        raise Unreadable(f"{recorded:.6f} GFLOP per image is neither the old count ({old:.6f}) nor the new "
                         f"({new:.6f})")
    before = {k: part[k] for k in ("gflop_per_image", "train_tflop") if part.get(k)}
    if "gflop_per_image" in before:
        part["gflop_per_image"] = new
    if "train_tflop" in before:
        part["train_tflop"] = part["train_tflop"] * new / old
    return before


def recount(record: dict) -> dict | None:
    """The record with its compute re-counted (old values in ``flop_recount``); None where nothing changes. Raises
    :class:`Unreadable` where a count is neither the old nor the new."""
    out = copy.deepcopy(record)
    cfg, m = out.get("config", {}), out.get("metrics", {})
    changed: dict[str, dict] = {}
    runs = m.get("runs") or []
    if runs and "variant" in runs[0]:  # the data-size study: a model per variant; a run's images are passes x size
        recipe = {"model": cfg["model"]}
        for run in runs:
            model, _ = study.build(run["variant"], recipe, cfg["model"]["num_classes"])
            old, new = gflops(model) if hasattr(model, "config") else (None, None)
            if "passes" in run:
                recorded = run["train_tflop"] * 1e3 / (run["passes"] * run["size"])
            else:  # the pilots record no image count: their date says which counter counted them
                recorded = old if out.get("date", "") < FIXED else new
            if old is not None and (before := rescale(run, old, new, recorded)):
                changed[f"{run['variant']} size {run['size']} seed {run['seed']}"] = before
    elif runs and "idea" in runs[0]:  # the idea screen: the recipe's model with the idea's changes
        for run in runs:
            model = vh.VisionTransformer(**{**cfg["model"], **cfg["ideas"][run["idea"]].get("model", {})})
            if before := rescale(run, *gflops(model), run["gflop_per_image"]):
                changed[f"{run['idea']} seed {run['seed']}"] = before
    elif m.get("train_tflop") and ("model" in cfg or "hf_model" in cfg):  # scripts/train_recipe.py
        model = vh.VisionTransformer(**cfg["model"]) if "model" in cfg else hf_model(cfg["hf_model"])
        recorded = m.get("gflop_per_image")
        if recorded is None and "epochs_run" not in m:
            return None
        if recorded is None:  # the first CIFAR-10 explorations: whole epochs over the training split, no budget
            recorded = m["train_tflop"] * 1e3 / (m["epochs_run"] * (50_000 - cfg.get("val_size", 5000)))
        old, new = gflops(model)
        if before := rescale(m, old, new, recorded):
            rescale(out.get("history", {}), old, new, recorded)
            changed["run"] = before
    if not changed:
        return None
    out["flop_recount"] = {"why": WHY, "before": changed}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    args = ap.parse_args(argv)
    # a notebook's own record is what its stored outputs print (scripts/execute_notebooks.py checks its hash):
    # re-running the notebook re-counts it
    own = {f"{nb.stem}-full.json" for nb in ROOT.glob("*.ipynb")}
    for path in sorted(args.results.glob("*.json")):
        if path.name in own:
            print(f"{path.name}: left to its notebook; re-run it to re-count", file=sys.stderr)
            continue
        record = json.loads(path.read_text())
        try:
            new = None if "flop_recount" in record else recount(record)
        except Unreadable as e:
            print(f"{path.name}: left as it is: {e}", file=sys.stderr)
            continue
        if new is None:
            continue
        for run, before in new["flop_recount"]["before"].items():
            print(f"{path.name}, {run}: " + ", ".join(f"{k} {v:.4g}" for k, v in before.items()) + " before")
        if not args.dry_run:
            path.write_text(json.dumps(new, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
