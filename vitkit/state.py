"""The state of a training run: :class:`History` (what a run reports) and :class:`RunState` (everything the rest
of a run depends on besides the model, optimizer and gradient scaler: counters, the plan, the best weights, the
History and the random-number states). A checkpoint is these, saved with :meth:`RunState.to_dict`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

__all__ = ["History", "RunState"]


@dataclass
class History:
    """Per-epoch curves of a :func:`vitkit.train.fit` run (train metrics are running averages over the epoch, in
    train mode) and what ran them."""
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)  # training, validation and checkpoint of each epoch
    lr: list[float] = field(default_factory=list)  # the learning rate of every optimizer step
    best_epoch: int | None = None
    best_val_acc: float | None = None
    total_steps: int = 0  # optimizer steps run (planned, until the run ends)
    wall_time_s: float = 0.0
    train_images_per_s: float = 0.0  # training time only, validation excluded
    device: str = ""
    precision: str = ""  # what precision="auto" resolved to
    attention: str | None = ""  # the attention path our model took in training (None: a model without attention)
    compiled: bool = False  # torch.compile used
    channels_last: bool = False  # convolutions trained in channels-last layout (runtime.channels_last_convolutions)
    world_size: int = 1  # processes under torchrun (DistributedDataParallel)
    gflop_per_image: float = 0.0  # forward + backward of one training image (torch.utils.flop_counter)
    train_images: int = 0  # training images processed (every process together), the images seen
    train_tflop: float = 0.0  # training compute: gflop_per_image x train_images (+ any per-step work, e.g. an EMA)
    resumes: int = 0  # how often the run was resumed from its checkpoint
    stretches: list[dict] = field(default_factory=list)  # per stretch between resumes: epochs, machine, precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "History":
        """A History from :meth:`to_dict` (or a record's ``history``); keys this version does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class RunState:
    """Where a run stands: after ``epoch`` complete epochs and ``step`` optimizer steps."""
    total_steps: int  # the planned optimizer steps (a time-budget run: the cap; the budget ends it earlier)
    epochs: int  # the planned epochs
    epoch: int = 0
    step: int = 0
    images: int = 0  # training images processed
    train_s: float = 0.0  # training time (validation and checkpoints excluded)
    elapsed_s: float = 0.0  # wall time of the stretches before this one
    finished: bool = False
    best_state: dict[str, torch.Tensor] | None = None  # a CPU copy of the best validation epoch's weights
    average_state: dict[str, torch.Tensor] | None = None  # a CPU copy of the weight average (ema_decay), if any
    end_reserve_s: float = 0.0  # a time budget keeps this much for the last validation and checkpoint
    clock_start_s: float | None = None  # a time budget's schedule clock starts after the first optimizer step
    history: History = field(default_factory=History)
    rng: list[dict[str, Any]] = field(default_factory=list)  # per process: torch, CUDA, Python, NumPy, loader

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["history"] = self.history.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunState":
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in values.items() if k in known and k != "history"})
        state.history = History.from_dict(values.get("history", {}))
        return state
