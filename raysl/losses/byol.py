"""BYOL's regression loss (Grill et al. 2020, Eq. 2), two-view and multi-crop.

Also the loss of DirectPred and NNBYOL.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_pair, _unit


def byol(p: Tensor, z: Tensor) -> Tensor:
    """BYOL regression loss (Grill et al. 2020, Eq. 2), averaged over the batch.

    ::

        L = 1/N sum_i || p_i/||p_i|| - z_i/||z_i|| ||^2 = 1/N sum_i (2 - 2 cos(p_i, z_i))

    p is the online prediction, z the target projection; the caller detaches
    z (stop-gradient) and symmetrises over the two views. Any batch size >= 1.
    """
    fn = "byol"
    _check_pair(fn, p, z, min_batch=1, names=("p", "z"))
    return (2.0 - 2.0 * (_unit(p) * _unit(z)).sum(dim=1)).mean()


def byol_multicrop(predictions: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """BYOL over several crops: every crop predicts the teacher's projection of every *other* global crop.

    ``targets`` are the teacher's projections z_g of the V_t global crops;
    ``predictions`` the online predictions p_j of all V_s crops, the global
    ones first in the same order (then the local crops, which the teacher
    never sees)::

        L = 1/|pairs| sum_{g < V_t} sum_{j < V_s, j != g} byol(p_j, z_g)

    with :func:`byol` the batch-mean ``2 - 2 cos``. With two crops this is
    BYOL's symmetrised loss ``(byol(p_2, z_1) + byol(p_1, z_2)) / 2``. The
    caller detaches the targets. Crops may come from inputs of different
    sizes; every [N, D] must match.
    """
    fn = "byol_multicrop"
    for name, crops in (("predictions", predictions), ("targets", targets)):
        if not isinstance(crops, (list, tuple)) or not crops:
            raise LossInputError(f"{fn}: {name} must be a non-empty list of [N, D] tensors, got {crops!r:.80}")
    if len(targets) > len(predictions):
        raise LossInputError(
            f"{fn}: {len(targets)} targets but {len(predictions)} predictions; every target crop "
            "(global) is also a predicted crop, so predictions needs at least as many"
        )
    pairs = [(g, j) for g in range(len(targets)) for j in range(len(predictions)) if j != g]
    if not pairs:
        raise LossInputError(f"{fn}: needs at least two crops, got {len(predictions)}")
    total = sum(byol(predictions[j], targets[g]) for g, j in pairs)
    return total / len(pairs)
