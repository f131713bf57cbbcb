"""Hyperparameter scaling laws: the best learning rate, batch size or temperature as a power law of compute.

Pure: numpy only. DeepSeek-AI 2024 ("DeepSeek LLM: Scaling Open-Source Language Models with Longtermism",
sec. 3.1) search the learning rate and batch size at several small compute budgets, keep at each budget the
configs whose loss is within a small margin of that budget's best (not only the single best: the optimum
is a broad basin, and one config's noise moves it), and fit ``eta_opt = 0.3118 C^-0.125`` and ``B_opt =
0.2920 C^0.3271`` through them; Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of
Language Models") do the same for AdamW's lr and beta2. This module does it for any numeric hyperparameter
of a search at several budgets:

    log h = log a + b log C       (least squares over the near-optimal configs of every budget)

:func:`near_optimal`: a budget's configs within ``margin`` of its best score (relative: ``margin = 0.005`` keeps
those within 0.5% of the best accuracy, or of the lowest loss). :func:`fit_hp_law`: the power law through them,
each budget weighted equally (a budget with many near-optimal configs does not outweigh one with few), with a
bootstrap interval over budgets (the budgets are the independent units; resampling configs would treat
a budget's near-optimal set, which is one measurement of one basin, as many). :func:`predict_hp`: the law at
a new compute with that interval. Needs >= 3 budgets at >= 2 distinct computes.

With few budgets the interval is too narrow: on synthetic searches (4 budgets over 1,000x in compute, 60
trials each, tests/test_hp_transfer.py) a nominal 90% interval held the true exponent in 85% of 40
searches and the true lr at 8x the largest budget in 80%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["HPLaw", "fit_hp_law", "near_optimal", "predict_hp"]

DEFAULT_MARGIN = 0.005
DEFAULT_LEVEL = 0.9
DEFAULT_BOOTSTRAP = 500


def near_optimal(values: Sequence[float], scores: Sequence[float], *, mode: str = "max",
                 margin: float = DEFAULT_MARGIN) -> list[float]:
    """The hyperparameter values of one budget's configs whose score is within ``margin`` (relative) of the
    best: ``score >= best (1 - margin)`` for ``mode="max"``, ``score <= best (1 + margin)`` for ``"min"``."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min (got {mode!r})")
    pairs = [(float(v), float(s)) for v, s in zip(values, scores) if math.isfinite(float(s))]
    if not pairs:
        return []
    best = max(s for _, s in pairs) if mode == "max" else min(s for _, s in pairs)
    if mode == "max":
        return [v for v, s in pairs if s >= best - margin * abs(best)]
    return [v for v, s in pairs if s <= best + margin * abs(best)]


@dataclass
class HPLaw:
    """``h_opt(C) = a C^b`` for one hyperparameter, fitted on the near-optimal configs of each budget."""

    name: str
    a: float
    b: float
    intervals: dict[str, tuple[float, float]]
    level: float
    budgets: list[dict[str, Any]]  # per budget: compute, the near-optimal values, their geometric mean
    samples: np.ndarray = field(repr=False)  # bootstrap (log a, b) rows

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """The law as plain numbers; ``samples=True`` adds the bootstrap rows, what :meth:`from_dict` needs to
        predict with an interval again (``raysl analyze --predict`` from ``scaling.json``)."""
        out = {"name": self.name, "law": f"{self.name}_opt(C) = a C^b", "a": self.a, "b": self.b,
               "intervals": {k: list(v) for k, v in self.intervals.items()}, "level": self.level,
               "budgets": self.budgets}
        if samples:
            out["samples"] = self.samples.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HPLaw":
        """The law :meth:`to_dict` wrote (without its samples, predictions have no interval)."""
        rows = data.get("samples") or []
        return cls(name=data["name"], a=float(data["a"]), b=float(data["b"]),
                   intervals={k: (float(v[0]), float(v[1])) for k, v in (data.get("intervals") or {}).items()},
                   level=float(data.get("level", DEFAULT_LEVEL)), budgets=list(data.get("budgets") or []),
                   samples=np.asarray(rows, dtype=float).reshape(len(rows), 2))


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares of y = c + b x: (c, b)."""
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    sxx = np.sum(w * (x - xm) ** 2)
    b = float(np.sum(w * (x - xm) * (y - ym)) / sxx) if sxx > 0 else 0.0
    return float(ym - b * xm), b


def fit_hp_law(name: str, compute: Sequence[float], values: Sequence[Sequence[float]],
               scores: Sequence[Sequence[float]], *, mode: str = "max", margin: float = DEFAULT_MARGIN,
               n_bootstrap: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0) -> HPLaw:
    """Fit ``h_opt(C) = a C^b`` for hyperparameter ``name``: ``compute[i]`` is budget i's compute,
    ``values[i]`` / ``scores[i]`` the value of ``name`` and the score of each of its trials."""
    if not (len(compute) == len(values) == len(scores)):
        raise ValueError("compute, values and scores need one entry per budget")
    budgets, xs, ys, ws = [], [], [], []
    for c, vals, scs in zip(compute, values, scores):
        if not (float(c) > 0):
            raise ValueError(f"{name}: a budget's compute must be > 0 (got {c})")
        keep = [v for v in near_optimal(vals, scs, mode=mode, margin=margin) if v > 0]
        if not keep:
            continue
        logs = np.log(keep)
        budgets.append({"compute": float(c), "near_optimal": sorted(keep), "geometric_mean": float(np.exp(logs.mean())),
                        "trials": len(list(vals))})
        xs.append(np.full(len(keep), math.log(float(c))))
        ys.append(logs)
        ws.append(np.full(len(keep), 1.0 / len(keep)))  # each budget weighs 1 in all
    if len(budgets) < 3 or len({b["compute"] for b in budgets}) < 2:
        raise ValueError(f"{name}: a power law in compute needs >= 3 budgets with near-optimal trials at >= 2 "
                         f"computes (got {len(budgets)})")
    c0, b = _weighted_line(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(budgets), len(budgets))
        if len({budgets[i]["compute"] for i in pick}) < 2:
            continue
        samples.append(_weighted_line(np.concatenate([xs[i] for i in pick]), np.concatenate([ys[i] for i in pick]),
                                      np.concatenate([ws[i] for i in pick])))
    boot = np.array(samples) if samples else np.empty((0, 2))
    tail = (1 - level) / 2
    intervals = {}
    if len(boot):
        intervals = {"a": (float(np.exp(np.quantile(boot[:, 0], tail))), float(np.exp(np.quantile(boot[:, 0], 1 - tail)))),
                     "b": (float(np.quantile(boot[:, 1], tail)), float(np.quantile(boot[:, 1], 1 - tail)))}
    return HPLaw(name=name, a=math.exp(c0), b=b, intervals=intervals, level=level, budgets=budgets, samples=boot)


def predict_hp(law: HPLaw, compute: float) -> dict[str, Any]:
    """``h_opt`` at ``compute`` with its bootstrap interval (of the law, not of one search's best)."""
    log_c = math.log(float(compute))
    out: dict[str, Any] = {"name": law.name, "compute": float(compute), "value": law.a * float(compute) ** law.b}
    if len(law.samples):
        tail = (1 - law.level) / 2
        at = law.samples[:, 0] + law.samples[:, 1] * log_c
        out["interval"] = [float(np.exp(np.quantile(at, tail))), float(np.exp(np.quantile(at, 1 - tail)))]
    return out
