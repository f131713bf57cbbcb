"""MAE: the masking, the patch order, the normalised-pixel target and the loss on hand cases, a few steps.

Training on digits (from search_spaces/mae.yaml) is covered by tests/test_methods.py. The loss is a
mean of per-sample terms (the same number of masked patches in every sample): nothing is gathered,
so there is no world-size-2 case.
"""

from __future__ import annotations

import pytest
import torch

from raysl import losses
from raysl.errors import ConfigError
from raysl.methods import build_method
from raysl.methods.mae import patchify, random_masking
from raysl.run_config import load_config

TINY = ["method.name=mae", "model.backbone=vit_tiny", "model.patch_size=2", "model.vit_image_size=8",
        "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"]


def tiny_mae(*overrides: str):
    torch.manual_seed(0)
    return build_method(load_config(None, [*TINY, *overrides]), 1)


@pytest.mark.parametrize("length, ratio, masked", [(16, 0.75, 12), (10, 0.3, 3), (49, 0.75, 37)])
def test_masking_masks_round_ratio_l_per_sample_and_restore_inverts_the_shuffle(length, ratio, masked):
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = random_masking(5, length, ratio, generator=g)
    assert keep.shape == (5, length - masked) and mask.shape == restore.shape == (5, length)
    assert torch.equal(mask.sum(dim=1), torch.full((5,), float(masked)))
    assert not mask.gather(1, keep).any()  # the kept patches are the visible ones
    shuffle = restore.argsort(dim=1)
    assert torch.equal(shuffle[:, : length - masked], keep)
    tokens = torch.arange(length).expand(5, -1)
    assert torch.equal(tokens.gather(1, shuffle).gather(1, restore), tokens)  # restore undoes the shuffle
    assert len({tuple(row.tolist()) for row in keep}) == 5  # a shuffle per sample


def test_masking_needs_a_masked_and_a_visible_patch():
    for ratio in (0.01, 0.99):
        with pytest.raises(ValueError, match="at least one masked and one visible"):
            random_masking(2, 16, ratio)


def test_patchify_follows_the_patch_embedding_order():
    method = tiny_mae()
    x = torch.randn(3, 1, 8, 8)
    conv = method.backbone.patch_embed
    linear = patchify(x, 2) @ conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1).T + conv.bias
    torch.testing.assert_close(linear, conv(x).flatten(2).transpose(1, 2))
    assert torch.equal(patchify(torch.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 1], torch.tensor([2.0, 3.0, 6.0, 7.0]))


def test_normalised_pixel_target_and_the_loss_on_masked_patches_only():
    target = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]])
    pred = torch.tensor([[[100.0, -100.0, 100.0, 7.0], [0.0, 0.0, 0.0, 0.0]]])  # the visible patch: way off
    mask = torch.tensor([[0.0, 1.0]])
    # per-patch mean 2.5, unbiased variance 5/3: (t - 2.5) / sqrt(5/3 + 1e-6)
    want = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / (5 / 3 + 1e-6) ** 0.5
    torch.testing.assert_close(losses.mae_targets(target)[0, 1], want)
    torch.testing.assert_close(losses.mae_targets(target)[0, 0], torch.zeros(4))  # a flat patch: zeros
    assert losses.mae(pred, target, mask, norm_pix=False).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert losses.mae(pred, target, mask).item() == pytest.approx(1.25 / (5 / 3 + 1e-6))
    # two samples: the mean over all masked patches
    two = losses.mae(torch.zeros(2, 2, 4), target.expand(2, -1, -1), torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
                     norm_pix=False)
    assert two.item() == pytest.approx((7.5 + 0.0 + 7.5) / 3)


def test_the_encoder_sees_only_the_visible_patches():
    method = tiny_mae().eval()
    x = torch.randn(4, 1, 8, 8)
    keep, mask, _ = random_masking(4, 16, 0.75, generator=torch.Generator().manual_seed(1))
    latent, grid = method.encode_tokens(x, keep)
    assert latent.shape == (4, 1 + 4, 192) and grid == (4, 4)
    changed = patchify(x, 2) + 5.0 * mask.unsqueeze(-1)  # the masked patches' pixels changed
    y = changed.reshape(4, 4, 4, 2, 2, 1).permute(0, 5, 1, 3, 2, 4).reshape(4, 1, 8, 8)
    torch.testing.assert_close(patchify(y, 2), changed)
    torch.testing.assert_close(method.encode_tokens(y, keep)[0], latent)
    features = method.embed(x)  # the full unmasked image: class token (as the ViT gives) and mean patch token
    torch.testing.assert_close(features["backbone"], method.backbone(x))
    assert features["projector"].shape == (4, 192)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    method = tiny_mae()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for g in method.param_groups() for p in g["params"]], lr=1e-3)

    def loss_at_fixed_mask():
        torch.manual_seed(123)
        return method([x])[0]

    with torch.no_grad():
        before = loss_at_fixed_mask().item()
    for _ in range(8):
        loss, _ = method([x])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_at_fixed_mask().item()
    assert after < 0.9 * before, (before, after)


def test_mae_needs_the_vit_backbone_and_one_view():
    with pytest.raises(ConfigError, match="mae needs model.backbone: vit_tiny"):
        load_config(None, ["method.name=mae"])
    with pytest.raises(ConfigError, match="num_views"):
        load_config(None, [*TINY, "method.num_views=2"])
    method = tiny_mae()
    assert method.num_views == 1
    with pytest.raises(ValueError, match="does not use local crops"):
        method([torch.randn(4, 1, 8, 8)] * 2)
