"""Contrastive losses with in-batch negatives.

- :func:`nt_xent`, :func:`nt_xent_multicrop`: SimCLR's NT-Xent, Chen et al.
  2020, "A Simple Framework for Contrastive Learning of Visual
  Representations"; the multi-crop form as solo-learn's ``simclr_loss_func``.
- :func:`dcl`, :func:`dclw`: Decoupled Contrastive Learning, Yeh et al. 2022
  (ECCV).
- :func:`isogclr_loss`: iSogCLR, Qiu et al. 2023 (ICML), "Not All Semantics
  are Created Equal: Contrastive Self-supervised Learning with Automatic
  Temperature Individualization".
- :func:`infonce_multiview`: MV-InfoNCE, Koromilas et al. 2025, "A Principled
  Framework for Multi-View Contrastive Learning" (arXiv 2507.06979).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import (
    _check_fraction,
    _check_pair,
    _check_positive,
    _check_tensor,
    _float,
    _shape,
    _stack_views,
    _unit,
)


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
