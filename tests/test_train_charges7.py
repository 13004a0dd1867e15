"""The training loop's direct pass for one scale law on all of q (docs/balance_laws.md
(9.6)), and AdamW's free quotients two pairs per division (9.7).

When the only tracked law is a scale symmetry whose block is coordinates 0 .. d-1 in
order (RayleighQuotient's, BatchNormUnit's), ``_run_steps`` forms T_n, A_{n+1}, A_n,
|Δ_{n+1}|² and the last Δ in one directly indexed loop (``_law_all_sums``) instead of the
general pass (``_charges_after``: Δ in a pass of its own, the sums through the block's
index list).  (9.6) says the two give the same bits.  Checked here by tracking a second
law (a translation) next to the scale law, which sends the same run through the general
pass, and comparing every recorded residual, charge, moment, the worst and its step and
the state's last Δ bit for bit; for every rule that takes the pass (the fused free steps of
SGD, Adam/AdamW and RMSprop, and ScalarRMSProp's copied one), d = 1 .. 17, every row
recorded or few, and a run resumed in chunks (its first step sums A_n afresh, (9.5)).

(9.7) is checked against AdamW's free step written out in Python floats with the
operations of (8.1)–(8.3) (the carried root, the free numerator and denominator, the
pair quotients, the direct quotient for a pair whose product is not normal and for the
odd last coordinate), at the kernel's own states, and the law summed in order: every
step's residual bit for bit, for d = 1 … 11 (four coordinates per vector division, a
lone last pair, an odd last coordinate), before and after the bias corrections
saturate (9.1), and with pairs whose product is subnormal.

(9.8) is checked at a stop (q_{n+1} overflows under the adaptive rules, whose direct pass
sums the law before the finiteness test) and with finite coordinates whose |q|²
overflows, which must not stop the run.
"""
import math
import warnings

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
    run as "non-finite parameters".  Recording every step, SGD takes the direct pass's
    (9.8) order: the stopping step's sums and Δ are formed (Δ into the spare buffer) but
    not committed, so the state's last Δ stays the step before's, as on the general
    pass, which stops before its law's pass."""
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


def _adamw_free_pairs(hp, q, st):
    """AdamW's free step (g = 0) with the operations of docs/balance_laws.md (8.1)–(8.3),
    in Python floats (IEEE doubles, each operation rounded once, as the kernel's)."""
    lr, b1, b2, eps, wd = hp[:5]
    m1, m2 = st.arrays["exp_avg"], st.arrays["exp_avg_sq"]
    step = st.scalars["step"] + 1.0
    bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    nss = -(lr / bc1) if bc1 != 1.0 else -lr
    bc2s = math.sqrt(bc2) if bc2 != 1.0 else 1.0
    decay = 1.0 - lr * wd if wd != 0.0 else 1.0
    sb2, w1 = math.sqrt(b2), 1.0 - b1
    d = len(q)
    num = [nss * (float(m1[i]) + w1 * (0.0 - float(m1[i]))) for i in range(d)]
    root = [math.sqrt(float(m2[i])) for i in range(d)]
    den = [(sb2 * root[i] + eps) if bc2s == 1.0 else ((sb2 * root[i]) * (1.0 / bc2s) + eps)
           for i in range(d)]
    qf = [0.0] * d
    for i in range(0, d - 1, 2):
        p = den[i] * den[i + 1]
        if 2.0 ** -1022 <= p <= 2.0 ** 1022:
            ip = 1.0 / p
            qf[i] = float(q[i]) * decay + num[i] * (den[i + 1] * ip)
            qf[i + 1] = float(q[i + 1]) * decay + num[i + 1] * (den[i] * ip)
        else:
            qf[i] = float(q[i]) * decay + num[i] / den[i]
            qf[i + 1] = float(q[i + 1]) * decay + num[i + 1] / den[i + 1]
    if d % 2 == 1:
        qf[d - 1] = float(q[d - 1]) * decay + num[d - 1] / den[d - 1]
    return qf


def _law(q0, q1, qf):
    """The scale law's relative residual, each sum from 0.0 in coordinate order (9.6)."""
    t = a1 = a0 = dd = 0.0
    for i in range(len(q0)):
        x = qf[i] - float(q0[i])
        t = t + x * float(q0[i])
        a1 = a1 + float(q1[i]) * float(q1[i])
        a0 = a0 + float(q0[i]) * float(q0[i])
        x = float(q1[i]) - float(q0[i])
        dd = dd + x * x
    R = (a1 - a0 - dd) - 2.0 * t
    sc = (a1 + a0 + dd) + 2.0 * abs(t)
    return abs(R) / sc if sc > 0.0 else (0.0 if R == 0.0 else 1.0)


@pytest.mark.parametrize("d", list(range(1, 12)))
@pytest.mark.parametrize("rule,warm", [
    (nc.rules.AdamW(lr=3e-2, weight_decay=1e-2), 0),                 # not saturated
    (nc.rules.AdamW(lr=3e-2, weight_decay=1e-2, betas=(0.6, 0.6)), 200),   # saturated
    (nc.rules.Adam(lr=3e-2), 0),                                     # no decay
])
def test_free_pairs_bitwise(rule, warm, d):
    """(9.7): the fused free step's residual is, bit for bit, the law of the free step
    formed with (8.1)–(8.3)'s operations in Python floats.  Every case takes the pair
    pass (1 − β₁ < 0.5); the saturated one's corrections are exactly 1 after 200 steps
    (0.6²⁰⁰ < 2⁻⁵⁴), so its free denominators take the branch without 1/sqrt(bc₂)."""
    assert 1.0 - rule.betas[0] < 0.5
    if warm:
        assert 1.0 - rule.betas[1] ** warm == 1.0 and 1.0 - rule.betas[0] ** warm == 1.0
    pot, q0 = _rq(d, seed=d)
    if warm:
        pre = nc.train(rule, pot, q0, warm, charges=False)
        q0, st = pre.q_final, pre.state
    else:
        st = nc.train(rule, pot, q0, 0).state
    steps = 15
    run = nc.train(rule, pot, q0, steps, state=st, record_every=1, charges=[SCALE_Q])
    hp = tuple(float(x) for x in rule._hp(pot)[:5])
    q, expected = q0.copy(), []
    for _ in range(steps):
        one = nc.train(rule, pot, q, 1, state=st, charges=False)
        expected.append(_law(q, one.q_final, _adamw_free_pairs(hp, q, st)))
        q, st = one.q_final, one.state
    assert np.array_equal(_bits(run.q_final), _bits(q))
    assert np.array_equal(_bits(run.charges["scale:q"].residual[1:]), _bits(expected))
    if d >= 3:
        assert max(expected) > 1e-9          # a breaking law: a wrong quotient shows


@pytest.mark.parametrize("d,tiny", [(9, slice(None)), (10, slice(8, 10)),
                                    (6, slice(4, 6)), (8, slice(4, 8))])
def test_free_pairs_not_normal(d, tiny):
    """(8.3)'s fallback inside the vector pass: where exp_avg_sq ~ 1e-320 (its root
    ~1e-160) and eps = 1e-170 the free denominators are ~3e-159 and a pair's product
    ~1e-317 is subnormal, so that pair's quotients are divided directly; the residual is
    still bit for bit the written-out law's (a reciprocal of a subnormal product overflows
    to inf and would show).  The subnormal pairs: every one (d = 9: two vector blocks and
    the odd last coordinate), only a lone last pair after normal vector blocks (d = 10,
    d = 6: the flag of the lone pair alone), only the second vector block (d = 8)."""
    pot, q0 = _rq(d, seed=5)
    rule = nc.rules.AdamW(lr=1e-3, weight_decay=1e-2, eps=1e-170)
    st = nc.train(rule, pot, q0, 0).state
    arrays = dict(st.arrays)
    arrays["exp_avg"] = np.full(d, 1e-3)
    arrays["exp_avg_sq"] = np.full(d, 1e-4)
    arrays["exp_avg"][tiny] = 1e-300
    arrays["exp_avg_sq"][tiny] = 1e-320
    st = nc.rules.RuleState(rule=st.rule, arrays=arrays, scalars=dict(st.scalars),
                            step=st.step)
    hp = tuple(float(x) for x in rule._hp(pot)[:5])
    run = nc.train(rule, pot, q0, 1, state=st, record_every=1, charges=[SCALE_Q])
    one = nc.train(rule, pot, q0, 1, state=st, charges=False)
    qf = _adamw_free_pairs(hp, q0, st)
    assert all(math.isfinite(x) for x in qf)
    assert _bits(run.charges["scale:q"].residual[1]) == _bits(_law(q0, one.q_final, qf))


# (9.8): the direct pass's A_{n+1} = |q_{n+1}|² as the step's finiteness test.  Rules
# other than SGD (whose late-gradient path keeps its own test) form the law's sums before
# deciding whether the step stops; Δ_{n+1} goes to a spare buffer until the step is known
# finite.  Each run is compared with the same run through the general pass (a translation
# tracked next to the scale law), which tests every step with the probe after the step.
STOPPING = [
    nc.rules.Adam(lr=1e307),
    nc.rules.AdamW(lr=1e307, weight_decay=0.0),
    nc.rules.RMSprop(lr=1e306),
    nc.rules.ScalarRMSProp(lr=1e307),
]


def _constant_gradient(d):
    """A potential whose gradient is 1 everywhere, whatever q: with lr ~ 10³⁰⁶–10³⁰⁷
    the adaptive steps (each ~lr) carry q past -1.8·10³⁰⁸ after some steps."""
    return nc.potentials.Python(lambda q: (0.0, np.ones(d)), d)


@pytest.mark.parametrize("rule", STOPPING, ids=lambda r: repr(r)[:40])
@pytest.mark.parametrize("every", [1, 3])
def test_probe_skip_stop_keeps_delta(rule, every):
    """A step whose q_{n+1} is infinite stops the run where the general pass stops it,
    with the same last Δ (the step before's, finite), residuals, worst, charges and q (the
    stopping step's, kept for inspection): the Δ written into the spare buffer at the
    stopping step is not made the state's."""
    d = 6
    q0 = np.linspace(-1.0, 1.0, d)
    with pytest.warns(nc.errors.DivergenceWarning):
        one = nc.train(rule, _constant_gradient(d), q0, 400, record_every=every,
                       charges=[SCALE_Q])
    with pytest.warns(nc.errors.DivergenceWarning):
        two = nc.train(rule, _constant_gradient(d), q0, 400, record_every=every,
                       charges=[SCALE_Q, _translation(d)])
    assert one.diverged and two.diverged
    assert one.stop_step == two.stop_step and one.stop_step >= 2
    assert "parameters" in one.stop_reason and one.stop_reason == two.stop_reason
    assert not np.all(np.isfinite(one.q_final)) and np.all(np.isfinite(one.state.last_delta))
    assert np.any(one.state.last_delta != 0.0)
    _same(one, two)


def test_overflowing_norm_does_not_stop():
    """(9.8)'s converse: finite coordinates whose |q|² overflows (q0_i = ±6·10¹⁵³, |q0|² =
    1.44·10³⁰⁸, carried outward by steps of ~10¹⁵³) give a non-finite A_{n+1}, and the
    probe, not A_{n+1}, decides: the kernel runs every step, with the parameters of the run
    without charges and the general pass's law, bit for bit.  (The recorded |q_B|² that
    overflowed is reported as such, the parameters staying finite.)"""
    d = 4
    sign = np.array([1.0, -1.0, 1.0, -1.0])
    pot = nc.potentials.Python(lambda q: (0.0, -sign), d)
    q0 = 6e153 * sign
    rule = nc.rules.AdamW(lr=1e153, weight_decay=1e-158)   # lr · weight_decay = 1e-5
    runs = []
    for charges in ([SCALE_Q], [SCALE_Q, _translation(d)], False):
        with pytest.warns(nc.errors.DivergenceWarning, match="parameters stayed finite"):
            runs.append(nc.train(rule, pot, q0, 12, record_every=1, charges=charges))
    one, two, off = runs
    assert one.steps[-1] == 12 and len(one.steps) == 13
    assert np.all(np.isfinite(one.q_final)) and np.all(np.abs(one.q_final) > 1e154)
    assert not np.isfinite(one.charges["scale:q"].moment[-1])
    assert np.array_equal(_bits(one.q_final), _bits(off.q_final))
    _same(one, two)


@pytest.mark.parametrize("rule_cls", [nc.rules.Adam, nc.rules.RMSprop])
def test_probe_skip_in_scan(rule_cls):
    """The scan's scalar kernel (a Python potential has no lanes) takes the direct pass
    with its own charge buffers: every point, finishing or stopped at a non-finite
    q_{n+1}, ends with the q, stop step and the law's worst and its step of ``train``
    through the general pass (the law tracked next to a translation), bit for bit."""
    d = 6
    q0 = np.linspace(-1.0, 1.0, d)
    lrs = [1e-2, 1e306, 1e307]
    with pytest.warns(nc.errors.DivergenceWarning, match="parameters after the update"):
        res = nc.scan(rule_cls, _constant_gradient(d), q0, steps=100, lr=lrs, seeds=0,
                      charges=[SCALE_Q])
    stopped = 0
    for i, lr in enumerate(lrs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nc.errors.DivergenceWarning)
            tr = nc.train(rule_cls(lr=lr), _constant_gradient(d), q0, 100, record_every=101,
                          charges=[SCALE_Q, _translation(d)])
        assert np.array_equal(_bits(res.q[i]), _bits(tr.q_final))
        assert res.stop_step[i] == (-1 if tr.stop_step is None else tr.stop_step)
        stopped += tr.stop_step is not None
        law = tr.charges["scale:q"]
        assert _bits(res.charge_worst["scale:q"][i]) == _bits(law.worst)
        assert res.charge_worst_step["scale:q"][i] == law.worst_step
    assert stopped >= 1
