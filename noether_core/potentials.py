"""Built-in potentials (losses) with exact gradients and declared symmetries.

Every potential is a thin, immutable, picklable Python object around a compiled kernel
(``noether_core._kernels.potentials``) that fills the gradient through the potential ABI
(see docs/architecture.md and docs/potentials.md).  Its metadata says how q is cut into named
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

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from . import _validation as V
from ._bridge import potential_kernels as _k
from .errors import CallbackError
from .symmetry import Symmetry

__all__ = ["Potential", "Quadratic", "RayleighQuotient", "Radial", "BatchNormUnit",
           "BatchNormLayer", "SoftmaxCrossEntropy", "TwoLayer", "BatchNormMLP"]


#: most units of one layer: each unit is a named block (a Python object), so a layer of
#: 2**31 units would take minutes and hundreds of GB just to describe
MAX_UNITS = 2**20


def _units(name, n):
    return V.as_int(name, n, lo=1, hi=MAX_UNITS)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


#: default memory budget of one built-in potential, in bytes: what its construction
#: allocates plus one kernel workspace (every run, every scan thread, every
#: ``value_and_grad`` makes one); raise it per potential with ``max_bytes=``
DEFAULT_MAX_BYTES = 4 * 2**30

#: bytes of Python bookkeeping charged per named block (its name, index-array header,
#: mapping slot and declared Symmetry): an upper estimate, so the budget errs on the safe side
BLOCK_OVERHEAD_BYTES = 1024

#: bytes charged for the fixed Python objects of any potential (kernel, mappings, metadata)
BASE_BYTES = 2**16

#: at most this many block names in repr()
REPR_BLOCKS = 8


def _max_bytes(max_bytes) -> int:
    return V.as_int("max_bytes", max_bytes, lo=0)


def _check_budget(owner: str, parts: dict, max_bytes: int) -> None:
    """Refuse (ValueError) a construction whose estimated bytes exceed ``max_bytes``.

    ``parts`` maps what is allocated to its bytes (Python ints: no overflow); called
    before any of it is allocated, so a refused request costs nothing.
    """
    parts = {"fixed Python objects": BASE_BYTES, **parts}
    need = sum(parts.values())
    if need > max_bytes:
        detail = ", ".join(f"{k} {v / 2**30:.3g} GiB" for k, v in parts.items() if v)
        raise ValueError(f"{owner} would need about {need} bytes ({need / 2**30:.3g} GiB: "
                         f"{detail}), above max_bytes={max_bytes} "
                         f"({max_bytes / 2**30:.3g} GiB); pass a larger max_bytes= to allow "
                         "it, or make the problem smaller")


def _blocks_bytes(dim: int, n_blocks: int) -> int:
    """Index arrays covering at most q (built, then copied read-only) plus bookkeeping."""
    return 2 * 8 * dim + BLOCK_OVERHEAD_BYTES * n_blocks


def _net_parts(N, dims, bias, affine, n_blocks) -> dict:
    """Estimated bytes of a network potential: the kernel's workspace (the formula of
    NetKernel.new_params, pyx/potentials.pyx), q and the gradient of one evaluation, the
    blocks."""
    hidden = list(dims[1:-1])
    n_hidden, wmax, out = sum(hidden), max([1] + hidden), dims[-1]
    dim = sum(dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    dim += (2 * n_hidden if affine else 0) + (out if bias else 0)
    tmax = max(dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    work = (2 * N * n_hidden + n_hidden + 2 * wmax + 2 * N * wmax + N * out
            + N * dims[0] + tmax)
    return {"validated copies of the data": 8 * N * (dims[0] + out),
            "kernel workspace": 8 * work, "q and gradient": 3 * 8 * dim,
            "blocks": _blocks_bytes(dim, n_blocks)}


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
    blocks : mapping str -> ndarray
        Named blocks of q (in q's order): a read-only mapping
        (:class:`types.MappingProxyType`) of read-only integer index arrays in [0, dim).
    symmetries : tuple of Symmetry

    Notes
    -----
    A potential never changes after construction (many runs and threads share it, and the
    compiled loop trusts its metadata): ``blocks`` and ``symmetries`` cannot be rebound,
    the mapping refuses assignment and the index arrays refuse writes.
    """

    min_batch = 1

    def __init__(self, kernel, blocks, symmetries, init_args: tuple, init_kwargs=None):
        self._kernel = kernel
        frozen = {}
        for name, idx in blocks.items():
            if not isinstance(name, str):
                raise TypeError(f"block names must be strings, got {name!r}")
            arr = np.asarray(idx)
            if arr.dtype.kind not in "iu" or arr.ndim != 1:
                raise TypeError(f"blocks[{name!r}] must be a 1-D integer array, got dtype "
                                f"{arr.dtype}, shape {arr.shape}")
            # a private copy: the caller's array stays writable and cannot alias ours
            frozen[name] = _readonly(np.array(arr, dtype=np.intp, order="C"))
        sizes = [a for a in frozen.values() if a.size]
        if sizes:
            lo = min(int(a.min()) for a in sizes)
            hi = max(int(a.max()) for a in sizes)
            if lo < 0 or hi >= kernel.dim:
                raise ValueError(f"blocks index q outside [0, {kernel.dim}): range "
                                 f"[{lo}, {hi}]")
        self._blocks = MappingProxyType(frozen)
        self._symmetries = tuple(symmetries)
        self._init_args = init_args
        self._init_kwargs = dict(init_kwargs or {})

    @property
    def blocks(self):
        """Named blocks of q: a read-only mapping of read-only index arrays."""
        return self._blocks

    @property
    def symmetries(self) -> tuple:
        """The declared symmetries (a tuple of frozen :class:`Symmetry`)."""
        return self._symmetries

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
            if not self.min_batch <= len(rows) <= self.n_data:
                # the kernel's scratch holds n_data rows (duplicates are allowed, but a
                # minibatch is never longer than the data it is drawn from)
                raise ValueError(f"rows has length {len(rows)}; a minibatch of "
                                 f"{type(self).__name__} holds {self.min_batch} to "
                                 f"n_data={self.n_data} rows")
        return self._kernel.value_and_grad(q, rows)

    def value(self, q, rows=None) -> float:
        return self.value_and_grad(q, rows)[0]

    def grad(self, q, rows=None) -> np.ndarray:
        return self.value_and_grad(q, rows)[1]

    def _lane_form(self):
        """``(kind, arrays)`` for the scan's lane kernel (pyx/lanes.h), or None: the
        potentials with a lane form override this (docs/scan.md §"Lanes")."""
        return None

    # -- plumbing -------------------------------------------------------------------------
    def __reduce__(self):
        if self._init_kwargs:
            return (_rebuild, (type(self), self._init_args, self._init_kwargs))
        return (type(self), self._init_args)

    def __repr__(self):
        names = list(self.blocks)
        shown = ", ".join(repr(n) for n in names[:REPR_BLOCKS])
        if len(names) > REPR_BLOCKS:
            shown += f", … {len(names) - REPR_BLOCKS} more"
        return (f"{type(self).__name__}(dim={self.dim}, n_data={self.n_data}, "
                f"blocks=[{shown}])")


def _square_budget(owner, A, max_bytes):
    """A as a finite square float64 matrix, within the budget of symmetrising it."""
    A = V.as_float_array("A", A, ndim=2)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}")
    d = A.shape[0]
    # the symmetry test and the symmetrised copy: ~6 temporaries of A's size at the peak
    _check_budget(f"{owner}(d={d})", {"symmetrising A": 6 * 8 * d * d,
                                      "q, gradient and scratch": 4 * 8 * d,
                                      "blocks": _blocks_bytes(d, 1)}, max_bytes)
    return A


def _rebuild(cls, args, kwargs):
    """Unpickle a potential made with keyword arguments (e.g. a raised ``max_bytes``)."""
    return cls(*args, **kwargs)


def _symmetric_matrix(A):
    """A finite symmetric square matrix (symmetrised exactly, so Aᵀ = A bit for bit)."""
    A = V.as_float_array("A", A, ndim=2)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}")
    if not np.allclose(A, A.T, rtol=1e-12, atol=1e-14 * np.abs(A).max()):
        raise ValueError("A must be symmetric (the gradient formulas assume Aᵀ = A)")
    with np.errstate(over="ignore"):
        S = 0.5 * (A + A.T)
    big = ~np.isfinite(S)               # A + Aᵀ overflowed (entries near the float64 limit)
    S[big] = 0.5 * A[big] + 0.5 * A.T[big]
    return S


class Quadratic(Potential):
    """f(q) = 1/2 qᵀAq − bᵀq with symmetric A: no symmetry (the control case).

    Parameters
    ----------
    A : (d, d) array_like, symmetric
    b : (d,) array_like, optional (default zeros)
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.
    """

    def __init__(self, A, b=None, *, max_bytes=DEFAULT_MAX_BYTES):
        max_bytes = _max_bytes(max_bytes)
        A = _square_budget("Quadratic", A, max_bytes)
        A = _symmetric_matrix(A)
        d = A.shape[0]
        b = np.zeros(d) if b is None else V.as_float_array("b", b, shape=(d,))
        super().__init__(_k.QuadraticKernel(_readonly(A), _readonly(b)),
                         {"q": np.arange(d)}, (), (A, b), {"max_bytes": max_bytes})
        self.A, self.b = A, b
        # the arrays the kernel holds, not the (rebindable) attributes
        self._lanes = ("quadratic", {"A": A, "b": b})

    def _lane_form(self):
        return self._lanes


class RayleighQuotient(Potential):
    """f(q) = ½ qᵀAq / |q|² (A symmetric): scale-invariant, minima at eigenvectors.

    Gradient g = (Aq − 2f q)/|q|², orthogonal to q (docs/potentials.md).  Undefined at
    q = 0 (a run from there reports a non-finite loss).

    Parameters
    ----------
    A : (d, d) array_like, symmetric
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.
    """

    def __init__(self, A, *, max_bytes=DEFAULT_MAX_BYTES):
        max_bytes = _max_bytes(max_bytes)
        A = _square_budget("RayleighQuotient", A, max_bytes)
        A = _symmetric_matrix(A)
        d = A.shape[0]
        super().__init__(_k.RayleighQuotientKernel(_readonly(A)), {"q": np.arange(d)},
                         (Symmetry("scale", ("q",)),), (A,), {"max_bytes": max_bytes})
        self.A = A
        self._lanes = ("rayleigh", {"A": A})

    def _lane_form(self):
        return self._lanes


class Radial(Potential):
    """f(q) = φ(|q|²): invariant under every rotation of q.

    Parameters
    ----------
    d : int
        Dimension.
    kind : {"double_well", "log", "gaussian"}
        ``double_well``: φ(u) = (u − 1)²/4;  ``log``: φ(u) = ½ log(1 + u);
        ``gaussian``: φ(u) = −exp(−u/2).
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.
    """

    KINDS = ("double_well", "log", "gaussian")

    def __init__(self, d, kind="double_well", *, max_bytes=DEFAULT_MAX_BYTES):
        d = V.as_int("d", d, lo=1, hi=V.MAX_ELEMENTS)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        max_bytes = _max_bytes(max_bytes)
        _check_budget(f"Radial(d={d})", {"blocks": _blocks_bytes(d, 1),
                                          "q and gradient": 3 * 8 * d}, max_bytes)
        super().__init__(_k.RadialKernel(d, self.KINDS.index(kind)), {"q": np.arange(d)},
                         (Symmetry("rotation", ("q",),
                                   note="every skew-symmetric Omega on q"),), (d, kind),
                         {"max_bytes": max_bytes})
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
    projection : bool
        True (default): full-batch evaluations with N ≥ D (``train``/``scan`` without
        ``batch_size``, ``value_and_grad`` without ``rows``) use an exact O(D²)-per-step
        form through the thin QR factorisation of the centred data, computed once here
        (docs/potentials.md §4a); minibatches use the row form (O(B·D)).  False: the row
        form always.  The two agree to round-off, not bitwise.
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.
    """

    min_batch = 2

    def __init__(self, X, y, eps=0.0, projection=True, *, max_bytes=DEFAULT_MAX_BYTES,
                 _projection=None):
        X, y = _data(X, y)
        if X.shape[0] < 2:
            raise ValueError(f"X needs at least 2 rows for batch statistics, got {X.shape[0]}")
        eps = V.as_scalar("eps", eps, lo=0.0)
        max_bytes = _max_bytes(max_bytes)
        sym = (Symmetry("scale", ("w",)) if eps == 0.0 else
               Symmetry("scale", ("w",), exact=False,
                        note=f"eps={eps:g} > 0 breaks it by ~eps/var(Xw)"))
        projection = V.as_bool("projection", projection)
        N, D = X.shape
        qr = projection and _projection is None and N >= D
        _check_budget(f"BatchNormUnit(N={N}, D={D})", {
            "validated copies of the data": 8 * N * (D + 1),
            "QR of the centred data": 4 * 8 * N * D + 2 * 8 * D * D if qr else 0,
            "kernel workspace": 8 * max(N, 2 * D), "q and gradient": 3 * 8 * D,
            "blocks": _blocks_bytes(D, 1)}, max_bytes)
        if _projection is not None:
            proj = _projection
        else:
            proj = self._project(X, y) if projection else None
        R, t, rho2 = proj if proj is not None else (None, None, 0.0)
        super().__init__(_k.BatchNormUnitKernel(_readonly(X), _readonly(y), eps, R, t, rho2),
                         {"w": np.arange(X.shape[1])}, (sym,), (X, y, eps, projection),
                         {"max_bytes": max_bytes})
        self.X, self.y, self.eps = X, y, eps
        self.projection = projection
        self._proj = proj
        # what the kernel holds, fixed here: pickling and the lane kernel read these, not
        # the (rebindable) attributes
        self._frozen = (X, y, eps, projection, proj, max_bytes)
        lane = {"X": X, "y": y, "eps": float(eps)}
        if proj is not None:
            lane.update(R=proj[0], t=proj[1], rho2=proj[2])
        self._lanes = ("bn_unit", lane)

    @staticmethod
    def _project(X, y):
        """(R, t, ρ²) of the full-batch O(D²) form (docs/potentials.md §4a), or None when
        N < D (the row form is then cheaper)."""
        N, D = X.shape
        if N < D:
            return None
        Xc = X - X.mean(axis=0)
        Q, R = np.linalg.qr(Xc, mode="reduced")
        t = Q.T @ y
        r = y - Q @ t
        return (_readonly(np.ascontiguousarray(np.triu(R), dtype=np.float64)),
                _readonly(np.ascontiguousarray(t, dtype=np.float64)), float(r @ r))

    def __reduce__(self):
        # the projection travels with the object: a QR recomputed in another process
        # (another BLAS thread count or CPU kernel) could differ in the last bits, and
        # the same potential must give the same bits everywhere (scan with executors)
        return (_restore_bn_unit, self._frozen)

    def _lane_form(self):
        return self._lanes


def _restore_bn_unit(X, y, eps, projection, proj, max_bytes=DEFAULT_MAX_BYTES):
    return BatchNormUnit(X, y, eps, projection, max_bytes=max_bytes, _projection=proj)


# ------------------------------------------------------------------------------------------
# Network potentials: one compiled forward/backward pass (pyx/potentials.pyx, NetKernel).

def _targets(X, Y):
    """Y as an (N, out) array; a 1-D Y means out = 1."""
    Y = V.as_float_array("Y", Y)
    if Y.ndim not in (1, 2):
        raise ValueError(f"Y must be 1- or 2-dimensional, got shape {Y.shape}")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    return np.ascontiguousarray(Y.reshape(Y.shape[0], -1))


def _labels(X, labels, n_classes):
    """Integer class labels in [0, C) and the number of classes C ≥ 2."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels must be an array of integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != X.shape[0]:
        raise ValueError(f"labels must have shape ({X.shape[0]},) (one per row of X), "
                         f"got {arr.shape}")
    if arr.min() < 0:
        raise ValueError(f"labels must be non-negative, got minimum {arr.min()}")
    top = int(arr.max())
    if n_classes is None:
        C = top + 1
        if C < 2:
            raise ValueError("labels hold a single class (0); pass n_classes ≥ 2")
    else:
        C = V.as_int("n_classes", n_classes, lo=2)
        if top >= C:
            raise ValueError(f"labels must lie in [0, n_classes={C}), got label {top}")
    V.check_size(f"labels/n_classes (C={C} classes of {X.shape[1]} features)",
                 C * (X.shape[1] + 1))
    return np.array(arr, dtype=np.intp, order="C"), C


def _need_two_rows(X):
    if X.shape[0] < 2:
        raise ValueError(f"X needs at least 2 rows for batch statistics, got {X.shape[0]}")


def _bn_symmetry(block, eps):
    if eps == 0.0:
        return Symmetry("scale", (block,))
    return Symmetry("scale", (block,), exact=False,
                    note=f"eps={eps:g} > 0 breaks it by ~eps/(var+eps)")


def _rows_blocks(prefix, start, n_rows, n_cols):
    """Blocks "prefix[i]": row i of an (n_rows, n_cols) matrix stored from q[start]."""
    return {f"{prefix}[{i}]": start + i * n_cols + np.arange(n_cols) for i in range(n_rows)}


def _cols_blocks(prefix, start, n_rows, n_cols):
    """Blocks "prefix[:,j]": column j of an (n_rows, n_cols) matrix stored from q[start]."""
    return {f"{prefix}[:,{j}]": start + np.arange(n_rows) * n_cols + j for j in range(n_cols)}


def _net_kernel(X, Y, labels, dims, *, bn, affine, relu, bias, eps=0.0):
    return _k.NetKernel(_readonly(X), None if Y is None else _readonly(Y),
                        None if labels is None else _readonly(labels),
                        np.asarray(dims, dtype=np.intp), bn, affine, relu, bias, eps)


class BatchNormLayer(Potential):
    """A layer of BatchNorm units with ReLU and a linear read-out, squared loss.

    With q = [W (width × D, row-major), V (out × width)] and the B rows of the batch::

        Z = X Wᵀ,  Ĥ = BN(Z) = (Z − mean Z)/sqrt(var Z + eps)   (per unit, batch stats),
        A = ReLU(Ĥ),  P = A Vᵀ,  f(q) = (1/2B) Σᵢ |Pᵢ − Yᵢ|²

    (var biased, as in BatchNorm; ReLU'(0) := 0).  Each row W[i] is its own scale
    block: f((1+s) W[i], …) = f(W, …) exactly when eps = 0 (docs/potentials.md §5);
    with eps > 0 the symmetry is broken by ~eps/(var+eps) and the metadata says so.
    The read-out block "V" carries no symmetry.

    Parameters
    ----------
    X : (N, D) array_like, N ≥ 2
    Y : (N,) or (N, out) array_like
        Targets (1-D means out = 1).
    width : int ≥ 1
        Number of BatchNorm units.
    eps : float ≥ 0
        BatchNorm's variance offset.
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> X, Y = nc.datasets.teacher_regression(64, 5, out=2, seed=0)
    >>> pot = nc.potentials.BatchNormLayer(X, Y, width=8)
    >>> pot.dim, len(pot.symmetry_blocks("scale"))
    (56, 8)
    """

    min_batch = 2

    def __init__(self, X, Y, width, eps=0.0, *, max_bytes=DEFAULT_MAX_BYTES):
        X = V.as_float_array("X", X, ndim=2)
        Y = _targets(X, Y)
        _need_two_rows(X)
        width = _units("width", width)
        eps = V.as_scalar("eps", eps, lo=0.0)
        max_bytes = _max_bytes(max_bytes)
        N, D = X.shape
        out = Y.shape[1]
        _check_budget(f"BatchNormLayer(N={N}, D={D}, width={width}, out={out})",
                      _net_parts(N, (D, width, out), False, False, width + 1), max_bytes)
        blocks = _rows_blocks("W", 0, width, D)
        blocks["V"] = width * D + np.arange(out * width)
        syms = tuple(_bn_symmetry(f"W[{i}]", eps) for i in range(width))
        super().__init__(_net_kernel(X, Y, None, (D, width, out), bn=True, affine=False,
                                     relu=True, bias=False, eps=eps),
                         blocks, syms, (X, Y, width, eps), {"max_bytes": max_bytes})
        self.X, self.Y, self.width, self.eps = X, Y, width, eps


class SoftmaxCrossEntropy(Potential):
    """Multinomial logistic regression: mean softmax cross-entropy of affine logits.

    With q = [W (C × D, row-major), b (C)]: logits Lᵢ = W xᵢ + b and
    f(q) = (1/B) Σᵢ [log Σ_c exp(L_ic) − L_{i,yᵢ}] over the B rows of the batch,
    evaluated with the log-sum-exp shifted by the row maximum (no overflow).

    Symmetries (docs/potentials.md §6): softmax is unchanged when every logit of a row
    moves by the same amount, so

    * block "b" carries a translation along n = (1, …, 1)/sqrt(C);
    * each block "W[:,j]" (column j of W: the weights of input feature j in every class)
      carries a translation along the same n (it adds s·x_ij/sqrt(C) to every logit).

    Parameters
    ----------
    X : (N, D) array_like
    labels : (N,) integer array_like, values in [0, C)
    n_classes : int ≥ 2, optional
        C; default max(labels) + 1.
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> X, y = nc.datasets.gaussian_mixture(60, 4, classes=3, seed=0)
    >>> pot = nc.potentials.SoftmaxCrossEntropy(X, y)
    >>> pot.dim, [s.family for s in pot.symmetries][:2]
    (15, ['translation', 'translation'])
    >>> round(float(pot.value([0.0] * 15)), 12) == round(float(np.log(3)), 12)
    True
    """

    def __init__(self, X, labels, n_classes=None, *, max_bytes=DEFAULT_MAX_BYTES):
        X = V.as_float_array("X", X, ndim=2)
        max_bytes = _max_bytes(max_bytes)
        labels, C = _labels(X, labels, n_classes)
        N, D = X.shape
        _check_budget(f"SoftmaxCrossEntropy(N={N}, D={D}, C={C})",
                      _net_parts(N, (D, C), True, False, D + 1), max_bytes)
        blocks = _cols_blocks("W", 0, C, D)
        blocks["b"] = C * D + np.arange(C)
        n = np.full(C, 1.0 / np.sqrt(C))
        syms = tuple(Symmetry("translation", (name,), direction=n,
                              note="equal shift of every class's logit")
                     for name in blocks)
        super().__init__(_net_kernel(X, None, labels, (D, C), bn=False, affine=False,
                                     relu=False, bias=True),
                         blocks, syms, (X, labels, C), {"max_bytes": max_bytes})
        self.X, self.labels, self.n_classes = X, labels, C


class TwoLayer(Potential):
    """Two-layer network without biases and a squared loss.

    With q = [W1 (hidden × D), W2 (out × hidden)], both row-major::

        P = act(X W1ᵀ) W2ᵀ,  f(q) = (1/2B) Σᵢ |Pᵢ − Yᵢ|²,  act ∈ {ReLU, identity}

    (ReLU'(0) := 0, the value at a measure-zero set; any value in [0, 1] would keep the
    rescale identity, docs/potentials.md §7).  Because act(e^s h) = e^s act(h), scaling
    the incoming row W1[i] by e^s and the outgoing column W2[:,i] by e^−s leaves f
    unchanged: one rescale symmetry per hidden unit, on blocks ("W1[i]", "W2[:,i]").

    Parameters
    ----------
    X : (N, D) array_like
    Y : (N,) or (N, out) array_like
    hidden : int ≥ 1
    activation : {"relu", "linear"}
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.

    Examples
    --------
    >>> import noether_core as nc
    >>> X, Y = nc.datasets.teacher_regression(50, 3, out=1, seed=1)
    >>> pot = nc.potentials.TwoLayer(X, Y, hidden=4)
    >>> pot.symmetries[0]
    Symmetry('rescale', blocks=('W1[0]', 'W2[:,0]'))
    """

    ACTIVATIONS = ("relu", "linear")

    def __init__(self, X, Y, hidden, activation="relu", *, max_bytes=DEFAULT_MAX_BYTES):
        X = V.as_float_array("X", X, ndim=2)
        Y = _targets(X, Y)
        hidden = _units("hidden", hidden)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {self.ACTIVATIONS}, "
                             f"got {activation!r}")
        max_bytes = _max_bytes(max_bytes)
        N, D = X.shape
        out = Y.shape[1]
        _check_budget(f"TwoLayer(N={N}, D={D}, hidden={hidden}, out={out})",
                      _net_parts(N, (D, hidden, out), False, False, hidden + out), max_bytes)
        blocks = _rows_blocks("W1", 0, hidden, D)
        blocks.update(_cols_blocks("W2", hidden * D, out, hidden))
        syms = tuple(Symmetry("rescale", (f"W1[{i}]", f"W2[:,{i}]")) for i in range(hidden))
        super().__init__(_net_kernel(X, Y, None, (D, hidden, out), bn=False, affine=False,
                                     relu=activation == "relu", bias=False),
                         blocks, syms, (X, Y, hidden, activation), {"max_bytes": max_bytes})
        self.X, self.Y, self.hidden, self.activation = X, Y, hidden, activation


class BatchNormMLP(Potential):
    """A BatchNorm MLP classifier: [Linear (no bias) → BatchNorm → ReLU] × L → Linear → softmax.

    For hidden layers l = 1..L of widths w_l, with A₀ = X (the B batch rows)::

        Z_l = A_{l−1} W_lᵀ,  Ẑ_l = BN(Z_l)  (batch statistics, biased var, + eps),
        A_l = ReLU(γ_l ⊙ Ẑ_l + β_l),
        logits = A_L W_outᵀ + b_out,  f = mean softmax cross-entropy.

    q = [W1, gamma1, beta1, W2, gamma2, beta2, …, Wout, bout] (matrices row-major,
    W_l of shape w_l × w_{l−1}, Wout of shape C × w_L).

    Declared symmetries (docs/potentials.md §8):

    * every hidden neuron's incoming weight row "W{l}[i]" is a scale block (BatchNorm
      divides its scale out); inexact when eps > 0;
    * the read-out bias "bout" and each read-out column "Wout[:,j]" carry the softmax
      translation along (1, …, 1)/sqrt(C).

    The affine parameters "gamma{l}", "beta{l}" are blocks with no declared symmetry.

    Parameters
    ----------
    X : (N, D) array_like, N ≥ 2
    labels : (N,) integer array_like in [0, C)
    widths : sequence of int ≥ 1, non-empty
        Hidden widths (w_1, …, w_L).
    n_classes : int ≥ 2, optional
        C; default max(labels) + 1.
    eps : float ≥ 0
        BatchNorm's variance offset.
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB) for what the
        construction allocates plus one kernel workspace; estimated before allocating,
        a larger request raises ValueError naming the bytes it would need.

    Notes
    -----
    One forward/backward pass per gradient, O(B·Σ w_{l−1} w_l) flops, all scratch in the
    per-run workspace.  :meth:`init` gives a standard starting point.

    Examples
    --------
    >>> import noether_core as nc
    >>> X, y = nc.datasets.gaussian_mixture(128, 16, classes=4, seed=0)
    >>> pot = nc.potentials.BatchNormMLP(X, y, widths=(32, 32))
    >>> pot.dim, len(pot.symmetry_blocks("scale"))
    (1796, 64)
    >>> q0 = pot.init(seed=0)
    >>> run = nc.train(nc.rules.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), pot, q0,
    ...                200, batch_size=32, seed=0, record_every=200)
    >>> bool(run.loss[-1] < run.loss[0])
    True
    """

    min_batch = 2

    def __init__(self, X, labels, widths, n_classes=None, eps=0.0, *,
                 max_bytes=DEFAULT_MAX_BYTES):
        X = V.as_float_array("X", X, ndim=2)
        _need_two_rows(X)
        labels, C = _labels(X, labels, n_classes)
        if isinstance(widths, (str, bytes)) or not np.iterable(widths):
            raise TypeError(f"widths must be a sequence of positive integers, got {widths!r}")
        widths = tuple(_units(f"widths[{i}]", w) for i, w in enumerate(widths))
        if not widths:
            raise ValueError("widths must hold at least one hidden width, got ()")
        eps = V.as_scalar("eps", eps, lo=0.0)
        max_bytes = _max_bytes(max_bytes)
        N, D = X.shape
        dims = (D,) + widths + (C,)
        n_blocks = sum(widths) + 2 * len(widths) + widths[-1] + 1
        _check_budget(f"BatchNormMLP(N={N}, D={D}, widths={widths}, C={C})",
                      _net_parts(N, dims, True, True, n_blocks), max_bytes)
        blocks, syms, off = {}, [], 0
        for layer, w in enumerate(widths, start=1):
            blocks.update(_rows_blocks(f"W{layer}", off, w, dims[layer - 1]))
            syms += [_bn_symmetry(f"W{layer}[{i}]", eps) for i in range(w)]
            off += w * dims[layer - 1]
            blocks[f"gamma{layer}"] = off + np.arange(w)
            blocks[f"beta{layer}"] = off + w + np.arange(w)
            off += 2 * w
        n = np.full(C, 1.0 / np.sqrt(C))
        blocks.update(_cols_blocks("Wout", off, C, widths[-1]))
        syms += [Symmetry("translation", (f"Wout[:,{j}]",), direction=n)
                 for j in range(widths[-1])]
        off += C * widths[-1]
        blocks["bout"] = off + np.arange(C)
        syms.append(Symmetry("translation", ("bout",), direction=n,
                             note="equal shift of every class's logit"))
        super().__init__(_net_kernel(X, None, labels, dims, bn=True, affine=True,
                                     relu=True, bias=True, eps=eps),
                         blocks, syms, (X, labels, widths, C, eps), {"max_bytes": max_bytes})
        self.X, self.labels, self.widths, self.n_classes, self.eps = X, labels, widths, C, eps

    def init(self, seed=None) -> np.ndarray:
        """A standard starting point: W_l rows ~ N(0, 1/w_{l−1}) (He-like scale is
        irrelevant under BatchNorm), γ = 1, β = 0, W_out ~ N(0, 1/w_L), b_out = 0."""
        rng = np.random.default_rng(seed)
        dims = (self.X.shape[1],) + self.widths + (self.n_classes,)
        parts = []
        for layer, w in enumerate(self.widths, start=1):
            parts += [rng.standard_normal(w * dims[layer - 1]) / np.sqrt(dims[layer - 1]),
                      np.ones(w), np.zeros(w)]
        parts += [rng.standard_normal(self.n_classes * self.widths[-1])
                  / np.sqrt(self.widths[-1]), np.zeros(self.n_classes)]
        q = np.concatenate(parts)
        assert q.shape == (self.dim,)
        return q


# ------------------------------------------------------------------------------------------
# Bring your own model (docs/byom.md): a compiled callback or a Python callable.

#: spellings of each argument of the ABI that C, Cython and ctypes produce (a 64-bit
#: signed index for d: ctypes names c_ssize_t "long" on LP64 platforms)
_ABI_ARGS = ({"double*", "constdouble*", "doubleconst*"}, {"double*"},
             {"Py_ssize_t", "ssize_t", "long", "longint", "longlong", "int64_t", "intptr_t"},
             {"void*"})
ABI_SIGNATURE = "double (const double *, double *, Py_ssize_t, void *)"


def _abi_signature_ok(sig: str) -> bool:
    """True when ``sig`` spells ``double (const double*, double*, Py_ssize_t, void*)``."""
    s = sig.replace("noexcept", "").replace("nogil", "").strip()
    if not s.startswith("double") or "(" not in s or not s.endswith(")"):
        return False
    ret, args = s.split("(", 1)
    if ret.strip() != "double":
        return False
    args = [a.replace(" ", "") for a in args[:-1].split(",")]
    if len(args) != 4:
        return False
    import ctypes
    if args[2] in ("long", "longint") and ctypes.sizeof(ctypes.c_long) != ctypes.sizeof(
            ctypes.c_ssize_t):
        return False
    return all(a in ok for a, ok in zip(args, _ABI_ARGS, strict=True))


def _user_budget(owner: str, d: int, blocks, per_eval: int, max_bytes: int) -> None:
    """The budget of a user potential (:class:`Compiled`, :class:`Python`), checked before
    its blocks are built: the blocks' index arrays (the default block covers all of q;
    a user's blocks are copied, and a ``seen`` mask of d bytes checks them) plus what one
    evaluation allocates (``per_eval`` bytes: the Python trampoline's copy of q and the
    returned gradient; nothing for a compiled callback)."""
    n_blocks = 1 if blocks is None or not isinstance(blocks, Mapping) else max(len(blocks), 1)
    _check_budget(f"{owner}(d={d})", {"blocks": _blocks_bytes(d, n_blocks) + d,
                                      "one evaluation": per_eval}, max_bytes)


def _user_blocks(d, blocks):
    """Validated blocks dict (default {"q": all of q}); index arrays in [0, d), disjoint."""
    if blocks is None:
        return {"q": np.arange(d)}
    if not isinstance(blocks, Mapping) or not blocks:
        raise TypeError(f"blocks must be a non-empty dict name -> index array, got "
                        f"{type(blocks).__name__}")
    out, seen = {}, np.zeros(d, dtype=bool)
    for name, idx in blocks.items():
        if not isinstance(name, str):
            raise TypeError(f"block names must be strings, got {name!r}")
        idx = V.as_index_array(f"blocks[{name!r}]", idx, d)
        if len(idx) == 0:
            raise ValueError(f"blocks[{name!r}] is empty")
        if len(np.unique(idx)) != len(idx) or seen[idx].any():
            raise ValueError(f"blocks[{name!r}] repeats an index or overlaps another block; "
                             "blocks must be disjoint")
        seen[idx] = True
        out[name] = idx
    return out


def _user_symmetries(blocks, symmetries):
    if symmetries is None:
        symmetries = ()
    if isinstance(symmetries, Symmetry) or not isinstance(symmetries, (list, tuple)):
        raise TypeError("symmetries must be a list or tuple of Symmetry objects, got "
                        f"{type(symmetries).__name__}")
    syms = tuple(symmetries)
    for s in syms:
        if not isinstance(s, Symmetry):
            raise TypeError(f"symmetries must hold noether_core.symmetry.Symmetry objects, "
                            f"got {type(s).__name__}")
        for b in s.blocks:
            if b not in blocks:
                raise ValueError(f"{s!r} names block {b!r}, which is not in blocks "
                                 f"{list(blocks)}")
        if s.family == "translation":
            n = len(blocks[s.blocks[0]])
            if s.direction is None or np.shape(s.direction) != (n,):
                raise ValueError(f"{s!r} needs direction= of length {n}")
        if s.family == "rescale" and s.blocks[0] == s.blocks[1]:
            raise ValueError(f"{s!r} needs two different blocks")
    return syms


class Compiled(Potential):
    """A user's compiled gradient function, called by the training loop without the GIL.

    Parameters
    ----------
    callback : scipy.LowLevelCallable
        A C function with the potential ABI (docs/byom.md)::

            double fn(const double* q, double* g, Py_ssize_t d, void* params)

        filling g = ∇f(q) (length d) and returning f(q).  It must not keep q or g, must
        not call into Python and must be re-entrant; ``params`` receives the callable's
        ``user_data`` (shared by every run: treat it as read-only), or a pointer to
        zero-filled scratch when there is none.  Made from a ctypes function pointer,
        a Cython ``cdef`` function exported in ``__pyx_capi__`` (``from_cython``) or a
        numba ``cfunc`` (``LowLevelCallable(cf.ctypes)``).
    d : int ≥ 1
        Length of q.
    blocks : dict[str, index array], optional
        Named blocks of q (default: one block "q" holding all of q).  Disjoint.
    symmetries : sequence of Symmetry, optional
        Declared symmetries on those blocks.  Check them with
        :func:`noether_core.audit.check_symmetry`.
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`, 4 GiB), as for the
        built-in potentials.  What a Compiled potential allocates grows with d only
        through its blocks (the kernel passes the callable's ``user_data`` or a fixed
        64-byte block, whatever d); estimated before allocating, a larger request
        raises ValueError naming the bytes it would need.

    Raises
    ------
    TypeError
        If ``callback`` is not a LowLevelCallable, or its signature is not the ABI's.

    Notes
    -----
    No trampoline: the loop's ``fn`` is the user's pointer, so a callback as fast as the
    built-in gives a run as fast as the built-in (benchmarks/bench_callbacks.py).  A NaN
    or inf loss or gradient stops ``train`` at that step (``result.stop_step``).
    Not picklable: a raw function pointer means nothing in another process (rebuild the
    potential there from its library).
    """

    def __init__(self, callback, d, blocks=None, symmetries=(), *,
                 max_bytes=DEFAULT_MAX_BYTES):
        from scipy import LowLevelCallable

        from ._bridge import callback_kernels
        CompiledKernel = callback_kernels.CompiledKernel
        if not isinstance(callback, LowLevelCallable):
            raise TypeError("callback must be a scipy.LowLevelCallable with signature "
                            f"{ABI_SIGNATURE!r}, got {type(callback).__name__} (wrap a ctypes"
                            " pointer as LowLevelCallable(ptr), a Cython function with "
                            "LowLevelCallable.from_cython(module, name))")
        sig = callback.signature
        if not _abi_signature_ok(sig):
            raise TypeError(f"callback has signature {sig!r}; the potential ABI requires "
                            f"{ABI_SIGNATURE!r} (ctypes: restype c_double, argtypes "
                            "[POINTER(c_double), POINTER(c_double), c_ssize_t, c_void_p])")
        d = V.as_int("d", d, lo=1)
        V.check_size(f"d={d}", d)
        max_bytes = _max_bytes(max_bytes)
        # the kernel itself allocates nothing sized by d (64 bytes of params scratch)
        _user_budget("Compiled", d, blocks, 0, max_bytes)
        blocks = _user_blocks(d, blocks)
        super().__init__(CompiledKernel(callback, d), blocks,
                         _user_symmetries(blocks, symmetries),
                         (callback, d, blocks, symmetries), {"max_bytes": max_bytes})
        self.callback, self.signature = callback, sig

    def __reduce__(self):
        raise TypeError("a Compiled potential holds a raw C function pointer and cannot be "
                        "pickled; build it again in the other process from its library")


class Python(Potential):
    """A Python function ``fn(q) -> (f, g)`` as a potential (the slow path).

    Parameters
    ----------
    fn : callable
        Called with a fresh float64 array q of shape (d,); returns the loss (a real
        scalar) and its gradient (array_like of shape (d,)).
    d, blocks, symmetries
        As for :class:`Compiled`.
    max_bytes : int ≥ 0, keyword-only
        Memory budget in bytes (default :data:`DEFAULT_MAX_BYTES`): the blocks plus what
        one call allocates (a copy of q handed to ``fn``, its gradient and a float64
        copy: 3·8·d bytes); a larger request raises ValueError naming the bytes.

    Notes
    -----
    The compiled loop reaches ``fn`` through a C trampoline that takes the GIL for every
    gradient: expect the cost of a Python call plus two copies of q per step (tens of µs),
    against well under a µs of loop overhead for :class:`Compiled` — use it to prototype,
    then compile.  Results equal a compiled callback computing the same arithmetic.

    If ``fn`` raises, or returns something other than ``(scalar, array of shape (d,))``,
    the run stops at that step and ``train``, ``scan`` and ``scan_integrate`` raise
    :class:`CallbackError` naming the step (``scan``: and the grid point), chained to the
    original exception (``__cause__``); it is never reported as a divergence.  A
    KeyboardInterrupt or SystemExit raised inside ``fn`` reaches the caller as itself.
    A NaN/inf value stops the run like any potential's (``result.stop_step``,
    DivergenceWarning).
    """

    def __init__(self, fn, d, blocks=None, symmetries=(), *, max_bytes=DEFAULT_MAX_BYTES):
        from ._bridge import callback_kernels
        PythonKernel = callback_kernels.PythonKernel
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(q) -> (f, g), got "
                            f"{type(fn).__name__}")
        d = V.as_int("d", d, lo=1)
        V.check_size(f"d={d}", d)
        max_bytes = _max_bytes(max_bytes)
        # each call: a fresh copy of q for fn, fn's gradient and its float64 copy
        _user_budget("Python", d, blocks, 3 * 8 * d, max_bytes)
        blocks = _user_blocks(d, blocks)
        super().__init__(PythonKernel(fn, d), blocks, _user_symmetries(blocks, symmetries),
                         (fn, d, blocks, symmetries), {"max_bytes": max_bytes})
        self.fn = fn

    def value_and_grad(self, q, rows=None):
        q = V.as_float_array("q", q, shape=(self.dim,))
        if rows is not None:
            raise ValueError("rows= given, but a Python potential has no data rows")
        f, g = self._kernel.value_and_grad(q, None)
        err = self._kernel.take_error()
        if err is not None:
            raise err[0]
        return f, g

    def _raise_callback_error(self, step, where=""):
        """Called by ``train``, ``scan`` and ``scan_integrate`` once a run has stopped:
        re-raise fn's exception, if fn failed in a run this thread owns.

        KeyboardInterrupt, SystemExit (any BaseException that is not an Exception) are
        re-raised as themselves; anything else as :class:`CallbackError` naming the step
        (and ``where``: e.g. the grid point), with the original as ``__cause__``.  The
        stored entry is removed whether or not it is raised (nothing is left behind).
        """
        err = self._kernel.take_error()
        if err is None:
            return
        exc, _ = err
        if not isinstance(exc, Exception):
            raise exc
        raise CallbackError(f"the Python potential's fn raised {where}at step {step}: "
                            f"{type(exc).__name__}: {exc}", step) from exc

    def _pending_errors(self) -> int:
        """Failed runs filed and not collected (0 after every entry point returned)."""
        return self._kernel.pending_errors()


__all__ += ["Compiled", "Python", "CallbackError", "ABI_SIGNATURE"]
