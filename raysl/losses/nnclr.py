"""Nearest neighbours in a support set and NNCLR's contrastive loss.

Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations". :func:`nearest_neighbour`
also serves NNBYOL and NNSiam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_pair, _check_positive, _check_tensor, _shape, _unit


def nearest_neighbour(z: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's nearest neighbour in a support set, by cosine similarity (NNCLR's ``NN(z, Q)``).

    Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
    Contrastive Learning of Visual Representations", Eq. 2::

        NN(z, Q) = argmin_{q in Q} || z - q ||_2     (z, q unit vectors: argmax_q sim(z, q))

    Ties go to the lowest support index. The lookup is row-wise: the neighbour of a row
    depends only on that row and Q, so looking up each worker's rows in the same Q and
    gathering equals looking up the gathered batch.

    Args:
        z: [N, D] query embeddings (need not be normalised).
        support: [K, D] support set, K >= 1 (need not be normalised).

    Returns:
        (the support rows [N, D] as stored, detached; their indices [N] into ``support``).
    """
    fn = "nearest_neighbour"
    _check_tensor(fn, "z", z, 2)
    _check_tensor(fn, "support", support, 2)
    if support.shape[0] < 1 or support.shape[1] != z.shape[1]:
        raise LossInputError(f"{fn}: support must have shape [K, {z.shape[1]}] with K >= 1, got {_shape(support)}")
    with torch.no_grad():
        idx = (_unit(z.detach()) @ _unit(support.detach()).T).argmax(dim=1)
        return support.detach()[idx], idx


def nnclr(nn: Tensor, p: Tensor, temperature: float = 0.1, symmetric: bool = True) -> Tensor:
    """NNCLR's contrastive loss: each sample's support-set neighbour against the other view's prediction.

    Dwibedi et al. 2021, Eq. 2 and the symmetric term of Sec. 3.2. With ``n_i = NN(z_i, Q)``
    (the neighbour of one view's projection, a constant) and ``p_i`` the other view's
    prediction, over the N samples of the (global) batch::

        rows:     l_i = -log  exp(n_i . p_i / tau) / sum_k exp(n_i . p_k / tau)
        columns:  l'_i = -log exp(n_i . p_i / tau) / sum_k exp(n_k . p_i / tau)

        L = 1/N sum_i l_i                      (symmetric=False)
        L = 1/(2N) sum_i (l_i + l'_i)          (symmetric=True, the paper's default)

    n and p are L2-normalised here; the caller symmetrises over the two views
    (``(nnclr(n1, p2) + nnclr(n2, p1)) / 2``).

    Args:
        nn: [N, D] nearest neighbours (treated as constants).
        p: [N, D] predictions of the other view, row i from the same sample as nn's row i.
        temperature: tau > 0 (paper: 0.1).
    """
    fn = "nnclr"
    _check_pair(fn, nn, p, names=("nn", "p"))
    _check_positive(fn, "temperature", temperature)
    logits = _unit(nn.detach()) @ _unit(p).T / temperature
    labels = torch.arange(p.shape[0], device=p.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss
