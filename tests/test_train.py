import copy
import json

import pytest
import torch
import torch.nn.functional as F

import vit_helpers as vh
from vitkit import data, runtime, train, recipes, explain, records
from conftest import ROOT, FakeClock, loader, quadrant_data, tiny_vit


def test_loss_falls_and_model_learns():
    runtime.set_seed(0)
    train_loader, val = loader(quadrant_data(256, 0), shuffle=True), loader(quadrant_data(64, 1))
    model = tiny_vit()
    before = train.evaluate(model, val)
    hist = train.fit(model, train_loader, val, epochs=15, lr=3e-3, device="cpu", precision="fp32", progress=False, verbose=False)
    after = train.evaluate(model, val)
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert after["loss"] < 0.5 * before["loss"]
    assert after["acc"] >= 0.95
    assert len(hist.lr) == hist.total_steps == 15 * 8
    assert hist.lr[0] == 0.0 and max(hist.lr) == pytest.approx(3e-3, rel=0.05)


def test_best_validation_weights_are_restored():
    runtime.set_seed(0)
    train_loader, val = loader(quadrant_data(128, 0), shuffle=True), loader(quadrant_data(64, 1))
    model = tiny_vit()
    hist = train.fit(model, train_loader, val, epochs=4, lr=3e-3, device="cpu", precision="fp32", progress=False, verbose=False)
    assert hist.best_val_acc == max(hist.val_acc)
    assert hist.val_acc[hist.best_epoch - 1] == hist.best_val_acc
    assert train.evaluate(model, val)["acc"] == hist.best_val_acc


class FixedLogits(torch.nn.Module):
    """Returns its input as logits (so the test decides every prediction)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + 0 * self.dummy


def test_evaluate_counts_the_whole_split_with_a_short_last_batch():
    logits = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])] * 5  # predicted classes
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 0, 1])  # 7 of 10 correct
    ds = torch.utils.data.TensorDataset(logits, labels)
    out = train.evaluate(FixedLogits(), torch.utils.data.DataLoader(ds, batch_size=4), return_predictions=True)
    assert out["n"] == 10 and out["acc"] == 0.7  # batches of 4, 4, 2: not 7 / (3 * 4)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert out["preds"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


class PixelLogits(torch.nn.Module):
    """Logits = a fixed linear map of a 1x2 image's pixels, not symmetric under a left-right flip."""
    M = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 1.2]])

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1) @ self.M + 0 * self.dummy


def test_evaluate_with_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.8], [0.3, 1.0]])[:, None, None, :]  # (3, 1, 1, 2)
    labels = torch.tensor([0, 2, 2])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=2)
    probs = ((x.flatten(1) @ PixelLogits.M).softmax(-1) + (x.flatten(1).flip(-1) @ PixelLogits.M).softmax(-1)) / 2
    out = train.evaluate(PixelLogits(), loader, precision="fp32", flip=True, return_predictions=True)
    assert out["preds"].tolist() == [0, 2, 2]  # the mirror image changes the first two decisions
    assert out["acc"] == 1.0
    assert out["loss"] == pytest.approx(-probs[torch.arange(3), labels].log().mean().item(), rel=1e-6)
    plain = train.evaluate(PixelLogits(), loader, precision="fp32", return_predictions=True)
    assert plain["preds"].tolist() == [2, 0, 2] and plain["acc"] == pytest.approx(1 / 3)


def test_same_seed_same_run():
    def run():
        runtime.set_seed(3)
        model = tiny_vit()
        return train.fit(model, loader(quadrant_data(64, 0), shuffle=True), epochs=2, device="cpu", precision="fp32", progress=False,
                         verbose=False).train_loss
    assert run() == run()


def test_accumulation_label_smoothing_clipping_and_mixing_run():
    runtime.set_seed(0)
    model = tiny_vit()
    hist = train.fit(model, loader(quadrant_data(96, 0), batch_size=16, shuffle=True), epochs=2, accumulation_steps=4,
                     label_smoothing=0.1, grad_clip=1.0, mixup_alpha=0.8, cutmix_alpha=1.0, optimizer="sgd", lr=0.05,
                     device="cpu", precision="fp32", progress=False, verbose=False)
    assert hist.total_steps == 2 * 2 and len(hist.lr) == 4  # 6 batches / 4 -> 2 optimizer steps per epoch
    assert all(torch.isfinite(torch.tensor(hist.train_loss)))


def test_time_budget_shortens_the_schedule():
    runtime.set_seed(0)
    model = tiny_vit()
    hist = train.fit(model, loader(quadrant_data(256, 0), batch_size=8, shuffle=True), epochs=50, time_budget_s=0.05,
                     device="cpu", precision="fp32", progress=False, verbose=False)
    assert 1 <= hist.total_steps < 50 * 32
    assert len(hist.lr) == hist.total_steps


class PacedLoader:
    """32 batches of quadrant data per epoch, each costing ``s`` seconds on the fake clock until the clock reads
    ``switch_at``, then ``s_after``: a pace that changes mid-run, as when compilation ends, a machine gets busy or
    another job on it ends."""

    def __init__(self, clock, s, s_after=None, switch_at=float("inf"), batches=32):
        ds = quadrant_data(8 * batches, 0)
        self.batches = [(torch.stack([ds[i][0] for i in range(b, b + 8)]), ds.labels[b:b + 8])
                        for b in range(0, 8 * batches, 8)]
        self.clock, self.s, self.s_after, self.switch_at, self.batch_size = clock, s, s_after, switch_at, 8

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.clock.work(self.s if self.clock.now < self.switch_at else self.s_after)
            yield batch


def paced_fit(monkeypatch, budget, val_s=None, **pace):
    """fit under a time budget on the fake clock; ``val_s``: each validation batch's cost (4 of them)."""
    import time
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    runtime.set_seed(0)
    val = PacedLoader(clock, s=val_s, batches=4) if val_s else None
    return train.fit(tiny_vit(), PacedLoader(clock, **pace), val, epochs=1000, time_budget_s=budget, device="cpu",
                     compile=False, precision="fp32", progress=False, verbose=False)


@pytest.mark.parametrize("s, s_after", [(0.02, 0.01), (0.01, 0.02)], ids=["pace-doubles", "pace-halves"])
def test_a_time_budget_schedule_never_jumps_when_the_pace_changes(monkeypatch, s, s_after):
    """The LR follows the fraction of the budget spent: after warmup it never rises, no step changes it by more than
    twice the largest step of an uninterrupted warmup-cosine of the same number of steps, and the run ends within
    one batch of its budget."""
    budget = 6.0
    hist = paced_fit(monkeypatch, budget, s=s, s_after=s_after, switch_at=budget / 2)
    lr, n = hist.lr, len(hist.lr)
    assert n == hist.total_steps and abs(n - (budget / 2 / s + budget / 2 / s_after)) <= 1  # float sums of the clock
    peak = lr.index(max(lr))
    assert all(b <= a for a, b in zip(lr[peak:], lr[peak + 1:])), "the LR rose after warmup"
    reference = [1e-3 * vh.warmup_cosine_factor(int(0.2 * n), n)(k) for k in range(n)]
    largest = max(abs(b - a) for a, b in zip(reference, reference[1:]))
    assert max(abs(b - a) for a, b in zip(lr, lr[1:])) <= 2 * largest
    assert abs(hist.wall_time_s - budget) <= max(s, s_after)
    assert lr[-1] < 0.01 * max(lr)  # the cosine has decayed by the end of the budget


def test_a_time_budget_counts_validation_and_ends_on_time(monkeypatch):
    """Validation costs budget time too (20 ms an epoch here): the run keeps what the end of its last epoch took."""
    hist = paced_fit(monkeypatch, 2.0, val_s=0.005, s=0.01)
    assert len(hist.val_acc) == len(hist.epoch) >= 5
    assert abs(hist.wall_time_s - 2.0) <= 0.01 + 0.02
    peak = hist.lr.index(max(hist.lr))
    assert all(b <= a for a, b in zip(hist.lr[peak:], hist.lr[peak + 1:]))


def test_compute_budget_plans_whole_steps_and_stops_within_one():
    runtime.set_seed(0)
    model = tiny_vit()
    from vitkit import budget
    per_image = budget.flops_per_image(model, loader(quadrant_data(8, 0)), torch.device("cpu"))
    max_tflop = per_image * 8 * 37.5 / 1e12  # 37.5 steps of batch 8
    hist = train.fit(model, loader(quadrant_data(64, 0), batch_size=8), epochs=100, max_tflop=max_tflop,
                     device="cpu", precision="fp32", progress=False, verbose=False)
    assert hist.total_steps == len(hist.lr) == 37  # whole steps within the budget
    assert hist.train_images == 37 * 8  # the images seen: every step's batch
    assert hist.gflop_per_image == pytest.approx(per_image / 1e9)
    assert max_tflop - per_image * 8 / 1e12 < hist.train_tflop <= max_tflop  # within one step of it


def test_flops_per_image_counts_forward_and_backward_exactly():
    """A linear classifier on 16x16 images: forward 2*D*K FLOPs per image, backward 2*D*K for the weight gradient
    (the input needs none): 4*D*K. The count leaves the model and the random state untouched."""
    from vitkit import budget
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4))
    before, rng = model[1].weight.clone(), torch.get_rng_state()
    assert budget.flops_per_image(model, loader(quadrant_data(8, 0)), torch.device("cpu")) == 4 * 256 * 4
    assert torch.equal(model[1].weight, before) and model[1].weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_flops_per_image_counts_attention_on_either_kernel():
    """One encoder block on T tokens of width D, MLP width M, per image: its four linear maps (qkv, out, fc1, fc2)
    2*T*(4*D*D + 2*D*M) FLOPs forward and twice that backward (input and weight gradients); attention's QK^T and AV
    2*T*T*D each forward and twice that backward: 12*T*T*D. The same count whether the model calls the fused SDPA
    kernel or the explicit softmax(QK^T)V."""
    from vitkit import budget
    t, d, m = (8 // 4) ** 2 + 1, 16, 32
    cfg = dict(image_size=8, patch_size=4, in_channels=3, num_classes=2, dim=d, heads=2, mlp_dim=m)

    def count(depth, **kw):
        model = vh.VisionTransformer(vh.ViTConfig(**cfg, depth=depth, **kw))
        return budget.flops_per_image(model, None, torch.device("cpu"))
    block = 6 * t * (4 * d * d + 2 * d * m) + 12 * t * t * d
    for fused in (True, False):
        assert count(2, fused_attn=fused) - count(1, fused_attn=fused) == block
    assert count(2, fused_attn=True) == count(2, fused_attn=False) == count(2, attn_dropout=0.5)


def test_fit_trains_hf_models():
    transformers = pytest.importorskip("transformers")
    hf = vh.to_hf(tiny_vit(), attn_implementation="sdpa")
    assert isinstance(hf, transformers.ViTForImageClassification)
    hist = train.fit(hf, loader(quadrant_data(64, 0), shuffle=True), loader(quadrant_data(32, 1)), epochs=2,
                     device="cpu", precision="fp32", progress=False, verbose=False)
    assert len(hist.val_acc) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be a positive int"),
    (dict(epochs=1, optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
    (dict(epochs=1, precision="half"), "unknown precision 'half'"),
    (dict(epochs=1, label_smoothing=1.0), "label_smoothing"),
])
def test_bad_fit_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.fit(tiny_vit(), loader(quadrant_data(8, 0)), device="cpu", progress=False, verbose=False, **kwargs)


def test_get_device_and_recipes():
    assert runtime.get_device("cpu") == torch.device("cpu")
    assert runtime.get_device().type in ("cpu", "cuda", "mps")
    recipe = recipes.get_recipe("cifar10-seed")
    assert recipe["model"]["mlp_dim"] == 1024 and recipe["fit"]["epochs"] == 30
    recipe["fit"]["epochs"] = 1
    assert recipes.RECIPES["cifar10-seed"]["fit"]["epochs"] == 30  # a copy
    for name, recipe in recipes.RECIPES.items():  # ours build; HF's are HF configs or hub ids
        assert "model" in recipe or "hf_model" in recipe or "pretrained" in recipe
        if "model" in recipe:
            vh.VisionTransformer(**recipe["model"])
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_recipe("imagenet")


def test_save_results_records_everything(tmp_path):
    path = records.save_results(tmp_path / "r" / "run.json", metrics={"test_acc": 0.5}, config={"dim": 8}, seed=3,
                                dataset="fake", wall_time_s=12.345, device="cpu")
    record = json.loads(path.read_text())
    assert record["metrics"] == {"test_acc": 0.5} and record["seed"] == 3 and record["wall_time_s"] == 12.3
    assert record["dataset"] == "fake" and record["hardware"]["cpu_count"] >= 1 and "torch" in record["hardware"]


def test_max_steps_caps_the_schedule():
    runtime.set_seed(0)
    hist = train.fit(tiny_vit(), loader(quadrant_data(64, 0), batch_size=8), epochs=5, max_steps=11, warmup_steps=2,
                     device="cpu", precision="fp32", progress=False, verbose=False)
    assert hist.total_steps == 11 and len(hist.lr) == 11 and hist.epoch == [1, 2]
    assert hist.lr[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        train.fit(tiny_vit(), loader(quadrant_data(8, 0)), epochs=1, max_steps=0, device="cpu", precision="fp32", progress=False)


def test_top_k():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    out = explain.top_k(logits, {0: "a", 1: "b", 2: "c"}, k=2)
    assert [name for name, _ in out[0]] == ["b", "c"]
    assert [p for _, p in out[0]] == pytest.approx([0.6, 0.3])


def test_load_image_paths_and_errors(tmp_path):
    from PIL import Image
    Image.new("L", (7, 5), color=128).save(tmp_path / "g.png")
    im = data.load_image(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (7, 5)
    with pytest.raises(FileNotFoundError, match="PHOTOS"):
        data.load_image(tmp_path / "missing.jpg")


def test_the_cifar10_fast_recipe_is_the_recorded_run():
    """The recipe is exactly the settings of the record it cites (an exploration of cifar10-cpu with overrides)."""
    import json

    from conftest import ROOT
    from vitkit import recipes

    record = json.loads((ROOT / "results" / "cifar10-cpu-cct-p8-bs64-t160.json").read_text())
    recipe = recipes.get_recipe("cifar10-fast")
    assert {k: record["config"][k] for k in ("model", "data", "fit")} == recipe
    assert record["config"]["max_tflop"] == 160 and record["metrics"]["test_acc"] >= 0.80
    # its budget was set by the count that left out fused attention: within 160 TFLOP by that count, not by today's
    assert record["flop_recount"]["before"]["run"]["train_tflop"] <= 160 < record["metrics"]["train_tflop"]


def test_tensorboard_logs_loss_accuracy_and_lr_per_step_and_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runtime.set_seed(0)
    hist = train.fit(tiny_vit(), loader(quadrant_data(64, 0), batch_size=16), loader(quadrant_data(32, 1)), epochs=2,
                     log_dir=tmp_path / "tb", device="cpu", precision="fp32", progress=False, verbose=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert [v for _, v in scalars["step/lr"]] == pytest.approx(hist.lr)
    assert [s for s, _ in scalars["step/lr"]] == list(range(1, 9)) and len(scalars["step/train_loss"]) == 8
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert scalars[f"epoch/{name}"] == [(e, pytest.approx(v)) for e, v in zip(hist.epoch, getattr(hist, name))]


@pytest.mark.slow
def test_tensorboard_is_imported_only_when_asked_for():
    import subprocess
    import sys

    code = ("import sys, torch; sys.path.insert(0, '.'); sys.path.insert(0, 'tests'); from conftest import *; "
            "from vitkit import train; train.fit(tiny_vit(), loader(quadrant_data(16, 0)), epochs=1, device='cpu', "
            "precision='fp32', progress=False, verbose=False); print('tensorboard' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_compilation_in_the_first_step_does_not_use_up_the_warmup(monkeypatch):
    """The first batch costs 3 s of a 6-second budget (as compilation can on a CPU), the others 10 ms: the schedule's
    clock starts after that step, so the LR still warms up over many steps and then decays to 0 on time."""
    import time
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    loader_ = PacedLoader(clock, s=3.0, s_after=0.01, switch_at=0.5)  # only the first batch is slow
    runtime.set_seed(0)
    hist = train.fit(tiny_vit(), loader_, epochs=1000, time_budget_s=6.0, warmup_fraction=0.1, device="cpu",
                     compile=False, precision="fp32", progress=False, verbose=False)
    peak = hist.lr.index(max(hist.lr))
    assert hist.lr[0] == 0.0 and 25 <= peak <= 35  # 10 % of the 3 s left at 10 ms a step: 30 steps of warmup
    assert max(hist.lr) == pytest.approx(1e-3, rel=0.05)
    assert abs(hist.wall_time_s - 6.0) <= 0.01 and hist.lr[-1] < 0.01 * max(hist.lr)


def test_a_short_last_accumulation_group_takes_the_mean_of_its_own_batches():
    """6 batches in groups of 4: the second step sums 2 batches, and must divide by 2, not 4. With SGD and lr=1 the
    update is the gradient itself, so the step's size shows the scaling."""
    runtime.set_seed(0)
    model = tiny_vit()
    ds = quadrant_data(96, 0)
    grads = []
    real_step = torch.optim.SGD.step

    def recording(self, *args, **kwargs):
        grads.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]))
        return real_step(self, *args, **kwargs)

    import unittest.mock
    with unittest.mock.patch.object(torch.optim.SGD, "step", recording):
        train.fit(model, loader(ds, batch_size=16), epochs=1, optimizer="sgd", lr=1e-9, weight_decay=0.0, momentum=0.0,
                  warmup_fraction=0.0, accumulation_steps=4, device="cpu", precision="fp32", compile=False,
                  progress=False, verbose=False)
    runtime.set_seed(0)
    reference = tiny_vit()
    x = torch.stack([ds[i][0] for i in range(64, 96)])
    F.cross_entropy(reference(x), ds.labels[64:96]).backward()  # the mean loss over the group's two batches
    from vitkit.steps import param_groups
    expected = torch.cat([p.grad.flatten() for g in param_groups(reference, 0.0) for p in g["params"]])  # fit's order
    assert len(grads) == 2 and torch.allclose(grads[1], expected, rtol=1e-4, atol=1e-6)


def test_a_time_budget_run_ended_by_its_step_cap_still_decays_to_zero(monkeypatch):
    import time
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    runtime.set_seed(0)
    capped = train.fit(tiny_vit(), PacedLoader(clock, s=0.01), epochs=1000, max_steps=40, time_budget_s=100.0,
                       warmup_fraction=0.0, device="cpu", compile=False, precision="fp32", progress=False,
                       verbose=False)
    assert len(capped.lr) == 40 and capped.lr[-1] < 0.05 * capped.lr[0]  # the step cap's share drives the decay
    assert all(b <= a for a, b in zip(capped.lr, capped.lr[1:]))


# --- the weight average (ema_decay) ---------------------------------------------------------------------------------

def test_weight_average_follows_the_documented_rule_and_copies_buffers():
    from vitkit.steps import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    avg = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net[0].weight.fill_(3.0)
        net[1].running_mean.fill_(5.0)
    avg.update(net)  # t=1: d = min(0.9, 2/11) -> a = 1 + (1 - 2/11) * (3 - 1)
    a1 = 1 + (1 - 2 / 11) * 2
    assert avg.model[0].weight[0, 0].item() == pytest.approx(a1)
    assert avg.model[1].running_mean.item() == 5.0 and not avg.model.training
    for _ in range(30):  # t=31: d = min(0.9, 32/41) = 0.78..., then 0.9 from t=80 on
        avg.update(net)
    assert avg.decay_at(31) == pytest.approx(32 / 41) and avg.decay_at(100) == 0.9
    assert 1 < avg.model[0].weight[0, 0].item() < 3
    assert avg.flops() == WeightAverage.FLOPS_PER_VALUE * (2 + 1 + 1 + 1)  # weight, bias, BN weight and bias


def test_fit_with_ema_returns_the_average_and_counts_its_flops():
    """One SGD step from known weights: the average is init + (1 - min(d, 2/11)) (w1 - init), where w1 is what the
    same run without the average ends with; its update FLOPs are in train_tflop."""
    from vitkit import budget
    from vitkit.steps import WeightAverage

    settings = dict(epochs=1, max_steps=1, optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.0,
                    warmup_fraction=0.0, device="cpu", precision="fp32", compile=False, progress=False, verbose=False)
    data = loader(quadrant_data(8, 0), batch_size=8)
    runtime.set_seed(0)
    init = tiny_vit()
    start = {k: v.clone() for k, v in init.state_dict().items()}
    plain = copy.deepcopy(init)
    train.fit(plain, data, **settings)
    averaged = copy.deepcopy(init)
    hist = train.fit(averaged, data, ema_decay=0.99, **settings)
    for name, w1 in plain.state_dict().items():
        expected = start[name] + (1 - 2 / 11) * (w1 - start[name]) if w1.is_floating_point() else w1
        assert torch.allclose(averaged.state_dict()[name], expected, atol=1e-6), name
    per_image = budget.flops_per_image(init, data, torch.device("cpu"))
    update = WeightAverage(init, 0.99).flops()
    assert hist.train_tflop == pytest.approx((8 * per_image + update) / 1e12)


def test_with_ema_validation_and_the_returned_model_are_the_average():
    def trained(**ema):
        runtime.set_seed(0)
        model = tiny_vit()
        hist = train.fit(model, loader(quadrant_data(64, 0), batch_size=16, shuffle=True), val, epochs=3, lr=3e-3,
                         restore_best=False, device="cpu", precision="fp32", compile=False, progress=False,
                         verbose=False, **ema)
        return model, hist

    val = loader(quadrant_data(32, 1))
    plain, _ = trained()
    averaged, hist = trained(ema_decay=0.9)
    assert train.evaluate(averaged, val, precision="fp32")["loss"] == hist.val_loss[-1]  # validated: the model fit returned
    assert train.evaluate(plain, val, precision="fp32")["loss"] != hist.val_loss[-1]  # which is not the last weights
    with pytest.raises(ValueError, match="ema_decay"):
        train.fit(tiny_vit(), val, epochs=1, ema_decay=1.0)
