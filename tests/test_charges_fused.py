"""The fused free steps of the balance laws (docs/balance_laws.md §8).

The kernel takes each rule's free step (g_n = 0, the same state) in the same pass as the
step; for Adam and RMSprop it forms the free denominator from the carried root,
(8.1)–(8.2) and (8.4), and the free quotients two at a time, (8.3).  Checked here
against the *unfused* free step written out in NumPy with torch.optim's operations (a
square root and a division or two per coordinate), evaluated at the kernel's own states
(a run chained one step at a time is bitwise the unbroken run, so its states are the
unbroken run's):

* the relative residual of every step agrees to 1e-13 absolute.  §8 bounds the change of
  the residual by ~20u|Δ^free|_B/|q_n|_B < 1e-15; NumPy's sums in another order add
  ~d·u·(their scale) ≈ 2e-15 in the residual's units — 1e-13 is 50× that margin, and a
  swapped or missing pair term changes Adam's residual (1e-6 … 1e-2 here) by its own
  size;
* the trajectory is bitwise that of a run without charges (the real step is untouched).
"""
import numpy as np
import pytest

import noether_core as nc


def _problem(d, seed=11):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(a @ a.T / d + np.eye(d)), rng.standard_normal(d)


def _lerp(a, b, w):
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (1.0 - w)


def _free_adam(hp, q, st):
    """torch.optim.Adam(W)'s step with zero gradient from (q, state): the unfused free
    step (docs/balance_laws.md §1), one sqrt and two divisions per coordinate."""
    lr, b1, b2, eps, wd, ams, dec = hp
    m1, m2, mx = (st.arrays[k] for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    step = st.scalars["step"] + 1.0
    bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    out = q.copy()
    for i in range(len(q)):
        g = 0.0
        if wd != 0.0:
            if dec:
                out[i] = q[i] * (1.0 - lr * wd)
            else:
                g = 0.0 + wd * q[i]
        m1f = _lerp(m1[i], g, 1.0 - b1)
        m2f = m2[i] * b2 + ((1.0 - b2) * g) * g
        s = max(m2f, mx[i]) if ams else m2f
        out[i] = out[i] + ((-(lr / bc1)) * m1f) / (np.sqrt(s) / np.sqrt(bc2) + eps)
    return out


def _free_rmsprop(hp, q, st):
    """torch.optim.RMSprop's step with zero gradient from (q, state), unfused."""
    lr, alpha, eps, wd, mom, centered = hp
    sq, buf, ga = (st.arrays[k] for k in ("square_avg", "momentum_buffer", "grad_avg"))
    out = q.copy()
    for i in range(len(q)):
        g = 0.0 + wd * q[i] if wd != 0.0 else 0.0
        sqf = sq[i] * alpha + ((1.0 - alpha) * g) * g
        if centered:
            gaf = _lerp(ga[i], g, 1.0 - alpha)
            avg = np.sqrt(sqf + (-1.0 * gaf) * gaf) + eps
        else:
            avg = np.sqrt(sqf) + eps
        if mom > 0.0:
            out[i] = q[i] + (-lr) * (buf[i] * mom + g / avg)
        else:
            out[i] = q[i] + ((-lr) * g) / avg
    return out


def _scale_residual(q0, q1, qf):
    """(A_{n+1} - A_n - |Δ|²) - 2T_n relative to its terms (docs/balance_laws.md §1)."""
    T = np.dot(qf - q0, q0)
    a1, a0, dd = q1 @ q1, q0 @ q0, (q1 - q0) @ (q1 - q0)
    return abs((a1 - a0 - dd) - 2.0 * T) / ((a1 + a0 + dd) + 2.0 * abs(T))


CASES = [  # (rule, d): carried root (8.2) or direct; odd d exercises the unpaired tail
    (nc.rules.AdamW(lr=3e-2, weight_decay=1e-2), 8),
    (nc.rules.AdamW(lr=3e-2, weight_decay=1e-2), 7),
    (nc.rules.Adam(lr=3e-2), 5),
    (nc.rules.Adam(lr=3e-2, weight_decay=1e-2), 8),
    (nc.rules.Adam(lr=3e-2, weight_decay=1e-2), 3),
    (nc.rules.AdamW(lr=3e-2, weight_decay=1e-2, amsgrad=True), 6),
    (nc.rules.Adam(lr=3e-2, amsgrad=True, betas=(0.5, 0.9)), 7),
    (nc.rules.RMSprop(lr=1e-2), 8),                                  # carried (8.4)
    (nc.rules.RMSprop(lr=1e-2), 5),                  # the plain form's odd last coordinate
    (nc.rules.RMSprop(lr=1e-2, momentum=0.5), 7),
    (nc.rules.RMSprop(lr=1e-2, weight_decay=1e-2), 6),
    (nc.rules.RMSprop(lr=1e-2, weight_decay=1e-2), 7),
    (nc.rules.RMSprop(lr=1e-2, weight_decay=1e-2, momentum=0.5, centered=True), 5),
]


@pytest.mark.parametrize("rule,d", CASES)
def test_fused_residual_equals_unfused_free_step(rule, d):
    """(8.1)–(8.4): every step's residual equals the unfused free step's to 1e-13."""
    pot, q0 = _problem(d)
    steps = 40
    adam = isinstance(rule, nc.rules.Adam)      # (AdamW is an Adam)
    hp = tuple(float(x) for x in rule._hp(pot)[:7 if adam else 6])   # the kernel's row
    free = _free_adam if adam else _free_rmsprop
    run = nc.train(rule, pot, q0, steps)
    resid = run.charge("scale").residual[1:]
    q, st, expected = q0.copy(), None, []
    for _ in range(steps):
        one = nc.train(rule, pot, q, 1, state=st)
        state0 = st if st is not None else nc.train(rule, pot, q, 0).state
        expected.append(_scale_residual(q, one.q_final, free(hp, q, state0)))
        q, st = one.q_final, one.state
    np.testing.assert_array_equal(q, run.q_final)      # chaining is the unbroken run
    np.testing.assert_allclose(resid, expected, rtol=0, atol=1e-13)
    assert max(expected) > 1e-9                         # a breaking law: the test can fail
    assert run.charge("scale").worst == pytest.approx(max(expected), rel=1e-9, abs=1e-13)


@pytest.mark.parametrize("rule", [nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
                                  nc.rules.SGD(lr=0.05, momentum=0.9, nesterov=True,
                                               dampening=0.0),
                                  nc.rules.RMSprop(lr=1e-2, weight_decay=1e-3,
                                                   momentum=0.5, centered=True),
                                  nc.rules.AdamW(lr=1e-2, weight_decay=1e-2),
                                  nc.rules.Adam(lr=1e-2, weight_decay=1e-2, amsgrad=True)])
def test_fused_free_step_leaves_trajectory_bitwise(rule):
    """The fused pass forms the real step with the operations of the unfused one: the
    trajectory with charges on is bitwise that with charges off (§8)."""
    pot, q0 = _problem(9)
    on = nc.train(rule, pot, q0, 300, charges=True)
    off = nc.train(rule, pot, q0, 300, charges=False)
    np.testing.assert_array_equal(on.q, off.q)
    for k, v in off.state.arrays.items():
        np.testing.assert_array_equal(on.state.arrays[k], v)


def test_fused_sgd_law_stays_exact():
    """(2.1)–(2.2): with the fused free step SGD's scale law is still round-off."""
    pot, q0 = _problem(8)
    run = nc.train(nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4), pot, q0, 2000)
    assert run.charge("scale").law == "exact"
    assert run.charge("scale").worst < 1e-14
