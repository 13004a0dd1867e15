"""The grid engine shared by :func:`noether_core.scan` and
:func:`noether_core.scan_integrate`: grid keywords parsed into axes and fixed values the
same way, the default thread count, and chunks of a flat task range sent to a
``concurrent.futures.Executor`` (a process pool, a ``dask.distributed`` client's
executor) and joined back in order.

Tasks are numbered in C order over the grid axes (the last axis fastest); a chunk is a
contiguous range ``lo..hi-1`` of them, and the result of a grid never depends on how it was
chunked or on the thread count (each point is deterministic).
"""
from __future__ import annotations

import math

import numpy as np

from . import _validation as V
from ._parallel import ProgressBar, default_threads

__all__ = ["as_axis", "split_grid", "threads_for", "run_chunks", "chunk_bounds"]


def as_axis(name: str, value, default=None) -> tuple[bool, object]:
    """A grid keyword as ``(is_axis, value)``.

    Arrays, lists and ranges are axes; a tuple is an axis only for a parameter whose
    default is a number (so Adam's ``betas=(0.9, 0.99)`` or MirrorDescent's ``D=(...)``
    stay single values); anything else is fixed.  An axis is a non-empty 1-D array of
    real numbers (or booleans), finite, without repeated values (so ``.sel`` is
    unambiguous); float axes become float64.  A masked array with masked values is
    refused (its mask would otherwise be dropped silently).
    """
    if isinstance(value, (np.ndarray, list, range)) or (
            isinstance(value, tuple) and isinstance(default, (int, float))):
        if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
            raise ValueError(f"grid axis {name} is a masked array with "
                             f"{int(np.ma.count_masked(value))} masked values; a grid has "
                             "no missing points: drop them (e.g. "
                             f"{name}=values.compressed()) or pass a plain array")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"grid axis {name} must hold real numbers, got dtype {arr.dtype} "
                            f"({V._describe(value)}); pass a non-numeric value as a single "
                            "fixed value")
        if arr.ndim == 0:
            return False, arr.item()
        if arr.ndim != 1:
            raise ValueError(f"grid axis {name} must be a scalar or a 1-D array, got shape "
                             f"{arr.shape}")
        if arr.size == 0:
            raise ValueError(f"grid axis {name} is empty: give at least one value")
        if arr.dtype.kind == "f" and not _finite(arr):
            bad = arr[~np.isfinite(arr)][0]
            raise ValueError(f"grid axis {name} must be finite, found {bad} at index "
                             f"{int(np.flatnonzero(~np.isfinite(arr))[0])}")
        if not _distinct(arr):
            raise ValueError(f"grid axis {name} has repeated values {arr.tolist()}: each "
                             "value must appear once (so .sel is unambiguous)")
        # float axes are float64 whatever came in (float32 values are converted exactly)
        return True, (arr.astype(np.float64) if arr.dtype.kind == "f" else arr.copy())
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return False, value


#: axes up to this length are checked for repeats with a Python set (~1 µs for 16
#: values), longer ones with np.unique (a sort): the same answer (finite values, equality)
_SET_CHECK_MAX = 512


def _finite(arr: np.ndarray) -> bool:
    """Whether every value of the 1-D float array ``arr`` is finite.

    A short axis is summed in Python first: a NaN or an infinity makes the sum
    non-finite, so a finite sum proves every value finite (a sum that overflows with
    finite values falls through to the exact element-wise test)."""
    if arr.size <= _SET_CHECK_MAX and arr.dtype.itemsize <= 8 \
            and math.isfinite(sum(arr.tolist())):
        return True
    return bool(np.isfinite(arr).all())


def _distinct(arr: np.ndarray) -> bool:
    """Whether the 1-D real array ``arr`` (finite where float) has no repeated value."""
    if arr.size <= _SET_CHECK_MAX:
        return len(set(arr.tolist())) == arr.size
    return len(np.unique(arr)) == arr.size


def split_grid(grid: dict, defaults: dict | None = None) -> tuple[dict, dict]:
    """``(axes, fixed)`` of the grid keywords, in the order given (:func:`as_axis`)."""
    defaults = defaults or {}
    axes, fixed = {}, {}
    for name, value in grid.items():
        is_axis, v = as_axis(name, value, defaults.get(name))
        (axes if is_axis else fixed)[name] = v
    return axes, fixed


def threads_for(threads, n_tasks: int) -> int:
    """The thread count of one compiled call over ``n_tasks`` tasks: ``threads`` (an int
    >= 1) or, for None, the CPUs this process may use (affinity, cgroup quota,
    ``OMP_NUM_THREADS``; :func:`~noether_core._parallel.default_threads`, whose cgroup
    quota is cached); never more than the tasks."""
    if threads is not None:
        threads = V.as_int("threads", threads, lo=1)
    return max(1, min(threads if threads is not None else default_threads(), n_tasks))


def chunk_bounds(n_tasks: int, n_chunks: int) -> list[tuple[int, int]]:
    """``n_chunks`` (at most ``n_tasks``) contiguous, nearly equal, non-empty ranges."""
    n_chunks = max(1, min(n_chunks, n_tasks))
    bounds = np.linspace(0, n_tasks, n_chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def run_chunks(executor, worker, args: tuple, n_tasks: int, n_chunks, show: bool,
               cancel=None) -> list:
    """Send ``worker(*args, lo, hi)`` for the chunks of ``range(n_tasks)`` to
    ``executor``; return the results in task order.

    ``n_chunks`` None: four per worker where the executor says how many it has, else 16.
    Progress (``show``) counts chunks.  On any error, Ctrl-C included, the chunks not yet
    started are cancelled, ``cancel()`` (optional) is called to tell the running ones to
    stop (:class:`~noether_core._parallel.StopBoard`), and the error propagates unchanged
    at once (the running chunks are not waited for).
    """
    from concurrent.futures import Executor, as_completed

    if not isinstance(executor, Executor):
        raise TypeError("executor must be a concurrent.futures.Executor (e.g. a "
                        "ProcessPoolExecutor or dask.distributed.Client.get_executor()), "
                        f"got {type(executor).__name__}")
    if n_chunks is None:
        workers = getattr(executor, "_max_workers", None)
        n_chunks = 4 * workers if isinstance(workers, int) and workers > 0 else 16
    else:
        n_chunks = V.as_int("n_chunks", n_chunks, lo=1)
    futures = {}
    bar = ProgressBar(len(chunk_bounds(n_tasks, n_chunks)), show, unit="chunk")
    parts = {}
    try:
        for lo, hi in chunk_bounds(n_tasks, n_chunks):
            futures[executor.submit(worker, *args, lo, hi)] = lo
        for fut in as_completed(futures):
            parts[futures[fut]] = fut.result()
            bar(len(parts), len(futures))
    except BaseException:
        for fut in futures:
            fut.cancel()
        if cancel is not None:
            cancel()
        raise
    finally:
        bar.close()
    return [parts[lo] for lo in sorted(parts)]
