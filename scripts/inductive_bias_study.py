"""Does a prior help more when data is small? The data-size study behind InductiveBias.ipynb: the plain ViT, its best
convolutional stem (CCT's tokenizer), SPT + LSA, sin-cos positions and a small CNN matched to the plain ViT in
parameters, each trained on class-balanced subsets of CIFAR-10 of several sizes, with several seeds, every run of a
size given the same training compute (``fit(max_tflop=...)``).

    python scripts/inductive_bias_study.py --data-root ../shared/data --threads 2
    python scripts/inductive_bias_study.py --data-root ../shared/data --sizes 2500 --seeds 0 --tflop 2500=20

The validation split is class-balanced (500 images a class), so that the 45,000 left hold 4,500 of each class.
Every (variant, size, seed) run is added to one record, results/inductive-bias-study.json, as it ends; the same
command later runs only what the record lacks, and a run killed half-way resumes from its checkpoint. Validation
(the split held out of the official training set) is the same 5,000 images for every size; the subsets are drawn from
the rest, balanced over the classes, fixed by --subset-seed (nested: the 2,500 are part of the 10,000). Each run's
validation curve is kept, with how much its accuracy moved over the last 20 % of training (the plateau check).
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
from vitkit import baselines, data, recipes, records, runtime, train  # noqa: E402
from vitkit.sources import InMemoryImages  # noqa: E402

RECORD = "inductive-bias-study"

# The ViT variants: the cifar10-cpu recipe's model with the linear patch stem, and one prior added at a time.
VARIANTS = {"vit": {}, "cct-stem": {"stem": "cct"}, "spt-lsa": {"stem": "spt", "lsa": True},
            "sincos": {"pos_embed": "sincos"}, "cnn": None}
SIZES = (2500, 10_000, 45_000)
SEEDS = (0, 1, 2)
# Training compute per run (TFLOP) by training-set size: enough that validation accuracy has flattened (the record
# says by how much it still moved over the last 20 % of training; raise a size's budget where it moved > 0.5 points).
TFLOP = {2500: 15.0, 10_000: 30.0, 45_000: 60.0}
RECIPE = "cifar10-cpu"


def cnn_matched(target: int, classes: int) -> tuple[torch.nn.Module, float]:
    """The SmallCNN whose width makes its parameter count closest to ``target``; returns it and the ratio."""
    best = None
    for width in range(8, 129, 4):
        model = baselines.SmallCNN(num_classes=classes, channels=(width, 2 * width, 4 * width, 4 * width))
        ratio = vh.count_parameters(model) / target
        if best is None or abs(ratio - 1) < abs(best[1] - 1):
            best = (model, ratio)
    return best


def build(variant: str, recipe: dict, classes: int) -> tuple[torch.nn.Module, float]:
    """The variant's model and its parameters relative to the plain ViT's."""
    vit = dict(recipe["model"], stem="patch", num_classes=classes)
    plain = vh.count_parameters(vh.VisionTransformer(**vit))
    if VARIANTS[variant] is None:
        return cnn_matched(plain, classes)
    model = vh.VisionTransformer(**{**vit, **VARIANTS[variant]})
    return model, vh.count_parameters(model) / plain


def balanced_subsets(train_ds: InMemoryImages, sizes, seed: int) -> dict[int, torch.Tensor]:
    """Nested class-balanced index sets: for each class a fixed seeded order, of which each size takes its share."""
    g = torch.Generator().manual_seed(seed)
    classes = train_ds.labels.unique().tolist()
    orders = {c: (train_ds.labels == c).nonzero()[:, 0][torch.randperm(int((train_ds.labels == c).sum()), generator=g)]
              for c in classes}
    out = {}
    for size in sizes:
        share = size // len(classes)
        if share > min(len(o) for o in orders.values()):
            raise SystemExit(f"--sizes {size}: the training split has fewer than {share} images of some class")
        out[size] = torch.cat([orders[c][:share] for c in classes])
    return out


def plateau_move(val_acc: list[float]) -> float | None:
    """How far validation accuracy moved (max - min, in points) over the last 20 % of the epochs."""
    k = max(2, round(0.2 * len(val_acc)))
    return None if len(val_acc) < 2 else 100 * (max(val_acc[-k:]) - min(val_acc[-k:]))


def one_run(args, variant, size, seed, loaders, subset, recipe, tflop) -> dict:
    full = loaders.train.dataset
    ds = full.subset(subset, full.transform)
    ds.mean, ds.std = full.mean, full.std
    train_loader = torch.utils.data.DataLoader(ds, batch_size=recipe["data"]["batch_size"], shuffle=True,
                                               generator=torch.Generator().manual_seed(seed),
                                               num_workers=loaders.train.num_workers)
    runtime.set_seed(seed)
    model, ratio = build(variant, recipe, len(full.classes))
    fit_args = {**recipe["fit"], "epochs": 10_000}  # the compute budget decides the length
    name = f"ib-{variant}-n{size}-s{seed}{'-smoke' if args.smoke else ''}"
    hist = train.fit(model, train_loader, loaders.val, device=args.device, max_tflop=tflop, progress=False,
                     verbose=False, checkpoint=Path(args.checkpoint_dir) / f"{name}.pt", resume=True,
                     run_info={"study": "inductive-bias", "variant": variant, "size": size, "seed": seed},
                     **fit_args)
    test = train.evaluate(model, loaders.test, args.device)
    return {"variant": variant, "size": size, "seed": seed, "test_acc": test["acc"], "best_val_acc": hist.best_val_acc,
            "val_acc": hist.val_acc, "plateau_move_points": plateau_move(hist.val_acc), "epochs": len(hist.epoch),
            "train_tflop": hist.train_tflop, "tflop_budget": tflop, "parameters": vh.count_parameters(model),
            "parameters_vs_plain_vit": ratio, "wall_time_s": hist.wall_time_s, "precision": hist.precision,
            "train_images_per_s": hist.train_images_per_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--tflop", nargs="*", default=[], metavar="SIZE=TFLOP", help="override a size's compute")
    ap.add_argument("--subset-seed", type=int, default=1234)
    cli.add_machine_options(ap)
    cli.add_study_options(ap, RECORD)
    args = ap.parse_args()
    cli.apply_machine_options(ap, args)
    budgets = dict(TFLOP)
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
    done = json.loads(out.read_text())["metrics"]["runs"] if out.is_file() else []
    have = {(r["variant"], r["size"], r["seed"]) for r in done}
    recipe = recipes.get_recipe(RECIPE)
    loaders = data.cifar10_loaders(args.data_root, val_size=5000, seed=0, balanced_val=True, **recipe["data"])
    subsets = balanced_subsets(loaders.train.dataset, args.sizes, args.subset_seed)
    start = time.perf_counter()
    for size in args.sizes:
        for seed in args.seeds:
            for variant in args.variants:
                if (variant, size, seed) in have:
                    continue
                tflop = 0.002 if args.smoke else budgets[size]
                run = one_run(args, variant, size, seed, loaders, subsets[size], recipe, tflop)
                done.append(run)
                print(f"{variant:9s} n={size:<6d} seed {seed}: test {run['test_acc']:.2%}, val {run['best_val_acc']:.2%}, "
                      f"{run['epochs']} epochs, val moved {run['plateau_move_points'] or 0:.2f} points over the last "
                      f"20 %, {run['wall_time_s'] / 60:.1f} min", flush=True)
                records.save_results(out, metrics={"runs": done}, seed=args.subset_seed, dataset=loaders.train.dataset.source,
                                     wall_time_s=sum(r["wall_time_s"] for r in done), device=args.device,
                                     config={"recipe": RECIPE, **recipe, "variants": VARIANTS, "tflop": budgets,
                                             "subset_seed": args.subset_seed, "val_size": 5000, "balanced_val": True,
                                             "threads": torch.get_num_threads(), "smoke": args.smoke})
    print(f"{len(done)} runs in {out.name}; this call {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
