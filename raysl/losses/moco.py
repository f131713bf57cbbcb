"""MoCo's InfoNCE with a queue of negatives and MoCHi's hard negative mixing.

- :func:`moco`: He et al. 2020 (MoCo), Eq. (1); Chen et al. 2020 (MoCo v2).
- :func:`mochi_negatives`: Kalantidis et al. 2020 (NeurIPS), "Hard Negative
  Mixing for Contrastive Learning", Sec. 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_batch, _check_pair, _check_positive, _check_tensor, _shape, _unit


def moco(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    temperature: float = 0.2,
    extra_negatives: Tensor | None = None,
) -> Tensor:
    """InfoNCE with a queue of negatives, as in MoCo.

    He et al. 2020 (MoCo), Eq. (1); Chen et al. 2020 (MoCo v2)::

        L_q = -log  exp(q . k+ / tau) / ( exp(q . k+ / tau) + sum_{k- in queue} exp(q . k- / tau) )

    i.e. cross entropy over [positive, K negatives] with label 0, averaged
    over the N queries. q, k, the queue and any extra negatives are
    L2-normalised here. The key k should come from the momentum encoder and be
    detached by the caller; the queue is treated as constant.

    ``extra_negatives`` are per-query negatives, e.g. MoCHi's synthetic hard
    negatives from :func:`mochi_negatives`; they join the denominator of
    their own query only.

    Args:
        q: [N, D] queries (online encoder).
        k: [N, D] positive keys (momentum encoder).
        queue: [K, D] negative keys, K >= 1.
        temperature: tau > 0 (MoCo v2: 0.2).
        extra_negatives: optional [N, M, D] per-query negatives.
    """
    fn = "moco"
    _check_pair(fn, q, k, min_batch=1, names=("q", "k"))
    _check_tensor(fn, "queue", queue, 2)
    if queue.shape[1] != q.shape[1] or queue.shape[0] < 1:
        raise LossInputError(
            f"{fn}: queue must have shape [K, {q.shape[1]}] with K >= 1, got {_shape(queue)}"
        )
    _check_positive(fn, "temperature", temperature)
    uq, uk, uqueue = _unit(q), _unit(k), _unit(queue.detach())
    positive = (uq * uk).sum(dim=1, keepdim=True)
    negative = uq @ uqueue.T
    parts = [positive, negative]
    if extra_negatives is not None:
        _check_tensor(fn, "extra_negatives", extra_negatives, 3)
        if extra_negatives.shape[0] != q.shape[0] or extra_negatives.shape[2] != q.shape[1]:
            raise LossInputError(
                f"{fn}: extra_negatives must have shape [{q.shape[0]}, M, {q.shape[1]}], "
                f"got {_shape(extra_negatives)}"
            )
        extra = _unit(extra_negatives)
        parts.append(torch.einsum("nd,nmd->nm", uq, extra))
    logits = torch.cat(parts, dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def mochi_negatives(
    q: Tensor,
    queue: Tensor,
    n_hard: int = 1024,
    s: int = 1024,
    s_prime: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Synthetic hard negatives by mixing (MoCHi).

    Kalantidis et al. 2020 (NeurIPS), "Hard Negative Mixing for Contrastive
    Learning", Sec. 4. For each query q, sort the queue by similarity to q and
    keep the N hardest negatives Q^N (``n_hard``). Then synthesise::

        s  mixes of two hard negatives:  h_k  = h~_k / ||h~_k||,
             h~_k  = alpha_k n_i + (1 - alpha_k) n_j,   n_i, n_j in Q^N, alpha_k in (0, 1)
        s' mixes with the query:         h'_k = h~'_k / ||h~'_k||,
             h~'_k = beta_k q + (1 - beta_k) n_j,       n_j in Q^N,     beta_k in (0, 0.5)

    n_i, n_j are drawn uniformly (with replacement) from Q^N and alpha, beta
    uniformly from their intervals, independently per query. The synthetic
    points are computed without gradient (the query enters as a constant) and
    are used only as extra negatives of their own query, never enqueued; pass
    them to :func:`moco` as ``extra_negatives``.

    Args:
        q: [N, D] queries.
        queue: [K, D] negatives; K >= n_hard.
        n_hard: N, how many of the hardest negatives to mix (paper: 1024 on
            ImageNet-100 with K = 16384).
        s: number of negative-negative mixes per query (>= 0).
        s_prime: number of query-negative mixes per query (>= 0).
        generator: optional torch.Generator for reproducible draws (on q's device).

    Returns:
        [N, s + s_prime, D] unit-norm synthetic negatives (detached).
    """
    fn = "mochi_negatives"
    _check_tensor(fn, "q", q, 2)
    _check_tensor(fn, "queue", queue, 2)
    if queue.shape[1] != q.shape[1]:
        raise LossInputError(
            f"{fn}: q and queue must have the same width D, got {_shape(q)} and {_shape(queue)}"
        )
    _check_batch(fn, q.shape[0], 1)
    for name, value in (("n_hard", n_hard), ("s", s), ("s_prime", s_prime)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LossInputError(f"{fn}: {name} must be a non-negative integer, got {value!r}")
    if n_hard < 1:
        raise LossInputError(f"{fn}: n_hard must be at least 1, got {n_hard}")
    if n_hard > queue.shape[0]:
        raise LossInputError(
            f"{fn}: n_hard ({n_hard}) exceeds the queue length ({queue.shape[0]}); "
            "lower mochi n_hard or enlarge the queue"
        )
    with torch.no_grad():
        uq, uqueue = _unit(q.detach()), _unit(queue.detach())
        n, d = uq.shape
        hardest = (uq @ uqueue.T).topk(n_hard, dim=1).indices  # [N, n_hard]
        hard = uqueue[hardest]  # [N, n_hard, D]
        rows = torch.arange(n, device=uq.device)[:, None]

        def draw_index(count: int) -> Tensor:
            pick = torch.randint(0, n_hard, (n, count), generator=generator, device=uq.device)
            return hard[rows, pick]  # [N, count, D]

        def draw_uniform(count: int, high: float) -> Tensor:
            return high * torch.rand(n, count, 1, generator=generator, device=uq.device, dtype=uq.dtype)

        mixes = []
        if s > 0:
            alpha = draw_uniform(s, 1.0)
            mixes.append(F.normalize(alpha * draw_index(s) + (1 - alpha) * draw_index(s), dim=-1))
        if s_prime > 0:
            beta = draw_uniform(s_prime, 0.5)
            mixes.append(F.normalize(beta * uq[:, None, :] + (1 - beta) * draw_index(s_prime), dim=-1))
        if not mixes:
            return uq.new_zeros(n, 0, d)
        return torch.cat(mixes, dim=1)
