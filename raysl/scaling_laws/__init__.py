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

Layout: one module per concept, each citing its paper(s); every public name is re-exported here and callers use
``raysl.scaling_laws.X``. Lower modules first (each imports only those above it in this list):

    _common         shared defaults (level, bootstrap size, loss, delta), input checks, percentiles (private)
    law             LawFit, FORMULAS, law_value
    bootstrap       the bootstrap over runs; predict, residual_sd, predict_run
    robust          Huber on log residuals, L-BFGS-B from a grid of starts; huber_loss, log_residual_outliers
    least_squares   loss="least_squares", the former fit
    compute         fit_compute_law
    model_data      fit_model_data_law
    frontier        compute_optimal_frontier, flops_per_param_example
    critical_batch  fit_critical_batch, CriticalBatchFit, steps_to_target, gradient_noise_scale
    workers         worker_scaling
    batch_rules     scaled_lr, scaled_ema, LR_RULES
"""

from raysl.scaling_laws._common import DEFAULT_BOOTSTRAP, DEFAULT_DELTA, DEFAULT_LEVEL, DEFAULT_LOSS, LOSSES
from raysl.scaling_laws.batch_rules import LR_RULES, scaled_ema, scaled_lr
from raysl.scaling_laws.bootstrap import predict, predict_run, residual_sd
from raysl.scaling_laws.compute import COMPUTE_EXPONENTS, COMPUTE_LOG_SCALE_OFFSETS, fit_compute_law
from raysl.scaling_laws.critical_batch import (
    CriticalBatchFit,
    fit_critical_batch,
    gradient_noise_scale,
    steps_to_target,
)
from raysl.scaling_laws.frontier import compute_optimal_frontier, flops_per_param_example
from raysl.scaling_laws.law import FORMULAS, LawFit, law_value
from raysl.scaling_laws.model_data import HOFFMANN_EXPONENTS, HOFFMANN_LOG_SCALES, fit_model_data_law
from raysl.scaling_laws.robust import (
    FLOOR_FRACTIONS,
    HOFFMANN_LOG_FLOORS,
    OUTLIER_DELTAS,
    OUTLIER_SDS,
    POLISHED_STARTS,
    huber_loss,
    log_residual_outliers,
)
from raysl.scaling_laws.workers import worker_scaling

__all__ = [
    "COMPUTE_EXPONENTS",
    "COMPUTE_LOG_SCALE_OFFSETS",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_DELTA",
    "DEFAULT_LEVEL",
    "DEFAULT_LOSS",
    "FLOOR_FRACTIONS",
    "FORMULAS",
    "HOFFMANN_EXPONENTS",
    "HOFFMANN_LOG_FLOORS",
    "HOFFMANN_LOG_SCALES",
    "LOSSES",
    "LR_RULES",
    "OUTLIER_DELTAS",
    "OUTLIER_SDS",
    "POLISHED_STARTS",
    "CriticalBatchFit",
    "LawFit",
    "compute_optimal_frontier",
    "fit_compute_law",
    "fit_critical_batch",
    "fit_model_data_law",
    "flops_per_param_example",
    "gradient_noise_scale",
    "huber_loss",
    "law_value",
    "log_residual_outliers",
    "predict",
    "predict_run",
    "residual_sd",
    "scaled_ema",
    "scaled_lr",
    "steps_to_target",
    "worker_scaling",
]
