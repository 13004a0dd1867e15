"""Separable mirror maps h (distance-generating functions) of the Bregman Lagrangian.

``MirrorMap(name, D=None, p=None)`` for the four metrics of the library (SPEC §1):

==========  =========================  ====================  ==========================
name        h(x)                       ∇h(x)                 (∇h)⁻¹(y)
==========  =========================  ====================  ==========================
euclidean   ½|x|²                      x                     y
diagonal    ½ Σ Dᵢxᵢ²                  D x                   y / D
pnorm       (1/p) Σ |xᵢ|^p  (p > 1)    sign(x)|x|^{p−1}      sign(y)|y|^{1/(p−1)}
entropy     Σ xᵢ log xᵢ  (x > 0)       1 + log x             exp(y − 1)
==========  =========================  ====================  ==========================

The Bregman divergence is D_h(y, x) = h(y) − h(x) − ⟨∇h(x), y − x⟩ (paper, Sec. 1).
"""
from __future__ import annotations

import numpy as np

from . import _validation as V

__all__ = ["MirrorMap", "MIRRORS"]

MIRRORS = ("euclidean", "diagonal", "pnorm", "entropy")


class MirrorMap:
    """A separable mirror map; see the module docstring."""

    def __init__(self, name="euclidean", D=None, p=None):
        if name not in MIRRORS:
            raise ValueError(f"mirror must be one of {MIRRORS}, got {name!r}")
        self.name = name
        self.D = None
        self.p = None
        if name == "diagonal":
            if D is None:
                raise ValueError("the diagonal mirror map needs D (positive diagonal)")
            self.D = V.as_float_array("D", D, ndim=1)
            if np.any(self.D <= 0):
                raise ValueError("D must be positive")
        if name == "pnorm":
            if p is None:
                raise ValueError("the p-norm mirror map needs p > 1")
            self.p = V.as_scalar("p", p, lo=1.0, lo_open=True)

    def h(self, x):
        x = np.asarray(x, dtype=float)
        if self.name == "euclidean":
            return 0.5 * float(x @ x)
        if self.name == "diagonal":
            return 0.5 * float(np.sum(self.D * x * x))
        if self.name == "pnorm":
            return float(np.sum(np.abs(x) ** self.p)) / self.p
        return float(np.sum(x * np.log(x)))

    def grad(self, x):
        x = np.asarray(x, dtype=float)
        if self.name == "euclidean":
            return x.copy()
        if self.name == "diagonal":
            return self.D * x
        if self.name == "pnorm":
            return np.sign(x) * np.abs(x) ** (self.p - 1.0)
        return 1.0 + np.log(x)

    def hess_diag(self, x):
        """Diagonal of ∇²h(x)."""
        x = np.asarray(x, dtype=float)
        if self.name == "euclidean":
            return np.ones_like(x)
        if self.name == "diagonal":
            return self.D.copy() * np.ones_like(x)
        if self.name == "pnorm":
            return (self.p - 1.0) * np.abs(x) ** (self.p - 2.0)
        return 1.0 / x

    def grad_conj(self, y):
        """(∇h)⁻¹(y) = ∇h*(y)."""
        y = np.asarray(y, dtype=float)
        if self.name == "euclidean":
            return y.copy()
        if self.name == "diagonal":
            return y / self.D
        if self.name == "pnorm":
            return np.sign(y) * np.abs(y) ** (1.0 / (self.p - 1.0))
        return np.exp(y - 1.0)

    def bregman(self, y, x):
        """D_h(y, x) = h(y) − h(x) − ⟨∇h(x), y − x⟩."""
        return self.h(y) - self.h(x) - float(self.grad(x) @ (np.asarray(y) - np.asarray(x)))

    def __repr__(self):
        extra = "" if self.name not in ("diagonal", "pnorm") else (
            f", p={self.p}" if self.name == "pnorm" else f", D=<{len(self.D)}>")
        return f"MirrorMap({self.name!r}{extra})"
