"""Threads and progress for the grid engines: how many CPUs this process may use, a
tqdm bar that appears only for long runs, a kernel run on a helper thread so Ctrl-C
reaches Python, a pool of daemon threads that stops on the first error or Ctrl-C, and the
board through which running work is told to stop.

The default thread count follows what scikit-learn and joblib (loky) do: the CPUs of this
process's affinity mask, capped by the cgroup CPU quota of its container and by
``OMP_NUM_THREADS`` when that is set.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import queue
import sys
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from . import _validation as V

__all__ = ["CGROUP_ROOT", "CPU_LIMIT_TTL", "Cancelled", "ProgressBar", "STOPS", "StopBoard",
           "cgroup_cpu_limit", "default_threads", "map_threads", "omp_num_threads",
           "refresh_cpu_limit", "run_with_progress", "usable_cpus", "want_progress"]

#: where the cgroup file system is mounted (tests point it at a temporary directory)
CGROUP_ROOT = "/sys/fs/cgroup"

#: seconds a scan must still be running before its progress bar appears
PROGRESS_DELAY = 1.0


# ---------------------------------------------------------------------------------------
# how many CPUs


def _read_words(path: Path) -> list[str] | None:
    """The whitespace-separated words of a small text file; None if it cannot be read."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read(256).split()
    except (OSError, ValueError):
        return None


def _quota(quota: str, period: str) -> int | None:
    """ceil(quota/period) for a CPU bandwidth limit; 0 for "no limit" ("max", or -1 in
    cgroup v1); None for text that is not a limit."""
    if quota == "max":
        return 0
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q == -1:
        return 0
    if q <= 0 or p <= 0:
        return None
    return -(-q // p)


def cgroup_cpu_limit(root: str | os.PathLike | None = None) -> int | None:
    """The CPU quota of this process's cgroup, in whole CPUs (None: no limit found).

    Parameters
    ----------
    root : path or None
        Where the cgroup file system is mounted (default :data:`CGROUP_ROOT`).

    Returns
    -------
    int ≥ 1 or None
        ``ceil(quota / period)`` from cgroup v2's ``<root>/cpu.max`` ("quota period", or
        "max period" for no limit), else from cgroup v1's ``<root>/cpu/cpu.cfs_quota_us``
        and ``<root>/cpu/cpu.cfs_period_us`` (quota -1: no limit).  A missing, unreadable
        or malformed file is ignored (the next source is tried), as in joblib.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> cgroup_cpu_limit(root) is None                 # no cgroup files: no limit
    True
    >>> _ = (root / "cpu.max").write_text("150000 100000\\n")
    >>> cgroup_cpu_limit(root)                         # 1.5 CPUs of bandwidth: 2 threads
    2
    """
    root = Path(CGROUP_ROOT if root is None else root)
    words = _read_words(root / "cpu.max")                          # cgroup v2
    if words is not None and 1 <= len(words) <= 2:
        got = _quota(words[0], words[1] if len(words) == 2 else "100000")
        if got is not None:
            return got or None
    quota = _read_words(root / "cpu" / "cpu.cfs_quota_us")         # cgroup v1
    period = _read_words(root / "cpu" / "cpu.cfs_period_us")
    if quota is not None and period is not None and len(quota) == len(period) == 1:
        got = _quota(quota[0], period[0])
        if got is not None:
            return got or None
    return None


def omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int (the first entry of a nested list such as
    "4,2"); None when unset, empty or not a positive int."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        n = int(text)
    except ValueError:
        return None
    return n if n >= 1 else None


def usable_cpus(cgroup_root: str | os.PathLike | None = None) -> int:
    """The default thread count: the CPUs this process may use.

    ``min(len(os.sched_getaffinity(0)) (os.cpu_count() where affinity is not available),
    the cgroup CPU quota (:func:`cgroup_cpu_limit`), OMP_NUM_THREADS when set to a
    positive int)``, at least 1 — the rule scikit-learn and joblib follow, so a scan in a
    CPU-limited container or under a job scheduler does not oversubscribe its CPUs.

    Parameters
    ----------
    cgroup_root : path or None
        Where the cgroup file system is mounted (default :data:`CGROUP_ROOT`).

    Returns
    -------
    int ≥ 1

    Examples
    --------
    >>> 1 <= usable_cpus() <= (os.cpu_count() or 1)
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not Linux
        n = os.cpu_count() or 1
    for cap in (cgroup_cpu_limit(cgroup_root), omp_num_threads()):
        if cap is not None:
            n = min(n, cap)
    return max(1, n)


#: seconds a cgroup CPU quota read by :func:`default_threads` is reused before the files
#: are read again (a container's quota can be changed while it runs, e.g. ``docker
#: update --cpus``; :func:`refresh_cpu_limit` forgets it at once)
CPU_LIMIT_TTL = 30.0

#: (CGROUP_ROOT, pid, monotonic time read, limit) of the last cgroup read, or None
_CPU_LIMIT_CACHE: list = [None]


def refresh_cpu_limit() -> None:
    """Forget the cgroup CPU quota :func:`default_threads` cached: the next call reads
    the cgroup files again (otherwise they are read at most once per
    :data:`CPU_LIMIT_TTL` seconds per process and per :data:`CGROUP_ROOT`)."""
    _CPU_LIMIT_CACHE[0] = None


def _cached_cgroup_limit() -> int | None:
    """:func:`cgroup_cpu_limit` of :data:`CGROUP_ROOT`, read at most once per
    :data:`CPU_LIMIT_TTL` seconds; a new process (fork) or a changed root reads again."""
    now = time.monotonic()
    hit = _CPU_LIMIT_CACHE[0]
    root, pid = CGROUP_ROOT, os.getpid()
    if (hit is not None and hit[0] == root and hit[1] == pid
            and 0.0 <= now - hit[2] < CPU_LIMIT_TTL):
        return hit[3]
    limit = cgroup_cpu_limit(root)
    _CPU_LIMIT_CACHE[0] = (root, pid, now, limit)
    return limit


def default_threads() -> int:
    """:func:`usable_cpus` with the cgroup quota cached (the scans' default thread count).

    The same rule as :func:`usable_cpus` — ``min(affinity CPUs, cgroup CPU quota,
    OMP_NUM_THREADS)``, at least 1 — but the cgroup files (two or three file reads,
    ~0.05-0.15 ms) are read at most once per :data:`CPU_LIMIT_TTL` seconds in a process;
    the affinity mask and ``OMP_NUM_THREADS`` (a system call and a dictionary look-up)
    are read at every call.  :func:`refresh_cpu_limit` forgets the cached quota.

    Examples
    --------
    >>> default_threads() == usable_cpus()
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not Linux
        n = os.cpu_count() or 1
    for cap in (_cached_cgroup_limit(), omp_num_threads()):
        if cap is not None:
            n = min(n, cap)
    return max(1, n)


# ---------------------------------------------------------------------------------------
# progress


class _KernelThreads:
    """Long-lived daemon threads that run compiled kernels for :func:`run_with_progress`.

    A kernel's OpenMP team belongs to the thread that starts its parallel region: libgomp
    keeps one pool of worker threads per such *master* thread.  A new helper thread per
    call therefore meant a new pool per call, while the previous call's workers still
    spun on the cores (libgomp's default wait policy) — measured on the 2-core machine, a
    2-thread 32 × 32 × 2000-step SGD scan took 2.2–2.5 ns per point-step when the kernel
    ran on one thread for every call and 2.4–11.7 ns with a new thread per call
    (docs/scan.md §"Threads, memory, progress").  Here a finished kernel's thread goes
    back to an idle list and runs the next kernel, so consecutive calls reuse one team.
    Concurrent calls (a thread pool of scans) each take their own thread; at most
    :attr:`MAX_IDLE` idle threads are kept, the others end.  A forked child starts with
    no thread (the parent's do not exist there)."""

    #: idle threads kept for later calls (each holds its OpenMP pool)
    MAX_IDLE = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list = []

    def _after_fork(self):
        self._lock = threading.Lock()
        self._idle = []

    def start(self, fn, done: threading.Event, err: list) -> None:
        """Run ``fn()`` on an idle thread (or a new one); ``done`` is set when it returns,
        after the thread is idle again; an exception it raises is appended to ``err``."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="noether-kernel",
                             daemon=True).start()
        inbox.put((fn, done, err))

    def _serve(self, inbox):
        while True:
            fn, done, err = inbox.get()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
                err.append(exc)
            with self._lock:
                keep = len(self._idle) < self.MAX_IDLE
                if keep:
                    # idle before done is set: the caller's next kernel finds this thread
                    self._idle.append(inbox)
            done.set()
            if not keep:
                return


_KERNEL_THREADS = _KernelThreads()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_KERNEL_THREADS._after_fork)


def run_with_progress(kern, total, progress):
    """Run ``kern.run()`` on a helper thread, calling ``progress(kern.steps_done(), total)``
    every 0.1 s; Ctrl-C calls ``kern.cancel()``, waits for the kernel and re-raises.

    The helper threads are long-lived (:class:`_KernelThreads`): consecutive calls run on
    the same thread, so the kernel's OpenMP team is reused, not started anew per call.
    An exception raised by the kernel is re-raised in the caller.
    """
    done, err = threading.Event(), []
    _KERNEL_THREADS.start(kern.run, done, err)
    try:
        while True:
            finished = done.wait(0.1)
            progress(kern.steps_done(), total)
            if finished:
                break
    except KeyboardInterrupt:
        kern.cancel()
        done.wait()
        raise
    if err:
        raise err[0]


# ---------------------------------------------------------------------------------------
# stopping running work


class Cancelled(RuntimeError):
    """A piece of a job that was cancelled (Ctrl-C or an error elsewhere in the job) did
    not run.  The caller has already raised its own exception and discards this one; an
    ``Exception``, not a KeyboardInterrupt, so an executor's worker (dask's included,
    which handles only ``Exception`` from a task) stays healthy."""


class StopBoard:
    """This process's registry of running kernels by job token, so that one call can tell
    every running piece of a job to stop.

    A job (one ``scan`` or ``scan_integrate`` call) draws a token (:meth:`new_token`, a
    picklable string) and hands it to each chunk it sends to an executor; a chunk running
    in this process registers its kernel under the token while it runs
    (:meth:`running`).  On Ctrl-C or an error the caller calls :meth:`cancel`: every
    registered kernel's ``cancel()`` is called (the kernel stops at its next poll of its
    stop flag), and a chunk that registers later (it had started but not yet registered)
    is cancelled as it registers.  Chunks in other processes cannot be reached this way
    (they stop on their own process's SIGINT; see ``_scan._chunk_worker``).

    The tokens of cancelled jobs are remembered (the most recent :attr:`KEEP`), so a late
    chunk of a cancelled job is still refused; nothing else outlives a job.
    """

    #: cancelled tokens remembered
    KEEP = 256

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, set] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    #: this process's token prefix: a random 64-bit value drawn once (uuid4), with the
    #: pid added at each call, so a forked child (same prefix) still draws distinct tokens
    _PREFIX = uuid.uuid4().hex[:16]
    _COUNT = itertools.count()

    @classmethod
    def new_token(cls) -> str:
        """A fresh job token, unique across processes: ``<random prefix of this
        process>-<pid>-<counter>`` (a uuid4 per call cost ~5 µs of a scan's fixed cost)."""
        return f"{cls._PREFIX}-{os.getpid()}-{next(cls._COUNT)}"

    def cancelled(self, token) -> bool:
        """Whether the job ``token`` was cancelled in this process."""
        with self._lock:
            return token in self._cancelled

    @contextlib.contextmanager
    def running(self, token, kern):
        """Register ``kern`` (an object with ``cancel()``) under ``token`` for the block."""
        if token is None:
            yield kern
            return
        with self._lock:
            self._running.setdefault(token, set()).add(kern)
            late = token in self._cancelled
        if late:
            kern.cancel()
        try:
            yield kern
        finally:
            with self._lock:
                live = self._running.get(token)
                if live is not None:
                    live.discard(kern)
                    if not live:
                        del self._running[token]

    def cancel(self, token) -> int:
        """Tell every kernel running under ``token`` to stop; returns how many."""
        if token is None:
            return 0
        with self._lock:
            self._cancelled[token] = None
            while len(self._cancelled) > self.KEEP:
                self._cancelled.popitem(last=False)
            kerns = list(self._running.get(token, ()))
        for k in kerns:
            k.cancel()
        return len(kerns)

    def n_running(self) -> int:
        """Kernels registered now (0 once every job has returned: a diagnostic)."""
        with self._lock:
            return sum(len(v) for v in self._running.values())


#: the process's board (module-level: executor threads of this process share it)
STOPS = StopBoard()


def map_threads(fn, n: int, threads: int, *, cancelled=None) -> list:
    """``[fn(0), ..., fn(n-1)]`` computed on ``threads`` daemon threads.

    Items are handed out in order, one at a time.  The first exception raised by ``fn``
    (any BaseException) stops the handing out; the threads finish the item they hold, and
    the exception of the lowest failed item is re-raised in the caller, unchanged.  Ctrl-C
    in the caller (a KeyboardInterrupt while it waits) also stops the handing out and is
    re-raised at once, without waiting for the items still running: the threads are
    daemons, so they never keep the process from exiting.  ``cancelled()`` (optional)
    is polled before each item; once it is true no further item starts and
    :class:`Cancelled` is raised.
    """
    results = [None] * n
    errors: list = []
    stop = threading.Event()
    skipped = threading.Event()
    counter = itertools.count()
    lock = threading.Lock()

    def worker():
        while not stop.is_set():
            if cancelled is not None and cancelled():
                skipped.set()
                stop.set()
                return
            with lock:
                i = next(counter)
            if i >= n:
                return
            try:
                results[i] = fn(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                with lock:
                    errors.append((i, exc))
                stop.set()
                return

    pool = [threading.Thread(target=worker, name=f"noether-pool-{k}", daemon=True)
            for k in range(max(1, min(threads, n)))]
    try:
        for th in pool:
            th.start()
        for th in pool:
            while th.is_alive():
                th.join(0.1)
    except BaseException:
        stop.set()
        raise
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
    if skipped.is_set():
        raise Cancelled("the job was cancelled before every item ran")
    return results


class ProgressBar:
    """A tqdm bar that appears only if the work is still running after ``delay`` seconds.

    Call it with ``(done, total)`` (absolute counts) as often as convenient; before the
    delay it prints nothing and does not even import tqdm, so short scans show no bar.

    Parameters
    ----------
    total : int
        Units of work (steps, chunks, ...) the bar counts to.
    enabled : bool
        False: a no-op (see :func:`want_progress`).
    delay : float
        Seconds before the bar appears (default :data:`PROGRESS_DELAY`).
    unit, desc : str
        tqdm's unit and description.
    """

    def __init__(self, total, enabled, delay=PROGRESS_DELAY, *, unit="step", desc="scan"):
        self.total, self.enabled, self.delay = total, enabled, delay
        self.unit, self.desc = unit, desc
        self.t0, self.bar, self.last = time.perf_counter(), None, 0

    def __call__(self, done, total):
        if not self.enabled:
            return
        if self.bar is None:
            if time.perf_counter() - self.t0 < self.delay:
                return
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, initial=done, unit=self.unit, unit_scale=True,
                            desc=self.desc, leave=False)
            self.last = done
        self.bar.update(done - self.last)
        self.last = done

    def close(self):
        """Complete the bar (if it appeared) and remove it."""
        if self.bar is not None:
            self.bar.update(self.total - self.last)
            self.last = self.total
            self.bar.close()


def _stderr_is_tty() -> bool:
    stream = sys.stderr
    if stream is None:                     # pythonw, some daemons
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):   # no isatty, or a closed stream
        return False


def want_progress(progress) -> bool:
    """Whether to show a progress bar for ``progress`` = None, True or False.

    None: only when stderr is a terminal and tqdm is installed.  True: always (an
    ImportError says how to install tqdm when it is missing).  False: never.
    """
    if progress is None:
        if not _stderr_is_tty():
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
