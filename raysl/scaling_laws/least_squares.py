"""``loss="least_squares"``: the fit before Huber became the default, kept as it was:
``scipy.optimize.least_squares`` on ``log E`` from 9 starts, ``E_inf`` in
``[0, min(E)]``. Each law (:mod:`raysl.scaling_laws.compute`,
:mod:`raysl.scaling_laws.model_data`) builds its residual and starts; here the search over them.
"""

from __future__ import annotations

import math

import numpy as np


def _best_of(residual, starts: list[np.ndarray], lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import least_squares  # here, not at the top: every training process imports this module

    best, best_cost = None, math.inf
    for x0 in starts:
        x0 = np.clip(x0, lower + 1e-12, upper - 1e-12)
        try:
            res = least_squares(residual, x0, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=2000)
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(res.cost) and res.cost < best_cost:
            best, best_cost = res.x, float(res.cost)
    if best is None:
        raise ValueError("the fit did not converge from any starting point")
    return best, best_cost


def _fit_from(residual, starts, lower, upper, extra_start: np.ndarray | None):
    """Least squares from ``extra_start`` when given (a bootstrap refit starts from the full fit: near it,
    and ten times faster than the grid of ``starts``), else the best of ``starts``."""
    if extra_start is not None:
        try:
            return _best_of(residual, [extra_start], lower, upper)
        except ValueError:
            pass
    return _best_of(residual, starts, lower, upper)
