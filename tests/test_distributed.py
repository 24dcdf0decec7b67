"""fit under torchrun: 2 CPU processes with the gloo backend train what one process trains with the same global
batch, only rank 0 writes, a stopped 2-process run resumes exactly, and a time budget ends both processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import loader, quadrant_data, tiny_vit
from vitkit import distributed, runtime, train

HELPER = Path(__file__).parent / "helpers" / "ddp_fit.py"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", str(HELPER), str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_train_what_one_trains_with_the_same_global_batch(two_processes):
    runtime.set_seed(0)
    model = tiny_vit()
    hist = train.fit(model, loader(quadrant_data(64, 0), batch_size=16), epochs=3, optimizer="sgd", lr=0.05,
                     device="cpu", precision="fp32", compile=False, progress=False, verbose=False)
    ddp = torch.load(two_processes / "straight.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert ddp["history"]["world_size"] == 2 and len(ddp["history"]["lr"]) == len(hist.lr) == 12
    assert ddp["history"]["lr"] == pytest.approx(hist.lr)
    assert ddp["history"]["train_loss"] == pytest.approx(hist.train_loss, rel=1e-5)  # summed over both processes


@pytest.mark.slow
def test_a_stopped_two_process_run_resumes_exactly(two_processes):
    straight, resumed = (torch.load(two_processes / f"{n}.pt") for n in ("straight", "resumed"))
    for name, value in straight["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name
    assert resumed["history"]["resumes"] == 1 and resumed["history"]["lr"] == straight["history"]["lr"]
    assert not (two_processes / "stopped.pt").exists()  # stopped before it could write


@pytest.mark.slow
def test_a_time_budget_ends_both_processes(two_processes):
    hist = torch.load(two_processes / "budget.pt")["history"]
    assert 0.5 <= hist["wall_time_s"] <= 3.0 and hist["total_steps"] == len(hist["lr"]) > 0


def test_without_torchrun_there_is_one_process():
    d = distributed.setup(torch.device("cpu"))
    assert (d.rank, d.world, d.main) == (0, 1, True)
    ld = loader(quadrant_data(8, 0))
    assert distributed.shard(ld, d) is ld and distributed.all_sum([1.0, 2.0], d) == [1.0, 2.0]


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(ValueError, match="multiple of 2; got 15"):
        distributed.shard(loader(quadrant_data(30, 0), batch_size=15), distributed.Dist(0, 2, 0))


def test_a_sampler_that_torchrun_would_replace_is_refused():
    ds = quadrant_data(32, 0)
    subset = torch.utils.data.DataLoader(ds, batch_size=8, sampler=torch.utils.data.SubsetRandomSampler(range(16)))
    with pytest.raises(ValueError, match="replaces the loader's SubsetRandomSampler; pass a loader over the training"):
        distributed.shard(subset, distributed.Dist(0, 2, 0))
