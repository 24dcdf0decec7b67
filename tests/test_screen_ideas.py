"""scripts/screen_ideas.py: ideas screened at equal compute on validation, one record that grows run by run."""
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import screen_ideas  # noqa: E402


def test_each_idea_changes_only_what_it_names_and_the_baseline_is_the_recipe():
    from vitkit import recipes

    base = recipes.get_recipe(screen_ideas.RECIPE)
    assert screen_ideas.settings("baseline", base) == base
    ema = screen_ideas.settings("ema-0.999", base)
    assert ema["fit"] == {**base["fit"], "ema_decay": 0.999} and ema["model"] == base["model"]
    assert base["fit"].get("ema_decay") is None  # the copy, not the recipe, was changed
    for idea, changes in screen_ideas.IDEAS.items():
        assert set(changes) <= {"model", "data", "fit"}, idea


def test_summary_keeps_an_idea_only_beyond_twice_the_standard_error():
    runs = [{"idea": i, "seed": s, "best_val_acc": acc} for i, accs in
            (("baseline", (0.80, 0.81)), ("a", (0.85, 0.86)), ("b", (0.80, 0.83)), ("c", (0.70,)))
            for s, acc in enumerate(accs)]
    s = screen_ideas.summary(runs)
    assert s["ideas"]["c"] == {"mean": 0.70, "std": None, "n": 1} and "c" not in s["against_baseline"]
    a, b = s["against_baseline"]["a"], s["against_baseline"]["b"]
    assert a["difference"] == pytest.approx(0.05) and a["kept"]  # SE = sqrt(2 * 0.00707^2 / 2) = 0.00707
    assert b["difference"] == pytest.approx(0.01) and not b["kept"]


def test_a_smoke_screen_records_every_run_and_a_second_call_runs_nothing(fake_cifar_folders, tmp_path, capsys):
    root, _ = fake_cifar_folders
    out = tmp_path / "screen.json"
    argv = ["--data-root", str(root), "--smoke", "--ideas", "ema-0.99", "--seeds", "0", "1", "--out", str(out),
            "--checkpoint-dir", str(tmp_path / "runs"), "--threads", "1"]
    assert screen_ideas.main(argv) == 0
    rec = json.loads(out.read_text())
    runs = rec["metrics"]["runs"]
    assert sorted((r["idea"], r["seed"]) for r in runs) == [("baseline", 0), ("baseline", 1), ("ema-0.99", 0),
                                                            ("ema-0.99", 1)]
    assert "ema-0.99" in rec["metrics"]["summary"]["against_baseline"] and "test_acc" not in runs[0]
    assert screen_ideas.main(argv) == 0
    assert "4 runs in screen.json; this call" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["metrics"]["runs"]) == 4
