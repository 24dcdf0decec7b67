"""vit_helpers: a Vision Transformer you can read in one sitting and copy into your own notebook.

* a ViT (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words", arXiv:2010.11929) that computes the same
  function as HuggingFace ``transformers``' ``ViTForImageClassification``, with options for small data sets
  (convolutional and shifted-patch stems, locality self-attention, fixed sin-cos positions) and a switch between
  the fused attention kernel and the explicit softmax(QK^T)V;
* the linear-warmup + cosine learning-rate schedule;
* attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", arXiv:2005.00928) and
  raw CLS attention maps, for our, HF's and timm's attention tensors;
* weight conversion to and from HuggingFace (``from_hf`` / ``to_hf``) and ``save_model`` / ``load_model`` (the
  repository's shipped weights load with this file alone).

Only torch and the standard library are imported at import time (transformers and safetensors inside the
functions that need them). Data, training, explanations, plots and run records live in the notebooks' harness,
the ``vitkit`` package next to this file; this file never imports it. MIT licence (see the README).

Sections, in reading order: config, blocks, model, schedule, rollout, HF interop, weights, and last the input
checks that every public function calls before any work.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ViTConfig", "VisionTransformer", "PatchEmbedding", "ConvStem", "ShiftedPatchTokenizer", "Dropout", "Attention",
    "MLP", "Block", "sincos_position_embedding", "use_fused_attention", "count_parameters", "position_similarity",
    "warmup_cosine_schedule", "warmup_cosine_factor",
    "rollout_matrix", "attention_rollout", "cls_attention_map", "token_map",
    "from_hf", "to_hf",
    "DataNotFoundError", "save_model", "load_model",
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
    # stacked stride-2 3x3 convolutions, same token grid), "conv-centred" (the same with 4x4 kernels, so that each
    # token's receptive field is centred on its patch), "cct" (Hassani et al. 2021, Compact Convolutional
    # Transformers: stride-1 3x3 convolutions, each followed by a stride-2 max-pool, same token grid) or "spt"
    # (Lee et al. 2021, Shifted Patch Tokenization: the image and four copies shifted diagonally by half a
    # patch, patchified together).
    stem: str = "patch"
    # Locality Self-Attention (Lee et al. 2021): a learned softmax temperature and no attention to oneself.
    lsa: bool = False
    # "learned" position embeddings (the paper) or fixed 2-D "sincos" ones (MoCo v3 / MAE); CLS gets zeros.
    pos_embed: str = "learned"
    # Multiply the token embeddings (CLS and patches) by sqrt(dim) before the positions are added, as the
    # Transformer paper scales its token embeddings (and the original notebooks did): tokens outweigh N(0, 1) positions.
    embed_scale: bool = False
    mlp_dropout: float = 0.0  # inside each MLP, after the GELU (not in HF's ViT, whose MLP has none)
    # "trunc_normal": N(0, 0.02) truncated weights, zero biases (HF, timm); "torch": PyTorch's own defaults for
    # every Linear, Conv2d and LayerNorm and N(0, 1) CLS token and positions (a model written in plain PyTorch).
    init: str = "trunc_normal"

    def __post_init__(self) -> None:
        _check_config(self)  # the checks, with their messages, are in the last section of this file

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Sequence length T: one CLS token plus one token per patch."""
        return 1 + self.grid_size ** 2


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
    """Convolutional stem: log2(P) 3x3 (or 4x4) convolutions with BatchNorm and ReLU, widths doubling up to
    ``dim``, then a 1x1 convolution to ``dim``. It yields the same (H/P) x (W/P) token grid as
    :class:`PatchEmbedding`, but with overlapping receptive fields: a locality prior that a linear patch embedding
    lacks, which helps a ViT most on small data sets. Three ways to halve the resolution per convolution:

    - ``stem="conv"`` (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): stride-2
      convolutions, cheap (each runs at the output resolution). A 3x3 stride-2 convolution with padding 1 centres
      output i on input pixel 2i, half an input pixel before the middle (2i + 0.5) of the two it replaces, and the
      halves add up: with P = 8 a token's receptive field is centred 3.5 px up and left of its patch's centre, so
      maps drawn on the patch grid sit that far off the object;
    - ``stem="conv-centred"``: the same with 4x4 kernels (padding 1), which centre output i on 2i + 0.5 exactly, so
      every token's receptive field is centred on its own patch (16/9 the stem's multiply-adds);
    - ``stem="cct"`` (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact Transformers"):
      stride-1 convolutions, each followed by a 3x3 stride-2 max-pool, as in CCT's tokenizer. Each convolution
      sees every pixel at its input resolution (4x the multiply-adds), and the pooling adds a little
      translation invariance: closer to a small CNN. Its 3x3 stride-2 pools shift the grid as ``"conv"`` does.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        n = cfg.patch_size.bit_length() - 1  # halvings: 2**n = patch_size
        widths = [max(16, cfg.dim // 2 ** (n - 1 - i)) for i in range(n)]
        pool, kernel = cfg.stem == "cct", 4 if cfg.stem == "conv-centred" else 3
        layers, c_in = [], cfg.in_channels
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, kernel, stride=1 if pool else 2, padding=1, bias=False),
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


class Dropout(nn.Dropout):
    """``nn.Dropout``, with a faster mask on a CPU. PyTorch's CPU dropout draws one number from its Mersenne twister
    per element, which in a small ViT costs more than the matrix products (bench/bench_dropout.py); this one cuts
    each 32-bit draw into two 16-bit integers, so ``p`` is rounded to a multiple of 1/65536 and the kept values are
    scaled by the exact inverse of the keep rate (the expectation stays ``x``). Elsewhere it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = round(self.p * 65536)  # drop where a uniform 16-bit integer (as int16: -32768..32767) is below it
        if not self.training or x.device.type != "cpu" or self.inplace or not 0 < cut < 65536:
            return super().forward(x)  # (p within 2^-17 of 0 or 1: PyTorch's masks)
        bits = x.new_empty((x.numel() + 1) // 2, dtype=torch.int32).random_(-2 ** 31, 2 ** 31).view(torch.int16)
        keep = bits[: x.numel()].view(x.shape) >= cut - 32768
        return x * keep * (65536 / (65536 - cut))  # the scale in float, rounded once into x's dtype


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
        self.attn_drop = Dropout(cfg.attn_dropout)  # the explicit path's; SDPA applies its p itself
        self.fused_attn = cfg.fused_attn
        self.last_path: str | None = None  # "SDPA" or "explicit": the kernel the last forward pass took
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
        dropout_p = self.attn_drop.p if self.training else 0.0
        attn, mask = None, None
        if self.log_scale is not None:  # LSA: learned temperature; a token may not attend to itself
            q = q * (self.log_scale.exp() / self.scale)  # so that the usual scaling gives exp(log_scale)
            mask = self.lsa_mask if self.lsa_mask.shape[0] == T else ~torch.eye(T, dtype=torch.bool, device=x.device)
        fused = not return_attention and use_fused_attention(self.fused_attn, q)
        self.last_path = "SDPA" if fused else "explicit"
        if fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, h, T, d)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # post-softmax probabilities
            out = self.attn_drop(attn) @ v  # (B, h, T, d)
            attn = attn if return_attention else None
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, h, T, d) -> (B, T, D)
        return self.proj(out), attn


class MLP(nn.Module):
    """Linear -> exact (erf) GELU -> (dropout) -> Linear."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop = Dropout(cfg.mlp_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LayerNorm encoder block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = Dropout(cfg.dropout)

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

    def __init__(self, config: ViTConfig | None = None, **options):
        super().__init__()
        cfg = config if config is not None else ViTConfig(**options)  # VisionTransformer(cfg) or keywords
        if options and config is not None:
            raise TypeError("pass a ViTConfig or keyword options, not both: VisionTransformer(cfg) or "
                            "VisionTransformer(image_size=..., ...); dataclasses.replace(cfg, ...) changes a field.")
        self.config = cfg
        stems = {"patch": PatchEmbedding, "conv": ConvStem, "conv-centred": ConvStem, "cct": ConvStem,
                 "spt": ShiftedPatchTokenizer}
        self.patch_embed = stems[cfg.stem](cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        # A parameter either way (same state dict, HF-convertible); fixed sin-cos ones are not trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim), requires_grad=cfg.pos_embed == "learned")
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: ViTConfig) -> "VisionTransformer":
        return cls(cfg)

    def reset_parameters(self) -> None:
        """``init="trunc_normal"``: Normal(0, 0.02) truncated at +-2 std for weights, CLS token and position
        embeddings; zero biases; unit LayerNorms. (HF and timm call ``trunc_normal_(std=0.02)``, whose default
        bounds are +-2 in absolute value, i.e. +-100 std: effectively untruncated.) ``init="torch"``: each
        module's own ``reset_parameters`` (PyTorch's defaults) and N(0, 1) CLS token and positions."""
        torch_init = self.config.init == "torch"
        for m in self.modules():
            if torch_init and isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
                m.reset_parameters()
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                _trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        init = nn.init.normal_ if torch_init else _trunc_normal
        init(self.cls_token)
        if self.config.pos_embed == "sincos":
            with torch.no_grad():
                self.pos_embed.copy_(sincos_position_embedding(self.config.grid_size, self.config.dim))
        else:
            init(self.pos_embed)
        for m in self.modules():
            if isinstance(m, Attention) and m.log_scale is not None:
                nn.init.constant_(m.log_scale, math.log(m.scale))

    def forward_features(self, x: torch.Tensor, return_attentions: bool = False
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Image batch -> normalised tokens ``(B, T, D)`` (and the attention maps if asked)."""
        _check_images(self.config, x, self.cls_token.dtype)
        tokens = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, tokens], dim=1)  # (B, T, D), T = N + 1
        if self.config.embed_scale:
            x = x * math.sqrt(self.config.dim)
        x = x + self.pos_embed
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


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def position_similarity(model: VisionTransformer) -> torch.Tensor:
    """Cosine similarity of every patch's position embedding with every other's, ``(g, g, g, g)``:
    ``[r, c]`` is the ``(g, g)`` map of patch (r, c)'s similarity to each patch (ViT paper, Fig. 7)."""
    g = model.config.grid_size
    pos = F.normalize(model.pos_embed.detach().float().cpu()[0, 1:], dim=-1)  # (N, D), CLS dropped
    return (pos @ pos.T).reshape(g, g, g, g)  # (N, N) -> [row, col] of the query patch, then its map


# ----------------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------------

def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                           ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the base LR over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Step it once per optimizer step. Factor: ``step / warmup_steps`` while ``step < warmup_steps``, then
    ``0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``; 0 after ``total_steps``.
    """
    _check_schedule(optimizer, warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_factor(warmup_steps, total_steps))


def warmup_cosine_factor(warmup_steps: int, total_steps: int):
    """The schedule's LR multiplier as a function of the optimizer step (what :func:`warmup_cosine_schedule` uses)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


# ----------------------------------------------------------------------------------------------------
# Attention rollout
# ----------------------------------------------------------------------------------------------------

def rollout_matrix(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                   discard_ratio: float = 0.0) -> torch.Tensor:
    """Rolled-out attention ``(B, T, T)``: each row is a distribution over input tokens (sums to 1).

    Per layer: fuse heads (mean/max/min), optionally zero the lowest ``discard_ratio`` fraction of the
    fused ``T x T`` matrix per sample (the CLS->CLS entry is protected, as in the reference
    implementation by Gildenblat), add the identity for the residual path, renormalise rows, then
    multiply layer by layer with later layers on the left: ``A_L @ ... @ A_1``.
    """
    layers = _check_attentions(attentions)
    _check_rollout_options(head_fusion, discard_ratio)
    means = [a.detach().float().mean(dim=1) for a in layers]  # (B, heads, T, T) -> (B, T, T) per layer
    _check_probabilities(layers, means)
    B, _, T, _ = layers[0].shape
    eye = torch.eye(T, device=layers[0].device, dtype=torch.float32)
    result = eye.expand(B, T, T)
    num_discard = int(T * T * discard_ratio)
    for attn, mean in zip(layers, means):
        fused = mean if head_fusion == "mean" else _fuse_heads(attn.detach().float(), head_fusion)  # (B, T, T)
        if num_discard:
            fused = _discard_lowest(fused, num_discard)
        a = fused + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result  # later layers on the left
    return result


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
    return token_map(result[:, 0], num_prefix_tokens, grid_size)  # CLS row -> (B, h, w)


def cls_attention_map(attentions: Sequence[torch.Tensor], layer: int = -1, head_fusion: str = "mean",
                      grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1,
                      token: int = 0) -> torch.Tensor:
    """Raw attention of the CLS token to the patches in one layer (no rollout): ``(B, grid_h, grid_w)``.
    ``token``: read another token's row instead (patch (r, c) of a w-wide grid is token ``prefix + r * w + c``)."""
    layers = _check_attentions(attentions)
    _check_layer_and_token(layer, token, len(layers), layers[0].shape[-1])
    _check_probabilities(layers, [a.detach().float().mean(dim=1) for a in layers])
    row = layers[layer].detach().float()[:, :, token]  # (B, heads, T): the token's row (CLS by default)
    return token_map(_fuse_heads(row, head_fusion), num_prefix_tokens, grid_size)  # (B, h, w)


def token_map(values: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int] | None) -> torch.Tensor:
    """Per-token values ``(B, T)`` -> per-patch map ``(B, h, w)``: drop the prefix tokens (CLS, distillation,
    registers), then square unless ``grid_size=(h, w)`` is given."""
    B, T = values.shape
    h, w = _check_grid(T, num_prefix_tokens, grid_size)
    return values[:, num_prefix_tokens:].reshape(B, h, w)


_HEAD_FUSIONS = ("mean", "max", "min")


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


# ----------------------------------------------------------------------------------------------------
# HuggingFace interop
# ----------------------------------------------------------------------------------------------------

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
    if not isinstance(hf_model.classifier, nn.Linear):
        raise TypeError(f"from_hf maps HF's classifier, one nn.Linear, to our head; this model's classifier is a "
                        f"{type(hf_model.classifier).__name__}. Convert the model with its original linear classifier "
                        "and replace our model.head afterwards.")
    if config.hidden_act != "gelu":
        raise ValueError(f"HF config hidden_act={config.hidden_act!r}; VisionTransformer uses exact GELU ('gelu').")
    model = VisionTransformer(ViTConfig(
        image_size=_square(config.image_size, "image_size"), patch_size=_square(config.patch_size, "patch_size"),
        in_channels=config.num_channels, num_classes=config.num_labels, dim=config.hidden_size,
        depth=config.num_hidden_layers, heads=config.num_attention_heads, mlp_dim=config.intermediate_size,
        dropout=config.hidden_dropout_prob, attn_dropout=config.attention_probs_dropout_prob,
        qkv_bias=config.qkv_bias, layer_norm_eps=config.layer_norm_eps))  # the rest: HF's ViT (patch stem, ...)
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
# Weights
# ----------------------------------------------------------------------------------------------------

class DataNotFoundError(FileNotFoundError):
    """A file (weights, a data set) is not there and cannot be fetched; the message says which files go where.
    Defined here so that :func:`load_model` works in a copy of this file alone; ``vitkit.data`` raises it too."""


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
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors' own error type: not a safetensors file, or a truncated one
        raise ValueError(f"{path} is not a readable safetensors file ({e}); pass a file written by save_model, such "
                         "as weights/mnist-fast.safetensors.") from e
    model = VisionTransformer(_header_config(header, path))
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), {k: json.loads(v) for k, v in header.items()}


# ----------------------------------------------------------------------------------------------------
# Input checks: every public function above checks its arguments here, before any work, with a message that
# names the problem and the fix
# ----------------------------------------------------------------------------------------------------

def _check_config(cfg: ViTConfig) -> None:
    """Every field of a ViTConfig, with a message naming it and the fix."""
    for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "heads",
                 "mlp_dim"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if cfg.image_size % cfg.patch_size:
        raise ValueError(
            f"patch_size={cfg.patch_size} does not divide image_size={cfg.image_size}; choose a patch "
            f"size that divides the image size (e.g. {_divisors_hint(cfg.image_size)}) or resize the images.")
    if cfg.dim % cfg.heads:
        raise ValueError(f"heads={cfg.heads} does not divide dim={cfg.dim}; choose heads among "
                         f"{_divisors_hint(cfg.dim)} or change dim.")
    for name in ("dropout", "attn_dropout", "mlp_dropout", "layer_norm_eps"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r}).")
    for name in ("dropout", "attn_dropout", "mlp_dropout"):
        p = getattr(cfg, name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}.")
    if not (math.isfinite(cfg.layer_norm_eps) and cfg.layer_norm_eps > 0):
        raise ValueError(f"layer_norm_eps must be a finite number > 0 (HF's default: 1e-12), got "
                         f"{cfg.layer_norm_eps}.")
    for name in ("qkv_bias", "lsa", "embed_scale"):
        if not isinstance(getattr(cfg, name), bool):
            raise TypeError(f"{name} must be True or False, got {getattr(cfg, name)!r}.")
    if cfg.stem not in ("patch", "conv", "conv-centred", "cct", "spt"):
        raise ValueError(f"stem must be 'patch' (linear patch embedding), 'conv' or 'conv-centred' (convolutional "
                         f"stems), 'cct' (convolutional tokenizer) or 'spt' (shifted patch tokenization), got "
                         f"{cfg.stem!r}.")
    if cfg.pos_embed not in ("learned", "sincos"):
        raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {cfg.pos_embed!r}.")
    if cfg.pos_embed == "sincos" and cfg.dim % 4:
        raise ValueError(f"pos_embed='sincos' splits dim into 4 (sin/cos of rows/columns), so dim must be a "
                         f"multiple of 4, got {cfg.dim}.")
    if cfg.stem == "spt" and cfg.patch_size < 2:
        raise ValueError("stem='spt' shifts by half a patch, so patch_size must be >= 2.")
    power_of_2 = cfg.patch_size >= 2 and not cfg.patch_size & (cfg.patch_size - 1)
    if cfg.stem in ("conv", "conv-centred", "cct") and not power_of_2:
        raise ValueError(f"stem={cfg.stem!r} downsamples by 2 per convolution, so patch_size must be a power "
                         f"of 2 >= 2, got {cfg.patch_size}; use patch_size 2, 4, 8 or 16, or stem='patch'.")
    if cfg.init not in ("trunc_normal", "torch"):
        raise ValueError(f"init must be 'trunc_normal' (N(0, 0.02), as HF and timm) or 'torch' (PyTorch's module "
                         f"defaults, N(0, 1) CLS and positions), got {cfg.init!r}.")
    if cfg.fused_attn not in (None, True, False):
        raise TypeError(f"fused_attn must be None (pick per device and dtype), True (SDPA) or False (explicit), "
                        f"got {cfg.fused_attn!r}.")


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d > 1)


def _check_images(cfg: ViTConfig, x: torch.Tensor, weights: torch.dtype) -> None:
    """A batch the model can take: (B, C, H, W) floats of the configured size and channels, the weights' dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, {cfg.in_channels}, {cfg.image_size}, "
                        f"{cfg.image_size}), got {type(x).__name__}.")
    if x.ndim != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.ndim == 3 else ""
        raise ValueError(f"expected a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}.{hint}")
    if not x.is_floating_point():
        raise TypeError(f"expected float images, got {x.dtype}: convert with x.float() / 255 and normalise "
                        f"them as in training (the loaders of vit_helpers do both).")
    if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"the images are {x.dtype} but the model's weights are {weights}: convert the batch with "
                        f"x.to({weights}) (x.float() for float32), or the model with model.to({x.dtype}).")
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


def _header_config(header: dict[str, str], path: Path) -> ViTConfig:
    """The ViTConfig in a weights file's header (removed from ``header``), or a ValueError naming the file."""
    if "vit_config" not in header:
        raise ValueError(f"{path} was not written by vit_helpers.save_model (no vit_config in its header).")
    try:
        fields = json.loads(header.pop("vit_config"))
        for key, value in header.items():
            json.loads(value)
    except ValueError as e:
        raise ValueError(f"{path}: its header is not valid JSON ({e}); the file was not written by save_model, or was "
                         "edited.") from None
    known = set(ViTConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known) if isinstance(fields, dict) else []
    if not isinstance(fields, dict) or unknown:
        what = f"fields {', '.join(unknown)}" if unknown else repr(fields)
        raise ValueError(f"{path}: its vit_config holds {what} that this vit_helpers.py does not know (a file from a "
                         "newer version?); update vit_helpers.py.")
    return ViTConfig(**fields)


def _check_schedule(optimizer, warmup_steps, total_steps) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be between 0 and total_steps={total_steps}; "
                         f"lower warmup_steps (the original used total_steps // 5) or raise total_steps.")


def _check_attentions(attentions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The layers as a list, each a float tensor (B, heads, T, T) of one shape; their values are checked by
    :func:`_check_probabilities` on the head means the rollout computes anyway."""
    if isinstance(attentions, torch.Tensor):
        raise TypeError("attentions must be a tuple/list of per-layer tensors (B, heads, T, T), got one tensor; "
                        "wrap a single layer as (attn,).")
    try:
        layers = list(attentions) if attentions is not None else []  # a tuple, a list or a generator of layers
    except TypeError:
        raise TypeError(f"attentions must be a tuple/list of per-layer tensors (B, heads, T, T), got "
                        f"{type(attentions).__name__}.") from None
    if not layers:
        raise ValueError("attentions is empty: call the model with return_attentions=True (ours) or "
                         "output_attentions=True with attn_implementation='eager' (HF).")
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
        if not a.is_floating_point():
            raise TypeError(f"attentions[{i}] has dtype {a.dtype}; attention probabilities are floats.")
    if first.shape[0] == 0:
        raise ValueError(f"attentions hold a batch of 0 images (shape {tuple(first.shape)}); pass the attentions of "
                         "at least one image.")
    return layers


_PROBABILITY_TOL = 1e-2  # bf16/fp16 attention rows sum to 1 within about 1e-2


def _check_probabilities(layers: list[torch.Tensor], head_means: list[torch.Tensor]) -> None:
    """ValueError unless every row of every head is a probability distribution (finite, >= 0, sums to 1).

    One cheap test on the head means, which rollout needs anyway and which are 1/heads the size: a NaN/inf, a
    negative entry or a row that does not sum to 1 in any head shows in the mean (as NaN/inf, a negative mean or a
    mean row sum off by more than the tolerance, or is averaged out only by another head's error in the opposite
    direction). Only when it fails does the per-head check run, to word the error."""
    means = torch.stack(head_means)  # (L, B, T, T)
    sums = means.sum(-1)  # (L, B, T)
    if bool(torch.isfinite(sums).all() & (means.amin() >= -_PROBABILITY_TOL)
            & ((sums - 1).abs().amax() <= _PROBABILITY_TOL)):
        return
    for i, a in enumerate(layers):
        _explain_probabilities(a.detach().float(), f"attentions[{i}]")
    _explain_probabilities(means, "the head-averaged attentions")


def _explain_probabilities(a: torch.Tensor, name: str) -> None:
    """The detailed check behind :func:`_check_probabilities`: raises naming what is wrong with ``a``."""
    tol, problem = _PROBABILITY_TOL, None
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


def _prefix_hint(T: int) -> str:
    """Suggests the smallest prefix-token count (2..17) that would leave a square grid of patches."""
    k = next((k for k in range(2, 18) if T - k > 0 and math.isqrt(T - k) ** 2 == T - k), None)
    if k is None:
        return ""
    side = math.isqrt(T - k)
    return (f" If the model has more prefix tokens than CLS (DeiT's distillation token: 2; k register tokens: 1 + k),"
            f" pass num_prefix_tokens: num_prefix_tokens={k} would leave a square {side}x{side} grid.")


def _check_rollout_options(head_fusion, discard_ratio) -> None:
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)):
        raise TypeError(f"discard_ratio must be a number in [0, 1), got {type(discard_ratio).__name__} "
                        f"({discard_ratio!r}).")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}.")
    if head_fusion not in _HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; use one of {', '.join(_HEAD_FUSIONS)}.")


def _check_layer_and_token(layer, token, num_layers: int, T: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < T:
        raise ValueError(f"token must be an int in [0, {T - 1}] (0: CLS), got {token!r}.")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int (a layer index; -1 for the last), got {type(layer).__name__} "
                        f"({layer!r}).")
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer={layer} is out of range for {num_layers} layers (use -1 for the last).")


def _check_grid(T: int, num_prefix_tokens, grid_size) -> tuple[int, int]:
    """The (h, w) patch grid of ``T`` tokens after ``num_prefix_tokens``: ``grid_size`` checked, or the square."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or not 0 <= num_prefix_tokens < T:
        raise ValueError(f"num_prefix_tokens must be an int in [0, {T - 1}] (1 for CLS only), got {num_prefix_tokens!r}.")
    N = T - num_prefix_tokens
    if isinstance(grid_size, int) and not isinstance(grid_size, bool):
        grid_size = (grid_size, grid_size)  # one int: a square grid
    if grid_size is not None and not (isinstance(grid_size, (tuple, list)) and len(grid_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid_size)):
        raise ValueError(f"grid_size must be (h, w), two positive ints (or one int for a square grid), got "
                         f"{grid_size!r}.")
    if grid_size is None:
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"{N} patch tokens (T={T} minus {num_prefix_tokens} prefix token(s)) do not form a "
                             f"square grid.{_prefix_hint(T)} For a non-square image pass grid_size=(h, w) with "
                             f"h*w={N}.")
        return side, side
    h, w = grid_size
    if h * w != N:
        raise ValueError(f"grid_size={tuple(grid_size)} holds {h * w} patches but the attentions have {N} "
                         f"patch tokens (T={T} minus {num_prefix_tokens} prefix token(s)); pass grid_size with "
                         f"h*w={N}.{_prefix_hint(T)}")
    return h, w
