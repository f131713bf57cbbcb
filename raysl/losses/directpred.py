"""DirectPred's moving-average correlation and the predictor set from it.

Tian, Chen and Ganguli 2021 (ICML), "Understanding self-supervised learning
dynamics without contrastive pairs", Sec. 5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_batch, _check_fraction, _check_positive, _check_tensor, _float, _shape


def directpred_correlation_update(corr: Tensor | None, z: Tensor, rho: float = 0.3) -> Tensor:
    """Moving-average correlation of DirectPred (Tian et al. 2021, Sec. 5).

    ::

        F <- rho F + (1 - rho) E_B[f f^T]

    over the (detached) online projections f of the batch, all views stacked
    into z. With corr=None (first step) the batch estimate is returned.

    Args:
        corr: [D, D] current estimate, or None.
        z: [N, D] online projections (all views of the batch).
        rho: moving-average weight of the old estimate in [0, 1] (paper: 0.3).
    """
    fn = "directpred_correlation_update"
    _check_tensor(fn, "z", z, 2)
    _check_batch(fn, z.shape[0], 1)
    _check_fraction(fn, "rho", rho)
    with torch.no_grad():
        f = _float(z.detach())
        batch = f.T @ f / f.shape[0]
        if corr is None:
            return batch
        _check_tensor(fn, "corr", corr, 2)
        if corr.shape != batch.shape:
            raise LossInputError(f"{fn}: corr must have shape {_shape(batch)}, got {_shape(corr)}")
        return rho * corr.detach().to(batch.dtype) + (1.0 - rho) * batch


def directpred_predictor(corr: Tensor, alpha: float = 0.5, eps: float = 0.1) -> Tensor:
    """DirectPred's linear predictor from the projection correlation.

    Tian, Chen and Ganguli 2021 (ICML), "Understanding self-supervised
    learning dynamics without contrastive pairs", Sec. 5 (DirectPred), in the
    ``boost_scale`` form of the authors' code (facebookresearch/luckmatters)::

        F = U diag(s_1..s_d) U^T                     (eigen-decomposition, F symmetric PSD)
        p_j = (max(s_j, 0) / max_j' s_j')^alpha + eps
        W_p = U diag(p) U^T

    alpha = 1/2 is the paper's square root (W_p = F^{1/2} up to scale, the
    fixed point the analysis predicts); eps boosts weak eigendirections so
    they keep learning (paper: 0.1). p_j is clamped to >= 1e-4 as in the
    reference code. The caller copies the result into the predictor weight
    every ``freq`` steps.

    Args:
        corr: [D, D] moving-average correlation F (see
            :func:`directpred_correlation_update`); symmetrised here.
        alpha: exponent applied to the normalised eigenvalues, > 0.
        eps: added to every p_j (may be 0).

    Returns:
        [D, D] predictor weight W_p.
    """
    fn = "directpred_predictor"
    _check_tensor(fn, "corr", corr, 2)
    if corr.shape[0] != corr.shape[1]:
        raise LossInputError(f"{fn}: corr must be a square [D, D] matrix, got shape {_shape(corr)}")
    _check_positive(fn, "alpha", alpha)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)):
        raise LossInputError(f"{fn}: eps must be a finite number, got {eps!r}")
    with torch.no_grad():
        f = _float(corr.detach())
        if not bool(torch.isfinite(f).all()):
            raise LossInputError(f"{fn}: corr contains NaN or infinite values")
        s, u = torch.linalg.eigh((f + f.T) / 2)
        top = s.max()
        if top <= 0:
            raise LossInputError(
                f"{fn}: corr has no positive eigenvalue (max {top.item():.3g}); "
                "it must be a correlation of non-zero projections"
            )
        p = (s.clamp(min=0) / top).pow(alpha) + eps
        p = p.clamp(min=1e-4)
        return (u * p) @ u.T
