"""Does a prior help more when data is small? The data-size study behind InductiveBias.ipynb (its settings and
one run are in vitkit/study.py): the plain ViT, its best convolutional stem (CCT's tokenizer), SPT + LSA, sin-cos
positions and a small CNN matched to the plain ViT in parameters, each trained on class-balanced subsets of CIFAR-10
of several sizes, with several seeds, every run of a size given the same training compute budget (``fit(max_tflop=...)``).

    python scripts/inductive_bias_study.py --data-root ../shared/data --threads 2
    python scripts/inductive_bias_study.py --data-root ../shared/data --sizes 2500 --seeds 0 --tflop 2500=20

Two 1-thread processes train more images a second in all than one 2-thread process on 2 cores; give each
its share of the runs (they write the same record, one at a time):

    python scripts/inductive_bias_study.py --data-root ../shared/data --threads 1 --shard 0/2 &
    python scripts/inductive_bias_study.py --data-root ../shared/data --threads 1 --shard 1/2 &

The validation split is class-balanced (500 images a class), so that the 45,000 left hold 4,500 of each class.
Every (variant, size, seed) run is added to one record, results/inductive-bias-study.json, as it ends; the same
command later runs only what the record lacks, and a run killed half-way resumes from its checkpoint. Validation
(the split held out of the official training set) is the same 5,000 images for every size; the subsets are drawn from
the rest, balanced over the classes, fixed by --subset-seed (nested: the 500 are part of the 2,500, and those of
the 12,500). Each run's validation curve is kept, with how much its accuracy moved over the last 20 % of training
(the plateau check), and the record's summary (vitkit.study.summarize) compares the variants size by size.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import cli  # noqa: E402
from vitkit import data, recipes, records, study  # noqa: E402

RECORD = "inductive-bias-study"


def _key(run: dict) -> tuple:
    return run["variant"], run["size"], run["seed"]


def _runs(out: Path) -> list[dict]:
    return json.loads(out.read_text())["metrics"]["runs"] if out.is_file() else []


@contextlib.contextmanager
def _locked(lock: Path):
    """One process at a time reads and rewrites the record (several shards write the same one)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write INDEX/COUNT, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: INDEX must be 0..COUNT-1")
    return i, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--variants", nargs="*", default=list(study.VARIANTS), choices=list(study.VARIANTS))
    ap.add_argument("--sizes", nargs="*", type=int, default=list(study.SIZES))
    ap.add_argument("--seeds", nargs="*", type=int, default=list(study.SEEDS))
    ap.add_argument("--tflop", nargs="*", default=[], metavar="SIZE=TFLOP", help="override a size's compute")
    ap.add_argument("--subset-seed", type=int, default=study.SUBSET_SEED)
    ap.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                    help="run every N-th of the (size, seed, variant) runs from the I-th on (for N parallel processes)")
    cli.add_machine_options(ap)
    cli.add_study_options(ap, RECORD)
    args = ap.parse_args(argv)
    cli.apply_machine_options(ap, args)
    budgets = dict(study.TFLOP)
    for item in args.tflop:
        size, _, value = item.partition("=")
        try:
            budgets[int(size)] = float(value)
        except ValueError:
            ap.error(f"--tflop {item!r}: write SIZE=TFLOP, e.g. 2500=20")
    missing = [s for s in args.sizes if s not in budgets]
    if missing:
        ap.error(f"no compute budget for sizes {missing}; give --tflop SIZE=TFLOP")
    out = cli.study_record(args, RECORD)
    lock = Path(args.checkpoint_dir) / f"{out.stem}.lock"
    done = _runs(out)
    budget_of = lambda size: 0.002 if args.smoke else budgets[size]  # noqa: E731
    clash = sorted({(r["size"], r["tflop_budget"]) for r in done
                    if r["size"] in args.sizes and r["tflop_budget"] != budget_of(r["size"])})
    if clash:  # one budget per size and record, or the sizes' runs would not compare
        ap.error(f"{out.name} holds runs of {', '.join(f'size {n} at {t:g} TFLOP' for n, t in clash)}; give the same "
                 f"--tflop, or --out for a record of the new budget")
    have = {(r["variant"], r["size"], r["seed"]) for r in done}
    recipe = recipes.get_recipe(study.RECIPE)
    loaders = data.cifar10_loaders(args.data_root, val_size=study.VAL_SIZE, seed=0, balanced_val=True, **recipe["data"])
    try:
        subsets = study.balanced_subsets(loaders.train.dataset, args.sizes, args.subset_seed)
    except ValueError as e:
        ap.error(f"--sizes: {e}")
    start = time.perf_counter()
    plan = [(size, seed, variant) for size in args.sizes for seed in args.seeds for variant in args.variants]
    index, count = args.shard
    for size, seed, variant in plan[index::count]:
        if (variant, size, seed) in have:
            continue
        tflop = budget_of(size)
        name = f"ib-{variant}-n{size}-s{seed}-t{tflop:g}{'-smoke' if args.smoke else ''}.pt"
        run, _ = study.run(variant, size, seed, loaders, subsets[size], recipe, tflop, device=args.device,
                           checkpoint=Path(args.checkpoint_dir) / name)
        print(f"{variant:9s} n={size:<6d} seed {seed}: test {run['test_acc']:.2%}, val {run['best_val_acc']:.2%}, "
              f"{run['epochs']} epochs of {run['passes_per_epoch']} passes, val rose "
              f"{run['plateau_move_points'] or 0:.2f} points over the last 20 %, {run['wall_time_s'] / 60:.1f} min",
              flush=True)
        with _locked(lock):  # the record as it is now: another shard may have added runs since this one started
            done = [r for r in _runs(out) if _key(r) != _key(run)] + [run]
            records.save_results(out, metrics={"runs": done, "summary": study.summarize(done)},
                                 seed=args.subset_seed, dataset=loaders.train.dataset.source,
                                 wall_time_s=sum(r["wall_time_s"] for r in done), device=args.device,
                                 config={"recipe": study.RECIPE, **recipe, "model": study.vit_model(recipe),
                                         "variants": study.VARIANTS,
                                         "tflop": budgets, "subset_seed": args.subset_seed,
                                         "val_size": study.VAL_SIZE, "balanced_val": True,
                                         "evaluations": study.EVALUATIONS, "smoke": args.smoke})
    print(f"{len(done)} runs in {out.name}; this call {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    cli.run_script(main)
