"""Validation accuracy against training compute for every recorded CIFAR-10 run (the ablation rows of the original's
recipe aside: docs/results.md tables them), one line per run, with the
compute-budget targets and published reference points (test accuracy at their training compute) drawn in.

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
sys.path.insert(0, str(ROOT / "scripts"))
import results_table  # noqa: E402
import vit_helpers as vh  # noqa: E402
from vitkit import budget  # noqa: E402


# Published CIFAR-10 results at their training compute (forward FLOPs x 3 x images seen, or MACs x 6), as
# (label, test accuracy %, lowest TFLOP, highest TFLOP): a range where the source leaves FLOPs or MACs open.
ANCHORS = (
    ("CCT-2/3x2, 200 epochs (SHI-Labs/Compact-Transformers)", 89.17, 2000, 2000),
    ("ViT + 3-block conv patchify, 50 epochs (Brokttv/Vit-on-small-data)", 93.42, 2600, 5200),
    ("CCT-7/3x1, 300 epochs (Compact-Transformers)", 96.53, 85_000, 85_000),
    ("airbench94, a CNN (KellerJordan/cifar10-airbench)", 94.01, 290, 360),
)


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

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a colour per run: more runs than tab10 has colours
    for path in sorted((ROOT / "results").glob("*.json")):
        record = json.loads(path.read_text())
        if "cifar10" not in path.stem or path.stem.endswith("-smoke") or "history" not in record or "model" not in record.get("config", {}):
            continue
        if "-abl-" in path.stem:  # the original recipe's ablation rows: no attempt at compute; their own table
            continue
        x, y = curve(record)
        test = 100 * record["metrics"]["test_acc"]
        cut = " (partial)" if results_table.partial(record, results_table.named_recipe(record)) else ""
        line, = ax.plot(x, y, marker=".", ls=":" if cut else "-", label=f"{path.stem}{cut} (test {test:.1f} %)")
        ax.plot([x[-1]], [test], marker="*", markersize=10, color=line.get_color())
    for tflop, acc in ((t, 100 * a) for t, a in results_table.TFLOP_TARGETS):
        ax.plot([tflop, tflop, 1e6], [0, acc, acc], ls="--", color="grey", lw=1)
        ax.annotate(f"target: {acc:g} % within {tflop} TFLOP", (tflop, acc), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    for (label, acc, low, high), marker in zip(ANCHORS, "sDPo"):
        mid = (low * high) ** 0.5
        ax.errorbar([mid], [acc], xerr=[[mid - low], [high - mid]], fmt=marker, color="black", mfc="white",
                    capsize=3, label=f"published: {label}")
    ax.set_xscale("log")
    ax.set(xlabel="training compute (TFLOP, log scale)", ylabel="accuracy (%)", ylim=(30, 100), xlim=(5, 2e5),
           title="CIFAR-10 accuracy per training compute\n(lines: validation per epoch; stars: our test; "
                 "open markers: published test)")
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
