"""What a user sees while a run trains: step progress inside an epoch, epoch lines, trial lines.

The training steps run in a Ray Train worker, whose stdout is not the user's
terminal (and ``raysl train`` turns Ray's log forwarding off unless
``--verbose``), so progress travels through a small Ray actor, the relay:

- rank 0 sends ``{"kind": "step", ...}`` at most every ``every_s`` seconds of
  wall time (fire-and-forget; no GPU sync: it counts steps, it reads no tensor);
- rank 0 sends its notes (the start-up banner, ``{"kind": "line"}``) and, just
  before each report, the epoch's ``[raysl] epoch=...`` line (``"epoch"``), and
  waits for those: one caller's calls to an actor run in the order made, so the
  relay holds everything in the order rank 0 said it, and all of it before
  ``trainer.fit()`` returns. (The TrainController's report callback would be
  too late: it sees a report while rank 0 already trains the next epoch.)
- the driver polls the relay from a thread and a :class:`raysl.console.Renderer` turns the
  messages into text on stderr: on a terminal one ``\\r``-updated progress line,
  otherwise plain lines at most every ``plain_every_s`` seconds; never ANSI codes.

``RAYSL_PROGRESS_EVERY_S`` (seconds, 0 = every step) overrides both intervals.
Without a relay (a Tune trial in its own process, tests, LocalIO) the worker's
notes are printed and step progress is skipped.

The formatting functions are pure (the progress line and its renderer are in :mod:`raysl.console`,
which ``raysl data prepare`` uses too); ``tune_view`` builds the compact Tune callback.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any, Callable, TextIO

from raysl.console import PLAIN_EVERY_S, Renderer, format_duration, stream_isatty

PROGRESS_ENV = "RAYSL_PROGRESS_EVERY_S"
TTY_EVERY_S = 0.5  # a terminal bar updates twice a second
TUNE_STATUS_EVERY_S = 30.0  # `raysl tune`'s status line, when redirected
POLL_S = 0.25  # how often the driver asks the relay for news
EPOCH_FIELDS = ("epoch", "loss", "knn_acc", "rankme", "alignment", "uniformity", "images_per_s")


# --------------------------------------------------------------------------
# pure formatting


# rates are shown as whole numbers: 4 significant digits turned 9010 and 10,040 images/s into "9010" and
# "1.004e+04" in one column
WHOLE_NUMBER_FIELDS = frozenset({"images_per_s"})


def epoch_line(metrics: dict, fields: tuple[str, ...] = EPOCH_FIELDS) -> str:
    """``[raysl] epoch=5  loss=4.02  knn_acc=0.98 ... images_per_s=10040`` (the fields a report has, in
    ``fields`` order; rates as whole numbers, never with an exponent)."""
    return "[raysl] " + "  ".join(f"{k}={format_metric(k, metrics[k])}" for k in fields if k in metrics)


def format_metric(key: str, value: Any) -> str:
    """A metric's value as raysl prints it: 4 significant digits, a rate as a whole number."""
    if isinstance(value, float) and key in WHOLE_NUMBER_FIELDS and math.isfinite(value):
        return f"{value:.0f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def every_s(default: float) -> float:
    """The progress interval: ``RAYSL_PROGRESS_EVERY_S`` if set (0 = every update), else ``default``."""
    raw = os.environ.get(PROGRESS_ENV)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return max(0.0, value) if math.isfinite(value) else default


# --------------------------------------------------------------------------
# the relay (a Ray actor) and its two ends


class RelayBuffer:
    """The relay's state; runs as a zero-CPU Ray actor (``start_relay``)."""

    def __init__(self):
        self.items: list[dict] = []

    def put(self, item: dict) -> None:
        self.items.append(item)

    def take(self) -> list[dict]:
        items, self.items = self.items, []
        return items


def start_relay():
    """A relay actor for one run (the driver creates it after ``ray.init``)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node: a worker node can go away (a preempted spot node) and the run go on
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, max_restarts=0)(RelayBuffer).options(scheduling_strategy=here).remote()


def relay_config(relay, tty: bool) -> dict:
    """What the driver puts in ``train_loop_config["progress"]`` for the workers."""
    return {"relay": relay, "every_s": every_s(TTY_EVERY_S if tty else min(PLAIN_EVERY_S, 5.0))}


class StepTicker:
    """Rank 0's side: cheap per-step progress, throttled by wall time; a no-op on other ranks."""

    def __init__(self, relay=None, every_s: float = TTY_EVERY_S, epochs: int = 0, images_per_step: int = 0):
        self.relay = relay
        self.every_s = every_s
        self.epochs = epochs
        self.images_per_step = images_per_step
        self.last_sent = -math.inf

    @classmethod
    def from_loop_config(cls, loop_config: dict, rank: int, epochs: int, images_per_step: int) -> "StepTicker":
        progress = loop_config.get("progress") or {}
        relay = progress.get("relay") if rank == 0 else None
        return cls(relay, float(progress.get("every_s", TTY_EVERY_S)), epochs, images_per_step)

    def say(self, text: str) -> None:
        """A note for the user (rank 0): relayed to the driver, or printed when there is no relay."""
        if not self._send({"kind": "line", "text": text}):
            print(text, flush=True)

    def _send(self, item: dict) -> bool:
        """Put ``item`` in the relay and wait until it is there; False without a (working) relay."""
        if self.relay is None:
            return False
        import ray

        try:
            ray.get(self.relay.put.remote(item), timeout=60)
            return True
        except Exception:  # noqa: BLE001 - progress must never fail a run; go on without it
            self.relay = None
            return False

    def step(self, epoch: int, done: int, total: int, epoch_start: float) -> None:
        """After each optimizer step; ``epoch`` 0-based, ``epoch_start`` a ``time.perf_counter()`` value."""
        if self.relay is None:
            return
        now = time.perf_counter()
        last = done >= total
        if not last and now - self.last_sent < self.every_s:
            return
        self.last_sent = now
        self.relay.put.remote({
            "kind": "step", "epoch": epoch + 1, "epochs": self.epochs, "done": done, "total": total,
            "elapsed_s": now - epoch_start, "images_per_step": self.images_per_step,
        })

    def epoch_done(self, metrics: dict) -> None:
        """Rank 0, before reporting an epoch: its ``[raysl] epoch=...`` line, after this epoch's progress."""
        # without a relay the runner shows its reports itself
        self._send({"kind": "epoch", "epoch": metrics.get("epoch"), "text": epoch_line(metrics)})


class DriverView:
    """The driver's side: a thread that polls the relay and writes what the renderer makes of it."""

    def __init__(self, relay, stream: TextIO | None = None, renderer: Renderer | None = None):
        self.relay = relay
        self.stream = stream or sys.stderr
        tty = stream_isatty(self.stream)
        self.renderer = renderer or Renderer(tty, plain_every_s=every_s(PLAIN_EVERY_S), tty_every_s=0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raysl-progress", daemon=True)

    def __enter__(self) -> "DriverView":
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop.set()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._write(self.renderer.close())  # Ctrl+C: do not make the user wait for Ray
            return
        self._thread.join(timeout=15)
        # what arrived last: every epoch line is in the relay once fit() returned
        self._drain(timeout=30 if exc_type is None else 3)
        self._write(self.renderer.close())

    def _drain(self, timeout: float | None = None) -> None:
        import ray

        try:
            # no timeout while polling: a timed-out take() would lose what it took
            items = ray.get(self.relay.take.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - progress must never fail a run
            return
        now = time.monotonic()
        self._write("".join(self.renderer.feed(item, now) for item in items))

    def _write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drain()


# --------------------------------------------------------------------------
# `raysl tune`: one line per ended trial and a periodic status line


def trial_line(trial_id: str, status: str, objectives: list[tuple[str, str]], result: dict,
               config: dict) -> str:
    """``[raysl] trial 00003 finished epoch=2 knn_acc=0.9833  method.temperature=0.1234 optim.lr=0.002``"""
    parts = [f"[raysl] trial {trial_id} {status}"]
    if result.get("epoch") is not None:
        parts.append(f"epoch={result['epoch']}")
    for metric, _ in objectives:
        if status in ("finished", "stopped") and metric in result:
            parts.append(f"{metric}={format_metric(metric, result[metric])}")
    text = " ".join(parts)
    searched = " ".join(f"{k}={_short(v)}" for k, v in sorted(config.items()))
    if searched:
        text += "  " + searched
    failures = result.get("worker_failures")
    if failures:
        text += f"  (recovered from {failures} worker failure{'s' * (failures != 1)}: restarted from its last checkpoint)"
    if result.get("error") and status not in ("finished", "stopped"):
        text += "  (" + " ".join(str(result["error"]).split())[:200] + ")"
    return text


def status_line(counts: dict[str, int], total: int, best: tuple[str, str, Any] | None, elapsed_s: float) -> str:
    """``[raysl] tune 0:01:10: 2 running, 3 done (1 stopped) of 8; best knn_acc=0.98 (trial 00002)``"""
    running = counts.get("running", 0)
    ended = sum(v for k, v in counts.items() if k not in ("running", "pending"))
    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k not in ("running", "pending", "finished") and v)
    text = f"[raysl] tune {format_duration(elapsed_s)}: {running} running, {ended} done"
    if detail:
        text += f" ({detail})"
    text += f" of {total}"
    if best is not None:
        metric, trial_id, value = best
        text += f"; best {metric}={format_metric(metric, value)} (trial {trial_id})"
    return text


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def raysl_status(trial_status: str, result: dict) -> str:
    """A trial's raysl status from Tune's status and its last result (as the leaderboard reads it)."""
    if trial_status == "ERROR":
        return "errored"
    status = result.get("status")
    if not result:
        return "pending"
    if status in (None, "running"):
        return "stopped"  # ended early by the scheduler (or the budget)
    return str(status)


def tune_view(objectives: list[tuple[str, str]], total: int, stream: TextIO | None = None,
              clock: Callable[[], float] = time.monotonic):
    """A Tune ``Callback`` printing one line per ended trial and a status line (``\\r`` on a terminal).

    Tune pickles its callbacks into the experiment (``tuner.pkl``); this one pickles as a
    fresh view of the same search, so ``--resume`` shows it again.
    """
    from ray.tune import Callback

    out = stream or sys.stderr
    renderer = Renderer(stream_isatty(out), plain_every_s=every_s(TUNE_STATUS_EVERY_S), tty_every_s=1.0)
    metric, mode = objectives[0]
    sign = 1 if mode == "max" else -1

    class RayslTuneView(Callback):
        def __init__(self):
            self.start = clock()
            self.ended: dict[str, str] = {}
            self.best: tuple[str, str, Any] | None = None

        def __reduce__(self):
            return tune_view, (objectives, total)

        def _write(self, text: str) -> None:
            if text:
                out.write(text)
                out.flush()

        def _counts(self, trials) -> dict[str, int]:
            counts: dict[str, int] = {}
            for t in trials:
                status = self.ended.get(t.trial_id) or ("running" if t.status == "RUNNING" else "pending")
                counts[status] = counts.get(status, 0) + 1
            return counts

        def _end(self, trials, trial, status: str | None = None) -> None:
            if trial.trial_id in self.ended:
                return
            result = dict(trial.last_result or {})
            status = status or raysl_status(trial.status, result)
            self.ended[trial.trial_id] = status
            value = result.get(metric)
            if status in ("finished", "stopped") and isinstance(value, (int, float)) and math.isfinite(value):
                if self.best is None or sign * value > sign * self.best[2]:
                    self.best = (metric, trial.trial_id, value)
            self._write(renderer.line(trial_line(trial.trial_id, status, objectives, result,
                                                 dict(trial.config or {}))))
            self._status(trials, final=True)

        def _status(self, trials, final: bool = False) -> None:
            text = status_line(self._counts(trials), total, self.best, clock() - self.start)
            self._write(renderer.bar(text, clock(), final=final and renderer.tty))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trials, trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trials, trial, "errored")

        def on_trial_recover(self, iteration, trials, trial, **info):
            # a worker or the trial's process died (preemption, OOM kill) and Tune retries the trial
            epoch = (trial.last_result or {}).get("epoch")
            where = f"its last checkpoint (epoch {epoch})" if epoch else "its start"
            self._write(renderer.line(f"[raysl] trial {trial.trial_id} failed (a worker or its process died); "
                                      f"restarting from {where}"))

        def on_step_end(self, iteration, trials, **info):
            self._status(trials)

        def on_experiment_end(self, trials, **info):
            self._write(renderer.close())

    return RayslTuneView()
