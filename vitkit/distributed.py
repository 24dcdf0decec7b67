"""Many processes through the standard engine: ``torchrun --nproc_per_node N`` starts N copies of a script, and
:func:`vitkit.train.fit` then trains with ``DistributedDataParallel``. Without torchrun everything here is a no-op
for one process.

* :func:`setup` joins the process group torchrun describes (``nccl`` on GPUs, ``gloo`` on CPUs).
* :func:`shard` rebuilds a loader with a ``DistributedSampler``: each process reads 1/N of every global batch, so a
  recipe's batch size stays the global batch.
* Only rank 0 prints, writes checkpoints, records and TensorBoard files; rank 0's clock decides a time budget's
  progress and stop, broadcast to all (:func:`broadcast`), so that no process waits for a step the others skip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup", "shard", "broadcast", "all_sum", "gather"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0


def setup(device: torch.device) -> Dist:
    """The process group torchrun set up in the environment (joined here on first use), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(loader, d: Dist):
    """``loader`` over this process's share of the data: a ``DistributedSampler`` (shuffled if the loader was, with
    the seed of the loader's own generator, so that the order is the run's; it then depends on the epoch, see
    ``set_epoch``) and ``batch_size / world`` per process."""
    if d.world == 1:
        return loader
    generator = getattr(loader, "generator", None)
    seed = int(generator.initial_seed()) % 2 ** 31 if generator is not None else 0
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    if type(loader.sampler) not in (RandomSampler, SequentialSampler):
        raise ValueError(f"under torchrun fit shards the data with a DistributedSampler, which replaces the loader's "
                         f"{type(loader.sampler).__name__}; pass a loader over the training set itself with "
                         "shuffle=True (or False), e.g. a Subset of the data set instead of a SubsetRandomSampler.")
    if loader.batch_size is None or loader.batch_size % d.world:
        raise ValueError(f"under torchrun the loader's batch_size is the global batch, split over {d.world} "
                         f"processes, so it must be a multiple of {d.world}; got {loader.batch_size}.")
    sampler = DistributedSampler(loader.dataset, num_replicas=d.world, rank=d.rank,
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                                 drop_last=loader.drop_last)
    workers = dict(persistent_workers=loader.persistent_workers, prefetch_factor=loader.prefetch_factor,
                   worker_init_fn=loader.worker_init_fn) if loader.num_workers else {}
    return DataLoader(loader.dataset, batch_size=loader.batch_size // d.world, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, generator=loader.generator, **workers)


def _tensor(values: list[float]) -> torch.Tensor:
    """A float64 tensor where the backend communicates: on the GPU for nccl, else on the CPU."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor(values, dtype=torch.float64, device=device)


def broadcast(values: list[float], d: Dist) -> list[float]:
    """Rank 0's ``values`` on every process."""
    if d.world == 1:
        return values
    t = _tensor(values)
    dist.broadcast(t, src=0)
    return t.tolist()


def all_sum(values: list[float], d: Dist) -> list[float]:
    """The sum of every process's ``values``."""
    if d.world == 1:
        return values
    t = _tensor(values)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
