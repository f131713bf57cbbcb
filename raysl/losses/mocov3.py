"""MoCo v3's contrastive loss (Chen, Xie & He 2021, Algorithm 1): the batch's keys are the negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_batch, _check_positive, _check_tensor, _shape, _unit


def mocov3(q: Tensor, k: Tensor, temperature: float = 0.2, offset: int = 0) -> Tensor:
    """MoCo v3's contrastive loss ``ctr(q, k)`` (Chen, Xie & He 2021, Algorithm 1).

    The keys of the batch are the negatives (no queue); query i's positive is
    key ``offset + i``::

        ctr(q, k) = 2 tau * 1/n sum_i -log  exp(q_i . k_{offset+i} / tau) / sum_j exp(q_i . k_j / tau)

    q and k are L2-normalised here; the factor 2 tau is the paper's (it keeps
    the gradient scale independent of tau). The method sums the two directions,
    ``ctr(q1, k2) + ctr(q2, k1)``, as Algorithm 1 does.

    Distributed: ``q`` is a worker's own n queries, ``k`` the keys of the
    global batch (all workers' momentum-encoder keys, gathered, in rank order)
    and ``offset = rank * n``: every query sees every key as in one process.
    The keys are constants (the momentum encoder has no gradient).

    Args:
        q: [n, D] queries (online encoder + predictor).
        k: [M, D] keys (momentum encoder), M >= offset + n.
        temperature: tau > 0 (paper: 0.2).
        offset: row of ``k`` holding the positive of ``q[0]``.
    """
    fn = "mocov3"
    _check_tensor(fn, "q", q, 2)
    _check_tensor(fn, "k", k, 2)
    _check_batch(fn, q.shape[0], 1)
    if k.shape[1] != q.shape[1]:
        raise LossInputError(f"{fn}: q and k must have the same width, got {_shape(q)} and {_shape(k)}")
    if not (isinstance(offset, int) and 0 <= offset and offset + q.shape[0] <= k.shape[0]):
        raise LossInputError(
            f"{fn}: offset must be an int with 0 <= offset and offset + {q.shape[0]} <= {k.shape[0]} keys, "
            f"got {offset!r}"
        )
    _check_positive(fn, "temperature", temperature)
    logits = _unit(q) @ _unit(k.detach()).T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return 2.0 * temperature * F.cross_entropy(logits, labels)
