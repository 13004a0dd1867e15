"""The lane kernel of noether_core.scan (pyx/lanes.h, docs/scan.md §"Lanes").

It runs NC_NL grid points per SIMD block and must give *exactly* the bits of the scalar
loop (``lanes=False``), which the suite checks against separate ``train`` calls
(tests/test_scan.py): every output — final q, losses, norms, angular updates, status and
stop step of diverged points, worst balance residuals and their steps — is compared with
np.array_equal, for every compiled version this CPU runs (baseline and AVX-512).
"""
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import _bridge
from noether_core._kernels import scan as ks
from noether_core.errors import DivergenceWarning

KEYS = ("q", "loss", "loss_min", "norm2", "angular_update", "status", "stop_step")


def _problems():
    rng = np.random.default_rng(7)
    M = rng.normal(size=(8, 8))
    A = (M + M.T) / 2
    X = rng.normal(size=(20, 6))
    y = np.tanh(X @ rng.normal(size=6)) + 0.1 * rng.normal(size=20)
    return {
        # d = 8, 5 (row groups of 4 plus a tail of 1), BN d = 6 (dot4 tail of 2), eps > 0
        "rayleigh8": (nc.potentials.RayleighQuotient(A), rng.normal(size=8)),
        "rayleigh5": (nc.potentials.RayleighQuotient(A[:5, :5]), rng.normal(size=5)),
        "quadratic": (nc.potentials.Quadratic(A @ A.T / 8 + np.eye(8), rng.normal(size=8)),
                      rng.normal(size=8)),
        "bn": (nc.potentials.BatchNormUnit(X, y), rng.normal(size=6)),
        "bn_eps": (nc.potentials.BatchNormUnit(X, y, eps=1e-3), rng.normal(size=6)),
    }


PROBLEMS = _problems()


def _scan(pot, q0, lanes, isa=None, rule_cls=None, **kw):
    """nc.scan (of SGD unless rule_cls is given) with the lane kernel's version forced by
    the debug variable NOETHER_LANE_ISA (docs/scan.md); isa=None leaves the choice to the
    CPU."""
    with pytest.MonkeyPatch.context() as mp:
        if isa is None:
            mp.delenv("NOETHER_LANE_ISA", raising=False)
        else:
            mp.setenv("NOETHER_LANE_ISA", isa)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)
            return nc.scan(rule_cls or nc.rules.SGD, pot, q0, lanes=lanes, progress=False,
                           **kw)


def _bits(x):
    """The array's bits: float64 as int64, so that -0.0 and +0.0 (and NaN payloads)
    differ, which np.array_equal does not see."""
    x = np.asarray(x)
    return x.view(np.int64) if x.dtype == np.float64 else x


def _same(x, y, what):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, what
    np.testing.assert_array_equal(_bits(x), _bits(y), err_msg=what)


def _assert_identical(a, b):
    """Every output of the two scans, bit for bit (the sign of zeros included)."""
    for k in KEYS:
        _same(getattr(a, k), getattr(b, k), k)
    assert (a.series is None) == (b.series is None)
    if a.series is not None:
        assert a.series.keys() == b.series.keys()
        for k in a.series:
            _same(a.series[k], b.series[k], f"series {k}")
    assert a.charge_worst.keys() == b.charge_worst.keys()
    for lab in a.charge_worst:
        _same(a.charge_worst[lab], b.charge_worst[lab], lab)
        _same(a.charge_worst_step[lab], b.charge_worst_step[lab], lab)
    if a.balance_residual is not None:
        _same(a.balance_residual, b.balance_residual, "balance_residual")


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("charges", [True, False])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_lanes_equal_scalar_loop_bitwise(name, charges, isa):
    """A 5 × 2 × 2 × 2 grid (40 points: 5 blocks of 8) over lr (up to divergence for the
    quadratic), momentum 0 / 0.9, weight decay 0 / 1e-3 and dampening 0 / 0.3, which mixes
    the per-lane selects of the step within blocks; 700 steps cross the kernel's
    256-step cancel/progress boundary and put the angle window over 70 steps."""
    pot, q0 = PROBLEMS[name]
    kw = dict(steps=700, lr=np.array([1e-3, 0.05, 0.5, 3.0, 40.0]), momentum=[0.0, 0.9],
              weight_decay=[0.0, 1e-3], dampening=[0.0, 0.3], charges=charges)
    ref = _scan(pot, q0, False, **kw)
    got = _scan(pot, q0, True, isa=isa, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
    if name == "quadratic":                          # divergent points are in the grid
        assert 0 < ref.diverged.sum() < ref.diverged.size


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_lanes_nesterov_and_partial_blocks(isa):
    """Nesterov lanes beside heavy-ball lanes in one block (so the general form of the step
    runs), and grids whose size is not a multiple of the block (padding lanes)."""
    pot, q0 = PROBLEMS["rayleigh5"]
    for lr in (np.array([0.01, 0.2, 0.7]), np.linspace(0.01, 0.3, 11)):
        kw = dict(steps=300, lr=lr, momentum=0.8, nesterov=[False, True],
                  weight_decay=[0.0, 1e-2])
        ref = _scan(pot, q0, False, **kw)
        got = _scan(pot, q0, True, isa=isa, **kw)
        _assert_identical(ref, got)


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_lanes_every_stop_reason(isa):
    """Non-finite loss, gradient and parameters each stop their lane at the scalar loop's
    step, with its status, state and minimum loss; the other lanes finish.

    * loss: a quadratic run away (f overflows first);
    * gradient: a Rayleigh quotient with |2f| = 4 at |q|² = 1/1.7e308, where 1/|q|² is
      finite and f = 2, but 2f/|q|² overflows (the lane kernel detects it through q_{n+1},
      then classifies it exactly);
    * parameters: lr = 1.7e308 on a quadratic (the step overflows, f and g finite)."""
    pot, q0 = PROBLEMS["quadratic"]
    for lr in (np.array([0.01, 30.0, 0.02, 1.7e308]),):
        ref = _scan(pot, q0, False, steps=400, lr=lr, momentum=[0.0, 0.9])
        got = _scan(pot, q0, True, isa=isa, steps=400, lr=lr, momentum=[0.0, 0.9])
        _assert_identical(ref, got)
        assert {1, 3} <= set(ref.status.ravel().tolist())      # loss, parameters
        assert not ref.diverged[0].any()
    pot8, q0 = PROBLEMS["rayleigh8"]
    t0 = q0 @ pot8.A @ q0 / (q0 @ q0)
    pot = nc.potentials.RayleighQuotient(pot8.A * (4.0 / abs(t0)))
    tiny = q0 / np.linalg.norm(q0) * np.sqrt(1.0 / 1.7e308)
    ref = _scan(pot, tiny, False, steps=50, lr=[0.01, 0.1])
    got = _scan(pot, tiny, True, isa=isa, steps=50, lr=[0.01, 0.1])
    _assert_identical(ref, got)
    assert np.all(ref.status == 2) and np.all(ref.stop_step == 0)     # gradient
    assert ref.stop_reason(0, 0) == "non-finite gradient"       # (a trailing seed axis)


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_lanes_signed_zeros(isa):
    """Signed zeros, which np.array_equal cannot see: q0 with -0 entries and a zero row of
    A make sums of -0 terms (the first-term sums of docs/potentials.md §2 give -0 where a
    sum from +0 gives +0), and the lanes must give the scalar loop's signs."""
    for A, q0 in ((np.array([[1.0]]), np.array([-0.0])),
                  (np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([-0.0, -0.0])),
                  (np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 3.0]]),
                   np.array([-0.0, -1.0, 0.5]))):
        kw = dict(steps=5, lr=[0.1, 0.2], momentum=[0.0, 0.9], record_every=1)
        for pot in (nc.potentials.Quadratic(A, np.zeros(len(q0))),
                    nc.potentials.RayleighQuotient(A)):
            if isinstance(pot, nc.potentials.RayleighQuotient) and not np.any(q0):
                continue                                   # undefined at q = 0
            ref = _scan(pot, q0, False, **kw)
            _assert_identical(ref, _scan(pot, q0, True, isa=isa, **kw))
    # not vacuous: from q0 = -0, A = 1, b = 0 the first-term sum gives g = (-0) - 0 = -0, so
    # q1 = -0 + (-0.1)(-0) = +0; a sum from +0 would give g = +0 and q1 = -0 + -0 = -0
    ref = _scan(nc.potentials.Quadratic(np.array([[1.0]]), np.zeros(1)), np.array([-0.0]),
                False, steps=3, lr=[0.1])
    assert not np.signbit(ref.q).any()


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_lanes_angle_batches(isa):
    """The late-window angles are queued and evaluated in batches of K = min(8, 256 // d)
    states (every K from 8 down to 1: d = 20, 33, 40, 48, 64, 80, 128, 300), flushed when
    a batch is full, when a lane retires and at the end: windows that end mid-batch and
    lanes that diverge inside the window, all bitwise the scalar loop."""
    rng = np.random.default_rng(11)
    for d, steps in ((20, 95), (33, 121), (48, 83), (64, 47), (80, 75), (128, 33)):
        M = rng.normal(size=(d, d))
        ray = nc.potentials.RayleighQuotient(M + M.T)
        q0 = rng.normal(size=d)
        kw = dict(steps=steps, lr=[0.01, 0.3, 2.0], momentum=[0.0, 0.9])
        _assert_identical(_scan(ray, q0, False, **kw), _scan(ray, q0, True, isa=isa, **kw))
    for d, steps in ((40, 403), (300, 57)):
        M = rng.normal(size=(d, d))
        A = M @ M.T / d + np.eye(d)
        lam = np.linalg.eigvalsh(A)[-1]
        q0 = rng.normal(size=d)
        ray = nc.potentials.RayleighQuotient(M + M.T)
        kw = dict(steps=steps, lr=np.linspace(0.01, 0.5, 9), momentum=[0.0, 0.9])
        _assert_identical(_scan(ray, q0, False, **kw), _scan(ray, q0, True, isa=isa, **kw))
        if d == 40:
            # plain gradient descent on the quadratic grows like |1 - lr λ_max|^n beyond
            # lr = 2/λ_max: these rates overflow f between ~step 250 and never
            quad = nc.potentials.Quadratic(A, np.zeros(d))
            kw = dict(steps=steps, lr=np.linspace(2.0, 3.6, 24) / lam)
            ref = _scan(quad, q0, False, **kw)
            _assert_identical(ref, _scan(quad, q0, True, isa=isa, **kw))
            late = steps - -(-steps // 10)
            stops = ref.stop_step[ref.diverged]
            assert np.any((stops > late) & (stops < steps)), stops     # inside the window
            assert np.isfinite(ref.angular_update[~ref.diverged]).all()


def test_lanes_equal_train_per_point():
    """The oracle of tests/test_scan.py applied to the lane kernel directly: each point is
    a separate train call, bitwise."""
    pot, q0 = PROBLEMS["bn"]
    res = _scan(pot, q0, True, steps=600, lr=[0.01, 0.3, 2.0], momentum=[0.0, 0.9],
                weight_decay=[0.0, 1e-3])
    assert res.kernel.startswith("lanes")
    for idx in np.ndindex(*res.shape):
        tr = nc.train(res.rule_at(*idx), pot, q0, 600, record_every=600)
        assert np.array_equal(res.q[idx], tr.q_final)
        assert res.loss[idx] == tr.loss[-1]
        assert res.norm2[idx + (0,)] == tr.block_norm2["w"][-1]
        assert res.charge_worst["scale:w"][idx] == tr.charge("scale", "w").worst


def assert_threads_and_chunks_identical(scan, pot, q0, **kw):
    """``scan(pot, q0, True, ...)`` on one thread, on two, and in five chunks on an
    executor of three: the same bits and the same kernel (shared with
    test_scan_lanes_minibatch)."""
    one = scan(pot, q0, True, threads=1, **kw)
    two = scan(pot, q0, True, threads=2, **kw)
    _assert_identical(one, two)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(3) as ex:
        chunked = scan(pot, q0, True, executor=ex, n_chunks=5, **kw)
    _assert_identical(one, chunked)
    assert chunked.kernel == one.kernel


def test_lanes_threads_and_chunks_identical():
    pot, q0 = PROBLEMS["rayleigh8"]
    assert_threads_and_chunks_identical(_scan, pot, q0, steps=500,
                                        lr=np.linspace(0.01, 0.5, 13), momentum=[0.5, 0.9])


class _OtherKind(nc.rules.SGD):
    """SGD's fields with MirrorDescent's kernel kind: not a rule the lanes know."""
    kind = nc.rules.MirrorDescent.kind


def test_lanes_selection_and_errors():
    """``lanes=None`` picks the lane kernel exactly when it covers the scan; ``lanes=True``
    says why it cannot; ``result.kernel`` says which ran."""
    pot, q0 = PROBLEMS["rayleigh8"]
    assert _scan(pot, q0, None, steps=10, lr=[0.1]).kernel.startswith("lanes[")
    assert _scan(pot, q0, False, steps=10, lr=[0.1]).kernel == "scalar"
    assert _scan(pot, q0, None, steps=10, lr=[0.1], record_every=5).kernel.startswith("lanes[")
    # minibatch BatchNormUnit grids run in lanes too (docs/scan.md "Minibatch lanes")
    mb = _scan(*PROBLEMS["bn"], None, steps=10, lr=[0.1], batch_size=4)
    assert mb.kernel.startswith("lanes[")
    cases = [
        # every built-in rule has lanes; a subclass that changes its kernel kind does not
        (dict(rule_cls=_OtherKind), "ScalarRMSProp and MirrorDescent only"),
        (dict(potential="radial"), "no lane form"),
        (dict(charges=[nc.symmetry.Symmetry("scale", ("q",)),
                       nc.symmetry.Symmetry("translation", ("q",), direction=np.ones(8))]),
         "translation"),
    ]
    for kw, match in cases:
        rule_cls = kw.pop("rule_cls", nc.rules.SGD)
        which = kw.pop("potential", "rayleigh8")
        p, q = PROBLEMS[which] if which in PROBLEMS else (None, None)
        if which == "radial":
            p, q = nc.potentials.Radial(4), np.ones(4)
        with pytest.raises(ValueError, match=match):
            nc.scan(rule_cls, p, q, steps=5, lr=[0.1], lanes=True, progress=False, **kw)
    with pytest.raises(TypeError, match="lanes"):
        nc.scan(nc.rules.SGD, pot, q0, steps=5, lr=[0.1], lanes="yes")


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_lanes_record_series_like_the_scalar_loop(isa):
    """Recorded series (record_every) in the lane kernel: rows of q, loss, |g|² and block
    norms at every record_every-th state and the terminal one, NaN after a point stops,
    ``n_rows`` per point -- bitwise the scalar loop's, over every stop reason (the grids of
    test_lanes_every_stop_reason) and record_every dividing or not dividing steps."""
    pot, q0 = PROBLEMS["quadratic"]
    lr = np.array([0.01, 30.0, 0.02, 1.7e308])
    for every in (1, 7, 50, 400):
        kw = dict(steps=400, lr=lr, momentum=[0.0, 0.9], record_every=every)
        ref = _scan(pot, q0, False, **kw)
        got = _scan(pot, q0, True, isa=isa, **kw)
        assert got.kernel.startswith("lanes[")
        _assert_identical(ref, got)
        assert {1, 3} <= set(ref.status.ravel().tolist())      # loss, parameters stops
        n_rows = got.series["n_rows"]
        assert np.all(n_rows[~got.diverged] == 400 // every + 1)
        stopped = got.diverged
        assert np.all(n_rows[stopped] <= got.stop_step[stopped] // every + 1)
    pot8, q0 = PROBLEMS["rayleigh8"]
    t0 = q0 @ pot8.A @ q0 / (q0 @ q0)
    pot = nc.potentials.RayleighQuotient(pot8.A * (4.0 / abs(t0)))
    tiny = q0 / np.linalg.norm(q0) * np.sqrt(1.0 / 1.7e308)
    ref = _scan(pot, tiny, False, steps=20, lr=[0.01, 0.1], record_every=1)
    got = _scan(pot, tiny, True, isa=isa, steps=20, lr=[0.01, 0.1], record_every=1)
    _assert_identical(ref, got)
    assert np.all(ref.status == 2) and np.all(got.series["n_rows"] == 0)   # gradient
    for name in ("bn", "rayleigh8"):
        pot, q0 = PROBLEMS[name]
        kw = dict(steps=300, lr=[1e-3, 0.05, 0.5], momentum=0.9, weight_decay=[0.0, 1e-3],
                  record_every=20, seeds=[0, 1])
        _assert_identical(_scan(pot, q0, False, **kw), _scan(pot, q0, True, isa=isa, **kw))


def test_angle_is_exact_under_power_of_two_rescaling():
    """A Rayleigh run with q0 scaled by 2^k and lr by 4^k (no weight decay) is the same run
    scaled by 2^k, exactly (every operation scales by a power of two), so its angular
    updates must be the same bits at |q|² ~ 1e-301 and ~1e301 as at |q|² ~ 1: the angle
    normalises both vectors before its sums (docs/scan.md; a form scaled by |b|² lost
    precision and overflowed there).  Lanes and the scalar loop both."""
    pot, q0 = PROBLEMS["rayleigh8"]
    lr = np.array([1e-3, 0.02, 0.1])
    for lanes in (False, True):
        ref = _scan(pot, q0, lanes, steps=200, lr=lr, momentum=0.9)
        assert np.all(ref.angular_update > 0)
        for k in (-500, 500):
            got = _scan(pot, q0 * 2.0 ** k, lanes, steps=200, lr=lr * 4.0 ** k, momentum=0.9)
            np.testing.assert_array_equal(got.angular_update, ref.angular_update)
            np.testing.assert_array_equal(got.q, ref.q * 2.0 ** k)


def test_charge_screen_with_subnormal_norms():
    """The division-free screen of the lane charges (docs/scan.md) is exact only where its
    products are normal numbers: a quadratic converging to 0 takes |q|² through the
    subnormals (5e-324 at step ~1284), where the screen must step aside.  Lanes and the
    scalar loop give the same worst residual and step (found in review: 0.56 at step 0
    against 1.0 at step 1284 before the fix)."""
    S = nc.symmetry.Symmetry("scale", ("q",))
    pot = nc.potentials.Quadratic(np.array([[1.0, 0.3], [0.3, 0.5]]), np.zeros(2))
    kw = dict(steps=3000, lr=[0.7, 0.5], momentum=[0.0, 0.5], charges=[S])
    ref = _scan(pot, [1.0, -0.5], False, **kw)
    for isa in ks.lane_isas():
        _assert_identical(ref, _scan(pot, [1.0, -0.5], True, isa=isa, **kw))
    assert ref.charge_worst["scale:q"][0, 0] == 1.0


def _screen_factor(w):
    """The lanes' screen factor of a worst value w (pyx/lanes_impl.h worstp, docs/scan.md
    (S.1)): fl(w (1 - 2^-40)) where w >= 2^-1000, else 0."""
    return w * (1.0 - 2.0 ** -40) if w >= 2.0 ** -1000 else 0.0


_any_double = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)


@given(w=st.one_of(st.floats(0.0, 1.0, allow_subnormal=True),
                   st.sampled_from([0.0, 2.0 ** -1000, 2.0 ** -1022, 5e-324, 1.0])),
       sc=_any_double, a=st.floats(0.0, allow_infinity=True, allow_subnormal=True),
       edge=st.sampled_from(["free", "at p", "below p"]))
def test_screen_s1_passes_no_step_that_raises_worst(w, sc, a, edge):
    """(S.1): a step passes the screen (2^-1022 <= p < inf and |R| <= p, p = fl(sc w'))
    only if 0 < sc < inf and fl(|R|/sc) <= w, so that skipping its fold changes nothing.
    |R| is drawn freely or put on the screen's edge (|R| = p, the largest value that
    passes, and the double below it)."""
    with np.errstate(all="ignore"):
        w, sc = np.float64(w), np.float64(sc)
        p = sc * np.float64(_screen_factor(w))
        aR = {"free": np.float64(a), "at p": p, "below p": np.nextafter(p, 0.0)}[edge]
        passes = bool(p >= 2.0 ** -1022 and p < np.inf and aR <= p)
        if passes:
            assert 0.0 < sc < np.inf
            assert aR / sc <= w


def test_unknown_isa_is_refused():
    pot, q0 = PROBLEMS["rayleigh8"]
    with pytest.raises(ValueError, match="available"):
        _scan(pot, q0, True, isa="sse9", steps=5, lr=[0.1])


def test_retired_lane_idles_at_finite_numbers():
    """A lane stopped on a non-finite loss whose gradient is NaN (Rayleigh at q = 0 after a
    step) idles at q0 with lr = 0: its q stays finite, so its block runs no slow path (the
    block's other lanes are unaffected either way; this checks the idle state itself)."""
    pot = nc.potentials.RayleighQuotient(np.diag([2.0, 3.0, 5.0]))
    q0 = np.array([1.0, 0.0, 0.0])
    # lr = 1 on the 2-eigenvector... e1 is an eigenvector: g = 0, so the run stays put;
    # a lane that reaches q = 0 exactly: weight decay 1/lr collapses q in one step
    res = _scan(pot, q0, True, steps=50, lr=[0.5, 0.01], weight_decay=[2.0, 0.0])
    assert res.status[0, 0, 0] == 1 and res.stop_step[0, 0, 0] == 1
    kind, data = pot._lane_form()
    P, d = 8, 3
    hp = np.zeros((P, 5))
    hp[:, 0] = 0.01
    hp[0, 0], hp[0, 4] = 0.5, 2.0
    out = _bridge.ScanOutputs.empty(P, d, 1, 0, 0)
    rule = _bridge.RuleInputs(0, hp, np.zeros((P, d)), np.zeros((P, 1)),
                              *_bridge.csr([np.arange(d)]))
    plan = _bridge.ScanPlan(steps=50, K=1, late_start=45, record_every=0, R=0, n_threads=1)
    kern = _bridge.lane_kernel((kind, data), rule, q0, plan, np.array([0, d], np.intp),
                               np.arange(d, dtype=np.intp), out, None, None)
    kern.run()
    assert out.status[0] == 1 and np.all(out.status[1:] == 0)
    assert np.all(np.isfinite(kern._lane_state(0)))


def test_lane_kernel_progress_and_cancel():
    """steps_done counts every point-step; cancel stops the blocks at their next 256-step
    boundary with status INTERRUPTED (scan raises KeyboardInterrupt)."""
    pot, q0 = PROBLEMS["rayleigh8"]
    res = _scan(pot, q0, True, steps=1000, lr=np.linspace(0.01, 0.1, 20))
    assert not res.diverged.any()
    # progress: the counter the bar polls reaches points x steps
    kind, data = pot._lane_form()
    P, d, steps = 20, pot.dim, 1000
    hp = np.zeros((P, 5))
    hp[:, 0] = np.linspace(0.01, 0.1, P)
    out = _bridge.ScanOutputs.empty(P, d, 1, 0, 0)
    rule = _bridge.RuleInputs(0, hp, np.zeros((P, d)), np.zeros((P, 1)),
                              *_bridge.csr([np.arange(d)]))
    plan = _bridge.ScanPlan(steps=steps, K=1, late_start=steps - 100, record_every=0, R=0,
                            n_threads=2)
    kern = _bridge.lane_kernel((kind, data), rule, q0, plan, np.array([0, d], np.intp),
                               np.arange(d, dtype=np.intp), out, None, None)
    kern.run()
    assert kern.steps_done() == P * steps
    np.testing.assert_array_equal(out.q, res.q.reshape(P, d))
    kern.cancel()
    kern.run()
    assert np.all(out.status == nc._status.INTERRUPTED) and np.all(out.stop_step == 0)


# ---------------------------------------------------------------------------------------
# property: random grids, dimensions, data and step counts


def lane_problem(draw):
    """A random lane potential (Rayleigh, Quadratic, BatchNormUnit in either form) of a
    random d in 1..20, with its generator: (pot, d, rng)."""
    kind = draw(st.sampled_from(["rayleigh", "quadratic", "bn", "bn_rows"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = draw(st.integers(1, 20))
    if kind == "rayleigh":
        M = rng.normal(size=(d, d))
        pot = nc.potentials.RayleighQuotient(M + M.T)
    elif kind == "quadratic":
        M = rng.normal(size=(d, d))
        pot = nc.potentials.Quadratic(M @ M.T / d + 0.1 * np.eye(d), rng.normal(size=d))
    else:
        N = draw(st.integers(2, 3 * d + 3))
        X = rng.normal(size=(N, d))
        pot = nc.potentials.BatchNormUnit(X, rng.normal(size=N),
                                          draw(st.sampled_from([0.0, 1e-2])),
                                          projection=kind == "bn")
    return pot, d, rng


@st.composite
def lane_cases(draw):
    pot, d, rng = lane_problem(draw)
    q0 = rng.normal(size=d)
    n_lr = draw(st.integers(1, 11))
    lr = np.unique(10.0 ** rng.uniform(-3, 1.5, n_lr))
    grid = {"lr": lr}
    momentum = draw(st.sampled_from([0.0, 0.9, (0.0, 0.5, 0.99)]))
    grid["momentum"] = list(momentum) if isinstance(momentum, tuple) else momentum
    grid["weight_decay"] = draw(st.sampled_from([0.0, 1e-3, (0.0, 0.1)]))
    if isinstance(grid["weight_decay"], tuple):
        grid["weight_decay"] = list(grid["weight_decay"])
    if momentum == 0.9:
        grid["nesterov"] = draw(st.sampled_from([False, True, (False, True)]))
        if isinstance(grid["nesterov"], tuple):
            grid["nesterov"] = list(grid["nesterov"])
    elif momentum != 0.0:
        grid["dampening"] = draw(st.sampled_from([0.0, [0.0, 0.4]]))
    steps = draw(st.sampled_from([1, 2, 9, 10, 11, 255, 256, 257, 600]))
    record_every = draw(st.sampled_from([None, None, 1, 3, 10, 600]))
    if record_every is not None:
        grid["record_every"] = record_every
    return pot, q0, steps, grid, draw(st.booleans())


@given(lane_cases())
def test_lanes_equal_scalar_loop_on_random_grids(case):
    """Any grid the lane kernel takes gives the scalar loop's bits: dimensions 1–20 (row
    groups of four with every tail length, the BatchNorm dot's tail; the fixed-size copies
    of the block's run for d <= 16 and the generic one above), N above and below D
    (the BatchNorm unit's projected and row forms), grids of 1–66 points (partial blocks),
    step counts around the angle window's start and the 256-step boundary, divergent
    points, mixed flags per block."""
    pot, q0, steps, grid, charges = case
    ref = _scan(pot, q0, False, steps=steps, charges=charges, **grid)
    for isa in ks.lane_isas():
        got = _scan(pot, q0, True, isa=isa, steps=steps, charges=charges, **grid)
        _assert_identical(ref, got)


def test_rebinding_public_attributes_changes_neither_path():
    """The lane kernel reads the arrays the potential was built with (as the scalar kernel
    does), not its public attributes: rebinding ``eps``, ``b`` or ``A`` afterwards changes
    neither path, nor a pickled copy (executors)."""
    import pickle
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(30, 5)), rng.normal(size=30)
    bn = nc.potentials.BatchNormUnit(X, y)
    quad = nc.potentials.Quadratic(np.eye(4) * 2.0, np.ones(4))
    ray = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
    for pot, attr, value in ((bn, "eps", 0.5), (quad, "b", np.zeros(4)),
                             (ray, "A", np.eye(3))):
        q0 = rng.normal(size=pot.dim)
        before = _scan(pot, q0, True, steps=100, lr=[0.01, 0.1])
        setattr(pot, attr, value)
        _assert_identical(before, _scan(pot, q0, True, steps=100, lr=[0.01, 0.1]))
        _assert_identical(before, _scan(pot, q0, False, steps=100, lr=[0.01, 0.1]))
        copy = pickle.loads(pickle.dumps(pot))
        _assert_identical(before, _scan(copy, q0, True, steps=100, lr=[0.01, 0.1]))


# ---------------------------------------------------------------------------------------
# the adaptive rules in lanes: Adam, AdamW (pyx/rules.pyx _step_adam) and RMSprop
# (_step_rmsprop), each lane bitwise the scalar loop (docs/scan.md §"Lanes", "The adaptive
# rules")

ADAPTIVE = {
    # rule class, grid: the per-lane selects (weight decay on/off, amsgrad/centered,
    # momentum) mixed within blocks; lr up to divergence on the quadratic (an adaptive
    # step is ~lr whatever the gradient: lr = 1e200 overflows the loss)
    "adam": (nc.rules.Adam, dict(lr=np.array([1e-3, 0.03, 0.3, 3.0, 1e200]),
                                 weight_decay=[0.0, 1e-2], amsgrad=[False, True])),
    "adam_b1_low": (nc.rules.Adam, dict(lr=np.array([1e-3, 0.05, 0.5]), betas=(0.3, 0.6),
                                        weight_decay=[0.0, 0.1], amsgrad=[False, True])),
    "adamw": (nc.rules.AdamW, dict(lr=np.array([1e-3, 0.03, 0.3, 3.0, 1e200]),
                                   weight_decay=[0.0, 1e-2, 0.5], amsgrad=[False, True])),
    "rmsprop": (nc.rules.RMSprop, dict(lr=np.array([1e-3, 0.01, 0.1, 2.0, 1e200]),
                                       momentum=[0.0, 0.9], centered=[False, True],
                                       weight_decay=[0.0, 1e-2])),
    "rmsprop_alpha": (nc.rules.RMSprop, dict(lr=np.array([1e-3, 0.05]),
                                             alpha=[0.3, 0.6, 0.99], eps=[0.0, 1e-8],
                                             centered=[False, True], momentum=0.5)),
}


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("charges", [True, False])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("rule", sorted(ADAPTIVE))
def test_adaptive_lanes_equal_scalar_loop_bitwise(rule, name, charges, isa):
    """Every rule variant (coupled and decoupled decay, amsgrad, both forms of torch's
    lerp (1 − β₁ and 1 − α below and above 1/2), centered, momentum, eps = 0) on every
    lane potential, charges on and off, 300 steps (past the 256-step boundary, angle
    window of 30 steps): every output bitwise the scalar loop's, which tests/test_scan.py
    holds to `train`."""
    rule_cls, grid = ADAPTIVE[rule]
    pot, q0 = PROBLEMS[name]
    kw = dict(steps=300, charges=charges, rule_cls=rule_cls, **grid)
    ref = _scan(pot, q0, False, **kw)
    got = _scan(pot, q0, True, isa=isa, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
    if name == "quadratic" and rule in ("adam", "adamw", "rmsprop"):
        assert ref.diverged.any() and not ref.diverged.all()


@pytest.mark.parametrize("rule", ["adam", "adamw", "rmsprop"])
def test_adaptive_lanes_equal_train_per_point(rule):
    """The oracle itself: each lane point is a separate `train` call, bitwise (final q,
    final loss, block norm, the scale law's worst residual)."""
    rule_cls, grid = ADAPTIVE[rule]
    pot, q0 = PROBLEMS["bn"]
    grid = {k: (v[:3] if isinstance(v, np.ndarray) else v) for k, v in grid.items()}
    res = _scan(pot, q0, True, steps=400, rule_cls=rule_cls, **grid)
    assert res.kernel.startswith("lanes")
    for idx in np.ndindex(*res.shape):
        tr = nc.train(res.rule_at(*idx), pot, q0, 400, record_every=400)
        assert np.array_equal(_bits(res.q[idx]), _bits(tr.q_final)), idx
        assert _bits(res.loss[idx]) == _bits(tr.loss[-1]), idx
        assert res.norm2[idx + (0,)] == tr.block_norm2["w"][-1]
        assert res.charge_worst["scale:w"][idx] == tr.charge("scale", "w").worst


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("rule", ["adam", "adamw", "rmsprop"])
def test_adaptive_lanes_record_series_and_stops(rule, isa):
    """Recorded series and every stop reason (non-finite loss on the quadratic at large
    lr; parameters at lr = 1.7e308) with the adaptive rules: the scalar loop's bits."""
    rule_cls, _ = ADAPTIVE[rule]
    pot, q0 = PROBLEMS["quadratic"]
    kw = dict(steps=260, rule_cls=rule_cls, lr=np.array([0.01, 30.0, 1.7e308]),
              weight_decay=[0.0, 0.01], record_every=7)
    ref = _scan(pot, q0, False, **kw)
    got = _scan(pot, q0, True, isa=isa, **kw)
    _assert_identical(ref, got)
    assert ref.diverged.any()


def _kernel_pair(kind, hp, vec, sca, pot, q0, steps, isa, charges, parts=None):
    """The lane kernel and the scalar grid kernel on the same hand-made rows (every lane
    its own hyper-parameters and initial state, which no Cartesian grid of one rule class
    gives: betas per lane, resumed states; ``parts``: a partition of q, default one part),
    outputs of both."""
    P, d = hp.shape[0], pot.dim
    bptr, bidx = _bridge.csr([pot.blocks[k] for k in pot.blocks])
    chosen = nc.charges.select(pot, charges, None)[0]
    outs = []
    for lanes in (True, False):
        rule = _bridge.RuleInputs(kind, hp.copy(), vec.copy(), sca.copy(),
                                  *_bridge.csr(parts or [np.arange(d)]))
        out = _bridge.ScanOutputs.empty(P, d, len(pot.blocks), 0, len(chosen))
        plan = _bridge.ScanPlan(steps=steps, K=16, late_start=steps - -(-steps // 10),
                                record_every=0, R=0, n_threads=1)
        if lanes:
            cb = (_bridge.csr([pot.blocks[s.blocks[0]] for s, _ in chosen]) if chosen
                  else None)
            kern = _bridge.lane_kernel(pot._lane_form(), rule, q0, plan, bptr, bidx, out,
                                       cb, isa)
        else:
            layout = nc.charges.layout(pot, chosen) if chosen else None
            kern = _bridge.scan_kernel(rule, pot._kernel, q0, plan, bptr, bidx,
                                       _bridge.Batch(0), out, layout)
        kern.run()
        outs.append(out)
    return outs


@st.composite
def adaptive_rows(draw):
    """Random Adam/AdamW or RMSprop rows, one per lane, every flag and constant drawn per
    lane (betas/alpha on both sides of the lerp's 1/2, eps 0 or not, amsgrad, centered,
    coupled or decoupled decay, momentum), some from a resumed state (step count > 0,
    non-zero buffers)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["adam", "rmsprop"]))
    P = draw(st.integers(1, 19))
    lr = 10.0 ** rng.uniform(-4, 0.5, P)
    wd = rng.choice([0.0, 1e-3, 0.3], P)
    eps = rng.choice([0.0, 1e-8, 1e-3], P)
    if kind == "adam":
        b1 = rng.choice([0.0, 0.3, 0.5, 0.9, 0.99], P)
        b2 = rng.choice([0.0, 0.4, 0.9, 0.999], P)
        hp = np.stack([lr, b1, b2, eps, wd, rng.integers(0, 2, P).astype(float),
                       rng.integers(0, 2, P).astype(float)], axis=1)
    else:
        alpha = rng.choice([0.0, 0.3, 0.5, 0.9, 0.99], P)
        hp = np.stack([lr, alpha, eps, wd, rng.choice([0.0, 0.5, 0.9], P),
                       rng.integers(0, 2, P).astype(float)], axis=1)
    return kind, hp, rng, draw(st.booleans()), draw(st.sampled_from([1, 9, 40, 257]))


@given(adaptive_rows())
def test_adaptive_lanes_on_random_rows(case):
    """Any rows the kernels take, mixed per lane within a block (flags, betas, the step
    counts of resumed states: the bias-correction table has a row per (β, s₀)), agree bit
    for bit with the scalar grid kernel, on both potentials' families, charges on/off."""
    kind, hp, rng, charges, steps = case
    P = hp.shape[0]
    name = ["rayleigh8", "rayleigh5", "quadratic", "bn"][int(rng.integers(0, 4))]
    pot, q0 = PROBLEMS[name]
    d = pot.dim
    resumed = rng.random(P) < 0.5
    vec = np.where(resumed[:, None], rng.random((P, 3 * d)) * 0.1, 0.0)
    if kind == "adam":
        vec[:, 2 * d:] = np.maximum(vec[:, 2 * d:], vec[:, d:2 * d] * rng.random((P, d)))
    else:
        vec[:, 2 * d:] *= 0.1            # grad_avg small beside square_avg: sq - ga² > 0
    sca = np.where(resumed, rng.integers(1, 50, P), 0).astype(float)[:, None]
    kind_code = nc.rules.Adam.kind if kind == "adam" else nc.rules.RMSprop.kind
    for isa in ks.lane_isas():
        lane, ref = _kernel_pair(kind_code, hp, vec, sca, pot, q0, steps, isa, charges)
        for k in ("q", "loss", "loss_min", "norm2", "angular_update", "status",
                  "stop_step", "charge_worst", "charge_worst_step"):
            _same(getattr(lane, k), getattr(ref, k), k)


def test_adam_bias_correction_table():
    """The table holds libm's pow(β, s₀ + n + 1), the numbers rules.pyx _step_adam forms:
    checked against Python's float power (CPython calls the same C pow)."""
    beta = np.array([0.9, 0.999, 0.5])
    s0 = np.array([0.0, 0.0, 7.0])
    tab = ks._pow_table(beta, s0, 300)
    for k in range(3):
        expect = [float(beta[k]) ** float(s0[k] + n + 1) for n in range(300)]
        np.testing.assert_array_equal(tab[k], expect)


# ScalarRMSProp (the paper's rule, rules.pyx _step_scalar_rmsprop): one G per part

SRMS_GRIDS = [
    dict(lr=np.array([1e-3, 0.03, 0.3, 1e200]), rho=[0.5, 0.99], weight_decay=[0.0, 1e-2]),
    dict(lr=np.array([1e-3, 0.05, 0.5]), G0=1.0, eps=[0.0, 1e-3], project=[False, True]),
    dict(lr=np.array([0.01, 0.2]), per_block=[False, True], project=False,
         weight_decay=[0.0, 0.1]),
]


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("charges", [True, False])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("grid", range(len(SRMS_GRIDS)))
def test_scalar_rmsprop_lanes_equal_scalar_loop_bitwise(grid, name, charges, isa):
    """ScalarRMSProp in lanes (G from the first step's |d|² or G0, eps = 0, weight decay,
    projection onto the unit sphere of the scale block, one G or one per block, divergent
    points) bitwise the scalar loop, charges on and off."""
    pot, q0 = PROBLEMS[name]
    kw = dict(steps=300, charges=charges, rule_cls=nc.rules.ScalarRMSProp,
              **SRMS_GRIDS[grid])
    ref = _scan(pot, q0, False, **kw)
    got = _scan(pot, q0, True, isa=isa, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
    if grid == 0 and name == "quadratic":
        assert ref.diverged.any() and not ref.diverged.all()


def test_scalar_rmsprop_lanes_equal_train_per_point():
    pot, q0 = PROBLEMS["bn"]
    res = _scan(pot, q0, True, steps=300, rule_cls=nc.rules.ScalarRMSProp,
                lr=[0.01, 0.1, 0.5], project=[False, True], weight_decay=[0.0, 1e-2])
    assert res.kernel.startswith("lanes")
    for idx in np.ndindex(*res.shape):
        tr = nc.train(res.rule_at(*idx), pot, q0, 300, record_every=300)
        assert np.array_equal(_bits(res.q[idx]), _bits(tr.q_final)), idx
        assert _bits(res.loss[idx]) == _bits(tr.loss[-1]), idx
        assert res.charge_worst["scale:w"][idx] == tr.charge("scale", "w").worst


@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from([1, 9, 40, 257]))
def test_scalar_rmsprop_lanes_on_random_rows_and_partitions(seed, charges, steps):
    """Rows drawn per lane (rho, eps, G0 given or NaN, weight decay, the number of
    projected parts, resumed states with G set) on a partition of q into 1-3 parts whose
    coordinates are out of order: the lane kernel's bits are the scalar grid kernel's."""
    rng = np.random.default_rng(seed)
    name = ["rayleigh8", "quadratic", "bn"][int(rng.integers(0, 3))]
    pot, q0 = PROBLEMS[name]
    d, P = pot.dim, int(rng.integers(1, 19))
    perm = rng.permutation(d)
    cuts = np.sort(rng.choice(np.arange(1, d), size=int(rng.integers(0, 3)), replace=False))
    parts = [np.array(x, dtype=np.intp) for x in np.split(perm, cuts)]
    npart = len(parts)
    eps = rng.choice([0.0, 1e-8, 1e-3], P)
    G0 = np.where(rng.random(P) < 0.5, np.nan, rng.choice([0.5, 2.0], P))
    hp = np.stack([10.0 ** rng.uniform(-4, 0, P), rng.choice([0.0, 0.5, 0.99], P), eps, G0,
                   rng.choice([0.0, 1e-3, 0.3], P),
                   rng.integers(0, npart + 1, P).astype(float)], axis=1)
    resumed = rng.random(P) < 0.3
    sca = np.zeros((P, 1 + npart))
    sca[resumed, 0] = 1.0
    sca[resumed, 1:] = rng.uniform(0.1, 2.0, (int(resumed.sum()), npart))
    for isa in ks.lane_isas():
        lane, ref = _kernel_pair(nc.rules.ScalarRMSProp.kind, hp, np.zeros((P, 0)), sca, pot,
                                 q0, steps, isa, charges, parts=parts)
        for k in ("q", "loss", "loss_min", "norm2", "angular_update", "status",
                  "stop_step", "charge_worst", "charge_worst_step"):
            _same(getattr(lane, k), getattr(ref, k), k)


def test_adam_lanes_past_the_bias_correction_underflow():
    """Adam's lanes read pow(beta, step) from a table that stops where every row's pow is
    exactly 0 (pyx/scan.pyx _pow_table: beta^step decreases and pow rounds faithfully, so
    it stays 0).  betas (0.5, 0.6) underflow at steps ~1075 and ~1460: a 2000-step scan
    crosses both, and must still be bitwise the scalar loop."""
    pot, q0 = PROBLEMS["rayleigh8"]
    for cls in (nc.rules.Adam, nc.rules.AdamW):
        kw = dict(rule_cls=cls, steps=2000, lr=[1e-3, 3e-3, 1e-2], betas=(0.5, 0.6),
                  weight_decay=[0.0, 1e-2], charges=False)
        lanes, scalar = _scan(pot, q0, True, **kw), _scan(pot, q0, False, **kw)
        assert lanes.kernel.startswith("lanes") and not scalar.kernel.startswith("lanes")
        _assert_identical(lanes, scalar)


def test_adam_lanes_refuse_a_table_beyond_its_bound():
    """betas this close to 1 over many steps would need a table above the lanes' bound
    (_scan._ADAM_TABLE_MAX_BYTES): lanes=True is refused naming the MiB, lanes=None takes
    the scalar loop (checked on the reason alone: the run itself would be 10⁹ steps)."""
    from noether_core import _scan
    pot, q0 = PROBLEMS["rayleigh8"]
    with pytest.raises(ValueError, match=r"bias corrections would need \d+ MiB"):
        nc.scan(nc.rules.Adam, pot, q0, steps=10**9, lr=[1e-3, 2e-3],
                betas=(0.9, 1.0 - 1e-9), lanes=True, progress=False)
    # betas = (0.9, 0.999): ~0.75 M columns whatever the steps, within the bound
    g = _scan._make_grid(nc.rules.Adam, pot, q0, 10**9, None, (0,), None, {"lr": [1e-3, 2e-3]})
    assert _scan._lane_reason(g) is None
    assert _scan._adam_table_bytes(g) < 16 * 2**20
