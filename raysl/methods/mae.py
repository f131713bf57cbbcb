"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), on ``model.backbone: vit_tiny``.

One view (the un-jittered crop: the search space's weak augmentation, crop only).
Each image's patches are shuffled at random and the first ``1 - mask_ratio`` of
them kept (:func:`random_masking`: exactly ``round(mask_ratio * L)`` masked per
sample). The ViT encoder (its patch embedding, class token, position embedding
and blocks) runs on the visible patches and the class token only. A lightweight
decoder (``decoder_dim`` wide, ``decoder_depth`` pre-norm blocks, its own learned
position embedding) gets the encoded visible tokens back in place among shared
mask tokens and predicts every patch's pixels; the loss is the MSE on the masked
patches only, against per-patch normalised pixels with ``norm_pix_loss``
(:func:`raysl.losses.mae`).

Evaluation features (``embed``): the encoder on the full unmasked image -
``backbone`` is the ViT's class token (as for every ViT run, and MAE's linear
probe), ``projector`` the mean of its patch tokens (MAE has no projector).

Distributed: the loss is a mean of per-sample terms with the same number of
masked patches in every sample, so each worker's local mean and DDP's gradient
average give the global mean: nothing is gathered.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from raysl import losses
from raysl.config import MethodSection
from raysl.methods.base import Method


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, L, patch * patch * C)``, patches in the patch embedding's (row-major) order."""
    n, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images[:, :, : gh * patch, : gw * patch].reshape(n, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, patch * patch * c)


def random_masking(n: int, length: int, mask_ratio: float, device=None, generator=None):
    """(keep, mask, restore) of a per-sample random shuffle of ``length`` patches.

    ``keep`` ``(n, L - M)``: the visible patches' indices, ``M = round(mask_ratio * L)``;
    ``mask`` ``(n, L)``: 1 for a masked patch, 0 for a visible one, in patch order;
    ``restore`` ``(n, L)``: the permutation that puts shuffled tokens back in patch order.
    """
    masked = round(mask_ratio * length)
    if not 0 < masked < length:
        raise ValueError(f"mask_ratio {mask_ratio} masks {masked} of {length} patches; "
                         "MAE needs at least one masked and one visible patch")
    noise = torch.rand(n, length, device=device, generator=generator)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    keep = shuffle[:, : length - masked]
    mask = torch.ones(n, length, device=device)
    mask[:, : length - masked] = 0
    return keep, mask.gather(1, restore), restore


def _take(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _grid_embedding(pos: torch.Tensor, grid: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """A learned ``(1, 1 + grid^2, D)`` embedding, bicubically resized to ``grid_h x grid_w`` (as the ViT's)."""
    if (grid_h, grid_w) == (grid, grid):
        return pos
    patches = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)


class MAEConfig(MethodSection):
    # He et al. 2022: mask 75%, per-patch normalised pixel targets; the decoder (paper: 512 wide, 8 blocks)
    # is small here for the small images
    name: Literal["mae"] = "mae"
    mask_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.75
    decoder_dim: Annotated[int, Field(ge=8)] = 128
    decoder_depth: Annotated[int, Field(ge=1, le=16)] = 2
    decoder_heads: Annotated[int, Field(ge=1)] = 4  # must divide decoder_dim
    norm_pix_loss: bool = True
    num_views: Literal[1] = 1  # one view: the un-jittered crop (model.backbone must be vit_tiny)

    @model_validator(mode="after")
    def _heads_divide(self) -> "MAEConfig":
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_heads ({self.decoder_heads}) must divide decoder_dim ({self.decoder_dim})")
        return self


class MAE(Method):
    config_class = MAEConfig
    loss_is_sample_mean = True  # per-sample reconstruction errors, the same number of masked patches each
    backbones = ("vit_tiny",)  # masks patch tokens

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        vit, dim = self.backbone, method_cfg.decoder_dim
        self.patch = vit.patch_size
        self.decoder_embed = nn.Linear(vit.out_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + vit.grid * vit.grid, dim))
        layer = nn.TransformerEncoderLayer(dim, method_cfg.decoder_heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, method_cfg.decoder_depth, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * in_channels)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def build_projector(self) -> nn.Module:
        return nn.Identity()  # no projector: the decoder is MAE's head

    @property
    def projection_dim(self) -> int:
        return self.feat_dim

    def encode_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """The ViT's normed output tokens ``(N, 1 + K, D)`` (class token first) for the patches ``keep`` (all: None)."""
        vit = self.backbone
        tokens = vit.patch_embed(x)
        grid = tuple(tokens.shape[-2:])
        pos = vit.position_embedding(*grid)
        tokens = tokens.flatten(2).transpose(1, 2) + pos[:, 1:]
        if keep is not None:
            tokens = _take(tokens, keep)
        cls = (vit.cls_token + pos[:, :1]).expand(len(tokens), -1, -1)
        return vit.norm(vit.blocks(torch.cat([cls, tokens], dim=1))), grid

    def decode(self, latent: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Pixel predictions ``(N, L, patch^2 C)`` of every patch from the encoded visible tokens."""
        y = self.decoder_embed(latent)
        n, length = restore.shape
        masks = self.mask_token.expand(n, length - (y.shape[1] - 1), -1)
        patches = _take(torch.cat([y[:, 1:], masks], dim=1), restore)
        y = torch.cat([y[:, :1], patches], dim=1) + _grid_embedding(self.decoder_pos, self.backbone.grid, *grid)
        return self.decoder_pred(self.decoder_norm(self.decoder(y))[:, 1:])

    def training_loss(self, views, indices):
        x = views[0]
        target = patchify(x, self.patch)
        keep, mask, restore = random_masking(x.shape[0], target.shape[1], self.cfg.mask_ratio, device=x.device)
        latent, grid = self.encode_tokens(x, keep)
        pred = self.decode(latent, restore, grid)
        return losses.mae(pred, target, mask, norm_pix=self.cfg.norm_pix_loss), {}

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, _ = self.encode_tokens(x)
        return {"backbone": tokens[:, 0], "projector": tokens[:, 1:].mean(dim=1)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, h
