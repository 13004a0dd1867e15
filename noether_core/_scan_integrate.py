"""``scan_integrate``: a grid of integrator runs (model parameters × step size).

Where :func:`noether_core.scan` runs a grid of *training* runs inside one OpenMP kernel
call, this runs a grid of continuous-model trajectories.  The points (M1 Damped, M2
RadialAngular, M4 GradientFlow) are validated and turned into one table of kernel rows
up front; a compiled grid kernel (pyx/integrators.pyx ``GridKernel``) then integrates many
points per call with the GIL released once, each point exactly the
:func:`noether_core.integrate` call with the same parameters (the same compiled loops;
docs/integrators.md §9).  A pool of ``threads`` daemon threads runs slices of the grid in
parallel; ``executor=`` sends chunks of the grid to any ``concurrent.futures.Executor``
(a process pool, Dask) instead.  Every point is deterministic, so results do not depend
on ``threads`` or the chunking.  Bregman models (mirror maps, user schedules) run one
:func:`integrate` call per point.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _bridge, _grid, _status
from . import _validation as V
from ._integrate import (
    _METHOD_CODE,
    ADAPTIVE,
    IntegrationError,
    _adaptive_plan,
    _check_inputs,
    _check_state,
    _fixed_plan,
    _status_text,
    integrate,
)
from ._parallel import STOPS, Cancelled, map_threads
from .errors import DivergenceWarning
from .models import Bregman, Damped, GradientFlow, Model, RadialAngular

__all__ = ["scan_integrate", "IntegrateScanResult"]

_RUN_KEYS = ("h", "rtol", "atol")

#: which lane version the grid kernel runs (None: the best this CPU runs; the tests set
#: "base" / "avx512" to compare them)
_LANE_ISA = {"isa": None}


@dataclass(eq=False)
class IntegrateScanResult:
    """Per-point summaries shaped by the grid axes (in the order given).

    Attributes
    ----------
    axes : dict[str, ndarray]
    fixed : dict
    y_final : (*shape, n) array
        State at t_end (where the point stopped if it failed).
    t_final, nfev, n_steps : (*shape,) arrays
    diverged : (*shape,) bool array
        A non-finite state, r ≤ 0 (M2), or an adaptive-step failure stopped the point.
    message : (*shape,) object array of str
    """

    model_cls: type
    axes: dict
    fixed: dict
    y_final: np.ndarray
    t_final: np.ndarray
    nfev: np.ndarray
    n_steps: np.ndarray
    diverged: np.ndarray
    message: np.ndarray
    elapsed: float = field(default=0.0, repr=False)

    @property
    def shape(self):
        return tuple(len(v) for v in self.axes.values())

    def params(self, *index) -> dict:
        """Model and run parameters of the point at ``index``."""
        out = dict(self.fixed)
        out.update({k: v[i].item() for (k, v), i in zip(self.axes.items(), index, strict=True)})
        return out


_quiet = {"depth": 0, "saved": None, "lock": threading.Lock()}


@contextlib.contextmanager
def _quiet_divergence():
    """DivergenceWarning ignored while any thread is inside (the points' divergences are
    summarised by one warning of scan_integrate).  ``warnings.catch_warnings`` is not
    thread-safe: two threads' nested contexts restore each other's filters and can leave
    the ignore filter installed for good.  Here the first thread in installs the filter
    and the last one out restores the filters it found, whatever the interleaving."""
    with _quiet["lock"]:
        if _quiet["depth"] == 0:
            _quiet["saved"] = list(warnings.filters)
            warnings.filterwarnings("ignore", category=DivergenceWarning)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet["lock"]:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                warnings.filters[:] = _quiet["saved"]
                warnings._filters_mutated()      # as catch_warnings does on exit
                _quiet["saved"] = None


def _point(model_cls, potential, y0, t_end, method, params, run_kw):
    """One point by its own integrate call (Bregman models)."""
    model_kw = {k: v for k, v in params.items() if k not in _RUN_KEYS}
    kw = dict(run_kw)
    kw.update({k: v for k, v in params.items() if k in _RUN_KEYS})
    model = model_cls(potential, **model_kw)
    with _quiet_divergence():
        try:
            r = integrate(model, y0, t_end=t_end, method=method, record_every=10**9, **kw)
        except IntegrationError as exc:
            r = exc.result
            _callback_failure(potential, r.n_steps, params)
            return (r.y_final, r.t_final, r.nfev, r.n_steps, True, str(exc))
    _callback_failure(potential, r.n_steps, params)
    return (r.y_final, r.t_final, r.nfev, r.n_steps, bool(r.diverged), r.message)


def _callback_failure(potential, n_steps, params):
    """A Python potential's fn failed in the run this thread just made: raise it
    (CallbackError from it, naming the point; KeyboardInterrupt and SystemExit as
    themselves), never report it as a divergence.  (integrate itself may already raise
    it; then nothing is left here to collect.)"""
    raise_cb = getattr(potential, "_raise_callback_error", None)
    if raise_cb is not None:
        raise_cb(int(n_steps), f"in scan_integrate at grid point {params} ")


@dataclass(eq=False)
class _GridJob:
    """Everything a chunk of a compiled grid needs (picklable: executors' chunks)."""

    plan: _bridge.GridPlan
    potential: object
    y0: np.ndarray
    points: list              # the points' parameters (for error messages)
    method: str
    python_fn: bool           # a Python potential: one point per kernel call, collected


def _grid_rows(job, threads, token, lo, hi):
    """Points lo..hi-1 of a compiled grid on ``threads`` daemon threads, each running
    slices of the grid through its own GridKernel (registered on STOPS under ``token``,
    so Ctrl-C or an error anywhere in the job stops the running points at their next
    poll, every 64 steps).  Returns the rows of the points, as _point's."""
    P = hi - lo
    pl = job.plan
    plan = _bridge.GridPlan(pl.kind, pl.method, pl.hp[lo:hi], pl.t0, pl.t_end, pl.h[lo:hi],
                            pl.n_steps[lo:hi], pl.rtol[lo:hi], pl.atol[lo:hi],
                            pl.max_steps, pl.lane, pl.isa)
    out = _bridge.GridOutputs.start(job.y0, P)
    kern_arg = job.potential._kernel
    # slices: one point each for a Python fn (its failure is collected after the call);
    # else ~4 per thread, so threads stay busy when the points' costs differ (adaptive)
    size = 1 if job.python_fn else max(1, -(-P // (4 * threads)))
    if pl.lane is not None and not job.python_fn and job.method not in ADAPTIVE:
        lanes = _bridge.integrator_kernels.INTEGRATOR_LANES
        size = -(-size // lanes) * lanes    # whole lane blocks per slice (fixed steps)
    slices = [(a, min(a + size, P)) for a in range(0, P, size)]

    def one(i):
        a, b = slices[i]
        kern = _bridge.grid_kernel(plan, kern_arg, out)
        with STOPS.running(token, kern):
            done = kern.run(a, b)
        if job.python_fn:
            _callback_failure(job.potential, out.counts[a, 2], job.points[lo + a])
        if done < b - a:
            raise Cancelled("scan_integrate cancelled while its points ran")
        return None

    try:
        map_threads(one, len(slices), threads, cancelled=lambda: STOPS.cancelled(token))
    except BaseException:
        STOPS.cancel(token)                 # the running slices stop at their next poll
        raise
    return _grid_results(job, out, lo)


def _grid_results(job, out, lo):
    """The kernel's per-point outputs as a block of arrays (y, t_final, nfev, n_steps,
    diverged, message), messages worded as integrate words them."""
    pl = job.plan
    st = out.counts[:, 0]
    msg = np.empty(len(st), dtype=object)
    msg[:] = _status_text(job.method, _status.OK, 0.0, rtol=0.0, atol=0.0, max_steps=0,
                          t_end=0.0)[0]
    for p in np.flatnonzero(st != _status.OK):
        text, error = _status_text(job.method, int(st[p]), float(out.t_final[p]),
                                   rtol=float(pl.rtol[lo + p]), atol=float(pl.atol[lo + p]),
                                   max_steps=pl.max_steps, t_end=pl.t_end)
        msg[p] = text if error is None else error
    return (out.y, out.t_final, out.counts[:, 1].copy(), out.counts[:, 2].copy(),
            st != _status.OK, msg)


def _rows_block(rows):
    """_point's rows as the block _grid_results returns."""
    msg = np.empty(len(rows), dtype=object)
    msg[:] = [r[5] for r in rows]
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=float),
            np.array([r[2] for r in rows], dtype=np.intp),
            np.array([r[3] for r in rows], dtype=np.intp),
            np.array([r[4] for r in rows], dtype=bool), msg)


def _chunk(job, threads, token, lo, hi):
    """Run points lo..hi-1 of the grid (on a worker, or locally) on ``threads`` threads.

    No point starts once the job is cancelled (``STOPS.cancel(token)``: Ctrl-C, or an
    error of another chunk) or once a point of this chunk has raised; compiled points
    already running stop at their next poll.
    """
    if isinstance(job, _GridJob):
        return _grid_rows(job, threads, token, lo, hi)
    model_cls, potential, y0, t_end, method, points, run_kw = job
    points = points[lo:hi]

    def one(i):
        return _point(model_cls, potential, y0, t_end, method, points[i], run_kw)

    def cancelled():
        return STOPS.cancelled(token)

    if threads == 1 or len(points) == 1:
        rows = []
        for i in range(len(points)):
            if cancelled():
                raise Cancelled("scan_integrate cancelled before every point ran")
            rows.append(one(i))
        return _rows_block(rows)
    return _rows_block(map_threads(one, len(points), threads, cancelled=cancelled))


class _Points:
    """The grid points' parameter dicts (fixed values and one value per axis), in grid
    order, each built when asked for: a compiled grid needs them only for messages."""

    def __init__(self, axes, fixed):
        self.axes, self.fixed = axes, fixed
        self.shape = tuple(len(v) for v in axes.values())

    def __len__(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        idx = np.unravel_index(i, self.shape)
        return dict(self.fixed, **{k: v[j].item()
                                   for (k, v), j in zip(self.axes.items(), idx, strict=True)})


def _grid_job(models, potential, y0, t0, t_end, method, points, hp=None) -> _GridJob:
    """Validate the run parameters of every point as :func:`integrate` does (y0 and the
    times once: they do not depend on the point) and build the grid kernel's table."""
    y, t0, t_end = _check_inputs(models[0], y0, method, t0, t_end)
    _check_state(models[0], y, t0, False)
    shape = points.shape
    h = np.zeros(shape)
    n_steps = np.zeros(shape, dtype=np.intp)
    rtol = np.zeros(shape)
    atol = np.zeros(shape)
    max_steps = 100_000                       # integrate's default
    # the run parameters depend only on the run axes: plan each of their combinations
    # once, in grid order (so the first bad one is the first bad point's), and write it
    # into every point that has it
    names = list(points.axes)
    run_axes = [k for k in names if k in _RUN_KEYS]
    for combo in np.ndindex(*(len(points.axes[k]) for k in run_axes)):
        at_ = dict(zip(run_axes, combo, strict=True))
        p = dict(points.fixed, **{k: points.axes[k][j].item() for k, j in at_.items()})
        run = (p.get("h"), p.get("rtol", 1e-6), p.get("atol", 1e-9))
        if method in ADAPTIVE:
            hh, _, _, rt, at, max_steps = _adaptive_plan(t0, t_end, run[0], None, run[1],
                                                         run[2], max_steps, 1)
            got = (hh, 0, rt, at)
        else:
            hh, ns, _ = _fixed_plan(method, t0, t_end, run[0], None, 1)
            got = (hh, ns, 0.0, 0.0)
        where = tuple(at_.get(k, slice(None)) for k in names)
        h[where], n_steps[where], rtol[where], atol[where] = got
    h, n_steps, rtol, atol = (a.reshape(-1) for a in (h, n_steps, rtol, atol))
    if hp is None:
        hp = np.array([m._hp() for m in models], dtype=float)
    plan = _bridge.GridPlan(models[0].kind, _METHOD_CODE[method], hp, t0, t_end, h, n_steps,
                            rtol, atol, max_steps if method in ADAPTIVE else 0,
                            potential._lane_form(), _LANE_ISA["isa"])
    return _GridJob(plan=plan, potential=potential, y0=y, points=points, method=method,
                    python_fn=isinstance(potential._kernel,
                                         _bridge.callback_kernels.PythonKernel))


#: models whose constructor validates each keyword on its own and whose kernel row
#: (``_hp``) places each validated value in its own column
_COLUMN_MODELS = (Damped, GradientFlow, RadialAngular)


def _column_table(model_cls, potential, axes, mfixed, shape):
    """``(first point's model, hp (P, 9))`` built a column at a time, or None.

    For the models of _COLUMN_MODELS a point is valid exactly when each of its values is
    (their constructors check each keyword alone), and its kernel row is the base row
    with each axis's columns set from that axis's value.  So one model per axis value
    validates the grid (sum of the axis lengths, not their product), and the rows are
    assembled by broadcasting.  Any failure (or an axis whose columns overlap another's)
    returns None: the caller then constructs every point's model, which raises the usual
    error naming the first bad point in grid order.
    """
    if type(model_cls) is not type or model_cls not in _COLUMN_MODELS:
        return None
    names = [k for k in axes if k not in _RUN_KEYS]
    base = dict(mfixed, **{k: axes[k][0].item() for k in names})
    try:
        first = model_cls(potential, **base)
        row0 = first._hp()
        hp = np.broadcast_to(row0, shape + (len(row0),)).copy()
        used = np.zeros(len(row0), dtype=bool)
        axis_of = {k: i for i, k in enumerate(axes)}
        for k in names:
            rows = np.array([model_cls(potential, **dict(base, **{k: v}))._hp()
                             for v in axes[k].tolist()])
            cols = np.flatnonzero((rows != row0).any(axis=0))
            if used[cols].any():
                return None
            used[cols] = True
            view = [None] * len(shape)
            view[axis_of[k]] = slice(None)
            for c in cols:
                hp[..., c] = rows[:, c][tuple(view)]
    except (TypeError, ValueError):
        return None
    return first, hp.reshape(-1, len(row0))


def _model_keywords(model_cls) -> list[str]:
    """The keyword parameters of ``model_cls(potential, ...)``."""
    try:
        sig = inspect.signature(model_cls.__init__)
    except (TypeError, ValueError):
        return []
    return [n for n, p in list(sig.parameters.items())[2:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def scan_integrate(model_cls, potential, y0, *, t_end, method, threads=None, executor=None,
                   n_chunks=None, t0=0.0, **grid) -> IntegrateScanResult:
    """Integrate ``model_cls(potential, **model_params)`` at every point of a grid.

    Parameters
    ----------
    model_cls : a class of noether_core.models (Damped, GradientFlow, RadialAngular)
    potential : Potential
    y0 : array_like
        Initial state (the model's layout, as for :func:`integrate`).
    t_end : float
    method : str
        An integrate method valid for the model.
    threads : int, optional
        Worker threads (default: the usable CPUs).  The compiled integrator releases the
        GIL, so threads run in parallel.
    executor : concurrent.futures.Executor, optional
        Send ``n_chunks`` chunks of the grid to it (process pool, Dask client executor).
    **grid
        Each keyword a value or a 1-D sequence: model parameters (e.g. ``m``, ``mu``,
        ``k``, ``reduced``) and the run parameters ``h``, ``rtol``, ``atol``.

    Returns
    -------
    IntegrateScanResult

    Raises
    ------
    TypeError
        A keyword that is neither a parameter of ``model_cls`` nor a run parameter (the
        message lists the valid ones).
    CallbackError
        A :class:`~noether_core.potentials.Python` potential's ``fn`` raised (or returned
        a malformed value) at some point: the original exception is ``__cause__``.  A
        KeyboardInterrupt or SystemExit raised inside ``fn`` propagates as itself.

    Notes
    -----
    M1, M2 and M4 grids run through a compiled grid kernel, many points per call with the
    GIL released once; fixed-step grids on Quadratic or RayleighQuotient (M1: the
    conformal splittings and rk4; M2: the same on RayleighQuotient; M4: euler and rk4)
    run 8 points per SIMD block.  Every point is bitwise the separate
    :func:`integrate` call (docs/integrators.md §9).  Slices of the grid run on daemon
    threads.  On Ctrl-C (or the first error) the exception reaches the caller at once, no
    further point starts and the running points stop at their next poll of the kernel's
    cancel flag (every 64 steps); daemon threads never keep the process from exiting.
    Bregman models run one :func:`integrate` call per point (a running one then finishes
    its trajectory in the background).

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> pot = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
    >>> res = nc.scan_integrate(nc.models.Damped, pot, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
    ...                         t_end=5.0, method="conformal-verlet", m=[0.5, 1.0],
    ...                         mu=[0.1, 0.5, 1.0], k=0.01, h=0.05, threads=2)
    >>> res.y_final.shape
    (2, 3, 6)
    """
    import time

    t_start = time.perf_counter()
    if not (isinstance(model_cls, type) and issubclass(model_cls, Model)):
        raise TypeError("model_cls must be a model class of noether_core.models, got "
                        f"{model_cls!r}")
    if not grid:
        raise ValueError("scan_integrate needs at least one grid keyword (e.g. m=[...])")
    valid = _model_keywords(model_cls)
    unknown = [k for k in grid if k not in valid and k not in _RUN_KEYS]
    if valid and unknown:
        raise TypeError(f"{model_cls.__name__} rejects the unknown keyword(s) {unknown}: "
                        f"it has no such parameter; valid grid keywords: {valid} (model) "
                        f"and {list(_RUN_KEYS)} (run)")
    # the grid keywords as scan parses them (numbers are axes' defaults: a tuple is an axis)
    axes, fixed = _grid.split_grid(grid, dict.fromkeys(grid, 0.0))
    shape = tuple(len(v) for v in axes.values())
    keys = list(axes)
    points = _Points(axes, fixed)
    run_kw = {"t0": t0}
    # validate every point before any work: by columns where the model allows it, else
    # by constructing each point's model once
    mfixed = {k: v for k, v in fixed.items() if k not in _RUN_KEYS}
    mcols = [(j, k) for j, k in enumerate(keys) if k not in _RUN_KEYS]
    columns = _column_table(model_cls, potential, axes, mfixed, shape)
    models = [] if columns is None else [columns[0]]
    for i, c in enumerate(() if columns is not None else
                          itertools.product(*(v.tolist() for v in axes.values()))):
        p = points[i]
        try:
            models.append(model_cls(potential, **mfixed, **{k: c[j] for j, k in mcols}))
        except TypeError as exc:
            raise TypeError(f"{model_cls.__name__} rejects grid point {p}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"grid point {p}: {exc}") from None
    n = len(points)
    token = STOPS.new_token()
    if issubclass(model_cls, Bregman):
        job = (model_cls, potential, y0, t_end, method, points, run_kw)
    else:
        job = _grid_job(models, potential, y0, t0, t_end, method, points,
                        None if columns is None else columns[1])
    try:
        if executor is None:
            parts = [_chunk(job, _grid.threads_for(threads, n), token, 0, n)]
        else:
            if threads is not None:
                threads = V.as_int("threads", threads, lo=1)
            parts = _grid.run_chunks(executor, _chunk, (job, threads or 1, token), n,
                                     16 if n_chunks is None else n_chunks, False,
                                     cancel=lambda: STOPS.cancel(token))
    except BaseException:
        STOPS.cancel(token)
        raise
    y, t_final, nfev, n_steps, diverged, msg = (
        np.concatenate([part[i] for part in parts]) for i in range(6))
    res = IntegrateScanResult(
        model_cls, axes, fixed, y.reshape(shape + (-1,)), t_final.reshape(shape),
        nfev.reshape(shape), n_steps.reshape(shape), diverged.reshape(shape),
        msg.reshape(shape), time.perf_counter() - t_start)
    nd = int(res.diverged.sum())
    if nd:
        warnings.warn(f"{nd} of {res.diverged.size} points of scan_integrate stopped early; "
                      "see result.diverged and result.message", DivergenceWarning,
                      stacklevel=2)
    return res
