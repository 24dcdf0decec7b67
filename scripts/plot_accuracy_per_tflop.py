"""Validation accuracy against training compute for every recorded CIFAR-10 run, one line per run, with the
compute-budget targets (80 % within 160 TFLOP, 85 % within 320 TFLOP) drawn in.

    python scripts/plot_accuracy_per_tflop.py            # -> images/cifar10-accuracy-vs-tflop.png

Compute per epoch = FLOPs per training image (torch.utils.flop_counter on the record's model config, forward +
backward) x training images; a budgeted run's last epoch is cut at the record's ``train_tflop``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vit_helpers as vh  # noqa: E402
from vitkit import budget  # noqa: E402


def _gflop(record: dict) -> float:
    gflop = record["metrics"].get("gflop_per_image")
    if gflop:
        return gflop
    model = vh.VisionTransformer(**record["config"]["model"])
    return budget.flops_per_image(model, None, torch.device("cpu")) / 1e9


def curve(record: dict) -> tuple[list[float], list[float]]:
    """(TFLOP after each epoch, validation accuracy in %) of one run."""
    hist, cfg = record["history"], record["config"]
    images = 50_000 - cfg.get("val_size", 5000) if not cfg.get("train_limit") else cfg["train_limit"]
    tflop = [e * images * _gflop(record) / 1e3 for e in hist["epoch"]]
    if record["metrics"].get("train_tflop"):
        tflop[-1] = min(tflop[-1], record["metrics"]["train_tflop"])
    return tflop, [100 * a for a in hist["val_acc"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "images" / "cifar10-accuracy-vs-tflop.png")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for path in sorted((ROOT / "results").glob("*.json")):
        record = json.loads(path.read_text())
        if "cifar10" not in path.stem or path.stem.endswith("-smoke") or "history" not in record or "model" not in record.get("config", {}):
            continue
        x, y = curve(record)
        test = 100 * record["metrics"]["test_acc"]
        line, = ax.plot(x, y, marker=".", label=f"{path.stem} (test {test:.1f} %)")
        ax.plot([x[-1]], [test], marker="*", markersize=10, color=line.get_color())
    for tflop, acc in ((160, 80), (320, 85)):
        ax.plot([0, tflop, tflop], [acc, acc, 0], ls="--", color="grey", lw=1)
        ax.annotate(f"target: {acc} % within {tflop} TFLOP", (tflop, acc), fontsize=8, xytext=(-4, 4),
                    textcoords="offset points", ha="right")
    ax.set(xlabel="training compute (TFLOP)", ylabel="validation accuracy (%)", ylim=(30, 90), xlim=(0, 340),
           title="CIFAR-10: accuracy per training compute (line: validation per epoch; star: test)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
