"""vit_helpers: a Vision Transformer you can read, train, compare and look inside.

One self-contained file behind the notebooks of this repository. It holds

* a ViT (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words", arXiv:2010.11929) that computes
  the same function as HuggingFace ``transformers``' ``ViTForImageClassification``;
* the linear-warmup + cosine learning-rate schedule;
* attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers",
  arXiv:2005.00928), gradient-weighted rollout (Chefer, Gur & Wolf 2021) and baselines, for our, HF's and
  timm's ViTs, with a perturbation test of how faithful each map is;
* weight conversion to and from HuggingFace (``from_hf`` / ``to_hf``);
* CIFAR-10 and MNIST loaders, a training loop, run records and plotting helpers.

Only torch, torchvision, numpy and the standard library are imported at module level; transformers,
matplotlib, PIL and tqdm are imported inside the functions that use them. Copy this file into your own
project or notebook freely (MIT licence, see the repository's README).

Sections, in reading order: config, blocks, model, schedule, rollout, explanations (any ViT's attentions,
class-specific maps, faithfulness), HF interop, data, training, run records, plots.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import platform
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    # config, model
    "ViTConfig", "VisionTransformer", "count_parameters", "use_fused_attention", "save_model", "load_model",
    # schedule
    "warmup_cosine_schedule",
    # rollout
    "rollout_matrix", "attention_rollout", "cls_attention_map",
    # explanations
    "ModelAttentions", "forward_with_attentions", "explain_random", "explain_raw_attention", "explain_rollout",
    "explain_gradient_rollout", "explain_input_x_gradient", "EXPLAINERS", "explain", "remove_patches", "perturbation_curve",
    "mass_on_mask",
    # HF interop
    "from_hf", "to_hf",
    # data
    "DataNotFoundError", "Loaders", "InMemoryImages", "cifar10_loaders", "mnist_loaders", "train_eval_loader",
    "load_cifar10", "load_mnist", "load_image_folder", "load_image", "default_data_root",
    "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD",
    # training
    "History", "fit", "evaluate", "TrainingDivergedError", "set_seed", "get_device", "resolve_precision", "cpu_has_native_bf16", "RECIPES", "get_recipe", "FINETUNE_RECIPE",
    "finetune_recipe", "top_k",
    # run records
    "hardware_info", "save_results",
    # plots
    "denormalize", "upsample_masks", "plot_attention_maps", "plot_mask_grid", "plot_history", "plot_images",
    "plot_patch_grid", "position_similarity", "plot_position_similarity", "confusion_matrix", "plot_confusion_matrix",
]


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViTConfig:
    """Hyperparameters of a :class:`VisionTransformer` (the names HF uses are in brackets)."""

    image_size: int  # side of the square input image [image_size]
    patch_size: int  # side of a square patch [patch_size]
    in_channels: int  # 3 for RGB, 1 for greyscale [num_channels]
    num_classes: int  # size of the classifier head [num_labels]
    dim: int  # token width [hidden_size]
    depth: int  # number of encoder blocks [num_hidden_layers]
    heads: int  # attention heads per block [num_attention_heads]
    mlp_dim: int  # hidden width of each MLP [intermediate_size]
    dropout: float = 0.0  # after embeddings, attention output and MLP [hidden_dropout_prob]
    attn_dropout: float = 0.0  # on the attention probabilities [attention_probs_dropout_prob]
    qkv_bias: bool = True  # bias on the query/key/value projections [qkv_bias]
    layer_norm_eps: float = 1e-12  # HF's default [layer_norm_eps]
    # Attention kernel, not maths: None picks per call (F.scaled_dot_product_attention, except on a CPU in
    # bf16/fp16, where PyTorch's CPU SDPA kernel is slower than the explicit softmax(QK^T)V); True forces
    # SDPA, False the explicit path. Both compute the same function (tests/test_model.py).
    fused_attn: bool | None = None
    # Priors for small data sets (the defaults are the paper's ViT, which is what HF computes). stem: "patch"
    # (linear patch embedding), "conv" (Xiao et al. 2021, "Early Convolutions Help Transformers See Better":
    # stacked stride-2 3x3 convolutions, same token grid), "cct" (Hassani et al. 2021, Compact Convolutional
    # Transformers: stride-1 3x3 convolutions, each followed by a stride-2 max-pool, same token grid) or "spt"
    # (Lee et al. 2021, Shifted Patch Tokenization: the image and four copies shifted diagonally by half a
    # patch, patchified together).
    stem: str = "patch"
    # Locality Self-Attention (Lee et al. 2021): a learned softmax temperature and no attention to oneself.
    lsa: bool = False
    # "learned" position embeddings (the paper) or fixed 2-D "sincos" ones (MoCo v3 / MAE); CLS gets zeros.
    pos_embed: str = "learned"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "heads",
                     "mlp_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}; choose a patch "
                f"size that divides the image size (e.g. {_divisors_hint(self.image_size)}) or resize the images.")
        if self.dim % self.heads:
            raise ValueError(f"heads={self.heads} does not divide dim={self.dim}; choose heads among "
                             f"{_divisors_hint(self.dim)} or change dim.")
        for name in ("dropout", "attn_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}.")
        if self.stem not in ("patch", "conv", "cct", "spt"):
            raise ValueError(f"stem must be 'patch' (linear patch embedding), 'conv' (convolutional stem), 'cct' "
                             f"(convolutional tokenizer) or 'spt' (shifted patch tokenization), got {self.stem!r}.")
        if self.pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}.")
        if self.pos_embed == "sincos" and self.dim % 4:
            raise ValueError(f"pos_embed='sincos' splits dim into 4 (sin/cos of rows/columns), so dim must be a "
                             f"multiple of 4, got {self.dim}.")
        if not isinstance(self.lsa, bool):
            raise TypeError(f"lsa must be True or False, got {self.lsa!r}.")
        if self.stem == "spt" and self.patch_size < 2:
            raise ValueError("stem='spt' shifts by half a patch, so patch_size must be >= 2.")
        if self.stem in ("conv", "cct") and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"stem={self.stem!r} downsamples by 2 per convolution, so patch_size must be a power "
                             f"of 2 >= 2, got {self.patch_size}; use patch_size 2, 4, 8 or 16, or stem='patch'.")
        if self.fused_attn not in (None, True, False):
            raise TypeError(f"fused_attn must be None (pick per device and dtype), True (SDPA) or False (explicit), "
                            f"got {self.fused_attn!r}.")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Sequence length T: one CLS token plus one token per patch."""
        return 1 + self.grid_size ** 2


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d > 1)


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------

class PatchEmbedding(nn.Module):
    """Cuts the image into non-overlapping patches and projects each to a ``dim``-wide token.

    A convolution with kernel = stride = patch size is exactly "flatten each patch, apply one Linear".
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D) with N = (H/P) * (W/P)


def use_fused_attention(fused_attn: bool | None, q: torch.Tensor) -> bool:
    """Whether to call ``F.scaled_dot_product_attention`` for queries ``q``: ``fused_attn`` if set; else SDPA,
    except on a CPU in bf16/fp16 (PyTorch's CPU SDPA kernel is several times slower there than the explicit
    path) and on a CPU under ``torch.compile`` (inductor fuses the explicit softmax(QK^T)V into faster code
    than the SDPA kernel). Measured by ``bench/bench_throughput.py``."""
    if fused_attn is not None:
        return fused_attn
    if q.device.type != "cpu":
        return True
    return q.dtype not in (torch.bfloat16, torch.float16) and not torch.compiler.is_compiling()


class ConvStem(nn.Module):
    """Convolutional stem: log2(P) 3x3 convolutions with BatchNorm and ReLU, widths doubling up to ``dim``, then
    a 1x1 convolution to ``dim``. It yields the same (H/P) x (W/P) token grid as :class:`PatchEmbedding`, but
    with overlapping receptive fields: a locality prior that a linear patch embedding lacks, which helps a ViT
    most on small data sets. Two ways to halve the resolution per convolution:

    - ``stem="conv"`` (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): stride-2
      convolutions, cheap (each runs at the output resolution);
    - ``stem="cct"`` (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact Transformers"):
      stride-1 convolutions, each followed by a 3x3 stride-2 max-pool, as in CCT's tokenizer. Each convolution
      sees every pixel at its input resolution (4x the multiply-adds), and the pooling adds a little
      translation invariance: closer to a small CNN.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        n = cfg.patch_size.bit_length() - 1  # halvings: 2**n = patch_size
        widths = [max(16, cfg.dim // 2 ** (n - 1 - i)) for i in range(n)]
        pool = cfg.stem == "cct"
        layers, c_in = [], cfg.in_channels
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if pool else 2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            c_in = c_out
        layers.append(nn.Conv2d(c_in, cfg.dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D)


class ShiftedPatchTokenizer(nn.Module):
    """Shifted Patch Tokenization (Lee et al. 2021): the image and four copies shifted by half a patch towards
    each corner (zero-filled) are stacked on the channel axis, cut into patches, and each flattened patch goes
    through LayerNorm and a Linear. Every token then also sees the pixels around its patch."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size, self.shift = cfg.patch_size, cfg.patch_size // 2
        patch_dim = 5 * cfg.in_channels * cfg.patch_size ** 2
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, P = self.shift, self.patch_size
        H, W = x.shape[-2:]
        padded = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s)
        corners = [padded[..., dy:dy + H, dx:dx + W] for dy in (0, 2 * s) for dx in (0, 2 * s)]
        x = torch.cat([x, *corners], dim=1)  # (B, 5C, H, W)
        B, C5 = x.shape[:2]
        x = x.reshape(B, C5, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, 5C, P, P)
        x = x.reshape(B, (H // P) * (W // P), C5 * P * P)  # (B, N, 5C*P*P)
        return self.proj(self.norm(x))  # (B, N, D)


def sincos_position_embedding(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings ``(1, 1 + grid_size**2, dim)`` (MoCo v3, MAE): a quarter of the
    channels are sin/cos of the row at geometric frequencies, a quarter those of the column; the CLS token's
    row is zeros."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                            torch.arange(grid_size, dtype=torch.float64), indexing="ij")
    angles_y = ys.reshape(-1, 1) * omega  # (N, D/4)
    angles_x = xs.reshape(-1, 1) * omega
    pe = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)  # (N, D)
    return torch.cat([torch.zeros(1, dim, dtype=pe.dtype), pe]).float().unsqueeze(0)  # (1, 1 + N, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    Two paths compute the same function: ``F.scaled_dot_product_attention`` (one fused kernel) and the
    explicit softmax(q k^T / sqrt(d)) v, which is also the path that returns the attention probabilities.
    ``cfg.fused_attn`` chooses between them (see :func:`use_fused_attention`).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.scale = self.head_dim ** -0.5
        self.attn_dropout = cfg.attn_dropout
        self.fused_attn = cfg.fused_attn
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        # LSA: the softmax temperature is learned (as a log, starting at the usual 1/sqrt(d)).
        self.log_scale = nn.Parameter(torch.tensor(math.log(self.scale))) if cfg.lsa else None
        # LSA's diagonal mask, built once (True = may attend); not saved: it follows from the config.
        self.register_buffer("lsa_mask", ~torch.eye(cfg.num_tokens, dtype=torch.bool) if cfg.lsa else None,
                             persistent=False)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, self.head_dim)  # (B, T, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, T, d)
        dropout_p = self.attn_dropout if self.training else 0.0
        attn, mask = None, None
        if self.log_scale is not None:  # LSA: learned temperature; a token may not attend to itself
            q = q * (self.log_scale.exp() / self.scale)  # so that the usual scaling gives exp(log_scale)
            mask = self.lsa_mask if self.lsa_mask.shape[0] == T else ~torch.eye(T, dtype=torch.bool, device=x.device)
        if not return_attention and use_fused_attention(self.fused_attn, q):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, h, T, d)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # post-softmax probabilities
            out = F.dropout(attn, p=dropout_p, training=self.training) @ v  # (B, h, T, d)
            attn = attn if return_attention else None
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, h, T, d) -> (B, T, D)
        return self.proj(out), attn


class MLP(nn.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm encoder block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, attn = self.attn(self.norm1(x), return_attention)
        x = x + self.drop(h)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, attn


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------

def _trunc_normal(t: torch.Tensor, std: float = 0.02) -> None:
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


class VisionTransformer(nn.Module):
    """ViT classifier: patch embedding, CLS token, learned position embeddings, pre-LN encoder,
    final LayerNorm and a linear head on the CLS token (the maths of HF's ``ViTForImageClassification``).

    ``model(x)`` returns logits ``(B, num_classes)``; ``model(x, return_attentions=True)`` returns
    ``(logits, attentions)``, a tuple of ``depth`` tensors ``(B, heads, T, T)`` of post-softmax attention
    probabilities (before attention dropout), with ``T = 1 + (image_size // patch_size) ** 2``.
    """

    def __init__(self, *, image_size: int, patch_size: int, in_channels: int, num_classes: int, dim: int,
                 depth: int, heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0,
                 qkv_bias: bool = True, layer_norm_eps: float = 1e-12, fused_attn: bool | None = None,
                 stem: str = "patch", lsa: bool = False, pos_embed: str = "learned"):
        super().__init__()
        cfg = ViTConfig(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                        num_classes=num_classes, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
                        dropout=dropout, attn_dropout=attn_dropout, qkv_bias=qkv_bias,
                        layer_norm_eps=layer_norm_eps, fused_attn=fused_attn, stem=stem, lsa=lsa,
                        pos_embed=pos_embed)
        self.config = cfg
        stems = {"patch": PatchEmbedding, "conv": ConvStem, "cct": ConvStem, "spt": ShiftedPatchTokenizer}
        self.patch_embed = stems[cfg.stem](cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        # A parameter either way (same state dict, HF-convertible); fixed sin-cos ones are not trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim), requires_grad=cfg.pos_embed == "learned")
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: ViTConfig) -> "VisionTransformer":
        return cls(**asdict(cfg))

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) truncated at +-2 std for weights, CLS token and position embeddings; zero biases;
        unit LayerNorms. (HF and timm call ``trunc_normal_(std=0.02)``, whose default bounds are +-2 in
        absolute value, i.e. +-100 std: effectively untruncated.)"""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                _trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        _trunc_normal(self.cls_token)
        if self.config.pos_embed == "sincos":
            with torch.no_grad():
                self.pos_embed.copy_(sincos_position_embedding(self.config.grid_size, self.config.dim))
        else:
            _trunc_normal(self.pos_embed)
        for m in self.modules():
            if isinstance(m, Attention) and m.log_scale is not None:
                nn.init.constant_(m.log_scale, math.log(m.scale))

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, {cfg.in_channels}, {cfg.image_size}, "
                            f"{cfg.image_size}), got {type(x).__name__}.")
        if x.ndim != 4:
            hint = " Add a batch dimension with x.unsqueeze(0)." if x.ndim == 3 else ""
            raise ValueError(f"expected a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}.{hint}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images, got {x.dtype}: convert with x.float() / 255 and normalise "
                            f"them as in training (the loaders of vit_helpers do both).")
        if x.shape[1] != cfg.in_channels and x.shape[-1] == cfg.in_channels and x.shape[1] == cfg.image_size:
            raise ValueError(f"got a channels-last batch {tuple(x.shape)} (B, H, W, C); the model expects "
                             f"(B, C, H, W): use x.permute(0, 3, 1, 2).")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected {cfg.in_channels} channel(s), got {x.shape[1]} (shape {tuple(x.shape)}). Convert the "
                f"images (e.g. .expand(-1, 3, -1, -1) or .mean(1, keepdim=True)) or build the model with "
                f"in_channels={x.shape[1]}.")
        if tuple(x.shape[-2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"expected {cfg.image_size}x{cfg.image_size} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}. Resize the input or build the model with "
                             f"image_size={x.shape[-1]}.")

    def forward_features(self, x: torch.Tensor, return_attentions: bool = False
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Image batch -> normalised tokens ``(B, T, D)`` (and the attention maps if asked)."""
        self._check_input(x)
        tokens = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, T, D), T = N + 1
        x = self.drop(x)
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attentions)
            if return_attentions:
                attentions.append(attn)
        return self.norm(x), tuple(attentions)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised tokens ``(B, T, D)`` -> logits ``(B, num_classes)`` from the CLS token."""
        return self.head(features[:, 0])

    def forward(self, x: torch.Tensor, return_attentions: bool = False):
        features, attentions = self.forward_features(x, return_attentions)
        logits = self.forward_head(features)
        return (logits, attentions) if return_attentions else logits


def save_model(model: VisionTransformer, path: str | Path, **metadata: str | int | float) -> Path:
    """Write ``model``'s weights and config to one safetensors file (the config and ``metadata`` in its header)."""
    from safetensors.torch import save_file

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"save_model expects a VisionTransformer, got {type(model).__name__}.")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save to a .safetensors file, got {path.name!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"vit_config": json.dumps(asdict(model.config)), **{k: json.dumps(v) for k, v in metadata.items()}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=header)
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[VisionTransformer, dict[str, Any]]:
    """A :class:`VisionTransformer` from a file written by :func:`save_model`, in eval mode, and its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"no weights file at {path.resolve()}; the shipped ones are under weights/ in the "
                                "repository (or set the notebook's TRAIN = True to train instead).")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "vit_config" not in header:
        raise ValueError(f"{path} was not written by vit_helpers.save_model (no vit_config in its header).")
    model = VisionTransformer.from_config(ViTConfig(**json.loads(header.pop("vit_config"))))
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), {k: json.loads(v) for k, v in header.items()}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------------

def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                           ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the base LR over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Step it once per optimizer step. Factor: ``step / warmup_steps`` while ``step < warmup_steps``, then
    ``0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``; 0 after ``total_steps``.
    """
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be between 0 and total_steps={total_steps}; "
                         f"lower warmup_steps (the original used total_steps // 5) or raise total_steps.")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine_factor(warmup_steps, total_steps))


def _warmup_cosine_factor(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


# ----------------------------------------------------------------------------------------------------
# Attention rollout
# ----------------------------------------------------------------------------------------------------

_HEAD_FUSIONS = ("mean", "max", "min")


def _check_attentions(attentions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(attentions, torch.Tensor):
        raise TypeError("attentions must be a tuple/list of per-layer tensors (B, heads, T, T), got one tensor; "
                        "wrap a single layer as (attn,).")
    if attentions is None or len(attentions) == 0:
        raise ValueError("attentions is empty: call the model with return_attentions=True (ours) or "
                         "output_attentions=True with attn_implementation='eager' (HF).")
    layers = list(attentions)
    first = layers[0]
    for i, a in enumerate(layers):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"attentions[{i}] is {type(a).__name__}, expected a torch.Tensor "
                            "(HF returns None per layer under sdpa: load with attn_implementation='eager').")
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}] has shape {tuple(a.shape)}; each layer must be (B, heads, T, T).")
        if a.shape != first.shape:
            raise ValueError(f"attentions have inconsistent shapes: layer 0 is {tuple(first.shape)}, layer {i} "
                             f"is {tuple(a.shape)}; pass the attentions of one forward pass of one model.")
    for i, a in enumerate(layers):
        _check_probabilities(a, f"attentions[{i}]")
    return layers


def _check_probabilities(a: torch.Tensor, name: str) -> None:
    """ValueError unless every row of ``a`` is a probability distribution (finite, >= 0, sums to 1)."""
    if not a.is_floating_point():
        raise TypeError(f"{name} has dtype {a.dtype}; attention probabilities are floats.")
    a = a.detach().float()
    tol = 1e-2  # bf16/fp16 attention rows sum to 1 within about 1e-2
    problem = None
    if not torch.isfinite(a).all():
        problem = "it holds NaN or inf values"
    elif a.min() < -tol:
        problem = f"it holds negative values (min {a.min().item():.3g})"
    else:
        sums = a.sum(-1)
        if (sums - 1).abs().max() > tol:
            problem = f"its rows sum to {sums.min().item():.4g}..{sums.max().item():.4g}, not 1"
    if problem:
        raise ValueError(f"{name} is not a set of attention probabilities: {problem}. Pass post-softmax attention "
                         "weights from a model in eval mode (ours: model(x, return_attentions=True); HF: "
                         "output_attentions=True with attn_implementation='eager'), not raw scores or log-probabilities.")


def _fuse_heads(attn: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """(B, heads, ...) -> (B, ...) by mean, max or min over the heads."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise ValueError(f"unknown head_fusion {head_fusion!r}; use one of {', '.join(_HEAD_FUSIONS)}.")


def _discard_lowest(fused: torch.Tensor, num_discard: int) -> torch.Tensor:
    """Zero the ``num_discard`` smallest entries of each sample's ``(T, T)`` matrix, never CLS -> CLS."""
    B, T, _ = fused.shape
    flat = fused.reshape(B, T * T)  # (B, T*T)
    ranking = flat.clone()
    ranking[:, 0] = float("inf")  # protect CLS -> CLS (flat index 0)
    num_keep = T * T - num_discard
    if num_discard <= num_keep:  # select whichever side is smaller: topk cost grows with k
        drop = ranking.topk(num_discard, dim=-1, largest=False).indices
        return flat.scatter(1, drop, 0.0).reshape(B, T, T)
    keep = ranking.topk(num_keep, dim=-1, largest=True).indices
    return torch.zeros_like(flat).scatter(1, keep, flat.gather(1, keep)).reshape(B, T, T)


def rollout_matrix(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                   discard_ratio: float = 0.0) -> torch.Tensor:
    """Rolled-out attention ``(B, T, T)``: each row is a distribution over input tokens (sums to 1).

    Per layer: fuse heads (mean/max/min), optionally zero the lowest ``discard_ratio`` fraction of the
    fused ``T x T`` matrix per sample (the CLS->CLS entry is protected, as in the reference
    implementation by Gildenblat), add the identity for the residual path, renormalise rows, then
    multiply layer by layer with later layers on the left: ``A_L @ ... @ A_1``.
    """
    layers = _check_attentions(attentions)
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}.")
    B, _, T, _ = layers[0].shape
    eye = torch.eye(T, device=layers[0].device, dtype=torch.float32)
    result = eye.expand(B, T, T)
    num_discard = int(T * T * discard_ratio)
    for attn in layers:
        fused = _fuse_heads(attn.detach().float(), head_fusion)  # (B, heads, T, T) -> (B, T, T)
        if num_discard:
            fused = _discard_lowest(fused, num_discard)
        a = fused + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result  # later layers on the left
    return result


def _prefix_hint(T: int) -> str:
    """Suggests the smallest prefix-token count (2..17) that would leave a square grid of patches."""
    k = next((k for k in range(2, 18) if T - k > 0 and math.isqrt(T - k) ** 2 == T - k), None)
    if k is None:
        return ""
    side = math.isqrt(T - k)
    return (f" If the model has more prefix tokens than CLS (DeiT's distillation token: 2; k register tokens: 1 + k),"
            f" pass num_prefix_tokens: num_prefix_tokens={k} would leave a square {side}x{side} grid.")


def _patch_values(values: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int] | None) -> torch.Tensor:
    """Per-token values ``(B, T)`` -> per-patch map ``(B, h, w)``: drop the prefix tokens (CLS, distillation,
    registers), then square unless ``grid_size=(h, w)`` is given."""
    B, T = values.shape
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or not 0 <= num_prefix_tokens < T:
        raise ValueError(f"num_prefix_tokens must be an int in [0, {T - 1}] (1 for CLS only), got {num_prefix_tokens!r}.")
    patches = values[:, num_prefix_tokens:]
    N = T - num_prefix_tokens
    if grid_size is None:
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"{N} patch tokens (T={T} minus {num_prefix_tokens} prefix token(s)) do not form a "
                             f"square grid.{_prefix_hint(T)} For a non-square image pass grid_size=(h, w) with "
                             f"h*w={N}.")
        grid_size = (side, side)
    h, w = grid_size
    if h * w != N:
        raise ValueError(f"grid_size={tuple(grid_size)} holds {h * w} patches but the attentions have {N} "
                         f"patch tokens (T={T} minus {num_prefix_tokens} prefix token(s)); pass grid_size with "
                         f"h*w={N}.{_prefix_hint(T)}")
    return patches.reshape(B, h, w)


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.0, grid_size: tuple[int, int] | None = None,
                      num_prefix_tokens: int = 1) -> torch.Tensor:
    """Attention rollout map ``(B, grid_h, grid_w)``: the CLS row of :func:`rollout_matrix` over patches.

    Accepts the tuple from ``VisionTransformer(..., return_attentions=True)`` or HF's
    ``outputs.attentions``. Not rescaled: plotting scales each map to [0, 1]. The grid is square unless
    ``grid_size=(h, w)`` is given. ``num_prefix_tokens``: tokens before the patches (1: CLS; DeiT with a
    distillation token: 2; ViTs with k registers: 1 + k); the map is read from the first (CLS) row.
    """
    result = rollout_matrix(attentions, head_fusion, discard_ratio)  # (B, T, T)
    return _patch_values(result[:, 0], num_prefix_tokens, grid_size)  # CLS row -> (B, h, w)


def cls_attention_map(attentions: Sequence[torch.Tensor], layer: int = -1, head_fusion: str = "mean",
                      grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Raw attention of the CLS token to the patches in one layer (no rollout): ``(B, grid_h, grid_w)``."""
    layers = _check_attentions(attentions)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer={layer!r} is out of range for {len(layers)} layers (use -1 for the last).")
    cls_row = layers[layer].detach().float()[:, :, 0]  # (B, heads, T): the CLS row
    return _patch_values(_fuse_heads(cls_row, head_fusion), num_prefix_tokens, grid_size)  # (B, h, w)


# ----------------------------------------------------------------------------------------------------
# Explanations: attentions from any ViT, class-specific maps, faithfulness
# ----------------------------------------------------------------------------------------------------

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
        p = _square(config.patch_size, "patch_size")
        prefix = 2 if config.model_type == "deit" else 1  # DeiT: CLS + distillation token
        return ModelAttentions(out.logits, tuple(out.attentions), prefix, (H // p, W // p))
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
def explain_gradient_rollout(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """Class-specific gradient-weighted rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
    Explainability"): per layer ``A_bar = mean_heads((dy_t/dA * A).clamp(min=0))``, accumulated from the identity
    as ``R <- R + A_bar @ R``; the map is the CLS row of ``R`` over the patches. ``target``: the class to explain
    (None: each image's prediction)."""
    x = _explain_setup(model, x)
    with torch.enable_grad():
        out = forward_with_attentions(model, x)
        t = _targets(out.logits, target)
        score = out.logits.gather(1, t[:, None]).sum()  # images do not interact: one backward for the batch
        grads = torch.autograd.grad(score, out.attentions)
    B, _, T, _ = out.attentions[0].shape
    R = torch.eye(T, device=x.device).expand(B, T, T)
    for attn, grad in zip(out.attentions, grads):
        a_bar = (grad.float() * attn.detach().float()).clamp(min=0).mean(dim=1)  # (B, T, T)
        R = R + a_bar @ R
    return _patch_values(R[:, 0], out.num_prefix_tokens, out.grid_size).cpu()


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
    targets = None if target is None else torch.as_tensor(target).reshape(-1).expand(len(x))
    extra = (lambda i: {"seed": i}) if method == "random" else (lambda i: {})  # new random maps per batch
    return torch.cat([EXPLAINERS[method](model, x[i:i + batch_size],
                                         None if targets is None else targets[i:i + batch_size], **extra(i))
                      for i in range(0, len(x), batch_size)])


def remove_patches(x: torch.Tensor, maps: torch.Tensor, fraction: float, most_relevant_first: bool = True,
                   fill: float = 0.0) -> torch.Tensor:
    """``x`` with the ``fraction`` of patches ranked highest (or lowest) by ``maps (B, h, w)`` set to ``fill``
    (0 is the data set's mean colour for normalised inputs). Ties keep the patch order (stable sort)."""
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
    Returns ``{"fractions", "accuracy", "auc"}``; ``auc`` is the area under accuracy (in %) over the removed
    fraction (trapezoid). Positive perturbation: lower is more faithful; negative: higher is."""
    if maps.shape[0] != x.shape[0] or labels.shape[0] != x.shape[0]:
        raise ValueError(f"x, labels and maps need the same batch size, got {x.shape[0]}, {labels.shape[0]} and "
                         f"{maps.shape[0]}.")
    x = _explain_setup(model, x)
    accuracy = []
    with torch.no_grad():
        for f in fractions:
            correct = 0
            for i in range(0, len(x), batch_size):
                xb = remove_patches(x[i:i + batch_size], maps[i:i + batch_size], f, most_relevant_first, fill)
                logits = _logits(model, xb)
                correct += (logits.argmax(-1).cpu() == labels[i:i + batch_size].cpu()).sum().item()
            accuracy.append(correct / len(x))
    fr = list(fractions)
    auc = sum(50 * (accuracy[i] + accuracy[i + 1]) * (fr[i + 1] - fr[i]) for i in range(len(fr) - 1))  # trapezoid, %
    return {"fractions": list(fractions), "accuracy": accuracy, "auc": auc}


def mass_on_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of a map's positive mass that falls on ``masks`` (B, H, W) of 0/1 (e.g. a digit's
    strokes), with the map upsampled to pixels (nearest). Uniform maps score the mask's area fraction."""
    B, H, W = masks.shape
    m = maps.float().clamp(min=0)
    up = F.interpolate(m[:, None], size=(H, W), mode="nearest")[:, 0]  # (B, H, W)
    total = up.sum(dim=(1, 2)).clamp(min=1e-12)
    return (up * masks.float()).sum(dim=(1, 2)) / total


# ----------------------------------------------------------------------------------------------------
# HuggingFace interop
# ----------------------------------------------------------------------------------------------------
# Our parameter -> HF 5.x parameter ("{i}" is the layer index). HF 4.x names are translated below.

_HF_LAYER_KEYS = {
    "norm1": "layernorm_before", "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_GLOBAL_KEYS = {
    "cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
    "head.weight": "classifier.weight", "head.bias": "classifier.bias",
}


def _hf_name_pairs(depth: int) -> list[tuple[str, str]]:
    """(our name, HF 5.x name) for every parameter that maps one to one (all but the fused qkv)."""
    pairs = list(_HF_GLOBAL_KEYS.items())
    for i in range(depth):
        for ours, hf in _HF_LAYER_KEYS.items():
            pairs += [(f"blocks.{i}.{ours}.{p}", f"vit.layers.{i}.{hf}.{p}") for p in ("weight", "bias")]
    return pairs


_HF4_TO_HF5 = {
    "vit.encoder.layer.": "vit.layers.",
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
    ".intermediate.dense.": ".mlp.fc1.",
    ".output.dense.": ".mlp.fc2.",
}


def _hf_state_dict_v5(hf_model) -> dict[str, torch.Tensor]:
    """The HF model's state dict under transformers 5.x names, whichever version made it."""
    sd = hf_model.state_dict()
    if not any(k.startswith("vit.encoder.layer.") for k in sd):
        return sd
    out = {}
    for key, value in sd.items():
        for old, new in _HF4_TO_HF5.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _hf_to_v4_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for old, new in _HF4_TO_HF5.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def _square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"HF config {name}={value} is not square; VisionTransformer supports square "
                             "images and patches only.")
        value = value[0]
    return int(value)


def from_hf(hf_model) -> VisionTransformer:
    """A :class:`VisionTransformer` holding the weights of a transformers ``ViTForImageClassification``."""
    config = getattr(hf_model, "config", None)
    if config is None or getattr(config, "model_type", None) != "vit" or not hasattr(hf_model, "classifier"):
        raise TypeError(f"from_hf expects a transformers ViTForImageClassification, got {type(hf_model).__name__}.")
    if config.hidden_act != "gelu":
        raise ValueError(f"HF config hidden_act={config.hidden_act!r}; VisionTransformer uses exact GELU ('gelu').")
    model = VisionTransformer(
        image_size=_square(config.image_size, "image_size"), patch_size=_square(config.patch_size, "patch_size"),
        in_channels=config.num_channels, num_classes=config.num_labels, dim=config.hidden_size,
        depth=config.num_hidden_layers, heads=config.num_attention_heads, mlp_dim=config.intermediate_size,
        dropout=config.hidden_dropout_prob, attn_dropout=config.attention_probs_dropout_prob,
        qkv_bias=config.qkv_bias, layer_norm_eps=config.layer_norm_eps)
    sd = _hf_state_dict_v5(hf_model)
    ours = {our_key: sd[hf_key] for our_key, hf_key in _hf_name_pairs(config.num_hidden_layers)}
    for i in range(config.num_hidden_layers):
        hf = f"vit.layers.{i}.attention."
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[f"{hf}{n}_proj.weight"] for n in "qkv"])  # (3D, D)
        if config.qkv_bias:
            ours[f"blocks.{i}.attn.qkv.bias"] = torch.cat([sd[f"{hf}{n}_proj.bias"] for n in "qkv"])  # (3D,)
    model.load_state_dict(ours)
    return model


def to_hf(model: VisionTransformer, attn_implementation: str = "eager", id2label: dict[int, str] | None = None):
    """A transformers ``ViTForImageClassification`` holding ``model``'s weights.

    ``attn_implementation="eager"`` (default) lets HF return attention maps; pass ``"sdpa"`` for speed.
    """
    from transformers import ViTConfig as HFViTConfig, ViTForImageClassification

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"to_hf expects a VisionTransformer, got {type(model).__name__}.")
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(f"attn_implementation must be 'eager' (returns attention maps) or 'sdpa' (faster), got "
                         f"{attn_implementation!r}.")
    cfg = model.config
    if id2label is not None and sorted(id2label) != list(range(cfg.num_classes)):
        raise ValueError(f"id2label must map each class index 0..{cfg.num_classes - 1} to a name, got keys "
                         f"{sorted(id2label)[:5]}{'...' if len(id2label) > 5 else ''}.")
    if cfg.stem != "patch":
        raise ValueError(f"to_hf: HF's ViTForImageClassification has only the linear patch embedding, so a model "
                         f"with stem={cfg.stem!r} cannot be converted; build it with stem='patch' to use HF.")
    if cfg.lsa:
        raise ValueError("to_hf: HF's ViT attention has no learned temperature and no diagonal mask, so a model with "
                         "lsa=True (Locality Self-Attention) cannot be converted; build it with lsa=False to use HF.")
    labels = id2label or {i: f"LABEL_{i}" for i in range(cfg.num_classes)}
    hf_config = HFViTConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.in_channels,
        hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim, hidden_act="gelu", hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attn_dropout, qkv_bias=cfg.qkv_bias, layer_norm_eps=cfg.layer_norm_eps,
        id2label=labels, label2id={v: k for k, v in labels.items()})
    hf_model = ViTForImageClassification._from_config(hf_config, attn_implementation=attn_implementation)
    ours = model.state_dict()
    sd = {hf_key: ours[our_key] for our_key, hf_key in _hf_name_pairs(cfg.depth)}
    for i in range(cfg.depth):
        hf = f"vit.layers.{i}.attention."
        for n, w in zip("qkv", ours[f"blocks.{i}.attn.qkv.weight"].chunk(3)):  # (3D, D) -> 3 x (D, D)
            sd[f"{hf}{n}_proj.weight"] = w
        if cfg.qkv_bias:
            for n, b in zip("qkv", ours[f"blocks.{i}.attn.qkv.bias"].chunk(3)):
                sd[f"{hf}{n}_proj.bias"] = b
    if any(k.startswith("vit.encoder.layer.") for k in hf_model.state_dict()):  # transformers 4.x
        sd = _hf_to_v4_names(sd)
    missing, unexpected = hf_model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "pooler" not in k and "mask_token" not in k]
    if missing or unexpected:
        raise RuntimeError(f"to_hf could not map every weight (missing {missing}, unexpected {unexpected}); "
                           "this transformers version renamed ViT's parameters again: please report it.")
    return hf_model.to(next(model.parameters()).device)


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


class DataNotFoundError(FileNotFoundError):
    """A data set is neither on disk nor downloadable; the message says which files to put where."""


def default_data_root() -> str:
    """``$VIT_DATA_ROOT`` if set, else ``./data``."""
    return os.environ.get("VIT_DATA_ROOT", "./data")


class InMemoryImages(torch.utils.data.Dataset):
    """Images kept as one uint8 tensor ``(N, C, H, W)``; ``transform`` maps a uint8 ``(C, H, W)`` to a float
    tensor. Far faster than decoding a PIL image per item for small data sets such as MNIST and CIFAR-10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], transform=None,
                 source: str = ""):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images, self.labels = images, labels.long()
        self.classes, self.transform, self.source = list(classes), transform, source
        self.mean: tuple[float, ...] | None = None  # the normalisation the loaders applied (for plots)
        self.std: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        x = self.transform(x) if self.transform is not None else x.float().div(255)
        return x, int(self.labels[i])

    def subset(self, indices: torch.Tensor, transform=None) -> "InMemoryImages":
        """A new data set over ``indices`` (a copy of the selected images) with its own transform."""
        return InMemoryImages(self.images[indices], self.labels[indices], self.classes, transform, self.source)


class Loaders(NamedTuple):
    """``train, val, test = loaders``; each ``loader.dataset`` has ``.classes``, ``.source``, ``.mean``, ``.std``."""
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader


class InvertUint8(nn.Module):
    """``255 - x`` on a uint8 image: dark digits on white. A module, not a lambda, so that DataLoader workers
    started with spawn or forkserver (macOS, Windows, Python 3.14 on Linux) can pickle the transform."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 255 - x


_AUGMENTS = {
    "cifar10": ("none", "crop_flip", "randaugment", "autoaugment"),
    "mnist": ("none", "crop", "affine"),
}


def _build_transform(train: bool, augment: str, mean, std, image_size: int, resize: int | None,
                     invert: bool = False):
    """uint8 (C, H, W) -> augmented, optionally inverted/resized, normalised float (C, H', W')."""
    from torchvision.transforms import v2

    ops = []
    if train and augment in ("crop", "crop_flip", "randaugment", "autoaugment"):
        ops.append(v2.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"))
    if train and augment in ("crop_flip", "randaugment", "autoaugment"):
        ops.append(v2.RandomHorizontalFlip())
    if train and augment == "randaugment":
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    if train and augment == "autoaugment":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    if train and augment == "affine":
        ops.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    if invert:  # after augmentation, so padding and affine fills stay background-coloured
        ops.append(InvertUint8())
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if resize is not None and resize != image_size:
        ops.append(v2.Resize((resize, resize), antialias=True))
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def _make_loaders(train_full: InMemoryImages, test: InMemoryImages, *, name: str, batch_size: int,
                  val_size: int, augment: str, mean, std, resize: int | None, invert: bool, seed: int,
                  train_limit: int | None, test_limit: int | None, num_workers: int | None) -> Loaders:
    n = len(train_full)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (the training split has {n} images), got {val_size}.")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)  # seeded, deterministic train/val split
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    test_idx = torch.arange(len(test))
    if test_limit is not None:
        test_idx = torch.randperm(len(test), generator=g)[:test_limit]
    size = train_full.images.shape[-1]
    train_tf = _build_transform(True, augment, mean, std, size, resize, invert)
    eval_tf = _build_transform(False, augment, mean, std, size, resize, invert)
    splits = [train_full.subset(train_idx, train_tf), train_full.subset(val_idx, eval_tf),
              test.subset(test_idx, eval_tf)]
    for ds in splits:
        ds.mean, ds.std = tuple(mean), tuple(std)
    if num_workers is None:
        num_workers = 0 if (os.cpu_count() or 1) <= 2 else min(8, (os.cpu_count() or 1) // 2)
    common = dict(num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=num_workers > 0)
    return Loaders(
        torch.utils.data.DataLoader(splits[0], batch_size=batch_size, shuffle=True,
                                    generator=torch.Generator().manual_seed(seed), **common),
        torch.utils.data.DataLoader(splits[1], batch_size=2 * batch_size, **common),
        torch.utils.data.DataLoader(splits[2], batch_size=2 * batch_size, **common))


def _check_loader_args(name: str, *, batch_size, val_size, augment, resize, mean, std, channels: int, seed,
                       train_limit, test_limit, num_workers) -> None:
    """The loaders' arguments, checked before any file is read."""
    if augment not in _AUGMENTS[name]:
        raise ValueError(f"unknown augment {augment!r} for {name}; use one of {', '.join(_AUGMENTS[name])}.")
    _check_number("batch_size", batch_size, low=1, integer=True)
    _check_number("val_size", val_size, low=1, integer=True)
    _check_number("seed", seed, low=0, integer=True)
    for key, value in (("resize", resize), ("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None:
            _check_number(key, value, low=1, integer=True)
    if num_workers is not None:
        _check_number("num_workers", num_workers, low=0, integer=True)
    for key, value in (("mean", mean), ("std", std)):
        if len(value) != channels:
            raise ValueError(f"{key} has {len(value)} value(s) but {name} images have {channels} channel(s); pass "
                             f"one value per channel.")
    if any(v <= 0 for v in std):
        raise ValueError(f"std must be > 0 per channel, got {tuple(std)}.")


def train_eval_loader(loaders: Loaders) -> torch.utils.data.DataLoader:
    """The training split with the evaluation transform (no augmentation), for whole-split train accuracy."""
    train, val = loaders.train.dataset, loaders.val.dataset
    ds = InMemoryImages(train.images, train.labels, train.classes, val.transform, train.source)  # shares memory
    ds.mean, ds.std = train.mean, train.std
    return torch.utils.data.DataLoader(ds, batch_size=loaders.val.batch_size, num_workers=loaders.val.num_workers)


def _class_folders(split_dir: Path) -> list[Path]:
    """Class sub-folders, sorted; hidden ones (``.ipynb_checkpoints``, ``.DS_Store``...) and ``__*`` are not classes."""
    if not split_dir.is_dir():
        return []
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _find_image_folder_root(root: Path) -> Path | None:
    """``root`` or ``root/cifar10-jpeg`` if it holds ``train/<class>/`` and ``test/<class>/`` folders."""
    for candidate in (root, root / "cifar10-jpeg"):
        if _class_folders(candidate / "train") and _class_folders(candidate / "test"):
            return candidate
    return None


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_image_folder(split_dir: str | Path, classes: Sequence[str] | None = None) -> InMemoryImages:
    """Decode every image of ``split_dir/<class>/*`` (JPEG/PNG) into one uint8 tensor, in sorted order.

    ``classes`` (e.g. the training split's) fixes the label order; a split whose class folders differ from
    it raises a ValueError naming the extra and the missing folders, instead of shifting labels.
    """
    from PIL import Image, UnidentifiedImageError

    split_dir = Path(split_dir)
    folders = [f.name for f in _class_folders(split_dir)]
    if not folders:
        raise DataNotFoundError(f"no class folders under {split_dir.resolve()}: expected {split_dir}/<class>/*.jpg "
                                "(one folder per class).")
    if classes is not None and sorted(classes) != folders:
        extra, missing = sorted(set(folders) - set(classes)), sorted(set(classes) - set(folders))
        raise ValueError(f"the class folders of {split_dir} differ from the training split's: extra "
                         f"{extra or 'none'}, missing {missing or 'none'}. Every split needs the same class "
                         "folders; remove or add folders so that they match.")
    classes = list(classes) if classes is not None else folders
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (split_dir / name).iterdir()
                       if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            raise DataNotFoundError(f"class folder {split_dir / name} holds no .jpg/.png images.")
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))  # (H, W, 3) -> (3, H, W)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot decode {f} ({e}); delete or replace the file.") from e
            labels.append(label)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images under {split_dir} differ in size ({sorted(shapes)[:3]}...); resize them first.")
    return InMemoryImages(torch.stack(images), torch.tensor(labels), classes,
                          source=f"image folders {split_dir.parent} (JPEG/PNG copy)")


class _socket_timeout:
    """Within the block, network reads that stall for ``seconds`` raise instead of hanging (torchvision's
    downloads open URLs without a timeout). Restores the previous default on exit."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.seconds)

    def __exit__(self, *exc):
        socket.setdefaulttimeout(self.previous)


def load_cifar10(root: str | Path | None = None, download: bool = True, timeout_s: float = 60.0
                 ) -> tuple[InMemoryImages, InMemoryImages]:
    """CIFAR-10 train and test splits as in-memory uint8 tensors.

    Looks for ``root/train/<class>/`` + ``root/test/<class>/`` image folders (also under
    ``root/cifar10-jpeg/``); otherwise uses torchvision's ``CIFAR10(root, download=download)``. A download
    whose connection stalls for ``timeout_s`` seconds fails with :class:`DataNotFoundError` instead of hanging.
    """
    root = Path(root if root is not None else default_data_root())
    folder_root = _find_image_folder_root(root)
    if folder_root is not None:
        train = load_image_folder(folder_root / "train")
        return train, load_image_folder(folder_root / "test", classes=train.classes)
    try:
        with _socket_timeout(timeout_s):
            splits = [torchvision.datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
    except Exception as e:  # offline, stalled, or download=False with nothing on disk
        raise DataNotFoundError(
            f"CIFAR-10 not found under {root.resolve()} and it could not be downloaded ({type(e).__name__}: {e}). "
            f"Put either torchvision's cifar-10-batches-py/ folder there, or image folders "
            f"train/<class>/*.jpg and test/<class>/*.jpg (directly or under cifar10-jpeg/); or point the "
            f"notebook's DATA_ROOT parameter (env VIT_DATA_ROOT) at the folder that holds them.") from e
    out = []
    for ds in splits:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        out.append(InMemoryImages(images, torch.tensor(ds.targets), ds.classes,
                                  source=f"torchvision CIFAR10 python batches at {root}"))
    return out[0], out[1]


_IDX_MAGIC = {"images": 2051, "labels": 2049}


def _read_idx(path: Path, kind: str, count: int | None = None) -> torch.Tensor:
    """An MNIST IDX file (or its .gz) as a uint8 tensor, checked against its header."""
    import gzip

    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated ({len(data)} bytes, not even an IDX header); delete it and copy "
                         "or download it again.")
    magic, *dims = (int.from_bytes(data[i:i + 4], "big") for i in range(0, header, 4))
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an MNIST {kind} IDX file (magic number {magic}, expected "
                         f"{_IDX_MAGIC[kind]}); check which file is which.")
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(data):,} bytes, the header promises "
                         f"{expected:,} ({' x '.join(map(str, dims))}); delete it and copy or download it again.")
    if count is not None and dims[0] != count:
        raise ValueError(f"{path} holds {dims[0]} {kind} but its partner file holds {count}; the images and "
                         "labels files come from different splits.")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _mnist_file(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(root: str | Path | None = None, download: bool = True, timeout_s: float = 60.0
               ) -> tuple[InMemoryImages, InMemoryImages]:
    """MNIST train and test splits (torchvision layout ``root/MNIST/raw/``) as in-memory uint8 tensors.

    Reads the IDX files, or their ``.gz`` files, and checks their sizes against their headers; if any is
    missing and ``download`` is set, torchvision downloads them first (a stall of ``timeout_s`` seconds fails
    instead of hanging). Missing files raise :class:`DataNotFoundError` naming the files and the folder.
    """
    root = Path(root if root is not None else default_data_root())
    raw = root / "MNIST" / "raw"
    if any(_mnist_file(raw, n) is None for n in _MNIST_FILES) and download:
        try:
            with _socket_timeout(timeout_s):
                torchvision.datasets.MNIST(str(root), train=True, download=True)
        except Exception as e:  # offline or stalled: report below which files are still missing
            download_error = f"{type(e).__name__}: {e}"
        else:
            download_error = ""
    else:
        download_error = "download=False"
    missing = [n for n in _MNIST_FILES if _mnist_file(raw, n) is None]
    if missing:
        raise DataNotFoundError(
            f"MNIST files missing in {raw.resolve()}: {', '.join(missing)} (or their .gz files), and they could "
            f"not be downloaded ({download_error}). Put the four IDX files (or the .gz files) there, or point the "
            f"notebook's DATA_ROOT parameter (env VIT_DATA_ROOT) at a folder holding MNIST/raw/.")
    classes = [str(i) for i in range(10)]
    splits = []
    for prefix in ("train", "t10k"):
        labels = _read_idx(_mnist_file(raw, f"{prefix}-labels-idx1-ubyte"), "labels")
        images = _read_idx(_mnist_file(raw, f"{prefix}-images-idx3-ubyte"), "images", count=len(labels))
        splits.append(InMemoryImages(images.unsqueeze(1).contiguous(), labels, classes,  # (N, 28, 28) -> (N, 1, 28, 28)
                                     source=f"MNIST IDX files at {raw}"))
    return splits[0], splits[1]


def load_image(source: str | Path, timeout_s: float = 30.0):
    """A PIL RGB image from a local path or an http(s) URL."""
    from PIL import Image

    source = str(source)
    if source.startswith(("http://", "https://")):
        import io
        import urllib.request

        request = urllib.request.Request(source, headers={"User-Agent": "vit-notebooks/1.0 (teaching notebooks)"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                data = response.read()
        except OSError as e:
            raise DataNotFoundError(f"could not download {source} ({e}); pass local image paths instead "
                                    "(the notebook's PHOTOS parameter).") from e
        try:
            return Image.open(io.BytesIO(data)).convert("RGB")
        except OSError as e:
            raise ValueError(f"{source} did not return an image ({e}); check the URL.") from e
    path = Path(source)
    if not path.is_file():
        raise DataNotFoundError(f"no image file at {path.resolve()}; check the path (the notebook's PHOTOS parameter).")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path} is not an image PIL can read ({e}); pass a JPEG or PNG file.") from e


def cifar10_loaders(root: str | Path | None = None, batch_size: int = 128, *, val_size: int = 5000,
                    augment: str = "none", resize: int | None = None, mean: Sequence[float] = CIFAR10_MEAN,
                    std: Sequence[float] = CIFAR10_STD, seed: int = 0, train_limit: int | None = None,
                    test_limit: int | None = None, num_workers: int | None = None, download: bool = True,
                    download_timeout_s: float = 60.0) -> Loaders:
    """CIFAR-10 train/val/test loaders. ``val_size`` images of the official training split (seeded) form the
    validation split; the official test split is the test split.

    augment: ``"none"``, ``"crop_flip"`` (random crop with 4-px reflect padding + horizontal flip),
    ``"randaugment"`` or ``"autoaugment"`` (crop + flip + RandAugment(2, 9) / AutoAugment's CIFAR-10 policy).
    ``resize`` upsamples (e.g. to 224 for a pretrained ViT); ``mean``/``std`` normalise (use the image
    processor's for a pretrained model). ``train_limit``/``test_limit`` take seeded subsets (smoke runs).
    """
    _check_loader_args("cifar10", batch_size=batch_size, val_size=val_size, augment=augment, resize=resize, mean=mean,
                       std=std, channels=3, seed=seed, train_limit=train_limit, test_limit=test_limit,
                       num_workers=num_workers)
    train, test = load_cifar10(root, download, download_timeout_s)
    return _make_loaders(train, test, name="cifar10", batch_size=batch_size, val_size=val_size, augment=augment,
                         mean=mean, std=std, resize=resize, invert=False, seed=seed, train_limit=train_limit,
                         test_limit=test_limit, num_workers=num_workers)


def mnist_loaders(root: str | Path | None = None, batch_size: int = 128, *, val_size: int = 5000,
                  invert: bool = False, augment: str = "none", mean: Sequence[float] | None = None,
                  std: Sequence[float] = MNIST_STD, seed: int = 0, train_limit: int | None = None,
                  test_limit: int | None = None, num_workers: int | None = None, download: bool = True,
                  download_timeout_s: float = 60.0) -> Loaders:
    """MNIST train/val/test loaders; ``invert=True`` gives dark digits on white (255 - pixel).

    augment: ``"none"``, ``"crop"`` (random crop with 3-px padding) or ``"affine"`` (rotation +-10 deg,
    shift +-10 %, scale 0.9-1.1). No flips: a mirrored digit is another symbol.
    """
    if mean is None:
        mean = tuple(1 - m for m in MNIST_MEAN) if invert else MNIST_MEAN
    _check_loader_args("mnist", batch_size=batch_size, val_size=val_size, augment=augment, resize=None, mean=mean,
                       std=std, channels=1, seed=seed, train_limit=train_limit, test_limit=test_limit,
                       num_workers=num_workers)
    train, test = load_mnist(root, download, download_timeout_s)
    return _make_loaders(train, test, name="mnist", batch_size=batch_size, val_size=val_size, augment=augment,
                         mean=mean, std=std, resize=None, invert=invert, seed=seed, train_limit=train_limit,
                         test_limit=test_limit, num_workers=num_workers)


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    _check_number("seed", seed, low=0, high=2 ** 32 - 1, integer=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given (e.g. ``"cpu"``, ``"cuda:1"``), else CUDA, then Apple MPS, then CPU.

    A device that is not there raises a ValueError saying which ones are, before any work is done."""
    if preferred:
        try:
            device = torch.device(preferred)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"unknown device {preferred!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps' (or None to pick "
                             "the best one available).") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available here (no GPU, or a CPU-only "
                             "torch build); use 'cpu', or leave the device unset (None) to pick what is available.")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} GPU(s) are "
                             "visible; use 'cuda:0'..")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but Apple's MPS backend is not available here; use 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with bf16 matrix instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo.

    Without them PyTorch emulates bf16 matrix products, which is far slower than fp32 (measured on an AMD
    EPYC without AVX-512: 1.3 GFLOP/s in bf16 vs 170 GFLOP/s in fp32); with them bf16 is several times
    faster than fp32. Elsewhere (macOS, Windows, ARM) this returns False and training stays in fp32.
    """
    try:
        return _cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def _cpuinfo_has_bf16(cpuinfo: str) -> bool:
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """The precision :func:`fit` and :func:`evaluate` run in: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    ``"auto"`` picks the fastest one that trains correctly on ``device``: bf16 autocast on CUDA GPUs with
    native bf16 (Ampere and newer); fp16 autocast with a gradient scaler on older CUDA GPUs (T4, V100);
    bf16 autocast on CPUs with native bf16 (:func:`cpu_has_native_bf16`); fp32 elsewhere (other CPUs, MPS).
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(map(repr, _PRECISIONS))} "
                         "('auto' picks the fastest correct one for the device).")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def _precision_reason(device: torch.device, precision: str) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, " + (
            "native bf16" if precision == "bf16" else "no native bf16: fp16 with a gradient scaler")
    if device.type == "cpu":
        return "CPU with AVX512-BF16/AMX" if precision == "bf16" else "CPU without native bf16 (AVX512-BF16/AMX)"
    return f"{device.type}"


def _autocast(device: torch.device, precision: str):
    """Autocast context for an already resolved precision (``resolve_precision``)."""
    precision = resolve_precision(device, precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out  # HF models return an output object


@dataclass
class History:
    """Per-epoch curves of a :func:`fit` run (train metrics are running averages over the epoch)."""
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # per optimizer step
    best_epoch: int | None = None
    best_val_acc: float | None = None
    total_steps: int = 0
    wall_time_s: float = 0.0
    train_images_per_s: float = 0.0  # training time only, validation excluded
    device: str = ""
    precision: str = ""  # what precision="auto" resolved to (resolve_precision)
    attention: str = ""  # SDPA or explicit, and whether chosen automatically
    compiled: bool = False  # torch.compile used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
             precision: str = "auto", return_predictions: bool = False) -> dict[str, Any]:
    """Loss and accuracy over the whole split: ``{"loss", "acc", "n"}`` (+ ``"preds"``, ``"labels"``)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(device, precision)
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    preds, labels = [], []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, precision):
            logits = _logits(model, x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        pred = logits.argmax(dim=-1)
        correct += (pred == y).sum().item()
        n += y.numel()
        if return_predictions:
            preds.append(pred.cpu())
            labels.append(y.cpu())
    model.train(was_training)
    if n == 0:
        raise ValueError("the loader yielded no samples.")
    out = {"loss": total_loss / n, "acc": correct / n, "n": n}
    if return_predictions:
        out["preds"], out["labels"] = torch.cat(preds), torch.cat(labels)
    return out


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only, not on biases, norms, CLS token or position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "cls_token" in name or "pos_embed" in name or "position_embeddings" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    device: torch.device) -> torch.optim.Optimizer:
    groups = _param_groups(model, weight_decay)
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


def _batch_loss(model, x, y, device, precision, label_smoothing, mixup_alpha, cutmix_alpha):
    """Forward one batch, with MixUp/CutMix when on; returns ``(loss, fp32 logits)``."""
    mixing = mixup_alpha > 0 or cutmix_alpha > 0
    if mixing:
        x, y_a, y_b, lam = _mix(x, y, mixup_alpha, cutmix_alpha)
    with _autocast(device, precision):
        logits = _logits(model, x).float()
    if not mixing:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    loss = (lam * F.cross_entropy(logits, y_a, label_smoothing=label_smoothing)
            + (1 - lam) * F.cross_entropy(logits, y_b, label_smoothing=label_smoothing))
    return loss, logits


def _seconds_per_batch(model: nn.Module, loader, make_optimizer, device, precision, steps: int = 8) -> float:
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
        with _autocast(device, precision):
            loss = F.cross_entropy(_logits(probe, x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del probe, opt
    times = times[2:] or times  # drop warm-up steps
    return float(np.median(times))


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the likely causes and what to change."""


def _check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False, integer: bool = False, hint: str = "") -> None:
    """TypeError unless ``value`` is a real number (an int if ``integer``); ValueError unless it is finite and
    within the bounds. ``hint`` is appended to the ValueError."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {type(value).__name__} ({value!r}).")
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        if integer and low == 1 and high is None:
            where = "a positive int"
        elif high is None:
            where = f"{'>' if low_open else '>='} {low}"
        else:
            where = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {where}, got {value}.{' ' + hint if hint else ''}")


def _resolve_compile(compile: bool | str, device: torch.device, precision: str, total_steps: int) -> bool:
    """``compile="auto"``: torch.compile where bench/bench_throughput.py measured a gain (GPUs; CPUs, where
    inductor fuses the explicit attention path and GELU: +17 % measured in fp32) and the run is long
    enough to repay the 30-60 s of compilation. On a CPU only on Linux with a C++ compiler (inductor
    builds C++ code; macOS and Windows need extra set-up)."""
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}.")
    if compile != "auto":
        return compile
    if device.type == "cuda":
        return total_steps >= 300
    if device.type == "cpu" and platform.system() == "Linux":
        import shutil
        return total_steps >= 1000 and any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return False


def _attention_path(model: nn.Module, device: torch.device, precision: str, compiled: bool) -> str:
    """How our VisionTransformer's attention will run in training (for the set-up line and the record)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ViTConfig):
        return "the model's own"
    if cfg.fused_attn is not None:
        return "SDPA (forced)" if cfg.fused_attn else "explicit (forced)"
    explicit = device.type == "cpu" and (precision in ("bf16", "fp16") or compiled)
    return "explicit (auto)" if explicit else "SDPA (auto)"


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _diverged(loss: torch.Tensor, x: torch.Tensor, epoch: int, batch: int, step: int, lr: float, precision: str,
              restored_epoch: int | None) -> TrainingDivergedError:
    data = "the batch itself contains NaN/inf inputs: clean the data first. " if not torch.isfinite(x).all() else ""
    restored = (f"The weights of epoch {restored_epoch} (the best finite epoch) were restored into the model."
                if restored_epoch else "The model's weights are left as they were when the loss went bad.")
    return TrainingDivergedError(
        f"training diverged: the loss became {loss.item()} at epoch {epoch}, batch {batch} (optimizer step {step}). "
        f"{data}Likely causes: a learning rate too high for this model and batch (lr={lr:g}: try lr/10 or a "
        f"longer warmup), no gradient clipping (try grad_clip=1.0), NaN/inf values in the data"
        f"{', or fp16 overflow (try precision=' + repr('bf16') + ' or ' + repr('fp32') + ')' if precision == 'fp16' else ''}. "
        f"{restored}")


def fit(model: nn.Module, train_loader, val_loader=None, *, epochs: int, lr: float = 1e-3,
        optimizer: str = "adamw", weight_decay: float = 0.05, momentum: float = 0.9,
        warmup_fraction: float = 0.2, warmup_steps: int | None = None, label_smoothing: float = 0.0,
        grad_clip: float | None = None, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
        accumulation_steps: int = 1, max_steps: int | None = None, device: torch.device | str | None = None,
        precision: str = "auto", compile: bool | str = "auto", time_budget_s: float | None = None,
        restore_best: bool = True, progress: bool = True, verbose: bool = True) -> History:
    """Train ``model`` with the warmup-cosine schedule stepped per optimizer step; returns a :class:`History`.

    optimizer: ``"adamw"`` (decoupled weight decay, not on biases/norms/embeddings), ``"adam"`` or ``"sgd"``
    (momentum). ``warmup_steps`` overrides ``warmup_fraction`` (the original notebooks used 1/5).
    ``accumulation_steps`` sums gradients over several batches per optimizer step (big effective batches);
    ``max_steps`` caps the optimizer steps (the schedule is fitted to the cap).
    ``precision="auto"`` picks the fastest precision that trains correctly on the device
    (:func:`resolve_precision`: bf16 on recent GPUs and on CPUs with AVX512-BF16/AMX, fp16 with a gradient
    scaler on older GPUs, fp32 elsewhere); ``"bf16"``, ``"fp16"`` or ``"fp32"`` force one.
    ``compile``: ``torch.compile`` the model (``"auto"``: where it pays, see :func:`_resolve_compile`).
    ``time_budget_s`` times a few steps on a copy of the model first and shortens the schedule so that
    training and validation fit the budget. With a ``val_loader``, the weights of the best validation epoch
    are restored at the end. A NaN or infinite loss stops the run with :class:`TrainingDivergedError`.
    ``progress`` shows tqdm bars (with the time left); ``verbose`` prints the set-up once and one line per
    epoch. Works with HF models (anything whose output is logits or has ``.logits``).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    _check_number("epochs", epochs, low=1, integer=True)
    _check_number("lr", lr, low=0, low_open=True)
    _check_number("weight_decay", weight_decay, low=0, hint="Use 0 to turn weight decay off.")
    _check_number("momentum", momentum, low=0, high=1, high_open=True)
    _check_number("warmup_fraction", warmup_fraction, low=0, high=1)
    if warmup_steps is not None:
        _check_number("warmup_steps", warmup_steps, low=0, integer=True)
    _check_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True)
    if grad_clip is not None:
        _check_number("grad_clip", grad_clip, low=0, low_open=True,
                      hint="grad_clip=0 would scale every gradient to zero; pass grad_clip=None to turn clipping off.")
    _check_number("mixup_alpha", mixup_alpha, low=0, hint="0 turns MixUp off.")
    _check_number("cutmix_alpha", cutmix_alpha, low=0, hint="0 turns CutMix off.")
    _check_number("accumulation_steps", accumulation_steps, low=1, integer=True)
    if max_steps is not None:
        _check_number("max_steps", max_steps, low=1, integer=True)
    if time_budget_s is not None:
        _check_number("time_budget_s", time_budget_s, low=0, low_open=True)
    if optimizer not in ("adamw", "adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adamw', 'adam' or 'sgd'.")
    try:
        batches_per_epoch = len(train_loader)
    except TypeError:
        raise TypeError(f"train_loader must have a length (a DataLoader over a map-style data set), "
                        f"got {type(train_loader).__name__}.") from None
    if batches_per_epoch == 0:
        raise ValueError("train_loader yields no batches: the training set is empty (or smaller than the batch "
                         "size with drop_last=True).")
    device = get_device(device)
    precision = resolve_precision(device, precision)
    model.to(device)
    make_opt = lambda m: _make_optimizer(m, optimizer, lr, weight_decay, momentum, device)  # noqa: E731
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation_steps)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
        epochs = math.ceil(total_steps / steps_per_epoch)
    if time_budget_s is not None:
        spb = _seconds_per_batch(model, train_loader, make_opt, device, precision)
        eval_batches = len(val_loader) if val_loader is not None else 0
        epoch_s = spb * batches_per_epoch + spb / 3 * eval_batches  # eval ~ a third of a train step per batch
        total_steps = min(total_steps, max(1, int(time_budget_s / epoch_s * steps_per_epoch)))
        epochs = math.ceil(total_steps / steps_per_epoch)
    compiled = _resolve_compile(compile, device, precision, total_steps)
    runner = torch.compile(model) if compiled else model  # shares the parameters with model
    opt = make_opt(model)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None  # fp16 gradients underflow
    # The schedule and the progress bar follow the planned number of steps (re-planned once on a budget).
    def warmup_for(total: int) -> int:
        return min(total, warmup_steps if warmup_steps is not None else int(warmup_fraction * total))

    def bar_total(total: int, n_epochs: int) -> int:  # batches, counting accumulated ones
        return min(n_epochs * batches_per_epoch, total * accumulation_steps)

    sched = warmup_cosine_schedule(opt, warmup_for(total_steps), total_steps)
    hist = History(total_steps=total_steps, precision=precision, attention=_attention_path(model, device, precision, compiled),
                   compiled=compiled, device=str(device))
    if verbose:
        print(f"fit: {device} in {precision} ({_precision_reason(device, precision)}), attention "
              f"{hist.attention}, torch.compile {'on' if compiled else 'off'}, torch threads "
              f"{torch.get_num_threads()}, {total_steps} optimizer steps", flush=True)
    best_state, step, images, train_s = None, 0, 0, 0.0
    replan_from = min(20, batches_per_epoch // 2)  # steps after compilation and warm-up, timed to re-plan the budget
    # One bar over the whole run, so that its remaining time is the run's (validation not included).
    bar = tqdm(total=bar_total(total_steps, epochs), unit="batch", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    epoch = 0
    while epoch < epochs:  # not a range: the re-plan after epoch 1 may add epochs
        epoch += 1
        runner.train()
        t0, seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), device=device)  # running sums stay on the device: no sync per step on GPUs
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar.set_description(f"epoch {epoch}/{epochs}")
        for i, (x, y) in enumerate(train_loader):
            bar.update(1)
            if epoch == 1 and i == replan_from:
                t_steady = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logits = _batch_loss(runner, x, y, device, precision, label_smoothing, mixup_alpha, cutmix_alpha)
            # A NaN/inf loss: checked every step on a CPU (free) and at the progress updates on a GPU.
            if (device.type != "cuda" or i % 25 == 0) and not torch.isfinite(loss):
                restored = None
                bar.close()
                if best_state is not None:
                    model.load_state_dict(best_state)
                    restored = hist.best_epoch
                raise _diverged(loss, x, epoch, i + 1, step, lr, precision, restored)
            scaled = loss / accumulation_steps
            (scaler.scale(scaled) if scaler else scaled).backward()
            last_batch = i + 1 == batches_per_epoch
            if (i + 1) % accumulation_steps == 0 or last_batch:
                if scaler:
                    scaler.unscale_(opt)  # clip the true gradients
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                if scaler:
                    scaler.step(opt)  # skipped when the scaled gradients overflowed
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                hist.lr.append(opt.param_groups[0]["lr"])
                sched.step()
                step += 1
            loss_sum += loss.detach() * y.numel()
            correct += (logits.argmax(-1) == y).sum()  # against the unmixed labels
            seen += y.numel()
            if progress and (i % 25 == 0 or last_batch):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            if step >= total_steps:
                break
        images += seen
        train_end = time.perf_counter()
        train_s += train_end - t0
        hist.epoch.append(epoch)
        hist.train_loss.append(loss_sum.item() / seen)
        hist.train_acc.append(correct.item() / seen)
        if not math.isfinite(hist.train_loss[-1]):  # a bad step the GPU check above did not sample
            raise _diverged(loss_sum, x, epoch, i + 1, step, lr, precision, None)
        if val_loader is not None:
            val = evaluate(model, val_loader, device, precision)  # eager: no recompiles for other batch sizes
            hist.val_loss.append(val["loss"])
            hist.val_acc.append(val["acc"])
            if hist.best_val_acc is None or val["acc"] > hist.best_val_acc:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if _all_finite(state):
                    hist.best_val_acc, hist.best_epoch, best_state = val["acc"], epoch, state
        hist.epoch_time_s.append(time.perf_counter() - t0)
        if time_budget_s is not None and epoch == 1 and step < total_steps and i > replan_from:
            # The first plan timed a few eager steps on a copy; now the true pace (compiled, data, clipping,
            # validation) is known: fit the rest of the schedule to what is left of the budget.
            s_per_batch = (train_end - t_steady) / (i - replan_from)
            val_s = hist.epoch_time_s[-1] - (train_end - t0)
            left = time_budget_s - (time.perf_counter() - start)
            new_total = step + max(1, int(left / (s_per_batch * batches_per_epoch + val_s) * steps_per_epoch))
            if abs(new_total - total_steps) > 0.02 * total_steps:
                total_steps = new_total
                epochs = math.ceil(total_steps / steps_per_epoch)
                sched.lr_lambdas = [_warmup_cosine_factor(warmup_for(total_steps), total_steps)] * len(opt.param_groups)
                for group, base_lr, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                    group["lr"] = base_lr * factor(sched.last_epoch)  # the next step already follows the new plan
                hist.total_steps = total_steps
                bar.total = bar_total(total_steps, epochs)
                bar.refresh()
                if verbose:
                    tqdm.write(f"fit: re-planned to {total_steps} optimizer steps ({epochs} epochs) to fit the "
                               f"{time_budget_s / 60:.1f}-minute budget at the measured {s_per_batch:.3f} s/batch")
        if verbose:
            val_txt = "" if val_loader is None else f" | val loss {hist.val_loss[-1]:.4f} acc {hist.val_acc[-1]:.4f}"
            tqdm.write(f"epoch {epoch:3d} | train loss {hist.train_loss[-1]:.4f} acc {hist.train_acc[-1]:.4f}"
                       f"{val_txt} | {hist.epoch_time_s[-1]:.1f}s")
        if step >= total_steps:
            break
    bar.close()
    hist.wall_time_s = time.perf_counter() - start
    hist.train_images_per_s = images / max(1e-9, train_s)  # training only, validation excluded
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return hist


# Named recipes: model, data and optimisation settings in one place, shared by the notebooks and
# scripts/train_recipe.py. ``model`` goes to VisionTransformer, ``data`` to the loader, ``fit`` to fit().
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # The original notebook's CIFAR-10 run (it reported 74.72 % test): no augmentation, Adam, 30 epochs.
    "cifar10-seed": {
        "model": dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=128, depth=6, heads=4,
                      mlp_dim=1024, dropout=0.2),
        "data": dict(batch_size=64, augment="none"),
        "fit": dict(epochs=30, optimizer="adam", lr=1e-3, weight_decay=0.0, warmup_fraction=0.2),
    },
    # Our from-scratch recipe for one GPU, 30 minutes (the plain-ViT setting of the SPT/LSA paper's code:
    # small wide-headed ViT, AutoAugment, MixUp/CutMix, label smoothing, AdamW, warmup + cosine), plus CCT's
    # convolutional tokenizer, the prior with the largest gain on validation in InductiveBias.ipynb's
    # same-budget comparison (results/InductiveBias-full.json).
    "cifar10-strong": {
        "model": dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=192, depth=9, heads=12,
                      mlp_dim=384, dropout=0.0, stem="cct"),
        "data": dict(batch_size=128, augment="autoaugment"),
        "fit": dict(epochs=100, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_fraction=0.1,
                    label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, grad_clip=1.0),
    },
    # Our CPU recipe (run with a wall-clock budget: train_recipe.py cifar10-cpu --budget-min 30): a small ViT
    # with a convolutional stem (Xiao et al. 2021), 8x8 tokens, 4 blocks; crop + flip only, because a budget of
    # a few epochs is too short for strong augmentation to pay; label smoothing, AdamW, warmup + cosine.
    "cifar10-cpu": {
        "model": dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=128, depth=4, heads=4,
                      mlp_dim=256, dropout=0.0, stem="conv"),
        "data": dict(batch_size=128, augment="crop_flip"),
        "fit": dict(epochs=100, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_fraction=0.05,
                    label_smoothing=0.1, grad_clip=1.0),
    },
    # The CIFAR seed recipe's model and optimiser applied to inverted MNIST (our reconstruction of the
    # original MNIST notebook, which reported 97.47 % test).
    "mnist-seed": {
        "model": dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, dim=128, depth=6, heads=4,
                      mlp_dim=1024, dropout=0.2),
        "data": dict(batch_size=64, augment="none", invert=True),
        "fit": dict(epochs=10, optimizer="adam", lr=1e-3, weight_decay=0.0, warmup_fraction=0.2),
    },
    # Our MNIST recipe: a small ViT, light affine augmentation, label smoothing, AdamW.
    "mnist-strong": {
        "model": dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, dim=64, depth=6, heads=4,
                      mlp_dim=128, dropout=0.0),
        "data": dict(batch_size=128, augment="affine", invert=True),
        "fit": dict(epochs=40, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_fraction=0.05,
                    label_smoothing=0.1, grad_clip=1.0),
    },
    # Our 30-minutes-on-a-laptop-CPU MNIST recipe: mnist-strong with a convolutional stem (Xiao et al.
    # 2021), which learns faster from few epochs; run with a wall-clock budget (train_recipe.py --budget-min 30).
    "mnist-fast": {
        "model": dict(image_size=28, patch_size=4, in_channels=1, num_classes=10, dim=64, depth=6, heads=4,
                      mlp_dim=128, dropout=0.0, stem="conv"),
        "data": dict(batch_size=128, augment="affine", invert=True),
        "fit": dict(epochs=100, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_fraction=0.05,
                    label_smoothing=0.1, grad_clip=1.0),
    },
}


def get_recipe(name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of ``RECIPES[name]`` (safe to modify)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return copy.deepcopy(RECIPES[name])


# Fine-tuning a pretrained HF ViT-B/16 on CIFAR-10 following the ViT paper (Appendix B.1.1): SGD with
# momentum 0.9, no weight decay, gradient clipping at global norm 1, linear warmup then cosine decay,
# batch 512 (here 64 x 8 accumulated), 224 x 224 inputs. The reference runs this mirrors: google-research's
# vision_transformer reports 98.59 % (500 steps) and 99.02 % (10k steps) on CIFAR-10 with ViT-B/16 (i21k).
def finetune_recipe(steps: int = 500) -> dict[str, dict[str, Any]]:
    """The fine-tuning recipe for ``steps`` optimizer steps of batch 512: 500 (the default, about 4 GPU-hours
    less than 10k) or 10_000 (the paper's long schedule). Warmup: 500 steps for the long schedule, as in
    google-research's config; 10 % of the steps for shorter ones (our choice)."""
    _check_number("steps", steps, low=1, integer=True)
    return {
        "data": dict(batch_size=64, augment="crop_flip", resize=224),
        "fit": dict(epochs=steps, max_steps=steps, warmup_steps=min(500, steps // 10), optimizer="sgd", lr=0.03,
                    momentum=0.9, weight_decay=0.0, grad_clip=1.0, accumulation_steps=8),
    }


FINETUNE_RECIPE: dict[str, dict[str, Any]] = finetune_recipe(500)  # the 500-step default


def top_k(logits: torch.Tensor, id2label: dict[int, str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most probable ``(label, probability)`` pairs."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"logits must be a (B, num_classes) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}.")
    _check_number("k", k, low=1, integer=True)
    missing = [i for i in range(logits.shape[-1]) if i not in id2label]
    if missing:
        raise ValueError(f"id2label has no name for class(es) {missing[:5]} of {logits.shape[-1]}; pass the "
                         "model's config.id2label.")
    probs = logits.detach().float().softmax(-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(id2label[int(i)], float(v)) for v, i in zip(vs, idx)] for vs, idx in zip(values, indices)]


# ----------------------------------------------------------------------------------------------------
# Run records
# ----------------------------------------------------------------------------------------------------

def hardware_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What ran the numbers: host, CPU, core count, torch threads, GPU name, library versions."""
    device = torch.device(device) if device is not None else get_device()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"hostname": socket.gethostname(), "device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "cpu_native_bf16": cpu_has_native_bf16()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _jsonable(value, where: str):
    """Plain JSON for a run record: tensors and NumPy scalars become numbers or lists; NaN/inf and objects
    JSON cannot hold raise, naming the key, instead of being written as strings or invalid JSON."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"save_results: {where} is {value}; a run record holds finite numbers only. If the run "
                         "diverged, fix it (lower the learning rate); if the value is undefined, pass None.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"save_results: {where} is a {type(value).__name__}, which a JSON record cannot hold; convert "
                    "it to a number, string, list or dict first.")


def save_results(path: str | Path, *, metrics: dict, config: dict, seed: int, dataset: str,
                 wall_time_s: float, device: torch.device | str | None = None, **extra) -> Path:
    """Write one run's record as JSON: metrics, config, seed, hardware, wall time, dataset copy.

    Tensors and NumPy numbers are written as numbers; NaN/inf or an object JSON cannot hold raise a
    ValueError/TypeError naming the key, before anything is written."""
    if not isinstance(metrics, dict) or not isinstance(config, dict):
        raise TypeError("save_results: metrics and config must be dicts.")
    record = {"metrics": metrics, "config": config, "seed": seed, "dataset": dataset,
              "wall_time_s": round(float(wall_time_s), 1), "hardware": hardware_info(device),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    text = json.dumps(_jsonable(record, "record"), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------------
# Plots (matplotlib is imported inside each function; each returns the Figure and can save it)
# ----------------------------------------------------------------------------------------------------

def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: ``(B, C, H, W)`` or ``(C, H, W)`` back to [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) numpy for imshow."""
    img = img.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def _finish(fig, save_path: str | Path | None, tight: bool = True):
    if tight:
        fig.tight_layout()
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=120, bbox_inches="tight")
    return fig


def upsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Rollout maps ``(B, h, w)`` -> ``(B, H, W)`` bilinearly upsampled, each scaled to [0, 1]."""
    m = F.interpolate(masks.detach().float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def _check_images(images, mean, std, titles=None, name: str = "titles") -> torch.Tensor:
    """The plots' shared input checks; returns the images in [0, 1] (denormalised when mean/std are given)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a batch (B, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}; "
                         "add a batch dimension with x.unsqueeze(0) for one image.")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (the loaders' normalisation, e.g. loader.dataset.mean/.std) or "
                         "neither (images already in [0, 1]).")
    if mean is not None and (len(mean) != images.shape[1] or len(std) != images.shape[1]):
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values but the images have {images.shape[1]} "
                         "channel(s).")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} {name} for {len(images)} images; pass one per image.")
    images = images.detach().float().cpu()
    return denormalize(images, mean, std) if mean is not None else images


def _overlay(img: np.ndarray, mask: torch.Tensor, colormap, alpha: float) -> np.ndarray:
    """Blend an (H, W, 3) image with a colour-mapped (H, W) mask in [0, 1]."""
    return (1 - alpha) * img + alpha * colormap(mask.numpy())[..., :3]


def plot_attention_maps(images: torch.Tensor, masks: torch.Tensor, *, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, titles: Sequence[str] | None = None,
                        per_row: int | None = None, alpha: float = 0.5, cmap: str = "jet",
                        suptitle: str | None = "Attention rollout", save_path: str | Path | None = None):
    """For each image: original | mask | overlay. ``images`` is a normalised batch ``(B, C, H, W)`` (pass
    ``mean``/``std`` to undo it) or already in [0, 1]; ``masks`` is ``(B, h, w)`` from :func:`attention_rollout`,
    upsampled to the image and scaled to [0, 1]. ``per_row`` triplets per figure row (default: 1 for up to
    3 images, else 4)."""
    import matplotlib.pyplot as plt

    if images.ndim != 4 or masks.ndim != 3 or len(images) != len(masks):
        raise ValueError(f"expected images (B, C, H, W) and masks (B, h, w) with the same B, got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}.")
    images = _check_images(images, mean, std, titles)
    n = len(images)
    per_row = per_row or (1 if n <= 3 else min(4, n))
    rows = math.ceil(n / per_row)
    up = upsample_masks(masks.cpu(), tuple(images.shape[-2:]))
    colormap = plt.get_cmap(cmap)
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(2.0 * 3 * per_row, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, per_row)
        img = _to_hwc(images[i])
        overlay = _overlay(img, up[i], colormap, alpha)
        name = titles[i] if titles is not None else f"#{i}"
        for j, (panel, label) in enumerate(((img, "original"), (up[i].numpy(), "mask"), (overlay, "overlay"))):
            ax = axes[r, 3 * c + j]
            ax.imshow(panel, cmap=cmap if j == 1 else None, vmin=0, vmax=1)
            ax.set_title(f"{name}: {label}" if j == 0 else label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, save_path)


def plot_mask_grid(images: torch.Tensor, columns: dict[str, torch.Tensor], *, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, row_titles: Sequence[str] | None = None, alpha: float = 0.5,
                   cmap: str = "jet", suptitle: str | None = None, save_path: str | Path | None = None):
    """One image per row: the original, then one overlay per entry of ``columns`` (name -> masks (B, h, w)),
    e.g. the rollout after each layer, or mean/max/min head fusion, side by side."""
    import matplotlib.pyplot as plt

    images = _check_images(images, mean, std, row_titles, "row_titles")
    n, k = len(images), len(columns)
    for name, m in columns.items():
        if m.ndim != 3 or len(m) != n:
            raise ValueError(f"columns[{name!r}] has shape {tuple(m.shape)}; expected ({n}, h, w).")
    colormap = plt.get_cmap(cmap)
    upsampled = {name: upsample_masks(m.cpu(), tuple(images.shape[-2:])) for name, m in columns.items()}
    fig, axes = plt.subplots(n, k + 1, figsize=(1.7 * (k + 1), 1.8 * n), squeeze=False)
    for i in range(n):
        img = _to_hwc(images[i])
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(row_titles[i] if row_titles is not None else "original", fontsize=8)
        for j, (name, masks) in enumerate(upsampled.items(), start=1):
            axes[i, j].imshow(_overlay(img, masks[i], colormap, alpha))
            axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, save_path)


def plot_history(history: History | dict, title: str = "Training", save_path: str | Path | None = None):
    """Loss, accuracy (train and val, per epoch) and learning rate (per step)."""
    import matplotlib.pyplot as plt

    h = history.to_dict() if isinstance(history, History) else history
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(h["epoch"], h[f"train_{key}"], "o-", label="train")
        if h.get(f"val_{key}"):
            ax.plot(h["epoch"], h[f"val_{key}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(np.arange(1, len(h["lr"]) + 1), h["lr"])
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("warmup + cosine schedule")
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    return _finish(fig, save_path)


def plot_images(images: torch.Tensor, titles: Sequence[str] | None = None, *, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, ncols: int = 8, suptitle: str | None = None,
                save_path: str | Path | None = None):
    """A grid of images (normalised with ``mean``/``std``, or in [0, 1]) with a title each."""
    import matplotlib.pyplot as plt

    images = _check_images(images, mean, std, titles)
    _check_number("ncols", ncols, low=1, integer=True)
    n = len(images)
    ncols = min(ncols, n)
    rows = math.ceil(n / ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(1.6 * ncols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(_to_hwc(images[i]))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, save_path)


def plot_patch_grid(image: torch.Tensor, patch_size: int, *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, save_path: str | Path | None = None):
    """One image with its patch grid drawn on it, and its patches laid out in token order."""
    import matplotlib.pyplot as plt

    if mean is not None and std is not None:
        image = denormalize(image.detach().float().cpu(), mean, std)
    C, H, W = image.shape
    gh, gw = H // patch_size, W // patch_size
    patches = image.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)  # (C, gh, gw, P, P)
    patches = patches.permute(1, 2, 0, 3, 4).reshape(gh * gw, C, patch_size, patch_size)  # (N, C, P, P)
    fig = plt.figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(_to_hwc(image), extent=(0, W, H, 0))
    for k in range(1, gh):
        ax.axhline(k * patch_size, color="white", lw=0.8)
    for k in range(1, gw):
        ax.axvline(k * patch_size, color="white", lw=0.8)
    ax.set_title(f"{H}x{W} image, {patch_size}x{patch_size} patches -> {gh * gw} tokens")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    sub = fig.add_gridspec(gh, gw, left=0.55, right=0.98, top=0.88, bottom=0.1, wspace=0.08, hspace=0.08)
    for idx in range(gh * gw):
        pax = fig.add_subplot(sub[idx // gw, idx % gw])
        pax.imshow(_to_hwc(patches[idx]))
        pax.axis("off")
    fig.text(0.765, 0.93, "patches in token order (row-major)", ha="center")
    return _finish(fig, save_path, tight=False)  # the patch panel has its own grid spec


def position_similarity(model: VisionTransformer) -> torch.Tensor:
    """Cosine similarity of every patch's position embedding with every other's, ``(g, g, g, g)``:
    ``[r, c]`` is the ``(g, g)`` map of patch (r, c)'s similarity to each patch (ViT paper, Fig. 7)."""
    g = model.config.grid_size
    pos = F.normalize(model.pos_embed.detach().float().cpu()[0, 1:], dim=-1)  # (N, D), CLS dropped
    return (pos @ pos.T).reshape(g, g, g, g)  # (N, N) -> [row, col] of the query patch, then its map


def plot_position_similarity(model: VisionTransformer, save_path: str | Path | None = None):
    """Cosine similarity of each patch's position embedding with all others (ViT paper, Fig. 7)."""
    import matplotlib.pyplot as plt

    g = model.config.grid_size
    sim = position_similarity(model)
    fig, axes = plt.subplots(g, g, figsize=(min(12, 1.0 * g + 2), min(12, 1.0 * g + 2)), squeeze=False)
    for r in range(g):
        for c in range(g):
            ax = axes[r, c]
            im = ax.imshow(sim[r, c].numpy(), vmin=-1, vmax=1, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(r + 1), fontsize=8)
            if r == g - 1:
                ax.set_xlabel(str(c + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.suptitle("Position embedding similarity (cosine)")
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    return _finish(fig, save_path, tight=False)  # tight_layout fights the shared colour bar


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, num_classes)`` counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def plot_confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                          title: str = "Confusion matrix (test)", save_path: str | Path | None = None):
    """Counts per (true, predicted) class pair, with the numbers written in the cells."""
    import matplotlib.pyplot as plt

    k = len(classes)
    cm = confusion_matrix(preds, labels, k).numpy()
    fig, ax = plt.subplots(figsize=(0.6 * k + 3, 0.6 * k + 2.5))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="images")
    return _finish(fig, save_path)
