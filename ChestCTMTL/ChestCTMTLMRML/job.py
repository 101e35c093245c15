"""One analysis in a worker thread, polled from Slicer's main thread (no Qt, no MRML).

The worker only sees a :class:`ChestCTMTLLib.volume.CTVolume` (a numpy copy made on the main
thread), so MRML stays single-threaded; the main thread turns the finished result into nodes.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Callable, Optional, Tuple


class AnalysisJob:
    """``target(report, cancelEvent)`` run in a daemon thread.

    ``progress`` is a (fraction, stage) snapshot; ``cancel()`` makes the core raise
    ``errors.Cancelled`` at its next check; ``done`` turns True once ``result`` or ``error`` is
    set (an error is handed to the main thread, never raised in the worker).
    """

    def __init__(self, target: Callable):
        self._target = target
        self._cancelEvent = threading.Event()
        self._lock = threading.Lock()
        self._progress: Tuple[float, str] = (0.0, "Queued")
        self.result = None
        self.error: Optional[BaseException] = None
        self.traceback: Optional[str] = None
        self._started: Optional[float] = None
        self.elapsed = 0.0
        self._thread = threading.Thread(target=self._run, name="ChestCTMTL-analysis", daemon=True)

    def start(self) -> "AnalysisJob":
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._target(self._report, self._cancelEvent)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
            self.traceback = traceback.format_exc()
        finally:
            self.elapsed = time.perf_counter() - self._started

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._progress = (float(fraction), str(stage))

    @property
    def progress(self) -> Tuple[float, str]:
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        self._cancelEvent.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelEvent.is_set()

    @property
    def done(self) -> bool:
        return self._started is not None and not self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        self._thread.join(timeout)
        return self.done
