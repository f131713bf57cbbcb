"""The per-worker training loop, readable top to bottom.

``train_worker`` runs inside every Ray Train worker (or in-process for a
one-worker Tune trial). It builds the method, restores the last checkpoint if
there is one, then for each epoch: streams uint8 batches onto the device,
augments them there into views, takes optimizer steps with per-step
schedules, evaluates, and reports metrics with a checkpoint.

Ray finds ``train_worker`` by this module's path (resumed experiments too): it stays here. Where the loop
reads and reports is raysl.loop_io, its evaluation raysl.run_eval, what it builds first raysl.run_setup.
"""

from __future__ import annotations

import numbers
import os
import tempfile
import time
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from raysl import distributed, noise_scale, schedules
from raysl.checkpoint import CHECKPOINT_FILE, save_state
from raysl.data.augment import augment_precropped, make_views
from raysl.data.read.dataset import RunData
from raysl.data.read.encoded_images import CropInput
from raysl.data.read.stream import TrainBatches
from raysl.divergence import DivergenceWatch
from raysl.errors import CollapsedError
from raysl.evaluate import collapse_std
from raysl.loop_io import LoopIO, RayTrainIO, restore_state
from raysl.optim import build_optimizer, set_lr_and_wd
from raysl.progress import StepTicker
from raysl.run_config import RunConfig
from raysl.run_eval import embed_all, evaluate_method, load_eval_set
from raysl.run_setup import augment_generator, build_run_method, input_norm
from raysl.scaling_laws import scaled_lr
from raysl.timing import EVAL_S, STARTUP_S, TRAIN_S

# steps between two reads of the divergence record on a GPU (see raysl/divergence.py)
DIVERGENCE_CHECK_EVERY_CUDA = 32


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
    data = RunData.load(cfg, data_dir)  # the prepared folder, its manifest and how its rows are stored
    manifest = data.manifest
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
        if rank == 0:  # e.g. a PBT clone's first report says which weights it continued from
            resumed = io.on_resume(start_epoch, method.state_dict())
        if start_epoch >= cfg.optim.epochs and "metrics" in state:
            # restored at its last epoch: a re-run of a finished run, or a PBT trial that cloned a
            # finished trial's checkpoint. Nothing is left to train; its final report is its result.
            io.report({**dict(state["metrics"]), **resumed}, None)
            return

    local_batch = cfg.optim.batch_size // world
    rows = data.train_rows()  # all of them at data.fraction 1
    steps_per_epoch = rows // (local_batch * world)
    total_steps = steps_per_epoch * cfg.optim.epochs
    batches = TrainBatches(
        io.train_shard(data), manifest, local_batch, device,
        cache=cfg.data.cache_on_device, max_cached_bytes=cfg.data.max_cached_bytes, seed=cfg.seed, rank=rank,
        crop_input=data.crop_input(views, device, rank),  # None for small-image shards
    )
    eval_set = load_eval_set(data, device) if rank == 0 else None
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
        # what the method's training_loss returns beside the loss (Method.Metrics), summed over the epoch's
        # steps where it is (a device tensor stays on the device: no sync per step); logged as epoch means
        extra_sums: dict[str, Any] = {}
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
                    loss, extras = forward(crops, indices)
                watch.observe(loss, global_step, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                method.after_step()
                loss_sum += loss.detach()
                for key, value in extras.items():
                    value = value.detach().float() if torch.is_tensor(value) else float(value)
                    extra_sums[key] = extra_sums.get(key, 0.0) + value
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
        if steps_done:  # the method's own values (DINO's teacher temperature, an EMA momentum, ...): epoch means
            metrics.update({key: float(total) / steps_done for key, total in extra_sums.items()})
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
