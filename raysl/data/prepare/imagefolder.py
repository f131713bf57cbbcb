"""``raysl data prepare imagefolder``: a folder of photographs -> ``encoded`` Parquet shards.

Each image keeps its original encoded bytes (JPEG byte for byte, other
formats as PNG; ``max_side`` downsizes the big ones): what a row stores and
the shard columns are in :mod:`raysl.data.prepare.imagefolder_shard`, which file goes
into which shard in :mod:`raysl.data.prepare.imagefolder_files`.

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
written last, then ``.prepare/`` is removed (:mod:`raysl.data.prepare.imagefolder_journal`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import pyarrow.parquet as pq

from raysl import storage
from raysl.console import Renderer, format_duration, stream_isatty
from raysl.data.prepare.imagefolder_files import Job, Listing, list_images, make_job, path_key, plan_shards
from raysl.data.prepare.imagefolder_journal import JOURNAL, Journal
from raysl.data.prepare.imagefolder_shard import build_shard, init_worker, local_shard, ray_shard, read_file
from raysl.data.manifest import Manifest, ShardInfo, SkippedFile, SplitInfo
from raysl.data.prepare.layout import existing_dir, refuse_existing, write_manifest
from raysl.errors import ConfigError, DataError

DEFAULT_SHARD_ROWS = 1_000  # ~100 MB of ImageNet-sized JPEGs per shard
DEFAULT_QUALITY = 90


def default_workers() -> int:
    counter = getattr(os, "process_cpu_count", None) or os.cpu_count
    return max(1, counter() or 1)


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
    plan = plan_shards(listing, val_fraction, seed, shard_rows)

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
    journal = Journal(loc, out, options)
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


def _undo_prepare(loc: storage.Location, written: set[str], journal: Journal, journal_existed: bool,
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
    listing: Listing,
    plan: list[tuple[str, int, np.ndarray]],
    entries: dict[str, dict[str, Any]],
    journal: Journal,
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
            make_job(listing, split, number, rows, shard_rows)
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
    jobs: Iterator[Job],
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
        workers, mp_context=context, initializer=init_worker, initargs=(counter,)
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
                pending.add(executor.submit(local_shard, job, source, out, max_side, quality))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _chain_none(jobs: Iterator[Job]) -> Iterator[Job | None]:
    """The jobs, then one None that means: drain what is still running."""
    yield from jobs
    yield None


def _run_on_ray(
    jobs: Iterator[Job],
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
    remote = ray.remote(num_cpus=1)(ray_shard)
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
    listing: Listing,
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
        key=lambda s: path_key(s.file),
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

