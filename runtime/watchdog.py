"""Keep a running model interruptible: Ctrl-C, SIGTERM and a time budget stop an onnxruntime run in progress.

Why this exists: ``session.run`` is one C++ call. Python runs signal handlers only between bytecodes, in the
main thread, so while a model computes (an ONNX ``Loop`` of 2**62 iterations never returns) Ctrl-C is noted but
never acted on, and only SIGKILL ends the process. onnxruntime can stop a run from another thread
(``RunOptions.terminate``). So one watcher thread per process learns of a signal through
:func:`signal.set_wakeup_fd` (Python's C-level handler writes the signal number there at once, even while the
main thread is inside C++) and of a deadline by its own clock, and sets ``terminate`` on the runs in progress.
The run then fails inside onnxruntime, and the signal's own Python handler runs as usual
(``KeyboardInterrupt`` for Ctrl-C); a run past its budget raises :class:`RunTimeout`.

Per call this costs a dict entry under a lock (no thread hand-off), so latency figures do not change.
Limits: only onnxruntime runs can be stopped (TensorRT's ``execute`` has no such switch); onnxruntime checks the
flag between kernels and in loop iterations, so one enormous single kernel finishes first; and where another
library already owns the wakeup fd (an asyncio loop), only deadlines are watched, not signals.
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time

from .errors import RuntimeInputError


#: the signals that stop a run: Ctrl-C, and what docker stop, systemd, CI timeouts and a closed terminal send. Others
#: with a Python handler (SIGALRM, SIGCHLD...) only wake the watcher; the run goes on.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class RunTimeout(RuntimeInputError):
    """A model did not return within the time it was given and was stopped."""


class _Run:
    __slots__ = ("options", "deadline", "budget", "signal")

    def __init__(self, options, budget: float | None) -> None:
        self.options = options
        self.budget = budget
        self.deadline = time.monotonic() + budget if budget else None
        self.signal: int | None = None  # the signal that stopped it; "timeout" is deadline passed and signal None

    @property
    def timed_out(self) -> bool:
        return self.signal is None and self.deadline is not None and time.monotonic() >= self.deadline


class _Watcher:
    """The process's one watcher: a self-pipe that is also the signal wakeup fd, and a daemon thread reading it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[int, _Run] = {}
        self.thread: threading.Thread | None = None
        self.read_fd = self.write_fd = -1
        self.signals = False  # True once the wakeup fd is ours

    def ensure(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.read_fd, self.write_fd = os.pipe()
                os.set_blocking(self.read_fd, False)
                os.set_blocking(self.write_fd, False)
                self.signals = False
                self.thread = threading.Thread(target=self._loop, name="onnxruntime-watchdog", daemon=True)
                self.thread.start()
        if not self.signals and threading.current_thread() is threading.main_thread():
            try:
                old = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
            except ValueError:  # not the main thread of the main interpreter
                return
            if old not in (-1, self.write_fd):  # someone else's (asyncio): leave it theirs, watch deadlines only
                signal.set_wakeup_fd(old)
                return
            self.signals = True

    def poke(self) -> None:
        try:
            os.write(self.write_fd, b"\0")  # 0 is no signal number: it only wakes the thread for a new deadline
        except (BlockingIOError, OSError):
            pass

    def _loop(self) -> None:
        while True:
            with self.lock:
                deadlines = [r.deadline for r in self.runs.values() if r.deadline is not None and r.signal is None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                ready, _, _ = select.select([self.read_fd], [], [], timeout)
                data = os.read(self.read_fd, 512) if ready else b""
            except BlockingIOError:
                data = b""
            except OSError:
                return  # the pipe was closed (after a fork): nothing left to watch
            signums = [b for b in data if b in STOP_SIGNALS]
            now = time.monotonic()
            with self.lock:
                for run in self.runs.values():
                    if signums and run.signal is None:
                        run.signal = signums[-1]
                        run.options.terminate = True
                    elif run.deadline is not None and now >= run.deadline:
                        run.options.terminate = True

    def _after_fork(self) -> None:
        """A forked child has no watcher thread: forget the parent's, so the child starts its own when it runs."""
        self.lock = threading.Lock()
        self.runs = {}
        self.thread = None
        self.signals = False
        if threading.current_thread() is threading.main_thread():
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass


_WATCHER = _Watcher()  # process-wide by nature: a signal wakeup fd is one per process
os.register_at_fork(after_in_child=_WATCHER._after_fork)


class watch:
    """``with watch(run_options, budget_s) as run: session.run(..., run_options)``: the run is stopped on SIGINT,
    SIGTERM (when the signal has a Python handler) or once ``budget_s`` seconds have passed (None: no budget).
    After the run fails, :meth:`raise_stopped` turns a stop into its exception."""

    __slots__ = ("run",)

    def __init__(self, options, budget_s: float | None = None) -> None:
        self.run = _Run(options, budget_s)

    def __enter__(self) -> _Run:
        _WATCHER.ensure()
        with _WATCHER.lock:
            _WATCHER.runs[id(self.run)] = self.run
        if self.run.deadline is not None:
            _WATCHER.poke()
        return self.run

    def __exit__(self, *exc) -> None:
        with _WATCHER.lock:
            _WATCHER.runs.pop(id(self.run), None)


def raise_stopped(run: _Run, what: str) -> None:
    """If ``run`` was stopped by a signal or its budget, raise what that means (else return: a genuine failure).

    A signal's own Python handler normally fires first (it is pending once the C++ call returns); this is the
    fallback for Ctrl-C and the message for any other signal."""
    if run.signal is not None:
        if run.signal == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(run.signal).name if run.signal in signal.Signals._value2member_map_ else run.signal
        raise RuntimeInputError(f"{what} was stopped by {name} while the model was running.")
    if run.timed_out or (run.deadline is not None and run.options.terminate):
        raise RunTimeout(
            f"{what} did not return within {run.budget:g} s and was stopped: the model runs longer than its time "
            "budget (a graph with an endless Loop never returns). Give it more time if it is merely slow, or use "
            "another model.")
