"""SIGTERM and SIGHUP handled like Ctrl-C: what ``docker stop``, systemd, a CI timeout and a closed terminal send.

Python turns SIGINT into :class:`KeyboardInterrupt`, so every ``finally`` and ``except BaseException`` on the way out
runs (a bundle's staging folder is removed, the previous bundle is put back). SIGTERM and SIGHUP would end the
process at once, leaving ``.…tmp`` folders behind. Inside :func:`as_interrupt` they raise :class:`Terminated`, a
``KeyboardInterrupt``, so the very same cleanup runs; the CLI then prints one paragraph and exits 128 + the signal
number, as a shell reports a process killed by it. What no handler can catch (SIGKILL, a power cut) is swept by the
next build (:func:`pipeline.bundle.build.building`).
"""
from __future__ import annotations

import contextlib
import signal
import threading

#: the signals handled like SIGINT
SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum, frame):
    for s in SIGNALS:  # one is enough: a second must not interrupt the cleanup the first started
        signal.signal(s, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def as_interrupt():
    """Inside the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
