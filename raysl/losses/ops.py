"""Numeric building blocks that are not losses themselves.

- correlation helpers: the off-diagonal of a square matrix and the
  BatchNorm-style per-dimension standardisation (Barlow Twins, Mixed Barlow
  Twins, VICReg, VIbCReg);
- whitening: :func:`whiten_cholesky` (W-MSE's ``Whitening2d``, Ermolov et al.
  2021) and :func:`iternorm` (IterNorm, Huang et al. 2019, CVPR, used by
  VIbCReg);
- clustering: :func:`sinkhorn_knopp` (SwAV's codes, Caron et al. 2020) and
  :func:`spherical_kmeans` (DeepCluster v2's memory-bank k-means, Caron et
  al. 2020, appendix).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import (
    _check_batch,
    _check_fraction,
    _check_non_negative,
    _check_positive,
    _check_tensor,
    _float,
    _unit,
)

# nn.BatchNorm1d's default eps; Barlow Twins' official code standardises with it.
_BN_EPS = 1e-5


def _off_diagonal(m: Tensor) -> Tensor:
    return m[~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)]


def _standardize(z: Tensor, eps: float = _BN_EPS) -> Tensor:
    """Per-dimension (z - mean) / sqrt(var + eps), biased variance: BatchNorm1d(affine=False) in training mode."""
    z = _float(z)
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + eps)


# --------------------------------------------------------------------------
# whitening: Cholesky (W-MSE) and IterNorm (VIbCReg)
# --------------------------------------------------------------------------


def whiten_cholesky(x: Tensor, eps: float = 0.0) -> Tensor:
    """Cholesky whitening of a batch (W-MSE's ``Whitening2d``, Ermolov et al. 2021, Sec. 3)::

        C   = 1/(N-1) sum_i (x_i - xbar)(x_i - xbar)^T        (unbiased covariance)
        C_e = (1 - eps) C + eps I = L L^T                    (shrinkage; Cholesky factor L)
        z_i = L^{-1} (x_i - xbar)

    With eps = 0 the output has covariance exactly I. The result is unchanged
    by x -> A x for a lower-triangular A with a positive diagonal (then L -> A L,
    e.g. a positive per-dimension scale) and by a shift; for any invertible A
    (a rotation) it changes by an orthogonal map, so its Gram matrix z z^T is
    unchanged. Computed in float64 (an inverse of a covariance), returned in
    x's float precision.

    Args:
        x: [N, D], N >= 2; with eps = 0 it needs N > D (a full-rank covariance).
        eps: shrinkage towards I in [0, 1].
    """
    fn = "whiten_cholesky"
    _check_tensor(fn, "x", x, 2)
    _check_batch(fn, x.shape[0], 2)
    _check_fraction(fn, "eps", eps)
    out_dtype = _float(x).dtype
    x64 = x.double()
    n, d = x64.shape
    xc = x64 - x64.mean(dim=0)
    eye = torch.eye(d, dtype=torch.float64, device=x.device)
    cov = (1.0 - eps) * (xc.T @ xc) / (n - 1) + eps * eye
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise LossInputError(
            f"{fn}: the covariance of {n} rows of width {d} is singular (eps={eps}); whitening needs more rows "
            "than dimensions (a larger w_size or batch, a smaller projector_dim) or eps > 0"
        )
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False)  # L^{-1}
    return (xc @ inverse.T).to(out_dtype)


def iternorm(x: Tensor, num_groups: int = 64, iterations: int = 5, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Iterative normalisation (IterNorm, Huang et al. 2019, CVPR, Algorithm 1), in training mode.

    The D features are split into ``num_groups`` groups of D / num_groups;
    for each group, with X_c the centred [N, d] block::

        S   = eps I + 1/N X_c^T X_c,          S_N = S / tr(S)
        P_0 = I,  P_k = 1/2 (3 P_{k-1} - P_{k-1}^3 S_N)    (k = 1..T, Newton's iteration for S_N^{-1/2})
        W   = P_T / sqrt(tr(S)),               xhat_i = W (x_i - xbar)

    P_T converges to S_N^{-1/2}, so W to S^{-1/2} (ZCA whitening), as T grows;
    a few iterations whiten the large eigen-directions and leave the small
    ones partly unwhitened (and many iterations on an ill-conditioned S amplify
    rounding errors: Newton's iteration is only conditionally stable, Higham
    1986). W is a polynomial of S, so a rotation of the features within a
    group rotates the output the same way.

    Returns:
        (xhat [N, D], the batch mean [D], the whitening matrices W [G, d, d]) - the
        latter two for running estimates.
    """
    fn = "iternorm"
    _check_tensor(fn, "x", x, 2)
    _check_batch(fn, x.shape[0], 2)
    n, d = x.shape
    if not (isinstance(num_groups, int) and 1 <= num_groups <= d and d % num_groups == 0):
        raise LossInputError(f"{fn}: num_groups must divide the width {d}, got {num_groups!r}")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise LossInputError(f"{fn}: iterations must be an int >= 1, got {iterations!r}")
    _check_non_negative(fn, eps=eps)
    xf = _float(x)
    # the Newton iteration in (at least) float32 also under bf16 autocast: its matmuls would round to 8 bits
    with torch.autocast(device_type=x.device.type, enabled=False):
        mean = xf.mean(dim=0)
        xc = (xf - mean).reshape(n, num_groups, d // num_groups).transpose(0, 1)  # [G, N, d]
        eye = torch.eye(d // num_groups, dtype=xf.dtype, device=x.device)
        cov = eps * eye + xc.transpose(1, 2) @ xc / n  # [G, d, d]
        trace = cov.diagonal(dim1=1, dim2=2).sum(dim=1).reshape(-1, 1, 1)
        cov_n = cov / trace
        p = eye.expand_as(cov)
        for _ in range(iterations):
            p = 0.5 * (3.0 * p - p @ p @ p @ cov_n)
        w = p / trace.sqrt()
        out = (xc @ w.transpose(1, 2)).transpose(0, 1).reshape(n, d)
    return out, mean, w


# --------------------------------------------------------------------------
# clustering: Sinkhorn-Knopp codes (SwAV), spherical k-means (DeepCluster v2)
# --------------------------------------------------------------------------


def sinkhorn_knopp(
    scores: Tensor,
    iterations: int = 3,
    epsilon: float = 0.05,
    all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Soft codes of SwAV's online clustering (Caron et al. 2020, Eq. 3 and Algorithm 1).

    With C the K prototypes and Z the B embeddings of the *global* batch, the codes
    Q maximise Tr(Q^T C^T Z) + epsilon H(Q) over the transportation polytope (each
    prototype gets B/K of the mass, each sample 1). Starting from
    ``Q = exp(C^T Z / epsilon)`` ([K, B]) normalised to sum 1, every iteration
    alternates::

        Q <- Q / (K * row sums)     each prototype's total mass -> 1/K
        Q <- Q / (B * column sums)  each sample's total mass   -> 1/B

    and the result is ``B * Q`` transposed: each sample's code sums to 1 exactly,
    each prototype's column of codes to about B/K (exactly at convergence).

    The batch may be split over workers, as in the paper's ``distributed_sinkhorn``:
    each worker passes its own rows and ``all_reduce_sum`` (a sum over workers, no
    gradient) sums the total and the per-prototype row sums inside the iterations; B
    is the global batch. The column sums are per sample, so they stay local. Rows of
    other data (SwAV's queue) are simply more rows here; pass each of them on one
    worker only.

    Args:
        scores: [N, K] prototype scores (cosines) of this worker's rows.
        iterations: Sinkhorn iterations (paper: 3).
        epsilon: entropy weight, > 0 (paper: 0.05). Computed in float64: exp(1 / 0.01)
            would overflow float32.
        all_reduce_sum: sums a tensor over workers; None on one worker.

    Returns:
        [N, K] codes (float64, no gradient), each row summing to 1.
    """
    fn = "sinkhorn_knopp"
    _check_tensor(fn, "scores", scores, 2)
    _check_batch(fn, scores.shape[0], 1)
    _check_positive(fn, "epsilon", epsilon)
    if not (isinstance(iterations, int) and iterations >= 1):
        raise LossInputError(f"{fn}: iterations must be an integer >= 1, got {iterations!r}")
    reduce = all_reduce_sum or (lambda x: x)
    with torch.no_grad():
        q = torch.exp(scores.detach().to(torch.float64) / epsilon).T  # [K, N]
        k = q.shape[0]
        b = reduce(torch.tensor(float(q.shape[1]), dtype=torch.float64, device=q.device))
        q = q / reduce(q.sum())
        for _ in range(iterations):
            q = q / reduce(q.sum(dim=1, keepdim=True)) / k
            q = q / q.sum(dim=0, keepdim=True) / b
        return (q * b).T


# rows of the bank compared with the centroids at a time (65536 x 3000 float32 scores: 0.8 GB)
_KMEANS_CHUNK = 65536


def spherical_kmeans(
    x: Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """K-means on the unit sphere, as DeepCluster v2 clusters its memory bank (Caron et al. 2020, appendix).

    The centroids start at ``k`` distinct rows of x drawn with ``generator`` (on the CPU,
    so every worker that passes the same seed draws the same rows); each iteration
    assigns every row to its most similar centroid (largest dot product) and moves each
    centroid to the normalised sum (the mean's direction) of its rows; a centroid without
    rows stays where it is. A last assignment step follows the last update::

        a_i = argmax_j <x_i, c_j>,    c_j <- (sum_{i: a_i = j} x_i) / ||sum_{i: a_i = j} x_i||

    Args:
        x: [M, D] rows (L2-normalised here), M >= k.
        k: number of clusters >= 1.
        iterations: centroid updates (solo-learn: 10).
        generator: seeds the initial centroids.

    Returns:
        (centroids [k, D] unit rows, assignments [M] in [0, k)), no gradient.
    """
    fn = "spherical_kmeans"
    _check_tensor(fn, "x", x, 2)
    if not (isinstance(k, int) and 1 <= k <= x.shape[0]):
        raise LossInputError(f"{fn}: k must be an integer in [1, {x.shape[0]}] (the rows of x), got {k!r}")
    if not (isinstance(iterations, int) and iterations >= 0):
        raise LossInputError(f"{fn}: iterations must be an integer >= 0, got {iterations!r}")
    with torch.no_grad():
        x = _unit(x.detach())
        first = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
        centroids = x[first].clone()
        for step in range(iterations + 1):
            # in chunks of rows: a data set's bank against thousands of centroids would not fit at once
            assignments = torch.cat([(part @ centroids.T).argmax(dim=1) for part in x.split(_KMEANS_CHUNK)])
            if step == iterations:
                break
            sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
            counts = torch.bincount(assignments, minlength=k)
            moved = counts > 0
            centroids[moved] = F.normalize(sums[moved], dim=1)
        return centroids, assignments
