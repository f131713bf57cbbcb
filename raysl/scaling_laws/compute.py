"""``E(C) = E_inf + a * C^-b``: the saturating power law in compute (Kaplan et al. 2020, "Scaling Laws for
Neural Language Models"; Henighan et al. 2020 for the irreducible term), fitted robustly
(:mod:`raysl.scaling_laws.robust`) or by least squares, with bootstrap intervals."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from raysl.scaling_laws._common import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_DELTA,
    DEFAULT_LEVEL,
    DEFAULT_LOSS,
    _check_loss,
    _one_blas_thread,
    _positive,
)
from raysl.scaling_laws.bootstrap import _bootstrap
from raysl.scaling_laws.law import LawFit
from raysl.scaling_laws.least_squares import _fit_from
from raysl.scaling_laws.robust import _fit_law, _log_floor_values, log_residual_outliers

# E(C): compute exponents are smaller (Kaplan et al. 2020: 0.05 for language models)
COMPUTE_EXPONENTS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
# E(C): log of the power term at the geometric-mean compute, relative to log(median loss)
COMPUTE_LOG_SCALE_OFFSETS = (-5.0, -3.0, -2.0, -1.0, -0.5, 0.0)


def _compute_model(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    e_inf, log_a, b = theta
    return e_inf + np.exp(log_a - b * u)


def _compute_starts(err: np.ndarray) -> np.ndarray:
    """E(C)'s grid, already centred: ``e``, the power term's log at the geometric-mean compute, ``b``."""
    log_median = math.log(float(np.median(err)))
    scales = [log_median + offset for offset in COMPUTE_LOG_SCALE_OFFSETS]
    return np.array(list(itertools.product(_log_floor_values(err), scales, COMPUTE_EXPONENTS)))


def _fit_compute_theta(u: np.ndarray, err: np.ndarray,
                       extra_start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    log_err = np.log(err)
    floor = float(err.min())

    def residual(theta):
        return np.log(_compute_model(theta, u)) - log_err

    lower = np.array([0.0, -50.0, 1e-4])
    upper = np.array([floor, 50.0, 5.0])
    starts = []
    for frac in (0.0, 0.5, 0.9):
        for b in (0.1, 0.5, 1.5):
            e_inf = frac * floor
            starts.append(np.array([e_inf, float(np.mean(np.log(np.maximum(err - e_inf, 1e-12)))), b]))
    return _fit_from(residual, starts, lower, upper, extra_start)


def fit_compute_law(compute: Sequence[float], error: Sequence[float], *, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                    level: float = DEFAULT_LEVEL, seed: int = 0, loss: str = DEFAULT_LOSS,
                    delta: float = DEFAULT_DELTA) -> LawFit:
    """Fit ``E(C) = E_inf + a * C^-b`` to runs (C, E) with bootstrap intervals.

    Kaplan et al. 2020 (eq. 1.3, ``L(C) = (C_c / C)^alpha_C``) with the
    irreducible term ``E_inf`` of Henighan et al. 2020 ("Scaling Laws for
    Autoregressive Generative Modeling"). ``E`` is an error in (0, 1], e.g.
    ``1 - knn_acc``, or a loss; ``C`` is training FLOPs.

    ``loss="huber"`` (default): Hoffmann et al. 2022's approach 3 with one
    power term, ``min sum Huber_delta(LSE(log a - b log C, log E_inf) -
    log E)``, L-BFGS-B from the best of a grid of starts (:mod:`raysl.scaling_laws.robust`);
    the fit names outlier runs (``LawFit.outliers``). ``loss="least_squares"``:
    least squares on ``log E`` with ``0 <= E_inf <= min(E)`` from 9 starts.
    Either way ``0 <= b <= 5``. Needs at least 4 runs for 3 constants.
    """
    _check_loss(loss, delta)
    c = _positive("compute", compute)
    err = _positive("error", error)
    if len(c) != len(err):
        raise ValueError(f"compute and error differ in length ({len(c)} vs {len(err)})")
    if len(c) < 4 or len(np.unique(c)) < 3:
        raise ValueError(f"fitting E(C) needs >= 4 runs at >= 3 compute values, got {len(c)} runs")
    log_c0 = float(np.mean(np.log(c)))
    u = np.log(c) - log_c0

    def ls_fit(idx: np.ndarray, extra_start: np.ndarray | None) -> np.ndarray:
        return _fit_compute_theta(u[idx], err[idx], extra_start=extra_start)[0]

    def to_params(t: np.ndarray) -> np.ndarray:
        e_inf, log_a, b = t
        return np.array([e_inf, math.exp(log_a + b * log_c0), b])  # a in the units of C

    names = ("E_inf", "a", "b")
    with _one_blas_thread():
        theta, refit_theta = _fit_law(u[:, None], err, loss, delta, lambda: _compute_starts(err), ls_fit)
        samples = _bootstrap(len(c), n_bootstrap, seed, 3, lambda idx: to_params(refit_theta(idx)), len(names))
    residuals = np.log(_compute_model(theta, u)) - np.log(err)
    return LawFit("compute", names, dict(zip(names, map(float, to_params(theta)))), samples, level, len(c),
                  float(np.sqrt(np.mean(residuals ** 2))), loss=loss, delta=delta,
                  outliers=log_residual_outliers(residuals, n_constants=len(names), delta=delta))
