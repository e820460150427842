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


def _finish(model: nn.Module, layers: list[nn.Module], channels: int, num_classes: int, dropout: float) -> None:
    """The common tail: features, global average pool, dropout, linear head; He-initialized convs."""
    model.features = nn.Sequential(*layers)
    model.pool = nn.AdaptiveAvgPool2d(1)
    model.dropout = nn.Dropout(dropout)
    model.head = nn.Linear(channels, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _classify(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.head(model.dropout(model.pool(model.features(x)).flatten(1)))


class VGGFace(nn.Module):
    """VGG-style: stages of 3x3 conv-BN-ReLU, 2x2 max-pool between stages, global average pool.

    `stem_stride=2` makes the first conv stride 2: each stage's convs cost a quarter as much.
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
        _finish(self, layers, cin, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _classify(self, x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with an identity (or 1x1 conv-BN) shortcut: Conv, BN, ReLU and Add only."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.relu = nn.ReLU(inplace=True)
        nn.init.zeros_(self.conv2[1].weight)  # each block starts as the identity: deep stacks train from epoch 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetFace(nn.Module):
    """ResNet-style for 48x48 faces: a 3x3 stem at full resolution, stages of BasicBlocks, each stage after
    the first halving the resolution with a stride-2 block and doubling the width, global average pool.

    `depths` counts blocks (two convs each) per stage; `stem_stride=2` halves the resolution in the stem.
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
        layers: list[nn.Module] = [conv_bn_relu(in_channels, width, stride=stem_stride)]
        cin = width
        for stage, depth in enumerate(depths):
            cout = width * 2**stage
            for block in range(depth):
                layers.append(BasicBlock(cin, cout, stride=2 if stage > 0 and block == 0 else 1))
                cin = cout
        _finish(self, layers, cin, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _classify(self, x)


ARCHITECTURES = {"vgg": VGGFace, "resnet": ResNetFace}


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    if "depths" in kwargs:
        kwargs["depths"] = tuple(kwargs["depths"])
    return ARCHITECTURES[arch](**kwargs)
