"""The geometry of features on the unit sphere (Wang & Isola 2020): alignment of positive pairs and
uniformity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysl.evaluate.inputs import ArrayLike, as_features


@torch.no_grad()
def alignment(z1: ArrayLike, z2: ArrayLike, alpha: float = 2) -> float:
    """Alignment (Wang & Isola 2020): ``mean_i ||f(x_i) - f(y_i)||^alpha`` over
    positive pairs, on L2-normalised features. 0 for identical views, 4 at most
    (alpha = 2, antipodal views)."""
    a = F.normalize(as_features(z1, "z1"), dim=1)
    b = F.normalize(as_features(z2, "z2"), dim=1).to(a.device)
    if a.shape != b.shape:
        raise ValueError(
            f"the two views must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return float((a - b).norm(dim=1).pow(alpha).mean().item())


@torch.no_grad()
def uniformity(z: ArrayLike, t: float = 2, max_samples: int = 4096, seed: int = 0) -> float:
    """Uniformity (Wang & Isola 2020): ``log mean_{i<j} exp(-t ||z_i - z_j||^2)``
    on L2-normalised features.

    0 when every row is the same point (collapse), lower is more uniform; for
    N points on the sphere it is at least ``-2 t N / (N - 1)`` (Jensen, and
    ``||sum_i z_i||^2 >= 0``), e.g. -8 for two antipodal points at t = 2. Pairwise distances are
    quadratic in N, so at most ``max_samples`` rows are used, chosen at random
    with ``seed``.
    """
    x = as_features(z, "z")
    if x.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got {x.shape[0]}")
    if x.shape[0] > max_samples:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        x = x[pick[:max_samples].to(x.device)]
    x = F.normalize(x, dim=1)
    logits = torch.pdist(x).pow(2).mul(-t)
    # log-mean-exp, stable even when every pair is far apart
    return float((torch.logsumexp(logits, dim=0) - math.log(logits.numel())).item())
