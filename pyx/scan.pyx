# cython: language_level=3
"""Parameter scans: a whole grid of training runs in one compiled call (docs/scan.md).

Design
------
* One grid point is one run of the training loop ``run_loop`` (pyx/rules.pyx, cimported:
  the loop is not duplicated).  A point is run as a sequence of *chunks* of at most ``K``
  steps, each chunk one ``run_loop`` call with ``record_every = 1`` into small per-thread
  scratch rows; the rule state (``vec``/``sca``), q and the point's bit generator carry
  over from chunk to chunk, which is exactly how ``train(..., state=...)`` resumes, so the
  trajectory is bit for bit that of one unbroken ``train`` call.  After each chunk the rows
  are folded into the point's summaries (minimum loss, late-time angular update, the
  optional recorded series at every ``record_every``-th step), so memory does not grow with
  ``steps``.  The terminal row a chunk's ``run_loop`` call adds (its q evaluated on the full
  data, consuming no draws) is needed only for the last chunk; an intermediate chunk's
  would duplicate the next chunk's first state, so it is not evaluated
  (``RunSpec.skip_terminal``: on a minibatched network it cost a full-data pass per chunk).
* Memory: the facade (noether_core/_scan.py) allocates every input and output array; this
  module only reads and writes them through raw pointers.  ``ScanKernel.__cinit__`` (with
  the GIL) allocates, per thread, one potential workspace (``Potential.new_params``), one
  ``RunSpec`` and one block of scratch (q, gradient, rule state, minibatch permutation,
  ``K + 1`` rows of recording); each per-thread allocation is 64-byte aligned and padded to
  a multiple of 64 bytes, so no two threads ever write the same cache line.  A thread
  writes a point's output rows once, when the point is finished.
* The GIL is released once, around the whole grid (``ScanKernel.run``): an OpenMP
  ``prange`` over grid points (dynamic schedule: divergent points finish early), or a plain
  loop when one thread is asked for (no OpenMP region at all, which keeps forked worker
  processes safe).  Which thread runs a point changes nothing in its result: a point reads
  only its own hyper-parameters, initial state and bit generator.
* Minibatch draws: the facade gives every point its own ``numpy.random.Generator``
  (derived with ``SeedSequence``); the kernel holds their ``bitgen_t`` pointers.  These
  generators are private to the scan, so no lock is taken.
* Assumed valid (checked by the facade): shapes, dtypes (float64 / intp, C-contiguous),
  hyper-parameters in their ranges, ``steps >= 0``, ``record_every >= 0`` (0: no series),
  ``1 <= K``, a generator per point when ``batch_size > 0``.
"""
from libc.math cimport sqrt, pow, NAN, INFINITY
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memset, memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer
from cython.parallel cimport prange, threadid

import threading

import numpy as np
cimport numpy as cnp
from numpy.random cimport bitgen_t

from noether_core._kernels.potentials cimport Potential, grad_fn
from noether_core._kernels.rules cimport (RunSpec, ChargeSpec, run_loop, NC_ST_OK,
                                          NC_ST_INTERRUPTED, RULE_SGD, RULE_ADAM,
                                          RULE_RMSPROP, RULE_SCALAR_RMSPROP, RULE_MIRROR)

cnp.import_array()

cdef extern from *:
    """
    #ifndef NOETHER_HAVE_OPENMP
    #define NOETHER_HAVE_OPENMP 0
    #endif
    """
    int NOETHER_HAVE_OPENMP

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef enum:
    CACHE_LINE = 64
    GUARD = 512             # bytes between two threads' potential workspaces


def openmp_enabled():
    """True if the scan kernels were compiled with OpenMP (parallel over grid points)."""
    return bool(NOETHER_HAVE_OPENMP)


# ---------------------------------------------------------------------------------------
# shared (read-only during the loop) description of the grid, and per-thread scratch

cdef struct ScanCtx:
    int kind
    const double* hp             # IN (P, nhp)
    Py_ssize_t nhp
    const double* vec0           # IN (P, nvecd): initial per-coordinate rule state
    Py_ssize_t nvecd
    const double* sca0           # IN (P, nsca): initial scalar rule state
    Py_ssize_t nsca
    const Py_ssize_t* pptr       # IN partition (CSR)
    const Py_ssize_t* pidx
    Py_ssize_t npart
    grad_fn fn
    Py_ssize_t d
    Py_ssize_t n_data
    Py_ssize_t batch_size
    bitgen_t** rngs              # IN (P) or NULL (full batch)
    const double* q0             # IN (d)
    Py_ssize_t steps
    Py_ssize_t K                 # steps per run_loop call
    Py_ssize_t late_start        # angles over transitions n -> n+1 with n >= late_start
    Py_ssize_t rec_every         # 0: no series
    Py_ssize_t R                 # series rows per point
    const Py_ssize_t* bptr       # IN blocks (CSR)
    const Py_ssize_t* bidx
    Py_ssize_t nb
    # outputs, one row per point
    double* q_final              # OUT (P, d)
    double* loss_final           # OUT (P)
    double* loss_min             # OUT (P)
    double* bn2_final            # OUT (P, nb)
    double* angle                # OUT (P, nb)
    Py_ssize_t* status           # OUT (P)
    Py_ssize_t* stop             # OUT (P)
    Py_ssize_t* n_rows           # OUT (P) series rows written
    double* s_q                  # OUT (P, R, d)
    double* s_loss               # OUT (P, R)
    double* s_g2                 # OUT (P, R)
    double* s_bn2                # OUT (P, R, nb)
    int* cancel                  # IN: set non-zero to stop every point at its next chunk
    # in-loop Noether charges (nsym = 0: off); the static description of ChargeSpec
    Py_ssize_t nsym
    const int* fam
    const Py_ssize_t* ptr1
    const Py_ssize_t* idx1
    const Py_ssize_t* ptr2
    const Py_ssize_t* idx2
    const double* dirn
    const Py_ssize_t* optr
    const double* omega
    Py_ssize_t n_idx1
    double* worst                # OUT (P, nsym) worst relative balance residual per point
    Py_ssize_t* worst_step       # OUT (P, nsym) step where it occurred (-1: none)


cdef struct Scratch:
    RunSpec spec
    void* params                 # potential workspace of this thread
    double* q
    double* g
    double* vec
    double* sca
    Py_ssize_t* perm
    double* rq                   # (K + 1, d) recorded rows of one chunk
    double* rl                   # (K + 1)
    double* rg2                  # (K + 1)
    double* rbn2                 # (K + 1, nb)
    double* prev_q               # (d) previous state, for the angular update
    double* prev_bn2             # (nb)
    double* ang_sum              # (nb)
    Py_ssize_t ang_cnt
    double loss_min
    Py_ssize_t n_rows
    Py_ssize_t progress          # steps done by this thread (read by the progress bar)
    void* block                  # the one allocation behind the pointers above
    ChargeSpec cs                # this thread's charge tracking (scratch owned by cblock)
    double* wglob                # (nsym) worst residual of the current point so far
    Py_ssize_t* wstep            # (nsym) its global step
    void* cblock                 # the allocation behind the charge scratch
    void* guard                  # spacer allocated right after the workspace (see below)


cdef inline size_t _pad(size_t nbytes) noexcept nogil:
    """Round up to whole cache lines."""
    return ((nbytes + CACHE_LINE - 1) // CACHE_LINE) * CACHE_LINE


cdef void _fill_spec(RunSpec* s, const ScanCtx* c, Scratch* w, Py_ssize_t p) noexcept nogil:
    """The one place a scan fills a RunSpec: zeroed first, so fields added to the struct
    later (e.g. in-loop charges) default to off."""
    memset(s, 0, sizeof(RunSpec))
    s.kind = c.kind
    s.hp = c.hp + p * c.nhp
    s.vec = w.vec
    s.sca = w.sca
    s.pptr = c.pptr
    s.pidx = c.pidx
    s.npart = c.npart
    s.fn = c.fn
    s.params = w.params
    s.d = c.d
    s.n_data = c.n_data
    s.batch_size = c.batch_size
    s.rng = c.rngs[p] if c.rngs != NULL else NULL
    s.perm = w.perm
    s.q = w.q
    s.g = w.g
    s.steps = 0
    s.record_every = 1
    s.bptr = c.bptr
    s.bidx = c.bidx
    s.nb = c.nb
    s.rec_q = w.rq
    s.rec_loss = w.rl
    s.rec_g2 = w.rg2
    s.rec_bn2 = w.rbn2
    s.status = NC_ST_OK
    s.stop_step = -1
    s.n_rec = 0


cdef inline double _chord2(const double* a, const double* b, double na2, double nb2,
                           const Py_ssize_t* idx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Squared chord |â_B − b̂_B|² between the normalised block vectors (|a_B|² = na2,
    |b_B|² = nb2): the per-step angular update of docs/scan.md, squared (the lane kernel
    evaluates the same operations on whole vectors)."""
    cdef double ia = 1.0 / sqrt(na2), ib = 1.0 / sqrt(nb2), dm = 0.0, u, v
    cdef Py_ssize_t k, i
    for k in range(lo, hi):
        i = idx[k]
        u = a[i] * ia
        v = b[i] * ib
        dm = dm + (u - v) * (u - v)
    return dm


cdef inline void _take_state(const ScanCtx* c, Scratch* w, Py_ssize_t p, Py_ssize_t n,
                             Py_ssize_t j) noexcept nogil:
    """Fold state n of the point (row j of the chunk scratch) into its summaries."""
    cdef Py_ssize_t b, r
    cdef const double* qrow = w.rq + j * c.d
    cdef const double* brow = w.rbn2 + j * c.nb
    if w.rl[j] < w.loss_min:
        w.loss_min = w.rl[j]
    if c.rec_every > 0 and n % c.rec_every == 0:
        r = n // c.rec_every
        memcpy(c.s_q + (p * c.R + r) * c.d, qrow, c.d * sizeof(double))
        c.s_loss[p * c.R + r] = w.rl[j]
        c.s_g2[p * c.R + r] = w.rg2[j]
        if c.nb > 0:
            memcpy(c.s_bn2 + (p * c.R + r) * c.nb, brow, c.nb * sizeof(double))
        w.n_rows = r + 1
    if n > c.late_start:
        for b in range(c.nb):
            w.ang_sum[b] = w.ang_sum[b] + _chord2(w.prev_q, qrow, w.prev_bn2[b], brow[b],
                                                  c.bidx, c.bptr[b], c.bptr[b + 1])
        w.ang_cnt += 1
    if n >= c.late_start:
        memcpy(w.prev_q, qrow, c.d * sizeof(double))
        if c.nb > 0:
            memcpy(w.prev_bn2, brow, c.nb * sizeof(double))


cdef void _run_point(const ScanCtx* c, Scratch* w, Py_ssize_t p) noexcept nogil:
    """Run grid point p to the end (or to its first non-finite value) and write its row."""
    cdef RunSpec* s = &w.spec
    cdef Py_ssize_t done = 0, kc = 0, j, n_in, b, k, stop = -1
    cdef int status = NC_ST_OK
    cdef bint last
    cdef double acc, x
    memcpy(w.q, c.q0, c.d * sizeof(double))
    if c.nvecd > 0:
        memcpy(w.vec, c.vec0 + p * c.nvecd, c.nvecd * sizeof(double))
    if c.nsca > 0:
        memcpy(w.sca, c.sca0 + p * c.nsca, c.nsca * sizeof(double))
    for b in range(c.nb):
        w.ang_sum[b] = 0.0
    w.ang_cnt = 0
    w.loss_min = INFINITY
    w.n_rows = 0
    _fill_spec(s, c, w, p)
    if c.nsym > 0:
        # charges start from rest for every point, as a fresh train() call does
        memset(w.cs.last_delta, 0, c.d * sizeof(double))
        memset(w.cs.last_res, 0, c.nsym * sizeof(double))
        memset(w.cs.last_metric, 0, c.nsym * sizeof(double))
        memset(w.cs.worst_metric, 0, c.nsym * sizeof(double))
        for k in range(c.nsym):
            w.wglob[k] = 0.0
            w.wstep[k] = -1
        s.cs = &w.cs
    while True:
        if c.cancel[0] != 0:
            status = NC_ST_INTERRUPTED
            stop = done
            break
        kc = c.K if c.steps - done > c.K else c.steps - done
        last = done + kc == c.steps
        s.steps = kc
        s.skip_terminal = not last                 # its row would duplicate the next chunk's
        if c.nsym > 0:
            for k in range(c.nsym):
                w.cs.worst[k] = 0.0
                w.cs.worst_step[k] = -1
        run_loop(s)
        if c.nsym > 0:
            # run_loop counts steps from the start of its call: fold into the point's
            for k in range(c.nsym):
                if w.cs.worst[k] > w.wglob[k]:
                    w.wglob[k] = w.cs.worst[k]
                    w.wstep[k] = done + w.cs.worst_step[k]
        # rows 0..kc-1 are the in-loop states done..done+kc-1 (fewer if stopped early)
        n_in = s.n_rec if s.n_rec < kc else kc
        for j in range(n_in):
            _take_state(c, w, p, done + j, j)
        w.progress += kc
        if s.status != NC_ST_OK:                   # a non-finite value, or Ctrl-C
            status = s.status
            stop = done + s.stop_step
            break
        if last:
            _take_state(c, w, p, c.steps, kc)      # the terminal row, on the full data
            break
        done += kc
    # the point's output row
    memcpy(c.q_final + p * c.d, w.q, c.d * sizeof(double))
    for b in range(c.nb):
        acc = 0.0                                  # same summation order as run_loop's
        for k in range(c.bptr[b], c.bptr[b + 1]):
            x = w.q[c.bidx[k]]
            acc = acc + x * x
        c.bn2_final[p * c.nb + b] = acc
        c.angle[p * c.nb + b] = (sqrt(w.ang_sum[b] / <double> w.ang_cnt)
                                 if status == NC_ST_OK and w.ang_cnt > 0 else NAN)
    c.loss_final[p] = w.rl[kc] if status == NC_ST_OK else NAN
    c.loss_min[p] = w.loss_min if w.loss_min < INFINITY else NAN
    c.status[p] = status
    c.stop[p] = stop
    c.n_rows[p] = w.n_rows
    for k in range(c.nsym):
        c.worst[p * c.nsym + k] = w.wglob[k]
        c.worst_step[p * c.nsym + k] = w.wstep[k]
    if status != NC_ST_OK:
        w.progress += c.steps - done - kc if c.steps - done - kc > 0 else 0


# ---------------------------------------------------------------------------------------
# Python entry point (facade-only)

cdef inline void* _data(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


cdef inline void* _take(char* base, size_t* off, size_t nbytes) noexcept:
    """The next ``nbytes`` (already padded to cache lines) of a carved block."""
    cdef void* p = base + off[0]
    off[0] += nbytes
    return p


def _check_f64(*arrays):
    for a in arrays:
        if a.dtype != np.float64 or not a.flags.c_contiguous:
            raise TypeError("the scan kernels need C-contiguous float64 arrays")


def _check_intp(*arrays):
    for a in arrays:
        if a.dtype != np.intp or not a.flags.c_contiguous:
            raise TypeError("the scan kernels need C-contiguous intp index arrays")


cdef _check_csr(str who, str what, cnp.ndarray ptr, cnp.ndarray idx, Py_ssize_t d):
    """Raise ValueError unless (ptr, idx), C-contiguous intp arrays (_check_intp), are a
    CSR over [0, d): 1-D, ptr rising from 0 to len(idx), every index in [0, d).  A loop
    in C: the numpy reductions it replaces cost ~8 us of a ~70 us scan call."""
    cdef Py_ssize_t k, n, m
    cdef const Py_ssize_t* p
    cdef const Py_ssize_t* x
    if ptr.ndim != 1 or idx.ndim != 1:
        raise ValueError(f"{who}: the {what} arrays must be 1-D, got {ptr.ndim}-D and "
                         f"{idx.ndim}-D")
    n, m = ptr.shape[0], idx.shape[0]
    cdef bint ok = n >= 1
    if ok:
        p = <const Py_ssize_t*> _data(ptr)
        ok = p[0] == 0 and p[n - 1] == m
        for k in range(1, n if ok else 0):
            if p[k] < p[k - 1]:
                ok = False
                break
    if not ok:
        raise ValueError(f"{who}: the {what} pointer array must rise from 0 to len(idx) = "
                         f"{m}")
    x = <const Py_ssize_t*> _data(idx)
    for k in range(m):
        if x[k] < 0 or x[k] >= d:
            raise ValueError(f"{who}: the {what} indices must lie in [0, {d}) (the "
                             f"potential's dim), got range [{idx.min()}, {idx.max()}]")


def _check_scan_entry(object rule, Potential pot, object plan, cnp.ndarray bptr,
                      cnp.ndarray bidx, object batch, object out):
    """What the scalar scan loop trusts, checked against what its scratch and outputs are
    sized for (the facade checks it too; a direct caller gets a ValueError, not a write
    past a buffer): the minibatch size against the data, block and partition indices
    against d, the output shapes against the points, blocks and series rows."""
    cdef Py_ssize_t d = pot.d, P = rule.hp.shape[0], nb = bptr.shape[0] - 1
    if batch.size < 0 or batch.size > pot.n_data:
        raise ValueError(f"ScanKernel: batch size {batch.size} must lie in [1, n_data="
                         f"{pot.n_data}] (or be 0: full batch)")
    for what, ptr, idx in (("recorded blocks (bptr/bidx)", bptr, bidx),
                           ("partition (RuleInputs.pptr/pidx)", rule.pptr, rule.pidx)):
        _check_csr("ScanKernel", what, ptr, idx, d)
    if plan.record_every < 0 or (plan.record_every > 0
                                 and plan.R < plan.steps // plan.record_every + 1):
        raise ValueError(f"ScanKernel: R = {plan.R} series rows, steps={plan.steps} and "
                         f"record_every={plan.record_every} write "
                         f"{plan.steps // max(plan.record_every, 1) + 1}")
    want = {"q": (P, d), "loss": (P,), "loss_min": (P,), "norm2": (P, nb),
            "angular_update": (P, nb), "status": (P,), "stop_step": (P,), "n_rows": (P,)}
    if plan.record_every > 0:
        want.update(s_q=(P, plan.R, d), s_loss=(P, plan.R), s_g2=(P, plan.R),
                    s_bn2=(P, plan.R, nb))
    for name, shape in want.items():
        if tuple(getattr(out, name).shape) != shape:
            raise ValueError(f"ScanKernel: ScanOutputs.{name} has shape "
                             f"{getattr(out, name).shape}, the grid needs {shape}")


cdef class ScanKernel:
    """One grid (or chunk of a grid), ready to run.  Built and driven by noether_core/_scan.py.

    ``run()`` releases the GIL and runs every point; ``steps_done()`` may be called from
    another Python thread meanwhile (progress bar); ``cancel()`` stops the remaining points
    at their next chunk (status INTERRUPTED).
    """
    cdef ScanCtx c
    cdef Scratch** scr
    cdef int n_threads
    cdef Py_ssize_t P
    cdef Potential pot
    cdef list keep
    cdef int cancel_flag
    cdef bitgen_t** rngs

    def __cinit__(self, object rule,     # IN _bridge.RuleInputs, hp (P, nhp), vec (P, nvec*d)
                  Potential pot,
                  cnp.ndarray q0,          # IN (d,)
                  object plan,             # IN _bridge.ScanPlan
                  cnp.ndarray bptr,        # IN recorded blocks (CSR)
                  cnp.ndarray bidx,
                  object batch,            # IN _bridge.Batch (generators: one per point)
                  object out,              # OUT _bridge.ScanOutputs
                  object layout=None):     # IN _bridge.ChargeLayout, or None
        """The argument groups are the named dataclasses of noether_core/_bridge.py."""
        self.pot = pot
        self.P = rule.hp.shape[0]
        self.n_threads = plan.n_threads
        self.cancel_flag = 0
        self.keep = [rule, q0, plan, bptr, bidx, batch, out, layout]
        _check_f64(rule.hp, rule.vec, rule.sca, q0, out.q, out.loss, out.loss_min, out.norm2,
                   out.angular_update, out.s_q, out.s_loss, out.s_g2, out.s_bn2)
        _check_intp(rule.pptr, rule.pidx, bptr, bidx, out.status, out.stop_step, out.n_rows)
        _check_scan_entry(rule, pot, plan, bptr, bidx, batch, out)
        memset(&self.c, 0, sizeof(ScanCtx))
        self._set_rule(rule)
        self._set_run(pot, q0, plan, bptr, bidx, batch.size)
        self._set_outputs(out, plan)
        if layout is not None:
            self._set_charges(layout, out)
        if batch.size > 0:
            self._set_generators(batch.generators)
        self._alloc_scratch()

    cdef _set_rule(self, object rule):
        cdef ScanCtx* c = &self.c
        hp, vec0, sca0 = rule.hp, rule.vec, rule.sca
        if vec0.shape[0] != self.P or sca0.shape[0] != self.P:
            raise ValueError("ScanKernel: inconsistent shapes")
        c.kind = rule.kind
        c.hp = <const double*> _data(hp)
        c.nhp = hp.shape[1]
        c.vec0 = <const double*> _data(vec0)
        c.nvecd = vec0.shape[1]
        c.sca0 = <const double*> _data(sca0)
        c.nsca = sca0.shape[1]
        c.pptr = <const Py_ssize_t*> _data(rule.pptr)
        c.pidx = <const Py_ssize_t*> _data(rule.pidx)
        c.npart = rule.pptr.shape[0] - 1

    cdef _set_run(self, Potential pot, cnp.ndarray q0, object plan, cnp.ndarray bptr,
                  cnp.ndarray bidx, Py_ssize_t batch_size):
        cdef ScanCtx* c = &self.c
        if q0.shape[0] != pot.d:
            raise ValueError("ScanKernel: inconsistent shapes")
        if plan.K < 1 or plan.n_threads < 1 or plan.steps < 0:
            raise ValueError("ScanKernel: K, n_threads must be >= 1 and steps >= 0")
        c.fn = pot.fn
        c.d = pot.d
        c.n_data = pot.n_data
        c.batch_size = batch_size
        c.q0 = <const double*> _data(q0)
        c.steps = plan.steps
        c.K = plan.K
        c.late_start = plan.late_start
        c.rec_every = plan.record_every
        c.R = plan.R
        c.bptr = <const Py_ssize_t*> _data(bptr)
        c.bidx = <const Py_ssize_t*> _data(bidx)
        c.nb = bptr.shape[0] - 1
        c.cancel = &self.cancel_flag

    cdef _set_outputs(self, object out, object plan):
        cdef ScanCtx* c = &self.c
        cdef Py_ssize_t P = self.P
        if (out.q.shape[0] != P or out.loss.shape[0] != P
                or out.angular_update.shape[0] != P or out.status.shape[0] != P
                or (plan.record_every > 0 and out.s_q.shape[0] != P)):
            raise ValueError("ScanKernel: inconsistent shapes")
        c.q_final = <double*> _data(out.q)
        c.loss_final = <double*> _data(out.loss)
        c.loss_min = <double*> _data(out.loss_min)
        c.bn2_final = <double*> _data(out.norm2)
        c.angle = <double*> _data(out.angular_update)
        c.status = <Py_ssize_t*> _data(out.status)
        c.stop = <Py_ssize_t*> _data(out.stop_step)
        c.n_rows = <Py_ssize_t*> _data(out.n_rows)
        c.s_q = <double*> _data(out.s_q)
        c.s_loss = <double*> _data(out.s_loss)
        c.s_g2 = <double*> _data(out.s_g2)
        c.s_bn2 = <double*> _data(out.s_bn2)

    cdef _set_charges(self, object layout, object out):
        """The shared (static) part of every thread's ChargeSpec, and the outputs."""
        cdef ScanCtx* c = &self.c
        cdef Py_ssize_t nsym = layout.fam.shape[0]
        if nsym == 0:
            return
        _check_f64(layout.dirn, layout.omega, out.charge_worst)
        _check_intp(layout.ptr1, layout.idx1, layout.ptr2, layout.idx2, layout.optr,
                    out.charge_worst_step)
        if layout.fam.dtype != np.intc or not layout.fam.flags.c_contiguous:
            raise TypeError("ScanKernel needs C-contiguous intc families")
        if out.charge_worst.shape[0] != self.P or out.charge_worst.shape[1] != nsym:
            raise ValueError("ScanKernel: inconsistent charge output shapes")
        c.nsym = nsym
        c.fam = <const int*> _data(layout.fam)
        c.ptr1 = <const Py_ssize_t*> _data(layout.ptr1)
        c.idx1 = <const Py_ssize_t*> _data(layout.idx1)
        c.ptr2 = <const Py_ssize_t*> _data(layout.ptr2)
        c.idx2 = <const Py_ssize_t*> _data(layout.idx2)
        c.dirn = <const double*> _data(layout.dirn)
        c.optr = <const Py_ssize_t*> _data(layout.optr)
        c.omega = <const double*> _data(layout.omega)
        c.n_idx1 = layout.idx1.shape[0]
        c.worst = <double*> _data(out.charge_worst)
        c.worst_step = <Py_ssize_t*> _data(out.charge_worst_step)

    cdef _set_generators(self, list generators):
        cdef Py_ssize_t t
        if generators is None or len(generators) != self.P:
            raise ValueError("ScanKernel: minibatch scans need one generator per point")
        if posix_memalign(<void**> &self.rngs, CACHE_LINE,
                          _pad(max(self.P, 1) * sizeof(bitgen_t*))) != 0:
            raise MemoryError("bit generator table of scan")
        for t in range(self.P):
            self.rngs[t] = <bitgen_t*> PyCapsule_GetPointer(
                generators[t].bit_generator.capsule, "BitGenerator")
        self.c.rngs = self.rngs

    cdef _alloc_scratch(self):
        """Per-thread scratch: each allocation aligned and padded to cache lines."""
        cdef ScanCtx* c = &self.c
        cdef Scratch* w
        cdef char* base
        cdef size_t sz, off
        cdef int t
        cdef Py_ssize_t d = c.d, K = c.K, nb = c.nb, nvecd = c.nvecd, nsca = c.nsca
        if posix_memalign(<void**> &self.scr, CACHE_LINE,
                          _pad(self.n_threads * sizeof(Scratch*))) != 0:
            raise MemoryError("scratch table of scan")
        memset(self.scr, 0, self.n_threads * sizeof(Scratch*))
        for t in range(self.n_threads):
            if posix_memalign(<void**> &w, CACHE_LINE, _pad(sizeof(Scratch))) != 0:
                raise MemoryError("scratch of scan")
            memset(w, 0, sizeof(Scratch))
            self.scr[t] = w
            sz = (_pad(d * 8) * 3 + _pad(max(nvecd, 1) * 8) + _pad(max(nsca, 1) * 8)
                  + _pad(max(c.n_data, 1) * sizeof(Py_ssize_t))
                  + _pad((K + 1) * d * 8) + _pad((K + 1) * 8) * 2
                  + _pad((K + 1) * max(nb, 1) * 8) + _pad(max(nb, 1) * 8) * 2)
            if posix_memalign(&w.block, CACHE_LINE, sz) != 0:
                raise MemoryError(f"scratch of scan ({sz} bytes per thread)")
            memset(w.block, 0, sz)
            base = <char*> w.block
            off = 0
            w.q = <double*> _take(base, &off, _pad(d * 8))
            w.g = <double*> _take(base, &off, _pad(d * 8))
            w.prev_q = <double*> _take(base, &off, _pad(d * 8))
            w.vec = <double*> _take(base, &off, _pad(max(nvecd, 1) * 8))
            w.sca = <double*> _take(base, &off, _pad(max(nsca, 1) * 8))
            w.perm = <Py_ssize_t*> _take(base, &off,
                                         _pad(max(c.n_data, 1) * sizeof(Py_ssize_t)))
            w.rq = <double*> _take(base, &off, _pad((K + 1) * d * 8))
            w.rl = <double*> _take(base, &off, _pad((K + 1) * 8))
            w.rg2 = <double*> _take(base, &off, _pad((K + 1) * 8))
            w.rbn2 = <double*> _take(base, &off, _pad((K + 1) * max(nb, 1) * 8))
            w.prev_bn2 = <double*> _take(base, &off, _pad(max(nb, 1) * 8))
            w.ang_sum = <double*> _take(base, &off, _pad(max(nb, 1) * 8))
            if off != sz:
                raise AssertionError(f"scan scratch carved {off} of {sz} bytes")
            # The workspace is allocated by the potential (plain malloc), so two threads'
            # workspaces could be neighbours on the heap and share a cache line that both
            # write at every gradient evaluation.  A spacer allocated right after each one
            # keeps the next thread's workspace at least GUARD bytes away.
            w.params = self.pot.new_params()
            w.guard = malloc(GUARD)
            if w.guard == NULL:
                raise MemoryError("scratch of scan")
            if c.nsym > 0:
                self._alloc_charge_scratch(w)

    cdef _alloc_charge_scratch(self, Scratch* w):
        """One thread's ChargeSpec: the shared static description, its own scratch."""
        cdef ScanCtx* c = &self.c
        cdef ChargeSpec* cs = &w.cs
        cdef char* base
        cdef size_t cz, off = 0
        cdef Py_ssize_t d = c.d, K = c.K, nsym = c.nsym, nvecd = c.nvecd, nsca = c.nsca
        cdef Py_ssize_t n1 = c.n_idx1
        cz = (_pad(d * 8) * 4 + _pad(max(nvecd, 1) * 8) + _pad(max(nsca, 1) * 8)
              + _pad(max(n1, 1) * 8) + _pad(nsym * 8) * 8
              + _pad((K + 1) * nsym * 8) * 4)
        if posix_memalign(&w.cblock, CACHE_LINE, cz) != 0:
            raise MemoryError(f"charge scratch of scan ({cz} bytes per thread)")
        memset(w.cblock, 0, cz)
        base = <char*> w.cblock
        cs.nsym = nsym
        cs.fam, cs.ptr1, cs.idx1 = c.fam, c.ptr1, c.idx1
        cs.ptr2, cs.idx2, cs.dirn = c.ptr2, c.idx2, c.dirn
        cs.optr, cs.omega = c.optr, c.omega
        cs.nvec = nvecd // d if d > 0 else 0
        cs.nsca = nsca
        cs.last_delta = <double*> _take(base, &off, _pad(d * 8))
        cs.q_prev = <double*> _take(base, &off, _pad(d * 8))
        cs.q_free = <double*> _take(base, &off, _pad(d * 8))
        cs.zeros = <double*> _take(base, &off, _pad(d * 8))
        cs.vec_free = <double*> _take(base, &off, _pad(max(nvecd, 1) * 8))
        cs.sca_free = <double*> _take(base, &off, _pad(max(nsca, 1) * 8))
        cs.om_q = <double*> _take(base, &off, _pad(max(n1, 1) * 8))
        cs.free_transfer = <double*> _take(base, &off, _pad(nsym * 8))
        cs.last_res = <double*> _take(base, &off, _pad(nsym * 8))
        cs.last_metric = <double*> _take(base, &off, _pad(nsym * 8))
        cs.worst_metric = <double*> _take(base, &off, _pad(nsym * 8))
        cs.worst = <double*> _take(base, &off, _pad(nsym * 8))
        cs.worst_step = <Py_ssize_t*> _take(base, &off, _pad(nsym * 8))
        w.wglob = <double*> _take(base, &off, _pad(nsym * 8))
        w.wstep = <Py_ssize_t*> _take(base, &off, _pad(nsym * 8))
        cs.rec_moment = <double*> _take(base, &off, _pad((K + 1) * nsym * 8))
        cs.rec_charge = <double*> _take(base, &off, _pad((K + 1) * nsym * 8))
        cs.rec_resid = <double*> _take(base, &off, _pad((K + 1) * nsym * 8))
        cs.rec_metric = <double*> _take(base, &off, _pad((K + 1) * nsym * 8))
        if off != cz:
            raise AssertionError(f"scan charge scratch carved {off} of {cz} bytes")

    def __dealloc__(self):
        cdef int t
        if self.scr != NULL:
            for t in range(self.n_threads):
                if self.scr[t] != NULL:
                    if self.scr[t].params != NULL and self.pot is not None:
                        self.pot.free_params(self.scr[t].params)
                    free(self.scr[t].block)
                    free(self.scr[t].cblock)
                    free(self.scr[t].guard)
                    free(self.scr[t])
            free(self.scr)
        free(self.rngs)

    def run(self):
        """Run every point (GIL released for the whole grid)."""
        cdef ScanCtx* c = &self.c
        cdef Scratch** scr = self.scr
        cdef Py_ssize_t p, P = self.P
        cdef int nt = self.n_threads
        with nogil:
            if nt == 1:
                for p in range(P):
                    _run_point(c, scr[0], p)
            else:
                for p in prange(P, num_threads=nt, schedule="dynamic", chunksize=1):
                    _run_point(c, scr[threadid()], p)

    def steps_done(self):
        """Point-steps finished so far (summed over threads; read while ``run`` runs)."""
        cdef Py_ssize_t t, total = 0
        for t in range(self.n_threads):
            total += self.scr[t].progress
        return total

    def cancel(self):
        """Ask ``run`` to stop every point at its next chunk boundary."""
        self.cancel_flag = 1


# ---------------------------------------------------------------------------------------
# Lanes: NC_NL grid points per SIMD block (pyx/lanes.h, docs/scan.md §"Lanes").  Same
# results as ScanKernel, bit for bit, for the cases the facade routes here: full-batch SGD
# on a potential with a lane form, recorded series or not, charges off or scale-family.

cdef extern from "lanes.h" nogil:
    enum:
        NC_NL
        NC_TAB_C
        NC_LPOT_QUADRATIC
        NC_LPOT_RAYLEIGH
        NC_LPOT_BN_UNIT
        NC_ISA_BASE
        NC_ISA_AVX512
        NC_LRULE_SGD
        NC_LRULE_ADAM
        NC_LRULE_RMSPROP
        NC_LRULE_SRMS
        NC_LRULE_MIRROR
    ctypedef struct nc_lane_ctx:
        int pot
        Py_ssize_t d
        const double* A
        const double* b
        const double* X
        const double* y
        Py_ssize_t N
        double eps
        const double* R
        const double* t
        double rho2
        int rule
        Py_ssize_t P
        const double* hp
        Py_ssize_t nhp
        const double* vec0
        Py_ssize_t nvecd
        const double* sca0
        Py_ssize_t nsca
        const double* powtab
        const Py_ssize_t* pow_row
        Py_ssize_t pow_len
        Py_ssize_t npart
        const Py_ssize_t* pptr
        const Py_ssize_t* pidx
        const double* q0
        Py_ssize_t steps
        Py_ssize_t late_start
        const Py_ssize_t* bptr
        const Py_ssize_t* bidx
        Py_ssize_t nb
        Py_ssize_t nsym
        const Py_ssize_t* sptr
        const Py_ssize_t* sidx
        double* q_final
        double* loss_final
        double* loss_min
        double* bn2_final
        double* angle
        Py_ssize_t* status
        Py_ssize_t* stop
        double* worst
        Py_ssize_t* worst_step
        Py_ssize_t rec_every
        Py_ssize_t rec_rows
        double* s_q
        double* s_loss
        double* s_g2
        double* s_bn2
        Py_ssize_t* n_rows
        const int* cancel
        int isa
        Py_ssize_t batch
        const unsigned long long* rng0
        Py_ssize_t poll_mask
        const Py_ssize_t* slot_task
        Py_ssize_t nslots
        Py_ssize_t tab_T
        const unsigned int* rows_tab
        const Py_ssize_t* task_stream
        const double* mom_tab
        Py_ssize_t mom_len
    ctypedef struct nc_lane_ws:
        Py_ssize_t progress
        double* q
        double* qn
        double* buf
        double* g
        void* block
    void nc_lane_draw_rows(Py_ssize_t N, Py_ssize_t B, Py_ssize_t steps,
                           const unsigned long long* st, unsigned int* perm,
                           unsigned int* jbuf, unsigned int* out)
    size_t nc_lane_ws_bytes(const nc_lane_ctx* c)
    void nc_lane_ws_carve(const nc_lane_ctx* c, nc_lane_ws* w, void* block)
    int nc_lane_best_isa()
    int nc_lane_isa_available(int isa)
    void nc_lane_run_block(const nc_lane_ctx* c, nc_lane_ws* w, Py_ssize_t p0)


cdef extern from *:
    """
    /* batch_form="moments" (docs/potentials.md 4b, docs/scan.md "Batch moments"): the
     * centred moments of every step's batch of one stream, steps x (d d + d + 1) doubles
     * at out: C (d x d, row by row), c (d), m.  The rows are those of rules.pyx
     * _draw_batch (the swaps of nc_lane_draw_rows, undone after each step, so perm is the
     * identity before and after).  Per step, rows k = 0 .. B-1 in batch order:
     *     xbar_j = (sum_k x_kj) / B,   ybar = (sum_k y_k) / B,
     *     C_ij = (sum_k (x_ki - xbar_i)(x_kj - xbar_j)) / B,
     *     c_i = (sum_k (x_ki - xbar_i)(y_k - ybar)) / B,   m = (sum_k y_k^2) / B,
     * each sum from +0 over k in order (a fixed order: the same bits in every process,
     * thread, chunk and compiled version).  C_ji is the same sum of the same products as
     * C_ij (a product commutes), so C is exactly symmetric.  The sums run eight entries
     * of a row of C (or of c) at a time in one vector register, k innermost: the centred
     * rows are kept with a row stride dp = d rounded up to 8, zero-padded.  xt: scratch
     * of B dp + dp + B doubles.  Polls *cancel once per step and returns 1 if it was set
     * (the table is then incomplete: the blocks that follow see the flag at their first
     * step and stop), else 0. */
    static inline __attribute__((always_inline)) int nc_mom_impl(
        Py_ssize_t N, Py_ssize_t d, Py_ssize_t B, Py_ssize_t steps, const double* X,
        const double* y, const unsigned long long* st, unsigned int* perm,
        unsigned int* jbuf, double* xt, double* out, const int* cancel)
    {
        unsigned __int128 s = ((unsigned __int128) st[0] << 64) | (unsigned __int128) st[1];
        const unsigned __int128 inc = ((unsigned __int128) st[2] << 64)
                                      | (unsigned __int128) st[3];
        const Py_ssize_t L = d * d + d + 1, dp = (d + 7) / 8 * 8;
        const double Bd = (double) B;
        double* xbar = xt + B * dp;
        double* yc = xbar + dp;
        for (Py_ssize_t n = 0; n < steps; ++n) {
            if (*(volatile const int*) cancel) return 1;
            for (Py_ssize_t i = 0; i < B; ++i) {
                Py_ssize_t j = i + (Py_ssize_t) (nc_pcg64_next_double(&s, inc)
                                                 * (double) (N - i));
                if (j >= N) j = N - 1;
                const unsigned int t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
                jbuf[i] = (unsigned int) j;
            }
            double* C = out + n * L;
            double* cv = C + d * d;
            double ybar = 0.0, m = 0.0;
            for (Py_ssize_t j = 0; j < dp; ++j) xbar[j] = 0.0;
            for (Py_ssize_t k = 0; k < B; ++k) {
                const double* x = X + (Py_ssize_t) perm[k] * d;
                for (Py_ssize_t j = 0; j < d; ++j) xbar[j] = xbar[j] + x[j];
                ybar = ybar + y[perm[k]];
            }
            for (Py_ssize_t j = 0; j < d; ++j) xbar[j] = xbar[j] / Bd;
            ybar = ybar / Bd;
            for (Py_ssize_t k = 0; k < B; ++k) {
                const double* x = X + (Py_ssize_t) perm[k] * d;
                double* o = xt + k * dp;
                for (Py_ssize_t j = 0; j < d; ++j) o[j] = x[j] - xbar[j];
                for (Py_ssize_t j = d; j < dp; ++j) o[j] = 0.0;
                const double yk = y[perm[k]];
                yc[k] = yk - ybar;
                m = m + yk * yk;
            }
            for (Py_ssize_t j0 = 0; j0 < d; j0 += 8) {
                const Py_ssize_t nj = d - j0 < 8 ? d - j0 : 8;
                for (Py_ssize_t i = 0; i <= d; ++i) {      /* rows of C, then c (i = d) */
                    const double* a = i < d ? xt + i : yc;  /* x~_ki (or y~_k): a[k as] */
                    const Py_ssize_t as = i < d ? dp : 1;
                    nc_vd acc = {0}, v;
                    for (Py_ssize_t k = 0; k < B; ++k) {
                        memcpy(&v, xt + k * dp + j0, sizeof v);
                        acc = acc + a[k * as] * v;
                    }
                    acc = acc / Bd;
                    double* row = i < d ? C + i * d : cv;
                    for (Py_ssize_t jj = 0; jj < nj; ++jj) row[j0 + jj] = acc[jj];
                }
            }
            cv[d] = m / Bd;
            for (Py_ssize_t i = B - 1; i >= 0; --i) {          /* back to the identity */
                const unsigned int j = jbuf[i], t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
        }
        return 0;
    }

    /* one copy of the table's fill per instruction set (nc_mom_impl inlined into each) */
    #define NC_MOM_TABLE_FN(NAME)                                                          \
    static int NAME(Py_ssize_t N, Py_ssize_t d, Py_ssize_t B, Py_ssize_t steps,            \
                    const double* X, const double* y, const unsigned long long* st,        \
                    unsigned int* perm, unsigned int* jbuf, double* xt, double* out,       \
                    const int* cancel)                                                     \
    {                                                                                      \
        return nc_mom_impl(N, d, B, steps, X, y, st, perm, jbuf, xt, out, cancel);         \
    }
    NC_MOM_TABLE_FN(nc_mom_table_base)
    #if NC_LANES_X86
    #pragma GCC push_options
    #pragma GCC target("avx512f")
    NC_MOM_TABLE_FN(nc_mom_table_avx512)
    #pragma GCC pop_options
    #endif

    /* the version of the lane kernel's isa (the same bits: element-wise IEEE operations
       in the same order, no contraction) */
    static int nc_mom_table(Py_ssize_t N, Py_ssize_t d, Py_ssize_t B, Py_ssize_t steps,
                            const double* X, const double* y,
                            const unsigned long long* st, unsigned int* perm,
                            unsigned int* jbuf, double* xt, double* out,
                            const int* cancel, int isa)
    {
    #if NC_LANES_X86
        if (isa == NC_ISA_AVX512)
            return nc_mom_table_avx512(N, d, B, steps, X, y, st, perm, jbuf, xt, out, cancel);
    #endif
        (void) isa;
        return nc_mom_table_base(N, d, B, steps, X, y, st, perm, jbuf, xt, out, cancel);
    }
    """
    int nc_mom_table(Py_ssize_t N, Py_ssize_t d, Py_ssize_t B, Py_ssize_t steps,
                     const double* X, const double* y, const unsigned long long* st,
                     unsigned int* perm, unsigned int* jbuf, double* xt, double* out,
                     const int* cancel, int isa) nogil


LANES = NC_NL
#: the batch forms of minibatch lanes (docs/scan.md "Batch moments"): the rows, as train;
#: or, under shared (seed) streams, each step's batch through its moments
BATCH_FORMS = ("rows", "moments")
#: at most this many rows (uint32) of shared streams drawn ahead per kernel call (32 MiB,
#: ~50 ms of draws before the blocks run; docs/scan.md "Minibatch lanes")
ROWS_TABLE_MAX = 2**23
_ISA_NAMES = {NC_ISA_BASE: "baseline", NC_ISA_AVX512: "avx512f"}
_LANE_POTS = {"quadratic": NC_LPOT_QUADRATIC, "rayleigh": NC_LPOT_RAYLEIGH,
              "bn_unit": NC_LPOT_BN_UNIT}
# rule kinds (noether_core/_kernels/rules.pxd) with a lane form -> the lane rule, the
# length of its hp row and its number of state buffers
_LANE_RULES = {RULE_SGD: (NC_LRULE_SGD, 5, 1), RULE_ADAM: (NC_LRULE_ADAM, 7, 3),
               RULE_RMSPROP: (NC_LRULE_RMSPROP, 6, 3),
               RULE_SCALAR_RMSPROP: (NC_LRULE_SRMS, 6, 0),
               RULE_MIRROR: (NC_LRULE_MIRROR, 4, 0)}   # (D: 1 buffer, mirror="diagonal")
LANE_RULE_KINDS = tuple(_LANE_RULES)


def _pow_table(double[::1] beta, double[::1] s0, Py_ssize_t steps):
    """(len(beta), L) array of pow(beta_k, s0_k + n + 1), n < L: Adam's bias corrections by
    libm's pow, the function rules.pyx _step_adam calls, on the same numbers (the step
    count is a double incremented by 1 per step there: exact below 2^53).  L <= steps is
    one past the last n where some row is non-zero: beta^step decreases with the step and
    pow rounds faithfully, so once a row's pow is 0 it stays 0 (at most ~745/(-ln beta)
    columns: 0.74 M for beta = 0.999, whatever ``steps``).

    One pow per entry: each row's values up to its first 0 are kept from the pass that
    finds L (a buffer grown by doubling, never past that bound), and only the columns a
    row has past its first 0 (rows that underflow before the longest one) call pow again,
    with the same step count, so every entry is the pow the two-pass version computed."""
    cdef Py_ssize_t k, n, _n, m, cap, L = 0, K = beta.shape[0]
    cdef double st, v
    cdef double** vals = <double**> calloc(K if K > 0 else 1, sizeof(double*))
    cdef Py_ssize_t* nz = <Py_ssize_t*> calloc(K if K > 0 else 1, sizeof(Py_ssize_t))
    cdef double* grown
    cdef double[:, ::1] o
    cdef bint failed = False
    if vals == NULL or nz == NULL:
        free(vals)
        free(nz)
        raise MemoryError("table of Adam's bias corrections")
    try:
        with nogil:
            for k in range(K):             # each row until its first 0, kept
                cap = steps if steps < 256 else 256
                vals[k] = <double*> malloc((cap if cap > 0 else 1) * sizeof(double))
                if vals[k] == NULL:
                    failed = True
                    break
                st = s0[k]
                m = 0
                for _n in range(steps):
                    st = st + 1.0
                    v = pow(beta[k], st)
                    if v == 0.0:
                        break
                    if m == cap:
                        cap = 2 * cap if 2 * cap < steps else steps
                        grown = <double*> realloc(vals[k], cap * sizeof(double))
                        if grown == NULL:
                            failed = True
                            break
                        vals[k] = grown
                    vals[k][m] = v
                    m += 1
                nz[k] = m
                if failed:
                    break
                if m > L:
                    L = m
        if failed:
            raise MemoryError("table of Adam's bias corrections")
        if L < steps:
            L += 1                         # one zero column: harmless, keeps L >= 1
        out = np.empty((K, L))
        o = out
        with nogil:
            for k in range(K):             # the kept values, then pow past the first 0
                if nz[k] > 0:
                    memcpy(&o[k, 0], vals[k], nz[k] * sizeof(double))
                st = s0[k]
                for n in range(L):
                    st = st + 1.0
                    if n >= nz[k]:
                        o[k, n] = pow(beta[k], st)
        return out
    finally:
        for k in range(K):
            free(vals[k])
        free(vals)
        free(nz)


# Adam's pow tables, shared across calls: key = the exact bytes of the distinct
# (beta, s0) rows and the step count, so an entry is the very table _pow_table would make
# for that key (never stale: nothing but those numbers enters it).  Bounded: at most
# _POW_CACHE_MAX tables of at most _POW_CACHE_ENTRY_BYTES each (oldest dropped first);
# larger tables are made per call.  Cached tables are read-only.
_POW_CACHE = {}
_POW_CACHE_MAX = 16
_POW_CACHE_ENTRY_BYTES = 1 << 19
_POW_LOCK = threading.Lock()


def _pow_cache_clear():
    """Empty the cache of Adam's pow tables (for tests and benchmarks)."""
    with _POW_LOCK:
        _POW_CACHE.clear()


def _pow_cache_info():
    """(entries, bytes) of the cache of Adam's pow tables."""
    with _POW_LOCK:
        return len(_POW_CACHE), sum(t.nbytes for t in _POW_CACHE.values())


def _cached_pow_table(cnp.ndarray keys, Py_ssize_t steps, bytes kb=None):
    """_pow_table of the (K, 2) float64 rows ``keys`` = (beta, s0), through the cache;
    ``kb``: ``keys.tobytes()`` when the caller has it already."""
    key = (keys.tobytes() if kb is None else kb, steps)
    table = _POW_CACHE.get(key)          # one dict read: atomic, no lock needed
    if table is not None:
        return table
    table = _pow_table(np.ascontiguousarray(keys[:, 0]), np.ascontiguousarray(keys[:, 1]),
                       steps)
    table.flags.writeable = False
    if table.nbytes <= _POW_CACHE_ENTRY_BYTES:
        with _POW_LOCK:
            _POW_CACHE[key] = table
            while len(_POW_CACHE) > _POW_CACHE_MAX:
                del _POW_CACHE[next(iter(_POW_CACHE))]
    return table


def _adam_pow_rows(cnp.ndarray hp, cnp.ndarray sca0, Py_ssize_t steps):
    """Adam's bias-correction table and each point's two rows of it: ``(table, rows)``,
    ``table[rows[p, j]]`` being pow(beta_{j+1}, s0_p + n + 1) for point p (hp columns 1
    and 2 are beta1, beta2; sca0 column 0 the step count s0; both C-contiguous float64
    with P >= 1 rows).

    The usual grid (betas and s0 the same at every point) is found by one pass over the
    rows and needs one or two table rows, looked up in the cache by their bytes without
    building an array; otherwise the distinct (beta, s0) pairs are found by np.unique.
    Which row a pair gets changes nothing but the table's row order; pairs equal as
    floats share a row (as np.unique merges them): only +0 and -0 can be equal and
    differ, and 1 - pow(+-0, n) = 1 exactly, so no bias correction changes."""
    _check_f64(hp, sca0)
    if (hp.ndim != 2 or sca0.ndim != 2 or hp.shape[1] < 3 or sca0.shape[1] < 1
            or hp.shape[0] < 1 or sca0.shape[0] != hp.shape[0]):
        raise ValueError("_adam_pow_rows: hp must be (P, >= 3) and sca0 (P, >= 1), P >= 1")
    cdef const double* h = <const double*> _data(hp)
    cdef const double* s = <const double*> _data(sca0)
    cdef Py_ssize_t p, P = hp.shape[0], nh = hp.shape[1], ns = sca0.shape[1], nk
    cdef double kv[4]
    cdef double b1 = h[1], b2 = h[2], st = s[0]
    cdef bint same = True
    cdef Py_ssize_t* r
    for p in range(1, P):
        if h[p * nh + 1] != b1 or h[p * nh + 2] != b2 or s[p * ns] != st:
            same = False
            break
    if same and b1 == b1 and b2 == b2 and st == st:        # no NaN
        kv[0], kv[1], kv[2], kv[3] = b1, st, b2, st
        nk = 1 if b1 == b2 else 2
        kb = (<char*> kv)[:nk * 2 * sizeof(double)]      # the bytes of the (nk, 2) keys
        table = _POW_CACHE.get((kb, steps))
        if table is None:
            keys = np.array([[b1, st], [b2, st]][:nk])
            table = _cached_pow_table(keys, steps, kb)
        rows = np.empty((P, 2), dtype=np.intp)
        r = <Py_ssize_t*> _data(rows)
        for p in range(P):
            r[2 * p] = 0
            r[2 * p + 1] = nk - 1
        return table, rows
    keys = np.concatenate([np.stack([hp[:, 1], sca0[:, 0]], axis=1),
                           np.stack([hp[:, 2], sca0[:, 0]], axis=1)])
    # each (beta, s0) row read as one complex number: np.unique sorts complex
    # values by (real, imag), the rows' lexicographic order, and is ~8x faster
    # than np.unique(axis=0)
    ukeys, inv = np.unique(np.ascontiguousarray(keys).view(np.complex128).ravel(),
                           return_inverse=True)
    ukeys = np.ascontiguousarray(ukeys).view(np.float64).reshape(-1, 2)
    rows = np.ascontiguousarray(inv.reshape(2, P).T, dtype=np.intp)
    return _cached_pow_table(ukeys, steps), rows


def lane_isas():
    """Names of the lane-kernel versions this build and CPU can run, best last."""
    return [name for isa, name in sorted(_ISA_NAMES.items()) if nc_lane_isa_available(isa)]


cdef class LaneScanKernel:
    """A grid of SGD, Adam/AdamW, RMSprop, ScalarRMSProp or MirrorDescent
    (``LANE_RULE_KINDS``) run NC_NL points per SIMD block (built by
    noether_core/_scan.py).

    ``run()``, ``steps_done()`` and ``cancel()`` behave as ScanKernel's.
    """
    cdef nc_lane_ctx c
    cdef nc_lane_ws** ws
    cdef int n_threads
    cdef int cancel_flag
    cdef list keep
    cdef object rows_first                 # shared streams drawn in run(): a task of each
    cdef bint moments                      # batch_form="moments": run() forms mom_tab

    def __cinit__(self, str pot_kind, dict pot_data,
                  object rule,             # IN _bridge.RuleInputs (P points)
                  cnp.ndarray q0,          # IN (d,)
                  object plan,             # IN _bridge.ScanPlan
                  cnp.ndarray bptr,        # IN recorded blocks (CSR)
                  cnp.ndarray bidx,
                  object out,              # OUT _bridge.ScanOutputs
                  tuple charge_blocks=None, str isa=None, tuple batch=None):
        """``pot_data``: the potential's arrays (``A``, ``b``, ``X``, ``y``) and ``eps``;
        ``charge_blocks``: None or ``(sptr, sidx)``, the scale blocks whose laws are
        tracked (outputs in ``out.charge_worst``/``charge_worst_step``); ``isa``: None
        (best available) or one of :func:`lane_isas`.  Series rows (``plan.record_every``
        > 0) go to ``out.s_*``, filled with NaN by the caller.  ``batch``: None (full
        batch) or ``(B, rng)`` or ``(B, rng, slots)``, minibatch lanes (docs/scan.md
        §"Minibatch lanes"): B rows per step, point p's PCG64 stream starting at
        ``rng[p] = (state >> 64, state mod 2**64, inc >> 64, inc mod 2**64)`` (uint64,
        shape (P, 4)); ``slots`` (intp, length a multiple of NC_NL): the task of each
        lane slot of the blocks (-1: padding; each block's first slot a task; every task
        once), so that the tasks sharing a stream share blocks (their draws are made once
        per block)."""
        cdef nc_lane_ctx* c = &self.c
        if pot_kind not in _LANE_POTS:
            raise ValueError(f"LaneScanKernel: no lane form of potential {pot_kind!r}")
        self.keep = [pot_data, rule, q0, plan, bptr, bidx, out, charge_blocks, batch]
        self.cancel_flag = 0
        self.n_threads = plan.n_threads
        if self.n_threads < 1 or plan.steps < 0:
            raise ValueError("LaneScanKernel: n_threads must be >= 1 and steps >= 0")
        memset(c, 0, sizeof(nc_lane_ctx))
        self._set_potential(pot_kind, pot_data, q0.shape[0])
        self._set_rule_and_outputs(rule, q0, plan, bptr, bidx, out)
        c.poll_mask = 255
        if batch is not None:
            self._set_batch(batch)
        if charge_blocks is not None:
            self._set_charges(charge_blocks, out)
        if plan.record_every > 0:
            self._set_series(plan.record_every, out)
        self._set_isa(isa)
        self._alloc_scratch()

    cdef _set_potential(self, str pot_kind, dict pot_data, Py_ssize_t d):
        cdef nc_lane_ctx* c = &self.c
        _check_f64(*[pot_data[k] for k in ("A", "b", "X", "y", "R", "t") if k in pot_data])
        c.pot = _LANE_POTS[pot_kind]
        c.d = d
        if "A" in pot_data:
            c.A = <const double*> _data(pot_data["A"])
        if "b" in pot_data:
            c.b = <const double*> _data(pot_data["b"])
        if "X" in pot_data:
            c.X = <const double*> _data(pot_data["X"])
            c.y = <const double*> _data(pot_data["y"])
            c.N = pot_data["X"].shape[0]
            c.eps = pot_data["eps"]
        if "R" in pot_data:
            if pot_data["R"].shape[0] != d or pot_data["t"].shape[0] != d:
                raise ValueError("LaneScanKernel: inconsistent projection shapes")
            c.R = <const double*> _data(pot_data["R"])
            c.t = <const double*> _data(pot_data["t"])
            c.rho2 = pot_data["rho2"]

    cdef _set_rule_and_outputs(self, object rule, cnp.ndarray q0, object plan,
                               cnp.ndarray bptr, cnp.ndarray bidx, object out):
        cdef nc_lane_ctx* c = &self.c
        hp, vec0, sca0 = rule.hp, rule.vec, rule.sca
        cdef Py_ssize_t P = hp.shape[0], d = q0.shape[0]
        if rule.kind not in _LANE_RULES:
            raise ValueError(f"LaneScanKernel: rule kind {rule.kind} has no lane form")
        lrule, nhp, nvec = _LANE_RULES[rule.kind]
        _check_f64(hp, vec0, sca0, q0, out.q, out.loss, out.loss_min, out.norm2,
                   out.angular_update)
        _check_intp(bptr, bidx, out.status, out.stop_step)
        _check_csr("LaneScanKernel", "recorded blocks (bptr/bidx)", bptr, bidx, d)
        if lrule == NC_LRULE_MIRROR:
            self._check_mirror(hp, vec0, d)
            nvec = 1 if vec0.shape[1] == d and d > 0 else 0
        if (hp.ndim != 2 or hp.shape[1] != nhp or vec0.shape[0] != P or sca0.shape[0] != P
                or (sca0.shape[1] < 1 and lrule != NC_LRULE_MIRROR)
                or vec0.shape[1] != nvec * d or out.q.shape[0] != P
                or out.loss.shape[0] != P or out.angular_update.shape[0] != P
                or out.status.shape[0] != P):
            raise ValueError("LaneScanKernel: inconsistent shapes")
        c.rule = lrule
        if lrule == NC_LRULE_SRMS:
            pptr, pidx = rule.pptr, rule.pidx
            _check_intp(pptr, pidx)
            if pptr.ndim != 1 or pptr.shape[0] < 2 or sca0.shape[1] < pptr.shape[0]:
                raise ValueError("LaneScanKernel: inconsistent partition")
            _check_csr("LaneScanKernel", "partition (RuleInputs.pptr/pidx)", pptr, pidx, d)
            self.keep += [pptr, pidx]
            c.npart = pptr.shape[0] - 1
            c.pptr = <const Py_ssize_t*> _data(pptr)
            c.pidx = <const Py_ssize_t*> _data(pidx)
        if lrule == NC_LRULE_ADAM and P > 0 and plan.steps > 0:
            # one row of pow(beta, step) per distinct (beta, initial step), shared by
            # every block and thread (a pow per lane and step would cost more than the
            # step's arithmetic), and across calls (_cached_pow_table)
            table, rows = _adam_pow_rows(hp, sca0, plan.steps)
            self.keep += [table, rows]
            c.powtab = <const double*> _data(table)
            c.pow_row = <const Py_ssize_t*> _data(rows)
            c.pow_len = table.shape[1]
        c.P = P
        c.hp = <const double*> _data(hp)
        c.nhp = hp.shape[1]
        c.vec0 = <const double*> _data(vec0)
        c.nvecd = vec0.shape[1]
        c.sca0 = <const double*> _data(sca0)
        c.nsca = sca0.shape[1]
        c.q0 = <const double*> _data(q0)
        c.steps = plan.steps
        c.late_start = plan.late_start
        c.bptr = <const Py_ssize_t*> _data(bptr)
        c.bidx = <const Py_ssize_t*> _data(bidx)
        c.nb = bptr.shape[0] - 1
        c.q_final = <double*> _data(out.q)
        c.loss_final = <double*> _data(out.loss)
        c.loss_min = <double*> _data(out.loss_min)
        c.bn2_final = <double*> _data(out.norm2)
        c.angle = <double*> _data(out.angular_update)
        c.status = <Py_ssize_t*> _data(out.status)
        c.stop = <Py_ssize_t*> _data(out.stop_step)
        c.cancel = &self.cancel_flag

    cdef _check_mirror(self, cnp.ndarray hp, cnp.ndarray vec0, Py_ssize_t d):
        """MirrorDescent rows (lr, wd, map, p; D in vec0 where the map is diagonal): the
        map a code 0-3, p > 1 where it is pnorm, D (one row of d) present and positive
        where it is diagonal -- what the rule's constructor guarantees."""
        if hp.ndim != 2 or hp.shape[1] != 4:
            raise ValueError("LaneScanKernel: MirrorDescent rows must have 4 columns")
        kind = hp[:, 2]
        if np.any((kind != 0) & (kind != 1) & (kind != 2) & (kind != 3)):
            raise ValueError("LaneScanKernel: MirrorDescent map codes must be 0, 1, 2 or 3")
        if np.any((kind == 2) & ~(hp[:, 3] > 1.0)):
            raise ValueError("LaneScanKernel: MirrorDescent pnorm needs p > 1")
        if np.any(kind == 1) and (vec0.shape[1] != d or np.any(~(vec0[kind == 1] > 0.0))):
            raise ValueError("LaneScanKernel: MirrorDescent diagonal needs D > 0 (d values "
                             "per point)")

    cdef _set_batch(self, tuple batch):
        """Minibatch lanes: B rows per step of the potential's N, each point's stream,
        optionally the tasks' order in blocks."""
        cdef nc_lane_ctx* c = &self.c
        cdef Py_ssize_t B, interval = 256
        slots = task_stream = None
        form = "rows"
        if len(batch) == 5:
            B, rng, slots, task_stream, form = batch
        elif len(batch) == 4:
            B, rng, slots, task_stream = batch
        elif len(batch) == 3:
            B, rng, slots = batch
        else:
            B, rng = batch
        if slots is not None:
            self._set_slots(slots)
        if c.pot != NC_LPOT_BN_UNIT or c.X == NULL:
            raise ValueError("LaneScanKernel: minibatch lanes need a potential with data "
                             "rows (BatchNormUnit)")
        if B < 1 or B > c.N or c.N >= 2**32:
            raise ValueError(f"LaneScanKernel: batch size {B} must lie in [1, n_data="
                             f"{c.N}] (and n_data < 2**32)")
        if (not isinstance(rng, np.ndarray) or rng.dtype != np.uint64 or rng.ndim != 2
                or rng.shape[0] != c.P or rng.shape[1] != 4
                or not rng.flags.c_contiguous):
            raise ValueError(f"LaneScanKernel: the streams must be a C-contiguous uint64 "
                             f"array of shape ({c.P}, 4)")
        c.batch = B
        c.rng0 = <const unsigned long long*> _data(rng)
        # shared draws: a table of T steps (a multiple of NC_TAB_C, at most 64 steps and
        # ~64 KiB of partners: T B <= 2**14)
        c.tab_T = max(NC_TAB_C, min(64, 2**14 // B) // NC_TAB_C * NC_TAB_C)
        if form not in BATCH_FORMS:
            raise ValueError(f"LaneScanKernel: batch form {form!r} is not one of "
                             f"{BATCH_FORMS}")
        if form == "moments":
            self._set_moments(task_stream, rng, slots)
        elif task_stream is not None:
            self._set_rows_table(task_stream, rng, B)
        # read the cancel flag at least every ~4 M multiply-adds of a block's gradients
        while interval > 1 and interval * B * (c.d + 4) > 2**22:
            interval //= 2
        c.poll_mask = interval - 1

    cdef _set_rows_table(self, object task_stream, object rng, Py_ssize_t B):
        """Streams shared by several tasks (task p on stream task_stream[p], every task of
        a stream with the same starting state): their rows for the whole run drawn once
        per stream in run(), before the blocks, when the table holds at most
        ROWS_TABLE_MAX entries (else each block draws its own)."""
        cdef nc_lane_ctx* c = &self.c
        first = self._check_streams(task_stream, rng)
        if first is None:
            return
        K = first.shape[0]
        if K * c.steps * B > ROWS_TABLE_MAX:
            return
        table = np.empty((K, c.steps * B), dtype=np.uint32)
        self.keep += [task_stream, table]
        self.rows_first = np.ascontiguousarray(first, dtype=np.intp)
        c.task_stream = <const Py_ssize_t*> _data(task_stream)
        c.rows_tab = <const unsigned int*> _data(table)

    cdef _check_streams(self, object task_stream, object rng):
        """task_stream validated (task p on stream task_stream[p]; the streams numbered
        0, 1, ... with equal starting states within a stream); the first task of each."""
        cdef nc_lane_ctx* c = &self.c
        if (not isinstance(task_stream, np.ndarray) or task_stream.dtype != np.intp
                or task_stream.shape != (c.P,) or not task_stream.flags.c_contiguous):
            raise ValueError(f"LaneScanKernel: task_stream must be a C-contiguous intp "
                             f"array of shape ({c.P},)")
        if c.P == 0:
            return None
        K = int(task_stream.max()) + 1
        ids, first = np.unique(task_stream, return_index=True)
        if (task_stream.min() < 0 or ids.shape[0] != K
                or not np.array_equal(rng[first[task_stream]], rng)):
            raise ValueError("LaneScanKernel: task_stream must number the distinct streams "
                             "0, 1, ... with equal starting states within a stream")
        return first

    cdef _set_moments(self, object task_stream, object rng, object slots):
        """batch_form="moments": every block on one stream (checked), each stream's
        batch moments for the whole run formed once in run(), before the blocks
        (nc_mom_table; K streams x steps x (d d + d + 1) doubles, counted in the scan's
        budget by the facade)."""
        cdef nc_lane_ctx* c = &self.c
        if task_stream is None:
            raise ValueError("LaneScanKernel: the moments form needs the tasks' streams")
        first = self._check_streams(task_stream, rng)
        if first is None:
            return
        if slots is None:
            slots = np.arange(c.P, dtype=np.intp)
        pad = -(-slots.shape[0] // NC_NL) * NC_NL - slots.shape[0]
        blocks = np.concatenate([slots, np.full(pad, -1, dtype=np.intp)]).reshape(-1, NC_NL)
        lead = np.repeat(blocks[:, :1], NC_NL, axis=1)
        tasks = np.where(blocks >= 0, blocks, lead)
        if np.any(task_stream[tasks] != task_stream[lead]):
            raise ValueError("LaneScanKernel: the moments form needs every block's tasks on "
                             "one stream (batch_streams='seed', one seed per block)")
        L = c.d * c.d + c.d + 1
        table = np.empty((first.shape[0], c.steps * L))
        self.keep += [task_stream, table]
        self.rows_first = np.ascontiguousarray(first, dtype=np.intp)
        self.moments = True
        c.task_stream = <const Py_ssize_t*> _data(task_stream)
        c.mom_tab = <const double*> _data(table)
        c.mom_len = L

    cdef _set_slots(self, object slots):
        cdef nc_lane_ctx* c = &self.c
        if (not isinstance(slots, np.ndarray) or slots.dtype != np.intp or slots.ndim != 1
                or not slots.flags.c_contiguous or slots.shape[0] % NC_NL != 0):
            raise ValueError(f"LaneScanKernel: the slots must be a C-contiguous intp "
                             f"array whose length is a multiple of {NC_NL}")
        tasks = slots[slots >= 0]
        if (np.any(slots < -1) or tasks.shape[0] != c.P
                or not np.array_equal(np.sort(tasks), np.arange(c.P))
                or np.any(slots[::NC_NL] < 0)):
            raise ValueError(f"LaneScanKernel: the slots must hold every task 0..{c.P - 1} "
                             f"once, -1 for padding, a task first in every block")
        self.keep.append(slots)
        c.slot_task = <const Py_ssize_t*> _data(slots)
        c.nslots = slots.shape[0]

    cdef _set_charges(self, tuple charge_blocks, object out):
        cdef nc_lane_ctx* c = &self.c
        sptr, sidx = charge_blocks
        _check_intp(sptr, sidx)
        _check_csr("LaneScanKernel", "tracked scale blocks (charge_blocks)", sptr, sidx, c.d)
        c.nsym = sptr.shape[0] - 1
        if c.nsym > 0:
            worst, worst_step = out.charge_worst, out.charge_worst_step
            _check_f64(worst)
            _check_intp(worst_step)
            if worst.shape[0] != c.P or worst.shape[1] != c.nsym:
                raise ValueError("LaneScanKernel: inconsistent charge output shapes")
            c.sptr = <const Py_ssize_t*> _data(sptr)
            c.sidx = <const Py_ssize_t*> _data(sidx)
            c.worst = <double*> _data(worst)
            c.worst_step = <Py_ssize_t*> _data(worst_step)

    cdef _set_series(self, Py_ssize_t rec_every, object out):
        cdef nc_lane_ctx* c = &self.c
        cdef Py_ssize_t P = c.P
        s_q, s_loss, s_g2, s_bn2, n_rows = out.s_q, out.s_loss, out.s_g2, out.s_bn2, out.n_rows
        _check_f64(s_q, s_loss, s_g2, s_bn2)
        _check_intp(n_rows)
        if (rec_every < 1 or s_q.ndim != 3 or s_q.shape[0] != P or s_q.shape[2] != c.d
                or s_loss.shape[0] != P or s_loss.shape[1] != s_q.shape[1]
                or s_g2.shape[0] != P or s_g2.shape[1] != s_q.shape[1]
                or s_bn2.shape[0] != P or s_bn2.shape[1] != s_q.shape[1]
                or s_bn2.shape[2] != c.nb or n_rows.shape[0] != P
                or s_q.shape[1] < c.steps // rec_every + 1):
            raise ValueError("LaneScanKernel: inconsistent series shapes")
        c.rec_every = rec_every
        c.rec_rows = s_q.shape[1]
        c.s_q = <double*> _data(s_q)
        c.s_loss = <double*> _data(s_loss)
        c.s_g2 = <double*> _data(s_g2)
        c.s_bn2 = <double*> _data(s_bn2)
        c.n_rows = <Py_ssize_t*> _data(n_rows)

    cdef _set_isa(self, str isa):
        cdef nc_lane_ctx* c = &self.c
        if isa is None:
            c.isa = nc_lane_best_isa()
        else:
            codes = {v: k for k, v in _ISA_NAMES.items()}
            if isa not in codes or not nc_lane_isa_available(codes[isa]):
                raise ValueError(f"isa={isa!r} is not available here; available: "
                                 f"{lane_isas()}")
            c.isa = codes[isa]

    cdef _alloc_scratch(self):
        cdef nc_lane_ctx* c = &self.c
        cdef size_t sz
        cdef void* mem
        cdef int t, n_threads = self.n_threads
        if posix_memalign(<void**> &self.ws, CACHE_LINE,
                          _pad(n_threads * sizeof(nc_lane_ws*))) != 0:
            raise MemoryError("scratch table of scan")
        memset(self.ws, 0, n_threads * sizeof(nc_lane_ws*))
        sz = nc_lane_ws_bytes(c)
        for t in range(n_threads):
            if posix_memalign(<void**> &self.ws[t], CACHE_LINE, _pad(sizeof(nc_lane_ws))) != 0:
                raise MemoryError("scratch of scan")
            memset(self.ws[t], 0, sizeof(nc_lane_ws))
            if posix_memalign(&mem, CACHE_LINE, sz) != 0:
                raise MemoryError(f"scratch of scan ({sz} bytes per thread)")
            memset(mem, 0, sz)
            nc_lane_ws_carve(c, self.ws[t], mem)

    def __dealloc__(self):
        cdef int t
        if self.ws != NULL:
            for t in range(self.n_threads):
                if self.ws[t] != NULL:
                    free(self.ws[t].block)
                    free(self.ws[t])
            free(self.ws)

    @property
    def isa(self):
        """Name of the compiled version that runs."""
        return _ISA_NAMES[self.c.isa]

    def run(self):
        """Run every block of NC_NL points (GIL released for the whole grid)."""
        cdef nc_lane_ctx* c = &self.c
        cdef nc_lane_ws** ws = self.ws
        cdef Py_ssize_t k, nblk = ((self.c.nslots if self.c.slot_task != NULL else self.c.P)
                                   + NC_NL - 1) // NC_NL
        cdef int nt = self.n_threads
        cdef Py_ssize_t K = 0, ks
        cdef const Py_ssize_t* first = NULL
        cdef unsigned int* perm = NULL
        cdef unsigned int* jbuf = NULL
        cdef double* xt = NULL
        cdef bint moments = self.moments
        if self.rows_first is not None and c.steps > 0:
            K = self.rows_first.shape[0]
            first = <const Py_ssize_t*> _data(self.rows_first)
            perm = <unsigned int*> malloc(c.N * sizeof(unsigned int))
            jbuf = <unsigned int*> malloc(c.batch * sizeof(unsigned int))
            if moments:
                xt = <double*> malloc((c.batch * ((c.d + 7) // 8 * 8) + (c.d + 7) // 8 * 8
                                       + c.batch + 1) * sizeof(double))
            if perm == NULL or jbuf == NULL or (moments and xt == NULL):
                free(perm)
                free(jbuf)
                free(xt)
                raise MemoryError("scan: shared rows scratch")
            for ks in range(c.N):
                perm[ks] = <unsigned int> ks
        try:
            with nogil:
                for ks in range(K):              # each shared stream's rows, once
                    if moments:                  # (or its batches' moments)
                        if nc_mom_table(c.N, c.d, c.batch, c.steps, c.X, c.y,
                                        c.rng0 + 4 * first[ks], perm, jbuf, xt,
                                        <double*> c.mom_tab + ks * c.steps * c.mom_len,
                                        c.cancel, c.isa):
                            break                # cancelled: every block stops at step 0
                    else:
                        nc_lane_draw_rows(c.N, c.batch, c.steps, c.rng0 + 4 * first[ks],
                                          perm, jbuf,
                                          <unsigned int*> c.rows_tab + ks * c.steps * c.batch)
                if nt == 1:
                    for k in range(nblk):
                        nc_lane_run_block(c, ws[0], k * NC_NL)
                else:
                    for k in prange(nblk, num_threads=nt, schedule="dynamic", chunksize=1):
                        nc_lane_run_block(c, ws[threadid()], k * NC_NL)
        finally:
            free(perm)
            free(jbuf)
            free(xt)

    def steps_done(self):
        cdef Py_ssize_t t, total = 0
        for t in range(self.n_threads):
            total += self.ws[t].progress
        return total

    def _lane_state(self, int t):
        """Copies of thread t's lane arrays q, qn, buf, g as a (4, d, NC_NL) array, as the
        last block left them (for tests)."""
        if t < 0 or t >= self.n_threads:
            raise IndexError(f"thread {t} of {self.n_threads}")
        cdef Py_ssize_t n = self.c.d * NC_NL
        out = np.empty((4, self.c.d, NC_NL))
        cdef double[:, :, ::1] o = out
        cdef nc_lane_ws* w = self.ws[t]
        if n > 0:
            memcpy(&o[0, 0, 0], w.q, n * sizeof(double))
            memcpy(&o[1, 0, 0], w.qn, n * sizeof(double))
            memcpy(&o[2, 0, 0], w.buf, n * sizeof(double))
            memcpy(&o[3, 0, 0], w.g, n * sizeof(double))
        return out

    def cancel(self):
        self.cancel_flag = 1
