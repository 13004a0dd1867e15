"""noether_core.scan: grids of runs in one compiled call (issue 6, docs/scan.md).

The oracle of every grid point is a separate ``train`` call (SPEC §1: one run of the
compiled loop); equality is *bitwise* (np.array_equal), because a scan point executes
exactly the same floating-point operations: the same loop (run_loop), resumed chunk by
chunk as ``train(..., state=...)`` resumes (SPEC §1, "continues bit for bit").
"""
import copy
import importlib
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import noether_core as nc
from noether_core.errors import DivergenceWarning

parallel_mod = importlib.import_module("noether_core._parallel")

STEPS_LONG = 2500       # > 2 chunks of run_loop calls (K ≤ 1024): crosses chunk boundaries


def _rayleigh(d=5, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    return nc.potentials.RayleighQuotient(M + M.T), rng.normal(size=d)


def _bn(N=24, D=4, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D))
    y = np.tanh(X @ rng.normal(size=D)) + 0.1 * rng.normal(size=N)
    return nc.potentials.BatchNormUnit(X, y), rng.normal(size=D)


def _bits_equal(x, y):
    """Equal bit for bit: float64 compared as int64, so the sign of a zero counts (and NaN
    equals NaN only with the same bits), which == and np.array_equal do not see."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return x.shape == y.shape and np.array_equal(x.view(np.int64), y.view(np.int64))


def _assert_same_as_train(res, index, pot, q0, steps, record_every=None, batch_size=None,
                          seed=None):
    """Grid point ``index`` of ``res`` equals a separate train call, bit for bit.

    ``seed`` may be a Generator: each train call below gets a fresh copy of it."""
    rule = res.rule_at(*index)
    seed0 = seed

    def fresh():
        return copy.deepcopy(seed0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        tr = nc.train(rule, pot, q0, steps, record_every=record_every or steps + 1,
                      batch_size=batch_size, seed=fresh())
    assert _bits_equal(res.q[index], tr.q_final), index
    assert bool(res.diverged[index]) == tr.diverged
    if tr.diverged:
        assert res.stop_step[index] == tr.stop_step
        assert np.isnan(res.loss[index])
    else:
        assert res.stop_step[index] == -1
        # the final loss is train's terminal row (full data); |q_B|² likewise
        tr_end = nc.train(rule, pot, q0, steps, record_every=max(steps, 1),
                          batch_size=batch_size, seed=fresh())
        assert _bits_equal(res.loss[index], tr_end.loss[-1])
        for b, name in enumerate(res.blocks):
            assert _bits_equal(res.norm2[index + (b,)], tr_end.block_norm2[name][-1])
    if record_every:
        n = len(tr.loss)
        s = res.series
        assert s["n_rows"][index] == n
        assert np.array_equal(s["steps"][:n], tr.steps)
        assert _bits_equal(s["q"][index][:n], tr.q)
        assert _bits_equal(s["loss"][index][:n], tr.loss)
        assert _bits_equal(s["grad_norm2"][index][:n], tr.grad_norm2)
        for b, name in enumerate(res.blocks):
            assert _bits_equal(s["norm2"][index][:n, b], tr.block_norm2[name])
        assert np.all(np.isnan(s["loss"][index][n:]))
        # minimum loss over every step (record_every=1 sees them all) and the terminal row
        every = nc.train(rule, pot, q0, steps, record_every=1, batch_size=batch_size,
                         seed=fresh()) if not tr.diverged else None
        if every is not None:
            assert _bits_equal(res.loss_min[index], every.loss.min())
    return tr


# ---------------------------------------------------------------------------------------
# each grid point is a separate train call (bitwise)

def test_points_equal_train_signed_zeros():
    """The oracle with signed zeros: q0 with -0 entries and a zero row of A make the
    potentials' sums of -0 terms (docs/potentials.md §2), and the scan's q, losses and
    series must carry train's signs (both kernels)."""
    A = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 3.0]])
    for pot, q0 in ((nc.potentials.Quadratic(A, np.zeros(3)), np.array([-0.0, -0.0, -0.0])),
                    (nc.potentials.Quadratic(A, np.zeros(3)), np.array([-0.0, -1.0, 0.5])),
                    (nc.potentials.RayleighQuotient(A), np.array([-0.0, -1.0, 0.5]))):
        for lanes in (False, True):
            res = nc.scan(nc.rules.SGD, pot, q0, steps=6, record_every=1, lr=[0.1, 0.3],
                          momentum=[0.0, 0.9], lanes=lanes, progress=False)
            for index in np.ndindex(res.shape):
                _assert_same_as_train(res, index, pot, q0, 6, record_every=1)
    # not vacuous: a sum from +0 would leave q at -0 here (tests/test_scan_lanes.py
    # test_lanes_signed_zeros has the arithmetic); the first-term sums give +0
    res = nc.scan(nc.rules.SGD, nc.potentials.Quadratic(A, np.zeros(3)),
                  np.array([-0.0, -0.0, -0.0]), steps=6, lr=[0.1], progress=False)
    assert not np.signbit(res.q).any()


def test_full_batch_points_equal_train():
    pot, q0 = _rayleigh()
    lrs, wds = np.logspace(-3, -1, 3), [0.0, 1e-3]
    res = nc.scan(nc.rules.SGD, pot, q0, steps=STEPS_LONG, record_every=7, lr=lrs,
                  momentum=0.9, weight_decay=wds, seeds=0, threads=2)
    assert res.shape == (3, 2) and res.q.shape == (3, 2, 5)
    assert list(res.axes) == ["lr", "weight_decay"]
    for i in range(3):
        for j in range(2):
            assert res.params(i, j) == {"lr": lrs[i], "momentum": 0.9,
                                        "weight_decay": wds[j]}
            _assert_same_as_train(res, (i, j), pot, q0, STEPS_LONG, record_every=7)


@pytest.mark.parametrize("rule_cls, grid", [
    (nc.rules.SGD, dict(lr=[0.01, 0.05], momentum=[0.0, 0.8], nesterov=False)),
    (nc.rules.SGD, dict(lr=[0.02], momentum=0.9, dampening=0.0, nesterov=True,
                        weight_decay=[0.0, 5e-3])),
    (nc.rules.Adam, dict(lr=[1e-3, 1e-2], betas=(0.8, 0.99), amsgrad=True)),
    (nc.rules.AdamW, dict(lr=[1e-3, 1e-2], weight_decay=[0.0, 0.1])),
    (nc.rules.RMSprop, dict(lr=[1e-3, 3e-3], centered=True, momentum=[0.0, 0.5])),
    (nc.rules.ScalarRMSProp, dict(lr=[0.01, 0.03], rho=[0.9, 0.99], weight_decay=1e-3)),
    (nc.rules.MirrorDescent, dict(lr=[0.01, 0.02], mirror="pnorm", p=[1.5, 3.0])),
])
def test_every_rule_kind_equals_train(rule_cls, grid):
    """Every rule kind's state (vec/sca layouts, SPEC §1) survives the chunked run."""
    pot, q0 = _bn()
    res = nc.scan(rule_cls, pot, q0, steps=1100, record_every=100, seeds=0, **grid)
    for index in np.ndindex(res.shape):
        _assert_same_as_train(res, index, pot, q0, 1100, record_every=100)


def test_minibatch_points_equal_train_with_documented_streams():
    """Point i under seed s draws from default_rng(SeedSequence(s).spawn(n_points)[i])."""
    pot, q0 = _bn(N=32)
    lrs, moms = [0.05, 0.2], [0.0, 0.5, 0.9]
    seeds = (3, 11)
    res = nc.scan(nc.rules.SGD, pot, q0, steps=1500, record_every=50, batch_size=8,
                  seeds=seeds, lr=lrs, momentum=moms, weight_decay=1e-3)
    assert res.shape == (2, 3, 2) and list(res.axes) == ["lr", "momentum", "seed"]
    n_points = len(lrs) * len(moms)
    for (i, j, k) in np.ndindex(res.shape):
        flat = i * len(moms) + j                       # C order over the grid axes
        stream = np.random.default_rng(np.random.SeedSequence(seeds[k]).spawn(n_points)[flat])
        _assert_same_as_train(res, (i, j, k), pot, q0, 1500, record_every=50,
                              batch_size=8, seed=stream)
        assert res.seed_at(i, j, k).spawn_key == (flat,)
    # different seeds give different minibatch trajectories (the seed axis is real)
    assert not np.array_equal(res.q[..., 0], res.q[..., 1])


def test_steps_zero_refused_and_single_point():
    """steps=0 would leave the late-time angle undefined (a NaN without a flag): refused,
    naming steps; one step on one point is the train() step."""
    pot, q0 = _rayleigh()
    with pytest.raises(ValueError, match="steps"):
        nc.scan(nc.rules.SGD, pot, q0, steps=0, lr=0.1, seeds=0)
    res = nc.scan(nc.rules.SGD, pot, q0, steps=1, record_every=1, lr=0.1, seeds=0)
    assert res.shape == () and res.series["n_rows"] == 2
    run = nc.train(nc.rules.SGD(lr=0.1), pot, q0, 1)
    assert np.array_equal(res.q, run.q_final) and res.loss == run.loss[-1]
    assert np.isfinite(res.angular_update).all()


# ---------------------------------------------------------------------------------------
# determinism: threads and chunking

def _assert_results_identical(a, b):
    for name in ("q", "loss", "loss_min", "norm2", "angular_update", "status", "stop_step"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    if a.series is not None:
        for k in a.series:
            assert np.array_equal(a.series[k], b.series[k], equal_nan=True), k


def _mixed_grid_kwargs():
    """A minibatch grid with one divergent learning rate (lr = 50 overflows)."""
    pot, q0 = _bn(N=32)
    return pot, q0, dict(steps=1200, record_every=100, batch_size=6, seeds=(0, 1, 2),
                         lr=[0.01, 0.1, 50.0], momentum=[0.0, 0.9], weight_decay=0.5)


def test_threads_one_and_two_identical():
    pot, q0, kw = _mixed_grid_kwargs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        r1 = nc.scan(nc.rules.SGD, pot, q0, threads=1, **kw)
        r2 = nc.scan(nc.rules.SGD, pot, q0, threads=2, **kw)
    assert r1.diverged.any() and not r1.diverged.all()      # lr = 50 diverges, others not
    _assert_results_identical(r1, r2)
    assert nc.openmp_enabled() in (True, False)


def test_process_pool_chunks_identical():
    pot, q0, kw = _mixed_grid_kwargs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        local = nc.scan(nc.rules.SGD, pot, q0, threads=2, **kw)
        # spawn: the workers start clean (forking a process that used OpenMP is unsafe)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
            # 5 chunks of 18 runs: boundaries fall inside the seed axis of a point
            remote = nc.scan(nc.rules.SGD, pot, q0, executor=ex, n_chunks=5, **kw)
    _assert_results_identical(local, remote)


def test_thread_pool_chunks_identical():
    """Chunks running concurrently in one process: each compiled call owns its scratch."""
    pot, q0, kw = _mixed_grid_kwargs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        local = nc.scan(nc.rules.SGD, pot, q0, **kw)
        with ThreadPoolExecutor(max_workers=3) as ex:
            remote = nc.scan(nc.rules.SGD, pot, q0, executor=ex, n_chunks=7, threads=2, **kw)
    _assert_results_identical(local, remote)


def test_dask_local_cluster_identical():
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is the optional extra 'scan'")
    pot, q0, kw = _mixed_grid_kwargs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        local = nc.scan(nc.rules.SGD, pot, q0, **kw)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as cluster:
            with distributed.Client(cluster, timeout="60s") as client:
                remote = nc.scan(nc.rules.SGD, pot, q0, executor=client.get_executor(),
                                 n_chunks=4, **kw)
    _assert_results_identical(local, remote)


# ---------------------------------------------------------------------------------------
# divergence

def test_divergent_points_flagged_neighbours_intact():
    # f = ½ qᵀAq with eigenvalues 1 and 10: gradient descent diverges iff lr > 2/10
    pot = nc.potentials.Quadratic(np.diag([1.0, 10.0]))
    q0 = np.array([1.0, 1.0])
    lrs = [0.05, 0.15, 5.0, 0.19]
    with pytest.warns(DivergenceWarning, match="1 of 4 scan points"):
        res = nc.scan(nc.rules.SGD, pot, q0, steps=800, record_every=10, lr=lrs,
                      seeds=0, threads=2)
    assert res.diverged.tolist() == [False, False, True, False]
    assert res.stop_step[2] > 0 and np.all(res.stop_step[[0, 1, 3]] == -1)
    assert res.stop_reason(2) is not None and res.stop_reason(0) is None
    for i in range(4):
        _assert_same_as_train(res, (i,), pot, q0, 800, record_every=10)


# ---------------------------------------------------------------------------------------
# the summaries

def test_angular_update_is_rms_chord_of_last_tenth():
    """Definition check against an independent computation from train's recorded rows:
    sqrt(mean |q̂_{n+1} − q̂_n|²) over the transitions into the last ceil(steps/10) states
    (docs/scan.md; the quantity theory.steady_angular_update predicts)."""
    pot, q0 = _bn(N=32)
    steps = 1234                                     # last ceil(1234/10) = 124 steps
    res = nc.scan(nc.rules.SGD, pot, q0, steps=steps, batch_size=8, seeds=(5,),
                  lr=[0.1, 0.3], momentum=0.9, weight_decay=[1e-3, 1e-2])
    for (i, j, k) in np.ndindex(res.shape):
        tr = nc.train(res.rule_at(i, j, k), pot, q0, steps, record_every=1, batch_size=8,
                      seed=res.seed_at(i, j, k))
        w = tr.q[-125:] / np.linalg.norm(tr.q[-125:], axis=1, keepdims=True)
        expected = np.sqrt(np.mean(np.sum((w[1:] - w[:-1]) ** 2, axis=1)))
        # the same operations in another summation order: chords ~1e-2 computed from unit
        # vectors carry absolute error ~1e-16, i.e. ~1e-14 relative; 1e-12 leaves room
        np.testing.assert_allclose(res.angular_update[i, j, k, 0], expected, rtol=1e-12)


def test_angular_update_matches_rotational_equilibrium():
    """SPEC §4: the steady per-step angular update of SGD+momentum with weight decay on a
    scale-invariant loss is sqrt(2ηk/(1+β)) (minibatch noise keeps the gradient alive).
    The summary is the RMS chord, the quantity the prediction is for (measured within
    0.3–0.6 % here); tolerance 2 %: the late window's finite, correlated average (2000
    steps) and the O(ηk) ≤ 1e-3 corrections of the steady state (docs/theory.md §3).
    The mean *angle* this summary used to be sits 5–7 % below: the test tells them apart."""
    pot, q0 = _bn(N=64, D=6)
    lrs, wds = np.array([0.05, 0.1]), np.array([5e-3, 1e-2])
    res = nc.scan(nc.rules.SGD, pot, q0, steps=20000, batch_size=8, seeds=0,
                  lr=lrs, momentum=0.9, weight_decay=wds)
    pred = np.sqrt(2 * lrs[:, None] * wds[None, :] / 1.9)
    np.testing.assert_allclose(res.angular_update[..., 0], pred, rtol=0.02)


def test_memory_budget_error_states_sizes():
    pot, q0 = _rayleigh()
    with pytest.raises(MemoryError, match=r"needs .* MiB, above the budget"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10**6, record_every=1, lr=[0.1, 0.2],
                max_record_bytes=2**20)


# ---------------------------------------------------------------------------------------
# bad grids

@pytest.mark.parametrize("grid, exc, match", [
    (dict(lr=[0.1], mommentum=0.9), TypeError, r"valid grid keywords: \['lr', 'momentum'"),
    (dict(lr=[]), ValueError, "grid axis lr is empty"),
    (dict(lr=[0.1, np.nan]), ValueError, "grid axis lr must be finite, found nan"),
    (dict(lr=[0.1, np.inf]), ValueError, "must be finite, found inf"),
    (dict(lr=np.ones((2, 2))), ValueError, "1-D array, got shape"),
    (dict(lr=[0.1, 0.1]), ValueError, "repeated values"),
    (dict(lr=["a", "b"]), TypeError, "must hold real numbers"),
    (dict(lr=[0.1, 0.0]), ValueError, r"rejects grid point \{'lr': 0.0\}: lr must lie"),
    (dict(lr=0.1, momentum=[0.5, 1.0]), ValueError, "momentum must lie in"),
    (dict(lr=float("nan")), ValueError, "lr must be finite"),
])
def test_bad_grids(grid, exc, match):
    pot, q0 = _rayleigh()
    with pytest.raises(exc, match=match):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, **grid)


# the column form of SGD's grid (Rule._grid_hp): scan's validation without a rule object
# per point must accept exactly the grids whose every point constructs, with _hp's rows

_SGD_VALUES = {
    "lr": st.sampled_from([1e-3, 0.1, 2.0, 0.0, -0.5, 1, 3]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9, 1.0, -0.1, 0]),
    "dampening": st.sampled_from([0.0, 0.3, 1.0, 1.5, -1.0]),
    "nesterov": st.sampled_from([False, True, 0, 1, 2]),
    "weight_decay": st.sampled_from([0.0, 1e-4, 0.5, -1e-3, 0]),
}


@st.composite
def _sgd_grids(draw):
    names = draw(st.lists(st.sampled_from(sorted(_SGD_VALUES)), unique=True, max_size=5))
    axes, fixed = {}, {}
    for k in names:
        vals = draw(st.lists(_SGD_VALUES[k], min_size=1, max_size=3,
                             unique_by=lambda v: (type(v) is bool, float(v))))
        axes[k] = np.array([float(v) for v in vals]) if k != "nesterov" \
            else np.array([bool(v) for v in vals]) if all(v in (0, 1) for v in vals) \
            else np.array([float(v) for v in vals])
        if len(np.unique(axes[k])) != len(axes[k]):
            axes[k] = np.unique(axes[k])
    for k in sorted(set(_SGD_VALUES) - set(names)):
        if draw(st.booleans()):
            fixed[k] = draw(_SGD_VALUES[k])
    return fixed, axes


def _check_column_form(cls, fixed, axes):
    """``cls._grid_hp(fixed, axes)`` against the per-point constructor: a grid is accepted
    exactly when every point constructs, and then with bitwise the rows ``_hp`` gives; a
    refused grid returns None (scan then builds each point's rule, and the first bad one
    raises its own error).  Returns the rows (or None)."""
    import itertools
    names = list(axes)
    rules, ok = [], True
    for combo in itertools.product(*[axes[k].tolist() for k in names]):
        try:
            rules.append(cls(**{**fixed, **dict(zip(names, combo, strict=True))}))
        except (TypeError, ValueError):
            ok = False
            break
    hp = cls._grid_hp(fixed, axes)
    assert (hp is not None) == ok
    if ok:
        want = np.array([r._hp(None) for r in rules])
        assert hp.shape == want.shape and hp.tobytes() == want.tobytes()
    return hp


@settings(max_examples=300)
@given(_sgd_grids())
def test_sgd_column_form_equals_per_point_rules(grid):
    """SGD._grid_hp (docs/scan.md §Performance) against the per-point constructor: the
    same grids accepted, and bitwise the rows SGD._hp gives; a rejected grid returns None,
    so that scan builds each point's rule and the first bad one raises its own error."""
    _check_column_form(nc.rules.SGD, *grid)


_ADAPTIVE_VALUES = {
    "lr": st.sampled_from([1e-3, 0.1, 0.0, -0.5, 1]),
    "eps": st.sampled_from([1e-8, 0.0, -1e-8, 1]),
    "weight_decay": st.sampled_from([0.0, 1e-2, -1e-3, 0]),
    "alpha": st.sampled_from([0.99, 0.0, 1.0, -0.1]),           # RMSprop
    "momentum": st.sampled_from([0.0, 0.9, 1.0, -0.1]),         # RMSprop
    "centered": st.sampled_from([False, True, 0, 1, 2]),         # RMSprop
    "amsgrad": st.sampled_from([False, True, 0, 1, 2]),          # Adam, AdamW
    "betas": st.sampled_from([(0.9, 0.999), (0.0, 0.5), (1.0, 0.9), (0.9,), [0.5, 0.5]]),
}


@st.composite
def _adaptive_grids(draw, cls):
    params = [k for k in cls.param_names() if k in _ADAPTIVE_VALUES]
    names = draw(st.lists(st.sampled_from([k for k in params if k != "betas"]), unique=True,
                          max_size=4))
    axes, fixed = {}, {}
    for k in names:
        vals = draw(st.lists(_ADAPTIVE_VALUES[k], min_size=1, max_size=3,
                             unique_by=lambda v: (type(v) is bool, float(v))))
        if k in ("centered", "amsgrad") and all(v in (0, 1) for v in vals):
            axes[k] = np.unique(np.array([bool(v) for v in vals]))
        else:
            axes[k] = np.unique(np.array([float(v) for v in vals]))
    for k in sorted(set(params) - set(names)):
        if draw(st.booleans()):
            fixed[k] = draw(_ADAPTIVE_VALUES[k])
    return fixed, axes


@settings(max_examples=150)
@given(data=st.data(), cls=st.sampled_from([nc.rules.Adam, nc.rules.AdamW, nc.rules.RMSprop]))
def test_adaptive_column_forms_equal_per_point_rules(data, cls):
    """Adam/AdamW/RMSprop._grid_hp, as SGD's above: the grids whose every point constructs
    are accepted, with bitwise the rows ``_hp`` gives (AdamW's default weight decay, its
    decoupled flag); any refused value gives None (scan's per-point path then names it)."""
    _check_column_form(cls, *data.draw(_adaptive_grids(cls)))


_SRMS_VALUES = {
    "lr": st.sampled_from([1e-3, 0.1, 0.0, -0.5, 1]),
    "rho": st.sampled_from([0.99, 0.0, 1.0, -0.1]),
    "eps": st.sampled_from([1e-8, 0.0, -1e-8, 1]),
    "G0": st.sampled_from([None, 0.0, 0.5, -1.0, 2]),
    "weight_decay": st.sampled_from([0.0, 1e-2, -1e-3, 0]),
    "per_block": st.sampled_from([True, False, 1]),
    "project": st.sampled_from([False, 0]),
}


@st.composite
def _float_grids(draw, values, axis_names, max_axes):
    """(fixed, axes): up to ``max_axes`` of ``axis_names`` as float axes of 1–3 distinct
    values drawn from ``values`` (None left out), each other parameter of ``values``
    fixed or left to its default."""
    names = draw(st.lists(st.sampled_from(axis_names), unique=True, max_size=max_axes))
    axes, fixed = {}, {}
    for k in names:
        vals = draw(st.lists(values[k].filter(lambda v: v is not None), min_size=1,
                             max_size=3, unique_by=float))
        axes[k] = np.unique(np.array([float(v) for v in vals]))
    for k in sorted(set(values) - set(names)):
        if draw(st.booleans()):
            fixed[k] = draw(values[k])
    return fixed, axes


@settings(max_examples=200)
@given(_float_grids(_SRMS_VALUES, ["lr", "rho", "eps", "G0", "weight_decay"], 4))
def test_scalar_rmsprop_column_form_equals_per_point_rules(grid):
    """ScalarRMSProp._grid_hp, as SGD's above (project=False, whose rows do not depend on
    the potential): the grids whose every point constructs are accepted — G0 None as the
    kernel's NaN, G0 = 0 together with eps = 0 refused as the constructor refuses it —
    with bitwise the rows ``_hp`` gives."""
    _check_column_form(nc.rules.ScalarRMSProp, *grid)


def _bn_layer(width=3, seed=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20, 3))
    pot = nc.potentials.BatchNormLayer(X, np.tanh(X[:, 0]), width=width)
    return pot, rng.normal(size=pot.dim)


def test_scalar_rmsprop_column_form_declines_what_it_cannot_see():
    """per_block and project decide the partition and the law: a grid over either takes
    the per-point path; project=True needs the potential (its rows count the projected
    blocks), and with it gives ``_hp(potential)``'s rows bitwise."""
    cls = nc.rules.ScalarRMSProp
    lr = {"lr": np.array([0.01, 0.02])}
    assert cls._grid_hp({}, {**lr, "per_block": np.array([True, False])}) is None
    assert cls._grid_hp({}, {**lr, "project": np.array([True, False])}) is None
    assert cls._grid_hp({"project": True}, lr) is None
    assert cls._grid_hp({"project": True, "per_block": False}, lr, _bn_layer()[0]) is None
    assert cls._grid_hp({"per_block": "yes"}, lr) is None
    pot, _ = _bn_layer(width=3)
    hp = cls._grid_hp({"project": True, "rho": 0.9}, lr, pot)
    want = np.array([cls(lr=v, rho=0.9, project=True)._hp(pot) for v in (0.01, 0.02)])
    assert hp.tobytes() == want.tobytes() and np.all(hp[:, 5] == 3.0)


@pytest.mark.parametrize("fixed", [dict(), dict(per_block=False, G0=0.5),
                                   dict(project=True, eps=0.0)])
def test_scalar_rmsprop_column_form_scans_as_train(fixed):
    """A ScalarRMSProp grid on the column form (one G per scale block and one for the
    rest, one G for all of q, the projected rule) runs every point as ``train`` does, bit
    for bit (the template's partition and G's are the grid's own, not those of another
    ``per_block`` cached for the class and d), with the per-point laws' exactness."""
    pot, q0 = _bn_layer()
    for sym in pot.symmetry_blocks("scale"):
        idx = pot.blocks[sym.blocks[0]]
        q0[idx] /= np.linalg.norm(q0[idx])
    grid = dict(lr=[0.01, 0.03], weight_decay=[0.0, 1e-3])
    assert nc.rules.ScalarRMSProp._grid_hp(
        fixed, {k: np.array(v) for k, v in grid.items()}, pot) is not None
    res = nc.scan(nc.rules.ScalarRMSProp, pot, q0, steps=60, record_every=20, seeds=0,
                  charges=True, **grid, **fixed)
    for i, lr in enumerate(grid["lr"]):
        for j, wd in enumerate(grid["weight_decay"]):
            rule = nc.rules.ScalarRMSProp(lr=lr, weight_decay=wd, **fixed)
            _assert_same_as_train(res, (i, j), pot, q0, 60, record_every=20)
            run = nc.train(rule, pot, q0, 60)
            for lab, law in run.charges.items():
                assert _bits_equal(res.charge_worst[lab][i, j], law.worst)
                assert bool(res.charge_exact[lab][i, j]) == (law.law == "exact")


def test_scalar_rmsprop_templates_per_potential():
    """ScalarRMSProp's column-form template is cached per potential object and per_block
    (rules._SRMS_TEMPLATES, held weakly): two potentials of the same d with different
    scale blocks (one block of all of q; three blocks and a rest) each scan as ``train``
    runs, in either order, and a potential that is gone leaves no entry behind."""
    import gc
    import weakref

    from noether_core import rules as rules_mod
    layer, q0 = _bn_layer()
    rng = np.random.default_rng(2)
    M = rng.normal(size=(layer.dim, layer.dim))
    rq = nc.potentials.RayleighQuotient(M + M.T)
    for pot in (layer, rq, layer):
        res = nc.scan(nc.rules.ScalarRMSProp, pot, q0, steps=30, seeds=0, lr=[0.01, 0.02],
                      charges=False)
        for i in range(2):
            _assert_same_as_train(res, (i,), pot, q0, 30)
    assert rules_mod._SRMS_TEMPLATES[layer][True].sca.shape == (1 + 4,)     # 3 blocks, rest
    assert rules_mod._SRMS_TEMPLATES[rq][True].sca.shape == (1 + 1,)
    gone, n = weakref.ref(rq), len(rules_mod._SRMS_TEMPLATES)
    del rq, pot, res
    gc.collect()
    assert gone() is None                       # the cache did not keep it alive
    assert len(rules_mod._SRMS_TEMPLATES) == n - 1


_MIRROR_VALUES = {
    "lr": st.sampled_from([1e-3, 0.1, 0.0, -0.5, 1]),
    "weight_decay": st.sampled_from([0.0, 1e-2, -1e-3, 0]),
    "p": st.sampled_from([None, 3.0, 1.5, 1.0, 0.5, 2]),
    "mirror": st.sampled_from(["euclidean", "pnorm", "entropy", "diagonal", "cosh", 3]),
    "D": st.sampled_from([None, (1.0, 2.0)]),
}


@settings(max_examples=200)
@given(_float_grids(_MIRROR_VALUES, ["lr", "weight_decay", "p"], 3))
def test_mirror_column_form_equals_per_point_rules(grid):
    """MirrorDescent._grid_hp, as SGD's above, for one non-diagonal map per grid: the
    grids whose every point constructs are accepted, with bitwise ``_hp``'s rows (p's row
    1.0 for the maps without p); any refused value (a bad p, p without pnorm, D, an unknown
    map) gives None.  The diagonal map always takes the per-point path (D is a kernel
    input per point), as does a grid over the map."""
    fixed, axes = grid
    if fixed.get("mirror") == "diagonal":
        assert nc.rules.MirrorDescent._grid_hp(fixed, axes) is None
        return
    _check_column_form(nc.rules.MirrorDescent, fixed, axes)
    assert nc.rules.MirrorDescent._grid_hp(
        fixed, {**axes, "mirror": np.array(["euclidean", "entropy"])}) is None


def test_mirror_column_form_scans_as_train_and_checks_the_start():
    """A MirrorDescent grid on the column form runs as ``train`` does point by point
    (entropy and pnorm maps, lr × weight_decay), and still refuses a start the map cannot
    take (entropy needs q0 > 0: ``check_start`` of the grid's first point, docs/scan.md
    §Performance), with the constructor's message."""
    pot, q0 = _rayleigh()
    q0 = np.abs(q0) + 0.1
    for extra in ({"mirror": "entropy"}, {"mirror": "pnorm", "p": 3.0}):
        assert nc.rules.MirrorDescent._grid_hp(extra, {"lr": np.array([0.01])}) is not None
        res = nc.scan(nc.rules.MirrorDescent, pot, q0, steps=40, lr=[0.01, 0.03],
                      weight_decay=[0.0, 1e-3], seeds=0, charges=True, **extra)
        for i, lr in enumerate((0.01, 0.03)):
            for j, wd in enumerate((0.0, 1e-3)):
                run = nc.train(nc.rules.MirrorDescent(lr=lr, weight_decay=wd, **extra), pot,
                               q0, 40)
                np.testing.assert_array_equal(res.q[i, j], run.q_final)
    with pytest.raises(ValueError, match="q0 must be positive"):
        nc.scan(nc.rules.MirrorDescent, pot, -q0, steps=5, lr=[0.01, 0.02],
                mirror="entropy")


def test_column_form_only_for_sgd_itself():
    """Subclasses of SGD and rules without a column form take the per-point path: a
    subclass's own validation (in __post_init__ or __init__) raises its error naming the
    point, and a default changed by a plain class attribute is the one train uses."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Picky(nc.rules.SGD):
        def __post_init__(self):
            super().__post_init__()
            if self.lr > 0.5:
                raise ValueError("Picky: lr must be at most 0.5")

    class PickyInit(nc.rules.SGD):
        def __init__(self, **kw):
            if kw.get("lr", 0.0) > 0.5:
                raise ValueError("PickyInit: lr must be at most 0.5")
            super().__init__(**kw)

    class SGD9(nc.rules.SGD):
        momentum = 0.9

    axes = {"lr": np.array([0.1, 0.9])}
    @dataclass(frozen=True)
    class PickyAdam(nc.rules.Adam):
        def __post_init__(self):
            super().__post_init__()
            if self.lr > 0.5:
                raise ValueError("PickyAdam: lr must be at most 0.5")

    @dataclass(frozen=True)
    class PickySRMS(nc.rules.ScalarRMSProp):
        pass

    for cls in (Picky, PickyInit, SGD9, PickyAdam, PickySRMS):
        assert cls._grid_hp({}, axes) is None
    assert nc.rules.Adam._grid_hp({}, {"betas": np.array([0.1, 0.2])}) is None
    pot, q0 = _rayleigh()
    for cls in (Picky, PickyInit):
        with pytest.raises(ValueError, match=r"rejects grid point \{'lr': 0.9\}: Picky"):
            nc.scan(cls, pot, q0, steps=5, lr=[0.1, 0.9])
    res = nc.scan(SGD9, pot, q0, steps=50, lr=[0.1, 0.2], seeds=0, charges=False)
    for i, lr in enumerate((0.1, 0.2)):
        run = nc.train(SGD9(lr=lr), pot, q0, 50, charges=False)
        np.testing.assert_array_equal(res.q[i], run.q_final)


def test_bad_arguments():
    pot, q0 = _rayleigh()
    with pytest.raises(ValueError, match=r"q0 must have shape \(5\)"):
        nc.scan(nc.rules.SGD, pot, q0[:3], steps=10, lr=[0.1])
    with pytest.raises(TypeError, match="rule class"):
        nc.scan(nc.rules.SGD(lr=0.1), pot, q0, steps=10)
    with pytest.raises(ValueError, match="seeds must be non-negative"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, seeds=[1, -2])
    with pytest.raises(ValueError, match="seeds has repeated"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, seeds=[1, 1])
    with pytest.raises(ValueError, match="no data rows"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, batch_size=4)
    with pytest.raises(ValueError, match="threads must lie in"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, threads=0)
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, lr=[0.1], executor=object())
    with pytest.raises(ValueError, match="steps must lie in"):
        nc.scan(nc.rules.SGD, pot, q0, steps=-1)


# ---------------------------------------------------------------------------------------
# selection and labels

def test_sel_by_value():
    pot, q0 = _rayleigh()
    lrs = np.logspace(-3, -1, 4)
    res = nc.scan(nc.rules.SGD, pot, q0, steps=50, lr=lrs, weight_decay=[0.0, 1e-3],
                  seeds=(0, 1))
    sub = res.sel(lr=float(np.logspace(-3, -1, 4)[2]), seed=1)
    assert list(sub.axes) == ["weight_decay"] and sub.q.shape == (2, 5)
    assert np.array_equal(sub.loss, res.loss[2, :, 1])
    assert sub.rule_at(1) == nc.rules.SGD(lr=lrs[2], weight_decay=1e-3)
    with pytest.raises(KeyError, match="lr=0.5 is not on the grid"):
        res.sel(lr=0.5)
    with pytest.raises(KeyError, match="no axis"):
        res.sel(momentum=0.0)


def test_to_xarray_labels():
    xr = pytest.importorskip("xarray", reason="xarray is the optional extra 'scan'")
    pot, q0 = _rayleigh()
    lrs, wds = [0.01, 0.02, 0.05], [0.0, 1e-3]
    res = nc.scan(nc.rules.SGD, pot, q0, steps=40, record_every=20, lr=lrs,
                  weight_decay=wds, momentum=0.9, seeds=(0, 1))
    ds = res.to_xarray()
    assert isinstance(ds, xr.Dataset)
    assert ds["loss"].dims == ("lr", "weight_decay", "seed")
    assert ds["q"].dims == ("lr", "weight_decay", "seed", "coord")
    assert ds["norm2"].dims[-1] == "block" and list(ds["block"].values) == ["q"]
    assert ds["series_loss"].dims == ("lr", "weight_decay", "seed", "step")
    assert list(ds["step"].values) == [0, 20, 40]
    np.testing.assert_array_equal(ds["lr"].values, lrs)
    assert float(ds["loss"].sel(lr=0.02, weight_decay=1e-3, seed=1)) == \
        float(res.sel(lr=0.02, weight_decay=1e-3, seed=1).loss)
    assert ds.attrs["rule"] == "SGD" and ds.attrs["fixed_momentum"] == 0.9


def test_to_xarray_without_xarray_says_how_to_install(monkeypatch):
    pot, q0 = _rayleigh()
    res = nc.scan(nc.rules.SGD, pot, q0, steps=5, lr=[0.1])
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match="pip install xarray"):
        res.to_xarray()


def test_progress_off_without_a_terminal_and_results_unchanged():
    assert parallel_mod.want_progress(None) is False      # pytest captures stderr: no TTY
    pytest.importorskip("tqdm", reason="tqdm is the optional extra 'scan'")
    pot, q0 = _rayleigh()
    a = nc.scan(nc.rules.SGD, pot, q0, steps=300, lr=[0.1, 0.2], progress=True)
    b = nc.scan(nc.rules.SGD, pot, q0, steps=300, lr=[0.1, 0.2], progress=False)
    _assert_results_identical(a, b)


def test_q0_float32_noncontiguous_readonly_is_converted():
    pot, q0 = _rayleigh()
    q32 = np.repeat(q0.astype(np.float32), 2)[::2]          # strided float32 view
    q32.setflags(write=False)
    a = nc.scan(nc.rules.SGD, pot, q32, steps=100, lr=[0.01, 0.1])
    b = nc.scan(nc.rules.SGD, pot, q0.astype(np.float32).astype(np.float64), steps=100,
                lr=[0.01, 0.1])
    _assert_results_identical(a, b)


def test_interrupt_cancels_the_compiled_call(monkeypatch):
    """Ctrl-C while the kernel runs (simulated in the polling loop) stops every point at its
    next run_loop call and re-raises; it does not wait for the whole grid."""
    pot, q0 = _bn(N=64, D=16)

    def interrupt(self, done, total):
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel_mod.ProgressBar, "__call__", interrupt)
    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        # ~40 s of work on one thread if it were not cancelled
        nc.scan(nc.rules.SGD, pot, q0, steps=10**6, lr=np.linspace(0.01, 0.02, 40),
                threads=1)
    assert time.perf_counter() - t < 10.0


def test_tuples_are_axes_only_for_numeric_parameters():
    pot, q0 = _rayleigh()
    res = nc.scan(nc.rules.Adam, pot, q0, steps=20, lr=(1e-3, 1e-2), betas=(0.8, 0.9))
    assert list(res.axes) == ["lr", "seed"] and res.fixed["betas"] == (0.8, 0.9)
    assert res.rule_at(1, 0) == nc.rules.Adam(lr=1e-2, betas=(0.8, 0.9))


@pytest.mark.parametrize("make", [
    lambda X, rng: nc.potentials.BatchNormMLP(X, rng.integers(0, 3, len(X)), [5]),
    lambda X, rng: nc.potentials.TwoLayer(X, rng.normal(size=(len(X), 2)), 3),
    lambda X, rng: nc.potentials.SoftmaxCrossEntropy(X, rng.integers(0, 3, len(X))),
], ids=["BatchNormMLP", "TwoLayer", "SoftmaxCrossEntropy"])
def test_multi_block_potentials_equal_train(make):
    """Potentials with many blocks (per-block |q_B|² and angles) and bigger workspaces."""
    rng = np.random.default_rng(7)
    pot = make(rng.normal(size=(30, 4)), rng)
    q0 = 0.5 * rng.normal(size=pot.dim)
    res = nc.scan(nc.rules.SGD, pot, q0, steps=1100, record_every=100, batch_size=6,
                  seeds=(1,), lr=[0.01, 0.05], momentum=[0.0, 0.9], threads=2)
    assert res.norm2.shape[-1] == len(pot.blocks) > 1
    for index in np.ndindex(res.shape):
        _assert_same_as_train(res, index, pot, q0, 1100, record_every=100, batch_size=6,
                              seed=res.seed_at(*index))


# ---------------------------------------------------------------------------------------
# in-loop Noether charges per grid point (issue 6 summary "worst balance residual")

def test_scan_balance_residual_equals_train_per_point():
    """Each point's worst balance-law residual (and its step) equals the one a separate
    train() call tracks, bitwise, minibatches included; SGD's laws are exact (SPEC §1.1)."""
    X, lab = nc.datasets.gaussian_mixture(48, 5, 3, seed=1)
    pot = nc.potentials.BatchNormMLP(X, lab, (3,))
    q0 = pot.init(0)
    lrs, wds = [0.02, 0.2], [0.0, 1e-3]
    res = nc.scan(nc.rules.SGD, pot, q0, steps=1500, lr=lrs, weight_decay=wds,
                  momentum=0.9, batch_size=12, seeds=[0, 3], threads=2)
    assert res.balance_residual.shape == (2, 2, 2)
    assert np.all(res.balance_residual < 1e-12)
    for i, j, s in [(0, 1, 0), (1, 0, 1)]:
        run = nc.train(nc.rules.SGD(lr=lrs[i], weight_decay=wds[j], momentum=0.9), pot, q0,
                       1500, batch_size=12, seed=res.seed_at(i, j, s), record_every=1500)
        assert run.balance_residual() == res.balance_residual[i, j, s]
        for label, ch in run.charges.items():
            assert ch.worst == res.charge_worst[label][i, j, s]
            assert ch.worst_step == res.charge_worst_step[label][i, j, s]
    sub = res.sel(lr=0.2)
    np.testing.assert_array_equal(sub.balance_residual, res.balance_residual[1])


def test_scan_charges_flag_kinetic_breaking_and_off():
    """Adam breaks rotation (Table 2): charge_exact is False there and the residual is a
    measured breaking; charges=False leaves the summary out."""
    pot = nc.potentials.Radial(4, "log")
    om = nc.symmetry.random_skew(4, np.random.default_rng(0))
    q0 = np.array([1.0, -0.5, 0.3, 0.8])
    res = nc.scan(nc.rules.Adam, pot, q0, steps=200, lr=[1e-3, 1e-2], omega=om)
    assert not res.charge_exact["rotation:q"].any()
    assert np.all(res.charge_worst["rotation:q"] > 1e-6)
    assert np.all(res.balance_residual == 0.0)          # no exact law to report
    off = nc.scan(nc.rules.SGD, pot, q0, steps=50, lr=[0.1], charges=False)
    assert off.balance_residual is None and off.charge_worst == {}
    un = nc.scan(nc.rules.SGD, pot, q0, steps=50, lr=[0.1])       # rotation needs omega
    assert un.charge_worst == {} and "omega" in un.untracked[0][1]
