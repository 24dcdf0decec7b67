"""How much of the localization gap is the stem's geometry? Scores the pointing game of the ViT that
WeaklySupervisedLocalization.ipynb trained (its checkpoint in checkpoints/runs/) twice on the same test canvases:
as the notebook scores it (the centre of the map's highest 8x8 cell) and with that point moved to where the token's
receptive field is centred (measured from the token's input gradients). Writes results/stem-shift-check.json
(results/stem-shift-check-<stem>.json for another stem than "conv").

    python scripts/check_stem_shift.py --data-root ../shared/data [--stem conv-centred]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vit_helpers as vh  # noqa: E402
from vitkit import checkpoint as ckpt  # noqa: E402
from vitkit import data, explain, localize, records  # noqa: E402

VIT = dict(image_size=64, patch_size=8, in_channels=1, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=128)


def receptive_field_offset(model: vh.VisionTransformer, samples: int = 20) -> tuple[float, float]:
    """(rows, columns) in pixels from a patch's centre to the centre of mass of its token's input gradients."""
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    weight, (i, j) = torch.zeros(64, 64), (3, 4)
    for _ in range(samples):
        x = torch.randn(1, 1, 64, 64, requires_grad=True)
        (grad,) = torch.autograd.grad(model.patch_embed(x)[0, i * 8 + j].sum(), x)
        weight += grad[0, 0].abs()
    centre = ((weight * ys).sum() / weight.sum(), (weight * xs).sum() / weight.sum())
    return float(centre[0] - (i * 8 + 3.5)), float(centre[1] - (j * 8 + 3.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="./data")
    ap.add_argument("--stem", default="conv", help="the stem of the notebook's trained ViT (its checkpoint's name)")
    args = ap.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    model = vh.VisionTransformer(**VIT, stem=args.stem)
    path = ROOT / "checkpoints" / "runs" / f"WeaklySupervisedLocalization-vit-{args.stem}-full.pt"
    model.load_state_dict(ckpt.load(path)["model"])
    model.eval()
    dy, dx = receptive_field_offset(model)
    _, mnist_test = data.load_mnist(args.data_root)
    canvases, boxes = localize.cluttered_mnist(mnist_test, 10_000, seed=len("test"))  # the notebook's test canvases
    maps = explain.explain("rollout", model, (canvases.images.float() / 255 - 0.05) / 0.2)
    scored = localize.pointing_game(maps, boxes, 64).float().mean().item()
    moved = localize.pointing_game(maps, boxes, 64, offset=(dy, dx)).float().mean().item()
    print(f"receptive-field centre - patch centre: ({dy:+.2f}, {dx:+.2f}) px")
    print(f"rollout pointing game: {scored:.2%} as scored, {moved:.2%} at the receptive-field centres")
    out = ROOT / "results" / f"stem-shift-check{'' if args.stem == 'conv' else '-' + args.stem}.json"
    records.save_results(out, metrics={
        "receptive_field_offset_px": {"rows": dy, "columns": dx}, "rollout_pointing_game": scored,
        "rollout_pointing_game_at_receptive_field_centres": moved}, config={"stem": args.stem, "model": VIT,
        "checkpoint": str(path.relative_to(ROOT)), "n_test": 10_000}, seed=0,
        dataset=canvases.source, wall_time_s=time.perf_counter() - started)


if __name__ == "__main__":
    main()
