"""Threads and progress for the grid engines: how many CPUs this process may use, a
tqdm bar that appears only for long runs, and a kernel run on a helper thread so Ctrl-C
reaches Python."""
from __future__ import annotations

import os
import sys
import threading
import time

from . import _validation as V


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1



def run_with_progress(kern, total, progress):
    """Run the kernel on a helper thread; poll it for the progress bar; Ctrl-C cancels."""
    err = []

    def target():
        try:
            kern.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            err.append(exc)

    th = threading.Thread(target=target, name="noether-scan", daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.1)
            progress(kern.steps_done(), total)
    except KeyboardInterrupt:
        kern.cancel()
        th.join()
        raise
    if err:
        raise err[0]


class ProgressBar:
    """tqdm bar shown only if the scan is still running after ``delay`` seconds."""

    def __init__(self, total, enabled, delay=1.0):
        self.total, self.enabled, self.delay = total, enabled, delay
        self.t0, self.bar, self.last = time.perf_counter(), None, 0

    def __call__(self, done, total):
        if not self.enabled:
            return
        if self.bar is None:
            if time.perf_counter() - self.t0 < self.delay:
                return
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, initial=done, unit="step", unit_scale=True,
                            desc="scan", leave=False)
            self.last = done
        self.bar.update(done - self.last)
        self.last = done

    def close(self):
        if self.bar is not None:
            self.bar.update(self.total - self.last)
            self.bar.close()


def want_progress(progress) -> bool:
    if progress is None:
        if not sys.stderr.isatty():
            return False
        try:
            import tqdm  # noqa: F401
        except ImportError:
            return False
        return True
    progress = V.as_bool("progress", progress)
    if progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            raise ImportError("progress=True needs tqdm: pip install tqdm "
                              "(or pip install 'noether_core[scan]')") from None
    return progress
