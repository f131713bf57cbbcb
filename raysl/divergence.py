"""Finding the first training step whose loss is not finite, without a device sync every step.

Reading a CUDA tensor's value (``.item()``) waits for every queued kernel, so a
per-step ``isfinite(loss).item()`` stops the host from running ahead of the GPU.
The watch records the first bad step on the device and reads it back every
``every`` steps and when an epoch's steps end (``with watch.epoch(): ...``), so
a divergence is still reported at the exact step it happened, a few steps later
at most, and before the caller reports or saves anything of that epoch: no
checkpoint is written from diverged weights. An error raised by a step that
runs on weights a non-finite loss already spoiled (an eigendecomposition of
NaNs, say) is reported as that divergence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from raysl.errors import DivergedError


class DivergenceWatch:
    def __init__(self, device: torch.device, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self._unchecked = 0
        self._epoch = 0

    def observe(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        """Record the loss of global step ``step`` (0-based ``epoch``); may raise DivergedError."""
        loss = loss.detach().float()
        newly_bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, torch.full_like(self._first_bad, step), self._first_bad)
        self._bad_loss = torch.where(newly_bad, loss, self._bad_loss)
        self._epoch = epoch
        self._unchecked += 1
        if self._unchecked >= self.every:
            self.check()

    @contextmanager
    def epoch(self) -> Iterator[None]:
        """Wraps one epoch's steps; reads the record when they end, normally or by an error."""
        try:
            yield
        except DivergedError:
            raise
        except Exception:
            self.check()  # a divergence not yet read back explains the error
            raise
        self.check()

    def check(self) -> None:
        """Read the record back (one device sync); raise DivergedError naming the first bad step.

        Steps between two checks lie in one epoch, as every epoch ends with a check.
        """
        self._unchecked = 0
        step = int(self._first_bad.item())
        if step >= 0:
            raise DivergedError(
                f"diverged at step {step} (epoch {self._epoch}): loss is {self._bad_loss.item()}; "
                "lower optim.lr or raise the temperature; the last good checkpoint is kept"
            )
