"""What a run builds before its first step, shared by the training loop, its evaluation and export: the
method (``build_run_method``), how uint8 batches become its input (``input_norm``) and the generator its
augmentations draw from (``augment_generator``).
"""

from __future__ import annotations

import torch

from raysl.data.read.dataset import global_crop_size
from raysl.methods import build_method
from raysl.run_config import RunConfig


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

