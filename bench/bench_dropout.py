"""What does dropout cost a ViT on this machine, and which path trains it fastest? One recipe's model, in fit's
precision, with the recipe's dropout drawn by ``vh.Dropout`` (16-bit masks on a CPU) and by ``nn.Dropout``
(PyTorch's), and without dropout; each eager, compiled (inductor's own random numbers, its default) and compiled
with aten's random numbers (``fallback_random``), in one interleaved run (median of the rounds).

    python bench/bench_dropout.py --recipe cifar10-original --threads 2
    python bench/bench_dropout.py --recipe mnist-original --threads 2 --rounds 5

Inductor draws random numbers with its own generator inside the fused C++ loops; aten draws them with the CPU's
Mersenne twister, one number per element for nn.Dropout, one per two elements for vh.Dropout. Writes
results/bench-dropout-<recipe>-<cpu-bf16|cpu-fp32>.json; fit compiles a model trained with dropout on a CPU
with the options of vitkit.runtime.compile_options.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vit_helpers as vh  # noqa: E402
from vitkit import recipes, records, runtime  # noqa: E402

NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0, "mlp_dropout": 0.0}


def with_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``vh.Dropout`` swapped for ``nn.Dropout`` of the same p (PyTorch's own CPU masks)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, vh.Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return model


def variants(cfg: dict) -> dict[str, torch.nn.Module]:
    """name -> model (the same initial weights): the recipe's dropout with our masks (vh.Dropout) and with
    PyTorch's (nn.Dropout), then no dropout; each eager, compiled, and compiled with aten's random numbers."""
    out = {}
    for label, over, swap in (("dropout", {}, False), ("torch's dropout", {}, True), ("no dropout", NO_DROPOUT, False)):
        for path, wrap in (("eager", lambda m: m), ("compiled", torch.compile),
                           ("compiled, aten random", lambda m: torch.compile(m, options={"fallback_random": True}))):
            torch.manual_seed(0)
            model = vh.VisionTransformer(**{**cfg, **over})
            out[f"{path}, {label}"] = wrap(with_torch_dropout(model) if swap else model)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="cifar10-original", help="a recipe of vitkit.recipes with a ViT model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--steps", type=int, default=4, help="training steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    recipe = recipes.get_recipe(args.recipe)
    if "model" not in recipe:
        ap.error(f"--recipe {args.recipe}: trains HF's or a pretrained model, not ours; choose a recipe with a "
                 f"'model' entry (e.g. cifar10-original)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = runtime.resolve_precision(device)
    cfg, batch = recipe["model"], args.batch or recipe["data"]["batch_size"]
    x = torch.randn(batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    y = torch.randint(0, cfg["num_classes"], (batch,))
    runtime.import_inductor_quietly()
    models = variants(cfg)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}

    def timed(k: str, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            with runtime.autocast(device, precision):
                loss = F.cross_entropy(models[k](x).float(), y)
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    start = time.perf_counter()
    warmup = {k: timed(k, 2) for k in models}  # compilation for the compiled ones
    rounds = {k: [] for k in models}
    for r in range(args.rounds):
        for k in models:
            rounds[k].append(timed(k, args.steps))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    ips = {k: batch * args.steps / statistics.median(v) for k, v in rounds.items()}
    print(f"{args.recipe}: dim {cfg['dim']}, depth {cfg['depth']}, MLP {cfg['mlp_dim']}, dropout "
          f"{cfg.get('dropout', 0)}/{cfg.get('attn_dropout', 0)}/{cfg.get('mlp_dropout', 0)}, batch {batch}, "
          f"{precision}, {torch.get_num_threads()} threads; training images/s, median of {args.rounds} rounds:")
    for k, v in ips.items():
        print(f"  {k:36s} {v:8.1f}")
    tag = "cpu-bf16" if precision == "bf16" else "cpu-fp32"
    out = args.out or str(ROOT / "results" / f"bench-dropout-{args.recipe}-{tag}.json")
    records.save_results(out, metrics={"training_images_per_s": ips, "warmup_s": warmup,
                                       "round_s": rounds},
                         config={"recipe": args.recipe, "model": cfg, "batch": batch, "steps": args.steps,
                                 "rounds": args.rounds, "precision": precision,
                                 "threads": torch.get_num_threads()},
                         seed=0, dataset="random tensors", wall_time_s=time.perf_counter() - start, device=device)
    print(f"wrote {Path(out).relative_to(ROOT) if Path(out).is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
