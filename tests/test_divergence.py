"""The divergence watch names the first non-finite step, however late it reads the record."""

from __future__ import annotations

import math

import pytest
import torch

from raysl.divergence import DivergenceWatch
from raysl.errors import DivergedError

CPU = torch.device("cpu")


def losses(*values: float) -> list[torch.Tensor]:
    return [torch.tensor(v) for v in values]


def test_every_step_raises_at_the_bad_step():
    watch = DivergenceWatch(CPU, every=1)
    watch.observe(torch.tensor(1.0), step=10, epoch=0)
    with pytest.raises(DivergedError, match=r"^diverged at step 11 \(epoch 0\): loss is nan;"):
        watch.observe(torch.tensor(math.nan), step=11, epoch=0)


def test_deferred_reads_name_the_first_bad_step_not_the_step_that_read_it():
    watch = DivergenceWatch(CPU, every=4)
    read_at = None
    with pytest.raises(DivergedError, match=r"^diverged at step 102 \(epoch 3\): loss is inf;"):
        for step, loss in enumerate(losses(2.0, 1.5, math.inf, math.nan, 1.0, 0.5)):
            read_at = step
            watch.observe(loss, step=100 + step, epoch=3)
    assert read_at == 3  # the 4th observation read the record back


def test_finite_losses_never_raise():
    watch = DivergenceWatch(CPU, every=3)
    with watch.epoch():
        for step, loss in enumerate(losses(3.0, 2.0, 1.0, 1e30, -5.0)):
            watch.observe(loss, step=step, epoch=0)


def test_epoch_end_reads_what_the_interval_has_not():
    watch = DivergenceWatch(CPU, every=32)
    with pytest.raises(DivergedError, match=r"^diverged at step 1 \(epoch 5\)"):
        with watch.epoch():
            for step, loss in enumerate(losses(1.0, math.nan, 1.0)):
                watch.observe(loss, step=step, epoch=5)


def test_an_error_after_an_unread_divergence_is_reported_as_the_divergence():
    watch = DivergenceWatch(CPU, every=32)
    with pytest.raises(DivergedError, match=r"^diverged at step 7") as info:
        with watch.epoch():
            watch.observe(torch.tensor(math.nan), step=7, epoch=0)
            # what a later step on NaN weights may raise (DirectPred's eigendecomposition)
            raise RuntimeError("linalg.eigh: the algorithm failed to converge")
    assert isinstance(info.value.__context__, RuntimeError)


def test_an_unrelated_error_with_finite_losses_passes_through():
    watch = DivergenceWatch(CPU, every=32)
    with pytest.raises(KeyError, match="not a divergence"):
        with watch.epoch():
            watch.observe(torch.tensor(1.0), step=0, epoch=0)
            raise KeyError("not a divergence")


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be >= 1"):
        DivergenceWatch(CPU, every=0)
