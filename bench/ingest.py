"""Real-size JPEG ingest per CPU core: raysl's CPU path vs torchvision ImageFolder + transforms.v2.

Both sides turn the same JPEG files into two normalised float32 views per
image (224 px) on the same number of cores, in this one command; one image is
counted per view produced on both sides.

- **raysl** (what a ``data.decode: cpu`` run does up to the model's input):
  ``raysl.data.read.dataset.RunData.ray_dataset`` (Ray Data ``read_parquet`` ->
  ``map_batches(DecodeCrops)``: each JPEG decoded once, at a reduced DCT scale
  when the crops allow, every view's RandomResizedCrop cut as a uint8 224 px
  crop, as Ray tasks of one CPU each), then the worker's end as ``raysl
  train`` runs it (``TrainBatches`` + ``CropInput``: batches of 256, uint8
  [B, C, 224, 224] per view) and ``augment_precropped`` (flip, colour jitter,
  grayscale, blur in batches on the "device", here the CPU, then normalise).
  Ray is started by ``raysl.launch.init_ray(num_cpus=cores)`` (its own
  ``RAY_TMPDIR``), torch threads = cores.
- **torchvision**: ``torchvision.datasets.ImageFolder`` (PIL loader) with a
  per-sample ``transforms.v2`` pipeline called twice per image, in a
  ``DataLoader`` with ``num_workers = cores``, batch 256: what lightly /
  solo-learn users run.

The recipe, identical on both sides (SimCLR's ImageNet recipe, Chen et al.
2020, appendix A): RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3),
bilinear antialiased); horizontal flip p=0.5; ColorJitter(0.4, 0.4, 0.4, 0.1)
with p=0.8; grayscale p=0.2; GaussianBlur with p=0.5 (``--blur-p``), kernel
23 (10% of 224, odd), sigma ~ U(0.1, 2.0); float32, normalised with the
manifest's mean/std. Order on both sides: crop, flip, jitter, grayscale,
blur, normalise.

Data: a folder of ``--folder-images`` (default 5,000) JPEGs made by
``bench/make_imagefolder.py`` (or ``--folder``), prepared with ``raysl data
prepare imagefolder`` twice: original JPEGs, and ``--max-side 256``. For the
second figure the torchvision side reads a folder holding exactly the
downsized JPEG bytes of those shards (written once from them), so both sides
always decode the same bytes. raysl streams the train split (80%) in shard
order; torchvision samples the whole folder at random.

Cores: ``--cores N`` pins this process to N CPUs before anything starts
(every process either side starts inherits it), gives Ray ``num_cpus=N``,
the DataLoader N workers and torch N threads (``--threads`` overrides the
last for the raysl side's batch ops). Per core = images/s / N.

Timing: a trial is one pass over ``--images`` distinct images (whole batches;
the shards are prepared with ``--shard-rows`` = ``--batch`` and a raysl trial
reads exactly the shards it consumes); the first ``cores`` batches are
warm-up. Trials of the two sides
alternate (``--trials`` each) and the medians are compared. The headline
images/s is over the whole pass (start-up included); the rate after the
warm-up batches is printed too, but it can flatter raysl (Ray Data decodes
batches ahead while the driver waits for its first one, and the window then
drains them). Images per
CPU-second are over the whole pass (start-up included): utime + stime of every
process involved, read from /proc (raysl: this process and all its
descendants, i.e. the whole local Ray cluster, GCS, raylet, dashboard and Ray
Data workers included; torchvision: this process and its DataLoader workers).

    python bench/ingest.py                              # quick check (~4 min on 2 cores, prepare included)
    python bench/ingest.py --images 3840 --trials 3     # the recorded figure (~10 min on 2 cores)
    python bench/ingest.py --cores 1 --images 3840 --trials 3   # both sides pinned to one core
    python bench/ingest.py --folder DIR --work DIR --blur-p 0.5 --variants original,256

Prints one result line per variant with ``ratio=X.XXx`` and one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZE = 224
SEED = 0


# --------------------------------------------------------------------------- CPU time from /proc


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime seconds) of a live process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> dict[int, float]:
    """{pid: cpu seconds} for ``root`` and every live descendant."""
    parents: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                parents[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in parents:
            out[pid] = parents[pid][1]
            todo.extend(children.get(pid, []))
    return out


def pids_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        stat = _proc_stat(pid)
        if stat is not None:
            out[pid] = stat[1]
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the end (new ones from 0)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


# --------------------------------------------------------------------------- data


def make_folder(folder: Path, images: int, classes: int) -> None:
    script = REPO / "bench" / "make_imagefolder.py"
    if not script.exists():
        sys.exit(f"{script} is missing: pass --folder DIR (a folder of JPEGs, one sub-folder per class)")
    cmd = [sys.executable, str(script), "--out", str(folder), "--images", str(images),
           "--classes", str(classes), "--seed", str(SEED)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prepare(folder: Path, out: Path, args, max_side: int | None) -> None:
    """``raysl data prepare imagefolder`` (the CLI, in a subprocess), unless ``out`` already holds a manifest.

    ``--shard-rows`` is the batch size, so a trial can read exactly the batches it times (:func:`trial_plan`).
    """
    if (out / "manifest.json").exists():
        return
    cmd = [sys.executable, "-m", "raysl.cli", "data", "prepare", "imagefolder", str(folder), "--out", str(out),
           "--workers", str(args.cores), "--shard-rows", str(args.batch)]
    if max_side:
        cmd += ["--max-side", str(max_side)]
    print("$", " ".join(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local process pool, not Ray tasks
    subprocess.run(cmd, check=True, env=env)


def folder_from_shards(shards: Path, folder: Path) -> None:
    """Write every row's stored bytes (all splits) as ``folder/class_<label>/<index>.jpg`` for ImageFolder."""
    if (folder / ".complete").exists():
        return
    import pyarrow.parquet as pq

    from raysl.data.read.shards import load_manifest, shard_uris

    manifest = load_manifest(str(shards))
    for split in manifest.splits:
        for uri in shard_uris(str(shards), split, manifest):
            table = pq.read_table(uri, columns=["image", "label", "index", "orientation"])
            for data, label, index, orientation in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                if orientation not in (None, 1):
                    print(f"note: row {index} has EXIF orientation {orientation}; PIL's loader ignores it")
                target = folder / f"class_{label if label is not None else 0:03d}" / f"{index:07d}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    (folder / ".complete").write_text("")


# --------------------------------------------------------------------------- the two sides


def trial_plan(manifest, args) -> tuple[int, int]:
    """(warm-up batches, timed batches) of one trial: the whole prepared shards that ``--images`` covers.

    Shards hold one batch each (prepared with ``--shard-rows`` = ``--batch``),
    so a trial reads exactly the rows it consumes: nothing is decoded ahead
    and left over, which would charge the raysl side CPU time for images it
    never counts. The warm-up is ``cores`` batches (DataLoader workers build
    whole batches in parallel, so batches arrive ``cores`` at a time).
    """
    full = [s for s in manifest.splits["train"].shards if s.rows == args.batch]
    total = min(len(full), max(1, args.images // args.batch))
    warm = min(args.cores, total - 1)
    if total - warm < 1:
        sys.exit(f"the train split has {len(full)} whole batches of {args.batch}: use more --folder-images")
    return warm, total - warm


def trial_manifest(manifest, batches: int):
    """The manifest restricted to the first ``batches`` train shards (one batch each)."""
    import dataclasses

    from raysl.data.manifest import SplitInfo

    shards = tuple(manifest.splits["train"].shards[:batches])
    train = SplitInfo(rows=sum(s.rows for s in shards), shards=shards)
    return dataclasses.replace(manifest, splits={**manifest.splits, "train": train})


def run_config(shards: Path, blur_p: float):
    from raysl.run_config import RunConfig

    view = {"blur_p": blur_p}  # every other knob: ViewAugment's SimCLR defaults
    return RunConfig.model_validate({
        "method": {"name": "simclr"},
        "data": {"source": "imagefolder", "path": str(shards), "crop_size": SIZE, "decode": "cpu",
                 "augment": [view, view]},
        "scale": {"use_gpu": False},
    })


def _rates(count_timed: int, count_all: int, t0: float, t_warm: float, t_end: float, cpu: float) -> dict:
    return {
        "rate": count_timed / (t_end - t_warm),  # steady state, after the warm-up batches
        "rate_pass": count_all / (t_end - t0),  # the whole pass, start-up included
        "per_cpu_s": count_all / cpu if cpu > 0 else float("nan"),  # every process, the whole pass
    }


def bench_raysl(shards: Path, args) -> dict:
    """One trial: a fresh Ray Dataset over ``warm + timed`` batches through the whole CPU path."""
    import ray
    import torch

    from raysl.data.augment import augment_precropped
    from raysl.data.read.dataset import RunData, run_views
    from raysl.data.read.shards import load_manifest
    from raysl.data.read.stream import TrainBatches

    cfg = run_config(shards, args.blur_p)
    manifest = load_manifest(str(shards))
    warm, timed = trial_plan(manifest, args)
    manifest = trial_manifest(manifest, warm + timed)
    views = run_views(cfg)
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(SEED)
    before, t0 = tree_cpu(os.getpid()), time.perf_counter()
    data = RunData.load(cfg, str(shards), manifest)
    batches = TrainBatches(data.ray_dataset(), manifest, args.batch, device, cache=False, max_cached_bytes=0,
                           seed=SEED, rank=0, crop_input=data.crop_input(views, device))
    stream = batches.epoch(0, warm + timed)

    def step() -> int:
        crops, _ = next(stream)
        out = augment_precropped(crops, views, mean=manifest.mean, std=manifest.std, generator=gen)
        return sum(v.shape[0] for v in out)

    warm_count = sum(step() for _ in range(warm))
    t_warm = time.perf_counter()
    count = sum(step() for _ in range(timed))
    t_end = time.perf_counter()
    cpu = cpu_delta(before, tree_cpu(os.getpid()))
    if batches.crop_input.source != "ray_data":
        sys.exit(f"expected crops cut by Ray Data, the worker saw {batches.crop_input.source!r}")
    stream.close()
    del stream, batches, data
    # let any Ray Data task still in flight finish before the other side's trial starts
    deadline = time.time() + 30
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < args.cores:
        time.sleep(0.2)
    return _rates(count, warm_count + count, t0, t_warm, t_end, cpu)


class TwoViews:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def torchvision_transform(mean, std, blur_p: float):
    import torch
    from torchvision.transforms import v2

    from raysl.config import ViewAugment
    from raysl.data.augment_photometric import blur_kernel_size

    view = ViewAugment(blur_p=blur_p)  # the same recipe the raysl side uses
    return v2.Compose([
        v2.RandomResizedCrop(SIZE, scale=view.crop_scale, ratio=view.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(p=view.hflip_p),
        v2.RandomApply([v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)], p=view.jitter_p),
        v2.RandomGrayscale(p=view.grayscale_p),
        v2.RandomApply([v2.GaussianBlur(blur_kernel_size(SIZE), sigma=view.blur_sigma)], p=view.blur_p),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def bench_torchvision(folder: Path, shards: Path, mean, std, args) -> dict:
    """One trial: fresh DataLoader workers over ``warm + timed`` batches of distinct random images."""
    import torch
    from torchvision.datasets import ImageFolder

    from raysl.data.read.shards import load_manifest

    warm, timed = trial_plan(load_manifest(str(shards)), args)
    dataset = ImageFolder(str(folder), transform=TwoViews(torchvision_transform(mean, std, args.blur_p)))
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=(warm + timed) * args.batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=args.cores,
                                         drop_last=True)
    before, t0 = pids_cpu([os.getpid()]), time.perf_counter()
    it = iter(loader)
    pids = [os.getpid(), *(w.pid for w in getattr(it, "_workers", []))]  # workers are new: their time starts at 0

    def step() -> int:
        (v1, v2), _ = next(it)
        return v1.shape[0] + v2.shape[0]

    warm_count = sum(step() for _ in range(warm))
    t_warm = time.perf_counter()
    count = sum(step() for _ in range(timed))
    t_end = time.perf_counter()
    cpu = cpu_delta(before, pids_cpu(pids))  # read while the workers are alive
    del it  # stop the workers before the other side runs
    return _rates(count, warm_count + count, t0, t_warm, t_end, cpu)


# --------------------------------------------------------------------------- main


def _median(trials: list[dict], key: str) -> float:
    return statistics.median(t[key] for t in trials)


def main() -> None:
    from raysl.launch import reexec_with_allocator_env

    reexec_with_allocator_env()  # the allocator settings raysl gives its Ray processes, for both sides
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="a folder of JPEGs (default: made in --work)")
    parser.add_argument("--folder-images", type=int, default=5000, help="images bench/make_imagefolder.py makes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/raysl-bench-ingest"),
                        help="the folder, shards and downsized folder live here (kept and reused)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2,
                        help="CPUs for both sides: Ray num_cpus, DataLoader workers, torch threads")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the raysl side's batch ops (default: --cores)")
    parser.add_argument("--batch", type=int, default=256, help="images per batch (and rows per prepared shard)")
    parser.add_argument("--images", type=int, default=1536,
                        help="source images per trial (2 views each), warm-up batches included; whole batches")
    parser.add_argument("--trials", type=int, default=1, help="trials per side, alternating; medians compared")
    parser.add_argument("--blur-p", type=float, default=0.5, help="GaussianBlur probability (SimCLR ImageNet: 0.5)")
    parser.add_argument("--variants", default="original,256", help="comma-separated: original and/or a --max-side")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TMPDIR", str(args.work / "ray"))

    available = sorted(os.sched_getaffinity(0))
    if args.cores < len(available):
        # every process either side starts (Ray's included) inherits this: both sides get the same cores
        os.sched_setaffinity(0, available[: args.cores])
    elif args.cores > len(available):
        sys.exit(f"--cores {args.cores}: this process may use only {len(available)} CPUs")
    args.threads = args.threads or args.cores

    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.folder or args.work / "folder"
    if args.folder is None and not folder.exists():
        make_folder(folder, args.folder_images, args.classes)
    variants = []
    for name in args.variants.split(","):
        max_side = None if name == "original" else int(name)
        shards = args.work / f"shards-{name}-b{args.batch}"
        prepare(folder, shards, args, max_side)
        tv_folder = folder
        if max_side is not None:
            tv_folder = args.work / f"folder-max{max_side}"
            folder_from_shards(shards, tv_folder)
        variants.append((name, shards, tv_folder))

    from raysl.data.read.shards import load_manifest
    from raysl.launch import init_ray

    load_before = os.getloadavg()
    init_ray(num_cpus=args.cores)
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    for name, shards, tv_folder in variants:
        manifest = load_manifest(str(shards))
        warm, timed = trial_plan(manifest, args)
        load_start = os.getloadavg()[0]
        raysl_trials, tv_trials = [], []
        for _ in range(args.trials):  # alternating, so background load hits both sides alike
            raysl_trials.append(bench_raysl(shards, args))
            tv_trials.append(bench_torchvision(tv_folder, shards, manifest.mean, manifest.std, args))
        load_end = os.getloadavg()[0]
        # the headline is the whole pass, start-up included: the steady window can flatter the raysl side,
        # whose Ray Data tasks decode batches ahead while the driver waits for its first one
        r_rate, t_rate = _median(raysl_trials, "rate_pass"), _median(tv_trials, "rate_pass")
        r_steady, t_steady = _median(raysl_trials, "rate"), _median(tv_trials, "rate")
        r_cpu, t_cpu = _median(raysl_trials, "per_cpu_s"), _median(tv_trials, "per_cpu_s")
        ratio, cpu_ratio = r_rate / t_rate, r_cpu / t_cpu
        print(
            f"jpegs={name} (median {manifest.height}x{manifest.width}) cores={args.cores} threads={args.threads} "
            f"batch={args.batch} "
            f"images={(warm + timed) * args.batch} ({warm} warm-up + {timed} timed batches) x 2 views "
            f"blur_p={args.blur_p} load={load_start:.1f}->{load_end:.1f}: "
            f"raysl Ray Data + batch ops {r_rate:,.0f} img/s = {r_rate / args.cores:,.0f} per core, "
            f"torchvision ImageFolder + v2 DataLoader {t_rate:,.0f} img/s = {t_rate / args.cores:,.0f} per core "
            f"(whole pass, medians of {args.trials}), ratio={ratio:.2f}x; after warm-up {r_steady:,.0f} vs "
            f"{t_steady:,.0f} img/s; "
            f"per CPU-second {r_cpu:,.0f} vs {t_cpu:,.0f} img/cpu-s (cpu_ratio={cpu_ratio:.2f}x)",
            flush=True,
        )
        results.append({
            "variant": name, "median_size": [manifest.height, manifest.width],
            "images_per_trial": (warm + timed) * args.batch, "warmup_batches": warm, "timed_batches": timed,
            "raysl_images_per_s": round(r_rate, 1), "torchvision_images_per_s": round(t_rate, 1),
            "raysl_images_per_core_s": round(r_rate / args.cores, 1),
            "torchvision_images_per_core_s": round(t_rate / args.cores, 1),
            "ratio": round(ratio, 3),
            "raysl_steady_images_per_s": round(r_steady, 1), "torchvision_steady_images_per_s": round(t_steady, 1),
            "raysl_images_per_cpu_s": round(r_cpu, 1), "torchvision_images_per_cpu_s": round(t_cpu, 1),
            "cpu_ratio": round(cpu_ratio, 3),
            "raysl_trials": [{k: round(v, 1) for k, v in t.items()} for t in raysl_trials],
            "torchvision_trials": [{k: round(v, 1) for k, v in t.items()} for t in tv_trials],
            "loadavg": [round(load_start, 2), round(load_end, 2)],
        })
    ray.shutdown()
    import torchvision

    print(json.dumps({
        "bench": "ingest", "size": SIZE, "views": 2, "cores": args.cores, "threads": args.threads,
        "batch": args.batch,
        "trials": args.trials, "blur_p": args.blur_p, "folder": str(folder), "results": results,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "torchvision": torchvision.__version__, "ray": ray.__version__,
        "machine": platform.machine(), "date": datetime.date.today().isoformat(),
    }))


if __name__ == "__main__":
    main()
