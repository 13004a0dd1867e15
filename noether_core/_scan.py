"""``scan``: a grid of hyper-parameters (× seeds) trained in one compiled, parallel call.

The grid is the Cartesian product of the 1-D keyword arrays, in the order given; each grid
point is an independent run of the same compiled training loop ``train`` uses, so every
point equals a separate ``train`` call bit for bit (docs/scan.md).  The points are spread
over OpenMP threads (GIL released) or, with ``executor=``, over the workers of any
``concurrent.futures.Executor`` (a process pool, a ``dask.distributed`` client's executor).
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import _bridge, _grid, _status
from . import _validation as V
from . import charges as _charges
from . import rules as _rules_mod
from ._parallel import STOPS, Cancelled, ProgressBar, run_with_progress, want_progress
from ._scan_result import BATCH_STREAMS, ScanResult, point_seed, task_seed
from ._train import DEFAULT_MAX_RECORD_BYTES, _check_batch_size, _check_q0_norm
from .errors import BudgetError, DivergenceWarning
from .potentials import Potential
from .rules import Rule

__all__ = ["scan", "ScanResult", "openmp_enabled", "point_seed"]

#: steps per ``run_loop`` call are bounded so one thread's chunk rows stay near this size
_CHUNK_ROW_BYTES = 256 * 1024
_MAX_K = 1024
#: lane grids of at most this many point-steps x (d² + 16 d) run on the calling thread,
#: without the progress thread: ~20 ms or less of kernel time at the measured rates
#: (docs/scan.md §"Lanes", fixed cost per call)
_LANE_DIRECT_UNITS = 5e7

#: bytes charged per grid point for a rule object (classes without a column form,
#: Rule._grid_hp) and per run for a minibatch run's numpy Generator: upper estimates
#: (measured: ~200 B per rule object, ~900 B per Generator), so the budget errs safe
_RULE_OBJECT_BYTES = 512
_GENERATOR_BYTES = 2048
#: per thread: the kernel's scratch rows (_CHUNK_ROW_BYTES and the same again for charges)
#: plus bookkeeping, on top of the potential's own workspace (its max_bytes)
_THREAD_SCRATCH_BYTES = 4 * _CHUNK_ROW_BYTES + 2**16
#: the fixed Python objects of any scan (grid, plan, result, their dicts): measured
#: ~20 KiB by tracemalloc; charged 64 KiB
_BASE_BYTES = 2**16


def openmp_enabled() -> bool:
    """True if the scan kernel was compiled with OpenMP (else grid points run serially)."""
    return _bridge.openmp_enabled()


#: openmp_enabled(), a property of the build: asked once
_OPENMP = _bridge.openmp_enabled()


# ---------------------------------------------------------------------------------------
# the result


# ---------------------------------------------------------------------------------------
# the grid


@dataclass(frozen=True)
class _Grid:
    """Everything a worker needs to rebuild and run any flat range of the grid."""

    rule_cls: type
    fixed: dict
    axes: dict           # grid axes only (no seed), name -> 1-D array
    seeds: tuple
    seed_axis: bool
    potential: Potential
    q0: np.ndarray
    steps: int
    record_every: int | None
    batch_size: int | None
    chosen: list = field(default_factory=list)   # tracked symmetries [(Symmetry, omega)]
    lanes: bool | None = None                     # the lane kernel: None = when eligible
    token: str | None = None                      # the job's token on _parallel.STOPS
    batch_streams: str = "point"                  # whose minibatch stream: point / seed
    batch_form: str = "rows"                      # a minibatch's rows, or its moments

    # computed once per grid (the axes are fixed once the grid is made); cached_property
    # writes the instance __dict__ directly, which a frozen dataclass allows
    @functools.cached_property
    def grid_shape(self):
        return tuple(len(v) for v in self.axes.values())

    @functools.cached_property
    def column_template(self):
        """``rules._grid_template`` of this grid, asked once (the memory budget and the
        packing both need it)."""
        return _rules_mod._grid_template(self.rule_cls, self.potential,
                                         lambda: self.rule_at(0), self.fixed)

    @functools.cached_property
    def n_points(self):
        return math.prod(self.grid_shape)

    @functools.cached_property
    def n_tasks(self):
        return self.n_points * len(self.seeds)

    def params_at(self, i):
        idx = np.unravel_index(i, self.grid_shape) if self.axes else ()
        kw = dict(self.fixed)
        for (name, vals), j in zip(self.axes.items(), idx, strict=True):
            kw[name] = vals[j].item()
        return kw

    def rule_at(self, i):
        return self.rule_cls(**self.params_at(i))


def _make_grid(rule_cls, potential, q0, steps, record_every, seeds, batch_size, grid):
    return _Grid(*_grid_args(rule_cls, potential, q0, steps, record_every, seeds,
                             batch_size, grid))


#: rule class -> its parameter names (dataclass fields, fixed once the class exists)
_PARAM_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _param_names(rule_cls) -> tuple:
    names = _PARAM_NAMES.get(rule_cls)
    if names is None:
        names = _PARAM_NAMES[rule_cls] = tuple(rule_cls.param_names())
    return names


def _grid_args(rule_cls, potential, q0, steps, record_every, seeds, batch_size, grid):
    """The validated fields of a ``_Grid`` (without chosen, lanes, token), in order."""
    if isinstance(rule_cls, Rule):
        raise TypeError(f"rule_cls must be a rule class such as noether_core.rules.SGD, got "
                        f"the instance {rule_cls!r}; pass type(rule) and its parameters as "
                        "keywords")
    if not (isinstance(rule_cls, type) and issubclass(rule_cls, Rule)) or rule_cls is Rule:
        raise TypeError(f"rule_cls must be a subclass of noether_core.rules.Rule, got "
                        f"{V._describe(rule_cls)}")
    if not isinstance(potential, Potential):
        raise TypeError("potential must be a noether_core.potentials.Potential, got "
                        f"{type(potential).__name__}")
    names = _param_names(rule_cls)
    unknown = [k for k in grid if k not in names]
    if unknown:
        raise TypeError(f"{rule_cls.__name__} has no parameter(s) {unknown}; valid grid "
                        f"keywords: {list(names)}")
    axes, fixed = _grid.split_grid(grid, {n: getattr(rule_cls, n, None) for n in grid})
    d = potential.dim
    q0 = V.as_float_array("q0", q0, shape=(d,))
    _check_q0_norm(q0)                          # as train: the run records |q_B|²
    # the kernel counts in Py_ssize_t
    steps = V.as_int("steps", steps, lo=0, hi=sys.maxsize)
    if steps == 0:
        # the per-point summaries are taken over steps (loss_min and angular_update over
        # the last 10 % of them): a grid of 0 steps would have none
        raise ValueError("scan needs steps >= 1, got 0: its summaries (loss_min, "
                         "angular_update over the last 10% of the steps) need at least one "
                         "step; for the initial loss and norms use train(..., steps=0)")
    if record_every is not None:
        record_every = V.as_int("record_every", record_every, lo=1, hi=sys.maxsize)
    batch_size = _check_batch_size(potential, batch_size)
    seed_axis, seed_list = _check_seeds(seeds)
    return (rule_cls, fixed, axes, seed_list, seed_axis, potential, q0, steps, record_every,
            batch_size)


_SEEDS_ALLOWED = ("seeds must be an int >= 0 (of any size: what numpy.random.SeedSequence "
                  "accepts) or a non-empty 1-D sequence of distinct such ints")


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_seeds(seeds):
    """``(seed_axis, seeds as a tuple of Python ints)``; refuses what SeedSequence does."""
    if _is_int(seeds):
        items, seed_axis = [seeds], False
    elif isinstance(seeds, np.ndarray):
        if seeds.ndim != 1:
            raise ValueError(f"{_SEEDS_ALLOWED}, got a {seeds.ndim}-D array")
        items, seed_axis = seeds.tolist(), True
    elif isinstance(seeds, (list, tuple, range)):
        items, seed_axis = list(seeds), True
    else:
        raise ValueError(f"{_SEEDS_ALLOWED}, got {V._describe(seeds)}")
    if not items:
        raise ValueError(f"{_SEEDS_ALLOWED}, got an empty sequence")
    bad = [v for v in items if not _is_int(v)]
    if bad:
        raise ValueError(f"{_SEEDS_ALLOWED}, got {bad[0]!r}")
    bad = [v for v in items if v < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative ints (of any size: what "
                         f"numpy.random.SeedSequence accepts), got {bad[0]}")
    items = [int(v) for v in items]
    if len(set(items)) != len(items):
        raise ValueError(f"seeds has repeated values {items}")
    return seed_axis, tuple(items)


def _rules(g: _Grid, lo: int, hi: int) -> list:
    """The validated rules of grid points lo..hi-1 (flat C order over the grid axes); an
    invalid point raises the rule's error, naming the point."""
    names = list(g.axes)
    values = [g.axes[k].tolist() for k in names]
    rules = []
    for combo in itertools.islice(itertools.product(*values), lo, hi):
        kw = dict(g.fixed)
        kw.update(zip(names, combo, strict=True))
        try:
            rules.append(g.rule_cls(**kw))
        except (TypeError, ValueError) as exc:
            show = dict(zip(names, combo, strict=True))
            raise type(exc)(f"{g.rule_cls.__name__} rejects grid point {show}: {exc}") \
                from None
    return rules


def _grid_hp(g: _Grid):
    """The kernel rows of every grid point from the rule class's column form
    (Rule._grid_hp: validated a column at a time, no rule object per point), or None."""
    return g.rule_cls._grid_hp(dict(g.fixed), dict(g.axes), g.potential)


def _pack_rules(g: _Grid, lo: int, hi: int, rules: list | None = None,
                hp_all: np.ndarray | None = None) -> _bridge.RuleInputs:
    """Build and validate the rules of grid points lo..hi-1 (flat, grid order; or take
    them from ``rules``) and stack their kernel inputs (``Rule.kernel_inputs`` of each at
    its initial state): hp (n, nhp), vec (n, nvec·d), sca (n, nsca), one partition.
    Without ``rules``, the rule class's column form (``hp_all``, or _grid_hp) is used
    where it has one: it promises zero initial states (Rule._grid_hp)."""
    pot = g.potential
    cls = g.rule_cls
    if rules is None:
        if hp_all is None:
            hp_all = _grid_hp(g)
        if hp_all is not None:
            if cls.check_start is not Rule.check_start:
                # the column form's promise (Rule._grid_hp): check_start does not depend
                # on the grid's axes, so the first point's answers for every point
                g.rule_at(0).check_start(g.q0)
            return _stack_zero_states(_template(g), hp_all[lo:hi])
        rules = _rules(g, lo, hi)
    if not rules:
        first = g.rule_at(0).kernel_inputs(pot, g.rule_at(0).init_state(pot))
        return _stack_zero_states(first, np.zeros((0, len(first.hp))))
    for rule in rules:
        rule.check_start(g.q0)
    # a fresh state of zeros (Rule.init_state, its scalars and partition unchanged by the
    # class) is the same at every point: pack it once
    if (cls.init_state is Rule.init_state and cls._pack_scalars is Rule._pack_scalars
            and cls._partition is Rule._partition
            and cls.kernel_inputs is Rule.kernel_inputs):
        first = rules[0].kernel_inputs(pot, rules[0].init_state(pot))
        return _stack_zero_states(first, np.array([r._hp(pot) for r in rules]))
    inputs = [r.kernel_inputs(pot, r.init_state(pot)) for r in rules]
    first = inputs[0]
    for one in inputs[1:]:
        if not (np.array_equal(first.pptr, one.pptr) and np.array_equal(first.pidx, one.pidx)):
            raise ValueError(f"{cls.__name__}: the grid changes how q is partitioned into "
                             "parts with their own state (e.g. per_block); scan each "
                             "setting separately")
        if one.vec.shape != first.vec.shape or one.sca.shape != first.sca.shape:
            raise ValueError(f"{cls.__name__}: the grid changes the size of the rule's "
                             "state; scan each setting separately")
    n = len(inputs)
    return _bridge.RuleInputs(
        first.kind, np.array([x.hp for x in inputs]),
        np.array([x.vec.ravel() for x in inputs]).reshape(n, first.vec.size),
        np.array([x.sca for x in inputs]).reshape(n, first.sca.size),
        first.pptr, first.pidx)


def _template(g: _Grid) -> _bridge.RuleInputs:
    """One point's kernel inputs (hp zeros) shared by every point of a column-form grid
    (``rules._grid_template``: cached per rule class and d; ScalarRMSProp's per potential
    and ``per_block``)."""
    return g.column_template


def _stack_zero_states(first: _bridge.RuleInputs, hp: np.ndarray) -> _bridge.RuleInputs:
    """Kernel inputs of len(hp) points that all start from ``first``'s zero state."""
    n = len(hp)
    return _bridge.RuleInputs(first.kind, hp, np.zeros((n, first.vec.size)),
                              np.zeros((n, first.sca.size)), first.pptr, first.pidx)


def _series_rows(g: _Grid) -> int:
    return 0 if g.record_every is None else g.steps // g.record_every + 1


# ---------------------------------------------------------------------------------------
# one compiled call over a flat range of tasks


def _forced_lane_isa() -> str | None:
    """The lane-kernel version the debug variable ``NOETHER_LANE_ISA`` forces (the tests
    compare every version this CPU runs; docs/scan.md), or None: the best this CPU runs."""
    return os.environ.get("NOETHER_LANE_ISA") or None


def _lane_reason(g: _Grid) -> str | None:
    """Why the lane kernel cannot run this grid (None: it can).

    It covers SGD, Adam, AdamW, RMSprop, ScalarRMSProp and MirrorDescent (every mirror
    map; docs/scan.md §"MirrorDescent lanes") on a potential with a lane form
    (Quadratic, RayleighQuotient, BatchNormUnit), full batch, or minibatch on
    BatchNormUnit, recorded series included, with the balance laws of scale-family
    symmetries or none (docs/scan.md §"Lanes", §"Minibatch lanes")."""
    from .rules import SGD, Adam, MirrorDescent, RMSprop, ScalarRMSProp

    lane_rules = (SGD, Adam, RMSprop, ScalarRMSProp, MirrorDescent)
    if not any(isinstance(g.rule_cls, type) and issubclass(g.rule_cls, base)
               and g.rule_cls.kind == base.kind for base in lane_rules) \
            or g.rule_cls.kind not in _bridge.LANE_RULE_KINDS:
        return (f"the rule is {g.rule_cls.__name__}, lanes run SGD, Adam, AdamW, RMSprop, "
                "ScalarRMSProp and MirrorDescent only")
    if g.potential._lane_form() is None:
        return (f"{type(g.potential).__name__} has no lane form (Quadratic, "
                "RayleighQuotient and BatchNormUnit have)")
    form = g.potential._lane_form()
    if g.batch_size is not None and (form[0] != "bn_unit" or g.potential.n_data >= 2**32):
        return (f"minibatch runs of {type(g.potential).__name__} use the scalar loop "
                "(minibatch lanes: BatchNormUnit with fewer than 2**32 rows)")
    fams = sorted({sym.family for sym, _ in g.chosen} - {"scale"})
    if fams:
        return f"balance laws of the {', '.join(fams)} family use the scalar loop"
    if issubclass(g.rule_cls, Adam):
        need = _adam_table_bytes(g)
        if need > _ADAM_TABLE_MAX_BYTES:
            return (f"the lanes' table of Adam's bias corrections would need "
                    f"{need / 2**20:.0f} MiB (betas this close to 1 over {g.steps} steps); "
                    "the scalar loop calls pow at each step instead")
    return None


#: the largest table of Adam's bias corrections pow(beta, step) the lane kernel builds
_ADAM_TABLE_MAX_BYTES = 256 * 2**20


#: _adam_table_bytes by (steps, betas pairs), at most _ADAM_BYTES_CACHE_MAX entries
_ADAM_BYTES_CACHE: dict = {}
_ADAM_BYTES_CACHE_MAX = 256


def _adam_table_bytes(g: _Grid) -> int:
    """An upper bound on the bytes of the lane kernel's pow(beta, step) table: 2 rows per
    beta pair, each until beta^step underflows to 0 (step > 1075 ln 2 / -ln beta, after
    which pow is exactly 0 and the table stops; pyx/scan.pyx _pow_table) or ``steps``.

    Kept per (steps, pairs) when the pairs are hashable: the bound is a function of the
    step count and of the pairs' float values, and pairs that compare equal have equal
    float values (+0 and -0 give the same bound; NaN never compares equal, so it is never
    served from the cache)."""
    pairs = g.axes["betas"].tolist() if "betas" in g.axes else \
        [g.fixed.get("betas", g.rule_cls.betas)]
    try:
        key = (g.steps, tuple(tuple(p) if type(p) is list else p for p in pairs))
        hit = _ADAM_BYTES_CACHE.get(key)
    except TypeError:                      # unhashable values: computed every time
        key = hit = None
    if hit is not None:
        return hit
    need = _adam_table_bytes_of(g.steps, pairs)
    if key is not None and len(_ADAM_BYTES_CACHE) < _ADAM_BYTES_CACHE_MAX:
        _ADAM_BYTES_CACHE[key] = need
    return need


def _adam_table_bytes_of(steps: int, pairs: list) -> int:
    """_adam_table_bytes of ``steps`` and the betas ``pairs`` (no cache)."""
    vals = None
    if all(type(p) in (tuple, list) and len(p) == 2 and type(p[0]) in (float, int)
           and type(p[1]) in (float, int) for p in pairs):
        # the usual pairs of Python numbers: the same float64 values np.asarray gives
        # (int -> float rounds to nearest in both); without NaN, whose place in max()
        # would matter, the largest beta (or 0) is np.max's
        vals = [float(x) for p in pairs for x in p]
        if any(v != v for v in vals):
            vals = None
    if vals is not None:
        b = max(0.0, *vals)
    else:
        try:
            betas = np.asarray(pairs, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            return 0                       # invalid betas: the rules' validation names them
        b = float(np.max(betas, initial=0.0))
    if b <= 0.0:
        cols = 2                           # pow(0, step) = 0 from the first step
    elif b < 1.0:
        cols = min(steps, int(math.ceil(746.0 / -math.log(b))) + 2)
    else:
        cols = steps
    return 2 * len(pairs) * max(cols, 1) * 8


#: a lane block whose tasks draw from several streams costs about this many blocks on one
#: shared stream (minibatch lanes, docs/scan.md §"Minibatch lanes": 3.5-5.8x measured)
_MIXED_BLOCK_COST = 4


def _seed_stream_batch(g: _Grid, lo: int, n: int) -> tuple:
    """The lane kernel's minibatch input for tasks lo .. lo + n - 1 under
    ``batch_streams="seed"``: every task of seed s starts from the PCG64 state of
    ``SeedSequence(s)`` (``default_rng(s)``), and, with several seeds, the slot map that
    puts the tasks of one seed into the same blocks, seed by seed (points ascending), so
    that the kernel draws each step's batch once per block (docs/scan.md §"Minibatch
    lanes").  Each seed's tasks are padded to whole blocks unless packing them (blocks
    that straddle two seeds fall back to per-lane draws) costs less.  The fourth entry
    numbers each task's stream (its seed among the chunk's), so that the kernel can draw
    each stream's rows once for all its blocks."""
    S, L = len(g.seeds), _bridge.LANES
    sidx = np.arange(lo, lo + n) % S
    states = _bridge.pcg64_lane_states(task_seed(s, 0, "seed") for s in g.seeds)
    rng = np.ascontiguousarray(states[sidx])
    stream = np.ascontiguousarray(np.unique(sidx, return_inverse=True)[1].ravel(),
                                  dtype=np.intp)
    if S == 1:
        return (g.batch_size, rng, None, stream)    # tasks in order: blocks of one stream
    order = np.argsort(sidx, kind="stable").astype(np.intp)
    counts = np.bincount(sidx, minlength=S)
    counts = counts[counts > 0]
    padded = int(np.sum(-(-counts // L)))
    first = sidx[order[::L]]
    last = sidx[order[np.minimum(np.arange(0, n, L) + L - 1, n - 1)]]
    mixed = int(np.sum(first != last))
    packed = -(-n // L) + (_MIXED_BLOCK_COST - 1) * mixed
    # batch_form="moments" reads a block's moments once for its eight lanes: every block
    # holds one seed's tasks (padded), none straddles two
    if padded <= packed or g.batch_form == "moments":
        slots = np.full(padded * L, -1, dtype=np.intp)
        starts = np.concatenate([[0], np.cumsum(-(-counts // L) * L)[:-1]])
        ends = np.concatenate([[0], np.cumsum(counts)])
        for k, c in enumerate(counts):
            slots[starts[k]:starts[k] + c] = order[ends[k]:ends[k + 1]]
    else:
        slots = np.full(-(-n // L) * L, -1, dtype=np.intp)
        slots[:n] = order
    return (g.batch_size, rng, slots, stream)


def _run_lanes(g: _Grid, n: int, rule: _bridge.RuleInputs, plan: _bridge.ScanPlan, bptr,
               bidx, out: _bridge.ScanOutputs, progress, lo: int = 0):
    """The lane kernel over the packed tasks lo .. lo + n - 1 (same outputs as the scalar
    kernel).  A minibatch grid gives task t the PCG64 stream of ``point_seed(seed, point)``
    (docs/scan.md §"Minibatch streams"), as its starting state: the kernel draws from it
    itself (§"Minibatch lanes")."""
    charge_blocks = None
    if g.chosen:
        charge_blocks = _bridge.csr([g.potential.blocks[sym.blocks[0]] for sym, _ in g.chosen])
    plan.n_threads = max(1, min(plan.n_threads, -(-n // _bridge.LANES)))
    batch = None
    if g.batch_size is not None and g.batch_streams == "seed":
        batch = _seed_stream_batch(g, lo, n)
        if g.batch_form == "moments":
            batch = batch + ("moments",)
    elif g.batch_size is not None:
        S = len(g.seeds)
        batch = (g.batch_size, _bridge.pcg64_lane_states(
            point_seed(g.seeds[f % S], f // S) for f in range(lo, lo + n)))
    kern = _bridge.lane_kernel(g.potential._lane_form(), rule, g.q0, plan, bptr, bidx, out,
                               charge_blocks, _forced_lane_isa(), batch)
    out.kernel = f"lanes[{kern.isa}]"
    d = g.potential.dim
    per_step = d * d + 16 * d + (0 if batch is None else g.batch_size * (4 * d + 16))
    if g.batch_form == "moments":
        per_step = 2 * d * d + 16 * d
    if n * max(g.steps, 1) * per_step <= _LANE_DIRECT_UNITS:
        # a short grid runs on the calling thread: starting and joining the progress
        # thread (~0.06-0.14 ms) would be most of its cost, and it ends long before a
        # progress bar would appear (after 1 s) or Ctrl-C would need the thread
        kern.run()
    else:
        _run_kernel(kern, n * max(g.steps, 1), progress)
    return out


#: the job token of the kernel call this thread is making (set by _run_tasks)
_job = threading.local()


def _run_kernel(kern, total, progress):
    """Run a kernel, registered on ``_parallel.STOPS`` under this thread's job token so
    that Ctrl-C or an error elsewhere in the job can stop it (``kern.cancel()``)."""
    with STOPS.running(getattr(_job, "token", None), kern):
        if progress is None:
            kern.run()
        else:
            run_with_progress(kern, total, progress)


#: "not yet decided" for a grid's lane verdict (_lane_reason's answer, None meaning yes)
_UNDECIDED = object()


def _run_tasks(g: _Grid, lo: int, hi: int, threads: int | None, progress=None,
               rules: list | None = None, hp_all: np.ndarray | None = None,
               lane_why=_UNDECIDED):
    """Run flat tasks lo..hi-1 (grid point × seed, seed fastest) in one kernel call.

    Returns the :class:`_bridge.ScanOutputs` (leading length hi − lo).  Runs on workers
    too (the grid is picklable); ``progress`` is a callable(done, total) or None;
    ``rules``: the validated rules of every grid point, or ``hp_all``: their kernel rows,
    when the caller has them; ``lane_why``: ``_lane_reason(g)`` when the caller has it.
    """
    _job.token = g.token
    try:
        out = _run_tasks_in(g, lo, hi, threads, progress, rules, hp_all, lane_why)
    finally:
        _job.token = None
    _raise_callback_error(g, lo, out)
    return out


def _raise_callback_error(g: _Grid, lo: int, out: _bridge.ScanOutputs) -> None:
    """A user potential's fn failed in this kernel call (made by this thread): raise it
    (CallbackError from it; KeyboardInterrupt, SystemExit as themselves), naming the
    first stopped run (its step, grid point and seed), instead of reporting divergence."""
    raise_cb = getattr(g.potential, "_raise_callback_error", None)
    if raise_cb is None:
        return
    bad = np.flatnonzero(out.status != _status.OK)
    step, where = -1, "in scan "
    if bad.size:
        t = lo + int(bad[0])
        S = len(g.seeds)
        step = int(out.stop_step[bad[0]])
        where = (f"in scan (first stopped run: grid point {g.params_at(t // S)}, seed "
                 f"{g.seeds[t % S]}) ")
    raise_cb(step, where)


def _blocks_csr(pot: Potential):
    """CSR of the potential's blocks (the recorded |q_B|²), cached on the potential: its
    ``blocks`` is a read-only mapping of read-only index arrays fixed at construction;
    the cache is keyed by that mapping's identity, so a potential whose blocks were
    replaced is read again."""
    blocks = pot.blocks
    hit = pot.__dict__.get("_scan_blocks_csr")
    if hit is None or hit[0] is not blocks:
        bptr, bidx = _bridge.csr([blocks[k] for k in blocks])
        bptr.flags.writeable = False
        bidx.flags.writeable = False
        hit = (blocks, bptr, bidx)
        pot.__dict__["_scan_blocks_csr"] = hit
    return hit[1], hit[2]


def _run_tasks_in(g: _Grid, lo: int, hi: int, threads: int | None, progress, rules,
                  hp_all, lane_why=_UNDECIDED):
    pot = g.potential
    d, nb = pot.dim, len(pot.blocks)
    S = len(g.seeds)
    i_lo, i_hi = lo // S, (hi - 1) // S + 1
    packed = _pack_rules(g, i_lo, i_hi, None if rules is None else rules[i_lo:i_hi], hp_all)
    if S == 1:
        rule = packed                   # task t is grid point t: the rows as packed
    else:
        # task t -> its grid point's row in hp/vec/sca
        rows = np.arange(lo, hi) // S - i_lo
        rule = _bridge.RuleInputs(packed.kind, packed.hp[rows], packed.vec[rows],
                                  packed.sca[rows], packed.pptr, packed.pidx)
    n = hi - lo
    bptr, bidx = _blocks_csr(pot)
    R = _series_rows(g)
    out = _bridge.ScanOutputs.empty_fast(n, d, nb, R, len(g.chosen))
    row_bytes = (d + 2 + nb) * 8
    plan = _bridge.ScanPlan(
        steps=g.steps, K=int(min(_MAX_K, max(2, _CHUNK_ROW_BYTES // row_bytes))),
        late_start=g.steps - -(-g.steps // 10),
        record_every=0 if g.record_every is None else g.record_every, R=R,
        n_threads=_grid.threads_for(threads, n))
    if lane_why is _UNDECIDED and g.lanes is not False:
        lane_why = _lane_reason(g)
    if g.lanes is not False and lane_why is None:
        return _run_lanes(g, n, rule, plan, bptr, bidx, out, progress, lo)
    out.kernel = "scalar"
    batch = _bridge.Batch(0 if g.batch_size is None else g.batch_size)
    if g.batch_size is not None:
        batch.generators = [
            np.random.default_rng(task_seed(g.seeds[f % S], f // S, g.batch_streams))
            for f in range(lo, hi)]
    layout = _charges.layout(pot, g.chosen) if g.chosen else None
    kern = _bridge.scan_kernel(rule, pot._kernel, g.q0, plan, bptr, bidx, batch, out, layout)
    _run_kernel(kern, n * max(g.steps, 1), progress)
    return out


def _no_progress(done, total):
    pass


def _chunk_worker(g: _Grid, threads: int, lo: int, hi: int) -> _bridge.ScanOutputs:
    """What an executor runs: one compiled call over tasks lo..hi-1.

    On a thread of this process (a ThreadPoolExecutor) the kernel is registered under the
    job's token, so the caller's Ctrl-C stops it (``STOPS.cancel``).  On the main thread
    of a worker process (a ProcessPoolExecutor) it runs on a helper thread while the main
    thread waits, so that process's own SIGINT (Ctrl-C at a terminal reaches the whole
    process group) stops it and the KeyboardInterrupt returns to the caller."""
    main = threading.current_thread() is threading.main_thread()
    if STOPS.cancelled(g.token):
        raise Cancelled("scan cancelled before this chunk started")
    return _run_tasks(g, lo, hi, threads, progress=_no_progress if main else None)


# ---------------------------------------------------------------------------------------
# the public function


def scan(rule_cls, potential, q0, *, steps, record_every=None, seeds=(0,), executor=None,
         threads=None, progress=None, batch_size=None, n_chunks=None, charges=True,
         omega=None, max_record_bytes=DEFAULT_MAX_RECORD_BYTES, lanes=None,
         batch_streams="point", batch_form="rows", **grid) -> ScanResult:
    """Train ``rule_cls`` at every point of a hyper-parameter grid, in one compiled call.

    Parameters
    ----------
    rule_cls : subclass of noether_core.rules.Rule
        E.g. ``noether_core.rules.SGD``.
    potential : Potential
    q0 : (d,) array_like
        Initial parameters, the same for every point.
    steps : int ≥ 1
        Steps per point.  0 is refused (unlike ``train``): the per-point summaries
        (``loss_min``, ``angular_update`` over the last 10 % of the steps) need a step;
        ``train(..., steps=0)`` gives the initial loss and norms.
    record_every : int ≥ 1 or None
        Also keep, per point, the rows ``train(..., record_every=...)`` records (memory
        O(points · steps/record_every · d), checked against ``max_record_bytes``).
    seeds : int or 1-D sequence of distinct ints ≥ 0
        Minibatch seeds, of any size ``numpy.random.SeedSequence`` accepts.  A sequence
        adds a trailing ``seed`` axis; an int adds none.
        Point ``i`` (flat C-order index over the grid axes) under seed ``s`` draws from
        ``numpy.random.default_rng(SeedSequence(s).spawn(n_points)[i])`` (see
        :func:`point_seed`), or from ``numpy.random.default_rng(s)`` with
        ``batch_streams="seed"``.  Full-batch runs draw nothing, so seeds do not change
        them.
    executor : concurrent.futures.Executor or None
        Cut the grid into ``n_chunks`` chunks, each one compiled call on a worker
        (``ProcessPoolExecutor``, ``dask.distributed.Client.get_executor()``, …), and
        reassemble them in order.  The result is bitwise that of the local scan.
    threads : int ≥ 1 or None
        OpenMP threads per compiled call.  None: the CPUs this process may use (its
        affinity mask, capped by the cgroup CPU quota and by ``OMP_NUM_THREADS`` when
        set, as scikit-learn does) locally, 1 per chunk with an executor (the executor
        provides the parallelism).  Results never depend on it.
    progress : bool or None
        tqdm progress bar, shown once a scan has run for a second (short scans show
        none).  None: only when tqdm is installed and stderr is a terminal.
    batch_size : int or None
        Minibatch size for a data potential (None: full batch), as in ``train``.
    batch_streams : {"point", "seed"}
        Whose minibatch stream a run draws from (docs/scan.md §"Minibatch streams").
        ``"point"`` (default): each grid point its own, independent stream
        (:func:`point_seed`), so point ``i`` under seed ``s`` is bitwise ``train(...,
        seed=point_seed(s, i))``.  ``"seed"``: every point under seed ``s`` draws from
        ``numpy.random.default_rng(s)``, so point ``i`` is bitwise ``train(rule_at(i),
        ..., batch_size=B, seed=s)`` and all points of one seed see the same batch at
        every step — common random numbers: the difference between two grid points is
        then the hyper-parameters' effect alone, not also a different sequence of
        batches, which makes grid points directly comparable (and it is the reason to opt
        in).  It is also faster in the lane kernel, whose eight lanes of a block then
        share one draw per step (§"Minibatch lanes").  Ignored by full-batch scans, which
        draw nothing.  ``result.seed_at`` returns the stream for either mode.
    batch_form : {"rows", "moments"}
        How a minibatch step evaluates the loss on its batch (docs/scan.md §"Batch
        moments").  ``"rows"`` (default): row by row, the operations of ``train``, so
        every point is bitwise its ``train`` run.  ``"moments"`` (opt-in; needs
        ``batch_streams="seed"``, a ``batch_size``, a BatchNormUnit and the lane kernel):
        each step's batch is read through its centred moments (the d × d covariance of
        its rows, their covariance with the targets, the targets' mean square;
        docs/potentials.md §4b), formed once per seed and step and shared by every point
        of that seed, so that a step costs O(d²) per point, like the full batch's
        projection form, instead of O(B·d).  The same loss and gradient, rounded
        differently: a point then agrees with ``train(..., seed=s)`` to round-off, not
        bitwise.  The moments take 8·steps·(d² + d + 1) bytes per seed, counted in
        ``max_record_bytes``.
    n_chunks : int or None
        Chunks for ``executor`` (default: 4 per executor worker when that can be told,
        else 16; never more than the number of runs).
    max_record_bytes : int ≥ 0
        The scan's one memory budget, in bytes (default 4 GiB): everything it allocates
        — per-run summaries, the recorded series, the rules' kernel inputs, minibatch
        generators, kernel scratch — estimated from the grid's sizes before anything is
        allocated (docs/architecture.md, Budgets); a larger request raises
        :class:`~noether_core.errors.BudgetError` naming the bytes.
    lanes : bool or None
        The lane kernel runs ``noether_core._kernels.scan.LANES`` points per SIMD block
        (docs/scan.md §"Lanes"); it covers SGD, Adam, AdamW, RMSprop and
        ScalarRMSProp on Quadratic, RayleighQuotient and BatchNormUnit at full batch, and
        on BatchNormUnit with ``batch_size`` too (§"Minibatch lanes"), ``record_every``
        included, with charges off or scale-family.
        None: use it when it covers the scan; True: require it (ValueError saying why
        not); False: the scalar loop.  The results are the same bits either way;
        ``result.kernel`` says which ran.
    **grid
        Hyper-parameters of ``rule_cls``: a single value (fixed) or a 1-D array of
        distinct finite values (a grid axis).  Axes appear in the result in the order
        given.  Every point is validated by the rule's constructor.

    Returns
    -------
    ScanResult

    Raises
    ------
    TypeError
        Unknown keyword (the message lists the rule's valid ones), bad types.
    ValueError
        Empty, 2-D, non-finite or repeated axis values; a grid point the rule rejects
        (the message names the point); ``q0`` of the wrong length or with |q0|²
        overflowing; ``steps`` 0; a negative ``max_record_bytes``; a seed that is not an
        int ≥ 0; ``batch_streams`` not one of ``"point"``, ``"seed"``; ``batch_form``
        not one of ``"rows"``, ``"moments"``, or ``"moments"`` for a scan it cannot run
        (full batch, ``batch_streams="point"``, a potential other than BatchNormUnit, or
        a scan the lane kernel does not cover, ``lanes=False`` included).
    BudgetError
        (a ValueError and a MemoryError) The scan would allocate more than
        ``max_record_bytes`` (message: the bytes needed, by part).
    CallbackError
        A :class:`~noether_core.potentials.Python` potential's ``fn`` raised, or returned
        a malformed value: the original exception is ``__cause__``; the message names
        the step and the first stopped run.  KeyboardInterrupt and SystemExit raised in
        ``fn`` propagate as themselves.
    KeyboardInterrupt
        Ctrl-C: the running kernels (and, with ``executor=``, the chunks not yet started
        and those running in this process) are told to stop; re-raised unchanged.

    Notes
    -----
    Each point runs the loop of ``train`` (pyx/rules.pyx) and is bitwise equal to
    ``train(rule_cls(**point), potential, q0, steps, record_every=..., batch_size=...,
    seed=result.seed_at(...))`` (``point_seed(s, i)``, or ``s`` with
    ``batch_streams="seed"``), for any ``threads`` and any chunking.  A point meeting a
    non-finite loss, gradient or parameter stops there (``diverged``, ``stop_step``); the
    others finish; one :class:`~noether_core.errors.DivergenceWarning` summarises.

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> pot = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
    >>> res = nc.scan(nc.rules.SGD, pot, [1.0, 1.0, 1.0], steps=1000,
    ...               lr=[0.01, 0.1], momentum=0.9, weight_decay=[0.0, 1e-3], seeds=0)
    >>> res.loss.shape
    (2, 2)
    """
    t0 = time.perf_counter()
    args = _grid_args(rule_cls, potential, q0, steps, record_every, seeds, batch_size, grid)
    max_record_bytes = V.as_int("max_record_bytes", max_record_bytes, lo=0)
    chosen, untracked = _charges.select(potential, charges, omega)
    if lanes is not None:
        lanes = V.as_bool("lanes", lanes)
    batch_streams = _check_batch_streams(batch_streams)
    batch_form = _check_batch_form(batch_form, potential, args[9], batch_streams, lanes)
    g = _Grid(*args, chosen=chosen, lanes=lanes, token=STOPS.new_token(),
              batch_streams=batch_streams, batch_form=batch_form)
    lane_why = _lane_reason(g) if lanes is not False else _UNDECIDED
    if lanes and lane_why is not None:
        raise ValueError(f"lanes=True, but the lane kernel cannot run this scan: {lane_why}")
    if batch_form == "moments" and lane_why is not None:
        raise ValueError(f"batch_form='moments' runs in the lane kernel only, which cannot "
                         f"run this scan: {lane_why}; use batch_form='rows'")
    if threads is not None:
        threads = V.as_int("threads", threads, lo=1)
        if threads > 1 and not _OPENMP:
            warnings.warn("noether_core was built without OpenMP: the scan runs on one "
                          "thread", RuntimeWarning, stacklevel=2)
    show = want_progress(progress)
    # every point valid before any work is done: a column at a time where the rule class
    # has a column form (Rule._grid_hp), else one rule object per point (after the
    # budget: a grid too large to run is refused before its points are built)
    hp_all = _grid_hp(g)
    _check_budget(g, max_record_bytes, threads, executor is not None, hp_all)
    rules = _rules(g, 0, g.n_points) if hp_all is None else None
    if executor is None:
        bar = ProgressBar(g.n_tasks * max(g.steps, 1), show)
        try:
            out = _run_tasks(g, 0, g.n_tasks, threads, progress=bar, rules=rules,
                             hp_all=hp_all, lane_why=lane_why)
        finally:
            bar.close()
    else:
        if rules is not None:
            _pack_rules(g, 0, g.n_points, rules)
        parts = _grid.run_chunks(executor, _chunk_worker, (g, 1 if threads is None else threads),
                                 g.n_tasks, n_chunks, show,
                                 cancel=lambda: STOPS.cancel(g.token))
        out = _bridge.ScanOutputs.concatenate(parts)

    res = _result(g, out, rules, t0)
    res.untracked = untracked
    if not out.status.any():            # every point finished (status OK is 0)
        return res
    if np.any(res.status == _status.INTERRUPTED):
        raise KeyboardInterrupt("scan interrupted")
    nd = int(res.diverged.sum())
    if nd:
        first = np.argwhere(res.diverged)[0]
        warnings.warn(f"{nd} of {res.diverged.size} scan points of {g.rule_cls.__name__} on "
                      f"{type(potential).__name__} stopped on a non-finite value (first: "
                      f"{res.params(*first)} at step {int(res.stop_step[tuple(first)])}, "
                      f"{res.stop_reason(*first)}); see result.diverged",
                      DivergenceWarning, stacklevel=2)
    return res


def _check_batch_streams(batch_streams) -> str:
    """``batch_streams`` validated: one of BATCH_STREAMS (the strings themselves)."""
    if not isinstance(batch_streams, str) or batch_streams not in BATCH_STREAMS:
        raise ValueError(f"batch_streams must be one of {', '.join(map(repr, BATCH_STREAMS))}"
                         f", got {batch_streams!r}")
    return batch_streams


#: the batch forms of a minibatch step (pyx/scan.pyx BATCH_FORMS; docs/scan.md "Batch
#: moments")
BATCH_FORMS = ("rows", "moments")


def _check_batch_form(batch_form, potential, batch_size, batch_streams, lanes) -> str:
    """``batch_form`` validated: one of BATCH_FORMS; ``"moments"`` only where it is
    defined (a minibatch of a BatchNormUnit under seed streams, in the lane kernel)."""
    if not isinstance(batch_form, str) or batch_form not in BATCH_FORMS:
        raise ValueError(f"batch_form must be one of {', '.join(map(repr, BATCH_FORMS))}, "
                         f"got {batch_form!r}")
    if batch_form == "rows":
        return batch_form
    why = None
    if batch_size is None:
        why = ("a full-batch scan has no minibatch (pass batch_size=; the full batch "
               "already runs in O(d^2) per step, docs/potentials.md §4a)")
    elif batch_streams != "seed":
        why = (f"batch_streams={batch_streams!r}: the moments of a batch are shared by "
               "the points of a seed, so they need batch_streams='seed'")
    elif (potential._lane_form() or ("",))[0] != "bn_unit":
        why = (f"{type(potential).__name__} has no moment form (BatchNormUnit has: "
               "docs/potentials.md §4b)")
    elif lanes is False:
        why = "lanes=False: the scalar loop evaluates a batch row by row only"
    if why is not None:
        raise ValueError(f"batch_form='moments' is not available here: {why}; allowed: "
                         "batch_form='rows' (or 'moments' for a BatchNormUnit minibatch "
                         "scan with batch_streams='seed' in the lane kernel)")
    return batch_form


def _budget_parts(g: _Grid, threads: int | None, chunked: bool, hp_all=None) -> dict:
    """Bytes a scan will allocate, by what (Python ints: no overflow), estimated from the
    grid's sizes before anything is allocated (docs/architecture.md §"How errors cross
    the GIL", Budgets).

    Per run: the summaries of ``ScanOutputs.empty`` (q, loss, loss_min, norm² and
    angular update per block, three intp counters, two charge columns per tracked
    symmetry), the recorded series (R rows of q, loss, |g|², norm² per block), the
    rule's packed kernel inputs (hp, vec, sca: twice, the grid's rows and the per-run
    copy), a Generator per minibatch run; with an executor, the chunks' outputs and the
    joined copy (twice the outputs).  Per grid point: a rule object where the class has
    no column form.  Per thread: the kernel's scratch (not seen by tracemalloc).  Once:
    the fixed Python objects.  ``hp_all``: the grid's column-form rows when the caller
    has them (``_grid_hp``), which spares building a rule to size its inputs."""
    pot = g.potential
    d, nb, nsym = pot.dim, len(pot.blocks), len(g.chosen)
    n, R = g.n_tasks, _series_rows(g)
    if hp_all is not None:
        # every point valid, with the column form: one point's inputs are the template's
        first = _template(g)
        per_input = 8 * (hp_all.shape[1] + first.vec.size + first.sca.size)
        columns = True
    else:
        try:
            first = g.rule_at(0).kernel_inputs(pot, g.rule_at(0).init_state(pot))
            per_input = 8 * (first.hp.size + first.vec.size + first.sca.size)
            columns = g.rule_cls._grid_hp(dict(g.fixed), {}, pot) is not None
        except (TypeError, ValueError):
            per_input = 8 * (16 + 3 * d)      # (the point's own error is raised later)
            columns = False
    outputs = 8 * (d + 2 + 2 * nb + 3 + 2 * nsym)
    series = 8 * R * (d + 2 + nb)
    copies = 2 if chunked else 1
    n_threads = _grid.threads_for(threads, n) if not chunked else 1
    parts = {"fixed Python objects": _BASE_BYTES,
             "summaries": copies * n * outputs,
             "recorded series": copies * n * series,
             "rule inputs": 2 * n * per_input,
             "rule objects": 0 if columns else g.n_points * _RULE_OBJECT_BYTES,
             "minibatch generators": n * _GENERATOR_BYTES if g.batch_size else 0,
             "kernel scratch": n_threads * (_THREAD_SCRATCH_BYTES
                                            + 8 * (pot.n_data + 6 * d + 4 * nb)
                                            + _lane_scratch_bytes(g))}
    if g.batch_size and g.batch_form == "moments":
        # the moments of every step's batch of each seed (pyx/scan.pyx _set_moments:
        # steps x (d d + d + 1) doubles per seed), the per-task stream ids and slot map
        parts["batch moments"] = 8 * len(g.seeds) * g.steps * (d * d + d + 1) + 32 * n
    elif g.batch_size and g.batch_streams == "seed":
        # the lane kernel's rows of each seed's stream, drawn once per call when they fit
        # (pyx/scan.pyx ROWS_TABLE_MAX entries of 4 bytes), and the per-task stream ids
        parts["shared batch rows"] = (
            4 * min(len(g.seeds) * g.steps * g.batch_size, _bridge.ROWS_TABLE_MAX)
            + 16 * n)
    return parts


def _lane_scratch_bytes(g: _Grid) -> int:
    """Upper bound on one thread's lane workspace (pyx/lanes.h ``nc_lane_ws_bytes``), in
    bytes, vectors of eight lanes' doubles (64 B per entry): the ten d-length arrays (q,
    q_{n+1}, the gradient, the rule's three buffers, the free step and RMSprop's three
    free-step pieces), the rows of max(n_data, 2d), the named blocks, the partition's
    parts (at most d), four per tracked law, the late-window angle queue (K states, K =
    min(8, max(1, 256 // d)), and K + 1 rows of the blocks' entries, 2K per block); for
    a minibatch grid each lane's permutation and swap list (32 n_data + 32 B bytes), its
    gathered batch rows with their targets (64 B (d + 1) bytes) and the shared draws'
    table of T steps' swap partners (4 T B bytes, T B <= max(2**14, 4 B): pyx/scan.pyx
    ``_set_batch``); 64 B of alignment per array.  Counted for every grid (an estimate
    that is never low, whichever kernel runs)."""
    pot = g.potential
    d, N, nb = pot.dim, pot.n_data, len(pot.blocks)
    nnz = sum(int(b.size) for b in pot.blocks.values())
    K = min(8, max(1, 256 // max(d, 1)))
    ns = max(len(g.chosen), 1)
    extra = 64 * (10 * d + max(N, 2 * d) + max(nb, 1) + max(d, 1) + 4 * ns + K * d
                  + (K + 1) * nnz + 2 * K * max(nb, 1)) + 64 * 24
    if g.batch_size:
        B = g.batch_size
        extra += 32 * N + 32 * B + 64 * B * (d + 1) + 4 * max(2**14, 4 * B) + 64 * 5
    return extra


def _check_budget(g: _Grid, max_record_bytes: int, threads, chunked: bool,
                  hp_all=None) -> None:
    """Refuse (BudgetError: a ValueError and a MemoryError) a scan whose estimated
    allocations exceed ``max_record_bytes``, before any of it is allocated."""
    parts = _budget_parts(g, threads, chunked, hp_all)
    need = sum(parts.values())
    if need <= max_record_bytes:
        return
    detail = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items() if v)
    R = _series_rows(g)
    rec = (f" (recording {R} rows: steps={g.steps}, record_every={g.record_every})"
           if R else "")
    raise BudgetError(
        f"scan of {g.n_tasks} runs of {g.potential.dim} parameters{rec} needs "
        f"{need / 2**20:.1f} MiB, above the budget max_record_bytes={max_record_bytes} "
        f"({max_record_bytes / 2**20:.1f} MiB): about {need} bytes ({detail}); pass a "
        "larger max_record_bytes= to allow it, shrink the grid"
        + (" or raise record_every" if R else ""))


def _result(g: _Grid, out: _bridge.ScanOutputs, rules: list | None, t0: float) -> ScanResult:
    """The ScanResult of a finished grid: outputs shaped by the grid axes (then seed)."""
    potential = g.potential
    shape = g.grid_shape + ((len(g.seeds),) if g.seed_axis else ())
    axes = dict(g.axes)
    if g.seed_axis:
        axes["seed"] = np.array(g.seeds)

    def shaped(a):
        return a.reshape(shape + a.shape[1:])

    R = _series_rows(g)
    series = None
    if R:
        series = {"steps": g.record_every * np.arange(R), "q": shaped(out.s_q),
                  "loss": shaped(out.s_loss), "grad_norm2": shaped(out.s_g2),
                  "norm2": shaped(out.s_bn2), "n_rows": shaped(out.n_rows)}
    fixed = dict(g.fixed)
    if not g.seed_axis:
        fixed["seed"] = g.seeds[0]
    res = ScanResult(g.rule_cls, axes, fixed, g.seeds, g.grid_shape, tuple(potential.blocks),
                     g.steps, g.record_every, g.batch_size, shaped(out.q), shaped(out.loss),
                     shaped(out.loss_min), shaped(out.norm2), shaped(out.angular_update),
                     shaped(out.status), shaped(out.stop_step), series,
                     time.perf_counter() - t0, batch_streams=g.batch_streams,
                     batch_form=g.batch_form)
    res.kernel = out.kernel
    if g.chosen:
        _charge_summaries(g, res, shaped(out.charge_worst), shaped(out.charge_worst_step),
                          rules)
    return res


def _charge_summaries(g: _Grid, res: ScanResult, worst, wstep, rules: list | None):
    """Per tracked symmetry: worst residual, its step, and whether the law is exact."""
    potential = g.potential
    labels = [_charges.symmetry_label(sym) for sym, _ in g.chosen]
    res.charge_worst = {lab: worst[..., j] for j, lab in enumerate(labels)}
    res.charge_worst_step = {lab: wstep[..., j] for j, lab in enumerate(labels)}
    # the law of each symmetry may depend on the point's hyper-parameters
    # (e.g. ScalarRMSProp's project=True): decide it per grid point
    exact = np.zeros(worst.shape, dtype=bool)
    declared = [any(sym == t for t in potential.symmetries) and sym.exact
                for sym, _ in g.chosen]
    flat = exact.reshape(g.n_points, -1, len(g.chosen))
    if rules is None:
        # the column form promises laws independent of the parameters (Rule._grid_hp)
        rule0 = g.rule_at(0)
        for j, (sym, _) in enumerate(g.chosen):
            flat[:, :, j] = declared[j] and rule0.kinetic_symmetric(sym, potential)
    for i, rule in enumerate(rules or ()):
        for j, (sym, _) in enumerate(g.chosen):
            flat[i, :, j] = declared[j] and rule.kinetic_symmetric(sym, potential)
    res.balance_residual = np.where(exact, worst, 0.0).max(axis=-1)
    res.charge_exact = {lab: exact[..., j] for j, lab in enumerate(labels)}
