# cython: language_level=3
"""The potential ABI shared by every kernel family (cimport it, do not re-declare it).

A potential is a C function filling the gradient of the loss at a flat parameter vector and
returning the loss value::

    double grad(const double* q, double* g, Py_ssize_t d, void* params) noexcept nogil

``params`` is a per-run *workspace* made by :meth:`Potential.new_params` (with the GIL) and
released by :meth:`Potential.free_params`: it points to the potential's read-only data and
owns the scratch memory the gradient needs, so one workspace per thread makes concurrent
runs safe.  Built-in data potentials start their workspace with a :c:type:`BatchView`, into
which the training loop writes the rows of the current minibatch before each call
(``rows == NULL`` means the full data set).
"""

ctypedef double (*grad_fn)(const double* q, double* g, Py_ssize_t d,
                           void* params) noexcept nogil


cdef struct BatchView:
    const Py_ssize_t* rows      # IN: row indices of the minibatch, NULL = all rows
    Py_ssize_t n_rows           # IN: number of rows in the minibatch (ignored if rows NULL)


cdef class Potential:
    cdef grad_fn fn              # the gradient function of the ABI
    cdef Py_ssize_t d            # dimension of q
    cdef Py_ssize_t n_data       # rows of data a minibatch draws from; 0: no data
    cdef void* new_params(self) except NULL
    cdef void free_params(self, void* params) noexcept


cdef inline void set_batch(void* params, const Py_ssize_t* rows,
                           Py_ssize_t n_rows) noexcept nogil:
    """Point a data potential's workspace at a minibatch (NULL rows: full data)."""
    cdef BatchView* view = <BatchView*> params
    view.rows = rows
    view.n_rows = n_rows
