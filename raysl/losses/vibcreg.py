"""VIbCReg (Lee & Aune 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization
for Self-Supervised Learning on Time Series"): VICReg with a normalised covariance term.

The method whitens its projections with :func:`raysl.losses.ops.iternorm` first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.losses._checks import _check_non_negative, _check_pair, _check_positive, _float
from raysl.losses.ops import _off_diagonal


def vibcreg(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 200.0,
    eps: float = 1e-4,
) -> Tensor:
    """VIbCReg (Lee & Aune 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization
    for Self-Supervised Learning on Time Series", Eq. 1-4 and the authors' code)::

        s(Z, Z') = 1/(N D) sum_b ||z_b - z'_b||^2                      (invariance, MSE)
        v(Z)     = 1/D sum_j max(0, 1 - sqrt(Var(z^j) + eps))          (variance hinge, as VICReg)
        Zn       = columns of Z - zbar divided by their L2 norm
        c(Z)     = 1/D^2 sum_{i != j} (Zn^T Zn)_ij^2                   (normalised covariance = correlation)

        L = sim_weight * s + var_weight * (v(Z) + v(Z')) + cov_weight * (c(Z) + c(Z'))

    Var is unbiased. Unlike VICReg's covariance term, c(Z) is a correlation, in
    [0, 1) whatever the scale of Z, so its weight (200) does not have to track
    the variance of the embeddings. The method whitens the projector output with
    IterNorm (:func:`iternorm`) before this loss.

    Args:
        z1, z2: [N, D] (IterNorm-ed) projections of the two views (N >= 2).
        sim_weight, var_weight, cov_weight: lambda, mu, nu (paper: 25, 25, 200).
    """
    fn = "vibcreg"
    _check_pair(fn, z1, z2)
    _check_non_negative(fn, sim_weight=sim_weight, var_weight=var_weight, cov_weight=cov_weight)
    _check_positive(fn, "eps", eps)
    x, y = _float(z1), _float(z2)
    d = x.shape[1]
    invariance = F.mse_loss(x, y)

    def variance(z: Tensor) -> Tensor:
        return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()

    def covariance(z: Tensor) -> Tensor:
        zn = F.normalize(z - z.mean(dim=0), dim=0)
        return _off_diagonal(zn.T @ zn).pow(2).sum() / d**2

    return (sim_weight * invariance + var_weight * (variance(x) + variance(y))
            + cov_weight * (covariance(x) + covariance(y)))
