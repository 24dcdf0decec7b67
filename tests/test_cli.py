"""scripts/train_recipe.py refuses, before any data is loaded, what would destroy an earlier run or fail later:
the data root given here does not exist, so every case below would fail otherwise with a missing-data error."""
import importlib.util
import sys

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("train_recipe", ROOT / "scripts" / "train_recipe.py")
train_recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_recipe)


def refused(monkeypatch, capsys, *args) -> str:
    monkeypatch.setattr(sys, "argv", ["train_recipe.py", "mnist-strong", "--data-root", "/no/such/data", *args])
    with pytest.raises(SystemExit) as stop:
        train_recipe.main()
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_an_earlier_run_of_the_same_tag_is_not_replaced_unasked(monkeypatch, capsys, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mnist-strong-t.json").write_text("{}")
    err = refused(monkeypatch, capsys, "--out-dir", str(tmp_path), "--tag", "t")
    assert "results/mnist-strong-t.json hold an earlier run of --tag t; pass --resume" in err and "--overwrite" in err
    err = refused(monkeypatch, capsys, "--out-dir", str(tmp_path), "--tag", "t", "--resume")  # no checkpoint to resume
    assert "checkpoints/runs/mnist-strong-t.pt: not there" in err


@pytest.mark.parametrize("args, message", [
    (["--resume", "--overwrite"], "--resume continues the run in the checkpoint and --overwrite replaces it"),
    (["--threads", "0"], "--threads must be a positive int, got 0"),
    (["--epochs", "0"], "epochs must be a positive int, got 0"),
    (["--budget-min", "0"], "time_budget_s must be > 0"),
    (["--set", "model.dimm=16"], "model has no key 'dimm'; valid keys: image_size, patch_size"),
    (["--set", "fit.lr=1e-3", "--set", "fit.lr=2e-3"], "--set fit.lr is given twice"),
    (["--set", "data.batchsize=8"], "data has no key 'batchsize'; valid keys: batch_size"),
    (["--set", "model.dim=-4"], "dim must be >= 1, got -4"),
])
def test_bad_command_lines_are_refused_before_any_data_is_loaded(monkeypatch, capsys, tmp_path, args, message):
    assert message in refused(monkeypatch, capsys, "--out-dir", str(tmp_path), *args)


def test_a_key_hfs_vit_config_lacks_is_refused_and_the_ablation_rows_keys_pass(monkeypatch, capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import original_ablations as oa

    rows = [s for row in oa.ROWS for s in oa.overrides(row, "hf-original") or []] + ["hf_model.num_labels=10"]
    sets = [a for s in rows for a in ("--set", s)]  # every row's keys, each accepted before the bad one is refused
    monkeypatch.setattr(sys, "argv", ["train_recipe.py", "hf-original", "--data-root", "/no/such/data", "--out-dir",
                                      str(tmp_path), *sets, "--set", "hf_model.attention_dropout=0.0"])
    with pytest.raises(SystemExit) as stop:
        train_recipe.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "hf_model has no key 'attention_dropout'; valid keys:" in err and "attention_probs_dropout_prob" in err


def test_an_out_dir_that_is_a_file_is_named(monkeypatch, capsys, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    assert "is a file; pass a folder" in refused(monkeypatch, capsys, "--out-dir", str(tmp_path / "out"))


def test_a_script_without_its_data_ends_with_the_message_not_a_traceback():
    sys.path.insert(0, str(ROOT / "scripts"))
    import cli
    from vitkit.data import DataNotFoundError

    def main():
        raise DataNotFoundError("MNIST files missing in /x/MNIST/raw: put the four IDX files there")
    with pytest.raises(SystemExit) as stop:
        cli.run_script(main)
    assert stop.value.code == "error: MNIST files missing in /x/MNIST/raw: put the four IDX files there"
    with pytest.raises(SystemExit) as stop:
        cli.run_script(lambda: 3)
    assert stop.value.code == 3


def test_hfs_vit_can_start_its_cls_token_and_positions_at_zero_as_the_originals_transformers_did(monkeypatch, capsys,
                                                                                                tmp_path):
    import torch

    from vitkit import recipes

    def build(embeddings):
        recipe = recipes.get_recipe("hf-original")
        recipe["hf_model"] |= dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        recipe["hf_init"]["embeddings"] = embeddings
        torch.manual_seed(0)
        return dict(train_recipe._model(None, recipe).named_parameters())
    installed, zeros = build("installed"), build("zeros")
    for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings"):
        assert installed[name].abs().max() > 0 and torch.count_nonzero(zeros[name]) == 0
    # the installed transformers' N(0, 0.02): 1,040 draws in the position table
    assert 0.018 < installed["vit.embeddings.position_embeddings"].std() < 0.022
    # every other weight is drawn as without: the same seed gives the same model apart from those two
    assert all(torch.equal(p, installed[n]) for n, p in zeros.items() if "cls_token" not in n and "position" not in n)
    monkeypatch.setattr(sys, "argv", ["train_recipe.py", "hf-original", "--data-root", "/no/such/data", "--out-dir",
                                      str(tmp_path), "--set", "hf_init.embeddings='zero'"])
    with pytest.raises(SystemExit) as stop:
        train_recipe.main()
    assert stop.value.code == 2 and "hf_init.embeddings='zero': pass 'installed'" in capsys.readouterr().err
