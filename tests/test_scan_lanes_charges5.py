"""The fused charges of the adaptive rules in the lane kernel, block by block.

pyx/lanes_impl.h ``step_rmsprop`` takes the free step's square roots and divisions in a
second pass after the real step's (docs/balance_laws.md §8, "Where the free step's
divisions go"), and both it and ``step_adam`` take sqrt(β₂) / sqrt(α) once per block
(the same correctly rounded root of the same number as the scalar step's, (8.1), (8.4)).
The second pass has three forms, chosen per block: every lane carried (no L2 decay, not
centered, no amsgrad: the carried root of (8.2)/(8.4)), every lane direct (L2 decay,
centered or amsgrad: the root of the free average), and mixed (a select per lane).
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
