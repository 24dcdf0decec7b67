"""scripts/recount_flops.py: records counted before the FLOP counter counted attention on the fused CPU kernel get
the current count, their old numbers kept; a record the old way cannot reproduce is left alone."""
import importlib.util
import json

import pytest
import torch

import vit_helpers as vh
from conftest import ROOT
from vitkit import budget

spec = importlib.util.spec_from_file_location("recount_flops", ROOT / "scripts" / "recount_flops.py")
recount_flops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recount_flops)

MODEL = dict(image_size=8, patch_size=4, in_channels=3, num_classes=2, dim=16, depth=2, heads=2, mlp_dim=32)


def record(old_gflop, **model):
    return {"config": {"model": {**MODEL, **model}},
            "metrics": {"gflop_per_image": old_gflop, "train_tflop": old_gflop * 1000 / 1e3, "test_acc": 0.5},
            "history": {"gflop_per_image": old_gflop, "train_tflop": old_gflop * 1000 / 1e3}}


def test_a_run_counted_without_fused_attention_gets_the_full_count_and_keeps_the_old(tmp_path):
    model = vh.VisionTransformer(**MODEL)
    new = budget.flops_per_image(model, None, torch.device("cpu")) / 1e9
    t, d = (8 // 4) ** 2 + 1, 16
    old = new - MODEL["depth"] * 12 * t * t * d / 1e9  # QK^T and AV, forward and backward, per layer
    assert recount_flops.gflops(model) == pytest.approx((old, new), rel=1e-12)
    (tmp_path / "a.json").write_text(json.dumps(record(old)))
    (tmp_path / "b.json").write_text(json.dumps(record(new)))  # counted by today's counter: left as it is
    (tmp_path / "c.json").write_text(json.dumps(record(0.1)))  # neither count: left as it is, and the rest go on
    (tmp_path / "InductiveBias-full.json").write_text(json.dumps(record(old)))  # its notebook's: left to a re-run
    assert recount_flops.main(["--results", str(tmp_path)]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    for part in (a["metrics"], a["history"]):  # 1,000 images' compute at the new count
        assert part["gflop_per_image"] == new and part["train_tflop"] == pytest.approx(new)
    assert a["flop_recount"]["before"] == {"run": {"gflop_per_image": old, "train_tflop": old}}
    assert a["metrics"]["test_acc"] == 0.5
    assert json.loads((tmp_path / "b.json").read_text()) == record(new)
    assert json.loads((tmp_path / "c.json").read_text()) == record(0.1)
    assert json.loads((tmp_path / "InductiveBias-full.json").read_text()) == record(old)
    again = (tmp_path / "a.json").read_text()
    recount_flops.main(["--results", str(tmp_path)])  # once only
    assert (tmp_path / "a.json").read_text() == again


def test_a_count_that_is_neither_the_old_nor_the_new_is_named():
    with pytest.raises(recount_flops.Unreadable, match="0.100000 GFLOP per image is neither the old count"):
        recount_flops.recount(record(0.1))


def test_the_study_runs_of_vits_are_re_counted_from_their_images_and_the_cnns_left_as_they_are():
    model = {**MODEL, "stem": "patch"}
    old, new = recount_flops.gflops(vh.VisionTransformer(**model))
    runs = [{"variant": v, "size": 100, "seed": 0, "passes": 10.0, "train_tflop": g * 1000 / 1e3}
            for v, g in (("vit", old), ("cnn", 0.05))]
    out = recount_flops.recount({"config": {"model": model}, "metrics": {"runs": runs}, "date": "2026-12-03 07:00"})
    assert out["metrics"]["runs"][0]["train_tflop"] == pytest.approx(new)  # 1,000 images at the new count
    assert out["metrics"]["runs"][1] == runs[1]
    assert out["flop_recount"]["before"] == {"vit size 100 seed 0": {"train_tflop": old}}
    runs[0]["train_tflop"] = new  # counted by today's counter: nothing to do
    assert recount_flops.recount({"config": {"model": model}, "metrics": {"runs": runs}}) is None
