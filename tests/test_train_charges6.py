"""SGD's branch-free step, its late gradient check and the carried A_n
(docs/balance_laws.md §9).

* "SGD without a branch" and (9.3): the step runs one of several loops chosen once per
  step (momentum or not, weight decay or not, dampening or not, Nesterov, the first
  step), each without a test per coordinate.  Checked bitwise against torch.optim.SGD's
  operations written out in NumPy (element-wise IEEE operations, the same order), with
  gradients holding -0.0 next to parameters holding +0.0 (weight decay 0 must leave
  g_i = -0.0 as it is: g_i + 0 q_i would be +0.0), for d = 1, odd d, d = 8 and
  d = 70 (> 64: no late check without charges).
* (9.4): on a step whose row is not recorded, the gradient's finiteness is checked after
  the step, from q_{n+1}'s (a non-finite g_n makes q_{n+1} non-finite), and the step is
  undone exactly when g_n was the culprit.  Checked: a NaN, +inf or -inf gradient at
  steps 0, 1 and 3 stops the run at that step with the state (q, buffer, has_buffer) of
  the step before, bitwise, as the reference that checks first; a finite gradient that
  overflows q stops it as "non-finite parameters" with the updated state; charges on
  and off, recorded rows and not.
* (9.5): a scale law's A_n = |q_n|² is the step before's A_{n+1}.  Checked: an
  unbroken run's residuals equal, bit for bit, those of the same run chained one step
  at a time (every call sums A_n afresh).
"""
import numpy as np
import pytest

import noether_core as nc

SCALE_Q = nc.symmetry.Symmetry("scale", ("q",))


def _bits(a):
    return np.asarray(a, dtype=np.float64).view(np.uint64)


def _fn(d, bad=None, seed=0):
    """A Python potential's fn: g = a q + b with a -0.0 at every third coordinate
    (written in explicitly, whatever q is), loss |q|²/2; ``bad`` = (call, coord, value)
    puts a non-finite value into the gradient of that call (counted from 0)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, d)
    b = rng.standard_normal(d)
    calls = [0]

    def fn(q):
        k = calls[0]
        calls[0] += 1
        g = a * q + b
        g[::3] = -0.0
        if bad is not None and k == bad[0]:
            g[bad[1]] = bad[2]
        return float(0.5 * np.dot(q, q)), g
    return fn


def _q0(d, seed=1):
    q = np.random.default_rng(seed).standard_normal(d)
    q[::3] = 0.0                      # +0.0 under the -0.0 gradients
    if d > 1:
        q[1] = -0.0
    return q


def _reference(fn, q, steps, lr, mom, damp, nest, wd):
    """torch.optim.SGD, operation for operation, checking loss and gradient before the
    step and q after it; returns (q, buf, has_buffer, stop_step, reason)."""
    q = q.copy()
    buf = np.zeros_like(q)
    has = False
    for n in range(steps):
        f, g = fn(q.copy())
        if not np.isfinite(f):
            return q, buf, has, n, "loss"
        if not np.all(np.isfinite(g)):
            return q, buf, has, n, "gradient"
        di = g.copy()
        if wd != 0.0:
            di = di + wd * q
        if mom != 0.0:
            buf = di.copy() if not has else buf * mom + (1.0 - damp) * di
            has = True
            di = di + mom * buf if nest else buf
        with np.errstate(over="ignore"):
            q = q + (-lr) * di
        if not np.all(np.isfinite(q)):
            return q, buf, has, n, "parameters"
    return q, buf, has, None, None


CONFIGS = [  # (momentum, dampening, nesterov, weight_decay)
    (0.0, 0.0, False, 0.0), (0.0, 0.0, False, 5e-4),
    (0.9, 0.0, False, 0.0), (0.9, 0.0, False, 5e-4),        # heavy ball (the benchmark's)
    (0.9, 0.3, False, 0.0), (0.9, 0.3, False, 5e-4),        # dampening
    (0.9, 0.0, True, 0.0), (0.9, 0.0, True, 5e-4),          # Nesterov
]


def _check(res, ref, mom):
    q, buf, has, stop, reason = ref
    assert res.stop_step == stop
    if reason is None:
        assert res.stop_reason is None
    else:
        assert reason in res.stop_reason
    assert np.array_equal(_bits(res.q_final), _bits(q))
    if mom != 0.0:
        assert np.array_equal(_bits(res.state.arrays["momentum_buffer"]), _bits(buf))
        assert res.state.scalars["has_buffer"] == (1.0 if has else 0.0)


@pytest.mark.parametrize("d", [1, 4, 8, 70])
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("every", [1, 3, 7])
@pytest.mark.parametrize("charges", [False, True])
def test_sgd_variants_bitwise(d, cfg, every, charges):
    """"SGD without a branch", (9.3): every loop variant, on recorded rows and not (late
    check or not), equals torch's operations bit for bit, signs of zeros included."""
    mom, damp, nest, wd = cfg
    lr, steps = 0.05, 7
    pot = nc.potentials.Python(_fn(d), d)
    rule = nc.rules.SGD(lr=lr, momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd)
    res = nc.train(rule, pot, _q0(d), steps, record_every=every,
                   charges=[SCALE_Q] if charges else False)
    _check(res, _reference(_fn(d), _q0(d), steps, lr, mom, damp, nest, wd), mom)
    if wd == 0.0 and mom != 0.0:
        # the -0.0 gradients at coordinates 0, 3, ... over q = +0.0: the buffer keeps -0.0
        assert np.all(np.signbit(res.state.arrays["momentum_buffer"][::3]))


@pytest.mark.parametrize("d", [1, 5, 70])
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[2], CONFIGS[3], CONFIGS[5], CONFIGS[6]])
@pytest.mark.parametrize("call", [0, 1, 3])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("every", [1, 50])
@pytest.mark.parametrize("charges", [False, True])
def test_late_gradient_check(d, cfg, call, value, every, charges):
    """(9.4): a non-finite gradient found after the step stops the run at that step with
    the state of the step before, bitwise (q, buffer, has_buffer), as checking first."""
    mom, damp, nest, wd = cfg
    lr, steps = 0.05, 6
    bad = (call, d - 1, value)
    pot = nc.potentials.Python(_fn(d, bad), d)
    rule = nc.rules.SGD(lr=lr, momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd)
    with pytest.warns(nc.errors.DivergenceWarning):
        res = nc.train(rule, pot, _q0(d), steps, record_every=every,
                       charges=[SCALE_Q] if charges else False)
    ref = _reference(_fn(d, bad), _q0(d), steps, lr, mom, damp, nest, wd)
    assert ref[3] == call and ref[4] == "gradient"
    _check(res, ref, mom)


@pytest.mark.parametrize("charges", [False, True])
@pytest.mark.parametrize("every", [1, 50])
def test_late_check_keeps_nonfinite_parameters(charges, every):
    """(9.4): a finite gradient that overflows q_{n+1} is "non-finite parameters" after
    the update (the state updated), not a gradient failure."""
    d = 5

    def fn(q):
        return 0.0, np.full(d, 1e300)
    rule = nc.rules.SGD(lr=1e10, momentum=0.9)
    with pytest.warns(nc.errors.DivergenceWarning):
        res = nc.train(rule, nc.potentials.Python(fn, d), np.ones(d), 5, record_every=every,
                       charges=[SCALE_Q] if charges else False)
    ref = _reference(fn, np.ones(d), 5, 1e10, 0.9, 0.0, False, 0.0)
    assert ref[3] == 0 and ref[4] == "parameters"
    _check(res, ref, 0.9)


def _rq(d, seed=11):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(a @ a.T / d + np.eye(d)), rng.standard_normal(d)


@pytest.mark.parametrize("rule", [
    nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
    nc.rules.AdamW(lr=1e-2, weight_decay=1e-2),
    nc.rules.RMSprop(lr=1e-2, momentum=0.5),
])
@pytest.mark.parametrize("d", [1, 3, 8])
def test_carried_a_n(rule, d):
    """(9.5): the residuals and worst of an unbroken run (A_n carried from the step
    before) equal those of the run chained one step at a time (A_n summed afresh at
    every call), bit for bit."""
    pot, q0 = _rq(d)
    steps = 12
    full = nc.train(rule, pot, q0, steps, record_every=1)
    q, st, res = q0.copy(), None, []
    for _ in range(steps):
        one = nc.train(rule, pot, q, 1, state=st, record_every=1)
        res.append(one.charge("scale").residual[1])
        q, st = one.q_final, one.state
    assert np.array_equal(_bits(full.charge("scale").residual[1:]), _bits(res))
    assert np.array_equal(_bits(full.q_final), _bits(q))
    assert full.charge("scale").worst == max(res)
