"""Minibatch lanes (docs/scan.md §"Minibatch lanes"): minibatch scans of BatchNormUnit in
the SIMD lane kernel.

Each lane draws its rows from its own PCG64 stream, the stream of
``point_seed(seed, point)`` (docs/scan.md §"Minibatch streams"), with the partial
Fisher–Yates draw of pyx/rules.pyx ``_draw_batch``, and evaluates the gradient on the
drawn rows in ``_c_grad_bn_unit``'s order.  So every output must be *bitwise* that of the
scalar loop (``lanes=False``) and of a separate ``train(..., seed=point_seed(s, i))``
call: final q, losses (the last one on the full data), norms, angular updates, stop
reasons and steps, recorded series (minibatch losses and gradient norms), balance-law
residuals.  Compared as bits (float64 viewed as int64), for every compiled version of the
lane kernel this CPU runs (NOETHER_LANE_ISA, as tests/test_scan_lanes.py forces them).
"""
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan_lanes import (  # tests/ is on sys.path
    _assert_identical,
    _bits,
    assert_threads_and_chunks_identical,
)

import noether_core as nc
from noether_core import _bridge
from noether_core._kernels import scan as ks
from noether_core.errors import BudgetError, DivergenceWarning

ISAS = ks.lane_isas()


def _bn(N, d, seed=3, eps=0.0, projection=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    y = np.tanh(X @ rng.normal(size=d)) + 0.1 * rng.normal(size=N)
    return nc.potentials.BatchNormUnit(X, y, eps, projection=projection), rng.normal(size=d)


def _scan(pot, q0, lanes, isa=None, rule_cls=nc.rules.SGD, **kw):
    with pytest.MonkeyPatch.context() as mp:
        if isa is None:
            mp.delenv("NOETHER_LANE_ISA", raising=False)
        else:
            mp.setenv("NOETHER_LANE_ISA", isa)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)
            return nc.scan(rule_cls, pot, q0, lanes=lanes, progress=False, **kw)


# rule class and grid: per-lane selects mixed within blocks (as tests/test_scan_lanes.py)
RULES = {
    "sgd": (nc.rules.SGD, dict(lr=np.array([1e-3, 0.05, 0.5, 5.0]), momentum=[0.0, 0.9],
                               weight_decay=[0.0, 1e-3])),
    "sgd_nesterov": (nc.rules.SGD, dict(lr=np.array([0.01, 0.2]), momentum=0.8,
                                        nesterov=[False, True], dampening=0.0,
                                        weight_decay=[0.0, 1e-2])),
    "adam": (nc.rules.Adam, dict(lr=np.array([1e-3, 0.03, 0.3]), weight_decay=[0.0, 1e-2],
                                 amsgrad=[False, True])),
    "adamw": (nc.rules.AdamW, dict(lr=np.array([1e-3, 0.03, 0.3]),
                                   weight_decay=[0.0, 0.5], amsgrad=[False, True])),
    "rmsprop": (nc.rules.RMSprop, dict(lr=np.array([1e-3, 0.01, 0.1]),
                                       momentum=[0.0, 0.9], centered=[False, True])),
    "srms": (nc.rules.ScalarRMSProp, dict(lr=np.array([1e-3, 0.01, 0.1]),
                                          rho=[0.9, 0.99])),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("charges", [True, False])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_minibatch_lanes_equal_scalar_loop_bitwise(rule, charges, isa):
    """Every rule, charges on and off, two seeds (adjacent lanes: seed is the fastest
    task axis), 300 steps (past the 256-step cancel boundary, angle window 30 steps),
    recorded every 7 steps: every output bitwise the scalar loop's (which
    tests/test_scan.py holds to ``train``)."""
    rule_cls, grid = RULES[rule]
    pot, q0 = _bn(40, 6)
    kw = dict(steps=300, charges=charges, rule_cls=rule_cls, batch_size=9, seeds=(0, 5),
              record_every=7, **grid)
    ref = _scan(pot, q0, False, **kw)
    got = _scan(pot, q0, True, isa=isa, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N,d,B", [(32, 8, 2), (50, 3, 7), (256, 8, 32), (33, 17, 33),
                                   (20, 5, 19)])
def test_minibatch_lanes_sizes(N, d, B, isa):
    """Batch sizes from 2 (the smallest BatchNormUnit allows) to N (B = N draws a full
    permutation: the same rows in another order, so the row form's sums are not the full
    batch's), d with and without a
    _dot4 tail, d > 16 (the generic block run), and grids that are not a multiple of 8
    (padding lanes)."""
    pot, q0 = _bn(N, d, seed=N + d)
    kw = dict(steps=70, lr=np.linspace(0.01, 0.4, 5), momentum=[0.0, 0.9], batch_size=B,
              seeds=(1, 2, 3))
    _assert_identical(_scan(pot, q0, False, **kw), _scan(pot, q0, True, isa=isa, **kw))


def test_minibatch_lanes_equal_train_per_point():
    """The oracle itself: each lane point is ``train`` with the point's seed sequence,
    bitwise (final q and loss, block norm, recorded minibatch losses and |g|^2, the scale
    law's worst residual)."""
    pot, q0 = _bn(30, 5)
    res = _scan(pot, q0, True, rule_cls=nc.rules.AdamW, steps=120, batch_size=6,
                seeds=(4, 9), lr=[0.01, 0.1, 0.5], weight_decay=[0.0, 0.1], record_every=10)
    assert res.kernel.startswith("lanes")
    for idx in np.ndindex(*res.shape):
        tr = nc.train(res.rule_at(*idx), pot, q0, 120, record_every=1, batch_size=6,
                      seed=res.seed_at(*idx))
        assert np.array_equal(_bits(res.q[idx]), _bits(tr.q_final)), idx
        assert _bits(res.loss[idx]) == _bits(tr.loss[-1]), idx
        assert _bits(res.loss_min[idx]) == _bits(np.min(tr.loss)), idx
        assert res.norm2[idx + (0,)] == tr.block_norm2["w"][-1]
        assert res.charge_worst["scale:w"][idx] == tr.charge("scale", "w").worst
        np.testing.assert_array_equal(_bits(res.series["loss"][idx]), _bits(tr.loss[::10]))


def test_seed_points_do_not_share_streams():
    """Under the default ``batch_streams="point"`` the stream is per (seed, grid point),
    not per seed (docs/scan.md §"Minibatch streams"): two points with the same
    hyper-parameters and seed but different grid indices draw different batches, hence
    different trajectories -- why the lanes share one draw per block only under
    ``batch_streams="seed"`` (tests/test_scan_batch_streams.py)."""
    pot, q0 = _bn(40, 4)
    res = _scan(pot, q0, True, steps=20, lr=[0.1, 0.2], batch_size=5, seeds=(0,))
    assert res.kernel.startswith("lanes")
    rule = res.rule_at(0, 0)
    own = nc.train(rule, pot, q0, 20, batch_size=5, seed=nc.point_seed(0, 0))
    other = nc.train(rule, pot, q0, 20, batch_size=5, seed=nc.point_seed(0, 1))
    assert np.array_equal(_bits(res.q[0, 0]), _bits(own.q_final))
    assert not np.array_equal(own.q_final, other.q_final)


@pytest.mark.parametrize("isa", ISAS)
def test_minibatch_lanes_stops(isa):
    """Stops mid-run (non-finite loss or parameters at large lr, eps = 0 so that a
    constant batch projection gives 0/0) in lanes next to live ones: statuses, stop steps
    and the rows written before the stop, bitwise."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 4))
    X[:6] = X[0]                    # batches of identical rows: variance 0, isd = inf
    pot = nc.potentials.BatchNormUnit(X, rng.normal(size=24))
    kw = dict(steps=200, lr=np.array([0.01, 1.0, 1e3, 1e200, 1.7e308]),
              momentum=[0.0, 0.9], batch_size=2, seeds=(0, 1, 2), record_every=3)
    q0 = rng.normal(size=4)
    ref = _scan(pot, q0, False, **kw)
    got = _scan(pot, q0, True, isa=isa, **kw)
    _assert_identical(ref, got)
    assert ref.diverged.any()


def test_minibatch_lanes_threads_and_chunks_identical():
    pot, q0 = _bn(64, 8)
    assert_threads_and_chunks_identical(_scan, pot, q0, steps=200,
                                        lr=np.linspace(0.01, 0.5, 7), momentum=[0.5, 0.9],
                                        batch_size=8, seeds=(0, 1, 2))


def test_pcg64_lane_states_are_numpys():
    """The rows the kernel steps from are NumPy's PCG64 state of the point's seed
    sequence; and the kernel's own draws reproduce Generator.random(): a 1-row-batch
    draw of N rows is j = floor(u N) for u = Generator.random()."""
    ss = nc.point_seed(11, 3)
    row = _bridge.pcg64_lane_states([ss])[0]
    st_ = np.random.PCG64(ss).state["state"]
    assert (int(row[0]) << 64) | int(row[1]) == st_["state"]
    assert (int(row[2]) << 64) | int(row[3]) == st_["inc"]


def test_budget_still_refuses_minibatch_lanes():
    pot, q0 = _bn(64, 8)
    with pytest.raises(BudgetError, match="max_record_bytes"):
        nc.scan(nc.rules.SGD, pot, q0, steps=10, lr=np.linspace(0.1, 1, 50), batch_size=8,
                seeds=range(20), record_every=1, max_record_bytes=10**5, progress=False)


def raw_lane_args(P, N=20, d=3):
    """Inputs of the bridge's lane kernel for P plain-SGD points (lr 0.1) on a
    BatchNormUnit of N rows, d = 3, up to its batch argument: (args, out)."""
    pot, q0 = _bn(N, d)
    kind, data = pot._lane_form()
    hp = np.zeros((P, 5))
    hp[:, 0] = 0.1
    out = _bridge.ScanOutputs.empty(P, d, 1, 0, 0)
    rule = _bridge.RuleInputs(0, hp, np.zeros((P, d)), np.zeros((P, 1)),
                              *_bridge.csr([np.arange(d)]))
    plan = _bridge.ScanPlan(steps=5, K=1, late_start=4, record_every=0, R=0, n_threads=1)
    return ((kind, data), rule, q0, plan, np.array([0, d], np.intp),
            np.arange(d, dtype=np.intp), out, None, None), out


def test_kernel_refuses_inconsistent_batches():
    P = 8
    args, out = raw_lane_args(P)
    good = np.zeros((P, 4), np.uint64)
    for batch, match in [((0, good), "batch size 0"), ((21, good), "batch size 21"),
                         ((3, good[:4]), r"shape \(8, 4\)"),
                         ((3, good.astype(np.int64)), "uint64")]:
        with pytest.raises(ValueError, match=match):
            _bridge.lane_kernel(*args, batch)
    ray = nc.potentials.RayleighQuotient(np.eye(3))
    with pytest.raises(ValueError, match="data rows"):
        _bridge.lane_kernel(ray._lane_form(), *args[1:], (3, good))


def test_minibatch_lane_kernel_cancel_is_polled():
    """A long minibatch lane run on a helper thread stops soon after cancel() (the flag
    is read every <= 256 steps, fewer with large batches), with status INTERRUPTED."""
    pot, q0 = _bn(4000, 16)
    kind, data = pot._lane_form()
    P, d, steps = 16, 16, 10**6
    hp = np.zeros((P, 5))
    hp[:, 0] = 1e-3
    out = _bridge.ScanOutputs.empty(P, d, 1, 0, 0)
    rule = _bridge.RuleInputs(0, hp, np.zeros((P, d)), np.zeros((P, 1)),
                              *_bridge.csr([np.arange(d)]))
    plan = _bridge.ScanPlan(steps=steps, K=1, late_start=steps - 100, record_every=0, R=0,
                            n_threads=1)
    rngs = _bridge.pcg64_lane_states([nc.point_seed(0, i) for i in range(P)])
    kern = _bridge.lane_kernel((kind, data), rule, q0, plan, np.array([0, d], np.intp),
                               np.arange(d, dtype=np.intp), out, None, None, (2000, rngs))
    th = threading.Thread(target=kern.run)
    th.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    kern.cancel()
    th.join(10.0)
    assert not th.is_alive()
    assert time.perf_counter() - t0 < 2.0
    # the running block stops mid-run; the block not yet started stops at step 0
    assert np.all(out.status == nc._status.INTERRUPTED)
    assert np.all(out.stop_step[:8] > 0) and np.all(out.stop_step[8:] == 0)


def test_minibatch_scan_ctrl_c_raises_keyboard_interrupt():
    """Through scan (the progress helper thread: a grid above the direct-run size), a
    SIGINT to the process reaches the running lanes: KeyboardInterrupt, promptly.  In a
    fresh interpreter, as tests/test_interrupts.py does."""
    import subprocess
    import sys
    code = """
import os, signal, threading, time
import numpy as np
import noether_core as nc
rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 16))
pot = nc.potentials.BatchNormUnit(X, rng.normal(size=2000))
t = {}
def fire():
    t["sent"] = time.perf_counter()
    os.kill(os.getpid(), signal.SIGINT)
threading.Timer(0.5, fire).start()
try:
    res = nc.scan(nc.rules.SGD, pot, rng.normal(size=16), steps=10**6,
                  lr=np.linspace(1e-3, 1e-2, 16), batch_size=1000, progress=False,
                  lanes=True)
    print("FINISHED", res.kernel)
except KeyboardInterrupt:
    print("INTERRUPTED", time.perf_counter() - t["sent"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    word, latency = out.stdout.split()
    assert word == "INTERRUPTED", out.stdout
    assert float(latency) < 1.0


@st.composite
def minibatch_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = draw(st.integers(1, 20))
    N = draw(st.integers(2, 40))
    B = draw(st.integers(2, N))
    pot = nc.potentials.BatchNormUnit(rng.normal(size=(N, d)), rng.normal(size=N),
                                      draw(st.sampled_from([0.0, 1e-2])),
                                      projection=draw(st.booleans()))
    rule = draw(st.sampled_from(sorted(RULES)))
    rule_cls = RULES[rule][0]
    grid = {"lr": np.unique(10.0 ** rng.uniform(-3, 1, draw(st.integers(1, 6))))}
    if rule_cls is nc.rules.SGD:
        grid["momentum"] = draw(st.sampled_from([0.0, 0.9, [0.0, 0.5]]))
        grid["weight_decay"] = draw(st.sampled_from([0.0, [0.0, 0.1]]))
    elif rule_cls in (nc.rules.Adam, nc.rules.AdamW):
        grid["betas"] = draw(st.sampled_from([(0.9, 0.999), (0.3, 0.6)]))
        grid["amsgrad"] = draw(st.sampled_from([False, [False, True]]))
        grid["weight_decay"] = draw(st.sampled_from([0.0, [0.0, 0.1]]))
    elif rule_cls is nc.rules.RMSprop:
        grid["alpha"] = draw(st.sampled_from([0.99, 0.3]))
        grid["centered"] = draw(st.sampled_from([False, [False, True]]))
        grid["momentum"] = draw(st.sampled_from([0.0, 0.5]))
    seeds = tuple(draw(st.lists(st.integers(0, 2**31), min_size=1, max_size=3,
                                unique=True)))
    steps = draw(st.sampled_from([1, 2, 9, 255, 256, 257]))
    record_every = draw(st.sampled_from([None, 1, 4]))
    return (pot, rng.normal(size=d), rule_cls, dict(
        steps=steps, batch_size=B, seeds=seeds, record_every=record_every,
        charges=draw(st.booleans()), **grid))


@settings(max_examples=40, deadline=None)
@given(minibatch_cases(), st.sampled_from(ISAS))
def test_minibatch_lanes_on_random_cases(case, isa):
    """Any minibatch grid the lanes take gives the scalar loop's bits: d 1-20, N 2-40,
    B 2-N, rules and their hyper-parameters, seeds, step counts around the cancel
    boundary, recording, charges, both data forms of the potential."""
    pot, q0, rule_cls, kw = case
    ref = _scan(pot, q0, False, rule_cls=rule_cls, **kw)
    got = _scan(pot, q0, True, isa=isa, rule_cls=rule_cls, **kw)
    assert got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
