"""Values of every schedule at its ends and joins, plus monotonicity and validation."""

from __future__ import annotations

import math

import pytest

from raysl import schedules
from raysl.schedules import (
    SCHEDULES,
    constant,
    ema_momentum,
    infinite,
    lr_at,
    step,
    teacher_temperature,
    warmup_cosine,
    weight_decay_cosine,
)


def grid(a: float, b: float, n: int = 50) -> list[float]:
    return [a + (b - a) * i / n for i in range(n + 1)]


def non_decreasing(values: list[float]) -> bool:
    return all(x <= y + 1e-12 for x, y in zip(values, values[1:]))


def non_increasing(values: list[float]) -> bool:
    return all(x >= y - 1e-12 for x, y in zip(values, values[1:]))


# --------------------------------------------------------------------------- #
# warmup_cosine
# --------------------------------------------------------------------------- #


def test_warmup_cosine_ends_and_join():
    f = lambda t: warmup_cosine(t, 1.0, warmup=0.1, final=0.01, start=0.1)  # noqa: E731
    assert f(0.0) == pytest.approx(0.1)
    assert f(0.05) == pytest.approx(0.55)  # half-way through the linear warm-up
    assert f(0.1) == pytest.approx(1.0)
    assert f(0.1 - 1e-9) == pytest.approx(1.0, abs=1e-6)  # continuous at the join
    assert f(0.55) == pytest.approx((1.0 + 0.01) / 2)  # middle of the cosine
    assert f(1.0) == pytest.approx(0.01)


def test_warmup_cosine_monotone_segments():
    f = lambda t: warmup_cosine(t, 2.0, warmup=0.2)  # noqa: E731
    assert non_decreasing([f(t) for t in grid(0.0, 0.2)])
    assert non_increasing([f(t) for t in grid(0.2, 1.0)])


def test_warmup_cosine_without_warmup():
    assert warmup_cosine(0.0, 3.0, warmup=0.0) == pytest.approx(3.0)
    assert warmup_cosine(0.5, 3.0, warmup=0.0) == pytest.approx(1.5)
    assert warmup_cosine(1.0, 3.0, warmup=0.0) == pytest.approx(0.0)


def test_warmup_cosine_all_warmup():
    assert warmup_cosine(0.5, 1.0, warmup=1.0) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 1.0, warmup=1.0) == pytest.approx(1.0)


def test_t_is_clamped():
    assert warmup_cosine(-0.5, 1.0, warmup=0.1) == pytest.approx(0.0)
    assert warmup_cosine(1.7, 1.0, warmup=0.1, final=0.2) == pytest.approx(0.2)
    assert ema_momentum(2.0) == pytest.approx(1.0)
    assert ema_momentum(-1.0) == pytest.approx(0.99)
    assert infinite(5.0, 1.0) == pytest.approx(0.0)


def test_nan_progress_rejected():
    with pytest.raises(ValueError, match="NaN"):
        warmup_cosine(math.nan, 1.0)


# --------------------------------------------------------------------------- #
# constant, step
# --------------------------------------------------------------------------- #


def test_constant():
    assert constant(0.0, 0.5) == pytest.approx(0.5)
    assert constant(1.0, 0.5) == pytest.approx(0.5)
    assert constant(0.0, 0.5, warmup=0.2) == pytest.approx(0.0)
    assert constant(0.1, 0.5, warmup=0.2) == pytest.approx(0.25)
    assert constant(0.2, 0.5, warmup=0.2) == pytest.approx(0.5)
    assert constant(0.0, 0.5, warmup=0.2, start=0.1) == pytest.approx(0.1)
    assert non_decreasing([constant(t, 0.5, warmup=0.2) for t in grid(0.0, 1.0)])


def test_step():
    assert step(0.0, 1.0) == pytest.approx(1.0)
    assert step(0.599, 1.0) == pytest.approx(1.0)
    assert step(0.6, 1.0) == pytest.approx(0.1)
    assert step(0.8, 1.0) == pytest.approx(0.01)
    assert step(1.0, 1.0) == pytest.approx(0.01)
    assert step(0.5, 1.0, milestones=(0.25, 0.5), gamma=0.5) == pytest.approx(0.25)
    assert non_increasing([step(t, 1.0) for t in grid(0.0, 1.0)])


def test_step_with_warmup():
    assert step(0.0, 1.0, warmup=0.1) == pytest.approx(0.0)
    assert step(0.05, 1.0, warmup=0.1) == pytest.approx(0.5)
    assert step(0.1, 1.0, warmup=0.1) == pytest.approx(1.0)
    assert step(0.7, 1.0, warmup=0.1) == pytest.approx(0.1)


def test_step_validation():
    with pytest.raises(ValueError, match="increasing"):
        step(0.5, 1.0, milestones=(0.8, 0.6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        step(0.5, 1.0, milestones=(0.5, 1.5))


# --------------------------------------------------------------------------- #
# infinite
# --------------------------------------------------------------------------- #

INF = dict(warmup=0.1, decay_end=0.5, plateau=0.25, cooldown=0.2, final=0.0)


def test_infinite_joins():
    f = lambda t: infinite(t, 2.0, **INF)  # noqa: E731
    assert f(0.0) == pytest.approx(0.0)
    assert f(0.05) == pytest.approx(1.0)  # half-way up the warm-up
    assert f(0.1) == pytest.approx(2.0)  # end of warm-up = base
    assert f(0.3) == pytest.approx((2.0 + 0.5) / 2)  # middle of the cosine
    assert f(0.5) == pytest.approx(0.5)  # end of decay = plateau * base
    assert f(0.5 - 1e-9) == pytest.approx(0.5, abs=1e-6)
    assert f(0.65) == pytest.approx(0.5)  # on the plateau
    assert f(0.8) == pytest.approx(0.5)  # start of cool-down
    assert f(0.9) == pytest.approx(0.25)  # half-way down the cool-down
    assert f(1.0) == pytest.approx(0.0)


def test_infinite_final_value():
    assert infinite(1.0, 1.0, final=0.01) == pytest.approx(0.01)
    assert infinite(0.95, 1.0, final=0.1) == pytest.approx((0.5 + 0.1) / 2)


def test_infinite_monotone_segments():
    f = lambda t: infinite(t, 1.0, **INF)  # noqa: E731
    assert non_decreasing([f(t) for t in grid(0.0, 0.1)])
    assert non_increasing([f(t) for t in grid(0.1, 0.5)])
    assert len({round(f(t), 12) for t in grid(0.5, 0.8)}) == 1
    assert non_increasing([f(t) for t in grid(0.8, 1.0)])


def test_infinite_degenerate_segments():
    # No cosine segment: the plateau starts right after the warm-up.
    assert infinite(0.2, 1.0, warmup=0.2, decay_end=0.2, cooldown=0.0) == pytest.approx(0.5)
    # No plateau: decay ends where the cool-down starts.
    assert infinite(0.9, 1.0, warmup=0.0, decay_end=0.9, cooldown=0.1) == pytest.approx(0.5)
    # No plateau and no cool-down: the cosine ends on the plateau level at t = 1.
    assert infinite(1.0, 1.0, warmup=0.0, decay_end=1.0, cooldown=0.0) == pytest.approx(0.5)
    assert infinite(1.0, 1.0, cooldown=0.0, final=0.1) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(warmup=0.6, decay_end=0.5), "warmup <= decay_end"),
        (dict(decay_end=0.95, cooldown=0.1), "1 - cooldown"),
        (dict(cooldown=1.5), "cooldown"),
        (dict(warmup=-0.1), "warmup"),
        (dict(plateau=-1.0), "plateau"),
    ],
)
def test_infinite_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        infinite(0.5, 1.0, **kwargs)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #


def test_registry_and_lr_at():
    assert set(SCHEDULES) == {"warmup_cosine", "constant", "step", "infinite"}
    assert lr_at("warmup_cosine", 0.1, 1.0, warmup=0.1) == pytest.approx(1.0)
    assert lr_at("infinite", 0.5, 1.0) == pytest.approx(0.5)
    assert lr_at("constant", 0.3, 0.2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="allowed: constant, infinite, step, warmup_cosine"):
        lr_at("linear", 0.5, 1.0)


def test_all_registered_schedules_start_and_end_sensibly():
    for name, fn in SCHEDULES.items():
        values = [fn(t, 1.0) for t in grid(0.0, 1.0)]
        assert all(0.0 <= v <= 1.0 for v in values), name
        assert fn is getattr(schedules, name)


# --------------------------------------------------------------------------- #
# Method-specific schedules
# --------------------------------------------------------------------------- #


def test_ema_momentum():
    assert ema_momentum(0.0) == pytest.approx(0.99)
    assert ema_momentum(0.5) == pytest.approx(0.995)
    assert ema_momentum(1.0) == pytest.approx(1.0)
    assert ema_momentum(0.0, base=0.996) == pytest.approx(0.996)
    assert non_decreasing([ema_momentum(t) for t in grid(0.0, 1.0)])


def test_teacher_temperature():
    assert teacher_temperature(0.0) == pytest.approx(0.04)
    assert teacher_temperature(0.15) == pytest.approx(0.055)
    assert teacher_temperature(0.3) == pytest.approx(0.07)
    assert teacher_temperature(1.0) == pytest.approx(0.07)
    assert teacher_temperature(0.0, warmup=0.0) == pytest.approx(0.07)
    assert non_decreasing([teacher_temperature(t) for t in grid(0.0, 1.0)])


def test_weight_decay_cosine():
    assert weight_decay_cosine(0.0) == pytest.approx(0.04)
    assert weight_decay_cosine(0.5) == pytest.approx(0.22)
    assert weight_decay_cosine(1.0) == pytest.approx(0.4)
    assert non_decreasing([weight_decay_cosine(t) for t in grid(0.0, 1.0)])
