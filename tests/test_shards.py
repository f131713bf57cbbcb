"""Tests for ``raysl data prepare``: every source round-trips its pixels and labels,
output is deterministic, and tampered or missing shards are caught by name."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysl.data.manifest import Manifest
from raysl.data.prepare import prepare
from raysl.data.read.shards import (
    decode_images,
    load_manifest,
    read_split,
    shard_uris,
    verify_shards,
)
from raysl.errors import ConfigError, DataError, RayslError, ShardError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _by_index(out: Path, split: str) -> dict[int, tuple[bytes, int | None]]:
    """index column -> (image bytes, label), read straight from the Parquet files."""
    rows = {}
    for uri in shard_uris(str(out), split):
        table = pq.read_table(uri).to_pydict()
        rows.update(zip(table["index"], zip(table["image"], table["label"])))
    return rows


# --------------------------------------------------------------------------- digits


def test_digits_prepare_roundtrip_and_manifest(tmp_path: Path) -> None:
    manifest = prepare("digits", None, str(tmp_path / "d"), shard_rows=500, val_fraction=0.25, seed=3)

    assert manifest.splits["train"].rows + manifest.splits["val"].rows == 1797
    assert manifest.splits["val"].rows == round(1797 * 0.25)
    assert [s.file for s in manifest.splits["train"].shards] == [f"train-0000{i}.parquet" for i in range(3)]
    assert manifest.image_shape == (8, 8, 1) and manifest.encoding == "raw"
    assert manifest.class_names == tuple("0123456789") and manifest.num_classes == 10
    assert manifest.labeled and manifest.split_from == "shuffle"
    assert 0.0 < manifest.mean[0] < 1.0 and 0.0 < manifest.std[0] < 1.0

    images, labels = read_split(str(tmp_path / "d"), "train")
    assert images.shape == (manifest.splits["train"].rows, 8, 8, 1) and images.dtype == np.uint8
    assert labels is not None and set(labels.tolist()) == set(range(10))
    assert images.max() == 255 and images.flags.writeable
    assert np.isclose(images.mean() / 255.0, manifest.mean[0], atol=1e-6)

    assert manifest.splits["val"]["rows"] == manifest.splits["val"].rows  # JSON-style access works too
    assert manifest.splits["val"]["shards"][0]["file"] == "val-00000.parquet"
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert load_manifest(str(tmp_path / "d")) == manifest


def test_interrupted_prepare_of_a_source_that_starts_over_says_run_it_again(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    """Ctrl-C (SIGINT) during `raysl data prepare digits`: one line from the start of a line (no progress line
    is drawn for it), the signal, and the command to run again (it starts over), exit 130."""
    from raysl import cli
    from raysl.data.prepare import write as prepare_module

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "load_source", stop)
    out = str(tmp_path / "d")
    assert cli.main(["data", "prepare", "digits", "--out", out]) == 130
    assert capsys.readouterr().err == (f"raysl: interrupted (SIGINT); run it again with: raysl data prepare digits "
                                       f"--out {out}\n")


def test_digits_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = prepare("digits", None, str(tmp_path / "a"), seed=7)
    second = prepare("digits", None, str(tmp_path / "b"), seed=7)
    other = prepare("digits", None, str(tmp_path / "c"), seed=8)
    assert first == second  # same shard bytes, hence same sha256
    assert first.splits["train"].shards[0].sha256 != other.splits["train"].shards[0].sha256
    val_a, val_b = read_split(str(tmp_path / "a"), "val")[0], read_split(str(tmp_path / "b"), "val")[0]
    assert np.array_equal(val_a, val_b)


def test_prepare_refuses_existing_output_and_bad_arguments(tmp_path: Path) -> None:
    out = str(tmp_path / "d")
    prepare("digits", None, out)
    with pytest.raises(DataError, match="already holds a prepared dataset"):
        prepare("digits", None, out)
    with pytest.raises(ConfigError, match="digits, idx, cifar10, imagefolder"):
        prepare("mnist", None, str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="needs a PATH"):
        prepare("idx", None, str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="val-fraction"):
        prepare("digits", None, str(tmp_path / "x"), val_fraction=1.0)
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no split"):
        read_split(out, "test")


def test_decode_images_accepts_bytes_lists_and_arrow_columns(tmp_path: Path) -> None:
    manifest = prepare("digits", None, str(tmp_path / "d"), shard_rows=400)
    table = pq.read_table(shard_uris(str(tmp_path / "d"), "train")[1])
    from_arrow = decode_images(table.column("image"), manifest)
    from_list = decode_images(table.column("image").to_pylist(), manifest)
    from_numpy = decode_images(table.column("image").to_numpy(), manifest)
    assert from_arrow.shape == (400, 8, 8, 1)
    assert np.array_equal(from_arrow, from_list) and np.array_equal(from_arrow, from_numpy)
    assert np.array_equal(decode_images(table.column("image").slice(10, 5), manifest), from_arrow[10:15])


# --------------------------------------------------------------------------- idx


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as file:
            file.write(payload)
    else:
        path.write_bytes(payload)


def test_idx_train_and_test_files_become_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_x, train_y = rng.integers(0, 256, (30, 5, 4), np.uint8), rng.integers(0, 10, 30)
    test_x, test_y = rng.integers(0, 256, (12, 5, 4), np.uint8), rng.integers(0, 10, 12)
    source = tmp_path / "mnist"
    source.mkdir()
    _write_idx(source / "train-images-idx3-ubyte", train_x, compress=True)
    _write_idx(source / "train-labels-idx1-ubyte", train_y, compress=False)
    _write_idx(source / "t10k-images-idx3-ubyte", test_x, compress=False)
    _write_idx(source / "t10k-labels-idx1-ubyte", test_y, compress=True)

    manifest = prepare("idx", str(source), str(tmp_path / "out"), shard_rows=7, val_fraction=0.5)
    assert manifest.split_from == "source"
    assert (manifest.splits["train"].rows, manifest.splits["val"].rows) == (30, 12)
    assert manifest.image_shape == (5, 4, 1) and manifest.class_names == tuple("0123456789")

    train = _by_index(tmp_path / "out", "train")
    assert sorted(train) == list(range(30))
    for row, (image, label) in train.items():
        assert image == train_x[row].tobytes() and label == train_y[row]
    val = _by_index(tmp_path / "out", "val")
    assert sorted(val) == list(range(30, 42))
    for row, (image, label) in val.items():
        assert image == test_x[row - 30].tobytes() and label == test_y[row - 30]

    images, labels = read_split(str(tmp_path / "out"), "val")
    assert images.shape == (12, 5, 4, 1)
    assert sorted(map(bytes, images)) == sorted(x.tobytes() for x in test_x[..., None])
    assert labels is not None and sorted(labels) == sorted(test_y)


def test_idx_single_file_pair_splits_by_fraction(tmp_path: Path) -> None:
    images = np.arange(20 * 3 * 3, dtype=np.uint8).reshape(20, 3, 3)
    _write_idx(tmp_path / "data-images-idx3-ubyte", images, compress=False)
    _write_idx(tmp_path / "data-labels-idx1-ubyte", np.arange(20) % 3, compress=False)
    manifest = prepare("idx", str(tmp_path), str(tmp_path / "out"), val_fraction=0.25)
    assert manifest.split_from == "shuffle"
    assert (manifest.splits["train"].rows, manifest.splits["val"].rows) == (15, 5)
    assert manifest.class_names == ("0", "1", "2")


def test_idx_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no IDX image files"):
        prepare("idx", str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "x-images-idx3-ubyte").write_bytes(b"\x08\x03\x00\x00garbage")
    with pytest.raises(DataError, match="bad magic number"):
        prepare("idx", str(tmp_path), str(tmp_path / "out"))
    _write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((4, 2, 2)), compress=False)
    (tmp_path / "x-images-idx3-ubyte").write_bytes((tmp_path / "x-images-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(DataError, match="re-download"):
        prepare("idx", str(tmp_path), str(tmp_path / "out"))


# --------------------------------------------------------------------------- cifar


def _write_cifar(
    folder: Path, batches: list[tuple[np.ndarray, list[int]]], test: tuple[np.ndarray, list[int]]
) -> None:
    """CIFAR-10 python layout, pickled with protocol 2 like the real (Python 2) files."""
    folder.mkdir()
    for number, (images, labels) in enumerate(batches, start=1):
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # HWC -> CHW rows
        batch = {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f"] * len(labels)}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch, protocol=2))
    data = test[0].transpose(0, 3, 1, 2).reshape(len(test[0]), -1)
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": test[1], b"data": data}, protocol=2))
    names = [name.encode() for name in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))


def test_cifar10_batches_round_trip_hwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    batches = [
        (rng.integers(0, 256, (6, 32, 32, 3), np.uint8), [int(v) for v in rng.integers(0, 10, 6)])
        for _ in range(2)
    ]
    test = (rng.integers(0, 256, (4, 32, 32, 3), np.uint8), [1, 2, 3, 4])
    batches[0][0][0, 5, 7] = (11, 22, 33)  # a known pixel: row 5, column 7, RGB
    _write_cifar(tmp_path / "cifar-10-batches-py", batches, test)

    manifest = prepare("cifar10", str(tmp_path), str(tmp_path / "out"))
    assert manifest.split_from == "source" and manifest.image_shape == (32, 32, 3)
    assert manifest.class_names is not None and manifest.class_names[9] == "truck"
    rows = _by_index(tmp_path / "out", "train")
    first = np.frombuffer(rows[0][0], np.uint8).reshape(32, 32, 3)
    assert tuple(first[5, 7]) == (11, 22, 33)
    assert np.array_equal(first, batches[0][0][0])
    assert rows[6][1] == batches[1][1][0]
    images, labels = read_split(str(tmp_path / "out"), "val")
    assert sorted(labels.tolist()) == [1, 2, 3, 4] and images.shape == (4, 32, 32, 3)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = np.arange(5 * 3072, dtype=np.uint32).astype(np.uint8).reshape(5, 3072)
    for name, labels in (("train", [0, 1, 2, 1, 0]), ("test", [2, 2, 2, 2, 2])):
        batch = {b"data": images, b"fine_labels": labels, b"coarse_labels": [0] * 5}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple", b"bee", b"cup"]}, protocol=2))
    manifest = prepare("cifar10", str(folder), str(tmp_path / "out"))
    assert manifest.class_names == ("apple", "bee", "cup")
    assert (manifest.splits["train"].rows, manifest.splits["val"].rows) == (5, 5)
    _, labels = read_split(str(tmp_path / "out"), "train")
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle(tmp_path: Path) -> None:
    images = np.zeros((2, 32, 32, 3), np.uint8)
    _write_cifar(tmp_path / "c", [(images, [0, 1])], (images, [0, 1]))
    marker = tmp_path / "pwned"
    (tmp_path / "c" / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(DataError, match="system"):
        prepare("cifar10", str(tmp_path / "c"), str(tmp_path / "out"))
    assert not marker.exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_out_may_be_a_uri(tmp_path: Path) -> None:
    out = f"file://{tmp_path}/uri-out"
    manifest = prepare("digits", None, out, shard_rows=1000)
    assert load_manifest(out) == manifest
    uris = shard_uris(out, "train")
    assert uris == [f"{out}/train-00000.parquet", f"{out}/train-00001.parquet"]
    assert read_split(out, "train")[0].shape == (manifest.splits["train"].rows, 8, 8, 1)


# --------------------------------------------------------------------------- image folders


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_imagefolder_with_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    written = {}
    for label, name in enumerate(["cat", "dog"]):
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), np.uint8)
            _write_png(tmp_path / "src" / name / f"{i}.png", pixels)
            written[pixels.tobytes()] = label
    manifest = prepare("imagefolder", str(tmp_path / "src"), str(tmp_path / "out"), val_fraction=0.0, workers=1)
    assert manifest.class_names == ("cat", "dog") and manifest.labeled
    assert manifest.image_shape == (8, 8, 3) and manifest.encoding == "encoded"  # even small images keep their bytes
    assert manifest.splits["val"].rows == 0 and manifest.splits["val"].shards == ()
    stored = {image for image, _ in _by_index(tmp_path / "out", "train").values()}
    assert stored == {file.read_bytes() for file in (tmp_path / "src").rglob("*.png")}
    images, labels = read_split(str(tmp_path / "out"), "train", size=8)
    assert {image.tobytes(): int(label) for image, label in zip(images, labels)} == written
    assert read_split(str(tmp_path / "out"), "val", size=8)[0].shape == (0, 8, 8, 3)


def test_imagefolder_keeps_each_image_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    gray = [rng.integers(0, 256, (80, 80), np.uint8) for _ in range(4)]
    for i, pixels in enumerate(gray):
        _write_png(tmp_path / "src" / "only" / f"{i}.png", pixels)
    _write_png(tmp_path / "src" / "only" / "odd.png", rng.integers(0, 256, (40, 90), np.uint8))
    manifest = prepare("imagefolder", str(tmp_path / "src"), str(tmp_path / "out"), val_fraction=0.0, workers=1)
    assert manifest.encoding == "encoded" and manifest.image_shape == (80, 80, 1)  # the median size
    table = pq.read_table(shard_uris(str(tmp_path / "out"), "train")[0])
    sizes = sorted(zip(table.column("height").to_pylist(), table.column("width").to_pylist()))
    assert sizes == [(40, 90)] + [(80, 80)] * 4  # nothing was resized
    images, _ = read_split(str(tmp_path / "out"), "train", size=80)
    stored = {image.tobytes() for image in images}
    assert all(pixels[..., None].tobytes() in stored for pixels in gray)  # PNG is lossless


def test_flat_imagefolder_is_unlabeled(tmp_path: Path) -> None:
    for i in range(5):
        _write_png(tmp_path / "src" / f"{i}.jpg", np.full((8, 8, 3), i * 40, np.uint8))
    manifest = prepare("imagefolder", str(tmp_path / "src"), str(tmp_path / "out"), val_fraction=0.2, workers=1)
    assert not manifest.labeled and manifest.class_names is None and manifest.num_classes == 0
    images, labels = read_split(str(tmp_path / "out"), "train", size=8)
    assert labels is None and images.shape == (4, 8, 8, 3)
    assert pq.read_table(shard_uris(str(tmp_path / "out"), "train")[0]).column("label").null_count == 4


# --------------------------------------------------------------------------- corrupt shards


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    out = tmp_path / "d"
    prepare("digits", None, str(out), shard_rows=600)
    verify_shards(str(out))
    return out


def test_flipped_byte_is_a_sha256_mismatch(prepared: Path) -> None:
    shard = prepared / "train-00001.parquet"
    payload = bytearray(shard.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    shard.write_bytes(bytes(payload))
    with pytest.raises(ShardError, match=r"shard train-00001\.parquet: sha256 mismatch"):
        verify_shards(str(prepared))
    with pytest.raises(ShardError, match="train-00001.parquet"):
        read_split(str(prepared), "train")


def test_truncated_shard_is_named(prepared: Path) -> None:
    shard = prepared / "val-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=r"val-00000\.parquet.*truncated"):
        verify_shards(str(prepared))


def test_missing_shard_is_named(prepared: Path) -> None:
    (prepared / "train-00000.parquet").unlink()
    with pytest.raises(ShardError, match=r"train-00000\.parquet is missing") as caught:
        verify_shards(str(prepared))
    assert isinstance(caught.value, RayslError) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(tmp_path: Path) -> None:
    manifest = prepare("idx", str(FASHION_MNIST), str(tmp_path / "fm"), shard_rows=20_000)
    assert (manifest.splits["train"].rows, manifest.splits["val"].rows) == (60_000, 10_000)
    assert len(manifest.splits["train"].shards) == 3
    assert manifest.class_names is not None and manifest.class_names[9] == "Ankle boot"
    assert manifest.mean[0] == pytest.approx(0.2860, abs=1e-3)  # the published Fashion-MNIST stats
    assert manifest.std[0] == pytest.approx(0.3530, abs=1e-3)
    images, labels = read_split(str(tmp_path / "fm"), "val")
    assert images.shape == (10_000, 28, 28, 1)
    assert labels is not None and np.bincount(labels).tolist() == [1000] * 10


def test_workers_reading_their_own_shares_split_the_rows_disjointly_and_evenly(tmp_path):
    """Catches a split that drops or repeats rows across shard boundaries (each worker reads every N-th
    row of the shards in order; shards of 5, 3 and 4 rows do not divide by the 3 workers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysl.data.read.stream import ParquetBatches

    uris, start = [], 0
    for number, rows in enumerate((5, 3, 4)):
        path = tmp_path / f"train-{number}.parquet"
        pq.write_table(pa.table({"index": list(range(start, start + rows))}), path)
        uris.append(str(path))
        start += rows
    shares = []
    for rank in range(3):
        batches = ParquetBatches(uris, rank, 3).iter_batches(batch_size=2)
        shares.append([int(i) for batch in batches for i in batch["index"]])
    assert sorted(i for share in shares for i in share) == list(range(12))  # each row once
    assert shares[0] == [0, 3, 6, 9] and shares[2] == [2, 5, 8, 11]  # every 3rd row across the shards
    one = [int(i) for batch in ParquetBatches(uris).iter_batches(batch_size=5) for i in batch["index"]]
    assert one == list(range(12))
    with pytest.raises(ValueError, match="rank 3 is not one of 3 workers"):
        ParquetBatches(uris, 3, 3)


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cached"])
def test_every_worker_of_a_fraction_run_takes_the_runs_steps(digits_dir, cache) -> None:
    """Two workers reading their own shares of digits' train split at data.fraction 0.25: each yields the
    run's steps per epoch (computed from the whole subset), streamed and from the device cache. Catches: the
    split taken before the subset, a share a batch short of them, its worker ending its epoch a step early
    and the other waiting in DDP's gradient all-reduce for ever (a `raysl train --set data.fraction=0.25
    --set scale.num_workers=2` that hung with no line). The seed is one where a share split first is short,
    so the test can fail."""
    import torch

    from raysl.data.read.shards import load_manifest, shard_uris
    from raysl.data.read.stream import ParquetBatches, TrainBatches
    from raysl.data.read.subset import keep_mask, train_rows

    manifest, uris, fraction, local_batch = load_manifest(digits_dir), shard_uris(digits_dir, "train"), 0.25, 8

    def share(rank: int, seed: int) -> int:
        index = np.concatenate([pq.read_table(u, columns=["index"]).column("index").to_numpy() for u in uris])
        return int(keep_mask(index[rank::2], fraction, seed).sum())

    seed = next(s for s in range(50) if min(share(0, s), share(1, s)) <
                train_rows(digits_dir, manifest, fraction, s) // (2 * local_batch) * local_batch)
    steps = train_rows(digits_dir, manifest, fraction, seed) // (2 * local_batch)
    for rank in (0, 1):
        batches = TrainBatches(ParquetBatches(uris, rank, 2, fraction, seed), manifest, local_batch, torch.device("cpu"), cache=cache,
                               max_cached_bytes=1 << 30, seed=seed, rank=rank)
        for epoch in (1, 2):
            sizes = [idx.shape[0] for _, idx in batches.epoch(epoch, steps)]
            assert sizes == [local_batch] * steps, (rank, epoch, share(rank, seed), len(sizes), steps)
        assert batches.resident == cache


def test_every_in_process_reader_of_a_run_trains_on_its_fraction_subset_only(digits_dir) -> None:
    """RunData is what every runner reads a run's train rows through. At data.fraction 0.25 the rows that a
    one-worker trial (TuneIO), a run without Ray (LocalIO) and a worker reading its own share (each of 2) get are
    exactly the seeded subset: as many as RunData.train_rows() counts (the steps per epoch are computed from
    it), each once, each kept by the subset's mask. Catches a reader that skips the subset (it trained on the
    whole split, 4x the rows the steps and FLOPs were counted for) since TrainBatches stopped filtering again."""
    from raysl.data.read.dataset import RunData
    from raysl.data.read.subset import keep_mask
    from raysl.loop_io import LocalIO
    from raysl.run_config import RunConfig

    cfg = RunConfig.model_validate({"data": {"path": digits_dir, "fraction": 0.25}, "seed": 3})
    data = RunData.load(cfg, digits_dir)

    def indices(reader) -> list[int]:
        return [int(i) for batch in reader.iter_batches(batch_size=64) for i in batch["index"]]

    everything = indices(RunData.load(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"fraction": 1.0})}), digits_dir).worker_reader())
    kept = indices(LocalIO().train_shard(data))
    assert len(everything) == data.manifest.splits["train"]["rows"]
    assert len(kept) == data.train_rows() and 0.15 < len(kept) / len(everything) < 0.35  # ~0.25 of 1,438
    assert len(set(kept)) == len(kept) and keep_mask(kept, 0.25, 3).all()
    assert set(kept) == {i for i in everything if keep_mask([i], 0.25, 3)[0]}
    shares = [indices(data.worker_reader(rank, 2)) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == sorted(kept)
