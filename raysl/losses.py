"""Self-supervised losses as small pure functions on tensors.

Every function takes embeddings of the *whole* batch it should see: callers
gather across workers first (with a gather that keeps gradients, see
``raysl.distributed``), so nothing in here knows about processes or ranks.
Nothing here holds state either: losses that need a running estimate (the
iSogCLR ``u`` table, the DINO center, the DirectPred correlation) take it as an
argument and return the new value.

Inputs a loss cannot work with raise :class:`raysl.errors.LossInputError`
(a ``ValueError``) that says which function, which argument and what it got.

Notation: ``N`` batch size, ``D`` embedding width, ``V`` number of views,
``K`` number of prototypes (DINO) or queue length (MoCo), ``tau`` temperature,
``sim(a, b) = a^T b / (||a|| ||b||)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError

__all__ = [
    "nt_xent",
    "nt_xent_multicrop",
    "dcl",
    "dclw",
    "isogclr_loss",
    "infonce_multiview",
    "moco",
    "mochi_negatives",
    "byol",
    "byol_multicrop",
    "simsiam",
    "barlow_twins",
    "mixed_barlow_regularizer",
    "vicreg",
    "dino",
    "dino_center_update",
    "msbreg",
    "multiview_centroid_loss",
    "singular_value_loss",
    "brownian_diffusive_loss",
    "directpred_predictor",
    "directpred_correlation_update",
    "sinkhorn_knopp",
    "swav",
    "spherical_kmeans",
    "deepclusterv2",
    "nearest_neighbour",
    "nnclr",
]

# nn.BatchNorm1d's default eps; Barlow Twins' official code standardises with it.
_BN_EPS = 1e-5


# --------------------------------------------------------------------------
# input checks and small helpers
# --------------------------------------------------------------------------


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_tensor(fn: str, name: str, x: object, ndim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise LossInputError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise LossInputError(
            f"{fn}: {name} must have {ndim} dimensions, got shape {_shape(x)} ({x.ndim} dimensions)"
        )
    return x


def _check_pair(fn: str, z1: object, z2: object, min_batch: int = 2, names=("z1", "z2")) -> None:
    """Two [N, D] tensors of the same shape with N >= min_batch."""
    a = _check_tensor(fn, names[0], z1, 2)
    b = _check_tensor(fn, names[1], z2, 2)
    if a.shape != b.shape:
        raise LossInputError(
            f"{fn}: {names[0]} and {names[1]} must have the same shape, got {_shape(a)} and {_shape(b)}"
        )
    _check_batch(fn, a.shape[0], min_batch)


def _check_batch(fn: str, n: int, min_batch: int) -> None:
    if n < min_batch:
        raise LossInputError(
            f"{fn}: needs a batch of at least {min_batch} samples, got {n}; "
            "use a larger batch (per worker batches are gathered before the loss)"
        )


def _check_positive(fn: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LossInputError(f"{fn}: {name} must be a positive finite number, got {value!r}")


def _check_non_negative(fn: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise LossInputError(f"{fn}: {name} must be a non-negative number, got {value!r}")


def _check_fraction(fn: str, name: str, value: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise LossInputError(f"{fn}: {name} must be in {bounds}, got {value!r}")


def _float(x: Tensor) -> Tensor:
    """Half precision is too narrow for exp/log of logits; float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _unit(x: Tensor) -> Tensor:
    return F.normalize(_float(x), dim=-1)


def _stack_views(fn: str, name: str, views: object, min_views: int, min_batch: int) -> Tensor:
    """A list of V tensors [N, D] or a tensor [V, N, D] -> tensor [V, N, D]."""
    if isinstance(views, Tensor):
        if views.ndim != 3:
            raise LossInputError(
                f"{fn}: {name} as a tensor must have shape [V, N, D] (3 dimensions), "
                f"got shape {_shape(views)}"
            )
        stacked = views
    elif isinstance(views, (list, tuple)):
        if not views:
            raise LossInputError(f"{fn}: {name} is an empty list; pass {min_views} or more views")
        for i, v in enumerate(views):
            _check_tensor(fn, f"{name}[{i}]", v, 2)
            if v.shape != views[0].shape:
                raise LossInputError(
                    f"{fn}: every view in {name} must have the same shape, "
                    f"got {_shape(views[0])} for view 0 and {_shape(v)} for view {i}"
                )
        stacked = torch.stack(list(views))
    else:
        raise LossInputError(
            f"{fn}: {name} must be a list of [N, D] tensors or a [V, N, D] tensor, "
            f"got {type(views).__name__}"
        )
    if stacked.shape[0] < min_views:
        raise LossInputError(f"{fn}: needs at least {min_views} views in {name}, got {stacked.shape[0]}")
    _check_batch(fn, stacked.shape[1], min_batch)
    return stacked


def _off_diagonal(m: Tensor) -> Tensor:
    return m[~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)]


def _standardize(z: Tensor, eps: float = _BN_EPS) -> Tensor:
    """Per-dimension (z - mean) / sqrt(var + eps), biased variance: BatchNorm1d(affine=False) in training mode."""
    z = _float(z)
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + eps)


# --------------------------------------------------------------------------
# contrastive losses with in-batch negatives
# --------------------------------------------------------------------------


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent, the normalized temperature-scaled cross entropy of SimCLR.

    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", Eq. (1). The 2N embeddings {z_k} are the two views of
    N samples; for a positive pair (i, j)::

        l(i, j) = -log  exp(sim(z_i, z_j) / tau)
                        / sum_{k=1..2N, k != i} exp(sim(z_i, z_k) / tau)

        L = 1/(2N) sum_{k=1..N} [ l(2k-1, 2k) + l(2k, 2k-1) ]

    Each anchor has its pair as the positive and the other 2N-2 views as
    negatives; the loss is averaged over all 2N anchors (both directions).

    Args:
        z1, z2: [N, D] embeddings of the two views; row i of z1 and z2 come
            from the same sample. Not necessarily normalised (done here).
        temperature: tau > 0.
    """
    fn = "nt_xent"
    _check_pair(fn, z1, z2)
    _check_positive(fn, "temperature", temperature)
    n = z1.shape[0]
    z = torch.cat([_unit(z1), _unit(z2)], dim=0)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positive)


def nt_xent_multicrop(crops: Sequence[Tensor] | Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent over V >= 2 crops per sample (multi-crop SimCLR, as solo-learn's ``simclr_loss_func``).

    Every crop of sample i is a positive of every other crop of sample i; the
    crops of the other samples are its negatives. With the V*N embeddings
    {z_a}, s(a) the sample of crop a and ``e(a, b) = exp(sim(z_a, z_b) / tau)``::

        pos(a) = sum_{b != a, s(b) = s(a)} e(a, b)
        neg(a) = sum_{b: s(b) != s(a)} e(a, b)

        L = -1/(V N) sum_a log( pos(a) / (pos(a) + neg(a)) )

    The positives share one numerator (SupCon's "L_in" form, Khosla et al.
    2020, Eq. 3), every crop is an anchor once. With V = 2 each anchor has
    one positive and ``pos + neg`` is the sum over every other view: exactly
    :func:`nt_xent`.

    Args:
        crops: V >= 2 crops, a list of [N, D] tensors or a [V, N, D] tensor;
            row i of every crop comes from sample i (global and local crops
            alike: only the embeddings enter). N >= 2.
        temperature: tau > 0.
    """
    fn = "nt_xent_multicrop"
    z = _stack_views(fn, "crops", crops, min_views=2, min_batch=2)
    _check_positive(fn, "temperature", temperature)
    v, n, d = z.shape
    u = _unit(z).reshape(v * n, d)  # row r = crop r // N of sample r % N
    logits = u @ u.T / temperature
    self_mask = torch.eye(v * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    sample = torch.arange(n, device=u.device).repeat(v)
    positive = (sample[:, None] == sample[None, :]) & ~self_mask
    log_all = torch.logsumexp(logits, dim=1)  # log(pos + neg)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def _dcl_terms(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Positive similarity / tau [2N] and log of the decoupled denominator [2N]."""
    n = z1.shape[0]
    u1, u2 = _unit(z1), _unit(z2)
    pos = (u1 * u2).sum(dim=1) / temperature
    not_self = ~torch.eye(n, dtype=torch.bool, device=u1.device)

    def log_negatives(anchor: Tensor, same: Tensor, other: Tensor) -> Tensor:
        # negatives of anchor i: same-view j != i and other-view j != i (2N-2 terms)
        s_same = (anchor @ same.T / temperature).masked_fill(~not_self, float("-inf"))
        s_other = (anchor @ other.T / temperature).masked_fill(~not_self, float("-inf"))
        return torch.logsumexp(torch.cat([s_same, s_other], dim=1), dim=1)

    neg = torch.cat([log_negatives(u1, u1, u2), log_negatives(u2, u2, u1)])
    return torch.cat([pos, pos]), neg


def dcl(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """Decoupled Contrastive Learning loss (Yeh et al. 2022, ECCV), Eq. (6).

    NT-Xent with the positive removed from the denominator::

        L_i^(k) = -<z_i^(1), z_i^(2)> / tau
                  + log sum_{l in {1,2}, j in [1..N], j != i} exp(<z_i^(k), z_j^(l)> / tau)

        L = 1/(2N) sum_i (L_i^(1) + L_i^(2))

    with L2-normalised z. Symmetric over both views (k = 1, 2) and averaged
    over the 2N anchors. Unlike NT-Xent the value can be negative.

    Args:
        z1, z2: [N, D] embeddings of the two views (N >= 2).
        temperature: tau > 0.
    """
    fn = "dcl"
    _check_pair(fn, z1, z2)
    _check_positive(fn, "temperature", temperature)
    pos, neg = _dcl_terms(z1, z2, temperature)
    return (neg - pos).mean()


def dclw(z1: Tensor, z2: Tensor, temperature: float = 0.1, sigma: float = 0.5) -> Tensor:
    """Weighted DCL, DCLW (Yeh et al. 2022, ECCV), Eq. (7) with the vMF weight.

    The positive term of :func:`dcl` is scaled by a von Mises-Fisher weight::

        w(z_i^(1), z_i^(2)) = 2 - exp(<z_i^(1), z_i^(2)> / sigma)
                                  / E_i[ exp(<z_i^(1), z_i^(2)> / sigma) ]
                            = 2 - N * softmax_i(<z_i^(1), z_i^(2)> / sigma)

        L_i^(k) = -w_i <z_i^(1), z_i^(2)> / tau + log sum_{l, j != i} exp(<z_i^(k), z_j^(l)> / tau)

    The expectation E_i runs over the N positive pairs of the batch, so the
    factor is N (not 2N); the weights average to 1 and easy positives (high
    similarity) are weighted below 1. The weight is treated as a constant
    (no gradient flows through it).

    Args:
        z1, z2: [N, D] embeddings of the two views (N >= 2).
        temperature: tau > 0.
        sigma: vMF concentration, > 0 (paper: 0.5).
    """
    fn = "dclw"
    _check_pair(fn, z1, z2)
    _check_positive(fn, "temperature", temperature)
    _check_positive(fn, "sigma", sigma)
    n = z1.shape[0]
    with torch.no_grad():
        s = (_unit(z1) * _unit(z2)).sum(dim=1) / sigma
        w = 2.0 - n * torch.softmax(s, dim=0)
    pos, neg = _dcl_terms(z1, z2, temperature)
    return (neg - torch.cat([w, w]) * pos).mean()


def isogclr_loss(
    z1: Tensor,
    z2: Tensor,
    tau1: Tensor,
    tau2: Tensor,
    u1: Tensor,
    u2: Tensor,
    gamma: float = 0.8,
    rho: float = 0.4,
    eps: float = 1e-14,
) -> tuple[Tensor, Tensor, Tensor]:
    """iSogCLR: contrastive loss with individualised, learned temperatures.

    Qiu et al. 2023 (ICML), "Not All Semantics are Created Equal: Contrastive
    Self-supervised Learning with Automatic Temperature Individualization",
    Eq. (5) and Algorithm 1. Each anchor x_i has its own temperature tau_i
    found by a KL-constrained distributionally robust objective::

        min_{w, tau >= tau_0}  1/n sum_i F_i(w, tau_i)
        F_i = tau_i log g_i(w, tau_i) + tau_i rho
        g_i = 1/|S_i^-| sum_{z in S_i^-} exp(h_i(z) / tau_i)
        h_i(z) = sim(e_i, z) - sim(e_i, e_i^+)

    where e_i is the anchor's embedding, e_i^+ its positive (the other view)
    and S_i^- the 2N-2 other embeddings of the batch (both views of every
    other sample). g_i depends on the whole dataset, so Algorithm 1 tracks it
    with a per-sample moving average (the method keeps one table entry per
    dataset index; this function sees the batch's rows)::

        u_i <- (1 - gamma) u_i + gamma g_i(w, tau_i; B)

    and uses u_i in place of g_i in the gradients::

        dF_i/dw   ~= tau_i / u_i * dg_i/dw
        dF_i/dtau ~= log u_i + rho + tau_i / u_i * dg_i/dtau_i
                   = log u_i + rho - 1/|S_i^-| sum_z exp(h_i(z)/tau_i) / u_i * h_i(z)/tau_i

    This function returns a scalar whose *gradient* is exactly that estimate
    (for w through z1/z2 and for every tau_i) and whose *value* is the
    estimated objective mean_i tau_i (log u_i + rho). It is averaged over the
    2N anchors (anchors of view 1 use tau1/u1, anchors of view 2 use
    tau2/u2), so d loss / d tau_i is the paper's per-sample gradient divided
    by 2N; scale the temperature learning rate accordingly, or pass the same
    table row as tau1 and tau2 to share one temperature per sample as the
    reference code does. Keep tau bounded below (the paper projects onto
    tau >= tau_0 = 0.05): exp(h / tau) with |h| <= 2 overflows float32 for
    tau < ~0.025.

    Entries of u that are <= 0 are treated as not yet initialised and set to
    the batch estimate g_i (so a zero-initialised table works).

    Args:
        z1, z2: [N, D] embeddings of the two views (N >= 2; normalised here).
        tau1, tau2: [N] positive temperatures of the batch's samples for the
            anchors of view 1 and view 2; gradients flow into them.
        u1, u2: [N] moving-average estimates of g for those anchors.
        gamma: moving-average rate in (0, 1] (1 = no averaging).
        rho: KL-constraint radius (paper: 0.4 unimodal / ImageNet).
        eps: added to u before dividing or taking the log.

    Returns:
        (loss, new_u1, new_u2): the scalar surrogate loss and the updated,
        detached [N] estimates to write back to the table.
    """
    fn = "isogclr_loss"
    _check_pair(fn, z1, z2)
    n = z1.shape[0]
    for name, t in (("tau1", tau1), ("tau2", tau2), ("u1", u1), ("u2", u2)):
        _check_tensor(fn, name, t, 1)
        if t.shape[0] != n:
            raise LossInputError(f"{fn}: {name} must have shape [{n}] (one entry per sample), got {_shape(t)}")
    for name, t in (("tau1", tau1), ("tau2", tau2)):
        if not bool((t.detach() > 0).all()):
            raise LossInputError(
                f"{fn}: every temperature in {name} must be positive, got min {t.detach().min().item():.4g}; "
                "clamp the temperature table to tau >= tau_min"
            )
    _check_fraction(fn, "gamma", gamma, low_open=True)
    if not (isinstance(rho, (int, float)) and math.isfinite(rho)):
        raise LossInputError(f"{fn}: rho must be a finite number, got {rho!r}")
    _check_positive(fn, "eps", eps)

    e1, e2 = _unit(z1), _unit(z2)
    pos = (e1 * e2).sum(dim=1, keepdim=True)  # [N, 1]
    not_self = ~torch.eye(n, dtype=torch.bool, device=e1.device)

    def anchor_terms(anchor: Tensor, same: Tensor, other: Tensor, tau: Tensor, u: Tensor):
        tau = _float(tau).to(anchor.dtype)
        # h_i(z) for the 2N-2 negatives, laid out [N, 2N-2]
        h_same = (anchor @ same.T - pos)[not_self].view(n, n - 1)
        h_other = (anchor @ other.T - pos)[not_self].view(n, n - 1)
        h = torch.cat([h_same, h_other], dim=1)
        g = torch.exp(h / tau[:, None]).mean(dim=1)  # depends on w and tau
        u = _float(u).to(anchor.dtype).detach()
        u_new = torch.where(u > 0, (1.0 - gamma) * u + gamma * g.detach(), g.detach())
        log_u = torch.log(u_new + eps)
        tau_c = tau.detach()
        # gradient carrier: d/dw = tau/u dg/dw ; d/dtau = tau/u dg/dtau + log u + rho
        carrier = tau_c * g / (u_new + eps) + tau * (log_u + rho)
        value = tau_c * (log_u + rho)
        return value + carrier - carrier.detach(), u_new

    loss1, new_u1 = anchor_terms(e1, e1, e2, tau1, u1)
    loss2, new_u2 = anchor_terms(e2, e2, e1, tau2, u2)
    loss = torch.cat([loss1, loss2]).mean()
    return loss, new_u1.to(u1.dtype), new_u2.to(u2.dtype)


def infonce_multiview(views: Sequence[Tensor] | Tensor, temperature: float = 0.1) -> Tensor:
    """MV-InfoNCE: one contrastive term per sample over all of its V views.

    Koromilas et al. 2025, "A Principled Framework for Multi-View Contrastive
    Learning" (arXiv 2507.06979), MV-InfoNCE, in the form of the authors'
    reference implementation (``MVINFONCE`` in pakoromilas/Multi-View-CL).
    With u_{i,l} the L2-normalised embedding of view l of sample i::

        L = -1/N sum_i log  [ sum_{l} sum_{m != l} exp(u_il^T u_im / tau) ]
                          / [ sum_{l} sum_{(j, m) != (i, l)} exp(u_il^T u_jm / tau) ]

    All V(V-1) ordered positive pairs of a sample sit together in one
    numerator (alignment of all views at once); the denominator is the sum
    over every view of the sample of all its similarities except itself
    (positives included, as in NT-Xent).

    Relation to :func:`nt_xent` at V = 2: per sample, with D_a and D_b the
    NT-Xent denominators of its two views,
    ``MV = log((D_a + D_b) / 2) - s/tau`` while
    ``NT-Xent = (log D_a + log D_b) / 2 - s/tau``; by concavity of log,
    MV-InfoNCE >= NT-Xent, with equality exactly when D_a = D_b for every
    sample (e.g. identical views).

    Args:
        views: V >= 2 views, a list of [N, D] tensors or a [V, N, D] tensor;
            row i of every view comes from sample i. N >= 2.
        temperature: tau > 0.
    """
    fn = "infonce_multiview"
    z = _stack_views(fn, "views", views, min_views=2, min_batch=2)
    _check_positive(fn, "temperature", temperature)
    v, n, d = z.shape
    u = _unit(z).reshape(v * n, d)  # row r = l * N + i
    logits = u @ u.T / temperature
    sample = torch.arange(n, device=u.device).repeat(v)
    self_mask = torch.eye(v * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = (sample[:, None] == sample[None, :]) & ~self_mask
    row_all = torch.logsumexp(logits, dim=1)
    row_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    # sum over the V anchor views of each sample, in log space
    log_num = torch.logsumexp(row_pos.view(v, n), dim=0)
    log_den = torch.logsumexp(row_all.view(v, n), dim=0)
    return (log_den - log_num).mean()


# --------------------------------------------------------------------------
# MoCo and hard negative mixing
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# non-contrastive losses
# --------------------------------------------------------------------------


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


def simsiam(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam loss (Chen & He 2021, Eq. 1): negative cosine similarity.

    ::

        D(p, z) = -1/N sum_i p_i/||p_i|| . z_i/||z_i||

    The caller detaches z (stop-gradient) and symmetrises:
    L = D(p1, z2)/2 + D(p2, z1)/2. Any batch size >= 1.
    """
    fn = "simsiam"
    _check_pair(fn, p, z, min_batch=1, names=("p", "z"))
    return -(_unit(p) * _unit(z)).sum(dim=1).mean()


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


# --------------------------------------------------------------------------
# DINO
# --------------------------------------------------------------------------


def _crops(fn: str, name: str, crops: object) -> list[Tensor]:
    if isinstance(crops, Tensor):
        if crops.ndim == 2:
            return [crops]
        if crops.ndim == 3:
            return list(crops.unbind(0))
        raise LossInputError(
            f"{fn}: {name} must be a list of [N, K] tensors or a [V, N, K] tensor, got shape {_shape(crops)}"
        )
    if not isinstance(crops, (list, tuple)) or not crops:
        raise LossInputError(f"{fn}: {name} must be a non-empty list of [N, K] tensors, got {crops!r:.80}")
    for i, c in enumerate(crops):
        _check_tensor(fn, f"{name}[{i}]", c, 2)
    return list(crops)


def dino(
    student_out: Sequence[Tensor] | Tensor,
    teacher_out: Sequence[Tensor] | Tensor,
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO self-distillation loss (Caron et al. 2021, Eq. 3 and Algorithm 1).

    For teacher (global) crops x in {x_1^g, ..., x_{V_t}^g} and student crops
    x' (all V_s crops, the global ones first, in the same order)::

        P_t(x)  = softmax((g_t(x) - c) / tau_t)      (centred, sharpened, no gradient)
        P_s(x') = softmax(g_s(x') / tau_s)
        H(a, b) = -sum_k a_k log b_k

        L = 1/|pairs| sum_{x in teacher crops} sum_{x' in student crops, x' != x} H(P_t(x), P_s(x'))

    averaged over the batch; the pairs that feed the same crop to both
    networks (student crop index == teacher crop index) are skipped.

    Args:
        student_out: V_s student logits, each [N, K] (list or [V_s, N, K]).
        teacher_out: V_t teacher logits, each [N, K] (list or [V_t, N, K]);
            crop i of the teacher is crop i of the student.
        center: [K] (or [1, K]) running center c of the teacher logits.
        student_temp: tau_s > 0 (paper: 0.1).
        teacher_temp: tau_t > 0 (paper: 0.04 warmed up to 0.07).
    """
    fn = "dino"
    students = _crops(fn, "student_out", student_out)
    teachers = _crops(fn, "teacher_out", teacher_out)
    _check_positive(fn, "student_temp", student_temp)
    _check_positive(fn, "teacher_temp", teacher_temp)
    shape = students[0].shape
    for name, crops in (("student_out", students), ("teacher_out", teachers)):
        for i, c in enumerate(crops):
            if c.shape != shape:
                raise LossInputError(
                    f"{fn}: every crop must have shape {_shape(students[0])} like student_out[0], "
                    f"got {_shape(c)} for {name}[{i}]"
                )
    _check_batch(fn, shape[0], 1)
    if not isinstance(center, Tensor) or center.numel() != shape[1] or center.ndim not in (1, 2):
        got = _shape(center) if isinstance(center, Tensor) else type(center).__name__
        raise LossInputError(f"{fn}: center must have shape [{shape[1]}] or [1, {shape[1]}], got {got}")
    center = _float(center.detach()).reshape(1, -1)
    pairs = [(t, s) for t in range(len(teachers)) for s in range(len(students)) if s != t]
    if not pairs:
        raise LossInputError(
            f"{fn}: no (teacher crop, other student crop) pair with {len(teachers)} teacher and "
            f"{len(students)} student crops; DINO needs at least two crops"
        )
    targets = [torch.softmax((_float(t.detach()) - center) / teacher_temp, dim=-1) for t in teachers]
    log_probs = [F.log_softmax(_float(s) / student_temp, dim=-1) for s in students]
    total = sum(-(targets[t] * log_probs[s]).sum(dim=-1).mean() for t, s in pairs)
    return total / len(pairs)


def dino_center_update(
    center: Tensor, teacher_out: Sequence[Tensor] | Tensor, momentum: float = 0.9
) -> Tensor:
    """DINO center EMA (Caron et al. 2021, Eq. 4), returned as a new tensor.

    ::

        c <- m c + (1 - m) 1/(V_t B) sum_{crops, i} g_t(x_i)

    over every teacher crop of the (gathered) batch. No gradient.

    Args:
        center: [K] or [1, K] current center.
        teacher_out: teacher logits, a list of [N, K] or a [V_t, N, K] / [N, K] tensor.
        momentum: m in [0, 1] (paper: 0.9).
    """
    fn = "dino_center_update"
    teachers = _crops(fn, "teacher_out", teacher_out)
    _check_fraction(fn, "momentum", momentum)
    k = teachers[0].shape[1]
    if not isinstance(center, Tensor) or center.numel() != k or center.ndim not in (1, 2):
        got = _shape(center) if isinstance(center, Tensor) else type(center).__name__
        raise LossInputError(f"{fn}: center must have shape [{k}] or [1, {k}], got {got}")
    with torch.no_grad():
        batch_center = torch.cat([t.detach() for t in teachers]).mean(dim=0)
        new = momentum * center.detach() + (1.0 - momentum) * batch_center.reshape(center.shape).to(center.dtype)
    return new


# --------------------------------------------------------------------------
# MSBReg
# --------------------------------------------------------------------------


def multiview_centroid_loss(p: Sequence[Tensor] | Tensor, z: Sequence[Tensor] | Tensor) -> Tensor:
    """Multiview centroid loss of MSBReg (see :func:`msbreg`).

    ::

        L_MC = 1/N sum_i || 1/V sum_v p_i^v/||p_i^v|| - 1/V sum_v z_i^v/||z_i^v|| ||^2

    the squared distance between the centroid of the online predictions of
    the V views of sample i and the centroid of the target projections.

    Args:
        p: online predictions, V views of [N, D] (list or [V, N, D]).
        z: target projections, same shape (detached by the caller).
    """
    fn = "multiview_centroid_loss"
    ps = _stack_views(fn, "p", p, min_views=1, min_batch=1)
    zs = _stack_views(fn, "z", z, min_views=1, min_batch=1)
    if ps.shape != zs.shape:
        raise LossInputError(f"{fn}: p and z must have the same shape, got {_shape(ps)} and {_shape(zs)}")
    diff = _unit(ps).mean(dim=0) - _unit(zs).mean(dim=0)
    return diff.pow(2).sum(dim=1).mean()


def singular_value_loss(p: Sequence[Tensor] | Tensor) -> Tensor:
    """Singular value (spectrum-spreading) loss used for MSBReg (see :func:`msbreg`).

    For each view, with P the [N, D] matrix of L2-normalised rows,
    sigma_k its singular values and r = min(N, D)::

        L_SV = 1 - sum_k sigma_k / sqrt(r N)        (averaged over views)

    Since sum_k sigma_k^2 = ||P||_F^2 = N is fixed, the nuclear norm
    sum_k sigma_k is largest, sqrt(r N), when all r singular values are
    equal, i.e. when the embeddings spread evenly over r decorrelated
    directions: L_SV = 0 there, and L_SV = 1 - 1/sqrt(r) when every row is
    the same vector (rank-1 collapse). See the note in :func:`msbreg` on how
    this relates to the paper.
    """
    fn = "singular_value_loss"
    ps = _unit(_stack_views(fn, "p", p, min_views=1, min_batch=1))
    _, n, d = ps.shape
    r = min(n, d)
    nuclear = torch.linalg.svdvals(ps).sum(dim=1)  # [V]
    return (1.0 - nuclear / math.sqrt(r * n)).mean()


def brownian_diffusive_loss(p: Sequence[Tensor] | Tensor, noise: Sequence[Tensor] | Tensor) -> Tensor:
    """Brownian diffusive loss used for MSBReg (see :func:`msbreg`).

    ::

        L_B = 1/(V N) sum_{v, i} < p_i^v/||p_i^v||, xi_i^v >

    with xi a fresh random vector per embedding and step. Its gradient with
    respect to each normalised embedding is xi itself, so a gradient step
    moves every embedding by an independent random kick: a Brownian motion
    of the particles, whose expected value (and expected loss) is zero.

    Args:
        p: online embeddings, V views of [N, D] (list or [V, N, D]).
        noise: the random vectors xi, same shape (see :func:`msbreg` for the
            distribution it draws from).
    """
    fn = "brownian_diffusive_loss"
    ps = _stack_views(fn, "p", p, min_views=1, min_batch=1)
    xs = _stack_views(fn, "noise", noise, min_views=1, min_batch=1)
    if ps.shape != xs.shape:
        raise LossInputError(f"{fn}: p and noise must have the same shape, got {_shape(ps)} and {_shape(xs)}")
    unit = _unit(ps)
    return (unit * xs.detach().to(unit.dtype)).sum(dim=-1).mean()


def msbreg(
    p: Sequence[Tensor] | Tensor,
    z: Sequence[Tensor] | Tensor,
    *,
    centroid_weight: float,
    singular_weight: float,
    brownian_weight: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MSBReg: multiview centroid + singular value + Brownian diffusive losses.

    Moon, Buracas, Park, Kim and Canny 2022, "An Embedding-Dynamic Approach to
    Self-supervised Learning" (arXiv 2207.03552). Embeddings are treated as
    particles: an attractive force pulls the views of an image together
    (multiview centroid loss, between the online network's predictions and
    the delayed-parameter target network's projections, a la BYOL), a global
    dispersive force spreads embeddings evenly (singular value loss) and a
    purely dynamic local dispersive force makes them diffuse (Brownian loss)::

        L = centroid_weight * L_MC(p, z)
            + singular_weight * L_SV(p)
            + brownian_weight * L_B(p, xi),    xi ~ N(0, I_D / D)

    see :func:`multiview_centroid_loss`, :func:`singular_value_loss` and
    :func:`brownian_diffusive_loss` for each term.

    Fidelity note: the three terms and their roles are the paper's; the
    exact formulas of the singular value loss (here a normalised nuclear-norm
    spread term) and of the Brownian loss (here a random linear potential
    with xi ~ N(0, I/D), E||xi||^2 = 1) are our reconstruction from the
    paper's description, not copied from its equations, which were not
    available to us. The weights have no defaults here on purpose: they live
    in the config.

    Args:
        p: online predictions of V >= 1 views, list of [N, D] or [V, N, D].
        z: target-network projections, same shape (detached by the caller).
        centroid_weight, singular_weight, brownian_weight: term weights, >= 0.
        generator: optional torch.Generator (on p's device) for the noise xi.
    """
    fn = "msbreg"
    ps = _stack_views(fn, "p", p, min_views=1, min_batch=1)
    zs = _stack_views(fn, "z", z, min_views=1, min_batch=1)
    if ps.shape != zs.shape:
        raise LossInputError(f"{fn}: p and z must have the same shape, got {_shape(ps)} and {_shape(zs)}")
    _check_non_negative(fn, centroid_weight=centroid_weight, singular_weight=singular_weight,
                        brownian_weight=brownian_weight)
    total = centroid_weight * multiview_centroid_loss(ps, zs)
    if singular_weight:
        total = total + singular_weight * singular_value_loss(ps)
    if brownian_weight:
        d = ps.shape[-1]
        noise = torch.randn(
            ps.shape, generator=generator, device=ps.device, dtype=_float(ps).dtype
        ) / math.sqrt(d)
        total = total + brownian_weight * brownian_diffusive_loss(ps, noise)
    return total


# --------------------------------------------------------------------------
# DirectPred
# --------------------------------------------------------------------------


def directpred_correlation_update(corr: Tensor | None, z: Tensor, rho: float = 0.3) -> Tensor:
    """Moving-average correlation of DirectPred (Tian et al. 2021, Sec. 5).

    ::

        F <- rho F + (1 - rho) E_B[f f^T]

    over the (detached) online projections f of the batch, all views stacked
    into z. With corr=None (first step) the batch estimate is returned.

    Args:
        corr: [D, D] current estimate, or None.
        z: [N, D] online projections (all views of the batch).
        rho: moving-average weight of the old estimate in [0, 1] (paper: 0.3).
    """
    fn = "directpred_correlation_update"
    _check_tensor(fn, "z", z, 2)
    _check_batch(fn, z.shape[0], 1)
    _check_fraction(fn, "rho", rho)
    with torch.no_grad():
        f = _float(z.detach())
        batch = f.T @ f / f.shape[0]
        if corr is None:
            return batch
        _check_tensor(fn, "corr", corr, 2)
        if corr.shape != batch.shape:
            raise LossInputError(f"{fn}: corr must have shape {_shape(batch)}, got {_shape(corr)}")
        return rho * corr.detach().to(batch.dtype) + (1.0 - rho) * batch


def directpred_predictor(corr: Tensor, alpha: float = 0.5, eps: float = 0.1) -> Tensor:
    """DirectPred's linear predictor from the projection correlation.

    Tian, Chen and Ganguli 2021 (ICML), "Understanding self-supervised
    learning dynamics without contrastive pairs", Sec. 5 (DirectPred), in the
    ``boost_scale`` form of the authors' code (facebookresearch/luckmatters)::

        F = U diag(s_1..s_d) U^T                     (eigen-decomposition, F symmetric PSD)
        p_j = (max(s_j, 0) / max_j' s_j')^alpha + eps
        W_p = U diag(p) U^T

    alpha = 1/2 is the paper's square root (W_p = F^{1/2} up to scale, the
    fixed point the analysis predicts); eps boosts weak eigendirections so
    they keep learning (paper: 0.1). p_j is clamped to >= 1e-4 as in the
    reference code. The caller copies the result into the predictor weight
    every ``freq`` steps.

    Args:
        corr: [D, D] moving-average correlation F (see
            :func:`directpred_correlation_update`); symmetrised here.
        alpha: exponent applied to the normalised eigenvalues, > 0.
        eps: added to every p_j (may be 0).

    Returns:
        [D, D] predictor weight W_p.
    """
    fn = "directpred_predictor"
    _check_tensor(fn, "corr", corr, 2)
    if corr.shape[0] != corr.shape[1]:
        raise LossInputError(f"{fn}: corr must be a square [D, D] matrix, got shape {_shape(corr)}")
    _check_positive(fn, "alpha", alpha)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)):
        raise LossInputError(f"{fn}: eps must be a finite number, got {eps!r}")
    with torch.no_grad():
        f = _float(corr.detach())
        if not bool(torch.isfinite(f).all()):
            raise LossInputError(f"{fn}: corr contains NaN or infinite values")
        s, u = torch.linalg.eigh((f + f.T) / 2)
        top = s.max()
        if top <= 0:
            raise LossInputError(
                f"{fn}: corr has no positive eigenvalue (max {top.item():.3g}); "
                "it must be a correlation of non-zero projections"
            )
        p = (s.clamp(min=0) / top).pow(alpha) + eps
        p = p.clamp(min=1e-4)
        return (u * p) @ u.T


# --------------------------------------------------------------------------
# nearest neighbours in a support set (NNCLR, NNBYOL, NNSiam)
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# SupCon
# --------------------------------------------------------------------------

__all__ += ["supcon"]


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


# --------------------------------------------------------------------------
# MoCo v3, W-MSE (Cholesky whitening), VIbCReg (IterNorm), ReSSL
# --------------------------------------------------------------------------

__all__ += ["mocov3", "whiten_cholesky", "w_mse", "iternorm", "vibcreg", "ressl"]


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


def vibcreg(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 200.0,
    eps: float = 1e-4,
) -> Tensor:
    """VIbCReg (Lee & Aune 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization
    for Self-Supervised Learning on Time Series", Eq. 1-4 and the authors' code)::

        s(Z, Z') = 1/(N D) sum_b ||z_b - z'_b||^2                      (invariance, MSE)
        v(Z)     = 1/D sum_j max(0, 1 - sqrt(Var(z^j) + eps))          (variance hinge, as VICReg)
        Zn       = columns of Z - zbar divided by their L2 norm
        c(Z)     = 1/D^2 sum_{i != j} (Zn^T Zn)_ij^2                   (normalised covariance = correlation)

        L = sim_weight * s + var_weight * (v(Z) + v(Z')) + cov_weight * (c(Z) + c(Z'))

    Var is unbiased. Unlike VICReg's covariance term, c(Z) is a correlation, in
    [0, 1) whatever the scale of Z, so its weight (200) does not have to track
    the variance of the embeddings. The method whitens the projector output with
    IterNorm (:func:`iternorm`) before this loss.

    Args:
        z1, z2: [N, D] (IterNorm-ed) projections of the two views (N >= 2).
        sim_weight, var_weight, cov_weight: lambda, mu, nu (paper: 25, 25, 200).
    """
    fn = "vibcreg"
    _check_pair(fn, z1, z2)
    _check_non_negative(fn, sim_weight=sim_weight, var_weight=var_weight, cov_weight=cov_weight)
    _check_positive(fn, "eps", eps)
    x, y = _float(z1), _float(z2)
    d = x.shape[1]
    invariance = F.mse_loss(x, y)

    def variance(z: Tensor) -> Tensor:
        return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()

    def covariance(z: Tensor) -> Tensor:
        zn = F.normalize(z - z.mean(dim=0), dim=0)
        return _off_diagonal(zn.T @ zn).pow(2).sum() / d**2

    return (sim_weight * invariance + var_weight * (variance(x) + variance(y))
            + cov_weight * (covariance(x) + covariance(y)))


def ressl(q: Tensor, k: Tensor, queue: Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04) -> Tensor:
    """ReSSL's relational loss (Zheng et al. 2021, NeurIPS, Eq. 3-5).

    The teacher's (weakly augmented view's) similarities to a queue of
    earlier teacher embeddings, sharpened by a low temperature, are the target
    of the student's (strongly augmented view's) similarities to the same queue::

        p_t(i) = softmax_j(k_i . queue_j / tau_t)     (constant)
        p_s(i) = softmax_j(q_i . queue_j / tau_s)
        L = 1/N sum_i H(p_t(i), p_s(i)) = -1/N sum_i sum_j p_t(i)_j log p_s(i)_j

    q, k and the queue are L2-normalised here; k and the queue are constants.

    Args:
        q: [N, D] student projections. k: [N, D] teacher projections of the same images.
        queue: [K, D] earlier teacher projections, K >= 1.
        student_temp: tau_s (paper: 0.1). teacher_temp: tau_t (paper: 0.04).
    """
    fn = "ressl"
    _check_pair(fn, q, k, min_batch=1, names=("q", "k"))
    _check_tensor(fn, "queue", queue, 2)
    if queue.shape[1] != q.shape[1] or queue.shape[0] < 1:
        raise LossInputError(f"{fn}: queue must have shape [K, {q.shape[1]}] with K >= 1, got {_shape(queue)}")
    _check_positive(fn, "student_temp", student_temp)
    _check_positive(fn, "teacher_temp", teacher_temp)
    uqueue = _unit(queue.detach())
    target = torch.softmax(_unit(k.detach()) @ uqueue.T / teacher_temp, dim=1)
    log_p = F.log_softmax(_unit(q) @ uqueue.T / student_temp, dim=1)
    return -(target * log_p).sum(dim=1).mean()


# --------------------------------------------------------------------------
# SwAV: Sinkhorn-Knopp codes and the swapped prediction loss
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


def swav(scores: Sequence[Tensor] | Tensor, codes: Sequence[Tensor] | Tensor, temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction loss (Caron et al. 2020, Eq. 1-2, multi-crop in Sec. 3.2).

    Crop v predicts the code q_i of every other crop i it can take from (the
    global crops, whose codes Sinkhorn computed)::

        p_v = softmax(z_v^T C / tau)
        L = 1/|Q| sum_{i in codes} 1/(V - 1) sum_{v != i} -1/N sum_n sum_k q_i[n, k] log p_v[n, k]

    Args:
        scores: V crops' prototype scores z^T C, [N, K] each (list or [V, N, K]), the
            global crops first in the order of ``codes``.
        codes: the codes of the first len(codes) crops, [N, K] each (targets, no gradient).
        temperature: tau > 0 (paper: 0.1).
    """
    fn = "swav"
    crops = _crops(fn, "scores", scores)
    targets = _crops(fn, "codes", codes)
    _check_positive(fn, "temperature", temperature)
    if len(crops) < 2 or len(targets) > len(crops):
        raise LossInputError(
            f"{fn}: needs at least two crops and at most one code per crop, got {len(crops)} crops and "
            f"{len(targets)} codes"
        )
    for name, group in (("scores", crops), ("codes", targets)):
        for i, c in enumerate(group):
            if c.shape != crops[0].shape:
                raise LossInputError(
                    f"{fn}: every crop and code must have shape {_shape(crops[0])} like scores[0], "
                    f"got {_shape(c)} for {name}[{i}]"
                )
    log_p = [F.log_softmax(_float(s) / temperature, dim=-1) for s in crops]
    total = 0.0
    for i, q in enumerate(targets):
        q = q.detach().to(log_p[0].dtype)
        total = total + sum(-(q * log_p[v]).sum(dim=-1).mean() for v in range(len(crops)) if v != i) / (
            len(crops) - 1
        )
    return total / len(targets)


# --------------------------------------------------------------------------
# DeepCluster v2: spherical k-means, cross-entropy to the assignments
# --------------------------------------------------------------------------


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

# --------------------------------------------------------------------------- #
# MAE (He et al. 2022): masked-patch pixel reconstruction
# --------------------------------------------------------------------------- #


def mae_targets(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch normalised pixels (``norm_pix_loss``): ``(t - mean) / sqrt(var + eps)`` over each patch's values.

    As the official code: the unbiased variance of the patch's ``p^2 C`` values, ``eps`` 1e-6.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def mae(pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool = True) -> Tensor:
    """MAE's loss: the mean over masked patches of the per-patch mean squared pixel error.

    ``L = sum_{n,l} m_{nl} mean_j (pred_{nlj} - t_{nlj})^2 / sum_{n,l} m_{nl}``, with ``t`` the
    patch's pixels, per-patch normalised with ``norm_pix`` (:func:`mae_targets`).

    Args:
        pred: ``[N, L, P]`` predicted pixels of every patch.
        target: ``[N, L, P]`` the image's patches (``raysl.methods.mae.patchify``).
        mask: ``[N, L]`` 1 for a masked patch (in the loss), 0 for a visible one.
    """
    fn = "mae"
    _check_tensor(fn, "pred", pred, 3)
    _check_tensor(fn, "target", target, 3)
    _check_tensor(fn, "mask", mask, 2)
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise LossInputError(
            f"{fn}: pred {_shape(pred)} and target {_shape(target)} must match, mask {_shape(mask)} be [N, L]"
        )
    target = _float(target.detach())
    if norm_pix:
        target = mae_targets(target)
    per_patch = (_float(pred) - target).pow(2).mean(dim=-1)
    mask = _float(mask)
    return (per_patch * mask).sum() / mask.sum()
