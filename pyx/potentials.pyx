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
* The four network potentials (BatchNormLayer, SoftmaxCrossEntropy, TwoLayer, BatchNormMLP)
  share one compiled forward/backward pass, ``_c_grad_net``, configured by flags (BN,
  affine, ReLU, read-out bias, squared or cross-entropy loss); its workspace is one
  allocation sized for the full N rows, carved into per-layer buffers.  Its products and
  BatchNorm layers are register-tiled C (pyx/netmm.h, a baseline and an AVX-512F version
  chosen at import) that keep the scalar loops' summation order, element for element
  (docs/potentials.md §10).
* Data potentials read the minibatch rows from the :c:type:`BatchView` at the start of
  their workspace (set by the loop with ``set_batch``); rows == NULL means all rows.
  Means are over the rows used, so BatchNorm statistics are minibatch statistics and the
  scale symmetry holds at every step.

Every function here has a NumPy counterpart in the NumPy reference twin in python/ (its
potentials module).
"""
from libc.math cimport sqrt, exp, log, log1p
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

import numpy as np
cimport numpy as cnp


cdef inline double _dot4(Py_ssize_t n, const double* x, const double* y) noexcept nogil:
    """sum_j x_j y_j with four interleaved accumulators (j mod 4), combined as
    (a0 + a1) + (a2 + a3), the tail (n mod 4 terms) added to a0 in order.

    A fixed, documented order on every machine (BLAS ddot's order depends on the CPU
    kernel it dispatches to, so its last bits differ between machines); the lane kernel
    of the scan (pyx/lanes_impl.h) uses the same order, which keeps scan points bitwise
    equal to ``train``."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t j, m = n - n % 4
    for j in range(0, m, 4):
        a0 = a0 + x[j] * y[j]
        a1 = a1 + x[j + 1] * y[j + 1]
        a2 = a2 + x[j + 2] * y[j + 2]
        a3 = a3 + x[j + 3] * y[j + 3]
    for j in range(m, n):
        a0 = a0 + x[j] * y[j]
    return (a0 + a1) + (a2 + a3)


cnp.import_array()


cdef extern from "netmm.h" nogil:
    void nc_net_fwd(const double* In, Py_ssize_t B, Py_ssize_t n_in, const double* Wt,
                    const double* bias, Py_ssize_t n_out, double* Z)
    void nc_net_bwd_w(const double* dZ, const double* In, Py_ssize_t B, Py_ssize_t n_in,
                      Py_ssize_t n_out, double* gW)
    void nc_net_bwd_x(const double* dZ, const double* W, Py_ssize_t B, Py_ssize_t n_in,
                      Py_ssize_t n_out, double* dIn)
    void nc_net_bn_act_fwd(double* Z, double* A, Py_ssize_t B, Py_ssize_t w, int bn,
                           double eps, double* mean, double* sd, int affine,
                           const double* gam, const double* bet, int relu)
    void nc_net_bn_act_bwd(double* dA, const double* Zh, const double* A, Py_ssize_t B,
                           Py_ssize_t w, int relu, int bn, int affine, const double* gam,
                           double* dgam, double* dbet, const double* sd, double* m1,
                           double* m2)
    void nc_net_transpose(const double* W, Py_ssize_t n_out, Py_ssize_t n_in, double* Wt)
    int nc_net_set_isa(int isa)
    int nc_net_best_isa()
    int nc_net_isa_cur


nc_net_set_isa(-1)


def _net_isa(isa=None):
    """The instruction set of the network products (pyx/netmm.h): 0 the build's
    baseline, 2 AVX-512F.  ``isa`` given: select it (-1: the best this CPU runs) and
    return the previous one; ValueError if this build or CPU lacks it.  For the tests,
    which compare the versions bit for bit; not thread-safe (no gradient may run)."""
    cdef int prev = nc_net_isa_cur
    if isa is None:
        return prev
    if nc_net_set_isa(int(isa)) < 0:
        raise ValueError(f"isa={isa!r} is not available here (best: {nc_net_best_isa()})")
    return prev


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
        cdef Py_ssize_t[::1] rv = _check_rows(rows, self.n_data)
        cdef void* params = self.new_params()
        cdef double f
        try:
            if rv is not None:
                set_batch(params, &rv[0], rv.shape[0])
            f = self.fn(&qv[0], &gv[0], self.d, params)
        finally:
            self.free_params(params)
        return f, np.asarray(gv)


def _check_rows(rows, Py_ssize_t n_data):
    """``rows`` as a C-contiguous intp array a workspace sized for ``n_data`` rows can take:
    1 to n_data indices (duplicates allowed), each in [0, n_data); None stays None.

    Every data kernel's scratch is sized for the full data set (``new_params``), so a
    batch of more rows than the data would write past it: refused here, the one place a
    caller's rows reach a kernel (the training loop draws at most n_data distinct rows).
    """
    if rows is None:
        return None
    if n_data == 0:
        raise ValueError("rows= given, but the potential has no data rows")
    arr = np.asarray(rows)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"rows must be a 1-D integer array, got dtype {arr.dtype}, "
                        f"shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[0] > n_data:
        raise ValueError(f"rows has length {arr.shape[0]}; a minibatch holds 1 to "
                         f"n_data={n_data} rows (the kernel's scratch is sized for n_data)")
    if arr.min() < 0 or arr.max() >= n_data:
        raise ValueError(f"rows has indices outside [0, {n_data}), got range "
                         f"[{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.intp)


def _check_data(str name, cnp.ndarray a, tuple shape):
    """A kernel's data array: C-contiguous float64 of ``shape`` (None: any extent)."""
    if a.dtype != np.float64 or not a.flags.c_contiguous or a.ndim != len(shape) or any(
            want is not None and have != want
            for have, want in zip((<object> a).shape, shape, strict=True)):
        raise ValueError(f"{name} must be a C-contiguous float64 array of shape {shape} "
                         f"(None: any), got {a.dtype} {(<object> a).shape}")


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
        s = p.A[i * d] * q[0]               # row sums from their first term (d >= 1)
        for j in range(1, d):
            s = s + p.A[i * d + j] * q[j]
        f = f + q[i] * (0.5 * s - p.b[i])
        g[i] = s - p.b[i]
    return f


cdef class QuadraticKernel(Potential):
    cdef cnp.ndarray A, b

    def __cinit__(self, cnp.ndarray A not None, cnp.ndarray b not None):
        _check_data("b", b, (None,))
        _check_data("A", A, (b.shape[0], b.shape[0]))
        if b.shape[0] < 1:
            raise ValueError("Quadratic needs d >= 1")
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
# g = (A q - 2 f q) / |q|^2, so <g, q> = (q.A.q - 2f|q|^2)/|q|^2 = 0 (formed as a product
# with 1/|q|^2: one division per evaluation).

cdef struct RayleighParams:
    BatchView view
    const double* A
    double* Aq          # scratch (d)


cdef double _c_grad_rayleigh(const double* q, double* g, Py_ssize_t d,
                             void* params) noexcept nogil:
    # Operation order shared with the lane form (pyx/lanes_impl.h grad_rayleigh) and the
    # callbacks of docs/byom.md: change them together.
    cdef RayleighParams* p = <RayleighParams*> params
    cdef Py_ssize_t i, j
    cdef double s, qAq = 0.0, qq = 0.0, iqq, t, ti
    # docs/potentials.md §2: iqq = 1/|q|² first, so that no division lies between Aq and g;
    # every sum starts from its first term (d >= 1), not from 0.0
    qq = q[0] * q[0]
    for i in range(1, d):
        qq = qq + q[i] * q[i]
    iqq = 1.0 / qq
    for i in range(d):
        s = p.A[i * d] * q[0]
        for j in range(1, d):
            s = s + p.A[i * d + j] * q[j]
        qAq = qAq + q[i] * s if i > 0 else q[0] * s
        p.Aq[i] = s * iqq
    t = qAq * iqq                   # 2f
    ti = t * iqq
    for i in range(d):
        g[i] = p.Aq[i] - q[i] * ti
    return 0.5 * t


cdef class RayleighQuotientKernel(Potential):
    cdef cnp.ndarray A

    def __cinit__(self, cnp.ndarray A not None):
        _check_data("A", A, (None, None))
        _check_data("A", A, (A.shape[0], A.shape[0]))
        if A.shape[0] < 1:
            raise ValueError("RayleighQuotient needs d >= 1")
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
        if d < 1 or not 0 <= kind <= 2:
            raise ValueError(f"Radial needs d >= 1 and kind in 0..2, got d={d}, kind={kind}")
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
    double* z           # scratch (max(N, 2D))
    const double* R     # (D, D) upper triangular, X - mean(X) = Q R; NULL: row form only
    const double* t     # (D) Q^T y
    double rho2         # |y - Q t|^2


cdef inline double _bn_unit_full(BNUnitParams* p, const double* w, double* g,
                                 Py_ssize_t d) noexcept nogil:
    """The full batch in O(D^2): docs/potentials.md section 4a, (P.6a)-(P.6b), in the
    order stated there (shared with pyx/lanes_impl.h grad_bn_unit_full)."""
    cdef const double* R = p.R
    cdef double* a = p.z            # a = u / s (u first)
    cdef double* v = p.z + d        # v = a - t, then y'
    cdef Py_ssize_t i, j
    cdef double acc, uu = 0.0, var, isd, vv = 0.0, va = 0.0, f, m, c1, c2
    cdef double Nd = <double> p.N, invN = 1.0 / <double> p.N
    cdef double invN2 = 1.0 / (Nd * Nd)
    for i in range(d):
        acc = 0.0
        for j in range(i, d):
            acc = acc + R[i * d + j] * w[j]
        a[i] = acc
        uu = uu + acc * acc
    var = uu * invN
    isd = 1.0 / sqrt(var + p.eps)
    for i in range(d):
        a[i] = a[i] * isd
        v[i] = a[i] - p.t[i]
        vv = vv + v[i] * v[i]
        va = va + v[i] * a[i]
    f = 0.5 * (vv + p.rho2) / Nd
    f = f + (var - var)     # NaN if the variance overflowed (docs/potentials.md §4), else + 0
    m = va * invN2
    c1 = invN * isd
    c2 = m * isd
    for i in range(d):
        v[i] = v[i] * c1 - a[i] * c2
    for j in range(d):
        g[j] = 0.0
    for i in range(d):
        for j in range(i, d):
            g[j] = g[j] + v[i] * R[i * d + j]
    return f


cdef double _c_grad_bn_unit(const double* q, double* g, Py_ssize_t d,
                            void* params) noexcept nogil:
    # Operation order shared with the lane form (pyx/lanes_impl.h grad_bn_unit): change
    # both together.  1/sd and 1/B are formed once; rows are multiplied by them.
    cdef BNUnitParams* p = <BNUnitParams*> params
    cdef Py_ssize_t B = p.view.n_rows if p.view.rows != NULL else p.N
    cdef Py_ssize_t i, j, r
    cdef const double* x
    cdef double s, mean = 0.0, var = 0.0, isd, f = 0.0, md = 0.0, mdz = 0.0, dz, e
    cdef double invB = 1.0 / <double> B
    if p.view.rows == NULL and p.R != NULL:
        return _bn_unit_full(p, q, g, d)
    for i in range(B):
        r = p.view.rows[i] if p.view.rows != NULL else i
        s = _dot4(d, p.X + r * d, q)
        p.z[i] = s
        mean = mean + s
    mean = mean / B
    for i in range(B):
        p.z[i] = p.z[i] - mean
        var = var + p.z[i] * p.z[i]
    var = var / B
    isd = 1.0 / sqrt(var + p.eps)
    for i in range(B):
        r = p.view.rows[i] if p.view.rows != NULL else i
        p.z[i] = p.z[i] * isd                   # zhat
        e = p.z[i] - p.y[r]
        f = f + e * e
        md = md + e                             # B * mean(delta) * B
        mdz = mdz + e * p.z[i]
    f = 0.5 * f / B
    f = f + (var - var)     # NaN if the variance overflowed (docs/potentials.md §4), else + 0
    md = md / B / B                             # mean(delta), delta = e / B
    mdz = mdz / B / B                           # mean(delta * zhat)
    for j in range(d):
        g[j] = 0.0
    for i in range(B):
        r = p.view.rows[i] if p.view.rows != NULL else i
        dz = ((p.z[i] - p.y[r]) * invB - md - p.z[i] * mdz) * isd
        x = p.X + r * d
        for j in range(d):
            g[j] = g[j] + dz * x[j]
    return f


cdef class BatchNormUnitKernel(Potential):
    cdef cnp.ndarray X, y, R, t
    cdef double eps, rho2

    def __cinit__(self, cnp.ndarray X, cnp.ndarray y, double eps, cnp.ndarray R=None,
                  cnp.ndarray t=None, double rho2=0.0):
        """``R``, ``t``, ``rho2``: the full-batch projection of docs/potentials.md §4a
        (None: the row form for every batch)."""
        _check_data("X", X, (None, None))
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X must have at least one row and column, got "
                             f"{(<object> X).shape}")
        _check_data("y", y, (X.shape[0],))
        if R is not None or t is not None:
            if R is None or t is None:
                raise ValueError("R and t come together (the full-batch projection)")
            _check_data("R", R, (X.shape[1], X.shape[1]))
            _check_data("t", t, (X.shape[1],))
        self.X = X
        self.y = y
        self.eps = eps
        self.R = R
        self.t = t
        self.rho2 = rho2
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
        if self.R is not None:
            p.R = _ptr(self.R)
            p.t = _ptr(self.t)
            p.rho2 = self.rho2
        p.z = <double*> malloc(max(self.n_data, 2 * self.d) * sizeof(double))
        if p.z == NULL:
            free(p)
            raise MemoryError("workspace of BatchNormUnit")
        return p

    cdef void free_params(self, void* params) noexcept:
        cdef BNUnitParams* p = <BNUnitParams*> params
        free(p.z)
        free(p)


# ----------------------------------------------------------------------------------------
# Networks: one forward/backward pass serves BatchNormLayer, SoftmaxCrossEntropy, TwoLayer
# and BatchNormMLP (docs/potentials.md, sections 5-8).  With A_0 = X (the batch rows),
# for hidden layers l = 1..L of widths w_l:
#     Z_l = A_{l-1} W_l^T                    (B, w_l), no bias
#     Zh_l = BN(Z_l) if bn else Z_l          batch statistics, biased variance, + eps
#     H_l = gamma_l * Zh_l + beta_l if affine else Zh_l
#     A_l = relu(H_l) if relu else H_l       relu'(0) := 0
# read-out P = A_L Wo^T (+ bo if bias); loss (1/2B) sum |P - Y|^2 (squared) or the mean
# softmax cross-entropy of the logits P (xent).
# q layout: [W_1, gamma_1, beta_1, ..., W_L, gamma_L, beta_L, Wo, bo], every matrix
# row-major, gamma/beta present only if affine, bo only if bias.
# Scratch (all sized for the full N rows, so any minibatch fits): Zh_l and A_l per layer,
# sd_l per layer, two (N, wmax) back-propagation buffers, the (N, out) read-out, two
# (wmax) per-unit accumulators, the (N, D) gathered minibatch rows and one transposed
# weight matrix.  The products and the BatchNorm layers are in pyx/netmm.h
# (docs/potentials.md §10, Eqs. P.13-P.14 give the order of every sum).

cdef inline double _c_loss_squared(double* P, const double* Y, const Py_ssize_t* rows,
                                   Py_ssize_t B, Py_ssize_t out) noexcept nogil:
    """f = (1/2B) sum |P_i - Y_{r_i}|^2; P <- dL/dP = (P - Y)/B.            # IN/OUT: P"""
    cdef Py_ssize_t i, o
    cdef const double* y
    cdef double e, f = 0.0
    for i in range(B):
        y = Y + (rows[i] if rows != NULL else i) * out
        for o in range(out):
            e = P[i * out + o] - y[o]
            f = f + e * e
            P[i * out + o] = e / B
    return 0.5 * f / B


cdef inline double _c_loss_xent(double* P, const Py_ssize_t* labels, const Py_ssize_t* rows,
                                Py_ssize_t B, Py_ssize_t C) noexcept nogil:
    """Mean softmax cross-entropy of the logits P (B, C); P <- dL/dP = (softmax(P) -
    onehot)/B.                                                              # IN/OUT: P

    Stable log-sum-exp (docs/potentials.md §6): with m the row maximum, the row's loss is
    (m - P_iy) + log(sum_c exp(P_ic - m)): the difference of two logits is formed before
    anything of order 1 is added, so a common offset of the logits (the translation
    symmetry) cancels exactly instead of rounding log(s) away against m (m + log(s) - P_iy
    returned 2.0 for log 3 at an offset of 1e16).  softmax = exp(P_ic - m) / s.
    """
    cdef Py_ssize_t i, c, y
    cdef double* p
    cdef double m, s, e, gap, f = 0.0
    for i in range(B):
        p = P + i * C
        y = labels[rows[i] if rows != NULL else i]
        m = p[0]
        for c in range(1, C):
            if p[c] > m:
                m = p[c]
        gap = m - p[y]                      # >= 0; read before p is overwritten
        s = 0.0
        for c in range(C):
            e = exp(p[c] - m)
            p[c] = e
            s = s + e
        f = f + (gap + log(s))
        for c in range(C):
            p[c] = p[c] / s / B
        p[y] = p[y] - 1.0 / B
    return f / B


cdef struct NetParams:
    BatchView view
    const double* X             # (N, D)
    const double* Y             # (N, out), squared loss only
    const Py_ssize_t* labels    # (N,), xent only
    Py_ssize_t N
    Py_ssize_t L                # number of hidden layers
    const Py_ssize_t* dims      # (L + 2): D, w_1, ..., w_L, out
    const Py_ssize_t* qoff      # (3L + 2): W_l, gamma_l, beta_l offsets per layer; Wo, bo
    bint bn, affine, relu, bias, xent
    double eps
    double* mem                 # the one allocation below pointers carve up
    double* Zh                  # sum_l N w_l
    double* A                   # sum_l N w_l
    double* sd                  # sum_l w_l
    double* m1                  # wmax
    double* m2                  # wmax
    double* bufA                # N wmax
    double* bufB                # N wmax
    double* P                   # N out
    double* Xb                  # N D: the minibatch's rows of X, gathered once per step
    double* Wt                  # max_l w_{l-1} w_l: the layer's weights, transposed


cdef double _c_grad_net(const double* q, double* g, Py_ssize_t d,
                        void* params) noexcept nogil:
    cdef NetParams* p = <NetParams*> params
    cdef const Py_ssize_t* rows = p.view.rows
    cdef Py_ssize_t B = p.view.n_rows if rows != NULL else p.N
    cdef Py_ssize_t N = p.N, L = p.L, out = p.dims[L + 1], D = p.dims[0]
    cdef Py_ssize_t layer, i, u, w, n_in, so = 0
    cdef const double* X0 = p.X
    cdef const double* In
    cdef double* Zh
    cdef double* A
    cdef double* tmp
    cdef double f
    # the minibatch's rows, gathered once: every product below reads contiguous rows
    if rows != NULL:
        for i in range(B):
            memcpy(p.Xb + i * D, p.X + rows[i] * D, D * sizeof(double))
        X0 = p.Xb
    In = X0
    n_in = D
    # ---- forward
    for layer in range(L):
        w = p.dims[layer + 1]
        Zh = p.Zh + N * so
        A = p.A + N * so
        nc_net_transpose(q + p.qoff[3 * layer], w, n_in, p.Wt)
        nc_net_fwd(In, B, n_in, p.Wt, NULL, w, Zh)
        nc_net_bn_act_fwd(Zh, A, B, w, p.bn, p.eps, p.m1, p.sd + so, p.affine,
                          q + p.qoff[3 * layer + 1], q + p.qoff[3 * layer + 2], p.relu)
        In = A
        n_in = w
        so = so + w
    nc_net_transpose(q + p.qoff[3 * L], out, n_in, p.Wt)
    nc_net_fwd(In, B, n_in, p.Wt, q + p.qoff[3 * L + 1] if p.bias else NULL, out, p.P)
    if p.xent:
        f = _c_loss_xent(p.P, p.labels, rows, B, out)
    else:
        f = _c_loss_squared(p.P, p.Y, rows, B, out)
    # ---- backward (p.P now holds dL/dP)
    nc_net_bwd_w(p.P, In, B, n_in, out, g + p.qoff[3 * L])
    if p.bias:
        tmp = g + p.qoff[3 * L + 1]
        for u in range(out):
            tmp[u] = 0.0
        for i in range(B):
            for u in range(out):
                tmp[u] = tmp[u] + p.P[i * out + u]
    if L > 0:
        nc_net_bwd_x(p.P, q + p.qoff[3 * L], B, n_in, out, p.bufA)
    for layer in range(L - 1, -1, -1):
        w = p.dims[layer + 1]
        so = so - w
        Zh = p.Zh + N * so
        A = p.A + N * so
        # bufA holds dL/dA_l: the activation's mask, the affine map's sums and
        # BatchNorm backward (P.12) turn it into dL/dZ_l
        nc_net_bn_act_bwd(p.bufA, Zh, A, B, w, p.relu, p.bn, p.affine,
                          q + p.qoff[3 * layer + 1], g + p.qoff[3 * layer + 1],
                          g + p.qoff[3 * layer + 2], p.sd + so, p.m1, p.m2)
        # bufA holds dL/dZ_l
        if layer == 0:
            nc_net_bwd_w(p.bufA, X0, B, D, w, g + p.qoff[0])
        else:
            nc_net_bwd_w(p.bufA, p.A + N * (so - p.dims[layer]), B, p.dims[layer], w,
                         g + p.qoff[3 * layer])
            nc_net_bwd_x(p.bufA, q + p.qoff[3 * layer], B, p.dims[layer], w, p.bufB)
            tmp = p.bufA
            p.bufA = p.bufB
            p.bufB = tmp
    return f


def _net_products(cnp.ndarray In not None, cnp.ndarray W not None,
                  cnp.ndarray dZ not None, cnp.ndarray bias=None):
    """The three products of one layer, as the network pass runs them (pyx/netmm.h), for
    the tests: ``Z = In Wᵀ (+ bias)``, ``gW = dZᵀ In``, ``dIn = dZ W`` (In: B x n_in,
    W: n_out x n_in, dZ: B x n_out; C-contiguous float64)."""
    _check_data("In", In, (None, None))
    _check_data("W", W, (None, In.shape[1]))
    _check_data("dZ", dZ, (In.shape[0], W.shape[0]))
    if bias is not None:
        _check_data("bias", bias, (W.shape[0],))
    cdef Py_ssize_t B = In.shape[0], n_in = In.shape[1], n_out = W.shape[0]
    if B < 1 or n_in < 1 or n_out < 1:
        raise ValueError("every extent must be >= 1")
    cdef cnp.ndarray Wt = np.empty((n_in, n_out))
    cdef cnp.ndarray Z = np.empty((B, n_out))
    cdef cnp.ndarray gW = np.empty((n_out, n_in))
    cdef cnp.ndarray dIn = np.empty((B, n_in))
    cdef const double* bp = NULL
    if bias is not None:
        bp = _ptr(bias)
    nc_net_transpose(_ptr(W), n_out, n_in, <double*> cnp.PyArray_DATA(Wt))
    nc_net_fwd(_ptr(In), B, n_in, _ptr(Wt), bp, n_out, <double*> cnp.PyArray_DATA(Z))
    nc_net_bwd_w(_ptr(dZ), _ptr(In), B, n_in, n_out, <double*> cnp.PyArray_DATA(gW))
    nc_net_bwd_x(_ptr(dZ), _ptr(W), B, n_in, n_out, <double*> cnp.PyArray_DATA(dIn))
    return Z, gW, dIn


def _net_bn_layer(cnp.ndarray Z not None, cnp.ndarray dA not None, cnp.ndarray gam not None,
                  cnp.ndarray bet not None, double eps, bint bn, bint affine, bint relu):
    """One hidden layer's BatchNorm, affine map and activation, forward then backward
    (pyx/netmm.h), for the tests.  Returns (Zh, A, sd, dZ, dgam, dbet); Z, dA: B x w."""
    _check_data("Z", Z, (None, None))
    _check_data("dA", dA, (Z.shape[0], Z.shape[1]))
    _check_data("gam", gam, (Z.shape[1],))
    _check_data("bet", bet, (Z.shape[1],))
    cdef Py_ssize_t B = Z.shape[0], w = Z.shape[1]
    if B < 1 or w < 1:
        raise ValueError("every extent must be >= 1")
    cdef cnp.ndarray Zh = Z.copy(), A = np.empty((B, w)), dZ = dA.copy()
    cdef cnp.ndarray sd = np.zeros(w), m = np.zeros(2 * w), dgb = np.zeros(2 * w)
    cdef double* mp = <double*> cnp.PyArray_DATA(m)
    cdef double* gp = <double*> cnp.PyArray_DATA(dgb)
    nc_net_bn_act_fwd(<double*> cnp.PyArray_DATA(Zh), <double*> cnp.PyArray_DATA(A), B, w,
                      bn, eps, mp, <double*> cnp.PyArray_DATA(sd), affine, _ptr(gam),
                      _ptr(bet), relu)
    nc_net_bn_act_bwd(<double*> cnp.PyArray_DATA(dZ), _ptr(Zh), _ptr(A), B, w, relu, bn,
                      affine, _ptr(gam), gp, gp + w, _ptr(sd), mp, mp + w)
    return Zh, A, sd, dZ, dgb[:w].copy(), dgb[w:].copy()


cdef class NetKernel(Potential):
    """Kernel of the network potentials (facade: BatchNormLayer, SoftmaxCrossEntropy,
    TwoLayer, BatchNormMLP).  ``dims`` = (D, w_1, ..., w_L, out)."""
    cdef cnp.ndarray X, Y, labels, dims, qoff
    cdef bint bn, affine, relu, bias, xent
    cdef double eps
    cdef Py_ssize_t L, n_hidden, wmax, tmax

    def __cinit__(self, cnp.ndarray X not None, cnp.ndarray Y, cnp.ndarray labels,
                  cnp.ndarray dims not None, bint bn, bint affine, bint relu, bint bias,
                  double eps):
        cdef Py_ssize_t layer, off = 0
        cdef cnp.ndarray qoff
        # every shape the pass reads is checked here, once: the gradient trusts them
        if (dims.dtype != np.intp or dims.ndim != 1 or not dims.flags.c_contiguous
                or dims.shape[0] < 2 or (dims < 1).any()):
            raise ValueError(f"dims must be a 1-D intp array of >= 2 positive extents, got "
                             f"{dims!r}")
        dl = [int(v) for v in (<object> dims).tolist()]
        rows = int(X.shape[0])
        _check_data("X", X, (None, dl[0]))
        if rows < 1:
            raise ValueError("X must have at least one row")
        if Y is None:
            if (labels is None or labels.dtype != np.intp or labels.ndim != 1
                    or not labels.flags.c_contiguous or labels.shape[0] != rows):
                raise ValueError(f"labels must be a C-contiguous intp array of shape "
                                 f"({rows},)")
            if labels.min() < 0 or labels.max() >= dl[len(dl) - 1]:
                raise ValueError(f"labels must lie in [0, {dl[len(dl) - 1]})")
        else:
            _check_data("Y", Y, (rows, dl[len(dl) - 1]))
        # the workspace (new_params), in doubles, must be addressable
        n_hidden = sum(dl[1:len(dl) - 1])
        wmax = max([1] + dl[1:len(dl) - 1])
        tmax = max([dl[i] * dl[i + 1] for i in range(len(dl) - 1)])
        total = (2 * rows * n_hidden + n_hidden + 2 * wmax + 2 * rows * wmax
                 + rows * dl[len(dl) - 1] + rows * dl[0] + tmax)
        if 8 * total >= 2**62:
            raise ValueError(f"the workspace of this network ({total} doubles) cannot be "
                             "addressed")
        self.X = X
        self.xent = Y is None
        self.Y = Y
        self.labels = labels
        self.dims = dims
        self.bn, self.affine, self.relu, self.bias = bn, affine, relu, bias
        self.eps = eps
        self.L = dims.shape[0] - 2
        qoff = np.zeros(3 * self.L + 2, dtype=np.intp)
        self.n_hidden = 0
        self.wmax = 1
        self.tmax = tmax
        for layer in range(self.L):
            qoff[3 * layer] = off
            off += dims[layer + 1] * dims[layer]
            qoff[3 * layer + 1] = off
            qoff[3 * layer + 2] = off + (dims[layer + 1] if affine else 0)
            off += 2 * dims[layer + 1] if affine else 0
            self.n_hidden += dims[layer + 1]
            self.wmax = max(self.wmax, dims[layer + 1])
        qoff[3 * self.L] = off
        off += dims[self.L + 1] * dims[self.L]
        qoff[3 * self.L + 1] = off
        off += dims[self.L + 1] if bias else 0
        self.qoff = qoff
        self.d = off
        self.n_data = X.shape[0]
        self.fn = _c_grad_net

    cdef void* new_params(self) except NULL:
        cdef NetParams* p = <NetParams*> calloc(1, sizeof(NetParams))
        cdef Py_ssize_t N = self.n_data, out = self.dims[self.L + 1]
        cdef Py_ssize_t D = self.dims[0]
        cdef Py_ssize_t total = (2 * N * self.n_hidden + self.n_hidden + 2 * self.wmax
                                 + 2 * N * self.wmax + N * out + N * D + self.tmax)
        if p == NULL:
            raise MemoryError("workspace of a network potential")
        p.mem = <double*> malloc(total * sizeof(double))
        if p.mem == NULL:
            free(p)
            raise MemoryError(f"workspace of a network potential ({total} doubles)")
        p.X = _ptr(self.X)
        if self.xent:
            p.labels = <const Py_ssize_t*> cnp.PyArray_DATA(self.labels)
        else:
            p.Y = _ptr(self.Y)
        p.N = N
        p.L = self.L
        p.dims = <const Py_ssize_t*> cnp.PyArray_DATA(self.dims)
        p.qoff = <const Py_ssize_t*> cnp.PyArray_DATA(self.qoff)
        p.bn, p.affine, p.relu = self.bn, self.affine, self.relu
        p.bias, p.xent, p.eps = self.bias, self.xent, self.eps
        p.Zh = p.mem
        p.A = p.Zh + N * self.n_hidden
        p.sd = p.A + N * self.n_hidden
        p.m1 = p.sd + self.n_hidden
        p.m2 = p.m1 + self.wmax
        p.bufA = p.m2 + self.wmax
        p.bufB = p.bufA + N * self.wmax
        p.P = p.bufB + N * self.wmax
        p.Xb = p.P + N * out
        p.Wt = p.Xb + N * D
        return p

    cdef void free_params(self, void* params) noexcept:
        cdef NetParams* p = <NetParams*> params
        free(p.mem)
        free(p)
