"""Schedules as pure functions of training progress.

Every function takes ``t``, the fraction of training done (``step / total_steps``),
and returns the value for that point. ``t`` is clamped into ``[0, 1]``, so a
caller may pass ``step / total_steps`` without worrying about the last step or a
resumed run overshooting. All fractions (``warmup``, ``milestones``, ...) are
fractions of the whole run, never of a segment.

The learning-rate schedules share the signature ``f(t, base, **knobs)`` and are
registered in :data:`SCHEDULES`; :func:`lr_at` looks one up by name, which is
how the ``schedule`` config section selects one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = [
    "SCHEDULES",
    "constant",
    "ema_momentum",
    "infinite",
    "lr_at",
    "step",
    "teacher_temperature",
    "warmup_cosine",
    "weight_decay_cosine",
]


def _clamp(t: float) -> float:
    t = float(t)
    if math.isnan(t):
        raise ValueError("schedule progress t is NaN; pass step / total_steps")
    return min(1.0, max(0.0, t))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction of training in [0, 1], got {value}")


def _linear(t: float, t0: float, t1: float, v0: float, v1: float) -> float:
    """Straight line from (t0, v0) to (t1, v1); a zero-length segment gives v1."""
    if t1 <= t0:
        return v1
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def _cosine(t: float, t0: float, t1: float, v0: float, v1: float) -> float:
    """Half-cosine from (t0, v0) to (t1, v1); exactly (v0 + v1) / 2 at the middle."""
    if t1 <= t0:
        return v1
    u = (t - t0) / (t1 - t0)
    return v1 + (v0 - v1) * (1.0 + math.cos(math.pi * u)) / 2.0


# --------------------------------------------------------------------------- #
# Learning-rate schedules
# --------------------------------------------------------------------------- #


def warmup_cosine(
    t: float, base: float, *, warmup: float = 0.1, final: float = 0.0, start: float = 0.0
) -> float:
    """Linear warm-up, then cosine decay (SGDR without restarts; SimCLR, BYOL, DINO).

    - ``[0, warmup]``: linear from ``start`` to ``base``.
    - ``[warmup, 1]``: cosine from ``base`` to ``final``.
    """
    t = _clamp(t)
    _check_fraction("warmup", warmup)
    if t < warmup or warmup == 1.0:  # warmup == 1: all warm-up, no decay
        return _linear(t, 0.0, warmup, start, base)
    return _cosine(t, warmup, 1.0, base, final)


def constant(t: float, base: float, *, warmup: float = 0.0, start: float = 0.0) -> float:
    """Optional linear warm-up from ``start`` to ``base`` over ``warmup``, then ``base``."""
    t = _clamp(t)
    _check_fraction("warmup", warmup)
    if t < warmup:
        return _linear(t, 0.0, warmup, start, base)
    return float(base)


def step(
    t: float,
    base: float,
    *,
    milestones: Sequence[float] = (0.6, 0.8),
    gamma: float = 0.1,
    warmup: float = 0.0,
) -> float:
    """Step decay: ``base * gamma ** (number of milestones reached)``.

    A milestone ``m`` is reached when ``t >= m``. With ``warmup > 0`` the value
    is additionally scaled by a linear ramp from 0 to 1 over the first
    ``warmup`` fraction.
    """
    t = _clamp(t)
    _check_fraction("warmup", warmup)
    milestones = tuple(float(m) for m in milestones)
    for m in milestones:
        _check_fraction("each milestone", m)
    if list(milestones) != sorted(milestones):
        raise ValueError(f"milestones must be increasing, got {milestones}")
    reached = sum(1 for m in milestones if t >= m)
    ramp = _linear(t, 0.0, warmup, 0.0, 1.0) if t < warmup else 1.0
    return base * gamma**reached * ramp


def infinite(
    t: float,
    base: float,
    *,
    warmup: float = 0.05,
    cooldown: float = 0.1,
    plateau: float = 0.5,
    decay_end: float = 0.5,
    final: float = 0.0,
) -> float:
    """The "infinite" schedule: warm-up, cosine to a plateau, constant, cool-down.

    From Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually
    Pre-train Large Language Models", and Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations". The long constant
    phase lets a run be extended (or checkpoints branched off) without knowing
    the total length in advance; only the short cool-down has to be re-run.

    Segments, all as fractions of the whole run:

    - ``[0, warmup]``: linear from 0 to ``base``.
    - ``[warmup, decay_end]``: cosine from ``base`` down to ``plateau * base``.
    - ``[decay_end, 1 - cooldown]``: constant ``plateau * base``.
    - ``[1 - cooldown, 1]``: linear from ``plateau * base`` to ``final``.

    Args:
        warmup: fraction of training spent warming up (ends at ``t = warmup``).
        cooldown: length of the final linear cool-down (starts at ``1 - cooldown``).
        plateau: the constant phase's value as a multiple of ``base`` (0.5 = half).
        decay_end: progress at which the cosine decay reaches the plateau.
        final: absolute value reached at ``t = 1`` (with ``cooldown = 0`` the
            schedule ends on the plateau and ``final`` is unused).

    Raises:
        ValueError: unless ``0 <= warmup <= decay_end <= 1 - cooldown <= 1`` and
            ``plateau >= 0``.
    """
    t = _clamp(t)
    _check_fraction("warmup", warmup)
    _check_fraction("cooldown", cooldown)
    _check_fraction("decay_end", decay_end)
    cooldown_start = 1.0 - cooldown
    if not warmup <= decay_end <= cooldown_start:
        raise ValueError(
            "infinite schedule needs warmup <= decay_end <= 1 - cooldown, got "
            f"warmup={warmup}, decay_end={decay_end}, 1 - cooldown={cooldown_start:g}; "
            "shorten the warm-up or the cool-down, or move decay_end between them"
        )
    if plateau < 0:
        raise ValueError(f"plateau is a multiple of base and must be >= 0, got {plateau}")
    level = plateau * base
    if t < warmup:
        return _linear(t, 0.0, warmup, 0.0, base)
    if t < decay_end:
        return _cosine(t, warmup, decay_end, base, level)
    if t < cooldown_start or cooldown == 0.0:  # no cool-down: stay on the plateau
        return level
    return _linear(t, cooldown_start, 1.0, level, final)


SCHEDULES: dict[str, Callable[..., float]] = {
    "warmup_cosine": warmup_cosine,
    "constant": constant,
    "step": step,
    "infinite": infinite,
}


def lr_at(name: str, t: float, base: float, **kwargs: object) -> float:
    """Learning rate of the schedule called ``name`` at progress ``t``.

    Raises:
        ValueError: for a name not in :data:`SCHEDULES` (the message lists them).
    """
    try:
        schedule = SCHEDULES[name]
    except KeyError:
        allowed = ", ".join(sorted(SCHEDULES))
        raise ValueError(f"unknown schedule {name!r}; allowed: {allowed}") from None
    return schedule(t, base, **kwargs)


# --------------------------------------------------------------------------- #
# Method-specific schedules
# --------------------------------------------------------------------------- #


def ema_momentum(t: float, base: float = 0.99, final: float = 1.0) -> float:
    """EMA target momentum, cosine from ``base`` to ``final`` (BYOL, Grill et al. 2020).

    ``tau = final - (final - base) * (cos(pi * t) + 1) / 2``; DINO uses 0.996 -> 1.
    """
    t = _clamp(t)
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def teacher_temperature(
    t: float, base: float = 0.04, final: float = 0.07, warmup: float = 0.3
) -> float:
    """DINO teacher temperature (Caron et al. 2021): linear ``base`` -> ``final``
    over the first ``warmup`` fraction, then constant ``final``."""
    t = _clamp(t)
    _check_fraction("warmup", warmup)
    if t < warmup:
        return _linear(t, 0.0, warmup, base, final)
    return float(final)


def weight_decay_cosine(t: float, base: float = 0.04, final: float = 0.4) -> float:
    """DINO weight decay: cosine from ``base`` at ``t = 0`` to ``final`` at ``t = 1``."""
    t = _clamp(t)
    return _cosine(t, 0.0, 1.0, base, final)
