"""Explanations for any ViT (ours, HuggingFace's, timm's): the attention maps of one forward pass, class-specific
and class-agnostic explainers behind :func:`explain`, the perturbation test of how faithful a map is, the share of a
map on a mask, and the top-k predictions.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vit_helpers import VisionTransformer, attention_rollout, cls_attention_map, token_map
from vitkit.checks import check_labels, check_number
from vitkit.steps import model_logits, num_classes

__all__ = ["ModelAttentions", "forward_with_attentions", "explain_random", "explain_raw_attention", "explain_rollout",
           "explain_gradient_rollout", "explain_input_x_gradient", "attentions_and_gradients",
           "gradient_rollout_matrix", "EXPLAINERS", "explain", "remove_patches",
           "perturbation_curve", "mass_on_mask", "top_k"]


class ModelAttentions(NamedTuple):
    """One forward pass: ``logits (B, K)``, ``attentions`` (depth x ``(B, heads, T, T)``, in the autograd graph
    unless under no_grad), ``num_prefix_tokens`` (CLS, distillation, registers) and the patch ``grid_size``."""
    logits: torch.Tensor
    attentions: tuple[torch.Tensor, ...]
    num_prefix_tokens: int
    grid_size: tuple[int, int]


def _is_timm_vit(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "patch_embed") and hasattr(model, "blocks")


def _timm_explicit_attention(module: nn.Module, store: list, x: torch.Tensor, attn_mask=None, is_causal=False):
    """timm's ``Attention.forward`` (timm 1.0) on the explicit path, storing the probabilities in ``store``."""
    if attn_mask is not None or is_causal:
        raise ValueError("attention maps of masked or causal timm attention are not supported.")
    B, N, _ = x.shape
    gate = module.gate(x).sigmoid() if getattr(module, "gate", None) is not None else None
    qkv = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim)  # (B, N, 3, h, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d)
    q, k = module.q_norm(q), module.k_norm(k)
    attn = ((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
    store.append(attn)
    out = (module.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, -1)  # (B, N, h * d)
    out = module.norm(out) if hasattr(module, "norm") else out
    out = out * gate if gate is not None else out
    return module.proj_drop(module.proj(out))


def _timm_attentions(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a timm ViT with every attention module temporarily on the explicit path (fused or not), recording
    the maps. Instance ``forward`` attributes are set for the call and deleted afterwards: no hook is left."""
    modules = [m for blk in model.blocks for m in [getattr(blk, "attn", None)]
               if m is not None and all(hasattr(m, a) for a in ("qkv", "num_heads", "head_dim", "scale", "proj"))]
    if len(modules) != len(model.blocks):
        raise TypeError(f"{type(model).__name__}: not every block has a timm Attention module (qkv, num_heads, "
                        "head_dim, scale, proj); attention maps of this timm model are not supported.")
    store: list[torch.Tensor] = []
    try:
        for m in modules:
            m.forward = (lambda m: lambda *a, **k: _timm_explicit_attention(m, store, *a, **k))(m)
        logits = model(x)
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)
    return logits, store


def forward_with_attentions(model: nn.Module, x: torch.Tensor) -> ModelAttentions:
    """Logits and attention probabilities of ours, a HF ViT/DeiT (loaded with ``attn_implementation="eager"``)
    or a timm ViT/DeiT (fused attention or not), with the model's prefix-token count and patch grid."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be an image batch (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
    H, W = x.shape[-2:]
    if isinstance(model, VisionTransformer):
        logits, attentions = model(x, return_attentions=True)
        p = model.config.patch_size
        return ModelAttentions(logits, tuple(attentions), 1, (H // p, W // p))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None) in ("vit", "deit"):
        implementation = getattr(config, "_attn_implementation", "eager")
        if implementation != "eager":
            raise ValueError(f"this HF model runs attn_implementation={implementation!r}, which returns no attention "
                             "maps; load it with from_pretrained(..., attn_implementation='eager').")
        out = model(pixel_values=x, output_attentions=True)
        patch = config.patch_size
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        prefix = 2 if config.model_type == "deit" else 1  # DeiT: CLS + distillation token
        return ModelAttentions(out.logits, tuple(out.attentions), prefix, (H // ph, W // pw))
    if _is_timm_vit(model):
        logits, attentions = _timm_attentions(model, x)
        ph, pw = model.patch_embed.patch_size
        return ModelAttentions(logits, tuple(attentions), int(model.num_prefix_tokens), (H // ph, W // pw))
    raise TypeError(f"forward_with_attentions supports vit_helpers.VisionTransformer, HF ViT/DeiT image classifiers "
                    f"and timm ViT/DeiT models; got {type(model).__name__}.")


def _targets(logits: torch.Tensor, target) -> torch.Tensor:
    """``target`` as a (B,) class-index tensor: None -> each image's predicted class."""
    B, K = logits.shape
    if target is None:
        return logits.argmax(-1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.numel() == 1:
        target = target.expand(B)
    if target.shape != (B,) or target.min() < 0 or target.max() >= K:
        raise ValueError(f"target must be None, a class index in [0, {K - 1}] or one index per image ({B}), got "
                         f"{target.tolist()}.")
    return target


def _explain_setup(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return x.to(next(model.parameters()).device)


def _in_eval_mode(explainer):
    """Run ``explainer`` on the deployed function (eval mode: no dropout, fixed BatchNorm statistics), then put
    the model back in the mode it was in, so that explaining in the middle of training changes nothing."""
    @functools.wraps(explainer)
    def wrapper(model, *args, **kwargs):
        was_training = getattr(model, "training", False)
        if isinstance(model, nn.Module):
            model.eval()
        try:
            return explainer(model, *args, **kwargs)
        finally:
            if was_training:
                model.train()
    return wrapper


@_in_eval_mode
def explain_random(model: nn.Module, x: torch.Tensor, target=None, seed: int = 0) -> torch.Tensor:
    """Uniform random relevance per patch: the baseline every other map must beat."""
    x = _explain_setup(model, x)
    with torch.no_grad():
        grid = forward_with_attentions(model, x[:1]).grid_size
    g = torch.Generator().manual_seed(seed)
    return torch.rand(len(x), *grid, generator=g)


@_in_eval_mode
def explain_raw_attention(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """The last layer's CLS attention to the patches, heads averaged (class-agnostic: ``target`` is ignored)."""
    x = _explain_setup(model, x)
    with torch.no_grad():
        out = forward_with_attentions(model, x)
    return cls_attention_map(out.attentions, grid_size=out.grid_size, num_prefix_tokens=out.num_prefix_tokens).cpu()


@_in_eval_mode
def explain_rollout(model: nn.Module, x: torch.Tensor, target=None, head_fusion: str = "mean",
                    discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), class-agnostic: ``target`` is ignored."""
    x = _explain_setup(model, x)
    with torch.no_grad():
        out = forward_with_attentions(model, x)
    return attention_rollout(out.attentions, head_fusion, discard_ratio, grid_size=out.grid_size,
                             num_prefix_tokens=out.num_prefix_tokens).cpu()


@_in_eval_mode
def attentions_and_gradients(model: nn.Module, x: torch.Tensor, target=None
                             ) -> tuple[ModelAttentions, tuple[torch.Tensor, ...]]:
    """One forward pass in eval mode with attentions and the gradients of the target logit (None: each image's
    prediction) with respect to every layer's attention probabilities."""
    with torch.enable_grad():
        out = forward_with_attentions(model, x)
        t = _targets(out.logits, target)
        score = out.logits.gather(1, t[:, None]).sum()  # images do not interact: one backward for the batch
        grads = torch.autograd.grad(score, out.attentions)
    return out, grads


def gradient_rollout_matrix(attentions: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s relevance ``R (B, T, T)``: per layer ``A_bar = mean_heads((grad * A).clamp(min=0))``,
    accumulated from the identity as ``R <- R + A_bar @ R``. Row 0 is the CLS token's relevance per token."""
    B, _, T, _ = attentions[0].shape
    R = torch.eye(T, device=attentions[0].device).expand(B, T, T)
    for attn, grad in zip(attentions, grads):
        a_bar = (grad.float() * attn.detach().float()).clamp(min=0).mean(dim=1)  # (B, T, T)
        R = R + a_bar @ R
    return R


@_in_eval_mode
def explain_gradient_rollout(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """Class-specific gradient-weighted rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
    Explainability"): the CLS row of :func:`gradient_rollout_matrix` over the patches. ``target``: the class to
    explain (None: each image's prediction)."""
    out, grads = attentions_and_gradients(model, _explain_setup(model, x), target)
    R = gradient_rollout_matrix(out.attentions, grads)
    return token_map(R[:, 0], out.num_prefix_tokens, out.grid_size).cpu()


@_in_eval_mode
def explain_input_x_gradient(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """Input x gradient of the target logit, summed over channels and over each patch's pixels (signed)."""
    x = _explain_setup(model, x).detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward_with_attentions(model, x)
        t = _targets(out.logits, target)
        (grad,) = torch.autograd.grad(out.logits.gather(1, t[:, None]).sum(), x)
    pixel = (grad * x).detach().sum(1, keepdim=True)  # (B, 1, H, W)
    h, w = out.grid_size
    return F.adaptive_avg_pool2d(pixel, (h, w))[:, 0].cpu() * (x.shape[-2] // h) * (x.shape[-1] // w)


EXPLAINERS = {
    "random": explain_random,
    "raw attention": explain_raw_attention,
    "rollout": explain_rollout,
    "gradient rollout": explain_gradient_rollout,
    "input x gradient": explain_input_x_gradient,
}


def explain(method: str, model: nn.Module, x: torch.Tensor, target=None, batch_size: int = 256) -> torch.Tensor:
    """``EXPLAINERS[method](model, x, target)`` over ``x`` in batches (gradients of big batches need memory)."""
    if method not in EXPLAINERS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, EXPLAINERS))}.")
    check_number("batch_size", batch_size, low=1, integer=True)
    targets = _batch_targets(model, x, target)
    extra = (lambda i: {"seed": i}) if method == "random" else (lambda i: {})  # new random maps per batch
    return torch.cat([EXPLAINERS[method](model, x[i:i + batch_size],
                                         None if targets is None else targets[i:i + batch_size], **extra(i))
                      for i in range(0, len(x), batch_size)])


def _batch_targets(model: nn.Module, x, target) -> torch.Tensor | None:
    """``target`` as one class index per image (None: each image's predicted class), checked against the batch and
    the model's classes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a batch tensor (B, C, H, W), got {type(x).__name__}; stack a list of images with "
                        "torch.stack(images).")
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (B, C, H, W), got shape {tuple(x.shape)}.")
    if target is None:
        return None
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target)):
        raise TypeError(f"target must be class indices (an int, or one per image), got {target!r}; map a class name to "
                        "its index first, e.g. class_names.index('cat').")
    try:
        targets = torch.as_tensor(target).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"target must be an int or a sequence of ints, got {type(target).__name__}.") from None
    if len(targets) not in (1, len(x)):
        raise ValueError(f"target has {len(targets)} entries for a batch of {len(x)} images; give one class index, or "
                         "one per image.")
    targets = targets.expand(len(x))
    check_labels(targets, num_classes(model))
    return targets


def remove_patches(x: torch.Tensor, maps: torch.Tensor, fraction: float, most_relevant_first: bool = True,
                   fill: float = 0.0) -> torch.Tensor:
    """``x`` with the ``fraction`` of patches ranked highest (or lowest) by ``maps (B, h, w)`` set to ``fill``
    (0 is the data set's mean colour for normalised inputs). Ties keep the patch order (stable sort)."""
    check_number("fraction", fraction, low=0, high=1, hint="It is the share of the patches to remove.")
    B, _, H, W = x.shape
    h, w = maps.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"maps of {h}x{w} patches do not tile {H}x{W} images.")
    k = int(round(fraction * h * w))
    order = maps.reshape(B, -1).float().argsort(dim=1, descending=most_relevant_first, stable=True)[:, :k]
    keep = torch.ones(B, h * w, device=x.device)
    keep.scatter_(1, order.to(x.device), 0.0)
    keep = keep.reshape(B, 1, h, w).repeat_interleave(H // h, 2).repeat_interleave(W // w, 3)  # -> (B, 1, H, W)
    return x * keep + fill * (1 - keep)


@_in_eval_mode
def perturbation_curve(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor, *,
                       most_relevant_first: bool = True, fractions: Sequence[float] = tuple(i / 10 for i in range(10)),
                       fill: float = 0.0, batch_size: int = 256) -> dict[str, Any]:
    """Positive (``most_relevant_first=True``) or negative perturbation test (Chefer et al. 2021): remove the
    patches a map ranks highest (lowest) first, in steps of ``fractions`` of the patches, and re-classify.
    Returns ``{"fractions", "accuracy", "auc", "per_image_auc"}``; ``auc`` is the area under accuracy (in %) over
    the removed fraction (trapezoid), the mean of ``per_image_auc`` (a ``(B,)`` tensor: each image's own area under
    its 0/1 correctness, for a bootstrap over images, :func:`vitkit.stats.bootstrap_difference`). Positive
    perturbation: lower is more faithful; negative: higher is."""
    fr = list(fractions)  # once: a generator is used up by the first pass over it
    if len(fr) < 2 or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1 for f in fr) \
            or fr != sorted(fr):
        raise ValueError(f"fractions must be at least two increasing shares of the patches in [0, 1] (the area under "
                         f"the curve needs two points), got {fr!r}.")
    if maps.shape[0] != x.shape[0] or labels.shape[0] != x.shape[0]:
        raise ValueError(f"x, labels and maps need the same batch size, got {x.shape[0]}, {labels.shape[0]} and "
                         f"{maps.shape[0]}.")
    check_labels(labels.cpu(), num_classes(model))
    x = _explain_setup(model, x)
    correct = []  # per fraction, (B,) 0/1
    with torch.no_grad():
        for f in fr:
            hits = []
            for i in range(0, len(x), batch_size):
                xb = remove_patches(x[i:i + batch_size], maps[i:i + batch_size], f, most_relevant_first, fill)
                hits.append(model_logits(model, xb).argmax(-1).cpu() == labels[i:i + batch_size].cpu())
            correct.append(torch.cat(hits).double())
    widths = torch.tensor([b - a for a, b in zip(fr, fr[1:])], dtype=torch.float64)
    per_image = 50 * ((torch.stack(correct[:-1]) + torch.stack(correct[1:])) * widths[:, None]).sum(0)  # trapezoid, %
    return {"fractions": fr, "accuracy": [c.mean().item() for c in correct], "auc": per_image.mean().item(),
            "per_image_auc": per_image}


def mass_on_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of a map's positive mass that falls on ``masks`` (B, H, W) of 0/1 (e.g. a digit's
    strokes), with the map upsampled to pixels (nearest). Uniform maps score the mask's area fraction."""
    if maps.ndim != 3 or masks.ndim != 3 or len(maps) != len(masks):
        raise ValueError(f"maps (B, h, w) and masks (B, H, W) need one entry per image each, got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}.")
    B, H, W = masks.shape
    m = maps.float().clamp(min=0)
    up = F.interpolate(m[:, None], size=(H, W), mode="nearest")[:, 0]  # (B, H, W)
    total = up.sum(dim=(1, 2)).clamp(min=1e-12)
    return (up * masks.float()).sum(dim=(1, 2)) / total


def top_k(logits: torch.Tensor, id2label: dict[int, str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most probable ``(label, probability)`` pairs."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"logits must be a (B, num_classes) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}.")
    check_number("k", k, low=1, integer=True)
    missing = [i for i in range(logits.shape[-1]) if i not in id2label]
    if missing:
        raise ValueError(f"id2label has no name for class(es) {missing[:5]} of {logits.shape[-1]}; pass the "
                         "model's config.id2label.")
    probs = logits.detach().float().softmax(-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(id2label[int(i)], float(v)) for v, i in zip(vs, idx)] for vs, idx in zip(values, indices)]
