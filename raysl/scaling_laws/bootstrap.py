"""Bootstrap over runs: the resampling every fit's intervals come from, and the intervals of a fitted law's
predictions (:func:`predict`: of the curve; :func:`predict_run`: of one new run).

Intervals are bootstrap percentile intervals over runs: resample the runs with
replacement, refit, take the percentiles (seeded, so a fit is repeatable).
A refit is polished from the full fit's optimum only, not from the grid (the
resampled optimum lies near it; one L-BFGS-B run instead of dozens), with the
same loss. They are confidence intervals of the fitted curve and constants,
not prediction intervals for one new noisy run. With few runs they are too
narrow: on synthetic data with 8-10 runs a nominal 90% interval held the
truth in about 80-90% of data sets (tests/test_scaling_laws.py counts it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raysl.scaling_laws._common import _scalar
from raysl.scaling_laws.law import LawFit, law_value


def _bootstrap(n: int, n_boot: int, seed: int, min_unique: int, refit, width: int | None = None) -> np.ndarray:
    """Refit on ``n_boot`` resamples of the ``n`` runs (with replacement); rows of ``width`` constants."""
    rng = np.random.default_rng(seed)
    rows = []
    attempts = 0
    while len(rows) < n_boot and attempts < 4 * n_boot:
        attempts += 1
        idx = rng.integers(0, n, size=n)
        if len(np.unique(idx)) < min_unique:
            continue  # too few distinct runs to pin the constants down: draw again
        try:
            rows.append(refit(idx))
        except ValueError:
            continue
    return np.array(rows, dtype=float).reshape(len(rows), -1 if width is None else width)


def predict(fit: LawFit, *, C: Any = None, N: Any = None, D: Any = None,
            level: float | None = None) -> tuple[Any, Any, Any]:
    """(median, lo, hi) of the fitted curve at ``C`` (compute law) or at ``N`` and ``D``.

    Each bootstrap refit is evaluated at the point; the median and the
    ``level`` percentile interval of those values are returned (scalars for
    scalar input, arrays otherwise). This is the uncertainty of the curve, not
    the spread of a single new run around it.
    """
    level = fit.level if level is None else level
    values = np.array([law_value(fit, row, C=C, N=N, D=D) for row in fit.samples])
    if not len(values):
        point = law_value(fit, fit.params, C=C, N=N, D=D)
        return _scalar(point), _scalar(point * np.nan), _scalar(point * np.nan)
    tail = 50.0 * (1.0 - level)
    median = np.median(values, axis=0)
    lo, hi = np.percentile(values, [tail, 100.0 - tail], axis=0)
    return _scalar(median), _scalar(lo), _scalar(hi)


def residual_sd(fit: LawFit) -> float:
    """The scatter of a run's ``log E`` around the law: the fit's residual standard deviation with
    ``n - p`` degrees of freedom (``rmse_log * sqrt(n / (n - p))``; NaN when n <= p)."""
    n, p = fit.n_runs, len(fit.names)
    return fit.rmse_log * math.sqrt(n / (n - p)) if n > p else math.nan


def predict_run(fit: LawFit, *, C: Any = None, N: Any = None, D: Any = None, level: float | None = None,
                seed: int = 0) -> tuple[Any, Any, Any]:
    """(median, lo, hi) of the error *one new run* at the point will measure: a prediction interval.

    :func:`predict` bounds the curve (where the mean of many runs would
    lie); a single run also scatters around the curve (seed, data order,
    the grid's own misfit). Each bootstrap refit's value is multiplied by
    ``exp(e)``, ``e ~ N(0, s^2)`` with ``s`` = :func:`residual_sd` (the fit's
    scatter in ``log E``), and the ``level`` percentiles of those draws are
    returned: the interval a held-out run should fall in ``level`` of the time.
    """
    level = fit.level if level is None else level
    s = residual_sd(fit)
    if not len(fit.samples) or not math.isfinite(s):
        return predict(fit, C=C, N=N, D=D, level=level)
    rng = np.random.default_rng(seed)
    values = np.array([law_value(fit, row, C=C, N=N, D=D) for row in fit.samples])
    draws = values * np.exp(rng.normal(0.0, s, size=(8,) + values.shape))  # 8 noise draws per refit
    tail = 50.0 * (1.0 - level)
    median = np.median(draws.reshape(-1, *values.shape[1:]), axis=0)
    lo, hi = np.percentile(draws.reshape(-1, *values.shape[1:]), [tail, 100.0 - tail], axis=0)
    return _scalar(median), _scalar(lo), _scalar(hi)
