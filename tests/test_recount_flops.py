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
    (tmp_path / "b.json").write_text(json.dumps(record(new, attn_dropout=0.1)))  # explicit path: counted already
    assert recount_flops.main(["--results", str(tmp_path)]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    for part in (a["metrics"], a["history"]):  # 1,000 images' compute at the new count
        assert part["gflop_per_image"] == new and part["train_tflop"] == pytest.approx(new)
    assert a["flop_recount"]["before"] == {"run": {"gflop_per_image": old, "train_tflop": old}}
    assert a["metrics"]["test_acc"] == 0.5
    assert "flop_recount" not in json.loads((tmp_path / "b.json").read_text())
    again = (tmp_path / "a.json").read_text()
    recount_flops.main(["--results", str(tmp_path)])  # once only
    assert (tmp_path / "a.json").read_text() == again


def test_a_count_the_old_way_cannot_reproduce_is_refused():
    with pytest.raises(SystemExit, match="does not reproduce the recorded 0.100000"):
        recount_flops.recount(record(0.1))
