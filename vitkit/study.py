"""The data-size study: does a prior help a ViT more when data is small? Shared by ``InductiveBias.ipynb`` and
``scripts/inductive_bias_study.py``.

The plain ViT, its best convolutional stem (CCT's tokenizer), SPT + LSA, sin-cos positions and a small CNN matched
to the plain ViT in parameters, each trained from scratch on class-balanced subsets of CIFAR-10 of several sizes,
every run of a size given the same training compute budget (``fit(max_tflop=...)``). :func:`run` trains one (variant,
size, seed); :func:`summarize` turns the runs into means and spreads per size, the gap between the CNN and the
plain ViT with its standard error, what each prior gains over the plain ViT, and how the gap changes with size.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

import vit_helpers as vh
from vitkit import baselines, budget, records, runtime, stats, train
from vitkit.sources import InMemoryImages

__all__ = ["VARIANTS", "SIZES", "SEEDS", "TFLOP", "RECIPE", "SUBSET_SEED", "VAL_SIZE", "PLATEAU_POINTS", "EVALUATIONS",
           "vit_model", "build", "balanced_subsets", "plateau_move", "passes_per_epoch", "run", "summarize",
           "conclusions"]

# The ViT variants: the cifar10-cpu recipe's model with the linear patch stem, and one prior added at a time.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "vit": {}, "cct-stem": {"stem": "cct"}, "spt-lsa": {"stem": "spt", "lsa": True}, "sincos": {"pos_embed": "sincos"},
    "cnn": None,  # vitkit.baselines.SmallCNN, its width matched to the plain ViT's parameter count
}
SIZES = (500, 2500, 12_500)
SEEDS = (0, 1, 2)
# Training compute per run (TFLOP) by training-set size. The sizes and budgets are what 45 runs (5 variants x 3
# sizes x 3 seeds) can afford in about 6 hours on 2 CPU cores (two 1-thread runs at a time): a run's compute must
# grow with its data for its curve to level off, and at 45,000 images one plain-ViT run that flattens would cost
# about as much as the whole study. 2,500: the pilots in results/inductive-bias-pilot-* (the plain ViT, flat at the
# end of a 15 TFLOP run, still gained several points at 60: a flat end is not proof). Every run records how much
# its validation accuracy still moved over the last 20 % of training (plateau_move), and the summary names the runs
# that rose or fell by PLATEAU_POINTS or more.
TFLOP = {500: 15.0, 2500: 40.0, 12_500: 100.0}
RECIPE = "cifar10-cpu"  # the training settings (optimizer, LR, augmentation, batch) and the ViT's sizes
SUBSET_SEED = 1234  # fixes which images each subset holds
VAL_SIZE = 5000  # class-balanced, held out of the official training split; the same for every size
PLATEAU_POINTS = 0.5  # the most validation accuracy may move over the last 20 % of a run for it to count as flat
# Validations per run: an epoch of the study is as many shuffled passes over its subset as make the run about this
# many epochs long, so that 500 images are not validated on 5,000 after every 4 steps (validation would cost more
# than training) while 12,500 are validated after every pass.
EVALUATIONS = 25


def _cnn_matched(target: int, classes: int) -> tuple[torch.nn.Module, float]:
    """The SmallCNN whose width makes its parameter count closest to ``target``; returns it and the ratio."""
    best = None
    for width in range(8, 129, 4):
        model = baselines.SmallCNN(num_classes=classes, channels=(width, 2 * width, 4 * width, 4 * width))
        ratio = vh.count_parameters(model) / target
        if best is None or abs(ratio - 1) < abs(best[1] - 1):
            best = (model, ratio)
    return best


def vit_model(recipe: dict) -> dict[str, Any]:
    """The plain ViT's options: the recipe's model with the paper's linear patch embedding (the priors are added to
    this one at a time; the record's config holds it)."""
    return dict(recipe["model"], stem="patch")


def build(variant: str, recipe: dict, classes: int) -> tuple[torch.nn.Module, float]:
    """The variant's model and its parameter count relative to the plain ViT's."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    vit = dict(vit_model(recipe), num_classes=classes)
    plain = vh.count_parameters(vh.VisionTransformer(**vit))
    if VARIANTS[variant] is None:
        return _cnn_matched(plain, classes)
    model = vh.VisionTransformer(**{**vit, **VARIANTS[variant]})
    return model, vh.count_parameters(model) / plain


def balanced_subsets(train_ds: InMemoryImages, sizes: Sequence[int], seed: int) -> dict[int, torch.Tensor]:
    """Nested class-balanced index sets: for each class a fixed seeded order, of which each size takes its share
    (so the smaller subsets are part of the larger ones)."""
    g = torch.Generator().manual_seed(seed)
    classes = train_ds.labels.unique().tolist()
    orders = {c: (train_ds.labels == c).nonzero()[:, 0][torch.randperm(int((train_ds.labels == c).sum()), generator=g)]
              for c in classes}
    out = {}
    for size in sizes:
        share = size // len(classes)
        if share * len(classes) != size or share > min(len(o) for o in orders.values()):
            raise ValueError(f"size {size}: needs a multiple of {len(classes)} classes with at most "
                             f"{min(len(o) for o in orders.values())} images of each in the training split.")
        out[size] = torch.cat([orders[c][:share] for c in classes])
    return out


def plateau_move(val_acc: Sequence[float]) -> float | None:
    """How far validation accuracy rose over the last 20 % of the evaluations (at least 3), in points: the rise of
    their least-squares line from the first of them to the last. A line, not max - min, so that the epoch-to-epoch
    noise of a 5,000-image validation set does not pass for a trend; negative when the curve is falling."""
    k = max(3, round(0.2 * len(val_acc)))
    if len(val_acc) < k:
        return None
    slope = statistics.linear_regression(range(k), [float(v) for v in val_acc[-k:]]).slope
    return 100 * slope * (k - 1)


def passes_per_epoch(size: int, tflop: float, image_flops: float, evaluations: int = EVALUATIONS) -> int:
    """Shuffled passes over a ``size``-image subset that make one epoch, so that a run of ``tflop`` (each training
    image costing ``image_flops``) is validated about ``evaluations`` times; at least one pass."""
    if size < 1 or tflop <= 0 or image_flops <= 0 or evaluations < 1:
        raise ValueError(f"passes_per_epoch: size, tflop, image_flops and evaluations must be positive, got {size}, "
                         f"{tflop}, {image_flops}, {evaluations}.")
    return max(1, round(tflop * 1e12 / (image_flops * size * evaluations)))


def run(variant: str, size: int, seed: int, loaders, subset: torch.Tensor, recipe: dict, tflop: float, *,
        checkpoint: str | Path, device=None, resume: bool = True,
        overwrite: bool = False) -> tuple[dict, torch.nn.Module]:
    """Train ``variant`` from scratch on the ``subset`` of ``loaders.train``'s images for ``tflop`` of training
    compute, validate on ``loaders.val``, test on ``loaders.test``. Returns the run's row of the record and the
    trained model (its best validation epoch's weights). ``checkpoint`` (a file path) lets a killed run resume;
    ``resume``/``overwrite`` as in :func:`vitkit.train.fit`."""
    full = loaders.train.dataset
    ds = full.subset(subset, full.transform, full.batched)
    ds.mean, ds.std = full.mean, full.std
    runtime.set_seed(seed)
    model, ratio = build(variant, recipe, len(full.classes))
    probe = torch.utils.data.DataLoader(ds, batch_size=2)
    passes = passes_per_epoch(len(ds), tflop, budget.flops_per_image(model, probe, runtime.get_device(device)))
    g = torch.Generator().manual_seed(seed)  # RandomSampler draws `passes` whole permutations per epoch
    train_loader = torch.utils.data.DataLoader(
        ds, batch_size=recipe["data"]["batch_size"], generator=g, num_workers=loaders.train.num_workers,
        sampler=torch.utils.data.RandomSampler(ds, num_samples=passes * len(ds), generator=g))
    fit_args = {**recipe["fit"], "epochs": 10_000}  # the compute budget decides the length
    hist = train.fit(model, train_loader, loaders.val, device=device, max_tflop=tflop, progress=False,
                     verbose=False, checkpoint=checkpoint, resume=resume, overwrite=overwrite,
                     run_info={"study": "inductive-bias", "variant": variant, "size": size, "seed": seed}, **fit_args)
    test = train.evaluate(model, loaders.test, device)
    row = {"variant": variant, "size": size, "seed": seed, "test_acc": test["acc"], "best_val_acc": hist.best_val_acc,
           "val_acc": hist.val_acc, "plateau_move_points": plateau_move(hist.val_acc), "epochs": len(hist.epoch),
           "passes_per_epoch": passes, "passes": round(hist.train_tflop * 1e3 / (hist.gflop_per_image * len(ds)), 1),
           "train_tflop": hist.train_tflop, "tflop_budget": tflop, "parameters": vh.count_parameters(model),
           "parameters_vs_plain_vit": ratio, "wall_time_s": hist.wall_time_s, "precision": hist.precision,
           "train_images_per_s": hist.train_images_per_s, "hardware": records.hardware_info(device)}
    return row, model


def _change(later: dict, earlier: dict) -> dict[str, Any]:
    """One difference minus another (two :func:`vitkit.stats.seed_difference` results of independent runs), with
    the standard error of that change: their standard errors added in quadrature."""
    se = math.hypot(later["standard_error"], earlier["standard_error"])
    change = later["difference"] - earlier["difference"]
    return {"difference": change, "standard_error": se, "two_standard_errors": stats.NOISE_SE * se,
            "beyond_noise": abs(change) > stats.NOISE_SE * se}


def summarize(runs: Sequence[dict], metric: str = "test_acc") -> dict[str, Any]:
    """What the study's runs found, per training-set size (only sizes where every variant present has at least two
    seeds are compared; the rest are listed under ``incomplete``):

    * ``by_size[size][variant]``: mean, standard deviation and number of seeds of ``metric``;
    * ``cnn_minus_vit[size]``: the CNN's mean minus the plain ViT's, with the standard error and the verdict of
      :func:`vitkit.stats.seed_difference`;
    * ``prior_gain[size][variant]``: each ViT variant's mean minus the plain ViT's (same form), and
      ``share_of_gap_closed``: that gain over the CNN-ViT gap;
    * ``gap_change``: for each pair of sizes (consecutive compared sizes, then the smallest and the largest when
      there are three or more), the larger size's gap minus the smaller's (negative: the gap narrows as data grows),
      with the standard error of that difference (independent runs: the two standard errors added in quadrature);
    * ``gain_change[variant]``: for the same pairs, a prior's gain on the smaller size minus its gain on the larger
      (positive: it helps more when data is small), with its standard error in the same way;
    * ``plateau``: the largest move (rise or fall) of validation accuracy over the last 20 % of any run, in points,
      whether every run stayed within ``PLATEAU_POINTS`` either way, and each (size, variant) with runs that rose
      (``still_rising``) or fell (``falling``) by at least that.
    """
    by_size: dict[int, dict[str, list[float]]] = {}
    for r in runs:
        by_size.setdefault(int(r["size"]), {}).setdefault(r["variant"], []).append(float(r[metric]))
    compared = sorted(s for s, v in by_size.items()
                      if {"vit", "cnn"} <= set(v) and all(len(x) >= 2 for x in v.values()))
    out: dict[str, Any] = {
        "metric": metric,
        "by_size": {str(s): {v: stats.spread(x) for v, x in by_size[s].items()} for s in sorted(by_size)},
        "compared_sizes": compared,
        "incomplete": sorted(set(by_size) - set(compared)),
        "cnn_minus_vit": {}, "prior_gain": {}, "gap_change": [], "gain_change": {},
    }
    for s in compared:
        v = by_size[s]
        gap = stats.seed_difference(v["cnn"], v["vit"])
        out["cnn_minus_vit"][str(s)] = gap
        gains = {}
        for variant, accs in sorted(v.items(), key=lambda kv: list(VARIANTS).index(kv[0])):
            if variant in ("vit", "cnn"):
                continue
            gain = stats.seed_difference(accs, v["vit"])
            gain["share_of_gap_closed"] = gain["difference"] / gap["difference"] if gap["difference"] else None
            gains[variant] = gain
        out["prior_gain"][str(s)] = gains
    pairs = list(zip(compared, compared[1:])) + ([(compared[0], compared[-1])] if len(compared) >= 3 else [])
    for a, b in pairs:
        out["gap_change"].append({"from_size": a, "to_size": b, **_change(out["cnn_minus_vit"][str(b)],
                                                                          out["cnn_minus_vit"][str(a)])})
        for variant in [v for v in VARIANTS if v in out["prior_gain"][str(a)] and v in out["prior_gain"][str(b)]]:
            out["gain_change"].setdefault(variant, []).append(
                {"from_size": a, "to_size": b, **_change(out["prior_gain"][str(a)][variant],
                                                         out["prior_gain"][str(b)][variant])})
    moves = [r for r in runs if r.get("plateau_move_points") is not None]

    def moved(sign: int) -> list[dict]:
        """Each (size, variant) with runs whose last fifth moved by at least the limit in the direction ``sign``."""
        over: dict[tuple[int, str], list[float]] = {}
        for r in moves:
            if sign * r["plateau_move_points"] >= PLATEAU_POINTS:
                over.setdefault((int(r["size"]), r["variant"]), []).append(r["plateau_move_points"])
        return [{"size": n, "variant": v, "runs": len(x),
                 "of": sum(1 for r in moves if int(r["size"]) == n and r["variant"] == v),
                 "largest_points": max(x, key=abs)} for (n, v), x in sorted(over.items())]

    rising, falling = moved(+1), moved(-1)
    out["plateau"] = {
        "largest_move_points": max((r["plateau_move_points"] for r in moves), key=abs) if moves else None,
        "limit_points": PLATEAU_POINTS, "all_flat": bool(moves) and not rising and not falling,
        # still rising at the end: the budget was short, the accuracy there a lower bound
        "still_rising": rising,
        # falling at the end: past its best (overfitting); the best validation epoch's weights are the ones tested
        "falling": falling}
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _runs_of(k: int, n: int) -> str:
    return f"{k} of {n} run" + ("s" if n != 1 else "")


def _signed(points: float) -> str:
    """``+1.2`` / ``-1.2``, and ``0.0`` for what rounds to zero (no signed zero)."""
    text = f"{points:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _headline(summary: dict[str, Any]) -> str:
    """The hypothesis's two predictions, from the smallest compared size to the largest, sorted into its way, against
    it and within noise: the CNN's lead narrows, and each prior gains more on the smaller size."""
    first, last = summary["compared_sizes"][0], summary["compared_sizes"][-1]
    span = lambda changes: next(c for c in changes if (c["from_size"], c["to_size"]) == (first, last))  # noqa: E731
    groups: dict[str, list[str]] = {"as it predicts": [], "against it": [], "within noise": []}
    # (what, its change from the first size to the last, the sign the hypothesis predicts, how a change reads)
    items = [("the CNN's lead", span(summary["gap_change"]), -1,
              lambda d: f"{'narrows' if d < 0 else 'widens'} by {abs(d):.1f} points")]
    items += [(f"`{v}`'s gain", span(changes), +1,
               lambda d: f"{abs(d):.1f} points {'more' if d > 0 else 'less'} on {first:,} images")
              for v, changes in summary["gain_change"].items()]
    for what, change, predicted, reads in items:
        d = 100 * change["difference"]
        if not change["beyond_noise"]:
            groups["within noise"].append(what)
        else:
            groups["as it predicts" if d * predicted > 0 else "against it"].append(f"{what} ({reads(d)})")
    said = "; ".join(f"{k}: {', '.join(x) if x else 'nothing'}" for k, x in groups.items())
    return (f"- **The hypothesis, from {first:,} to {last:,} images** (it predicts the CNN's lead narrows and each "
            f"prior gains more on less data). {_sentence(said)}.")


def _bounds(changes: Sequence[dict], rising: dict, ahead: str, who: str, what: str) -> str:
    """The caveat after a trend of ``ahead`` minus the plain ViT: at a size where ``ahead`` was still rising the
    difference is a lower bound, where the plain ViT was an upper one ("" when neither)."""
    sizes = sorted({n for c in changes for n in (c["from_size"], c["to_size"])})
    caveats = []
    for v, name, bound in ((ahead, who, "a lower"), ("vit", "the plain ViT", "an upper")):
        at = [n for n in sizes if (n, v) in rising]
        if at:
            caveats.append(f"{name} was still rising on {' and '.join(f'{n:,}' for n in at)} images, so {what} "
                           f"there is {bound} bound")
    return " " + _sentence("; ".join(caveats)) + "." if caveats else ""


def conclusions(summary: dict[str, Any]) -> list[str]:
    """What :func:`summarize` found, as Markdown bullets: per size, the CNN's lead over the plain ViT and each
    prior's gain (with its share of that lead); how the lead and each gain change as data grows, each against what
    the hypothesis predicts (the lead narrows; a prior gains more on less data); which runs had not levelled off.
    Shared by ``InductiveBias.ipynb`` and ``docs/inductive-bias.md``; every number it writes is in ``summary``."""
    if not summary["compared_sizes"]:
        return ["- No size has every variant run on at least two seeds yet, so nothing is compared."]
    p = summary["plateau"]
    rising = {(r["size"], r["variant"]): r for r in p["still_rising"]}
    two_se = lambda d: f"twice the standard error: {100 * d['two_standard_errors']:.1f}"  # noqa: E731
    lines, shares = [_headline(summary)] if len(summary["compared_sizes"]) > 1 else [], False
    for size in summary["compared_sizes"]:
        gap = summary["cnn_minus_vit"][str(size)]
        line = f"- **{size:,} training images.** {_sentence(stats.verdict(gap, 'the CNN', 'the plain ViT'))}."
        for v, gain in summary["prior_gain"][str(size)].items():
            line += f" {_sentence(stats.verdict(gain, f'`{v}`', 'the plain ViT'))}"
            if gain["beyond_noise"] and gain["difference"] > 0 and gap["beyond_noise"] and gap["difference"] > 0:
                line += f": {100 * gain['share_of_gap_closed']:.0f} % of the CNN's lead"
                shares = True
            line += "."
        lines.append(line)
    if shares:
        lines.append("- A prior's share of the CNN's lead is a ratio of two means, without an error bar of its own.")
    for c in summary["gap_change"]:
        d = 100 * c["difference"]
        if c["beyond_noise"]:
            words = (f"narrows by {-d:.1f} points ({two_se(c)}), as the hypothesis predicts" if d < 0 else
                     f"widens by {d:.1f} points ({two_se(c)}): against the hypothesis, which predicts it narrows")
        else:
            words = (f"does not change beyond noise ({_signed(d)} points; {two_se(c)}): no evidence for the narrowing "
                     f"the hypothesis predicts")
        lines.append(f"- **The CNN's lead from {c['from_size']:,} to {c['to_size']:,} images** {words}."
                     + _bounds([c], rising, "cnn", "the CNN", "the lead"))
    for v, changes in summary["gain_change"].items():
        parts = []
        for c in changes:
            d = 100 * c["difference"]
            a, b = f"{c['from_size']:,}", f"{c['to_size']:,}"
            if c["beyond_noise"]:
                parts.append(f"{abs(d):.1f} points {'more' if d > 0 else 'less'} on {a} images than on {b} "
                             f"({two_se(c)}), {'as the hypothesis predicts' if d > 0 else 'against the hypothesis'}")
            else:
                parts.append(f"{a} vs {b} images within noise ({_signed(d)} points; {two_se(c)})")
        lines.append(f"- **`{v}`'s gain over the plain ViT as data grows** (the hypothesis predicts more on less "
                     f"data): {'; '.join(parts)}." + _bounds(changes, rising, v, f"`{v}`", "its gain"))
    if summary["incomplete"]:
        lines.append(f"- **Partial**: {', '.join(f'{n:,}' for n in summary['incomplete'])} images not yet run with "
                     f"at least two seeds of every variant; not compared.")
    if p["largest_move_points"] is not None:
        lines.append(f"- **Levelling off.** The largest move of validation accuracy over the last fifth of a run (the "
                     f"rise of its least-squares line) was {p['largest_move_points']:+.2f} points, "
                     + ("within" if p["all_flat"] else "**beyond**") + f" the ±{p['limit_points']} points asked. "
                     "A flat end is needed, not enough: the learning rate falls to zero at the end of every run, so "
                     "every curve flattens there; only a run with a larger budget shows what more compute buys.")
        for r in p["still_rising"]:
            lines.append(f"  - `{r['variant']}` on {r['size']:,} images: {_runs_of(r['runs'], r['of'])} still rising "
                         f"(up to {r['largest_points']:+.2f} points): its accuracy there is a lower bound.")
        for r in p["falling"]:
            lines.append(f"  - `{r['variant']}` on {r['size']:,} images: {_runs_of(r['runs'], r['of'])} falling at "
                         f"the end (down to {r['largest_points']:+.2f} points): past their best; the best validation "
                         f"epoch's weights are the ones tested.")
    return lines
