"""Hostile input, round 2 (issue 19): rule state, resume across charges, dopri5 at large
times, scan's argument checks, assert_order, the exported error classes.

Each test names the finding it pins down; the hypothesis tests close the class behind it
(every field of a hand-made ``RuleState``, every mix of charges/block_stats across a
resume, every seed NumPy's SeedSequence takes).
"""
import pickle

import numpy as np
import pytest
import test_resume as _resume  # tests/ is on sys.path under pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import noether_core as nc
from noether_core import _bridge, errors
from noether_core import rules as R
from noether_core.models import GradientFlow
from noether_core.potentials import Quadratic, RayleighQuotient
from noether_core.testing import assert_order

# the resume tests' problems: a BatchNorm unit and a Rayleigh quotient with two blocks
BN, SPLIT, Q0 = _resume.BN, _resume.SPLIT, _resume.Q0
RULES = [R.SGD(lr=0.05, momentum=0.9), R.SGD(lr=0.05), R.RMSprop(lr=0.005, momentum=0.5),
         R.Adam(lr=0.01), R.ScalarRMSProp(lr=0.01), R.MirrorDescent(lr=0.05)]


def _valid_state():
    return nc.train(R.Adam(lr=0.01), BN, Q0, 3, batch_size=6, seed=1).state


# -- findings 2 and 15: RuleState validates every field when made -------------------------

def _fields(s):
    return dict(rule=s.rule, arrays=s.arrays, scalars=s.scalars, step=s.step,
                rng_state=s.rng_state, last_delta=s.last_delta,
                last_residual=s.last_residual, last_metric=s.last_metric)


BAD_FIELDS = [
    ("rule", 3, TypeError, "RuleState.rule"),
    ("arrays", [np.zeros(4)], TypeError, "RuleState.arrays"),
    ("arrays", {"exp_avg": np.zeros(4, complex)}, ValueError, r"arrays\['exp_avg'\]"),
    ("arrays", {"exp_avg": np.array([None] * 4)}, ValueError, "dtype object"),
    ("arrays", {"exp_avg": np.zeros(4, bool)}, ValueError, "dtype bool"),
    ("arrays", {"exp_avg": np.zeros((2, 2))}, ValueError, r"shape \(2, 2\)"),
    ("arrays", {"exp_avg": np.array([0.0, np.nan])}, ValueError, "finite"),
    ("arrays", {1: np.zeros(4)}, TypeError, "keys"),
    ("scalars", {"step": 1j}, TypeError, r"scalars\['step'\]"),
    ("scalars", {"step": True}, TypeError, r"scalars\['step'\]"),
    ("scalars", {"step": "3"}, TypeError, r"scalars\['step'\]"),
    ("scalars", {"step": np.inf}, ValueError, r"scalars\['step'\]"),
    ("scalars", {"step": np.zeros(2)}, TypeError, r"scalars\['step'\]"),
    ("scalars", {"G": [1.0, np.nan]}, ValueError, r"scalars\['G'\]"),
    ("step", -1, ValueError, "RuleState.step"),
    ("step", 1.0, TypeError, "RuleState.step"),
    ("step", True, TypeError, "RuleState.step"),
    ("step", "2", TypeError, "RuleState.step"),
    ("rng_state", {"bit_generator": "PCG64"}, ValueError, "rng_state"),
    ("rng_state", {"bit_generator": "Nope", "state": {}}, ValueError, "Nope"),
    ("rng_state", {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}},
     ValueError, "not a valid PCG64 state"),
    ("rng_state", [1, 2], ValueError, "rng_state"),
    ("last_delta", np.zeros(4, complex), ValueError, "last_delta"),
    ("last_delta", np.array([1.0, np.inf, 0.0, 0.0]), ValueError, "last_delta"),
    ("last_delta", np.zeros((4, 1)), ValueError, "last_delta"),
    ("last_residual", {"scale:w": np.nan}, ValueError, "last_residual"),
    ("last_residual", [0.0], TypeError, "last_residual"),
    ("last_metric", {"scale:w": "0"}, TypeError, "last_metric"),
]


@pytest.mark.parametrize("name,value,exc,match", BAD_FIELDS,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_FIELDS)])
def test_rule_state_refuses_bad_field(name, value, exc, match):
    """Each malformed field is refused when the state is made, naming the field."""
    kw = _fields(_valid_state())
    kw[name] = value
    with pytest.raises(exc, match=match):
        nc.RuleState(**kw)


@given(name=st.sampled_from(["arrays", "scalars", "last_delta", "last_residual"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.complex_numbers(allow_nan=False, allow_infinity=False),
                       st.booleans(), st.text(max_size=2), st.none()))
@settings(max_examples=60)
def test_rule_state_entries_are_finite_reals(name, value):
    """Whatever one entry of a field holds, the state is either refused with an error
    naming the field, or made with a finite float64 there (never silently something
    else)."""
    kw = _fields(_valid_state())
    if name == "arrays":
        kw["arrays"] = {**kw["arrays"], "exp_avg": np.array([0.0, value, 0.0, 0.0],
                                                             dtype=object)}
    elif name == "scalars":
        kw["scalars"] = {"step": value}
    elif name == "last_delta":
        kw["last_delta"] = np.array([value, 0.0, 0.0, 0.0], dtype=object)
    else:
        kw["last_residual"] = {"scale:w": value}
    try:
        s = nc.RuleState(**kw)
    except (TypeError, ValueError) as e:
        assert name in str(e)
        return
    # only finite reals get through (an object array never does)
    assert name in ("scalars", "last_residual")
    got = s.scalars["step"] if name == "scalars" else s.last_residual["scale:w"]
    assert type(got) is float and np.isfinite(got)
    assert not isinstance(value, (bool, complex, str))


def test_rule_state_normalises_to_float64():
    """Integer buffers and numpy scalars are stored as float64 / float."""
    s = nc.RuleState("SGD", {"momentum_buffer": np.arange(4)}, {"has_buffer": np.int64(1)},
                     np.int64(2))
    assert s.arrays["momentum_buffer"].dtype == np.float64
    assert type(s.scalars["has_buffer"]) is float and type(s.step) is int


def _state_with(rule, pot, q0, **changes):
    s = nc.train(rule, pot, q0, 3).state
    kw = _fields(s)
    kw.update(changes)
    return kw


@pytest.mark.parametrize("charges,block_stats", [(True, False), (False, True), (True, True),
                                                 (False, False)])
@pytest.mark.parametrize("length", [0, 3, 5, 1000])
def test_wrong_length_last_delta_refused(charges, block_stats, length):
    """Finding 2: a hand-made state whose last_delta has the wrong length segfaulted with
    charges or block_stats on; it is refused, naming last_delta and the length."""
    rule = R.SGD(lr=0.05, momentum=0.9)
    s = nc.RuleState(**_state_with(rule, BN, Q0, last_delta=np.zeros(length)))
    with pytest.raises(ValueError, match=r"last_delta must have shape \(4,\)"):
        nc.train(rule, BN, Q0, 5, state=s, charges=charges, block_stats=block_stats)


def test_kernel_refuses_wrong_length_delta():
    """The compiled entry point checks the carried Δ against the potential itself
    (defence in depth behind Rule._check_state)."""
    rule = R.SGD(lr=0.05, momentum=0.9)
    state = rule.init_state(BN)
    inputs = rule.kernel_inputs(BN, state)
    bptr, bidx = _bridge.csr([BN.blocks[n] for n in BN.blocks])
    rec = _bridge.Recording(every=1, bptr=bptr, bidx=bidx, q=np.empty((3, 4)),
                            loss=np.empty(3), g2=np.empty(3),
                            bn2=np.empty((3, len(BN.blocks))), d_last=np.zeros(2))
    with pytest.raises(ValueError, match="d_last has length 2"):
        _bridge.run_train(inputs, BN._kernel, Q0.copy(), 2, rec, _bridge.Batch())
    rec.d_last = np.zeros(4)
    chosen, _ = nc.charges.select(BN, True, None)
    crec = nc.charges.record(BN, chosen, 3, state)
    crec.last_delta = np.zeros(7)
    with pytest.raises(ValueError, match="last_delta has length 7"):
        _bridge.run_train(inputs, BN._kernel, Q0.copy(), 2, rec, _bridge.Batch(),
                          nc.charges.layout(BN, chosen), crec)


@pytest.mark.parametrize("rule,pot,q0,scalars,match", [
    (R.Adam(), BN, Q0, {}, r"missing \['step'\]"),
    (R.SGD(lr=0.1, momentum=0.5), BN, Q0, {}, r"missing \['has_buffer'\]"),
    (R.ScalarRMSProp(), SPLIT, np.ones(5), {"initialised": 1.0},
     r"missing \['G'\]"),
    (R.ScalarRMSProp(), SPLIT, np.ones(5), {"initialised": 1.0, "G": np.ones(2),
                                            "x": 1.0}, r"not used \['x'\]"),
    (R.Adam(), BN, Q0, {"step": -1.0}, "whole number >= 0"),
    (R.Adam(), BN, Q0, {"step": 2.5}, "whole number >= 0"),
    (R.SGD(lr=0.1, momentum=0.5), BN, Q0, {"has_buffer": 0.5}, "0 or 1"),
    (R.ScalarRMSProp(), SPLIT, np.ones(5), {"initialised": 1.0, "G": 1.0},
     r"scalars\['G'\]"),
    (R.ScalarRMSProp(), SPLIT, np.ones(5), {"initialised": 1.0, "G": np.ones(3)},
     r"scalars\['G'\] must hold 2"),
])
def test_scalars_each_rule_needs(rule, pot, q0, scalars, match):
    """Finding 15: missing or out-of-range scalars failed inside NumPy (KeyError) or ran;
    resuming refuses them, naming the scalar."""
    kw = _state_with(rule, pot, q0, scalars=scalars)
    with pytest.raises((ValueError, TypeError), match=match):
        nc.train(rule, pot, q0, 2, state=nc.RuleState(**kw))


def test_extra_buffers_refused_and_edits_after_creation_checked():
    """An unknown buffer is refused on resume; so is a field edited into something
    invalid after the state was made (the dicts are mutable)."""
    rule = R.Adam(lr=0.01)
    s = nc.train(rule, BN, Q0, 3).state
    bad = s.copy()
    bad.arrays["extra"] = np.zeros(4)
    with pytest.raises(ValueError, match="extra"):
        nc.train(rule, BN, Q0, 2, state=bad)
    bad = s.copy()
    bad.arrays["exp_avg"] = np.full(4, 1j)
    with pytest.raises(ValueError, match="exp_avg"):
        nc.train(rule, BN, Q0, 2, state=bad)
    bad = s.copy()
    bad.scalars["step"] = "1"
    with pytest.raises(TypeError, match="step"):
        nc.train(rule, BN, Q0, 2, state=bad)


def test_diverged_state_is_returned_but_not_resumed():
    """A run that diverges returns its state as it is (no error from the validation);
    resuming from it is refused, naming the non-finite field."""
    rule, pot = R.SGD(lr=1e300), Quadratic(np.eye(4))
    for charges in (False, True):
        with pytest.warns(nc.DivergenceWarning):
            res = nc.train(rule, pot, np.full(4, 1e100), 5, charges=charges)
        assert res.diverged and res.stop_step == 0
        assert not np.all(np.isfinite(res.state.last_delta))
        with pytest.raises(ValueError, match="last_delta"):
            nc.train(rule, pot, np.ones(4), 1, state=res.state)


def test_rule_state_still_pickles_and_copies():
    s = _valid_state()
    assert pickle.loads(pickle.dumps(s)) == s
    assert s.copy() == s


# -- finding 7: the last step Δ is carried whatever was tracked --------------------------

def _seam(rule, pot, q0, n, m, legs):
    """run(n) then run(m) resumed, with charges/block_stats per leg; the unbroken run."""
    (c1, b1), (c2, b2) = legs
    full = nc.train(rule, pot, q0, n + m, charges=True)
    first = nc.train(rule, pot, q0, n, charges=c1, block_stats=b1)
    second = nc.train(rule, pot, first.q_final, m, state=first.state, charges=c2,
                      block_stats=b2)
    return full, first, second


@given(rule=st.sampled_from(RULES), n=st.integers(0, 6), m=st.integers(1, 6),
       legs=st.tuples(st.tuples(st.booleans(), st.booleans()),
                      st.tuples(st.just(True), st.booleans())))
@settings(max_examples=60, deadline=None)
def test_charges_at_the_seam(rule, n, m, legs):
    """run(n) + run(m) equals run(n+m) in its charges at the seam, bit for bit, whatever
    the first leg tracked (it reported J = 0 there when the first leg had charges=False);
    and the states carry the same Δ."""
    pot, q0 = (SPLIT, np.ones(5)) if isinstance(rule, R.ScalarRMSProp) else (BN, Q0)
    if isinstance(rule, R.MirrorDescent):
        pot, q0 = BN, Q0
    full, first, second = _seam(rule, pot, q0, n, m, legs)
    for label, c in full.charges.items():
        np.testing.assert_array_equal(second.charges[label].charge, c.charge[n:])
        np.testing.assert_array_equal(second.charges[label].moment, c.moment[n:])
    ref = nc.train(rule, pot, q0, n + m, charges=False)
    np.testing.assert_array_equal(second.state.last_delta, ref.state.last_delta)
    np.testing.assert_array_equal(second.state.last_delta, full.state.last_delta)


@pytest.mark.parametrize("charges,block_stats", [(False, False), (True, False),
                                                 (False, True), (True, True)])
def test_last_delta_is_the_last_step(charges, block_stats):
    """The state's Δ is q_n − q_{n−1} of the last step taken, with any tracking."""
    rule = R.SGD(lr=0.05, momentum=0.9)
    a = nc.train(rule, BN, Q0, 7)
    b = nc.train(rule, BN, Q0, 8, charges=charges, block_stats=block_stats)
    np.testing.assert_array_equal(b.state.last_delta, b.q_final - a.q_final)
    # a 0-step resume carries the Δ it came in with
    c = nc.train(rule, BN, b.q_final, 0, state=b.state, charges=charges,
                 block_stats=block_stats)
    np.testing.assert_array_equal(c.state.last_delta, b.state.last_delta)


def test_last_delta_after_a_stop():
    """A run stopped by a non-finite gradient at step n: with charges on, its state carries
    Δ of step n − 1 exactly; with charges (and block_stats) off the loop copies q only
    before the last step, so a run that stopped earlier carries NaN (it diverged: its
    state cannot be resumed) instead of a stale Δ."""
    calls = {"n": 0}

    def fn(q):
        calls["n"] += 1
        if calls["n"] > 4:
            return np.nan, np.full(3, np.nan)
        return 0.5 * float(q @ q), q.copy()

    pot = nc.potentials.Python(fn, 3)
    with pytest.warns(nc.DivergenceWarning):
        res = nc.train(R.SGD(lr=0.1), pot, np.ones(3), 10, charges=False)
    assert res.stop_step == 4
    assert np.isnan(res.state.last_delta).all()
    calls["n"] = 0
    with pytest.warns(nc.DivergenceWarning):
        res = nc.train(R.SGD(lr=0.1), pot, np.ones(3), 10, charges=True, block_stats=True)
    assert res.stop_step == 4
    np.testing.assert_array_equal(res.state.last_delta, res.q_final - res.q[3])


# -- finding 6: dopri5 at large t_end ----------------------------------------------------

@pytest.mark.parametrize("t_end", [1e13, 1e14, 1e15])
def test_dopri5_large_t_end(t_end):
    """The step floor is 10·eps·|t| (with the first step's scale near t = 0), not
    10·eps·|t_end|, which stopped at t = 0 with "step size underflowed".  Easy problem:
    μ q̇ = b (f = −bᵀq), exact solution q0 + b t/μ, which dopri5 integrates exactly."""
    b = np.array([1.0, -2.0, 0.5])
    model = GradientFlow(Quadratic(np.zeros((3, 3)), b), mu=2.0)
    y0 = np.array([0.3, 0.1, -0.2])
    r = nc.integrate(model, y0, t_end=t_end, method="dopri5")
    assert r.t_final == t_end
    np.testing.assert_allclose(r.y_final, y0 + b * t_end / 2.0, rtol=1e-12)


def test_dopri5_large_t_end_with_outputs():
    """The same with intermediate outputs at small and large times."""
    b = np.array([1.0, -2.0, 0.5])
    model = GradientFlow(Quadratic(np.zeros((3, 3)), b), mu=2.0)
    y0 = np.array([0.3, 0.1, -0.2])
    t_eval = np.array([0.0, 1.0, 1e6, 1e14])
    r = nc.integrate(model, y0, t_end=1e14, method="dopri5", t_eval=t_eval)
    np.testing.assert_allclose(r.y, y0 + np.outer(t_eval, b) / 2.0, rtol=1e-12, atol=1e-15)


# -- findings 17 and 19: scan's arguments as train's ------------------------------------

def _rayleigh():
    M = np.random.default_rng(1).standard_normal((5, 5))
    return RayleighQuotient(M @ M.T + np.eye(5)), np.ones(5)


def test_scan_refuses_overflowing_q0_like_train():
    pot, _ = _rayleigh()
    q0 = np.full(5, 1e200)
    with pytest.raises(ValueError, match="overflows") as e_train:
        nc.train(R.SGD(lr=0.1), pot, q0, 3)
    with pytest.raises(ValueError, match="overflows") as e_scan:
        nc.scan(R.SGD, pot, q0, steps=3, lr=[0.1, 0.2])
    assert str(e_scan.value) == str(e_train.value)


@pytest.mark.parametrize("value", [-1, -(2**40)])
def test_scan_max_record_bytes_validated(value):
    pot, q0 = _rayleigh()
    with pytest.raises(ValueError, match="max_record_bytes"):
        nc.scan(R.SGD, pot, q0, steps=3, lr=[0.1], max_record_bytes=value)
    with pytest.raises(ValueError, match="max_record_bytes"):
        nc.train(R.SGD(lr=0.1), pot, q0, 3, max_record_bytes=value)


@given(seed=st.integers(0, 2**200))
@settings(max_examples=30, deadline=None)
def test_scan_accepts_every_seed_seedsequence_accepts(seed):
    """Any int >= 0 SeedSequence takes (2**70 was told "must be non-negative"); the
    point's stream is point_seed's, as documented."""
    pot = BN
    res = nc.scan(R.SGD, pot, Q0, steps=4, lr=[0.05], seeds=[seed], batch_size=6,
                  charges=False)
    one = nc.train(R.SGD(lr=0.05), pot, Q0, 4, batch_size=6, charges=False,
                   seed=nc.point_seed(seed, 0))
    np.testing.assert_array_equal(res.q[0, 0], one.q_final)


@pytest.mark.parametrize("seeds,match", [
    ([-1], "non-negative"), (-(2**70), "non-negative"), ([1.5], "got 1.5"),
    ([True], "got True"), ([], "empty"), (np.zeros((1, 1), int), "2-D"), ("12", "got"),
    ([3, 3], "repeated"),
])
def test_scan_bad_seeds_say_what_is_allowed(seeds, match):
    pot, q0 = _rayleigh()
    with pytest.raises(ValueError, match=match) as e:
        nc.scan(R.SGD, pot, q0, steps=3, lr=[0.1], seeds=seeds)
    assert "seeds" in str(e.value)


def test_scan_steps_zero_says_why():
    """scan(steps=0) stays refused (its summaries need a step), with a message that says
    why and what to use instead; train(steps=0) works."""
    pot, q0 = _rayleigh()
    assert nc.train(R.SGD(lr=0.1), pot, q0, 0).loss.shape == (1,)
    with pytest.raises(ValueError, match=r"steps >= 1.*train\(\.\.\., steps=0\)"):
        nc.scan(R.SGD, pot, q0, steps=0, lr=[0.1])


def test_scan_balance_residual_none_without_charges():
    """As documented: None when nothing is tracked, an array otherwise."""
    pot, q0 = _rayleigh()
    assert nc.scan(R.SGD, pot, q0, steps=3, lr=[0.1], charges=False).balance_residual is None
    assert nc.scan(R.SGD, pot, q0, steps=3, lr=[0.1], seeds=0).balance_residual.shape == (1,)


@pytest.mark.parametrize("method", ["bogus", "", 3, None])
def test_assert_order_unknown_method(method):
    """A ValueError listing the methods, not a bare KeyError."""
    model = GradientFlow(Quadratic(np.eye(2)), mu=1.0)
    with pytest.raises(ValueError, match="dopri5"):
        assert_order(method, model, np.ones(2), t_end=1.0, hs=[0.1, 0.05, 0.025])


# -- finding 20: the error classes ------------------------------------------------------

def test_error_classes_exported():
    assert nc.IntegrationError is errors.IntegrationError
    assert nc.CallbackError is errors.CallbackError
    assert nc.potentials.CallbackError is errors.CallbackError     # one class, not two
    from noether_core._integrate import IntegrationError
    assert IntegrationError is errors.IntegrationError
    assert {"IntegrationError", "CallbackError"} <= set(nc.__all__) & set(errors.__all__)


def test_error_classes_pickle():
    e = errors.CallbackError("fn raised at step 3", 3)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is errors.CallbackError and back.step == 3 and str(back) == str(e)
    ie = pickle.loads(pickle.dumps(errors.IntegrationError("underflow")))
    assert type(ie) is errors.IntegrationError and str(ie) == "underflow"
