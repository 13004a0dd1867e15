# cython: language_level=3
"""Built-in potentials (losses) with exact gradients, in C.

Design
------
* Each built-in is a ``cdef class`` deriving from :class:`Potential` (declared in
  ``noether_core/_kernels/potentials.pxd``, the potential ABI).  The object owns C-contiguous
  float64 copies of its data (made read-only by the facade) and never changes after
  construction, so many runs may share it.
* ``new_params()`` (GIL held) allocates a *workspace*: a struct with pointers to the data
  plus the scratch memory of one gradient evaluation.  Each run (each thread of a scan)
  gets its own; ``free_params()`` releases it.  Kernels never allocate per step.
* The gradient functions ``_c_grad_*`` are ``noexcept nogil``: they assume the facade
  validated shapes and values (noether_core/potentials.py) and report trouble only through
  the returned loss / gradient values (NaN or inf), which the training loop checks.
* Data potentials read the minibatch rows from the :c:type:`BatchView` at the start of
  their workspace (set by the loop with ``set_batch``); rows == NULL means all rows.
  Means are over the rows used, so BatchNorm statistics are minibatch statistics and the
  scale symmetry holds at every step.

The NumPy twin of every function is python/noether_ref/potentials.py.
"""
from libc.math cimport sqrt, exp, log, log1p, fabs, INFINITY
from libc.stdlib cimport malloc, calloc, free

import numpy as np
cimport numpy as cnp

cnp.import_array()


cdef class Potential:
    """Base class of compiled potentials (see the .pxd for the ABI)."""

    cdef void* new_params(self) except NULL:
        raise NotImplementedError

    cdef void free_params(self, void* params) noexcept:
        free(params)

    @property
    def dim(self):
        return self.d

    @property
    def n_data(self):
        return self.n_data

    def value_and_grad(self, q, rows=None):
        """Loss and gradient at ``q`` (with the GIL; for tests and Python callers).

        ``rows``: optional 1-D integer array of data rows (a minibatch).
        """
        cdef double[::1] qv = np.ascontiguousarray(q, dtype=np.float64)
        if qv.shape[0] != self.d:
            raise ValueError(f"q has length {qv.shape[0]}, the potential expects {self.d}")
        cdef double[::1] gv = np.empty(self.d)
        cdef Py_ssize_t[::1] rv
        cdef void* params = self.new_params()
        cdef double f
        try:
            if rows is not None and self.n_data > 0:
                rv = np.ascontiguousarray(rows, dtype=np.intp)
                set_batch(params, &rv[0], rv.shape[0])
            f = self.fn(&qv[0], &gv[0], self.d, params)
        finally:
            self.free_params(params)
        return f, np.asarray(gv)


cdef inline const double* _ptr(cnp.ndarray a):
    return <const double*> cnp.PyArray_DATA(a)


# ----------------------------------------------------------------------------------------
# Quadratic(A, b): f = 1/2 q.A.q - b.q  (A symmetric), no symmetry: the control case.

cdef struct QuadParams:
    BatchView view
    const double* A
    const double* b


cdef double _c_grad_quadratic(const double* q, double* g, Py_ssize_t d,
                              void* params) noexcept nogil:
    cdef QuadParams* p = <QuadParams*> params
    cdef Py_ssize_t i, j
    cdef double s, f = 0.0
    for i in range(d):
        s = 0.0
        for j in range(d):
            s = s + p.A[i * d + j] * q[j]
        f = f + q[i] * (0.5 * s - p.b[i])
        g[i] = s - p.b[i]
    return f


cdef class QuadraticKernel(Potential):
    cdef cnp.ndarray A, b

    def __cinit__(self, cnp.ndarray A, cnp.ndarray b):
        self.A = A
        self.b = b
        self.d = b.shape[0]
        self.n_data = 0
        self.fn = _c_grad_quadratic

    cdef void* new_params(self) except NULL:
        cdef QuadParams* p = <QuadParams*> calloc(1, sizeof(QuadParams))
        if p == NULL:
            raise MemoryError("workspace of Quadratic")
        p.A = _ptr(self.A)
        p.b = _ptr(self.b)
        return p


# ----------------------------------------------------------------------------------------
# RayleighQuotient(A): f = 1/2 q.A.q / |q|^2, scale-invariant.
# g = (A q - 2 f q) / |q|^2, so <g, q> = (q.A.q - 2f|q|^2)/|q|^2 = 0.

cdef struct RayleighParams:
    BatchView view
    const double* A
    double* Aq          # scratch (d)


cdef double _c_grad_rayleigh(const double* q, double* g, Py_ssize_t d,
                             void* params) noexcept nogil:
    cdef RayleighParams* p = <RayleighParams*> params
    cdef Py_ssize_t i, j
    cdef double s, qAq = 0.0, qq = 0.0, f
    for i in range(d):
        s = 0.0
        for j in range(d):
            s = s + p.A[i * d + j] * q[j]
        p.Aq[i] = s
        qAq = qAq + q[i] * s
        qq = qq + q[i] * q[i]
    f = 0.5 * qAq / qq
    for i in range(d):
        g[i] = (p.Aq[i] - 2.0 * f * q[i]) / qq
    return f


cdef class RayleighQuotientKernel(Potential):
    cdef cnp.ndarray A

    def __cinit__(self, cnp.ndarray A):
        self.A = A
        self.d = A.shape[0]
        self.n_data = 0
        self.fn = _c_grad_rayleigh

    cdef void* new_params(self) except NULL:
        cdef RayleighParams* p = <RayleighParams*> calloc(1, sizeof(RayleighParams))
        if p == NULL:
            raise MemoryError("workspace of RayleighQuotient")
        p.A = _ptr(self.A)
        p.Aq = <double*> malloc(self.d * sizeof(double))
        if p.Aq == NULL:
            free(p)
            raise MemoryError("workspace of RayleighQuotient")
        return p

    cdef void free_params(self, void* params) noexcept:
        cdef RayleighParams* p = <RayleighParams*> params
        free(p.Aq)
        free(p)


# ----------------------------------------------------------------------------------------
# Radial(kind): f = phi(|q|^2), rotation-invariant under every skew Omega.
#   kind 0 "double_well": phi(u) = (u - 1)^2 / 4          phi'(u) = (u - 1)/2
#   kind 1 "log":         phi(u) = 1/2 log(1 + u)         phi'(u) = 1/(2(1+u))
#   kind 2 "gaussian":    phi(u) = -exp(-u/2)             phi'(u) = exp(-u/2)/2
# gradient g = 2 phi'(u) q.

cdef struct RadialParams:
    BatchView view
    int kind


cdef double _c_grad_radial(const double* q, double* g, Py_ssize_t d,
                           void* params) noexcept nogil:
    cdef RadialParams* p = <RadialParams*> params
    cdef Py_ssize_t i
    cdef double u = 0.0, f, dphi
    for i in range(d):
        u = u + q[i] * q[i]
    if p.kind == 0:
        f = 0.25 * (u - 1.0) * (u - 1.0)
        dphi = 0.5 * (u - 1.0)
    elif p.kind == 1:
        f = 0.5 * log1p(u)
        dphi = 0.5 / (1.0 + u)
    else:
        f = -exp(-0.5 * u)
        dphi = 0.5 * exp(-0.5 * u)
    for i in range(d):
        g[i] = 2.0 * dphi * q[i]
    return f


cdef class RadialKernel(Potential):
    cdef int kind

    def __cinit__(self, Py_ssize_t d, int kind):
        self.d = d
        self.kind = kind
        self.n_data = 0
        self.fn = _c_grad_radial

    cdef void* new_params(self) except NULL:
        cdef RadialParams* p = <RadialParams*> calloc(1, sizeof(RadialParams))
        if p == NULL:
            raise MemoryError("workspace of Radial")
        p.kind = self.kind
        return p


# ----------------------------------------------------------------------------------------
# BatchNormUnit(X, y, eps): z = X w, zhat = (z - mean z)/sqrt(var z + eps),
# f = 1/(2B) sum_i (zhat_i - y_i)^2 over the B rows of the batch (biased variance, as BN).
# Backward (s = sqrt(var + eps), delta = (zhat - y)/B):
#   dz_i = (delta_i - mean(delta) - zhat_i * mean(delta * zhat)) / s,   g = X^T dz.
# <g, w> = sum(delta*zhat) * eps/(var+eps): zero for eps = 0 (docs/potentials.md).

cdef struct BNUnitParams:
    BatchView view
    const double* X     # (N, D) row-major
    const double* y     # (N,)
    Py_ssize_t N
    double eps
    double* z           # scratch (N)


cdef double _c_grad_bn_unit(const double* q, double* g, Py_ssize_t d,
                            void* params) noexcept nogil:
    cdef BNUnitParams* p = <BNUnitParams*> params
    cdef Py_ssize_t B = p.view.n_rows if p.view.rows != NULL else p.N
    cdef Py_ssize_t i, j, r
    cdef const double* x
    cdef double s, mean = 0.0, var = 0.0, sd, f = 0.0, md = 0.0, mdz = 0.0, dz, e
    for i in range(B):
        r = p.view.rows[i] if p.view.rows != NULL else i
        x = p.X + r * d
        s = 0.0
        for j in range(d):
            s = s + x[j] * q[j]
        p.z[i] = s
        mean = mean + s
    mean = mean / B
    for i in range(B):
        p.z[i] = p.z[i] - mean
        var = var + p.z[i] * p.z[i]
    var = var / B
    sd = sqrt(var + p.eps)
    for i in range(B):
        r = p.view.rows[i] if p.view.rows != NULL else i
        p.z[i] = p.z[i] / sd                    # zhat
        e = p.z[i] - p.y[r]
        f = f + e * e
        md = md + e                             # B * mean(delta) * B
        mdz = mdz + e * p.z[i]
    f = 0.5 * f / B
    md = md / B / B                             # mean(delta), delta = e / B
    mdz = mdz / B / B                           # mean(delta * zhat)
    for j in range(d):
        g[j] = 0.0
    for i in range(B):
        r = p.view.rows[i] if p.view.rows != NULL else i
        x = p.X + r * d
        dz = ((p.z[i] - p.y[r]) / B - md - p.z[i] * mdz) / sd
        for j in range(d):
            g[j] = g[j] + dz * x[j]
    return f


cdef class BatchNormUnitKernel(Potential):
    cdef cnp.ndarray X, y
    cdef double eps

    def __cinit__(self, cnp.ndarray X, cnp.ndarray y, double eps):
        self.X = X
        self.y = y
        self.eps = eps
        self.d = X.shape[1]
        self.n_data = X.shape[0]
        self.fn = _c_grad_bn_unit

    cdef void* new_params(self) except NULL:
        cdef BNUnitParams* p = <BNUnitParams*> calloc(1, sizeof(BNUnitParams))
        if p == NULL:
            raise MemoryError("workspace of BatchNormUnit")
        p.X = _ptr(self.X)
        p.y = _ptr(self.y)
        p.N = self.n_data
        p.eps = self.eps
        p.z = <double*> malloc(self.n_data * sizeof(double))
        if p.z == NULL:
            free(p)
            raise MemoryError("workspace of BatchNormUnit")
        return p

    cdef void free_params(self, void* params) noexcept:
        cdef BNUnitParams* p = <BNUnitParams*> params
        free(p.z)
        free(p)
