"""The pieces of one training step, shared by :func:`vitkit.train.fit` and the benchmark: the model's logits (ours or
HF's) and the attention path they took, the optimizer with its parameter groups, MixUp/CutMix with their loss, and
the weight average."""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import vit_helpers as vh


__all__ = ["model_logits", "attention_report", "num_classes", "make_optimizer", "param_groups", "mix", "mixed_loss",
           "WeightAverage"]


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ours or of a HF model (whose output object holds them as ``.logits``)."""
    out = model(x)
    return out.logits if hasattr(out, "logits") else out  # HF models return an output object


def attention_report(model: nn.Module) -> str | None:
    """The attention path our model took in its last forward pass, as its Attention modules recorded it; None for a
    model without attention (a CNN)."""
    if not any("attention" in type(m).__name__.lower() for m in model.modules()):
        return None
    paths = sorted({m.last_path for m in model.modules() if isinstance(m, vh.Attention) and m.last_path})
    if not isinstance(getattr(model, "config", None), vh.ViTConfig) or not paths:
        return "the model's own"
    chosen = "auto" if model.config.fused_attn is None else "forced"
    return f"{' + '.join(paths)} ({chosen})"


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
    # One fused kernel for the whole update: on a 2-core CPU AdamW's step took 1.5 ms instead of 11.6 ms (foreach)
    # for 2.6 M parameters; the same maths. CUDA and CPU support it; elsewhere (MPS) the default implementation.
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; use 'adamw', 'adam' or 'sgd'.")


def mix(x: torch.Tensor, y: torch.Tensor, mixup_alpha: float, cutmix_alpha: float
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """MixUp or CutMix (chosen with equal odds when both are on): ``(x, y_a, y_b, lam)``, the loss being
    ``lam * CE(y_a) + (1 - lam) * CE(y_b)``. With both off: the batch unchanged, ``y_b = y_a``, ``lam = 1``."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, y, y, 1.0
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


def mixed_loss(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against the mixed targets of :func:`mix` (plain cross-entropy when ``lam == 1``)."""
    loss = F.cross_entropy(logits, y_a, label_smoothing=label_smoothing)
    if lam == 1.0:
        return loss
    return lam * loss + (1 - lam) * F.cross_entropy(logits, y_b, label_smoothing=label_smoothing)


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging, as in airbench's and timm's EMA): after
    optimizer step ``t`` (1-based), every floating-point parameter ``a <- a + (1 - d_t) (w - a)`` with
    ``d_t = min(decay, (1 + t) / (10 + t))``, so that the first updates follow the weights closely instead of
    averaging in the random initialisation (TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` rule); buffers
    (BatchNorm statistics, fixed embeddings) are copied. ``model`` holds the average, in eval mode."""

    FLOPS_PER_VALUE = 3  # a lerp: a subtraction, a multiplication and an addition per averaged value

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, t: int) -> float:
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (``model`` is the trained one, same architecture)."""
        self.updates += 1
        averaged = [p for p in self.model.parameters() if p.is_floating_point()]
        current = [p.detach() for p in model.parameters() if p.is_floating_point()]
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(self.updates))
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def flops(self) -> int:
        """FLOPs of one update: what a compute budget counts for it."""
        return self.FLOPS_PER_VALUE * sum(p.numel() for p in self.model.parameters() if p.is_floating_point())
