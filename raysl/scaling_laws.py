"""Pure scaling-law fits: numpy and scipy only, no Ray, no torch.

Every function here takes plain arrays of per-run numbers and returns plain
numbers, so each is tested on synthetic data drawn from a known law.

- :func:`fit_compute_law`: ``E(C) = E_inf + a * C^-b`` (saturating power law in
  compute; Kaplan et al. 2020, "Scaling Laws for Neural Language Models";
  Henighan et al. 2020 for the irreducible term).
- :func:`fit_model_data_law`: ``E(N, D) = E_inf + A / N^alpha + B / D^beta``
  (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
  approach 3).
- :func:`log_residual_outliers`: the runs a fit names as outliers.
- :func:`predict`: the fitted curve at new points with a bootstrap interval.
- :func:`compute_optimal_frontier`: the best model size per compute budget
  from ``E(N, D)`` with ``C = k N D`` (Hoffmann et al. 2022, eq. 4).
- :func:`fit_critical_batch`: ``(S / S_min - 1)(E / E_min - 1) = 1`` and
  ``B_crit = E_min / S_min`` (McCandlish et al. 2018, "An Empirical Model of
  Large-Batch Training", eq. 2.11); :func:`steps_to_target` reads S from a run.
- :func:`gradient_noise_scale`: ``B_simple = tr(Sigma) / |G|^2`` from gradient
  norms at two batch sizes (McCandlish et al. 2018, appendix A.1).
- :func:`worker_scaling`: images/s per number of workers, speed-up and parallel
  efficiency (speed-up / workers).
- :func:`scaled_lr`, :func:`scaled_ema`: batch-size rules for the learning
  rate (linear, Goyal et al. 2017; square root, Krizhevsky 2014 and Malladi
  et al. 2022 for Adam) and for EMA momenta (Busbridge et al. 2023, "How to
  Scale Your EMA").

Robust fits (``loss="huber"``, the default of both laws). Each law is a
constant plus power terms, so its log is a log-sum-exp of terms linear in
the log of the inputs. Hoffmann et al. 2022 (approach 3, eq. 3 and appendix
D.2) fit E(N, D) as::

    min over (a, b, e, alpha, beta) of
        sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log E_i )

    Huber_delta(r) = r^2 / 2 for |r| <= delta, delta (|r| - delta / 2) beyond

with ``A = exp(a)``, ``B = exp(b)``, ``E_inf = exp(e)`` and ``delta = 1e-3``
(Huber 1964, "Robust Estimation of a Location Parameter"); E(C) is the same
with one power term, ``LSE(a - b log C, e)``. Beyond ``delta`` (0.1% in the
loss) a residual counts by its size, not its square: one run off by 3x pulls
the constants as hard as one off by 5%, where least squares lets it pull
~20 times harder (its pull grows with the residual). Besiroglu et al. 2024
("Chinchilla Scaling: A Replication Attempt") refit Hoffmann's runs this
way, the 5 highest-loss ones left out, and got ``E_inf = 1.82, A = 482.01,
B = 2085.43, alpha = 0.3478, beta = 0.3658``; tests/test_scaling_laws.py
reproduces it from their extracted data (beta 0.367). With those 5 runs in,
least squares moves beta to 0.61, Huber to 0.45 (the 5 have the fewest
tokens: high leverage on beta), and Huber names all 5 as outliers.

How the minimum is searched (both laws):

1. every start of a grid is scored with one vectorised evaluation of the
   objective. E(N, D): Hoffmann's grid, ``alpha, beta in {0, 0.5, 1, 1.5,
   2}``, ``e in {-1, -0.5, 0, 0.5, 1, 1.5}``, ``a, b in {0, 5, ..., 25}``
   (for losses in nats, N in parameters, D in tokens), with ``e`` also at
   ``log`` of 5%, 50% and 90% of the smallest loss (for errors in (0, 1],
   far below ``e = -1``): 8,100 starts. E(C) has no published grid: ``b``
   in {0, 0.05, ..., 2} (10 values), the same ``e`` values, and the power
   term at the runs' geometric-mean compute at ``exp(-5 ... 0)`` times the
   median loss (a grid of ``a`` itself would depend on FLOPs or PF-days);
   540 starts;
2. the :data:`POLISHED_STARTS` best-scoring starts are polished by L-BFGS-B
   (``scipy.optimize.minimize``) with the analytic gradient; the lowest
   objective wins. On Hoffmann's data (240 or 245 runs) this finds the
   optimum that polishing all 8,100 starts finds, in about a second.

The optimiser works in centred logs, ``log N - mean(log N)`` (the same
objective under the linear change ``a_c = a - alpha mean(log N)``): with
``log N`` near 20, ``a`` and ``alpha`` are otherwise almost collinear and
L-BFGS crawls. Bounds: ``0 <= alpha, beta, b <= 5``; ``E_inf`` between
``e^-25`` times the smallest loss (0 in effect) and the largest loss. Unlike
least squares, ``E_inf`` is not capped at the smallest loss: a robust fit
has to be free to leave a run that lies below the asymptote as an outlier.

``loss="least_squares"`` is the former fit, kept as it was:
``scipy.optimize.least_squares`` on ``log E`` from 9 starts, ``E_inf`` in
``[0, min(E)]``.

Outliers: a fit names the runs whose log residual ``r_i = log law_i - log
E_i`` lies far beyond the others' scatter (``LawFit.outliers``): the ``i``
largest ``|r|`` are outliers for the largest ``i`` where the i-th largest
exceeds both 3.5 sds, estimated from the smaller ones (trimmed, consistency
corrected), and ``10 delta`` (1% in the loss); :func:`log_residual_outliers`
gives the formula and why it is not the median absolute deviation. Least
squares fits name them by the same rule.

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

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

DEFAULT_LEVEL = 0.9
DEFAULT_BOOTSTRAP = 500
LOSSES = ("huber", "least_squares")
DEFAULT_LOSS = "huber"
DEFAULT_DELTA = 1e-3  # Hoffmann et al. 2022's delta, on residuals of log E
POLISHED_STARTS = 30  # grid starts polished by L-BFGS-B (the best-scoring ones)
OUTLIER_SDS = 3.5  # an outlier's |log residual| exceeds this many sds of the smaller runs ...
OUTLIER_DELTAS = 10.0  # ... and this many deltas (log_residual_outliers)

# Hoffmann et al. 2022, appendix D.2: the grid of starts of approach 3 (exponents, ln E, ln A and ln B)
HOFFMANN_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
HOFFMANN_LOG_FLOORS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
HOFFMANN_LOG_SCALES = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# E_inf starts as fractions of the smallest loss: errors in (0, 1] lie far below Hoffmann's e = -1
FLOOR_FRACTIONS = (0.05, 0.5, 0.9)
# E(C): compute exponents are smaller (Kaplan et al. 2020: 0.05 for language models)
COMPUTE_EXPONENTS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
# E(C): log of the power term at the geometric-mean compute, relative to log(median loss)
COMPUTE_LOG_SCALE_OFFSETS = (-5.0, -3.0, -2.0, -1.0, -0.5, 0.0)


# --------------------------------------------------------------------------
# fitted laws


@dataclass
class LawFit:
    """A fitted law: point estimates, bootstrap samples of the constants, interval level.

    ``law`` is ``"compute"`` (constants ``E_inf, a, b``) or ``"model_data"``
    (``E_inf, A, alpha, B, beta``). ``samples`` holds one row of constants per
    bootstrap refit (in the order of ``names``). ``rmse_log`` is the fit's root
    mean squared residual of ``log E`` over all runs, outliers included (about
    the relative error of the fit). ``outliers`` are the indices (into the
    arrays the fit was given) of the runs :func:`log_residual_outliers` names;
    ``loss`` and ``delta`` say how the fit weighed residuals.
    """

    law: str
    names: tuple[str, ...]
    params: dict[str, float]
    samples: np.ndarray
    level: float
    n_runs: int
    rmse_log: float
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    outliers: tuple[int, ...] = ()
    loss: str = DEFAULT_LOSS
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if not self.intervals:
            self.intervals = {n: _percentiles(self.samples[:, i], self.level) for i, n in enumerate(self.names)}

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """The fit as plain numbers; ``samples=True`` adds the bootstrap rows (what :meth:`from_dict` needs
        to predict with intervals again, e.g. ``raysl analyze --predict`` from ``scaling.json``)."""
        out = {
            "law": self.law,
            "formula": FORMULAS[self.law],
            "params": dict(self.params),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "level": self.level,
            "n_runs": self.n_runs,
            "n_bootstrap": int(len(self.samples)),
            "rmse_log": self.rmse_log,
            "loss": self.loss,
            "delta": self.delta,
            "outliers": [int(i) for i in self.outliers],
        }
        if samples:
            out["samples"] = self.samples.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LawFit":
        """The fit :meth:`to_dict` wrote (with or without its samples: without, predictions have no interval).
        A file written before fits were robust has no ``loss``: it was least squares."""
        law = data["law"]
        names = {"compute": ("E_inf", "a", "b"), "model_data": ("E_inf", "A", "alpha", "B", "beta")}[law]
        rows = data.get("samples") or []
        samples = np.asarray(rows, dtype=float).reshape(len(rows), len(names))
        intervals = {k: tuple(v) for k, v in (data.get("intervals") or {}).items()}
        return cls(law, names, {k: float(data["params"][k]) for k in names}, samples, float(data["level"]),
                   int(data["n_runs"]), float(data.get("rmse_log") or math.nan),
                   intervals or {n: (math.nan, math.nan) for n in names},
                   outliers=tuple(int(i) for i in data.get("outliers") or ()),
                   loss=str(data.get("loss") or "least_squares"), delta=float(data.get("delta") or DEFAULT_DELTA))


FORMULAS = {
    "compute": "E(C) = E_inf + a * C^-b",
    "model_data": "E(N, D) = E_inf + A / N^alpha + B / D^beta",
}


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


def log_residual_outliers(residuals: Sequence[float], *, n_constants: int = 0,
                          delta: float = DEFAULT_DELTA) -> tuple[int, ...]:
    """Indices of the runs whose log residual is an outlier: far beyond the scatter of the other runs.

    Sort the ``n`` residuals by size, largest first. For ``i = 1 .. m``
    (``m = min(n // 4, n - p - 2)``, ``p = n_constants``), ``s_i`` is the sd
    of all runs estimated from the ``n - i`` smaller ones::

        s_i^2 = sum_{j > i} r_(j)^2 / (n - i - p) / kappa(f),   f = (n - i) / n
        kappa(f) = 1 - 2 c phi(c) / f,   c = Phi^-1((1 + f) / 2)

    ``kappa`` is the variance of a standard normal cut to its central
    fraction ``f``: the smaller residuals understate the sd by that much
    (the consistency factor of a trimmed variance), and the fit absorbs
    ``p`` degrees of freedom. The ``i`` largest runs are outliers for the
    largest ``i`` with::

        |r_(i)| > max(3.5 s_i, 10 delta)

    so a run is named when it lies 3.5 sds beyond the scatter of the runs
    not larger than itself, and, by the floor, when it is off by more than
    1% in the loss (``delta = 1e-3``), which keeps a near-exact fit from
    naming runs for rounding noise. Taking the largest such ``i`` rather than
    stopping at the first that fails names several bad runs together: each
    inflates the scatter the others are judged against (masking).

    Why not ``|r| > 3 x 1.4826 x`` the median absolute deviation: a Huber fit
    with a small ``delta`` is in effect a least-absolute-deviations fit,
    which passes through about ``p`` runs exactly, and their zero residuals
    shrink the median. On 40 clean synthetic data sets each (2% noise), that
    rule named a run in 19 of E(N, D)'s (25 runs) and 26 of E(C)'s (10 runs);
    this one in 3 and 3, and it named exactly the bad runs in all 60 sets
    with 1-3 runs (E(C): 1-2) made 3x worse.
    """
    size = np.abs(np.asarray(residuals, dtype=float))
    order = np.argsort(-size, kind="stable")
    ranked = size[order]
    n, p = len(ranked), n_constants
    smaller_sq = np.append(np.cumsum((ranked ** 2)[::-1])[::-1], 0.0)  # [i]: sum of r^2 below the i largest
    normal = NormalDist()
    n_out = 0
    for i in range(1, max(0, min(n // 4, n - p - 2)) + 1):
        kept = (n - i) / n
        c = normal.inv_cdf((1 + kept) / 2)
        kappa = 1 - 2 * c * normal.pdf(c) / kept
        sd = math.sqrt(smaller_sq[i] / (n - i - p) / kappa)
        if ranked[i - 1] > max(OUTLIER_SDS * sd, OUTLIER_DELTAS * delta):
            n_out = i
    return tuple(sorted(int(j) for j in order[:n_out]))


# The laws are fitted in normalised units (x / geometric mean of x) with the scale
# of each power term as a log: the problem is then well conditioned whatever the
# units of C, N or D (FLOPs of 1e15 next to exponents of 0.3). Residuals are of
# log E, so every run weighs by its relative error, as Hoffmann et al. fit.
#
# theta of a law with m power terms: (E_inf, log_a_1, k_1, ..., log_a_m, k_m) for least
# squares, (log E_inf, log_a_1, k_1, ...) for the robust fit (log-sum-exp form), with
# log_a_j the log of term j at the geometric mean of its input.


def _compute_model(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    e_inf, log_a, b = theta
    return e_inf + np.exp(log_a - b * u)


def _model_data_model(theta: np.ndarray, un: np.ndarray, ud: np.ndarray) -> np.ndarray:
    e_inf, log_a, alpha, log_b, beta = theta
    return e_inf + np.exp(log_a - alpha * un) + np.exp(log_b - beta * ud)


# --------------------------------------------------------------------------
# robust fit: Huber loss on log residuals, L-BFGS-B from the best starts of a grid


def _log_law(thetas: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``LSE(e, a_1 - k_1 u_1, ..., a_m - k_m u_m)`` per start and run, and each term's share of the sum.

    ``thetas``: (S, 1 + 2m) rows ``(e, a_1, k_1, ...)``; ``u``: (n, m) centred logs of the inputs.
    Returns (S, n) log-laws and (S, n, 1 + m) shares (softmax weights: the gradient of the LSE).
    """
    power = thetas[:, None, 1::2] - thetas[:, None, 2::2] * u[None]  # (S, n, m)
    floor = np.broadcast_to(thetas[:, None, :1], power.shape[:2] + (1,))
    terms = np.concatenate([floor, power], axis=2)
    top = terms.max(axis=2, keepdims=True)  # subtracted so that exp never overflows
    shares = np.exp(terms - top)
    total = shares.sum(axis=2, keepdims=True)
    return top[..., 0] + np.log(total[..., 0]), shares / total


def huber_loss(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber's loss divided by ``delta`` (``r^2 / (2 delta)`` inside, ``|r| - delta / 2`` beyond) and its slope.

    Dividing by ``delta`` changes no minimum; it puts the objective on the scale of ``sum |r|`` (order 1)
    rather than ``delta sum |r|`` (order 1e-3), where L-BFGS-B's stopping tests, relative to ``max(|f|, 1)``,
    would stop early."""
    size = np.abs(r)
    value = np.where(size <= delta, 0.5 * r * r / delta, size - 0.5 * delta)
    return value, np.clip(r, -delta, delta) / delta


def _huber_objective(theta: np.ndarray, u: np.ndarray, log_err: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
    """The robust objective at one ``theta`` and its analytic gradient (for L-BFGS-B).

    :func:`_log_law` for one row, written out flat: L-BFGS-B calls this ~100 times per polish, so the
    broadcasting over starts would cost more than the arithmetic."""
    terms = np.empty((len(log_err), 1 + u.shape[1]))
    terms[:, 0] = theta[0]
    terms[:, 1:] = theta[1::2] - theta[2::2] * u
    top = terms.max(axis=1)
    shares = np.exp(terms - top[:, None])
    total = shares.sum(axis=1)
    shares /= total[:, None]
    value, slope = huber_loss(top + np.log(total) - log_err, delta)
    grad = np.empty_like(theta)
    grad[0] = slope @ shares[:, 0]  # d LSE / d e is the floor's share of the sum
    grad[1::2] = slope @ shares[:, 1:]  # d LSE / d a_j is term j's share
    grad[2::2] = -(slope @ (shares[:, 1:] * u))  # d LSE / d k_j = -share_j u_j
    return float(value.sum()), grad


def _huber_scores(starts: np.ndarray, u: np.ndarray, log_err: np.ndarray, delta: float) -> np.ndarray:
    """The robust objective at every start, vectorised (in chunks, to bound the memory with many runs)."""
    scores = np.empty(len(starts))
    chunk = max(1, 2_000_000 // max(1, len(log_err) * (1 + u.shape[1])))
    for lo in range(0, len(starts), chunk):
        log_law, _ = _log_law(starts[lo:lo + chunk], u)
        scores[lo:lo + chunk] = huber_loss(log_law - log_err, delta)[0].sum(axis=1)
    return scores


def _polish(theta0: np.ndarray, u: np.ndarray, log_err: np.ndarray, delta: float,
            bounds: np.ndarray) -> tuple[np.ndarray, float]:
    """L-BFGS-B from ``theta0``; tolerances near machine precision (a noiseless law comes back to ~1e-12)."""
    from scipy.optimize import minimize  # here, not at the top: every training process imports this module

    x0 = np.clip(theta0, bounds[:, 0], bounds[:, 1])
    res = minimize(_huber_objective, x0, args=(u, log_err, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 3000, "ftol": 1e-14, "gtol": 1e-10})
    # a stop in the line search (Huber's kink at delta) still leaves the best point found
    return np.asarray(res.x, dtype=float), float(res.fun)


def _robust_fit(u: np.ndarray, log_err: np.ndarray, delta: float, starts: np.ndarray, bounds: np.ndarray,
                n_polished: int = POLISHED_STARTS) -> np.ndarray:
    """Score every start, polish the ``n_polished`` best, return the polished optimum with the lowest objective."""
    starts = np.clip(starts, bounds[:, 0], bounds[:, 1])
    scores = _huber_scores(starts, u, log_err, delta)
    best, best_value = None, math.inf
    for i in np.argsort(scores)[:n_polished]:
        if not np.isfinite(scores[i]):
            break
        theta, value = _polish(starts[i], u, log_err, delta, bounds)
        if np.all(np.isfinite(theta)) and value < best_value:
            best, best_value = theta, value
    if best is None:
        raise ValueError("the robust fit did not converge from any starting point")
    return best


def _log_floor_values(err: np.ndarray) -> list[float]:
    """Starting values of ``e = log E_inf``: Hoffmann's, and fractions of the smallest loss."""
    floor = float(err.min())
    return sorted(set(HOFFMANN_LOG_FLOORS) | {math.log(f * floor) for f in FLOOR_FRACTIONS})


def _robust_bounds(err: np.ndarray, n_terms: int) -> np.ndarray:
    """``e`` from ``log min(E) - 25`` (E_inf = 0 in effect) to ``log max(E)``; ``log_a`` free within +-100;
    exponents in [0, 5]."""
    rows = [(math.log(float(err.min())) - 25.0, math.log(float(err.max())))]
    rows += [(-100.0, 100.0), (0.0, 5.0)] * n_terms
    return np.array(rows)


def _model_data_starts(err: np.ndarray, log_n0: float, log_d0: float) -> np.ndarray:
    """Hoffmann's grid (raw units: ``a = ln A``) in the optimiser's centred units: ``a_c = a - alpha log_n0``
    (``A N^-alpha = exp(a_c - alpha (log N - log_n0))``), likewise ``b``."""
    grid = np.array(list(itertools.product(_log_floor_values(err), HOFFMANN_LOG_SCALES, HOFFMANN_EXPONENTS,
                                           HOFFMANN_LOG_SCALES, HOFFMANN_EXPONENTS)))
    grid[:, 1] -= grid[:, 2] * log_n0
    grid[:, 3] -= grid[:, 4] * log_d0
    return grid


def _compute_starts(err: np.ndarray) -> np.ndarray:
    """E(C)'s grid, already centred: ``e``, the power term's log at the geometric-mean compute, ``b``."""
    log_median = math.log(float(np.median(err)))
    scales = [log_median + offset for offset in COMPUTE_LOG_SCALE_OFFSETS]
    return np.array(list(itertools.product(_log_floor_values(err), scales, COMPUTE_EXPONENTS)))


def _with_linear_floor(theta: np.ndarray) -> np.ndarray:
    """A robust theta ``(log E_inf, ...)`` in the least-squares layout ``(E_inf, ...)``."""
    out = np.array(theta, dtype=float)
    out[0] = math.exp(out[0])
    return out


# --------------------------------------------------------------------------
# least squares (loss="least_squares"): the fit before Huber became the default


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


def _fit_from(residual, starts, lower, upper, extra_start: np.ndarray | None):
    """Least squares from ``extra_start`` when given (a bootstrap refit starts from the full fit: near it,
    and ten times faster than the grid of ``starts``), else the best of ``starts``."""
    if extra_start is not None:
        try:
            return _best_of(residual, [extra_start], lower, upper)
        except ValueError:
            pass
    return _best_of(residual, starts, lower, upper)


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


# --------------------------------------------------------------------------
# the two laws


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


def _fit_law(u: np.ndarray, err: np.ndarray, loss: str, delta: float, starts, ls_fit):
    """The fitted theta (least-squares layout) and a bootstrap ``refit(idx) -> theta`` for either loss.

    ``starts()`` gives the robust grid (built only when needed); ``ls_fit(idx, extra_start)`` is the least-squares
    fit of the runs ``idx``."""
    if loss == "least_squares":
        theta = ls_fit(np.arange(len(err)), None)
        return theta, lambda idx: ls_fit(idx, theta)
    log_err = np.log(err)
    bounds = _robust_bounds(err, u.shape[1])
    robust = _robust_fit(u, log_err, delta, starts(), bounds)

    def refit(idx: np.ndarray) -> np.ndarray:
        return _with_linear_floor(_polish(robust, u[idx], log_err[idx], delta, bounds)[0])

    return _with_linear_floor(robust), refit


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
    log E)``, L-BFGS-B from the best of a grid of starts (module docstring);
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
    starts (module docstring); the fit names outlier runs
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


def law_value(fit: LawFit, constants: Sequence[float] | dict, *, C: Any = None, N: Any = None,
              D: Any = None) -> np.ndarray:
    """The law with the given constants (a row of ``fit.samples`` or ``fit.params``) at points."""
    values = [constants[k] for k in fit.names] if isinstance(constants, dict) else list(constants)
    if fit.law == "compute":
        if C is None:
            raise ValueError("a compute law is evaluated at C=...")
        e_inf, a, b = values
        return e_inf + a * np.asarray(C, dtype=float) ** (-b)
    if N is None or D is None:
        raise ValueError("an E(N, D) law is evaluated at N=... and D=...")
    e_inf, big_a, alpha, big_b, beta = values
    return e_inf + big_a * np.asarray(N, dtype=float) ** (-alpha) + big_b * np.asarray(D, dtype=float) ** (-beta)


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


def _scalar(x: Any) -> Any:
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


# --------------------------------------------------------------------------
# compute-optimal frontier


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


# --------------------------------------------------------------------------
# critical batch size


@dataclass
class CriticalBatchFit:
    """``S_min`` (fewest steps), ``E_min`` (fewest examples), ``B_crit = E_min / S_min``, with intervals."""

    S_min: float
    E_min: float
    B_crit: float
    intervals: dict[str, tuple[float, float]]
    level: float
    n_runs: int

    def predict_steps(self, batch_size: Any) -> Any:
        """Steps to the target at ``batch_size``: ``S = S_min (1 + B_crit / B)``."""
        return _scalar(self.S_min + self.E_min / np.asarray(batch_size, dtype=float))

    @property
    def bound(self) -> str | None:
        """Where the runs put ``B_crit`` when they do not determine it: ``"above"`` every batch size run
        (``S_min`` fitted as 0: the steps fell as ``1 / B`` over all of them), ``"below"`` every one
        (``E_min`` fitted as 0: the steps did not fall with the batch); None when both are positive."""
        if self.S_min <= 0:
            return "above"
        if self.E_min <= 0:
            return "below"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"formula": "(S / S_min - 1)(E / E_min - 1) = 1, B_crit = E_min / S_min",
                "S_min": self.S_min, "E_min": self.E_min, "B_crit": self.B_crit, "bound": self.bound,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "level": self.level,
                "n_runs": self.n_runs}


def steps_to_target(steps: Sequence[float], errors: Sequence[float], target: float) -> float | None:
    """The first step where the error reaches ``target``, linearly interpolated; None if it never does."""
    s = np.asarray(steps, dtype=float)
    e = np.asarray(errors, dtype=float)
    order = np.argsort(s)
    s, e = s[order], e[order]
    for i in range(len(s)):
        if e[i] <= target:
            if i == 0 or e[i - 1] == e[i]:
                return float(s[i])
            t = (e[i - 1] - target) / (e[i - 1] - e[i])
            return float(s[i - 1] + t * (s[i] - s[i - 1]))
    return None


def _critical_batch_solve(inv_b: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    from scipy.optimize import nnls  # here, not at the top: every training process imports this module

    # S = S_min + E_min / B, each row divided by its S: relative errors, S_min, E_min >= 0
    design = np.stack([np.ones_like(inv_b), inv_b], axis=1) / s[:, None]
    (s_min, e_min), _ = nnls(design, np.ones_like(s))
    # a term that NNLS left at rounding level (1e-13 of the steps for steps exactly in proportion to 1 / B) is
    # the constraint it met: 0, so that the fit reports a bound, not B_crit = 1e18
    tiny = 1e-9 * float(np.max(s))
    s_min = 0.0 if s_min < tiny else s_min
    e_min = 0.0 if e_min * float(np.max(inv_b)) < tiny else e_min
    return float(s_min), float(e_min)


def fit_critical_batch(batch_sizes: Sequence[float], steps: Sequence[float], *, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                       level: float = DEFAULT_LEVEL, seed: int = 0) -> CriticalBatchFit:
    """Fit McCandlish et al. 2018's steps/examples trade-off to runs that reached one target error.

    Each run trained at batch size ``B`` and took ``S`` steps (``E = S B``
    examples) to reach the target. The paper's eq. 2.11,
    ``(S / S_min - 1)(E / E_min - 1) = 1``, is the same as
    ``S = S_min + E_min / B``: linear in ``(S_min, E_min)``, solved by
    non-negative least squares on relative residuals. The critical batch
    size is ``B_crit = E_min / S_min``: below it doubling the batch nearly
    halves the steps, above it the steps barely drop. Needs >= 2 batch sizes.
    """
    b = _positive("batch_sizes", batch_sizes)
    s = _positive("steps", steps)
    if len(b) != len(s):
        raise ValueError(f"batch_sizes and steps differ in length ({len(b)} vs {len(s)})")
    if len(np.unique(b)) < 2:
        raise ValueError("the critical batch size needs runs at >= 2 batch sizes")
    s_min, e_min = _critical_batch_solve(1.0 / b, s)

    def refit(idx: np.ndarray) -> np.ndarray:
        if len(np.unique(b[idx])) < 2:
            raise ValueError("one batch size in the resample")
        sm, em = _critical_batch_solve(1.0 / b[idx], s[idx])
        return np.array([sm, em, em / sm if sm > 0 else math.inf])

    samples = _bootstrap(len(b), n_bootstrap, seed, 2, refit)
    intervals = {name: _percentiles(samples[:, i], level) for i, name in enumerate(("S_min", "E_min", "B_crit"))}
    return CriticalBatchFit(s_min, e_min, e_min / s_min if s_min > 0 else math.inf, intervals, level, len(b))


def gradient_noise_scale(sq_norms_small: Sequence[float], batch_small: int, sq_norms_big: Sequence[float],
                         batch_big: int) -> dict[str, float]:
    """``B_simple = tr(Sigma) / |G|^2`` from squared gradient norms at two batch sizes.

    McCandlish et al. 2018, appendix A.1: a mean gradient over ``B`` i.i.d.
    samples has ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, so two batch sizes give
    unbiased estimates::

        |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
        tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

    ``sq_norms_*`` are ``|G_B|^2`` measured on several batches; they are
    averaged before the ratio is taken (the ratio of means, as the paper
    advises: the ratio itself is biased, more so with few batches).

    Where it is biased for SSL: the identity needs the batch loss to be a mean
    of independent per-sample terms. Losses with in-batch negatives (SimCLR,
    DCL, MoCo's queue aside), batch statistics (Barlow Twins and VICReg
    covariances, BatchNorm, DINO's centering) make each sample's gradient
    depend on the rest of the batch, so ``E|G_B|^2`` is not
    ``|G|^2 + tr(Sigma) / B`` and the estimate is off by an amount that
    depends on the loss; read it as a rough scale, and compare it with
    :func:`fit_critical_batch` on real runs.
    """
    if batch_big <= batch_small:
        raise ValueError(f"batch_big ({batch_big}) must be larger than batch_small ({batch_small})")
    g_small = float(np.mean(np.asarray(sq_norms_small, dtype=float)))
    g_big = float(np.mean(np.asarray(sq_norms_big, dtype=float)))
    g2 = (batch_big * g_big - batch_small * g_small) / (batch_big - batch_small)
    trace = (g_small - g_big) / (1.0 / batch_small - 1.0 / batch_big)
    return {"G2": g2, "trace_sigma": trace, "B_simple": trace / g2 if g2 > 0 else math.inf}


# --------------------------------------------------------------------------
# worker scaling


def worker_scaling(workers: Sequence[int], rates: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Throughput per number of data-parallel workers, the speed-up and the parallel efficiency.

    One entry per run: ``workers[i]`` workers and ``rates[i]`` its images/s per epoch, in epoch
    order. The first epoch of each run is left out (it includes start-up: Ray Data's first read,
    the data put on the device, the process group); a run with one epoch only keeps it, and the
    row says so (``first_epoch_only``). Per worker count the median over the pooled epochs is its
    throughput ``T(w)``; against the fewest workers ``w0`` (1 when a 1-worker run exists)::

        speedup(w) = T(w) / T(w0),   efficiency(w) = speedup(w) / (w / w0)

    so a perfectly parallel job has efficiency 1 at every ``w``. Returns ``{"reference_workers":
    w0, "rows": [{"num_workers", "images_per_s", "epochs", "runs", "first_epoch_only", "speedup",
    "efficiency"}, ...]}`` (rows by worker count); raises ValueError without a usable run.
    """
    if len(workers) != len(rates):
        raise ValueError(f"workers and rates differ in length ({len(workers)} vs {len(rates)})")
    pooled: dict[int, list[float]] = {}
    runs: dict[int, int] = {}
    first_only: dict[int, bool] = {}
    for w, per_epoch in zip(workers, rates):
        values = [float(v) for v in per_epoch if v is not None and math.isfinite(float(v)) and float(v) > 0]
        if int(w) < 1 or not values:
            continue
        kept = values[1:] if len(values) > 1 else values
        pooled.setdefault(int(w), []).extend(kept)
        runs[int(w)] = runs.get(int(w), 0) + 1
        first_only[int(w)] = first_only.get(int(w), False) or len(values) == 1
    if not pooled:
        raise ValueError("no run reported images_per_s")
    ref = min(pooled)
    t_ref = float(np.median(pooled[ref]))
    rows = []
    for w in sorted(pooled):
        t = float(np.median(pooled[w]))
        speedup = t / t_ref
        rows.append({"num_workers": w, "images_per_s": t, "epochs": len(pooled[w]), "runs": runs[w],
                     "first_epoch_only": first_only[w], "speedup": speedup, "efficiency": speedup / (w / ref)})
    return {"reference_workers": ref, "rows": rows}


# --------------------------------------------------------------------------
# batch-size rules


LR_RULES = ("linear", "sqrt", "none")


def scaled_lr(lr: float, batch_size: int, rule: str = "linear", reference: int = 256) -> float:
    """The peak learning rate at ``batch_size`` for ``lr`` given per ``reference`` images.

    - ``linear``: ``lr * B / B_ref`` (Goyal et al. 2017, "Accurate, Large
      Minibatch SGD"; SimCLR, BYOL and DINO state their lr this way);
    - ``sqrt``: ``lr * sqrt(B / B_ref)`` (Krizhevsky 2014, "One weird trick";
      Malladi et al. 2022 derive it for Adam);
    - ``none``: ``lr``.
    """
    if rule == "linear":
        return lr * batch_size / reference
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / reference)
    if rule == "none":
        return lr
    raise ValueError(f"unknown lr scaling rule {rule!r}; use one of {', '.join(LR_RULES)}")


def scaled_ema(momentum: float, kappa: float) -> float:
    """The EMA momentum at a batch ``kappa`` times the reference: ``rho^kappa``.

    Busbridge et al. 2023, "How to Scale Your EMA": with ``kappa`` times
    larger batches there are ``kappa`` times fewer steps, and an EMA updated
    once per step follows the same trajectory when its momentum is raised to
    the power ``kappa`` (together with the linear lr rule for SGD, or the
    square-root rule for Adam). ``rho = 1`` stays 1.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    return float(momentum ** kappa)
