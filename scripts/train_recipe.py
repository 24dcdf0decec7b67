"""Train one named recipe (see vit_helpers.RECIPES) and record the run under results/.

    python scripts/train_recipe.py mnist-strong --data-root ../shared/data --threads 1 --budget-min 45
    python scripts/train_recipe.py cifar10-seed --data-root ../shared/data --precision fp32 --tag mine --resume
    torchrun --nproc_per_node 4 scripts/train_recipe.py cifar10-strong --data-root <data> --tag ddp4

Every epoch ends with a checkpoint (default checkpoints/runs/<recipe>-<tag>.pt): if the run stops (Ctrl-C, a kill, the
end of a session), the same command with --resume continues it where the last complete epoch ended.

Writes results/<recipe>-<tag>.json (metrics, config, seed, hardware, wall time, dataset copy), the
training curves to images/<recipe>-<tag>-curves.png, for MNIST a rollout figure, and the weights with their
config to checkpoints/<recipe>-<tag>.safetensors (vh.load_model reads them).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import cli  # noqa: E402
import vit_helpers as vh  # noqa: E402
from vitkit import checkpoint as ckpt  # noqa: E402
from vitkit import data, plots, recipes, records, runtime, train  # noqa: E402


def _valid_keys(recipe: dict, loader_fn) -> dict[str, list[str]]:
    """The keys each recipe section accepts: ViTConfig's (or HF ViTConfig's) fields, the loader's keywords, FitConfig's."""
    import dataclasses
    import inspect

    loader = [n for n in inspect.signature(loader_fn).parameters if n not in ("root", "download", "download_timeout_s")]
    keys = {"data": loader, "fit": [f.name for f in dataclasses.fields(train.FitConfig)]}
    if "model" in recipe:
        keys["model"] = [f.name for f in dataclasses.fields(vh.ViTConfig)]
    if "hf_model" in recipe:
        from transformers import ViTConfig
        own = [n for n in inspect.signature(ViTConfig.__init__).parameters if n not in ("self", "kwargs")]
        keys["hf_model"] = own + [k for k in recipe["hf_model"] if k not in own]  # e.g. num_labels, a base-class key
    if "hf_init" in recipe:
        keys["hf_init"] = ["embeddings"]
    return keys


def _apply_overrides(recipe: dict, items: list[str], valid: dict[str, list[str]], ap: argparse.ArgumentParser) -> dict:
    """``--set section.key=value`` entries applied to ``recipe`` in place (a repeated or unknown key is an error that
    lists the valid ones); returns them as a dict."""
    import ast

    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in recipe or not isinstance(recipe[section], dict):
            ap.error(f"--set {item!r}: write SECTION.KEY=VALUE with SECTION one of {', '.join(valid)}")
        if section in valid and field not in valid[section]:
            ap.error(f"--set {item!r}: {section} has no key {field!r}; valid keys: {', '.join(valid[section])}")
        if key in overrides:
            ap.error(f"--set {key} is given twice ({overrides[key]!r} and {raw!r}); give it once")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        recipe[section][field] = overrides[key] = value
    return overrides


def _check_before_data(args, recipe: dict, out: Path, name: str, checkpoint: Path, ap) -> None:
    """What can be refused before any data is loaded: numbers, the training settings, the output folder, and a
    record or weights file of an earlier run that this one would replace unasked."""
    if args.resume and args.overwrite:
        ap.error("--resume continues the run in the checkpoint and --overwrite replaces it; pass one of them")
    try:
        train.FitConfig.build(**recipe["fit"], max_tflop=args.max_tflop,
                              time_budget_s=args.budget_min * 60 if args.budget_min is not None else None)
        if "model" in recipe:
            vh.ViTConfig(**recipe["model"])
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    if recipe.get("hf_init", {}).get("embeddings", "installed") not in ("installed", "zeros"):
        ap.error(f"hf_init.embeddings={recipe['hf_init']['embeddings']!r}: pass 'installed' (the installed "
                 "transformers' init of the CLS token and position table) or 'zeros' (transformers <= 4.22's)")
    if out.exists() and not out.is_dir():
        ap.error(f"--out-dir {out} is a file; pass a folder (results/, images/ and checkpoints/ go under it)")
    try:
        (out / "results").mkdir(parents=True, exist_ok=True)
        probe = out / "results" / f".{name}.write-test-{os.getpid()}"  # one per process (torchrun)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        ap.error(f"--out-dir {out} is not writable ({e.strerror}); pass a folder you can write")
    earlier = [p for p in (out / "results" / f"{name}.json", out / "checkpoints" / f"{name}.safetensors") if p.exists()]
    if earlier and not args.overwrite and not (args.resume and checkpoint.exists()):
        files = ", ".join(_relative(p, out) for p in earlier)
        ap.error(f"{files} hold an earlier run of --tag {args.tag}; pass --resume to continue it from its checkpoint "
                 f"({_relative(checkpoint, out)}{'' if checkpoint.exists() else ': not there'}), --overwrite to "
                 "replace it, or another --tag")


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` where it lies under it (records hold no machine paths), else its name."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.name


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=sorted(recipes.RECIPES))
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--seed", type=int, default=0)
    cli.add_machine_options(ap)
    ap.add_argument("--notes", default="", help="written to the record (e.g. what else ran on the machine)")
    ap.add_argument("--budget-min", type=float, default=None, help="wall-clock budget; the schedule follows it")
    ap.add_argument("--max-tflop", type=float, default=None,
                    help="training-compute budget in TFLOP (FLOPs per training image x images); the schedule fits it")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    ap.add_argument("--warmup-fraction", type=float, default=None, help="override the recipe's warmup fraction")
    ap.add_argument("--init-from", default=None,
                    help="start from the weights of a checkpoint written by this script (same model config), "
                    "e.g. to finish a schedule cut short: --init-from checkpoints/X.safetensors --lr <LR where "
                    "it stopped> --warmup-fraction 0 --epochs <epochs left>")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one recipe entry, e.g. --set model.stem=cct --set data.batch_size=64 (repeatable; "
                    "values are Python literals, else strings); use a new --tag for a new variant")
    ap.add_argument("--val-size", type=int, default=None,
                    help="images held out of the training split (default: the recipe's, else 5000)")
    ap.add_argument("--train-limit", type=int, default=None, help="train on a seeded subset (smoke runs)")
    ap.add_argument("--tag", default="run", help="suffix of the output files (default: run)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                    help="auto: bf16 where the hardware has it natively, else fp32 (see vitkit.runtime)")
    ap.add_argument("--checkpoint", default=None,
                    help="written after every epoch (default: checkpoints/runs/<recipe>-<tag>.pt under --out-dir)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --checkpoint (starts it if there is none)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run of this --tag: its record, weights, figures and checkpoint")
    ap.add_argument("--log-dir", default=None, help="TensorBoard event files (tensorboard --logdir <it>)")
    ap.add_argument("--out-dir", default=str(ROOT), help="results/, images/ and checkpoints/ go under it")
    return ap


def _recipe(args, loader_fn, ap) -> tuple[dict, dict]:
    """The recipe with the command line's changes, and the ``--set`` overrides on their own."""
    recipe = recipes.get_recipe(args.recipe)
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("warmup_fraction", args.warmup_fraction)):
        if value is not None:
            recipe["fit"][key] = value
    if args.val_size is not None:
        recipe["data"]["val_size"] = args.val_size
    return recipe, _apply_overrides(recipe, args.set, _valid_keys(recipe, loader_fn), ap)


def _model(args, recipe: dict):
    """Our ViT (``model``), HF's from scratch (``hf_model``: PyTorch's init for its classifier, as the original's
    separate Linear had) or a pretrained HF ViT to fine-tune (``pretrained``: needs the hub or a local copy)."""
    if "hf_model" in recipe or "pretrained" in recipe:
        from transformers import ViTConfig, ViTForImageClassification
        if "pretrained" in recipe:
            return ViTForImageClassification.from_pretrained(recipe["pretrained"], num_labels=10,
                                                             attn_implementation="sdpa")
        model = ViTForImageClassification._from_config(ViTConfig(**recipe["hf_model"]), attn_implementation="sdpa")
        model.classifier.reset_parameters()
        if recipe.get("hf_init", {}).get("embeddings") == "zeros":  # as transformers <= 4.22 left them
            with torch.no_grad():  # after the installed init's draws, so every other weight is the same as without
                model.vit.embeddings.cls_token.zero_()
                model.vit.embeddings.position_embeddings.zero_()
        return model
    model = vh.VisionTransformer(**recipe["model"])
    if args.init_from:
        start_model, _ = vh.load_model(args.init_from)
        if start_model.config != model.config:
            raise SystemExit(f"--init-from {args.init_from} holds a model with config {start_model.config}, but recipe "
                             f"{args.recipe} builds {model.config}; pass a checkpoint of the same recipe.")
        model.load_state_dict(start_model.state_dict())
    return model


def _evaluate(model, loaders, device, checkpoint_path: Path, cifar: bool) -> dict:
    """Test accuracy of the tested (best validation epoch's) model, with flip TTA on CIFAR-10 (chosen on
    validation, reported on test); its training-split accuracy in eval mode (what the original notebooks reported
    as train accuracy); and the last epoch's model's test accuracy for comparison."""
    test = train.evaluate(model, loaders.test, device)
    out = {"test_acc": test["acc"], "test_loss": test["loss"], "test_n": test["n"],
           "train_acc_eval": train.evaluate(model, data.train_eval_loader(loaders), device)["acc"]}
    if cifar:
        out["val_acc_flip"] = train.evaluate(model, loaders.val, device, flip=True)["acc"]
        out["test_acc_flip"] = train.evaluate(model, loaders.test, device, flip=True)["acc"]
    final_model = copy.deepcopy(model)
    final_model.load_state_dict(ckpt.load(checkpoint_path)["model"])
    out["final_epoch_test_acc"] = train.evaluate(final_model, loaders.test, device)["acc"]
    return out


def _rollout_figure(model, loaders, device, title: str, path: Path) -> None:
    """Attention rollout of 12 test digits (MNIST recipes)."""
    x, y = next(iter(loaders.test))
    x = x[:12].to(device)
    model.eval()
    with torch.no_grad():
        logits, attentions = model(x, return_attentions=True)
    titles = [f"label {int(t)} / pred {int(p)}" for t, p in zip(y[:12], logits.argmax(-1))]
    plots.attention_maps(x.cpu(), vh.attention_rollout(attentions).cpu(), mean=loaders.test.dataset.mean,
                         std=loaders.test.dataset.std, titles=titles, suptitle=title, save_path=path)


def main() -> None:
    ap = _parser()
    args = ap.parse_args()
    out = Path(args.out_dir)
    cli.apply_machine_options(ap, args)
    runtime.set_seed(args.seed)
    dataset_name = recipes.dataset_of(args.recipe)
    loader_fn = data.mnist_loaders if dataset_name == "mnist" else data.cifar10_loaders
    recipe, overrides = _recipe(args, loader_fn, ap)
    name = f"{args.recipe}-{args.tag}"
    checkpoint_path = Path(args.checkpoint or out / "checkpoints" / "runs" / f"{name}.pt")
    _check_before_data(args, recipe, out, name, checkpoint_path, ap)
    device = runtime.get_device(args.device)
    loaders = loader_fn(args.data_root, seed=args.seed, train_limit=args.train_limit, **recipe["data"])
    model = _model(args, recipe)
    run_info = {"recipe": args.recipe, "seed": args.seed, "tag": args.tag, "init_from": args.init_from,
                "val_size": len(loaders.val.dataset), "train_limit": args.train_limit, **({"overrides": overrides} if overrides else {})}
    hist = train.fit(model, loaders.train, loaders.val, device=device, precision=args.precision,
                     time_budget_s=args.budget_min * 60 if args.budget_min is not None else None,
                     max_tflop=args.max_tflop, progress=sys.stderr.isatty(), checkpoint=checkpoint_path,
                     resume=args.resume, overwrite=args.overwrite, log_dir=args.log_dir,
                     run_info=run_info, **recipe["fit"])
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 evaluates and writes
        return
    fit_end = time.perf_counter()
    metrics = _evaluate(model, loaders, device, checkpoint_path, cifar=dataset_name == "cifar10")
    wall = hist.wall_time_s + time.perf_counter() - fit_end  # every stretch of the run, and the evaluation
    metrics |= {"best_val_acc": hist.best_val_acc, "resumes": hist.resumes, "train_tflop": hist.train_tflop,
                "gflop_per_image": hist.gflop_per_image, "train_images": hist.train_images, "best_epoch": hist.best_epoch,
                "final_train_acc": hist.train_acc[-1], "epochs_run": len(hist.epoch),
                "optimizer_steps": hist.total_steps, "train_images_per_s": hist.train_images_per_s,
                "parameters": vh.count_parameters(model)}
    config = {"recipe": args.recipe, **recipe, "overrides": overrides, "budget_min": args.budget_min,
              "max_tflop": args.max_tflop, "threads": torch.get_num_threads(), "train_limit": args.train_limit,
              "val_size": len(loaders.val.dataset), "init_from": args.init_from, "precision": hist.precision,
              "attention": hist.attention, "compiled": hist.compiled, "channels_last": hist.channels_last,
              "world_size": hist.world_size,
              "run_checkpoint": _relative(checkpoint_path, out), "stretches": hist.stretches}
    path = records.save_results(out / "results" / f"{name}.json", metrics=metrics, config=config, seed=args.seed,
                                dataset=loaders.train.dataset.source, wall_time_s=wall, device=device,
                                history=hist.to_dict() | {"lr": hist.lr[:: max(1, len(hist.lr) // 200)]},
                                **({"notes": args.notes} if args.notes else {}))
    plots.training_curves(hist, title=f"{args.recipe} ({device.type}, {wall / 60:.0f} min)",
                          save_path=out / "images" / f"{name}-curves.png")
    if dataset_name == "mnist":
        _rollout_figure(model, loaders, device, f"Attention rollout, {args.recipe} (test digits)",
                        out / "images" / f"{name}-rollout.png")
    # git-ignored; copy it to weights/ to ship it (the notebooks load weights/*.safetensors with vh.load_model)
    ours = model if isinstance(model, vh.VisionTransformer) else vh.from_hf(model)  # the same function, our names
    vh.save_model(ours, out / "checkpoints" / f"{name}.safetensors", recipe=args.recipe, test_acc=metrics["test_acc"],
                  record=f"results/{name}.json")
    print(f"{name}: test acc {metrics['test_acc']:.4f} (best val {hist.best_val_acc:.4f} at epoch {hist.best_epoch}; "
          f"the last epoch's model: {metrics['final_epoch_test_acc']:.4f}), {len(hist.epoch)} epochs, "
          f"{wall / 60:.1f} min, {hist.resumes} resume(s) -> {_relative(path, out)}")


if __name__ == "__main__":
    cli.run_script(main)
