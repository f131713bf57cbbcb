"""Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning", Eq. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_positive, _check_tensor, _shape, _stack_views, _unit


def supcon(views: Sequence[Tensor] | Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss ``L^sup_out`` (Khosla et al. 2020, "Supervised Contrastive Learning", Eq. 2).

    The V x N embeddings {z_i} of V views of N labelled samples are the anchors; for
    anchor i, ``A(i)`` is every other embedding and ``P(i)`` those of the same label
    (the other views of the sample and every view of the other samples of its class)::

        L = 1/|I| sum_{i in I} -1/|P(i)| sum_{p in P(i)} log  exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau)

    over the anchors I with at least one positive (with V >= 2, all of them). When every
    sample has its own label this is NT-Xent (:func:`nt_xent` with two views).

    Args:
        views: V >= 1 tensors [N, D] (or a [V, N, D] tensor); row i of each is sample i.
            Not necessarily normalised (done here).
        labels: [N] integer class of each sample (any integers; equal means same class).
        temperature: tau > 0 (paper: 0.1).
    """
    fn = "supcon"
    z = _stack_views(fn, "views", views, min_views=1, min_batch=1)
    v, n, d = z.shape
    y = _check_tensor(fn, "labels", labels, 1)
    if y.shape[0] != n or y.is_floating_point() or y.is_complex():
        raise LossInputError(f"{fn}: labels must be an integer tensor of shape [{n}], got {y.dtype} {_shape(y)}")
    _check_positive(fn, "temperature", temperature)
    u = _unit(z.reshape(v * n, d))
    y = y.to(u.device).repeat(v)  # row k is view k // n of sample k % n
    self_mask = torch.eye(v * n, dtype=torch.bool, device=u.device)
    logits = (u @ u.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    count = positive.sum(dim=1)
    anchors = count > 0
    if not bool(anchors.any()):
        raise LossInputError(f"{fn}: no anchor has a positive (one view, every label distinct); pass two views")
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors] / count[anchors]
    return -mean_positive.mean()
