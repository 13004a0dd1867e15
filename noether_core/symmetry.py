"""Symmetries of potentials: metadata, generators and the transformations themselves.

The four families of SPEC §0 act on named blocks of the flat parameter vector q:

==============  ===========================  ======================  ==================
family          transformation Q(q, s)       generator xi(q)         typical source
==============  ===========================  ======================  ==================
translation     q_B + s n                    n on B                  softmax logits
scale           (1 + s) q_B                  q_B on B                BatchNorm
rescale         (e^s q_B1, e^-s q_B2)        (q_B1, -q_B2)           ReLU layer pairs
rotation        exp(s Omega) q_B             Omega q_B               isotropic losses
==============  ===========================  ======================  ==================

A potential f is symmetric when <grad f(q), xi(q)> = 0 for all q; equivalently
f(Q(q, s)) = f(q) for all s.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validation as V

__all__ = ["Symmetry", "FAMILIES", "generator", "transform", "random_skew", "kinetic_table",
           "kinetic_energy", "kinetic_asymmetry", "KineticTable"]

FAMILIES = ("translation", "scale", "rescale", "rotation")


@dataclass(frozen=True)
class Symmetry:
    """One symmetry of a potential.

    Attributes
    ----------
    family : {"translation", "scale", "rescale", "rotation"}
    blocks : tuple of str
        Names of the blocks it acts on (two for "rescale": the block scaled by e^s first).
    exact : bool
        False when the potential only approximately has the symmetry (e.g. BatchNorm with
        eps > 0); ``note`` then says why.
    direction : ndarray or None
        Translation direction n (unit vector over the block).
    omega : ndarray or None
        Skew matrix of a rotation; None means "every skew matrix on the block" (an
        isotropic potential).
    note : str
    """

    family: str
    blocks: tuple
    exact: bool = True
    direction: np.ndarray | None = field(default=None, compare=False)
    omega: np.ndarray | None = field(default=None, compare=False)
    note: str = ""

    def __post_init__(self):
        """Validate every field, naming it; ``direction`` and ``omega`` are kept as
        read-only float64 copies (a Symmetry is frozen, its arrays too)."""
        if not isinstance(self.family, str) or self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if isinstance(self.blocks, str) or not isinstance(self.blocks, (tuple, list)):
            raise TypeError(f"blocks must be a tuple of block names (str), got "
                            f"{self.blocks!r}")
        want = 2 if self.family == "rescale" else 1
        if len(self.blocks) != want:
            raise ValueError(f"a {self.family} symmetry acts on {want} block(s), "
                             f"got {self.blocks!r}")
        for b in self.blocks:
            if not isinstance(b, str):
                raise TypeError(f"blocks must hold block names (str), got {b!r} in "
                                f"{self.blocks!r}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not isinstance(self.exact, (bool, np.bool_)):
            raise TypeError(f"exact must be True or False, got {self.exact!r}")
        object.__setattr__(self, "exact", bool(self.exact))
        if not isinstance(self.note, str):
            raise TypeError(f"note must be a str, got {type(self.note).__name__}")
        if self.direction is not None:
            n = V.as_float_array("direction", self.direction, ndim=1)   # finite, real
            if not np.any(n):
                raise ValueError(f"direction must be a non-zero vector, got {n!r}")
            object.__setattr__(self, "direction", _frozen(n))
        if self.omega is not None:
            om = V.as_float_array("omega", self.omega, ndim=2)          # finite, real
            if om.shape[0] != om.shape[1] or not np.allclose(om, -om.T):
                raise ValueError(f"omega must be a square skew-symmetric matrix, got shape "
                                 f"{om.shape}" + ("" if om.shape[0] != om.shape[1] else
                                                  " not skew (omega != -omega.T)"))
            object.__setattr__(self, "omega", _frozen(om))

    def __repr__(self):
        extra = "" if self.exact else f", exact=False ({self.note})"
        return f"Symmetry({self.family!r}, blocks={self.blocks!r}{extra})"


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` (a fresh copy made by the validation) made read-only."""
    a.setflags(write=False)
    return a


def random_skew(n: int, rng=None) -> np.ndarray:
    """A random n x n skew-symmetric matrix (Frobenius norm 1)."""
    n = V.as_int("n", n, lo=0)
    V.check_size(f"random_skew(n={n})", n * n)
    rng = rng if isinstance(rng, np.random.Generator) else V.as_rng("rng", rng)
    a = rng.standard_normal((n, n))
    om = a - a.T
    nrm = np.linalg.norm(om)
    return om / nrm if nrm > 0 else om


def _omega(sym: Symmetry, n: int, omega):
    om = sym.omega if omega is None else V.as_float_array("omega", omega, ndim=2)
    if om is None:
        raise ValueError(f"{sym!r} holds for every skew matrix: pass omega= (n x n, "
                         f"n = {n}), e.g. noether_core.symmetry.random_skew({n})")
    if om.shape != (n, n) or not np.allclose(om, -om.T):
        raise ValueError(f"omega must be a skew-symmetric {n} x {n} matrix")
    return om


def generator(sym: Symmetry, q, blocks: dict, omega=None) -> np.ndarray:
    """The generator xi(q) = d/ds Q(q, s) at s = 0, as a full-length vector."""
    q = _q(q, blocks)
    xi = np.zeros_like(q)
    idx = blocks[sym.blocks[0]]
    if sym.family == "translation":
        xi[idx] = sym.direction
    elif sym.family == "scale":
        xi[idx] = q[idx]
    elif sym.family == "rescale":
        xi[idx] = q[idx]
        idx2 = blocks[sym.blocks[1]]
        xi[idx2] = -q[idx2]
    else:
        xi[idx] = _omega(sym, len(idx), omega) @ q[idx]
    if not np.all(np.isfinite(xi)):
        raise ValueError("the generator xi(q) overflows float64 (q or omega too large)")
    return xi


def transform(sym: Symmetry, q, s: float, blocks: dict, omega=None) -> np.ndarray:
    """The finite transformation Q(q, s) (ValueError if it overflows float64)."""
    q = _q(q, blocks)
    s = V.as_scalar("s", s)
    idx = blocks[sym.blocks[0]]
    if sym.family == "translation":
        q[idx] = q[idx] + s * sym.direction
    elif sym.family == "scale":
        q[idx] = (1.0 + s) * q[idx]
    elif sym.family == "rescale":
        q[idx] = np.exp(s) * q[idx]
        idx2 = blocks[sym.blocks[1]]
        q[idx2] = np.exp(-s) * q[idx2]
    else:
        from scipy.linalg import expm  # lazily: keeps `import noether_core` light
        q[idx] = expm(s * _omega(sym, len(idx), omega)) @ q[idx]
    if not np.all(np.isfinite(q)):
        raise ValueError(f"the {sym.family} transformation with s={s}"
                         f"{' and this omega' if sym.family == 'rotation' else ''} "
                         "overflows float64")
    return q


def _q(q, blocks):
    """q as a finite 1-D float64 array long enough for every block."""
    q = V.as_float_array("q", q, ndim=1)
    top = max((int(b.max()) for b in blocks.values() if len(b)), default=-1)
    if top >= len(q):
        raise ValueError(f"q has length {len(q)}, but the blocks index up to {top}")
    return q


# ---------------------------------------------------------------------------------------
# Table 2: symmetry of the Bregman kinetic energy (docs/balance_laws.md §7)

def kinetic_energy(mirror, q, qdot, alpha=0.0) -> float:
    """T_h = e^α D_h(q + e^{−α} q̇, q), the Bregman kinetic energy (Eq. 4)."""
    return float(np.exp(alpha) * mirror.bregman(q + np.exp(-alpha) * qdot, q))


def _generator_pair(family, q, qdot, data):
    """(ξ(q), ξ̇) = (∂_s Q, ∂_s Q̇) at s = 0 for the family acting on all of q
    (rescale: the first half of q against the second)."""
    if family == "translation":
        return data.copy(), np.zeros_like(qdot)
    if family == "scale":
        return q.copy(), qdot.copy()
    if family == "rescale":
        h = len(q) // 2
        w = np.concatenate([np.ones(h), -np.ones(len(q) - h)])
        return w * q, w * qdot
    return data @ q, data @ qdot


def kinetic_asymmetry(mirror, q, qdot, xi, xidot, alpha=0.0) -> float:
    """∂_s T_h at s = 0, analytically: the right-hand side of Eq. 9,

    ∂_s T_h = ⟨Δ_h, ∂_sQ̇⟩ + e^α ⟨Δ_h − e^{−α}∇²h(q) q̇, ∂_sQ⟩,  Δ_h = ∇h(q + e^{−α}q̇) − ∇h(q)

    (differentiate D_h(Y(s), X(s)) with X = Q, Y = Q + e^{−α}Q̇; docs/balance_laws.md §7).
    The dynamic-asymmetry and metric terms, evaluated without the cancellation a finite
    difference of T_h would suffer.
    """
    ea = np.exp(-alpha)
    dh = mirror.grad(q + ea * qdot) - mirror.grad(q)
    return float(dh @ xidot + (dh - ea * mirror.hess_diag(q) * qdot) @ xi / ea)


class KineticTable:
    """Result of :func:`kinetic_table`: ``entries[(metric, family)] = (symmetric, size)``
    where size is max |∂_s T_h| / T_h over the sampled states."""

    def __init__(self, entries, metrics, families, tol):
        self.entries, self.metrics, self.families, self.tol = entries, metrics, families, tol

    def symmetric(self, metric, family) -> bool:
        return self.entries[(metric, family)][0]

    def __str__(self):
        w = max(len("kinetic energy"), *(len(m) for m in self.metrics)) + 2
        lines = ["kinetic energy".ljust(w) + "".join(f.ljust(13) for f in self.families)]
        for m in self.metrics:
            lines.append(m.ljust(w) + "".join(
                ("Symmetric" if self.entries[(m, f)][0] else "No").ljust(13)
                for f in self.families))
        return "\n".join(lines)

    __repr__ = __str__


def kinetic_table(metrics=None, families=FAMILIES, *, d=6, n_states=8, alpha=0.3,
                  p=3.0, seed=0, tol=1e-9) -> KineticTable:
    """Reproduce Table 2: is the Bregman kinetic energy symmetric under each family?

    For each metric h and family, draws ``n_states`` random states (q, q̇) (q > 0 for the
    entropy), a random direction n̂ / skew Ω, and evaluates ∂_s T_h at s = 0 analytically
    (:func:`kinetic_asymmetry`, the right-hand side of Eq. 9).  Its round-off is
    ~ε|∇h||ξ| ≲ 1e-14 relative to T_h for these states (α ≤ 3), so an entry is
    "symmetric" when max |∂_s T| / T < ``tol`` = 1e-9; broken entries are O(1).

    Parameters
    ----------
    metrics : sequence of MirrorMap or str, optional
        Default: euclidean, diagonal (random D), pnorm (``p``), entropy.
    families : sequence of str
    d, n_states, alpha, p, seed, tol : see above.

    Examples
    --------
    >>> print(kinetic_table())                              # doctest: +NORMALIZE_WHITESPACE
    kinetic energy  translation  scale        rescale      rotation
    euclidean       Symmetric    No           No           Symmetric
    diagonal        Symmetric    No           No           No
    pnorm           No           No           No           No
    entropy         No           No           No           No
    """
    from .mirror import MirrorMap

    rng = np.random.default_rng(seed)
    if metrics is None:
        metrics = [MirrorMap("euclidean"), MirrorMap("diagonal", D=rng.uniform(0.5, 2.0, d)),
                   MirrorMap("pnorm", p=p), MirrorMap("entropy")]
    metrics = [MirrorMap(m) if isinstance(m, str) else m for m in metrics]
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"unknown family {f!r}; families: {FAMILIES}")
    entries = {}
    for mm in metrics:
        for fam in families:
            worst = 0.0
            for _ in range(n_states):
                q = rng.uniform(0.5, 1.5, d)
                qdot = rng.uniform(-0.2, 0.2, d)
                if fam == "translation":
                    data = rng.standard_normal(d)
                    data /= np.linalg.norm(data)
                elif fam == "rotation":
                    data = random_skew(d, rng)
                else:
                    data = None
                xi, xidot = _generator_pair(fam, q, qdot, data)
                dT = kinetic_asymmetry(mm, q, qdot, xi, xidot, alpha)
                worst = max(worst, abs(dT) / kinetic_energy(mm, q, qdot, alpha))
            entries[(mm.name, fam)] = (worst < tol, worst)
    return KineticTable(entries, [m.name for m in metrics], list(families), tol)
