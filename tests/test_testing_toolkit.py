"""noether_core.testing: the strategies draw what they promise, the assertions can fail,
run_python_rule computes the charges the compiled loop computes, and the examples of
README ("Testing your own rule") and docs/testing.md run as written.

Oracles: the compiled loop's in-kernel charges (pyx/rules.pyx) for run_python_rule (an
independent NumPy implementation of docs/balance_laws.md §1); SPEC §0 for symmetries;
the advertised orders of docs/integrators.md for assert_order.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import noether_core as nc
from noether_core import testing as nt
from noether_core._integrate import _ORDER
from noether_core.symmetry import Symmetry

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _exec_and_run_tests(code, name):
    ns = {"__name__": name}
    exec(compile(code, name, "exec"), ns)
    tests = [v for k, v in ns.items() if k.startswith("test_") and callable(v)]
    for t in tests:
        t()
    return len(tests)


def test_readme_example_runs():
    """README "Testing your own rule": its code block is executed and its test called."""
    readme = (ROOT / "README.md").read_text()
    head = readme.index("## Testing your own rule")
    nxt = readme.find("\n## ", head + 1)
    section = readme[head:] if nxt < 0 else readme[head:nxt]
    blocks = _python_blocks(section)
    assert len(blocks) == 1, "the README section must hold exactly one python block"
    assert _exec_and_run_tests(blocks[0], "README") == 1


@pytest.mark.parametrize("i", range(len(_python_blocks((ROOT / "docs/testing.md").read_text()))))
def test_docs_examples_run(i):
    _exec_and_run_tests(_python_blocks((ROOT / "docs/testing.md").read_text())[i],
                        f"docs/testing.md[{i}]")


def test_hypothesis_is_optional():
    """``import noether_core`` works without hypothesis; noether_core.testing says what
    is missing."""
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import noether_core\n"
            "assert 'hypothesis' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
            "try:\n    import noether_core.testing\n"
            "except ImportError as e:\n"
            "    assert 'pip install hypothesis' in str(e); print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


# -- strategies ----------------------------------------------------------------------------

@settings(deadline=None)
@given(rule=nt.rules(), pot=nt.potentials(), data=st.data())
def test_stable_rules_stay_finite(rule, pot, data):
    """rules(stable=True) × potentials() × initial_states(): 100 steps stay finite (the
    promise of docs/testing.md §1)."""
    positive = getattr(rule, "mirror", None) == "entropy"
    q0 = data.draw(nt.initial_states(pot, positive=positive))
    run = nc.train(rule, pot, q0, 100, record_every=50)
    assert not run.diverged, run.stop_reason
    assert np.all(np.isfinite(run.q_final))


@pytest.mark.parametrize("family", sorted(nt.POTENTIAL_FAMILIES))
@settings(deadline=None, max_examples=8)
@given(data=st.data())
def test_potentials_declare_their_family(family, data):
    pot = data.draw(nt.potentials(family))
    fams = {s.family for s in pot.symmetries}
    assert (family in fams) if family != "none" else not fams
    q0 = data.draw(nt.initial_states(pot))
    for _name, idx in pot.blocks.items():      # block norms bounded away from 0
        assert np.linalg.norm(q0[idx]) >= 0.1 * np.sqrt(len(idx)) * (1 - 1e-15)
    if family != "none":
        nt.assert_symmetry(pot, q0)


@settings(deadline=None)
@given(nt.sphere_states(5), nt.skew_matrices(4), nt.unit_vectors(3))
def test_geometric_strategies(y, om, n):
    u, w = y[2:7], y[7:]
    assert abs(u @ u - 1) < 1e-15 * 4 and abs(u @ w) < 1e-15 * 8 * (1 + np.abs(w).max())
    assert y[0] > 0
    np.testing.assert_array_equal(om, -om.T)
    assert abs(np.linalg.norm(om) - 1) < 1e-14 and abs(n @ n - 1) < 1e-15 * 4


@settings(deadline=None, max_examples=10)
@given(y0=nt.sphere_states(3))
def test_sphere_states_are_accepted_by_radial_angular(y0):
    """integrate() refuses y0 off the constraint by more than CONSTRAINT_TOL = 1e-10."""
    model = nc.models.RadialAngular(nc.potentials.RayleighQuotient(np.diag([1.0, 2, 3])),
                                    m=1.0, mu=0.3, k=0.1)
    r = nc.integrate(model, y0, t_end=0.5, h=0.1, method="conformal-verlet")
    assert not r.diverged


def test_rule_params_validation():
    with pytest.raises(TypeError, match="no parameter"):
        nt.rule_params(nc.rules.SGD, betas=(0.9, 0.9))
    with pytest.raises(TypeError, match="rule_cls"):
        nt.rule_params(dict)
    with pytest.raises(ValueError, match="family"):
        nt.potentials("shear")


@settings(deadline=None, max_examples=10)
@given(pot=nt.potentials(), data=st.data())
def test_symmetry_generators(pot, data):
    if not pot.symmetries:
        with pytest.raises(ValueError, match="no symmetry"):
            nt.symmetry_generators(pot)
        return
    sym, om = data.draw(nt.symmetry_generators(pot))
    q = data.draw(nt.initial_states(pot))
    xi = nc.symmetry.generator(sym, q, pot.blocks, om)
    g = pot.grad(q)
    if sym.exact:   # SPEC §0: <grad f, xi> = 0, relative round-off
        assert abs(g @ xi) <= 1e-10 * np.linalg.norm(g) * np.linalg.norm(xi)


# -- run_python_rule against the compiled loop ---------------------------------------------

def _heavy_ball(lr, beta, k):
    def step(q, g, v):
        v = beta * v + (g + k * q)
        return q - lr * v, v
    return step


@settings(deadline=None, max_examples=15)
@given(kw=nt.rule_params(nc.rules.SGD, nesterov=False, dampening=0.0),
       pot=nt.potentials(), data=st.data())
def test_python_rule_charges_equal_compiled(kw, pot, data):
    """The NumPy charges of run_python_rule equal the kernel's (moment, J) to round-off
    amplified by 30 steps (rtol 1e-9; atol 1e-12 of the natural scale max|q|² of every
    moment, since charges that vanish in exact arithmetic come out as ~1e-19 in one and 0
    in the other), and both residuals are round-off (< 1e-12)."""
    q0 = data.draw(nt.initial_states(pot))
    om = data.draw(nt.skew_matrices(pot.dim)) if pot.symmetry_blocks("rotation") else None
    run = nt.run_python_rule(_heavy_ball(kw["lr"], kw["momentum"], kw["weight_decay"]),
                             pot, q0, 30, state=np.zeros(pot.dim), omega=om)
    ref = nc.train(nc.rules.SGD(**kw), pot, q0, 30, omega=om)
    assert set(run.charges) == set(ref.charges)
    for k, c in run.charges.items():
        r = ref.charges[k]
        scale = np.abs(r.moment).max() + np.max(np.sum(ref.q ** 2, axis=1))
        np.testing.assert_allclose(c.moment, r.moment, rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(c.charge, r.charge, rtol=1e-9,
                                   atol=1e-12 * (np.abs(r.charge).max() + scale))
    if run.charges:
        assert nt.assert_balance_law(run) < nt.EXACT_TOL
        assert nt.assert_balance_law(ref) < nt.EXACT_TOL


def test_balance_law_assertion_fails_when_it_should():
    rng = np.random.default_rng(0)
    pot = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 4.0]))
    q0 = rng.uniform(0.5, 1.5, 3)

    def rms(q, g, s):                      # per-coordinate preconditioner: breaks scale
        s = 0.9 * s + 0.1 * g * g
        return q - 0.05 * g / (np.sqrt(s) + 1e-8), s
    bad = nt.run_python_rule(rms, pot, q0, 20, state=np.zeros(3))
    with pytest.raises(AssertionError, match=r"scale:q .*worst relative residual"):
        nt.assert_balance_law(bad)
    adam = nc.train(nc.rules.Adam(lr=0.01), pot, q0, 20)     # law: "kinetic breaking"
    with pytest.raises(AssertionError, match="0 balance law"):
        nt.assert_balance_law(adam)
    with pytest.raises(AssertionError, match="violated"):
        nt.assert_balance_law(adam, laws=("kinetic breaking",))
    with pytest.warns(nc.DivergenceWarning):
        div = nc.train(nc.rules.SGD(lr=0.1), pot, np.zeros(3), 5)   # f undefined at 0
    with pytest.raises(AssertionError, match="diverged"):
        nt.assert_balance_law(div)


# -- assert_order and assert_symmetry -------------------------------------------------------

MODEL = nc.models.Damped(nc.potentials.Radial(3), m=1.0, mu=0.5, k=0.1)
Y0 = np.array([1.0, 0.5, -0.3, 0.1, 0.2, 0.0])


@pytest.mark.parametrize("method,hs", [("conformal-euler", [0.1, 0.05, 0.025, 0.0125]),
                                       ("conformal-verlet", [0.2, 0.1, 0.05, 0.025]),
                                       ("rk4", [0.4, 0.2, 0.1, 0.05])])
def test_assert_order_measures_the_advertised_order(method, hs):
    slope = nt.assert_order(method, MODEL, Y0, t_end=2.0, hs=hs)
    assert abs(slope - _ORDER[method]) < 0.3


def test_assert_order_fails_on_a_wrong_claim():
    with pytest.raises(AssertionError, match="slope"):
        nt.assert_order("conformal-euler", MODEL, Y0, t_end=2.0,
                        hs=[0.1, 0.05, 0.025, 0.0125], order=2)
    with pytest.raises(AssertionError, match="floor"):     # everything at round-off
        nt.assert_order("rk4", MODEL, Y0, t_end=2.0, hs=[1e-3, 5e-4, 2.5e-4])


def test_assert_symmetry_fails_on_a_false_claim():
    A = np.diag([1.0, 2.0, 3.0])
    quad = nc.potentials.Quadratic(A)
    with pytest.raises(AssertionError, match="scale"):
        nt.assert_symmetry(quad, symmetries=[Symmetry("scale", ("q",))])
    X, y = nc.datasets.teacher_regression(16, 3, seed=0)
    bn = nc.potentials.BatchNormUnit(X, y[:, 0] if y.ndim == 2 else y, eps=1e-2)
    with pytest.raises(AssertionError, match="declares no exact"):
        nt.assert_symmetry(bn)
    with pytest.raises(AssertionError):              # eps breaks scale by ~eps/var
        nt.assert_symmetry(bn, symmetries=list(bn.symmetries))
