"""Backbones by name. Each returns pooled, flattened features and reports their width.

- ``small_convnet``: four conv-BN-ReLU stages for 8-32 px images; fast on CPU.
- ``resnet18``: torchvision ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool),
  as SimCLR's CIFAR experiments and solo-learn use for small images.
- ``resnet50``: torchvision ResNet-50 (ImageNet stem), for 64 px and up.
No pretrained weights are loaded (nothing is downloaded at run time).
"""

from __future__ import annotations

import torch
from torch import nn

from raysl.config import ModelConfig


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallConvNet(nn.Module):
    """conv(w) -> conv(2w), pool -> conv(4w), pool -> conv(8w) -> global average pool."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w),
            *_conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w),
            nn.MaxPool2d(2),
            *_conv_bn_relu(4 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, out_dim


def build_backbone(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    """The backbone module and its feature width."""
    if cfg.backbone == "small_convnet":
        net = SmallConvNet(in_channels, cfg.width)
        return net, net.out_dim
    if cfg.backbone == "resnet18":
        return _torchvision_resnet("resnet18", in_channels, cifar_stem=True)
    if cfg.backbone == "resnet50":
        return _torchvision_resnet("resnet50", in_channels, cifar_stem=False)
    raise ValueError(f"unknown backbone {cfg.backbone!r}")  # config validation makes this unreachable


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int, *, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a linear output (SimCLR/BYOL projector and predictor shape)."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)
