"""The training loop's direct pass for one scale law on all of q (docs/balance_laws.md
(9.6)).

When the only tracked law is a scale symmetry whose block is coordinates 0 .. d-1 in
order (RayleighQuotient's, BatchNormUnit's), ``_run_steps`` forms T_n, A_{n+1}, A_n,
|Δ_{n+1}|² and the last Δ in one directly indexed loop (``_law_all``) instead of the
general pass (``_charges_after``: Δ in a pass of its own, the sums through the block's
index list).  (9.6) says the two give the same bits.  Checked here by tracking a second
law (a translation) next to the scale law, which sends the same run through the general
pass, and comparing every recorded residual, charge, moment, the worst and its step and
the state's last Δ bit for bit; for every rule that takes the pass (the fused free steps of
SGD, Adam/AdamW and RMSprop, and ScalarRMSProp's copied one), d = 1 .. 17, every row
recorded or few, and a run resumed in chunks (its first step sums A_n afresh, (9.5)).
"""
import numpy as np
import pytest

import noether_core as nc

SCALE_Q = nc.symmetry.Symmetry("scale", ("q",))


def _bits(a):
    return np.asarray(a, dtype=np.float64).view(np.uint64)


def _rq(d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(a @ a.T / d + np.eye(d)), rng.standard_normal(d)


def _translation(d):
    return nc.symmetry.Symmetry("translation", ("q",), exact=False,
                                direction=np.ones(d) / np.sqrt(d))


RULES = [
    nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
    nc.rules.SGD(lr=0.05, momentum=0.9, nesterov=True),
    nc.rules.SGD(lr=0.1),
    nc.rules.AdamW(lr=1e-2, weight_decay=1e-2),
    nc.rules.Adam(lr=1e-2, weight_decay=1e-3),
    nc.rules.Adam(lr=1e-2, amsgrad=True),
    nc.rules.RMSprop(lr=1e-2, momentum=0.5, centered=True),
    nc.rules.ScalarRMSProp(lr=1e-2),
]


def _same(a, b):
    """The scale law's series and the state of two runs, bit for bit."""
    ca, cb = a.charges["scale:q"], b.charges["scale:q"]
    for name in ("residual", "charge", "moment"):
        assert np.array_equal(_bits(getattr(ca, name)), _bits(getattr(cb, name))), name
    assert _bits(ca.worst) == _bits(cb.worst)
    assert ca.worst_step == cb.worst_step
    assert np.array_equal(_bits(a.q_final), _bits(b.q_final))
    assert np.array_equal(_bits(a.state.last_delta), _bits(b.state.last_delta))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: repr(r)[:40])
@pytest.mark.parametrize("d", [1, 2, 3, 8, 17])
@pytest.mark.parametrize("every", [1, 7])
def test_direct_pass_is_the_general_pass(rule, d, every):
    """(9.6): one law on all of q (the direct pass) against the same law tracked next to
    a translation (the general pass)."""
    pot, q0 = _rq(d)
    steps = 40
    one = nc.train(rule, pot, q0, steps, record_every=every, charges=[SCALE_Q])
    two = nc.train(rule, pot, q0, steps, record_every=every,
                   charges=[SCALE_Q, _translation(d)])
    assert list(one.charges) == ["scale:q"]
    _same(one, two)
    # the residual is the round-off of a law, not zero, so a dropped or reordered term
    # would show (d = 1: the Rayleigh quotient is constant, g = 0 and every term exact)
    if d >= 3:
        assert one.charges["scale:q"].worst > 0.0


@pytest.mark.parametrize("rule", RULES[:1] + RULES[3:4] + RULES[6:7],
                         ids=lambda r: repr(r)[:40])
def test_direct_pass_resumed_in_chunks(rule):
    """A run in chunks of 5 steps (each chunk's first step sums A_n afresh and starts
    from the state's last Δ) equals the unbroken run, both through the direct pass."""
    pot, q0 = _rq(8, seed=3)
    full = nc.train(rule, pot, q0, 30, record_every=5, charges=[SCALE_Q])
    q, st, worst = q0.copy(), None, 0.0
    for _ in range(6):
        part = nc.train(rule, pot, q, 5, state=st, record_every=5, charges=[SCALE_Q])
        worst = max(worst, part.charges["scale:q"].worst)
        q, st = part.q_final, part.state
    assert np.array_equal(_bits(full.q_final), _bits(q))
    assert np.array_equal(_bits(full.state.last_delta), _bits(st.last_delta))
    assert _bits(full.charges["scale:q"].worst) == _bits(worst)


def test_direct_pass_keeps_delta_at_a_stop():
    """A step that overflows q (a finite gradient of 1e300 at the fourth call) stops the
    run as "non-finite parameters" before the law's pass, so the state's last Δ stays the
    step before's, as on the general pass."""
    d = 5

    def make():
        calls = [0]

        def fn(q):
            calls[0] += 1
            return 0.0, (np.full(d, 1e300) if calls[0] == 4 else 0.5 * q + 0.1)
        return nc.potentials.Python(fn, d)
    rule = nc.rules.SGD(lr=1e10, momentum=0.9)
    q0 = np.linspace(-1.0, 1.0, d)
    with pytest.warns(nc.errors.DivergenceWarning):
        one = nc.train(rule, make(), q0, 10, record_every=1, charges=[SCALE_Q])
    with pytest.warns(nc.errors.DivergenceWarning):
        two = nc.train(rule, make(), q0, 10, record_every=1,
                       charges=[SCALE_Q, _translation(d)])
    assert one.stop_step == two.stop_step == 3
    assert "parameters" in one.stop_reason and one.stop_reason == two.stop_reason
    assert np.all(np.isfinite(one.state.last_delta))
    assert np.array_equal(_bits(one.state.last_delta), _bits(two.state.last_delta))
