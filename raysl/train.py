"""The per-worker training loop, readable top to bottom.

``train_worker`` runs inside every Ray Train worker (or in-process for a
one-worker Tune trial). It builds the method, restores the last checkpoint if
there is one, then for each epoch: streams uint8 batches onto the device,
augments them there into views, takes optimizer steps with per-step
schedules, evaluates, and reports metrics with a checkpoint.
"""

from __future__ import annotations

import numbers
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from raysl import distributed, noise_scale, ray_compat, schedules
from raysl.checkpoint import checkpoint_dirs, load_state, save_state
from raysl.data.augment import augment_precropped, make_views, to_float
from raysl.data.pipeline import CropInput, eval_images, global_crop_size, is_encoded
from raysl.data.shards import load_manifest, read_split
from raysl.data.stream import TrainBatches
from raysl.data.subset import train_rows as subset_train_rows
from raysl.divergence import DivergenceWatch
from raysl.errors import CheckpointError, CollapsedError
from raysl.evaluate import (
    agreed_rank,
    alignment,
    evaluate_features,
    collapse_std,
    collapsed_by_training,
    lidar,
    linear_probe_accuracy,
    view_knn_agreement,
)
from raysl.methods import build_method
from raysl.optim import build_optimizer, set_lr_and_wd
from raysl.progress import StepTicker
from raysl.run_config import RunConfig
from raysl.scaling_laws import scaled_lr
from raysl.timing import EVAL_S, STARTUP_S, TRAIN_S

CHECKPOINT_FILE = "state.pt"
# steps between two reads of the divergence record on a GPU (see raysl/divergence.py)
DIVERGENCE_CHECK_EVERY_CUDA = 32


class LoopIO(Protocol):
    """What the loop needs from its runner (Ray Train, or a Tune trial in-process)."""

    def dataset_shard(self, name: str) -> Any: ...
    def checkpoint_dir(self) -> str | None: ...
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...
    def device(self) -> torch.device: ...


class RayTrainIO:
    def __init__(self, resume_from: str | None = None, read_shards_from: str | None = None):
        # a checkpoint of another run (path or URI) to start from while this run has none of its own:
        # a PBT clone starts from the donor trial's (raysl.pbt)
        self.resume_from = resume_from
        # the data folder whose shards this (only) worker reads itself, when the driver handed Train no
        # Ray Dataset (raysl.data.pipeline.reads_in_worker)
        self.read_shards_from = read_shards_from

    @classmethod
    def for_loop(cls, loop_config: dict) -> "RayTrainIO":
        """The IO of a Train worker started with ``loop_config`` (raysl train's, or a multi-worker trial's)."""
        return cls(resume_from=loop_config.get("resume_from"),
                   read_shards_from=loop_config["data_dir"] if loop_config.get("read_in_worker") else None)

    def dataset_shard(self, name):
        if self.read_shards_from is not None:
            from raysl.data.shards import shard_uris
            from raysl.data.stream import ParquetBatches

            return ParquetBatches(shard_uris(self.read_shards_from, name), distributed.rank(),
                                  distributed.world_size())
        import ray.train

        return ray.train.get_dataset_shard(name)

    def checkpoint_dir(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return self._resume_dir()
        return ckpt.to_directory()

    def _resume_dir(self) -> str | None:
        from raysl.pbt import local_checkpoint_dir

        return local_checkpoint_dir(self.resume_from) if self.resume_from else None

    def checkpoint_candidates(self) -> list[str]:
        """Checkpoints to resume from, newest first: the one Ray registered last, then the older ones
        of the run (a damaged newest one falls back to them), at their real paths. On remote storage
        only the latest, downloaded."""
        import pyarrow.fs as pafs
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:  # exactly the given one: every rank must load the same weights
            return [d for d in [self._resume_dir()] if d]
        if not isinstance(ckpt.filesystem, pafs.LocalFileSystem):
            return [ckpt.to_directory()]
        return resume_candidates(ckpt.path)

    def report(self, metrics, checkpoint_dir):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=upload_checkpoint)

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()


def upload_checkpoint(checkpoint, checkpoint_dir_name: str):
    """Ray Train's checkpoint upload through raysl.storage: copied under a temporary name and renamed,
    so a full disk or a read-only storage leaves no torn ``checkpoint_*`` folder, and fails with a
    one-line StorageError (the worker raises it; ``raysl train`` reports it and how to resume)."""
    import ray.train

    from raysl import storage

    context = ray.train.get_context().get_storage()
    check = ray_compat.storage_check(context)
    if check is not None:  # Ray's check that this node reaches the run's storage (multi-node)
        check()
    path = context.build_checkpoint_path_from_name(checkpoint_dir_name)
    destination = storage.Location(context.storage_filesystem, path, path)
    storage.copy_dir_atomic(checkpoint.path, destination, action="writing the checkpoint")
    return ray.train.Checkpoint(filesystem=context.storage_filesystem, path=path)


class LocalIO:
    """Runs the loop in this process with no Ray at all: tests, debugging, one-worker trials.

    Checkpoints go to ``out_dir/checkpoints/epoch_N``; ``reports`` collects every metrics dict.
    """

    def __init__(self, data_dir: str, out_dir: str | None = None):
        from raysl.data.shards import shard_uris
        from raysl.data.stream import ParquetBatches

        self._train = ParquetBatches(shard_uris(data_dir, "train"))
        self.out_dir = out_dir
        self.reports: list[dict] = []

    def dataset_shard(self, name):
        return self._train

    def checkpoint_dir(self):
        if self.out_dir is None:
            return None
        root = os.path.join(self.out_dir, "checkpoints")
        done = sorted(
            (d for d in os.listdir(root) if d.startswith("epoch_")), key=lambda d: int(d.split("_")[1])
        ) if os.path.isdir(root) else []
        return os.path.join(root, done[-1]) if done else None

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir and self.out_dir is not None:
            import shutil

            target = os.path.join(self.out_dir, "checkpoints", f"epoch_{metrics['epoch']}")
            shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)

    def device(self):
        return torch.device("cpu")


def resume_candidates(latest: str) -> list[str]:
    """``latest`` (the checkpoint Ray resumes from), then the older checkpoints beside it, newest first.
    Folders newer than ``latest`` were never registered by Ray (a stopped run's last upload) and are
    not resumed from: their epochs are not in metrics.jsonl."""
    latest = latest.rstrip("/")
    name = os.path.basename(latest)
    older = [d for d in checkpoint_dirs(os.path.dirname(latest)) if os.path.basename(d) < name]
    return [latest, *reversed(older)]


def restore_state(io: LoopIO, ticker: StepTicker | None = None) -> dict[str, Any] | None:
    """The newest checkpoint of the run that loads, or None for a fresh run.

    A damaged one (truncated, its file missing) is skipped with one line on ``ticker`` naming its
    real path and why; when none loads the run stops with a CheckpointError instead of silently
    starting over.
    """
    candidates = getattr(io, "checkpoint_candidates", None)
    dirs = candidates() if candidates is not None else [d for d in [io.checkpoint_dir()] if d]
    skipped: list[str] = []
    for ckpt_dir in dirs:
        path = os.path.join(ckpt_dir, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            skipped.append(f"{ckpt_dir}: {CHECKPOINT_FILE} is missing")
            continue
        try:
            state = load_state(path)
            int(state["epoch"]), int(state["global_step"]), state["model"]  # noqa: B018 - what a resume needs
        except CheckpointError as exc:
            skipped.append(f"{ckpt_dir}: {CHECKPOINT_FILE} " + str(exc).removeprefix(f"checkpoint {path} "))
            continue
        except (KeyError, TypeError, ValueError):
            skipped.append(f"{ckpt_dir}: {CHECKPOINT_FILE} was not written by raysl train")
            continue
        if ticker is not None:
            for reason in skipped:
                ticker.say(f"[raysl] skipped checkpoint {reason}; resuming from epoch {int(state['epoch'])}")
        return state
    if skipped:
        raise CheckpointError("no checkpoint of this run loads (" + "; ".join(skipped) + "); move the run "
                              "folder away to train from scratch")
    return None


@dataclass
class EvalSet:
    """uint8 images kept on the evaluating worker's device."""

    train_x: torch.Tensor
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor | None


def load_eval_set(data_dir: str, cfg: RunConfig, device: torch.device) -> EvalSet:
    """A seeded subset of train (kNN memory bank) and of val, as on-device uint8 tensors.

    Real-size images are streamed, resized (shorter side) and centre-cropped to
    the global crop size, keeping the first rows of each split (see
    ``raysl.data.pipeline.eval_images``).
    """
    rng = np.random.default_rng(cfg.seed)
    manifest = load_manifest(data_dir)

    def take(split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_encoded(manifest):
            x, y = eval_images(data_dir, split, global_crop_size(cfg, manifest), limit, manifest)
        else:
            x, y = read_split(data_dir, split)
        if len(x) > limit:
            keep = np.sort(rng.choice(len(x), size=limit, replace=False))
            x = x[keep]
            y = y[keep] if y is not None else None
        xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous().to(device)
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device) if y is not None else None
        return xt, yt

    train_x, train_y = take("train", cfg.eval.max_train)
    val_x, val_y = take("val", cfg.eval.max_val)
    return EvalSet(train_x, train_y, val_x, val_y)


@torch.no_grad()
def embed_all(method, images: torch.Tensor, norm: dict, batch: int = 512) -> dict[str, torch.Tensor]:
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, images.shape[0], batch):
        x = to_float(images[i : i + batch], **norm)
        for key, value in method.embed(x).items():
            outs.setdefault(key, []).append(value.float())
    return {k: torch.cat(v) for k, v in outs.items()}


@torch.no_grad()
def embed_views(method, images: torch.Tensor, cfg: RunConfig, norm: dict, batch: int = 512) -> dict[str, torch.Tensor]:
    """``[n, q, D]`` features of ``q = eval.lidar_views`` augmented views of each image, for LiDAR.

    The views follow the run's global view recipes in turn, drawn from a generator seeded with the
    run's seed: every evaluation sees the same augmentations, so LiDAR moves only with the network
    (and the training stream's augmentations are left alone).
    """
    q = cfg.eval.lidar_views
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    recipes = cfg.data.global_views()
    outs: dict[str, list[torch.Tensor]] = {}
    step = max(1, batch // q)
    for i in range(0, images.shape[0], step):
        chunk = images[i : i + step]
        views = make_views(chunk, recipes, q, generator=gen, **norm)
        same_size = all(v.shape == views[0].shape for v in views)  # one forward pass for all q views
        found = [method.embed(torch.cat(views))] if same_size else [method.embed(v) for v in views]
        for key in found[0]:
            value = torch.cat([f[key].float() for f in found])
            outs.setdefault(key, []).append(value.reshape(q, chunk.shape[0], -1).transpose(0, 1))
    return {k: torch.cat(v) for k, v in outs.items()}


@torch.no_grad()
def evaluate_method(method, eval_set: EvalSet, cfg: RunConfig, norm: dict, views,
                    gen: torch.Generator, init_std: float | None = None) -> dict[str, float]:
    """kNN (k=20 and 200, cosine, temperature-weighted), RankMe, alpha-ReQ, alignment/uniformity and
    collapse; with ``eval.linear_probe`` the linear probe's accuracy (``linear_acc``); with
    ``eval.view_metrics`` (or a search metric among them) LiDAR, view kNN agreement and agreed rank; with
    ``eval.projector_metrics`` (or a projector_ search metric) the same again on the projector's output.

    Protocol: features of the un-augmented train subset are the memory bank,
    the val split is classified; ``knn_acc`` uses backbone features with k=20. The bank's and the val
    split's features are embedded once and every metric reads them; a switch decides whether a metric is
    computed, never how (each equals what it was when every switch was on).
    """
    was_training = method.training
    method.eval()
    train = embed_all(method, eval_set.train_x, norm)
    val = embed_all(method, eval_set.val_x, norm)
    features = ("backbone", "projector") if cfg.eval.wants_projector_metrics() else ("backbone",)
    metrics: dict[str, float] = {}
    for feature in features:
        prefix = "" if feature == "backbone" else "projector_"
        found = evaluate_features(
            train[feature], eval_set.train_y, val[feature], eval_set.val_y, ks=tuple(cfg.eval.knn_k),
            knn_temperature=cfg.eval.knn_temperature, rankme_max_samples=cfg.eval.rankme_max_samples,
        )
        metrics.update({prefix + k: v for k, v in found.items()})
    if cfg.eval.wants_linear_probe() and eval_set.train_y is not None and eval_set.val_y is not None:
        # logistic regression on the memory bank's frozen backbone features, tested on the val split
        metrics["linear_acc"] = linear_probe_accuracy(train["backbone"], eval_set.train_y, val["backbone"],
                                                      eval_set.val_y, seed=cfg.seed)
    # alignment: two augmented views of the same val images (Wang & Isola), backbone features
    sample = eval_set.val_x[:1024]
    v1, v2 = make_views(sample, views, 2, generator=gen, **norm)
    metrics["alignment"] = float(alignment(method.backbone(v1).float(), method.backbone(v2).float()))
    images = eval_set.val_x[: cfg.eval.lidar_images if cfg.eval.wants_view_metrics() else 0]
    if images.shape[0] >= 2:
        for key, per_view in embed_views(method, images, cfg, norm).items():
            if key not in features:
                continue
            prefix = "" if key == "backbone" else "projector_"
            metrics[prefix + "lidar"] = lidar(per_view, delta=cfg.eval.lidar_delta)
            # the same views' neighbourhoods in the kNN memory bank (k as knn_acc's)
            k = min(cfg.eval.knn_k[0] if cfg.eval.knn_k else 20, train[key].shape[0])
            agreement = view_knn_agreement(train[key], per_view, k=k)
            metrics[prefix + "view_agreement"] = agreement
            metrics[prefix + "agreed_rank"] = agreed_rank(metrics[prefix + "rankme"], agreement)
    # judged against the same network's spread at initialisation (init_std): a change training caused
    metrics["collapsed"] = bool(collapsed_by_training(val["projector"], init_std))
    method.train(was_training)
    return metrics


def input_norm(cfg: RunConfig, manifest) -> dict:
    """How a run turns uint8 batches into model input (make_views / to_float keyword arguments)."""
    return dict(mean=manifest.mean, std=manifest.std, out_size=global_crop_size(cfg, manifest),
                channels_last=cfg.model.channels_last)


def build_run_method(cfg: RunConfig, manifest, device: torch.device) -> torch.nn.Module:
    """The method as a run builds it; the caller seeds torch first (``cfg.seed + rank``)."""
    method = build_method(cfg, manifest.channels, num_samples=manifest.total_rows).to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method


def augment_generator(cfg: RunConfig, rank: int = 0) -> torch.Generator:
    """Augmentation parameters are drawn on the CPU: choosing rows never waits on the GPU."""
    return torch.Generator().manual_seed(cfg.seed * 9973 + rank + 1)


def initial_metrics(cfg: RunConfig, data_dir: str) -> dict[str, float]:
    """The evaluation of the very network a run of ``cfg`` starts from, before its first step, on the CPU.

    The random-initialisation baseline a trained encoder's kNN and RankMe are read
    against (same seed, architecture, memory bank and queries as the run's rank 0).
    """
    manifest = load_manifest(data_dir)
    torch.manual_seed(cfg.seed)
    method = build_run_method(cfg, manifest, torch.device("cpu"))
    eval_set = load_eval_set(data_dir, cfg, torch.device("cpu"))
    return evaluate_method(method, eval_set, cfg, input_norm(cfg, manifest), cfg.data.views(), augment_generator(cfg))


def plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Python numbers and strings only (no numpy scalars), so a checkpoint holding them loads weights_only."""
    def plain(value: Any) -> Any:
        if isinstance(value, (str, bool)) or value is None:
            return value
        if isinstance(value, numbers.Integral):  # int and numpy integers
            return int(value)
        return float(value)

    return {key: plain(value) for key, value in metrics.items()}


def lr_at(cfg: RunConfig, progress: float, peak: float) -> float:
    s = cfg.schedule
    final = peak * s.final_lr_fraction
    if s.lr == "warmup_cosine":
        return schedules.warmup_cosine(progress, peak, warmup=s.warmup, final=final)
    if s.lr == "constant":
        return schedules.constant(progress, peak, warmup=s.warmup)
    if s.lr == "step":
        return schedules.step(progress, peak, milestones=tuple(s.milestones), gamma=s.gamma, warmup=s.warmup)
    return schedules.infinite(
        progress, peak, warmup=s.warmup, cooldown=s.cooldown, plateau=s.plateau, decay_end=s.decay_end, final=final
    )


def weight_decay_at(cfg: RunConfig, progress: float) -> float:
    if cfg.schedule.weight_decay == "cosine":
        return schedules.weight_decay_cosine(progress, cfg.optim.weight_decay, cfg.schedule.weight_decay_final)
    return cfg.optim.weight_decay


def peak_lr(cfg: RunConfig) -> float:
    """``optim.lr`` (per 256 images) scaled to the global batch by ``optim.lr_scaling``."""
    return scaled_lr(cfg.optim.lr, cfg.optim.batch_size, cfg.optim.lr_scaling, reference=256)


def _lr_formula(cfg: RunConfig) -> str:
    o = cfg.optim
    return {"linear": f"{o.lr:g} x {o.batch_size}/256", "sqrt": f"{o.lr:g} x sqrt({o.batch_size}/256)",
            "none": f"{o.lr:g}"}[o.lr_scaling]


def train_worker(loop_config: dict, io: LoopIO | None = None) -> None:
    """Entry point of one worker. ``loop_config``: {"config": RunConfig dict, "data_dir": str}."""
    loop_start = time.perf_counter()  # startup_s runs from here to the first training step (raysl.timing)
    io = io or RayTrainIO.for_loop(loop_config)
    cfg = RunConfig.model_validate(loop_config["config"])
    data_dir = loop_config["data_dir"]
    rank, world = distributed.rank(), distributed.world_size()
    device = io.device()
    is_cuda = device.type == "cuda"
    torch.set_num_threads(cfg.scale.torch_threads or max(1, int(cfg.scale.cpus_per_worker)))
    torch.manual_seed(cfg.seed + rank)
    if is_cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data description and model
    manifest = load_manifest(data_dir)
    norm = input_norm(cfg, manifest)
    method = build_run_method(cfg, manifest, device)
    if method.needs_labels:  # SupCon: the train split's labels, looked up by row index
        method.load_labels(data_dir, manifest)
    views = cfg.data.views(method.num_views)  # the method's global views, then any local crops (multi-crop)
    peak = peak_lr(cfg)
    optimizer = build_optimizer(method.param_groups(), cfg.optim, peak)
    model = DistributedDataParallel(method) if world > 1 else method
    forward = torch.compile(model) if cfg.model.compile else model
    # rank 0's notes and step progress for the user (relayed to the driver under `raysl train`)
    ticker = StepTicker.from_loop_config(loop_config, rank, cfg.optim.epochs, cfg.optim.batch_size * len(views))

    # ---- resume
    start_epoch, global_step = 0, 0
    resumed: dict[str, Any] = {}
    state = restore_state(io, ticker if rank == 0 else None)
    if state is not None:
        method.load_state_dict(state["model"])
        if state.get("optimizer_name") == cfg.optim.name:
            # the moments of the checkpoint, the hyperparameters of this config (a PBT clone's are mutated)
            hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            optimizer.load_state_dict(state["optimizer"])
            for group, values in zip(optimizer.param_groups, hyper):
                group.update(values)
        elif rank == 0:
            ticker.say(f"[raysl] optimizer changed to {cfg.optim.name}: its state starts fresh")
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        if loop_config.get("report_resume") and rank == 0:
            # a PBT clone's first report says which weights it continued from (checked by the tests)
            from raysl.pbt import weights_fingerprint

            resumed = {"resumed_epoch": start_epoch, "resumed_weights": weights_fingerprint(method.state_dict())}
            if loop_config.get("resume_record"):
                from raysl.pbt import record_resume

                record_resume(loop_config["resume_record"], resumed)
        if start_epoch >= cfg.optim.epochs and "metrics" in state:
            # restored at its last epoch: a re-run of a finished run, or a PBT trial that cloned a
            # finished trial's checkpoint. Nothing is left to train; its final report is its result.
            io.report({**dict(state["metrics"]), **resumed}, None)
            return

    local_batch = cfg.optim.batch_size // world
    rows = subset_train_rows(data_dir, manifest, cfg.data.fraction, cfg.seed)  # all of them at data.fraction 1
    steps_per_epoch = rows // (local_batch * world)
    total_steps = steps_per_epoch * cfg.optim.epochs
    batches = TrainBatches(
        io.dataset_shard("train"), manifest, local_batch, device,
        cache=cfg.data.cache_on_device, max_cached_bytes=cfg.data.max_cached_bytes, seed=cfg.seed, rank=rank,
        crop_input=CropInput.for_run(cfg, manifest, views, device, rank),  # None for small-image shards
        fraction=cfg.data.fraction,
    )
    eval_set = load_eval_set(data_dir, cfg, device) if rank == 0 else None
    # the projector's spread on the eval images before the first step: what a collapse is measured against
    init_std = (state or {}).get("init_feature_std")
    if init_std is None and state is None and eval_set is not None and eval_set.val_x.shape[0] >= 2:
        was_training = method.training
        method.eval()
        init_std = collapse_std(embed_all(method, eval_set.val_x, norm)["projector"])
        method.train(was_training)
    gen = augment_generator(cfg, rank)
    # on a GPU, reading the loss back every step would stall the host; the watch reads it every few steps
    watch = DivergenceWatch(device, every=DIVERGENCE_CHECK_EVERY_CUDA if is_cuda else 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=is_cuda and cfg.scale.precision == "bf16")
    if rank == 0 and start_epoch == 0:
        ticker.say(
            f"[raysl] {cfg.method.name}: {rows} train images"
            f"{f' (data.fraction {cfg.data.fraction:g})' if cfg.data.fraction < 1 else ''}, {world} worker(s)"
            f"{f' (elastic, {cfg.scale.min_workers}-{cfg.scale.max_workers})' if cfg.scale.elastic else ''}, "
            f"global batch {cfg.optim.batch_size}{f' ({local_batch} per worker)' if world > 1 else ''}, "
            f"{steps_per_epoch} steps/epoch; peak lr {peak:.4g} = "
            f"{_lr_formula(cfg)} ({cfg.optim.lr_scaling} scaling)"
        )

    startup_s = None
    for epoch in range(start_epoch, cfg.optim.epochs):
        method.train()
        loss_sum = torch.zeros((), device=device)
        steps_done = 0
        start = time.perf_counter()
        if startup_s is None:
            startup_s = start - loop_start
        # leaving the block reads the divergence record: before anything of this epoch is reported or saved
        with watch.epoch():
            for images, indices in batches.epoch(epoch, steps_per_epoch):
                progress = global_step / max(1, total_steps)
                method.progress = progress
                set_lr_and_wd(optimizer, lr_at(cfg, progress, peak), weight_decay_at(cfg, progress))
                if isinstance(images, list):  # real-size images: each view's crop was cut by the data path
                    crops = augment_precropped(images, views, mean=norm["mean"], std=norm["std"], generator=gen,
                                               channels_last=norm["channels_last"])
                else:
                    crops = make_views(images, views, len(views), generator=gen, **norm)
                with autocast:
                    loss, _ = forward(crops, indices)
                watch.observe(loss, global_step, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                method.after_step()
                loss_sum += loss.detach()
                global_step += 1
                steps_done += 1
                ticker.step(epoch, steps_done, steps_per_epoch, start)  # throttled, reads no tensor
        if is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        images_seen = steps_done * cfg.optim.batch_size * len(views)  # views made, local crops included
        if rank == 0 and epoch == start_epoch and batches.crop_input is not None:
            sizes = ", ".join(str(v.size or norm["out_size"]) for v in views)
            ticker.say(f"[raysl] input: {CropInput.SOURCES.get(batches.crop_input.source, 'no batch')}; "
                       f"views of {sizes} px")

        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "loss": float(loss_sum.item() / max(1, steps_done)),
            "images_per_s": images_seen / max(elapsed, 1e-9),
            "lr": lr_at(cfg, global_step / max(1, total_steps), peak),
            "status": "running",
            # where the wall time goes (raysl.timing); eval_s is filled in below
            TRAIN_S: elapsed, EVAL_S: 0.0, STARTUP_S: startup_s,
        }
        last = epoch + 1 == cfg.optim.epochs
        evaluating = (epoch + 1) % cfg.eval.every_epochs == 0 or last
        eval_start = time.perf_counter()
        if evaluating and steps_done and noise_scale.wanted(cfg.eval.noise_scale, method):
            # the epoch's last step's views, cut into pieces (raysl.noise_scale), in train mode; on every
            # rank in step, because a method's forward may gather or all-reduce (DINO's centre, MoCo's
            # keys); each rank measures its own share of the batch and rank 0's figures are reported
            with autocast:
                found = noise_scale.measure_noise_scale(method, crops, indices)
            if rank == 0:
                metrics.update(found)
        if eval_set is not None and evaluating:
            metrics.update(evaluate_method(method, eval_set, cfg, norm, views, gen, init_std))
        if evaluating:
            if is_cuda:
                torch.cuda.synchronize()
            metrics[EVAL_S] = time.perf_counter() - eval_start
        collapsed = bool(metrics.pop("collapsed", False))
        if last:
            metrics["status"] = "finished"
        # a randomly initialised projector can look collapsed; judge only after the lr warm-up
        past_warmup = global_step / max(1, total_steps) >= cfg.schedule.warmup
        if collapsed and past_warmup and cfg.eval.stop_on_collapse:
            metrics["status"] = "collapsed"

        checkpoint_dir = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0 and ((epoch + 1) % cfg.checkpoint.every_epochs == 0 or last):
                save_state(
                    os.path.join(tmp, CHECKPOINT_FILE),
                    {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                     "optimizer_name": cfg.optim.name, "epoch": epoch + 1, "global_step": global_step,
                     "metrics": plain_metrics(metrics), "init_feature_std": init_std},
                )
                checkpoint_dir = tmp
            ticker.epoch_done(metrics)
            io.report({**metrics, **resumed}, checkpoint_dir)
            resumed = {}
        if metrics["status"] == "collapsed":
            raise CollapsedError(
                f"collapsed at epoch {epoch + 1}: the embeddings became (nearly) constant; "
                "try a lower lr, a different temperature or loss weights"
            )
