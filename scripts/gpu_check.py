"""Check everything a GPU is needed for, in one command, and record it under results/ (about 20 min on one GPU).

    python scripts/gpu_check.py --data-root ../shared/data           # on a CUDA GPU
    python scripts/gpu_check.py --data-root ../shared/data --small   # scaled down: what CI runs on a CPU

Parts (each timed; a failing part is recorded with its error and the command exits 1):
  bench      bench/bench_throughput.py: the CUDA fp32/bf16 rows (CPU rows too)
  strong     a shortened cifar10-strong run: its validation curve, to see that it is on track
  finetune   the fine-tuning recipe's training step at 224 px on a randomly initialised ViT-B/16-sized
             model: optimizer steps/s and peak GPU memory
  loader     data-loader throughput (cifar10-strong's augmentation) against the images/s the GPU trains at
  notebooks  every notebook in smoke mode, on this device
Writes results/gpu-check-<device>.json (or --out). Without a GPU it runs on the CPU; use --small there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import vit_helpers as vh  # noqa: E402
from vitkit import data, runtime, train, recipes, records  # noqa: E402

PARTS = ("bench", "strong", "finetune", "finetune_original", "loader", "notebooks")


def part_bench(args, device) -> dict:
    out = Path(args.workdir) / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_throughput.py"), "--out", str(out)]
    cmd += ["--quick"] if args.small else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    m = json.loads(out.read_text())["metrics"]
    return {k: m[k] for k in ("training_images_per_s", "fraction_of_peak", "vs_fastest_peer", "peak_gflops",
                              "fit_default", "fastest_peer")}


def part_strong(args, device) -> dict:
    recipe = recipes.get_recipe("cifar10-strong")
    epochs = 1 if args.small else args.strong_epochs
    limit = 512 if args.small else None
    loaders = data.cifar10_loaders(args.data_root, val_size=256 if args.small else 5000, train_limit=limit,
                                   **recipe["data"])
    runtime.set_seed(0)
    model = vh.VisionTransformer(**recipe["model"])
    # The full recipe's schedule, cut after `epochs`: the curve is comparable with the full run's start.
    fit_args = recipe["fit"] | {"max_steps": epochs * len(loaders.train)}
    hist = train.fit(model, loaders.train, loaders.val, device=device, progress=False, **fit_args)
    return {"epochs": epochs, "planned_epochs": recipe["fit"]["epochs"], "val_acc": hist.val_acc,
            "train_loss": hist.train_loss, "train_images_per_s": hist.train_images_per_s,
            "precision": hist.precision, "compiled": hist.compiled, "wall_time_s": hist.wall_time_s}


def part_finetune(args, device) -> dict:
    """The ViT paper's fine-tuning recipe's training step (SGD, accumulation 8, clipping) on a random ViT-B/16 at
    224 px."""
    ft = recipes.finetune_recipe(500)
    steps = 2 if args.small else args.finetune_steps
    return _finetune_steps(args, device, ft["data"]["batch_size"], ft["fit"] | {
        "max_steps": steps, "epochs": steps, "warmup_steps": 1, "accumulation_steps": 2 if args.small else 8})


def part_finetune_original(args, device) -> dict:
    """The original notebooks' fine-tuning step (recipe finetune-original: Adam at 3e-4, batch 64, the schedule per
    epoch) on a random ViT-B/16 at 224 px: what that recipe costs on this device (its accuracy needs the hub weights)."""
    ft = recipes.get_recipe("finetune-original")
    steps = 2 if args.small else args.finetune_steps
    return _finetune_steps(args, device, ft["data"]["batch_size"], ft["fit"] | {"max_steps": steps})


def _finetune_steps(args, device, batch_size: int, fit_args: dict) -> dict:
    size, patch, width = (64, 16, 64) if args.small else (224, 16, 768)
    depth, heads = (2, 2) if args.small else (12, 12)
    loaders = data.cifar10_loaders(args.data_root, batch_size=8 if args.small else batch_size,
                                   val_size=64, augment="crop_flip", resize=size,
                                   train_limit=128 if args.small else 8 * 64 * args.finetune_steps)
    model = vh.to_hf(vh.VisionTransformer(image_size=size, patch_size=patch, in_channels=3, num_classes=10,
                                          dim=width, depth=depth, heads=heads, mlp_dim=4 * width),
                     attn_implementation="sdpa")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hist = train.fit(model, loaders.train, None, device=device, progress=False, verbose=False, **fit_args)
    out = {"image_size": size, "width": width, "depth": depth, "parameters": vh.count_parameters(model),
           "optimizer_steps": hist.total_steps, "batch": fit_args.get("accumulation_steps", 1) * loaders.train.batch_size,
           "optimizer_steps_per_s": hist.total_steps / hist.wall_time_s, "images_per_s": hist.train_images_per_s,
           "precision": hist.precision}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def part_loader(args, device, train_images_per_s: float | None) -> dict:
    recipe = recipes.get_recipe("cifar10-strong")
    loaders = data.cifar10_loaders(args.data_root, val_size=256 if args.small else 5000, **recipe["data"])
    batches = 5 if args.small else 200
    it = iter(loaders.train)
    next(it)  # worker start-up
    t0 = time.perf_counter()
    n = sum(len(next(it)[1]) for _ in range(batches))
    ips = n / (time.perf_counter() - t0)
    out = {"augment": recipe["data"]["augment"], "num_workers": loaders.train.num_workers, "images_per_s": ips}
    if train_images_per_s:
        out["gpu_train_images_per_s"] = train_images_per_s
        out["loader_over_training"] = ips / train_images_per_s  # < 1: the loader starves the device
    return out


def part_notebooks(args, device) -> dict:
    from smoke_env import NOTEBOOKS, make_smoke_env, run_notebook

    env = make_smoke_env(Path(args.workdir), Path(args.data_root))
    times = {}
    for name in args.notebooks or NOTEBOOKS:
        t0 = time.perf_counter()
        run_notebook(name, env, DEVICE=device.type)
        times[name] = time.perf_counter() - t0
    return {"seconds": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=data.default_data_root())
    ap.add_argument("--small", action="store_true", help="scaled down (CPU, CI): seconds, not minutes")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--strong-epochs", type=int, default=15)
    ap.add_argument("--finetune-steps", type=int, default=20)
    ap.add_argument("--notebooks", nargs="*", default=None, help="notebooks of the notebooks part (default: all)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="default: results/gpu-check-<device>.json")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    device = runtime.get_device(args.device)
    name = torch.cuda.get_device_name(device).lower().replace(" ", "-") if device.type == "cuda" else device.type
    out = Path(args.out or ROOT / "results" / f"gpu-check-{name}{'-small' if args.small else ''}.json")
    report, failed, start = {}, [], time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        for part in parts:
            print(f"== {part}", flush=True)
            t0 = time.perf_counter()
            try:
                if part == "loader":
                    train_ips = report.get("strong", {}).get("train_images_per_s")
                    result = part_loader(args, device, train_ips)
                else:
                    result = globals()[f"part_{part}"](args, device)
                result["seconds"] = result.get("seconds", time.perf_counter() - t0)
                report[part] = result
                print(json.dumps(result, indent=1, default=str)[:1500], flush=True)
            except Exception as e:  # record the failure, go on with the other parts
                failed.append(part)
                report[part] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                print(f"!! {part} failed: {type(e).__name__}: {e}", flush=True)
    report["failed"] = failed
    records.save_results(out, metrics=report, config={"small": args.small, "parts": parts,
                    "strong_epochs": args.strong_epochs, "finetune_steps": args.finetune_steps},
                         seed=0, dataset=args.data_root, wall_time_s=time.perf_counter() - start, device=device)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s); failed parts: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
