"""Collapse of the embeddings: their spread (``collapse_std``), a snapshot check (``is_collapsed``) and the
check a run stops on (``collapsed_by_training``, against the spread at initialisation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysl.evaluate.inputs import ArrayLike, as_features
from raysl.evaluate.spectrum import rankme


@torch.no_grad()
def collapse_std(z: ArrayLike) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised
    embeddings (as in SimSiam, Chen & He 2021). Complete collapse gives ~0;
    embeddings spread isotropically on the sphere give ~``1 / sqrt(D)``."""
    x = as_features(z, "z")
    if x.shape[0] < 2:
        raise ValueError(f"collapse_std needs at least 2 rows, got {x.shape[0]}")
    return float(F.normalize(x, dim=1).std(dim=0).mean().item())


@torch.no_grad()
def is_collapsed(z: ArrayLike, threshold: float = 0.1, min_rank: float | None = 1.5) -> bool:
    """Whether the embeddings have collapsed.

    Collapsed when either holds:

    - ``collapse_std(z) < threshold / sqrt(D)``: the normalised embeddings vary
      ten times less (for the default 0.1) than isotropic ones would, i.e. they
      are (nearly) one point;
    - ``rankme(z) < min_rank`` (skipped when ``min_rank`` is None): one direction
      carries essentially all of the spectrum, i.e. the embeddings lie on a
      line through the origin (e.g. ``+v`` and ``-v`` only), which the std test
      misses when D is small.

    Non-finite embeddings return False: that is divergence, which the caller
    detects separately (``status = diverged``).
    """
    x = as_features(z, "z")
    if not bool(torch.isfinite(x).all()):
        return False
    if collapse_std(x) < threshold / math.sqrt(x.shape[1]):
        return True
    return min_rank is not None and rankme(x) < min_rank


# Below this many rows a per-dimension std says little (its relative error is about 1/sqrt(2 rows)),
# and a collapse check on it would raise alarms the data cannot support.
MIN_COLLAPSE_ROWS = 32
# Collapse is what training does to the embeddings: their spread must have fallen to this share of
# what the same network gave at initialisation (a random projector on a few images can start low).
COLLAPSE_DROP = 0.5


@torch.no_grad()
def collapsed_by_training(z: ArrayLike, init_std: float | None) -> bool:
    """Whether training collapsed the embeddings ``z`` (rows: the eval images).

    :func:`is_collapsed` judges one snapshot; a network at random initialisation can
    already look collapsed by it (a randomly initialised projector on a few dozen
    photos). So a collapse also needs the spread (:func:`collapse_std`) to have
    fallen below ``COLLAPSE_DROP`` x ``init_std``, the same network's spread on the
    same images before its first step (None: unknown, the snapshot decides), and at
    least ``MIN_COLLAPSE_ROWS`` rows to measure it on (fewer: never collapsed).
    """
    x = as_features(z, "z")
    if x.shape[0] < MIN_COLLAPSE_ROWS or not is_collapsed(x):
        return False
    if init_std is None or not math.isfinite(init_std):
        return True
    return collapse_std(x) < COLLAPSE_DROP * init_std
