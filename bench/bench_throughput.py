"""Training throughput of our ViT (SDPA and explicit attention) vs HF's ViT, and attention-rollout time.

    python bench/bench_throughput.py            # CPU fp32/bf16, and CUDA fp32/bf16 when a GPU is present
    python bench/bench_throughput.py --threads 1 --rounds 5

Variants are timed in interleaved rounds (A, B, C, A, B, C, ...) and summarised by their medians, so the
ratios printed come from one run under the same conditions. Writes results/bench-<hostname>.json.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vit_helpers as vh  # noqa: E402

CONFIG = dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=128, depth=6, heads=4, mlp_dim=512)


class ExplicitAttention(torch.nn.Module):
    """Our model forced onto the explicit softmax(q k^T) path (as when attention maps are requested)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, return_attentions=True)[0]


def make_variants(device, compile_model=False):
    torch.manual_seed(0)
    variants = {
        "ours (sdpa)": vh.VisionTransformer(**CONFIG).to(device),
        "ours (explicit)": ExplicitAttention(vh.VisionTransformer(**CONFIG)).to(device),
        "hf (sdpa)": vh.to_hf(vh.VisionTransformer(**CONFIG), attn_implementation="sdpa").to(device),
    }
    if compile_model:
        variants["ours (sdpa, torch.compile)"] = torch.compile(vh.VisionTransformer(**CONFIG).to(device))
    return variants


def time_steps(model, opt, x, y, steps, device, precision):
    torch.cuda.synchronize() if device.type == "cuda" else None
    t0 = time.perf_counter()
    for _ in range(steps):
        with vh._autocast(device, precision):
            loss = F.cross_entropy(vh._logits(model, x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if device.type == "cuda" else None
    return time.perf_counter() - t0


def bench_training(device, precision, batch, steps, rounds, compile_model=False):
    variants = make_variants(device, compile_model)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
            for k, m in variants.items()}
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    compile_s = {}
    for k, m in variants.items():  # warm-up (and compilation)
        compile_s[k] = time_steps(m.train(), opts[k], x, y, 3, device, precision)
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, m in variants.items():
            times[k].append(time_steps(m, opts[k], x, y, steps, device, precision))
    ips = {k: batch * steps / statistics.median(v) for k, v in times.items()}  # images / s
    return ips, compile_s


def bench_rollout(device, repeats=50):
    torch.manual_seed(0)
    attentions = tuple(torch.rand(1, 12, 197, 197, device=device).softmax(-1) for _ in range(12))  # ViT-B/16
    for _ in range(3):
        vh.attention_rollout(attentions)
    out = {}
    for name, kwargs in (("mean", {}), ("max, discard 0.9", dict(head_fusion="max", discard_ratio=0.9))):
        ts = []
        for _ in range(repeats):
            torch.cuda.synchronize() if device.type == "cuda" else None
            t0 = time.perf_counter()
            vh.attention_rollout(attentions, **kwargs)
            torch.cuda.synchronize() if device.type == "cuda" else None
            ts.append(time.perf_counter() - t0)
        out[name] = 1000 * statistics.median(ts)  # ms
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="add a torch.compile variant (compiles per precision)")
    ap.add_argument("--out", default=str(ROOT / "results" / f"bench-{socket.gethostname()}.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [(torch.device("cpu"), "fp32"), (torch.device("cpu"), "bf16")]  # bf16 pays on CPUs with AVX512-BF16/AMX
    if torch.cuda.is_available():
        runs += [(torch.device("cuda"), "fp32"), (torch.device("cuda"), "bf16")]
    start = time.perf_counter()
    results = {"config": CONFIG, "batch": args.batch, "training_images_per_s": {}, "rollout_ms": {}}
    print(f"ViT dim {CONFIG['dim']}, depth {CONFIG['depth']}, heads {CONFIG['heads']}, mlp {CONFIG['mlp_dim']}, "
          f"patch {CONFIG['patch_size']}, batch {args.batch}; torch threads {torch.get_num_threads()}")
    for device, precision in runs:
        steps = args.steps if device.type == "cpu" else 50
        ips, warmup_s = bench_training(device, precision, args.batch, steps, args.rounds, args.compile)
        key = f"{device.type}-{precision}"
        results["training_images_per_s"][key] = ips
        results.setdefault("warmup_s", {})[key] = warmup_s  # 3 first steps: includes torch.compile's compile time
        base = ips["hf (sdpa)"]
        print(f"\n[{key}] training images/s (median of {args.rounds} interleaved rounds)")
        for name, v in ips.items():
            print(f"  {name:18s} {v:9.1f}   x{v / base:.2f} vs HF")
        print(f"  SDPA / explicit: x{ips['ours (sdpa)'] / ips['ours (explicit)']:.2f}")
        if args.compile:
            print(f"  first 3 steps with torch.compile: {warmup_s['ours (sdpa, torch.compile)']:.0f} s "
                  f"(eager: {warmup_s['ours (sdpa)']:.1f} s)")
    for device in sorted({d for d, _ in runs}, key=str):
        results["rollout_ms"][device.type] = bench_rollout(device)
        print(f"\n[{device.type}] attention_rollout, 12 layers x 12 heads x 197 tokens, batch 1: "
              + ", ".join(f"{k}: {v:.2f} ms" for k, v in results["rollout_ms"][device.type].items()))
    vh.save_results(args.out, metrics=results, config={**CONFIG, "batch": args.batch, "steps": args.steps,
                    "rounds": args.rounds}, seed=0, dataset="random tensors",
                    wall_time_s=time.perf_counter() - start, device=runs[-1][0])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
