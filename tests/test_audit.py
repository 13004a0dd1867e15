"""The symmetry audit and check_symmetry (issue 7; docs/byom.md §3; SPEC §0 families).

* every declared symmetry of every built-in potential is found by the audit from gradients
  alone (verdict "holds", translation direction ∥ the declared n) and confirmed by
  check_symmetry (worst |⟨∇f, ξ⟩|/(|∇f||ξ|) at round-off);
* no family holds on any block of a random Quadratic (hypothesis over instances): a
  generic quadratic has no symmetry, so any "holds" would be a false positive;
* a plain function with a known translation and rescale is audited correctly, the
  fitted rotation generator of an anisotropic-but-rotation-invariant function is its Ω;
* too few samples give "undetermined", not a guess; bad input raises naming the argument.

Tolerances: the audit's "holds" threshold is 1e-8 on a cosine; exact gradients give
cosines at ~1e-15 (round-off of O(d) sums), and the generic non-symmetric scores of the
hypothesis test are ≥ 5e-4 (the best direction of an SVD over > 2·dim unit gradients;
docs/byom.md §3 for why such fits cannot come close to zero by chance).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import potentials as P
from noether_core.audit import audit, candidate_blocks, check_symmetry
from noether_core.symmetry import random_skew


def _builtins():
    X, Y = nc.datasets.teacher_regression(40, 4, out=2, seed=0)
    Xc, lab = nc.datasets.gaussian_mixture(60, 4, classes=3, seed=0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    return {
        "Quadratic": P.Quadratic(a @ a.T + np.eye(5), rng.standard_normal(5)),
        "RayleighQuotient": P.RayleighQuotient(a + a.T),
        "Radial-double_well": P.Radial(4),
        "Radial-log": P.Radial(3, "log"),
        "Radial-gaussian": P.Radial(5, "gaussian"),
        "BatchNormUnit": P.BatchNormUnit(X, Y[:, 0]),
        "BatchNormUnit-eps": P.BatchNormUnit(X, Y[:, 0], eps=1e-5),
        "BatchNormLayer": P.BatchNormLayer(X, Y, width=3),
        "SoftmaxCrossEntropy": P.SoftmaxCrossEntropy(Xc, lab),
        "TwoLayer-relu": P.TwoLayer(X, Y, hidden=3),
        "TwoLayer-linear": P.TwoLayer(X, Y, hidden=3, activation="linear"),
        "BatchNormMLP": P.BatchNormMLP(Xc, lab, widths=(5, 4)),
    }


BUILTINS = _builtins()


@pytest.mark.parametrize("name", list(BUILTINS))
def test_audit_finds_every_declared_symmetry(name):
    pot = BUILTINS[name]
    Q = np.random.default_rng(1).standard_normal((40, pot.dim))
    res = audit(pot, Q)
    for s in pot.symmetries:
        f = res.get(s.family, s.blocks)
        # exact declarations must hold; BatchNorm with eps > 0 is declared inexact and
        # must be flagged as approximate (broken by ~eps/var, Eq. P.6)
        assert f.verdict == ("holds" if s.exact else "approximate"), (s, f)
        if s.family == "translation":
            assert abs(abs(f.direction @ s.direction) - 1.0) < 1e-10
    chk = check_symmetry(pot, n_points=32, seed=2)
    assert chk.ok and chk.worst < 1e-12, str(chk)


@pytest.mark.parametrize("name", list(BUILTINS))
def test_audit_claims_nothing_that_does_not_hold(name):
    """Whatever the audit calls "holds" really is a symmetry: f is unchanged along the
    finite transformation (checked at fresh points, with values, not gradients)."""
    from noether_core.symmetry import transform
    pot = BUILTINS[name]
    rng = np.random.default_rng(3)
    res = audit(pot, rng.standard_normal((40, pot.dim)))
    for f in res.holding():
        sym = f.symmetry()
        om = random_skew(len(pot.blocks[f.blocks[0]]), rng) if (
            f.family == "rotation" and f.omega is None) else None
        for q in rng.standard_normal((3, pot.dim)):
            f0 = pot.value(q)
            f1 = pot.value(transform(sym, q, 0.3, pot.blocks, omega=om))
            assert abs(f1 - f0) <= 1e-10 * max(1.0, abs(f0)), (name, f)


@given(seed=st.integers(0, 2**32 - 1), d=st.integers(2, 7))
def test_no_false_symmetry_on_quadratic(seed, d):
    """Random well-conditioned A (eigenvalues in [0.5, 3]) and b ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    Qm, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (Qm * rng.uniform(0.5, 3.0, d)) @ Qm.T
    pot = P.Quadratic(A, rng.standard_normal(d))
    blocks = {"q": np.arange(d), "head": np.arange(d // 2 + 1), "one": np.array([d - 1])}
    res = audit(pot, 2.0 * rng.standard_normal((8 * d + 8, d)), blocks)
    assert res.holding() == [], str(res)
    # and not marginally: over 2400 instances of this strategy the smallest score seen
    # was 5.7e-4 (a near-null direction of an SVD fit); 1e-5 leaves a factor 50
    assert min(f.score for f in res.findings if np.isfinite(f.score)) > 1e-5


def test_audit_of_a_plain_function():
    """f = logsumexp(q0..q2) − q0 + (q3 q4)² + q5² (numpy, no blocks declared):
    translation of (q0, q1, q2) along 1/√3, rescale of (q3) against (q4), nothing on q5."""
    def fn(q):
        z = q[:3] - q[:3].max()
        p = np.exp(z) / np.exp(z).sum()
        f = np.log(np.exp(z).sum()) + q[:3].max() - q[0] + (q[3] * q[4]) ** 2 + q[5] ** 2
        g = np.concatenate([p - [1, 0, 0], [2 * q[3] * q[4] ** 2, 2 * q[4] * q[3] ** 2, 2 * q[5]]])
        return f, g
    blocks = {"logits": [0, 1, 2], "a": [3], "b": [4], "c": [5]}
    res = audit(fn, np.random.default_rng(0).standard_normal((30, 6)), blocks)
    found = {(f.family, f.blocks) for f in res.holding()}
    assert found == {("translation", ("logits",)), ("rescale", ("a", "b"))}, str(res)
    n = res.get("translation", "logits").direction
    np.testing.assert_allclose(n, np.full(3, 1 / np.sqrt(3)), rtol=1e-10)
    assert res.get("scale", "c").verdict == "broken"


def test_audit_fits_a_specific_rotation():
    """f = φ(qᵀq) + ψ(qᵀMq) with M = Ω-commuting: f(q) = (q0² + q1²)² + q2⁴ is invariant
    under rotations in the (0, 1) plane only; the audit must return that Ω."""
    def grad(q):
        r2 = q[0] ** 2 + q[1] ** 2
        return np.array([4 * r2 * q[0], 4 * r2 * q[1], 4 * q[2] ** 3])
    res = audit(grad, np.random.default_rng(0).standard_normal((20, 3)))
    f = res.get("rotation", "q")
    assert f.verdict == "holds" and f.omega is not None
    om = np.zeros((3, 3))
    om[0, 1], om[1, 0] = 1 / np.sqrt(2), -1 / np.sqrt(2)
    assert min(np.abs(f.omega - om).max(), np.abs(f.omega + om).max()) < 1e-10


def test_too_few_samples_is_undetermined():
    pot = BUILTINS["SoftmaxCrossEntropy"]
    res = audit(pot, np.random.default_rng(0).standard_normal((5, pot.dim)))
    assert res.get("translation", "b").verdict == "undetermined"
    # scale needs one sample per point: decided even with few samples
    assert res.get("scale", "b").verdict == "broken"


def test_candidate_blocks_rows_columns_and_tensors():
    b = candidate_blocks({"w": (3, 2, 2), "bias": (3,), "v": (2, 3)})
    np.testing.assert_array_equal(b["w"], np.arange(12))
    np.testing.assert_array_equal(b["w[1]"], np.arange(4, 8))
    np.testing.assert_array_equal(b["w[:,1]"], [2, 3, 6, 7, 10, 11])
    np.testing.assert_array_equal(b["bias"], np.arange(12, 15))
    np.testing.assert_array_equal(b["v[1]"], np.arange(18, 21))
    np.testing.assert_array_equal(b["v[:,2]"], [17, 20])
    assert "bias[0]" not in b
    assert "w[:,0]" not in candidate_blocks({"w": (3, 2)}, columns=False)


def test_audit_finds_relu_rescale_pairs_from_shapes_alone():
    """A bias-free ReLU net P = relu(X W1ᵀ) W2ᵀ given only as a function of flat q and the
    tensor shapes: the audit finds the rescale pair (W1[i], W2[:,i]) of each hidden unit
    (and the whole-layer pair (W1, W2), their sum) and nothing else."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))

    def fn(q):
        W1, W2 = q[:12].reshape(4, 3), q[12:].reshape(2, 4)
        Z = X @ W1.T
        A = np.maximum(Z, 0.0)
        R = A @ W2.T - Y
        gW2 = R.T @ A / len(X)
        gW1 = ((R @ W2) * (Z > 0)).T @ X / len(X)
        return 0.5 * (R * R).sum() / len(X), np.concatenate([gW1.ravel(), gW2.ravel()])
    blocks = candidate_blocks({"W1": (4, 3), "W2": (2, 4)})
    res = audit(fn, rng.standard_normal((40, 20)), blocks)
    found = {(f.family, f.blocks) for f in res.holding()}
    want = {("rescale", (f"W1[{i}]", f"W2[:,{i}]")) for i in range(4)}
    want.add(("rescale", ("W1", "W2")))
    assert found == want, str(res)


def test_audit_bad_input():
    pot = BUILTINS["RayleighQuotient"]
    with pytest.raises(ValueError, match="q_samples has 3 columns"):
        audit(pot, np.ones((4, 3)))
    with pytest.raises(TypeError, match="potential_or_fn must be"):
        audit(3.0, np.ones((4, 3)))
    with pytest.raises(ValueError, match="families: unknown family 'shear'"):
        audit(pot, np.ones((4, 5)), families=("shear",))
    with pytest.raises(ValueError, match="gradient is not finite at q_samples\\[0\\]"):
        audit(pot, np.zeros((4, 5)))
    print(audit(pot, np.random.default_rng(0).standard_normal((4, 5))))
