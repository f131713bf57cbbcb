"""Backbones by name: feature widths, input channels, and the ViT's patch grid and position embedding."""

from __future__ import annotations

import subprocess

import pytest
import torch

from raysl.models import ViT, build_backbone
from raysl.run_config import load_config
from raysl.loop_io import LocalIO
from raysl.run_eval import initial_metrics
from raysl.train import train_worker

from conftest import HANG, RAYSL, REPO

SPACES = REPO / "search_spaces"


def backbone(name: str, *overrides: str, channels: int = 3):
    torch.manual_seed(0)
    return build_backbone(load_config(None, [f"model.backbone={name}", *overrides]).model, channels)


@pytest.mark.parametrize(
    "name, overrides, channels, side, dim",
    [
        ("small_convnet", ["model.width=8"], 1, 8, 64),
        ("resnet18", [], 3, 32, 512),
        ("resnet18", [], 1, 16, 512),
        ("resnet50", [], 3, 64, 2048),
        ("vit_tiny", [], 3, 32, 192),
        ("vit_tiny", ["model.patch_size=2", "model.vit_image_size=8"], 1, 8, 192),
    ],
)
def test_features_have_the_reported_width(name, overrides, channels, side, dim):
    net, out_dim = backbone(name, *overrides, channels=channels)
    net.eval()
    with torch.no_grad():
        feats = net(torch.randn(2, channels, side, side))
    assert out_dim == dim
    assert feats.shape == (2, dim)
    assert torch.isfinite(feats).all()


def test_vit_tiny_has_deit_tiny_sizes():
    net, _ = backbone("vit_tiny")
    layers = net.blocks.layers
    assert len(layers) == 12
    assert layers[0].self_attn.num_heads == 3
    assert layers[0].linear1.out_features == 768
    assert net.pos_embed.shape == (1, 1 + 8 * 8, 192)  # 32 px / 4 px patches, plus the class token
    # ~5.4M parameters in DeiT-Ti with 16 px patches on 224 px; smaller grid and patch here
    assert 5.2e6 < sum(p.numel() for p in net.parameters()) < 5.6e6


def test_vit_position_embedding_is_used_as_is_on_its_grid_and_interpolated_elsewhere():
    torch.manual_seed(0)
    net = ViT(1, image_size=8, patch_size=2, depth=1)
    assert net.position_embedding(4, 4) is net.pos_embed
    bigger = net.position_embedding(6, 6)
    assert bigger.shape == (1, 1 + 36, 192)
    torch.testing.assert_close(bigger[:, 0], net.pos_embed[:, 0])  # the class token's is not resized
    # bicubic resampling of a constant grid is that constant
    with torch.no_grad():
        net.pos_embed[:, 1:] = 0.25
    torch.testing.assert_close(net.position_embedding(3, 5)[:, 1:], torch.full((1, 15, 192), 0.25))
    assert net(torch.randn(2, 1, 12, 10)).shape == (2, 192)


def test_vit_class_token_sees_every_patch():
    torch.manual_seed(0)
    net = ViT(1, image_size=8, patch_size=2, depth=2).eval()
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    # The features end in a LayerNorm, so their plain sum is constant (its gradient is zero in exact
    # arithmetic and rounding noise in practice); a fixed random direction is not, so every input
    # pixel that reaches the class token gets a gradient of the size of the others.
    direction = torch.randn(192, generator=torch.Generator().manual_seed(1))
    (net(x) @ direction).backward()
    per_patch = x.grad.abs().reshape(4, 2, 4, 2).sum(dim=(1, 3))
    # a patch cut off from the class token would get exactly 0; rounding noise is ~1e-7 of the largest
    assert (per_patch > 1e-3 * per_patch.max()).all(), per_patch
    assert net.pos_embed.requires_grad and net.cls_token.requires_grad


def test_vit_refuses_images_smaller_than_a_patch():
    net = ViT(1, image_size=8, patch_size=4, depth=1)
    with pytest.raises(ValueError, match="smaller than one 4px patch"):
        net(torch.randn(1, 1, 3, 3))


def test_patch_larger_than_the_crop_is_a_one_line_config_error():
    space = str(SPACES / "quickstart.yaml")
    proc = subprocess.run(
        [RAYSL, "train", space, "--set", "model.backbone=vit_tiny", "--set", "model.patch_size=16",
         "--set", "data.crop_size=8"],
        capture_output=True, text=True, timeout=HANG,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"raysl: error: {space}: (top level): data.crop_size (8) is smaller than one ViT patch "
        "(model.patch_size=16); use a smaller model.patch_size"
    ]


def test_vit_tiny_trains_on_digits_and_beats_its_random_init(digits_dir):
    """SimCLR with ViT-Tiny (4 of its 12 blocks) on 8x8 digits, 2 px patches (16 tokens + class token).

    Catches a ViT that does not learn (e.g. position embedding or class token not trained, features taken
    from the wrong token); 4 blocks exercise the same code as 12 at a third of the CPU time."""
    cfg = load_config(SPACES / "simclr.yaml", [
        "model.backbone=vit_tiny", "model.patch_size=2", "model.vit_image_size=8", "model.vit_depth=4",
        "optim.epochs=2", "eval.every_epochs=2",
    ])
    baseline = initial_metrics(cfg, digits_dir)["knn_acc"]
    io = LocalIO()
    train_worker({"config": cfg.model_dump(mode="json"), "data_dir": digits_dir}, io)
    final = io.reports[-1]
    assert final["status"] == "finished"
    assert final["knn_acc"] > baseline + 0.02, (final["knn_acc"], baseline)
