"""The compute-optimal frontier of a fitted ``E(N, D)``: the best model size and data per compute budget
with ``C = k N D`` (Hoffmann et al. 2022, eq. 4), and ``k`` estimated from the runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from raysl.scaling_laws._common import _percentiles, _positive
from raysl.scaling_laws.law import LawFit, law_value


def flops_per_param_example(compute: Sequence[float], params: Sequence[float], data: Sequence[float]) -> float:
    """``k`` in ``C = k N D``: the geometric mean of ``C / (N D)`` over the runs.

    For a Transformer k is about 6 (Kaplan et al. 2020); for a convnet at a fixed
    image size FLOPs per parameter depend on the feature-map sizes, so k is
    estimated from the runs' counted FLOPs.
    """
    c, n, d = (_positive(name, v) for name, v in (("compute", compute), ("N", params), ("D", data)))
    return float(np.exp(np.mean(np.log(c) - np.log(n) - np.log(d))))


def _optimal_n(constants: Sequence[float], budget: np.ndarray, k: float) -> np.ndarray:
    """N_opt per budget; NaN where a term is flat (an exponent or scale of 0, which a bounded fit or a
    bootstrap sample can reach): then no finite size balances the two terms."""
    _, big_a, alpha, big_b, beta = constants
    if not (alpha * big_a > 0 and beta * big_b > 0):
        return np.full(np.shape(budget), np.nan)
    log_g = (math.log(alpha * big_a) - math.log(beta * big_b)) / (alpha + beta)
    return np.exp(log_g + beta / (alpha + beta) * np.log(budget / k))


def compute_optimal_frontier(fit: LawFit, budgets: Sequence[float], k: float,
                             level: float | None = None) -> list[dict[str, Any]]:
    """The compute-optimal model size per budget from a fitted ``E(N, D)`` with ``C = k N D``.

    Minimising ``A N^-alpha + B D^-beta`` with ``D = C / (k N)`` gives
    (Hoffmann et al. 2022, eq. 4)::

        N_opt(C) = G (C / k)^(beta / (alpha + beta)),  G = (alpha A / (beta B))^(1 / (alpha + beta))
        D_opt(C) = C / (k N_opt)

    One dict per budget: ``compute``, ``N_opt``, ``D_opt``, ``E_opt`` (point
    estimates) and each one's bootstrap interval (``N_opt_interval`` ...).
    """
    if fit.law != "model_data":
        raise ValueError("the compute-optimal frontier needs an E(N, D) fit (fit_model_data_law)")
    level = fit.level if level is None else level
    c = _positive("budgets", budgets)
    point = [fit.params[n] for n in fit.names]

    def frontier(constants) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_opt = _optimal_n(constants, c, k)
        d_opt = c / (k * n_opt)
        return n_opt, d_opt, law_value(fit, constants, N=n_opt, D=d_opt)

    n_opt, d_opt, e_opt = frontier(point)
    # a bootstrap sample with a flat term has no frontier: the interval is over the samples that have one
    boot = [b for b in (frontier(row) for row in fit.samples) if np.isfinite(b[0]).all()]
    out = []
    for i, budget in enumerate(c):
        row: dict[str, Any] = {"compute": float(budget), "N_opt": float(n_opt[i]), "D_opt": float(d_opt[i]),
                               "E_opt": float(e_opt[i])}
        for j, key in enumerate(("N_opt", "D_opt", "E_opt")):
            row[f"{key}_interval"] = list(_percentiles(np.array([b[j][i] for b in boot]), level)) if boot else None
        out.append(row)
    return out
