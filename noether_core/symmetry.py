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
from scipy.linalg import expm

__all__ = ["Symmetry", "FAMILIES", "generator", "transform", "random_skew"]

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
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        want = 2 if self.family == "rescale" else 1
        if len(self.blocks) != want:
            raise ValueError(f"a {self.family} symmetry acts on {want} block(s), "
                             f"got {self.blocks!r}")

    def __repr__(self):
        extra = "" if self.exact else f", exact=False ({self.note})"
        return f"Symmetry({self.family!r}, blocks={self.blocks!r}{extra})"


def random_skew(n: int, rng=None) -> np.ndarray:
    """A random n x n skew-symmetric matrix (Frobenius norm 1)."""
    rng = np.random.default_rng(rng)
    a = rng.standard_normal((n, n))
    om = a - a.T
    nrm = np.linalg.norm(om)
    return om / nrm if nrm > 0 else om


def _omega(sym: Symmetry, n: int, omega):
    om = sym.omega if omega is None else np.asarray(omega, dtype=float)
    if om is None:
        raise ValueError(f"{sym!r} holds for every skew matrix: pass omega= (n x n, "
                         f"n = {n}), e.g. noether_core.symmetry.random_skew({n})")
    if om.shape != (n, n) or not np.allclose(om, -om.T):
        raise ValueError(f"omega must be a skew-symmetric {n} x {n} matrix")
    return om


def generator(sym: Symmetry, q, blocks: dict, omega=None) -> np.ndarray:
    """The generator xi(q) = d/ds Q(q, s) at s = 0, as a full-length vector."""
    q = np.asarray(q, dtype=float)
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
    return xi


def transform(sym: Symmetry, q, s: float, blocks: dict, omega=None) -> np.ndarray:
    """The finite transformation Q(q, s)."""
    q = np.array(q, dtype=float)
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
        q[idx] = expm(s * _omega(sym, len(idx), omega)) @ q[idx]
    return q
