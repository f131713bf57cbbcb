"""Ctrl-C and a scheduler's SIGTERM as :class:`raysl.errors.Interrupted` (``raysl train``, ``raysl dashboard``)."""

from __future__ import annotations

import contextlib
import signal

from raysl.errors import Interrupted

# the signal that stopped the run (set by interrupt_signals' handler)
_RECEIVED: dict[str, str] = {}


@contextlib.contextmanager
def interrupt_signals():
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM raise :class:`Interrupted` in the main thread.

    Ray Train's driver would otherwise handle SIGINT itself (abort, then exit with 0 or 1 and
    nothing said) and die on SIGTERM at once. A second signal while the run is being stopped
    is ignored: the stop is bounded and leaves nothing half written."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        # remembered here too: Ray's blocking calls turn whatever a handler raises into a plain KeyboardInterrupt
        _RECEIVED["signal"] = signal.Signals(signum).name
        raise Interrupted(_RECEIVED["signal"])

    _RECEIVED.clear()
    previous = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def received_signal(default: str) -> str:
    """The name of the signal that stopped the last :func:`interrupt_signals` block (``default`` if none did)."""
    return _RECEIVED.get("signal", default)
