import math

import pytest
import torch

import vit_helpers as vh


def lrs(warmup, total, base=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = vh.warmup_cosine_schedule(opt, warmup, total)
    out = []
    for _ in range(total + 3):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_values_at_start_end_of_warmup_middle_and_end():
    lr = lrs(10, 110, base=0.5)
    assert lr[0] == 0.0
    assert lr[5] == pytest.approx(0.25)
    assert lr[10] == pytest.approx(0.5)  # end of warmup: the base LR
    assert lr[60] == pytest.approx(0.25)  # halfway through the cosine
    assert lr[35] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 25 / 100)))
    assert lr[110] == pytest.approx(0.0, abs=1e-12)
    assert lr[112] == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the end


def test_warmup_is_monotone_and_cosine_decays():
    lr = lrs(20, 100)
    assert all(a < b for a, b in zip(lr[:20], lr[1:21]))
    assert all(a >= b for a, b in zip(lr[20:100], lr[21:101]))


def test_no_warmup_and_all_warmup():
    assert lrs(0, 10)[0] == 1.0
    lr = lrs(10, 10)
    assert lr[9] == pytest.approx(0.9) and lr[10] == 1.0


@pytest.mark.parametrize("warmup, total, error, message", [
    (11, 10, ValueError, "warmup_steps=11 must be between 0 and total_steps=10"),
    (-1, 10, ValueError, "warmup_steps=-1"),
    (0, 0, ValueError, "total_steps must be >= 1"),
    (2.5, 10, TypeError, "warmup_steps must be an int"),
])
def test_bad_arguments(warmup, total, error, message):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(error, match=message):
        vh.warmup_cosine_schedule(opt, warmup, total)


def test_lr_update_epoch_steps_the_schedule_once_per_epoch_with_epoch_1_at_zero():
    """The original notebooks' schedule: WarmupCosineSchedule(warmup=epochs // 5, total=epochs) stepped per epoch. For
    30 epochs: warmup 6, so epochs 1-6 at 0, 1/6, ..., 5/6 of the peak, then 0.5 (1 + cos(pi (e - 7) / 24))."""
    from conftest import loader, quadrant_data, tiny_vit
    from vitkit import train

    expected = [(e - 1) / 6 if e <= 6 else 0.5 * (1 + math.cos(math.pi * (e - 7) / 24)) for e in range(1, 31)]
    hist = train.fit(tiny_vit(), loader(quadrant_data(16, 0), batch_size=8), epochs=30, lr=1e-3, lr_update="epoch",
                     optimizer="adam", weight_decay=0.0, device="cpu", precision="fp32", compile=False,
                     progress=False, verbose=False)
    assert hist.lr == pytest.approx([1e-3 * f for e in expected for f in (e, e)])  # 2 steps an epoch, same LR
    assert hist.lr[:2] == [0.0, 0.0] and hist.lr[12] == pytest.approx(1e-3)


def test_lr_step_decay_multiplies_the_lr_by_its_factor_every_so_many_epochs():
    """torch's StepLR(optimizer, 3) stepped per epoch, gamma 0.1: epochs 1-3 at the peak, 4-6 at a tenth, ..."""
    from conftest import loader, quadrant_data, tiny_vit
    from vitkit import train

    hist = train.fit(tiny_vit(), loader(quadrant_data(16, 0), batch_size=8), epochs=10, lr=1e-3, lr_update="epoch",
                     warmup_fraction=0.0, lr_step_decay=(3, 0.1), optimizer="adam", weight_decay=0.0, device="cpu",
                     precision="fp32", compile=False, progress=False, verbose=False)
    expected = [1e-3] * 3 + [1e-4] * 3 + [1e-5] * 3 + [1e-6]
    assert hist.lr == pytest.approx([lr for lr in expected for _ in (0, 1)], rel=1e-9)  # 2 steps an epoch


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lr_step_decay=(3, 0.1)), ValueError, "with lr_update='epoch' and warmup_fraction=0"),
    (dict(lr_step_decay=(3, 0.1), lr_update="epoch"), ValueError, "warmup_fraction=0"),
    (dict(lr_step_decay=(0, 0.1), lr_update="epoch", warmup_fraction=0.0), ValueError, "every"),
    (dict(lr_step_decay=(3, 1.5), lr_update="epoch", warmup_fraction=0.0), ValueError, "factor"),
    (dict(lr_step_decay=3, lr_update="epoch", warmup_fraction=0.0), TypeError, r"must be \(every, factor\)"),
])
def test_a_step_decay_that_cannot_run_is_refused_before_training(kwargs, error, message):
    from vitkit import train

    with pytest.raises(error, match=message):
        train.FitConfig(epochs=10, **kwargs)
