"""``E(N, D) = E_inf + A / N^alpha + B / D^beta``: the model-data law of Hoffmann et al. 2022, "Training
Compute-Optimal Large Language Models" (Chinchilla), fitted by their approach 3 (Huber on log residuals from a
grid of starts, :mod:`raysl.scaling_laws.robust`) or by least squares, with bootstrap intervals."""

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

# Hoffmann et al. 2022, appendix D.2: the grid of starts of approach 3 (exponents, ln A and ln B; ln E:
# raysl.scaling_laws.robust)
HOFFMANN_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
HOFFMANN_LOG_SCALES = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


def _model_data_model(theta: np.ndarray, un: np.ndarray, ud: np.ndarray) -> np.ndarray:
    e_inf, log_a, alpha, log_b, beta = theta
    return e_inf + np.exp(log_a - alpha * un) + np.exp(log_b - beta * ud)


def _model_data_starts(err: np.ndarray, log_n0: float, log_d0: float) -> np.ndarray:
    """Hoffmann's grid (raw units: ``a = ln A``) in the optimiser's centred units: ``a_c = a - alpha log_n0``
    (``A N^-alpha = exp(a_c - alpha (log N - log_n0))``), likewise ``b``."""
    grid = np.array(list(itertools.product(_log_floor_values(err), HOFFMANN_LOG_SCALES, HOFFMANN_EXPONENTS,
                                           HOFFMANN_LOG_SCALES, HOFFMANN_EXPONENTS)))
    grid[:, 1] -= grid[:, 2] * log_n0
    grid[:, 3] -= grid[:, 4] * log_d0
    return grid


def _fit_model_data_theta(un: np.ndarray, ud: np.ndarray, err: np.ndarray,
                          extra_start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    log_err = np.log(err)
    floor = float(err.min())

    def residual(theta):
        return np.log(_model_data_model(theta, un, ud)) - log_err

    lower = np.array([0.0, -50.0, 1e-4, -50.0, 1e-4])
    upper = np.array([floor, 50.0, 5.0, 50.0, 5.0])
    starts = []
    for frac in (0.0, 0.5, 0.9):
        gap = max(float(np.mean(err)) - frac * floor, 1e-6)
        for alpha, beta in ((0.3, 0.3), (1.0, 0.3), (0.3, 1.0)):
            half = math.log(gap / 2)
            starts.append(np.array([frac * floor, half, alpha, half, beta]))
    return _fit_from(residual, starts, lower, upper, extra_start)


def fit_model_data_law(params: Sequence[float], data: Sequence[float], error: Sequence[float], *,
                       n_bootstrap: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0,
                       loss: str = DEFAULT_LOSS, delta: float = DEFAULT_DELTA) -> LawFit:
    """Fit ``E(N, D) = E_inf + A / N^alpha + B / D^beta`` to runs (N, D, E) with bootstrap intervals.

    Hoffmann et al. 2022 (Chinchilla), eq. 2: N the model's parameters, D
    the training examples (tokens) seen. ``loss="huber"`` (default) is their
    approach 3 as Besiroglu et al. 2024 replicate it::

        min over (a, b, e, alpha, beta) of
            sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log E_i ),  delta = 1e-3

    ``A = exp(a)``, ``B = exp(b)``, ``E_inf = exp(e)``: L-BFGS-B with the
    analytic gradient, polishing the best 30 of Hoffmann's grid of 8,100
    starts (:mod:`raysl.scaling_laws.robust`); the fit names outlier runs
    (``LawFit.outliers``). ``loss="least_squares"``: least squares on ``log
    E`` with ``0 <= E_inf <= min(E)`` from 9 starts (one run far off moves
    the exponents). Either way ``0 <= alpha, beta <= 5``. Needs runs that
    vary N and D both (a grid of model sizes x data fractions) and at least 6
    of them for 5 constants.
    """
    _check_loss(loss, delta)
    n = _positive("N", params)
    d = _positive("D", data)
    err = _positive("error", error)
    if not len(n) == len(d) == len(err):
        raise ValueError(f"N, D and error differ in length ({len(n)}, {len(d)}, {len(err)})")
    if len(n) < 6 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError(f"fitting E(N, D) needs >= 6 runs at >= 2 values of N and of D, got {len(n)} runs "
                         f"({len(np.unique(n))} N, {len(np.unique(d))} D)")
    log_n0, log_d0 = float(np.mean(np.log(n))), float(np.mean(np.log(d)))
    un, ud = np.log(n) - log_n0, np.log(d) - log_d0

    def ls_fit(idx: np.ndarray, extra_start: np.ndarray | None) -> np.ndarray:
        return _fit_model_data_theta(un[idx], ud[idx], err[idx], extra_start=extra_start)[0]

    def to_params(t: np.ndarray) -> np.ndarray:
        e_inf, log_a, alpha, log_b, beta = t
        return np.array([e_inf, math.exp(log_a + alpha * log_n0), alpha, math.exp(log_b + beta * log_d0), beta])

    def refit(idx: np.ndarray) -> np.ndarray:
        if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
            raise ValueError("resample lacks a second N or D")
        return to_params(refit_theta(idx))

    names = ("E_inf", "A", "alpha", "B", "beta")
    with _one_blas_thread():
        theta, refit_theta = _fit_law(np.stack([un, ud], axis=1), err, loss, delta,
                                      lambda: _model_data_starts(err, log_n0, log_d0), ls_fit)
        samples = _bootstrap(len(n), n_bootstrap, seed, 5, refit, len(names))
    residuals = np.log(_model_data_model(theta, un, ud)) - np.log(err)
    return LawFit("model_data", names, dict(zip(names, map(float, to_params(theta)))), samples, level, len(n),
                  float(np.sqrt(np.mean(residuals ** 2))), loss=loss, delta=delta,
                  outliers=log_residual_outliers(residuals, n_constants=len(names), delta=delta))
