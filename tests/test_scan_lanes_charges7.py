"""The free step's denominators formed during the Rayleigh gradient (docs/balance_laws.md
§8, "During the gradient").

In a full-batch RayleighQuotient scan with one scale law on every coordinate (the fused
path), a block of RMSprop (no centering, no momentum) or Adam (no amsgrad, 1 − β₁ < ½)
with a lane whose free root is direct (coupled L2 decay) has pyx/lanes_impl.h
``free_dens`` form each coordinate's free denominator — RMSprop's √(α s + (1 − α)(k q)²)
+ ε, Adam's √(β₂ v + (1 − β₂)(k q)²) (1/√bc₂) + ε — inside the gradient, after its first
block of four rows, from step 1 on; the step's loop reads them.  They are the same
operations on the same operands as the step's own, so every output stays bitwise the
scalar loop's (which tests/test_scan.py holds to ``train``).

Checked here, for every compiled version this CPU runs, d = 4 (the product is one block
of rows), 5 and 8 (two blocks, the second partial or full), 12 (three), 19 (the run
compiled for any d); every lane direct, and direct lanes mixed with carried ones
(weight decay 0) in a block:

* every output of a charged scan bitwise the scalar loop's, with lanes that stop on
  non-finite parameters (lr = 1e308) while the others go on, past the 256-step boundary;
* the worst residual and its step bitwise the general path's (two copies of the law: no
  fused step, so no denominators in the gradient), from a state whose square averages
  start large, so that the preconditioner starts nearly isotropic and the worst residual
  falls at a late step.  From zero averages it falls at step 0 in every lane, where the
  denominators are the step's own, and a change of theirs from step 1 on would not show
  in any output.
"""
import numpy as np
import pytest
from test_scan_lanes import _assert_identical, _scan
from test_scan_lanes_charges5 import _lane_run
from test_scan_lanes_charges6 import assert_fused_is_general

import noether_core as nc
from noether_core._kernels import scan as ks


def _cases(test):
    """Every compiled version, d = 4, 5, 8, 12, 19, RMSprop and Adam, decay in every lane
    or in some."""
    for mark in (pytest.mark.parametrize("decay", ["every lane", "mixed"]),
                 pytest.mark.parametrize("rule", ["RMSprop", "Adam"]),
                 pytest.mark.parametrize("d", [4, 5, 8, 12, 19]),
                 pytest.mark.parametrize("isa", ks.lane_isas())):
        test = mark(test)
    return test


def _rayleigh(d):
    rng = np.random.default_rng(29 + d)
    M = rng.normal(size=(d, d))
    return nc.potentials.RayleighQuotient(5.0 * (M + M.T) / 2), rng.normal(size=d)


@_cases
def test_free_denominators_in_the_gradient_keep_every_bit(decay, rule, d, isa):
    """A charged scan, every output bitwise the scalar loop's (which does not form the
    denominators in the gradient), 300 steps, one lane stopping at step 0."""
    pot, q0 = _rayleigh(d)
    rule_cls = getattr(nc.rules, rule)
    # 5 learning rates x 2 decays = 10 points: a full block of 8 and a partial one; in the
    # mixed grid, lanes with and without decay share each block
    wd = [1e-2, 3e-3] if decay == "every lane" else [0.0, 1e-2]
    lr = np.array([1e-3, 1e-2, 0.05, 0.2, 1e308])
    kw = dict(lr=lr, weight_decay=wd, steps=300, charges=True)
    ref = _scan(pot, q0, False, rule_cls=rule_cls, **kw)
    got = _scan(pot, q0, True, isa=isa, rule_cls=rule_cls, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
    # lanes retired on non-finite parameters while the others ran to the end
    assert ref.diverged.any() and not ref.diverged.all()
    for worst in ref.charge_worst.values():             # the law was evaluated
        assert np.all(np.isfinite(worst[~ref.diverged]))
        assert np.any(worst[~ref.diverged] > 0)


def _rows(rule, P, d, decay):
    """rules.pyx table rows: lr up to 0.1 (one lane 1e308: it stops at step 0), weight
    decay in every lane or in two of three, the square averages (RMSprop's square_avg,
    Adam's exp_avg_sq) starting at 100."""
    lr = np.geomspace(1e-3, 0.1, P)
    lr[3] = 1e308
    wd = np.full(P, 1e-2) if decay == "every lane" else np.where(np.arange(P) % 3, 1e-2, 0.0)
    z = np.zeros(P)
    vec = np.zeros((P, 3 * d))
    if rule == "RMSprop":
        hp = np.stack([lr, np.full(P, 0.99), np.full(P, 1e-8), wd, z, z], axis=1)
        vec[:, :d] = 100.0
    else:
        hp = np.stack([lr, np.full(P, 0.9), np.full(P, 0.999), np.full(P, 1e-8), wd, z, z],
                      axis=1)
        vec[:, d:2 * d] = 100.0
    return getattr(nc.rules, rule).kind, hp, vec, np.zeros((P, 1))


@_cases
def test_free_denominators_in_the_gradient_at_late_steps(decay, rule, d, isa):
    """The lane kernel's worst residual and its step with the denominators formed in the
    gradient (one law: the fused path) bitwise the general path's (two copies of it),
    where the worst residual falls at a late step."""
    pot, q0 = _rayleigh(d)
    P = 10
    kind, hp, vec, sca = _rows(rule, P, d, decay)
    full = np.arange(d)
    one = _lane_run(kind, hp, vec, sca, pot, q0, 300, isa, [full])           # fused
    two = _lane_run(kind, hp, vec, sca, pot, q0, 300, isa, [full, full])     # general
    assert_fused_is_general(one, two)
    ran = one.status == 0
    assert np.count_nonzero(ran) == P - 1                  # (lane 3 stopped at step 0)
    # the worst residual is a late step's in most lanes, so the denominators formed in
    # the gradient decide it
    assert np.count_nonzero(one.charge_worst_step[ran, 0] >= 20) >= P // 2
