"""Where one training step's time goes: ours as fit runs it by default against timm's fastest CPU configuration,
profiled with torch.profiler, ops grouped by kind (matrix products, convolutions, attention softmax, GELU,
LayerNorm, casts and copies, the optimizer, compiled fused kernels, the rest); with the machine's matmul peak measured
in the same run, and (given --data-root) the time the recipe's data loader takes per batch beside the step.

    python bench/profile_step.py --threads 2                 # the cifar10-cpu benchmark model (bench_throughput's)
    python bench/profile_step.py --threads 2 --recipe cifar10-fast --data-root ../shared/data

Prints, per variant, images/s over the profiled steps, GFLOP/s as a share of the matmul peak, the share of the step
in each kind and the top ops by self time, and writes results/profile-cpu-<precision>-<recipe or bench>.json. What a speed-up can come
from: only the kinds outside the matrix products can shrink without changing the maths.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import vit_helpers as vh  # noqa: E402
from bench_throughput import CONFIG, flops_per_training_image, matmul_peak_gflops, timm_vit  # noqa: E402
from vitkit import data, recipes, records, runtime  # noqa: E402
from vitkit.steps import make_optimizer, model_logits  # noqa: E402

KINDS = (  # first match wins: (kind, substrings of the op name)
    ("compiled fused kernels", ("CompiledFxGraph", "cpp_fused", "triton_", "graph_", "CompiledFunction", "Torch-Compiled")),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn_linear",
                         "aten::baddbmm", "mkldnn_matmul")),
    ("convolutions", ("convolution", "conv2d", "mkldnn_conv")),
    ("softmax", ("softmax",)),
    ("GELU", ("gelu",)),
    ("LayerNorm / BatchNorm", ("layer_norm", "batch_norm")),
    ("casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous")),
    ("optimizer", ("_foreach", "adam", "Optimizer")),
)


def kind(name: str) -> str:
    return next((k for k, keys in KINDS if any(s in name for s in keys)), "other")


def profile(runner, model, opt, x, y, device, precision, steps: int, grad_clip: float | None = None) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def step():  # fit's step without its bookkeeping
        with runtime.autocast(device, precision):
            loss = F.cross_entropy(model_logits(runner, x).float(), y)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    by_kind, top = defaultdict(float), []
    for e in prof.key_averages():
        by_kind[kind(e.key)] += e.self_cpu_time_total
        top.append((e.self_cpu_time_total, e.key, e.count))
    total = sum(by_kind.values())
    top.sort(reverse=True)
    return {"images_per_s": len(x) * steps / wall,
            "share_by_kind": {k: round(v / total, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": name, "self_ms_per_step": round(t / 1e3 / steps, 3), "calls_per_step": c / steps}
                        for t, name, c in top[:15]]}


def loader_ms_per_batch(recipe: str, root: str, batches: int = 100) -> float:
    """Median time to draw one training batch from the recipe's loader, as fit draws them (same process)."""
    dataset = recipes.RECIPES[recipe].get("dataset", recipe.split("-")[0])  # as scripts/train_recipe.py reads it
    make = data.mnist_loaders if dataset == "mnist" else data.cifar10_loaders
    loaders = make(root, **recipes.get_recipe(recipe)["data"], download=False)
    times, it = [], iter(loaders.train)
    next(it)
    for _ in range(batches):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--recipe", default=None, help="profile this recipe's model, batch and optimizer "
                                                   "(default: the benchmark's model)")
    ap.add_argument("--data-root", default=None, help="also time the recipe's training loader per batch")
    ap.add_argument("--batch", type=int, default=None, help="default: the recipe's, else 64")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    if args.data_root and not args.recipe:
        ap.error("--data-root times a recipe's loader: pass --recipe too")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.device("cpu")
    precision = runtime.resolve_precision(device, "auto")
    spec = recipes.get_recipe(args.recipe) if args.recipe else {"model": dict(CONFIG), "data": {}, "fit": {}}
    cfg, fit_cfg = spec["model"], spec["fit"]
    batch = args.batch or spec["data"].get("batch_size", 64)
    x = torch.randn(batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    y = torch.randint(0, cfg["num_classes"], (batch,))
    opt_name, lr = fit_cfg.get("optimizer", "adamw"), fit_cfg.get("lr", 1e-4)
    def as_fit_runs_it(model, compile="auto"):
        """(what the step calls, the model, channels-last?): fit's layout and compile choice for ``model``."""
        channels_last = compile == "auto" and runtime.channels_last_convolutions(model, device, precision)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        compiled = runtime.resolve_compile(compile, device, precision, True, model)
        runner = torch.compile(model, options=runtime.compile_options(model, device)) if compiled else model
        return runner, model, channels_last

    variants = {"ours (fit default)": lambda: as_fit_runs_it(vh.VisionTransformer(**cfg))}
    if runtime.channels_last_convolutions(vh.VisionTransformer(**cfg), device, precision):
        variants["ours compiled, standard layout"] = lambda: as_fit_runs_it(vh.VisionTransformer(**cfg), True)
    if cfg.get("stem", "patch") == "patch":  # timm has no convolutional stem of ours: same maths only at "patch"
        variants["timm unfused compiled"] = lambda: (lambda m: (torch.compile(m), m, False))(timm_vit(cfg, fused=False))
    gflop = flops_per_training_image(cfg, batch) / 1e9
    peak = matmul_peak_gflops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    print(f"{gflop:.3f} GFLOP per training image; {precision} matmul peak {peak:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    out = {}
    for name, build in variants.items():
        torch.manual_seed(0)
        runner, model, channels_last = build()
        model.train()
        # fit's optimizer (fused on CPUs) for all: the comparison is of the models, not of optimizers
        opt = make_optimizer(model, opt_name, lr, fit_cfg.get("weight_decay", 0.05), 0.9, device)
        images = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        out[name] = profile(runner, model, opt, images, y, device, precision, args.steps, fit_cfg.get("grad_clip"))
        r = out[name]
        r["fraction_of_peak"] = r["images_per_s"] * gflop / peak
        print(f"\n{name}: {r['images_per_s']:.0f} img/s, {r['images_per_s'] * gflop:.0f} GFLOP/s = "
              f"{r['fraction_of_peak']:.0%} of the matmul peak")
        for k, share in r["share_by_kind"].items():
            print(f"  {k:24s} {share:6.1%}")
        for op in r["top_ops"][:8]:
            print(f"    {op['self_ms_per_step']:8.2f} ms/step  {op['op']}")
    metrics = {f"{name} images_per_s": round(r["images_per_s"], 1) for name, r in out.items()}
    metrics |= {"gflop_per_training_image": round(gflop, 4), "matmul_peak_gflops": round(peak, 1)}
    if args.data_root:
        ms = metrics["loader_ms_per_batch"] = round(loader_ms_per_batch(args.recipe, args.data_root), 2)
        step_ms = 1e3 * batch / out["ours (fit default)"]["images_per_s"]
        print(f"\ndata loader: {ms:.1f} ms per batch of {batch} beside a {step_ms:.1f} ms step "
              f"({ms / (ms + step_ms):.0%} of fit's time per batch)")
    path = records.save_results(
        ROOT / "results" / f"profile-cpu-{precision}-{args.recipe or 'bench'}.json", metrics=metrics,
        config={"recipe": args.recipe, "model": cfg, "batch": batch, "steps": args.steps, "precision": precision,
                "optimizer": opt_name, "grad_clip": fit_cfg.get("grad_clip"), "threads": torch.get_num_threads()},
        seed=0, dataset="random images (no data set)" + (", the recipe's loader timed" if args.data_root else ""),
        wall_time_s=time.perf_counter() - started, device=device, profiles=out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
