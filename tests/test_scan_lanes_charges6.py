"""The charge sums formed inside the lanes' step loop (docs/balance_laws.md §8, (8.5)).

When one scale law covers coordinates 0 … d − 1 in order (``sym_all``: RayleighQuotient,
BatchNormUnit), pyx/lanes_impl.h ``step_sgd``, ``step_adam`` and ``step_rmsprop`` form
T_n = Σ_i (q^free_i − q_{n,i}) q_{n,i}, A_{n+1} = Σ_i q_{n+1,i}² and
|Δ|² = Σ_i (q_{n+1,i} − q_{n,i})² in their own loop over i (q^free is not stored), and
the probe of q_{n+1} first screens A_{n+1}.  (8.5): each sum starts from +0 and adds the
same terms in the order i = 0, 1, …, d − 1, so it is bitwise the separate passes' sum.
(8.6): the next RayleighQuotient gradient takes its |q|² from the carried A_{n+1}
(+0 + q₀² = q₀² exactly), which the general path sums again.

Checked here, every compiled version this CPU runs (the baseline SSE2 one is forced by
NOETHER_LANE_ISA / the isa argument):
* the fused sums against the general path (two copies of the law, which go through the
  block's index list and the separate passes), d = 1, 2, 3, 7, 9, 17 (odd, not a multiple
  of 2, 4 or 8, and 17 > 16: the run compiled for any d), for SGD (heavy-ball and general
  step), Adam/AdamW and RMSprop, with lanes that overflow (non-finite q_{n+1}) in the
  blocks;
* every output of a charged scan (q, losses, norms, angles, status, stop step, worst
  residual and its step) bitwise the scalar loop's, which tests/test_scan.py holds to
  ``train``, with lanes stopping on non-finite parameters and gradients and lanes whose
  A_{n+1} overflows while q_{n+1} stays finite (the screen's false alarm, sorted out by
  the probe as before);
* one point per rule against its own ``train`` run (worst residual and its step).
"""
import numpy as np
import pytest
from test_scan_lanes import _assert_identical, _bits, _scan
from test_scan_lanes_charges5 import _lane_run

import noether_core as nc
from noether_core._kernels import scan as ks

# "adam", "adamw", "adam_l2", "rmsprop_plain", "rmsprop_plain_l2": the one-loop forms of
# step_adam_plain / step_rmsprop_plain (mixed, carried, direct free roots); "rmsprop",
# "rmsprop_l2": momentum in some lanes, the general loop of step_rmsprop
RULES = ["sgd", "sgd_general", "adam", "adamw", "adam_l2", "rmsprop", "rmsprop_l2",
         "rmsprop_plain", "rmsprop_plain_l2"]


def _rayleigh(d, scale=1.0, seed=11):
    rng = np.random.default_rng(seed + d)
    M = rng.normal(size=(d, d))
    return nc.potentials.RayleighQuotient(scale * (M + M.T) / 2), rng.normal(size=d)


def _rows(rule, P, d, lr):
    """Hand-made rows of the rules.pyx table: weight decay in two lanes of three, the
    other per-lane flags mixed within each block."""
    wd = np.where(np.arange(P) % 3 == 0, 0.0, 1e-2)
    z, one = np.zeros(P), np.ones(P)
    if rule.startswith("sgd"):
        nest = (np.arange(P) % 4 == 1).astype(float) if rule == "sgd_general" else z
        hp = np.stack([lr, np.full(P, 0.9), z, nest, wd], axis=1)
        # sgd: resumed buffers (no first step: the heavy-ball form from step 0);
        # sgd_general: a first step in every lane, nesterov in some
        has = one if rule == "sgd" else z
        vec = np.full((P, d), 0.01) * has[:, None]
        return nc.rules.SGD.kind, hp, vec, has[:, None].copy()
    if rule.endswith("_l2"):
        wd = np.full(P, 1e-2)
    if rule.startswith("adam"):
        dec = one if rule == "adamw" else z
        hp = np.stack([lr, np.full(P, 0.9), np.full(P, 0.999), np.full(P, 1e-8), wd,
                       z, dec], axis=1)
        return nc.rules.Adam.kind, hp, np.zeros((P, 3 * d)), np.zeros((P, 1))
    mom = z if rule.startswith("rmsprop_plain") else np.where(np.arange(P) % 2 == 0, 0.0, 0.5)
    hp = np.stack([lr, np.full(P, 0.99), np.full(P, 1e-8), wd, mom, z], axis=1)
    return nc.rules.RMSprop.kind, hp, np.zeros((P, 3 * d)), np.zeros((P, 1))


def assert_fused_is_general(one, two):
    """Lane-kernel outputs of one law on every coordinate (``one``: the fused path) and of
    two copies of it (``two``: the general path) are bitwise the same: trajectory,
    summaries, status, and each copy's worst residual and its step."""
    for k in ("q", "loss", "loss_min", "norm2", "status", "stop_step"):
        np.testing.assert_array_equal(_bits(getattr(one, k)), _bits(getattr(two, k)), k)
    for j in range(2):
        np.testing.assert_array_equal(_bits(two.charge_worst[:, j]),
                                      _bits(one.charge_worst[:, 0]))
        np.testing.assert_array_equal(two.charge_worst_step[:, j],
                                      one.charge_worst_step[:, 0])


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("d", [1, 2, 3, 7, 9, 17])
@pytest.mark.parametrize("rule", RULES)
def test_fused_sums_are_the_general_sums(rule, d, isa):
    """(8.5), (8.6): one law on coordinates 0 … d − 1 (the fused sums in the step's loop,
    the gradient's |q|² from the carried A_{n+1}) and two copies of it (the general path:
    q^free stored, T_n, A_{n+1}, |Δ|² in separate passes through the index list, |q|²
    summed by the gradient) give bitwise the same worst residual and step for every
    point, and the same trajectory, status and stop step, with overflowing lanes (lr up to
    1e308) among the others."""
    pot, q0 = _rayleigh(d, scale=10.0)
    P = 11                                   # a full block and a partial one
    lr = np.geomspace(1e-3, 0.3, P)
    lr[[2, 9]] = 1e308                       # these lanes' q_{n+1} overflow
    kind, hp, vec, sca = _rows(rule, P, d, lr)
    full = np.arange(d)
    one = _lane_run(kind, hp, vec, sca, pot, q0, 120, isa, [full])
    two = _lane_run(kind, hp, vec, sca, pot, q0, 120, isa, [full, full])
    assert_fused_is_general(one, two)
    assert np.any(one.status != 0) and np.any(one.status == 0)
    if d > 1:                                               # the law was evaluated
        assert np.any(one.charge_worst[one.status == 0, 0] > 0)


CLASSES = {
    "sgd": (nc.rules.SGD, dict(momentum=0.9)),
    "sgd_general": (nc.rules.SGD, dict(momentum=[0.0, 0.9], dampening=[0.0, 0.3])),
    "adam": (nc.rules.Adam, dict()),
    "adamw": (nc.rules.AdamW, dict()),
    "rmsprop": (nc.rules.RMSprop, dict(momentum=[0.0, 0.5])),
    "rmsprop_l2": (nc.rules.RMSprop, dict(centered=[False, True])),
    # the one-loop forms (no momentum, not centered; no amsgrad): mixed and direct roots
    "rmsprop_plain": (nc.rules.RMSprop, dict()),
    "rmsprop_plain_l2": (nc.rules.RMSprop, dict()),
    "adam_l2": (nc.rules.Adam, dict()),
}


def _bn(d):
    rng = np.random.default_rng(5 + d)
    X = rng.normal(size=(24, d))
    y = np.tanh(X @ rng.normal(size=d)) + 0.1 * rng.normal(size=24)
    return nc.potentials.BatchNormUnit(X, y), rng.normal(size=d)


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("prob", ["rayleigh1", "rayleigh3", "rayleigh9", "rayleigh17",
                                  "bn7"])
@pytest.mark.parametrize("rule", sorted(CLASSES))
def test_fused_lanes_equal_scalar_loop_with_charges(rule, prob, isa):
    """A charged scan through the fused path, every output bitwise the scalar loop's: a
    grid of lr (up to 1e308: lanes stopping on non-finite parameters) × weight decay,
    mixed flags within the blocks, 300 steps (past the 256-step boundary)."""
    pot, q0 = _bn(int(prob[2:])) if prob.startswith("bn") else _rayleigh(int(prob[8:]), 10.0)
    rule_cls, kw = CLASSES[rule]
    kw = dict(kw, lr=np.array([1e-3, 0.03, 0.3, 1e308]),
              weight_decay=1e-2 if rule.endswith("_l2") else [0.0, 1e-2])
    ref = _scan(pot, q0, False, rule_cls=rule_cls, steps=300, charges=True, **kw)
    got = _scan(pot, q0, True, isa=isa, rule_cls=rule_cls, steps=300, charges=True, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
    if prob != "rayleigh1":
        assert ref.diverged.any() and not ref.diverged.all()


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("rule", sorted(CLASSES))
def test_fused_screen_false_alarm_and_gradient_stop(rule, isa):
    """The probe's first screen A_{n+1} (8.5) overflows while every q_{n+1,i} is finite
    (|q_0| = 1e150 and a step of ~1e155): the probe then runs as before; and a gradient that
    overflows at |q|² = 1/1.7e308 (tests/test_scan_lanes.py) stops every lane at step 0
    with status "gradient".  Both bitwise the scalar loop, charges on."""
    rule_cls, kw = CLASSES[rule]
    pot, q0 = _rayleigh(8)
    big = q0 / np.linalg.norm(q0) * 1e150
    jump = 1e305 if rule.startswith("sgd") else 1e155       # a step of ~1e155
    kw = {k: v for k, v in kw.items() if not isinstance(v, list)}   # axes: lr, wd
    kw = dict(kw, lr=np.array([1e-3, jump]), weight_decay=[0.0, 1e-3])
    ref = _scan(pot, big, False, rule_cls=rule_cls, steps=60, charges=True, **kw)
    got = _scan(pot, big, True, isa=isa, rule_cls=rule_cls, steps=60, charges=True, **kw)
    _assert_identical(ref, got)
    # the small steps run through; at a jump, |q_{n+1}|² overflows with q_{n+1} finite:
    # the probe lets the lane on (as before), and the next loss, f = qAq/|q|², stops it
    assert np.all(ref.status[0] == 0) and np.any(ref.status[1] == 1)
    t0 = q0 @ pot.A @ q0 / (q0 @ q0)
    pot4 = nc.potentials.RayleighQuotient(pot.A * (4.0 / abs(t0)))
    tiny = q0 / np.linalg.norm(q0) * np.sqrt(1.0 / 1.7e308)
    ref = _scan(pot4, tiny, False, rule_cls=rule_cls, steps=50, charges=True, **kw)
    got = _scan(pot4, tiny, True, isa=isa, rule_cls=rule_cls, steps=50, charges=True, **kw)
    _assert_identical(ref, got)
    assert np.all(ref.status == 2) and np.all(ref.stop_step == 0)


@pytest.mark.parametrize("rule", sorted(CLASSES))
def test_fused_lanes_equal_train_per_point(rule):
    """The oracle: two points of a fused-path scan against their own ``train`` runs —
    final q, and the scale law's worst residual and its step, bitwise."""
    rule_cls, kw = CLASSES[rule]
    pot, q0 = _rayleigh(7, 10.0)
    kw = {k: v for k, v in kw.items() if not isinstance(v, list)}
    res = _scan(pot, q0, True, rule_cls=rule_cls, steps=250, charges=True,
                lr=np.geomspace(1e-3, 0.3, 9), weight_decay=1e-2, **kw)
    assert res.kernel.startswith("lanes")
    for idx in [(0,) * res.q.ndim, (8,) + (0,) * (res.q.ndim - 1)]:
        idx = idx[:res.q.ndim - 1]
        tr = nc.train(res.rule_at(*idx), pot, q0, 250, charges=True)
        np.testing.assert_array_equal(_bits(res.q[idx]), _bits(tr.q_final))
        for lab, series in tr.charges.items():
            assert _bits(res.charge_worst[lab][idx]) == _bits(series.worst)
            assert res.charge_worst_step[lab][idx] == series.worst_step
