"""Text for a terminal or a log: durations, rates, numbers (:func:`format_number`), a run's progress line and the
:class:`Renderer` that draws it.

Pure (no Ray, no raysl module): ``raysl data prepare`` draws its progress with it as well as
:mod:`raysl.progress`, which carries a training run's progress from its workers to the driver. Also
:func:`public_url`, a database URL as raysl prints it (without its password).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TextIO

PLAIN_EVERY_S = 15.0  # a redirected log gets a progress line at most every 15 s


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` when unknown), e.g. 130 -> ``0:02:10``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_rate(images_per_s: float | None) -> str:
    if images_per_s is None or not math.isfinite(images_per_s):
        return "? img/s"
    return f"{images_per_s:,.0f} img/s"


def format_number(x: Any, digits: int = 4, *, exact_ints: bool = False, others_as_str: bool = False) -> str:
    """A number as raysl's reports print it: ``digits`` significant digits (``:.4g``: 123456.789 ->
    ``1.235e+05``), ``-`` for None and a non-finite float (NaN, inf; numpy's float64 too).

    ``exact_ints``: an int (numpy's too, not a bool) in full (123456 -> ``123456``), anything else through
    ``float()`` first (the scaling report's tables and plots). ``others_as_str``: a bool and anything not an int
    or float as ``str(x)`` (a categorical hyperparameter value: ``True``, ``adamw``; a transfer experiment's text).
    Without it such a value is formatted with ``:g`` as it is (a bool as ``1``/``0``).
    """
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if others_as_str and (isinstance(x, bool) or not isinstance(x, (int, float))):
        return str(x)
    if exact_ints:
        if isinstance(x, numbers.Integral) and not isinstance(x, bool):  # numbers.Integral: numpy's ints too
            return str(int(x))
        x = float(x)
    return f"{x:.{digits}g}"


def step_rate(done: int, elapsed_s: float, images_per_step: int) -> tuple[float | None, float | None]:
    """(images/s, seconds left in the epoch per done steps/total) from steps done in ``elapsed_s``."""
    if done <= 0 or elapsed_s <= 0:
        return None, None
    return done * images_per_step / elapsed_s, elapsed_s / done


def progress_line(msg: dict, *, bar: bool, width: int = 20) -> str:
    """One progress line from a ``step`` message.

    ``bar=False``: ``[raysl] epoch 1/30: step 200/468 (43%) 1,234 img/s eta 0:02:10``;
    ``bar=True`` (a terminal): the same with a ``[#####.....]`` bar in place of ``step``.
    """
    done, total = int(msg["done"]), max(1, int(msg["total"]))
    fraction = min(1.0, done / total)
    elapsed = float(msg["elapsed_s"])
    rate, per_step = step_rate(done, elapsed, int(msg["images_per_step"]))
    eta = None if per_step is None else per_step * (total - done)
    epoch = f"epoch {msg['epoch']}/{msg['epochs']}"
    tail = f"{format_rate(rate)} eta {format_duration(eta)}"
    if bar:
        filled = int(round(fraction * width))
        return f"[raysl] {epoch} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {fraction:4.0%} {tail}"
    return f"[raysl] {epoch}: step {done}/{total} ({fraction:.0%}) {tail}"


class Renderer:
    """Turns relay messages into text for one stream: a ``\\r`` line on a terminal, plain lines otherwise.

    ``feed`` returns the text to write (possibly empty); it never emits ANSI codes.
    Step messages of epochs that already have their epoch line are dropped.
    """

    def __init__(self, tty: bool, plain_every_s: float = PLAIN_EVERY_S, tty_every_s: float = 0.0):
        self.tty = tty
        self.plain_every_s = plain_every_s
        self.tty_every_s = tty_every_s
        self.bar_len = 0  # characters of the \r line now on screen
        self.last_bar_at = -math.inf
        self.epochs_done = 0

    def _clear(self) -> str:
        if not self.bar_len:
            return ""
        text = "\r" + " " * self.bar_len + "\r"
        self.bar_len = 0
        return text

    def line(self, text: str) -> str:
        """A permanent line (an epoch line, a note): clears a progress bar first."""
        return self._clear() + text + "\n"

    def bar(self, text: str, now: float, *, final: bool = False) -> str:
        """A transient status: rewritten in place on a terminal, a throttled plain line otherwise."""
        every = self.tty_every_s if self.tty else self.plain_every_s
        if not final and now - self.last_bar_at < every:
            return ""
        self.last_bar_at = now
        if not self.tty:
            return text + "\n"
        pad = max(0, self.bar_len - len(text))
        self.bar_len = len(text)
        return "\r" + text + " " * pad

    def feed(self, msg: dict, now: float) -> str:
        kind = msg.get("kind")
        if kind == "line":
            return self.line(str(msg["text"]))
        if kind == "epoch":
            self.epochs_done = max(self.epochs_done, int(msg.get("epoch") or 0))
            return self.line(str(msg["text"]))
        if kind == "step":
            if int(msg["epoch"]) <= self.epochs_done:
                return ""
            last = int(msg["done"]) >= int(msg["total"])
            if last and not self.tty:
                return ""  # its epoch line follows at once
            return self.bar(progress_line(msg, bar=self.tty), now, final=last)
        return ""

    def close(self) -> str:
        return self._clear()


def stream_isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def public_url(url: str) -> str:
    """The URL with its password left out (what raysl prints and writes)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: show only what cannot be a password
        return url.split("://", 1)[0] + "://..." if "://" in url else "..."
    return parsed._replace(password=None).render_as_string(hide_password=False)


def without_passwords(argv: list[str] | tuple[str, ...], option: str) -> list[str]:
    """``argv`` with the password left out of each URL given to ``option`` (``option URL`` and
    ``option=URL``): a command raysl prints to run again shows no database password."""
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == option:
            arg = public_url(arg)
        elif arg.startswith(option + "="):
            arg = f"{option}={public_url(arg.split('=', 1)[1])}"
        out.append(arg)
    return out
