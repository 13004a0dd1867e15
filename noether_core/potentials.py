"""Built-in potentials (losses) with exact gradients and declared symmetries.

Every potential is a thin, immutable, picklable Python object around a compiled kernel
(``noether_core._kernels.potentials``) that fills the gradient through the potential ABI
(see ARCHITECTURE.md and docs/potentials.md).  Its metadata says how q is cut into named
blocks and which symmetry family each block carries:

>>> import numpy as np, noether_core as nc
>>> A = np.diag([1.0, 2.0, 3.0])
>>> pot = nc.potentials.RayleighQuotient(A)
>>> pot.symmetries
(Symmetry('scale', blocks=('q',)),)
>>> f, g = pot.value_and_grad([1.0, 1.0, 0.0])
>>> float(f), float(g @ [1.0, 1.0, 0.0])          # <grad f(q), q> = 0 (scale symmetry)
(0.75, 0.0)

Data potentials (``n_data > 0``) accept minibatches: ``train(..., batch_size=B)`` draws B
distinct rows per step from the seeded generator; means and BatchNorm statistics are taken
over those rows, so each step's loss keeps the symmetry exactly.
"""
from __future__ import annotations

import numpy as np

from . import _validation as V
from ._kernels import potentials as _k
from .symmetry import Symmetry

__all__ = ["Potential", "Quadratic", "RayleighQuotient", "Radial", "BatchNormUnit"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class Potential:
    """Base class: a compiled potential plus its block and symmetry metadata.

    Attributes
    ----------
    dim : int
        Length of the flat parameter vector q.
    n_data : int
        Number of data rows a minibatch is drawn from (0: not a data potential).
    min_batch : int
        Smallest minibatch the potential is defined on (2 for BatchNorm statistics).
    blocks : dict[str, ndarray]
        Named blocks of q as read-only integer index arrays (in q's order).
    symmetries : tuple of Symmetry
    """

    min_batch = 1

    def __init__(self, kernel, blocks: dict, symmetries, init_args: tuple):
        self._kernel = kernel
        self.blocks = {k: _readonly(np.asarray(v, dtype=np.intp)) for k, v in blocks.items()}
        self.symmetries = tuple(symmetries)
        self._init_args = init_args

    # -- metadata ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._kernel.dim

    @property
    def n_data(self) -> int:
        return self._kernel.n_data

    def symmetry_blocks(self, family: str) -> list:
        """The symmetries of one family declared by this potential."""
        return [s for s in self.symmetries if s.family == family]

    # -- evaluation (with the GIL; the training loop calls the kernel directly) ----------
    def value_and_grad(self, q, rows=None):
        """Loss f(q) and gradient (a new array); ``rows``: optional minibatch row indices."""
        q = V.as_float_array("q", q, shape=(self.dim,))
        if rows is not None:
            if self.n_data == 0:
                raise ValueError(f"rows= given, but {type(self).__name__} has no data rows")
            rows = V.as_index_array("rows", rows, self.n_data)
            if len(rows) < self.min_batch:
                raise ValueError(f"rows must hold at least {self.min_batch} indices, "
                                 f"got {len(rows)}")
        return self._kernel.value_and_grad(q, rows)

    def value(self, q, rows=None) -> float:
        return self.value_and_grad(q, rows)[0]

    def grad(self, q, rows=None) -> np.ndarray:
        return self.value_and_grad(q, rows)[1]

    # -- plumbing -------------------------------------------------------------------------
    def __reduce__(self):
        return (type(self), self._init_args)

    def __repr__(self):
        return (f"{type(self).__name__}(dim={self.dim}, n_data={self.n_data}, "
                f"blocks={list(self.blocks)})")


class Quadratic(Potential):
    """f(q) = 1/2 qᵀAq − bᵀq with symmetric A: no symmetry (the control case).

    Parameters
    ----------
    A : (d, d) array_like, symmetric
    b : (d,) array_like, optional (default zeros)
    """

    def __init__(self, A, b=None):
        A = V.as_float_array("A", A, ndim=2)
        d = A.shape[0]
        if A.shape != (d, d):
            raise ValueError(f"A must be square, got shape {A.shape}")
        if not np.allclose(A, A.T, rtol=1e-12, atol=1e-14 * np.abs(A).max()):
            raise ValueError("A must be symmetric (its gradient is A q - b only then)")
        A = 0.5 * (A + A.T)
        b = np.zeros(d) if b is None else V.as_float_array("b", b, shape=(d,))
        super().__init__(_k.QuadraticKernel(_readonly(A), _readonly(b)),
                         {"q": np.arange(d)}, (), (A, b))
        self.A, self.b = A, b


class RayleighQuotient(Potential):
    """f(q) = ½ qᵀAq / |q|² (A symmetric): scale-invariant, minima at eigenvectors.

    Gradient g = (Aq − 2f q)/|q|², orthogonal to q (docs/potentials.md).  Undefined at
    q = 0 (a run from there reports a non-finite loss).
    """

    def __init__(self, A):
        A = V.as_float_array("A", A, ndim=2)
        d = A.shape[0]
        if A.shape != (d, d):
            raise ValueError(f"A must be square, got shape {A.shape}")
        if not np.allclose(A, A.T, rtol=1e-12, atol=1e-14 * np.abs(A).max()):
            raise ValueError("A must be symmetric")
        A = 0.5 * (A + A.T)
        super().__init__(_k.RayleighQuotientKernel(_readonly(A)), {"q": np.arange(d)},
                         (Symmetry("scale", ("q",)),), (A,))
        self.A = A


class Radial(Potential):
    """f(q) = φ(|q|²): invariant under every rotation of q.

    Parameters
    ----------
    d : int
        Dimension.
    kind : {"double_well", "log", "gaussian"}
        ``double_well``: φ(u) = (u − 1)²/4;  ``log``: φ(u) = ½ log(1 + u);
        ``gaussian``: φ(u) = −exp(−u/2).
    """

    KINDS = ("double_well", "log", "gaussian")

    def __init__(self, d, kind="double_well"):
        d = V.as_int("d", d, lo=1)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        super().__init__(_k.RadialKernel(d, self.KINDS.index(kind)), {"q": np.arange(d)},
                         (Symmetry("rotation", ("q",),
                                   note="every skew-symmetric Omega on q"),), (d, kind))
        self.kind = kind


def _data(X, y, *, y_ndim=1):
    X = V.as_float_array("X", X, ndim=2)
    y = V.as_float_array("y", y, ndim=y_ndim)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    return X, y


class BatchNormUnit(Potential):
    """A linear unit, batch normalisation with batch statistics, and a squared loss.

    z = X w,  ẑ = (z − mean z)/sqrt(var z + eps),  f(w) = (1/2B) Σᵢ (ẑᵢ − yᵢ)²
    over the B rows of the (mini)batch; var is the biased batch variance, as in BatchNorm.

    With ``eps = 0`` the loss is exactly scale-invariant in w (⟨∇f, w⟩ = 0); with
    ``eps > 0`` the symmetry is broken by a relative amount ~ eps/var(z), and the metadata
    says so (``exact=False``).

    Parameters
    ----------
    X : (N, D) array_like
        Inputs; N ≥ 2.
    y : (N,) array_like
        Targets.
    eps : float ≥ 0
        BatchNorm's variance offset.
    """

    min_batch = 2

    def __init__(self, X, y, eps=0.0):
        X, y = _data(X, y)
        if X.shape[0] < 2:
            raise ValueError(f"X needs at least 2 rows for batch statistics, got {X.shape[0]}")
        eps = V.as_scalar("eps", eps, lo=0.0)
        sym = (Symmetry("scale", ("w",)) if eps == 0.0 else
               Symmetry("scale", ("w",), exact=False,
                        note=f"eps={eps:g} > 0 breaks it by ~eps/var(Xw)"))
        super().__init__(_k.BatchNormUnitKernel(_readonly(X), _readonly(y), eps),
                         {"w": np.arange(X.shape[1])}, (sym,), (X, y, eps))
        self.X, self.y, self.eps = X, y, eps
