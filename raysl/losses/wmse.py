"""W-MSE (Ermolov, Siarohin, Sangineto & Sebe 2021, ICML): MSE between whitened views.

The whitening is :func:`raysl.losses.ops.whiten_cholesky`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _float, _stack_views
from raysl.losses.ops import whiten_cholesky


def w_mse(
    views: Sequence[Tensor] | Tensor, w_size: int = 128, eps: float = 0.0, perm: Tensor | None = None
) -> Tensor:
    """W-MSE loss (Ermolov, Siarohin, Sangineto & Sebe 2021, ICML, Eq. 5 and the authors' code).

    The N rows are split into sub-batches of ``w_size`` (rows ``perm`` in
    order, chunked; N // w_size chunks, sizes differing by at most one when
    w_size does not divide N; one chunk when N <= w_size). Each view of each
    sub-batch is whitened on its own (:func:`whiten_cholesky`), then::

        L = 1/|pairs| sum_{v < v'} 1/N sum_i || zhat_i^v / ||zhat_i^v|| - zhat_i^v' / ||zhat_i^v'|| ||^2
          = 1/|pairs| sum_{v < v'} (2 - 2/N sum_i cos(zhat_i^v, zhat_i^v'))

    Whitening scatters each view's embeddings (identity covariance), so no
    negatives are needed; the MSE between normalised vectors pulls the views
    of an image together.

    Args:
        views: V >= 2 views, a list of [N, D] or [V, N, D] (row i of every view is one image).
        w_size: sub-batch size for whitening (paper: 128 for CIFAR, > D).
        eps: shrinkage of the whitening (authors' code: 0).
        perm: [N] permutation of the rows that defines the sub-batches; None: rows in order.
    """
    fn = "w_mse"
    zs = _stack_views(fn, "views", views, min_views=2, min_batch=2)
    n = zs.shape[1]
    if not (isinstance(w_size, int) and w_size >= 2):
        raise LossInputError(f"{fn}: w_size must be an int >= 2, got {w_size!r}")
    if perm is None:
        perm = torch.arange(n, device=zs.device)
    elif not isinstance(perm, Tensor) or perm.shape != (n,) or not torch.equal(
        torch.sort(perm.cpu()).values, torch.arange(n)
    ):
        raise LossInputError(f"{fn}: perm must be a permutation of the {n} rows, got {perm!r:.80}")
    chunks = torch.tensor_split(perm.to(zs.device), max(1, n // w_size))
    whitened = torch.empty_like(_float(zs))
    for idx in chunks:
        for v in range(zs.shape[0]):
            whitened[v, idx] = whiten_cholesky(zs[v, idx], eps)
    unit = F.normalize(whitened, dim=-1)
    pairs = [(a, b) for a in range(zs.shape[0]) for b in range(a + 1, zs.shape[0])]
    return sum((unit[a] - unit[b]).pow(2).sum(dim=1).mean() for a, b in pairs) / len(pairs)
