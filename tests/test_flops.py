"""Counted FLOPs against hand counts from the layer shapes.

What FlopCounterMode counts: 2 FLOPs per multiply-add of convolutions and
matrix multiplications (linear layers, with their bias add folded in: addmm
is counted as 2*M*N*K). It does not count BatchNorm, ReLU, max/average
pooling or the residual adds, so the hand counts below are 2 x MACs of the
convs and linears only.
"""

from __future__ import annotations

import pytest

from raysl.flops import forward_flops, method_flops, run_flops
from raysl.models import SmallConvNet, build_backbone
from raysl.run_config import build_config


def conv_macs(out_side: int, c_in: int, c_out: int, kernel: int) -> int:
    """Multiply-adds of a square conv without groups: every output pixel and channel sums c_in*k*k products."""
    return out_side * out_side * c_out * c_in * kernel * kernel


def small_convnet_macs(c_in: int, w: int, side: int) -> int:
    # conv(w) and conv(2w) at full size, pool, conv(4w) at side/2, pool, conv(8w) at side/4 (3x3, padding 1)
    return (conv_macs(side, c_in, w, 3) + conv_macs(side, w, 2 * w, 3)
            + conv_macs(side // 2, 2 * w, 4 * w, 3) + conv_macs(side // 4, 4 * w, 8 * w, 3))


def resnet18_cifar_macs(c_in: int, side: int) -> int:
    """Stem 3x3 conv to 64, then 4 stages of 2 basic blocks (two 3x3 convs each); stages 2-4 halve the
    side in their first conv and add a 1x1 stride-2 projection shortcut."""
    macs = conv_macs(side, c_in, 64, 3)
    c, s = 64, side
    for stage, c_out in enumerate((64, 128, 256, 512)):
        if stage > 0:
            s //= 2
            macs += conv_macs(s, c, c_out, 3) + conv_macs(s, c_out, c_out, 3) + conv_macs(s, c, c_out, 1)
        else:
            macs += 2 * conv_macs(s, c, c_out, 3)
        macs += 2 * conv_macs(s, c_out, c_out, 3)  # the stage's second block
        c = c_out
    return macs


@pytest.mark.parametrize(("c_in", "width", "side"), [(1, 8, 8), (3, 32, 32), (1, 16, 28)])
def test_small_convnet_forward_flops_match_hand_count(c_in, width, side):
    net = SmallConvNet(c_in, width)
    assert forward_flops(net, (1, c_in, side, side)) == 2 * small_convnet_macs(c_in, width, side)


def test_small_convnet_hand_count_in_numbers():
    # width 8 on 8x8 digits: 8*8*8*1*9 + 8*8*16*8*9 + 4*4*32*16*9 + 2*2*64*32*9 = 4608 + 3 * 73728 MACs
    assert 2 * small_convnet_macs(1, 8, 8) == 2 * (4608 + 3 * 73728) == 451_584


def test_resnet18_forward_flops_match_hand_count():
    net, out_dim = build_backbone(build_config({"model": {"backbone": "resnet18"}}).model, 3)
    assert out_dim == 512
    flops = forward_flops(net, (1, 3, 32, 32))
    assert flops == 2 * resnet18_cifar_macs(3, 32)
    assert flops == 1_110_835_200  # 0.555 GMACs: the usual figure for a CIFAR ResNet-18


def test_heads_and_training_flops_of_a_simclr_run():
    cfg = build_config({"model": {"width": 8}, "optim": {"batch_size": 64, "epochs": 3}})
    parts = method_flops(cfg, in_channels=1, crop_size=8)
    # projector: Linear(64 -> 512, no bias) + BN + ReLU + Linear(512 -> 128)
    assert parts["projector"] == 2 * (64 * 512 + 512 * 128)
    assert parts["predictor"] == 0 and parts["teacher"] is False
    assert parts["params"] == 8 * 9 + 16 * 8 * 9 + 32 * 16 * 9 + 64 * 32 * 9 + 2 * (8 + 16 + 32 + 64)  # convs + BN
    run = run_flops(cfg, in_channels=1, crop_size=8, train_rows=1438)
    forward = 2 * small_convnet_macs(1, 8, 8) + parts["projector"]
    images = (1438 // 64) * 64 * 3  # full batches per epoch x epochs
    assert run["forward_flops_per_image"] == forward
    assert run["images"] == images
    assert run["flops"] == 3 * forward * 2 * images  # 3 x forward x views x images


def test_byol_counts_predictor_and_teacher_forward():
    cfg = build_config({"method": {"name": "byol"}, "model": {"width": 8}, "optim": {"batch_size": 64, "epochs": 1}})
    parts = method_flops(cfg, in_channels=1, crop_size=8)
    assert parts["predictor"] == 2 * (128 * 512 + 512 * 128)
    backbone = 2 * small_convnet_macs(1, 8, 8)
    run = run_flops(cfg, in_channels=1, crop_size=8, train_rows=640)
    per_view = 3 * (backbone + parts["projector"] + parts["predictor"]) + (backbone + parts["projector"])
    assert run["flops"] == 2 * per_view * 640


def test_subset_is_seeded_nested_and_near_its_fraction():
    import numpy as np

    from raysl.data.read.subset import filter_batch, keep_mask

    idx = np.arange(20000)
    half, quarter = keep_mask(idx, 0.5, seed=0), keep_mask(idx, 0.25, seed=0)
    # binomial sd of the kept share at n=20000 is <= 0.0035; 5 sd
    assert abs(half.mean() - 0.5) < 0.018 and abs(quarter.mean() - 0.25) < 0.016
    assert not np.any(quarter & ~half)  # smaller fractions are subsets of larger ones
    assert np.array_equal(half, keep_mask(idx, 0.5, seed=0))  # repeatable
    assert (half != keep_mask(idx, 0.5, seed=1)).mean() > 0.3  # another seed, another subset
    assert keep_mask(idx, 1.0).all()
    batch = {"index": idx[:100], "label": idx[:100] % 10}
    kept = filter_batch(batch, 0.5, 0)
    assert np.array_equal(kept["index"], idx[:100][half[:100]])
    assert np.array_equal(filter_batch(kept, 0.5, 0)["index"], kept["index"])  # filtering twice is a no-op


def test_training_flops_follow_the_rows_trained_on(digits_dir):
    from raysl.data.read.shards import load_manifest
    from raysl.data.read.subset import train_rows

    manifest = load_manifest(digits_dir)
    full = train_rows(digits_dir, manifest, 1.0, 0)
    half = train_rows(digits_dir, manifest, 0.5, 0)
    assert full == manifest.splits["train"]["rows"]
    assert abs(half - full / 2) < 0.1 * full  # 1438 rows: binomial sd 19
    cfg = build_config({"model": {"width": 8}, "data": {"fraction": 0.5}, "optim": {"batch_size": 64, "epochs": 1}})
    run = run_flops(cfg, 1, 8, train_rows=half)
    assert run["images"] == (half // 64) * 64
