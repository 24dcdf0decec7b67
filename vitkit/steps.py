"""The pieces of one training step, shared by :func:`vitkit.train.fit` and the benchmark: the model's logits (ours or
HF's), the optimizer with its parameter groups, MixUp/CutMix, the batch loss, and the pace probe a time budget plans
with."""
from __future__ import annotations

import copy
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.runtime import autocast

__all__ = ["model_logits", "num_classes", "make_optimizer", "param_groups", "batch_loss", "seconds_per_batch"]


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ours or of a HF model (whose output object holds them as ``.logits``)."""
    out = model(x)
    return out.logits if hasattr(out, "logits") else out  # HF models return an output object



def num_classes(model: nn.Module) -> int | None:
    """The size of the model's output: ours (``config.num_classes``), HF's (``config.num_labels``), else None."""
    config = getattr(model, "config", None)
    for name in ("num_classes", "num_labels"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return getattr(model, "num_classes", None)  # timm


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only, not on biases, norms, CLS token or position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "cls_token" in name or "pos_embed" in name or "position_embeddings" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    fused = {"fused": True} if device.type == "cuda" else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; use 'adamw', 'adam' or 'sgd'.")


def _mix(x: torch.Tensor, y: torch.Tensor, mixup_alpha: float, cutmix_alpha: float):
    """MixUp or CutMix (chosen with equal odds when both are on): returns x, y, y[perm], lam."""
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or random.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = random.randrange(H), random.randrange(W)
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually kept
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam


def batch_loss(model, x, y, device, precision, label_smoothing, mixup_alpha, cutmix_alpha):
    """Forward one batch, with MixUp/CutMix when on; returns ``(loss, fp32 logits)``."""
    mixing = mixup_alpha > 0 or cutmix_alpha > 0
    if mixing:
        x, y_a, y_b, lam = _mix(x, y, mixup_alpha, cutmix_alpha)
    with autocast(device, precision):
        logits = model_logits(model, x).float()
    if not mixing:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    loss = (lam * F.cross_entropy(logits, y_a, label_smoothing=label_smoothing)
            + (1 - lam) * F.cross_entropy(logits, y_b, label_smoothing=label_smoothing))
    return loss, logits


def seconds_per_batch(model: nn.Module, loader, make_optimizer, device, precision, steps: int = 8) -> float:
    """Time a few training steps, data loading included, on a throw-away copy of the model (for
    ``time_budget_s``). Eager mode: with ``compile`` the run is then somewhat faster than planned."""
    probe = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(probe)
    times, it = [], iter(loader)
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            loss = F.cross_entropy(model_logits(probe, x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del probe, opt
    times = times[2:] or times  # drop warm-up steps
    return float(np.median(times))
