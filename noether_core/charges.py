"""Noether charges and the residuals of exact discrete balance laws along a run.

``noether_core.train`` tracks, inside the compiled loop and at every step, each symmetry
of the potential (SPEC §0) and the residual of the rule's exact discrete balance law
(SPEC §1.1; derivations in docs/balance_laws.md).  This module turns what the kernel
recorded into :class:`ChargeSeries` objects and builds the kernel's description of the
symmetries.

Per family, at recorded row n (Δ_n = q_n − q_{n−1}, ξ the generator):

=============  ===================================  ============================
family         moment                               charge J_n = ⟨Δ_n, ξ(q_n)⟩
=============  ===================================  ============================
scale          A_n = |q_B|²                          ⟨Δ_n, q_n⟩_B
rescale        A_n = |q_B1|² − |q_B2|²               ⟨Δ_n, q_n⟩_B1 − ⟨Δ_n, q_n⟩_B2
translation    C_n = ⟨q_B, n̂⟩                        C_n − C_{n−1}
rotation       L_n = ⟨q_n, Ω q_{n−1}⟩                 L_n
=============  ===================================  ============================

The balance law of step n → n+1 says what the one-step transfer ⟨Δ_{n+1}, ξ(q_n)⟩ is
without the current gradient (the "free" step: momentum inertia and weight decay); for SGD
with momentum β and weight decay k this is the identity of SPEC §1.1,
(A_{n+1} − A_n) − β(A_n − A_{n−1}) = |Δ_{n+1}|² + β|Δ_n|² − 2ηk A_n.  Residuals are
relative to the size of the terms (round-off ~1e-16 when the law is exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .symmetry import FAMILIES, Symmetry

__all__ = ["ChargeSeries", "ContinuumBalance", "continuum_balance", "symmetry_label"]


def symmetry_label(sym: Symmetry) -> str:
    """``"family:block"`` (``"rescale:B1/B2"``), the key of ``TrainResult.charges``."""
    return f"{sym.family}:{'/'.join(sym.blocks)}"


@dataclass(eq=False)
class ChargeSeries:
    """Charges of one symmetry along a run, at the recorded rows.

    Attributes
    ----------
    symmetry : Symmetry
    moment : (R,) array
        A_n (scale, rescale), C_n (translation) or L_n (rotation) — see module docstring.
    charge : (R,) array
        J_n = ⟨Δ_n, ξ(q_n)⟩ (0 at the first row of a fresh run).
    residual : (R,) array
        Relative residual of the balance law of the step that produced row n (0 at the
        first row of a fresh run).
    worst : float
        Worst relative residual over every step of the run (not only recorded ones).
    worst_step : int
        Global step index n of the step n → n+1 where ``worst`` occurred (-1: no step).
    law : {"exact", "kinetic breaking", "potential breaking", "undeclared"}
        "exact": rule and potential both have the symmetry, the residual is round-off;
        "kinetic breaking": the rule's kinetic energy lacks it (Table 2), the residual
        measures the breaking; "potential breaking": the potential only approximately has
        it (e.g. BatchNorm with eps > 0); "undeclared": a symmetry the caller asked to
        track that the potential does not declare (the residual tests whether it holds).
    metric : (R,) array
        Mirror descent only (zeros otherwise): the metric term of Eq. 9 of the step that
        produced row n, ⟨∇h(q_{n+1}) − ∇h(q_n) − ∇²h(q_n)Δ_{n+1}, ξ(q_n)⟩ — zero for
        quadratic h, O(η²) otherwise: the non-Euclidean metric's kinetic symmetry breaking
        (docs/balance_laws.md §4).  Mirror descent's own law, in the dual variable, is
        exact for every h, and ``residual`` checks that one.
    worst_metric : float
        Largest |metric term| over the run.
    """

    symmetry: Symmetry
    moment: np.ndarray
    charge: np.ndarray
    residual: np.ndarray
    worst: float
    worst_step: int
    law: str
    metric: np.ndarray | None = None
    worst_metric: float = 0.0

    @property
    def label(self) -> str:
        return symmetry_label(self.symmetry)

    def __repr__(self):
        return (f"ChargeSeries({self.label!r}, rows={len(self.moment)}, "
                f"worst residual={self.worst:.2e} at step {self.worst_step}, law={self.law!r})")


def _omega_for(sym, potential, omega):
    if sym.omega is not None:
        return np.asarray(sym.omega, dtype=float)
    if omega is None:
        return None
    n = len(potential.blocks[sym.blocks[0]])
    om = omega.get(sym.blocks[0]) if isinstance(omega, dict) else omega
    if om is None:
        return None
    om = np.asarray(om, dtype=float)
    if om.shape != (n, n):
        raise ValueError(f"omega for block {sym.blocks[0]!r} must be {n} x {n}, got {om.shape}")
    if not np.all(np.isfinite(om)) or not np.allclose(om, -om.T, rtol=0, atol=1e-14 *
                                                      max(1.0, np.abs(om).max())):
        raise ValueError("omega must be a finite skew-symmetric matrix")
    return om


def select(potential, charges, omega):
    """The symmetries to track and their Ω; returns (list of (sym, omega), untracked)."""
    if charges is None or charges is False:
        return [], []
    if charges is True:
        syms = list(potential.symmetries)
    else:
        syms = list(charges)
        for s in syms:
            if not isinstance(s, Symmetry):
                raise TypeError("charges must be True, False or a list of Symmetry objects, "
                                f"got an element of type {type(s).__name__}")
            for b in s.blocks:
                if b not in potential.blocks:
                    raise ValueError(f"charges: symmetry {s!r} names block {b!r}, which "
                                     f"{type(potential).__name__} does not have; blocks: "
                                     f"{list(potential.blocks)[:8]}")
            if s.family == "translation":
                dirn = np.asarray(s.direction, dtype=float) if s.direction is not None else None
                if dirn is None or dirn.shape != (len(potential.blocks[s.blocks[0]]),):
                    raise ValueError(f"charges: translation {s!r} needs a direction of the "
                                     "block's length")
    chosen, untracked = [], []
    for s in syms:
        om = _omega_for(s, potential, omega) if s.family == "rotation" else None
        if s.family == "rotation" and om is None:
            untracked.append((symmetry_label(s), "rotation without a fixed Omega: pass "
                              "omega= (a skew matrix for the block) to track it"))
            continue
        chosen.append((s, om))
    return chosen, untracked


def kernel_spec(potential, chosen, n_rec, state):
    """The arrays of the kernel's ChargeSpec (see noether_core/_kernels/rules.pxd)."""
    fam, b1, b2, dirs, oms = [], [], [], [], []
    for s, om in chosen:
        fam.append(FAMILIES.index(s.family))
        b1.append(potential.blocks[s.blocks[0]])
        b2.append(potential.blocks[s.blocks[1]] if s.family == "rescale" else
                  np.zeros(0, np.intp))
        dirs.append(np.asarray(s.direction, dtype=float) if s.family == "translation"
                    else np.zeros(len(b1[-1])))
        oms.append(om.ravel() if om is not None else np.zeros(0))

    def csr(parts):
        ptr = np.zeros(len(parts) + 1, dtype=np.intp)
        ptr[1:] = np.cumsum([len(p) for p in parts])
        idx = np.concatenate(parts).astype(np.intp) if parts else np.zeros(0, np.intp)
        return ptr, np.ascontiguousarray(idx)

    ptr1, idx1 = csr(b1)
    ptr2, idx2 = csr(b2)
    optr = np.zeros(len(oms) + 1, dtype=np.intp)
    optr[1:] = np.cumsum([len(o) for o in oms])
    nsym = len(chosen)
    d = potential.dim
    last_delta = (np.zeros(d) if state.last_delta is None
                  else np.array(state.last_delta, dtype=float))
    prev = state.last_residual or {}
    last_res = np.array([float(prev.get(symmetry_label(s), 0.0)) for s, _ in chosen])
    prevm = state.last_metric or {}
    last_metric = np.array([float(prevm.get(symmetry_label(s), 0.0)) for s, _ in chosen])
    return (np.array(fam, dtype=np.intc), ptr1, idx1, ptr2, idx2,
            np.ascontiguousarray(np.concatenate(dirs) if dirs else np.zeros(0)),
            optr, np.ascontiguousarray(np.concatenate(oms) if oms else np.zeros(0)),
            last_delta, last_res,
            np.zeros((n_rec, nsym)), np.zeros((n_rec, nsym)), np.zeros((n_rec, nsym)),
            np.zeros(nsym), np.full(nsym, -1, dtype=np.intp),
            last_metric, np.zeros((n_rec, nsym)), np.zeros(nsym))


def collect(rule, potential, chosen, spec, n_done, step0):
    """ChargeSeries per tracked symmetry from the kernel's outputs."""
    (*_, last_delta, last_res, rec_m, rec_c, rec_r, worst, worst_step,
     last_metric, rec_mt, worst_metric) = spec
    out = {}
    for j, (s, _) in enumerate(chosen):
        if not any(s == t for t in potential.symmetries):
            law = "undeclared"
        elif not s.exact:
            law = "potential breaking"
        elif rule.kinetic_symmetric(s, potential):
            law = "exact"
        else:
            law = "kinetic breaking"
        ws = int(worst_step[j])
        out[symmetry_label(s)] = ChargeSeries(
            s, rec_m[:n_done, j].copy(), rec_c[:n_done, j].copy(), rec_r[:n_done, j].copy(),
            float(worst[j]), step0 + ws if ws >= 0 else -1, law,
            rec_mt[:n_done, j].copy(), float(worst_metric[j]))
    return out


@dataclass(eq=False)
class ContinuumBalance:
    """Eq. (6.1) of docs/balance_laws.md evaluated on a recorded run.

    Attributes
    ----------
    t : (K,) array
        Times t = nη of the interior rows where the balance is evaluated.
    lhs, rhs : (K,) arrays
        m d/dt⟨q̇, q⟩ + μ⟨q̇, q⟩ and m|q̇|² − k|q|² (finite differences in t).
    residual : (K,) array
        |lhs − rhs| / (|m d/dt⟨q̇,q⟩| + |μ⟨q̇,q⟩| + m|q̇|² + k|q|²).
    m, mu, k : floats (the paper's convention, SPEC §0)
    """

    t: np.ndarray
    lhs: np.ndarray
    rhs: np.ndarray
    residual: np.ndarray
    m: float
    mu: float
    k: float


def continuum_balance(run, block: str | None = None) -> ContinuumBalance:
    """Evaluate the continuous-time scale balance on a recorded heavy-ball run.

    ``m d/dt⟨q̇,q⟩ + μ⟨q̇,q⟩ = m|q̇|² − k|q|²`` (SPEC §1.1, the exact form of Eq. 16 before
    the over-damped approximation), with the paper's m = η(1+β)/2, μ = 1−β, t = nη, and
    q̇, d/dt by second-order central differences of the recorded rows.  On a discrete
    trajectory the residual is O(η³) at fixed t: the central difference's O(η²) error
    cancels the O(η²) term of the modified equation (docs/balance_laws.md §6).

    Parameters
    ----------
    run : TrainResult
        An SGD run (no nesterov, dampening 0) recorded with ``record_every=1``, at least
        5 rows.
    block : str, optional
        A scale block of the potential (default: its only scale block).
    """
    from .rules import SGD
    from ._train import TrainResult

    if not isinstance(run, TrainResult):
        raise TypeError(f"run must be a TrainResult (what noether_core.train returns), got "
                        f"{type(run).__name__}")
    if block is not None and not isinstance(block, str):
        raise TypeError(f"block must be a block name (str) or None, got {block!r}")
    rule = run.rule
    if not isinstance(rule, SGD) or rule.nesterov or rule.dampening != 0.0:
        raise ValueError("continuum_balance needs an SGD run without nesterov and dampening "
                         f"(the model of Eq. 2), got {rule!r}")
    if run.record_every != 1 or len(run.q) < 5:
        raise ValueError("continuum_balance needs a run recorded with record_every=1 and at "
                         f"least 5 rows, got record_every={run.record_every}, "
                         f"{len(run.q)} rows")
    scale_blocks = [s.blocks[0] for s in run.potential.symmetries if s.family == "scale"]
    if block is None:
        if len(scale_blocks) != 1:
            raise ValueError(f"name the scale block: the potential has {scale_blocks}")
        block = scale_blocks[0]
    elif block not in run.potential.blocks:
        raise ValueError(f"block {block!r} not in {list(run.potential.blocks)[:8]}")
    idx = run.potential.blocks[block]
    eta, beta, k = rule.lr, rule.momentum, rule.weight_decay
    m, mu = eta * (1.0 + beta) / 2.0, 1.0 - beta
    q = run.q[:, idx]
    qdot = (q[2:] - q[:-2]) / (2 * eta)                 # at rows 1 .. R-2
    qc = q[1:-1]
    S = np.einsum("ij,ij->i", qdot, qc)                 # <q̇, q>
    dS = (S[2:] - S[:-2]) / (2 * eta)                   # at rows 2 .. R-3
    S, qdot, qc = S[1:-1], qdot[1:-1], qc[1:-1]
    v2 = np.einsum("ij,ij->i", qdot, qdot)
    a = np.einsum("ij,ij->i", qc, qc)
    lhs = m * dS + mu * S
    rhs = m * v2 - k * a
    scale = np.abs(m * dS) + np.abs(mu * S) + m * v2 + k * a
    with np.errstate(invalid="ignore", divide="ignore"):
        res = np.where(scale > 0, np.abs(lhs - rhs) / scale, 0.0)
    t = (run.steps[2:-2]) * eta
    return ContinuumBalance(t, lhs, rhs, res, m, mu, k)
