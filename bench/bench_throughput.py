"""Training throughput: our ViT as fit() runs it by default, in every configuration, against HF's and timm's
ViT in every configuration, in one interleaved run; plus the machine's matmul peak and attention-rollout time.

    python bench/bench_throughput.py                  # CPU (and CUDA when present), torch's default threads
    python bench/bench_throughput.py --quick          # a tiny config, no compilation: checks the script runs

Variants (same maths, same weights shape, same batch of random images):
  ours (fit default)  precision, attention path and torch.compile exactly as fit(precision="auto",
                      compile="auto") picks them on this device for a long run
  ours sdpa / explicit, each eager and torch.compile'd, in every precision measured
  hf sdpa / eager     transformers' ViTForImageClassification, each eager and compiled
  timm fused / unfused  timm's VisionTransformer with fused_attn on/off, each eager and compiled
Precisions: fp32 everywhere; bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX). On other
CPUs bf16 matmuls are emulated (about 100x slower than fp32 here), so bf16 is skipped there unless --bf16.

Each variant runs `--steps` training steps per round, in `--rounds` interleaved rounds (A, B, C, A, B, C,
...); the median round gives images/s. GFLOP/s = images/s x FLOPs per training image (counted with
torch.utils.flop_counter on one forward + backward). Ratios are against the fastest peer (HF or timm) in
any configuration of the same run. Writes results/bench-<hostname>.json.
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
from vitkit import records, runtime  # noqa: E402
from vitkit.steps import make_optimizer, model_logits  # noqa: E402

CONFIG = dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=128, depth=6, heads=4, mlp_dim=512)
QUICK = dict(image_size=16, patch_size=4, in_channels=3, num_classes=10, dim=32, depth=2, heads=2, mlp_dim=64)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, sizes=(1024, 2048, 4096), seconds: float = 2.0) -> float:
    """What the machine's GEMM reaches: the best rate of square matrix products of a few sizes, each timed
    over about ``seconds`` after a warm-up."""
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(sizes) or reps < 2:
            a @ b
            reps += 1
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_training_image(cfg: dict, batch: int) -> float:
    """FLOPs of one forward + backward of our model (explicit attention path), per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = vh.VisionTransformer(**cfg, fused_attn=False)
    x = torch.randn(batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def timm_vit(cfg: dict, fused: bool):
    import timm.models.vision_transformer as tvit

    model = tvit.VisionTransformer(img_size=cfg["image_size"], patch_size=cfg["patch_size"],
                                   in_chans=cfg["in_channels"], num_classes=cfg["num_classes"],
                                   embed_dim=cfg["dim"], depth=cfg["depth"], num_heads=cfg["heads"],
                                   mlp_ratio=cfg["mlp_dim"] / cfg["dim"], qkv_bias=True)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return model


def make_variants(cfg: dict, device: torch.device, precision: str, fit_default: tuple[str, bool] | None,
                  compile_models: bool, peers: bool) -> dict[str, torch.nn.Module]:
    """name -> model. ``fit_default`` is (precision, compiled) of fit's choice, added when it is this precision."""
    builders = {
        "ours sdpa": lambda: vh.VisionTransformer(**cfg, fused_attn=True),
        "ours explicit": lambda: vh.VisionTransformer(**cfg, fused_attn=False),
    }
    if peers:
        builders["hf sdpa"] = lambda: vh.to_hf(vh.VisionTransformer(**cfg), attn_implementation="sdpa")
        builders["hf eager"] = lambda: vh.to_hf(vh.VisionTransformer(**cfg), attn_implementation="eager")
        try:
            import timm  # noqa: F401
            builders["timm fused"] = lambda: timm_vit(cfg, fused=True)
            builders["timm unfused"] = lambda: timm_vit(cfg, fused=False)
        except ImportError:
            print("timm is not installed (pip install -r requirements-dev.txt): timm rows skipped")
    variants = {}
    if fit_default is not None and fit_default[0] == precision:
        model = vh.VisionTransformer(**cfg).to(device)  # fused_attn=None: fit's automatic choice
        variants["ours (fit default)"] = torch.compile(model) if fit_default[1] else model
    for name, build in builders.items():
        torch.manual_seed(0)
        variants[name] = build().to(device)
        if compile_models:
            torch.manual_seed(0)
            variants[f"{name} compiled"] = torch.compile(build().to(device))
    return variants


def time_steps(model, opt, x, y, steps, device, precision) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with runtime.autocast(device, precision):
            loss = F.cross_entropy(model_logits(model, x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def bench_precision(cfg, device, precision, batch, steps, rounds, fit_default, compile_models, peers):
    variants = make_variants(cfg, device, precision, fit_default, compile_models, peers)
    # fit's optimizer for every variant (AdamW, fused where torch has it): the comparison is of the models
    opts = {k: make_optimizer(m, "adamw", 1e-4, 0.05, 0.9, device) for k, m in variants.items()}
    x = torch.randn(batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"], device=device)
    y = torch.randint(0, cfg["num_classes"], (batch,), device=device)
    warmup_s = {}
    for k, m in variants.items():  # warm-up, and compilation for the compiled variants
        warmup_s[k] = time_steps(m.train(), opts[k], x, y, 3, device, precision)
        print(f"  warm-up {k:24s} {warmup_s[k]:6.1f} s", flush=True)
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, m in variants.items():
            times[k].append(time_steps(m, opts[k], x, y, steps, device, precision))
    return {k: batch * steps / statistics.median(v) for k, v in times.items()}, warmup_s


def rollout_unchecked(attentions):
    """The maths of vh.attention_rollout (mean fusion) as a plain loop without any input check: the floor that the
    checked version's overhead is measured against."""
    B, _, T, _ = attentions[0].shape
    eye = torch.eye(T, device=attentions[0].device)
    result = eye.expand(B, T, T)
    for attn in attentions:
        a = attn.mean(dim=1) + eye
        result = (a / a.sum(dim=-1, keepdim=True)) @ result
    side = int((T - 1) ** 0.5)
    return result[:, 0, 1:].reshape(B, side, side)


def bench_rollout(device, repeats=50):
    """Milliseconds per call (median), ViT-B/16-sized maps: checked rollout (mean; max + discard 0.9) and the
    unchecked loop, interleaved; plus the checks' overhead in %."""
    torch.manual_seed(0)
    attentions = tuple(torch.rand(1, 12, 197, 197, device=device).softmax(-1) for _ in range(12))  # ViT-B/16
    torch.testing.assert_close(vh.attention_rollout(attentions), rollout_unchecked(attentions))
    calls = {"mean": lambda: vh.attention_rollout(attentions),
             "max, discard 0.9": lambda: vh.attention_rollout(attentions, head_fusion="max", discard_ratio=0.9),
             "mean, no checks": lambda: rollout_unchecked(attentions)}
    times = {name: [] for name in calls}
    for _ in range(3):
        for call in calls.values():
            call()
    for _ in range(repeats):
        for name, call in calls.items():
            sync(device)
            t0 = time.perf_counter()
            call()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    out = {name: 1000 * statistics.median(ts) for name, ts in times.items()}  # ms
    out["check_overhead_pct"] = 100 * (out["mean"] / out["mean, no checks"] - 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed round (CPU; CUDA uses 50)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--bf16", action="store_true", help="measure bf16 on the CPU even without native bf16")
    ap.add_argument("--quick", action="store_true", help="tiny config, 1 round, no compilation (a smoke test)")
    ap.add_argument("--out", default=None, help="default: results/bench-<device>.json (cpu-bf16, cpu-fp32 or the GPU)")
    args = ap.parse_args()
    if args.out is None:
        tag = (torch.cuda.get_device_name().lower().replace(" ", "-") if torch.cuda.is_available()
               else "cpu-bf16" if runtime.cpu_has_native_bf16() else "cpu-fp32")
        args.out = str(ROOT / "results" / f"bench-{tag}.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else CONFIG
    compile_models = not (args.no_compile or args.quick)
    rounds, steps = (1, 2) if args.quick else (args.rounds, args.steps)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    start = time.perf_counter()
    gflop_per_image = flops_per_training_image(cfg, args.batch) / 1e9
    results = {"config": cfg, "batch": args.batch, "gflop_per_training_image": gflop_per_image,
               "training_images_per_s": {}, "gflops": {}, "peak_gflops": {}, "fraction_of_peak": {},
               "vs_fastest_peer": {}, "fit_default": {}, "warmup_s": {}, "rollout_ms": {}, "skipped": []}
    print(f"ViT dim {cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}, mlp {cfg['mlp_dim']}, patch "
          f"{cfg['patch_size']}, {cfg['image_size']} px, batch {args.batch}; {gflop_per_image:.3f} GFLOP per "
          f"training image; torch threads {torch.get_num_threads()}")
    all_ips = {}
    for device in devices:
        auto = runtime.resolve_precision(device)
        fit_default = (auto, compile_models and runtime.resolve_compile("auto", device, auto, long_run=True))
        results["fit_default"][device.type] = {"precision": auto, "compiled": fit_default[1]}
        precisions = ["fp32"]
        if device.type == "cuda" or runtime.cpu_has_native_bf16() or args.bf16:
            precisions.append("bf16")
        else:
            results["skipped"].append("cpu-bf16: no native bf16 on this CPU (emulated bf16 matmuls are far "
                                      "slower than fp32); pass --bf16 to measure anyway")
            print(f"[cpu-bf16] skipped: {results['skipped'][-1]}")
        for precision in precisions:
            key = f"{device.type}-{precision}"
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peak = results["peak_gflops"][key] = matmul_peak_gflops(device, dtype)
            print(f"\n[{key}] matmul peak {peak:.0f} GFLOP/s (best of 1024, 2048, 4096 square products)", flush=True)
            steps_here = steps if device.type == "cpu" else 50
            ips, warm = bench_precision(cfg, device, precision, args.batch, steps_here, rounds, fit_default,
                                        compile_models, peers=True)
            results["training_images_per_s"][key] = ips
            results["warmup_s"][key] = warm
            results["gflops"][key] = {k: v * gflop_per_image for k, v in ips.items()}
            results["fraction_of_peak"][key] = {k: v * gflop_per_image / peak for k, v in ips.items()}
            all_ips.update({(key, k): v for k, v in ips.items()})
        peer = max(((k, v) for k, v in all_ips.items() if k[0].startswith(device.type)
                    and not k[1].startswith("ours")), key=lambda kv: kv[1])
        results["fastest_peer"] = results.get("fastest_peer", {}) | {device.type: {"config": f"{peer[0][0]} {peer[0][1]}",
                                                                                   "images_per_s": peer[1]}}
        print(f"\n[{device.type}] training images/s, median of {rounds} interleaved rounds; "
              f"fastest peer: {peer[0][1]} ({peer[0][0]}) {peer[1]:.1f} img/s")
        print(f"  {'variant':32s} {'img/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s} {'vs peer':>8s}")
        for (key, name), v in all_ips.items():
            if not key.startswith(device.type):
                continue
            ratio = v / peer[1]
            results["vs_fastest_peer"].setdefault(key, {})[name] = ratio
            print(f"  {key + ' ' + name:32s} {v:8.1f} {v * gflop_per_image:8.1f} "
                  f"{100 * results['fraction_of_peak'][key][name]:6.1f}% {ratio:7.2f}x")
        default_key = f"{device.type}-{fit_default[0]}"
        if "ours (fit default)" in results["training_images_per_s"].get(default_key, {}):
            d = results["training_images_per_s"][default_key]["ours (fit default)"]
            print(f"  => ours as fit() runs it by default ({fit_default[0]}, compile "
                  f"{'on' if fit_default[1] else 'off'}): {d / peer[1]:.2f}x the fastest peer, "
                  f"{100 * results['fraction_of_peak'][default_key]['ours (fit default)']:.0f} % of the "
                  f"{fit_default[0]} matmul peak")
        results["rollout_ms"][device.type] = bench_rollout(device)
        print(f"\n[{device.type}] attention_rollout, 12 layers x 12 heads x 197 tokens, batch 1: "
              + ", ".join(f"{k}: {v:.2f} ms" for k, v in results["rollout_ms"][device.type].items()
                          if k != "check_overhead_pct")
              + f"; input checks add {results['rollout_ms'][device.type]['check_overhead_pct']:.0f} %")
    config = {**cfg, "batch": args.batch, "steps": steps, "rounds": rounds, "compile": compile_models,
              "threads": torch.get_num_threads()}
    records.save_results(args.out, metrics=results, config=config, seed=0, dataset="random tensors",
                         wall_time_s=time.perf_counter() - start, device=devices[-1])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
