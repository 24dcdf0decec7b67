"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): three fits in one process group,
writing what each ended with to ``OUT/<name>.pt`` from rank 0.

* ``straight``: 3 epochs of SGD on a sequential loader (global batch 16, 8 per process), no augmentation, mixing or dropout;
* ``stopped``/``resumed``: the same run stopped by Ctrl-C at the first batch of epoch 2 on both processes, then
  resumed from its checkpoint;
* ``budget``: a 1-second time budget, which rank 0's clock ends for both processes.
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (conftest's helpers)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
from conftest import quadrant_data, tiny_vit  # noqa: E402
from vitkit import runtime, train  # noqa: E402

torch.set_num_threads(1)
OUT = Path(sys.argv[1])
# SGD: Adam divides by the root of tiny second moments, which turns float noise in gradients that are exactly zero
# in exact arithmetic (the key bias: softmax ignores it) into full-size steps, so only SGD compares within tolerance.
SETTINGS = dict(epochs=3, optimizer="sgd", lr=0.05, device="cpu", precision="fp32", compile=False, progress=False, verbose=False)


class StopsInEpoch2(torch.utils.data.Dataset):
    """quadrant data whose first read of epoch 2 raises KeyboardInterrupt (each process reads 32 images an epoch)."""

    def __init__(self, base, stop_after):
        self.base, self.reads, self.stop_after, self.source = base, 0, stop_after, base.source
        self.images, self.labels, self.transform = base.images, base.labels, base.transform  # the same data

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.stop_after + 1:
            raise KeyboardInterrupt
        return self.base[i]


def loader(ds):
    return torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)


def fitted(name, ds, **kwargs):
    runtime.set_seed(0)
    model = tiny_vit()
    hist = train.fit(model, loader(ds), **{**SETTINGS, **kwargs})
    if dist.get_rank() == 0:
        torch.save({"weights": model.state_dict(), "history": hist.to_dict()}, OUT / f"{name}.pt")


fitted("straight", quadrant_data(64, 0))
checkpoint = OUT / "run.pt"
try:
    fitted("stopped", StopsInEpoch2(quadrant_data(64, 0), stop_after=32), checkpoint=checkpoint)
except KeyboardInterrupt:
    pass
dist.barrier()
fitted("resumed", quadrant_data(64, 0), checkpoint=checkpoint, resume=True)
fitted("budget", quadrant_data(64, 0), epochs=1000, time_budget_s=1.0)
dist.destroy_process_group()
