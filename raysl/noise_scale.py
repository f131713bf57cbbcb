"""The gradient noise scale of a training batch (McCandlish et al. 2018), logged at eval epochs.

``B_simple = tr(Sigma) / |G|^2`` predicts the critical batch size: below it a
bigger batch cuts the steps almost proportionally, above it mostly wastes
examples. It is estimated from squared gradient norms at two batch sizes
(:func:`raysl.scaling_laws.gradient_noise_scale`): the batch of a training
step is cut into ``pieces`` equal parts, each part's gradient ``g_i`` is taken
on its own (batch ``b / pieces``), and their mean is the gradient of the whole
batch (batch ``b``) exactly when the loss is a mean of per-sample terms.

Measured by :func:`measure_noise_scale` with the unwrapped method (DDP's
gradient hooks only fire inside a DDP forward, so the pieces' gradients stay
local), after the epoch's last optimizer step, on that step's views: one
extra forward and backward over one batch per eval epoch. Every rank measures
its own share of the batch in step with the others (a method's forward may
gather or all-reduce: DINO's centre, MoCo's keys); rank 0's figures are
logged. Everything the extra passes touch is
put back: the parameters' gradients and every buffer (BatchNorm running
statistics, queues, per-sample state), so training goes on as if nothing
happened.

What is logged: ``grad_sq_norm_est`` and ``grad_trace_cov_est``, the unbiased
estimates of |G|^2 and tr(Sigma) from one batch. Unbiased is not positive: a
difference of two noisy norms, either can come out <= 0 on one batch (|G|^2 does
where the noise swamps the mean gradient, late in training or at a small
batch). They are kept as they are, negative too, under names that say they are
estimates, because the way to measure past that is to average them over
evaluations (or runs) and take the ratio of the means, and dropping or clipping
the negative ones would bias those means. ``noise_scale`` (B_simple) is their
ratio where both are > 0; otherwise it is None (null in results) and
``noise_scale_note`` says which estimate was not positive: a ratio with a
non-positive side is no batch size.

Biased where the loss couples the samples of a batch: in-batch negatives
(SimCLR, DCL, ...), batch statistics (Barlow Twins, VICReg, BatchNorm), so by
default (``eval.noise_scale: auto``) it is logged only for methods whose loss
is a per-sample mean (``Method.loss_is_sample_mean``); ``true`` logs it for
any method, to be read as a rough scale.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from raysl.scaling_laws import gradient_noise_scale

__all__ = ["DEFAULT_PIECES", "measure_noise_scale", "noise_scale_metrics", "wanted"]

DEFAULT_PIECES = 4


def wanted(setting: bool | None, method) -> bool:
    """``eval.noise_scale`` (None: auto) for this method."""
    return bool(getattr(method, "loss_is_sample_mean", False)) if setting is None else bool(setting)


def _flat_grad(params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float()
                      for p in params])


def noise_scale_metrics(g2: float, trace: float) -> dict[str, Any]:
    """The logged metrics of one batch's estimates ``g2`` of |G|^2 and ``trace`` of tr(Sigma).

    ``noise_scale`` = trace / g2 where both are finite and > 0, else None with a
    ``noise_scale_note`` saying why (see the module docstring).
    """
    out: dict[str, Any] = {"grad_sq_norm_est": g2, "grad_trace_cov_est": trace}
    if not (math.isfinite(g2) and math.isfinite(trace)):
        note = "gradient norms not finite"
    elif g2 <= 0:
        note = ("|G|^2 estimate <= 0: gradient noise swamps the mean gradient on one batch; "
                "use mean(grad_trace_cov_est) / mean(grad_sq_norm_est) over evaluations")
    elif trace <= 0:
        note = ("tr(Sigma) estimate <= 0: no gradient noise resolved on one batch; "
                "use mean(grad_trace_cov_est) / mean(grad_sq_norm_est) over evaluations")
    else:
        return {**out, "noise_scale": trace / g2}
    return {**out, "noise_scale": None, "noise_scale_note": note}


def measure_noise_scale(method: torch.nn.Module, views: Sequence[torch.Tensor], indices: torch.Tensor | None,
                        pieces: int = DEFAULT_PIECES) -> dict[str, Any]:
    """:func:`noise_scale_metrics` of one batch: ``noise_scale`` (B_simple, or None and a
    ``noise_scale_note``), ``grad_sq_norm_est`` (|G|^2) and ``grad_trace_cov_est`` (tr Sigma).

    ``views`` are the step's views (each [b, C, H, W], rows aligned); the rows
    are cut into ``pieces`` parts of ``b // pieces`` (a remainder is left out).
    Returns an empty dict when the batch is too small to cut.
    """
    b = int(views[0].shape[0])
    size = b // pieces
    if pieces < 2 or size < 1:
        return {}
    params = [p for p in method.parameters() if p.requires_grad]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    saved_buffers = [buf.detach().clone() for buf in method.buffers()]
    try:
        grads = []
        for i in range(pieces):
            rows = slice(i * size, (i + 1) * size)
            for p in params:
                p.grad = None
            loss, _ = method([v[rows] for v in views], None if indices is None else indices[rows])
            loss.backward()
            grads.append(_flat_grad(params))
        small = [float(g.pow(2).sum()) for g in grads]
        big = float(torch.stack(grads).mean(dim=0).pow(2).sum())
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        with torch.no_grad():
            for buf, value in zip(method.buffers(), saved_buffers):
                buf.copy_(value)
    found = gradient_noise_scale(small, size, [big], size * pieces)
    return noise_scale_metrics(found["G2"], found["trace_sigma"])
