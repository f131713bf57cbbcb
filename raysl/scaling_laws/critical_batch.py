"""The critical batch size (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training"): the
steps/examples trade-off fitted to runs that reached one target error (eq. 2.11), the steps a run took to reach
it, and the gradient noise scale from gradient norms at two batch sizes (appendix A.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysl.scaling_laws._common import DEFAULT_BOOTSTRAP, DEFAULT_LEVEL, _percentiles, _positive, _scalar
from raysl.scaling_laws.bootstrap import _bootstrap


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
