"""A run's evaluation: its eval set (uint8 images on the evaluating worker's device), their embeddings
(plain and as augmented views) and ``evaluate_method``, every metric of raysl.evaluate on them; and
``initial_metrics``, the same evaluation of the network a run starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raysl.data.augment import make_views, to_float
from raysl.data.read.dataset import RunData
from raysl.evaluate import (
    agreed_rank,
    alignment,
    collapsed_by_training,
    evaluate_features,
    lidar,
    linear_probe_accuracy,
    view_knn_agreement,
)
from raysl.run_config import RunConfig
from raysl.run_setup import augment_generator, build_run_method, input_norm


@dataclass
class EvalSet:
    """uint8 images kept on the evaluating worker's device."""

    train_x: torch.Tensor
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor | None


def load_eval_set(data: RunData, device: torch.device) -> EvalSet:
    """A seeded subset of train (kNN memory bank) and of val, as on-device uint8 tensors.

    The images are the run's data's evaluation images (``RunData.eval_images``): pixel rows as stored,
    real-size images streamed, resized (shorter side) and centre-cropped to the global crop size, keeping
    the first rows of each split.
    """
    cfg = data.cfg
    rng = np.random.default_rng(cfg.seed)

    def take(split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = data.eval_images(split, limit)
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


def initial_metrics(cfg: RunConfig, data_dir: str) -> dict[str, float]:
    """The evaluation of the very network a run of ``cfg`` starts from, before its first step, on the CPU.

    The random-initialisation baseline a trained encoder's kNN and RankMe are read
    against (same seed, architecture, memory bank and queries as the run's rank 0).
    """
    data = RunData.load(cfg, data_dir)
    torch.manual_seed(cfg.seed)
    method = build_run_method(cfg, data.manifest, torch.device("cpu"))
    eval_set = load_eval_set(data, torch.device("cpu"))
    return evaluate_method(method, eval_set, cfg, input_norm(cfg, data.manifest), cfg.data.views(), augment_generator(cfg))
