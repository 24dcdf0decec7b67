"""The data-size study's pieces (vitkit.study): subsets, the plateau check, the matched CNN, one run, the summary."""
import math
import statistics

import pytest
import torch

import vit_helpers as vh
from vitkit import recipes, stats, study
from vitkit.sources import InMemoryImages


def _images(per_class: list[int]) -> InMemoryImages:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    return InMemoryImages(images, labels, [str(c) for c in range(len(per_class))])


def test_subsets_are_class_balanced_nested_and_fixed_by_their_seed():
    ds = _images([30, 40, 50])
    subsets = study.balanced_subsets(ds, [6, 30, 90], seed=3)
    for size, idx in subsets.items():
        assert len(idx) == size and len(set(idx.tolist())) == size
        assert torch.bincount(ds.labels[idx], minlength=3).tolist() == [size // 3] * 3
    assert set(subsets[6].tolist()) <= set(subsets[30].tolist()) <= set(subsets[90].tolist())
    again = study.balanced_subsets(ds, [30], seed=3)[30]
    other = study.balanced_subsets(ds, [30], seed=4)[30]
    assert torch.equal(again, subsets[30]) and not torch.equal(other, subsets[30])


@pytest.mark.parametrize("size", [91, 93])  # 91 images a class > the smallest class's 30; 93 is not a multiple of 3
def test_a_subset_size_the_classes_cannot_fill_is_refused(size):
    with pytest.raises(ValueError, match=f"size {size}"):
        study.balanced_subsets(_images([30, 40, 50]), [size], seed=0)


def test_plateau_move_is_the_rise_of_the_least_squares_line_over_the_last_fifth_in_points():
    # 15 evaluations: the last 3. A straight line rises by exactly its end minus its start.
    curve = [0.1] * 12 + [0.60, 0.61, 0.62]
    assert study.plateau_move(curve) == pytest.approx(2.0)
    # Noise around a flat level: max - min would say 2 points; the line through 0.61, 0.59, 0.61 says 0.
    assert study.plateau_move([0.3] * 12 + [0.61, 0.59, 0.61]) == pytest.approx(0.0)
    # 20 evaluations: the last 4, at 0.50, 0.52, 0.51, 0.53: slope 0.008 per evaluation over 3 steps.
    assert study.plateau_move([0.2] * 16 + [0.50, 0.52, 0.51, 0.53]) == pytest.approx(2.4)
    assert study.plateau_move([0.5, 0.4, 0.3]) == pytest.approx(-20.0)  # falling: negative
    assert study.plateau_move([0.5, 0.6]) is None  # fewer than 3 evaluations: no line to fit


def test_passes_per_epoch_spread_a_run_over_about_the_given_number_of_validations():
    # 15 TFLOP at 0.2 GFLOP a training image is 75,000 images, 150 passes over 500: 25 validations, 6 an epoch.
    assert study.passes_per_epoch(500, 15.0, 0.2e9, evaluations=25) == 6
    assert study.passes_per_epoch(12_500, 10.0, 0.2e9, evaluations=25) == 1  # fewer passes than validations: one each
    with pytest.raises(ValueError, match="must be positive"):
        study.passes_per_epoch(0, 15.0, 0.2e9)


def test_each_variant_is_built_with_its_prior_and_the_cnn_matches_the_plain_vit_within_ten_percent():
    recipe = recipes.get_recipe(study.RECIPE)
    plain, ratio = study.build("vit", recipe, 10)
    assert ratio == 1.0 and plain.config.stem == "patch"
    assert study.build("cct-stem", recipe, 10)[0].config.stem == "cct"
    spt = study.build("spt-lsa", recipe, 10)[0].config
    assert spt.stem == "spt" and spt.lsa
    assert study.build("sincos", recipe, 10)[0].config.pos_embed == "sincos"
    cnn, ratio = study.build("cnn", recipe, 10)
    assert not isinstance(cnn, vh.VisionTransformer) and abs(ratio - 1) < 0.1
    assert vh.count_parameters(cnn) / vh.count_parameters(plain) == pytest.approx(ratio)
    with pytest.raises(ValueError, match="unknown variant 'resnet'"):
        study.build("resnet", recipe, 10)


def test_the_small_cnn_pools_after_its_first_blocks_only_and_refuses_more_pools_than_blocks():
    from vitkit import baselines
    cnn = baselines.SmallCNN(channels=(8, 16, 32, 32))  # the study's shape: (w, 2w, 4w, 4w)
    assert cnn.features(torch.zeros(2, 3, 32, 32)).shape == (2, 32, 8, 8)  # 32 -> 16 -> 8, then two blocks at 8x8
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert baselines.SmallCNN(channels=(4, 4, 4), pools=3).features(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="pools=5.*between 0 and len\\(channels\\)=4"):
        baselines.SmallCNN(pools=5)


def _runs(table: dict[int, dict[str, list[float]]]) -> list[dict]:
    return [{"variant": v, "size": size, "seed": seed, "test_acc": acc, "plateau_move_points": 0.2}
            for size, variants in table.items() for v, accs in variants.items() for seed, acc in enumerate(accs)]


def test_summary_gives_the_gap_the_prior_gains_and_the_gap_change_with_their_standard_errors():
    table = {100: {"vit": [0.40, 0.42, 0.44], "cnn": [0.60, 0.61, 0.62], "sincos": [0.41, 0.43, 0.45]},
             400: {"vit": [0.60, 0.62, 0.64], "cnn": [0.70, 0.70, 0.70], "sincos": [0.61, 0.63, 0.65]},
             1600: {"vit": [0.70], "cnn": [0.80]}}  # one seed: not compared
    s = study.summarize(_runs(table))
    assert s["compared_sizes"] == [100, 400] and s["incomplete"] == [1600]
    assert s["by_size"]["400"]["cnn"] == {"mean": pytest.approx(0.70), "std": pytest.approx(0.0), "n": 3}
    gap = s["cnn_minus_vit"]["100"]
    se = math.sqrt(0.01 ** 2 / 3 + 0.02 ** 2 / 3)  # sample sds 0.01 and 0.02
    assert gap["difference"] == pytest.approx(0.19) and gap["standard_error"] == pytest.approx(se)
    assert gap["beyond_noise"]
    gain = s["prior_gain"]["100"]["sincos"]
    assert gain["difference"] == pytest.approx(0.01) and not gain["beyond_noise"]
    assert gain["share_of_gap_closed"] == pytest.approx(0.01 / 0.19)
    change = s["gap_change"][0]
    se400 = stats.seed_difference(table[400]["cnn"], table[400]["vit"])["standard_error"]
    assert (change["from_size"], change["to_size"]) == (100, 400)
    assert change["difference"] == pytest.approx(0.08 - 0.19)
    assert change["standard_error"] == pytest.approx(math.hypot(se, se400))
    assert change["beyond_noise"] == (abs(0.08 - 0.19) > 2 * math.hypot(se, se400))
    [more] = s["gain_change"]["sincos"]  # 0.01 on both sizes: no change
    assert (more["from_size"], more["to_size"]) == (100, 400) and more["difference"] == pytest.approx(0.0, abs=1e-12)
    assert more["standard_error"] == pytest.approx(math.hypot(gain["standard_error"],
                                                             s["prior_gain"]["400"]["sincos"]["standard_error"]))
    assert not more["beyond_noise"]
    assert s["plateau"] == {"largest_move_points": 0.2, "limit_points": study.PLATEAU_POINTS, "all_flat": True,
                            "still_rising": [], "falling": []}


def test_with_three_sizes_the_changes_are_consecutive_then_smallest_to_largest():
    table = {n: {"vit": [a, a + 0.02], "cnn": [c, c + 0.02], "cct-stem": [g, g + 0.02]}
             for n, a, c, g in ((100, 0.30, 0.50, 0.40), (400, 0.50, 0.65, 0.55), (1600, 0.70, 0.75, 0.71))}
    s = study.summarize(_runs(table))
    assert [(c["from_size"], c["to_size"]) for c in s["gap_change"]] == [(100, 400), (400, 1600), (100, 1600)]
    # gaps 0.20, 0.15, 0.05: the later minus the earlier
    assert [c["difference"] for c in s["gap_change"]] == pytest.approx([-0.05, -0.10, -0.15])
    # cct-stem's gains 0.10, 0.05, 0.01: the smaller size's minus the larger's
    assert [c["difference"] for c in s["gain_change"]["cct-stem"]] == pytest.approx([0.05, 0.04, 0.09])
    assert list(s["prior_gain"]["100"]) == ["cct-stem"]


def test_conclusions_say_each_trend_against_the_hypothesis_and_where_the_cnn_had_not_levelled_off():
    # sd 0.01 on every side (two seeds 0.02 apart would be 0.0141; use three)
    table = {100: {"vit": [0.29, 0.30, 0.31], "cnn": [0.49, 0.50, 0.51], "spt-lsa": [0.39, 0.40, 0.41]},
             400: {"vit": [0.49, 0.50, 0.51], "cnn": [0.74, 0.75, 0.76], "spt-lsa": [0.495, 0.505, 0.515]}}
    runs = _runs(table)
    runs[3]["plateau_move_points"] = 0.8  # cnn, 100 images, seed 0
    runs[15]["plateau_move_points"] = 0.6  # spt-lsa, 400 images, seed 0
    lines = study.conclusions(study.summarize(runs))
    assert lines[0] == ("- **The hypothesis, from 100 to 400 images** (it predicts the CNN's lead narrows and each prior "
                        "gains more on less data). As it predicts: `spt-lsa`'s gain (9.5 points more on 100 images); "
                        "against it: the CNN's lead (widens by 5.0 points); within noise: nothing.")
    # gap 20 points, 2 SE = 2 * sqrt(2 * 0.01^2 / 3) = 1.63; spt-lsa +10 of it = 50 %
    assert lines[1] == ("- **100 training images.** The CNN ahead of the plain ViT by 20.0 points (twice the standard "
                        "error: 1.6). `spt-lsa` ahead of the plain ViT by 10.0 points (twice the standard error: 1.6): "
                        "50 % of the CNN's lead.")
    assert lines[2].startswith("- **400 training images.** The CNN ahead of the plain ViT by 25.0 points") and \
        "`spt-lsa` and the plain ViT within noise (0.5 points apart; twice the standard error: 1.6)." in lines[2]
    assert lines[3].startswith("- A prior's share of the CNN's lead is a ratio of two means")
    # the gap widens by 5 points, 2 SE = 2 * sqrt(2) * 0.816 = 2.3
    assert lines[4] == ("- **The CNN's lead from 100 to 400 images** widens by 5.0 points (twice the standard error: "
                        "2.3): against the hypothesis, which predicts it narrows. The CNN was still rising on 100 "
                        "images, so the lead there is a lower bound.")
    assert lines[5].endswith("9.5 points more on 100 images than on 400 (twice the standard error: 2.3), "
                             "as the hypothesis predicts. `spt-lsa` was still rising on 400 images, so its gain there "
                             "is a lower bound.")
    assert "A flat end is needed, not enough: the learning rate falls to zero" in lines[-3]
    assert lines[-2] == ("  - `cnn` on 100 images: 1 of 3 runs still rising (up to +0.80 points): its accuracy there "
                         "is a lower bound.")
    assert study.conclusions(study.summarize(_runs({100: {"vit": [0.3, 0.4]}}))) == [
        "- No size has every variant run on at least two seeds yet, so nothing is compared."]


def test_summary_names_each_size_and_variant_with_a_run_still_rising_or_falling():
    runs = _runs({100: {"vit": [0.4, 0.5], "cnn": [0.6, 0.7]}, 400: {"vit": [0.6, 0.6], "cnn": [0.8, 0.8]}})
    runs[2]["plateau_move_points"] = 0.5  # cnn, 100 images, seed 0: at the limit counts as rising
    runs[7]["plateau_move_points"] = 0.9  # cnn, 400 images, seed 1
    runs[6]["plateau_move_points"] = 0.7  # cnn, 400 images, seed 0
    runs[4]["plateau_move_points"] = -1.2  # vit, 400 images, seed 0: past its best, falling
    p = study.summarize(runs)["plateau"]
    assert p["largest_move_points"] == -1.2 and not p["all_flat"]
    assert p["still_rising"] == [{"size": 100, "variant": "cnn", "runs": 1, "of": 2, "largest_points": 0.5},
                                 {"size": 400, "variant": "cnn", "runs": 2, "of": 2, "largest_points": 0.9}]
    assert p["falling"] == [{"size": 400, "variant": "vit", "runs": 1, "of": 2, "largest_points": -1.2}]


def test_summary_of_a_size_without_the_cnn_compares_nothing_and_says_so():
    s = study.summarize(_runs({100: {"vit": [0.4, 0.5], "sincos": [0.4, 0.6]}}))
    assert s["compared_sizes"] == [] and s["incomplete"] == [100] and s["cnn_minus_vit"] == {}
    assert s["by_size"]["100"]["sincos"]["std"] == pytest.approx(statistics.stdev([0.4, 0.6]))


def test_one_run_trains_for_its_budget_and_returns_its_row(tmp_path):
    from types import SimpleNamespace

    from conftest import loader, quadrant_data

    recipe = recipes.get_recipe(study.RECIPE)
    recipe["model"].update(image_size=16, patch_size=8, in_channels=1, dim=16, depth=1, heads=2, mlp_dim=32)
    recipe["data"]["batch_size"] = 16
    full = quadrant_data(64, 0)
    loaders = SimpleNamespace(train=loader(full), val=loader(quadrant_data(32, 1)), test=loader(quadrant_data(32, 2)))
    subset = study.balanced_subsets(full, [32], seed=0)[32]
    row, model = study.run("vit", 32, 0, loaders, subset, recipe, 0.0005, checkpoint=tmp_path / "r.pt",
                           device="cpu")
    assert row["variant"] == "vit" and row["size"] == 32 and row["seed"] == 0 and 0 <= row["test_acc"] <= 1
    assert 0 < row["train_tflop"] <= 0.0005 * 1.2 and row["epochs"] == len(row["val_acc"]) >= 1
    # An epoch is passes_per_epoch shuffled passes over the 32 images; passes counts them all.
    k = row["passes_per_epoch"]
    assert k >= 1 and (row["epochs"] - 1) * k < row["passes"] <= row["epochs"] * k + 0.05
    assert row["hardware"]["torch_threads"] == torch.get_num_threads()
    assert (tmp_path / "r.pt").is_file() and isinstance(model, vh.VisionTransformer)


def test_the_study_script_refuses_to_mix_budgets_of_a_size_in_one_record(tmp_path, capsys):
    import json
    import sys

    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    import inductive_bias_study

    out = tmp_path / "study.json"
    out.write_text(json.dumps({"metrics": {"runs": [{"variant": "vit", "size": 100, "seed": 0, "tflop_budget": 5.0}]}}))
    with pytest.raises(SystemExit):  # refused before any data is read (the data root does not exist)
        inductive_bias_study.main(["--data-root", str(tmp_path / "nowhere"), "--sizes", "100", "--tflop", "100=1",
                                   "--out", str(out)])
    assert "study.json holds runs of size 100 at 5 TFLOP" in capsys.readouterr().err
