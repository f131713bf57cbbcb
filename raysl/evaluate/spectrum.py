"""Label-free measures of the features' spectrum: RankMe (effective rank) and alpha-ReQ (eigenspectrum
decay), with alpha-ReQ's score as an objective."""

from __future__ import annotations

import math

import torch

from raysl.evaluate.inputs import ArrayLike, as_features


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
    z = as_features(embeddings, "embeddings")[:max_samples]
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
    z = as_features(embeddings, "embeddings")[:max_samples]
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
