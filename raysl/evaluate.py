"""Representation quality without fine-tuning: kNN, linear probe, the label-free
RankMe, alpha-ReQ, LiDAR and alignment/uniformity, and a collapse check.

Every function takes plain tensors (``[N, D]`` features, ``[N]`` integer labels),
runs on whatever device the features are on, and returns Python numbers. No
gradients are tracked. Labels below 0 mean "unlabelled" and are ignored wherever
labels are used.

Protocol stated with every number (as the design asks):

- kNN: cosine similarity on L2-normalised features, the ``k`` nearest train rows
  vote with weight ``exp(sim / temperature)`` (Wu et al. 2018, InstDisc;
  Caron et al. 2021, DINO), k = 20 and 200, temperature 0.07.
- Linear probe: multinomial logistic regression on standardised frozen
  features, Adam with a cosine learning rate, L2 penalty on the weights.
- RankMe, alpha-ReQ, uniformity and the feature std are label-free and computed
  on the train features (the larger set: RankMe wants up to 25,600 rows).
- LiDAR is label-free too but needs several augmented views of each image; the
  caller embeds them (``raysl.train.evaluate_method``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "alignment",
    "alpha_req",
    "alpha_req_score",
    "collapse_std",
    "evaluate_features",
    "is_collapsed",
    "collapsed_by_training",
    "knn_accuracies",
    "knn_accuracy",
    "linear_probe_accuracy",
    "lidar",
    "rankme",
    "uniformity",
]

ArrayLike = torch.Tensor | np.ndarray


def _features(x: ArrayLike, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision is too coarse for similarities and SVDs
    return x


def _labels(y: ArrayLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(y).detach().to(device=device, dtype=torch.long)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D vector of {n} labels, got shape {tuple(y.shape)}")
    return y


def _labelled(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked tensors on the train features' device, unlabelled rows dropped."""
    xtr = _features(train_feats, "train_feats")
    xte = _features(test_feats, "test_feats").to(device=xtr.device, dtype=xtr.dtype)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {xtr.shape[1]} vs {xte.shape[1]}"
        )
    ytr = _labels(train_labels, xtr.shape[0], "train_labels", xtr.device)
    yte = _labels(test_labels, xte.shape[0], "test_labels", xtr.device)
    keep_tr, keep_te = ytr >= 0, yte >= 0
    if not bool(keep_tr.any()):
        raise ValueError("no labelled train rows (all train labels are < 0)")
    if not bool(keep_te.any()):
        raise ValueError("no labelled test rows (all test labels are < 0)")
    return xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]


# --------------------------------------------------------------------------- #
# Label-based
# --------------------------------------------------------------------------- #


@torch.no_grad()
def knn_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Weighted kNN accuracy in [0, 1] (InstDisc, Wu et al. 2018; DINO).

    Each test row takes its ``k`` most cosine-similar train rows; neighbour ``j``
    adds ``exp(sim_j / temperature)`` to the score of its class; the class with
    the highest score is the prediction (ties go to the lower class index).
    ``k`` is clamped to the number of labelled train rows. Test rows are
    processed ``chunk_size`` at a time, so memory is ``chunk_size x N_train``.

    Raises:
        ValueError: on mismatched shapes, ``k < 1``, or no labelled train/test rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # one k of knn_accuracies: its top-k of exactly k neighbours per query chunk
    return knn_accuracies(train_feats, train_labels, test_feats, test_labels, ks=(k,), temperature=temperature,
                          num_classes=num_classes, chunk_size=chunk_size)[k]


@torch.no_grad()
def knn_accuracies(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    ks: tuple[int, ...] | list[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """:func:`knn_accuracy` at every ``k`` of ``ks`` at once: ``{k: accuracy}``.

    One similarity matrix per chunk of ``chunk_size`` test rows (one matmul) and one top-k for the
    largest ``k``; each ``k`` votes with the first ``k`` of those neighbours, which are the ``k``
    nearest (top-k returns them sorted). The votes are the same floats as a top-k of ``k`` alone
    (:func:`knn_accuracy`), so the accuracies equal it whenever no two train rows tie for a test row's
    ``k``-th place (with a tie, which of the tied rows votes is top-k's arbitrary choice in both).

    Raises:
        ValueError: as :func:`knn_accuracy`, or with no ``k`` at all.
    """
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must name at least one k")
    if min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    xtr, ytr, xte, yte = _labelled(train_feats, train_labels, test_feats, test_labels)
    largest = int(max(ytr.max().item(), yte.max().item()))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"label {largest} does not fit num_classes={num_classes}")
    clamped = {k: min(k, xtr.shape[0]) for k in ks}  # k is clamped to the labelled train rows
    top = max(clamped.values())
    xtr = F.normalize(xtr, dim=1)
    xte = F.normalize(xte, dim=1)

    correct = dict.fromkeys(sorted(set(clamped.values())), 0)
    for start in range(0, xte.shape[0], max(1, chunk_size)):
        chunk = xte[start : start + chunk_size]
        sims, idx = (chunk @ xtr.T).topk(top, dim=1)
        weights = (sims / temperature).exp()
        neighbour_labels = ytr[idx]
        truth = yte[start : start + chunk_size]
        for k in correct:
            votes = torch.zeros(chunk.shape[0], num_classes, device=xtr.device, dtype=weights.dtype)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            correct[k] += int((votes.argmax(dim=1) == truth).sum().item())
    return {k: correct[clamped[k]] / xte.shape[0] for k in ks}


def linear_probe_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on frozen features.

    Features are standardised with the train mean and std; a linear layer
    (zero-initialised) is trained with mini-batch Adam for ``epochs`` passes,
    the learning rate following a cosine from ``lr`` to 0, minimising
    cross-entropy plus ``weight_decay / 2 * ||W||^2`` (the bias is not
    penalised). Shuffling uses a generator seeded with ``seed``, so the result
    is reproducible on a given device. About 2 s on 2 CPU cores for 10k x 512.

    Raises:
        ValueError: on mismatched shapes or no labelled train/test rows.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    xtr, ytr, xte, yte = _labelled(train_feats, train_labels, test_feats, test_labels)
    num_classes = int(max(ytr.max().item(), yte.max().item())) + 1
    n = xtr.shape[0]
    batch_size = min(batch_size, n)
    total_steps = epochs * math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(seed)

    # Callers evaluate under no_grad or inference_mode; the probe needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        mean = xtr.mean(dim=0)
        std = xtr.std(dim=0, unbiased=False).clamp_min(1e-6)  # constant dims stay 0, not inf
        xtr = (xtr - mean) / std  # out-of-place: normal tensors even from inference ones
        xte = (xte - mean) / std
        ytr = ytr.clone()
        probe = torch.nn.Linear(xtr.shape[1], num_classes).to(xtr.device)
        torch.nn.init.zeros_(probe.weight)
        torch.nn.init.zeros_(probe.bias)
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(xtr.device)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(probe(xtr[batch]), ytr[batch])
                loss = loss + 0.5 * weight_decay * probe.weight.pow(2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()

    with torch.no_grad():
        predictions = probe(xte).argmax(dim=1)
    return float((predictions == yte).float().mean().item())


# --------------------------------------------------------------------------- #
# Label-free
# --------------------------------------------------------------------------- #


@torch.no_grad()
def rankme(embeddings: ArrayLike, eps: float = 1e-7, max_samples: int = 25600) -> float:
    """RankMe effective rank (Garrido et al. 2023, "RankMe: Assessing the
    Downstream Performance of Pretrained Self-Supervised Representations by
    Their Rank").

    With ``s`` the singular values of the (uncentred) embedding matrix,
    ``p_k = s_k / ||s||_1 + eps`` and ``RankMe = exp(-sum_k p_k log p_k)``:
    between 1 (all rows on one line) and ``min(N, D)``. Uses the first
    ``max_samples`` rows. Returns 0.0 for an all-zero matrix and NaN for one
    with non-finite entries (a diverged run, not a collapsed one).
    """
    z = _features(embeddings, "embeddings")[:max_samples]
    if not bool(torch.isfinite(z).all()):
        return math.nan
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if total.item() == 0.0:
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()).item())


# alpha-ReQ's fit range, 1-based ranks with both ends included (the authors' reference code, reptrix,
# fits eigenvalues 5..99 counted from 0: the same ranks)
ALPHA_REQ_RANKS = (6, 100)
# eigenvalues below this fraction of the largest are raised to it: a rank-deficient spectrum's zeros have
# no logarithm, and a representation left with fewer directions than the fit range gets a steep, finite alpha
_SPECTRUM_FLOOR = 1e-12


def _covariance_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (float64, largest first, >= 0) of the covariance of the rows of ``z``."""
    z = z.to(torch.float64)
    z = z - z.mean(dim=0, keepdim=True)
    cov = z.T @ z / z.shape[0]
    return torch.linalg.eigvalsh((cov + cov.T) / 2).flip(0).clamp_min(0.0)


@torch.no_grad()
def alpha_req(
    embeddings: ArrayLike, ranks: tuple[int, int] = ALPHA_REQ_RANKS, max_samples: int = 25600
) -> float:
    """alpha-ReQ: the decay coefficient of the embedding eigenspectrum (Agrawal, Mondal, Ghosh &
    Richards 2022, "alpha-ReQ: Assessing Representation Quality in Self-Supervised Learning by
    measuring eigenspectrum decay", NeurIPS).

    With ``lambda_1 >= lambda_2 >= ...`` the eigenvalues of the covariance of the centred rows, the
    power law ``lambda_k = c k^-alpha`` is fitted by weighted least squares on
    ``log lambda_k = log c - alpha log k`` over the ranks ``k`` from ``ranks[0]`` to ``ranks[1]``
    (1-based, both included; default 6..100 as in the authors' reference code, reptrix: the first
    five eigenvalues, a few leading directions that often stand apart from the power law, are left
    out, and so is the far tail, where the sample spectrum is mostly estimation noise). Rank ``k`` weighs ``1/k``,
    as in that code (after Stringer, Pachitariu et al. 2019, "High-dimensional geometry of population
    responses in visual cortex", Nature): ranks are dense at the high end of a log axis, and
    the weight makes every octave of ranks count about equally. The upper end is clamped to the
    ``min(N - 1, D)`` eigenvalues a centred ``N x D`` matrix can have; eigenvalues below
    ``1e-12 lambda_1`` are raised to it (a representation left with fewer directions than the
    range gets a steep alpha).

    Higher alpha: a faster decay, fewer directions carry the variance (towards collapse); lower: a
    flatter, more noise-like spectrum. :func:`alpha_req_score` turns it into an objective. Invariant
    to scaling, rotating and translating the embeddings (exactly, up to float error). Uses the first
    ``max_samples`` rows. NaN when fewer than two ranks are in range or fewer than two of them above
    that floor (a collapse to a handful of directions), when every row is the same, or for non-finite
    entries (a search then gives :func:`alpha_req_score` its worst value).
    """
    low, high = ranks
    if low < 1 or high <= low:
        raise ValueError(f"ranks must be (low, high) with 1 <= low < high, got {ranks}")
    z = _features(embeddings, "embeddings")[:max_samples]
    if not bool(torch.isfinite(z).all()):
        return math.nan
    spectrum = _covariance_spectrum(z)[: max(0, min(z.shape[0] - 1, z.shape[1]))]
    high = min(high, spectrum.numel())
    if high - low + 1 < 2 or spectrum[0].item() == 0.0:
        return math.nan
    floor = spectrum[0] * _SPECTRUM_FLOOR
    if int((spectrum[low - 1 : high] > floor).sum().item()) < 2:
        return math.nan  # (almost) nothing left past rank `low`: collapsed, a slope of the floor means nothing
    k = torch.arange(low, high + 1, dtype=torch.float64, device=spectrum.device)
    y = spectrum[low - 1 : high].clamp_min(floor).log()
    x = k.log()
    w = 1.0 / k
    x_mean, y_mean = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    slope = (w * (x - x_mean) * (y - y_mean)).sum() / (w * (x - x_mean) ** 2).sum()
    return float(-slope.item())


def alpha_req_score(alpha: float) -> float:
    """``-|alpha - 1|``: alpha-ReQ as an objective to maximise (0 is best).

    The paper reads the decay coefficient on both sides: alpha well below 1 spreads the variance over
    many directions, white-noise-like and sensitive to small input changes (the smoothness argument
    of Stringer et al. 2019, whose visual-cortex spectra decay with alpha close to 1); alpha well
    above 1 leaves few directions, too little capacity for a linear read-out. Across its SSL runs
    the best linear-probe accuracies sit in an interval around alpha = 1, so closeness to 1 is the
    selection rule used here. The best interval can move with the data and the features: ``raysl
    analyze`` shows how this score ranked the trials of an experiment with labels.
    """
    return -abs(float(alpha) - 1.0)


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
        views = [_features(v, f"view {j}") for j, v in enumerate(embeddings_per_view)]
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
    b = _features(bank, "bank")
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


@torch.no_grad()
def alignment(z1: ArrayLike, z2: ArrayLike, alpha: float = 2) -> float:
    """Alignment (Wang & Isola 2020): ``mean_i ||f(x_i) - f(y_i)||^alpha`` over
    positive pairs, on L2-normalised features. 0 for identical views, 4 at most
    (alpha = 2, antipodal views)."""
    a = F.normalize(_features(z1, "z1"), dim=1)
    b = F.normalize(_features(z2, "z2"), dim=1).to(a.device)
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
    x = _features(z, "z")
    if x.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got {x.shape[0]}")
    if x.shape[0] > max_samples:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        x = x[pick[:max_samples].to(x.device)]
    x = F.normalize(x, dim=1)
    logits = torch.pdist(x).pow(2).mul(-t)
    # log-mean-exp, stable even when every pair is far apart
    return float((torch.logsumexp(logits, dim=0) - math.log(logits.numel())).item())


@torch.no_grad()
def collapse_std(z: ArrayLike) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised
    embeddings (as in SimSiam, Chen & He 2021). Complete collapse gives ~0;
    embeddings spread isotropically on the sphere give ~``1 / sqrt(D)``."""
    x = _features(z, "z")
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
    x = _features(z, "z")
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
    x = _features(z, "z")
    if x.shape[0] < MIN_COLLAPSE_ROWS or not is_collapsed(x):
        return False
    if init_std is None or not math.isfinite(init_std):
        return True
    return collapse_std(x) < COLLAPSE_DROP * init_std


# --------------------------------------------------------------------------- #
# Everything at once
# --------------------------------------------------------------------------- #


def evaluate_features(
    train_feats: ArrayLike,
    train_labels: ArrayLike | None,
    val_feats: ArrayLike,
    val_labels: ArrayLike | None,
    *,
    ks: tuple[int, ...] = (20, 200),
    prefix: str = "",
    knn_temperature: float = 0.07,
    rankme_max_samples: int = 25600,
) -> dict[str, float]:
    """The per-eval-period metrics for one feature set (backbone or projector).

    Keys (each prefixed with ``prefix``, e.g. ``"backbone/"``):

    - ``knn_acc``: kNN accuracy on the val rows with ``k = ks[0]`` (20), and
      ``knn_acc_k{k}`` for every further ``k`` (``knn_acc_k200``); left out
      when either set has no labels (None or all < 0);
    - ``rankme``, ``alpha_req`` (the decay coefficient), ``alpha_req_score``
      (``-|alpha_req - 1|``), ``uniformity``, ``feature_std`` (:func:`collapse_std`):
      label-free, on the train features.

    ``alignment`` and ``lidar`` need augmented views of the same images, so the caller adds them.
    """
    out: dict[str, float] = {}
    if _has_labels(train_labels) and _has_labels(val_labels) and ks:
        # every k from one similarity matrix per query chunk (the same values as knn_accuracy at each k)
        found = knn_accuracies(train_feats, train_labels, val_feats, val_labels, ks=ks, temperature=knn_temperature)
        for i, k in enumerate(ks):
            key = "knn_acc" if i == 0 else f"knn_acc_k{k}"
            out[prefix + key] = found[k]
    out[prefix + "rankme"] = rankme(train_feats, max_samples=rankme_max_samples)
    out[prefix + "alpha_req"] = alpha_req(train_feats)
    out[prefix + "alpha_req_score"] = alpha_req_score(out[prefix + "alpha_req"])
    out[prefix + "uniformity"] = uniformity(train_feats)
    out[prefix + "feature_std"] = collapse_std(train_feats)
    return out


def _has_labels(labels: ArrayLike | None) -> bool:
    return labels is not None and bool((torch.as_tensor(labels) >= 0).any())
