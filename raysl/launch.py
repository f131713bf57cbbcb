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
from raysl.progress import EPOCH_FIELDS, epoch_line

STATUS_FIELDS = EPOCH_FIELDS  # shown in each epoch line
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
    from raysl.data.pipeline import global_crop_size, is_encoded

    manifest = shards.load_manifest(data_dir)
    rows = manifest.splits["train"]["rows"]
    if cfg.optim.batch_size > rows:
        raise ConfigError(
            f"{source}: optim.batch_size: {cfg.optim.batch_size} is larger than the {rows} training "
            f"images in {data_dir}; use at most {rows}"
        )
    # encoded shards hold images of many sizes: the crop size (224 by default) is what the model sees
    size = global_crop_size(cfg, manifest) if is_encoded(manifest) else (
        cfg.data.crop_size or min(manifest.height, manifest.width))
    if cfg.model.backbone == "vit_tiny" and size < cfg.model.patch_size:
        raise ConfigError(
            f"{source}: model.patch_size: {cfg.model.patch_size} px patches do not fit the {size} px images "
            f"in {data_dir}; set data.crop_size or a smaller model.patch_size"
        )
    return manifest


def init_ray(num_cpus: int | None = None, *, verbose: bool = False) -> None:
    """Join RAY_ADDRESS if set (ray job submit), else start a local cluster.

    Locally Ray gets more logical CPUs than cores: the Train workers, the Ray
    Data read tasks and (under Tune) the trial drivers must all be placed, and
    on a 2-core machine exact accounting deadlocks.

    Unless ``verbose``, Ray's own output stays out of the user's terminal: the
    workers' and actors' stdout/stderr is not forwarded (``log_to_driver``;
    it stays in the session's log files) and the driver's "ray" loggers show
    errors only. What raysl wants shown travels through :mod:`raysl.progress`.
    """
    import ray

    if ray.is_initialized():
        return
    quiet_ray(verbose)
    level = "WARNING" if verbose else "ERROR"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=verbose, logging_level=level)
        return
    # keep glibc from returning (and re-faulting) the large activation buffers on every step
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 << 20))
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 << 20))  # glibc maximum on 64-bit
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 2))
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=verbose, configure_logging=True, logging_level=level)


def quiet_ray(verbose: bool) -> None:
    """How much of Ray's own output reaches the user; set before Ray starts (a user's own env values win)."""
    import logging

    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour in forwarded log prefixes
    if not verbose:
        for name in ("ray", "ray.train", "ray.tune", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Tune's new output engine prints its experiment box and result tables even at verbose=0;
        # the classic one prints nothing at verbose=0 (`raysl tune` shows its own lines)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        _filter_cluster_errors()


# the raylet's "N PYTHON worker processes have been started ... which is Nx the maximum expected
# startup concurrency" warning: every run on a small machine triggers it and a user cannot act on it
_UNACTIONABLE_RAY_ERRORS = ("worker processes have been started on node",)


def _filter_cluster_errors() -> None:
    """Ray's driver prints every cluster error message (a worker killed, out of memory, ...) to
    stdout, which holds raysl's JSON summary: send them to stderr instead, without the one
    warning above and without Ray's de-duplication (it adds colour codes). A Ray without
    this hook is left as it is."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    print_lines = getattr(ray_worker, "print_worker_logs", None)
    if original is None or print_lines is None or getattr(original, "raysl_filtered", False):
        return

    def print_cluster_error(data, ignore_prefix):
        lines = [line for line in data.get("lines", []) if not any(s in line for s in _UNACTIONABLE_RAY_ERRORS)]
        if lines:
            print_lines({**data, "lines": lines}, sys.stderr, ignore_prefix)

    print_cluster_error.raysl_filtered = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_cluster_error


class MetricsFile:
    """Appends each report to ``metrics.jsonl`` (exactly once per epoch, across resumes).

    ``show``: also print the epoch line to stderr. ``raysl train`` does not: there this
    runs in the TrainController, and rank 0 relays the line itself, in order with its
    step progress (see raysl.progress).
    """

    def __init__(self, path: Path, show: bool = True):
        self.path = path
        self.show = show

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
        if self.show:
            print(epoch_line(metrics, STATUS_FIELDS), file=sys.stderr, flush=True)


def _make_callback(path: Path, show: bool = True):
    from ray.train.v2.api.callback import UserCallback

    class _Callback(UserCallback):
        def __init__(self):
            self.file = MetricsFile(path, show)

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


def train_run(cfg: RunConfig, out: str, *, source: str = "config", verbose: bool = False) -> dict:
    """Train one run into ``out`` (resuming from its last checkpoint); returns the summary.

    Progress (rank 0's banner and steps, each epoch's line) reaches stderr through a
    relay actor that a driver thread polls while ``trainer.fit()`` runs (raysl.progress).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from raysl import progress
    from raysl.config import to_yaml
    from raysl.data.pipeline import train_dataset
    from raysl.train import train_worker

    data_dir = resolve_data_dir(cfg)
    check_against_data(cfg, data_dir, source)
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = out_dir / "config.yaml"
    if previous.exists() and (out_dir / TRAIN_RUN_NAME).exists():
        print(f"[raysl] resuming the run in {out_dir} from its last checkpoint", file=sys.stderr)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))

    init_ray(verbose=verbose)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = train_dataset(cfg, data_dir)  # pixel rows, or JPEG crops cut by Ray Data tasks
    relay = progress.start_relay()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "data_dir": data_dir,
                           "progress": progress.relay_config(relay, progress.stream_isatty(sys.stderr))},
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
            callbacks=[_make_callback(out_dir / "metrics.jsonl", show=False)],
        ),
        datasets={"train": dataset},
    )
    try:
        with progress.DriverView(relay):
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
