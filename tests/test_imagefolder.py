"""``raysl data prepare imagefolder``: original bytes kept, odd images handled, unreadable
files reported, interrupted prepares resumed byte for byte; and the codec that reads them back.

Every image here is made with PIL in the test (gradients plus noise, so JPEGs
are not trivial); the CLI runs as a real subprocess where exit codes or
interruption matter.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from raysl.data.codec import apply_orientation, decode_image, image_format, resize_center_crop
from raysl.data.prepare.imagefolder_files import list_images
from raysl.data.prepare import prepare
from raysl.data.read.shards import decode_images, iter_split, load_manifest, read_split, shard_uris
from raysl.errors import DataError, ShardError

from conftest import HANG

RAYSL = str(Path(sys.executable).with_name("raysl"))
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photograph, not like a flat fill."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 60], axis=-1)
    return np.clip(base + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)


def _save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    """Two classes of mixed images, three of them unreadable."""
    src = tmp_path_factory.mktemp("odd") / "src"
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(90, 120), (200, 64), (200, 300), (150, 150), (60, 80)]):
        _save(src / "cat" / f"photo{i}.jpg", Image.fromarray(_photo(rng, h, w)), quality=90)
    _save(src / "cat" / "drawing.png", Image.fromarray(_photo(rng, 70, 50)))
    _save(src / "cat" / "scan.BMP", Image.fromarray(_photo(rng, 40, 30)))
    _save(src / "dog" / "gray.jpg", Image.fromarray(_photo(rng, 80, 60)[..., 0]), quality=90)
    _save(src / "dog" / "print.jpeg", Image.fromarray(_photo(rng, 50, 70)).convert("CMYK"), quality=90)
    (src / "dog" / "rotated.jpg").write_bytes(_jpeg_with_orientation(_photo(rng, 60, 100), 6))
    full = io.BytesIO()
    Image.fromarray(_photo(rng, 120, 160)).save(full, format="JPEG", quality=90)
    (src / "dog" / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (src / "dog" / "empty.jpg").write_bytes(b"")
    (src / "dog" / "notes.png").write_bytes(b"these are not the pixels you are looking for\n" * 20)
    (src / "dog" / "readme.txt").write_text("not an image suffix: ignored")
    return src


def _rows_by_file(src: Path, out: Path) -> dict[str, dict]:
    """Relative source path -> its shard row (all splits), through the index column."""
    files = list_images(src).files
    rows = {}
    manifest = load_manifest(str(out))
    for split in manifest.splits:
        for uri in shard_uris(str(out), split):
            table = pq.read_table(uri)
            for row in table.to_pylist():
                rows[files[row["index"]]] = {**row, "split": split}
    return rows


def _file_pixels(path: Path, channels: int = 3) -> np.ndarray:
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
        return np.asarray(upright).reshape(upright.height, upright.width, channels)


def test_prepare_keeps_original_bytes_and_lists_unreadable_files(odd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = prepare("imagefolder", str(odd_folder), str(out), shard_rows=3, val_fraction=0.25, workers=1)
    rows = _rows_by_file(odd_folder, out)

    unreadable = {"dog/truncated.jpg", "dog/empty.jpg", "dog/notes.png"}
    assert {s.file for s in manifest.skipped} == unreadable
    reasons = {s.file: s.reason for s in manifest.skipped}
    assert reasons["dog/empty.jpg"] == "empty file"
    assert "truncated" in reasons["dog/truncated.jpg"]
    assert reasons["dog/notes.png"] == "not an image PIL can read (unknown format)"
    assert set(rows) == set(list_images(odd_folder).files) - unreadable
    assert manifest.splits["train"].rows + manifest.splits["val"].rows == len(rows) == 10

    for relative, row in rows.items():
        source = odd_folder / relative
        assert row["label"] == (0 if relative.startswith("cat/") else 1)
        if source.suffix.lower() in (".jpg", ".jpeg"):  # a JPEG is stored byte for byte
            assert hashlib.sha256(row["image"]).digest() == hashlib.sha256(source.read_bytes()).digest()
        else:
            assert image_format(row["image"]) == "png"
        decoded = decode_image(row["image"], row["orientation"], 3)
        assert decoded.shape == (row["height"], row["width"], 3)
        if relative != "dog/print.jpeg":
            assert np.array_equal(decoded, _file_pixels(source)), relative  # pixels as PIL shows them

    assert rows["cat/drawing.png"]["image"] == (odd_folder / "cat/drawing.png").read_bytes()
    bmp = rows["cat/scan.BMP"]
    assert np.array_equal(decode_image(bmp["image"], 1, 3), _file_pixels(odd_folder / "cat/scan.BMP"))

    cmyk = decode_image(rows["dog/print.jpeg"]["image"], 1, 3)
    with Image.open(odd_folder / "dog/print.jpeg") as image:
        assert image.mode == "CMYK"
        assert np.array_equal(cmyk, np.asarray(image.convert("RGB")))
    assert decode_image(rows["dog/gray.jpg"]["image"], 1, 1).shape == (80, 60, 1)

    rotated = rows["dog/rotated.jpg"]
    with Image.open(odd_folder / "dog/rotated.jpg") as image:
        assert image.size == (100, 60)  # stored 100 wide, 60 high
        upright = np.asarray(ImageOps.exif_transpose(image))
    assert (rotated["orientation"], rotated["height"], rotated["width"]) == (6, 100, 60)
    assert np.array_equal(decode_image(rotated["image"], 6, 3), upright)

    assert manifest.encoding == "encoded" and manifest.channels == 3
    train_sizes = [(r["height"], r["width"]) for r in rows.values() if r["split"] == "train"]
    assert manifest.height == int(round(float(np.median([h for h, _ in train_sizes]))))
    assert manifest.width == int(round(float(np.median([w for _, w in train_sizes]))))
    assert manifest.class_names == ("cat", "dog") and manifest.labeled
    assert all(0.2 < m < 0.8 for m in manifest.mean) and all(0.05 < s < 0.5 for s in manifest.std)
    assert load_manifest(str(out)) == manifest
    assert not (out / ".prepare").exists()
    with pytest.raises(DataError, match="already holds a prepared dataset"):
        prepare("imagefolder", str(odd_folder), str(out))


def test_encoded_splits_read_at_eval_size_streamed_or_whole(odd_folder: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    manifest = prepare("imagefolder", str(odd_folder), out, shard_rows=3, val_fraction=0.25, workers=1)
    table = pq.read_table(shard_uris(out, "train")[0])
    with pytest.raises(DataError, match="decode_image"):
        decode_images(table.column("image"), manifest)
    with pytest.raises(DataError, match="size=N"):
        read_split(out, "train")

    images, labels = read_split(out, "train", size=32)
    assert images.shape == (manifest.splits["train"].rows, 32, 32, 3) and images.dtype == np.uint8
    rows = manifest.splits["train"].rows
    assert rows > 3 and rows % 3  # batches cross shard boundaries and the last one is short
    batches = list(iter_split(out, "train", 32, batch_rows=3))
    assert [len(b[0]) for b in batches] == [3] * (rows // 3) + [rows % 3]
    assert np.array_equal(np.concatenate([b[0] for b in batches]), images)
    assert np.array_equal(np.concatenate([b[1] for b in batches]), labels)

    expected = []  # the same transform row by row, straight from the Parquet files
    for uri in shard_uris(out, "train"):
        for row in pq.read_table(uri).to_pylist():
            full = decode_image(row["image"], row["orientation"], 3, min_size=(32, 32))
            expected.append(resize_center_crop(full, 32))
    assert np.array_equal(np.stack(expected), images)


def test_pool_workers_write_the_same_shards_as_one_process(odd_folder: Path, tmp_path: Path) -> None:
    one = prepare("imagefolder", str(odd_folder), str(tmp_path / "one"), shard_rows=2, workers=1, seed=5)
    pool = prepare("imagefolder", str(odd_folder), str(tmp_path / "pool"), shard_rows=2, workers=2, seed=5)
    assert one == pool  # same sha256 per shard, same stats, same skipped list
    other = prepare("imagefolder", str(odd_folder), str(tmp_path / "other"), shard_rows=2, workers=1, seed=6)
    assert other.splits["train"].shards[0].sha256 != one.splits["train"].shards[0].sha256


def test_max_side_downsizes_only_big_images(odd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare("imagefolder", str(odd_folder), str(out), max_side=80, quality=85, val_fraction=0.0, workers=1)
    rows = _rows_by_file(odd_folder, out)
    for relative, row in rows.items():
        source = odd_folder / relative
        with Image.open(source) as image:
            height, width = ImageOps.exif_transpose(image).size[::-1]
        if max(height, width) <= 80:
            assert (row["height"], row["width"]) == (height, width)
            if source.suffix.lower() in (".jpg", ".jpeg", ".png"):
                assert row["image"] == source.read_bytes(), relative  # untouched, byte for byte
        else:
            assert max(row["height"], row["width"]) == 80, relative
            assert abs(row["height"] / row["width"] - height / width) < 0.05
            assert row["orientation"] == 1  # orientation applied before the resize
            kind = "jpeg" if source.suffix.lower() in (".jpg", ".jpeg") else "png"
            assert image_format(row["image"]) == kind
            assert decode_image(row["image"], 1, 3).shape == (row["height"], row["width"], 3)
    assert (rows["cat/photo2.jpg"]["height"], rows["cat/photo2.jpg"]["width"]) == (53, 80)
    rotated = rows["dog/rotated.jpg"]  # displayed 60 wide x 100 high
    assert (rotated["height"], rotated["width"]) == (80, 48)
    small = resize_center_crop(_file_pixels(odd_folder / "dog/rotated.jpg"), 48)
    assert np.abs(decode_image(rotated["image"], 1, 3)[16:64].astype(int) - small).mean() < 12


def test_grayscale_folder_is_one_channel_and_flat_folder_unlabeled(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for i in range(5):
        _save(tmp_path / "src" / f"{i}.png", Image.fromarray(_photo(rng, 40 + i, 50)[..., 1]))
    sixteen = (_photo(rng, 30, 30)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    _save(tmp_path / "src" / "deep.png", Image.fromarray(sixteen))
    manifest = prepare("imagefolder", str(tmp_path / "src"), str(tmp_path / "out"), val_fraction=0.0, workers=1)
    assert manifest.channels == 1 and not manifest.labeled and manifest.class_names is None
    images, labels = read_split(str(tmp_path / "out"), "train", size=24)
    assert images.shape == (6, 24, 24, 1) and labels is None
    rows = _rows_by_file(tmp_path / "src", tmp_path / "out")
    assert np.array_equal(decode_image(rows["deep.png"]["image"], 1, 1)[..., 0], (sixteen // 257).astype(np.uint8))
    assert rows["deep.png"]["label"] is None


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([RAYSL, *args], capture_output=True, text=True, timeout=HANG, **kwargs)


def test_cli_reports_skipped_files_and_strict_stops_with_one_error_line(odd_folder: Path, tmp_path: Path) -> None:
    done = _cli("data", "prepare", "imagefolder", str(odd_folder), "--out", str(tmp_path / "lenient"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert f"raysl: skipped 3 unreadable files, see {tmp_path / 'lenient'}/manifest.json" in done.stderr
    assert '"encoding": "encoded"' in done.stdout and '"skipped": 3' in done.stdout

    strict = _cli("data", "prepare", "imagefolder", str(odd_folder), "--out", str(tmp_path / "strict"), "--strict",
                  "--workers", "1")  # fmt: skip
    assert strict.returncode == 2
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysl: error: cannot read image dog/"), strict.stderr
    assert "--strict" in lines[0]
    assert not (tmp_path / "strict" / "manifest.json").exists()


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> Path:
    """120 photographs of 480x640 crops: enough work for several shards to finish before the kill."""
    src = tmp_path_factory.mktemp("many") / "src"
    rng = np.random.default_rng(1)
    canvas = _photo(rng, 700, 900)
    for i in range(120):
        top, left = rng.integers(0, 700 - 480), rng.integers(0, 900 - 640)
        crop = canvas[top : top + 480, left : left + 640]
        _save(src / f"class{i % 3}" / f"{i:03d}.jpg", Image.fromarray(crop[:, ::-1] if i % 2 else crop), quality=90)
    return src


def test_killed_prepare_resumes_to_identical_shards(many_photos: Path, tmp_path: Path) -> None:
    options = ["--shard-rows", "4", "--seed", "3", "--max-side", "200", "--workers", "1"]
    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        [RAYSL, "data", "prepare", "imagefolder", str(many_photos), "--out", str(out), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list((out / ".prepare").glob("*.parquet.json"))) < 2:
        assert process.poll() is None, "prepare ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()
    assert not (out / "manifest.json").exists()
    finished = {p.name[: -len(".json")] for p in (out / ".prepare").glob("*.parquet.json")}
    assert 2 <= len(finished) < 30  # 96 train + 24 val files in shards of 4
    before = {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in finished}

    resumed = _cli("data", "prepare", "imagefolder", str(many_photos), "--out", str(out), *options)
    assert resumed.returncode == 0, resumed.stderr
    assert f"kept {len(finished)} finished shards ({4 * len(finished)} files)" in resumed.stderr
    assert {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in finished} == before

    whole = tmp_path / "whole"
    reference = prepare("imagefolder", str(many_photos), str(whole), shard_rows=4, seed=3, max_side=200, workers=1)
    assert load_manifest(str(out)) == reference
    shards = sorted(p.name for p in whole.glob("*.parquet"))
    assert len(shards) == 30 and sorted(p.name for p in out.glob("*.parquet")) == shards
    for name in shards:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert not (out / ".prepare").exists()


def test_interrupted_prepare_with_other_options_is_refused(odd_folder: Path, tmp_path: Path, monkeypatch) -> None:
    from raysl.data.prepare import imagefolder_journal

    out = str(tmp_path / "out")
    record = imagefolder_journal.Journal.record

    def record_then_stop(self, entry):  # Ctrl-C once the first shard is finished
        record(self, entry)
        raise KeyboardInterrupt

    # (a --strict failure no longer leaves an interrupted prepare: it leaves --out as it was)
    monkeypatch.setattr(imagefolder_journal.Journal, "record", record_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare("imagefolder", str(odd_folder), out, shard_rows=2, seed=1, workers=1)
    monkeypatch.undo()
    assert (tmp_path / "out" / ".prepare" / "options.json").exists()
    with pytest.raises(DataError, match=r"other options or files \(seed\); .*pick another --out or delete it"):
        prepare("imagefolder", str(odd_folder), out, shard_rows=2, seed=2, workers=1)
    finished = prepare("imagefolder", str(odd_folder), out, shard_rows=2, seed=1, workers=1)
    assert len(finished.skipped) == 3
    assert finished == prepare("imagefolder", str(odd_folder), str(tmp_path / "b"), shard_rows=2, seed=1, workers=1)


def test_interrupted_prepare_is_one_line_with_the_signal_and_the_command(odd_folder: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """`raysl data prepare imagefolder` stopped (a SIGTERM, raised by raysl.cli's handler) while its progress
    line is on a terminal: the line is cleared, then one line names the signal and the command that resumes,
    from the start of a line (it was an empty line and then `raysl: interrupted; ...`, no signal, no command)."""
    from raysl import cli
    from raysl.data.prepare import imagefolder, imagefolder_journal
    from raysl.errors import Interrupted

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    record, update = imagefolder_journal.Journal.record, imagefolder.Progress.update

    def record_then_stop(self, entry):  # a SIGTERM once the first shard is finished
        record(self, entry)
        raise Interrupted("SIGTERM", "before training started")

    monkeypatch.setattr(imagefolder_journal.Journal, "record", record_then_stop)
    monkeypatch.setattr(imagefolder.Progress, "update", lambda self, done, force=False: update(self, done, True))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    out = str(tmp_path / "out")
    argv = ["data", "prepare", "imagefolder", str(odd_folder), "--out", out, "--shard-rows", "2", "--workers", "1"]
    assert cli.main(argv) == 130
    text = terminal.getvalue()
    assert "\rprepare: 1/" in text  # the progress line was on screen
    before, line = text.rsplit("\r", 1)
    assert before.rsplit("\r", 1)[-1].strip(" ") == ""  # ... and overwritten with blanks
    assert line == (f"raysl: interrupted (SIGTERM); finished shards are kept; resume with: raysl data prepare "
                    f"imagefolder {odd_folder} --out {out} --shard-rows 2 --workers 1\n"), text


# --------------------------------------------------------------------------- codec


def test_apply_orientation_matches_pil_for_all_eight_cases() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (5, 7, 3), np.uint8)
    assert np.array_equal(apply_orientation(pixels, 1), pixels)
    for orientation, method in TRANSPOSES.items():
        expected = np.asarray(Image.fromarray(pixels).transpose(method))
        assert np.array_equal(apply_orientation(pixels, orientation), expected), orientation
    with pytest.raises(ShardError, match="orientation 9"):
        apply_orientation(pixels, 9)


def test_decode_image_equals_exif_transpose_on_real_rotated_jpegs() -> None:
    pixels = _photo(np.random.default_rng(3), 24, 40)
    for orientation in range(1, 9):
        data = _jpeg_with_orientation(pixels, orientation)
        with Image.open(io.BytesIO(data)) as image:
            assert image.getexif()[0x0112] == orientation
            upright = np.asarray(ImageOps.exif_transpose(image))
        decoded = decode_image(data, orientation, 3)
        assert np.array_equal(decoded, upright), orientation
        assert decoded.shape[:2] == ((40, 24) if orientation >= 5 else (24, 40))


def test_draft_decodes_jpegs_at_the_smallest_scale_that_covers_min_size() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_photo(np.random.default_rng(5), 600, 800)).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    assert decode_image(data, 1, 3).shape == (600, 800, 3)
    assert decode_image(data, 1, 3, min_size=(100, 100)).shape == (150, 200, 3)  # 1/4: 1/8 would give 75 rows
    assert decode_image(data, 1, 3, min_size=(75, 100)).shape == (75, 100, 3)  # 1/8
    assert decode_image(data, 1, 3, min_size=(301, 100)).shape == (600, 800, 3)  # 1/2 would give 300 rows
    # orientation 6 shows it 600 wide x 800 high; min_size is in those displayed terms
    rotated = decode_image(data, 6, 3, min_size=(390, 100))
    assert rotated.shape == (400, 300, 3)
    half = decode_image(data, 1, 1, min_size=(200, 300))
    assert half.shape == (300, 400, 1)
    png = io.BytesIO()
    Image.fromarray(_photo(np.random.default_rng(6), 60, 80)).save(png, format="PNG")
    assert decode_image(png.getvalue(), 1, 3, min_size=(10, 10)).shape == (60, 80, 3)  # not a JPEG: full size


def test_image_format_and_undecodable_bytes() -> None:
    pixels = _photo(np.random.default_rng(7), 8, 8)
    for kind in ("jpeg", "png", "gif", "bmp", "tiff", "webp"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=kind.upper())
        assert image_format(buffer.getvalue()) == kind
    assert image_format(b"hello") == "unknown"
    with pytest.raises(ShardError, match="cannot be decoded") as caught:
        decode_image(b"\xff\xd8\xff\xe0 definitely not a jpeg", 1, 3)
    assert "\n" not in str(caught.value)


def test_resize_center_crop_matches_torchvision_arithmetic() -> None:
    wide = np.zeros((50, 100, 3), np.uint8)
    wide[:, 45:55] = 255  # a bright bar in the middle survives the centre crop
    out = resize_center_crop(wide, 20)
    assert out.shape == (20, 20, 3) and out[:, 10].min() == 255 and out[:, 0].max() == 0
    assert resize_center_crop(np.zeros((30, 10, 1), np.uint8), 10).shape == (10, 10, 1)
    same = np.random.default_rng(8).integers(0, 256, (16, 16, 3), np.uint8)
    assert np.array_equal(resize_center_crop(same, 16), same)


@pytest.mark.slow
def test_ray_tasks_write_the_same_shards_as_the_local_pool(
    odd_folder: Path, tmp_path: Path, ray_local, head, monkeypatch
) -> None:
    """With RAY_ADDRESS set (as under `ray job submit`) the shards are built by Ray tasks, byte for byte the same."""
    monkeypatch.delenv("RAY_ADDRESS")  # the local pool (this process has joined the head: ray_local)
    local = prepare("imagefolder", str(odd_folder), str(tmp_path / "local"), shard_rows=3, workers=1)
    monkeypatch.setenv("RAY_ADDRESS", head.address)
    on_ray = prepare("imagefolder", str(odd_folder), str(tmp_path / "ray"), shard_rows=3)
    assert on_ray == local
    from ray.util.state import list_tasks

    job = ray_local.get_runtime_context().get_job_id()  # the head is the suite's: count this job's tasks only

    expected = len(local.splits["train"].shards) + len(local.splits["val"].shards)
    # Ray's state API is eventually consistent (workers report task events in the background): wait until
    # every task has been recorded; the deadline only guards against a hang
    deadline = time.time() + 120
    while True:
        tasks = list_tasks(filters=[("func_or_class_name", "=", "ray_shard"), ("job_id", "=", job)],
                           raise_on_missing_output=False)
        if len(tasks) >= expected or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(tasks) == expected
    for shard in local.splits["train"].shards + local.splits["val"].shards:
        assert (tmp_path / "ray" / shard.file).read_bytes() == (tmp_path / "local" / shard.file).read_bytes()


def test_manifests_without_skipped_still_load(tmp_path: Path) -> None:
    manifest = prepare("digits", None, str(tmp_path / "d"))
    body = manifest.to_dict()
    assert body.pop("skipped") == ()
    from raysl.data.manifest import Manifest

    assert Manifest.from_dict(body) == manifest


def test_progress_is_one_rewritten_line_on_a_terminal_and_plain_lines_otherwise() -> None:
    from raysl.data.prepare.imagefolder import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, redirected = Terminal(), io.StringIO()
    for stream in (terminal, redirected):
        meter = Progress(1000, stream, already=100)
        meter.update(400, force=True)
        meter.update(401)  # too soon after the last one: nothing
        meter.finish(1000)
    assert terminal.getvalue().startswith("\rprepare: 400/1,000 files, ") and "files/s, ETA " in terminal.getvalue()
    assert terminal.getvalue().count("prepare: ") == 2 and terminal.getvalue().endswith(" files/s)\n")
    lines = redirected.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("prepare: 400/1,000 files, ") and "\r" not in redirected.getvalue()
    assert "\x1b" not in terminal.getvalue() + redirected.getvalue()  # no ANSI codes
