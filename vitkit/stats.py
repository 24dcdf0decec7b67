"""Is a difference larger than the noise? The two measures of spread the notebooks use, and the rule they follow.

* Over **seeds** (training runs): each side's mean and standard deviation; the difference of the means with its
  standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``; or, when each seed fixes the same data and order for both
  sides, the per-seed differences, whose standard error ``sd(a_i - b_i) / sqrt(n)`` drops what the seeds share;
  or, when a study runs many setups with a few seeds each, the seed-to-seed spread pooled over all its setups.
* Over **test images** (two methods on one trained model): a paired bootstrap of the per-image difference (the
  same resampled images for both), its standard error and 95 % percentile interval. It says how sure the
  comparison is *for this model*; the spread over trained models is another, larger one.

The rule: a difference is stated as one only when ``|difference| > 2 x standard error``; otherwise the two are
within noise. :func:`verdict` gives the words for it.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch

from vitkit.checks import check_number

__all__ = ["NOISE_SE", "bootstrap_difference", "spread", "seed_difference", "paired_difference", "pooled_difference",
           "verdict"]

NOISE_SE = 2.0  # a difference counts when it exceeds this many standard errors


def _values(name: str, values, at_least: int) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(t) < at_least or not torch.isfinite(t).all():
        raise ValueError(f"{name} needs at least {at_least} finite values, got {t.tolist()[:8]}"
                         f"{'...' if len(t) > 8 else ''}.")
    return t


def _against_noise(diff: float, se: float) -> dict:
    """The rule applied to one difference and its standard error: the four entries every comparison here returns."""
    return {"difference": diff, "standard_error": se, "two_standard_errors": NOISE_SE * se,
            "beyond_noise": abs(diff) > NOISE_SE * se}


def bootstrap_difference(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor, *,
                         n_boot: int = 2000, seed: int = 0) -> dict[str, float | bool]:
    """Paired bootstrap of ``mean(a) - mean(b)`` where ``a[i]`` and ``b[i]`` are measured on the same image ``i``
    (e.g. one image's AUC under two explanation methods, or whether two maps point inside its box). Returns
    ``{"difference", "standard_error", "two_standard_errors", "low", "high", "beyond_noise"}`` (``low``/``high``: the 95 % percentile
    interval; ``beyond_noise``: ``|difference| > 2 x standard_error``)."""
    a, b = _values("a", a, 2), _values("b", b, 2)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (one value per image each), got {len(a)} and {len(b)} values.")
    check_number("n_boot", n_boot, low=2, integer=True)
    d = a - b
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(len(d), (n_boot, len(d)), generator=g)].mean(dim=1)
    se = means.std().item()
    diff = d.mean().item()
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {**_against_noise(diff, se), "low": low, "high": high}


def spread(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}`` of independent runs (seeds); ``std`` (the sample standard deviation) is None for
    a single run."""
    v = [float(x) for x in _values("values", values, 1)]
    return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}


def seed_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """``mean(a) - mean(b)`` of two independent samples (runs of two setups with their own seeds, or the 0/1
    outcomes of two disjoint sets of test images), with each side's mean, standard deviation and count, and the
    difference's standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``."""
    _values("a", a, 2), _values("b", b, 2)
    sides = {"a": spread(a), "b": spread(b)}
    diff = sides["a"]["mean"] - sides["b"]["mean"]
    se = math.sqrt(sum(s["std"] ** 2 / s["n"] for s in sides.values()))
    return {**sides, **_against_noise(diff, se)}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """``mean(a - b)`` where ``a[i]`` and ``b[i]`` share seed ``i`` (the same split and batch order for both setups):
    each side's spread, the per-seed ``differences``, their mean, its standard error ``sd(a_i - b_i) / sqrt(n)``,
    and ``a_ahead``, the number of seeds where ``a`` scored higher."""
    _values("a", a, 2), _values("b", b, 2)
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs one value per seed on each side; got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    diff = statistics.mean(diffs)
    return {"a": spread(a), "b": spread(b), "differences": diffs, **_against_noise(diff, se),
            "a_ahead": sum(d > 0 for d in diffs)}


def pooled_difference(a: Sequence[float], b: Sequence[float], groups: Sequence[Sequence[float]]) -> dict:
    """``mean(a) - mean(b)`` for two setups of a study whose setups each ran a few seeds, against the seed-to-seed
    standard deviation pooled over all the study's setups (``groups``: each setup's values, ``a`` and ``b`` among
    them; a setup of one seed adds nothing): ``s^2 = sum_i sum_j (x_ij - mean_i)^2 / df`` with ``df = sum_i (n_i - 1)``,
    and the standard error ``s * sqrt(1 / n_a + 1 / n_b)``. With two seeds a side, each side's own spread has one
    degree of freedom; the pooled one has as many as the study repeated seeds, if every setup spreads alike."""
    a_t, b_t = _values("a", a, 1), _values("b", b, 1)
    reps = [_values("each group", g, 1) for g in groups]
    for name, side in (("a", a_t), ("b", b_t)):
        if not any(torch.equal(side.sort().values, g.sort().values) for g in reps):  # the same runs, in any order
            raise ValueError(f"pooled_difference: {name} must be one of groups (its spread belongs in the pooled one); "
                             "pass every setup's values, the two compared included.")
    df = sum(len(g) - 1 for g in reps)
    if df < 1:
        raise ValueError("pooled_difference needs a setup with two seeds or more among groups, to measure the spread "
                         f"between seeds; got groups of sizes {[len(g) for g in reps]}.")
    s = math.sqrt(sum(((g - g.mean()) ** 2).sum().item() for g in reps) / df)
    se = s * math.sqrt(1 / len(a_t) + 1 / len(b_t))
    diff = a_t.mean().item() - b_t.mean().item()
    return {"a": spread(a), "b": spread(b), "pooled_std": s, "df": df, **_against_noise(diff, se)}


def verdict(result: dict, higher: str, lower: str, unit: str = "points", scale: float = 100.0,
            digits: int = 1) -> str:
    """Words for a difference ``higher - lower`` from :func:`bootstrap_difference` or :func:`seed_difference`, e.g.
    "HF ahead of ours by 3.2 points (twice the standard error: 1.1)" or "HF and ours within noise (3.2 points
    apart; twice the standard error: 4.0)". ``scale`` turns the values into ``unit`` (100: fractions to points of
    accuracy). Every number it writes is in ``result`` (times ``scale``), so a notebook's record backs it."""
    d, two_se = result["difference"] * scale, result["two_standard_errors"] * scale
    noise = f"twice the standard error: {two_se:.{digits}f}"
    if result["beyond_noise"]:
        first, second = (higher, lower) if d > 0 else (lower, higher)
        return f"{first} ahead of {second} by {abs(d):.{digits}f} {unit} ({noise})"
    return f"{higher} and {lower} within noise ({abs(d):.{digits}f} {unit} apart; {noise})"
