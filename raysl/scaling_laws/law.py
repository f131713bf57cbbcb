"""A fitted error law: :class:`LawFit` (constants, bootstrap samples, intervals, outlier runs; to and from
JSON), the formulas, and :func:`law_value`, the law with given constants at points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysl.scaling_laws._common import DEFAULT_DELTA, DEFAULT_LOSS, _percentiles


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


# The laws are fitted in normalised units (x / geometric mean of x) with the scale
# of each power term as a log: the problem is then well conditioned whatever the
# units of C, N or D (FLOPs of 1e15 next to exponents of 0.3). Residuals are of
# log E, so every run weighs by its relative error, as Hoffmann et al. fit.
#
# theta of a law with m power terms: (E_inf, log_a_1, k_1, ..., log_a_m, k_m) for least
# squares, (log E_inf, log_a_1, k_1, ...) for the robust fit (log-sum-exp form), with
# log_a_j the log of term j at the geometric mean of its input.
