"""Batch augmentation: each op alone (shape, range, p=0 identity, p=1 effect, exact math),
the recipe (determinism, views differ), make_views / to_float, 1 and 3 channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raysl.config import ViewAugment
from raysl.data import augment as A
from raysl.data import augment_crop as C
from raysl.data import augment_photometric as P
from raysl.data.augment import augment_batch, make_views, normalize, to_float

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# a recipe with every op off and a crop that is the whole image
PLAIN = dict(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    hflip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    solarize_p=0.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8).to(device)


def floats(n: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


def check_output(y: torch.Tensor, shape: tuple, device) -> None:
    assert y.shape == shape
    assert y.dtype == torch.float32
    assert y.device.type == torch.device(device).type
    assert y.min() >= 0.0 and y.max() <= 1.0


# --------------------------------------------------------------------------
# each op: shape, dtype, device, range; p=0 identity; p=1 changes the image

RANDOM_OPS = {
    "hflip": lambda x, p, g: C.random_hflip(x, p, generator=g),
    "jitter": lambda x, p, g: P.random_color_jitter(x, p, 0.4, 0.4, 0.4, 0.1, generator=g),
    "grayscale": lambda x, p, g: P.random_grayscale(x, p, generator=g),
    "blur": lambda x, p, g: P.random_gaussian_blur(x, p, (0.5, 2.0), generator=g),
    "solarize": lambda x, p, g: P.random_solarize(x, p, 0.5, generator=g),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
@pytest.mark.parametrize("channels", [1, 3])
def test_op_shape_range_identity_and_effect(name: str, channels: int, device: str) -> None:
    if name == "grayscale" and channels == 1:
        pytest.skip("grayscale of a 1-channel image is the image")
    op = RANDOM_OPS[name]
    x = floats(c=channels).to(device)
    before = x.clone()
    y0 = op(x, 0.0, gen())
    assert torch.equal(y0, x)
    y1 = op(x, 1.0, gen())
    check_output(y1, tuple(x.shape), device)
    assert not torch.allclose(y1, x, atol=1e-3), f"{name} with p=1 left the image unchanged"
    assert torch.equal(x, before), f"{name} modified its input"


@pytest.mark.parametrize("channels", [1, 3])
def test_partial_p_touches_only_selected_rows(channels: int) -> None:
    x = floats(n=64, c=channels)
    y = P.random_solarize(x, 0.5, 0.5, generator=gen(3))
    changed = (y != x).flatten(1).any(1)
    assert 0 < changed.sum() < 64
    torch.testing.assert_close(y[changed], P.solarize(x[changed], 0.5), rtol=0, atol=0)
    assert torch.equal(y[~changed], x[~changed])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_crop_shape_range_and_identity(channels: int, device: str) -> None:
    x = images(c=channels, device=device)
    y = C.random_resized_crop(x, 12, (0.08, 1.0), (0.75, 4 / 3), 0.5, generator=gen())
    check_output(y, (8, channels, 12, 12), device)
    ident = C.random_resized_crop(x, None, (1.0, 1.0), (1.0, 1.0), 0.0, generator=gen())
    torch.testing.assert_close(ident, x.float() / 255, rtol=0, atol=1e-5)
    assert not torch.allclose(y, F.interpolate(x.float() / 255, size=12), atol=1e-3)


def test_axis_aligned_grid_is_affine_grid_and_resamples_identity() -> None:
    g = gen()
    affine = torch.rand(5, 4, generator=g) * 2 - 1
    theta = torch.zeros(5, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = affine.unbind(1)
    ours = C.axis_aligned_grid(affine, 7)
    ref = F.affine_grid(theta, [5, 1, 7, 7], align_corners=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # identity and flip affines sample pixel centres: the resample is exact to float error
    x = floats(n=2)
    for sx, expect in ((1.0, x), (-1.0, x.flip(-1))):
        grid = C.axis_aligned_grid(torch.tensor([[sx, 0.0, 1.0, 0.0]] * 2), 16)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        torch.testing.assert_close(y, expect, rtol=0, atol=1e-5)


def test_crop_boxes_follow_torchvision_distribution() -> None:
    boxes = C.crop_boxes(4000, 20, 30, (0.08, 1.0), (3 / 4, 4 / 3), generator=gen())
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 20 + 1e-4).all() and (left + w <= 30 + 1e-4).all()
    area = h * w / (20 * 30)
    assert area.min() >= 0.08 - 1e-4 and area.max() <= 1.0 + 1e-4
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4
    assert area.std() > 0.1 and aspect.std() > 0.05  # actually random
    # a box that cannot fit falls back to the centred, ratio-clamped crop (torchvision)
    top, left, h, w = C.crop_boxes(3, 10, 40, (1.0, 1.0), (1.0, 2.0), generator=gen()).unbind(1)
    torch.testing.assert_close(h, torch.full((3,), 10.0))
    torch.testing.assert_close(w, torch.full((3,), 20.0))
    # centred as torchvision centres it (a random offset here was the device sampler's own fallback once)
    torch.testing.assert_close(left, torch.full((3,), 10.0))
    torch.testing.assert_close(top, torch.zeros(3))


def test_flip_p1_is_torch_flip() -> None:
    x = floats()
    torch.testing.assert_close(C.random_hflip(x, 1.0, generator=gen()), x.flip(-1), rtol=0, atol=0)
    # through the recipe: whole-image crop + flip
    u8 = images()
    y = augment_batch(u8, ViewAugment(**{**PLAIN, "hflip_p": 1.0}), generator=gen())
    torch.testing.assert_close(y, u8.float().flip(-1) / 255, rtol=0, atol=1e-6)


def test_solarize_formula() -> None:
    x = floats()
    y = P.random_solarize(x, 1.0, 0.3, generator=gen())
    torch.testing.assert_close(y, torch.where(x >= 0.3, 1 - x, x), rtol=0, atol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_grayscale_is_luma_on_every_channel(channels: int) -> None:
    x = floats(c=3)
    y = P.random_grayscale(x, 1.0, generator=gen())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(y[:, c], luma, rtol=0, atol=1e-6)
    one = floats(c=1)
    assert torch.equal(P.random_grayscale(one, 1.0, generator=gen()), one)


def test_blur_keeps_constant_mean_and_smooths_noise() -> None:
    const = torch.full((4, 3, 20, 20), 0.37)
    y = P.random_gaussian_blur(const, 1.0, (0.5, 2.0), generator=gen())
    torch.testing.assert_close(y, const, rtol=0, atol=1e-6)
    noise = floats(n=4, h=32, w=32)
    blurred = P.random_gaussian_blur(noise, 1.0, (1.0, 2.0), generator=gen())
    assert (blurred.var(dim=(1, 2, 3)) < 0.5 * noise.var(dim=(1, 2, 3))).all()
    torch.testing.assert_close(blurred.mean(), noise.mean(), rtol=0, atol=5e-3)
    assert P.blur_kernel_size(32) == 3 and P.blur_kernel_size(224) == 23 and P.blur_kernel_size(96) == 9


def test_blur_drops_only_taps_that_weigh_less_than_half_a_grey_level() -> None:
    # blur_support's bound: the renormalised short kernel moves a [0, 1] image by at most
    # the dropped tail weight, <= 0.5/255. Compared on the image where the tails matter most
    # (random 0/1 pixels), every sigma of SimCLR's range against the full 23-tap kernel.
    assert [P.blur_support(s) for s in (0.1, 1.0, 2.0)] == [0, 3, 6]  # sigma 0.1: the identity
    assert P.blur_taps(224, 2.0) == 13 and P.blur_taps(32, 2.0) == 3  # never more than SimCLR's kernel
    g = gen()
    x = (torch.rand(8, 3, 64, 64, generator=g) > 0.5).float()
    for sigma in (0.1, 0.5, 1.0, 1.5, 2.0):
        sig = torch.full((8,), sigma)
        full = P.gaussian_blur(x, sig, kernel_size=23)
        short = P.gaussian_blur(x, sig, kernel_size=2 * P.blur_support(sigma) + 1)
        assert (short - full).abs().max() <= 0.5 / 255, sigma
        # and the bound is not slack: one tap fewer moves some pixel by more than a tenth of it
        r = P.blur_support(sigma)
        if r > 1:
            shorter = P.gaussian_blur(x, sig, kernel_size=2 * r - 1)
            assert (shorter - full).abs().max() > 0.05 / 255, sigma


def test_blur_per_sample_sigma() -> None:
    noise = floats(n=1, h=32, w=32).expand(2, -1, -1, -1)
    y = P.gaussian_blur(noise, torch.tensor([0.3, 3.0]), kernel_size=9)
    assert y[1].var() < y[0].var()  # larger sigma, smoother, in the same call


# --------------------------------------------------------------------------
# colour jitter: torchvision semantics with fixed factors


def test_brightness_is_scaled_and_clamped() -> None:
    x = floats(n=3)
    f = torch.tensor([0.5, 1.0, 1.7])
    torch.testing.assert_close(P.adjust_brightness(x, f), (x * f.view(3, 1, 1, 1)).clamp(0, 1), rtol=0, atol=0)


def test_contrast_saturation_hue_match_torchvision() -> None:
    tf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = floats(n=4)
    x[0] = 0.5  # gray pixels: hue undefined, must stay gray
    x[1, :, :4] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    x[2, 1] = x[2, 0]  # ties between red and green
    for factor in (0.0, 0.6, 1.4):
        f = torch.full((4,), factor)
        # torchvision's luma weights are (0.2989, 0.587, 0.114): agree to ~1e-4
        ref = torch.stack([tf.adjust_contrast(xi, factor) for xi in x])
        torch.testing.assert_close(P.adjust_contrast(x, f), ref, rtol=0, atol=5e-4)
        ref = torch.stack([tf.adjust_saturation(xi, factor) for xi in x])
        torch.testing.assert_close(P.adjust_saturation(x, f), ref, rtol=0, atol=5e-4)
    for shift in (-0.5, -0.1, 0.0, 0.05, 0.3, 0.5):
        ref = torch.stack([tf.adjust_hue(xi, shift) for xi in x])
        torch.testing.assert_close(P.adjust_hue(x, torch.full((4,), shift)), ref, rtol=0, atol=1e-5)


def test_jitter_on_one_channel_is_brightness_and_contrast_only() -> None:
    x = floats(c=1)
    assert torch.equal(P.adjust_saturation(x, torch.full((8,), 0.2)), x)
    assert torch.equal(P.adjust_hue(x, torch.full((8,), 0.3)), x)
    y = P.random_color_jitter(x, 1.0, 0.0, 0.0, 0.9, 0.5, generator=gen())
    assert torch.equal(y, x)  # only saturation and hue asked for: nothing to do


# --------------------------------------------------------------------------
# the recipe


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_augment_batch_full_recipe(channels: int, device: str) -> None:
    view = ViewAugment(blur_p=0.5, solarize_p=0.5)
    x = images(n=16, c=channels, h=20, w=28, device=device)  # non-square in, square out
    y = augment_batch(x, view, out_size=24, generator=gen())
    check_output(y, (16, channels, 24, 24), device)


def test_plain_recipe_is_identity() -> None:
    x = images()
    y = augment_batch(x, ViewAugment(**PLAIN), generator=gen())
    assert torch.equal(y, x.float() / 255)


def test_determinism_and_views_differ() -> None:
    x = images(n=16)
    view = ViewAugment(blur_p=0.5, solarize_p=0.2)
    a = augment_batch(x, view, generator=gen(7))
    b = augment_batch(x, view, generator=gen(7))
    assert torch.equal(a, b)
    c = augment_batch(x, view, generator=gen(8))
    assert not torch.allclose(a, c)
    v1, v2 = make_views(x, [view], 2, mean=[0.5] * 3, std=[0.5] * 3, generator=gen(7))
    assert not torch.allclose(v1, v2)
    w1, w2 = make_views(x, [view], 2, mean=[0.5] * 3, std=[0.5] * 3, generator=gen(7))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)


def test_float_input_is_not_modified() -> None:
    x = floats()
    before = x.clone()
    augment_batch(x, ViewAugment(**{**PLAIN, "hflip_p": 1.0, "solarize_p": 1.0}), generator=gen())
    assert torch.equal(x, before)


def test_autocast_does_not_change_dtype() -> None:
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = augment_batch(x, ViewAugment(blur_p=1.0), generator=gen())
    assert y.dtype == torch.float32


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="C = 1 or 3"):
        augment_batch(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), ViewAugment())
    with pytest.raises(ValueError, match="mean has 2 values"):
        normalize(torch.zeros(2, 3, 4, 4), [0.5, 0.5], [0.2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_the_same_generator() -> None:
    x = images(n=16)
    view = ViewAugment(blur_p=0.5, solarize_p=0.5)
    cpu = augment_batch(x, view, generator=gen(1))
    gpu = augment_batch(x.cuda(), view, generator=gen(1))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------
# make_views, normalize, to_float


def test_make_views_count_cycle_and_normalise() -> None:
    x = images(n=4)
    plain = ViewAugment(**PLAIN)
    inverted = ViewAugment(**{**PLAIN, "solarize_p": 1.0, "solarize_threshold": 0.0})
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    out = make_views(x, [plain, inverted], 5, mean=mean, std=std, generator=gen())
    assert len(out) == 5
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    base = x.float() / 255
    for i, v in enumerate(out):
        expect = base if i % 2 == 0 else 1 - base
        torch.testing.assert_close(v, (expect - m) / s, rtol=0, atol=1e-5)


def test_normalize_constant_image() -> None:
    x = torch.full((2, 3, 4, 4), 0.6)
    y = normalize(x, [0.5, 0.6, 0.1], [0.2, 0.3, 0.5])
    for c, value in enumerate([0.5, 0.0, 1.0]):
        torch.testing.assert_close(y[:, c], torch.full((2, 4, 4), value), rtol=0, atol=1e-6)
    one = normalize(torch.full((2, 1, 4, 4), 0.6), [0.5], [0.2])
    torch.testing.assert_close(one, torch.full((2, 1, 4, 4), 0.5), rtol=0, atol=1e-6)


def test_make_views_channels_last_and_out_size() -> None:
    x = images(n=4, c=1, h=12, w=20)
    out = make_views(x, [ViewAugment()], 3, mean=[0.5], std=[0.5], out_size=8, generator=gen(), channels_last=True)
    assert len(out) == 3
    for v in out:
        assert v.shape == (4, 1, 8, 8) and v.dtype == torch.float32
        assert v.is_contiguous(memory_format=torch.channels_last)
        assert v.min() >= -1.0 - 1e-6 and v.max() <= 1.0 + 1e-6
    rgb = images(n=4)
    views = make_views(rgb, [ViewAugment()], 2, mean=[0.5] * 3, std=[0.5] * 3, channels_last=True, generator=gen())
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in views)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_float_eval_transform(channels: int) -> None:
    x = images(n=2, c=channels, h=10, w=14)
    mean, std = [0.5] * channels, [0.25] * channels
    same = to_float(x, mean=mean, std=std)
    torch.testing.assert_close(same, (x.float() / 255 - 0.5) / 0.25, rtol=0, atol=1e-5)
    resized = to_float(x, mean=mean, std=std, out_size=8, channels_last=True)
    assert resized.shape == (2, channels, 8, 8)
    assert resized.is_contiguous(memory_format=torch.channels_last)
    const = to_float(torch.full((1, channels, 10, 14), 51, dtype=torch.uint8), mean=mean, std=std, out_size=6)
    torch.testing.assert_close(const, torch.full_like(const, (0.2 - 0.5) / 0.25), rtol=0, atol=1e-5)


def test_cpu_chunking_gives_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    x = images(n=20, h=12, w=12)
    view = ViewAugment(blur_p=0.5, solarize_p=0.5)
    whole = augment_batch(x, view, out_size=10, generator=gen(5))
    monkeypatch.setattr(A, "CPU_CHUNK_BYTES", 3 * 10 * 10 * 4 * 3)  # 3 rows per chunk
    chunked = augment_batch(x, view, out_size=10, generator=gen(5))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    a = make_views(x, [view], 2, mean=[0.5] * 3, std=[0.5] * 3, generator=gen(5))
    monkeypatch.setattr(A, "CPU_CHUNK_BYTES", 1 << 30)
    b = make_views(x, [view], 2, mean=[0.5] * 3, std=[0.5] * 3, generator=gen(5))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-5)


def test_the_device_and_decode_task_crop_boxes_are_one_distribution() -> None:
    """The batch augmentation's continuous boxes (torch generator) and the decode tasks' integer boxes (numpy
    generator, rows of one size here) come from one definition (raysl.data.crop_box). 20,000 draws each on a
    480 x 800 image at scale (0.6, 1), where about a quarter of the rows fit none of the 10 attempts: in both,
    such a row gets torchvision's fallback, the image clamped to aspect 4/3 and centred, (0, 80, 480, 640);
    both fall back about as often; the drawn boxes' means agree. Catches the samplers drifting apart: a
    fallback centred in one only (the device sampler's was not, once), draws swapped or a ratio of its own."""
    import numpy as np

    from raysl.data.read.decode import sample_crop_boxes

    n, height, width, scale, ratio = 20_000, 480, 800, (0.6, 1.0), (3 / 4, 4 / 3)
    device = C.crop_boxes(n, height, width, scale, ratio, generator=gen()).double()
    decode = torch.from_numpy(sample_crop_boxes(np.full(n, height), np.full(n, width), scale, ratio,
                                                np.random.default_rng(0))).double()
    fallback = torch.tensor([0.0, 80.0, 480.0, 640.0], dtype=torch.float64)
    fell, drawn = [], []
    for boxes in (device, decode):
        whole = (boxes[:, 2] == 480) & (boxes[:, 3] == 640)  # the fallback's size: then it is centred
        assert whole.any() and (boxes[whole] == fallback).all(), boxes[whole][:3]
        fell.append(whole.double().mean())
        drawn.append(boxes[~whole])
    # sampling error (4 sigma) plus the integer boxes' rounding, which lets a box up to half a pixel too
    # big fit: about a point of the rows here
    share = fell[0]
    assert 0.1 < share < 0.5 and abs(fell[0] - fell[1]) < 4 * (2 * share * (1 - share) / n).sqrt() + 0.01
    for column, name in enumerate(("top", "left", "h", "w")):
        a, b = drawn[0][:, column], drawn[1][:, column]
        # the standard error of a difference of two means, plus half a pixel of rounding
        tolerance = 4 * (a.var() / len(a) + b.var() / len(b)).sqrt() + 0.5
        assert abs(a.mean() - b.mean()) < tolerance, (name, a.mean(), b.mean(), tolerance)
