"""The fused charges of the adaptive rules in the lane kernel, block by block.

pyx/lanes_impl.h ``step_rmsprop`` takes the free step's pair quotients in a second pass
after the real step's (docs/balance_laws.md §8, "Where the free step's divisions go"),
and both it and ``step_adam`` take sqrt(β₂) / sqrt(α) once per block (the same correctly
rounded root of the same number as the scalar step's, (8.1), (8.4)).  The free root has
three forms, chosen per block: every lane carried (no L2 decay, not centered, no
amsgrad: the carried root of (8.2)/(8.4)), every lane direct (L2 decay, centered or
amsgrad: the root of the free average), and mixed (a select per lane).  Blocks without
centering or momentum (RMSprop), or without amsgrad and with 1 − β₁ < ½ (Adam), run
each form as a loop of its own, ``step_rmsprop_plain`` / ``step_adam_plain`` (§8, "One
loop per form"); the centered, momentum and amsgrad cases below run the general loops.
tests/test_scan_lanes.py mixes those flags inside every block; here each block is
uniform, so that each form runs alone, on an even (d = 8) and an odd (d = 5: the last
coordinate divided directly, (8.3)) dimension, charges on, every compiled version.
Every output — q, losses, norms, status, and the worst balance residual and its step —
must be bitwise the scalar loop's, which tests/test_scan.py holds to ``train``.
"""
import numpy as np
import pytest
from test_scan_lanes import PROBLEMS, _assert_identical, _scan

import noether_core as nc
from noether_core import _bridge
from noether_core._kernels import scan as ks

# eight learning rates: one block of lanes that agree in every other flag
LR8 = np.geomspace(1e-3, 0.3, 8)

UNIFORM = {
    # every lane carried: the denominator sqrt(alpha) sqrt(s_n) + eps (8.4)
    "rmsprop_carried": (nc.rules.RMSprop, dict()),
    "rmsprop_carried_momentum": (nc.rules.RMSprop, dict(momentum=0.9)),
    # every lane direct: the root of the free average (L2 decay, or centered)
    "rmsprop_l2": (nc.rules.RMSprop, dict(weight_decay=1e-2)),
    "rmsprop_centered": (nc.rules.RMSprop, dict(centered=True, momentum=0.5)),
    # mixed within the block: weight decay on in half of the lanes
    "rmsprop_mixed": (nc.rules.RMSprop, dict(lr=np.geomspace(1e-3, 0.3, 4),
                                             weight_decay=[0.0, 1e-2])),
    # Adam: carried (AdamW, Adam without decay), direct (L2 decay, amsgrad), mixed
    "adamw": (nc.rules.AdamW, dict(weight_decay=1e-2)),
    "adam_nodecay": (nc.rules.Adam, dict()),
    "adam_l2": (nc.rules.Adam, dict(weight_decay=1e-2)),
    "adamw_amsgrad": (nc.rules.AdamW, dict(weight_decay=1e-2, amsgrad=True)),
    "adam_mixed": (nc.rules.Adam, dict(lr=np.geomspace(1e-3, 0.3, 4),
                                       weight_decay=[0.0, 1e-2])),
}


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("name", ["rayleigh8", "rayleigh5", "bn"])
@pytest.mark.parametrize("case", sorted(UNIFORM))
def test_uniform_blocks_charges_bitwise(case, name, isa):
    """Each form of the free step's second pass alone in a block (docs/balance_laws.md
    §8): lanes bitwise the scalar loop, 300 steps, charges on."""
    rule_cls, kw = UNIFORM[case]
    kw = dict(kw)
    kw.setdefault("lr", LR8)
    pot, q0 = PROBLEMS[name]
    ref = _scan(pot, q0, False, rule_cls=rule_cls, steps=300, charges=True, **kw)
    got = _scan(pot, q0, True, isa=isa, rule_cls=rule_cls, steps=300, charges=True, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
    # the law was evaluated: a residual was recorded for every point
    for lab in got.charge_worst:
        assert np.all(got.charge_worst_step[lab] >= 0)


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_uniform_blocks_charges_match_train(isa):
    """One point of a uniform RMSprop block with L2 decay against its own ``train`` run:
    the worst residual of the scale law and its step, bitwise."""
    pot, q0 = PROBLEMS["rayleigh8"]
    got = _scan(pot, q0, True, isa=isa, rule_cls=nc.rules.RMSprop, steps=200,
                charges=True, lr=LR8, weight_decay=1e-2)
    for k in (0, 5):
        tr = nc.train(nc.rules.RMSprop(lr=LR8[k], weight_decay=1e-2), pot, q0, 200,
                      charges=True)
        np.testing.assert_array_equal(got.q.reshape(-1, pot.dim)[k], tr.q_final)
        assert tr.charges.keys() == got.charge_worst.keys()
        for lab, series in tr.charges.items():
            assert got.charge_worst[lab].reshape(-1)[k] == series.worst
            assert got.charge_worst_step[lab].reshape(-1)[k] == series.worst_step


def _lane_run(kind, hp, vec, sca, pot, q0, steps, isa, blocks):
    """The lane kernel alone on hand-made rows, tracking the scale laws of ``blocks``."""
    P, d = hp.shape[0], pot.dim
    bptr, bidx = _bridge.csr([pot.blocks[k] for k in pot.blocks])
    rule = _bridge.RuleInputs(kind, hp.copy(), vec.copy(), sca.copy(),
                              *_bridge.csr([np.arange(d)]))
    out = _bridge.ScanOutputs.empty(P, d, len(pot.blocks), 0, len(blocks))
    plan = _bridge.ScanPlan(steps=steps, K=16, late_start=steps - -(-steps // 10),
                            record_every=0, R=0, n_threads=1)
    _bridge.lane_kernel(pot._lane_form(), rule, q0, plan, bptr, bidx, out,
                        _bridge.csr(blocks), isa).run()
    return out


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("name", ["rayleigh8", "rayleigh5"])
@pytest.mark.parametrize("rule", ["sgd", "adam", "rmsprop"])
def test_one_law_on_all_coordinates_is_the_general_sum(rule, name, isa):
    """A single law on coordinates 0 .. d − 1 in order has its sums T_n (1.2),
    A_{n+1} and |Δ|² (the table of §1) taken with known indices (pyx/lanes_impl.h
    ``sym_all``); two copies of the same law take the general path through the index
    list.  The same sums in the same order: each copy's worst residual and its step are
    bitwise the single law's."""
    pot, q0 = PROBLEMS[name]
    d = pot.dim
    P = 11                                  # a full block and a partial one
    lr = np.geomspace(1e-3, 0.3, P)
    wd = np.where(np.arange(P) % 3 == 0, 0.0, 1e-2)
    if rule == "sgd":
        kind = nc.rules.SGD.kind
        hp = np.stack([lr, np.full(P, 0.9), np.zeros(P), np.zeros(P), wd], axis=1)
        vec, sca = np.zeros((P, d)), np.zeros((P, 1))
    elif rule == "adam":
        kind = nc.rules.Adam.kind
        hp = np.stack([lr, np.full(P, 0.9), np.full(P, 0.999), np.full(P, 1e-8), wd,
                       np.zeros(P), (np.arange(P) % 2).astype(float)], axis=1)
        vec, sca = np.zeros((P, 3 * d)), np.zeros((P, 1))
    else:
        kind = nc.rules.RMSprop.kind
        hp = np.stack([lr, np.full(P, 0.99), np.full(P, 1e-8), wd,
                       np.where(np.arange(P) % 2 == 0, 0.0, 0.5), np.zeros(P)], axis=1)
        vec, sca = np.zeros((P, 3 * d)), np.zeros((P, 1))
    full = np.arange(d)
    one = _lane_run(kind, hp, vec, sca, pot, q0, 300, isa, [full])
    two = _lane_run(kind, hp, vec, sca, pot, q0, 300, isa, [full, full])
    np.testing.assert_array_equal(one.q.view(np.int64), two.q.view(np.int64))
    for j in range(2):
        np.testing.assert_array_equal(two.charge_worst[:, j].view(np.int64),
                                      one.charge_worst[:, 0].view(np.int64))
        np.testing.assert_array_equal(two.charge_worst_step[:, j],
                                      one.charge_worst_step[:, 0])
    assert np.all(one.charge_worst[:, 0] > 0)     # the law was evaluated
