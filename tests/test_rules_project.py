"""ScalarRMSProp(project=True): the paper's scalar RMSProp on unit-norm scale blocks.

Sec. 4 (Eq. 18–20) compares SGD with BatchNorm to RMSProp on normalised weight rows; the
option renormalises every scale block after its step, inside the compiled loop.  Checked
against the NumPy twin (python/noether_ref/rules.py, whole loop including the potential's
twin), full batch and minibatch, and for the properties the option promises.

Tolerances: compiled and twin sum the gradients in different orders (few ulp per step),
carried forward with O(1) growth over these well-conditioned 300-step runs: 1e-12
relative to max|q| (as tests/test_rules.py).  Unit norm after projection: the norm of a
vector divided by its computed norm is 1 to a few ulp (1e-14).
"""
import numpy as np
import pytest

import noether_core as nc
from noether_core import rules as R
from noether_core.potentials import BatchNormMLP, BatchNormUnit
from noether_ref import potentials as rp
from noether_ref import rules as rr

RTOL = 1e-12


def _mlp():
    X, y = nc.datasets.gaussian_mixture(48, 5, classes=3, seed=4, separation=1.5)
    return BatchNormMLP(X, y, widths=(6, 4))


def _parts(pot):
    """Scale blocks in declaration order, then the rest (built from the metadata)."""
    parts = [np.asarray(pot.blocks[s.blocks[0]]) for s in pot.symmetries
             if s.family == "scale"]
    used = np.zeros(pot.dim, bool)
    for p in parts:
        used[p] = True
    n_scale = len(parts)
    if not used.all():
        parts.append(np.flatnonzero(~used))
    return parts, n_scale


def _unit_q0(pot, parts, n_scale, seed=0):
    q = np.random.default_rng(seed).standard_normal(pot.dim)
    for idx in parts[:n_scale]:
        q[idx] /= np.linalg.norm(q[idx])
    return q


@pytest.mark.parametrize("batch", [None, 12])
@pytest.mark.parametrize("rule", [
    R.ScalarRMSProp(lr=0.01, rho=0.99, G0=1.0, project=True),
    R.ScalarRMSProp(lr=0.02, rho=0.9, project=True, weight_decay=0.01),
])
def test_project_matches_reference_mlp(rule, batch):
    """Compiled == twin over 300 steps on BatchNormMLP (rows projected, rest not)."""
    pot = _mlp()
    parts, n_scale = _parts(pot)
    q0 = _unit_q0(pot, parts, n_scale)
    steps, seed = 300, 5
    res = nc.train(rule, pot, q0, steps, batch_size=batch, seed=seed, charges=False)
    assert not res.diverged
    grad = lambda q, rows: rp.batchnorm_mlp(q, pot.X, pot.labels, pot.widths,  # noqa: E731
                                            pot.n_classes, pot.eps, rows)
    ref = rr.train({"name": "ScalarRMSProp", **rule.params(), "n_projected": n_scale},
                   grad, q0, steps, n_data=pot.n_data, batch_size=batch,
                   rng=np.random.default_rng(seed), partition=parts)
    scale = np.abs(ref["q"]).max()
    assert np.max(np.abs(res.q - ref["q"])) <= RTOL * scale
    np.testing.assert_allclose(res.state.scalars["G"], ref["state"]["G"], rtol=1e-10)
    # every scale block on the unit sphere at every recorded row after the first step
    for idx in parts[:n_scale]:
        np.testing.assert_allclose(np.linalg.norm(res.q[1:, idx], axis=1), 1.0,
                                   rtol=0, atol=1e-14)
    # the rest is not renormalised (it moves off its initial norm)
    rest = parts[-1]
    assert abs(np.linalg.norm(res.q[-1, rest]) - np.linalg.norm(q0[rest])) > 1e-6


def test_project_off_is_unchanged_and_on_is_the_projected_step():
    """project=False gives the old rule bit for bit (project=True differs); one projected
    step equals the unprojected step followed by q_B/|q_B| (SPEC: the paper's rule on
    the sphere)."""
    X, y = nc.datasets.gaussian_mixture(30, 3, classes=2, seed=1)
    pot = BatchNormUnit(X, y.astype(float))
    q0 = np.array([0.6, -0.8, 0.0])
    a = nc.train(R.ScalarRMSProp(lr=0.05, G0=0.3), pot, q0, 1, charges=False)
    b = nc.train(R.ScalarRMSProp(lr=0.05, G0=0.3, project=True), pot, q0, 1, charges=False)
    _, g = rp.batchnorm_unit(q0, X, y.astype(float))
    want_free = q0 - 0.05 / np.sqrt(0.3 + 1e-8) * g
    np.testing.assert_allclose(a.q_final, want_free, rtol=1e-13)
    np.testing.assert_allclose(b.q_final, want_free / np.linalg.norm(want_free), rtol=1e-13)


def test_project_laws_and_bad_input():
    """With projection the scale law is not exact (the step is not linear in g): the
    rule says so, and the in-loop residual is then the measured breaking, not round-off."""
    pot = _mlp()
    rule = R.ScalarRMSProp(lr=0.01, G0=1.0, project=True)
    sym = next(s for s in pot.symmetries if s.family == "scale")
    tr = next(s for s in pot.symmetries if s.family == "translation")
    assert not rule.kinetic_symmetric(sym, pot)
    assert rule.kinetic_symmetric(tr, pot)
    assert R.ScalarRMSProp(lr=0.01, G0=1.0).kinetic_symmetric(sym, pot)
    parts, n_scale = _parts(pot)
    res = nc.train(rule, pot, _unit_q0(pot, parts, n_scale), 20, batch_size=12, seed=0)
    ch = res.charge("scale", sym.blocks[0])
    assert ch.law == "kinetic breaking" and ch.worst > 1e-8
    with pytest.raises(ValueError, match="per_block"):
        R.ScalarRMSProp(project=True, per_block=False)
    with pytest.raises((TypeError, ValueError), match="project"):
        R.ScalarRMSProp(project="yes")
