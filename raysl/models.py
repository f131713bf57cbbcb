"""Backbones by name. Each returns pooled, flattened features and reports their width.

- ``small_convnet``: four conv-BN-ReLU stages for 8-32 px images; fast on CPU.
- ``resnet18``: torchvision ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool),
  as SimCLR's CIFAR experiments and solo-learn use for small images.
- ``resnet50``: torchvision ResNet-50 (ImageNet stem), for 64 px and up.
- ``vit_tiny``: ViT-Tiny (DeiT-Ti sizes: width 192 (``model.vit_width``), depth 12 (``model.vit_depth``),
  3 heads of 64 dimensions (one per 64 of width), MLP 768 (4x width); Touvron et al. 2021), pre-norm,
  class-token features, patches of
  ``model.patch_size`` (4 for 32 px images, as small-image SSL code uses). Its
  position embedding is learned for a grid of ``model.vit_image_size`` and
  interpolated (bicubic) for other input sizes, as DINO does for multi-crop.
No pretrained weights are loaded (nothing is downloaded at run time).

``model.parametrization: mup`` (the Maximal Update Parametrization; Yang et al. 2022, "Tensor Programs V",
arXiv 2203.03466) makes the best learning rate of ``small_convnet`` and ``vit_tiny`` stay put as their width
grows. Here it is two things: the backbone's features are multiplied by ``1/sqrt(m)`` (``m = width /
model.mup_base_width``), which is the paper's smaller readout initialisation written as a multiplier, and
:func:`mup_param_groups` gives every parameter a role (:data:`MUP_ROLES`) that ``raysl.optim`` turns into
a per-group learning-rate factor for its optimizer. At ``m = 1`` both are no-ops. docs/training.md has the rules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from raysl.config import ModelConfig


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallConvNet(nn.Module):
    """conv(w) -> conv(2w), pool -> conv(4w), pool -> conv(8w) -> global average pool."""

    def __init__(self, in_channels: int, width: int = 32, output_mult: float = 1.0):
        super().__init__()
        w = width
        self.in_channels = in_channels
        self.output_mult = output_mult  # muP's readout multiplier (1: standard)
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
        h = self.features(x)
        return h if self.output_mult == 1.0 else h * self.output_mult


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
                 heads: int = 3, mlp_dim: int = 768, output_mult: float = 1.0):
        super().__init__()
        self.in_channels = in_channels
        self.output_mult = output_mult  # muP's readout multiplier (1: standard), applied by ``norm``
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        # muP's readout multiplier sits in the final norm, so that every reader of the output tokens gets it
        # (MAE's decoder reads them through ``norm``, not ``forward``)
        self.norm = nn.LayerNorm(dim) if output_mult == 1.0 else _ScaledLayerNorm(dim, output_mult)
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


class _ScaledLayerNorm(nn.LayerNorm):
    """LayerNorm times a constant (muP's readout multiplier); its parameters and their names are LayerNorm's."""

    def __init__(self, dim: int, mult: float):
        super().__init__(dim)
        self.mult = mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.mult


VIT_HEAD_DIM = 64  # DeiT's head size: vit_width / 64 heads


def backbone_width(cfg: ModelConfig) -> int:
    """The width muP scales with: ``model.width`` (small_convnet) or ``model.vit_width`` (vit_tiny)."""
    return cfg.vit_width if cfg.backbone == "vit_tiny" else cfg.width


def width_mult(cfg: ModelConfig) -> float:
    """muP's width multiplier ``m = width / model.mup_base_width``; 1 under the standard parametrization."""
    return backbone_width(cfg) / cfg.mup_base_width if cfg.parametrization == "mup" else 1.0


def build_backbone(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    """The backbone module and its feature width."""
    # muP's readout: Table 3 of Yang et al. 2022 initialises the output layer with variance 1/fan_in^2, i.e.
    # 1/m times PyTorch's; the same network and training dynamics, with PyTorch's initialisation kept for
    # every head, multiply the readout's input (the features) by 1/sqrt(m) (raysl.optim's rules match this)
    output_mult = 1.0 if cfg.parametrization == "standard" else width_mult(cfg) ** -0.5
    if cfg.backbone == "small_convnet":
        net = SmallConvNet(in_channels, cfg.width, output_mult)
        return net, net.out_dim
    if cfg.backbone == "resnet18":
        return _torchvision_resnet("resnet18", in_channels, cifar_stem=True)
    if cfg.backbone == "resnet50":
        return _torchvision_resnet("resnet50", in_channels, cifar_stem=False)
    if cfg.backbone == "vit_tiny":
        net = ViT(in_channels, image_size=cfg.vit_image_size, patch_size=cfg.patch_size, dim=cfg.vit_width,
                  depth=cfg.vit_depth, heads=cfg.vit_width // VIT_HEAD_DIM, mlp_dim=4 * cfg.vit_width,
                  output_mult=output_mult)
        return net, net.out_dim
    raise ValueError(f"unknown backbone {cfg.backbone!r}")  # config validation makes this unreachable


# --------------------------------------------------------------------------
# muP: each parameter's role, found by building the model wider and seeing which of its dimensions grow (the
# dimensions that scale with the width are muP's "infinite" ones; the rows of the paper's Table 3 are named by them)

#: input: a weight whose fan-out grows and fan-in does not (the first conv, the ViT's patch embedding);
#: hidden: both grow; readout: the fan-in grows and the fan-out does not (the first layer of a head that reads the
#: backbone's features: the projector's first linear, MAE's decoder embedding); normed_readout: a readout whose
#: output goes straight into a BatchNorm or LayerNorm (the projector's first linear when model.projector_layers >=
#: 2): that output is renormalised, so the layer steps like a hidden one; vector: any other parameter with a
#: growing dimension (biases, norm scales, the class token, position embeddings); fixed: nothing grows (the heads
#: after their first layer). raysl.optim.MUP_LR_EXPONENT has each role's learning-rate factor per optimizer.
MUP_ROLES = ("input", "hidden", "readout", "normed_readout", "vector", "fixed")
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _is_weight_matrix(module: nn.Module, name: str, param: torch.Tensor) -> bool:
    """A weight whose first dimension is its fan-out and whose others make its fan-in."""
    if param.ndim < 2:
        return False
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and name == "weight":
        return not isinstance(module, nn.modules.conv._ConvTransposeNd)  # (in, out, ...): not met in raysl
    return isinstance(module, nn.MultiheadAttention) and name in _ATTENTION_WEIGHTS


def _normalized(model: nn.Module) -> set[int]:
    """The ids of the modules whose output goes straight into a normalisation (the next module of a Sequential)."""
    out: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            out.update(id(a) for a, b in zip(children, children[1:]) if isinstance(b, _NORMS))
    return out


def mup_roles(model: nn.Module, wider: nn.Module) -> dict[str, str]:
    """Each parameter's role (:data:`MUP_ROLES`) by name, from ``wider``: the same model built at a larger width."""
    shapes = {name: tuple(p.shape) for name, p in wider.named_parameters()}
    normalized = _normalized(model)
    roles: dict[str, str] = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if full not in shapes or len(shapes[full]) != p.ndim:
                raise ValueError(f"muP: parameter {full} has no counterpart in the model built wider")
            grows = [a != b for a, b in zip(p.shape, shapes[full])]
            if not any(grows):
                roles[full] = "fixed"
            elif not _is_weight_matrix(module, name, p):
                roles[full] = "vector"
            elif grows[0]:
                roles[full] = "hidden" if any(grows[1:]) else "input"
            else:
                roles[full] = "normed_readout" if id(module) in normalized else "readout"
    return roles


def mup_param_groups(groups: list[dict], model: nn.Module, cfg: ModelConfig,
                     build: Callable[[ModelConfig], nn.Module]) -> list[dict]:
    """``groups`` as they are under the standard parametrization; under muP each is split by role.

    Each split group keeps its keys and gains ``mup_role``, ``mup_width_mult`` (``m``) and
    ``mup_normed_readout`` (whether a readout of the model is normalised: the backbone's gradients then come
    back at the standard parametrization's size, which matters to SGD), which ``raysl.optim.build_optimizer``
    turns into a factor of the group's ``lr_scale``. ``build(model_cfg)`` builds the same model with another
    ``ModelConfig``: it is called once, at twice the width, on the meta device (no memory, no random draws).
    """
    if cfg.parametrization != "mup":
        return groups
    key = "vit_width" if cfg.backbone == "vit_tiny" else "width"
    with torch.device("meta"):
        wider = build(cfg.model_copy(update={key: 2 * backbone_width(cfg)}))
    by_name = mup_roles(model, wider)
    role_of = {id(p): by_name[name] for name, p in model.named_parameters()}
    normed = "normed_readout" in by_name.values()
    m = width_mult(cfg)
    out: list[dict] = []
    for group in groups:
        extra = {k: v for k, v in group.items() if k != "params"}
        params = list(group["params"])
        if any(id(p) not in role_of for p in params):
            raise ValueError("muP: a parameter group holds parameters that are not the model's")
        for role in MUP_ROLES:
            mine = [p for p in params if role_of[id(p)] == role]
            if mine:
                out.append({**extra, "params": mine, "mup_role": role, "mup_width_mult": m,
                            "mup_normed_readout": normed})
    return out


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
