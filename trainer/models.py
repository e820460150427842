"""Compact CNNs for 48x48 gray faces, built only from export- and INT8-friendly ops
(Conv, BatchNorm, ReLU, MaxPool, global average pool, Linear)."""

from __future__ import annotations

import torch
from torch import nn

from runtime.labels import NUM_CLASSES


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class VGGFace(nn.Module):
    """VGG-style: stages of 3x3 conv-BN-ReLU, 2x2 max-pool between stages, global average pool.

    `stem_stride=2` makes the first conv stride 2. The faces are blurred to the Training split's sharpness
    (sigma ~2.75 px at 48x48, trainer/blur.py), so full resolution holds little a half-resolution first stage
    misses, and each stage's convs cost a quarter as much.
    """

    def __init__(
        self,
        width: int = 32,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        in_channels: int = 1,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.3,
        stem_stride: int = 1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, depth in enumerate(depths):
            cout = width * 2**stage
            for _ in range(depth):
                layers.append(conv_bn_relu(cin, cout, stride=stem_stride if not layers else 1))
                cin = cout
            if stage < len(depths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


ARCHITECTURES = {"vgg": VGGFace}


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    if "depths" in kwargs:
        kwargs["depths"] = tuple(kwargs["depths"])
    return ARCHITECTURES[arch](**kwargs)
