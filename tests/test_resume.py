"""Resume: a rule's state is a first-class value (SPEC §1, issue 2 item 4).

``train(n)`` equals ``train(k)`` followed by ``train(n − k, state=first.state)`` BITWISE —
q, every state array and scalar, the RNG position, and the recorded rows — for every
rule and every option that carries state, full batch and minibatch (docs/rules.md §3 for
the contract).  Equality is exact (``assert_array_equal``), not approximate: the resumed
loop executes the very same floating-point operations on the very same values, and the
minibatch draws continue from the saved bit-generator state, so any difference at all is
a bug (a lost buffer, a reset step count, a re-seeded generator, a consumed draw).
"""
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import rules as R
from noether_core.potentials import BatchNormUnit, Potential, RayleighQuotient
from noether_core.symmetry import Symmetry


def _bn():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 4)) * np.array([1.0, 2.0, 0.5, 1.5])
    y = np.cos(X @ rng.standard_normal(4))
    return BatchNormUnit(X, y)


def _split():
    """Rayleigh quotient on R^5 with a scale block "a" = q[:3] and a plain block "b",
    so ScalarRMSProp(per_block=True) carries two scalars G."""
    M = np.random.default_rng(6).standard_normal((5, 5))
    ker = RayleighQuotient(M @ M.T + np.eye(5))._kernel
    return Potential(ker, {"a": np.arange(3), "b": np.arange(3, 5)},
                     (Symmetry("scale", ("a",)),), ())


BN = _bn()
SPLIT = _split()
Q0 = np.array([0.8, -0.4, 1.1, 0.3])
Q0_POS = np.abs(Q0) + 0.1

# every rule, and every option that adds state or changes how state is used
STATEFUL = [
    R.SGD(lr=0.05),
    R.SGD(lr=0.05, momentum=0.9),
    R.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    R.SGD(lr=0.05, momentum=0.5, dampening=0.3),
    R.RMSprop(lr=0.005),
    R.RMSprop(lr=0.002, momentum=0.5, centered=True, weight_decay=0.01),
    R.Adam(lr=0.01),
    R.Adam(lr=0.01, amsgrad=True, weight_decay=0.02),
    R.AdamW(lr=0.01, amsgrad=True),
    R.ScalarRMSProp(lr=0.01),
    R.ScalarRMSProp(lr=0.01, G0=1.0, per_block=False, weight_decay=0.01),
    R.MirrorDescent(lr=0.05, mirror="pnorm", p=3.0),
    R.MirrorDescent(lr=0.05, mirror="entropy"),
]


def _id(rule):
    p = ",".join(f"{k}={v}" for k, v in rule.params().items() if v not in (None, 0.0))
    return f"{type(rule).__name__}({p})"


def _q0(rule):
    return Q0_POS if isinstance(rule, R.MirrorDescent) and rule.mirror == "entropy" else Q0


def assert_states_equal(a, b):
    assert a.rule == b.rule and a.step == b.step
    assert a.arrays.keys() == b.arrays.keys() and a.scalars.keys() == b.scalars.keys()
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    for k in a.scalars:
        np.testing.assert_array_equal(a.scalars[k], b.scalars[k])
    assert a.rng_state == b.rng_state
    assert a == b                                   # RuleState.__eq__ agrees


def assert_split_equals_whole(rule, pot, q0, n, k, batch_size, seed, record_every=1):
    """train(n) vs train(k) + train(n−k, state=...), bitwise."""
    whole = nc.train(rule, pot, q0, n, batch_size=batch_size, seed=seed,
                     record_every=record_every)
    first = nc.train(rule, pot, q0, k, batch_size=batch_size, seed=seed,
                     record_every=record_every)
    second = nc.train(rule, pot, first.q_final, n - k, batch_size=batch_size,
                      state=first.state, record_every=record_every)
    np.testing.assert_array_equal(second.q_final, whole.q_final)
    assert_states_equal(second.state, whole.state)
    assert second.state.step == n and first.state.step == k
    if k % record_every == 0:
        # the first run's last row (step k) is its terminal row, whose loss is taken on the
        # full data; the whole run and the second run record step k as a training step
        # (its minibatch loss): so q rows join with the seam row once, losses from second
        np.testing.assert_array_equal(first.q[-1], second.q[0])
        np.testing.assert_array_equal(first.steps[-1], second.steps[0])
        joined = slice(None, -1) if len(first.steps) else slice(None)
        np.testing.assert_array_equal(np.concatenate([first.steps[joined], second.steps]),
                                      whole.steps)
        np.testing.assert_array_equal(np.vstack([first.q[joined], second.q]), whole.q)
        for name in ("loss", "grad_norm2"):
            np.testing.assert_array_equal(
                np.concatenate([getattr(first, name)[joined], getattr(second, name)]),
                getattr(whole, name))
        for b in whole.block_norm2:
            np.testing.assert_array_equal(
                np.concatenate([first.norm2(b)[joined], second.norm2(b)]), whole.norm2(b))
        if batch_size is None:
            # full batch: the terminal row is an ordinary row
            np.testing.assert_array_equal(first.loss[-1], second.loss[0])
    else:
        # rows of the second run are at k, k + r, ... (global step numbers)
        np.testing.assert_array_equal(second.steps,
                                      k + record_every * np.arange(len(second.steps)))
    return whole, first, second


@pytest.mark.parametrize("rule", STATEFUL, ids=_id)
@pytest.mark.parametrize("batch_size", [None, 6], ids=["full", "minibatch"])
@pytest.mark.parametrize("record_every", [1, 5, 3])
def test_two_halves_equal_one_run(rule, batch_size, record_every):
    """Two runs of n/2 = 50 steps equal one run of n = 100 steps, bit for bit
    (rows compared where record_every divides n/2: 1 and 5; q_final and state for 3)."""
    assert_split_equals_whole(rule, BN, _q0(rule), 100, 50, batch_size, 1234,
                              record_every)


@pytest.mark.parametrize("rule", [R.ScalarRMSProp(lr=0.02),
                                  R.ScalarRMSProp(lr=0.02, G0=0.5, rho=0.9)], ids=_id)
def test_scalar_rmsprop_two_blocks_resume(rule):
    """Per-block G (two parts) survives the resume."""
    whole, _, second = assert_split_equals_whole(rule, SPLIT, np.linspace(-1, 1, 5) + 0.3,
                                                 80, 40, None, None)
    assert whole.state.scalars["G"].shape == (2,)
    assert whole.state.scalars["G"][0] != whole.state.scalars["G"][1]


@given(rule=st.sampled_from(STATEFUL), k=st.integers(0, 60), minibatch=st.booleans(),
       seed=st.integers(0, 2**63), batch=st.integers(2, 30))
def test_any_split_point(rule, k, minibatch, seed, batch):
    """train(60) == train(k) + train(60 − k) for every k in [0, 60], including the empty
    runs k = 0 and k = 60 (hypothesis)."""
    assert_split_equals_whole(rule, BN, _q0(rule), 60, k, batch if minibatch else None,
                              seed if minibatch else None)


def test_many_short_runs_equal_one_long_run():
    """Chaining 10 runs of 7 steps = one run of 70 (minibatch, Adam with amsgrad)."""
    rule = R.Adam(lr=0.01, amsgrad=True)
    whole = nc.train(rule, BN, Q0, 70, batch_size=5, seed=9)
    q, state = Q0, None
    for i in range(10):
        run = nc.train(rule, BN, q, 7, batch_size=5, seed=9 if i == 0 else None,
                       state=state)
        q, state = run.q_final, run.state
    np.testing.assert_array_equal(q, whole.q_final)
    assert_states_equal(state, whole.state)


def test_generator_seed_and_resume():
    """A Generator passed as seed is advanced by the run; its stream and the state's
    saved RNG continue identically."""
    rule = R.SGD(lr=0.05, momentum=0.9)
    gen = np.random.default_rng(77)
    first = nc.train(rule, BN, Q0, 30, batch_size=6, seed=gen)
    assert gen.bit_generator.state == first.state.rng_state          # advanced in place
    by_state = nc.train(rule, BN, first.q_final, 30, batch_size=6, state=first.state)
    by_gen = nc.train(rule, BN, first.q_final, 30, batch_size=6, seed=gen,
                      state=first.state)
    np.testing.assert_array_equal(by_state.q, by_gen.q)
    whole = nc.train(rule, BN, Q0, 60, batch_size=6, seed=77)
    np.testing.assert_array_equal(by_state.q_final, whole.q_final)


def test_resuming_does_not_consume_the_state():
    """train(..., state=s) copies s: the same state resumed twice gives the same run, and
    s (buffers, step, RNG position) is unchanged."""
    rule = R.RMSprop(lr=0.005, momentum=0.5, centered=True)
    first = nc.train(rule, BN, Q0, 20, batch_size=6, seed=3)
    snapshot = pickle.loads(pickle.dumps(first.state))
    a = nc.train(rule, BN, first.q_final, 20, batch_size=6, state=first.state)
    b = nc.train(rule, BN, first.q_final, 20, batch_size=6, state=first.state)
    np.testing.assert_array_equal(a.q, b.q)
    assert_states_equal(first.state, snapshot)


# --------------------------------------------------------------------------------------
# explicit states

def test_with_buffer_is_honoured():
    """SGD.with_buffer: the first step uses the given buffer v_0 (not v = d):
    v_1 = β v_0 + (1 − τ) d_0, q_1 = q_0 − η v_1, d_0 = g_0 + k q_0 — computed here in the
    kernel's operation order, so equality is exact."""
    lr, beta, damp, k = 0.05, 0.9, 0.2, 0.01
    rule = R.SGD(lr=lr, momentum=beta, dampening=damp, weight_decay=k)
    v0 = np.array([0.3, -0.2, 0.1, 0.5])
    state = rule.with_buffer(BN, v0)
    assert state.scalars["has_buffer"] == 1.0 and state.step == 0
    res = nc.train(rule, BN, Q0, 1, state=state)
    d0 = BN.grad(Q0) + k * Q0
    v1 = v0 * beta + (1.0 - damp) * d0
    np.testing.assert_array_equal(res.state.arrays["momentum_buffer"], v1)
    np.testing.assert_array_equal(res.q_final, Q0 + (-lr) * v1)
    fresh = nc.train(rule, BN, Q0, 1)                      # torch's first step: v = d
    np.testing.assert_array_equal(fresh.state.arrays["momentum_buffer"], d0)
    np.testing.assert_array_equal(v0, [0.3, -0.2, 0.1, 0.5])   # caller's array untouched


def test_with_buffer_validates():
    rule = R.SGD(lr=0.05, momentum=0.9)
    with pytest.raises(ValueError, match="momentum_buffer"):
        rule.with_buffer(BN, np.zeros(3))
    with pytest.raises(ValueError, match="momentum_buffer"):
        rule.with_buffer(BN, [0.0, np.nan, 0.0, 0.0])


def test_edited_state_is_honoured():
    """A state built by hand from another run's state (here: Adam's moments carried over,
    step count reset) is used as given — the run differs from the unedited resume in the
    way the bias correction predicts (the first resumed step is a full-size step)."""
    rule = R.Adam(lr=0.01)
    first = nc.train(rule, BN, Q0, 10)
    edited = nc.RuleState("Adam", {k: v.copy() for k, v in first.state.arrays.items()},
                          {"step": 0.0}, 0)
    a = nc.train(rule, BN, first.q_final, 1, state=edited)
    b = nc.train(rule, BN, first.q_final, 1, state=first.state)
    assert a.state.scalars["step"] == 1.0 and b.state.scalars["step"] == 11.0
    assert not np.array_equal(a.q_final, b.q_final)


BAD_STATES = [
    (R.SGD(lr=0.05, momentum=0.9), lambda s: nc.train(R.Adam(), BN, Q0, 1, state=s),
     ValueError, "Adam"),
    (R.Adam(), lambda s: nc.train(R.AdamW(), BN, Q0, 1, state=s), ValueError, "AdamW"),
    (R.SGD(lr=0.05, momentum=0.9),
     lambda s: nc.train(R.SGD(lr=0.05, momentum=0.9), SPLIT, np.ones(5), 1, state=s),
     ValueError, "momentum_buffer"),
    (R.Adam(),
     lambda s: nc.train(R.Adam(), BN, Q0, 1, state=nc.RuleState(
         "Adam", {**s.arrays, "exp_avg": np.full(4, np.inf)}, s.scalars, s.step)),
     ValueError, "exp_avg"),
    (R.ScalarRMSProp(),
     lambda s: nc.train(R.ScalarRMSProp(), SPLIT, np.ones(5), 1, state=s),
     ValueError, "G"),
    (R.SGD(lr=0.05), lambda s: nc.train(R.SGD(lr=0.05), BN, Q0, 1, state=s.arrays),
     TypeError, "state"),
]


@pytest.mark.parametrize("rule,call,exc,match", BAD_STATES,
                         ids=["other-rule", "adam-vs-adamw", "wrong-shape", "non-finite",
                              "wrong-part-count", "not-a-state"])
def test_bad_state_raises(rule, call, exc, match):
    """Resuming with a state of another rule, of the wrong shape or non-finite raises,
    naming what is wrong."""
    state = nc.train(rule, BN, Q0, 3).state
    with pytest.raises(exc, match=match):
        call(state)


@pytest.mark.parametrize("rule", STATEFUL, ids=_id)
def test_rule_state_pickles(rule):
    """RuleState (arrays, scalars, step, RNG position) survives pickling, and a run
    resumed from the unpickled state is the same run."""
    first = nc.train(rule, BN, _q0(rule), 20, batch_size=6, seed=8)
    back = pickle.loads(pickle.dumps(first.state))
    assert_states_equal(back, first.state)
    a = nc.train(rule, BN, first.q_final, 20, batch_size=6, state=back)
    b = nc.train(rule, BN, first.q_final, 20, batch_size=6, state=first.state)
    np.testing.assert_array_equal(a.q, b.q)
    assert pickle.loads(pickle.dumps(rule)) == rule


@pytest.mark.parametrize("rule", STATEFUL, ids=_id)
def test_state_copy_is_independent(rule):
    """RuleState.copy() is a deep copy: editing the copy's arrays or array-valued scalars
    (ScalarRMSProp's per-part G) in place leaves the original untouched."""
    state = nc.train(rule, BN, _q0(rule), 5, batch_size=6, seed=1).state
    snapshot = pickle.loads(pickle.dumps(state))
    c = state.copy()
    assert_states_equal(c, state)
    for v in c.arrays.values():
        v += 1.0
    for v in c.scalars.values():
        if isinstance(v, np.ndarray):
            v += 1.0
    assert_states_equal(state, snapshot)
