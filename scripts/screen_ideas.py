"""Screen training ideas cheaply: each idea is the recipe with a few settings changed, trained from scratch for the same
small compute budget (a proxy for the full one) with several seeds, judged on the validation split only.

    python scripts/screen_ideas.py --data-root ../shared/data --threads 2                  # every idea, 2 seeds, 30 TFLOP
    python scripts/screen_ideas.py --data-root ../shared/data --ideas baseline ema-0.999   # some of them
    python scripts/screen_ideas.py --list                                                  # the ideas and their settings

Every (idea, seed) run is added to one record, results/screen-ideas-<recipe>-t<tflop>.json, as it ends; the same
command later runs only what the record lacks, and a run killed half-way resumes from its checkpoint. The record's
summary gives each idea's best validation accuracy (mean and standard deviation over the seeds) and its difference
from the baseline with the standard error of that difference (vitkit.stats.seed_difference): an idea is kept only
when it beats the baseline by more than twice that. The test split is not touched: the winners are run at the full
budgets with scripts/train_recipe.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import cli  # noqa: E402
import vit_helpers as vh  # noqa: E402
from vitkit import data, recipes, records, runtime, stats, train  # noqa: E402

RECIPE = "cifar10-fast"
TFLOP = 30.0  # the proxy budget: a few minutes a run on two CPU cores
SEEDS = (0, 1)
VAL_SIZE = 5000

# Each idea: the settings it changes, by part of the recipe (model -> ViTConfig, data -> the loader, fit -> FitConfig).
# The first is the recipe itself; every other is judged against it at equal compute.
IDEAS: dict[str, dict[str, dict]] = {
    "baseline": {},
    "ema-0.999": {"fit": {"ema_decay": 0.999}},  # a weight average (airbench's lookahead/EMA)
    "ema-0.99": {"fit": {"ema_decay": 0.99}},
    "label-smoothing-0.2": {"fit": {"label_smoothing": 0.2}},
    "lr-x2": {"fit": {"lr": 2.8e-3}},  # a high learning rate, as the CNN speedruns use
    "lr-x0.5": {"fit": {"lr": 0.7e-3}},
    "batch-128": {"data": {"batch_size": 128}, "fit": {"lr": 2e-3}},  # larger batch, LR scaled by sqrt(2)
    "warmup-0.02": {"fit": {"warmup_fraction": 0.02}},
    "weight-decay-0.1": {"fit": {"weight_decay": 0.1}},
    "no-grad-clip": {"fit": {"grad_clip": None}},
    "depth-6": {"model": {"depth": 6}},  # more blocks, fewer epochs in the same compute
    "width-192": {"model": {"dim": 192, "mlp_dim": 384, "heads": 6}},
    "mlp-ratio-4": {"model": {"mlp_dim": 512}},
}


def settings(idea: str, recipe: dict) -> dict:
    """The recipe with the idea's changes applied (a deep copy)."""
    out = json.loads(json.dumps(recipe))
    for part, changes in IDEAS[idea].items():
        out[part].update(changes)
    return out


def one_run(idea: str, seed: int, base: dict, data_root: str, tflop: float, device, checkpoint: Path,
            smoke: bool) -> dict:
    r = settings(idea, base)
    if smoke:  # a tiny subset (and model, where the idea leaves the model alone): checks the pipeline
        if "model" not in IDEAS[idea]:
            r["model"].update(dim=32, depth=1, heads=2, mlp_dim=64)
        r["data"]["train_limit"] = 256
    loaders = data.cifar10_loaders(data_root, val_size=12 if smoke else VAL_SIZE, seed=0, **r["data"])
    runtime.set_seed(seed)
    model = vh.VisionTransformer(**r["model"])
    fit_args = {**r["fit"], "epochs": 10_000}  # the compute budget decides the length
    hist = train.fit(model, loaders.train, loaders.val, device=device, max_tflop=tflop, progress=False, verbose=False,
                     checkpoint=checkpoint, resume=True, run_info={"screen": idea, "seed": seed}, **fit_args)
    return {"idea": idea, "seed": seed, "best_val_acc": hist.best_val_acc, "best_epoch": hist.best_epoch,
            "val_acc": hist.val_acc, "epochs": len(hist.epoch), "train_tflop": hist.train_tflop,
            "gflop_per_image": hist.gflop_per_image, "wall_time_s": hist.wall_time_s, "precision": hist.precision,
            "train_images_per_s": hist.train_images_per_s, "parameters": vh.count_parameters(model),
            "changes": IDEAS[idea], "dataset": loaders.train.dataset.source}


def summary(runs: list[dict]) -> dict:
    """Per idea: mean, standard deviation and count of the best validation accuracy over its seeds; and, for every
    idea with two or more seeds beside a baseline with two or more, the idea minus the baseline with its standard
    error and whether it exceeds twice that (``kept``: ahead by more than twice the standard error)."""
    by = {}
    for r in runs:
        by.setdefault(r["idea"], []).append(r["best_val_acc"])
    out = {"ideas": {idea: stats.spread(values) for idea, values in by.items()}, "against_baseline": {}}
    base = by.get("baseline", [])
    for idea, values in by.items():
        if idea != "baseline" and len(values) >= 2 and len(base) >= 2:
            d = stats.seed_difference(values, base)
            d.pop("a"), d.pop("b")
            out["against_baseline"][idea] = {**d, "kept": d["beyond_noise"] and d["difference"] > 0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--recipe", default=RECIPE, choices=list(recipes.RECIPES))
    ap.add_argument("--ideas", nargs="*", default=list(IDEAS), choices=list(IDEAS))
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--tflop", type=float, default=TFLOP, help="the proxy compute budget of every run")
    ap.add_argument("--list", action="store_true", help="print the ideas and their settings, run nothing")
    cli.add_machine_options(ap)
    cli.add_study_options(ap, "screen-ideas")
    args = ap.parse_args(argv)
    if args.list:
        for idea, changes in IDEAS.items():
            print(f"{idea:22s} {json.dumps(changes) if changes else '(the recipe)'}")
        return 0
    cli.apply_machine_options(ap, args)
    if args.tflop <= 0:
        ap.error(f"--tflop must be positive, got {args.tflop}")
    if "baseline" not in args.ideas:
        args.ideas.insert(0, "baseline")  # every idea is judged against it
    tag = f"{args.recipe}-t{args.tflop:g}"
    out = Path(args.out or ROOT / "results" / f"screen-ideas-{tag}{'-smoke' if args.smoke else ''}.json")
    done = json.loads(out.read_text())["metrics"]["runs"] if out.is_file() else []
    have = {(r["idea"], r["seed"]) for r in done}
    base = recipes.get_recipe(args.recipe)
    start = time.perf_counter()
    for seed in args.seeds:
        for idea in args.ideas:
            if (idea, seed) in have:
                continue
            name = f"screen-{tag}-{idea}-s{seed}{'-smoke' if args.smoke else ''}.pt"
            tflop = 0.002 if args.smoke else args.tflop
            run = one_run(idea, seed, base, args.data_root, tflop, args.device, Path(args.checkpoint_dir) / name,
                          args.smoke)
            done.append(run)
            print(f"{idea:22s} seed {seed}: best val {run['best_val_acc']:.2%} after {run['epochs']} epochs, "
                  f"{run['train_tflop']:.1f} TFLOP, {run['wall_time_s'] / 60:.1f} min", flush=True)
            records.save_results(out, metrics={"runs": done, "summary": summary(done)}, seed=min(args.seeds),
                                 dataset=run["dataset"],
                                 wall_time_s=sum(r["wall_time_s"] for r in done), device=args.device,
                                 config={"recipe": args.recipe, **base, "tflop": args.tflop, "ideas": IDEAS,
                                         "val_size": VAL_SIZE, "threads": torch.get_num_threads(),
                                         "smoke": args.smoke})
    s = summary(done)
    for idea, d in s["against_baseline"].items():
        print(f"{idea:22s} {100 * d['difference']:+.2f} points vs baseline (twice the standard error "
              f"{100 * d['two_standard_errors']:.2f}): {'kept' if d['kept'] else 'dropped'}")
    print(f"{len(done)} runs in {out.name}; this call {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    cli.run_script(main)
