"""Whole-fit throughput: a recipe trained by fit itself (its real loader, bookkeeping and all) for a fixed number of
steps, in each layout and compile setting, in interleaved rounds; fit's own training images/s, median of the rounds.

    python bench/bench_fit.py --recipe cifar10-fast --data-root ../shared/data --threads 2
    python bench/bench_fit.py --recipe cifar10-fast --data-root ../shared/data --steps 1000 --rounds 5

A step profile (bench/profile_step.py) times the step alone; this times what a run sees, which varies more from call
to call: compare variants only within one record. The first call of each compiled variant compiles (inductor's
cache keeps it for the rounds) and is not timed. Writes results/bench-fit-<recipe>-<cpu-bf16|cpu-fp32>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vit_helpers as vh  # noqa: E402
from vitkit import data, recipes, records, train  # noqa: E402

VARIANTS = {  # name -> fit settings
    "fit default": {},
    "compiled, standard layout": {"compile": True, "channels_last": False},
    "compiled, channels-last": {"compile": True, "channels_last": True},
    "eager, standard layout": {"compile": False, "channels_last": False},
    "eager, channels-last": {"compile": False, "channels_last": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="cifar10-fast")
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps per fit call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-limit", type=int, default=None, help="a subset of the training split (smoke runs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    spec = recipes.get_recipe(args.recipe)
    dataset = recipes.RECIPES[args.recipe].get("dataset", args.recipe.split("-")[0])  # as train_recipe.py reads it
    make = data.mnist_loaders if dataset == "mnist" else data.cifar10_loaders
    loaders = make(args.data_root, download=False, train_limit=args.train_limit, **spec["data"])
    fit_cfg = {**spec["fit"], "epochs": 10 ** 6, "max_steps": args.steps}

    def once(settings: dict) -> tuple[float, train.History]:
        torch.manual_seed(0)
        model = vh.VisionTransformer(**spec["model"])
        hist = train.fit(model, loaders.train, None, **{**fit_cfg, **settings}, progress=False, verbose=False)
        return hist.train_images_per_s, hist

    chosen = {}
    for name, settings in VARIANTS.items():  # compilation, and what "fit default" chose
        _, hist = once(settings)
        chosen[name] = {"compiled": hist.compiled, "channels_last": hist.channels_last, "precision": hist.precision}
        print(f"  warm-up {name:28s} compiled={hist.compiled} channels_last={hist.channels_last}", flush=True)
    rounds = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, settings in VARIANTS.items():
            rounds[name].append(once(settings)[0])
        print(f"round {r + 1} of {args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rounds.items()), flush=True)
    median = {name: statistics.median(v) for name, v in rounds.items()}
    print(f"\n{args.recipe}: fit's training images/s over {args.steps} steps, median of {args.rounds} rounds "
          f"({chosen['fit default']['precision']}, {torch.get_num_threads()} threads)")
    for name, v in sorted(median.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {v:7.0f}   rounds {[round(x) for x in rounds[name]]}")
    tag = "cpu-bf16" if chosen["fit default"]["precision"] == "bf16" else "cpu-fp32"
    out = args.out or str(ROOT / "results" / f"bench-fit-{args.recipe}-{tag}.json")
    records.save_results(out, metrics={"training_images_per_s": median, "rounds": rounds, "chosen": chosen},
                         config={"recipe": args.recipe, "steps": args.steps, "rounds": args.rounds,
                                 "threads": torch.get_num_threads(), "train_limit": args.train_limit,
                                 "variants": VARIANTS},
                         seed=0, dataset=loaders.train.dataset.source, wall_time_s=time.perf_counter() - started,
                         device=torch.device("cpu"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
