"""Batch-size rules: the learning rate (linear, Goyal et al. 2017; square root, Krizhevsky 2014 and Malladi
et al. 2022 for Adam) and EMA momenta (Busbridge et al. 2023, "How to Scale Your EMA") at a new batch size."""

from __future__ import annotations

import math

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
