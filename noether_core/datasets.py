"""Seeded synthetic data sets for the data potentials (nothing is downloaded).

Every function takes a ``seed`` (int, SeedSequence, Generator or None) and returns new
float64 C-contiguous arrays; the same seed gives the same data on every platform numpy's
``default_rng`` (PCG64) is bit-reproducible on.

>>> import noether_core as nc
>>> X, y = nc.datasets.gaussian_mixture(512, 16, classes=4, seed=0)
>>> X.shape, y.shape, sorted(set(y.tolist()))
((512, 16), (512,), [0, 1, 2, 3])
"""
from __future__ import annotations

import numpy as np

from . import _validation as V

__all__ = ["gaussian_mixture", "teacher_regression"]


def gaussian_mixture(n, d, classes=2, seed=None, *, separation=3.0, noise=1.0):
    """Points from ``classes`` isotropic Gaussian clusters, balanced labels.

    Class means μ_c = separation · u_c with u_c independent uniform unit vectors in R^d;
    xᵢ = μ_{yᵢ} + noise · N(0, I_d).  Labels are ``arange(n) % classes`` shuffled, so the
    class sizes differ by at most one.

    Parameters
    ----------
    n : int ≥ 1
        Number of points.
    d : int ≥ 1
        Dimension.
    classes : int ≥ 2
        Number of clusters (= classes).
    seed : None, int, SeedSequence or numpy.random.Generator
    separation : float ≥ 0
        Distance of every class mean from the origin (in units of the coordinates).
    noise : float > 0
        Standard deviation of each coordinate around its mean.

    Returns
    -------
    X : (n, d) float64 array
    labels : (n,) intp array with values in [0, classes)

    Examples
    --------
    >>> from noether_core.datasets import gaussian_mixture
    >>> X, y = gaussian_mixture(6, 2, classes=3, seed=1)
    >>> X.shape, y.dtype.kind, int(y.max()) < 3
    ((6, 2), 'i', True)
    """
    n = V.as_int("n", n, lo=1)
    d = V.as_int("d", d, lo=1)
    classes = V.as_int("classes", classes, lo=2)
    separation = V.as_scalar("separation", separation, lo=0.0)
    noise = V.as_scalar("noise", noise, lo=0.0, lo_open=True)
    V.check_size(f"gaussian_mixture(n={n}, d={d}, classes={classes})", (n + classes) * d)
    rng = V.as_rng("seed", seed)
    u = rng.standard_normal((classes, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(n) % classes).astype(np.intp)
    X = separation * u[labels] + noise * rng.standard_normal((n, d))
    return np.ascontiguousarray(X), labels


def teacher_regression(n, d, out=1, seed=None, *, hidden=16, noise=0.0):
    """Inputs X ~ N(0, I_d) and the outputs of a random two-layer ReLU teacher.

    Y = ReLU(X W1ᵀ) W2ᵀ + noise · N(0, I_out), with teacher weights W1 (hidden × d) ~
    N(0, 1/d) and W2 (out × hidden) ~ N(0, 1/hidden), so each target has variance O(1).

    Parameters
    ----------
    n : int ≥ 1
    d : int ≥ 1
    out : int ≥ 1
        Number of outputs.
    seed : None, int, SeedSequence or numpy.random.Generator
    hidden : int ≥ 1
        Teacher width.
    noise : float ≥ 0
        Standard deviation of the label noise.

    Returns
    -------
    X : (n, d) float64 array
    Y : (n, out) float64 array

    Examples
    --------
    >>> from noether_core.datasets import teacher_regression
    >>> X, Y = teacher_regression(100, 3, out=2, seed=0)
    >>> X.shape, Y.shape
    ((100, 3), (100, 2))
    """
    n = V.as_int("n", n, lo=1)
    d = V.as_int("d", d, lo=1)
    out = V.as_int("out", out, lo=1)
    hidden = V.as_int("hidden", hidden, lo=1)
    V.check_size(f"teacher_regression(n={n}, d={d}, out={out}, hidden={hidden})",
                 n * (d + out + hidden) + hidden * (d + out))
    noise = V.as_scalar("noise", noise, lo=0.0)
    rng = V.as_rng("seed", seed)
    W1 = rng.standard_normal((hidden, d)) / np.sqrt(d)
    W2 = rng.standard_normal((out, hidden)) / np.sqrt(hidden)
    X = rng.standard_normal((n, d))
    Y = np.maximum(X @ W1.T, 0.0) @ W2.T + noise * rng.standard_normal((n, out))
    return np.ascontiguousarray(X), np.ascontiguousarray(Y)
