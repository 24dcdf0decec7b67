"""Ours vs HF's ViT trained from scratch, over several seeds: ImportedVisionTransformer.ipynb's part 2, headless.

    python scripts/compare_hf_seeds.py --data-root ../shared/data --threads 2   # seeds 0 1 2, 4 epochs (~12 min) each
    python scripts/compare_hf_seeds.py --data-root ../shared/data --seeds 3 4   # add seeds to the record

Per seed: the same recipe (cifar10-seed) with its schedule compressed into ``--epochs`` (4 by default: what the
notebook's part 2 trains on a CPU), the same data split and batch order for both models, our ``VisionTransformer``
and HF's ``ViTForImageClassification`` with their own initialisations. A fixed number of epochs (not a wall-clock
budget) gives both models exactly the same images, however loaded the machine is. Every run is added to
results/ours-vs-hf-seeds.json as it ends (a later call runs only what the record lacks; a killed run resumes from
its checkpoint); the record's summary holds each model's mean and standard deviation over the seeds and the
difference of the means with its standard error, so that the notebook can say whether the two differ by more than
2 standard errors or are within noise.
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

RECIPE = "cifar10-seed"
RECORD = "ours-vs-hf-seeds"
MODELS = ("ours", "hf")


def build(name: str, m: dict):
    """Our ViT or HF's with the recipe's hyperparameters, each with its own init (seed the RNG before)."""
    if name == "ours":
        return vh.VisionTransformer(**m)
    from transformers import ViTConfig, ViTForImageClassification

    hf_config = ViTConfig(image_size=m["image_size"], patch_size=m["patch_size"], num_channels=m["in_channels"],
                          hidden_size=m["dim"], num_hidden_layers=m["depth"], num_attention_heads=m["heads"],
                          intermediate_size=m["mlp_dim"], hidden_dropout_prob=m["dropout"],
                          num_labels=m["num_classes"])
    return ViTForImageClassification._from_config(hf_config, attn_implementation="sdpa")


def summary(runs: list[dict]) -> dict:
    """Per metric: each model's mean, standard deviation and count over the seeds both models ran, and HF minus
    ours paired by seed (each seed fixes the same split and batch order for both): the per-seed differences, their
    mean with its standard error (:func:`vitkit.stats.paired_difference`), whether it exceeds twice that, and in how
    many seeds HF scored higher."""
    out = {}
    by = {(r["model"], r["seed"]): r for r in runs}
    seeds = sorted(seed for model, seed in by if model == "hf" and ("ours", seed) in by)
    for metric in ("test_acc", "best_val_acc"):
        if len(seeds) >= 2:
            d = stats.paired_difference([by["hf", s][metric] for s in seeds], [by["ours", s][metric] for s in seeds])
            out[metric] = {"hf": d.pop("a"), "ours": d.pop("b"), "seeds": seeds, "hf_ahead": d.pop("a_ahead"), **d}
    return out


def merged(out: Path, runs: list[dict]) -> list[dict]:
    """``runs`` and the runs the record on disk holds for other (model, seed) pairs: two processes given different
    ``--seeds`` (e.g. two 1-thread runs side by side) add to one record without losing each other's runs."""
    mine = {(r["model"], r["seed"]) for r in runs}
    on_disk = json.loads(out.read_text())["metrics"]["runs"] if out.is_file() else []
    return sorted([r for r in on_disk if (r["model"], r["seed"]) not in mine] + runs,
                  key=lambda r: (r["seed"], MODELS.index(r["model"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4, help="epochs per model and seed (the schedule fits them)")
    ap.add_argument("--val-size", type=int, default=5000)
    cli.add_machine_options(ap)
    cli.add_study_options(ap, RECORD)
    args = ap.parse_args()
    cli.apply_machine_options(ap, args)
    if args.epochs < 1:
        ap.error(f"--epochs must be a positive int, got {args.epochs}")
    recipe = recipes.get_recipe(RECIPE)
    recipe["fit"]["epochs"] = args.epochs
    if args.smoke:
        recipe["model"].update(dim=32, depth=1, heads=2, mlp_dim=64)
        recipe["data"].update(train_limit=256, test_limit=128)
        args.val_size = min(args.val_size, 128)
    out = cli.study_record(args, RECORD)
    runs = json.loads(out.read_text())["metrics"]["runs"] if out.is_file() else []
    if runs and json.loads(out.read_text())["config"]["fit"]["epochs"] != args.epochs:
        ap.error(f"{out.name} holds runs of another --epochs; give that value, or --out for a new record")
    have = {(r["model"], r["seed"]) for r in runs}
    start = time.perf_counter()
    for seed in args.seeds:
        if all((k, seed) in have for k in MODELS):
            continue
        loaders = data.cifar10_loaders(args.data_root, val_size=args.val_size, seed=seed, **recipe["data"])
        for name in MODELS:
            if (name, seed) in have:
                continue
            runtime.set_seed(seed)
            model = build(name, recipe["model"])
            loaders.train.generator.manual_seed(seed)  # the same batch order for both models
            tag = f"ours-vs-hf-{name}-s{seed}{'-smoke' if args.smoke else ''}"
            hist = train.fit(model, loaders.train, loaders.val, device=args.device,
                             checkpoint=Path(args.checkpoint_dir) / f"{tag}.pt", resume=True, progress=False,
                             verbose=False, run_info={"study": "ours-vs-hf", "model_kind": name, "seed": seed},
                             **recipe["fit"])
            test = train.evaluate(model, loaders.test, args.device)
            runs.append({"model": name, "seed": seed, "test_acc": test["acc"], "best_val_acc": hist.best_val_acc,
                         "epochs": len(hist.epoch), "optimizer_steps": hist.total_steps,
                         "train_images_per_s": hist.train_images_per_s, "wall_time_s": hist.wall_time_s,
                         "precision": hist.precision, "threads": torch.get_num_threads(),
                         "parameters": vh.count_parameters(model)})
            print(f"{name:4s} seed {seed}: test {test['acc']:.2%}, val {hist.best_val_acc:.2%}, {len(hist.epoch)} epochs",
                  flush=True)
            runs = merged(out, runs)
            records.save_results(out, metrics={"runs": runs, "summary": summary(runs)}, seed=min(r["seed"] for r in runs),
                                 dataset=loaders.train.dataset.source, wall_time_s=sum(r["wall_time_s"] for r in runs),
                                 device=args.device, config={"recipe": RECIPE, **recipe, "val_size": args.val_size, "smoke": args.smoke,
                                                             "threads": torch.get_num_threads()})
    print(f"{len(runs)} runs in {out.name}; this call {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    cli.run_script(main)
