"""Baselines a ViT is measured against: the small CNN that ``InductiveBias.ipynb`` trains beside the ViT variants
and ``WeaklySupervisedLocalization.ipynb`` beside its ViT."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """3x3 convolution blocks (BatchNorm, ReLU), a 2x2 max-pool after each of the first ``pools`` blocks, global
    average pooling and a linear head: a CNN's priors (locality, weight sharing, translation invariance). By default
    four blocks, the last two on an 8x8 map of a 32x32 image (32 -> 16 -> 8). ``features(x)`` is the last
    convolution block's output, e.g. for Grad-CAM."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, channels: tuple[int, ...] = (64, 128, 256, 256),
                 pools: int = 2):
        super().__init__()
        if not 0 <= pools <= len(channels):
            raise ValueError(f"pools={pools}: SmallCNN pools after each of its first `pools` blocks, so it must lie "
                             f"between 0 and len(channels)={len(channels)}")
        layers, c_in = [], in_channels
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < pools:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, C, h, w) -> (B, C) -> (B, classes)
