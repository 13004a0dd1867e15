# cython: language_level=3
"""Learning rules as compiled loops: ``q_n -> q_{n+1}`` for a whole run in one call.

Design
------
* ``run_loop(RunSpec*)`` is the one training loop: draw a minibatch (if any), evaluate the
  potential through the ABI, check the loss and gradient are finite, record every
  ``record_every``-th state into preallocated rows, apply the rule's step.  (SGD checks
  the gradient of an unrecorded step after the step, from q_{n+1}, and undoes the step
  exactly if the gradient was the culprit: docs/balance_laws.md (9.4).)  It is
  ``noexcept nogil`` and allocates nothing, so ``train`` and every grid point of a scan run
  the same code.  Errors cross back as ``RunSpec.status`` codes.
* Rules follow ``torch.optim`` (single-tensor CPU path) operation by operation, including
  the order of floating-point operations where it matters; see docs/rules.md.
* ``train_kernel`` (Python-visible, called only by noether_core/_train.py, which validated
  everything) owns the scratch memory of one run, takes the bit generator's lock and
  releases the GIL around ``run_loop``.
* Minibatches: each step draws ``batch_size`` distinct rows by a partial Fisher-Yates
  shuffle of the identity permutation, consuming exactly ``batch_size`` doubles
  (``next_double``) of the caller's bit generator; the NumPy reference twin in python/ (its
  rules module) replays the same draws with ``Generator.random()``.

Hyper-parameter layouts ``hp`` and state layouts (``vec`` rows, ``sca``) per rule kind:

=============== ==================================== ============================ ============
kind            hp                                   vec rows                     sca
=============== ==================================== ============================ ============
SGD             lr, momentum, dampening, nesterov,   momentum_buffer              has_buffer
                wd
RMSPROP         lr, alpha, eps, wd, momentum,        square_avg, momentum_buffer, step
                centered                             grad_avg
ADAM            lr, beta1, beta2, eps, wd, amsgrad,  exp_avg, exp_avg_sq,         step
                decoupled                            max_exp_avg_sq
SCALAR_RMSPROP  lr, rho, eps, G0 (NaN: first         (none)                       initialised,
                |g_B|^2), wd, nproj (leading parts                                G per part
                renormalised to |q_P| = 1 after
                their step; 0 = off)
MIRROR          lr, wd, map (0 euclid, 1 diag,       D (diagonal of h, map 1)     (none)
                2 pnorm, 3 entropy), p
=============== ==================================== ============================ ============
"""
from libc.math cimport NAN, exp, fabs, isfinite, log, pow, sqrt
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.ref cimport PyObject
cdef extern from "Python.h":
    # declared without Cython's exception check: the loop returns a status and the
    # caller re-raises what the signal handler raised (_reraise)
    int _PyErr_CheckSignals "PyErr_CheckSignals"()
    void PyErr_Fetch(PyObject** t, PyObject** v, PyObject** tb)
    void PyErr_Restore(PyObject* t, PyObject* v, PyObject* tb)
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cimport numpy as cnp
from numpy.random cimport bitgen_t

from noether_core._kernels.potentials cimport Potential, set_batch

cnp.import_array()


# ---------------------------------------------------------------------------------------
# helpers

cdef inline double _lerp(double a, double b, double w) noexcept nogil:
    """torch.lerp(a, b, w) as ATen's CPU kernel evaluates it."""
    if w < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (1.0 - w)


cdef inline void _draw_batch(bitgen_t* rng, Py_ssize_t* perm, Py_ssize_t N,
                             Py_ssize_t B) noexcept nogil:
    """B distinct rows of N, uniformly: partial Fisher-Yates from the identity."""
    cdef Py_ssize_t i, j, t
    for i in range(N):
        perm[i] = i
    for i in range(B):
        j = i + <Py_ssize_t> (rng.next_double(rng.state) * <double> (N - i))
        if j >= N:
            j = N - 1
        t = perm[i]
        perm[i] = perm[j]
        perm[j] = t


# ---------------------------------------------------------------------------------------
# one step of each rule; q updated in place, g is the loss gradient (no weight decay)

cdef extern from *:
    # a pointer to doubles no other pointer of the function reaches (C99 restrict): lets
    # the compiler vectorize a loop over many arrays without a run-time overlap check
    # per pair of them (it gives up past ten)
    ctypedef double* _rdp "double * __restrict"
    ctypedef const double* _crdp "const double * __restrict"


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* bit 63 set iff x is NaN or +-inf (exponent field all ones: (e + 1) << 52 reaches
       2^63 only for e = 2047); OR-ed over a loop, it vectorizes with the loop */
    static inline uint64_t nc_nonfinite_bit(double x) {
        uint64_t u;
        memcpy(&u, &x, sizeof u);
        return (u & 0x7ff0000000000000ULL) + 0x0010000000000000ULL;
    }
    """
    unsigned long long _nf_bit "nc_nonfinite_bit"(double x) nogil


cdef inline unsigned long long _sgd_coords(
        _rdp q, _crdp g, _rdp buf, _rdp qs, _rdp bs, Py_ssize_t d, double nlr, double mom,
        double damp1, double wd, bint save, bint use_wd, bint use_mom, bint use_damp,
        bint first, bint nesterov) noexcept nogil:
    """_step_sgd's coordinates, operation for operation, for one configuration: called
    with constant flags (``_step_sgd``), each call is compiled into its own loop without
    a test per coordinate, which the compiler vectorizes (docs/balance_laws.md §9, "SGD
    without a branch").  ``use_wd``: the L2 term g_i + wd q_i (without it d_i = g_i
    itself: g_i + 0 q_i would turn g_i = -0.0 into +0.0); ``use_damp``: the product
    (1 - dampening) d_i (without it d_i: (9.3), 1.0 x = x exactly); ``save``: q_i and
    buf_i are also stored, negated, into qs and bs (the late gradient check, (9.4)).
    Returns the finiteness flag of q_{n+1}: bit 63 set iff some q_{n+1,i} is NaN or
    +-inf (formed in the loop, no second pass over q)."""
    cdef Py_ssize_t i
    cdef double di, bn, qn
    cdef unsigned long long nf = 0
    for i in range(d):
        if save:                  # negated: exact, and no copy loop the compiler would
            qs[i] = -q[i]         # split off into a library call per step (9.4)
            if use_mom:
                bs[i] = -buf[i]
        di = g[i]
        if use_wd:
            di = di + wd * q[i]
        if use_mom:
            if first:
                bn = di
            elif use_damp:
                bn = buf[i] * mom + damp1 * di
            else:
                bn = buf[i] * mom + di
            buf[i] = bn
            if nesterov:
                di = di + mom * bn
            else:
                di = bn
        qn = q[i] + nlr * di
        q[i] = qn
        nf = nf | _nf_bit(qn)
    return nf


cdef inline unsigned long long _sgd_dispatch(RunSpec* s, _rdp qs, _rdp bs,
                                             bint save) noexcept nogil:
    """_step_sgd's configuration chosen once per step among _sgd_coords' unswitched
    loops (inlined with ``save`` constant: its two callers get loops of their own)."""
    cdef double lr = s.hp[0], mom = s.hp[1], damp1 = 1.0 - s.hp[2], wd = s.hp[4]
    cdef bint nesterov = s.hp[3] != 0.0
    cdef bint first = s.sca[0] == 0.0
    cdef bint use_wd = wd != 0.0
    cdef _rdp q = s.q
    cdef _crdp g = s.g
    cdef _rdp buf = s.vec
    cdef Py_ssize_t d = s.d
    cdef unsigned long long nf
    if mom == 0.0:
        if use_wd:
            nf = _sgd_coords(
                q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, True, False, False, False, False)
        else:
            nf = _sgd_coords(
                q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, False, False, False, False, False)
        return nf
    if first:              # once per run: the general loop
        nf = _sgd_coords(
            q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, use_wd, True, True, True, nesterov)
    elif nesterov:         # (torch: dampening 0)
        nf = _sgd_coords(
            q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, use_wd, True, damp1 != 1.0, False,
            True)
    elif damp1 != 1.0:
        if use_wd:
            nf = _sgd_coords(
                q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, True, True, True, False, False)
        else:
            nf = _sgd_coords(
                q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, False, True, True, False, False)
    else:                  # heavy ball without dampening: the benchmark's SGD
        if use_wd:
            nf = _sgd_coords(
                q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, True, True, False, False, False)
        else:
            nf = _sgd_coords(
                q, g, buf, qs, bs, d, -lr, mom, damp1, wd, save, False, True, False, False, False)
    s.sca[0] = 1.0
    return nf


cdef inline unsigned long long _step_sgd(RunSpec* s, _rdp qs, _rdp bs) noexcept nogil:
    """torch's SGD step, d = g + wd q, buf = mom buf + (1 - dampening) d (d at the first
    step), q = q - lr (d + mom buf if nesterov else buf) (q - lr d without momentum);
    qs, bs not NULL: q_n and buf_n are saved into them on the way (9.4).  Returns
    q_{n+1}'s finiteness flag (_sgd_coords)."""
    if qs != NULL:
        return _sgd_dispatch(s, qs, bs, True)
    return _sgd_dispatch(s, NULL, NULL, False)


cdef inline void _step_rmsprop(RunSpec* s) noexcept nogil:
    cdef double lr = s.hp[0], alpha = s.hp[1], eps = s.hp[2], wd = s.hp[3]
    cdef double mom = s.hp[4]
    cdef bint centered = s.hp[5] != 0.0
    cdef double* sq = s.vec
    cdef double* buf = s.vec + s.d
    cdef double* ga = s.vec + 2 * s.d
    cdef Py_ssize_t i
    cdef double gi, avg
    s.sca[0] += 1.0
    for i in range(s.d):
        gi = s.g[i]
        if wd != 0.0:
            gi = gi + wd * s.q[i]
        sq[i] = sq[i] * alpha
        sq[i] = sq[i] + ((1.0 - alpha) * gi) * gi
        if centered:
            ga[i] = _lerp(ga[i], gi, 1.0 - alpha)
            avg = sqrt(sq[i] + (-1.0 * ga[i]) * ga[i])
        else:
            avg = sqrt(sq[i])
        avg = avg + eps
        if mom > 0.0:
            buf[i] = buf[i] * mom + gi / avg
            s.q[i] = s.q[i] + (-lr) * buf[i]
        else:
            s.q[i] = s.q[i] + ((-lr) * gi) / avg


cdef struct _BiasCorr:
    # one of Adam's bias corrections 1 - beta^step within a run_loop call
    # (docs/balance_laws.md §9): ``one`` once it is exactly 1.0 (it stays 1.0, so pow is
    # no longer called, (9.1)); else ``next`` = 1 - beta^(step + 1), formed one step
    # ahead (9.9) for the step ``at`` (NaN: none formed yet)
    bint one
    double at
    double next


cdef struct _Carry:
    # what one run_loop call learns at one step and keeps for the later ones
    # (docs/balance_laws.md §9): Adam's two bias corrections and sqrt(beta2)
    _BiasCorr bc1
    _BiasCorr bc2
    double sb2


cdef extern from *:
    """
    #define NC_BC_BMAX (1.0 - 0x1p-50)
    """
    const double _BC_BMAX "NC_BC_BMAX"    # 1 - 2^-50: the largest beta the carry trusts


cdef inline double _bias_corr(double b, double step, _BiasCorr* k) noexcept nogil:
    """torch's bias correction 1 - b^step (pow, as torch), formed one step ahead: the
    value for this step was formed at the step before when there was one (the same
    call of pow on the same operands, so the same bits), and the next step's is formed
    now, so that pow's latency overlaps this step's work (docs/balance_laws.md (9.9)).
    Once it is exactly 1.0, ``one`` is set and pow is no longer called: for
    0 <= b <= 1 - 2^-50 every later step's is 1.0 too, (9.1)."""
    cdef double bc
    if k.one:
        return 1.0
    if k.at == step:
        bc = k.next
    else:
        bc = 1.0 - pow(b, step)
    if bc == 1.0 and b >= 0.0 and b <= _BC_BMAX:
        k.one = True
        return bc
    k.at = step + 1.0
    k.next = 1.0 - pow(b, step + 1.0)
    return bc


cdef inline void _adam_plain(double* q, const double* g, double* m1, double* m2,
                             Py_ssize_t d, double decay, double w1, double b2, double omb2,
                             double bc2_sqrt, double eps, double nss,
                             bint bc2_one) noexcept nogil:
    """_step_adam's coordinates without amsgrad, without an L2 term and with
    1 - beta1 < 0.5 (AdamW; Adam without weight decay), operation for operation:
    q_i decay (decay = 1.0 without weight decay: q_i 1.0 = q_i exactly), the lerp's
    first branch, the real denominator sqrt(v_i)/sqrt(bc2) + eps (sqrt(v_i) + eps when
    sqrt(bc2) = 1.0: x/1.0 = x exactly).  No branch in the loop, so the compiler
    vectorizes it (the operations are IEEE ones, per coordinate: the same bits)."""
    cdef Py_ssize_t i
    cdef double gi, m1n, m2n, den
    if bc2_one:
        for i in range(d):
            gi = g[i]
            m1n = m1[i] + w1 * (gi - m1[i])
            m1[i] = m1n
            m2n = m2[i] * b2 + (omb2 * gi) * gi
            m2[i] = m2n
            den = sqrt(m2n) + eps
            q[i] = q[i] * decay + (nss * m1n) / den
    else:
        for i in range(d):
            gi = g[i]
            m1n = m1[i] + w1 * (gi - m1[i])
            m1[i] = m1n
            m2n = m2[i] * b2 + (omb2 * gi) * gi
            m2[i] = m2n
            den = sqrt(m2n) / bc2_sqrt + eps
            q[i] = q[i] * decay + (nss * m1n) / den


cdef inline void _step_adam(RunSpec* s, _Carry* c) noexcept nogil:
    cdef double lr = s.hp[0], b1 = s.hp[1], b2 = s.hp[2], eps = s.hp[3], wd = s.hp[4]
    cdef bint amsgrad = s.hp[5] != 0.0, decoupled = s.hp[6] != 0.0
    cdef double* m1 = s.vec
    cdef double* m2 = s.vec + s.d
    cdef double* mx = s.vec + 2 * s.d
    cdef Py_ssize_t i
    cdef double gi, step, bc1, bc2, step_size, bc2_sqrt, den, decay
    s.sca[0] += 1.0
    step = s.sca[0]
    bc1 = _bias_corr(b1, step, &c.bc1)
    bc2 = _bias_corr(b2, step, &c.bc2)
    step_size = lr / bc1 if bc1 != 1.0 else lr          # x/1.0 = x exactly
    bc2_sqrt = sqrt(bc2) if bc2 != 1.0 else 1.0         # sqrt(1.0) = 1.0 exactly
    decay = 1.0 - lr * wd
    if not amsgrad and (decoupled or wd == 0.0) and 1.0 - b1 < 0.5:
        _adam_plain(s.q, s.g, m1, m2, s.d, decay if wd != 0.0 else 1.0, 1.0 - b1, b2,
                    1.0 - b2, bc2_sqrt, eps, -step_size, bc2_sqrt == 1.0)
        return
    for i in range(s.d):
        gi = s.g[i]
        if wd != 0.0:
            if decoupled:
                s.q[i] = s.q[i] * decay
            else:
                gi = gi + wd * s.q[i]
        m1[i] = _lerp(m1[i], gi, 1.0 - b1)
        m2[i] = m2[i] * b2
        m2[i] = m2[i] + ((1.0 - b2) * gi) * gi
        if amsgrad:
            if m2[i] > mx[i] or mx[i] != mx[i]:
                mx[i] = m2[i]
            den = sqrt(mx[i]) / bc2_sqrt + eps
        else:
            den = sqrt(m2[i]) / bc2_sqrt + eps
        s.q[i] = s.q[i] + ((-step_size) * m1[i]) / den


# ---------------------------------------------------------------------------------------
# fused free steps (docs/balance_laws.md §8): the rule's step and, in the same pass, the
# free step of the balance laws (g_n = 0, the same state) written to qf, with q_n saved in
# qp.  Each value is formed by the operations _charges_before's copy-and-step would form,
# on the same operands, so q_{n+1}, the state and qf are bitwise those of the two separate
# passes; what the free step shares with the real one (wd q_i, buf_i mom, exp_avg_sq_i
# beta2, the step's scalars) is formed once.  No copy of q, of the state or of the zero
# gradient is made.

cdef inline double _l2_terms(RunSpec* s, Py_ssize_t i, double wd, bint on, double* qp,
                             double* g_out, double* gf_out) noexcept nogil:
    """Coordinate i's gradient with the L2 term, for the real step and the free one
    (g = 0): g_out = g_i + wd q_i and gf_out = 0 + wd q_i (wd q_i formed once) where
    ``on``, else g_i and 0; q_i saved in qp[i] and returned.  Shared by the fused free
    steps of RMSprop and Adam (inlined: the same operations as written out; SGD's
    _sgd_free_coords writes them out)."""
    cdef double qi = s.q[i], gi = s.g[i], gf = 0.0, wq
    qp[i] = qi
    if on:
        wq = wd * qi
        gi = gi + wq
        gf = gf + wq                      # 0 + wd q_i: the zero gradient's term
    g_out[0] = gi
    gf_out[0] = gf
    return qi


cdef inline double _l2_pair(RunSpec* s, Py_ssize_t i, double wd, double* qp,
                            double* g_out, double* gf_out) noexcept nogil:
    """_l2_terms with the L2 term wherever wd != 0 (RMSprop, SGD's coupled decay)."""
    return _l2_terms(s, i, wd, wd != 0.0, qp, g_out, gf_out)


cdef inline unsigned long long _sgd_free_coords(
        _rdp q, _crdp g, _rdp buf, double* qp, _rdp qf, _rdp bs, Py_ssize_t d, double nlr,
        double mom, double damp1, double wd, bint save, bint use_wd, bint use_mom,
        bint use_damp, bint first, bint nesterov) noexcept nogil:
    """_sgd_coords with the free step (g = 0) into qf and q_n into qp, operation for
    operation as _l2_pair and the loop of _step_sgd_free formed them (wd q_i once, then
    g_i + wd q_i and 0 + wd q_i; buf_i mom once), for one configuration (constant
    flags: no test per coordinate); ``save``: -buf_i also stored into bs (9.4).  Returns
    q_{n+1}'s finiteness flag, as _sgd_coords does."""
    cdef Py_ssize_t i
    cdef double qi, di, df, wq, bm, bn, bf, qn
    cdef unsigned long long nf = 0
    for i in range(d):
        qi = q[i]
        qp[i] = qi
        if save and use_mom:
            bs[i] = -buf[i]        # negated, as in _sgd_coords (9.4)
        di = g[i]
        df = 0.0
        if use_wd:
            wq = wd * qi
            di = di + wq
            df = df + wq
        if use_mom:
            if first:
                bn = di
                bf = df
            else:
                bm = buf[i] * mom
                if use_damp:
                    bn = bm + damp1 * di
                    bf = bm + damp1 * df
                else:
                    bn = bm + di
                    bf = bm + df
            buf[i] = bn
            if nesterov:
                di = di + mom * bn
                df = df + mom * bf
            else:
                di = bn
                df = bf
        qn = qi + nlr * di
        q[i] = qn
        nf = nf | _nf_bit(qn)
        qf[i] = qi + nlr * df
    return nf


cdef inline unsigned long long _sgd_free_dispatch(RunSpec* s, _rdp qp, _rdp qf, _rdp bs,
                                                  bint save) noexcept nogil:
    """_step_sgd_free's configuration, chosen as _sgd_dispatch chooses it."""
    cdef double lr = s.hp[0], mom = s.hp[1], damp1 = 1.0 - s.hp[2], wd = s.hp[4]
    cdef bint nesterov = s.hp[3] != 0.0
    cdef bint first = s.sca[0] == 0.0
    cdef bint use_wd = wd != 0.0
    cdef _rdp q = s.q
    cdef _crdp g = s.g
    cdef _rdp buf = s.vec
    cdef Py_ssize_t d = s.d
    cdef unsigned long long nf
    if mom == 0.0:
        if use_wd:
            nf = _sgd_free_coords(
                q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, True, False, False, False,
                False)
        else:
            nf = _sgd_free_coords(
                q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, False, False, False, False,
                False)
        return nf
    if first:
        nf = _sgd_free_coords(
            q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, use_wd, True, True, True, nesterov)
    elif nesterov:
        nf = _sgd_free_coords(
            q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, use_wd, True, damp1 != 1.0, False,
            True)
    elif damp1 != 1.0:
        nf = _sgd_free_coords(
            q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, use_wd, True, True, False, False)
    elif use_wd:
        nf = _sgd_free_coords(
            q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, True, True, False, False, False)
    else:
        nf = _sgd_free_coords(
            q, g, buf, qp, qf, bs, d, -lr, mom, damp1, wd, save, False, True, False, False, False)
    s.sca[0] = 1.0
    return nf


cdef inline unsigned long long _step_sgd_free(RunSpec* s, double* qp, double* qf,
                                              double* bs) noexcept nogil:
    """_step_sgd with its free step (g = 0) into qf and q_n into qp; bs not NULL: -buf_n
    saved into it (9.4).  Returns q_{n+1}'s finiteness flag (_sgd_coords)."""
    if bs != NULL:
        return _sgd_free_dispatch(s, qp, qf, bs, True)
    return _sgd_free_dispatch(s, qp, qf, NULL, False)


cdef inline void _rms_coord(RunSpec* s, Py_ssize_t i, double* qp, double* root,
                            double salpha, bint carried, double* qi_out, double* bm_out,
                            double* num, double* denf) noexcept nogil:
    """Coordinate i of _step_rmsprop (the real step, operation for operation) and the
    pieces of its free step (docs/balance_laws.md (8.4)): q_i, buffer x momentum,
    num = g^free (momentum) or -lr g^free, denf = root_f + eps with
    root_f = sqrt(alpha) sqrt(square_avg_i) where the free square average is
    alpha square_avg_i exactly (k = 0, not centered: ``carried``; the root is root[i],
    the real step's root of the step before), else its own sqrt as before."""
    cdef double lr = s.hp[0], alpha = s.hp[1], eps = s.hp[2], wd = s.hp[3]
    cdef double mom = s.hp[4], oma = 1.0 - s.hp[1]
    cdef bint centered = s.hp[5] != 0.0
    cdef double* sq = s.vec
    cdef double* buf = s.vec + s.d
    cdef double* ga = s.vec + 2 * s.d
    cdef double qi, gi, gf, sqa, sqf, avg, rootf, gai, gaf, bm = 0.0
    qi = _l2_pair(s, i, wd, qp, &gi, &gf)
    if carried:
        rootf = salpha * root[i]
    sqa = sq[i] * alpha
    sq[i] = sqa + (oma * gi) * gi
    if centered:
        sqf = sqa + (oma * gf) * gf
        gai = ga[i]
        ga[i] = _lerp(gai, gi, oma)
        gaf = _lerp(gai, gf, oma)
        avg = sqrt(sq[i] + (-1.0 * ga[i]) * ga[i])
        rootf = sqrt(sqf + (-1.0 * gaf) * gaf)
    else:
        if not carried:
            sqf = sqa + (oma * gf) * gf
            rootf = sqrt(sqf)
        avg = sqrt(sq[i])
        root[i] = avg                     # sqrt(square_avg_{n+1}): the next step's root
    avg = avg + eps
    if mom > 0.0:
        bm = buf[i] * mom
        buf[i] = bm + gi / avg
        s.q[i] = qi + (-lr) * buf[i]
        num[0] = gf
    else:
        s.q[i] = qi + ((-lr) * gi) / avg
        num[0] = (-lr) * gf
    qi_out[0] = qi
    bm_out[0] = bm
    denf[0] = rootf + eps


cdef inline void _rms_plain_pass(RunSpec* s, _rdp qp, _rdp root, _rdp num, _rdp denf,
                                 double salpha, bint direct) noexcept nogil:
    """The first pass of _step_rmsprop_free's plain case (not centered, no momentum): the
    real step and the free numerators num and denominators denf per coordinate, by
    _rms_coord's operations on the same operands.  ``direct`` (L2 decay): the free root
    is the root of the free square average, else the carried one.  Called with a
    constant flag: two loops without branches."""
    cdef double lr = s.hp[0], alpha = s.hp[1], eps = s.hp[2], wd = s.hp[3]
    cdef double oma = 1.0 - s.hp[1]
    cdef _rdp q = s.q
    cdef _rdp sq = s.vec
    cdef Py_ssize_t i
    cdef double qi, gi, gf, sqa, sqn, avg, rootf
    for i in range(s.d):
        qi = _l2_terms(s, i, wd, direct, qp, &gi, &gf)
        sqa = sq[i] * alpha
        sqn = sqa + (oma * gi) * gi
        sq[i] = sqn
        if direct:
            rootf = sqrt(sqa + (oma * gf) * gf)
        else:
            rootf = salpha * root[i]
        avg = sqrt(sqn)
        root[i] = avg
        q[i] = qi + ((-lr) * gi) / (avg + eps)
        num[i] = (-lr) * gf
        denf[i] = rootf + eps


cdef inline void _step_rmsprop_free(RunSpec* s, double* qp, double* qf, double* root,
                                    double* scratch) noexcept nogil:
    """_step_rmsprop with its free step (g = 0) into qf and q_n into qp
    (docs/balance_laws.md §8: the carried root, quotients in pairs); root (d) holds
    sqrt(square_avg) of the current state on entry and of the new one on exit.  Not
    centered and without momentum, in two passes (_rms_plain_pass, then
    _free_quotients; scratch: 2d), the same bits (§8, "One loop per form")."""
    cdef double lr = s.hp[0], mom = s.hp[4], salpha = sqrt(s.hp[1])
    cdef bint carried = s.hp[3] == 0.0 and s.hp[5] == 0.0
    cdef Py_ssize_t i = 0
    cdef double q0, bm0, num0, den0, q1, bm1, num1, den1, f0, f1
    s.sca[0] += 1.0
    if s.hp[5] == 0.0 and not mom > 0.0:
        if carried:
            _rms_plain_pass(s, qp, root, scratch, scratch + s.d, salpha, False)
        else:
            _rms_plain_pass(s, qp, root, scratch, scratch + s.d, salpha, True)
        _free_quotients(qp, qf, scratch, scratch + s.d, 1.0, s.d)   # q_n 1.0 = q_n
        return
    while i < s.d:
        _rms_coord(s, i, qp, root, salpha, carried, &q0, &bm0, &num0, &den0)
        if i + 1 < s.d:
            _rms_coord(s, i + 1, qp, root, salpha, carried, &q1, &bm1, &num1, &den1)
            _pair_quot(num0, den0, num1, den1, &f0, &f1)
            qf[i + 1] = q1 + (-lr) * (bm1 + f1) if mom > 0.0 else q1 + f1
        else:
            f0 = num0 / den0
        qf[i] = q0 + (-lr) * (bm0 + f0) if mom > 0.0 else q0 + f0
        i += 2


cdef inline void _adam_coord(RunSpec* s, Py_ssize_t i, double* qp, double* root,
                             double nss, double bc2_sqrt, double ibc2s, double sb2,
                             bint carried, bint one, double* qd_out, double* num,
                             double* denf) noexcept nogil:
    """Coordinate i of _step_adam (the real step, operation for operation) and the pieces
    of its free step (docs/balance_laws.md (8.2)): qd_out = q_i after decoupled decay,
    num = (-step_size) m1f, denf = root_f / sqrt(bc2) + eps formed as
    root_f * (1 / sqrt(bc2)) + eps, root_f = sqrt(beta2) sqrt(v_i) where the free
    exp_avg_sq is beta2 v_i exactly (no L2 term, no amsgrad: ``carried``; sqrt(v_i) is
    root[i], the real step's root of the step before), else sqrt of the free
    exp_avg_sq (or of its amsgrad maximum).  ``one``: sqrt(bc2) = 1.0, whose division
    and product are exact and left out (docs/balance_laws.md §9)."""
    cdef double lr = s.hp[0], b2 = s.hp[2], eps = s.hp[3], wd = s.hp[4]
    cdef bint amsgrad = s.hp[5] != 0.0, decoupled = s.hp[6] != 0.0
    cdef double* m1 = s.vec
    cdef double* m2 = s.vec + s.d
    cdef double* mx = s.vec + 2 * s.d
    cdef double qi, qd, gi, gf, wq, m1i, m1f, m2b, m2f, mxi, sf, rootf, den
    cdef double w1 = 1.0 - s.hp[1], omb2 = 1.0 - s.hp[2]
    qi = s.q[i]
    qp[i] = qi
    qd = qi
    gi = s.g[i]
    gf = 0.0
    if wd != 0.0:
        if decoupled:
            qd = qi * (1.0 - lr * wd)
        else:
            wq = wd * qi
            gi = gi + wq
            gf = gf + wq
    m1i = m1[i]
    m1[i] = _lerp(m1i, gi, w1)
    m1f = _lerp(m1i, gf, w1)
    if carried:
        rootf = sb2 * root[i]
    m2b = m2[i] * b2
    m2[i] = m2b + (omb2 * gi) * gi
    if amsgrad:
        mxi = mx[i]
        if not carried:
            m2f = m2b + (omb2 * gf) * gf
            sf = m2f if (m2f > mxi or mxi != mxi) else mxi
            rootf = sqrt(sf)
        if m2[i] > mxi or mxi != mxi:
            mx[i] = m2[i]
        sf = sqrt(mx[i])
    else:
        if not carried:
            m2f = m2b + (omb2 * gf) * gf
            rootf = sqrt(m2f)
        sf = sqrt(m2[i])
        root[i] = sf                      # sqrt(v_{n+1}): the next step's carried root
    if one:
        den = sf + eps
        denf[0] = rootf + eps
    else:
        den = sf / bc2_sqrt + eps
        denf[0] = rootf * ibc2s + eps
    s.q[i] = qd + (nss * m1[i]) / den
    qd_out[0] = qd
    num[0] = nss * m1f


cdef extern from *:
    """
    #define NC_PAIR_LO 0x1p-1022
    #define NC_PAIR_HI 0x1p1022
    /* (8.3) for the pairs (0, 1), (2, 3), ... of den, two pairs per vector division:
       qf_i = qp_i decay + num_i (den_j (1/(den_i den_j))), j the other of i's pair, the
       operations of _pair_quot on the same operands, element by element (correctly
       rounded whatever the vector width: the same bits).  Returns nonzero when some
       pair's product may be out of [2^-1022, 2^1022] (or NaN): the caller redoes the pairs
       that are, directly.  The test is on the product's biased exponent e (sign bit
       included): t = e - 1 and 2043 - t are both >= 0 exactly for e in 1 .. 2044, i.e. a
       positive p in [2^-1022, 2^1022); every other p (and p = 2^1022, which the caller
       then keeps) sets a sign bit of the OR.  Integer operations only: GCC turns an OR of
       vector comparisons into conditional moves. */
    typedef double nc_v2d __attribute__((vector_size(16)));
    typedef long long nc_v2l __attribute__((vector_size(16)));
    typedef unsigned long long nc_v2u __attribute__((vector_size(16)));
    static inline int nc_pair_quads(const double * __restrict den,
                                    const double * __restrict num,
                                    const double * __restrict qp, double decay,
                                    double * __restrict qf, Py_ssize_t d) {
        Py_ssize_t i;
        nc_v2l acc = {0, 0};
        int lone_ok = 1;
        for (i = 0; i + 4 <= d; i += 4) {
            nc_v2d a = {den[i], den[i + 2]}, b = {den[i + 1], den[i + 3]};
            nc_v2d p = a * b;
            nc_v2d ip = 1.0 / p;
            nc_v2d ne = {num[i], num[i + 2]}, no = {num[i + 1], num[i + 3]};
            nc_v2d qe = {qp[i], qp[i + 2]}, qo = {qp[i + 1], qp[i + 3]};
            nc_v2d fe = qe * decay + ne * (b * ip);
            nc_v2d fo = qo * decay + no * (a * ip);
            nc_v2l t = (nc_v2l)((nc_v2u)p >> 52) - 1;
            acc |= t | (2043 - t);
            qf[i] = fe[0]; qf[i + 1] = fo[0]; qf[i + 2] = fe[1]; qf[i + 3] = fo[1];
        }
        if (i + 2 <= d) {
            double p1 = den[i] * den[i + 1];
            double ip1 = 1.0 / p1;
            qf[i] = qp[i] * decay + num[i] * (den[i + 1] * ip1);
            qf[i + 1] = qp[i + 1] * decay + num[i + 1] * (den[i] * ip1);
            lone_ok = p1 >= NC_PAIR_LO && p1 <= NC_PAIR_HI;
        }
        return (acc[0] | acc[1]) < 0 || !lone_ok;
    }
    /* (9.6): one scale law on coordinates 0 .. d-1, two coordinates per vector for the
       element-wise differences and products (each correctly rounded: the bits of the
       scalar loop), each sum taking its terms one by one in coordinate order (the same
       sequence of additions); Delta_i = q1_i - q0_i stored.  out = (T, A_{n+1}, A_n,
       |Delta|^2); A_n only with need0 (else out[2] is left as it is). */
    static inline void nc_law_all(const double * __restrict q1,
                                  const double * __restrict q0,
                                  const double * __restrict qf, double * __restrict dl,
                                  Py_ssize_t d, int need0, double * __restrict out) {
        double t = 0.0, s1 = 0.0, s0 = 0.0, sd = 0.0;
        Py_ssize_t i;
        for (i = 0; i + 2 <= d; i += 2) {
            nc_v2d a = {q0[i], q0[i + 1]}, b = {q1[i], q1[i + 1]}, f = {qf[i], qf[i + 1]};
            nc_v2d x = f - a;
            nc_v2d tx = x * a;
            nc_v2d bb = b * b;
            nc_v2d y = b - a;
            nc_v2d yy = y * y;
            dl[i] = y[0];
            dl[i + 1] = y[1];
            t = t + tx[0];
            t = t + tx[1];
            s1 = s1 + bb[0];
            s1 = s1 + bb[1];
            sd = sd + yy[0];
            sd = sd + yy[1];
            if (need0) {
                nc_v2d aa = a * a;
                s0 = s0 + aa[0];
                s0 = s0 + aa[1];
            }
        }
        if (i < d) {
            double x = qf[i] - q0[i], y = q1[i] - q0[i];
            t = t + x * q0[i];
            s1 = s1 + q1[i] * q1[i];
            s0 = s0 + q0[i] * q0[i];
            dl[i] = y;
            sd = sd + y * y;
        }
        out[0] = t;
        out[1] = s1;
        if (need0)
            out[2] = s0;
        out[3] = sd;
    }
    """
    const double _PAIR_LO "NC_PAIR_LO"    # 2^-1022: the smallest normal double
    const double _PAIR_HI "NC_PAIR_HI"    # 2^1022: its reciprocal is normal
    int _pair_quads "nc_pair_quads"(const double* den, const double* num, const double* qp,
                                    double decay, double* qf, Py_ssize_t d) nogil
    void _law_all_sums_c "nc_law_all"(const double* q1, const double* q0, const double* qf,
                                      double* dl, Py_ssize_t d, int need0,
                                      double* out) nogil


cdef inline void _pair_quot(double num0, double den0, double num1, double den1,
                            double* f0, double* f1) noexcept nogil:
    """num0/den0 and num1/den1 with one division (docs/balance_laws.md (8.3)):
    1/den0 = den1 (1/(den0 den1)) and vice versa where 2^-1022 <= den0 den1 <= 2^1022
    (the product and its reciprocal are normal: a few ulps), else divided directly."""
    cdef double p = den0 * den1, ip
    if p >= _PAIR_LO and p <= _PAIR_HI:
        ip = 1.0 / p
        f0[0] = num0 * (den1 * ip)
        f1[0] = num1 * (den0 * ip)
    else:
        f0[0] = num0 / den0
        f1[0] = num1 / den1


cdef inline void _free_quotients(_crdp qp, _rdp qf, _crdp num, _crdp denf, double decay,
                                 Py_ssize_t d) noexcept nogil:
    """q^free_i = q_i decay + num_i/denf_i with the quotients of the pairs (0, 1), (2, 3),
    ... formed as _pair_quot forms them (docs/balance_laws.md (8.3)): every pair without
    a branch (two pairs per vector division), then the rare pair whose product is not
    normal divided directly, and an odd last coordinate divided directly."""
    cdef Py_ssize_t i, k
    cdef double p
    if _pair_quads(denf, num, qp, decay, qf, d):
        for k in range(d // 2):
            i = 2 * k
            p = denf[i] * denf[i + 1]
            if not (p >= _PAIR_LO and p <= _PAIR_HI):
                qf[i] = qp[i] * decay + num[i] / denf[i]
                qf[i + 1] = qp[i + 1] * decay + num[i + 1] / denf[i + 1]
    if d % 2 == 1:
        qf[d - 1] = qp[d - 1] * decay + num[d - 1] / denf[d - 1]


cdef inline void _adam_plain_pass(RunSpec* s, _rdp qp, _rdp root, _rdp num, _rdp denf,
                                  double decay, double nss, double bc2_sqrt, double ibc2s,
                                  double sb2, bint one, bint direct) noexcept nogil:
    """The first pass of _adam_plain_free: the real step and the free numerators num and
    denominators denf per coordinate, by _adam_coord's operations on the same operands
    (q_i decay is the decoupled decay's product, or q_i times 1.0 = q_i).  ``direct``
    (coupled L2 decay): the free root is the root of the free exp_avg_sq, else the
    carried one.  Called with constant flags: four loops without branches."""
    cdef double b2 = s.hp[2], eps = s.hp[3], wd = s.hp[4], w1 = 1.0 - s.hp[1]
    cdef double omb2 = 1.0 - s.hp[2]
    cdef _rdp q = s.q
    cdef _rdp m1 = s.vec
    cdef _rdp m2 = s.vec + s.d
    cdef Py_ssize_t i
    cdef double qi, gi, gf, m1i, m1n, m2b, m2n, sf, rootf
    for i in range(s.d):
        qi = _l2_terms(s, i, wd, direct, qp, &gi, &gf)
        m1i = m1[i]
        m1n = m1i + w1 * (gi - m1i)
        m1[i] = m1n
        num[i] = nss * (m1i + w1 * (gf - m1i))
        m2b = m2[i] * b2
        if direct:
            rootf = sqrt(m2b + (omb2 * gf) * gf)
        else:
            rootf = sb2 * root[i]
        m2n = m2b + (omb2 * gi) * gi
        m2[i] = m2n
        sf = sqrt(m2n)
        root[i] = sf
        if one:
            q[i] = qi * decay + (nss * m1n) / (sf + eps)
            denf[i] = rootf + eps
        else:
            q[i] = qi * decay + (nss * m1n) / (sf / bc2_sqrt + eps)
            denf[i] = rootf * ibc2s + eps


cdef inline void _adam_plain_free(RunSpec* s, _rdp qp, _rdp qf, _rdp root, _rdp num,
                                  _rdp denf, double decay, double nss, double bc2_sqrt,
                                  double ibc2s, double sb2, bint one,
                                  bint direct) noexcept nogil:
    """_step_adam_free's coordinates without amsgrad and with 1 - beta1 < 0.5 (no branch
    per coordinate), in two passes: _adam_plain_pass (vectorized by the compiler), then
    the free quotients in pairs, q^free_i = q_i decay + num_i/denf_i (_free_quotients).
    The same bits as _adam_coord's path (docs/balance_laws.md §8, "One loop per form")."""
    if direct:
        if one:
            _adam_plain_pass(s, qp, root, num, denf, decay, nss, bc2_sqrt, ibc2s, sb2, True,
                             True)
        else:
            _adam_plain_pass(s, qp, root, num, denf, decay, nss, bc2_sqrt, ibc2s, sb2, False,
                             True)
    elif one:
        _adam_plain_pass(s, qp, root, num, denf, decay, nss, bc2_sqrt, ibc2s, sb2, True,
                         False)
    else:
        _adam_plain_pass(s, qp, root, num, denf, decay, nss, bc2_sqrt, ibc2s, sb2, False,
                         False)
    _free_quotients(qp, qf, num, denf, decay, s.d)


cdef inline void _step_adam_free(RunSpec* s, double* qp, double* qf, double* root,
                                 double* scratch, _Carry* c) noexcept nogil:
    """_step_adam with its free step (g = 0) into qf and q_n into qp (docs/balance_laws.md
    §8: the free denominators from the carried root, inverted in pairs); root (d) holds
    sqrt(exp_avg_sq) of the current state on entry and of the new one on exit; scratch
    (2d) for _adam_plain_free."""
    cdef double lr = s.hp[0], b1 = s.hp[1], b2 = s.hp[2], wd = s.hp[4]
    cdef bint carried = s.hp[5] == 0.0 and not (wd != 0.0 and s.hp[6] == 0.0)
    cdef Py_ssize_t i
    cdef bint one
    cdef double step, bc1, bc2, bc2_sqrt, nss, ibc2s, sb2
    cdef double qd0, num0, den0, qd1, num1, den1, f0, f1
    s.sca[0] += 1.0
    step = s.sca[0]
    bc1 = _bias_corr(b1, step, &c.bc1)
    bc2 = _bias_corr(b2, step, &c.bc2)
    nss = -(lr / bc1) if bc1 != 1.0 else -lr            # x/1.0 = x exactly (§9)
    bc2_sqrt = sqrt(bc2) if bc2 != 1.0 else 1.0         # sqrt(1.0) = 1.0 exactly
    one = bc2_sqrt == 1.0
    ibc2s = 1.0 / bc2_sqrt if not one else 1.0
    sb2 = c.sb2                           # sqrt(beta2), once per run
    if s.hp[5] == 0.0 and 1.0 - b1 < 0.5:          # no amsgrad, the first lerp form
        _adam_plain_free(s, qp, qf, root, scratch, scratch + s.d,
                         1.0 - lr * wd if (wd != 0.0 and s.hp[6] != 0.0) else 1.0, nss,
                         bc2_sqrt, ibc2s, sb2, one, not carried)
        return
    i = 0
    while i + 1 < s.d:
        _adam_coord(s, i, qp, root, nss, bc2_sqrt, ibc2s, sb2, carried, one, &qd0, &num0,
                    &den0)
        _adam_coord(s, i + 1, qp, root, nss, bc2_sqrt, ibc2s, sb2, carried, one, &qd1,
                    &num1, &den1)
        _pair_quot(num0, den0, num1, den1, &f0, &f1)
        qf[i] = qd0 + f0
        qf[i + 1] = qd1 + f1
        i += 2
    if i < s.d:
        _adam_coord(s, i, qp, root, nss, bc2_sqrt, ibc2s, sb2, carried, one, &qd0, &num0,
                    &den0)
        qf[i] = qd0 + num0 / den0


cdef inline double _part_norm2(RunSpec* s, Py_ssize_t p, double wd) noexcept nogil:
    cdef Py_ssize_t k, i
    cdef double gi, n2 = 0.0
    for k in range(s.pptr[p], s.pptr[p + 1]):
        i = s.pidx[k]
        gi = s.g[i]
        if wd != 0.0:
            gi = gi + wd * s.q[i]
        n2 = n2 + gi * gi
    return n2


cdef inline void _init_scalar_rmsprop(RunSpec* s) noexcept nogil:
    """G_P of the first step: G0, or |d_P|^2 of the first step's d = g + wd q."""
    cdef Py_ssize_t p
    cdef double G0 = s.hp[3]
    for p in range(s.npart):
        s.sca[1 + p] = _part_norm2(s, p, s.hp[4]) if G0 != G0 else G0
    s.sca[0] = 1.0


cdef inline void _step_scalar_rmsprop(RunSpec* s) noexcept nogil:
    """The paper's RMSProp (Sec. 4): one scalar G per part P of the partition,
    q_P <- q_P - lr d_P / sqrt(G_P + eps), then G_P <- rho G_P + (1 - rho)|d_P|^2.
    The first nproj = hp[5] parts (the scale blocks, with ``project=True``) are then
    divided by their norm: the paper's RMSProp on unit-norm weight rows.
    G must have been initialised (_init_scalar_rmsprop) before the first step."""
    cdef double lr = s.hp[0], rho = s.hp[1], eps = s.hp[2], wd = s.hp[4]
    cdef Py_ssize_t nproj = <Py_ssize_t> s.hp[5]
    cdef Py_ssize_t p, k, i
    cdef double gi, n2, scale, norm2
    cdef double* G = s.sca + 1
    for p in range(s.npart):
        n2 = _part_norm2(s, p, wd)
        scale = lr / sqrt(G[p] + eps)
        norm2 = 0.0
        for k in range(s.pptr[p], s.pptr[p + 1]):
            i = s.pidx[k]
            gi = s.g[i]
            if wd != 0.0:
                gi = gi + wd * s.q[i]
            s.q[i] = s.q[i] - scale * gi
            norm2 = norm2 + s.q[i] * s.q[i]
        if p < nproj and norm2 > 0.0:
            # a zero row has no direction: left as is (the loss is then undefined anyway)
            norm2 = sqrt(norm2)
            for k in range(s.pptr[p], s.pptr[p + 1]):
                i = s.pidx[k]
                s.q[i] = s.q[i] / norm2
        G[p] = rho * G[p] + (1.0 - rho) * n2


cdef inline void _step_mirror(RunSpec* s) noexcept nogil:
    """grad h(q_{n+1}) = grad h(q_n) - lr (g_n + wd q_n) for a separable mirror map h."""
    cdef double lr = s.hp[0], wd = s.hp[1], p = s.hp[3]
    cdef int kind = <int> s.hp[2]
    cdef double* D = s.vec
    cdef Py_ssize_t i
    cdef double di, y, a
    for i in range(s.d):
        di = s.g[i]
        if wd != 0.0:
            di = di + wd * s.q[i]
        if kind == 0:
            s.q[i] = s.q[i] - lr * di
        elif kind == 1:
            s.q[i] = s.q[i] - lr * di / D[i]
        elif kind == 2:
            a = fabs(s.q[i])
            y = pow(a, p - 1.0)
            if s.q[i] < 0.0:
                y = -y
            y = y - lr * di
            a = pow(fabs(y), 1.0 / (p - 1.0))
            s.q[i] = -a if y < 0.0 else a
        else:
            s.q[i] = s.q[i] * exp(-lr * di)


cdef inline void _apply_step(RunSpec* s, _Carry* c) noexcept nogil:
    if s.kind == RULE_SGD:
        _step_sgd(s, NULL, NULL)
    elif s.kind == RULE_RMSPROP:
        _step_rmsprop(s)
    elif s.kind == RULE_ADAM:
        _step_adam(s, c)
    elif s.kind == RULE_SCALAR_RMSPROP:
        _step_scalar_rmsprop(s)
    else:
        _step_mirror(s)


# ---------------------------------------------------------------------------------------
# Noether charges and exact discrete balance laws (docs/balance_laws.md)
#
# For a symmetry with generator xi, every rule moves the charge by the one-step transfer
# <Delta_{n+1}, xi(q_n)>, Delta_{n+1} = q_{n+1} - q_n.  The rule's balance law says what
# that transfer is *without* the current gradient: the "free" step, i.e. the same rule,
# from the same state, with g_n = 0 (inertia of the buffers + weight decay).  For every rule
# whose update is linear in g_n along xi (SGD with momentum/dampening/nesterov, the scalar
# RMSProp on its blocks) the difference is -lr*c_n*<g_n, xi(q_n)>, which the symmetry makes
# zero: the law is exact, and equals the closed forms of SPEC §1.1 (derived and tested).
# For per-coordinate preconditioners (RMSprop, Adam) and non-Euclidean mirror maps the
# difference is the measured kinetic symmetry breaking of the rule.  Per family:
#   scale/rescale:  (A_{n+1} - A_n - |Delta_{n+1}|^2_xi) - 2 T_n = 0,  A = <q, xi(q)>
#   translation:    (C_{n+1} - C_n) - T_n = 0,                         C = <q, n>
#   rotation:       L_{n+1} - T_n = 0,                L_{n+1} = <q_{n+1}, Omega q_n>
# with T_n = <Delta^free_{n+1}, xi(q_n)>.  Charges recorded at row n: the moment (A, C, or
# L_n) and J_n = <Delta_n, xi(q_n)>.

cdef inline void _omega_q(ChargeSpec* cs, Py_ssize_t j, const double* q) noexcept nogil:
    """om_q[block j] = Omega_j q_B (rotation symmetries only)."""
    cdef Py_ssize_t a, b, k0 = cs.ptr1[j], nbk = cs.ptr1[j + 1] - cs.ptr1[j]
    cdef const double* om = cs.omega + cs.optr[j]
    cdef double acc
    for a in range(nbk):
        acc = 0.0
        for b in range(nbk):
            acc = acc + om[a * nbk + b] * q[cs.idx1[k0 + b]]
        cs.om_q[k0 + a] = acc


cdef inline double _xi_dot(ChargeSpec* cs, Py_ssize_t j, const double* x, const double* y,
                           const double* q) noexcept nogil:
    """<x - y, xi_j(q)> (y may be NULL: <x, xi_j(q)>); rotation uses om_q = Omega q."""
    cdef Py_ssize_t k, i
    cdef int fam = cs.fam[j]
    cdef double acc = 0.0, xi
    for k in range(cs.ptr1[j], cs.ptr1[j + 1]):
        i = cs.idx1[k]
        xi = x[i] - (y[i] if y != NULL else 0.0)
        if fam == FAM_TRANSLATION:
            acc = acc + xi * cs.dirn[k]
        elif fam == FAM_ROTATION:
            acc = acc + xi * cs.om_q[k]
        else:
            acc = acc + xi * q[i]
    if fam == FAM_RESCALE:
        for k in range(cs.ptr2[j], cs.ptr2[j + 1]):
            i = cs.idx2[k]
            xi = x[i] - (y[i] if y != NULL else 0.0)
            acc = acc - xi * q[i]
    return acc


cdef inline void _charges_prepare(RunSpec* s) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(s.cs.nsym):
        if s.cs.fam[j] == FAM_ROTATION:
            _omega_q(s.cs, j, s.q)


cdef inline void _charges_record(RunSpec* s) noexcept nogil:
    """Moment, charge J_n = <Delta_n, xi(q_n)> and last residual at the current row."""
    cdef ChargeSpec* cs = s.cs
    cdef Py_ssize_t j, row = s.n_rec * cs.nsym
    cdef double J
    for j in range(cs.nsym):
        J = _xi_dot(cs, j, cs.last_delta, NULL, s.q)
        cs.rec_charge[row + j] = J
        if cs.fam[j] == FAM_ROTATION:
            cs.rec_moment[row + j] = J          # L_n = <q_n, Omega q_{n-1}> = J_n
        elif cs.fam[j] == FAM_TRANSLATION:
            cs.rec_moment[row + j] = _xi_dot(cs, j, s.q, NULL, s.q)
        else:
            cs.rec_moment[row + j] = _xi_dot(cs, j, s.q, NULL, s.q)
        cs.rec_resid[row + j] = cs.last_res[j]
        cs.rec_metric[row + j] = cs.last_metric[j]


cdef inline void _charges_before(RunSpec* s, _Carry* c) noexcept nogil:
    """Save q_n and run the free step (g_n = 0) on copies of q and the rule state (the
    rules without a fused free step: ScalarRMSProp, MirrorDescent; T_j is formed by
    _charges_after)."""
    cdef ChargeSpec* cs = s.cs
    cdef RunSpec t = s[0]
    memcpy(cs.q_prev, s.q, s.d * sizeof(double))
    memcpy(cs.q_free, s.q, s.d * sizeof(double))
    if cs.nvec > 0:
        memcpy(cs.vec_free, s.vec, cs.nvec * s.d * sizeof(double))
    if cs.nsca > 0:
        memcpy(cs.sca_free, s.sca, cs.nsca * sizeof(double))
    t.q = cs.q_free
    t.g = cs.zeros
    t.vec = cs.vec_free
    t.sca = cs.sca_free
    _apply_step(&t, c)


cdef inline void _apply_step_free(RunSpec* s, _Carry* c) noexcept nogil:
    """The step with its free step fused (SGD, RMSprop, Adam; docs/balance_laws.md §8):
    cs.q_prev = q_n, cs.q_free = the free step (T_j is formed by _charges_after).
    Adam's and RMSprop's vec_free hold nvec = 3 rows of d: the carried root, then the
    plain forms' scratch (SGD's, nvec = 1, receives -buf_n on _run_steps' late path,
    (9.4))."""
    cdef ChargeSpec* cs = s.cs
    if s.kind == RULE_SGD:
        _step_sgd_free(s, cs.q_prev, cs.q_free, NULL)
    elif s.kind == RULE_RMSPROP:
        _step_rmsprop_free(s, cs.q_prev, cs.q_free, cs.vec_free, cs.vec_free + s.d)
    else:
        _step_adam_free(s, cs.q_prev, cs.q_free, cs.vec_free, cs.vec_free + s.d, c)


cdef inline double _mirror_grad(RunSpec* s, Py_ssize_t i, double x) noexcept nogil:
    """∇h(x)_i of the mirror map of a MirrorDescent rule (hp[2]: map, hp[3]: p)."""
    cdef int kind = <int> s.hp[2]
    cdef double a
    if kind == 0:
        return x
    if kind == 1:
        return s.vec[i] * x
    if kind == 2:
        a = pow(fabs(x), s.hp[3] - 1.0)
        return -a if x < 0.0 else a
    return 1.0 + log(x)


cdef inline double _mirror_hess(RunSpec* s, Py_ssize_t i, double x) noexcept nogil:
    """(∇²h(x))_ii of the mirror map."""
    cdef int kind = <int> s.hp[2]
    if kind == 0:
        return 1.0
    if kind == 1:
        return s.vec[i]
    if kind == 2:
        return (s.hp[3] - 1.0) * pow(fabs(x), s.hp[3] - 2.0)
    return 1.0 / x


cdef inline double _xi_at(ChargeSpec* cs, Py_ssize_t j, Py_ssize_t k, const double* q,
                          bint second) noexcept nogil:
    """Component k (CSR position) of ξ_j(q): second=True for the rescale's second block."""
    cdef int fam = cs.fam[j]
    if second:
        return -q[cs.idx2[k]]
    if fam == FAM_TRANSLATION:
        return cs.dirn[k]
    if fam == FAM_ROTATION:
        return cs.om_q[k]
    return q[cs.idx1[k]]


cdef inline void _mirror_law(RunSpec* s, Py_ssize_t j, double* R, double* sc,
                             double* metric) noexcept nogil:
    """Mirror descent's exact dual law (docs/balance_laws.md (4.1)),
    ⟨∇h(q_{n+1}) − ∇h(q^free_{n+1}), ξ(q_n)⟩ = 0, and its metric term
    ⟨∇h(q_{n+1}) − ∇h(q_n) − ∇²h(q_n)Δ_{n+1}, ξ(q_n)⟩ (Eq. 9, O(η²))."""
    cdef ChargeSpec* cs = s.cs
    cdef Py_ssize_t k, i, part
    cdef const Py_ssize_t* ptr
    cdef const Py_ssize_t* idx
    cdef double xi, a1, af, a0
    R[0] = 0.0
    sc[0] = 0.0
    metric[0] = 0.0
    for part in range(2 if cs.fam[j] == FAM_RESCALE else 1):
        ptr = cs.ptr2 if part == 1 else cs.ptr1
        idx = cs.idx2 if part == 1 else cs.idx1
        for k in range(ptr[j], ptr[j + 1]):
            i = idx[k]
            xi = _xi_at(cs, j, k, cs.q_prev, part == 1)
            a1 = _mirror_grad(s, i, s.q[i])
            af = _mirror_grad(s, i, cs.q_free[i])
            a0 = _mirror_grad(s, i, cs.q_prev[i])
            R[0] += (a1 - af) * xi
            sc[0] += (fabs(a1) + fabs(af)) * fabs(xi)
            metric[0] += (a1 - a0 - _mirror_hess(s, i, cs.q_prev[i])
                          * (s.q[i] - cs.q_prev[i])) * xi


cdef inline void _scale_sums(const Py_ssize_t* ptr, const Py_ssize_t* idx, Py_ssize_t j,
                             const double* q1, const double* q0, const double* qf,
                             bint second, bint need0, double* T, double* a1, double* a0,
                             double* dd) noexcept nogil:
    """Over block j of the CSR (ptr, idx), in one pass: T +/-= <q^free - q0, q0> (minus
    for the rescale's second block), |q1|^2, |q0|^2, |q1 - q0|^2 (the last three from
    0).  Each sum takes its terms in the block's order, as the separate passes did
    (_xi_dot, then three sums): the same bits, four independent chains in one loop
    (docs/balance_laws.md §9).  ``need0`` false: |q0|^2 is not summed (a0 untouched; the
    caller has it from the step before, (9.5))."""
    cdef Py_ssize_t k, i
    cdef double x, t = T[0], s1 = 0.0, s0 = 0.0, sd = 0.0
    if need0:
        for k in range(ptr[j], ptr[j + 1]):
            i = idx[k]
            x = qf[i] - q0[i]
            if second:
                t = t - x * q0[i]
            else:
                t = t + x * q0[i]
            s1 = s1 + q1[i] * q1[i]
            s0 = s0 + q0[i] * q0[i]
            x = q1[i] - q0[i]
            sd = sd + x * x
        a0[0] = s0
    else:
        for k in range(ptr[j], ptr[j + 1]):
            i = idx[k]
            x = qf[i] - q0[i]
            if second:
                t = t - x * q0[i]
            else:
                t = t + x * q0[i]
            s1 = s1 + q1[i] * q1[i]
            x = q1[i] - q0[i]
            sd = sd + x * x
    T[0] = t
    a1[0] = s1
    dd[0] = sd


cdef inline void _law_commit(ChargeSpec* cs, Py_ssize_t j, Py_ssize_t n, double R,
                             double sc) noexcept nogil:
    """Law j's relative residual |R|/sc for the step n -> n+1 (1.0 for a non-finite one):
    the last and the worst."""
    cdef double rel
    if sc > 0.0:
        rel = fabs(R) / sc
    else:
        rel = 0.0 if R == 0.0 else 1.0
    if rel != rel:
        rel = 1.0
    cs.last_res[j] = rel
    if rel > cs.worst[j]:
        cs.worst[j] = rel
        cs.worst_step[j] = n


cdef inline void _law_all_sums(RunSpec* s, bint carried, double* dl,
                               double* sums) noexcept nogil:
    """The sums of _charges_after for one scale law on coordinates 0 .. d-1 in order (the
    layout _run_steps tests once per run), into sums = (T_n, A_{n+1}, A_n, |Delta|^2):
    the same sums in the same order as _scale_sums over the block, indexed directly, with
    Delta_{n+1} = q_{n+1} - q_n stored into dl as it is formed (the value _charges_after's
    own pass stores): the same bits in one loop (nc_law_all, docs/balance_laws.md (9.6)).
    ``carried``: A_n is the step before's A_{n+1} (9.5)."""
    sums[2] = s.cs.free_transfer[0]
    _law_all_sums_c(s.q, s.cs.q_prev, s.cs.q_free, dl, s.d, not carried, sums)


cdef inline void _law_all_commit(ChargeSpec* cs, Py_ssize_t n,
                                 const double* sums) noexcept nogil:
    """The residual of _law_all_sums' law, as _charges_after forms it (9.6)."""
    cdef double t = sums[0], s1 = sums[1], s0 = sums[2], sd = sums[3], R, sc
    cs.free_transfer[0] = s1
    sc = s1 + s0 + sd
    R = (s1 - s0 - sd) - 2.0 * t
    _law_commit(cs, 0, n, R, sc + 2.0 * fabs(t))


cdef inline void _charges_after(RunSpec* s, Py_ssize_t n, bint carried) noexcept nogil:
    """Residual of each balance law for the step n -> n+1 just taken: the free transfer
    T_j = <q^free - q_n, xi_j(q_n)> and the law's sums in one pass per block
    (docs/balance_laws.md §9).  A scale symmetry's A_{n+1} is kept in
    cs.free_transfer[j]; ``carried``: it holds A_n, the step before's A_{n+1} in this
    run_loop call, which is used instead of summing |q_n|^2 again (9.5)."""
    cdef ChargeSpec* cs = s.cs
    cdef const double* q1 = s.q
    cdef const double* q0 = cs.q_prev
    cdef const double* qf = cs.q_free
    cdef Py_ssize_t j, k, i
    cdef double R, sc, a1, a0, dd, b1, b0, de, T, c1, c0, m1, m0, qq, oo, ff, x
    for i in range(s.d):
        cs.last_delta[i] = q1[i] - q0[i]
    for j in range(cs.nsym):
        if s.kind == RULE_MIRROR:
            _mirror_law(s, j, &R, &sc, &ff)
            cs.last_metric[j] = ff
            if fabs(ff) > cs.worst_metric[j]:
                cs.worst_metric[j] = fabs(ff)
        elif cs.fam[j] == FAM_SCALE or cs.fam[j] == FAM_RESCALE:
            T = 0.0
            if cs.fam[j] == FAM_SCALE and carried:
                a0 = cs.free_transfer[j]
                _scale_sums(cs.ptr1, cs.idx1, j, q1, q0, qf, False, False, &T, &a1, &a0, &dd)
            else:
                _scale_sums(cs.ptr1, cs.idx1, j, q1, q0, qf, False, True, &T, &a1, &a0, &dd)
            cs.free_transfer[j] = a1
            sc = a1 + a0 + dd
            if cs.fam[j] == FAM_RESCALE:
                _scale_sums(cs.ptr2, cs.idx2, j, q1, q0, qf, True, True, &T, &b1, &b0, &de)
                sc = sc + b1 + b0 + de
                a1 = a1 - b1
                a0 = a0 - b0
                dd = dd - de
            R = (a1 - a0 - dd) - 2.0 * T
            sc = sc + 2.0 * fabs(T)
        elif cs.fam[j] == FAM_TRANSLATION:
            T = 0.0
            c1 = 0.0
            c0 = 0.0
            m1 = 0.0
            m0 = 0.0
            for k in range(cs.ptr1[j], cs.ptr1[j + 1]):
                i = cs.idx1[k]
                T = T + (qf[i] - q0[i]) * cs.dirn[k]
                c1 = c1 + q1[i] * cs.dirn[k]
                c0 = c0 + q0[i] * cs.dirn[k]
                m1 = m1 + fabs(q1[i] * cs.dirn[k])
                m0 = m0 + fabs(q0[i] * cs.dirn[k])
            R = (c1 - c0) - T
            sc = m1 + m0 + fabs(T)
        else:
            T = 0.0
            c1 = 0.0
            qq = 0.0
            oo = 0.0
            ff = 0.0
            for k in range(cs.ptr1[j], cs.ptr1[j + 1]):
                i = cs.idx1[k]
                x = qf[i] - q0[i]
                T = T + x * cs.om_q[k]
                c1 = c1 + q1[i] * cs.om_q[k]
                qq = qq + q1[i] * q1[i]
                oo = oo + cs.om_q[k] * cs.om_q[k]
                ff = ff + x * x
            R = c1 - T
            sc = (sqrt(qq) + sqrt(ff)) * sqrt(oo)
        _law_commit(cs, j, n, R, sc)


cdef inline void _block_sq(RunSpec* s, const double* x, double* out) noexcept nogil:
    """out[b] = |x_B|^2 for every recorded block b."""
    cdef Py_ssize_t b, k
    cdef double acc, v
    for b in range(s.nb):
        acc = 0.0
        for k in range(s.bptr[b], s.bptr[b + 1]):
            v = x[s.bidx[k]]
            acc = acc + v * v
        out[b] = acc


cdef inline void _record(RunSpec* s, double f, double g2) noexcept nogil:
    cdef Py_ssize_t r = s.n_rec * s.nb
    if s.rec_q != NULL:
        memcpy(s.rec_q + s.n_rec * s.d, s.q, s.d * sizeof(double))
    s.rec_loss[s.n_rec] = f
    s.rec_g2[s.n_rec] = g2
    _block_sq(s, s.q, s.rec_bn2 + r)
    if s.rec_bg2 != NULL:
        _block_sq(s, s.g, s.rec_bg2 + r)
    if s.rec_bd2 != NULL:
        _block_sq(s, s.d_last, s.rec_bd2 + r)
    s.n_rec += 1


cdef inline double _nan_probe(const double* x, Py_ssize_t n) noexcept nogil:
    """0.0 if every x_i is finite, NaN otherwise (x_i * 0 is NaN exactly for NaN and inf);
    four independent accumulators, so the check costs throughput, not add latency."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t i, m = n - n % 4
    for i in range(0, m, 4):
        a0 = a0 + x[i] * 0.0
        a1 = a1 + x[i + 1] * 0.0
        a2 = a2 + x[i + 2] * 0.0
        a3 = a3 + x[i + 3] * 0.0
    for i in range(m, n):
        a0 = a0 + x[i] * 0.0
    return (a0 + a1) + (a2 + a3)


cdef inline int _grad_checked(RunSpec* s, double* f, double* g2, bint want_g2,
                              bint check_g) noexcept nogil:
    """Evaluate the potential; 0 if loss and gradient are finite, else a status code.
    |g|² (a d-long chain of dependent adds) is formed only for a recorded row
    (``want_g2``); the finiteness check does not need it.  ``check_g`` false: the
    gradient is not checked here (_run_steps checks it after an SGD step that met a
    non-finite q_{n+1}, docs/balance_laws.md (9.4)); the loss is."""
    cdef Py_ssize_t i
    cdef double acc = 0.0, nan_probe = 0.0
    f[0] = s.fn(s.q, s.g, s.d, s.params)
    if want_g2:
        for i in range(s.d):
            acc = acc + s.g[i] * s.g[i]
    if check_g:
        nan_probe = _nan_probe(s.g, s.d)        # NaN iff some g_i is NaN or inf
    g2[0] = acc
    if not isfinite(f[0]):
        return NC_ST_NONFINITE_LOSS
    if nan_probe != 0.0 or nan_probe != nan_probe:
        return NC_ST_NONFINITE_GRAD
    return NC_ST_OK


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef int _interrupted(RunSpec* s) noexcept nogil:
    """Called every 64 steps: see poll_signals."""
    return poll_signals(&s.next_poll)


cdef int poll_signals(double* next_poll) noexcept nogil:
    """Look at the clock; every ~50 ms take the GIL and run Python's signal handlers.
    Returns 1 if one raised (the exception is held for reraise_signal)."""
    cdef double t = _now()
    cdef int r = 0
    if t < next_poll[0]:
        return 0
    next_poll[0] = t + 0.05
    with gil:
        r = _PyErr_CheckSignals()
        if r != 0:
            # hold the exception aside: Python code runs between here and _reraise (e.g.
            # the bit generator lock's __exit__), which must not see it set
            PyErr_Fetch(&_sig_exc[0], &_sig_exc[1], &_sig_exc[2])
    return 1 if r != 0 else 0


# the exception a signal handler raised during run_loop (handlers run in the main thread
# only, so one slot suffices); owned references, handed back by _reraise
cdef PyObject* _sig_exc[3]


cdef int reraise_signal() except -1:
    """Raise the exception a signal handler raised during a polled loop."""
    PyErr_Restore(_sig_exc[0], _sig_exc[1], _sig_exc[2])
    _sig_exc[0] = _sig_exc[1] = _sig_exc[2] = NULL
    return -1


cdef void run_loop(RunSpec* s) noexcept nogil:
    """Run ``s.steps`` steps (``_run_steps``); then, when ``s.d_last`` is given without
    ``rec_bd2`` (which writes it at every step), write the last step's Δ = q − q_old into
    it, once, if a step was taken (else it keeps the Δ it came in with: a resumed run of
    0 steps carries its state's Δ on).  q_old is copied before the last step only, so a
    run stopped earlier by a non-finite value (a diverged run, which cannot be resumed)
    gets NaN there rather than paying a copy of q at every step."""
    cdef Py_ssize_t i, taken
    _run_steps(s)
    if s.d_last == NULL or s.rec_bd2 != NULL or s.status == NC_ST_INTERRUPTED:
        return
    # steps applied: a non-finite parameter is met after its update (as _train._result)
    taken = (s.steps if s.status == NC_ST_OK else
             s.stop_step + 1 if s.status == NC_ST_NONFINITE_PARAMS else s.stop_step)
    if taken > 0:
        for i in range(s.d):
            # q_old holds q before step steps − 1: exact when that step was the last taken
            s.d_last[i] = s.q[i] - s.q_old[i] if taken == s.steps else NAN


cdef enum:
    _LATE_MAX = 64                        # the largest d whose SGD state is saved on the stack


cdef inline bint _late_grad_undo(RunSpec* s, const double* save_q, const double* save_b,
                                 double sca0) noexcept nogil:
    """After an SGD step that met a non-finite q_{n+1}: was g_n non-finite?  Then the
    step is undone (q_n, buf_n and has_buffer restored from what the step saved, -q_n
    and -buf_n: the same bits) and True returned, the state being what the early check
    would have left (docs/balance_laws.md (9.4)); else False (non-finite parameters
    after the update)."""
    cdef double probe = _nan_probe(s.g, s.d)
    cdef Py_ssize_t i
    if probe == 0.0:
        return False
    if s.cs != NULL:                       # the fused step keeps q_n in cs.q_prev and
        memcpy(s.q, s.cs.q_prev, s.d * sizeof(double))
        save_b = s.cs.vec_free             # -buf_n in the charge scratch
    else:
        for i in range(s.d):
            s.q[i] = -save_q[i]            # -(-x) = x bitwise: negation flips the sign bit
    if s.hp[1] != 0.0:                     # momentum: the buffer was read and rewritten
        for i in range(s.d):
            s.vec[i] = -save_b[i]
    s.sca[0] = sca0
    return True


cdef void _run_steps(RunSpec* s) noexcept nogil:
    """_run_body, then the ChargeSpec's Δ buffer put back where the caller keeps it: the
    direct law pass (9.8) writes each step's Δ into a spare buffer (``om_q``, unused
    without a rotation law) and swaps the two once the step is known finite."""
    cdef double* dl = NULL
    cdef double* spare = NULL
    if s.cs != NULL:
        dl = s.cs.last_delta
        spare = s.cs.om_q
    _run_body(s)
    if s.cs != NULL and s.cs.last_delta != dl:
        memcpy(dl, s.cs.last_delta, s.d * sizeof(double))
        s.cs.last_delta = dl
        s.cs.om_q = spare


cdef void _run_body(RunSpec* s) noexcept nogil:
    cdef Py_ssize_t n, i, until_record = 0     # countdown to the next recorded row
    cdef double f, g2, probe, sca0
    cdef int st
    # the late gradient check of SGD (docs/balance_laws.md (9.4)): q_n and buf_n saved
    # by the step (on the stack without charges, d <= _LATE_MAX; in the charge scratch
    # with them), so a non-finite g_n found after the step is undone exactly
    cdef double save_q[_LATE_MAX]
    cdef double save_b[_LATE_MAX]
    cdef bint late = (s.kind == RULE_SGD and s.rec_bd2 == NULL
                      and (s.cs != NULL or s.d <= _LATE_MAX))
    cdef bint late_n, bad
    cdef double sums[4]
    cdef double* swap
    cdef unsigned long long nf
    cdef bint mini = s.batch_size > 0 and s.rng != NULL
    cdef bint fused = (s.kind == RULE_SGD or s.kind == RULE_RMSPROP
                       or s.kind == RULE_ADAM)
    cdef bint law_all = False, rot = False  # one scale law on q_0 .. q_{d-1} in order
    cdef _Carry carry
    if s.cs != NULL:
        for i in range(s.cs.nsym):
            rot = rot or s.cs.fam[i] == FAM_ROTATION
        law_all = (s.cs.nsym == 1 and s.cs.fam[0] == FAM_SCALE and s.kind != RULE_MIRROR
                   and s.cs.ptr1[0] == 0 and s.cs.ptr1[1] == s.d)
        for i in range(s.d):
            law_all = law_all and s.cs.idx1[i] == i
    carry.bc1.one = False
    carry.bc1.at = NAN                     # no step equals it: the first step calls pow
    carry.bc2.one = False
    carry.bc2.at = NAN
    carry.sb2 = sqrt(s.hp[2]) if s.kind == RULE_ADAM else 0.0
    s.status = NC_ST_OK
    s.stop_step = -1
    s.n_rec = 0
    if s.check_signals:
        s.next_poll = _now() + 0.05
    if s.cs != NULL and s.kind == RULE_ADAM:
        for i in range(s.d):               # the carried root sqrt(exp_avg_sq) (§8)
            s.cs.vec_free[i] = sqrt(s.vec[s.d + i])
    elif s.cs != NULL and s.kind == RULE_RMSPROP:
        for i in range(s.d):               # the carried root sqrt(square_avg) (§8)
            s.cs.vec_free[i] = sqrt(s.vec[i])
    for n in range(s.steps):
        if s.check_signals and (n & 63) == 63 and _interrupted(s):
            s.status = NC_ST_INTERRUPTED
            s.stop_step = n
            return
        if mini:
            _draw_batch(s.rng, s.perm, s.n_data, s.batch_size)
            set_batch(s.params, s.perm, s.batch_size)
        # a recorded row is written before the step: its gradient is checked first
        late_n = late and until_record != 0
        st = _grad_checked(s, &f, &g2, until_record == 0, not late_n)
        if st != NC_ST_OK:
            s.status = st
            s.stop_step = n
            return
        if s.kind == RULE_SCALAR_RMSPROP and s.sca[0] == 0.0:
            _init_scalar_rmsprop(s)
        if rot:
            _charges_prepare(s)
        if until_record == 0:                    # n % record_every == 0, no division
            until_record = s.record_every
            if s.cs != NULL:
                _charges_record(s)
            _record(s, f, g2)
        until_record -= 1
        # q_n, for Δ_n = q_{n+1} − q_n: at every step for the per-block |Δ_n|² rows,
        # else only before the last step (the state carries the last Δ; one copy per run)
        if s.rec_bd2 != NULL or (s.d_last != NULL and n == s.steps - 1):
            memcpy(s.q_old, s.q, s.d * sizeof(double))
        sca0 = s.sca[0] if late_n else 0.0
        nf = 0
        if late_n:                       # SGD: q_{n+1}'s finiteness formed by the step
            if s.cs == NULL:
                nf = _step_sgd(s, save_q, save_b)
            else:
                nf = _step_sgd_free(s, s.cs.q_prev, s.cs.q_free, s.cs.vec_free)
        elif s.cs == NULL:
            _apply_step(s, &carry)
        elif fused:
            _apply_step_free(s, &carry)   # the step and its free step in one pass
        else:
            _charges_before(s, &carry)
            _apply_step(s, &carry)
        if s.rec_bd2 != NULL:
            for i in range(s.d):
                s.d_last[i] = s.q[i] - s.q_old[i]
        if late_n:
            bad = (nf >> 63) != 0
        elif law_all:
            # (9.8): the law's sums first, Δ into the spare buffer; a finite A_{n+1} =
            # |q_{n+1}|² proves every q_{n+1,i} finite, else the probe decides
            _law_all_sums(s, n > 0, s.cs.om_q, sums)
            bad = False
            if not isfinite(sums[1]):
                probe = _nan_probe(s.q, s.d)
                bad = probe != 0.0 or probe != probe
        else:
            probe = _nan_probe(s.q, s.d)
            bad = probe != 0.0 or probe != probe
        if bad:
            if late_n and _late_grad_undo(s, save_q, save_b, sca0):
                s.status = NC_ST_NONFINITE_GRAD
                s.stop_step = n
                return
            s.status = NC_ST_NONFINITE_PARAMS
            s.stop_step = n
            return
        if law_all:
            if late_n:
                _law_all_sums(s, n > 0, s.cs.last_delta, sums)
            else:                        # Δ_{n+1} is in the spare buffer: swap them
                swap = s.cs.last_delta
                s.cs.last_delta = s.cs.om_q
                s.cs.om_q = swap
            _law_all_commit(s.cs, n, sums)
        elif s.cs != NULL:
            _charges_after(s, n, n > 0)     # A_n carried from the step before (9.5)
    if s.steps % s.record_every == 0 and not s.skip_terminal:
        # the terminal state: evaluated on the full data set, consuming no draws, so a run
        # resumed from here sees exactly the random stream an unbroken run would (a scan's
        # intermediate chunk skips it: its next chunk evaluates the same q as its first
        # in-loop state, and the row would be dropped)
        if s.n_data > 0:
            set_batch(s.params, NULL, 0)
        st = _grad_checked(s, &f, &g2, True, True)
        if st != NC_ST_OK:
            s.status = st
            s.stop_step = s.steps
            return
        if s.cs != NULL:
            _charges_prepare(s)
            _charges_record(s)
        _record(s, f, g2)


# ---------------------------------------------------------------------------------------
# Python entry point (facade-only: inputs were validated by noether_core/_train.py)

cdef class _Scratch:
    """malloc'ed buffers of one run, freed together (GIL held)."""
    cdef list ptrs

    def __cinit__(self):
        self.ptrs = []

    cdef double* doubles(self, Py_ssize_t n, bint zero=False) except NULL:
        cdef double* p = <double*> (calloc(n if n > 0 else 1, sizeof(double)) if zero
                                    else malloc((n if n > 0 else 1) * sizeof(double)))
        if p == NULL:
            raise MemoryError(f"scratch of {n} doubles")
        self.ptrs.append(<size_t> p)
        return p

    def __dealloc__(self):
        cdef size_t p
        for p in self.ptrs:
            free(<void*> p)


cdef inline double* _ptr(double[::1] a, double* empty) noexcept:
    """First element of a 1-D buffer, or ``empty`` for a zero-length one."""
    return &a[0] if a.shape[0] > 0 else empty


cdef inline const double* _cptr(const double[::1] a, const double* empty) noexcept:
    return &a[0] if a.shape[0] > 0 else empty


cdef inline const Py_ssize_t* _iptr(const Py_ssize_t[::1] a,
                                    const Py_ssize_t* empty) noexcept:
    return &a[0] if a.shape[0] > 0 else empty


cdef void _fill_rule(RunSpec* s, object rule, double* dummy, Py_ssize_t* dummy_i) except *:
    """The rule's part of a RunSpec, from a _bridge.RuleInputs."""
    cdef const double[::1] hp = rule.hp
    cdef double[:, ::1] vec = rule.vec
    cdef double[::1] sca = rule.sca
    cdef const Py_ssize_t[::1] pptr = rule.pptr
    cdef const Py_ssize_t[::1] pidx = rule.pidx
    s.kind = rule.kind
    s.hp = &hp[0]
    s.vec = &vec[0, 0] if vec.shape[0] > 0 else dummy
    s.sca = _ptr(sca, dummy)
    s.pptr = &pptr[0]
    s.pidx = _iptr(pidx, dummy_i)
    s.npart = pptr.shape[0] - 1


cdef void _fill_record(RunSpec* s, object rec, _Scratch scratch, double* dummy,
                       Py_ssize_t* dummy_i) except *:
    """The recorded series of a RunSpec, from a _bridge.Recording."""
    cdef const Py_ssize_t[::1] bptr = rec.bptr
    cdef const Py_ssize_t[::1] bidx = rec.bidx
    cdef double[:, ::1] rec_q = rec.q
    cdef double[::1] rec_loss = rec.loss
    cdef double[::1] rec_g2 = rec.g2
    cdef double[:, ::1] rec_bn2 = rec.bn2
    cdef double[:, ::1] rec_bg2
    cdef double[:, ::1] rec_bd2
    cdef double[::1] d_last
    s.record_every = rec.every
    s.bptr = &bptr[0]
    s.bidx = _iptr(bidx, dummy_i)
    s.nb = bptr.shape[0] - 1
    s.rec_q = &rec_q[0, 0] if rec_q.shape[1] > 0 else NULL
    s.rec_loss = &rec_loss[0]
    s.rec_g2 = &rec_g2[0]
    s.rec_bn2 = &rec_bn2[0, 0] if rec_bn2.shape[1] > 0 else dummy
    if rec.bg2 is not None:
        rec_bg2 = rec.bg2
        if rec_bg2.shape[1] > 0:
            s.rec_bg2 = &rec_bg2[0, 0]
    if rec.d_last is not None:
        d_last = rec.d_last
        if d_last.shape[0] != s.d:
            raise ValueError(f"Recording.d_last has length {d_last.shape[0]}, the potential "
                             f"has dim {s.d}")
        s.d_last = _ptr(d_last, dummy)
        s.q_old = scratch.doubles(s.d)
    if rec.bd2 is not None:
        rec_bd2 = rec.bd2
        if rec_bd2.shape[1] > 0:
            if s.d_last == NULL:
                raise ValueError("Recording.bd2 needs Recording.d_last (the last step Δ)")
            s.rec_bd2 = &rec_bd2[0, 0]


cdef void _fill_charges(ChargeSpec* cs, object layout, object out, Py_ssize_t d,
                        Py_ssize_t nvec, Py_ssize_t nsca, _Scratch scratch, double* dummy,
                        Py_ssize_t* dummy_i) except *:
    """A ChargeSpec from a _bridge.ChargeLayout (what is tracked) and a
    _bridge.ChargeRecord (this run's outputs and carried state); nsym > 0."""
    cdef const int[::1] fam = layout.fam
    cdef const Py_ssize_t[::1] ptr1 = layout.ptr1
    cdef const Py_ssize_t[::1] idx1 = layout.idx1
    cdef const Py_ssize_t[::1] ptr2 = layout.ptr2
    cdef const Py_ssize_t[::1] idx2 = layout.idx2
    cdef const double[::1] dirn = layout.dirn
    cdef const Py_ssize_t[::1] optr = layout.optr
    cdef const double[::1] omega = layout.omega
    cdef double[::1] last_delta = out.last_delta
    cdef double[::1] last_res = out.last_res
    cdef double[::1] last_metric = out.last_metric
    cdef double[:, ::1] rec_m = out.rec_moment
    cdef double[:, ::1] rec_c = out.rec_charge
    cdef double[:, ::1] rec_r = out.rec_resid
    cdef double[:, ::1] rec_mt = out.rec_metric
    cdef double[::1] worst = out.worst
    cdef Py_ssize_t[::1] worst_step = out.worst_step
    cdef double[::1] worst_metric = out.worst_metric
    if last_delta.shape[0] != d:
        raise ValueError(f"ChargeRecord.last_delta has length {last_delta.shape[0]}, the "
                         f"potential has dim {d}")
    memset(cs, 0, sizeof(ChargeSpec))
    cs.nsym = fam.shape[0]
    cs.fam = &fam[0]
    cs.ptr1 = &ptr1[0]
    cs.idx1 = _iptr(idx1, dummy_i)
    cs.ptr2 = &ptr2[0]
    cs.idx2 = _iptr(idx2, dummy_i)
    cs.dirn = _cptr(dirn, dummy)
    cs.optr = &optr[0]
    cs.omega = _cptr(omega, dummy)
    cs.nvec = nvec
    cs.nsca = nsca
    cs.last_delta = &last_delta[0]
    cs.last_res = &last_res[0]
    cs.last_metric = &last_metric[0]
    cs.rec_metric = &rec_mt[0, 0]
    cs.worst_metric = &worst_metric[0]
    cs.rec_moment = &rec_m[0, 0]
    cs.rec_charge = &rec_c[0, 0]
    cs.rec_resid = &rec_r[0, 0]
    cs.worst = &worst[0]
    cs.worst_step = &worst_step[0]
    cs.q_prev = scratch.doubles(d)
    cs.q_free = scratch.doubles(d)
    cs.vec_free = scratch.doubles(nvec * d)
    cs.sca_free = scratch.doubles(nsca)
    cs.zeros = scratch.doubles(d, True)
    cs.om_q = scratch.doubles(idx1.shape[0])
    cs.free_transfer = scratch.doubles(cs.nsym)


def _check_csr(str what, const Py_ssize_t[::1] ptr, const Py_ssize_t[::1] idx,
               Py_ssize_t d):
    """A CSR index set (``idx[ptr[i]:ptr[i+1]]``) whose indices lie in [0, d)."""
    cdef Py_ssize_t n = idx.shape[0], m = ptr.shape[0], i
    if m < 1 or ptr[0] != 0 or ptr[m - 1] != n:
        raise ValueError(f"{what}: the pointer array must rise from 0 to len(idx) = {n}")
    for i in range(1, m):
        if ptr[i] < ptr[i - 1]:
            raise ValueError(f"{what}: the pointer array falls at entry {i}")
    for i in range(n):
        if idx[i] < 0 or idx[i] >= d:
            raise ValueError(f"{what}: indices must lie in [0, {d}) (the potential's "
                             f"dim), got {idx[i]} at position {i}")


def _check_train_entry(object rule, Potential pot, q, Py_ssize_t steps, object record,
                       object batch):
    """What train_kernel's loop trusts, checked against what its scratch is sized for
    (the facade checks it too; a direct caller of the kernel gets a ValueError, not a
    write past a buffer)."""
    cdef Py_ssize_t d = pot.d, n_rec
    if q.shape[0] != d:
        raise ValueError(f"train_kernel: q has length {q.shape[0]}, the potential has dim {d}")
    if steps < 0:
        raise ValueError(f"train_kernel: steps must be >= 0, got {steps}")
    if batch.size < 0 or batch.size > pot.n_data:
        raise ValueError(f"train_kernel: batch size {batch.size} must lie in [1, n_data="
                         f"{pot.n_data}] (or be 0: full batch)")
    if batch.size > 0 and batch.bit_generator is None:
        raise ValueError("train_kernel: a minibatch run needs a bit generator")
    _check_csr("train_kernel: the partition (RuleInputs.pptr/pidx)", rule.pptr, rule.pidx, d)
    _check_csr("train_kernel: the recorded blocks (Recording.bptr/bidx)", record.bptr,
               record.bidx, d)
    if record.every < 1:
        raise ValueError(f"train_kernel: Recording.every must be >= 1, got {record.every}")
    n_rec = steps // record.every + 1
    nb = record.bptr.shape[0] - 1
    if (record.loss.shape[0] < n_rec or record.g2.shape[0] < n_rec
            or record.q.shape[0] < n_rec or record.bn2.shape[0] < n_rec
            or (record.q.shape[1] not in (0, d)) or (record.bn2.shape[1] not in (0, nb))
            or any(a is not None and (a.shape[0] < n_rec or a.shape[1] not in (0, nb))
                   for a in (record.bg2, record.bd2))):
        raise ValueError(f"train_kernel: the Recording rows are sized for fewer than the "
                         f"{n_rec} rows steps={steps}, every={record.every} writes (or q/bn2 "
                         f"columns differ from dim={d} / {nb} blocks)")


def train_kernel(object rule,           # IN/OUT _bridge.RuleInputs (state updated)
                 Potential pot,
                 double[::1] q,         # IN/OUT q_0 in, q_steps out
                 Py_ssize_t steps,
                 object record,         # OUT _bridge.Recording
                 object batch,          # IN _bridge.Batch
                 object layout=None,    # IN _bridge.ChargeLayout, or None: no charges
                 object charges=None,   # IN/OUT _bridge.ChargeRecord (with layout)
                 bint check_signals=True):
    """Run one trajectory; returns ``(status, stop_step, n_recorded)``.

    The argument groups are the named dataclasses of noether_core/_bridge.py, read here
    by attribute before the GIL is released (arrays C-contiguous, validated by the facade).
    """
    cdef RunSpec s
    cdef ChargeSpec cs
    cdef _Scratch scratch = _Scratch()
    cdef double dummy = 0.0
    cdef Py_ssize_t dummy_i = 0
    _check_train_entry(rule, pot, q, steps, record, batch)
    memset(&s, 0, sizeof(RunSpec))
    _fill_rule(&s, rule, &dummy, &dummy_i)
    s.fn = pot.fn
    s.d = pot.d
    s.n_data = pot.n_data
    s.batch_size = batch.size
    s.q = &q[0]
    s.steps = steps
    s.g = scratch.doubles(s.d)
    _fill_record(&s, record, scratch, &dummy, &dummy_i)
    s.cs = NULL
    s.check_signals = check_signals
    if layout is not None and len(layout.fam) > 0:
        _fill_charges(&cs, layout, charges, s.d, rule.vec.shape[0], rule.sca.shape[0],
                      scratch, &dummy, &dummy_i)
        s.cs = &cs
    s.params = NULL
    bit_generator = batch.bit_generator
    try:
        s.params = pot.new_params()
        if s.batch_size > 0:
            s.perm = <Py_ssize_t*> malloc(s.n_data * sizeof(Py_ssize_t))
            if s.perm == NULL:
                raise MemoryError("minibatch scratch of train")
            s.rng = <bitgen_t*> PyCapsule_GetPointer(bit_generator.capsule, "BitGenerator")
            with bit_generator.lock, nogil:
                run_loop(&s)
        else:
            with nogil:
                run_loop(&s)
    finally:
        free(s.perm)
        if s.params != NULL:
            pot.free_params(s.params)
    if s.status == NC_ST_INTERRUPTED:
        reraise_signal()
    return s.status, s.stop_step, s.n_rec


def status_codes():
    """Every loop status code by name (pyx/nc_status.h), for the facade's one table."""
    return {"OK": NC_ST_OK, "NONFINITE_LOSS": NC_ST_NONFINITE_LOSS,
            "NONFINITE_GRAD": NC_ST_NONFINITE_GRAD,
            "NONFINITE_PARAMS": NC_ST_NONFINITE_PARAMS,
            "INTERRUPTED": NC_ST_INTERRUPTED, "NONFINITE_STATE": NC_ST_NONFINITE_STATE,
            "STEP_UNDERFLOW": NC_ST_STEP_UNDERFLOW, "MAX_STEPS": NC_ST_MAX_STEPS,
            "RADIUS": NC_ST_RADIUS}
