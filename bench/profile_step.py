"""Where one training step's time goes: ours as fit runs it by default against timm's fastest CPU configuration,
profiled with torch.profiler, ops grouped by kind (matrix products, convolutions, attention softmax, GELU,
LayerNorm, casts and copies, the optimizer, compiled fused kernels, the rest).

    python bench/profile_step.py --threads 2                 # the cifar10-cpu benchmark model (bench_throughput's)
    python bench/profile_step.py --threads 2 --recipe cifar10-fast

Prints, per variant, images/s over the profiled steps, the share of the step in each kind and the top ops by self
time, and writes results/profile-<hostname>.json. What a speed-up can come from: only the kinds outside the matrix
products can shrink without changing the maths.
"""
from __future__ import annotations

import argparse
import socket
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
from bench_throughput import CONFIG, timm_vit  # noqa: E402
from vitkit import recipes, records, runtime  # noqa: E402
from vitkit.steps import model_logits  # noqa: E402

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


def profile(model, opt, x, y, device, precision, steps: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def step():
        with runtime.autocast(device, precision):
            loss = F.cross_entropy(model_logits(model, x).float(), y)
        loss.backward()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--recipe", default=None, help="profile this recipe's model (default: the benchmark's)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.device("cpu")
    precision = runtime.resolve_precision(device, "auto")
    cfg = recipes.get_recipe(args.recipe)["model"] if args.recipe else dict(CONFIG)
    x = torch.randn(args.batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    y = torch.randint(0, cfg["num_classes"], (args.batch,))
    variants = {"ours (fit default)": lambda: torch.compile(vh.VisionTransformer(**cfg))}
    if cfg.get("stem", "patch") == "patch":  # timm has no convolutional stem of ours: same maths only at "patch"
        variants["timm unfused compiled"] = lambda: torch.compile(timm_vit(cfg, fused=False))
    out = {}
    for name, build in variants.items():
        torch.manual_seed(0)
        model = build().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        out[name] = profile(model, opt, x, y, device, precision, args.steps)
        r = out[name]
        print(f"\n{name}: {r['images_per_s']:.0f} img/s ({precision}, {torch.get_num_threads()} threads)")
        for k, share in r["share_by_kind"].items():
            print(f"  {k:24s} {share:6.1%}")
        for op in r["top_ops"][:8]:
            print(f"    {op['self_ms_per_step']:8.2f} ms/step  {op['op']}")
    path = records.save_results(
        ROOT / "results" / f"profile-{socket.gethostname()}.json",
        metrics={f"{name} images_per_s": round(r["images_per_s"], 1) for name, r in out.items()},
        config={"model": cfg, "batch": args.batch, "steps": args.steps, "precision": precision,
                "threads": torch.get_num_threads()},
        seed=0, dataset="random images (no data set)", wall_time_s=time.perf_counter() - started, device=device,
        profiles=out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
