"""DeepCluster v2's loss (Caron et al. 2020, appendix; solo-learn's ``deepclusterv2_loss_func``).

The assignments come from :func:`raysl.losses.ops.spherical_kmeans`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_positive, _check_tensor, _crops, _float, _shape


def deepclusterv2(
    scores: Sequence[Sequence[Tensor]], assignments: Tensor, temperature: float = 0.1
) -> Tensor:
    """DeepCluster v2's loss (Caron et al. 2020, appendix; solo-learn's ``deepclusterv2_loss_func``).

    For each clustering h (its own prototypes C_h: the k-means centroids of the memory
    bank) and each view v, the prototype scores of sample n are a classifier trained to
    predict the sample's k-means assignment a_h[n]::

        L = 1/H sum_h  mean_{v, n: a_h[n] >= 0}  -log softmax(z_{v,n}^T C_h / tau)[a_h[n]]

    Samples without an assignment (-1: not in the clustered bank yet) are left out; with
    none at all the loss is 0 (with a graph, so every parameter gets a zero gradient).

    Args:
        scores: scores[h][v], [N, K_h] per clustering h and view v.
        assignments: [H, N] long, the k-means cluster of each sample in each clustering, -1 for none.
        temperature: tau > 0 (paper: 0.1).
    """
    fn = "deepclusterv2"
    _check_positive(fn, "temperature", temperature)
    if not isinstance(scores, (list, tuple)) or not scores:
        raise LossInputError(f"{fn}: scores must be a non-empty list (one entry per clustering) of lists of views")
    _check_tensor(fn, "assignments", assignments, 2)
    if assignments.shape[0] != len(scores):
        raise LossInputError(
            f"{fn}: assignments must have one row per clustering ({len(scores)}), got shape {_shape(assignments)}"
        )
    total = 0.0
    for h, views in enumerate(scores):
        heads = _crops(fn, f"scores[{h}]", views)
        targets = assignments[h].long()
        for v, s in enumerate(heads):
            if s.shape[0] != targets.shape[0]:
                raise LossInputError(
                    f"{fn}: scores[{h}][{v}] has {s.shape[0]} rows, assignments {targets.shape[0]} columns"
                )
            if bool((targets >= s.shape[1]).any()):
                raise LossInputError(f"{fn}: an assignment of clustering {h} is >= its {s.shape[1]} prototypes")
        logits = torch.cat([_float(s) for s in heads]) / temperature
        labels = targets.repeat(len(heads))
        known = labels >= 0
        if bool(known.any()):
            total = total + F.cross_entropy(logits[known], labels[known])
        else:
            total = total + 0.0 * logits.sum()
    return total / len(scores)
