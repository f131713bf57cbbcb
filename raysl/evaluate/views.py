"""Label-free measures read on several augmented views of each image (``eval.view_metrics``): LiDAR,
view kNN agreement and agreed rank."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysl.evaluate.inputs import ArrayLike, as_features


@torch.no_grad()
def lidar(embeddings_per_view: ArrayLike | list, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR, the effective rank of the LDA matrix of the SSL surrogate task (Thilak, Huang, Saremi,
    Dinh, Goh, Nakkiran, Susskind & Littwin 2023, "LiDAR: Sensing Linear Probing Performance in Joint
    Embedding SSL Architectures", ICLR 2024).

    ``embeddings_per_view``: ``[n, q, D]`` (``n`` images, ``q`` augmented views of each), or a list of
    ``q`` ``[n, D]`` matrices (view ``j`` of every image). Each image is a surrogate class whose
    members are its views; with ``z_ij`` view ``j`` of image ``i``, ``mu_i`` the mean of its views
    and ``mu`` the mean of the ``mu_i``:

    - between-class scatter ``S_b = 1/n sum_i (mu_i - mu)(mu_i - mu)^T``;
    - within-class scatter ``S_w = 1/(n q) sum_ij (z_ij - mu_i)(z_ij - mu_i)^T + delta' I``;
    - ``S_lidar = S_w^-1/2 S_b S_w^-1/2``, with eigenvalues ``lambda_k``;
    - ``LiDAR = exp(-sum_k p_k log p_k)``, ``p_k = lambda_k / sum(lambda) + eps`` (the smooth
      effective rank of RankMe).

    It counts the directions in which the images stand apart relative to the spread of their own
    augmentations: between 1 and ``min(n - 1, D)``. Directions where every image varies a lot across
    views barely count, however much variance they carry (RankMe counts them). With few views
    ``S_b`` also holds ``S_w / q`` of estimation noise, a floor the paper keeps small with many views.

    One departure from the paper: its regulariser is a fixed ``delta I``; here ``delta' = delta *
    tr(S_w + S_b) / D``, ``delta`` times the mean variance per feature of all ``n q`` rows, so that
    LiDAR (like RankMe and alpha-ReQ) is the same for features scaled by any factor. Invariant to
    scaling, rotating and translating the features (exactly, up to float error). Returns 0.0 when
    every image has the same mean (no between-class scatter) and NaN for non-finite entries.

    Raises:
        ValueError: with fewer than 2 images or 2 views, or ``delta <= 0``.
    """
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if isinstance(embeddings_per_view, (list, tuple)):
        views = [as_features(v, f"view {j}") for j, v in enumerate(embeddings_per_view)]
        if not views or any(v.shape != views[0].shape for v in views):
            raise ValueError("the views must be [n, D] matrices of one shape, got "
                             f"{[tuple(v.shape) for v in views]}")
        z = torch.stack([v.to(views[0].device) for v in views], dim=1)
    else:
        z = torch.as_tensor(embeddings_per_view).detach()
        if z.ndim != 3:
            raise ValueError(f"embeddings_per_view must be [n, q, D], got shape {tuple(z.shape)}")
    n, q, d = z.shape
    if n < 2 or q < 2:
        raise ValueError(f"LiDAR needs at least 2 images and 2 views of each, got {n} images x {q} views")
    z = z.to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        return math.nan
    class_means = z.mean(dim=1)
    between = class_means - class_means.mean(dim=0, keepdim=True)
    s_b = between.T @ between / n
    within = (z - class_means[:, None, :]).reshape(n * q, d)
    s_w = within.T @ within / (n * q)
    mean_variance = float((s_w.trace() + s_b.trace()).item()) / d
    if mean_variance == 0.0:
        return 0.0
    reg = delta * mean_variance
    s_w = (s_w + s_w.T) / 2 + reg * torch.eye(d, dtype=z.dtype, device=z.device)
    w, vectors = torch.linalg.eigh(s_w)
    inv_sqrt = vectors @ torch.diag(w.clamp_min(reg).rsqrt()) @ vectors.T
    m = inv_sqrt @ s_b @ inv_sqrt
    lam = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0.0)
    total = lam.sum()
    if total.item() == 0.0:
        return 0.0
    p = lam / total + eps
    return float(torch.exp(-(p * p.log()).sum()).item())


@torch.no_grad()
def view_knn_agreement(bank: ArrayLike, embeddings_per_view: ArrayLike, k: int = 20, chunk: int = 256) -> float:
    """View kNN agreement: how much of an image's kNN neighbourhood survives augmentation.

    ``bank``: ``[N, D]`` features of un-augmented images (the kNN memory bank); ``embeddings_per_view``:
    ``[n, q, D]``, ``q`` augmented views of each of ``n`` other images. Each view's ``k`` nearest bank
    rows by cosine similarity are its neighbourhood ``N_ij``; the agreement is the mean over images
    and over the ``q (q - 1) / 2`` pairs of its views of ``|N_ij & N_il| / k``: 1 when every view of
    an image finds the same ``k`` bank images, ``k / N`` in expectation for neighbourhoods drawn at
    random. A kNN classifier votes with these neighbourhoods, so this is the part of its vote that
    augmentation leaves alone, measured without labels. It rewards invariance only: features that
    are constant, or that span a few directions, agree trivially, so pair it with a measure of how
    much the features spread (:func:`agreed_rank`).

    The neighbourhood overlap is the mutual-kNN measure Huh, Cheung, Wang & Isola (2024, "The
    Platonic Representation Hypothesis") use to compare two representations, applied here to two
    views under one representation. Invariant to scaling and rotating the features (cosine
    similarity is), exactly so long as no two bank rows tie for a view's k-th place.

    Raises:
        ValueError: fewer than 2 views, ``k < 1`` or ``k > N``, or feature sizes that differ.
    """
    b = as_features(bank, "bank")
    z = torch.as_tensor(embeddings_per_view).detach()
    if z.ndim != 3:
        raise ValueError(f"embeddings_per_view must be [n, q, D], got shape {tuple(z.shape)}")
    n, q, d = z.shape
    if q < 2:
        raise ValueError(f"view kNN agreement needs at least 2 views of each image, got {q}")
    if d != b.shape[1]:
        raise ValueError(f"the views have {d} features and the bank {b.shape[1]}")
    if not 1 <= k <= b.shape[0]:
        raise ValueError(f"k must be in [1, {b.shape[0]}] (the bank's rows), got {k}")
    if n == 0:
        return math.nan
    dtype = torch.float64 if torch.float64 in (b.dtype, z.dtype) else torch.float32
    b = F.normalize(b.to(dtype), dim=1)
    z = F.normalize(z.to(device=b.device, dtype=dtype), dim=2)
    shared = 0
    for start in range(0, n, chunk):
        part = z[start : start + chunk]  # [c, q, D]
        nb = (part @ b.T).topk(k, dim=2).indices  # [c, q, k], k distinct bank rows per view
        # matches over every ordered pair of views [c, q, q, k, k]: each view matches itself k times,
        # and each unordered pair of different views counts twice
        matches = int((nb[:, :, None, :, None] == nb[:, None, :, None, :]).sum().item())
        shared += (matches - part.shape[0] * q * k) // 2
    return shared / (n * q * (q - 1) // 2 * k)


def agreed_rank(rankme_value: float, agreement: float) -> float:
    """RankMe times view kNN agreement: the effective number of feature directions, discounted by the
    share of kNN neighbourhoods that augmentation changes.

    A label-free selector across trials of different SSL methods (raysl's own, not from a paper).
    RankMe (:func:`rankme`) alone ranks trials well within one method but was fooled across methods
    on Fashion-MNIST: BYOL's features had more effective directions than SimCLR's at lower kNN
    accuracy, and their neighbourhoods moved more under augmentation. Agreement alone
    (:func:`view_knn_agreement`) is fooled by features that spread little. ``bench/selection.py``
    measures both and the product (``bench/README.md``: how it was chosen and how it held up on
    searches it was not chosen on).
    """
    return float(rankme_value) * float(agreement)
