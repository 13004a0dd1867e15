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

from ._bridge import ChargeLayout, ChargeRecord, csr
from .symmetry import FAMILIES, Symmetry

__all__ = ["ChargeSeries", "symmetry_label", "select", "layout", "record", "collect"]


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


#: layouts kept per potential (one per distinct choice of tracked symmetries), at most
_LAYOUT_CACHE_MAX = 8


def _array_key(a):
    """An array's exact content as a hashable key: dtype, shape and bytes (None: None)."""
    if a is None:
        return None
    a = np.asarray(a)
    return (a.dtype.str, a.shape, a.tobytes())


def _layout_key(chosen) -> tuple:
    """Everything :func:`layout` reads from the chosen symmetries, by value: the family,
    the block names, a translation's direction and the Ω of a rotation (exact bytes)."""
    return tuple((s.family, s.blocks,
                  _array_key(s.direction) if s.family == "translation" else None,
                  _array_key(om)) for s, om in chosen)


def layout(potential, chosen) -> ChargeLayout:
    """What the compiled loop tracks, as its ChargeSpec reads it
    (noether_core/_kernels/rules.pxd): families, blocks, directions and Ω's.

    The layout is a function of the potential's blocks and of the chosen symmetries'
    families, block names, directions and Ω's, nothing else; it is kept on the potential
    (at most ``_LAYOUT_CACHE_MAX`` choices) under a key holding those values exactly
    (:func:`_layout_key`), together with the blocks mapping it was built from, and used
    again only while ``potential.blocks`` is that very mapping (a potential's blocks are
    a read-only mapping of read-only arrays, fixed at construction).  Its arrays are
    read-only: every run shares them (the kernel only reads them)."""
    key = _layout_key(chosen)
    blocks = potential.blocks
    cache = potential.__dict__.get("_layout_cache")
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and hit[0] is blocks:
            return hit[1]
    out = _build_layout(blocks, chosen)
    for name in ("fam", "ptr1", "idx1", "ptr2", "idx2", "dirn", "optr", "omega"):
        getattr(out, name).setflags(write=False)
    if cache is None or len(cache) >= _LAYOUT_CACHE_MAX:
        cache = {}
    cache[key] = (blocks, out)
    potential._layout_cache = cache
    return out


def _build_layout(blocks, chosen) -> ChargeLayout:
    """The ChargeLayout of ``chosen`` on a potential's ``blocks`` (no cache)."""
    fam, b1, b2, dirs, oms = [], [], [], [], []
    for s, om in chosen:
        fam.append(FAMILIES.index(s.family))
        b1.append(blocks[s.blocks[0]])
        b2.append(blocks[s.blocks[1]] if s.family == "rescale" else
                  np.zeros(0, np.intp))
        dirs.append(np.asarray(s.direction, dtype=float) if s.family == "translation"
                    else np.zeros(len(b1[-1])))
        oms.append(om.ravel() if om is not None else np.zeros(0))
    ptr1, idx1 = csr(b1)
    ptr2, idx2 = csr(b2)
    optr = np.zeros(len(oms) + 1, dtype=np.intp)
    optr[1:] = np.cumsum([len(o) for o in oms])
    return ChargeLayout(
        fam=np.array(fam, dtype=np.intc), ptr1=ptr1, idx1=idx1, ptr2=ptr2, idx2=idx2,
        dirn=np.ascontiguousarray(np.concatenate(dirs) if dirs else np.zeros(0)),
        optr=optr, omega=np.ascontiguousarray(np.concatenate(oms) if oms else np.zeros(0)))


def record(potential, chosen, n_rec, state) -> ChargeRecord:
    """A single run's charge outputs (``n_rec`` rows) and the balance-law state it starts
    from: the last step Δ and residuals carried by ``state`` (a resumed run).  The four
    recorded (n_rec, nsym) series are the rows of one zeroed block (each C-contiguous)."""
    nsym = len(chosen)
    d = potential.dim
    last_delta = (np.zeros(d) if state.last_delta is None
                  else np.array(state.last_delta, dtype=float))
    prev = state.last_residual or {}
    prevm = state.last_metric or {}
    if prev or prevm:
        labels = [symmetry_label(s) for s, _ in chosen]
        last_res = np.array([float(prev.get(k, 0.0)) for k in labels], dtype=np.float64)
        last_metric = np.array([float(prevm.get(k, 0.0)) for k in labels], dtype=np.float64)
    else:                                   # a fresh run: nothing carried
        last_res, last_metric = np.zeros(nsym), np.zeros(nsym)
    series = np.zeros((4, n_rec, nsym))
    worst_step = np.empty(nsym, dtype=np.intp)
    worst_step.fill(-1)
    return ChargeRecord(
        last_delta=last_delta, last_res=last_res, last_metric=last_metric,
        rec_moment=series[0], rec_charge=series[1], rec_resid=series[2],
        rec_metric=series[3], worst=np.zeros(nsym), worst_step=worst_step,
        worst_metric=np.zeros(nsym))


def collect(rule, potential, chosen, rec: ChargeRecord, n_done, step0):
    """ChargeSeries per tracked symmetry from the kernel's outputs."""
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
        ws = int(rec.worst_step[j])
        out[symmetry_label(s)] = ChargeSeries(
            s, rec.rec_moment[:n_done, j].copy(), rec.rec_charge[:n_done, j].copy(),
            rec.rec_resid[:n_done, j].copy(), float(rec.worst[j]),
            step0 + ws if ws >= 0 else -1, law, rec.rec_metric[:n_done, j].copy(),
            float(rec.worst_metric[j]))
    return out
