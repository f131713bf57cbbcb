"""MSBReg's three losses (Moon, Buracas, Park, Kim and Canny 2022, "An Embedding-Dynamic
Approach to Self-supervised Learning", arXiv 2207.03552).

Multiview centroid, singular value and Brownian diffusive losses, and their
weighted sum :func:`msbreg`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_non_negative, _float, _shape, _stack_views, _unit


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
