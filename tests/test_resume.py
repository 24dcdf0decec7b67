"""Checkpoint and resume in fit: a run stopped after an epoch, or in the middle of one, or killed while writing its
checkpoint, and then resumed, ends with exactly the weights of the run that never stopped (fp32, CPU, fixed seed);
a checkpoint of another run, a corrupt one and a finished one are reported before any training."""
import time

import pytest
import torch

import vit_helpers as vh
from vitkit import checkpoint as ckpt
from vitkit import data, runtime, train
from conftest import FakeClock, quadrant_data, write_lock

EPOCHS = 3


class Noisy(torch.nn.Module):
    """A random augmentation (noise from the global torch RNG, as torchvision's transforms draw theirs)."""

    def forward(self, x):
        return x.float() / 255 + 0.1 * torch.randn(x.shape)


def loaders(num_workers=0, batch_size=16, seed=0):
    train_ds = quadrant_data(96, 0)
    train_ds.transform, train_ds.source = Noisy(), "quadrants"
    return (torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                        generator=torch.Generator().manual_seed(seed)),
            torch.utils.data.DataLoader(quadrant_data(32, 1), batch_size=32))


class StopsAt(torch.utils.data.DataLoader):
    """A DataLoader that raises KeyboardInterrupt (Ctrl-C) at batch ``batch`` of epoch ``epoch``."""

    def __init__(self, base, epoch, batch):
        super().__init__(base.dataset, batch_size=base.batch_size, shuffle=True, num_workers=base.num_workers,
                         generator=base.generator)
        self.stop_epoch, self.stop_batch, self.epochs_started = epoch, batch, 0

    def __iter__(self):
        self.epochs_started += 1
        for i, batch in enumerate(super().__iter__()):
            if (self.epochs_started, i) == (self.stop_epoch, self.stop_batch):
                raise KeyboardInterrupt
            yield batch


def model(dropout=0.1):
    runtime.set_seed(0)
    return vh.VisionTransformer(image_size=16, patch_size=8, in_channels=1, num_classes=4, dim=16, depth=2, heads=2,
                                mlp_dim=32, dropout=dropout)


def run(m, train_loader, val_loader, path=None, resume=False, **kwargs):
    settings = dict(epochs=EPOCHS, lr=3e-3, device="cpu", precision="fp32", compile=False, progress=False,
                    verbose=False, mixup_alpha=0.2, cutmix_alpha=0.2, run_info={"seed": 0, "recipe": "quadrants"})
    return train.fit(m, train_loader, val_loader, checkpoint=path, resume=resume, **{**settings, **kwargs})


def straight(num_workers=0):
    m = model()
    hist = run(m, *loaders(num_workers))
    return m, hist


def resumed(tmp_path, stop_epoch, stop_batch, num_workers=0):
    """Stop the run at (epoch, batch), then resume it in a fresh model and fresh loaders, as a new session would."""
    path = tmp_path / "run.pt"
    train_loader, val_loader = loaders(num_workers)
    with pytest.raises(KeyboardInterrupt):
        run(model(), StopsAt(train_loader, stop_epoch, stop_batch), val_loader, path)
    torch.manual_seed(1234)  # a new process's RNG: the checkpoint must restore it
    m = model()
    hist = run(m, *loaders(num_workers), path=path, resume=True)
    return m, hist, path


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), f"{name} differs after resuming"


@pytest.mark.parametrize("stop_epoch, stop_batch", [(2, 0), (2, 3), (3, 5)],
                         ids=["after-epoch-1", "mid-epoch-2", "mid-epoch-3"])
def test_resumed_run_ends_with_the_weights_of_the_run_that_never_stopped(tmp_path, stop_epoch, stop_batch):
    reference, ref_hist = straight()
    m, hist, _ = resumed(tmp_path, stop_epoch, stop_batch)
    assert_same_weights(reference, m)
    assert hist.val_acc == ref_hist.val_acc and hist.lr == ref_hist.lr and hist.epoch == [1, 2, 3]
    assert hist.resumes == 1 and [s["first_epoch"] for s in hist.stretches] == [1, stop_epoch]
    assert hist.stretches[0]["last_epoch"] == stop_epoch - 1 and hist.stretches[1]["last_epoch"] == 3
    assert hist.wall_time_s >= sum(s["wall_time_s"] for s in hist.stretches) * 0.99


def test_a_run_with_a_weight_average_resumes_exactly(tmp_path):
    reference = model()
    ref_hist = run(reference, *loaders(), ema_decay=0.9)
    path = tmp_path / "run.pt"
    train_loader, val_loader = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(model(), StopsAt(train_loader, 2, 3), val_loader, path, ema_decay=0.9)
    torch.manual_seed(7)
    m = model()
    hist = run(m, *loaders(), path=path, resume=True, ema_decay=0.9)
    assert_same_weights(reference, m)
    assert hist.val_loss == ref_hist.val_loss and hist.resumes == 1


@pytest.mark.slow
def test_resume_is_exact_with_loader_workers(tmp_path):
    reference, _ = straight(num_workers=2)
    m, _, _ = resumed(tmp_path, 2, 2, num_workers=2)
    assert_same_weights(reference, m)


def test_a_kill_during_the_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    real_save, saves = torch.save, []

    def dies_in_second_write(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:  # epoch 2's checkpoint: half a file, then the process is gone
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_in_second_write)
    with pytest.raises(KeyboardInterrupt):
        run(model(), *loaders(), path=path)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.load(path)["state"]["epoch"] == 1  # the last complete checkpoint is intact
    m = model()
    run(m, *loaders(), path=path, resume=True)
    assert_same_weights(straight()[0], m)


def test_truncated_checkpoint_names_the_file_and_the_way_out(tmp_path):
    path = tmp_path / "run.pt"
    run(model(), *loaders(), path=path, epochs=2)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match=r"run.pt is truncated or corrupt .*start the run afresh \(overwrite=True\) "
                                                   r"or resume from the previous one, run.pt.prev"):
        run(model(), *loaders(), path=path, resume=True, epochs=2)
    path.unlink()
    with pytest.raises(ckpt.CheckpointError, match="Only run.pt.prev is there"):
        run(model(), *loaders(), path=path, resume=True, epochs=2)


@pytest.mark.parametrize("change, message", [
    (dict(model=dict(dim=32)), "model.dim: checkpoint 16, now 32"),
    (dict(run_info={"seed": 1, "recipe": "quadrants"}), "seed: checkpoint 0, now 1"),
    (dict(run_info={"seed": 0, "recipe": "other"}), "recipe: checkpoint 'quadrants', now 'other'"),
    (dict(epochs=5), "epochs: checkpoint 3, now 5"),
    (dict(batch_size=8), "batch_size: checkpoint 16, now 8"),
    (dict(source="another copy"), "dataset: checkpoint 'quadrants', now 'another copy'"),
])
def test_a_checkpoint_of_another_run_is_refused_before_training(tmp_path, change, message):
    path = tmp_path / "run.pt"
    run(model(), *loaders(), path=path, epochs=3)
    m = model() if "model" not in change else vh.VisionTransformer(
        image_size=16, patch_size=8, in_channels=1, num_classes=4, dim=32, depth=2, heads=2, mlp_dim=32)
    train_loader, val_loader = loaders(batch_size=change.get("batch_size", 16))
    if "source" in change:
        train_loader.dataset.source = change["source"]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kwargs = {k: v for k, v in change.items() if k in ("epochs", "run_info")}
    with pytest.raises(ckpt.CheckpointError, match=f"belongs to another run; it differs in .*{message}"):
        run(m, train_loader, val_loader, path=path, resume=True, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # nothing trained


def test_resuming_a_finished_run_returns_its_history(tmp_path, capsys):
    path = tmp_path / "run.pt"
    first = model()
    hist = run(first, *loaders(), path=path, verbose=True)
    again = model()
    hist2 = run(again, *loaders(), path=path, resume=True, verbose=True)
    assert "finished after 3 epochs; returning its History" in capsys.readouterr().out
    assert hist2.val_acc == hist.val_acc and hist2.best_epoch == hist.best_epoch
    assert_same_weights(first, again)  # the restored best epoch, as at the end of the first call


def test_resume_true_without_a_checkpoint_starts_the_run(tmp_path, capsys):
    hist = run(model(), *loaders(), path=tmp_path / "new.pt", resume=True, verbose=True, epochs=1)
    assert "no checkpoint at" in capsys.readouterr().out and hist.epoch == [1] and hist.resumes == 0


def test_a_resumed_time_budget_run_continues_on_its_budget_clock(tmp_path, capsys, monkeypatch):
    """The schedule of a time-budget run is a function of the budget spent, which the checkpoint holds: the resumed
    run goes on where the LR was, never higher, and ends when the whole budget (both stretches) is spent."""
    clock = FakeClock()  # every training image costs 1 ms
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(Noisy, "forward", lambda self, x: clock.work(0.001) or x.float() / 255)
    path, budget = tmp_path / "run.pt", 3.0
    train_loader, val_loader = loaders()
    with pytest.raises(KeyboardInterrupt):  # stop in epoch 4: the checkpoint holds 3 epochs
        run(model(), StopsAt(train_loader, 4, 0), val_loader, path, epochs=1000, time_budget_s=budget,
            warmup_fraction=0.0)
    saved = ckpt.load(path)
    assert saved["identity"]["time_budget_s"] == budget and saved["state"]["epoch"] == 3
    before = saved["state"]["history"]["lr"]
    hist = run(model(), *loaders(), path=path, resume=True, epochs=1000, time_budget_s=budget, verbose=True,
               warmup_fraction=0.0)
    assert "resumed" in capsys.readouterr().out and hist.resumes == 1
    assert hist.lr[:len(before)] == before and hist.lr[len(before)] <= before[-1]
    peak = hist.lr.index(max(hist.lr))
    assert all(b <= a for a, b in zip(hist.lr[peak:], hist.lr[peak + 1:]))
    # the budget counts the first stretch too, and is spent: the run ends within one batch (16 ms) of it
    assert abs(hist.wall_time_s - budget) <= 0.016 + 1e-9
    assert hist.stretches[0]["wall_time_s"] > 0 and len(hist.epoch) > 3


def test_a_bf16_run_resumed_without_native_bf16_continues_in_fp32(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.pt"
    train_loader, val_loader = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(model(), StopsAt(train_loader, 2, 0), val_loader, path, precision="bf16")
    assert ckpt.load(path)["state"]["history"]["precision"] == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    hist = run(model(), *loaders(), path=path, resume=True, precision="auto", verbose=True)
    assert "continuing in fp32" in capsys.readouterr().out
    assert [s["precision"] for s in hist.stretches] == ["bf16", "fp32"] and hist.precision == "fp32"


def test_our_loaders_start_fresh_workers_each_epoch(fake_mnist):
    """Persistent workers would carry their RNG from epoch to epoch, which a resumed run cannot rebuild; fresh workers
    are seeded from the loader's generator, which the checkpoint holds."""
    root, _, _ = fake_mnist
    loaders_ = data.mnist_loaders(root, batch_size=4, val_size=8, num_workers=2, download=False)
    assert loaders_.train.num_workers == 2 and loaders_.train.persistent_workers is False
    assert loaders_.train.generator is not None


def test_run_info_may_not_redefine_what_fit_records(tmp_path):
    with pytest.raises(ValueError, match="run_info may not set 'model'.*'pretrained'"):
        run(model(), *loaders(), path=tmp_path / "run.pt", run_info={"model": "google/vit-base-patch16-224"})


@pytest.mark.parametrize("budget", [dict(max_steps=14), dict(max_tflop="10.5 steps")], ids=["max_steps", "max_tflop"])
def test_step_and_compute_budget_runs_resume_exactly(tmp_path, budget):
    """A run whose length is a number of steps (a cap, or the whole steps within a compute budget) stopped in its
    second epoch and resumed ends with the weights and LR sequence of the run that never stopped."""
    from vitkit import budget as budgets
    if "max_tflop" in budget:
        per_image = budgets.flops_per_image(model(), loaders()[0], torch.device("cpu"))
        budget = dict(max_tflop=per_image * 16 * 10.5 / 1e12)  # 10 whole steps of batch 16
    reference = model()
    ref_hist = run(reference, *loaders(), **budget)
    path = tmp_path / "run.pt"
    train_loader, val_loader = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(model(), StopsAt(train_loader, 2, 2), val_loader, path, **budget)
    torch.manual_seed(99)
    m = model()
    hist = run(m, *loaders(), path=path, resume=True, **budget)
    assert_same_weights(reference, m)
    assert hist.lr == ref_hist.lr and len(hist.lr) == (14 if "max_steps" in budget else 10)


# --- a run is never destroyed unasked; one process per checkpoint -----------------------------------------------

def test_a_checkpoint_is_never_replaced_unasked(tmp_path, capsys):
    path = tmp_path / "run.pt"
    run(model(), *loaders(), path=path, epochs=2)
    before = path.read_bytes()
    other = model()
    untouched = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match=r"run.pt already holds a run \(recipe 'quadrants', finished after "
                                                   r"epoch 2 of 2, saved .*\).*resume=True.*another checkpoint path.*"
                                                   r"overwrite=True"):
        run(other, *loaders(), path=path, epochs=3)  # another run, resume left at its default
    assert path.read_bytes() == before and all(torch.equal(untouched[k], v) for k, v in other.state_dict().items())
    hist = run(model(), *loaders(), path=path, epochs=1, overwrite=True, verbose=True)
    assert "will be replaced after epoch 1 (overwrite=True)" in capsys.readouterr().out and hist.epoch == [1]
    assert ckpt.load(path)["state"]["epochs"] == 1
    with pytest.raises(ValueError, match="resume=True continues the run in the checkpoint and overwrite=True"):
        run(model(), *loaders(), path=path, resume=True, overwrite=True)


def test_a_folder_given_as_checkpoint_is_refused_before_training(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("mine")
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint=.*runs' is a folder; pass a file path in it"):
        run(model(), *loaders(), path=tmp_path / "runs")
    assert (tmp_path / "runs" / "keep.txt").read_text() == "mine" and not (tmp_path / "runs.prev").exists()


def test_an_unwritable_checkpoint_folder_is_named_before_training(tmp_path):
    import os
    if os.geteuid() == 0:  # root writes anywhere: a file where the folder should be makes the same error
        (tmp_path / "ro").write_text("a file, not a folder")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint folder .*ro.*(cannot be created|cannot write)"):
        run(model(), *loaders(), path=tmp_path / "ro" / "run.pt")


def test_a_checkpoint_held_by_a_live_process_is_refused(tmp_path, holder):
    path = tmp_path / "run.pt"
    write_lock(path, pid=holder.pid)
    with pytest.raises(ckpt.CheckpointError, match=rf"is in use by process {holder.pid} on .*another checkpoint path"):
        run(model(), *loaders(), path=path)
    assert not path.exists() and path.with_name("run.pt.lock").exists()  # the holder's lock stays


def test_a_dead_holder_is_taken_over_and_the_lock_released_at_the_end(tmp_path, holder, capsys):
    path = tmp_path / "run.pt"
    holder.kill()
    holder.wait()
    write_lock(path, pid=holder.pid)
    run(model(), *loaders(), path=path, epochs=1, verbose=True)
    assert f"taking over run.pt.lock: its holder (process {holder.pid}" in capsys.readouterr().out
    assert not path.with_name("run.pt.lock").exists() and ckpt.load(path)["state"]["epoch"] == 1


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_old(tmp_path):
    path = tmp_path / "run.pt"
    write_lock(path, pid=1, host="another-host")
    with pytest.raises(ckpt.CheckpointError, match="in use by process 1 on another-host"):
        run(model(), *loaders(), path=path, epochs=1)
    write_lock(path, pid=1, host="another-host", heartbeat=time.time() - 3 * 3600)  # silent for 3 hours
    assert run(model(), *loaders(), path=path, epochs=1).epoch == [1]


def test_the_lock_is_released_when_fit_raises_and_reused_by_its_own_process(tmp_path):
    path = tmp_path / "run.pt"
    train_loader, val_loader = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(model(), StopsAt(train_loader, 2, 0), val_loader, path)
    assert not path.with_name("run.pt.lock").exists()
    write_lock(path, pid=__import__("os").getpid())  # this process's own lock, as a cell run again leaves it
    assert run(model(), *loaders(), path=path, resume=True).epoch == [1, 2, 3]


@pytest.mark.parametrize("change, message", [
    ("pixel", "data: checkpoint '"),
    ("augmentation", r"augmentation: checkpoint 'Noisy\(\)', now 'Identity\(\)'"),
    ("loader_seed", "loader_seed: checkpoint 0, now 1"),
    ("train_size", "split_sizes: checkpoint \\[96, 32\\], now \\[80, 32\\]"),
    ("warmup", "warmup_fraction: checkpoint 0.2, now 0.1"),
    ("mixup", "mixup_alpha: checkpoint 0.2, now 0.4"),
])
def test_resume_is_refused_when_the_data_or_any_training_knob_differs(tmp_path, change, message):
    path = tmp_path / "run.pt"
    run(model(), *loaders(), path=path, epochs=3)
    train_loader, val_loader = loaders(seed=1 if change == "loader_seed" else 0)
    kwargs = {"warmup": dict(warmup_fraction=0.1), "mixup": dict(mixup_alpha=0.4)}.get(change, {})
    ds = train_loader.dataset
    if change == "pixel":
        ds.images[0, 0, 0, 0] ^= 1  # one pixel of one image
    if change == "augmentation":
        ds.transform = torch.nn.Identity()
    if change == "train_size":
        ds.images, ds.labels = ds.images[:80], ds.labels[:80]
    with pytest.raises(ckpt.CheckpointError, match=f"belongs to another run; it differs in .*{message}"):
        run(model(), train_loader, val_loader, path=path, resume=True, **kwargs)


def test_a_checkpoint_from_before_the_wider_identity_resumes_naming_what_it_lacks(tmp_path, capsys):
    path = tmp_path / "run.pt"
    train_loader, val_loader = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(model(), StopsAt(train_loader, 2, 0), val_loader, path)
    saved = torch.load(path, weights_only=False)
    for key in ("data", "augmentation", "loader_seed", "split_sizes", "mixup_alpha"):  # what older versions lacked
        del saved["identity"][key]
    torch.save(saved, path)
    m = model()
    hist = run(m, *loaders(), path=path, resume=True, verbose=True)
    assert ("run.pt was written by an older version, which did not record augmentation, data, loader_seed, "
            "mixup_alpha, split_sizes; those are not checked") in capsys.readouterr().out
    assert hist.resumes == 1 and hist.epoch == [1, 2, 3]
    assert_same_weights(straight()[0], m)


def test_a_finished_run_returned_from_its_checkpoint_keeps_its_totals(tmp_path):
    path = tmp_path / "run.pt"
    first = run(model(), *loaders(), path=path)
    again = run(model(), *loaders(), path=path, resume=True)
    assert again.total_steps == first.total_steps == 18 and first.train_tflop > 0
    assert again.train_tflop == pytest.approx(first.train_tflop)
    assert again.gflop_per_image == first.gflop_per_image > 0


def test_run_info_holds_plain_values_and_an_epoch_schedule_takes_no_warmup_steps():
    with pytest.raises(TypeError, match=r"run_info\['data'\] is a PosixPath .* convert it, e.g. str\(path\)"):
        train.FitConfig(epochs=1, run_info={"data": __import__("pathlib").Path("x")})
    with pytest.raises(ValueError, match="give its warmup as warmup_fraction"):
        train.FitConfig(epochs=30, lr_update="epoch", warmup_steps=6)


def test_in_use_names_a_live_holder_only(tmp_path, holder):
    import os
    lock = ckpt.RunLock(tmp_path / "run.pt")
    assert lock.in_use() is None  # free
    (tmp_path / "run.pt.lock").write_text("")  # created, its holder not yet written: held while fresh ...
    assert lock.in_use() == {}
    os.utime(tmp_path / "run.pt.lock", (time.time() - 11, time.time() - 11))
    assert lock.in_use() is None  # ... and stale once left empty for 10 s
    write_lock(tmp_path / "run.pt", pid=holder.pid)
    assert lock.in_use()["pid"] == holder.pid
    holder.kill()
    holder.wait()
    assert lock.in_use() is None  # its holder is gone: the lock is stale, for the next run to take over


def test_the_lock_of_another_process_is_never_deleted_by_a_holder_that_lost_it(tmp_path):
    lock = ckpt.RunLock(tmp_path / "run.pt")
    lock.acquire(verbose=False)
    write_lock(tmp_path / "run.pt", pid=1, host="another-host")  # taken over meanwhile (its holder was silent)
    lock.refresh()
    lock.release()
    assert '"another-host"' in (tmp_path / "run.pt.lock").read_text()


def test_set_aside_moves_a_notebooks_earlier_checkpoints_and_leaves_others(tmp_path):
    for name in ("Nb-a-full.pt", "Nb-a-full.pt.prev", "Nb-b-full.pt", "Other-full.pt", "Nb-a-full.pt.lock"):
        (tmp_path / name).write_text(name)
    assert ckpt.set_aside(tmp_path, "Nb-") == 3
    assert sorted(p.name for p in (tmp_path / "previous").iterdir()) == ["Nb-a-full.pt", "Nb-a-full.pt.prev",
                                                                        "Nb-b-full.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["Nb-a-full.pt.lock", "Other-full.pt"]


def test_optimizer_moments_follow_their_parameters_layout_when_a_run_resumes_in_another():
    import copy
    torch.manual_seed(0)
    start, grads = torch.randn(8, 4, 3, 3), [torch.randn(8, 4, 3, 3) for _ in range(2)]

    def adam(layout):
        p = torch.nn.Parameter(torch.empty_like(start, memory_format=layout).copy_(start))
        return p, torch.optim.AdamW([p], lr=0.1, fused=True)

    p, opt = adam(torch.contiguous_format)  # a stretch in the standard layout (fp32) ...
    p.grad = grads[0]
    opt.step()
    weights, saved = p.detach().clone(), copy.deepcopy(opt.state_dict())
    p.grad = grads[1]
    opt.step()  # ... that never stopped
    q, resumed = adam(torch.channels_last)  # resumed channels-last (bf16 convolutions on a CPU)
    with torch.no_grad():
        q.copy_(weights)
    ckpt.load_optimizer(resumed, saved)
    q.grad = grads[1].contiguous(memory_format=torch.channels_last)
    resumed.step()
    torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-6, atol=1e-7)


def test_two_processes_that_find_the_same_stale_lock_do_not_both_take_it(tmp_path, holder):
    import subprocess
    import sys
    pytest.importorskip("fcntl")
    holder.kill()
    holder.wait()
    write_lock(tmp_path / "run.pt", pid=holder.pid)  # its holder is gone: stale
    # another process in the middle of taking it over: it holds the folder, then writes its own lock, alive
    other = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, json, os, socket, sys, time
fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("taking", flush=True)
time.sleep(1.0)
open({str(tmp_path / "run.pt.lock")!r}, "w").write(json.dumps({{"host": socket.gethostname(), "pid": os.getpid(),
                                                                 "heartbeat": time.time()}}))
os.close(fd)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "taking\n"
        with pytest.raises(ckpt.CheckpointError, match=f"in use by process {other.pid} "):
            ckpt.RunLock(tmp_path / "run.pt").acquire(verbose=False)  # waits for it, then finds its fresh lock
    finally:
        other.kill()
        other.wait()
