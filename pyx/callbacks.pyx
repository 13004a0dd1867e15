# cython: language_level=3
"""User potentials: a compiled callback (``scipy.LowLevelCallable``) or a Python callable.

Design
------
* :class:`CompiledKernel` wraps a user's C function with the potential ABI
  (``double fn(const double* q, double* g, Py_ssize_t d, void* params) noexcept nogil``).
  The training loop calls the user's pointer *directly*, without the GIL and without any
  trampoline: ``fn`` is the user's function and the per-run "workspace" is the callable's
  ``user_data`` pointer, shared by every run (the user's function must treat it as
  read-only, or be re-entrant, for concurrent runs).  When the callable carries no
  user_data, ``params`` points to a zero-filled 64-byte block owned by the kernel (the ABI
  never passes NULL: ``new_params`` uses NULL to signal an error).  The kernel keeps a
  reference to the LowLevelCallable (and so to whatever owns the code and user_data).
  The signature string was validated by the facade (noether_core/potentials.py).
* :class:`PythonKernel` wraps ``fn(q) -> (f, g)``.  Its C trampoline ``_c_grad_python``
  takes the GIL for every call (the documented slow path), passes a fresh copy of q,
  checks the return value (a pair; g of shape (d,), real, convertible to float64) and
  copies g out.  Nothing Python-level escapes the nogil loop: an exception raised by ``fn``
  (any ``BaseException``: KeyboardInterrupt and SystemExit included), or a malformed
  return value, is recorded at once in the kernel's table of failed runs, g is filled
  with NaN and NaN is returned, so the loop stops at that step with a non-finite-loss
  status.  The facade collects the exception after the run (:meth:`PythonKernel.take_error`)
  and re-raises it (as ``CallbackError`` from it, or as itself for KeyboardInterrupt and
  SystemExit).
* A *run* is identified by its owner: the thread that made its workspaces
  (``new_params``, called with the GIL by ``train_kernel``, ``ScanKernel.__cinit__``,
  ``integrate_kernel``, ``value_and_grad``).  The failure is filed under the owner, not
  under the thread that called ``fn`` (an OpenMP or helper thread of a scan, whose id is
  short-lived), and the owner collects it with ``take_error()`` in the same thread: so
  nothing is left behind per call (issue 19 item 12).  Once a run has failed, every
  workspace of that run returns NaN at once without calling ``fn`` (the other points of a
  scan stop at their next gradient).  A new run of the same owner forgets an error
  nobody collected; entries of threads that no longer exist are pruned when the table
  grows past ``_PRUNE_AT`` entries, so the table stays bounded even if a caller never
  collects.
* Workspaces of PythonKernel are calloc'ed structs holding strong references to ``fn``
  and to the kernel (for its table); ``free_params`` drops both.
"""
from libc.math cimport NAN
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from cpython.pycapsule cimport (PyCapsule_GetPointer, PyCapsule_GetName,
                                PyCapsule_GetContext, PyCapsule_CheckExact)
from cpython.ref cimport PyObject, Py_XINCREF, Py_XDECREF

import threading

import numpy as np
cimport numpy as cnp

from noether_core._kernels.potentials cimport Potential, grad_fn, BatchView

cnp.import_array()


# ----------------------------------------------------------------------------------------
# Compiled callbacks

cdef class CompiledKernel(Potential):
    """A user's C gradient function (from a LowLevelCallable) as a potential."""
    cdef object llc                # the LowLevelCallable: keeps code and user_data alive
    cdef void* user_data
    cdef double dummy[8]           # params when the callable has no user_data
    cdef readonly str signature

    def __cinit__(self, object llc, Py_ssize_t d):
        cdef object cap = tuple.__getitem__(llc, 0)
        if not PyCapsule_CheckExact(cap):
            raise TypeError("callback: the LowLevelCallable does not hold a capsule")
        cdef const char* name = PyCapsule_GetName(cap)
        self.fn = <grad_fn> PyCapsule_GetPointer(cap, name)
        self.user_data = PyCapsule_GetContext(cap)
        self.signature = "" if name == NULL else (<bytes> name).decode()
        self.llc = llc
        self.d = d
        self.n_data = 0
        cdef int i
        for i in range(8):
            self.dummy[i] = 0.0

    cdef void* new_params(self) except NULL:
        if self.user_data != NULL:
            return self.user_data
        return <void*> &self.dummy[0]

    cdef void free_params(self, void* params) noexcept:
        pass                       # user_data belongs to the user; dummy to the kernel

    @property
    def has_user_data(self):
        return self.user_data != NULL


# ----------------------------------------------------------------------------------------
# Python callables (slow path: the GIL is taken for every call)

cdef struct PyParams:
    BatchView view
    PyObject* fn                   # strong reference
    PyObject* kernel               # strong reference to the PythonKernel (its table)
    unsigned long owner            # thread ident of the run's owner (made the workspace)
    Py_ssize_t calls               # calls of fn made by this workspace
    int stopped                    # this run failed: return NaN without calling fn


#: the failure table is pruned of threads no longer alive above this many entries
_PRUNE_AT = 64


cdef object _call_checked(object fn, const double* q, double* g, Py_ssize_t d):
    """Call fn on a copy of q, validate (f, g), copy g out; returns f (may raise)."""
    cdef cnp.ndarray qa = np.empty(d)
    memcpy(cnp.PyArray_DATA(qa), q, d * sizeof(double))
    out = fn(qa)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"fn(q) must return a pair (f, g), got {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, tuple) else ""))
    f_obj, g_obj = out
    ga = np.asarray(g_obj)
    if ga.dtype.kind not in "biuf":
        raise TypeError(f"fn(q) returned a gradient of dtype {ga.dtype}; real numbers "
                        "are required")
    if ga.shape != (d,):
        raise ValueError(f"fn(q) returned a gradient of shape {ga.shape}; expected ({d},)")
    fa = np.asarray(f_obj)
    if fa.shape != () or fa.dtype.kind not in "biuf":
        raise TypeError(f"fn(q) must return a real scalar loss, got "
                        f"{type(f_obj).__name__} of shape {fa.shape}")
    cdef cnp.ndarray gc = np.ascontiguousarray(ga, dtype=np.float64)
    memcpy(g, cnp.PyArray_DATA(gc), d * sizeof(double))
    return float(fa)


cdef double _py_call(PyParams* p, const double* q, double* g,
                     Py_ssize_t d) noexcept with gil:
    """The GIL-holding half of the trampoline; NaN (and ``p.stopped``) after a failure of
    this run, recorded in the kernel's table under the run's owner."""
    cdef PythonKernel kern = <PythonKernel> p.kernel
    if kern._failed(p.owner):
        p.stopped = 1                # another workspace of this run failed: stop here
        return NAN
    p.calls += 1
    try:
        return _call_checked(<object> p.fn, q, g, d)
    except BaseException as exc:
        p.stopped = 1
        try:
            kern._record(p.owner, exc, p.calls - 1)
        except BaseException:
            pass                     # (a MemoryError here: the run still stops)
        return NAN


cdef double _c_grad_python(const double* q, double* g, Py_ssize_t d,
                           void* params) noexcept nogil:
    cdef PyParams* p = <PyParams*> params
    cdef double f = NAN
    cdef Py_ssize_t i
    if p.stopped == 0:
        f = _py_call(p, q, g, d)
    if p.stopped != 0:
        f = NAN
        for i in range(d):
            g[i] = f
    return f


cdef class PythonKernel(Potential):
    """``fn(q) -> (f, g)`` as a potential (each call takes the GIL)."""
    cdef object pyfn
    cdef dict errors               # owner thread id -> (exception, call index)
    cdef object lock

    def __cinit__(self, object fn, Py_ssize_t d):
        self.pyfn = fn
        self.d = d
        self.n_data = 0
        self.fn = _c_grad_python
        self.errors = {}
        self.lock = threading.Lock()

    cdef void* new_params(self) except NULL:
        cdef unsigned long owner = threading.get_ident()
        cdef PyParams* p = <PyParams*> calloc(1, sizeof(PyParams))
        if p == NULL:
            raise MemoryError("workspace of a Python potential")
        Py_XINCREF(<PyObject*> self.pyfn)
        p.fn = <PyObject*> self.pyfn
        Py_XINCREF(<PyObject*> self)
        p.kernel = <PyObject*> self
        p.owner = owner
        # a new run of this owner forgets an error nobody collected
        with self.lock:
            self.errors.pop(owner, None)
        return p

    cdef void free_params(self, void* params) noexcept:
        cdef PyParams* p = <PyParams*> params
        Py_XDECREF(p.fn)
        Py_XDECREF(p.kernel)
        free(p)

    cdef bint _failed(self, unsigned long owner):
        """Whether the run of ``owner`` has failed (GIL held)."""
        return owner in self.errors

    cdef _record(self, unsigned long owner, object exc, Py_ssize_t call):
        """File the first failure of ``owner``'s run (GIL held)."""
        with self.lock:
            if owner in self.errors:
                return
            self.errors[owner] = (exc, call)
            if len(self.errors) > _PRUNE_AT:
                alive = {t.ident for t in threading.enumerate()}
                for key in [k for k in self.errors if k not in alive and k != owner]:
                    del self.errors[key]

    def take_error(self):
        """``(exception, call_index)`` of the failed run this thread owns, or None; the
        entry is removed (collected)."""
        with self.lock:
            return self.errors.pop(threading.get_ident(), None)

    def pending_errors(self):
        """How many failed runs are filed and not yet collected (a diagnostic: 0 after
        every entry point has returned)."""
        with self.lock:
            return len(self.errors)

    @property
    def callable(self):
        return self.pyfn
