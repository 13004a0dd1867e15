"""NumPy twins of pyx/potentials.pyx: ``f, g = <name>(q, ..., rows=None)``.

``rows`` (1-D integer array or None) selects the minibatch rows of a data potential, in the
order the kernel visits them.
"""
import numpy as np


def quadratic(q, A, b):
    """f = ½ qᵀAq − bᵀq,  g = Aq − b."""
    Aq = A @ q
    return float(q @ (0.5 * Aq - b)), Aq - b


def rayleigh(q, A):
    """f = ½ qᵀAq/|q|²,  g = (Aq − 2f q)/|q|²."""
    Aq = A @ q
    qq = q @ q
    f = 0.5 * (q @ Aq) / qq
    return float(f), (Aq - 2.0 * f * q) / qq


_RADIAL = {
    "double_well": (lambda u: 0.25 * (u - 1.0) ** 2, lambda u: 0.5 * (u - 1.0)),
    "log": (lambda u: 0.5 * np.log1p(u), lambda u: 0.5 / (1.0 + u)),
    "gaussian": (lambda u: -np.exp(-0.5 * u), lambda u: 0.5 * np.exp(-0.5 * u)),
}


def radial(q, kind="double_well"):
    """f = φ(|q|²),  g = 2φ'(|q|²) q."""
    phi, dphi = _RADIAL[kind]
    u = q @ q
    return float(phi(u)), 2.0 * dphi(u) * q


def batchnorm_unit(w, X, y, eps=0.0, rows=None):
    """Linear unit → batch normalisation (batch statistics) → squared loss.

    z = Xw, ẑ = (z − z̄)/sqrt(var z + eps), f = (1/2B)Σ(ẑ − y)²;
    dz = (δ − mean δ − ẑ mean(δẑ))/s with δ = (ẑ − y)/B, s = sqrt(var + eps); g = Xᵀdz.
    """
    if rows is not None:
        X, y = X[rows], y[rows]
    B = X.shape[0]
    z = X @ w
    zc = z - z.mean()
    s = np.sqrt((zc @ zc) / B + eps)
    zh = zc / s
    e = zh - y
    f = 0.5 * (e @ e) / B
    delta = e / B
    dz = (delta - delta.mean() - zh * np.mean(delta * zh)) / s
    return float(f), X.T @ dz
