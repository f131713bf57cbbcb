"""What every fit here shares (private): the defaults (interval level, bootstrap size, loss, Huber's delta),
the input checks, percentile intervals, scalars for scalar input, and BLAS on one thread while a fit runs."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

DEFAULT_LEVEL = 0.9
DEFAULT_BOOTSTRAP = 500
LOSSES = ("huber", "least_squares")
DEFAULT_LOSS = "huber"
DEFAULT_DELTA = 1e-3  # Hoffmann et al. 2022's delta, on residuals of log E


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return (math.nan, math.nan)
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _positive(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {arr}")
    return arr


def _check_loss(loss: str, delta: float) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be finite and > 0, got {delta}")


def _scalar(x: Any) -> Any:
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


def _one_blas_thread():
    """A context in which BLAS runs on one thread.

    scipy's L-BFGS-B calls BLAS and LAPACK on 5 x 5 matrices thousands of times per fit; a threaded BLAS
    (OpenBLAS starts one thread per core) spends most of that time waking its threads: a fit with its
    bootstrap took 3-8x longer on a busy 2-core machine. threadpoolctl comes with scikit-learn, a raysl
    dependency; without it the fit runs as it is."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
