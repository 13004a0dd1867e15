"""``scan(..., batch_streams="seed", batch_form="moments")``: a minibatch step read through
the batch's centred moments (docs/potentials.md §4b, docs/scan.md §"Batch moments").

The moment form computes the loss (P.3) and gradient (P.4) of the batch from C, c, m
(4b.1) by (4b.2)–(4b.3): the same function as the row form, rounded differently.  So:

* its gradient and loss at step 0 are checked against a reference in extended precision
  (``np.longdouble``) written from (P.3)–(P.4) row by row — not from (4b.2)–(4b.3) and
  not from the kernels — within the bound (4b.4), 10⁻¹²·(1 + κ)·S, and so is the row
  form's (which is ``train``'s, bitwise): the two forms are within twice that of each
  other;
* a whole scan against ``train(..., seed=s)`` point by point, within a tolerance measured
  from how round-off grows over the steps (below);
* every point of a seed sees the batches ``default_rng(s)`` draws (noether_ref's
  ``draw_batch``, the documented draw), at every step;
* with ε = 0 the scale law of SGD holds to round-off (the moment form's gradient obeys
  (P.6) exactly in real arithmetic: §4b check (ii));
* the results do not depend on threads, chunks, executors or the compiled version;
* the refusals name the argument, the value and what is allowed.
"""
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_scan_lanes import _scan as lanes_scan  # tests/ is on sys.path

import noether_core as nc
from noether_core._kernels import scan as ks
from noether_core.errors import BudgetError, DivergenceWarning
from noether_ref.rules import draw_batch

ISAS = ks.lane_isas()
U = 2.0**-53


def _bn(N, d, seed=3, eps=0.0, mean=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d)) + mean
    y = np.tanh((X - mean) @ rng.normal(size=d)) + 0.1 * rng.normal(size=N) + 0.3
    return nc.potentials.BatchNormUnit(X, y, eps), X, y, rng.normal(size=d)


def _scan(pot, q0, rule_cls=nc.rules.SGD, isa=None, **kw):
    """test_scan_lanes' scan (ISA forced by isa, DivergenceWarning silenced) with seed
    streams and batch moments unless told otherwise."""
    kw.setdefault("batch_streams", "seed")
    kw.setdefault("batch_form", "moments")
    return lanes_scan(pot, q0, kw.pop("lanes", None), isa=isa, rule_cls=rule_cls, **kw)


def _reference(Xb, yb, w, eps):
    """Loss and gradient of the BatchNorm unit on the rows Xb (B, d), targets yb, at w, in
    extended precision, from (P.3)–(P.4) row by row; and the scales of bound (4b.4)."""
    L = np.longdouble
    X, y, w = Xb.astype(L), yb.astype(L), w.astype(L)
    B = L(X.shape[0])
    z = X @ w
    mu = z.sum() / B
    var = ((z - mu) ** 2).sum() / B
    s = np.sqrt(var + L(eps))
    zh = (z - mu) / s
    f = ((zh - y) ** 2).sum() / (2 * B)
    delta = (zh - y) / B
    dz = (delta - delta.sum() / B - zh * (delta * zh).sum() / B) / s
    g = X.T @ dz
    # the scales of (4b.4), in double (only their size matters)
    xbar = np.abs(Xb.mean(axis=0))
    Xs = np.abs(Xb) + xbar                                  # X_k = |x_k| + |xbar|
    aw = Xs @ np.abs(w.astype(float))                       # X_k^T |w|
    sd = float(s)
    h = float((zh * y).sum() / B)
    e = eps / sd**2
    beta = abs(h + e) / sd
    yb_ = np.abs(yb) + abs(yb.mean())
    S = (beta * (aw[:, None] * Xs).mean(axis=0) + (Xs * yb_[:, None]).mean(axis=0)) / sd
    kappa = float(np.mean(aw**2)) / sd**2
    floss = 1.0 + 2.0 * abs(h) + float(np.mean(yb**2))
    return float(f), g.astype(float), S, kappa, floss


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d, N, B, eps, mean", [
    (1, 40, 7, 0.0, 0.0), (3, 50, 2, 1e-3, 0.0), (8, 256, 32, 0.0, 0.0),
    (8, 256, 32, 1e-5, 2.0), (13, 100, 5, 0.0, 0.0), (16, 64, 64, 0.1, -1.0),
    (32, 256, 32, 0.0, 0.0), (37, 90, 40, 1e-4, 0.5)])
def test_step0_gradient_and_loss_within_bound_4b4(isa, d, N, B, eps, mean):
    """Step 0 of SGD (lr = 1, no momentum) gives g_0 = q_0 − q_1 and the batch loss f_0
    (recorded row 0), for the moment form and the row form; both within (4b.4) of the
    extended-precision reference on batch 0 of ``default_rng(seed)``.  B ≤ d (a singular
    C: d = 13 with B = 5, d = 37 with B = 40 − 1 centred rank) is covered too."""
    pot, X, y, q0 = _bn(N, d, seed=d + B, eps=eps, mean=mean)
    seeds = [0, 5]
    out = {form: _scan(pot, q0, isa=isa, steps=1, batch_size=B, seeds=seeds, lr=[1.0, 0.5],
                       momentum=0.0, record_every=1, batch_form=form, charges=False)
           for form in ("moments", "rows")}
    for j, s in enumerate(seeds):
        rows = draw_batch(np.random.default_rng(s), N, B)
        f_ref, g_ref, S, kappa, floss = _reference(X[rows], y[rows], q0, eps)
        tol_g = 1e-12 * (1.0 + kappa) * S
        for form, res in out.items():
            for i, lr in enumerate([1.0, 0.5]):
                q1 = res.series["q"][i, j, 1]
                g = (q0 - q1) / lr        # exact division by 0.5 and 1; the difference
                rec = 4 * U * (np.abs(q0) + np.abs(q1)) / lr    # rounds within this
                err = np.abs(g - g_ref)
                assert np.all(err <= tol_g + rec), (form, s, lr, (err / (tol_g + rec)).max())
                f0 = res.series["loss"][i, j, 0]
                assert abs(f0 - f_ref) <= 1e-12 * floss, (form, s, f0, f_ref)


def test_moment_and_row_gradients_differ_only_by_rounding():
    """The two forms are not bitwise (the point of the opt-in), but agree within twice
    (4b.4), over many batches (steps 0..19 of a slow SGD run, each state's gradient on its
    step's batch, from the recorded q_n and q_{n+1})."""
    N, d, B, eps = 200, 8, 16, 1e-6
    pot, X, y, q0 = _bn(N, d, seed=11, eps=eps)
    res = {form: _scan(pot, q0, steps=20, batch_size=B, seeds=3, lr=1.0, momentum=0.0,
                       record_every=1, batch_form=form, charges=False)
           for form in ("moments", "rows")}
    rng = np.random.default_rng(3)
    differ = False
    for n in range(20):
        rows = draw_batch(rng, N, B)
        for form, r in res.items():
            qn, qn1 = r.series["q"][n], r.series["q"][n + 1]
            if n == 19:
                break                       # row 20 is the terminal state
            _, g_ref, S, kappa, _ = _reference(X[rows], y[rows], qn, eps)
            g = qn - qn1
            rec = 4 * U * (np.abs(qn) + np.abs(qn1))
            assert np.all(np.abs(g - g_ref) <= 1e-12 * (1 + kappa) * S + rec), (form, n)
        differ |= not np.array_equal(res["moments"].series["q"][n],
                                     res["rows"].series["q"][n])
    assert differ, "the moment form gave the row form's bits: was it used at all?"


# How round-off grows along a trajectory.  The moment form perturbs each step's gradient
# by ~1e-16 relative (above); the difference from train's row form then propagates through
# the steps like any perturbation of the initial state.  Measured on this grid (the three
# grids below; d = 8, N = 256, B = 32; seeds 0 and 7; 2026-12-03), the largest relative
# difference max|q_scan - q_train| / max|q_train| of the final q over the grid:
#   steps      1        25       50       100      200      400
#   SGD        2.7e-17  3.2e-16  3.4e-16  3.7e-16  5.6e-16  5.7e-16
#   AdamW      6.7e-18  2.5e-16  3.0e-16  2.0e-16  2.4e-16  9.1e-16
#   RMSprop    2.6e-17  2.4e-16  2.1e-16  3.4e-16  5.1e-16  4.7e-16
# (re-measure with _max_rel_diff below and TOL_TRAIN = 1): it grows slowly, not
# exponentially -- these runs descend into a basin where nearby trajectories contract.
# The test runs 100 steps and asserts 1e-13 (final q and final loss, relative), a margin
# of ~250 over the measured growth; a wrong batch or a wrong term in the moment form
# shows at 1e-3 or more after a few steps.
STEPS = 100
TOL_TRAIN = 1e-13


def _max_rel_diff(res, pot, q0, B, steps):
    worst = 0.0
    for idx in np.ndindex(res.shape):
        names = list(res.axes)
        s = int(res.axes["seed"][idx[names.index("seed")]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)
            tr = nc.train(res.rule_at(*idx), pot, q0, steps, batch_size=B, seed=s)
        qt = tr.q_final
        scale = np.max(np.abs(qt))
        worst = max(worst, float(np.max(np.abs(res.q[idx] - qt)) / scale))
        assert not res.diverged[idx]
        assert abs(res.loss[idx] - tr.loss[-1]) <= TOL_TRAIN * abs(tr.loss[-1])
    return worst


@pytest.mark.parametrize("rule_cls, grid", [
    (nc.rules.SGD, dict(lr=np.array([0.01, 0.05, 0.3]), momentum=[0.0, 0.9],
                        weight_decay=[0.0, 1e-3])),
    (nc.rules.AdamW, dict(lr=np.array([1e-3, 1e-2, 3e-2]), weight_decay=[0.0, 0.1])),
    (nc.rules.RMSprop, dict(lr=np.array([1e-3, 1e-2]), momentum=[0.0, 0.5])),
])
def test_scan_matches_train_to_roundoff(rule_cls, grid):
    pot, X, y, q0 = _bn(256, 8, seed=1)
    B = 32
    res = _scan(pot, q0, rule_cls=rule_cls, steps=STEPS, batch_size=B, seeds=[0, 7],
                charges=False, **grid)
    assert res.kernel.startswith("lanes")
    assert _max_rel_diff(res, pot, q0, B, STEPS) <= TOL_TRAIN


def test_every_point_of_a_seed_sees_default_rng_batches():
    """Each recorded loss f_n of every point is the loss of ``draw_batch(default_rng(s))``'s
    step-n batch at that point's recorded q_n (reference in extended precision), so every
    point of seed s reads the batches of ``default_rng(s)``, in order."""
    N, d, B = 120, 5, 9
    pot, X, y, q0 = _bn(N, d, seed=4)
    steps = 12
    res = _scan(pot, q0, steps=steps, batch_size=B, seeds=[2, 9], lr=[0.05, 0.2, 0.7],
                momentum=[0.0, 0.9], record_every=1, charges=False)
    for s_i, s in enumerate([2, 9]):
        rng = np.random.default_rng(s)
        batches = [draw_batch(rng, N, B) for _ in range(steps)]
        for idx in np.ndindex(res.shape[:-1]):
            for n in range(steps):
                qn = res.series["q"][idx + (s_i, n)]
                f_ref, _, _, _, floss = _reference(X[batches[n]], y[batches[n]], qn, 0.0)
                f = res.series["loss"][idx + (s_i, n)]
                assert abs(f - f_ref) <= 1e-12 * floss, (idx, s, n)


def test_scale_law_exact_with_eps_zero():
    """ε = 0: f is scale invariant and ⟨g, w⟩ = 0 (§4b (ii)), so SGD's scale law holds
    to round-off at every point (the lanes' balance residual, docs/balance_laws.md)."""
    pot, X, y, q0 = _bn(256, 8, seed=2, eps=0.0)
    res = _scan(pot, q0, steps=200, batch_size=32, seeds=[0, 1], lr=[0.01, 0.1, 0.5],
                momentum=[0.0, 0.9], weight_decay=[0.0, 1e-3], charges=True)
    assert res.balance_residual is not None
    assert np.all(res.balance_residual <= 1e-12), res.balance_residual.max()


def test_threads_chunks_executors_and_isas_agree_bitwise():
    """The moments are formed in a fixed order in every call (pyx/scan.pyx
    nc_mom_table), so a chunk in another thread forms the same bits; the blocks' lane
    arithmetic is element-wise IEEE in every compiled version."""
    pot, X, y, q0 = _bn(150, 6, seed=8)
    kw = dict(steps=60, batch_size=10, seeds=[0, 1, 2], lr=np.linspace(0.01, 0.3, 11),
              momentum=0.9, record_every=7)
    base = _scan(pot, q0, threads=1, **kw)
    others = [_scan(pot, q0, threads=2, **kw)]
    with ThreadPoolExecutor(3) as ex:
        others.append(_scan(pot, q0, executor=ex, n_chunks=5, **kw))
    others += [_scan(pot, q0, isa=isa, **kw) for isa in ISAS]
    for o in others:
        for name in ("q", "loss", "loss_min", "norm2", "angular_update"):
            assert np.array_equal(getattr(o, name), getattr(base, name)), name
        assert np.array_equal(o.series["q"], base.series["q"], equal_nan=True)
        assert np.array_equal(o.series["loss"], base.series["loss"], equal_nan=True)
        assert o.batch_form == "moments"


def test_result_names_the_form_after_sel_and_in_xarray():
    """A result says how its batches were read (rows: bitwise train; moments: to
    round-off), also when narrowed by ``sel`` and in the xarray Dataset's attributes."""
    pot, X, y, q0 = _bn(40, 4)
    kw = dict(steps=20, batch_size=6, seeds=[0, 1], lr=[0.05, 0.1])
    mom = _scan(pot, q0, **kw)
    rows = nc.scan(nc.rules.SGD, pot, q0, batch_streams="seed", **kw)
    assert (mom.batch_form, rows.batch_form) == ("moments", "rows")
    assert mom.sel(lr=0.1).batch_form == "moments"
    pytest.importorskip("xarray")
    assert mom.to_xarray().attrs["batch_form"] == "moments"
    assert rows.to_xarray().attrs["batch_form"] == "rows"


def test_cancelled_before_the_moments_stops_every_point():
    """A kernel cancelled before run() stops while forming the moments (it polls the flag
    every step) and every block then stops at its first step: status INTERRUPTED."""
    from noether_core import _scan as scan_mod

    pot, X, y, q0 = _bn(100, 4, seed=6)
    stops = []

    real = scan_mod._run_kernel

    def cancel_first(kern, total, progress):
        kern.cancel()
        stops.append(True)
        return real(kern, total, progress)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "_LANE_DIRECT_UNITS", 0)   # through _run_kernel
        mp.setattr(scan_mod, "_run_kernel", cancel_first)
        with pytest.raises(KeyboardInterrupt):
            _scan(pot, q0, steps=50, batch_size=8, seeds=[0, 1], lr=[0.1, 0.2], charges=False)
    assert stops


def test_budget_counts_the_moments():
    """steps × (d² + d + 1) doubles per seed: a budget below that is refused, naming the
    part."""
    pot, X, y, q0 = _bn(300, 16, seed=9)
    with pytest.raises(BudgetError, match="batch moments"):
        _scan(pot, q0, steps=20000, batch_size=32, seeds=[0, 1], lr=0.1,
              max_record_bytes=40 * 2**20)
    # the row form of the same scan needs far less
    _scan(pot, q0, steps=2, batch_size=32, seeds=[0, 1], lr=0.1,
          max_record_bytes=40 * 2**20)


@pytest.mark.parametrize("kw, match", [
    (dict(batch_form="moment"), r"batch_form must be one of 'rows', 'moments', got 'moment'"),
    (dict(batch_form=None), r"batch_form must be one of .* got None"),
    (dict(batch_streams="point"), r"batch_streams='point'.*need batch_streams='seed'"),
    (dict(batch_size=None), r"full-batch scan has no minibatch"),
    (dict(lanes=False), r"lanes=False"),
])
def test_refusals(kw, match):
    pot, X, y, q0 = _bn(64, 4, seed=1)
    args = dict(steps=5, batch_size=8, seeds=0, lr=0.1)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        _scan(pot, q0, **args)


def test_refusals_other_potentials_and_uncovered_scans():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    labels = rng.integers(0, 2, size=40)
    sm = nc.potentials.SoftmaxCrossEntropy(X, labels, 2)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy has no moment form.*"
                                         r"allowed: batch_form='rows'"):
        _scan(sm, np.zeros(sm.dim), steps=3, batch_size=8, seeds=0, lr=0.1)
    pot, X, y, q0 = _bn(64, 4, seed=1)
    # a scan the lane kernel does not cover: a rule class without a lane form (a subclass
    # of SGD with another kind runs in the scalar loop only)
    from noether_core.rules import SGD

    class NotALaneRule(SGD):
        pass
    NotALaneRule.kind = -12345
    with pytest.raises(ValueError, match=r"batch_form='moments' runs in the lane kernel "
                                         r"only.*use batch_form='rows'"):
        nc.scan(NotALaneRule, pot, q0, steps=3, batch_size=8, seeds=0, lr=0.1,
                batch_streams="seed", batch_form="moments", progress=False)
