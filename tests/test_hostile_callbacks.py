"""Hostile input, round 2 (issue 19): a user's failing Python potential, memory budgets,
masked arrays, unknown keywords and the compiled entry points' own checks.

* Items 11 and 13: an exception raised by ``fn`` (or a malformed return value) reaches the
  caller of ``train``, ``scan`` and ``scan_integrate`` as ``CallbackError`` with the
  original as ``__cause__``, on every execution path (one thread, OpenMP threads, a thread
  pool, a process pool), never as a divergence; KeyboardInterrupt and SystemExit arrive
  as themselves.
* Item 12: nothing is left behind per failed call (the failure is filed under the thread
  that owns the run and collected by it).
* Item 14: CallbackError pickles (step included), so a worker's error reaches the caller.
* Item 16: scan's one budget, estimated before allocating: a refusal names the bytes and
  ``max_record_bytes=``; the estimate is an upper bound of what NumPy allocates.
* Item 19: a masked q0 is refused (not silently unmasked); scan_integrate's unknown
  keyword message names the unknown ones and lists the valid ones.
* Class level: train_kernel and ScanKernel refuse a batch larger than the data and block
  or partition indices outside q themselves; Compiled and Python take ``max_bytes=``.
"""
import gc
import pickle
import threading
import tracemalloc
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import _bridge, _parallel, errors
from noether_core import models as M
from noether_core import potentials as P
from noether_core import rules as R

Q0 = np.array([1.0, 1.0, 1.0])


# module-level callables: a process pool pickles them by reference
def fails_below_half(q):
    """f = |q|², raising ZeroDivisionError once q[0] < 0.5 (plain GD shrinks q[0])."""
    if q[0] < 0.5:
        raise ZeroDivisionError("boom")
    return float(q @ q), 2.0 * q


def wrong_shape(q):
    return float(q @ q), np.zeros(len(q) + 2)


def not_a_pair(q):
    return float(q @ q)


def interrupts(q):
    raise KeyboardInterrupt("from fn")


def exits(q):
    raise SystemExit(7)


FAILING = [(fails_below_half, ZeroDivisionError, "boom"),
           (wrong_shape, ValueError, "gradient of shape"),
           (not_a_pair, TypeError, "must return a pair")]


def _train(pot, **kw):
    return nc.train(R.SGD(lr=0.3), pot, Q0, 200)


def _scan(pot, **kw):
    return nc.scan(R.SGD, pot, Q0, steps=200, lr=[0.01, 0.3, 0.2], **kw)


def _scan_integrate(pot, **kw):
    return nc.scan_integrate(M.GradientFlow, pot, Q0, t_end=5.0, method="euler", h=0.01,
                             mu=[1.0, 2.0, 3.0], **kw)


ENTRY = {"train": (_train, {}),
         "scan 1 thread": (_scan, {"threads": 1}),
         "scan 2 threads": (_scan, {"threads": 2}),
         "scan_integrate 1 thread": (_scan_integrate, {"threads": 1}),
         "scan_integrate 2 threads": (_scan_integrate, {"threads": 2})}


# -- items 11 and 13 ------------------------------------------------------------------------

@pytest.mark.parametrize("entry", list(ENTRY))
@pytest.mark.parametrize("fn, cause, text", FAILING, ids=lambda x: getattr(x, "__name__", ""))
def test_a_failing_fn_reaches_the_caller_as_callback_error(entry, fn, cause, text):
    """Item 11: the user's exception is ``__cause__`` of a CallbackError whose message
    repeats it; no DivergenceWarning is emitted (the failure is not a divergence)."""
    call, kw = ENTRY[entry]
    pot = P.Python(fn, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", nc.DivergenceWarning)
        with pytest.raises(nc.CallbackError) as info:
            call(pot, **kw)
    assert isinstance(info.value.__cause__, cause)
    assert text in str(info.value) and isinstance(info.value.step, int)
    assert pot._pending_errors() == 0


@pytest.mark.parametrize("entry", list(ENTRY))
@pytest.mark.parametrize("fn, exc", [(interrupts, KeyboardInterrupt), (exits, SystemExit)])
def test_keyboard_interrupt_and_system_exit_arrive_as_themselves(entry, fn, exc):
    """Item 13: not wrapped, the very object fn raised (its args kept)."""
    call, kw = ENTRY[entry]
    pot = P.Python(fn, 3)
    with pytest.raises(exc) as info:
        call(pot, **kw)
    assert type(info.value) is exc
    assert info.value.args == (("from fn",) if exc is KeyboardInterrupt else (7,))
    assert pot._pending_errors() == 0


def test_scan_names_the_first_stopped_run():
    """On one thread the points run in grid order, so the first stopped run is the one
    whose fn raised: lr = 0.3 shrinks q[0] = 1 below 0.5 at step ⌈log(0.5)/log(0.4)⌉ = 1
    (q[0] = (1 − 2·lr)^n = 0.4^n): the gradient evaluated at step 1 raises."""
    pot = P.Python(fails_below_half, 3)
    with pytest.raises(nc.CallbackError, match=r"grid point \{'lr': 0.3\}, seed 0"):
        nc.scan(R.SGD, pot, Q0, steps=200, lr=[0.3, 0.01], threads=1)
    with pytest.raises(nc.CallbackError) as info:
        nc.scan(R.SGD, pot, Q0, steps=200, lr=[0.3, 0.01], threads=1)
    assert info.value.step == 1


def test_a_failing_fn_through_a_thread_pool_executor():
    pot = P.Python(fails_below_half, 3)
    with ThreadPoolExecutor(2) as ex:
        with pytest.raises(nc.CallbackError) as info:
            _scan(pot, executor=ex, n_chunks=3)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        with pytest.raises(nc.CallbackError):
            _scan_integrate(pot, executor=ex, n_chunks=3)
    assert pot._pending_errors() == 0
    assert _parallel.STOPS.n_running() == 0


def test_a_failing_fn_through_a_process_pool_executor():
    """Item 14: the worker's CallbackError is pickled back intact (message and step; the
    executor attaches the worker's traceback as __cause__), and the pool survives."""
    pot = P.Python(fails_below_half, 3)
    with ProcessPoolExecutor(2) as ex:
        with pytest.raises(nc.CallbackError, match="ZeroDivisionError: boom") as info:
            _scan(pot, executor=ex, n_chunks=3)
        assert info.value.step >= 0
        ok = nc.scan(R.SGD, P.Python(fails_below_half, 3), Q0, steps=5, lr=[0.01, 0.02],
                     executor=ex)
    assert ok.q.shape == (2, 1, 3) and not ok.diverged.any()


def test_callback_error_pickles():
    """Item 14: message and step survive pickling (``__reduce__``)."""
    exc = nc.CallbackError("the Python potential's fn raised at step 5: X", 5)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is nc.CallbackError and back.step == 5 and str(back) == str(exc)


# -- item 12: nothing left behind -------------------------------------------------------------

def test_failing_scans_leave_nothing_behind():
    """Item 12: before the fix each failed scan left its exception (with its traceback
    and frames, ~90 KB) in a table keyed by short-lived thread ids.  Now: the table is
    empty after every call, from the main thread and from short-lived threads alike, and
    tracemalloc sees bounded growth over 200 failed scans (a leak of the old size would
    be ≥ 18 MB; the bound, 2 MB, leaves room for caches)."""
    pot = P.Python(fails_below_half, 3)

    def fail_once():
        with pytest.raises(nc.CallbackError):
            nc.scan(R.SGD, pot, Q0, steps=50, lr=[0.3, 0.2], threads=2)

    for _ in range(20):                                  # warm caches
        fail_once()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            if i % 4 == 0:
                th = threading.Thread(target=fail_once)
                th.start()
                th.join()
            else:
                fail_once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert pot._pending_errors() == 0
    assert grown < 2 * 2**20, grown


def test_an_uncollected_failure_is_forgotten_by_the_next_run():
    """A failure nobody collected (value_and_grad's caller ignoring it is impossible;
    here: a kernel driven directly) is dropped by the owner's next run, so the table holds
    at most one entry per live thread."""
    pot = P.Python(fails_below_half, 3)
    with pytest.raises(ZeroDivisionError):
        pot.value_and_grad([0.1, 0.0, 0.0])
    assert pot._pending_errors() == 0
    f, g = pot.value_and_grad([1.0, 0.0, 0.0])
    assert f == 1.0 and pot._pending_errors() == 0


# -- item 16: one budget for scan ---------------------------------------------------------------

def test_a_huge_scan_is_refused_before_allocating():
    """Item 16: a 10⁴ × 10⁴ grid (10⁸ runs) is refused at once with a BudgetError (a
    ValueError and a MemoryError) naming the bytes and how to raise the budget.  Its
    summaries alone are 10⁸ · (3 + 2 + 2 + 3) · 8 bytes = 7.45 GiB > 4 GiB."""
    pot = P.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
    lr = np.linspace(0.01, 0.1, 10**4)
    mom = np.linspace(0.0, 0.9, 10**4)
    with pytest.raises(errors.BudgetError) as info:
        nc.scan(R.SGD, pot, Q0, steps=10, lr=lr, momentum=mom)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)
    msg = str(info.value)
    assert "max_record_bytes=" in msg and "summaries" in msg and "100000000 runs" in msg
    need = int(msg.split("about ")[1].split(" bytes")[0])
    assert need >= 10**8 * 10 * 8


@pytest.mark.parametrize("rule_cls, kw", [(R.SGD, {"lr": np.linspace(0.01, 0.1, 300)}),
                                          (R.Adam, {"lr": np.linspace(1e-3, 1e-2, 300)})])
@pytest.mark.parametrize("record_every", [None, 5])
def test_the_scan_budget_is_an_upper_estimate(rule_cls, kw, record_every):
    """The estimate bounds what scan allocates through NumPy and Python (tracemalloc's
    peak over the call; the kernel's per-thread scratch is charged separately), and a
    budget just below it is refused while the estimate itself is accepted."""
    from noether_core import _scan

    pot = P.Quadratic(np.diag(np.linspace(1.0, 2.0, 20)))
    q0 = np.ones(20)
    g = _scan._make_grid(rule_cls, pot, q0, 100, record_every, (0, 1), None, dict(kw))
    g = g.__class__(**{**g.__dict__, "chosen": nc.charges.select(pot, True, None)[0]})
    parts = _scan._budget_parts(g, 1, False)
    need = sum(parts.values())
    gc.collect()
    tracemalloc.start()
    try:
        nc.scan(rule_cls, pot, q0, steps=100, record_every=record_every, seeds=[0, 1],
                threads=1, max_record_bytes=need, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= need - parts["kernel scratch"], (peak, need)
    with pytest.raises(MemoryError, match="max_record_bytes"):
        nc.scan(rule_cls, pot, q0, steps=100, record_every=record_every, seeds=[0, 1],
                threads=1, max_record_bytes=need - 1, **kw)


@given(rule_cls=st.sampled_from([R.SGD, R.Adam, R.RMSprop, R.ScalarRMSProp]),
       d=st.integers(1, 40), n_lr=st.integers(1, 40), steps=st.integers(1, 60),
       record_every=st.one_of(st.none(), st.integers(1, 20)), n_seeds=st.integers(1, 3),
       charges=st.booleans())
def test_the_scan_budget_bounds_every_grid(rule_cls, d, n_lr, steps, record_every,
                                           n_seeds, charges):
    """The class behind item 16: over grids of every size, rule, recording and charges,
    tracemalloc's peak during scan stays within the estimate the budget checks (without
    its kernel-scratch part, which tracemalloc cannot see)."""
    from noether_core import _scan

    pot = P.RayleighQuotient(np.diag(np.linspace(1.0, 2.0, d)))
    q0 = np.ones(d)
    lr = np.linspace(1e-3, 1e-2, n_lr)
    seeds = list(range(n_seeds))
    g = _scan._make_grid(rule_cls, pot, q0, steps, record_every, seeds, None, {"lr": lr})
    g = g.__class__(**{**g.__dict__, "chosen": nc.charges.select(pot, charges, None)[0]})
    parts = _scan._budget_parts(g, 1, False)
    # the kernel's scratch (posix_memalign) is invisible to tracemalloc: the rest of the
    # estimate alone must bound what tracemalloc sees
    need = sum(parts.values()) - parts["kernel scratch"]
    gc.collect()
    tracemalloc.start()
    try:
        nc.scan(rule_cls, pot, q0, steps=steps, record_every=record_every, seeds=seeds,
                threads=1, charges=charges, lr=lr)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= need, (peak, need)


def test_user_potentials_take_max_bytes():
    """Class level: Compiled and Python refuse a d whose blocks (and, for Python, one
    evaluation's copies: 3·8·d bytes) exceed max_bytes, before allocating; the raised
    budget survives pickling."""
    with pytest.raises(ValueError, match=r"Python\(d=100000000\) would need about"):
        P.Python(fails_below_half, 10**8, max_bytes=10**8)
    pot = P.Python(fails_below_half, 1000, max_bytes=10**6)
    back = pickle.loads(pickle.dumps(pot))
    assert back._init_kwargs == {"max_bytes": 10**6} and back.dim == 1000
    with pytest.raises(ValueError, match="max_bytes"):
        P.Python(fails_below_half, 3, max_bytes=-1)


# -- item 19: masked q0, scan_integrate's unknown keywords -------------------------------------

def test_a_masked_q0_is_refused_not_unmasked():
    pot = P.Quadratic(np.eye(3))
    masked = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(ValueError, match="q0 is a masked array with 1 masked entries"):
        nc.scan(R.SGD, pot, masked, steps=3, lr=[0.1])
    with pytest.raises(ValueError, match="masked"):
        nc.train(R.SGD(lr=0.1), pot, masked, 3)
    # a masked array without masked entries is an ordinary array
    plain = nc.scan(R.SGD, pot, np.ma.array([1.0, 2.0, 3.0]), steps=3, lr=[0.1])
    ref = nc.scan(R.SGD, pot, np.array([1.0, 2.0, 3.0]), steps=3, lr=[0.1])
    assert np.array_equal(plain.q, ref.q)


def test_a_masked_grid_axis_is_refused():
    pot = P.Quadratic(np.eye(3))
    lr = np.ma.array([0.1, 0.2, 0.3], mask=[False, True, False])
    with pytest.raises(ValueError, match="grid axis lr is a masked array with 1 masked"):
        nc.scan(R.SGD, pot, Q0, steps=3, lr=lr)
    with pytest.raises(ValueError, match="grid axis m is a masked array"):
        nc.scan_integrate(M.Damped, pot, np.ones(6), t_end=1.0, method="conformal-verlet",
                          m=np.ma.array([1.0, 2.0], mask=[True, False]), mu=1.0, h=0.1)


def test_scan_integrate_names_only_the_unknown_keywords():
    pot = P.Quadratic(np.eye(3))
    with pytest.raises(TypeError) as info:
        nc.scan_integrate(M.Damped, pot, np.ones(6), t_end=1.0, method="conformal-verlet",
                          m=[1.0, 2.0], mu=1.0, lr=0.1, h=0.1)
    msg = str(info.value)
    assert "['lr']" in msg and "['m', 'mu', 'k']" in msg and "['h', 'rtol', 'atol']" in msg


# -- class level: the compiled entry points check what they trust -------------------------------

def _train_args(pot, batch_size=0, bidx=None, steps=4):
    d = pot.dim
    rule = R.SGD(lr=0.1)
    inputs = rule.kernel_inputs(pot, rule.init_state(pot))
    bptr = np.array([0, d], dtype=np.intp)
    bidx = np.arange(d, dtype=np.intp) if bidx is None else np.asarray(bidx, dtype=np.intp)
    n_rec = steps + 1
    rec = _bridge.Recording(1, bptr, bidx, np.empty((n_rec, d)), np.empty(n_rec),
                            np.empty(n_rec), np.empty((n_rec, 1)))
    batch = _bridge.Batch(batch_size, np.random.PCG64(0) if batch_size else None)
    return inputs, pot._kernel, np.ones(d), steps, rec, batch


@given(extra=st.integers(1, 10**6))
def test_train_kernel_refuses_a_batch_larger_than_the_data(extra):
    X, y = nc.datasets.gaussian_mixture(8, 3, classes=2, seed=0)
    pot = P.BatchNormMLP(X, y, widths=(4,))
    with pytest.raises(ValueError, match="batch size"):
        _bridge.run_train(*_train_args(pot, batch_size=pot.n_data + extra))


@given(bad=st.one_of(st.integers(-10**6, -1), st.integers(3, 10**6)))
def test_train_kernel_refuses_block_indices_outside_q(bad):
    pot = P.Quadratic(np.eye(3))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        _bridge.run_train(*_train_args(pot, bidx=[0, 1, bad]))


def test_train_kernel_refuses_short_recordings():
    pot = P.Quadratic(np.eye(3))
    args = list(_train_args(pot, steps=4))
    args[3] = 10                       # 11 rows to write, 5 allocated
    with pytest.raises(ValueError, match="Recording rows"):
        _bridge.run_train(*args)


def _scan_args(pot, batch_size=0, bidx=None, P_=2, out_shape_bad=False):
    d = pot.dim
    rule = R.SGD(lr=0.1)
    first = rule.kernel_inputs(pot, rule.init_state(pot))
    inputs = _bridge.RuleInputs(first.kind, np.tile(first.hp, (P_, 1)),
                                np.zeros((P_, first.vec.size)), np.zeros((P_, first.sca.size)),
                                first.pptr, first.pidx)
    bptr = np.array([0, d], dtype=np.intp)
    bidx = np.arange(d, dtype=np.intp) if bidx is None else np.asarray(bidx, dtype=np.intp)
    plan = _bridge.ScanPlan(steps=10, K=4, late_start=9, record_every=0, R=0, n_threads=1)
    out = _bridge.ScanOutputs.empty(P_, d, 1, 0, 0)
    if out_shape_bad:
        out.norm2 = np.empty((P_, 3))
    batch = _bridge.Batch(batch_size)
    if batch_size:
        batch.generators = [np.random.default_rng(i) for i in range(P_)]
    return inputs, pot._kernel, np.ones(d), plan, bptr, bidx, batch, out


def test_scan_kernel_checks_what_it_trusts():
    X, y = nc.datasets.gaussian_mixture(8, 3, classes=2, seed=0)
    mlp = P.BatchNormMLP(X, y, widths=(4,))
    with pytest.raises(ValueError, match="batch size"):
        _bridge.scan_kernel(*_scan_args(mlp, batch_size=mlp.n_data + 1))
    quad = P.Quadratic(np.eye(3))
    for bad in (-1, 3, 2**40):
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
            _bridge.scan_kernel(*_scan_args(quad, bidx=[0, 1, bad]))
    with pytest.raises(ValueError, match="ScanOutputs.norm2"):
        _bridge.scan_kernel(*_scan_args(quad, out_shape_bad=True))
    kern = _bridge.scan_kernel(*_scan_args(quad))      # the valid call runs
    kern.run()


def _lane_args(rule_cls=R.SGD, bptr=None, bidx=None, pptr=None, pidx=None, d=3, P_=8):
    """A valid full-batch lane-kernel call on Rayleigh(diag(1..d)), any CSR replaced."""
    pot = P.RayleighQuotient(np.diag(np.arange(1.0, d + 1)))
    rule = rule_cls(lr=0.1)
    first = rule.kernel_inputs(pot, rule.init_state(pot))
    inputs = _bridge.RuleInputs(
        first.kind, np.tile(first.hp, (P_, 1)), np.zeros((P_, first.vec.size)),
        np.zeros((P_, first.sca.size)),
        first.pptr if pptr is None else np.asarray(pptr, dtype=np.intp),
        first.pidx if pidx is None else np.asarray(pidx, dtype=np.intp))
    plan = _bridge.ScanPlan(steps=10, K=4, late_start=9, record_every=0, R=0, n_threads=1)
    out = _bridge.ScanOutputs.empty(P_, d, 1, 0, 0)
    bptr = np.array([0, d], dtype=np.intp) if bptr is None else np.asarray(bptr, np.intp)
    bidx = np.arange(d, dtype=np.intp) if bidx is None else np.asarray(bidx, dtype=np.intp)
    return [pot._lane_form(), inputs, np.ones(d), plan, bptr, bidx, out, None, None]


def test_lane_kernel_checks_its_index_arrays():
    """The lane kernel reads q through three CSR index sets (the recorded blocks,
    ScalarRMSProp's partition, the tracked scale blocks): each is checked, pointers
    rising from 0 to len(idx) and indices in [0, d), before any is read (a direct
    caller gets a ValueError naming the set, not a read past q)."""
    kern = _bridge.lane_kernel(*_lane_args())                  # the valid calls run
    kern.run()
    _bridge.lane_kernel(*_lane_args(R.ScalarRMSProp)).run()
    for bad in (-1, 3, 2**40):
        with pytest.raises(ValueError, match=r"recorded blocks .*indices must lie in \[0, 3\)"):
            _bridge.lane_kernel(*_lane_args(bidx=[0, 1, bad]))
        with pytest.raises(ValueError, match=r"partition .*indices must lie in \[0, 3\)"):
            _bridge.lane_kernel(*_lane_args(R.ScalarRMSProp, pidx=[0, 1, bad]))
        args = _lane_args()
        args[7] = (np.array([0, 3], np.intp), np.array([0, bad, 2], np.intp))
        with pytest.raises(ValueError, match=r"charge_blocks.*indices must lie in \[0, 3\)"):
            _bridge.lane_kernel(*args)
    for ptr in ([0, 2], [1, 3], [0, 2, 1, 3], [3]):
        with pytest.raises(ValueError, match=r"recorded blocks .*must rise from 0 to "
                                             r"len\(idx\) = 3"):
            _bridge.lane_kernel(*_lane_args(bptr=ptr))
        args = _lane_args()
        args[7] = (np.array(ptr, np.intp), np.arange(3, dtype=np.intp))
        with pytest.raises(ValueError, match=r"charge_blocks.*must rise from 0"):
            _bridge.lane_kernel(*args)
    with pytest.raises(ValueError, match=r"recorded blocks .*must be 1-D, got 1-D and 2-D"):
        _bridge.lane_kernel(*_lane_args(bidx=[[0, 1, 2]]))
    for ptr in ([0, 2], [1, 3]):                     # one part (its width: 2 G's)
        with pytest.raises(ValueError, match="partition .*must rise from 0"):
            _bridge.lane_kernel(*_lane_args(R.ScalarRMSProp, pptr=ptr))
