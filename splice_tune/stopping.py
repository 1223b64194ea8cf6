"""How a running search is stopped: Ctrl-C, a job scheduler's SIGTERM, a closed terminal's SIGHUP, or the
search itself (a full disk).

Ray Tune stops cleanly on SIGINT only: inside `Tuner.fit` it installs a SIGINT handler that ends the loop
after the current step, saves the experiment and returns, and it puts the previous handler back when it is
first called. SIGTERM and SIGHUP would kill the driver outright (Ray's core worker prints a crash dump for
SIGTERM). `stop_signals` makes all three take the SIGINT path:

- the first signal is handed to Ray's handler (inside `fit`, which the driver callback takes over when
  the run starts: `adopt_ray_handler`) or raised as KeyboardInterrupt (outside it), and remembered, so the
  command can exit with 128 + its number (130, 143, 129);
- a second signal while the search cleans up ends the process at once (`os._exit`): Ray's saved state is
  what the last snapshot holds, and runs left RUNNING are marked interrupted by the next `--resume`.

`request_stop` is the same stop asked for from inside the search (the driver callback on a full disk).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class StopState:
    """What stopped the search: the first signal's number, or a reason the search gave itself."""

    signum: int | None = None
    reason: str | None = None  # when the search stopped itself: the first line that said why
    kind: str | None = None  # and what it was: FULL_DISK or TRACKING_GONE
    ray_handler: Callable | None = None  # Ray's SIGINT handler, once `adopt_ray_handler` took it over
    asked: bool = False  # a stop has been asked for already
    fit_started: bool = False  # Ray's run began (its state is saved from then on)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


_state: StopState | None = None


def _handle(signum: int, frame) -> None:
    state = _state
    if state is None:  # a signal racing the handlers' removal
        raise KeyboardInterrupt
    if state.asked:
        # The second signal: cleanup is taking too long for whoever sends it. End now; --resume recovers.
        _say(f"second {signal.Signals(signum).name}: stopping at once; --resume continues from the last snapshot")
        os._exit(state.exit_code)
    state.signum = state.signum or signum
    _ask(state, frame)


def _ask(state: StopState, frame=None) -> None:
    state.asked = True
    if state.ray_handler is not None:
        handler, state.ray_handler = state.ray_handler, None
        handler(signal.SIGINT, frame)  # Ray's: ends the loop after this step, saves, returns from fit
    else:
        raise KeyboardInterrupt  # outside fit: the command stops where it is


def adopt_ray_handler() -> None:
    """Inside `Tuner.fit` (from the driver callback's `setup`): take over the SIGINT handler Ray installed,
    so that every signal, SIGINT included, comes here first and a second one can end the process."""
    state = _state
    if state is None or threading.current_thread() is not threading.main_thread():
        return
    _reclaim()
    handler = signal.getsignal(signal.SIGINT)
    if handler is not _handle and callable(handler):
        state.ray_handler = handler
        signal.signal(signal.SIGINT, _handle)


def _reclaim() -> None:
    """Put our SIGTERM and SIGHUP handlers back: every `ray.init` call (Ray Tune makes some when it restores a
    run) installs Ray's own SIGTERM handler, which exits at once, without saving."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not _handle:
            signal.signal(signum, _handle)


def leave_fit() -> None:
    """After `Tuner.fit` returned: a first signal from now on raises KeyboardInterrupt, and a second one
    (during the cleanup that follows, `ray.shutdown` included) comes here, not to a handler of Ray's that a
    `ray.init` inside the run put back after the loop's last step."""
    if _state is not None:
        _state.ray_handler = None
        if threading.current_thread() is threading.main_thread():
            _reclaim()


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # a closed terminal (SIGHUP) cannot be written to
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


FULL_DISK = "full disk"
TRACKING_GONE = "tracking server gone"


def request_stop(reason: str, kind: str = FULL_DISK) -> None:
    """Stop the running search as a signal would; the first reason given is kept. From the driver's main
    thread (a Ray callback) the stop is asked for now; from another thread (Ray's state-syncing thread) at
    the next `poll`. Outside `fit`, or once a stop was asked for, it only records the reason."""
    state = _state
    if state is None:
        return
    if state.reason is None:
        state.reason, state.kind = reason, kind
    if threading.current_thread() is threading.main_thread():
        poll()


def poll() -> None:
    """In the main thread, inside `fit` (the driver callback, every loop step): keep the signal handlers
    ours, and ask for a stop that another thread requested."""
    state = _state
    if state is None:
        return
    _reclaim()
    if state.reason is not None and not state.asked and state.ray_handler is not None:
        _ask(state)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopState]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP stop the search as Ctrl-C does (see the module doc).
    Only the main thread can set handlers; elsewhere (a test calling run_search from a thread) the block
    runs with the handlers it has."""
    global _state
    if threading.current_thread() is not threading.main_thread():
        _state = StopState()
        try:
            yield _state
        finally:
            _state = None
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _state = StopState()
    try:
        for signum in SIGNALS:
            signal.signal(signum, _handle)
        yield _state
    finally:
        stopped = _state
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _state = None
        if stopped.asked:
            # Stopping already: the process ends soon, but Ray's exit hook still shuts Ray down (half a
            # second and more), with Ray's SIGTERM handler back in place. A second SIGTERM/SIGHUP then ends
            # it at once, with the first signal's code, instead of Ray's SystemExit traceback.
            def at_once(signum: int, frame) -> None:
                _say(f"second {signal.Signals(signum).name}: stopping at once")
                os._exit(stopped.exit_code)

            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, at_once)
