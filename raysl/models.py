"""Backbones by name. Each returns pooled, flattened features and reports their width.

- ``small_convnet``: four conv-BN-ReLU stages for 8-32 px images; fast on CPU.
- ``resnet18``: torchvision ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool),
  as SimCLR's CIFAR experiments and solo-learn use for small images.
- ``resnet50``: torchvision ResNet-50 (ImageNet stem), for 64 px and up.
- ``vit_tiny``: ViT-Tiny (DeiT-Ti sizes: width 192, depth 12 (``model.vit_depth``), 3 heads, MLP 768;
  Touvron et al. 2021), pre-norm, class-token features, patches of
  ``model.patch_size`` (4 for 32 px images, as small-image SSL code uses). Its
  position embedding is learned for a grid of ``model.vit_image_size`` and
  interpolated (bicubic) for other input sizes, as DINO does for multi-crop.
No pretrained weights are loaded (nothing is downloaded at run time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class ViT(nn.Module):
    """Patch embedding, class token, learned position embedding, pre-norm Transformer blocks."""

    def __init__(self, in_channels: int, *, image_size: int, patch_size: int, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patches = patches.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(f"ViT input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}px patch")
        tokens = self.patch_embed(x)  # (N, dim, H/p, W/p)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = self.blocks(tokens + self.position_embedding(grid_h, grid_w))
        return self.norm(tokens[:, 0])


def build_backbone(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    """The backbone module and its feature width."""
    if cfg.backbone == "small_convnet":
        net = SmallConvNet(in_channels, cfg.width)
        return net, net.out_dim
    if cfg.backbone == "resnet18":
        return _torchvision_resnet("resnet18", in_channels, cifar_stem=True)
    if cfg.backbone == "resnet50":
        return _torchvision_resnet("resnet50", in_channels, cifar_stem=False)
    if cfg.backbone == "vit_tiny":
        net = ViT(in_channels, image_size=cfg.vit_image_size, patch_size=cfg.patch_size, depth=cfg.vit_depth)
        return net, net.out_dim
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
