"""Barlow Twins and the Mixed Barlow Twins regulariser.

- :func:`barlow_twins`: Zbontar et al. 2021, Eq. 1, Algorithm 1.
- :func:`mixed_barlow_regularizer`: Bandara et al. 2023, "Guarding Barlow
  Twins Against Overfitting with Mixed Samples" (arXiv 2312.02151).
"""

from __future__ import annotations

import torch
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_fraction, _check_non_negative, _check_pair, _check_tensor, _shape
from raysl.losses.ops import _off_diagonal, _standardize


def barlow_twins(z1: Tensor, z2: Tensor, lambd: float = 0.0051) -> Tensor:
    """Barlow Twins redundancy-reduction loss (Zbontar et al. 2021, Eq. 1, Algorithm 1).

    Each dimension is standardised over the batch, then::

        C_ij = sum_b z1n_{b,i} z2n_{b,j} / N
        L_BT = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

    Standardisation follows the official code, ``nn.BatchNorm1d(D,
    affine=False)`` in training mode: (z - mean) / sqrt(var + 1e-5) with the
    biased (1/N) variance. (Algorithm 1's pseudo-code writes ``z.std(0)``,
    which in PyTorch is the unbiased estimate; the two differ by a factor
    (N-1)/N in C.) The loss-scale factor some implementations multiply in is
    *not* part of this function; the method applies its configured scale.

    Args:
        z1, z2: [N, D] projector outputs of the two views (N >= 2).
        lambd: weight of the off-diagonal (redundancy) term, >= 0.
    """
    fn = "barlow_twins"
    _check_pair(fn, z1, z2)
    _check_non_negative(fn, lambd=lambd)
    n = z1.shape[0]
    c = _standardize(z1).T @ _standardize(z2) / n
    on_diag = (torch.diagonal(c) - 1.0).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def mixed_barlow_regularizer(
    z1: Tensor,
    z2: Tensor,
    z_mixed: Tensor,
    mix_lambda: float,
    lambd: float,
    perm: Tensor | None = None,
) -> Tensor:
    """Mixed-sample regulariser of Mixed Barlow Twins.

    Bandara et al. 2023, "Guarding Barlow Twins Against Overfitting with Mixed
    Samples" (arXiv 2312.02151), Sec. 3 / official code ``wgcban/mix-bt``.
    The mixed input is y_M = l * y_A + (1 - l) * y_B[perm] (MixUp of the two
    augmented batches, l = ``mix_lambda`` ~ Beta(1, 1)); assuming the network
    is linear between input and embedding space, the cross-correlation of
    the mixed embeddings with each view should interpolate linearly::

        C^{MA}    = z_M^T z_A / N
        C^{MA}_gt = l * z_A^T z_A / N + (1 - l) * z_B[perm]^T z_A / N
        C^{MB}    = z_M^T z_B / N
        C^{MB}_gt = l * z_A^T z_B / N + (1 - l) * z_B[perm]^T z_B / N

        L_reg = lambda_BT * ( ||C^{MA} - C^{MA}_gt||_F^2 + ||C^{MB} - C^{MB}_gt||_F^2 )

    with every z standardised per dimension over the batch (as in
    :func:`barlow_twins`). The method adds ``weight * L_reg`` to the Barlow
    Twins loss. This is the CIFAR/STL training script's form
    (``main.py``); the repository's ImageNet script differs in two places
    (an extra factor 1/2, and z_B^T z_B instead of z_A^T z_B in C^{MB}_gt),
    which we do not follow since it breaks the linear-interpolation argument.
    The official code standardises with the unbiased std and no eps; we use
    the same BatchNorm-style standardisation as :func:`barlow_twins`.

    Args:
        z1, z2: [N, D] embeddings of the two views (z_A, z_B), N >= 2.
        z_mixed: [N, D] embeddings of the mixed inputs (z_M).
        mix_lambda: l in [0, 1], the MixUp coefficient used for the inputs.
        lambd: the Barlow Twins off-diagonal weight (lambda_BT), >= 0.
        perm: optional [N] permutation applied to view 2 when mixing
            (``y_B[perm]``); None means the identity.
    """
    fn = "mixed_barlow_regularizer"
    _check_pair(fn, z1, z2)
    _check_pair(fn, z1, z_mixed, names=("z1", "z_mixed"))
    _check_fraction(fn, "mix_lambda", mix_lambda)
    _check_non_negative(fn, lambd=lambd)
    n = z1.shape[0]
    if perm is not None:
        _check_tensor(fn, "perm", perm, 1)
        ok = perm.shape[0] == n and bool(
            (torch.sort(perm.detach().cpu()).values == torch.arange(n)).all()
        )
        if not ok:
            raise LossInputError(f"{fn}: perm must be a permutation of 0..{n - 1}, got shape {_shape(perm)}")
    a, b, m = _standardize(z1), _standardize(z2), _standardize(z_mixed)
    b_mixed = b if perm is None else b[perm]
    c_ma = m.T @ a / n
    c_ma_gt = (mix_lambda * (a.T @ a) + (1.0 - mix_lambda) * (b_mixed.T @ a)) / n
    c_mb = m.T @ b / n
    c_mb_gt = (mix_lambda * (a.T @ b) + (1.0 - mix_lambda) * (b_mixed.T @ b)) / n
    return lambd * ((c_ma - c_ma_gt).pow(2).sum() + (c_mb - c_mb_gt).pow(2).sum())
