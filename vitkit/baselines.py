"""Baselines a ViT is measured against: the small CNN that ``InductiveBias.ipynb`` trains beside the ViT variants
and ``WeaklySupervisedLocalization.ipynb`` beside its ViT."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Four 3x3 convolution blocks (BatchNorm, ReLU) with a 2x2 max-pool after each but the last, global average
    pooling and a linear head: all of a CNN's priors at once (locality, weight sharing, translation invariance).
    ``features(x)`` is the last convolution block's output, e.g. for Grad-CAM."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, channels: tuple[int, ...] = (64, 128, 256, 256)):
        super().__init__()
        layers, c_in = [], in_channels
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if c_out != channels[-1]:
                layers.append(nn.MaxPool2d(2))  # e.g. 32 -> 16 -> 8 -> 4
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, C, h, w) -> (B, C) -> (B, classes)
