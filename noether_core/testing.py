"""Property-test toolkit: the hypothesis strategies and assertions noether_core's suite uses.

Public and documented so that a user can property-test their own rule, potential or
integrator in a few lines (docs/testing.md; README "Testing your own rule").  Needs
`hypothesis <https://hypothesis.readthedocs.io>`_; ``import noether_core`` does not (this
module is the only one that imports it).

Strategies (each returns a ``hypothesis`` strategy)
---------------------------------------------------
================================  ===========================================================
``rule_params(Rule, **fixed)``    valid constructor keywords of one rule class
``rules(classes=None, dim=None)`` rule instances of the built-in classes
``potentials(family=None)``       small built-in potentials carrying a symmetry of ``family``
                                  ("translation", "scale", "rescale", "rotation"; "none":
                                  the control case without symmetry; None: any)
``initial_states(potential)``     well-conditioned q0: every coordinate in ±[0.1, 2], so
                                  every block norm is bounded away from 0
``damped_states(potential)``      y0 = (q0, v0) for ``models.Damped`` (M1)
``sphere_states(d)``              y0 = (r, ṙ, q̂, q̂̇) for ``models.RadialAngular`` (M2):
                                  |q̂| = 1 and ⟨q̂, q̂̇⟩ = 0 to round-off
``skew_matrices(n)``              Ω = −Ωᵀ, Frobenius norm 1 (rotation generators)
``unit_vectors(n)``               translation directions n̂
``symmetry_generators(pot)``      (Symmetry, Ω or None) pairs of a potential's declared
                                  symmetries, Ω drawn for "every Ω" rotations
================================  ===========================================================

Assertions (plain functions, usable without hypothesis strategies)
------------------------------------------------------------------
``assert_balance_law(run, tol=...)``
    every exact discrete balance law of a run (``run.charges``; SPEC §1.1) holds to ``tol``.
``assert_order(method, model, y0, t_end=..., hs=...)``
    the global error at t_end shrinks as h^p: fits the log-log slope.
``assert_symmetry(potential, ...)``
    f(Q(q, s)) = f(q) and ⟨∇f(q), ξ(q)⟩ = 0 for its declared exact symmetries (SPEC §0).

And :func:`run_python_rule`, which runs a user's rule written in Python (``step(q, g,
state) -> (q, state)``) and computes its charges and balance-law residuals exactly as the
compiled loop does, so ``assert_balance_law`` applies to it unchanged.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - exercised by test_testing_toolkit
    raise ImportError("noether_core.testing needs hypothesis (pip install hypothesis, or "
                      "pip install 'noether_core[test]')") from exc

from . import datasets
from . import potentials as P
from . import rules as R
from ._integrate import _ORDER
from ._integrate import ADAPTIVE as _ADAPTIVE
from ._integrate import integrate as _integrate
from .charges import ChargeSeries, symmetry_label
from .symmetry import FAMILIES, Symmetry, generator, random_skew, transform

__all__ = ["rule_params", "rules", "RULES", "potentials", "POTENTIAL_FAMILIES",
           "initial_states", "damped_states", "sphere_states", "skew_matrices",
           "unit_vectors", "symmetry_generators", "assert_balance_law", "assert_order",
           "assert_symmetry", "run_python_rule", "PythonRun", "EXACT_TOL"]

#: default tolerance of exact identities: the residuals are relative to the sum of the
#: absolute terms (so ~1 ulp per term); 1e-12 leaves ~1e4 ulps for the dot products of
#: blocks up to a few thousand entries.
EXACT_TOL = 1e-12

_seeds = st.integers(0, 2**32 - 1)


# -----------------------------------------------------------------------------------------
# hyper-parameters and rules

def _lrs(stable):
    return st.floats(1e-3, 0.1) if stable else st.floats(1e-6, 10.0)


def _unit(hi=0.99):
    return st.one_of(st.just(0.0), st.floats(0.0, hi))


def rule_params(rule_cls, *, stable=True, dim=None, **fixed):
    """Valid constructor keywords of ``rule_cls`` (a class of :mod:`noether_core.rules`).

    Parameters
    ----------
    rule_cls : type
        SGD, RMSprop, Adam, AdamW, ScalarRMSProp or MirrorDescent.
    stable : bool
        True: learning rates in [1e-3, 0.1] (runs on the potentials of :func:`potentials`
        from :func:`initial_states` stay finite for ~100 steps), and ScalarRMSProp without
        weight decay; False: [1e-6, 10].  (ScalarRMSProp normalises its step per block:
        on a BatchNorm unit whose gradient vanishes, d = g + k q is ~k q and the step
        -lr d/sqrt(v) has a length independent of |q|, so weight decay drives the block
        to 0 and its variance to 0/0 within ~100 steps -- found by the fuzz profile on
        BatchNormMLP with lr 0.1, k = 1e-3.)
    dim : int, optional
        Dimension, needed for ``MirrorDescent(mirror="diagonal")`` (its D has length d);
        without it the diagonal map is not drawn.  The entropy map needs q > 0 and is not
        drawn either (pass ``mirror="entropy"`` to ask for it).
    **fixed
        Keywords to hold fixed (a value) or to draw from a given strategy.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from noether_core.rules import SGD
    >>> @settings(max_examples=20)
    ... @given(rule_params(SGD, nesterov=False, dampening=0.0))
    ... def test(kw): assert SGD(**kw).momentum < 1
    >>> test()
    """
    lr = _lrs(stable)
    if rule_cls is R.SGD:
        space = {"lr": lr, "momentum": _unit(), "dampening": st.sampled_from([0.0, 0.1, 0.5]),
                 "nesterov": st.booleans(), "weight_decay": st.sampled_from([0.0, 1e-4, 1e-2])}
    elif rule_cls is R.RMSprop:
        space = {"lr": lr.map(lambda x: x / 10), "alpha": st.floats(0.5, 0.999),
                 "eps": st.sampled_from([1e-8, 1e-6]), "weight_decay":
                 st.sampled_from([0.0, 1e-3]), "momentum": _unit(0.9), "centered": st.booleans()}
    elif rule_cls in (R.Adam, R.AdamW):
        space = {"lr": lr.map(lambda x: x / 10),
                 "betas": st.tuples(_unit(0.95), st.floats(0.9, 0.9999)),
                 "eps": st.sampled_from([1e-8, 1e-6]),
                 "weight_decay": st.sampled_from([0.0, 1e-3, 1e-2]), "amsgrad": st.booleans()}
    elif rule_cls is R.ScalarRMSProp:
        space = {"lr": lr, "rho": st.floats(0.5, 0.999), "eps": st.sampled_from([1e-8, 1e-6]),
                 "G0": st.one_of(st.none(), st.floats(0.1, 10.0)), "per_block": st.booleans(),
                 "weight_decay": st.just(0.0) if stable else st.sampled_from([0.0, 1e-3])}
    elif rule_cls is R.MirrorDescent:
        maps = ["euclidean", "pnorm"] + (["diagonal"] if dim is not None else [])
        mirror = fixed.pop("mirror", st.sampled_from(maps))
        mirror = mirror if isinstance(mirror, st.SearchStrategy) else st.just(mirror)

        @st.composite
        def _mirror(draw):
            m = draw(mirror)
            kw = {"lr": draw(lr.map(lambda x: x / 10)), "mirror": m,
                  "weight_decay": draw(st.sampled_from([0.0, 1e-3]))}
            if m == "diagonal":
                if dim is None:
                    raise ValueError("rule_params(MirrorDescent, mirror='diagonal') needs dim")
                kw["D"] = tuple(draw(st.lists(st.floats(0.5, 2.0), min_size=dim,
                                              max_size=dim)))
            if m == "pnorm":
                kw["p"] = draw(st.floats(1.2, 4.0))
            for k, v in fixed.items():
                kw[k] = draw(v) if isinstance(v, st.SearchStrategy) else v
            return kw
        return _mirror()
    else:
        raise TypeError(f"rule_cls must be one of {[c.__name__ for c in RULES]}, got "
                        f"{rule_cls!r}")
    unknown = set(fixed) - set(space)
    if unknown:
        raise TypeError(f"{rule_cls.__name__} has no parameter(s) {sorted(unknown)}")
    for k, v in fixed.items():
        space[k] = v if isinstance(v, st.SearchStrategy) else st.just(v)
    strat = st.fixed_dictionaries(space)
    if rule_cls is R.SGD:   # torch's constraint: nesterov needs momentum > 0, dampening 0
        strat = strat.map(lambda kw: kw if not kw["nesterov"] else
                          {**kw, "momentum": max(kw["momentum"], 0.1), "dampening": 0.0})
    if rule_cls is R.ScalarRMSProp:
        strat = strat.filter(lambda kw: not (kw["G0"] == 0.0 and kw["eps"] == 0.0))
    return strat


#: the built-in rule classes :func:`rules` draws from
RULES = (R.SGD, R.RMSprop, R.Adam, R.AdamW, R.ScalarRMSProp, R.MirrorDescent)


def rules(classes=None, *, stable=True, dim=None):
    """Rule instances drawn from ``classes`` (default :data:`RULES`) with
    :func:`rule_params`."""
    classes = RULES if classes is None else tuple(classes)
    return st.one_of([rule_params(c, stable=stable, dim=dim).map(lambda kw, c=c: c(**kw))
                      for c in classes])


# -----------------------------------------------------------------------------------------
# potentials, states, generators

#: which built-in potentials carry which symmetry family ("none": no symmetry)
POTENTIAL_FAMILIES = {
    "scale": ("RayleighQuotient", "BatchNormUnit", "BatchNormLayer", "BatchNormMLP"),
    "translation": ("SoftmaxCrossEntropy", "BatchNormMLP"),
    "rescale": ("TwoLayer",),
    "rotation": ("Radial",),
    "none": ("Quadratic",),
}


def _spd(rng, d, cond=10.0):
    """A symmetric matrix with eigenvalues spread in [1, cond] (well conditioned)."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.geomspace(1.0, cond, d)) @ Q.T


def _build(name, seed, d):
    rng = np.random.default_rng(seed)
    n = 16
    if name == "Quadratic":
        return P.Quadratic(_spd(rng, d), rng.standard_normal(d))
    if name == "RayleighQuotient":
        return P.RayleighQuotient(_spd(rng, d))
    if name == "Radial":
        return P.Radial(d, P.Radial.KINDS[seed % 3])
    if name == "BatchNormUnit":
        X, y = datasets.teacher_regression(n, d, seed=seed)
        return P.BatchNormUnit(X, y[:, 0])
    if name == "BatchNormLayer":
        X, Y = datasets.teacher_regression(n, d, out=2, seed=seed)
        return P.BatchNormLayer(X, Y, width=3)
    if name == "TwoLayer":
        X, Y = datasets.teacher_regression(n, d, out=2, seed=seed)
        return P.TwoLayer(X, Y, hidden=3, activation=("relu", "linear")[seed % 2])
    X, y = datasets.gaussian_mixture(n, d, classes=3, seed=seed)
    if name == "SoftmaxCrossEntropy":
        return P.SoftmaxCrossEntropy(X, y, n_classes=3)
    return P.BatchNormMLP(X, y, widths=(4,), n_classes=3)


def potentials(family=None, *, max_dim=6):
    """Small built-in potentials that declare a symmetry of ``family``.

    Parameters
    ----------
    family : {"translation", "scale", "rescale", "rotation", "none"} or None
        "none" draws the control case (``Quadratic``); None any built-in.
    max_dim : int ≥ 2
        Bound on the input dimension (data potentials: features; others: dim).

    The drawn potential's ``blocks`` and ``symmetries`` say where the symmetry acts;
    ``pot.symmetry_blocks(family)`` lists the ones of the family.  Matrices are well
    conditioned (eigenvalues in [1, 10]); data sets have 16 rows (seeded).
    """
    if family is None:
        names = sorted({n for v in POTENTIAL_FAMILIES.values() for n in v})
    elif family in POTENTIAL_FAMILIES:
        names = POTENTIAL_FAMILIES[family]
    else:
        raise ValueError(f"family must be one of {tuple(POTENTIAL_FAMILIES)} or None, got "
                         f"{family!r}")
    return st.builds(_build, st.sampled_from(names), _seeds, st.integers(2, max(2, max_dim)))


def _entries(lo, hi):
    mag = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    return st.one_of(mag, mag.map(lambda x: -x))


def initial_states(potential, *, positive=False, lo=0.1, hi=2.0):
    """Well-conditioned initial parameters q0 for ``potential`` (float64, shape (d,)).

    Every coordinate has magnitude in [lo, hi] (positive when ``positive=True``, for the
    entropy mirror map), so every block norm is at least lo·sqrt(len(block)) > 0 and a
    scale-invariant potential is evaluated away from its singularity at q_B = 0.
    """
    el = st.floats(lo, hi) if positive else _entries(lo, hi)
    return hnp.arrays(np.float64, potential.dim, elements=el)


def damped_states(potential, *, max_speed=1.0):
    """y0 = (q0, v0) for ``models.Damped`` (M1), q0 from :func:`initial_states`."""
    v = hnp.arrays(np.float64, potential.dim,
                   elements=st.floats(-max_speed, max_speed, allow_subnormal=False))
    return st.tuples(initial_states(potential), v).map(np.concatenate)


def unit_vectors(n):
    """Unit vectors of R^n (drawn coordinates away from the origin, then normalised)."""
    return hnp.arrays(np.float64, n, elements=_entries(0.1, 1.0)).map(
        lambda x: x / np.linalg.norm(x))


def sphere_states(d, *, r=(0.5, 2.0), max_speed=1.0):
    """y0 = (r, ṙ, q̂, q̂̇) for ``models.RadialAngular`` (M2).

    q̂ is a unit vector and q̂̇ its tangent velocity (projected: ⟨q̂, q̂̇⟩ = 0 and |q̂| = 1 to
    round-off, well inside ``noether_core._integrate.CONSTRAINT_TOL``); r in [r[0], r[1]], ṙ and the
    entries of q̂̇ in [−max_speed, max_speed].
    """
    sp = st.floats(-max_speed, max_speed, allow_subnormal=False)

    def make(args):
        rr, rd, u, w = args
        w = w - (u @ w) * u
        return np.concatenate([[rr, rd], u, w])
    return st.tuples(st.floats(*r), sp, unit_vectors(d),
                     hnp.arrays(np.float64, d, elements=sp)).map(make)


def skew_matrices(n):
    """Skew-symmetric n × n matrices Ω (Frobenius norm 1): rotation generators ξ = Ωq."""
    return _seeds.map(lambda s: random_skew(n, np.random.default_rng(s)))


def symmetry_generators(potential):
    """(Symmetry, omega) pairs drawn from ``potential.symmetries``.

    ``omega`` is None except for a rotation declared for "every Ω" (``Radial``), where a
    skew matrix is drawn; pass it as ``omega=`` to :func:`noether_core.train`,
    :func:`noether_core.symmetry.generator` and :func:`run_python_rule`.
    """
    syms = potential.symmetries
    if not syms:
        raise ValueError(f"{potential!r} declares no symmetry")

    def pair(args):
        s, seed = args
        if s.family == "rotation" and s.omega is None:
            n = len(potential.blocks[s.blocks[0]])
            return s, random_skew(n, np.random.default_rng(seed))
        return s, None
    return st.tuples(st.sampled_from(syms), _seeds).map(pair)


# -----------------------------------------------------------------------------------------
# user rules written in Python: charges as the compiled loop computes them

@dataclass(eq=False)
class PythonRun:
    """What :func:`run_python_rule` returns (the fields ``assert_balance_law`` reads).

    Attributes
    ----------
    q : (steps+1, d) array
        q_0 … q_steps.
    loss : (steps+1,) array
    charges : dict[str, ChargeSeries]
        Per symmetry (``"family:block"``), as ``TrainResult.charges``.
    diverged : bool
    stop_reason : str or None
    """

    q: np.ndarray
    loss: np.ndarray
    charges: dict = field(default_factory=dict)
    diverged: bool = False
    stop_step: int | None = None
    stop_reason: str | None = None


def _moment_and_residual(sym, blocks, omega, q0, q1, qfree):
    """(moment at q0, relative residual of the step q0 -> q1) for one symmetry, with the
    free step q0 -> qfree (the same rule with g = 0): pyx/rules.pyx, docs/balance_laws.md."""
    i1 = blocks[sym.blocks[0]]
    xi = generator(sym, q0, blocks, omega)
    T = float((qfree - q0) @ xi)
    if sym.family in ("scale", "rescale"):
        def sums(idx):
            return q1[idx] @ q1[idx], q0[idx] @ q0[idx], (q1[idx] - q0[idx]) @ (q1[idx] - q0[idx])
        a1, a0, dd = sums(i1)
        sc = a1 + a0 + dd
        if sym.family == "rescale":
            b1, b0, de = sums(blocks[sym.blocks[1]])
            sc += b1 + b0 + de
            a1, a0, dd = a1 - b1, a0 - b0, dd - de
        res = (a1 - a0 - dd) - 2.0 * T
        sc += 2.0 * abs(T)
        moment = a0
    elif sym.family == "translation":
        nd = np.asarray(sym.direction, dtype=float)
        c1, c0 = q1[i1] @ nd, q0[i1] @ nd
        res = (c1 - c0) - T
        sc = np.sum(np.abs(q1[i1] * nd)) + np.sum(np.abs(q0[i1] * nd)) + abs(T)
        moment = c0
    else:
        oq = xi[i1]
        res = q1[i1] @ oq - T
        sc = (np.linalg.norm(q1[i1]) + np.linalg.norm(qfree[i1] - q0[i1])) * np.linalg.norm(oq)
        moment = math.nan       # L_n needs q_{n-1}: filled in by the caller
    rel = abs(res) / sc if sc > 0 else (0.0 if res == 0 else 1.0)
    return moment, (1.0 if rel != rel else float(rel))


def run_python_rule(step, potential, q0, steps, *, state=None, omega=None, q_prev=None):
    """Run a learning rule written in Python and compute its Noether charges and the
    residuals of the discrete balance laws, exactly as :func:`noether_core.train` does.

    Parameters
    ----------
    step : callable ``step(q, g, state) -> (q_new, state_new)``
        One update from parameters q with gradient g = ∇f(q); must not modify its inputs
        in place.  ``state`` is whatever the rule keeps (momentum buffer, …).
    potential : Potential
    q0 : (d,) array
    steps : int ≥ 0
    state : any
        The rule's initial state (passed to the first call of ``step``).
    omega : (n, n) array or dict of block -> array, optional
        Ω of rotations declared for "every Ω".
    q_prev : (d,) array, optional
        q_{−1} for a resumed start (Δ_0 = q0 − q_prev); default q0 (a fresh start).

    Returns
    -------
    PythonRun

    Notes
    -----
    The balance law of the step n → n+1 compares the transfer ⟨Δ_{n+1}, ξ(q_n)⟩ with that
    of the *free* step, the same rule applied with g = 0 (on a deep copy of the state):
    whenever the rule's step differs from its free step by c·g in the symmetric
    directions, ⟨g, ξ⟩ = 0 makes the law exact (docs/balance_laws.md; for heavy ball it is
    SPEC §1.1).  Non-finite values stop the run (``diverged``).
    """
    q = np.array(q0, dtype=np.float64)
    if q.shape != (potential.dim,):
        raise ValueError(f"q0 must have shape ({potential.dim},), got {q.shape}")
    prev = q.copy() if q_prev is None else np.array(q_prev, dtype=np.float64)
    syms = []
    for s in potential.symmetries:
        om = None
        if s.family == "rotation":
            om = s.omega if s.omega is not None else (
                omega.get(s.blocks[0]) if isinstance(omega, dict) else omega)
            if om is None:
                continue
        syms.append((s, om))
    qs, losses = [q.copy()], []
    mom = {symmetry_label(s): [] for s, _ in syms}
    chg = {k: [] for k in mom}
    res = {k: [0.0] for k in mom}
    run = PythonRun(q=None, loss=None)
    for n in range(steps + 1):
        f, g = potential.value_and_grad(q)
        losses.append(float(f))
        for s, om in syms:
            xi = generator(s, q, potential.blocks, om)
            J = float((q - prev) @ xi)
            k = symmetry_label(s)
            chg[k].append(J)
            mom[k].append(J if s.family == "rotation" else
                          _moment_and_residual(s, potential.blocks, om, q, q, q)[0])
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            run.diverged, run.stop_step = True, n
            run.stop_reason = "non-finite loss" if not np.isfinite(f) else "non-finite gradient"
            break
        if n == steps:
            break
        q_new, new_state = step(q.copy(), g.copy(), copy.deepcopy(state))
        q_free, _ = step(q.copy(), np.zeros_like(g), copy.deepcopy(state))
        q_new = np.asarray(q_new, dtype=np.float64)
        q_free = np.asarray(q_free, dtype=np.float64)
        for s, om in syms:
            res[symmetry_label(s)].append(
                _moment_and_residual(s, potential.blocks, om, q, q_new, q_free)[1])
        prev, q, state = q, q_new, new_state
        qs.append(q.copy())
        if not np.all(np.isfinite(q)):
            run.diverged, run.stop_step = True, n
            run.stop_reason = "non-finite parameters after the update"
            break
    rows = len(losses)
    run.q, run.loss = np.array(qs[:rows]), np.array(losses)
    for s, _ in syms:
        k = symmetry_label(s)
        r = np.array(res[k][:rows])
        w = int(np.argmax(r)) if rows > 1 else 0
        run.charges[k] = ChargeSeries(
            s, np.array(mom[k][:rows]), np.array(chg[k][:rows]), r,
            float(r.max()) if rows > 1 else 0.0, w - 1 if rows > 1 else -1,
            "exact" if s.exact else "potential breaking")
    return run


# -----------------------------------------------------------------------------------------
# assertions

def assert_balance_law(run, *, tol=EXACT_TOL, laws=("exact",), min_tracked=1):
    """Assert every balance law of ``run`` whose kind is in ``laws`` holds to ``tol``.

    Parameters
    ----------
    run : TrainResult or PythonRun
        Anything with ``.charges`` (dict of ChargeSeries) and ``.diverged``.
    tol : float
        Bound on the worst relative residual over every step (residuals are relative to
        the sum of the absolute terms of the identity, see :data:`EXACT_TOL`).
    laws : tuple of str
        Which laws to check (``ChargeSeries.law``): "exact" by default; add "undeclared"
        to check symmetries you asked ``train(charges=[...])`` to track.
    min_tracked : int
        Fail unless at least this many laws were checked (so a run that tracked nothing
        does not pass vacuously).

    Raises
    ------
    AssertionError
        Naming the symmetry, the residual and the step where it is worst.
    """
    if getattr(run, "diverged", False):
        raise AssertionError(f"the run diverged at step {run.stop_step}: {run.stop_reason}")
    checked = [c for c in run.charges.values() if c.law in laws]
    if len(checked) < min_tracked:
        raise AssertionError(
            f"{len(checked)} balance law(s) of kind {laws} tracked, expected at least "
            f"{min_tracked}; charges: {[(c.label, c.law) for c in run.charges.values()]}")
    bad = [c for c in checked if not c.worst <= tol]
    if bad:
        raise AssertionError("balance law violated: " + "; ".join(
            f"{c.label} ({c.law}) worst relative residual {c.worst:.3e} > {tol:.1e} at step "
            f"{c.worst_step}" for c in bad))
    return max((c.worst for c in checked), default=0.0)


def _final_state(method, model, y0, t_end, h, t0):
    if callable(method):
        return np.asarray(method(model, np.array(y0, dtype=float), t_end, h), dtype=float)
    n = max(1, round((t_end - t0) / h))
    if method in _ADAPTIVE:
        # the Runge-Kutta formula's order needs equal steps: land on every t0 + i h (the
        # step is never stretched past an output time), first step h, and tolerances so
        # loose that the controller never rejects or shortens a step (checked)
        r = _integrate(model, y0, t0=t0, t_end=t_end, h=(t_end - t0) / n, method=method,
                       t_eval=np.linspace(t0, t_end, n + 1), rtol=1e3, atol=1e3)
        if r.n_steps != n or r.n_rejected != 0:
            raise AssertionError(f"{method} did not take {n} equal steps at h={h} "
                                 f"({r.n_steps} accepted, {r.n_rejected} rejected)")
    else:
        r = _integrate(model, y0, t0=t0, t_end=t_end, h=(t_end - t0) / n, method=method,
                       record_every=n)
    if r.diverged:
        raise AssertionError(f"{method} diverged at h={h}: {r.message}")
    return r.y_final


def assert_order(method, model, y0, *, t_end, hs, order=None, t0=0.0, reference=None,
                 tol=0.3, floor=1e-11):
    """Assert the global error at ``t_end`` shrinks as h^p; return the fitted slope.

    Parameters
    ----------
    method : str or callable
        An ``integrate`` method name (another string raises a ValueError listing them),
        or ``method(model, y0, t_end, h) -> y_final`` (your own integrator; ``t0`` is
        then 0).
    model : noether_core.models model
    y0 : (n,) array
    t_end : float
    hs : sequence of float
        Step sizes, at least 3 (h is rounded to (t_end − t0)/N so the steps land on t_end).
        The adaptive methods (dopri5, dop853) are forced onto N equal steps (output times
        every h, tolerances too loose for the controller to reject or shorten a step), so
        the slope is their Runge–Kutta formula's order, not the controller's behaviour.
    order : int, optional
        Expected p (default: the advertised order of a named method).
    reference : (n,) array, optional
        The exact y(t_end); default ``integrate(method="dopri5", rtol=1e-13, atol=1e-15)``.
    tol : float
        |slope − p| allowed.  A least-squares slope over a factor 4–8 in h is typically
        within ±0.1 of p in the asymptotic regime; 0.3 leaves room for pre-asymptotic
        curvature at the largest h.
    floor : float
        Errors below this (relative to max(1, |y|)) are round-off or reference error and
        are dropped from the fit (at least 3 points must remain).

    Raises
    ------
    AssertionError
        With the step sizes, the errors and the fitted slope.
    """
    if not callable(method) and method not in _ORDER:
        raise ValueError(f"method must be one of {sorted(_ORDER)} or a callable "
                         f"method(model, y0, t_end, h) -> y_final, got {method!r}")
    if order is None:
        if callable(method):
            raise ValueError("order= is required for a callable method")
        order = _ORDER[method]
    hs = np.sort(np.asarray(hs, dtype=float))[::-1]
    if len(hs) < 3:
        raise ValueError(f"hs must hold at least 3 step sizes, got {len(hs)}")
    if reference is None:
        reference = _integrate(model, y0, t0=t0, t_end=t_end, method="dopri5",
                                             rtol=1e-13, atol=1e-15,
                                             max_steps=10**6).y_final
    ref = np.asarray(reference, dtype=float)
    scale = max(1.0, float(np.max(np.abs(ref))))
    errs = np.array([np.max(np.abs(_final_state(method, model, y0, t_end, h, t0) - ref))
                     for h in hs]) / scale
    keep = errs > floor
    if keep.sum() < 3:
        raise AssertionError(f"too few errors above the floor {floor:g} to fit a slope: "
                             f"h={hs.tolist()}, errors={errs.tolist()}; use larger hs")
    slope = float(np.polyfit(np.log(hs[keep]), np.log(errs[keep]), 1)[0])
    if abs(slope - order) > tol:
        raise AssertionError(f"global error slope {slope:.3f}, expected {order} ± {tol}: "
                             f"h={hs.tolist()}, errors={errs.tolist()}")
    return slope


def assert_symmetry(potential, q=None, *, symmetries=None, omega=None, s=(1e-3, 0.1, 0.5),
                    n_points=4, seed=0, rtol=1e-10):
    """Assert ``potential`` has its declared exact symmetries at some points.

    For each symmetry (default: every declared one with ``exact=True``) and each point q
    checks the infinitesimal form |⟨∇f(q), ξ(q)⟩| ≤ rtol·|∇f(q)||ξ(q)| and the finite
    form |f(Q(q, s)) − f(q)| ≤ rtol·max(1, |f(q)|) for each s (SPEC §0).

    Parameters
    ----------
    potential : Potential, or anything with ``value_and_grad``, ``dim``, ``blocks`` and
        ``symmetries``
    q : (d,) array or (k, d) array, optional
        Points; default ``n_points`` random ones (coordinates ±[0.1, 2], seeded).
    symmetries : list of Symmetry, optional
    omega : skew matrix (or dict block -> matrix) for rotations declared for every Ω;
        default a random one per check.
    rtol : float
        Both sides are evaluated in floating point: round-off of a few ulps times the
        conditioning of f; 1e-10 holds for the built-ins with a wide margin.
    """
    rng = np.random.default_rng(seed)
    d = potential.dim
    if q is None:
        pts = rng.uniform(0.1, 2.0, (n_points, d)) * rng.choice([-1.0, 1.0], (n_points, d))
    else:
        pts = np.atleast_2d(np.asarray(q, dtype=float))
    syms = ([s_ for s_ in potential.symmetries if s_.exact] if symmetries is None
            else list(symmetries))
    if not syms:
        raise AssertionError(f"{potential!r} declares no exact symmetry to check")
    for sym in syms:
        if not isinstance(sym, Symmetry) or sym.family not in FAMILIES:
            raise TypeError(f"symmetries must hold Symmetry objects, got {sym!r}")
        n = len(potential.blocks[sym.blocks[0]])
        om = (sym.omega if sym.omega is not None else
              (omega.get(sym.blocks[0]) if isinstance(omega, dict) else omega))
        for x in pts:
            o = om if om is not None or sym.family != "rotation" else random_skew(n, rng)
            f, g = potential.value_and_grad(x)
            xi = generator(sym, x, potential.blocks, o)
            lhs = abs(float(g @ xi))
            bound = rtol * float(np.linalg.norm(g) * np.linalg.norm(xi))
            if not lhs <= bound:
                raise AssertionError(f"{sym!r}: <grad f(q), xi(q)> = {lhs:.3e} > "
                                     f"{bound:.3e} at q = {x.tolist()}")
            for sv in s:
                fs = float(potential.value_and_grad(
                    transform(sym, x, sv, potential.blocks, o))[0])
                if not abs(fs - f) <= rtol * max(1.0, abs(f)):
                    raise AssertionError(f"{sym!r}: f(Q(q, {sv})) = {fs!r} differs from "
                                         f"f(q) = {float(f)!r} at q = {x.tolist()}")
