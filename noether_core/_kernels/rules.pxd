# cython: language_level=3
"""The training loop's contract: one struct describes one whole run (raw pointers only),
so a single run (``train``) and every grid point of a scan execute the same nogil code."""
from numpy.random cimport bitgen_t
from noether_core._kernels.potentials cimport grad_fn

# rule kinds (noether_core/rules.py maps classes to these)
cdef enum:
    RULE_SGD = 0
    RULE_RMSPROP = 1
    RULE_ADAM = 2
    RULE_SCALAR_RMSPROP = 3
    RULE_MIRROR = 4

# run status codes: NC_ST_* of pyx/nc_status.h (noether_core/_kernels/status.pxd)
from noether_core._kernels.status cimport *


# symmetry families (noether_core.symmetry.FAMILIES order)
cdef enum:
    FAM_TRANSLATION = 0
    FAM_SCALE = 1
    FAM_RESCALE = 2
    FAM_ROTATION = 3


cdef struct ChargeSpec:
    # Noether charges and the residual of each rule's exact discrete balance law, tracked
    # at every step (rules.pyx, docs/balance_laws.md).  Owned by the caller of run_loop.
    Py_ssize_t nsym
    const int* fam              # IN: family of each tracked symmetry
    const Py_ssize_t* ptr1      # IN: first block of each symmetry (CSR, nsym + 1)
    const Py_ssize_t* idx1
    const Py_ssize_t* ptr2      # IN: second block (rescale only; empty otherwise)
    const Py_ssize_t* idx2
    const double* dirn          # IN: translation directions, aligned with idx1
    const Py_ssize_t* optr      # IN: offsets of each rotation's Omega in omega (nsym + 1)
    const double* omega         # IN: |B| x |B| skew matrices, row-major
    Py_ssize_t nvec             # rule state sizes (for the copies below)
    Py_ssize_t nsca
    double* last_delta          # IN/OUT (d): Delta_n = q_n - q_{n-1} of the last step
    double* q_prev              # scratch (d)
    double* q_free              # scratch (d): q_{n+1} of the step with zero gradient
    double* vec_free            # scratch (nvec * d)
    double* sca_free            # scratch (nsca)
    double* zeros               # scratch (d), all zero
    double* om_q                # scratch (len(idx1)): Omega q_n on each rotation block
    double* free_transfer       # scratch (nsym)
    double* last_res            # IN/OUT (nsym): relative residual of the last step
    double* rec_moment          # OUT (n_rec_max, nsym)
    double* rec_charge          # OUT (n_rec_max, nsym)
    double* rec_resid           # OUT (n_rec_max, nsym)
    double* last_metric         # IN/OUT (nsym): metric term of the last step (mirror rules)
    double* rec_metric          # OUT (n_rec_max, nsym)
    double* worst_metric        # IN/OUT (nsym): largest |metric term| so far
    double* worst               # IN/OUT (nsym): worst relative residual so far
    Py_ssize_t* worst_step      # IN/OUT (nsym): step at which it occurred


cdef struct RunSpec:
    # the rule
    int kind
    const double* hp            # IN: hyper-parameters, layout per kind (rules.pyx)
    double* vec                 # IN/OUT: per-coordinate state, (nvec, d) row-major
    double* sca                 # IN/OUT: scalar state
    const Py_ssize_t* pptr      # IN: partition of coordinates into parts, CSR: part p is
    const Py_ssize_t* pidx      # IN: pidx[pptr[p]:pptr[p + 1]] (per-part state: scalar RMSProp)
    Py_ssize_t npart
    # the potential
    grad_fn fn
    void* params                # workspace from Potential.new_params
    Py_ssize_t d
    Py_ssize_t n_data           # rows minibatches draw from (0: none)
    Py_ssize_t batch_size       # 0: full batch
    bitgen_t* rng               # NULL unless minibatching
    Py_ssize_t* perm            # scratch (n_data)
    # the trajectory
    double* q                   # IN/OUT: q_0 in, q_steps out
    double* g                   # scratch (d)
    Py_ssize_t steps
    # IN: no terminal evaluation after the last step (a scan's intermediate chunk: the
    # next chunk's first state is that same q)
    bint skip_terminal
    Py_ssize_t record_every
    const Py_ssize_t* bptr      # IN: named blocks (CSR) whose norm^2 is recorded
    const Py_ssize_t* bidx
    Py_ssize_t nb
    double* rec_q               # OUT: (n_rec_max, d), or NULL: q not recorded
    double* rec_loss            # OUT: (n_rec_max,)
    double* rec_g2              # OUT: (n_rec_max,)
    double* rec_bn2             # OUT: (n_rec_max, nb)
    double* rec_bg2             # OUT: (n_rec_max, nb) block |g_B|^2, or NULL (off)
    double* rec_bd2             # OUT: (n_rec_max, nb) block |Delta_n|^2_B, or NULL (off)
    double* d_last              # IN/OUT (d): Delta_n of the last step (with rec_bd2)
    double* q_old               # scratch (d) (with rec_bd2)
    ChargeSpec* cs              # NULL: no charges tracked
    bint check_signals          # poll Python signals (Ctrl-C) ~every 50 ms; main thread only
    double next_poll            # scratch: monotonic time of the next poll
    # results
    int status
    Py_ssize_t stop_step        # step at which a non-finite value was met (-1: none)
    Py_ssize_t n_rec            # rows written


cdef void run_loop(RunSpec* s) noexcept nogil

# Python signals (Ctrl-C) from inside any nogil loop: poll_signals looks at the clock and,
# once ``next_poll`` (monotonic seconds) has passed, takes the GIL, runs the handlers and
# sets the next poll ~50 ms later; it returns 1 if a handler raised.  That exception is
# held aside (no Python code may run with it set) until reraise_signal() raises it.
cdef int poll_signals(double* next_poll) noexcept nogil
cdef int reraise_signal() except -1
