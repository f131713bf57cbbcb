"""The gradient noise scale measured on a batch: the estimator's arithmetic on a hand-checkable loss,
its statistics on a population whose |G|^2 and tr(Sigma) are known, and that measuring leaves a real
method's training state untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raysl.methods import build_method
from raysl.noise_scale import measure_noise_scale, noise_scale_metrics, wanted
from raysl.run_config import load_config

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


class Regression(torch.nn.Module):
    """loss = mean_i (x_i . w - y_i)^2 / 2: per-sample gradient (x_i . w - y_i) x_i."""

    loss_is_sample_mean = True

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, views, indices):
        x, y = views
        return (0.5 * (x @ self.w - y[:, 0]) ** 2).mean(), {}


def test_measure_matches_the_two_batch_formula_by_hand():
    # 8 rows in 2 pieces of 4; w = 0 so each per-sample gradient is -y_i x_i.
    x = torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 0], [0, 2], [1, -1], [3, 1], [1, 3]], dtype=torch.float64)
    y = torch.tensor([1.0, 2, 1, 1, 1, 2, 1, 1], dtype=torch.float64)[:, None]
    model = Regression(torch.zeros(2, dtype=torch.float64))
    got = measure_noise_scale(model, [x, y], None, pieces=2)
    # piece 1: -(1*(1,0) + 2*(0,1) + 1*(1,1) + 1*(2,0)) / 4 = -(4, 3)/4 -> |g1|^2 = 25/16
    # piece 2: -(1*(0,2) + 2*(1,-1) + 1*(3,1) + 1*(1,3)) / 4 = -(6, 4)/4 -> |g2|^2 = 52/16
    # whole batch: -(10, 7)/8 -> |G_8|^2 = 149/64
    small, big = (25 / 16 + 52 / 16) / 2, 149 / 64
    g2 = (8 * big - 4 * small) / (8 - 4)
    trace = (small - big) / (1 / 4 - 1 / 8)
    assert np.isclose(got["grad_sq_norm_est"], g2, rtol=1e-12)
    assert np.isclose(got["grad_trace_cov_est"], trace, rtol=1e-12)
    assert np.isclose(got["noise_scale"], trace / g2, rtol=1e-12)
    assert model.w.grad is None  # the caller's (absent) gradient is put back


def test_estimates_are_unbiased_on_a_known_population():
    # Population: per-sample gradients g = mu + z, z ~ N(0, s^2 I_d), so |G|^2 = |mu|^2 and
    # tr(Sigma) = d s^2. The model's loss -mean_i(r_i . w) has per-sample gradient -r_i: rows
    # r_i = -(mu + z_i) give exactly those gradients.
    d, s, batch, pieces, repeats = 16, 0.5, 64, 4, 400
    mu = torch.linspace(-0.2, 0.2, d, dtype=torch.float64)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))

        def forward(self, views, indices):
            return -(views[0] @ self.w).mean(), {}

    gen = torch.Generator().manual_seed(0)
    model = Linear()
    g2s, traces = [], []
    for _ in range(repeats):
        rows = -(mu + s * torch.randn(batch, d, generator=gen, dtype=torch.float64))  # gradient rows = mu + z
        got = measure_noise_scale(model, [rows], None, pieces=pieces)
        g2s.append(got["grad_sq_norm_est"])
        traces.append(got["grad_trace_cov_est"])
    true_g2, true_trace = float(mu.pow(2).sum()), d * s * s
    # Unbiased per batch, so the mean over 400 batches is within a few standard errors (measured
    # from the same 400 values; 4 SE: a false failure has probability ~6e-5).
    for values, truth in ((g2s, true_g2), (traces, true_trace)):
        se = np.std(values) / np.sqrt(repeats)
        assert abs(np.mean(values) - truth) < 4 * se, (np.mean(values), truth, se)
    # and the ratio of the means recovers B_simple = tr(Sigma) / |G|^2 (15% covers its sampling error)
    assert abs(np.mean(traces) / np.mean(g2s) / (true_trace / true_g2) - 1) < 0.15


def test_measuring_leaves_a_real_method_as_it_was():
    cfg = load_config(SPACES / "byol.yaml", ["model.width=4", "data.crop_size=8"])
    method = build_method(cfg, 1)
    method.train()
    gen = torch.Generator().manual_seed(1)
    views = [torch.rand(16, 1, 8, 8, generator=gen) for _ in range(2)]
    loss, _ = method(views, None)
    loss.backward()
    grads = [p.grad.clone() for p in method.parameters() if p.grad is not None]
    buffers = [b.clone() for b in method.buffers()]
    assert any(b.dtype.is_floating_point for b in buffers)  # BatchNorm running stats: the passes move them
    got = measure_noise_scale(method, views, None)
    assert {"noise_scale", "grad_sq_norm_est", "grad_trace_cov_est"} <= set(got)
    assert np.isfinite(got["grad_sq_norm_est"])
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, [p for p in method.parameters() if p.grad is not None]))
    assert all(torch.equal(a, b) for a, b in zip(buffers, method.buffers()))
    assert wanted(None, method) and not wanted(False, method)


def test_a_batch_whose_gradient_noise_swamps_the_mean_has_no_noise_scale():
    # 4 rows in 2 pieces, w = 0: piece gradients -(1*(1,0) + 1*(0,1))/2 = -(1,1)/2 and
    # -(-1*(1,0) + -1*(0,1))/2 = (1,1)/2 cancel, so |G_4|^2 = 0 and |g_i|^2 = 1/2: the |G|^2 estimate
    # (4 * 0 - 2 * 1/2) / (4 - 2) = -1/2, and tr(Sigma) / |G|^2 is no batch size: null with a note
    # (issue 22: it was written as Infinity), while the estimate keeps its sign under its own name.
    x = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float64)
    y = torch.tensor([1.0, 1, -1, -1], dtype=torch.float64)[:, None]
    got = measure_noise_scale(Regression(torch.zeros(2, dtype=torch.float64)), [x, y], None, pieces=2)
    assert got["noise_scale"] is None and got["noise_scale_note"].startswith("|G|^2 estimate <= 0")
    assert np.isclose(got["grad_sq_norm_est"], -0.5, rtol=1e-12) and "grad_sq_norm" not in got
    assert np.isclose(got["grad_trace_cov_est"], (0.5 - 0) / (1 / 2 - 1 / 4), rtol=1e-12)


def test_noise_scale_is_the_ratio_only_where_both_estimates_are_positive():
    assert noise_scale_metrics(0.5, 2.0) == {"grad_sq_norm_est": 0.5, "grad_trace_cov_est": 2.0, "noise_scale": 4.0}
    for g2, trace, why in ((0.0, 2.0, "|G|^2 estimate <= 0"), (-0.3787, 2.0, "|G|^2 estimate <= 0"),
                           (0.5, -1.0, "tr(Sigma) estimate <= 0"), (0.5, 0.0, "tr(Sigma) estimate <= 0"),
                           (float("nan"), 2.0, "gradient norms not finite")):
        got = noise_scale_metrics(g2, trace)
        assert got["noise_scale"] is None and got["noise_scale_note"].startswith(why), (g2, trace, got)
        assert got["grad_trace_cov_est"] == trace


def test_a_scaling_run_takes_the_last_evaluations_noise_scale_even_when_it_is_null():
    # raysl scale's per-run B_simple: a null at the last evaluation (with its note) stays null rather
    # than falling back to an earlier evaluation's value, measured at another loss
    import pandas as pd

    from raysl.scaling_fits import _last_noise_scale

    note = "|G|^2 estimate <= 0: ..."
    rows = pd.DataFrame({"epoch": [1, 2, 3], "noise_scale": [40.0, 55.0, None], "noise_scale_note": [None, None, note]})
    assert _last_noise_scale(rows) is None
    rows = pd.DataFrame({"epoch": [1, 2, 3], "noise_scale": [40.0, 55.0, None], "noise_scale_note": [None] * 3})
    assert _last_noise_scale(rows) == 55.0  # epoch 3 did not evaluate
    assert _last_noise_scale(pd.DataFrame({"epoch": [1], "loss": [1.0]})) is None  # never logged


def test_auto_is_off_for_in_batch_negatives():
    cfg = load_config(SPACES / "simclr.yaml", ["model.width=4", "data.crop_size=8"])
    method = build_method(cfg, 1)
    assert not wanted(None, method) and wanted(True, method)


def test_training_logs_the_noise_scale_at_each_evaluation(digits_dir):
    from raysl.loop_io import LocalIO
    from raysl.train import train_worker

    cfg = load_config(SPACES / "byol.yaml", ["optim.epochs=2", "eval.every_epochs=1", "model.width=4",
                                             "optim.batch_size=64"])
    io = LocalIO()
    train_worker({"config": cfg.model_dump(mode="json"), "data_dir": digits_dir}, io)
    values = [r.get("noise_scale") for r in io.reports]
    assert len(values) == 2 and all(v is not None and np.isfinite(v) for v in values), io.reports
    off = load_config(SPACES / "byol.yaml", ["optim.epochs=1", "model.width=4", "eval.noise_scale=false"])
    io = LocalIO()
    train_worker({"config": off.model_dump(mode="json"), "data_dir": digits_dir}, io)
    assert "noise_scale" not in io.reports[-1]
