"""The monitor's per-step identities on NumPy twins of the optimizers (no torch needed).

docs/monitor.md §3 derives, for each optimizer, an identity for a_{n+1} = |q_{n+1}|² in
terms of inner products the monitor measures (B.4 heavy ball with dampening, schedules and
maximize; B.6 Nesterov; B.7 Adam with L2 decay or decoupled (AdamW), amsgrad; B.8
RMSprop, centered, with momentum).  They are identities of the update: true for ANY
gradient sequence, so here the gradients are random vectors and the optimizers are NumPy
re-implementations of torch.optim's documented updates (written from the torch docs, not
from the monitor).  Each identity must hold to float64 round-off (1e-12 relative: a few
ulps of each of at most eight terms, each a sum of m ≤ 40 products), for random
hyper-parameters (hypothesis), and must fail (≫ 1e-12) when the wrong identity is
applied — the residual discriminates.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_core import _monitor_laws as L

TOL = 1e-12


def _stats(q0, g, dprev, gprev, q1, u):
    """The STATS columns, row by row (rows of (R, m) arrays)."""
    d = q1 - q0
    dot = lambda x, y: np.sum(x * y, axis=1)        # noqa: E731
    z = np.zeros(len(q0))          # the adaptive rules' gradient statistics: not used
    return np.stack([dot(q0, q0), dot(g, g), dot(g, q0), dot(dprev, g), dot(d, d),
                     dot(q1, q1), dot(d, g), dot(gprev, g), dot(q0, u), dot(u, u),
                     z, z, z, z], axis=1)


def _run(rule, hp, steps=25, R=3, m=40, seed=0, lrs=None):
    """Twin of torch.optim's update; yields (stats, hyper rows) per step."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((R, m))
    lr0, beta, tau, k = hp["lr"], hp["beta"], hp.get("tau", 0.0), hp["k"]
    s = -1.0 if hp.get("maximize") else 1.0
    buf = None
    m1 = np.zeros_like(q)
    v = np.zeros_like(q)
    vmax = np.zeros_like(q)
    ga = np.zeros_like(q)
    dprev = np.full_like(q, np.nan)
    gprev = np.full_like(q, np.nan)
    out = []
    for n in range(steps):
        lr = lr0 if lrs is None else lrs[n]
        g = rng.standard_normal((R, m)) * (1 + n % 3)
        q0 = q.copy()
        u = np.zeros_like(q)
        first = buf is None
        if rule in ("sgd", "nesterov"):
            d = s * g + k * q
            if beta != 0:
                buf = d.copy() if buf is None else beta * buf + (1 - tau) * d
                upd = d + beta * buf if rule == "nesterov" else buf
            else:
                upd = d
            q = q - lr * upd
        elif rule in ("adam", "adamw"):
            b1, b2, eps = beta, hp["beta2"], 1e-8
            gp = s * g
            if rule == "adamw":
                q = q * (1 - lr * k)
            else:
                gp = gp + k * q
            m1 = b1 * m1 + (1 - b1) * gp
            v = b2 * v + (1 - b2) * gp * gp
            vmax = np.maximum(vmax, v)
            t = n + 1
            vv = vmax if hp.get("amsgrad") else v
            denom = np.sqrt(vv) / np.sqrt(1 - b2 ** t) + eps
            u = (lr / (1 - b1 ** t)) * m1 / denom
            q = q - u
        elif rule == "rmsprop":
            alpha, eps = hp["alpha"], 1e-8
            gp = s * g + k * q
            v = alpha * v + (1 - alpha) * gp * gp
            if hp.get("centered"):
                ga = alpha * ga + (1 - alpha) * gp
                avg = np.sqrt(v - ga * ga) + eps
            else:
                avg = np.sqrt(v) + eps
            if beta > 0:
                buf = gp / avg if buf is None else beta * buf + gp / avg
                u = lr * buf
            else:
                u = lr * gp / avg
            q = q - u
        code = L.RULES.index(rule)
        hyper = np.tile([lr, beta, tau, k, s, code, float(first), np.nan, np.nan], (R, 1))
        out.append((_stats(q0, g, dprev, gprev, q, u), hyper))
        dprev, gprev = q - q0, g
    return out


def _residuals(seq, code=None):
    rec = L._Recorder(seq[0][0].shape[0], 1, None)
    for stt, hp in seq:
        if code is not None:
            hp = hp.copy()
            hp[:, L.H_RULE] = code
        rec.process(stt, hp)
    return np.array(rec.rec["res"])


CASES = {
    "sgd": ("sgd", {"lr": 0.1, "beta": 0.9, "k": 1e-3}),
    "sgd-dampening-maximize": ("sgd", {"lr": 0.05, "beta": 0.8, "tau": 0.3, "k": 1e-2,
                                       "maximize": True}),
    "sgd-plain": ("sgd", {"lr": 0.1, "beta": 0.0, "k": 1e-3}),
    "nesterov": ("nesterov", {"lr": 0.1, "beta": 0.9, "k": 1e-3}),
    "nesterov-dampening": ("nesterov", {"lr": 0.1, "beta": 0.5, "tau": 0.2, "k": 1e-2}),
    "adam-l2": ("adam", {"lr": 1e-2, "beta": 0.9, "beta2": 0.999, "k": 1e-2}),
    "adam-amsgrad-maximize": ("adam", {"lr": 1e-2, "beta": 0.8, "beta2": 0.99, "k": 1e-2,
                                       "amsgrad": True, "maximize": True}),
    "adamw": ("adamw", {"lr": 1e-2, "beta": 0.7, "beta2": 0.99, "k": 0.1}),
    "rmsprop": ("rmsprop", {"lr": 1e-3, "beta": 0.0, "alpha": 0.99, "k": 1e-3}),
    "rmsprop-centered-momentum": ("rmsprop", {"lr": 1e-3, "beta": 0.9, "alpha": 0.9,
                                              "k": 1e-3, "centered": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_identity_holds_for_any_gradients(case):
    """B.4/B.6/B.7/B.8 at round-off at every step, with a changing lr (η_n/η_{n−1} in
    β'), on arbitrary (random) gradients."""
    rule, hp = CASES[case]
    lrs = hp["lr"] * np.exp(np.linspace(0, -1, 25))
    res = _residuals(_run(rule, hp, lrs=lrs))
    assert np.all(np.isfinite(res)) and res.max() < TOL


def test_wrong_identity_fails():
    """Heavy ball's B.4 applied to a Nesterov run and vice versa, Adam's applied to an
    AdamW run: residuals far above round-off."""
    nest = _run("nesterov", CASES["nesterov"][1])
    assert _residuals(nest, code=L.R_SGD)[1:].max() > 1e-6
    sgd = _run("sgd", CASES["sgd"][1])
    assert _residuals(sgd, code=L.R_NEST)[1:].max() > 1e-6
    adamw = _run("adamw", CASES["adamw"][1])
    assert _residuals(adamw, code=L.R_ADAM).max() > 1e-6


@settings(max_examples=40, deadline=None)
@given(rule=st.sampled_from(["sgd", "nesterov"]), lr=st.floats(1e-4, 1.0),
       beta=st.floats(0.0, 0.99), tau=st.floats(0.0, 0.9), k=st.floats(0.0, 0.1),
       maximize=st.booleans(), seed=st.integers(0, 2**16))
def test_heavy_ball_and_nesterov_identities_any_hyper(rule, lr, beta, tau, k, maximize,
                                                      seed):
    res = _residuals(_run(rule, {"lr": lr, "beta": beta, "tau": tau, "k": k,
                                 "maximize": maximize}, steps=12, seed=seed))
    assert res.max() < TOL


@settings(max_examples=40, deadline=None)
@given(rule=st.sampled_from(["adam", "adamw", "rmsprop"]), lr=st.floats(1e-4, 0.1),
       beta=st.floats(0.0, 0.99), beta2=st.floats(0.5, 0.9999), k=st.floats(0.0, 0.5),
       flag=st.booleans(), seed=st.integers(0, 2**16))
def test_adaptive_identities_any_hyper(rule, lr, beta, beta2, k, flag, seed):
    hp = {"lr": lr, "beta": beta, "beta2": beta2, "alpha": beta2, "k": k,
          "amsgrad": flag, "centered": flag}
    res = _residuals(_run(rule, hp, steps=12, seed=seed))
    assert res.max() < TOL


def test_first_step_of_a_buffer_older_than_the_monitor_is_nan():
    """A heavy-ball buffer the monitor did not see start (not first, no previous step
    processed): no identity is claimed (NaN), from the next step on it holds."""
    seq = _run("sgd", CASES["sgd"][1])[5:]
    res = _residuals(seq)
    assert np.all(np.isnan(res[0])) and res[1:].max() < TOL


def test_ar1_gain_reproduces_the_named_assumptions():
    """docs/monitor.md §4: κ(C) = (1+βC)/((1−βC)(1−β²)) is theory.buffer_gain's
    coherent / uncorrelated / alternating value at C = 1, 0, −1."""
    from noether_core import theory
    for beta in (0.3, 0.9):
        for c, a in ((1.0, "coherent"), (0.0, "uncorrelated"), (-1.0, "alternating")):
            np.testing.assert_allclose(L.ar1_gain(c, beta), theory.buffer_gain(beta, a),
                                       rtol=1e-14)
    assert L.regime_of(0.02, 0.9) == "uncorrelated"
    assert L.regime_of(0.97, 0.9) == "coherent" and L.regime_of(-0.9, 0.9) == "alternating"
    assert L.regime_of(np.nan, 0.9) == "undetermined"


def _schedule_run(rule, fast, batches, seed=0, lr=1e-3, R=7, metric=0.05):
    """A _Recorder fed random (but GradStats-shaped) statistics of one rule in batches of
    the given sizes, a changing lr and per-row hyper-parameters; returns its state."""
    rng = np.random.default_rng(seed)
    rec = L._Recorder(R, 2, None)
    rec.fast_schedule = fast
    n = 0
    for T in batches:
        st_ = np.abs(rng.standard_normal((T, R, len(L.STATS)))) + 0.5
        st_[..., L.S_A] = 10.0 + rng.random((T, R))
        st_[..., L.S_PM] *= metric
        hp = np.zeros((T, R, len(L.HYPER)))
        hp[..., L.H_LR] = lr * np.exp(-0.01 * (n + np.arange(T)))[:, None] \
            * (1.0 + rng.random(R))
        hp[..., L.H_BETA] = rng.uniform(0.0, 0.95, R)
        hp[..., L.H_TAU] = 0.1 if rule in ("sgd", "nesterov") else 0.0
        hp[..., L.H_K] = rng.uniform(1e-3, 0.1, R)
        hp[..., L.H_S] = 1.0
        hp[..., L.H_RULE] = L.RULES.index(rule)
        hp[..., L.H_BETA2], hp[..., L.H_EPS] = 0.999, 1e-8
        rec.process_batch(st_, hp)
        n += T
    return rec.state()


def _assert_same_state(x, y, path=""):
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for key in x:
            _assert_same_state(x[key], y[key], f"{path}/{key}")
    elif isinstance(x, np.ndarray):
        assert x.shape == y.shape and np.array_equal(x, y, equal_nan=True), path
    else:
        assert x == y, path


def _spy_fast_schedule(monkeypatch):
    """A list that gets, per batch, whether the batched schedule ran (True) or gave up."""
    taken = []
    fast_fn = L._Recorder._schedule_fast

    def spy(self, *args):
        out = fast_fn(self, *args)
        taken.append(out is not None)
        return out
    monkeypatch.setattr(L._Recorder, "_schedule_fast", spy)
    return taken


@pytest.mark.parametrize("rule", ["sgd", "nesterov", "adam", "adamw", "rmsprop"])
def test_fast_schedule_is_the_general_loop_bitwise(rule, monkeypatch):
    """docs/monitor.md §5–6: the batched form of the online rule_norm_schedule (state-free
    factors computed for all steps at once, the chord after the loop) performs the same
    operations per element as the step-by-step loop: every recorded and carried value is
    bitwise equal, whatever the batch boundaries (rows started in the first batch, a
    batch of one step, an lr that changes every step, per-row hyper-parameters)."""
    taken = _spy_fast_schedule(monkeypatch)
    batches = (5, 1, 23, 11)
    fast = _schedule_run(rule, True, batches)
    assert taken == [True] * len(batches)           # the fast path ran every batch
    _assert_same_state(fast, _schedule_run(rule, False, batches))
    sched = np.array(fast["rec_pred"]["schedule"])
    assert np.isfinite(sched).all() and (sched > 0).all()


def test_fast_schedule_falls_back_when_the_recursion_leaves_a_positive(monkeypatch):
    """A step so large that the predicted a turns negative (RMSprop's (9.11) with
    a − 2η√a M + η²U < 0: a ≈ 10, √a M ≈ 20, U ≈ 1, η ≈ 1): the batched form gives up
    (returns None, nothing changed) and the general loop drops that step's predicted
    chord (NaN, not counted) and restarts the row — the same state as the general loop
    alone."""
    taken = _spy_fast_schedule(monkeypatch)
    fast = _schedule_run("rmsprop", True, (4, 30), lr=1.0, metric=20.0)
    assert False in taken
    _assert_same_state(fast, _schedule_run("rmsprop", False, (4, 30), lr=1.0,
                                           metric=20.0))
    assert fast["cum"][:, L.C_NSC].min() < 34          # some steps were not counted
