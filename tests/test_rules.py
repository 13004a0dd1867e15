"""The compiled learning rules (pyx/rules.pyx via noether_core.train), SPEC §1 and §1.1.

* Agreement with the NumPy twin python/noether_ref/rules.py over hundreds of steps, full
  batch and minibatch (same seed → same draws), every rule and option (SPEC §5
  "Agreement"); hypothesis over valid hyper-parameters.
* The exact discrete scale identity of SPEC §1.1 for SGD + momentum + weight decay.
* The (η, β) ↔ (h, m, μ) conversions (SPEC §1, noether_core/conventions.py) and heavy ball
  as the discrete Euler–Lagrange equations of L_d (SPEC §1, docs/rules.md §5).
* The binding contract: bad input, float32 / non-contiguous q0, divergence, the
  recording-size guard.

Tolerances.  The twin performs the rules' floating-point operations in the same order,
but the potentials' gradients are summed in a different order (BLAS vs the C loop), so
the two differ by a few ulp per step; the well-conditioned runs below carry such
differences forward with O(1) growth.  We assert 1e-12 relative to the trajectory's size
(max|q|), i.e. ~5000 ulp of headroom for 300 steps (measured: below 1e-14).
"""
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import rules as R
from noether_core.potentials import BatchNormUnit, Potential, Quadratic, RayleighQuotient
from noether_core.symmetry import Symmetry
from noether_ref import potentials as rp
from noether_ref import rules as rr

RTOL = 1e-12                 # compiled vs NumPy twin, relative to max|q| (docstring)
IDENTITY_RTOL = 1e-12        # exact identities, relative to the size of their terms
STEPS = 300


# --------------------------------------------------------------------------------------
# problems

def _bn(seed=0, n=40, d=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)
    y = np.sin(X @ rng.standard_normal(d)) + 0.1 * rng.standard_normal(n)
    return BatchNormUnit(X, y)


def _spd(seed, d):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d))
    return M @ M.T / d + np.eye(d)


def _split_potential():
    """A Rayleigh quotient on R^6 whose metadata declares a scale block "a" = q[0:4] and
    a block "b" = q[4:6] without symmetry, so ScalarRMSProp(per_block=True) keeps two
    scalars G (the built-in potentials put all of q in one block)."""
    ker = RayleighQuotient(_spd(3, 6))._kernel
    return Potential(ker, {"a": np.arange(4), "b": np.arange(4, 6)},
                     (Symmetry("scale", ("a",)),), ())


BN = _bn()
RAYLEIGH = RayleighQuotient(_spd(1, 5) - 1.5 * np.eye(5))
QUAD = Quadratic(_spd(2, 5), np.linspace(-1.0, 1.0, 5))
SPLIT = _split_potential()


def ref_grad(pot):
    """The NumPy twin of a potential, as ``grad(q, rows) -> (f, g)``."""
    if isinstance(pot, BatchNormUnit):
        return lambda q, rows: rp.batchnorm_unit(q, pot.X, pot.y, pot.eps, rows)
    if isinstance(pot, Quadratic):
        return lambda q, rows: rp.quadratic(q, pot.A, pot.b)
    if pot is SPLIT:
        A = _spd(3, 6)
        return lambda q, rows: rp.rayleigh(q, A)
    if isinstance(pot, RayleighQuotient):
        return lambda q, rows: rp.rayleigh(q, pot.A)
    raise AssertionError(pot)


def ref_partition(rule, pot):
    """ScalarRMSProp's parts, built here from the metadata (not from rules.py): one per
    scale block in declaration order, then the remaining coordinates."""
    if not isinstance(rule, R.ScalarRMSProp):
        return None
    if not rule.per_block:
        return [np.arange(pot.dim)]
    parts = [np.asarray(pot.blocks[s.blocks[0]]) for s in pot.symmetries
             if s.family == "scale"]
    used = np.zeros(pot.dim, bool)
    for p in parts:
        used[p] = True
    if not used.all():
        parts.append(np.flatnonzero(~used))
    return parts


def q0_for(rule, pot, seed=0):
    q = np.random.default_rng(100 + seed).standard_normal(pot.dim)
    if isinstance(rule, R.MirrorDescent) and rule.mirror == "entropy":
        q = np.abs(q) + 0.2                       # negative entropy lives on q > 0
    return q


def _rel(a, b, scale):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / scale) if np.size(a) else 0.0


def assert_matches_reference(rule, pot, q0, steps=STEPS, batch_size=None, seed=None,
                             record_every=1, gradients="twin", exact=False):
    """Run compiled and NumPy twin; compare every recorded row, q_final and the state.

    ``gradients="twin"``: the reference evaluates the NumPy twin of the potential
    (python/noether_ref/potentials.py), so the whole loop is independent;
    ``"compiled"``: the reference is fed the compiled potential's gradient
    (``pot.value_and_grad``), isolating the rule's arithmetic; ``exact`` then asks for
    bitwise equality (rules made only of +, −, ×, ÷, sqrt in the same order)."""
    res = nc.train(rule, pot, q0, steps, batch_size=batch_size, seed=seed,
                   record_every=record_every)
    assert not res.diverged, res
    grad = ref_grad(pot) if gradients == "twin" else pot.value_and_grad
    ref = rr.train({"name": type(rule).__name__, **rule.params()}, grad, q0, steps,
                   record_every=record_every, n_data=pot.n_data, batch_size=batch_size,
                   rng=np.random.default_rng(seed), partition=ref_partition(rule, pot))
    np.testing.assert_array_equal(res.steps, ref["steps"])
    if exact:
        np.testing.assert_array_equal(res.q, ref["q"])
        np.testing.assert_array_equal(res.q_final, ref["q_final"])
    scale = np.abs(ref["q"]).max()
    assert _rel(res.q, ref["q"], scale) <= RTOL
    assert _rel(res.q_final, ref["q_final"], scale) <= RTOL
    np.testing.assert_allclose(res.loss, ref["loss"], rtol=RTOL, atol=RTOL * np.abs(
        ref["loss"]).max())
    np.testing.assert_allclose(res.grad_norm2, ref["grad_norm2"], rtol=1e-10,
                               atol=RTOL * ref["grad_norm2"].max())
    _compare_state(rule, res.state, ref["state"])
    assert res.state.step == steps
    return res, ref


def _compare_state(rule, got, want):
    if isinstance(rule, R.ScalarRMSProp):
        assert bool(got.scalars["initialised"]) == bool(want["initialised"])
        np.testing.assert_allclose(got.scalars["G"], want["G"], rtol=1e-10)
        return
    if isinstance(rule, R.MirrorDescent):
        assert got.arrays == {}
        return
    for name, arr in got.arrays.items():
        w = want[name]
        np.testing.assert_allclose(arr, w, rtol=1e-10, atol=RTOL * max(np.abs(w).max(), 1.0))
    for name in ("step", "has_buffer"):
        if name in got.scalars:
            assert got.scalars[name] == float(want[name])


# --------------------------------------------------------------------------------------
# every rule and option vs the NumPy twin

# Every rule and option.  The hyper-parameters are in non-chaotic regimes on the three
# problems: with adaptive rules and weight decay, a scale-invariant loss lets |q| shrink
# until the step is unstable, and two correct implementations then separate
# exponentially (test_chaotic_run_separates_by_dynamics_not_code).
VARIANTS = [
    R.SGD(lr=0.05),
    R.SGD(lr=0.05, weight_decay=0.01),
    R.SGD(lr=0.05, momentum=0.9),
    R.SGD(lr=0.05, momentum=0.9, dampening=0.4, weight_decay=0.01),
    R.SGD(lr=0.05, momentum=0.5, dampening=1.0),
    R.SGD(lr=0.05, momentum=0.9, nesterov=True),
    R.SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
    R.RMSprop(lr=0.005),
    R.RMSprop(lr=0.002, alpha=0.9, eps=1e-4, weight_decay=0.02),
    R.RMSprop(lr=0.002, momentum=0.7),
    R.RMSprop(lr=0.005, centered=True),
    R.RMSprop(lr=0.001, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.01),
    R.Adam(lr=0.01),
    R.Adam(lr=0.001, betas=(0.5, 0.9), weight_decay=0.05),
    R.Adam(lr=0.01, amsgrad=True),
    R.Adam(lr=0.01, amsgrad=True, weight_decay=0.05, eps=1e-5),
    R.AdamW(lr=0.01),
    R.AdamW(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99)),
    R.ScalarRMSProp(lr=0.01),
    R.ScalarRMSProp(lr=0.01, per_block=False),
    R.ScalarRMSProp(lr=0.005, G0=0.5, rho=0.9),
    R.ScalarRMSProp(lr=0.01, G0=2.0, per_block=False, weight_decay=0.01),
    R.ScalarRMSProp(lr=0.002, rho=0.0, eps=1e-4),
    R.MirrorDescent(lr=0.05),
    R.MirrorDescent(lr=0.05, mirror="diagonal", D=(0.5, 1.0, 1.5, 2.0, 2.5),
                    weight_decay=0.01),
    R.MirrorDescent(lr=0.05, mirror="pnorm", p=1.5),
    R.MirrorDescent(lr=0.05, mirror="pnorm", p=3.0, weight_decay=0.01),
    R.MirrorDescent(lr=0.05, mirror="entropy"),
    R.MirrorDescent(lr=0.05, mirror="entropy", weight_decay=0.05),
]


def _vid(rule):
    return f"{type(rule).__name__}({','.join(f'{k}={v}' for k, v in rule.params().items())})"


def _problem(rule, mode):
    """(potential, batch_size, seed) of a test mode."""
    if mode == "rayleigh":
        if isinstance(rule, R.ScalarRMSProp):
            return SPLIT, None, None
        return RAYLEIGH, None, None
    return (BN, 8, 11) if mode == "minibatch" else (BN, None, None)


def _basic_ops_only(rule):
    """Rules whose update uses only +, −, ×, ÷, sqrt, in the twin's order: the compiled
    loop and the twin then round identically (no FMA: the build has -ffp-contract=off
    and NumPy never fuses), so equal gradients give bitwise equal runs.  Not so for
    ScalarRMSProp (|g_B|² is a BLAS dot in the twin, a sequential sum in C), nor for the
    p-norm and entropy mirrors (NumPy's vectorised pow/exp may differ from libm's by an
    ulp)."""
    if isinstance(rule, R.MirrorDescent):
        return rule.mirror in ("euclidean", "diagonal")
    return not isinstance(rule, R.ScalarRMSProp)


@pytest.mark.parametrize("rule", VARIANTS, ids=_vid)
@pytest.mark.parametrize("mode", ["full", "minibatch", "rayleigh"])
def test_every_variant_matches_reference(rule, mode):
    """SPEC §5 Agreement: compiled == python/ twin (rules AND potentials) to 1e-12
    relative over 300 steps, every rule and option, full batch and minibatch."""
    pot, batch, seed = _problem(rule, mode)
    assert_matches_reference(rule, pot, q0_for(rule, pot), batch_size=batch, seed=seed)


@pytest.mark.parametrize("rule", VARIANTS, ids=_vid)
@pytest.mark.parametrize("mode", ["full", "minibatch", "rayleigh"])
def test_every_variant_rule_arithmetic(rule, mode):
    """The rules alone: the twin fed the compiled gradients reproduces the compiled run
    bitwise for the rules of ``_basic_ops_only``, to 1e-12 for the others."""
    pot, batch, seed = _problem(rule, mode)
    assert_matches_reference(rule, pot, q0_for(rule, pot), batch_size=batch, seed=seed,
                             gradients="compiled", exact=_basic_ops_only(rule))


def test_chaotic_run_separates_by_dynamics_not_code():
    """Why the variants above are chosen in non-chaotic regimes.  Adam(lr=0.01,
    betas=(0.5, 0.9), weight_decay=0.05) on the BatchNorm unit drives |w| down until the
    step is unstable (the BN Hessian grows like 1/|w|²): from step ~185 any ulp-level
    difference (here: the gradient's summation order, BLAS vs C loop) grows ~1000× per
    5 steps.  The rule's arithmetic is still identical — bitwise, with equal gradients."""
    rule = R.Adam(lr=0.01, betas=(0.5, 0.9), weight_decay=0.05)
    q0 = q0_for(rule, BN)
    res = nc.train(rule, BN, q0, 300)
    twin = rr.train({"name": "Adam", **rule.params()}, ref_grad(BN), q0, 300)
    err = np.abs(res.q - twin["q"]).max(axis=1) / np.abs(twin["q"]).max()
    assert err[:150].max() <= RTOL                  # agreement while the run is stable
    assert err[-1] > 1e-9                           # then exponential separation
    assert_matches_reference(rule, BN, q0, gradients="compiled", exact=True)


def test_scalar_rmsprop_per_block_changes_the_run():
    """On a potential with two parts, per_block=True keeps two G (and moves q differently
    from one global G): the option is not a no-op."""
    rule = R.ScalarRMSProp(lr=0.05)
    assert rule.part_names(SPLIT) == ["a", "rest"]
    a = nc.train(rule, SPLIT, q0_for(rule, SPLIT), 50)
    b = nc.train(rule.replace(per_block=False), SPLIT, q0_for(rule, SPLIT), 50)
    assert a.state.scalars["G"].shape == (2,) and b.state.scalars["G"].shape == (1,)
    assert np.abs(a.q_final - b.q_final).max() > 1e-6


def test_minibatch_uses_the_seeded_draws():
    """Same seed → same rows → same run; another seed → another run (the draws matter)."""
    rule = R.SGD(lr=0.05, momentum=0.9)
    q0 = q0_for(rule, BN)
    a = nc.train(rule, BN, q0, 50, batch_size=8, seed=3)
    b = nc.train(rule, BN, q0, 50, batch_size=8, seed=np.random.default_rng(3))
    c = nc.train(rule, BN, q0, 50, batch_size=8, seed=4)
    np.testing.assert_array_equal(a.q, b.q)
    assert not np.array_equal(a.q, c.q)


def test_draws_are_uniform_distinct_rows():
    """The replayed sampling scheme (docs/rules.md §2): B distinct rows, each row equally
    likely.  40 rows, B = 8, 4000 draws: each count ~ Binomial(4000, 1/5), sd ≈ 25;
    the bound 6 sd fails with probability < 1e-7 per row under uniformity."""
    rng = np.random.default_rng(0)
    counts = np.zeros(40)
    for _ in range(4000):
        rows = rr.draw_batch(rng, 40, 8)
        assert len(set(rows.tolist())) == 8
        counts[rows] += 1
    assert np.all(np.abs(counts - 800) < 6 * math.sqrt(4000 * 0.2 * 0.8))


# -- hypothesis over valid hyper-parameters ---------------------------------------------

_lr = st.floats(1e-3, 0.1)
_unit = st.floats(0.0, 0.99)
_wd = st.one_of(st.just(0.0), st.floats(0.0, 0.1))


@st.composite
def rules(draw):
    kind = draw(st.sampled_from(["SGD", "RMSprop", "Adam", "AdamW", "ScalarRMSProp",
                                 "MirrorDescent"]))
    if kind == "SGD":
        mom = draw(st.one_of(st.just(0.0), _unit))
        nest = mom > 0 and draw(st.booleans())
        damp = 0.0 if nest else draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
        return R.SGD(lr=draw(_lr), momentum=mom, dampening=damp, nesterov=nest,
                     weight_decay=draw(_wd))
    if kind == "RMSprop":
        return R.RMSprop(lr=draw(st.floats(1e-4, 0.01)), alpha=draw(st.floats(0.5, 0.999)),
                         eps=draw(st.floats(1e-10, 1e-3)), weight_decay=draw(_wd),
                         momentum=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.9))),
                         centered=draw(st.booleans()))
    if kind in ("Adam", "AdamW"):
        return getattr(R, kind)(lr=draw(st.floats(1e-4, 0.02)),
                                betas=(draw(_unit), draw(st.floats(0.5, 0.9999))),
                                eps=draw(st.floats(1e-10, 1e-3)), weight_decay=draw(_wd),
                                amsgrad=draw(st.booleans()))
    if kind == "ScalarRMSProp":
        return R.ScalarRMSProp(lr=draw(st.floats(1e-3, 0.05)), rho=draw(_unit),
                               eps=draw(st.floats(1e-10, 1e-3)),
                               G0=draw(st.one_of(st.none(), st.floats(0.1, 10.0))),
                               per_block=draw(st.booleans()), weight_decay=draw(_wd))
    mirror = draw(st.sampled_from(["euclidean", "diagonal", "pnorm", "entropy"]))
    extra = {}
    if mirror == "diagonal":
        extra["D"] = tuple(draw(st.lists(st.floats(0.5, 2.0), min_size=5, max_size=5)))
    if mirror == "pnorm":
        extra["p"] = draw(st.floats(1.2, 4.0))
    return R.MirrorDescent(lr=draw(st.floats(1e-3, 0.05)), mirror=mirror,
                           weight_decay=draw(_wd), **extra)


def _ref_state(rule, state):
    """A noether_core RuleState as the twin's state dict (python/noether_ref/rules.py)."""
    arr = {k: v.copy() for k, v in state.arrays.items()}
    sca = state.scalars
    if isinstance(rule, R.SGD):
        return {**arr, "has_buffer": bool(sca["has_buffer"])}
    if isinstance(rule, (R.RMSprop, R.Adam)):
        return {**arr, "step": int(sca["step"])}
    if isinstance(rule, R.ScalarRMSProp):
        return {"initialised": bool(sca["initialised"]), "G": np.array(sca["G"], float)}
    return {}


def assert_steps_shadow(rule, pot, q0, steps, batch_size=None, seed=None):
    """Step-by-step agreement along the compiled trajectory: from every (q_n, state_n)
    the compiled loop (one-step runs chained by ``state=``) and the twin's ``step`` make
    the same update, with the same minibatch rows (the twin replays the draws from a
    Generator of the same seed).  A one-step comparison cannot be spoiled by the run's
    sensitivity to round-off (chaotic runs), so it covers every hyper-parameter.
    Tolerance per step: 1e-14 of max|q| (the step's ops differ by at most a few ulp:
    BLAS dot vs sequential |g_B|², NumPy's pow/exp vs libm's)."""
    rdict = {"name": type(rule).__name__, **rule.params()}
    part = ref_partition(rule, pot)
    gen = np.random.default_rng(seed)
    q, state = np.array(q0, float), None
    for n in range(steps):
        rows = rr.draw_batch(gen, pot.n_data, batch_size) if batch_size else None
        _, g = pot.value_and_grad(q, rows)
        ref_st = _ref_state(rule, state if state is not None else rule.init_state(pot))
        q_ref = q.copy()
        rr.step(rdict, q_ref, g, ref_st, part)
        res = nc.train(rule, pot, q, 1, batch_size=batch_size,
                       seed=seed if n == 0 else None, state=state, record_every=1)
        assert not res.diverged
        np.testing.assert_array_equal(res.q[0], q)
        scale = max(np.abs(q).max(), np.abs(q_ref).max())
        assert _rel(res.q_final, q_ref, scale) <= 1e-14, f"step {n}"
        _compare_state(rule, res.state, ref_st)
        q, state = res.q_final, res.state


@given(rule=rules(), problem=st.sampled_from(["full", "minibatch", "rayleigh"]),
       batch=st.integers(2, 40), seed=st.integers(0, 2**32 - 1),
       record_every=st.sampled_from([1, 3, 7]))
def test_hypothesis_rules_match_reference(rule, problem, batch, seed, record_every):
    """SPEC §5 Agreement of the rules over random valid hyper-parameters, batch sizes and
    seeds.  Random hyper-parameters include chaotic runs, where any ulp of difference
    grows exponentially (test_chaotic_run_separates_by_dynamics_not_code), so: (i) whole
    200-step runs bitwise for the rules of ``_basic_ops_only`` (the twin fed the compiled
    gradients), (ii) every rule step by step along 100 steps (``assert_steps_shadow``)."""
    pot, b, _ = _problem(rule, problem)
    if b is not None:
        b = batch
    q0 = q0_for(rule, pot, seed % 7)
    if _basic_ops_only(rule):
        assert_matches_reference(rule, pot, q0, steps=200, batch_size=b,
                                 seed=seed if b else None, record_every=record_every,
                                 gradients="compiled", exact=True)
    assert_steps_shadow(rule, pot, q0, 100, batch_size=b, seed=seed if b else None)


# --------------------------------------------------------------------------------------
# SPEC §1.1: the exact discrete scale identity

def scale_identity_residual(q, beta, lr, k):
    """Residual of (a_{n+1}−a_n) − β(a_n−a_{n−1}) = |Δ_{n+1}|² + β|Δ_n|² − 2ηk a_n for
    n = 0 … len(q)−2 (q_{−1} := q_0: torch's first step v = d is heavy ball from rest),
    divided by the size of its terms (max of a_{n−1}, a_n, a_{n+1}).  docs/rules.md §6."""
    qm = np.vstack([q[:1], q])                      # q_{-1}, q_0, ..., q_N
    a = np.einsum("ij,ij->i", qm, qm)
    D = np.diff(qm, axis=0)                         # Δ_0 = 0, Δ_1, ..., Δ_N
    d2 = np.einsum("ij,ij->i", D, D)
    lhs = (a[2:] - a[1:-1]) - beta * (a[1:-1] - a[:-2])
    rhs = d2[1:] + beta * d2[:-1] - 2.0 * lr * k * a[1:-1]
    size = np.maximum(np.maximum(a[2:], a[1:-1]), a[:-2])
    return np.abs(lhs - rhs) / size


@pytest.mark.parametrize("pot,batch", [(BN, 8), (BN, None), (RAYLEIGH, None)],
                         ids=["bn-minibatch", "bn-full", "rayleigh"])
@given(lr=st.floats(0.005, 0.2), beta=st.floats(0.0, 0.99), k=st.floats(0.0, 0.05),
       seed=st.integers(0, 1000))
def test_exact_scale_identity(pot, batch, lr, beta, k, seed):
    """SPEC §1.1 (scale): holds to round-off at every step, for every step of the run."""
    rule = R.SGD(lr=lr, momentum=beta, weight_decay=k)
    res = nc.train(rule, pot, q0_for(rule, pot, seed % 5), 300, batch_size=batch,
                   seed=seed if batch else None, record_every=1)
    assert not res.diverged
    assert scale_identity_residual(res.q, beta, lr, k).max() <= IDENTITY_RTOL


def test_scale_identity_fails_without_the_symmetry():
    """Control: on Quadratic (no symmetry) the same residual is O(1e-2), so the check above
    has teeth; with wrong β or k it fails on BatchNormUnit too."""
    rule = R.SGD(lr=0.05, momentum=0.9, weight_decay=0.01)
    res = nc.train(rule, QUAD, q0_for(rule, QUAD), 100)
    assert scale_identity_residual(res.q, 0.9, 0.05, 0.01).max() > 1e-4
    res = nc.train(rule, BN, q0_for(rule, BN), 100, batch_size=8, seed=1)
    assert scale_identity_residual(res.q, 0.9, 0.05, 0.01).max() <= IDENTITY_RTOL
    assert scale_identity_residual(res.q, 0.89, 0.05, 0.01).max() > 1e-6
    assert scale_identity_residual(res.q, 0.9, 0.05, 0.0).max() > 1e-6


# --------------------------------------------------------------------------------------
# SPEC §1: conventions and heavy ball as a variational integrator

conv = nc.conventions


@given(lr=st.floats(1e-4, 10.0), beta=st.floats(0.0, 0.999))
def test_paper_convention(lr, beta):
    """SPEC §0/§1 "paper": h = η, m = η(1+β)/2, μ = 1−β; and back."""
    c = conv.to_continuous(lr, beta, convention="paper")
    assert c.h == lr
    assert c.m == pytest.approx(lr * (1.0 + beta) / 2.0, rel=1e-15)
    assert c.mu == pytest.approx(1.0 - beta, rel=1e-15, abs=1e-16)
    if beta < 1.0 and c.mu > 0:
        back = conv.to_discrete(c.m, c.mu, convention="paper")
        assert back.lr == pytest.approx(lr, rel=1e-14)
        assert back.momentum == pytest.approx(beta, rel=1e-14, abs=1e-15)


@given(lr=st.floats(1e-4, 10.0), beta=st.floats(1e-3, 0.999),
       h=st.one_of(st.none(), st.floats(1e-3, 10.0)))
def test_variational_convention(lr, beta, h):
    """SPEC §1 "variational": β = e^{−μh/m}, η = h²/m (h = η by default: m = η, μ = −ln β)."""
    c = conv.to_continuous(lr, beta, convention="variational", h=h)
    assert c.h == (lr if h is None else h)
    assert math.exp(-c.mu * c.h / c.m) == pytest.approx(beta, rel=1e-13)
    assert c.h ** 2 / c.m == pytest.approx(lr, rel=1e-14)
    if h is None:
        assert c.m == pytest.approx(lr, rel=1e-15)
        assert c.mu == pytest.approx(-math.log(beta), rel=1e-14)
    back = conv.to_discrete(c.m, c.mu, convention="variational", h=c.h)
    assert back.lr == pytest.approx(lr, rel=1e-14)
    assert back.momentum == pytest.approx(beta, rel=1e-13)


@given(m=st.floats(1e-3, 10.0), mu=st.floats(1e-3, 1.0), h=st.floats(1e-3, 1.0))
def test_conventions_round_trip_from_continuous(m, mu, h):
    """(m, μ[, h]) → (η, β) → (m, μ[, h]) in both conventions."""
    d = conv.to_discrete(m, mu, convention="paper")
    c = conv.to_continuous(d.lr, d.momentum, convention="paper")
    assert (c.m, c.mu) == pytest.approx((m, mu), rel=1e-13)
    d = conv.to_discrete(m, mu, convention="variational", h=h)
    # β = e^{−μh/m} must be a normal number for μ = −m·ln β/h to come back to 1e-10: a
    # subnormal β (μh/m > 708, e.g. m = 1e-3, μ = 0.8, h = 0.92, found by the fuzz
    # profile) keeps fewer significant bits, so its logarithm does too
    if np.finfo(float).tiny <= d.momentum < 1.0:
        c = conv.to_continuous(d.lr, d.momentum, convention="variational", h=h)
        assert (c.h, c.m, c.mu) == pytest.approx((h, m, mu), rel=1e-10)


@given(h=st.floats(5e-324, 1e300), m=st.floats(5e-324, 1e300), mu=st.floats(5e-324, 1.0),
       convention=st.sampled_from(["paper", "variational"]))
def test_to_discrete_valid_or_refused(h, m, mu, convention):
    """Issue 19: (m, μ[, h]) at float64's extremes (h = 1e-300 made η = 0 and β = 1) give a
    pair SGD accepts, or a ValueError naming the argument; never an invalid pair."""
    try:
        d = conv.to_discrete(m, mu, convention=convention,
                             h=h if convention == "variational" else None)
    except ValueError as exc:
        assert re.search(r"\b(m|mu|h)=", str(exc)), str(exc)
        return
    assert 0.0 < d.lr < math.inf and 0.0 <= d.momentum < 1.0
    R.SGD(lr=d.lr, momentum=d.momentum)


def test_to_discrete_tiny_h_refused():
    """The issue's instance: h = 1e-300 underflows η = h²/m."""
    with pytest.raises(ValueError, match="h=1e-300"):
        conv.to_discrete(1.0, 0.5, convention="variational", h=1e-300)


def test_conventions_agree_to_leading_order_as_beta_to_one():
    """SPEC §1: both give m → η and μ ≈ 1−β as β → 1; their gap is O(1−β) relative."""
    for eps in (1e-2, 1e-4, 1e-6):
        p = conv.to_continuous(0.1, 1.0 - eps, convention="paper")
        v = conv.to_continuous(0.1, 1.0 - eps, convention="variational")
        assert abs(p.m / v.m - 1.0) <= eps and abs(p.mu / v.mu - 1.0) <= eps


@pytest.mark.parametrize("call,match", [
    (lambda: conv.to_continuous(0.1, 0.9, convention="newton"), "convention"),
    (lambda: conv.to_continuous(0.1, 0.0, convention="variational"), "momentum"),
    (lambda: conv.to_continuous(0.1, 0.9, convention="paper", h=0.2), "h"),
    (lambda: conv.to_discrete(0.1, 0.5, convention="variational"), "h"),
    (lambda: conv.to_continuous(-0.1, 0.9), "lr"),
    (lambda: conv.to_continuous(0.1, 1.0), "momentum"),
])
def test_conventions_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _del_trajectory(pot, q0, steps, h, m, mu, k):
    """Solve the discrete Euler–Lagrange equations of
    L_d(x, y; n) = h e^{μ t_n/m} [ (m/2)|(y − x)/h|² − V(x) ],  V = f + (k/2)|q|²,
    D2 L_d(q_{n−1}, q_n; n−1) + D1 L_d(q_n, q_{n+1}; n) = 0, for q_{n+1}, starting from
    rest (q_{−1} = q_0).  With w_n = h e^{μ t_n/m}:
      D1 L_d(x, y; n) = w_n [ −m (y − x)/h² − ∇V(x) ],  D2 L_d(x, y; n) = w_n m (y − x)/h²,
    and the DEL equation is linear in q_{n+1}."""
    def w(n):
        return h * math.exp(mu * n * h / m)

    q_prev, q = q0.copy(), q0.copy()
    out = [q.copy()]
    for n in range(steps):
        gradV = pot.grad(q) + k * q
        d2 = w(n - 1) * m * (q - q_prev) / h ** 2          # D2 L_d(q_{n−1}, q_n; n−1)
        # D1 L_d(q_n, y; n) = −d2  ⇔  y = q_n + (h²/m)(d2/w_n − ∇V(q_n))
        y = q + (h ** 2 / m) * (d2 / w(n) - gradV)
        q_prev, q = q, y
        out.append(q.copy())
    return np.array(out)


@pytest.mark.parametrize("pot", [QUAD, RAYLEIGH, BN], ids=["quadratic", "rayleigh", "bn"])
@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
def test_heavy_ball_is_the_discrete_euler_lagrange_flow(pot, beta):
    """SPEC §1: SGD(lr=η, momentum=β=e^{−μh/m}, weight_decay=k) with η = h²/m is the DEL
    flow of L_d.  (h, m, μ) from conventions.to_continuous(..., "variational", h=0.3).
    Tolerance: the DEL recursion rounds differently (weights w_n, h²/m vs η, e^{−μh/m}
    vs β, each ~1 ulp off) and 200 steps carry it forward: 1e-11 relative to max|q|."""
    lr, k, steps = 0.05, 0.01, 200
    c = conv.to_continuous(lr, beta, convention="variational", h=0.3)
    q0 = q0_for(R.SGD(lr=lr), pot)
    ref = _del_trajectory(pot, q0, steps, c.h, c.m, c.mu, k)
    res = nc.train(R.SGD(lr=lr, momentum=beta, weight_decay=k), pot, q0, steps)
    assert _rel(res.q, ref, np.abs(ref).max()) <= 1e-11
    # and the paper's (m, μ) are NOT the exact ones: plugging them into the DEL flow
    # gives another trajectory (they agree only to leading order as β → 1)
    p = conv.to_continuous(lr, beta, convention="paper")
    other = _del_trajectory(pot, q0, steps, p.h, p.m, p.mu, k)
    assert _rel(res.q, other, np.abs(ref).max()) > 1e-6


# --------------------------------------------------------------------------------------
# bad input: ValueError / TypeError naming the argument

Q5 = np.linspace(0.5, 1.5, 5)
_X_nan = BN.X.copy()
_X_nan[3, 1] = np.nan


def _train(**kw):
    args = {"rule": R.SGD(lr=0.1), "potential": BN, "q0": Q5, "steps": 3}
    args.update(kw)
    return nc.train(args.pop("rule"), args.pop("potential"), args.pop("q0"),
                    args.pop("steps"), **args)


BAD = [
    # hyper-parameters
    (lambda: R.SGD(lr=0.0), ValueError, "lr"),
    (lambda: R.SGD(lr=-0.1), ValueError, "lr"),
    (lambda: R.SGD(lr=float("nan")), ValueError, "lr"),
    (lambda: R.SGD(lr=float("inf")), ValueError, "lr"),
    (lambda: R.SGD(lr="0.1"), TypeError, "lr"),
    (lambda: R.SGD(momentum=1.0), ValueError, "momentum"),
    (lambda: R.SGD(momentum=-0.1), ValueError, "momentum"),
    (lambda: R.SGD(dampening=1.5), ValueError, "dampening"),
    (lambda: R.SGD(weight_decay=-1e-3), ValueError, "weight_decay"),
    (lambda: R.SGD(nesterov=True), ValueError, "nesterov"),
    (lambda: R.SGD(momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: R.SGD(momentum=0.9, nesterov=1), TypeError, "nesterov"),
    (lambda: R.RMSprop(alpha=1.0), ValueError, "alpha"),
    (lambda: R.RMSprop(eps=-1e-8), ValueError, "eps"),
    (lambda: R.RMSprop(momentum=1.0), ValueError, "momentum"),
    (lambda: R.RMSprop(weight_decay=-1.0), ValueError, "weight_decay"),
    (lambda: R.RMSprop(centered="yes"), TypeError, "centered"),
    (lambda: R.Adam(betas=(1.0, 0.999)), ValueError, "betas"),
    (lambda: R.Adam(betas=(0.9, -0.1)), ValueError, "betas"),
    (lambda: R.Adam(betas=0.9), TypeError, "betas"),
    (lambda: R.AdamW(weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: R.Adam(amsgrad=None), TypeError, "amsgrad"),
    (lambda: R.ScalarRMSProp(rho=1.0), ValueError, "rho"),
    (lambda: R.ScalarRMSProp(G0=-1.0), ValueError, "G0"),
    (lambda: R.ScalarRMSProp(G0=0.0, eps=0.0), ValueError, "G0"),
    (lambda: R.MirrorDescent(mirror="hyperbolic"), ValueError, "mirror"),
    (lambda: R.MirrorDescent(mirror="diagonal"), ValueError, "D"),
    (lambda: R.MirrorDescent(mirror="diagonal", D=(1.0, -1.0)), ValueError, "D"),
    (lambda: R.MirrorDescent(mirror="pnorm", p=1.0), ValueError, "p"),
    (lambda: R.MirrorDescent(mirror="pnorm"), ValueError, "p"),
    (lambda: R.SGD(lr=0.1).replace(momentom=0.9), TypeError, "momentom"),
    # train's arguments
    (lambda: _train(rule="SGD"), TypeError, "rule"),
    (lambda: _train(potential=np.eye(5)), TypeError, "potential"),
    (lambda: _train(q0=np.r_[Q5[:4], np.nan]), ValueError, "q0"),
    (lambda: _train(q0=np.r_[Q5[:4], np.inf]), ValueError, "q0"),
    (lambda: _train(q0=Q5[:4]), ValueError, "q0"),
    (lambda: _train(q0=Q5[:, None]), ValueError, "q0"),
    (lambda: _train(q0="12345"), TypeError, "q0"),
    (lambda: _train(q0=Q5 + 0j), TypeError, "q0"),
    (lambda: _train(steps=-1), ValueError, "steps"),
    (lambda: _train(steps=3.0), TypeError, "steps"),
    (lambda: _train(record_every=0), ValueError, "record_every"),
    (lambda: _train(record_every="1"), TypeError, "record_every"),
    (lambda: _train(batch_size=41), ValueError, "batch_size"),
    (lambda: _train(batch_size=1), ValueError, "batch_size"),      # < min_batch (BN: 2)
    (lambda: _train(batch_size=0), ValueError, "batch_size"),
    (lambda: _train(batch_size=8.0), TypeError, "batch_size"),
    (lambda: _train(potential=RAYLEIGH, batch_size=2), ValueError, "batch_size"),
    (lambda: _train(batch_size=8, seed="zero"), TypeError, "seed"),
    (lambda: _train(batch_size=8, seed=-1), ValueError, "seed"),
    (lambda: _train(seed=1.5), TypeError, "seed"),
    (lambda: _train(state={"momentum_buffer": Q5}), TypeError, "state"),
    (lambda: _train(rule=R.MirrorDescent(mirror="entropy"), q0=Q5 - 1.0), ValueError,
     "q0"),
    (lambda: _train(rule=R.MirrorDescent(mirror="diagonal", D=(1.0, 2.0))), ValueError,
     "D"),
    # data
    (lambda: BatchNormUnit(_X_nan, BN.y), ValueError, "X"),
    (lambda: BatchNormUnit(BN.X, BN.y[:-1]), ValueError, "rows"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[f"{i}-{b[2]}" for i, b in
                                                    enumerate(BAD)])
def test_bad_input_names_the_argument(call, exc, name):
    """Issue 2 "bad input": a clear ValueError/TypeError whose message names the argument."""
    with pytest.raises(exc) as info:
        call()
    assert name in str(info.value), str(info.value)


def test_float32_and_noncontiguous_q0_are_converted():
    """float32 and strided q0 are converted (not rejected) and give exactly the run of
    their float64, C-contiguous copy; the caller's array is not modified."""
    rule = R.Adam(lr=0.01)
    q64 = q0_for(rule, BN)
    q32 = q64.astype(np.float32)
    want = nc.train(rule, BN, q32.astype(np.float64), 40, batch_size=8, seed=2)
    got = nc.train(rule, BN, q32, 40, batch_size=8, seed=2)
    np.testing.assert_array_equal(got.q, want.q)
    big = np.zeros(2 * BN.dim)
    big[::2] = q64
    strided = big[::2]
    assert not strided.flags.c_contiguous
    got = nc.train(rule, BN, strided, 40, batch_size=8, seed=2)
    want = nc.train(rule, BN, q64.copy(), 40, batch_size=8, seed=2)
    np.testing.assert_array_equal(got.q, want.q)
    np.testing.assert_array_equal(got.q_final, want.q_final)
    np.testing.assert_array_equal(big[::2], q64)          # input untouched
    ro = q64.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(nc.train(rule, BN, ro, 40).q_final,
                                  nc.train(rule, BN, q64, 40).q_final)


# --------------------------------------------------------------------------------------
# divergence and the recording guard

def test_divergence_stops_and_keeps_finite_rows():
    """SGD(lr=10) on f = |q|² multiplies q by −19 per step: the loss overflows first.
    The step where it does is predicted here independently (float64 recursion)."""
    pot = Quadratic(2.0 * np.eye(3))
    q = np.ones(3)
    n_star = 0
    with np.errstate(over="ignore"):
        while np.isfinite(0.5 * q @ (2.0 * q)):
            q = q - 10.0 * (2.0 * q)
            n_star += 1
    with pytest.warns(nc.DivergenceWarning, match=f"step {n_star}"):
        res = nc.train(R.SGD(lr=10.0), pot, np.ones(3), 400)
    assert res.diverged and res.stop_step == n_star
    assert "non-finite loss" in res.stop_reason
    assert res.q.shape == (n_star, 3) and np.all(np.isfinite(res.q))
    np.testing.assert_array_equal(res.steps, np.arange(n_star))
    assert np.all(np.isfinite(res.loss)) and np.all(np.isfinite(res.grad_norm2))
    assert res.state.step == n_star


def test_divergence_in_the_update_is_reported():
    """RMSprop with eps = 0 at a stationary point computes 0/0: non-finite parameters after
    the first update; the start row is kept, the reason names the block."""
    pot = Quadratic(np.eye(3), np.array([1.0, 2.0, 3.0]))       # minimum at q = b
    with pytest.warns(nc.DivergenceWarning, match="non-finite parameters"):
        res = nc.train(R.RMSprop(lr=0.1, eps=0.0), pot, [1.0, 2.0, 3.0], 10)
    assert res.diverged and res.stop_step == 0 and "block 'q'" in res.stop_reason
    np.testing.assert_array_equal(res.q, [[1.0, 2.0, 3.0]])


def test_max_record_bytes_refusal_states_the_size():
    """A recording request above max_record_bytes is refused before anything runs, with
    a message stating the size it needs, the limit, and the fix.  The size must cover at
    least the q rows, (10⁶ + 1) × 5 doubles = 38.1 MiB, and at most a few times that
    (the per-row extras: loss, |g|², block norms, charges)."""
    with pytest.raises(MemoryError) as info:
        nc.train(R.SGD(lr=0.1), BN, Q5, 10**6, max_record_bytes=10**6)
    msg = str(info.value)
    m = re.search(r"needs ([0-9.]+) MiB", msg)
    assert m, msg
    q_rows = (10**6 + 1) * BN.dim * 8 / 2**20
    assert q_rows <= float(m.group(1)) <= 4 * q_rows
    assert "max_record_bytes=1000000" in msg and "record_every" in msg
    # the same run with record_every large enough is accepted (memory O(steps/every))
    res = nc.train(R.SGD(lr=0.1), BN, Q5, 1000, record_every=100, max_record_bytes=10**6)
    assert res.q.shape == (11, BN.dim)


def test_no_warning_on_a_healthy_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = nc.train(R.SGD(lr=0.05, momentum=0.9), BN, Q5, 100, batch_size=8, seed=0)
    assert not res.diverged and res.stop_step is None and res.stop_reason is None
