"""The noise rule: a difference is one only beyond twice its standard error, over seeds or over test images."""
import math
import statistics

import pytest
import torch

from vitkit import stats


def test_seed_difference_is_the_difference_of_means_with_the_unpooled_standard_error():
    r = stats.seed_difference([0.50, 0.52, 0.54], [0.40, 0.41, 0.45])
    assert r["a"] == {"mean": pytest.approx(0.52), "std": pytest.approx(0.02), "n": 3}
    assert r["difference"] == pytest.approx(0.52 - 0.42)
    se = math.sqrt(0.02 ** 2 / 3 + statistics.stdev([0.40, 0.41, 0.45]) ** 2 / 3)
    assert r["standard_error"] == pytest.approx(se) and r["two_standard_errors"] == pytest.approx(2 * se)
    assert r["beyond_noise"] is True  # 0.10 > 2 x 0.0153
    assert stats.seed_difference([0.50, 0.56], [0.49, 0.55])["beyond_noise"] is False


def test_paired_difference_uses_the_per_seed_differences():
    # per seed: +0.01, +0.02, +0.03; mean 0.02, sd 0.01, SE 0.01 / sqrt(3) = 0.00577: beyond noise, while the
    # unpaired standard error (the seeds' shared ups and downs left in) calls the same numbers noise
    a, b = [0.51, 0.62, 0.43], [0.50, 0.60, 0.40]
    r = stats.paired_difference(a, b)
    assert r["differences"] == pytest.approx([0.01, 0.02, 0.03]) and r["difference"] == pytest.approx(0.02)
    assert r["standard_error"] == pytest.approx(0.01 / math.sqrt(3))
    assert r["beyond_noise"] is True and r["a_ahead"] == 3 and r["b"]["mean"] == pytest.approx(0.5)
    assert stats.seed_difference(a, b)["beyond_noise"] is False
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired_difference([0.5, 0.6, 0.7], [0.5, 0.6])


def test_pooled_difference_reads_two_setups_against_the_spread_of_every_setup_of_the_study():
    # sums of squares about each mean: faithful 2 x 0.005^2 = 5e-5, row 2 x 0.01^2 = 2e-4, a one-seed row adds none;
    # df 1 + 1 = 2; s = sqrt(2.5e-4 / 2) = 0.01118; SE = s x sqrt(1/2 + 1/2) = 0.01118; 0.025 > 2 SE = 0.02236
    faithful, row, single = [0.60, 0.61], [0.62, 0.64], [0.70]
    r = stats.pooled_difference(row, faithful, [faithful, row[::-1], single])  # a setup's runs in any order
    assert r["difference"] == pytest.approx(0.025) and r["df"] == 2
    assert r["pooled_std"] == pytest.approx(math.sqrt(1.25e-4)) and r["standard_error"] == pytest.approx(math.sqrt(1.25e-4))
    assert r["beyond_noise"] is True
    # a one-seed setup gets its standard error from the spread the others measured: s x sqrt(1 + 1/2)
    one = stats.pooled_difference(single, faithful, [faithful, row, single])
    assert one["standard_error"] == pytest.approx(math.sqrt(1.25e-4) * math.sqrt(1 + 1 / 2))
    with pytest.raises(ValueError, match="needs a setup with two seeds or more"):
        stats.pooled_difference([0.6], [0.7], [[0.6], [0.7]])
    with pytest.raises(ValueError, match="b must be one of groups"):
        stats.pooled_difference(row, [0.5, 0.6], [faithful, row])


def test_paired_bootstrap_matches_the_analytic_standard_error_and_is_reproducible():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(400, generator=g, dtype=torch.float64)
    b = a - 0.05 + 0.1 * torch.rand(400, generator=g, dtype=torch.float64)  # paired: same images
    r = stats.bootstrap_difference(a, b, n_boot=4000)
    d = a - b
    assert r["difference"] == pytest.approx(d.mean().item())
    assert r["standard_error"] == pytest.approx(d.std().item() / math.sqrt(len(d)), rel=0.1)
    assert r["low"] < r["difference"] < r["high"]
    assert r == stats.bootstrap_difference(a, b, n_boot=4000)  # the seed fixes the resamples
    same = stats.bootstrap_difference(a, a.clone())
    assert same["difference"] == 0 and same["standard_error"] == 0 and same["beyond_noise"] is False


def test_a_large_shift_is_beyond_noise_and_a_tiny_one_is_not():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, generator=g, dtype=torch.float64)
    noise = torch.randn(200, generator=g, dtype=torch.float64)
    assert stats.bootstrap_difference(a + 0.5 + 0.1 * noise, a)["beyond_noise"] is True
    assert stats.bootstrap_difference(a + 0.001 * noise, a)["beyond_noise"] is False


def test_verdict_words_follow_the_rule_and_name_the_leader():
    ahead = {"difference": -0.032, "two_standard_errors": 0.011, "beyond_noise": True}
    assert stats.verdict(ahead, "HF", "ours") == "ours ahead of HF by 3.2 points (twice the standard error: 1.1)"
    tie = {"difference": 0.032, "two_standard_errors": 0.04, "beyond_noise": False}
    assert stats.verdict(tie, "HF", "ours") == \
        "HF and ours within noise (3.2 points apart; twice the standard error: 4.0)"
    assert stats.verdict({**tie, "difference": 7.25}, "rollout", "random", "AUC points", scale=1, digits=2) == \
        "rollout and random within noise (7.25 AUC points apart; twice the standard error: 0.04)"


@pytest.mark.parametrize("call, message", [
    (lambda: stats.bootstrap_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "paired"),
    (lambda: stats.bootstrap_difference([1.0], [1.0]), "at least 2 finite values"),
    (lambda: stats.bootstrap_difference([1.0, float("nan")], [1.0, 2.0]), "finite"),
    (lambda: stats.bootstrap_difference([1.0, 2.0], [1.0, 2.0], n_boot=1), "n_boot"),
    (lambda: stats.seed_difference([0.5], [0.4, 0.5]), "at least 2"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
