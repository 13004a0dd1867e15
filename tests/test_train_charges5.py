"""The training loop's charge pass and Adam's saturated bias corrections
(docs/balance_laws.md §9).

* (9.1): once ``1 − β^n`` rounds to exactly 1.0 it does so at every later step, so the
  loop stops calling ``pow`` (and leaves out the exact division by ``√bc₂ = 1``).
  Checked on this platform's ``pow`` itself, and through the loop: a run chained one step
  at a time (every call starts afresh, so it calls ``pow`` at its one step and never
  skips it) is bitwise the unbroken run, across the step where the corrections saturate,
  for the branch-free AdamW path and the general one, charges on and off.
* (9.9): the unbroken run forms each correction one step ahead (``pow(β, n + 1)`` at
  step n); the chained run never uses a value formed ahead (each call's first step
  calls ``pow`` for itself).  The same comparison checks that both give the same bits.
* (9.2): the free transfer T_n and the law's three sums are taken in one pass per block,
  each accumulator adding its terms in the block's order as the separate passes did.
  Checked bitwise against the law recomputed term by term in that order from the
  kernel's own states (SGD: the free step written out with torch.optim's operations).
"""
import math

import numpy as np
import pytest

import noether_core as nc


def _rq(d, seed=11):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(a @ a.T / d + np.eye(d)), rng.standard_normal(d)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 0.99, 0.999])
def test_bias_correction_stays_one(beta):
    """(9.1) on the platform's pow: from the first n with 1 - beta^n == 1.0 on, every
    later n gives 1.0 too (checked over the next 2·10^5 steps)."""
    n0 = 1
    while 1.0 - math.pow(beta, n0) != 1.0:
        n0 += 1
    assert math.pow(beta, n0) <= 2.0 ** -54                  # the rounding argument
    assert n0 == 1 or 1.0 - math.pow(beta, n0 - 1) != 1.0
    later = [n for n in range(n0, n0 + 200_000) if 1.0 - math.pow(beta, n) != 1.0]
    assert later == []


def _chained(rule, pot, q0, steps, charges):
    """``steps`` runs of one step each, every one resumed from the last one's state."""
    q, st = q0.copy(), None
    rows = []
    for _ in range(steps):
        one = nc.train(rule, pot, q, 1, state=st, charges=charges, record_every=1)
        if charges:
            rows.append(one.charge("scale").residual[1])
        q, st = one.q_final, one.state
    return q, st, np.array(rows)


@pytest.mark.parametrize("rule", [
    nc.rules.AdamW(lr=1e-2, weight_decay=1e-2, betas=(0.5, 0.9)),     # branch-free path
    nc.rules.Adam(lr=1e-2, betas=(0.3, 0.9)),                         # no weight decay
    nc.rules.Adam(lr=1e-2, weight_decay=1e-2, betas=(0.5, 0.9)),      # L2: general path
    nc.rules.AdamW(lr=1e-2, weight_decay=1e-2, amsgrad=True, betas=(0.5, 0.9)),
    nc.rules.AdamW(lr=1e-2, weight_decay=1e-2, betas=(0.2, 0.9)),     # lerp's 2nd branch
])
@pytest.mark.parametrize("charges", [False, True])
def test_saturated_bias_corrections_keep_the_bits(rule, charges):
    """(9.1): with beta2 = 0.9 the corrections are exactly 1.0 from step ~350 on; 420
    steps in one run (pow skipped after that) equal 420 one-step runs (pow every step),
    bit for bit: parameters, state, and every step's residual (charges on)."""
    pot, q0 = _rq(7)
    steps = 420
    assert 1.0 - math.pow(rule.betas[1], steps) == 1.0       # the run saturates
    run = nc.train(rule, pot, q0, steps, charges=charges, record_every=1)
    q, st, resid = _chained(rule, pot, q0, steps, charges)
    np.testing.assert_array_equal(run.q_final, q)
    for k, v in run.state.arrays.items():
        np.testing.assert_array_equal(v, st.arrays[k])
    if charges:
        np.testing.assert_array_equal(run.charge("scale").residual[1:], resid)
        assert resid.max() > 1e-9            # Adam breaks the law: nonzero, comparable


def _free_sgd(rule, q, st):
    """torch.optim.SGD's step with zero gradient from (q, state), elementwise with the
    kernel's operations (docs/balance_laws.md §8: wd q formed once, 0 + wd q)."""
    lr, mom, damp1, wd = rule.lr, rule.momentum, 1.0 - rule.dampening, rule.weight_decay
    df = 0.0 + wd * q if wd != 0.0 else np.zeros_like(q)
    if mom != 0.0:
        if st.scalars["has_buffer"] == 0.0:
            bf = df
        else:
            bf = st.arrays["momentum_buffer"] * mom + damp1 * df
        df = df + mom * bf if rule.nesterov else bf
    return q + (-lr) * df


def _law_in_order(idx1, idx2, q0, q1, qf):
    """The scale/rescale law's relative residual, every sum taken term by term in the
    block's order from 0.0 (T continues over the second block, minus)."""
    def sums(idx, sign, t):
        a1 = a0 = dd = 0.0
        for i in idx:
            x = qf[i] - q0[i]
            t = t - x * q0[i] if sign < 0 else t + x * q0[i]
            a1 = a1 + q1[i] * q1[i]
            a0 = a0 + q0[i] * q0[i]
            x = q1[i] - q0[i]
            dd = dd + x * x
        return t, a1, a0, dd
    T, a1, a0, dd = sums(idx1, 1, 0.0)
    sc = a1 + a0 + dd
    if idx2 is not None:
        T, b1, b0, de = sums(idx2, -1, T)
        sc = sc + b1 + b0 + de
        a1, a0, dd = a1 - b1, a0 - b0, dd - de
    R = (a1 - a0 - dd) - 2.0 * T
    sc = sc + 2.0 * abs(T)
    return abs(R) / sc if sc > 0.0 else (0.0 if R == 0.0 else 1.0)


def _two_layer():
    Xr, Y = nc.datasets.teacher_regression(40, 5, 2, seed=0)
    pot = nc.potentials.TwoLayer(Xr, Y, 4)
    return pot, 0.5 * np.random.default_rng(3).standard_normal(pot.dim)


@pytest.mark.parametrize("make", [lambda: _rq(8), lambda: _rq(5), _two_layer])
@pytest.mark.parametrize("rule", [
    nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
    nc.rules.SGD(lr=0.05, momentum=0.9, nesterov=True),
    nc.rules.SGD(lr=0.05, momentum=0.5, dampening=0.2, weight_decay=0.1),
])
def test_law_pass_sums_in_block_order(make, rule):
    """(9.2): every step's residual is bitwise the law recomputed in the block's order
    from the kernel's states: the whole-vector scale block (RayleighQuotient) and the
    rescale pairs of TwoLayer (two blocks, T carried from one to the other)."""
    pot, q0 = make()
    steps = 25
    run = nc.train(rule, pot, q0, steps, charges=True, record_every=1)
    q, st = q0.copy(), nc.train(rule, pot, q0, 0).state
    expected = {name: [] for name in run.charges}
    for _ in range(steps):
        one = nc.train(rule, pot, q, 1, state=st)
        qf = _free_sgd(rule, q, st)
        for name, ch in run.charges.items():
            blocks = ch.symmetry.blocks
            idx2 = pot.blocks[blocks[1]] if ch.symmetry.family == "rescale" else None
            expected[name].append(_law_in_order(pot.blocks[blocks[0]], idx2, q,
                                                one.q_final, qf))
        q, st = one.q_final, one.state
    np.testing.assert_array_equal(q, run.q_final)
    for name, ch in run.charges.items():
        np.testing.assert_array_equal(ch.residual[1:], expected[name])
        # round-off, not zero: a wrong or reordered term would show
        assert 0.0 < max(expected[name]) < 1e-12
