"""Training on real-size images (``encoded`` shards): crops cut in Ray Data, or decoded on the device.

Every test uses a generated folder of JPEGs (and a few PNGs) of mixed sizes and
aspect ratios, some with an EXIF orientation, prepared with ``raysl data
prepare imagefolder`` exactly as a user would.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps

from raysl.config import ViewAugment
from raysl.data.augment import augment_precropped
from raysl.data.codec import apply_orientation, decode_image
from raysl.data.read.decode import CropSpec, DecodeCrops, cut_crops, draft_size, sample_crop_boxes
from raysl.data.read.gpu_decode import decode_crops, decode_rows, jpeg_components, orient
from raysl.data.read.dataset import RunData, global_crop_size
from raysl.data.read.encoded_images import eval_images
from raysl.data.read.shards import load_manifest, shard_uris
from raysl.run_config import RunConfig, load_config

from conftest import RAYSL

NUM_IMAGES = 96
ORIENTED = 6  # EXIF "rotate 90 clockwise"


def _picture(h: int, w: int, cls: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth class-coloured waves plus mild noise: JPEG-friendly, and every pixel position differs."""
    y, x = np.mgrid[0:h, 0:w] / 100.0
    base = [(200, 40, 40), (40, 200, 40), (40, 40, 200)][cls]
    img = np.stack([base[c] + 40 * np.sin((c + 1) * 3 * x + (cls + 1) * 2 * y) for c in range(3)], -1)
    return (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, orientation: int = 1, quality: int = 90, mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> str:
    """96 images, 80-200 px per side, 3 classes; every 16th a PNG, every 8th JPEG EXIF-rotated."""
    root = tmp_path_factory.mktemp("jpegs")
    folder = root / "images"
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        cls = i % 3
        h, w = (int(v) for v in rng.integers(80, 201, 2))
        pixels = _picture(h, w, cls, rng)
        target = folder / f"class{cls}"
        target.mkdir(parents=True, exist_ok=True)
        if i % 16 == 5:
            Image.fromarray(pixels).save(target / f"{i:03d}.png")
        else:
            (target / f"{i:03d}.jpg").write_bytes(_jpeg(pixels, ORIENTED if i % 8 == 3 else 1))
    out = root / "shards"
    proc = subprocess.run([RAYSL, "data", "prepare", "imagefolder", str(folder), "--out", str(out),
                           "--shard-rows", "32", "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_manifest(str(out)).encoding == "encoded"
    return str(out)


def _train_table(shards: str):
    return pq.read_table(shard_uris(shards, "train")[0])


# --------------------------------------------------------------------------- crop boxes


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.05, 0.4), (3 / 4, 4 / 3)),
                                         ((0.5, 0.9), (0.5, 2.0))])
def test_crop_boxes_respect_scale_ratio_and_stay_inside(scale, ratio):
    rng = np.random.default_rng(1)
    n = 4000
    heights = rng.integers(40, 400, n)
    widths = rng.integers(40, 400, n)
    top, left, h, w = sample_crop_boxes(heights, widths, scale, ratio, rng).T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= heights).all() and (left + w <= widths).all()
    # a drawn box: w, h are sqrt(area * aspect), sqrt(area / aspect) rounded, so each is within 0.5 of
    # a continuous box whose area fraction lies in scale and aspect in ratio; fallbacks are the
    # centred whole image clamped to ratio (area fraction may exceed scale[1]: torchvision's too)
    area = heights * widths
    centred = (top == (heights - h) // 2) & (left == (widths - w) // 2) & ((h == heights) | (w == widths))
    drawn = ~centred
    assert drawn.mean() > 0.5
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area)[drawn].all()
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area)[drawn].all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0])[drawn].all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1])[drawn].all()
    # offsets are spread over the image, not pinned to a corner
    assert len(np.unique(top[drawn])) > 50 and len(np.unique(left[drawn])) > 50


@pytest.mark.parametrize("height,width", [(100, 300), (300, 100), (120, 130)])
def test_crop_box_fallback_is_torchvisions(height, width):
    """scale (1, 1) with the default ratio fits no box on a wide or tall image: both fall back alike."""
    from torchvision.transforms import RandomResizedCrop

    img = torch.zeros(1, height, width)
    expected = RandomResizedCrop.get_params(img, scale=[1.0, 1.0], ratio=[3 / 4, 4 / 3])
    got = sample_crop_boxes(np.array([height]), np.array([width]), (1.0, 1.0), (3 / 4, 4 / 3),
                            np.random.default_rng(0))[0]
    assert tuple(int(v) for v in got) == tuple(expected)


def test_draft_size_keeps_every_crop_at_its_output_resolution():
    boxes = [(0, 0, 400, 300), (10, 10, 120, 100)]  # (top, left, h, w)
    h, w = draft_size(800, 600, boxes, [64, 24])
    # the smaller view shrinks by at most min(120, 100) / 24 = 4.17: the image may shrink that much
    assert (h, w) == (int(np.ceil(800 / (100 / 24))), int(np.ceil(600 / (100 / 24))))
    assert draft_size(800, 600, [(0, 0, 50, 50)], [64]) == (800, 600)  # upsampling crop: full size


# --------------------------------------------------------------------------- DecodeCrops (CPU path)


def test_decode_crops_gives_one_uint8_column_per_view(jpeg_shards):
    table = _train_table(jpeg_shards)
    assert len(set(zip(table.column("height").to_pylist(), table.column("width").to_pylist()))) > 10
    specs = [CropSpec(48, (0.08, 1.0), (3 / 4, 4 / 3)), CropSpec(48, (0.08, 1.0), (3 / 4, 4 / 3)),
             CropSpec(24, (0.05, 0.4), (3 / 4, 4 / 3))]
    out = DecodeCrops(specs, 3)(table)
    n = table.num_rows
    assert sorted(out) == ["index", "label", "view0", "view1", "view2"]
    for v, spec in enumerate(specs):
        assert out[f"view{v}"].dtype == np.uint8 and out[f"view{v}"].shape == (n, spec.size, spec.size, 3)
        assert out[f"view{v}"].std() > 10  # real pixels, not an empty buffer
    assert out["index"].tolist() == table.column("index").to_pylist()
    assert out["label"].dtype == np.int64 and set(out["label"].tolist()) <= {0, 1, 2}
    # the same batch as numpy columns (the in-process reader) gives the same layout
    as_numpy = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    again = DecodeCrops(specs, 3)(as_numpy)
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in out.items()}
    # fresh entropy per call: a new epoch's crops differ
    assert not np.array_equal(again["view0"], out["view0"])


def test_draft_decoding_matches_full_size_crops(jpeg_shards):
    """The reduced-DCT decode is a speed-up, not a different picture."""
    table = _train_table(jpeg_shards)
    specs = [CropSpec(32, (0.5, 1.0), (3 / 4, 4 / 3)), CropSpec(16, (0.2, 0.5), (3 / 4, 4 / 3))]
    decoder = DecodeCrops(specs, 3, seed=7)
    out = decoder(table)
    heights = np.array(table.column("height").to_pylist())
    widths = np.array(table.column("width").to_pylist())
    boxes = decoder.boxes(heights, widths, np.random.default_rng(7))  # the same draws as the call above
    images, orientations = table.column("image").to_pylist(), table.column("orientation").to_pylist()
    reduced, diffs, wrong = 0, [], []
    for row in range(table.num_rows):
        full = decode_image(images[row], orientations[row], 3)
        row_boxes = [b[row] for b in boxes]
        reduced += draft_size(heights[row], widths[row], row_boxes, [32, 16]) != (heights[row], widths[row])
        for v, crop in enumerate(cut_crops(full, heights[row], widths[row], row_boxes, [32, 16])):
            diffs.append(np.abs(out[f"view{v}"][row].astype(int) - crop.astype(int)).mean())
        # control: the full-size crop of a box moved by a quarter of its width
        top, left, h, w = row_boxes[0]
        moved = left + w // 4 if left + w + w // 4 <= widths[row] else left - w // 4
        if w >= 8 and moved >= 0:
            other = cut_crops(full, heights[row], widths[row], [(top, moved, h, w)], [32])[0]
            wrong.append(np.abs(out["view0"][row].astype(int) - other.astype(int)).mean())
    # A 1/2..1/4-scale DCT decode low-passes differently from PIL's antialiased bilinear, so the
    # crops differ by rounding and filter shape: measured on these noisy pictures, mean 0.6
    # grey levels per crop (median), 2.6 at worst (4x reduction). A box off by a quarter of its
    # width differs several times more on most rows (checked, so the bound means something).
    assert max(diffs) < 4.0 and np.mean(diffs) < 1.5, (max(diffs), np.mean(diffs))
    assert np.median(wrong) > 3 * np.median(diffs), (np.median(wrong), np.median(diffs))
    assert reduced > 5 and len(wrong) > 5  # reduced decodes were compared, and the control ran


# --------------------------------------------------------------------------- device-side ops


def test_augment_precropped_normalises_flips_and_keeps_each_views_size():
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=gen) for _ in range(2)]
    crops.append(torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=gen))
    plain = ViewAugment(crop_scale=(0.08, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    flip = plain.model_copy(update={"hflip_p": 1.0})
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = augment_precropped(crops, [plain, flip, plain], mean=mean, std=std, generator=gen)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    expect = [(c.float() / 255 - m) / s for c in crops]
    assert [tuple(o.shape) for o in out] == [(5, 3, 16, 16), (5, 3, 16, 16), (5, 3, 8, 8)]
    assert all(o.dtype == torch.float32 for o in out)
    # the crop is not redone: no resample, the pixels are the crops' own
    torch.testing.assert_close(out[0], expect[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], expect[1].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], expect[2], atol=1e-5, rtol=0)

    # views sharing a recipe and size are augmented in one call: row slices of one tensor
    same = augment_precropped(crops[:2], [plain, plain], mean=mean, std=std, generator=gen, channels_last=True)
    assert same[0].untyped_storage().data_ptr() == same[1].untyped_storage().data_ptr()
    assert same[0].is_contiguous(memory_format=torch.channels_last)

    # colour ops run: with jitter and grayscale always on, the output differs from the plain crop
    strong = plain.model_copy(update={"jitter_p": 1.0, "grayscale_p": 1.0})
    gray = augment_precropped(crops[:1], [strong], mean=(0.5,) * 3, std=(0.5,) * 3, generator=gen)[0]
    torch.testing.assert_close(gray[:, 0], gray[:, 1])  # grayscale: equal channels
    with pytest.raises(ValueError, match="2 crop batches for 1 view"):
        augment_precropped(crops[:2], [plain], mean=mean, std=std)


# --------------------------------------------------------------------------- GPU path, run on the CPU


def test_orient_matches_pil_exif_transpose_for_all_eight_cases():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        image = Image.fromarray(pixels)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(image))
        got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"orientation {orientation}")
        np.testing.assert_array_equal(got, apply_orientation(pixels, orientation))


def test_device_decode_matches_the_cpu_path_on_the_same_boxes(jpeg_shards):
    """``decode_crops`` (torchvision decode + interpolate) vs PIL decode + PIL resize, same boxes."""
    table = _train_table(jpeg_shards)
    images = table.column("image").to_pylist()
    heights = table.column("height").to_pylist()
    widths = table.column("width").to_pylist()
    orientations = table.column("orientation").to_pylist()
    assert ORIENTED in orientations and any(data[:4] == b"\x89PNG" for data in images)
    specs = [CropSpec(40, (0.08, 1.0), (3 / 4, 4 / 3)), CropSpec(20, (0.05, 0.4), (3 / 4, 4 / 3))]
    rng = np.random.default_rng(3)
    boxes = [sample_crop_boxes(np.array(heights), np.array(widths), s.scale, s.ratio, rng) for s in specs]
    # a tiny per-call budget forces several batched decode calls
    got = decode_crops(images, heights, widths, orientations, specs, 3, torch.device("cpu"), boxes=boxes,
                       max_decoded_bytes=200_000)
    for v, spec in enumerate(specs):
        assert got[v].dtype == torch.uint8 and tuple(got[v].shape) == (len(images), 3, spec.size, spec.size)
        for row in range(len(images)):
            full = decode_image(images[row], orientations[row], 3)
            cpu = cut_crops(full, heights[row], widths[row], [boxes[v][row]], [spec.size])[0]
            diff = np.abs(got[v][row].permute(1, 2, 0).numpy().astype(int) - cpu.astype(int))
            # both decoders are libjpeg(-turbo) and interpolate(antialias=True) ports PIL's bilinear
            # filter: they differ by rounding only (measured: mean < 0.2, max 1-2 grey levels). A wrong
            # box, orientation or channel order differs by tens of levels.
            assert diff.mean() < 0.5 and diff.max() <= 3, (row, v, diff.mean(), diff.max())


def test_device_decode_falls_back_to_the_cpu_for_png_cmyk_and_gray():
    rng = np.random.default_rng(5)
    pixels = _picture(90, 130, 1, rng)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    rows = [_jpeg(pixels), png.getvalue(), _jpeg(pixels, mode="CMYK"), _jpeg(pixels, mode="L"),
            _jpeg(pixels, orientation=8)]
    assert [jpeg_components(r) for r in rows] == [3, None, 4, 1, 3]
    orientations = [1, 1, 1, 1, 8]
    decoded = dict(decode_rows(rows, orientations, 3, torch.device("cpu")))
    assert sorted(decoded) == [0, 1, 2, 3, 4]
    for row, data in enumerate(rows):
        expected = decode_image(data, orientations[row], 3)
        got = decoded[row].permute(1, 2, 0).numpy()
        assert got.shape == expected.shape, row
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 0.5, row
    assert decoded[4].shape[1:] == (130, 90)  # orientation 8 swaps height and width
    gray = dict(decode_rows(rows[3:4], [1], 1, torch.device("cpu")))[0]
    assert gray.shape == (1, 90, 130)


# --------------------------------------------------------------------------- the run's input


def test_crop_input_turns_each_kind_of_batch_into_views(jpeg_shards):
    manifest = load_manifest(jpeg_shards)
    cfg = RunConfig.model_validate({"data": {"source": "imagefolder", "path": jpeg_shards, "crop_size": 32}})
    assert global_crop_size(cfg, manifest) == 32
    assert global_crop_size(RunConfig.model_validate({"data": {"path": jpeg_shards}}), manifest) == 224
    views = cfg.data.views(2)
    table = _train_table(jpeg_shards)
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    cpu = RunData.load(cfg, jpeg_shards).crop_input(views, torch.device("cpu"))
    crops = DecodeCrops([s for s in cpu.specs], 3)(table)
    for given, source in ((crops, "ray_data"), (batch, "in_process")):
        out = cpu(given)
        assert cpu.source == source
        assert [tuple(t.shape) for t in out] == [(table.num_rows, 3, 32, 32)] * 2
    gpu_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"decode": "gpu"})})
    device = RunData.load(gpu_cfg, jpeg_shards).crop_input(views, torch.device("cpu"))
    out = device(batch)
    assert device.source == "device" and [tuple(t.shape) for t in out] == [(table.num_rows, 3, 32, 32)] * 2


def test_eval_images_are_centre_crops_of_the_first_rows(jpeg_shards):
    x, y = eval_images(jpeg_shards, "val", 24, limit=7, batch_rows=4)
    assert x.shape == (7, 24, 24, 3) and x.dtype == np.uint8 and y.shape == (7,)
    table = pq.read_table(shard_uris(jpeg_shards, "val")[0])
    assert y.tolist() == table.column("label").to_pylist()[:7]
    from raysl.data.codec import resize_center_crop

    for row in range(7):  # the evaluation transform: a DCT-reduced decode that still covers 24 x 24
        first = decode_image(table.column("image")[row].as_py(), table.column("orientation")[row].as_py(), 3,
                             min_size=(24, 24))
        np.testing.assert_array_equal(x[row], resize_center_crop(first, 24))


def test_in_process_run_on_jpeg_shards(jpeg_shards):
    """train_worker without Ray (LocalIO): decode in process, evaluation on centre crops."""
    from raysl.loop_io import LocalIO
    from raysl.train import train_worker

    cfg = _run_config(jpeg_shards, ["scale.num_workers=1", "data.crop_size=32"])
    io_ = LocalIO()
    train_worker({"config": cfg.model_dump(mode="json"), "data_dir": jpeg_shards}, io_)
    (report,) = io_.reports
    assert report["status"] == "finished" and 0.0 <= report["knn_acc"] <= 1.0 and report["images_per_s"] > 0


# --------------------------------------------------------------------------- raysl train, end to end


RUN_YAML = """\
method: {name: simclr, temperature: 0.2}
model: {backbone: small_convnet, width: 8, projector_hidden_dim: 64, projector_dim: 32}
data: {source: imagefolder, path: PATH, crop_size: 64}
optim: {name: adamw, lr: 0.002, batch_size: 32, epochs: 1}
scale: {num_workers: 2, cpus_per_worker: 1}
eval: {every_epochs: 1, stop_on_collapse: false}
"""


def _run_config(shards: str, overrides: list[str]) -> RunConfig:
    path = Path(shards).parent / "run.yaml"
    path.write_text(RUN_YAML.replace("PATH", shards))
    return load_config(str(path), overrides)


# DINO multi-crop as in its paper: 2 global + local crops, each cut by the Ray Data tasks at its own size (64 and
# 32 px here), on the config's two workers. (A one-worker SimCLR run fed by Ray Data's crops: the README's photo
# example, tests/test_collapse.py.)
MULTICROP = ["--set", "method={name: dino}", "--set", "data.local_crops.number=2", "--set", "data.local_crops.size=32"]


@pytest.mark.slow
def test_raysl_train_decodes_multicrop_jpeg_crops_in_ray_data(jpeg_shards, tmp_path, head):
    config = Path(jpeg_shards).parent / "run.yaml"
    config.write_text(RUN_YAML.replace("PATH", jpeg_shards))
    out = tmp_path / "run"
    before = head.data_logs()  # Ray Data's executor logs into the head's session folder: this run's part
    proc = subprocess.run([RAYSL, "train", str(config), *MULTICROP, "--out", str(out)], capture_output=True,
                          text=True, timeout=900, env=head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["epoch"] == 1
    assert 0.0 <= summary["knn_acc"] <= 1.0 and summary["rankme"] > 1.0 and summary["images_per_s"] > 0
    # its one epoch logged once, with the summary's numbers; the run's last stderr line is that epoch's
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["knn_acc"] == summary["knn_acc"]
    assert proc.stderr.strip().splitlines()[-1].startswith("[raysl] epoch=1  loss="), proc.stderr[-2000:]
    # the workers were handed crop columns (they say so from the batches they got) ...
    assert "[raysl] input: crops cut by Ray Data tasks (MapBatches(DecodeCrops)); views of 64, 64, 32, 32 px" \
        in proc.stderr
    # ... which Ray Data's executor made with DecodeCrops tasks, per its own log of the run
    text = head.data_log_since(before)
    assert "-> TaskPoolMapOperator[MapBatches(DecodeCrops)] ->" in text and "execution finished" in text, text[-2000:]
