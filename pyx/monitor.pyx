# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The monitor's per-step row statistics on the CPU, in one pass (docs/monitor.md §6).

``NoetherMonitor`` (noether_core/torch.py) keeps, per optimizer step n and per tracked row
r (a neuron's incoming weights), the row sums of products of the step's flat vectors:
the gradient g_n, the parameters q_n before and q_{n+1} after the step, Δ_{n+1} =
q_{n+1} − q_n, and the previous step's g_{n−1} and Δ_n (docs/monitor.md §2).  On an
accelerator it computes them with a handful of torch kernels; on the CPU those kernels
cost more in dispatch than in arithmetic (tens of µs each for a few thousand elements),
so this module does the same work in one call:

* ``gather(pieces, out)``: copy the flat vector's pieces (C-contiguous NumPy views of the
  parameters or gradients, in layout order) into ``out``;
* ``rows_step(...)``: gather q_{n+1} and g_n, form Δ_{n+1}, optionally advance the
  heavy-ball buffer of the gradients alone (docs/theory.md §9.2–9.3), and write the row
  sums into the step's row of the host batch.

Arithmetic: elementwise work in the parameters' precision (``real``: float or double),
each product rounded once to it, as the torch kernels do (``-ffp-contract=off``), and the
row sums accumulated in double, element by element in row order.  The torch path sums in
its own order, so the two agree to the rounding of a float64 sum (tests/
test_torch_monitor_cpu.py), not bitwise.
"""
from libc.string cimport memcpy

cimport numpy as cnp

cnp.import_array()

ctypedef fused real:
    float
    double

# columns of a step's row of the batch (the device order of docs/monitor.md §2)
cdef enum:
    C_GG = 0
    C_QG = 1
    C_DG = 2
    C_QQ = 3
    C_DD = 4
    C_Q1 = 5
    C_GPG = 6
    C_DPG = 7
    C_S8 = 8
    C_S9 = 9

#: what ``rows_step`` adds to the eight base columns (``stats``)
STATS_NONE = 0          # nothing: columns 8 and 9 are left as they are
STATS_SGD = 1           # heavy ball: col 8 = Σ b², col 9 = 0
STATS_NESTEROV = 2      # Nesterov: col 8 = Σ w², col 9 = Σ w_{n−1} b_n


cdef int _typenum(object a) except -2:
    if not cnp.PyArray_Check(a):
        raise TypeError(f"monitor kernels take NumPy arrays, got {type(a).__name__}")
    return cnp.PyArray_TYPE(<cnp.ndarray> a)


cdef str _name(int typenum):
    return "float32" if typenum == cnp.NPY_FLOAT32 else (
        "float64" if typenum == cnp.NPY_FLOAT64 else "intp")


cdef void* _data(object a, int typenum, Py_ssize_t n, str what, bint write) except NULL:
    """The data pointer of a C-contiguous array of ``typenum`` with ``n`` elements
    (writeable if ``write``)."""
    cdef cnp.ndarray arr
    if _typenum(a) != typenum:
        raise ValueError(f"{what} has dtype {a.dtype}, expected {_name(typenum)}")
    arr = <cnp.ndarray> a
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{what} is not C-contiguous")
    if cnp.PyArray_SIZE(arr) != n:
        raise ValueError(f"{what} has {cnp.PyArray_SIZE(arr)} elements, expected {n}")
    if write and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what} is read-only")
    return cnp.PyArray_DATA(arr)


cdef int _check_pieces(list pieces, int typenum, Py_ssize_t N) except -1:
    """Every piece a C-contiguous array of ``typenum``; their sizes add up to N."""
    cdef Py_ssize_t total = 0
    cdef object a
    for a in pieces:
        if _typenum(a) != typenum:
            raise ValueError(f"a piece has dtype {a.dtype}, the buffers {_name(typenum)}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> a):
            raise ValueError("a piece is not C-contiguous")
        total += cnp.PyArray_SIZE(<cnp.ndarray> a)
    if total != N:
        raise ValueError(f"the pieces have {total} elements, the layout {N}")
    return 0


cdef void _copy_pieces(list pieces, char* out, Py_ssize_t itemsize):
    cdef Py_ssize_t off = 0, n
    cdef object a
    for a in pieces:
        n = cnp.PyArray_SIZE(<cnp.ndarray> a) * itemsize
        memcpy(out + off, cnp.PyArray_DATA(<cnp.ndarray> a), n)
        off += n


def gather(list pieces, object out):
    """Copy ``pieces`` (C-contiguous arrays of ``out``'s dtype, float32 or float64, whose
    sizes add up to ``out.size``) one after the other into the C-contiguous ``out``."""
    cdef int tn = _typenum(out)
    cdef Py_ssize_t N, isz
    if tn != cnp.NPY_FLOAT32 and tn != cnp.NPY_FLOAT64:
        raise ValueError(f"out has dtype {out.dtype}, expected float32 or float64")
    N = cnp.PyArray_SIZE(<cnp.ndarray> out)
    isz = 4 if tn == cnp.NPY_FLOAT32 else 8
    _data(out, tn, N, "out", True)
    _check_pieces(pieces, tn, N)
    _copy_pieces(pieces, <char*> cnp.PyArray_DATA(<cnp.ndarray> out), isz)


cdef void _rows(real* X, const real* Xp, double* out, Py_ssize_t N, Py_ssize_t R,
                const Py_ssize_t* seg, Py_ssize_t nseg, int stats, int first,
                int have_w, real beta, real c, real* b, real* w) noexcept nogil:
    """The row sums of one step; X = (g, q_n, Δ, q_{n+1}) rows of N, Xp the previous
    step's; ``out`` (≥ 10, R) row-major; seg = (rows, m) per block."""
    cdef const real* g = X
    cdef const real* q0 = X + N
    cdef real* dl = X + 2 * N
    cdef const real* q1 = X + 3 * N
    cdef const real* gp = Xp
    cdef const real* dp = Xp + 2 * N
    cdef Py_ssize_t s, _r, j, e0 = 0, e1, row = 0
    cdef double acc[10]
    cdef real pr[8]
    cdef real gi, qi, di, q1i, bi, wi, p
    cdef int k
    for s in range(nseg):
        for _r in range(seg[2 * s]):
            e1 = e0 + seg[2 * s + 1]
            acc[:] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            for j in range(e0, e1):
                gi = g[j]
                qi = q0[j]
                q1i = q1[j]
                di = q1i - qi
                dl[j] = di
                # the products in column order, each rounded to real
                pr[:] = [gi * gi, qi * gi, di * gi, qi * qi, di * di, q1i * q1i,
                         gp[j] * gi, dp[j] * gi]
                for k in range(8):
                    acc[k] += pr[k]
                if stats != 0:
                    if first:
                        bi = gi
                    else:
                        if stats == 2 and have_w:
                            p = w[j] * b[j]      # ⟨w_{n−1}, b_n⟩ before b moves on
                            acc[C_S9] += p
                        p = b[j] * beta
                        bi = c * gi
                        bi = p + bi
                    b[j] = bi
                    if stats == 1:
                        p = bi * bi
                    else:
                        p = beta * bi
                        wi = gi + p
                        w[j] = wi
                        p = wi * wi
                    acc[C_S8] += p
            for k in range(10 if stats != 0 else 8):
                out[k * R + row] = acc[k]
            row += 1
            e0 = e1


def rows_step(object q1, object g, object X, object Xp, object out, object seg,
              int stats=STATS_NONE, bint first=False, double beta=0.0, double c=1.0,
              object b=None, object w=None, bint have_w=False):
    """One step's row statistics (docs/monitor.md §2, §6).

    Parameters
    ----------
    q1, g : list of arrays or None
        The pieces of q_{n+1} and g_n in layout order (C-contiguous, X's dtype), gathered
        into rows 3 and 0 of ``X``; None: that row already holds them.
    X, Xp : (4, N) C-contiguous float32 or float64
        This step's rows (g_n, q_n, Δ_{n+1}, q_{n+1}) — row 1 (q_n) set by ``gather``
        before the step, row 2 (Δ) written here — and the previous step's (its rows 0
        and 2 are read: g_{n−1}, Δ_n).
    out : (K, R) C-contiguous float64, K ≥ 8 (≥ 10 with ``stats``)
        The step's row of the batch: column k of row r gets Σ_{j∈r} of product k.
    seg : (B, 2) C-contiguous intp
        Per block, its rows and the elements per row (Σ rows·m = N, Σ rows = R).
    stats : STATS_NONE, STATS_SGD or STATS_NESTEROV
        Also advance the buffer of the gradients alone b_{n+1} = β b_n + c g_n (b = g_n at
        the ``first`` step the monitor sees; β, c rounded to X's precision) and write
        Σ b² (SGD) or Σ w², w = g_n + β b_{n+1}, and Σ w_{n−1} b_n (Nesterov; 0 at the
        first step) into columns 8 and 9.
    b, w : (N,) arrays of X's dtype
        b (read and written; with ``stats``) and w (Nesterov: read as w_{n−1} when
        ``have_w``, else column 9 gets 0; then written with w_n).
    """
    cdef int tn = _typenum(X)
    cdef Py_ssize_t N, R, K, nseg, isz, i, total = 0, rows = 0
    cdef const Py_ssize_t* sp
    cdef char* xd
    cdef void* bp = NULL
    cdef void* wp = NULL
    if tn != cnp.NPY_FLOAT32 and tn != cnp.NPY_FLOAT64:
        raise ValueError(f"X has dtype {X.dtype}, expected float32 or float64")
    if X.ndim != 2 or X.shape[0] != 4:
        raise ValueError(f"X must have shape (4, N), got {X.shape}")
    N = X.shape[1]
    isz = 4 if tn == cnp.NPY_FLOAT32 else 8
    xd = <char*> _data(X, tn, 4 * N, "X", True)
    _data(Xp, tn, 4 * N, "Xp", False)
    if stats not in (STATS_NONE, STATS_SGD, STATS_NESTEROV):
        raise ValueError(f"stats must be 0, 1 or 2, got {stats}")
    if _typenum(seg) != cnp.NPY_INTP or seg.ndim != 2 or seg.shape[1] != 2:
        raise ValueError("seg must be a (blocks, 2) intp array")
    nseg = seg.shape[0]
    sp = <const Py_ssize_t*> _data(seg, cnp.NPY_INTP, 2 * nseg, "seg", False)
    for i in range(nseg):
        if sp[2 * i] < 0 or sp[2 * i + 1] < 0:
            raise ValueError("seg has a negative count")
        rows += sp[2 * i]
        total += sp[2 * i] * sp[2 * i + 1]
    if total != N:
        raise ValueError(f"seg covers {total} elements, X has {N} per row")
    R = rows
    if _typenum(out) != cnp.NPY_FLOAT64 or out.ndim != 2 or out.shape[1] != R:
        raise ValueError(f"out must be a (K, {R}) float64 array")
    K = out.shape[0]
    if K < (10 if stats else 8):
        raise ValueError(f"out has {K} columns, needs {10 if stats else 8}")
    _data(out, cnp.NPY_FLOAT64, K * R, "out", True)
    if stats:
        bp = _data(b, tn, N, "b", True)
        if stats == STATS_NESTEROV:
            wp = _data(w, tn, N, "w", True)
    if q1 is not None:
        _check_pieces(q1, tn, N)
    if g is not None:
        _check_pieces(g, tn, N)
    # every input checked: now write
    if q1 is not None:
        _copy_pieces(q1, xd + 3 * N * isz, isz)
    if g is not None:
        _copy_pieces(g, xd, isz)
    if tn == cnp.NPY_FLOAT32:
        with nogil:
            _rows[float](<float*> xd, <const float*> cnp.PyArray_DATA(<cnp.ndarray> Xp),
                         <double*> cnp.PyArray_DATA(<cnp.ndarray> out), N, R, sp, nseg,
                         stats, first, have_w, <float> beta, <float> c, <float*> bp, <float*> wp)
    else:
        with nogil:
            _rows[double](<double*> xd, <const double*> cnp.PyArray_DATA(<cnp.ndarray> Xp),
                          <double*> cnp.PyArray_DATA(<cnp.ndarray> out), N, R, sp, nseg,
                          stats, first, have_w, beta, c, <double*> bp, <double*> wp)
