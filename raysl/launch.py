"""Driver side of a run: resolve the data, start (or join) Ray, fit a TorchTrainer.

Everything a user can get wrong is checked here, before Ray starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from raysl.config import RunConfig
from raysl.errors import ConfigError, DataError, RayslError, TrainingError

STATUS_FIELDS = ("epoch", "loss", "knn_acc", "rankme", "alignment", "uniformity", "images_per_s")
# the Ray Train run name under --out: checkpoints land in OUT/train/checkpoint_*/ (raysl.export reads them)
TRAIN_RUN_NAME = "train"


def cache_root() -> Path:
    return Path(os.environ.get("RAYSL_CACHE", Path.home() / ".cache" / "raysl"))


def resolve_data_dir(cfg: RunConfig) -> str:
    """The prepared shard folder of a run; a bundled source with no path is prepared into the cache."""
    from raysl.data import shards

    if cfg.data.path is not None:
        path = cfg.data.path
        if "://" not in path:
            path = str(Path(path).expanduser().resolve())
        shards.load_manifest(path)  # clear error if it is not a prepared folder
        return path
    target = cache_root() / "data" / f"{cfg.data.source}-seed0"
    if not (target / "manifest.json").exists():
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "manifest.json").exists():
                shards.prepare(cfg.data.source, None, str(target), seed=0)
    return str(target)


def check_against_data(cfg: RunConfig, data_dir: str, source: str) -> Any:
    """Checks that need the manifest: batch size vs data set size, image size vs ViT patch size."""
    from raysl.data import shards

    manifest = shards.load_manifest(data_dir)
    rows = manifest.splits["train"]["rows"]
    if cfg.optim.batch_size > rows:
        raise ConfigError(
            f"{source}: optim.batch_size: {cfg.optim.batch_size} is larger than the {rows} training "
            f"images in {data_dir}; use at most {rows}"
        )
    size = cfg.data.crop_size or min(manifest.height, manifest.width)
    if cfg.model.backbone == "vit_tiny" and size < cfg.model.patch_size:
        raise ConfigError(
            f"{source}: model.patch_size: {cfg.model.patch_size} px patches do not fit the {size} px images "
            f"in {data_dir}; set data.crop_size or a smaller model.patch_size"
        )
    return manifest


def init_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS if set (ray job submit), else start a local cluster.

    Locally Ray gets more logical CPUs than cores: the Train workers, the Ray
    Data read tasks and (under Tune) the trial drivers must all be placed, and
    on a 2-core machine exact accounting deadlocks.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    # keep glibc from returning (and re-faulting) the large activation buffers on every step
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 << 20))
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 << 20))  # glibc maximum on 64-bit
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 2))
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=True, configure_logging=True, logging_level="WARNING")


class MetricsFile:
    """Appends each report to ``metrics.jsonl`` (exactly once per epoch, across resumes) and prints progress."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, metrics: dict) -> None:
        rows = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("epoch", 0) < metrics.get("epoch", 0):
                    rows.append(row)
        rows.append(metrics)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)
        shown = "  ".join(
            f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
            for k in STATUS_FIELDS
            if k in metrics
        )
        print(f"[raysl] {shown}", file=sys.stderr, flush=True)


def _make_callback(path: Path):
    from ray.train.v2.api.callback import UserCallback

    class _Callback(UserCallback):
        def __init__(self):
            self.file = MetricsFile(path)

        def after_report(self, run_context, metrics, checkpoint):
            row = dict(metrics[0])
            if checkpoint is not None:
                row["checkpoint"] = checkpoint.path
            self.file.write(row)

    return _Callback()


def user_error_from(exc: BaseException) -> RayslError | None:
    """The RayslError a worker raised, found through Ray's wrappers."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RayslError):
            return e
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            stack.append(cause)
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(e, attr, None)
            if isinstance(failures, dict):
                stack.extend(failures.values())
        stack.extend([e.__cause__, e.__context__])
        as_inst = getattr(e, "as_instanceof_cause", None)
        if callable(as_inst):
            try:
                stack.append(as_inst())
            except Exception:
                pass
    return None


def train_run(cfg: RunConfig, out: str, *, source: str = "config") -> dict:
    """Train one run into ``out`` (resuming from its last checkpoint); returns the summary."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from raysl.config import to_yaml
    from raysl.data import shards
    from raysl.train import train_worker

    data_dir = resolve_data_dir(cfg)
    check_against_data(cfg, data_dir, source)
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = out_dir / "config.yaml"
    if previous.exists() and (out_dir / TRAIN_RUN_NAME).exists():
        print(f"[raysl] resuming the run in {out_dir} from its last checkpoint", file=sys.stderr)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))

    init_ray()
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.read_parquet(shards.shard_uris(data_dir, "train"), columns=["image", "label", "index"])
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "data_dir": data_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scale.num_workers,
            use_gpu=cfg.scale.use_gpu,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker, **({"GPU": cfg.scale.gpus_per_worker} if cfg.scale.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=TRAIN_RUN_NAME,
            storage_path=str(out_dir),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=ray.train.FailureConfig(max_failures=0),
            callbacks=[_make_callback(out_dir / "metrics.jsonl")],
        ),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - translate worker errors a user can act on
        user = user_error_from(exc)
        if user is None:
            raise
        status = "diverged" if "diverged" in str(user) else "collapsed" if "collapsed" in str(user) else "errored"
        summary = {"status": status, "error": str(user), "out": str(out_dir)}
        error = TrainingError(str(user))
        error.summary = summary  # type: ignore[attr-defined]
        raise error from None
    summary = dict(result.metrics or {})
    summary["out"] = str(out_dir)
    if result.checkpoint is not None:
        summary["checkpoint"] = result.checkpoint.path
    return summary
