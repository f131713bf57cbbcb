"""Whole training curves as a scaling law: fitted on small runs, predicted for a run not trained yet.

Pure: numpy and scipy only. Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", eq. 5.6 and
sec. 5.1) and Su et al. 2024 ("Unraveling the Mystery of Scaling Laws: Part I") model the loss of a model of
``N`` parameters after ``S`` steps at batch size ``B`` as::

    L(N, S_min) = E + (N_c / N)^alpha_N + (S_c / S_min)^alpha_S
    S_min       = S / (1 + B_crit(L) / B)          (McCandlish et al. 2018, eq. 2.11)
    B_crit(L)   = B* / L^(1 / alpha_B)

``S_min`` is the number of steps the run would need at a batch much larger than the critical one, so runs at
different batch sizes fall on one curve. ``E`` is an irreducible term: raysl fits error metrics (1 - kNN
accuracy) as well as SSL losses, and neither goes to zero with more parameters or steps. The paper's
language-model loss has no such term (its value is the entropy it cannot reach, folded into the constants).

The fit (:func:`fit_trajectory_law`) takes every evaluation of every run after the first
``skip_fraction`` of its steps (warm-up and the first, fastest drop, which the law does not describe), and
minimises Hoffmann et al. 2022's robust objective on log residuals, ``sum Huber_delta(log L_law - log L)``
(``delta = 1e-3``, :func:`raysl.scaling_laws.huber_loss`), with ``S_min`` computed from each point's
measured ``L``, as Su et al. fit it. Starts: a grid over the three exponents, ``B*`` around the runs' batch
sizes and the terms' sizes around the measured values (648 starts, scored at once); the best 10 are polished
by L-BFGS-B. ``loss="least_squares"`` minimises the squared log residuals instead. Intervals: bootstrap over
runs (a resampled set of whole curves, refitted from the full fit's optimum), percentile intervals.
Outliers: runs whose mean log residual lies far beyond the others' (:func:`raysl.scaling_laws.
log_residual_outliers`), named in :attr:`TrajectoryFit.outliers` and left out of the final fit (refitted
without them) when the runs left can still be fitted (>= 3 runs, 2 model sizes, 2 batch sizes and
``MIN_POINTS`` evaluations; otherwise they stay in and :attr:`TrajectoryFit.outliers_kept` says why): a run
contributes a whole curve of points, and one run 1.5x off moved alpha_N from 0.31 to
0.23 in the robust fit that kept it (synthetic runs, tests/test_trajectory.py).

Predictions, each with its bootstrap interval:

- :func:`predict_trajectory`: the curve at any ``N`` and ``B`` over given steps (``L`` solved from the
  law at each step: ``log L_law(L) - log L`` falls strictly with ``L``, so bisection finds the one root);
- :func:`steps_to_error`: the steps and examples to reach a target at ``N`` and ``B``, with ``S_min``,
  ``E_min = S_min B_crit`` and the critical batch at that target; None where the target lies at or below
  what the model size can reach (``E + (N_c / N)^alpha_N``);
- :func:`critical_batch_at`: ``B_crit`` at any target;
- :func:`minimum_error`: ``E``, or ``E + (N_c / N)^alpha_N`` for one model size (infinitely many steps).

The learning-rate schedule: Kaplan et al. train with a fixed schedule per run length and fit ``S`` within
runs long enough to reach convergence; Su et al. note that a decaying learning rate bends the end of each
curve. raysl does not model the schedule: the curves it fits and predicts are those of runs with one
schedule shape, and a grid for this law should use ``schedule.lr: constant`` (after warm-up), as
``search_spaces/scaling_trajectory.yaml`` does, so that the loss at step ``S`` does not depend on the run's
length.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from raysl.scaling_laws import DEFAULT_DELTA, DEFAULT_LEVEL, LOSSES, huber_loss, log_residual_outliers

__all__ = ["Curve", "TrajectoryFit", "critical_batch_at", "fit_trajectory_law", "from_constants", "from_dict",
           "minimum_error", "predict_trajectory", "steps_to_error"]

DEFAULT_SKIP_FRACTION = 0.1
TRAJECTORY_BOOTSTRAP = 200
POLISHED = 10
MIN_POINTS = 21  # 3 evaluations per constant
# theta: (log E, a_N, alpha_N, a_S, alpha_S, log B*, g = 1 / alpha_B), in centred logs (the module's fit)
NAMES = ("E", "N_c", "alpha_N", "S_c", "alpha_S", "B_star", "alpha_B")
_BOUNDS = np.array([[-30.0, 5.0], [-30.0, 10.0], [0.0, 4.0], [-30.0, 10.0], [0.0, 4.0], [-20.0, 40.0],
                    [0.0, 20.0]])


@dataclass
class Curve:
    """One run's curve: its model size, batch size, and the metric at each evaluated step."""

    n_params: float
    batch_size: float
    steps: Sequence[float]
    values: Sequence[float]


@dataclass
class TrajectoryFit:
    """A fitted trajectory law: the constants (natural units), their intervals and what predicts with it."""

    constants: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    level: float
    loss: str
    delta: float
    n_runs: int
    n_points: int  # points in the final fit (without the outliers' when they were left out)
    outliers: tuple[int, ...]  # indices of the curves given; left out of the final fit unless outliers_kept
    theta: np.ndarray = field(repr=False)
    samples: np.ndarray = field(repr=False)  # bootstrap thetas, one per row
    centre: tuple[float, float] = field(repr=False)  # mean log N and mean log S of the fitted points
    # exponents the fit left at the edge of their range (alpha_N or alpha_S at 0 or 4, alpha_B at 1/20 or
    # infinity): not determined by these runs, so the predictions are not either
    at_bounds: tuple[str, ...] = ()
    # why the outliers stayed in the final fit ('' when they were left out, or when there are none): what
    # leaving them out would leave too few of, e.g. "fewer than 2 batch sizes (1)"
    outliers_kept: str = ""

    @property
    def outliers_left_out(self) -> bool:
        return bool(self.outliers) and not self.outliers_kept

    def to_dict(self) -> dict[str, Any]:
        """What ``scaling.json`` stores: the constants (an unbounded one is null there), and ``theta`` and
        ``centre``, from which :func:`from_dict` rebuilds the fit's curve exactly (also at a bound)."""
        return {"law": "L(N, S_min) = E + (N_c / N)^alpha_N + (S_c / S_min)^alpha_S, "
                       "S_min = S / (1 + B_crit(L) / B), B_crit(L) = B_star / L^(1 / alpha_B)",
                "constants": dict(self.constants), "intervals": {k: list(v) for k, v in self.intervals.items()},
                "level": self.level, "loss": self.loss, "delta": self.delta, "n_runs": self.n_runs,
                "n_points": self.n_points, "outliers": list(self.outliers),
                "outliers_left_out": self.outliers_left_out, "outliers_kept": self.outliers_kept or None,
                "at_bounds": list(self.at_bounds), "theta": [float(t) for t in self.theta],
                "centre": [float(c) for c in self.centre]}


# --------------------------------------------------------------------------
# the law in the fit's coordinates


def _log_batch_term(theta: np.ndarray, log_l: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """log(1 + B_crit(L) / B)."""
    return np.logaddexp(0.0, theta[5] - theta[6] * log_l - log_b)


def _log_law(theta: np.ndarray, un: np.ndarray, log_s_min: np.ndarray, c_s: float) -> np.ndarray:
    terms = np.stack([np.full_like(un, theta[0]), theta[1] - theta[2] * un, theta[3] - theta[4] * (log_s_min - c_s)])
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def _objective(theta: np.ndarray, data: tuple, loss: str, delta: float) -> float:
    un, log_s, log_b, log_l, c_s = data
    log_s_min = log_s - _log_batch_term(theta, log_l, log_b)
    r = _log_law(theta, un, log_s_min, c_s) - log_l
    if loss == "least_squares":
        return float(0.5 * np.dot(r, r))
    return float(huber_loss(r, delta)[0].sum())


def _residuals(theta: np.ndarray, data: tuple) -> np.ndarray:
    un, log_s, log_b, log_l, c_s = data
    return _log_law(theta, un, log_s - _log_batch_term(theta, log_l, log_b), c_s) - log_l


def _starts(log_l: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    l_min, l_med, b_med = float(log_l.min()), float(np.median(log_l)), float(np.median(log_b))
    rows = []
    for alpha_n, alpha_s, g, k, floor, q_n, q_s in itertools.product(
            (0.2, 0.5, 1.0), (0.2, 0.5, 1.0), (0.0, 2.0, 5.0), (-2.0, 0.0, 2.0), (0.5, 0.05), (0.1, 0.4), (0.1, 0.4)):
        rows.append([l_min + math.log(floor), l_med + math.log(q_n), alpha_n, l_med + math.log(q_s), alpha_s,
                     b_med + k + g * l_med, g])
    return np.array(rows)


def _polish(theta0: np.ndarray, data: tuple, loss: str, delta: float) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize  # here, not at the top: scipy.optimize costs a second to import

    x0 = np.clip(theta0, _BOUNDS[:, 0], _BOUNDS[:, 1])
    res = minimize(_objective, x0, args=(data, loss, delta), method="L-BFGS-B", bounds=_BOUNDS,
                   options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
    return np.asarray(res.x, dtype=float), float(res.fun)


def _fit(data: tuple, loss: str, delta: float, starts: np.ndarray, n_polished: int) -> np.ndarray:
    scores = np.array([_objective(s, data, loss, delta) for s in np.clip(starts, _BOUNDS[:, 0], _BOUNDS[:, 1])])
    best, best_value = None, math.inf
    for i in np.argsort(scores)[:n_polished]:
        theta, value = _polish(starts[i], data, loss, delta)
        if np.all(np.isfinite(theta)) and value < best_value:
            best, best_value = theta, value
    if best is None:
        raise ValueError("the trajectory fit did not converge from any starting point")
    return best


def _natural(theta: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """(E, N_c, alpha_N, S_c, alpha_S, B*, alpha_B) from the fit's theta (inf where an exponent is 0)."""
    c_n, c_s = centre
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        n_c = math.exp(min(700.0, c_n + theta[1] / theta[2])) if theta[2] > 0 else math.inf
        s_c = math.exp(min(700.0, c_s + theta[3] / theta[4])) if theta[4] > 0 else math.inf
        alpha_b = 1.0 / theta[6] if theta[6] > 0 else math.inf
    return np.array([math.exp(theta[0]), n_c, theta[2], s_c, theta[4], math.exp(min(700.0, theta[5])), alpha_b])


# --------------------------------------------------------------------------
# the fit


def _points(curves: Sequence[Curve], skip_fraction: float) -> tuple[np.ndarray, ...]:
    run, n, s, b, v = [], [], [], [], []
    for i, curve in enumerate(curves):
        steps = np.asarray(curve.steps, dtype=float)
        values = np.asarray(curve.values, dtype=float)
        if steps.shape != values.shape or steps.ndim != 1:
            raise ValueError(f"curve {i}: steps and values must be two lists of one length")
        if not (curve.n_params > 0 and curve.batch_size > 0):
            raise ValueError(f"curve {i}: n_params and batch_size must be > 0")
        keep = np.isfinite(values) & (values > 0) & (steps > 0)
        if steps.size:
            keep &= steps >= skip_fraction * steps.max()
        run += [i] * int(keep.sum())
        n += [curve.n_params] * int(keep.sum())
        b += [curve.batch_size] * int(keep.sum())
        s += list(steps[keep])
        v += list(values[keep])
    return (np.array(run, dtype=int), np.log(np.array(n, dtype=float)), np.log(np.array(s, dtype=float)),
            np.log(np.array(b, dtype=float)), np.log(np.array(v, dtype=float)))


def fit_trajectory_law(curves: Sequence[Curve], *, loss: str = "huber", delta: float = DEFAULT_DELTA,
                       skip_fraction: float = DEFAULT_SKIP_FRACTION, n_bootstrap: int = TRAJECTORY_BOOTSTRAP,
                       level: float = DEFAULT_LEVEL, seed: int = 0) -> TrajectoryFit:
    """Fit the trajectory law (module docstring) to whole curves of runs at several sizes and batch sizes.

    Needs >= 3 curves, >= 2 model sizes and >= 2 batch sizes (the batch term is otherwise not determined),
    and at least ``MIN_POINTS`` (21: 3 per constant) points after ``skip_fraction`` of each run's steps."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)} (got {loss!r})")
    if not (delta > 0):
        raise ValueError(f"delta must be > 0 (got {delta})")
    curves = list(curves)
    run, log_n, log_s, log_b, log_l = _points(curves, skip_fraction)
    if len(curves) < 3 or len(np.unique(log_n)) < 2 or len(np.unique(log_b)) < 2 or len(log_l) < MIN_POINTS:
        raise ValueError(f"the trajectory law needs >= 3 curves, >= 2 model sizes, >= 2 batch sizes and >= {MIN_POINTS} "
                         f"evaluations after the first {skip_fraction:.0%} of each run's steps, 3 per constant (got "
                         f"{len(curves)} curves, {len(np.unique(log_n))} sizes, {len(np.unique(log_b))} batch sizes, "
                         f"{len(log_l)} evaluations); evaluate more often (eval.every_epochs) or add runs")
    centre = (float(log_n.mean()), float(log_s.mean()))

    def data_of(idx: np.ndarray) -> tuple:
        return log_n[idx] - centre[0], log_s[idx], log_b[idx], log_l[idx], centre[1]

    everything = np.arange(len(log_l))
    theta = _fit(data_of(everything), loss, delta, _starts(log_l, log_b), POLISHED)
    residuals = _residuals(theta, data_of(everything))
    per_run = np.array([residuals[run == i].mean() if np.any(run == i) else 0.0 for i in range(len(curves))])
    outliers = log_residual_outliers(per_run, delta=delta)
    outliers_kept = ""
    if outliers:
        # a curve is many points: one bad run pulls even the robust fit, so the runs named are left out of
        # the final fit (as Besiroglu et al. left Hoffmann's 5 worst out), and still named; unless what
        # would be left could not be fitted, then they stay in and the fit says why
        kept = ~np.isin(run, outliers)
        outliers_kept = _short_of(len(np.unique(run[kept])), len(np.unique(log_n[kept])),
                                  len(np.unique(log_b[kept])), int(kept.sum()))
        if not outliers_kept:
            run, log_n, log_s, log_b, log_l = run[kept], log_n[kept], log_s[kept], log_b[kept], log_l[kept]
            everything = np.arange(len(log_l))
            starts = np.vstack([theta[None, :], _starts(log_l, log_b)])
            theta = _fit(data_of(everything), loss, delta, starts, POLISHED)

    rng = np.random.default_rng(seed)
    samples = []
    runs_with_points = np.unique(run)
    for _ in range(n_bootstrap):
        pick = rng.choice(runs_with_points, size=len(runs_with_points), replace=True)
        if len(np.unique(log_n[np.isin(run, pick)])) < 2 or len(np.unique(log_b[np.isin(run, pick)])) < 2:
            continue
        idx = np.concatenate([np.flatnonzero(run == r) for r in pick])
        refit, _ = _polish(theta, data_of(idx), loss, delta)
        samples.append(refit)
    samples_arr = np.array(samples) if samples else np.empty((0, len(theta)))
    natural = _natural(theta, centre)
    boot = np.array([_natural(t, centre) for t in samples_arr]) if len(samples_arr) else np.empty((0, 7))
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):  # an unbounded constant (alpha_B = inf) in some resamples
        intervals = {name: ((float(np.quantile(boot[:, j], tail)), float(np.quantile(boot[:, j], 1 - tail)))
                            if len(boot) else (math.nan, math.nan)) for j, name in enumerate(NAMES)}
    # an exponent stopped at the edge of its range: the runs do not determine it
    at_bounds = tuple(NAMES[j] for j in (2, 4, 6) if min(abs(theta[j] - _BOUNDS[j, 0]), abs(theta[j] - _BOUNDS[j, 1]))
                      < 1e-6)
    return TrajectoryFit(constants={name: float(natural[j]) for j, name in enumerate(NAMES)}, intervals=intervals,
                         level=level, loss=loss, delta=delta, n_runs=len(curves), n_points=len(log_l),
                         outliers=outliers, theta=theta, samples=samples_arr, centre=centre, at_bounds=at_bounds,
                         outliers_kept=outliers_kept)


def _short_of(runs: int, sizes: int, batches: int, points: int) -> str:
    """What a set of curves lacks for the fit ('' when nothing): >= 3 runs, >= 2 model sizes, >= 2 batch
    sizes and >= MIN_POINTS evaluations."""
    return " and ".join(f"fewer than {least} {what} ({have})" for what, have, least in (
        ("runs", runs, 3), ("model sizes", sizes, 2), ("batch sizes", batches, 2),
        ("evaluations", points, MIN_POINTS)) if have < least)


def from_dict(stored: dict[str, Any]) -> TrajectoryFit:
    """A fit rebuilt from :meth:`TrajectoryFit.to_dict` (``scaling.json``'s ``trajectory``), for its curve: no
    bootstrap samples, so its predictions have no band. Its ``theta`` and ``centre`` give the very curve, also
    when an exponent stopped at a bound (a null constant there: alpha_N = 0 leaves N_c unbounded and the size
    term a constant only theta holds); a file without them is rebuilt from its constants
    (:func:`from_constants`). A ValueError where neither is usable."""
    theta, centre = stored.get("theta"), stored.get("centre")
    if theta is None or centre is None:
        return from_constants(stored.get("constants") or {})
    try:
        theta_arr, centre_arr = np.asarray(theta, dtype=float), np.asarray(centre, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"a trajectory law's theta and centre must be numbers: {theta}, {centre}") from None
    if theta_arr.shape != (len(NAMES),) or centre_arr.shape != (2,) or not (
            np.all(np.isfinite(theta_arr)) and np.all(np.isfinite(centre_arr))):
        raise ValueError(f"a trajectory law's theta must be {len(NAMES)} finite numbers and its centre 2: "
                         f"{theta}, {centre}")
    natural = _natural(theta_arr, (float(centre_arr[0]), float(centre_arr[1])))
    return TrajectoryFit(constants={name: float(natural[j]) for j, name in enumerate(NAMES)}, intervals={},
                         level=float(stored.get("level") or DEFAULT_LEVEL), loss=str(stored.get("loss") or "huber"),
                         delta=float(stored.get("delta") or DEFAULT_DELTA), n_runs=int(stored.get("n_runs") or 0),
                         n_points=int(stored.get("n_points") or 0), outliers=tuple(stored.get("outliers") or ()),
                         theta=theta_arr, samples=np.empty((0, len(NAMES))),
                         centre=(float(centre_arr[0]), float(centre_arr[1])),
                         at_bounds=tuple(stored.get("at_bounds") or ()),
                         outliers_kept=stored.get("outliers_kept") or "")


def from_constants(constants: dict[str, float]) -> TrajectoryFit:
    """A fit rebuilt from its constants (as ``scaling.json`` stores them), for its curve: no bootstrap samples,
    so its predictions have no band. A constant that is missing, not finite or out of range is a ValueError."""
    values = [constants.get(name) for name in NAMES]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"a trajectory law's constants must be finite numbers: {constants}")
    e, n_c, alpha_n, s_c, alpha_s, b_star, alpha_b = values
    if min(e, n_c, s_c, b_star, alpha_b) <= 0 or min(alpha_n, alpha_s) < 0:
        raise ValueError(f"a trajectory law's constants are out of range: {constants}")
    theta = np.array([math.log(e), alpha_n * math.log(n_c), alpha_n, alpha_s * math.log(s_c), alpha_s,
                      math.log(b_star), 1.0 / alpha_b])
    return TrajectoryFit(constants=dict(zip(NAMES, map(float, values))), intervals={}, level=DEFAULT_LEVEL,
                         loss="huber", delta=DEFAULT_DELTA, n_runs=0, n_points=0, outliers=(), theta=theta,
                         samples=np.empty((0, len(NAMES))), centre=(0.0, 0.0))


# --------------------------------------------------------------------------
# predictions


def _curve(theta: np.ndarray, centre: tuple[float, float], log_n: float, log_b: float,
           log_s: np.ndarray) -> np.ndarray:
    """L at each step: the root of log L_law(L) - log L, which falls strictly with L (bisection in log L)."""
    c_n, c_s = centre
    floor = np.logaddexp(theta[0], theta[1] - theta[2] * (log_n - c_n))  # E + the model-size term

    def law(log_l: np.ndarray) -> np.ndarray:
        log_s_min = log_s - _log_batch_term(theta, log_l, log_b)
        return np.logaddexp(floor, theta[3] - theta[4] * (log_s_min - c_s))

    lo = np.full_like(log_s, floor)  # the law is above its floor: the root is higher
    hi = law(lo)  # the law falls with L, so at L = law(floor) it is at most that
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = law(mid) > mid
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.exp(0.5 * (lo + hi))


def _band(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)


def predict_trajectory(fit: TrajectoryFit, n_params: float, batch_size: float, steps: Sequence[float],
                       level: float | None = None) -> dict[str, list[float]]:
    """The predicted curve at ``n_params`` and ``batch_size`` over ``steps``, with its bootstrap band."""
    level = fit.level if level is None else level
    log_s = np.log(np.asarray(steps, dtype=float))
    args = (math.log(n_params), math.log(batch_size), log_s)
    value = _curve(fit.theta, fit.centre, *args)
    out = {"steps": [float(s) for s in steps], "value": value.tolist()}
    if len(fit.samples):
        low, high = _band(np.array([_curve(t, fit.centre, *args) for t in fit.samples]), level)
        out.update(low=low.tolist(), high=high.tolist())
    return out


def _steps_to(theta: np.ndarray, centre: tuple[float, float], n_params: float, batch_size: float,
              target: float) -> np.ndarray | None:
    """(S, S * B, S_min, E_min, B_crit) to reach ``target``, or None where it is at or below the floor."""
    c_n, c_s = centre
    log_t = math.log(target)
    floor = float(np.logaddexp(theta[0], theta[1] - theta[2] * (math.log(n_params) - c_n)))
    if log_t <= floor or theta[4] <= 0:
        return None
    step_term = math.log(target - math.exp(floor))
    s_min = math.exp(min(700.0, c_s + (theta[3] - step_term) / theta[4]))
    b_crit = math.exp(min(700.0, theta[5] - theta[6] * log_t))
    s = s_min * (1 + b_crit / batch_size)
    return np.array([s, s * batch_size, s_min, s_min * b_crit, b_crit])


def steps_to_error(fit: TrajectoryFit, n_params: float, batch_size: float, target: float,
                   level: float | None = None) -> dict[str, Any] | None:
    """Steps and examples to reach ``target`` at ``n_params`` and ``batch_size`` (with ``S_min``, ``E_min`` and
    the critical batch at the target), each with its interval; None where the model size cannot reach it."""
    level = fit.level if level is None else level
    point = _steps_to(fit.theta, fit.centre, n_params, batch_size, target)
    if point is None:
        return None
    keys = ("steps", "examples", "S_min", "E_min", "B_crit")
    out: dict[str, Any] = {k: float(v) for k, v in zip(keys, point)}
    boot = [p for p in (_steps_to(t, fit.centre, n_params, batch_size, target) for t in fit.samples)]
    reached = np.array([p for p in boot if p is not None])
    out["reached_in_bootstrap"] = (len(reached) / len(boot)) if boot else None
    if len(reached):
        low, high = _band(reached, level)
        out["intervals"] = {k: [float(lo), float(hi)] for k, lo, hi in zip(keys, low, high)}
    return out


def critical_batch_at(fit: TrajectoryFit, target: float, level: float | None = None) -> dict[str, Any]:
    """``B_crit(target) = B* / target^(1 / alpha_B)`` with its interval."""
    level = fit.level if level is None else level
    log_t = math.log(target)
    value = math.exp(min(700.0, fit.theta[5] - fit.theta[6] * log_t))
    out: dict[str, Any] = {"target": float(target), "B_crit": value}
    if len(fit.samples):
        low, high = _band(np.exp(np.minimum(700.0, fit.samples[:, 5] - fit.samples[:, 6] * log_t)), level)
        out["interval"] = [float(low), float(high)]
    return out


def minimum_error(fit: TrajectoryFit, n_params: float | None = None, level: float | None = None) -> dict[str, Any]:
    """The lowest value the law reaches: ``E`` (any size, infinitely many steps), or at one model size."""
    level = fit.level if level is None else level

    def floor(theta: np.ndarray) -> float:
        if n_params is None:
            return math.exp(theta[0])
        return math.exp(float(np.logaddexp(theta[0], theta[1] - theta[2] * (math.log(n_params) - fit.centre[0]))))

    out: dict[str, Any] = {"n_params": n_params, "minimum": floor(fit.theta)}
    if len(fit.samples):
        low, high = _band(np.array([floor(t) for t in fit.samples]), level)
        out["interval"] = [float(low), float(high)]
    return out
