"""VICReg (Bardes et al. 2022, ICLR): variance, invariance and covariance terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.losses._checks import _check_non_negative, _check_pair, _check_positive, _float
from raysl.losses.ops import _off_diagonal


def vicreg(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes et al. 2022, ICLR), as in Algorithm 1 / the official code.

    ::

        s(Z, Z')  = 1/(N D) sum_b ||z_b - z'_b||^2                      (invariance, MSE)
        v(Z)      = 1/D sum_j max(0, 1 - sqrt(Var(z^j) + eps))          (variance hinge, gamma = 1)
        C(Z)      = 1/(N-1) sum_b (z_b - zbar)(z_b - zbar)^T            (unbiased covariance)
        c(Z)      = 1/D sum_{i != j} C(Z)_ij^2                          (covariance)

        L = sim_weight * s(Z, Z')
            + var_weight * (v(Z) + v(Z')) / 2
            + cov_weight * (c(Z) + c(Z'))

    Var is the unbiased variance over the batch. The halved variance sum is
    the official implementation (facebookresearch/vicreg, ``main_vicreg.py``);
    the paper's Eq. (6) writes mu [v(Z) + v(Z')] without the 1/2, so our
    var_weight = 25 equals mu = 12.5 in the equation's form.

    Args:
        z1, z2: [N, D] expander outputs of the two views (N >= 2).
        sim_weight, var_weight, cov_weight: lambda, mu, nu (paper: 25, 25, 1).
        eps: added to the variance inside the square root.
    """
    fn = "vicreg"
    _check_pair(fn, z1, z2)
    _check_non_negative(fn, sim_weight=sim_weight, var_weight=var_weight, cov_weight=cov_weight)
    _check_positive(fn, "eps", eps)
    x, y = _float(z1), _float(z2)
    n, d = x.shape
    invariance = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    variance = F.relu(1.0 - std_x).mean() / 2 + F.relu(1.0 - std_y).mean() / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    covariance = _off_diagonal(cov_x).pow(2).sum() / d + _off_diagonal(cov_y).pow(2).sum() / d
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
