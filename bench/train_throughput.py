"""End-to-end `raysl train` images/s against the bare model's forward+backward ceiling.

Both are measured in this one command on the same machine and batch shape:

1. bare: backbone + projector forward and backward on a ready float batch of
   2 x batch images (two views), contiguous and channels_last; the faster one
   is the ceiling.
2. raysl: `raysl train` on real Fashion-MNIST (IDX -> Parquet -> Ray Data ->
   Ray Train, 1 worker), SimCLR with the same model, on-device augmentation,
   loss, optimizer step and schedules; images/s per epoch (two views counted),
   as the run reports it. The first epoch streams from Ray Data; later epochs
   train from the device-resident split.

3. in-process step: the same training step (on-device augmentation of uint8
   batches, method forward + loss, backward, optimizer step) in this process
   without Ray, which separates the cost of the step from that of running
   inside Ray.

Prints the ratio raysl / ceiling (and the in-process step's).  Usage:

    python bench/train_throughput.py [--epochs 4] [--batch 256] [--width 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raysl.models import build_backbone, mlp  # noqa: E402
from raysl.run_config import RunConfig, load_config  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"


def bare_images_per_s(cfg: RunConfig, batch: int, channels_last: bool, seconds: float = 8.0) -> float:
    torch.manual_seed(0)
    backbone, dim = build_backbone(cfg.model, 1)
    projector = mlp(dim, cfg.model.projector_hidden_dim, cfg.model.projector_dim, cfg.model.projector_layers)
    model = torch.nn.Sequential(backbone, projector)
    # two views of `batch` images, each its own forward pass, as the methods run them
    views = [torch.randn(batch, 1, 28, 28) for _ in range(2)]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        sum(model(v).sum() for v in views).backward()

    for _ in range(3):
        step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += 2 * batch
    return done / (time.perf_counter() - start)


def step_images_per_s(cfg: RunConfig, batch: int, seconds: float = 8.0) -> float:
    """The full training step of ``cfg`` in this process (no Ray), on random uint8 28x28 images."""
    from raysl.data.augment import make_views
    from raysl.methods import build_method
    from raysl.optim import build_optimizer

    torch.manual_seed(0)
    method = build_method(cfg, 1)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method.param_groups(), cfg.optim, cfg.optim.lr)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    indices = torch.arange(batch)
    views, gen = cfg.data.views(), torch.Generator().manual_seed(0)
    norm = dict(mean=[0.286], std=[0.353], out_size=28, channels_last=cfg.model.channels_last)

    def step() -> None:
        crops = make_views(images, views, method.num_views, generator=gen, **norm)
        loss, _ = method(crops, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step()

    for _ in range(3):
        step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += method.num_views * batch
    return done / (time.perf_counter() - start)


def main() -> None:
    from raysl.launch import reexec_with_allocator_env

    reexec_with_allocator_env()  # the allocator settings raysl gives its Ray processes, for both sides
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if not Path(FASHION).exists():
        sys.exit(f"needs Fashion-MNIST at {FASHION}: apt-get install dataset-fashion-mnist")
    torch.set_num_threads(args.threads)

    from raysl.data.prepare import prepare
    from raysl.launch import train_run

    work = Path(tempfile.mkdtemp(prefix="raysl-bench-"))
    data = work / "fashion"
    prepare("idx", FASHION, str(data), shard_rows=10_000)
    overrides = [
        "data.source=idx", f"data.path={data}", "data.crop_size=28",
        "model.backbone=small_convnet", f"model.width={args.width}", "model.channels_last=true",
        f"optim.batch_size={args.batch}", f"optim.epochs={args.epochs}",
        f"scale.cpus_per_worker={args.threads}", f"scale.torch_threads={args.threads}",
        f"eval.every_epochs={args.epochs}", "eval.max_train=2000", "eval.max_val=2000",
    ]
    cfg = load_config(str(REPO / "search_spaces" / "quickstart.yaml"), overrides)

    # the ceiling is measured before and after the run and the best is kept, so a
    # background hiccup during one measurement cannot flatter the ratio
    contiguous = bare_images_per_s(cfg, args.batch, channels_last=False)
    channels_last = bare_images_per_s(cfg, args.batch, channels_last=True)
    in_process = step_images_per_s(cfg, args.batch)

    train_run(cfg, str(work / "run"))
    import ray

    ray.shutdown()
    contiguous = max(contiguous, bare_images_per_s(cfg, args.batch, channels_last=False))
    channels_last = max(channels_last, bare_images_per_s(cfg, args.batch, channels_last=True))
    in_process = max(in_process, step_images_per_s(cfg, args.batch))
    ceiling = max(contiguous, channels_last)
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r["images_per_s"] for r in rows]
    steady = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]

    print(
        f"bare model fwd+bwd: {contiguous:.0f} img/s contiguous, {channels_last:.0f} img/s channels_last; "
        f"raysl train: first epoch (Ray Data streaming) {per_epoch[0]:.0f} img/s, "
        f"later epochs (device-resident) {steady:.0f} img/s; ratio={steady / ceiling:.2f}x of the ceiling; "
        f"the same step in-process without Ray {in_process:.0f} img/s ({in_process / ceiling:.2f}x)"
    )
    print(json.dumps({
        "bench": "train_throughput", "threads": args.threads, "batch": args.batch, "width": args.width,
        "bare_contiguous": contiguous, "bare_channels_last": channels_last,
        "raysl_epochs": per_epoch, "raysl_steady": steady, "ratio": steady / ceiling,
        "in_process_step": in_process, "in_process_ratio": in_process / ceiling,
    }))


if __name__ == "__main__":
    main()
