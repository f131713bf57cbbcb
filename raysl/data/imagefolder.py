"""``raysl data prepare imagefolder``: a folder of photographs -> ``encoded`` Parquet shards.

Each image keeps its original encoded bytes: a JPEG is stored byte for byte
(no generation loss, no resize, and the training side can decode it at a
reduced DCT scale or with nvJPEG); any other format PIL opens (PNG, WebP,
BMP, GIF, TIFF) is stored as PNG (a PNG source as it is, when it is 8-bit).
``max_side`` downsizes, once and antialiased (Lanczos), only the images whose
longer side exceeds it, re-encoding them as JPEG at ``quality`` if they were
JPEGs and as PNG otherwise (FFCV's ``max_resolution``).

Shard columns (the contract the training reader is written against):

- ``image`` binary: the stored bytes (JPEG or PNG).
- ``label`` int64: the class (sub-folder) index, null for a flat folder.
- ``index`` int64: the row's position in the canonical sorted file order.
- ``height``, ``width`` int32: the image as displayed, i.e. after its EXIF
  orientation is applied.
- ``orientation`` int8: the EXIF orientation (1..8) of the stored bytes, 1
  when there is none; readers apply it after decoding
  (``raysl.data.codec.decode_image`` does). Re-encoded images have it applied
  already and store 1.

The manifest has ``encoding: "encoded"``; its ``height``/``width`` are the
median stored size over the train split (information only: rows differ; its
``size_range`` gives the smallest and largest height and width),
``channels`` is 1 only when every image is greyscale, and ``mean``/``std``
come from a bounded sample: the first 2,000 train rows in shuffled order (a
uniform random sample), each downsized to at most 64 px on its longer side.
Files that cannot be read (empty, truncated, not an image) are listed in
``skipped`` with the reason; with ``strict`` the first one is an error, and
``OUT`` is left as it was found (no shards without a manifest).

Parallel and resumable: the sorted file list is shuffled with ``seed``,
split and cut into shards up front, so every shard's content is fixed before
any image is read. Shards are built by a local process pool (``workers``), or
by Ray tasks when ``RAY_ADDRESS`` names a cluster (the driver reads the files
and writes the shards, so only the driver needs the source folder and
``out``). Each shard is written under a temporary name and renamed, then a
sidecar ``OUT/.prepare/<shard>.json`` records its checksum, skipped files and
statistics. A re-run with the same options verifies and keeps the finished
shards and builds the rest, giving the same bytes as an uninterrupted run;
different options or a changed file list are refused. ``manifest.json`` is
written last, then ``.prepare/`` is removed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysl import jsonio, storage
from raysl.console import Renderer, format_duration, stream_isatty
from raysl.data.codec import GRAYSCALE_MODES, EXIF_ORIENTATION_TAG, to_pixels, transposes_axes
from raysl.data.manifest import Manifest, ShardInfo, SkippedFile, SplitInfo
from raysl.data.prepared import existing_dir, refuse_existing, remove_stale_shards, write_manifest
from raysl.errors import ConfigError, DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_SHARD_ROWS = 1_000  # ~100 MB of ImageNet-sized JPEGs per shard
DEFAULT_QUALITY = 90
STATS_SAMPLE = 2_000
STATS_SIDE = 64
JOURNAL = ".prepare"
_PNG_KEPT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("index", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("orientation", pa.int8()),
    ]
)


def default_workers() -> int:
    counter = getattr(os, "process_cpu_count", None) or os.cpu_count
    return max(1, counter() or 1)


# --------------------------------------------------------------------------- listing and planning


@dataclass(frozen=True)
class _Listing:
    files: list[str]  # relative POSIX paths, canonical order
    labels: np.ndarray | None  # int64 per file; None for a flat folder
    class_names: tuple[str, ...] | None


def _walk_images(folder: str, prefix: str) -> list[str]:
    """Relative paths of image files under ``folder`` (recursively), hidden entries skipped."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                found.extend(_walk_images(entry.path, f"{prefix}{entry.name}/"))
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                found.append(prefix + entry.name)
    return found


def _path_key(relative: str) -> tuple[str, ...]:
    return tuple(relative.split("/"))


def list_images(folder: Path) -> _Listing:
    """Class sub-folders (sorted by name) of images, or a flat folder of images (unlabeled)."""
    classes: dict[str, list[str]] = {}
    loose: list[str] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                files = _walk_images(entry.path, f"{entry.name}/")
                if files:
                    classes[entry.name] = sorted(files, key=_path_key)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                loose.append(entry.name)
    if classes and loose:
        raise DataError(
            f"{folder} has both images and class sub-folders; move the loose images into a class folder"
        )
    suffixes = " ".join(sorted(IMAGE_SUFFIXES))
    if not classes and not loose:
        raise DataError(f"no images ({suffixes}) in {folder}; point PATH at a folder of images")
    if not classes:
        return _Listing(sorted(loose, key=_path_key), None, None)
    files = [f for group in classes.values() for f in group]
    labels = np.concatenate([np.full(len(g), c, np.int64) for c, g in enumerate(classes.values())])
    return _Listing(files, labels, tuple(classes))


@dataclass(frozen=True)
class _Job:
    """One shard to build: which files, in which order, and how many of its first rows feed the stats."""

    name: str
    split: str
    files: tuple[str, ...]
    labels: tuple[int, ...] | None
    indices: tuple[int, ...]
    stats_rows: int


def _plan(listing: _Listing, val_fraction: float, seed: int, shard_rows: int) -> list[tuple[str, int, np.ndarray]]:
    """(split, shard number, canonical file positions) for every shard, fixed before any file is read."""
    count = len(listing.files)
    order = np.random.default_rng(seed).permutation(count).astype(np.int64)
    val_rows = int(round(count * val_fraction))
    if val_rows >= count:
        raise ConfigError(f"--val-fraction {val_fraction} leaves no training rows out of {count}")
    plan = []
    for split, rows in (("train", order[val_rows:]), ("val", order[:val_rows])):
        for number, start in enumerate(range(0, len(rows), shard_rows)):
            plan.append((split, number, rows[start : start + shard_rows]))
    return plan


def _job(listing: _Listing, split: str, number: int, positions: np.ndarray, shard_rows: int) -> _Job:
    stats_rows = 0
    if split == "train":
        stats_rows = int(np.clip(STATS_SAMPLE - number * shard_rows, 0, len(positions)))
    return _Job(
        name=f"{split}-{number:05d}.parquet",
        split=split,
        files=tuple(listing.files[p] for p in positions),
        labels=None if listing.labels is None else tuple(int(listing.labels[p]) for p in positions),
        indices=tuple(int(p) for p in positions),
        stats_rows=stats_rows,
    )


# --------------------------------------------------------------------------- one image, one shard (workers)


@dataclass
class _Stored:
    data: bytes
    height: int
    width: int
    orientation: int
    gray: bool
    sums: np.ndarray | None  # [sum R, G, B, sum R^2, G^2, B^2, pixels] of the <= 64 px thumbnail


def _one_line(err: BaseException) -> str:
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(str(err).split()))  # reasons must not vary run to run
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_file(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        return f"cannot read the file ({_one_line(err)})"


def store_image(data: bytes, max_side: int | None, quality: int, with_stats: bool) -> _Stored | str:
    """Check that ``data`` decodes completely and choose the bytes to store; a str says why not."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG must fail here, not decode grey
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            source_format = image.format
            orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            if orientation not in range(1, 9):
                orientation = 1
            image.load()  # decode every pixel: truncated or corrupt data raises here
            gray = image.mode in GRAYSCALE_MODES
            raw_w, raw_h = image.size
            height, width = (raw_w, raw_h) if transposes_axes(orientation) else (raw_h, raw_w)
            sums = _thumbnail_sums(image) if with_stats else None
            resize = max_side is not None and max(height, width) > max_side
            if source_format == "JPEG" and not resize:
                return _Stored(data, height, width, orientation, gray, sums)
            if source_format == "PNG" and not resize and image.mode in _PNG_KEPT_MODES:
                return _Stored(data, height, width, orientation, gray, sums)
            upright = ImageOps.exif_transpose(image) if orientation != 1 else image
            pixels = to_pixels(upright, 1 if gray else 3)
            flat = Image.fromarray(pixels[..., 0] if gray else pixels)
            if resize:
                assert max_side is not None
                if width >= height:
                    size = (max_side, max(1, round(height * max_side / width)))
                else:
                    size = (max(1, round(width * max_side / height)), max_side)
                flat = flat.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            buffer = io.BytesIO()
            if source_format == "JPEG":
                flat.save(buffer, format="JPEG", quality=quality)
            else:
                flat.save(buffer, format="PNG")
            return _Stored(buffer.getvalue(), flat.height, flat.width, 1, gray, sums)
    except UnidentifiedImageError:
        return "not an image PIL can read (unknown format)"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return _one_line(err)


def _thumbnail_sums(image: Any) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(to_pixels(image, 3))
    scale = STATS_SIDE / max(small.size)
    if scale < 1:
        size = (max(1, round(small.width * scale)), max(1, round(small.height * scale)))
        small = small.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    pixels = np.asarray(small, np.float64).reshape(-1, 3) / 255.0
    return np.concatenate([pixels.sum(0), np.square(pixels).sum(0), [len(pixels)]])


def build_shard(
    job: _Job,
    blobs: Callable[[str], bytes | str],
    max_side: int | None,
    quality: int,
    tick: Callable[[], None] = lambda: None,
) -> tuple[bytes, dict[str, Any]]:
    """The shard's Parquet bytes and its journal entry (rows, skipped files, greyscale, stats sums)."""
    columns: dict[str, list[Any]] = {name: [] for name in _SCHEMA.names}
    skipped: list[list[str]] = []
    gray = True
    sums = np.zeros(7)
    for row, relative in enumerate(job.files):
        blob = blobs(relative)
        stored = blob if isinstance(blob, str) else store_image(blob, max_side, quality, row < job.stats_rows)
        tick()
        if isinstance(stored, str):
            skipped.append([relative, stored])
            continue
        gray = gray and stored.gray
        if stored.sums is not None:
            sums += stored.sums
        columns["image"].append(stored.data)
        columns["label"].append(None if job.labels is None else job.labels[row])
        columns["index"].append(job.indices[row])
        columns["height"].append(stored.height)
        columns["width"].append(stored.width)
        columns["orientation"].append(stored.orientation)
    table = pa.Table.from_pydict(columns, schema=_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression={"image": "none", "label": "zstd", "index": "zstd", "height": "zstd", "width": "zstd",
                     "orientation": "zstd"},
        use_dictionary=["label", "orientation"],
        write_statistics=["label", "index", "height", "width", "orientation"],
    )
    payload = sink.getvalue().to_pybytes()
    entry = {
        "file": job.name,
        "rows": table.num_rows,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "skipped": skipped,
        "gray": gray,
        "sums": [float(v) for v in sums],
    }
    return payload, entry


# local process pool: each worker reads its files, builds and writes its shard

_COUNTER: Any = None


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter


def _tick() -> None:
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += 1


def _local_shard(job: _Job, source: str, out: str, max_side: int | None, quality: int) -> dict[str, Any]:
    payload, entry = build_shard(job, lambda rel: read_file(os.path.join(source, rel)), max_side, quality, _tick)
    storage.write_atomic(storage.join(out, job.name), payload)
    return entry


def _ray_shard(job: _Job, blobs: list[bytes | str], max_side: int | None, quality: int) -> tuple[bytes, dict]:
    by_name = dict(zip(job.files, blobs))
    return build_shard(job, by_name.__getitem__, max_side, quality)


# --------------------------------------------------------------------------- journal


class _Journal:
    """``OUT/.prepare/``: the options of this prepare and one sidecar per finished shard."""

    def __init__(self, loc: storage.Location, out: str, options: dict[str, Any]) -> None:
        self.loc, self.out = loc, out
        self.folder = loc.join(JOURNAL)
        location = self.folder.join("options.json")
        text = storage.read_bytes(location, missing_ok=True)
        if text is not None:
            try:
                previous = json.loads(text)
            except json.JSONDecodeError:
                previous = None
            if previous != options:
                changed = _changed_keys(previous, options)
                raise DataError(
                    f"{out} holds an interrupted prepare with other options or files ({changed}); "
                    "re-run with the same options, or pick another --out or delete it"
                )
            storage.remove_temporaries(loc)
        else:
            storage.make_dirs(self.folder)
            remove_stale_shards(loc)
            storage.write_atomic(location, jsonio.dumps(options, indent=1))

    def finished(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Sidecars whose shard is present with the recorded size and sha256 (the others are rebuilt)."""
        kept = {}
        for name in names:
            text = storage.read_bytes(self.folder.join(f"{name}.json"), missing_ok=True)
            if text is None:
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError:
                continue
            shard = self.loc.join(name)
            if storage.size(shard) != entry.get("bytes"):
                continue
            digest = hashlib.sha256()
            with storage.guard(shard, "reading it"), shard.fs.open_input_stream(shard.path) as stream:
                while chunk := stream.read(1 << 24):
                    digest.update(chunk)
            if digest.hexdigest() == entry.get("sha256"):
                kept[name] = entry
        return kept

    def record(self, entry: dict[str, Any]) -> None:
        storage.write_atomic(self.folder.join(f"{entry['file']}.json"), jsonio.dumps(entry, indent=1))

    def remove(self) -> None:
        storage.remove(self.folder)


def _changed_keys(previous: Any, options: dict[str, Any]) -> str:
    if not isinstance(previous, dict):
        return "unreadable journal"
    keys = sorted(k for k in set(previous) | set(options) if previous.get(k) != options.get(k))
    return ", ".join("source files" if k == "files_sha256" else k for k in keys)


# --------------------------------------------------------------------------- progress


class Progress:
    """Files done/total, files/s and ETA on stderr, drawn by :class:`raysl.console.Renderer`: one
    \\r-updated line on a terminal (every 0.5 s), else a plain line every ~10 s."""

    def __init__(self, total: int, stream: TextIO | None, already: int = 0) -> None:
        self.total, self.stream, self.already = total, stream, already
        self.start = time.monotonic()
        tty = bool(stream is not None and stream_isatty(stream))
        self.renderer = Renderer(tty, plain_every_s=10.0, tty_every_s=0.5)
        self.renderer.last_bar_at = self.start  # the first line comes one interval in, not at once

    def _write(self, text: str) -> None:
        if self.stream is not None and text:
            self.stream.write(text)
            self.stream.flush()

    def update(self, done: int, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        rate = max(done - self.already, 0) / max(now - self.start, 1e-9)
        eta = format_duration((self.total - done) / rate) if rate > 0 else "?"
        line = f"prepare: {done:,}/{self.total:,} files, {rate:,.0f} files/s, ETA {eta}"
        self._write(self.renderer.bar(line, now, final=force))

    def note(self, text: str) -> None:
        self._write(self.renderer.line(text))

    def clear(self) -> None:
        """Take the \\r line off the terminal (nothing when none is drawn)."""
        self._write(self.renderer.close())

    def finish(self, done: int) -> None:
        elapsed = time.monotonic() - self.start
        rate = max(done - self.already, 0) / max(elapsed, 1e-9)
        self.note(f"prepare: {done:,}/{self.total:,} files in {format_duration(elapsed)} ({rate:,.0f} files/s)")


# --------------------------------------------------------------------------- the prepare


def prepare_imagefolder(
    path: str,
    out: str,
    *,
    shard_rows: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_side: int | None = None,
    quality: int = DEFAULT_QUALITY,
    strict: bool = False,
    workers: int | None = None,
    progress: TextIO | None = None,
) -> Manifest:
    """Build (or finish building) the encoded shards of the image folder ``path`` in ``out``."""
    shard_rows = DEFAULT_SHARD_ROWS if shard_rows is None else shard_rows
    if max_side is not None and max_side < 1:
        raise ConfigError(f"--max-side must be at least 1, got {max_side}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    on_ray = os.environ.get("RAY_ADDRESS", "").strip() not in ("", "local") and not os.environ[
        "RAY_ADDRESS"
    ].startswith(("http://", "https://"))  # a dashboard address is for `ray job submit`, not for tasks
    folder = existing_dir(path, "imagefolder")
    loc = storage.resolve(out)
    refuse_existing(loc, out)
    listing = list_images(folder)
    plan = _plan(listing, val_fraction, seed, shard_rows)

    names = "\n".join(listing.files) + "\n" + ("" if listing.labels is None else listing.labels.tobytes().hex())
    options = {
        "source_path": os.path.abspath(path),
        "files": len(listing.files),
        "files_sha256": hashlib.sha256(names.encode()).hexdigest(),
        "shard_rows": shard_rows,
        "val_fraction": val_fraction,
        "seed": seed,
        "max_side": max_side,
        "quality": quality if max_side is not None else None,  # only downsized images are re-encoded
    }
    out_existed = storage.exists(loc)
    journal_existed = storage.exists(loc.join(JOURNAL, "options.json"))
    storage.make_dirs(loc)
    journal = _Journal(loc, out, options)
    shard_names = [f"{split}-{number:05d}.parquet" for split, number, _ in plan]
    entries = journal.finished(shard_names)
    kept = set(entries)  # _build adds each shard it finishes
    try:
        return _build(loc, path, folder, listing, plan, entries, journal, shard_rows, seed, val_fraction, max_side,
                      quality, strict, workers, on_ray, progress)
    except DataError:
        # --strict met an unreadable file, or no file could be read: the shards written so far make no
        # dataset (and a re-run without the file has another file list, which the journal refuses), so
        # --out is left as it was found; an interruption (Ctrl-C) or a storage error keeps them to resume
        _undo_prepare(loc, set(shard_names) - kept, journal, journal_existed, out_existed)
        raise


def _undo_prepare(loc: storage.Location, written: set[str], journal: _Journal, journal_existed: bool,
                  out_existed: bool) -> None:
    """Remove what this prepare added to ``loc``: its shards, their sidecars, its journal, the folder."""
    for name in sorted(written):
        storage.remove(loc.join(name))
        storage.remove(journal.folder.join(f"{name}.json"))
    storage.remove_temporaries(loc)
    if not journal_existed:
        journal.remove()
    if not out_existed and not storage.list_dir(loc):
        storage.remove(loc)


def _build(
    loc: storage.Location,
    path: str,
    folder: Path,
    listing: _Listing,
    plan: list[tuple[str, int, np.ndarray]],
    entries: dict[str, dict[str, Any]],
    journal: _Journal,
    shard_rows: int,
    seed: int,
    val_fraction: float,
    max_side: int | None,
    quality: int,
    strict: bool,
    workers: int | None,
    on_ray: bool,
    progress: TextIO | None,
) -> Manifest:
    """Build the shards ``entries`` lacks, then write the manifest and drop the journal."""
    out = loc.uri
    sizes = {f"{split}-{number:05d}.parquet": len(rows) for split, number, rows in plan}
    kept_files = sum(sizes[name] for name in entries)
    meter = Progress(len(listing.files), progress, already=kept_files)
    try:
        if entries:
            meter.note(f"prepare: resuming, kept {len(entries)} finished shards ({kept_files:,} files)")
        if strict:
            _raise_if_skipped(entries.values(), strict)

        def finished(entry: dict[str, Any]) -> None:
            journal.record(entry)
            entries[entry["file"]] = entry
            _raise_if_skipped([entry], strict)

        jobs = (
            _job(listing, split, number, rows, shard_rows)
            for split, number, rows in plan
            if f"{split}-{number:05d}.parquet" not in entries
        )
        if on_ray:
            _run_on_ray(jobs, str(folder), loc, max_side, quality, workers, finished, meter, kept_files)
            workers = 0
        else:
            workers = min(default_workers() if workers is None else workers, max(1, len(plan) - len(entries)))
        if workers == 1:
            done = [kept_files]

            def tick() -> None:
                done[0] += 1
                meter.update(done[0])

            for job in jobs:
                payload, entry = build_shard(
                    job, lambda rel: read_file(os.path.join(folder, rel)), max_side, quality, tick
                )
                storage.write_atomic(loc.join(job.name), payload)
                finished(entry)
        elif workers > 1:
            _run_in_pool(jobs, str(folder), out, max_side, quality, workers, finished, meter, kept_files)
    except BaseException:  # an error or an interruption: its line starts at the start of a line
        meter.clear()
        raise
    meter.finish(len(listing.files))

    manifest = _manifest(loc, path, listing, plan, entries, seed, val_fraction)
    write_manifest(loc, manifest)
    journal.remove()
    return manifest


def _raise_if_skipped(entries: Any, strict: bool) -> None:
    if not strict:
        return
    for entry in entries:
        for file, reason in entry["skipped"]:
            raise DataError(f"cannot read image {file} ({reason}); remove or fix it, or drop --strict to skip it")


def _run_in_pool(
    jobs: Iterator[_Job],
    source: str,
    out: str,
    max_side: int | None,
    quality: int,
    workers: int,
    finished: Callable[[dict[str, Any]], None],
    meter: Progress,
    kept_files: int,
) -> None:
    """A spawn-context process pool with at most 2 x workers shards in flight (bounded memory)."""
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(counter,)
    )
    pending: set[concurrent.futures.Future] = set()
    try:
        for job in _chain_none(jobs):
            while pending and (job is None or len(pending) >= 2 * workers):
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    finished(future.result())
                meter.update(kept_files + counter.value)
            if job is not None:
                pending.add(executor.submit(_local_shard, job, source, out, max_side, quality))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _chain_none(jobs: Iterator[_Job]) -> Iterator[_Job | None]:
    """The jobs, then one None that means: drain what is still running."""
    yield from jobs
    yield None


def _run_on_ray(
    jobs: Iterator[_Job],
    source: str,
    loc: storage.Location,
    max_side: int | None,
    quality: int,
    workers: int | None,
    finished: Callable[[dict[str, Any]], None],
    meter: Progress,
    kept_files: int,
) -> None:
    """Ray tasks on the cluster at RAY_ADDRESS: the driver reads files and writes shards, tasks decode and encode."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    in_flight = max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1)(_ray_shard)
    pending: dict[Any, int] = {}
    done_files = kept_files
    for job in _chain_none(jobs):
        while pending and (job is None or len(pending) >= in_flight):
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                payload, entry = ray.get(ref)
                storage.write_atomic(loc.join(entry["file"]), payload)
                finished(entry)
                done_files += pending.pop(ref)
            meter.update(done_files)
        if job is not None:
            blobs = [read_file(os.path.join(source, rel)) for rel in job.files]
            pending[remote.remote(job, blobs, max_side, quality)] = len(job.files)


def _manifest(
    loc: storage.Location,
    path: str,
    listing: _Listing,
    plan: list[tuple[str, int, np.ndarray]],
    entries: dict[str, dict[str, Any]],
    seed: int,
    val_fraction: float,
) -> Manifest:
    splits: dict[str, list[ShardInfo]] = {"train": [], "val": []}
    for split, number, _ in plan:
        entry = entries[f"{split}-{number:05d}.parquet"]
        splits[split].append(ShardInfo(entry["file"], entry["rows"], entry["bytes"], entry["sha256"]))
    train_rows = sum(s.rows for s in splits["train"])
    skipped = sorted(
        (SkippedFile(file, reason) for entry in entries.values() for file, reason in entry["skipped"]),
        key=lambda s: _path_key(s.file),
    )
    if train_rows == 0:
        raise DataError(
            f"none of the {len(listing.files)} images in {path} could be read "
            f"(e.g. {skipped[0].file}: {skipped[0].reason}); fix the files"
            if skipped
            else f"the train split of {path} is empty; lower --val-fraction"
        )
    heights, widths = [], []
    for shard in splits["train"]:
        with storage.open_input(loc.join(shard.file)) as file:
            table = pq.read_table(file, columns=["height", "width"])
        heights.append(table.column("height").to_numpy())
        widths.append(table.column("width").to_numpy())
    channels = 1 if all(entry["gray"] for entry in entries.values()) else 3
    sums = np.sum([entry["sums"] for entry in entries.values()], axis=0)
    if sums[6] == 0:  # every sampled file was unreadable: fall back to the midpoint
        mean, std = np.full(3, 0.5), np.full(3, 0.25)
    else:
        mean = sums[0:3] / sums[6]
        std = np.sqrt(np.maximum(sums[3:6] / sums[6] - mean**2, 0.0))
    heights, widths = np.concatenate(heights), np.concatenate(widths)
    return Manifest(
        source="imagefolder",
        source_path=os.path.abspath(path),
        height=int(round(float(np.median(heights)))),
        width=int(round(float(np.median(widths)))),
        channels=channels,
        encoding="encoded",
        class_names=listing.class_names,
        num_classes=0 if listing.class_names is None else len(listing.class_names),
        labeled=listing.labels is not None,
        mean=tuple(round(float(m), 6) for m in mean[:channels]),
        std=tuple(round(float(s), 6) for s in std[:channels]),
        seed=seed,
        val_fraction=val_fraction,
        split_from="shuffle",
        splits={name: SplitInfo(sum(s.rows for s in shards), tuple(shards)) for name, shards in splits.items()},
        skipped=tuple(skipped),
        # the median above is no image's size when they differ: the range says they do
        size_range={"height": (int(heights.min()), int(heights.max())),
                    "width": (int(widths.min()), int(widths.max()))},
    )

