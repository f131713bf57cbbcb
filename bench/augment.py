"""Batch augmentation on the device vs. a torchvision per-sample pipeline in a DataLoader.

Both sides produce the same two-view SimCLR recipe (RandomResizedCrop,
horizontal flip, ColorJitter with p=0.8, grayscale with p=0.2, normalise) from
the same uint8 images, in the same process; one image is counted per view
produced. The baseline is what lightly/solo-learn users run: torchvision
``transforms.v2`` on uint8 tensors in DataLoader workers.

    python bench/augment.py [--images N] [--size 32] [--batch 256] [--channels 3]
                            [--batches 30] [--repeats 3]

Trials of the two sides alternate (background load then hits both alike);
the medians are compared. Prints one result line with ``ratio=X.XXx`` and one
JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysl.config import ViewAugment  # noqa: E402
from raysl.data.augment import make_views  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def load_images(limit: int) -> tuple[np.ndarray, str]:
    """uint8 [N, H, W]: Fashion-MNIST if it is on disk, else sklearn digits upsampled to 32x32."""
    if FASHION_MNIST.exists():
        with gzip.open(FASHION_MNIST, "rb") as fh:
            raw = fh.read()
        magic, n, h, w = np.frombuffer(raw[:16], dtype=">u4")
        if magic != 2051:
            raise SystemExit(f"{FASHION_MNIST}: not an IDX image file (magic {magic})")
        images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(int(n), int(h), int(w))
        return images[:limit], f"fashion-mnist ({FASHION_MNIST}, {h}x{w})"
    from sklearn.datasets import load_digits

    digits = load_digits().images  # 8x8, values 0..16
    x = torch.from_numpy(digits).float().unsqueeze(1) * (255.0 / 16.0)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = x.clamp(0, 255).round().to(torch.uint8).squeeze(1).numpy()
    reps = -(-limit // len(images))
    return np.concatenate([images] * reps)[:limit], "sklearn digits (8x8 upsampled to 32x32)"


class TwoViewDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return self.transform(img), self.transform(img)


def torchvision_transform(size: int, mean: list[float], std: list[float]):
    from torchvision.transforms import v2

    view = ViewAugment()  # the same SimCLR defaults the batch side uses
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=view.crop_scale, ratio=view.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(p=view.hflip_p),
            v2.RandomApply(
                [v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)], p=view.jitter_p
            ),
            v2.RandomGrayscale(p=view.grayscale_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_torchvision(images: torch.Tensor, args, mean, std) -> tuple[float, float]:
    """One trial: fresh DataLoader workers, ``--warmup`` batches, then ``--batches`` timed."""
    dataset = TwoViewDataset(images, torchvision_transform(args.size, mean, std))
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=(args.warmup + args.batches + 1) * args.batch
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=True,
    )
    it = iter(loader)
    for _ in range(args.warmup):
        next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = time.process_time() + sum(_cpu_seconds(p) for p in pids)
    count, start = 0, time.perf_counter()
    for _ in range(args.batches):  # one batch is left over: the workers are alive when we read their time
        v1, v2 = next(it)
        count += v1.shape[0] + v2.shape[0]
    wall = time.perf_counter() - start
    cpu = time.process_time() + sum(_cpu_seconds(p) for p in pids) - cpu0
    del it  # stop the workers before the other side runs
    return count / wall, count / cpu


def bench_batch(images: torch.Tensor, args, mean, std, generator: torch.Generator) -> tuple[float, float]:
    """One trial: ``--warmup`` then ``--batches`` batches of random rows, two SimCLR views each."""
    views = [ViewAugment(), ViewAugment()]
    n = len(images)

    def run(batches: int) -> int:
        count = 0
        for _ in range(batches):
            rows = torch.randint(0, n, (args.batch,), generator=generator)
            batch = images.index_select(0, rows)
            out = make_views(batch, views, 2, mean=mean, std=std, out_size=args.size, generator=generator)
            count += sum(v.shape[0] for v in out)
        return count

    run(args.warmup)
    start, cpu0 = time.perf_counter(), time.process_time()
    count = run(args.batches)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return count / wall, count / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="input images (each yields 2 views)")
    parser.add_argument("--size", type=int, default=32, help="output side")
    parser.add_argument("--batch", type=int, default=256, help="input images per batch")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="3: gray replicated to RGB")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (batch side)")
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing, per trial")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials per side, interleaved; medians reported")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    raw, source = load_images(args.images)
    images = torch.from_numpy(raw.copy()).unsqueeze(1)
    if args.channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    mean, std = [0.5] * args.channels, [0.25] * args.channels

    load_before = os.getloadavg()[0]
    generator = torch.Generator().manual_seed(0)
    batch_trials, tv_trials = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both sides alike
        batch_trials.append(bench_batch(images, args, mean, std, generator))
        tv_trials.append(bench_torchvision(images, args, mean, std))
    load_after = os.getloadavg()[0]
    batch_rates, batch_cpu = zip(*batch_trials)
    tv_rates, tv_cpu = zip(*tv_trials)
    batch_rate, tv_rate = statistics.median(batch_rates), statistics.median(tv_rates)
    ratio = batch_rate / tv_rate
    cpu_ratio = statistics.median(batch_cpu) / statistics.median(tv_cpu)
    print(
        f"data={source} images={len(images)} channels={args.channels} size={args.size} batch={args.batch} "
        f"cpus={threads} torch_threads={torch.get_num_threads()} workers={args.workers} "
        f"load={load_before:.1f}->{load_after:.1f}: "
        f"raysl batch {batch_rate:,.0f} img/s, torchvision.v2 DataLoader {tv_rate:,.0f} img/s "
        f"(medians of {args.repeats}), ratio={ratio:.2f}x; "
        f"per CPU-second {statistics.median(batch_cpu):,.0f} vs {statistics.median(tv_cpu):,.0f} img/cpu-s "
        f"(cpu_ratio={cpu_ratio:.2f}x)"
    )
    print(
        json.dumps(
            {
                "bench": "augment",
                "data": source,
                "images": len(images),
                "channels": args.channels,
                "size": args.size,
                "batch": args.batch,
                "views": 2,
                "cpus": threads,
                "torch_threads": torch.get_num_threads(),
                "workers": args.workers,
                "raysl_images_per_s": round(batch_rate, 1),
                "torchvision_images_per_s": round(tv_rate, 1),
                "ratio": round(ratio, 3),
                "raysl_images_per_cpu_s": round(statistics.median(batch_cpu), 1),
                "torchvision_images_per_cpu_s": round(statistics.median(tv_cpu), 1),
                "cpu_ratio": round(cpu_ratio, 3),
                "raysl_trials": [round(r, 1) for r in batch_rates],
                "torchvision_trials": [round(r, 1) for r in tv_rates],
                "loadavg": [round(load_before, 2), round(load_after, 2)],
                "torch": torch.__version__,
                "machine": platform.machine(),
                "date": datetime.date.today().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
