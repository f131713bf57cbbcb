"""Where a run's wall time goes: the time keys every report of ``raysl.train.train_worker`` carries.

Kept apart from ``raysl.results`` (pandas) and ``raysl.train`` (torch) so that the training loop, the
results reader and the search's result filler share one definition without importing each other.

- ``train_s``: wall time of the epoch's training steps (streaming the batches, augmenting them, the
  optimizer steps; on a GPU up to a synchronize after the last step), what ``images_per_s`` divides by.
- ``eval_s``: wall time of the epoch's evaluation (the gradient noise scale and ``evaluate_method``;
  0.0 when the epoch did not evaluate).
- ``startup_s``: wall time from the worker loop's start to its first training step (config, data
  description, model build, restoring a checkpoint, the evaluation images and the projector's spread
  at initialisation): the same under Ray Train, in-process and under Tune, since the loop measures it.
  A resumed run's rows carry the resumed loop's own start-up.

What is left of an epoch's wall time, between two consecutive reports, is writing the checkpoint and
reporting it (``train_s + eval_s`` is the rest).
"""

from __future__ import annotations

TRAIN_S = "train_s"
EVAL_S = "eval_s"
STARTUP_S = "startup_s"
# in every report, evaluating or not: bookkeeping of the run, never an evaluation's result
TIME_KEYS = (TRAIN_S, EVAL_S, STARTUP_S)
