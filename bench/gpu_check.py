"""The GPU check for real-size images: one table of what a CUDA machine does with raysl's JPEG path.

Runs in one process without Ray (the GPU machine has no Ray: its wheel is over
what a session may carry), so every raysl module used here must import without
Ray; ``bench/gpu_check.sh`` sets the environment up and calls this. Rows:

1. bare ceiling: ResNet-50 (``raysl.models`` backbone + projector) forward +
   backward at 224 px on two views of 256 (each its own pass, as the methods
   run them), bf16 autocast, channels_last; eager and ``torch.compile``.
2. raysl training step in-process: ``raysl.train.train_worker`` with a
   ``LocalIO`` on the GPU (pyarrow reads the encoded shards; no Ray Data):
   SimCLR, resnet50, crop 224, ``scale.precision=bf16``, channels_last,
   ``model.compile=true``, ``data.decode=gpu`` (nvJPEG decode + crops on the
   device, then ``augment_precropped`` on the device); images/s of the last
   epoch as the run reports it (two views counted), and its ratio to the
   compiled ceiling. Decode is not overlapped with the step here (one
   process, one stream), so this is a lower bound for the data path.
3. decode: ``raysl.data.read.gpu_decode.decode_crops`` on the device (batched
   nvJPEG + RandomResizedCrop cuts) vs ``raysl.data.read.decode.DecodeCrops`` on the
   CPU in this one process (one core): views/s, and the GPU's worth in cores.
4. ingest with ``data.decode: gpu`` (in-process, as ``LocalIO`` feeds the
   loop): pyarrow batches -> ``CropInput`` (nvJPEG) -> ``augment_precropped``
   on the device -> normalised float views on the GPU, vs torchvision
   ``ImageFolder`` + ``transforms.v2`` in a ``DataLoader`` with one worker
   per core, batches moved to the GPU; the recipe of ``bench/ingest.py``
   (SimCLR ImageNet, blur p=0.5); images/s, per core and per CPU-second.

Every row is guarded: a failure prints ``failed: <reason>`` and the next row
runs. ``--device cpu --small`` runs every row tiny on the CPU (a check of
the script itself); rows that need CUDA then say ``skipped: no CUDA``.

    python bench/gpu_check.py [--work DIR] [--images 4000] [--device cuda|cpu] [--small] [--no-compile] [--skip ROWS]

The table is printed at the end (and written to ``$OUT/gpu_check.txt`` when
``$OUT`` is set), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (step, figure, note)
RESULTS: dict[str, object] = {}


def row(step: str, figure: str, note: str = "") -> None:
    ROWS.append((step, figure, note))
    print(f"[gpu_check] {step}: {figure}{'  (' + note + ')' if note else ''}", flush=True)


def guarded(step: str):
    """Run the decorated step now; any exception becomes a ``failed: <one line>`` row."""
    def wrap(fn):
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - the table must go on
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            row(step, f"failed: {reason}")
            traceback.print_exc()
        print(f"[gpu_check] {step} took {time.perf_counter() - start:.0f}s", flush=True)
        return fn
    return wrap


def fmt(x: float) -> str:
    """Thousands separators for big figures, 3 significant digits for small ones."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- data


def make_data(args) -> tuple[Path, Path]:
    """(folder of JPEGs, its prepared encoded shards), made once under ``--work``."""
    folder, shards = args.work / "folder", args.work / "shards"
    if not folder.exists():
        cmd = [sys.executable, str(REPO / "bench" / "make_imagefolder.py"), "--out", str(folder),
               "--images", str(args.images), "--classes", "10", "--seed", "0", "--workers", str(args.cores)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not (shards / "manifest.json").exists():
        from raysl.data.prepare import prepare  # in-process: the CLI's own function, no Ray

        os.environ.pop("RAY_ADDRESS", None)  # a local process pool
        prepare("imagefolder", str(folder), str(shards), shard_rows=args.batch, workers=args.cores)
    return folder, shards


def recipe_views(blur_p: float):
    from raysl.config import ViewAugment

    return [ViewAugment(blur_p=blur_p), ViewAugment(blur_p=blur_p)]


# --------------------------------------------------------------------------- 1. bare ceiling


def bare_ceiling(args, device: torch.device, compiled: bool) -> float:
    from raysl.config import ModelConfig
    from raysl.models import build_backbone, mlp

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=args.backbone)
    backbone, dim = build_backbone(cfg, 3)
    model = torch.nn.Sequential(backbone, mlp(dim, cfg.projector_hidden_dim, cfg.projector_dim,
                                              cfg.projector_layers)).to(device)
    model = model.to(memory_format=torch.channels_last)
    views = [torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=torch.channels_last) for _ in range(2)]
    forward = torch.compile(model) if compiled else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = sum(forward(v).float().sum() for v in views)
        loss.backward()

    for _ in range(args.warmup_steps):
        step()
    sync(device)
    done, start = 0, time.perf_counter()
    while done < args.steps * 2 * args.batch or time.perf_counter() - start < args.min_seconds:
        step()
        done += 2 * args.batch
    sync(device)
    return done / (time.perf_counter() - start)


# --------------------------------------------------------------------------- 2. raysl training step


def train_step_rate(args, device: torch.device, shards: Path) -> list[dict]:
    from raysl.loop_io import LocalIO
    from raysl.run_config import RunConfig
    from raysl.train import train_worker

    class DeviceIO(LocalIO):
        def device(self):
            return device

    cfg = RunConfig.model_validate({
        "method": {"name": "simclr"},
        "model": {"backbone": args.backbone, "channels_last": True, "compile": args.compile},
        "data": {"source": "imagefolder", "path": str(shards), "crop_size": args.size, "decode": "gpu",
                 "augment": [{"blur_p": args.blur_p}, {"blur_p": args.blur_p}]},
        "optim": {"batch_size": args.batch, "epochs": args.epochs},
        "scale": {"use_gpu": device.type == "cuda", "precision": "bf16", "torch_threads": args.cores},
        "eval": {"every_epochs": args.epochs, "max_train": 2 * args.batch, "max_val": 2 * args.batch,
                 "knn_k": [20]},
    })
    io = DeviceIO()
    train_worker({"config": cfg.model_dump(mode="json"), "data_dir": str(shards)}, io=io)
    return io.reports


# --------------------------------------------------------------------------- 3. decode


def decode_rates(args, device: torch.device, shards: Path) -> tuple[float | None, float]:
    """(device views/s or None without CUDA, CPU views/s in one process)."""
    import numpy as np
    import pyarrow.parquet as pq

    from raysl.data.read.decode import DecodeCrops, crop_specs
    from raysl.data.read.gpu_decode import decode_crops
    from raysl.data.read.shards import load_manifest, shard_uris

    manifest = load_manifest(str(shards))
    specs = crop_specs(recipe_views(args.blur_p), args.size)
    tables = [pq.read_table(uri) for uri in shard_uris(str(shards), "train", manifest)]
    batches = [{name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names} for t in tables]
    rng = np.random.default_rng(0)

    gpu_rate = None
    if device.type == "cuda":
        def gpu(batch) -> int:
            out = decode_crops(list(batch["image"]), batch["height"], batch["width"], batch["orientation"],
                               specs, manifest.channels, device, rng=rng)
            return sum(o.shape[0] for o in out)

        gpu(batches[0])  # nvJPEG handle, kernels
        sync(device)
        done, start = 0, time.perf_counter()
        for batch in batches:
            done += gpu(batch)
        sync(device)
        gpu_rate = done / (time.perf_counter() - start)

    cpu_decode = DecodeCrops(specs, manifest.channels, seed=0)
    done, start = 0, time.perf_counter()
    for batch in batches[: max(1, args.cpu_decode_batches)]:
        out = cpu_decode(batch)
        done += sum(out[f"view{v}"].shape[0] for v in range(len(specs)))
    cpu_rate = done / (time.perf_counter() - start)
    return gpu_rate, cpu_rate


# --------------------------------------------------------------------------- 4. ingest, decode on the device


def ingest_raysl(args, device: torch.device, shards: Path) -> tuple[float, float]:
    """Views/s and views per CPU-second (this process) of the in-process ``data.decode: gpu`` input path."""
    from raysl.data.augment import augment_precropped
    from raysl.data.read.encoded_images import CropInput
    from raysl.data.read.shards import load_manifest, shard_uris
    from raysl.data.read.stream import ParquetBatches, TrainBatches

    manifest = load_manifest(str(shards))
    views = recipe_views(args.blur_p)
    from raysl.data.read.decode import crop_specs

    crop_input = CropInput(crop_specs(views, args.size), manifest.channels, device, on_device=True, seed=0)
    batches = TrainBatches(ParquetBatches(shard_uris(str(shards), "train", manifest)), manifest, args.batch, device,
                           cache=False, max_cached_bytes=0, seed=0, rank=0, crop_input=crop_input)
    steps = manifest.splits["train"]["rows"] // args.batch
    gen = torch.Generator().manual_seed(0)
    stream = batches.epoch(0, steps)

    def step() -> int:
        crops, _ = next(stream)
        out = augment_precropped(crops, views, mean=manifest.mean, std=manifest.std, generator=gen,
                                 channels_last=True)
        return sum(v.shape[0] for v in out)

    step()  # warm-up: nvJPEG, kernels
    sync(device)
    cpu0, start = time.process_time(), time.perf_counter()
    done = sum(step() for _ in range(steps - 1))
    sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    if crop_input.source != "device":
        raise RuntimeError(f"expected the JPEGs decoded on the device, CropInput says {crop_input.source!r}")
    return done / wall, done / cpu


def ingest_torchvision(args, device: torch.device, folder: Path, shards: Path) -> tuple[float, float]:
    """Views/s and views per CPU-second (main process + workers) of ImageFolder + v2 in a DataLoader."""
    from torchvision.datasets import ImageFolder

    import ingest
    from raysl.data.read.shards import load_manifest

    manifest = load_manifest(str(shards))
    steps = manifest.splits["train"]["rows"] // args.batch
    dataset = ImageFolder(str(folder), transform=ingest.TwoViews(
        ingest.torchvision_transform(manifest.mean, manifest.std, args.blur_p)))
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=steps * args.batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=args.cores,
                                         drop_last=True, pin_memory=device.type == "cuda")
    it = iter(loader)
    pids = [os.getpid(), *(w.pid for w in getattr(it, "_workers", []))]
    warm = min(args.cores, steps - 1) if args.cores < steps else 1

    def step() -> int:
        (v1, v2), _ = next(it)
        v1 = v1.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        v2 = v2.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return v1.shape[0] + v2.shape[0]

    for _ in range(warm):
        step()
    sync(device)
    before, start = ingest.pids_cpu(pids), time.perf_counter()
    done = sum(step() for _ in range(steps - warm))
    sync(device)
    wall = time.perf_counter() - start
    cpu = ingest.cpu_delta(before, ingest.pids_cpu(pids))
    del it
    return done / wall, (done / cpu if cpu > 0 else float("nan"))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "raysl-gpu-check")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="every row tiny (a check of the script on a CPU)")
    parser.add_argument("--images", type=int, default=None, help="JPEGs to make (default 4000; --small 160)")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--blur-p", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the train row (epoch 1 compiles)")
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile rows (eager only)")
    parser.add_argument("--compile-small", action="store_true",
                        help="--small: compile too (minutes of inductor C++ builds on a CPU)")
    parser.add_argument("--skip", default="", help="comma-separated rows to skip: bare,train,decode,ingest")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (use --device cpu --small to check the script)")
    small = args.small
    args.images = args.images or (80 if small else 4000)
    args.batch = 8 if small else 256
    args.size = 32 if small else 224
    args.backbone = "resnet18" if small else "resnet50"
    args.steps, args.warmup_steps, args.min_seconds = (1, 1, 0.0) if small else (20, 5, 5.0)
    args.cpu_decode_batches = 1 if small else 2
    args.epochs = 2 if small else args.epochs
    args.compile = not (args.no_compile or (small and not args.compile_small))
    args.work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.cores)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"[gpu_check] device={device} ({name}) cores={args.cores} torch={torch.__version__} "
          f"small={small} backbone={args.backbone} batch={args.batch}x2 views size={args.size}", flush=True)
    started = time.perf_counter()

    data: dict[str, Path] = {}

    @guarded("data")
    def _data():
        start = time.perf_counter()
        data["folder"], data["shards"] = make_data(args)
        from raysl.data.read.shards import load_manifest

        m = load_manifest(str(data["shards"]))
        row("data", f"{args.images} JPEGs, {m.splits['train']['rows']} train rows, median {m.height}x{m.width}",
            f"make_imagefolder + prepare in-process, {time.perf_counter() - start:.0f}s")

    ceiling: dict[str, float] = {}
    for compiled in (False, True):
        label = f"bare {args.backbone} fwd+bwd {'torch.compile' if compiled else 'eager'}"
        if "bare" in skip or (compiled and not args.compile):
            row(label, "skipped: " + ("--skip" if "bare" in skip else "no compile (--small or --no-compile)"))
            continue

        @guarded(label)
        def _bare():
            rate = bare_ceiling(args, device, compiled)
            ceiling["compile" if compiled else "eager"] = rate
            row(label, f"{fmt(rate)} img/s",
                f"batch {args.batch}x2 views, {args.size}px, channels_last"
                + (", bf16 autocast" if device.type == "cuda" else ", fp32 (bf16 autocast is CUDA-only in raysl)"))

    label = "raysl train step (in-process, decode=gpu)"
    if "train" in skip or "shards" not in data:
        row(label, "skipped: " + ("--skip" if "train" in skip else "no data"))
    else:
        @guarded(label)
        def _train():
            reports = train_step_rate(args, device, data["shards"])
            rates = [r["images_per_s"] for r in reports]
            RESULTS["train_images_per_s"] = rates
            key = "compile" if args.compile else "eager"
            best = ceiling.get(key)
            last = rates[-1]
            ratio = f", {last / best:.2f}x of the {key} ceiling ({fmt(best)})" if best else ""
            row(label, f"{fmt(last)} img/s{ratio}",
                f"epochs {', '.join(fmt(r) for r in rates)} img/s (epoch 1 {'compiles' if args.compile else 'warms up'}); "
                f"loss {reports[-1]['loss']:.3f}, compile={args.compile}, "
                f"{'bf16' if device.type == 'cuda' else 'fp32 (bf16 is CUDA-only)'}, channels_last; "
                f"input: {'nvJPEG on the device' if device.type == 'cuda' else 'decode_crops on the CPU device'}")

    label = "decode + 2 crops"
    if "decode" in skip or "shards" not in data:
        row(label, "skipped: " + ("--skip" if "decode" in skip else "no data"))
    else:
        @guarded(label)
        def _decode():
            gpu_rate, cpu_rate = decode_rates(args, device, data["shards"])
            RESULTS["decode"] = {"device_views_per_s": gpu_rate, "cpu_views_per_s_one_core": cpu_rate}
            row("decode CPU (DecodeCrops, 1 process)", f"{fmt(cpu_rate)} views/s per core",
                "PIL, reduced-DCT decode, antialiased crops")
            if gpu_rate is None:
                row("decode GPU (nvJPEG batched + crops)", "skipped: no CUDA")
            else:
                row("decode GPU (nvJPEG batched + crops)", f"{fmt(gpu_rate)} views/s",
                    f"= {gpu_rate / cpu_rate:.1f} CPU cores of DecodeCrops")

    label = "ingest decode=gpu vs torchvision"
    if "ingest" in skip or "shards" not in data:
        row(label, "skipped: " + ("--skip" if "ingest" in skip else "no data"))
    else:
        @guarded(label)
        def _ingest():
            r_rate, r_cpu = ingest_raysl(args, device, data["shards"])
            t_rate, t_cpu = ingest_torchvision(args, device, data["folder"], data["shards"])
            RESULTS["ingest"] = {"raysl_views_per_s": r_rate, "raysl_views_per_cpu_s": r_cpu,
                                 "torchvision_views_per_s": t_rate, "torchvision_views_per_cpu_s": t_cpu}
            where = "nvJPEG + batch ops on the GPU" if device.type == "cuda" else "decode_crops + batch ops on the CPU"
            row("ingest raysl in-process decode=gpu", f"{fmt(r_rate)} img/s, {fmt(r_cpu)} img/cpu-s",
                f"1 process, {where}")
            row(f"ingest torchvision ImageFolder+v2, {args.cores} workers",
                f"{fmt(t_rate)} img/s = {fmt(t_rate / args.cores)} per core, {fmt(t_cpu)} img/cpu-s",
                f"ratio raysl/torchvision {r_rate / t_rate:.2f}x; per CPU-second {r_cpu / t_cpu:.1f}x")

    total = time.perf_counter() - started
    width = max(len(s) for s, _, _ in ROWS)
    lines = [f"raysl GPU check: {name}, {platform.machine()}, torch {torch.__version__}, cores {args.cores}, "
             f"small={small}, {total:.0f}s"]
    lines += [f"{s.ljust(width)} | {f}" + (f" | {n}" if n else "") for s, f, n in ROWS]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.txt").write_text(table + "\n")
    print(json.dumps({"bench": "gpu_check", "device": name, "small": small, "seconds": round(total, 1),
                      "rows": [{"step": s, "figure": f, "note": n} for s, f, n in ROWS], **RESULTS}, default=str))


if __name__ == "__main__":
    main()
