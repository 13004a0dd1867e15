# cython: language_level=3
"""Integrators of the continuous learning models (SPEC §2, §5; docs/integrators.md).

Design
------
* One compiled call integrates one whole trajectory: :func:`integrate_kernel` fills a
  :c:type:`Model` (raw pointers, scalars), allocates the method's workspace ONCE (with the
  GIL), releases the GIL for the whole time loop and frees the workspace afterwards.
  Nothing is allocated per step and no Python is called inside the loop (except a user
  Bregman schedule's callback, below).
* Memory: the caller (noether_core/_integrate.py) owns every array.  ``y`` (IN/OUT) holds
  the initial state and receives the final one; ``rec_t``/``rec_y`` (OUT) are
  preallocated for every record the run can produce; ``t_eval`` (IN) is sorted.
* Models (state layout):
    M1 Damped       y = (q, v)               m v' = -mu v - grad f(q) - k q
    M2 RadialAngular y = (r, r', u, w)       exact Euler-Lagrange equations of Eq. 13
                                              (reduced: the paper's Eq. 14-15), |u| = 1
    M3 Bregman      y = (q, P)               first-order system of SPEC §2 (Eq. 1, 10)
    M4 GradientFlow y = q                    mu q' = -grad f(q) - k q
* Methods: conformal splittings (Lie "euler", Strang "verlet", Yoshida 4th-order
  composition) built from exactly solvable flows (M1, M2; explicit Euler for M4), the
  classical RK4, and adaptive Dormand-Prince 5(4) and 8(5,3) (Hairer's DOP853) with exact
  landing on requested times, their continuous extensions (dense output, 4th / 7th order)
  and an event hook called back with the GIL after each accepted step.
* The facade validated everything (finite positive m, mu, h; |u| = 1 and <u, w> = 0;
  entropy mirror needs q > 0; ...).  Trouble met in the loop (non-finite state, step-size
  underflow, max_steps, r <= 0 in M2) is reported as one of the shared status codes of
  pyx/nc_status.h (NC_ST_*), never raised here.
* A user Bregman schedule (three Python callables) runs through the same compiled loops:
  ``_schedule`` calls it back with the GIL (as a Python potential's gradient is called
  back), once per right-hand side.  An exception it raises is held in the Model, the loop
  stops at that step (NC_ST_INTERRUPTED) and :func:`integrate_kernel` re-raises it.
* :func:`rhs_kernel` evaluates the same compiled right-hand side ``_rhs`` at given states,
  so noether_core.noether_terms uses the integrator's own equations of motion.
"""
# The NumPy twin (same operation order) is the test oracle in python/, under
# noether_ref/integrators.py; nothing in noether_core imports it.
from libc.math cimport sqrt, exp, log, cos, sin, fabs, pow, isfinite, NAN
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.float cimport DBL_EPSILON
from cpython.ref cimport PyObject, Py_XINCREF, Py_XDECREF

import numpy as np
cimport numpy as cnp

from noether_core._kernels.potentials cimport Potential, grad_fn
from noether_core._kernels.rules cimport poll_signals, reraise_signal
from noether_core._kernels.status cimport *

cnp.import_array()

cdef extern from *:
    """
    /* a flag another thread may set: read it from memory at every poll */
    static inline int nc_integ_load_flag(const int* p) { return *(const volatile int*) p; }
    """
    int _load_flag "nc_integ_load_flag"(const int* p) noexcept nogil

# model kinds
cdef enum:
    MODEL_DAMPED = 0
    MODEL_RADANG = 1
    MODEL_BREGMAN = 2
    MODEL_GFLOW = 3

# methods
cdef enum:
    METHOD_EULER = 0        # conformal Lie splitting (M1, M2) / explicit Euler (M4)
    METHOD_VERLET = 1       # conformal Strang splitting
    METHOD_YOSHIDA4 = 2     # triple-jump composition of the Strang splitting
    METHOD_RK4 = 3
    METHOD_DOPRI5 = 4
    METHOD_DOP853 = 5       # adaptive Dormand-Prince 8(5,3), Hairer's DOP853

# statuses of the integrators only (the shared ones are NC_ST_* of pyx/nc_status.h)
cdef enum:
    _ST_EVENT = 100         # a terminal event stopped the run (the event hook said so)
    _ST_DENSE_MEMORY = 101  # the dense output outgrew its byte budget

# compiled events (noether_core LevelEvent): g(t, y) = quantity(y) - level
cdef enum:
    EV_NORM2 = 0            # |q|² (M2: r²)
    EV_LINEAR = 1           # <w, y> (w over the whole state)
    EV_QUAD = 2             # y^T Q y + <w, y> (e.g. a Noether charge of M1 or M3)

#: compiled event kinds, by name
EVENT_KINDS = {"q_norm2": EV_NORM2, "linear": EV_LINEAR, "quadratic": EV_QUAD}
#: status: a terminal event stopped the run
STATUS_TERMINAL_EVENT = _ST_EVENT
#: status: the dense output outgrew ``plan.max_dense_rows``
STATUS_DENSE_MEMORY = _ST_DENSE_MEMORY

# Bregman schedules and mirror maps
cdef enum:
    SCHED_NESTEROV = 0      # alpha = log n - log t, beta = n log t + log C, gamma = n log t
    SCHED_DAMPED = 1        # alpha = -log m, beta = log m, gamma = mu t / m
    SCHED_USER = 2          # a Python callable t -> (e^alpha, e^(alpha+beta), gamma')

cdef enum:
    MIR_EUCLID = 0
    MIR_DIAG = 1
    MIR_PNORM = 2
    MIR_ENTROPY = 3


cdef struct Model:
    int kind
    Py_ssize_t d                # dimension of q
    Py_ssize_t n                # length of the state
    grad_fn fn
    void* params
    double m, mu, k             # M1, M2, M4 (and M3 damped schedule via s1, s2)
    int reduced                 # M2: 1 = paper's Eq. 14-15
    int sched                   # M3
    double s1, s2               # M3 schedule constants: (n, C) or (m, mu)
    int mirror                  # M3
    const double* D             # M3 diagonal mirror (d)
    double p                    # M3 p-norm exponent
    double* g                   # scratch (d): gradient
    long nfev                   # gradient evaluations
    bint check_signals          # poll Python signals every 64 steps (main thread use)
    const int* cancel           # poll every 64 steps beside the signals: non-zero = stop
    double next_poll            # monotonic time of the next poll (rules.pxd poll_signals)
    PyObject* sched_obj         # M3 SCHED_USER: the schedule callable (borrowed reference)
    PyObject* cb_error          # the exception it raised (owned reference), or NULL


# -------------------------------------------------------------------------------------
# gradient helpers

cdef inline double _grad_V(Model* M, const double* q) noexcept nogil:
    """g = grad f(q) + k q (M1's potential V = f + k|q|^2/2)."""
    cdef Py_ssize_t i
    cdef double f = M.fn(q, M.g, M.d, M.params)
    M.nfev += 1
    if M.k != 0.0:
        for i in range(M.d):
            M.g[i] = M.g[i] + M.k * q[i]
    return f


# -------------------------------------------------------------------------------------
# separable mirror maps h(x) = sum_i phi_i(x_i)

cdef inline double _dphi(Model* M, Py_ssize_t i, double x) noexcept nogil:
    if M.mirror == MIR_EUCLID:
        return x
    elif M.mirror == MIR_DIAG:
        return M.D[i] * x
    elif M.mirror == MIR_PNORM:
        return pow(fabs(x), M.p - 1.0) * (1.0 if x >= 0.0 else -1.0)
    return log(x) + 1.0


cdef inline double _dphi_inv(Model* M, Py_ssize_t i, double y) noexcept nogil:
    if M.mirror == MIR_EUCLID:
        return y
    elif M.mirror == MIR_DIAG:
        return y / M.D[i]
    elif M.mirror == MIR_PNORM:
        return pow(fabs(y), 1.0 / (M.p - 1.0)) * (1.0 if y >= 0.0 else -1.0)
    return exp(y - 1.0)


cdef inline double _d2phi(Model* M, Py_ssize_t i, double x) noexcept nogil:
    if M.mirror == MIR_EUCLID:
        return 1.0
    elif M.mirror == MIR_DIAG:
        return M.D[i]
    elif M.mirror == MIR_PNORM:
        return (M.p - 1.0) * pow(fabs(x), M.p - 2.0)
    return 1.0 / x


cdef void _user_schedule(Model* M, double t, double* ea, double* eab,
                         double* gd) noexcept with gil:
    """Call the user's schedule back (GIL held); NaN after storing any exception."""
    cdef double a = NAN, b = NAN, c = NAN
    if M.cb_error == NULL:
        try:
            a, b, c = (<object> M.sched_obj)(t)
        except BaseException as exc:
            Py_XINCREF(<PyObject*> exc)
            M.cb_error = <PyObject*> exc
            a = b = c = NAN
    ea[0] = a
    eab[0] = b
    gd[0] = c


cdef inline void _schedule(Model* M, double t, double* ea, double* eab,
                           double* gd) noexcept nogil:
    """e^alpha, e^(alpha+beta) and gamma' of the Bregman schedule at time t."""
    if M.sched == SCHED_NESTEROV:
        ea[0] = M.s1 / t
        eab[0] = M.s2 * M.s1 * pow(t, M.s1 - 1.0)
        gd[0] = M.s1 / t
    elif M.sched == SCHED_USER:
        _user_schedule(M, t, ea, eab, gd)
    else:
        ea[0] = 1.0 / M.s1
        eab[0] = 1.0
        gd[0] = M.s2 / M.s1


# -------------------------------------------------------------------------------------
# right-hand sides y' = F(t, y)

cdef void _rhs(Model* M, double t, const double* y, double* dy) noexcept nogil:
    cdef Py_ssize_t i, d = M.d
    cdef double r, rd, ww, gam, cpl, x, qd
    cdef double ea = 0.0, eab = 0.0, gd = 0.0  # set by _schedule (quiets -Wmaybe-uninitialized)
    cdef const double* u
    cdef const double* w
    if M.kind == MODEL_DAMPED:
        _grad_V(M, y)
        for i in range(d):
            dy[i] = y[d + i]
            dy[d + i] = -(M.mu * y[d + i] + M.g[i]) / M.m
    elif M.kind == MODEL_GFLOW:
        _grad_V(M, y)
        for i in range(d):
            dy[i] = -M.g[i] / M.mu
    elif M.kind == MODEL_RADANG:
        r = y[0]
        rd = y[1]
        u = y + 2
        w = y + 2 + d
        M.fn(u, M.g, d, M.params)
        M.nfev += 1
        ww = 0.0
        for i in range(d):
            ww = ww + w[i] * w[i]
        gam = M.mu / M.m
        cpl = 0.0 if M.reduced else 2.0 * rd / r
        dy[0] = rd
        dy[1] = -gam * rd + (ww - M.k / M.m) * r
        for i in range(d):
            dy[2 + i] = w[i]
            dy[2 + d + i] = -(gam + cpl) * w[i] - M.g[i] / (M.m * r * r) - ww * u[i]
    else:
        _schedule(M, t, &ea, &eab, &gd)
        M.fn(y, M.g, d, M.params)
        M.nfev += 1
        for i in range(d):
            x = _dphi_inv(M, i, _dphi(M, i, y[i]) + y[d + i])
            qd = ea * (x - y[i])
            dy[i] = qd
            dy[d + i] = (ea - gd) * y[d + i] - _d2phi(M, i, y[i]) * qd - eab * M.g[i]


# -------------------------------------------------------------------------------------
# M1: conformal splitting into damping D (exact), kick B, drift A.
# On entry and exit M.g holds grad V at the current q (one gradient per step).

cdef void _m1_lie(Model* M, double* y, double h) noexcept nogil:
    cdef Py_ssize_t i, d = M.d
    cdef double c = exp(-h * M.mu / M.m), a = h / M.m
    for i in range(d):
        y[d + i] = c * y[d + i] - a * M.g[i]
    for i in range(d):
        y[i] = y[i] + h * y[d + i]
    _grad_V(M, y)


cdef void _m1_strang(Model* M, double* y, double h) noexcept nogil:
    cdef Py_ssize_t i, d = M.d
    cdef double c = exp(-0.5 * h * M.mu / M.m), a = 0.5 * h / M.m
    for i in range(d):
        y[d + i] = c * y[d + i] - a * M.g[i]
    for i in range(d):
        y[i] = y[i] + h * y[d + i]
    _grad_V(M, y)
    for i in range(d):
        y[d + i] = c * (y[d + i] - a * M.g[i])


# -------------------------------------------------------------------------------------
# M2: splitting into exactly solvable flows (docs/integrators.md, "M2 splitting"):
#   D  damping          r' *= e^{-gamma tau}, w *= e^{-gamma tau}
#   B  tangential kick  w -= tau/(m r^2) (g - <g,u>u),  g = grad f(u)
#   A  radial oscillator r'' = -(k/m) r  (exact model: r^2 w conserved)
#   C  geodesic flow of u on the sphere at speed |w| + centrifugal kick r' += tau r |w|^2
# M.g holds grad f(u) at the current u on entry and exit.

cdef void _m2_D(Model* M, double* y, double tau) noexcept nogil:
    cdef Py_ssize_t i
    cdef double c = exp(-tau * M.mu / M.m)
    y[1] = c * y[1]
    for i in range(M.d):
        y[2 + M.d + i] = c * y[2 + M.d + i]


cdef void _m2_B(Model* M, double* y, double tau) noexcept nogil:
    cdef Py_ssize_t i, d = M.d
    cdef double gu = 0.0, a = tau / (M.m * y[0] * y[0])
    for i in range(d):
        gu = gu + M.g[i] * y[2 + i]
    for i in range(d):
        y[2 + d + i] = y[2 + d + i] - a * (M.g[i] - gu * y[2 + i])


cdef void _m2_A(Model* M, double* y, double tau) noexcept nogil:
    cdef Py_ssize_t i
    cdef double r = y[0], rd = y[1], om, cs, sn, rn, s
    if M.k > 0.0:
        om = sqrt(M.k / M.m)
        cs = cos(om * tau)
        sn = sin(om * tau)
        rn = r * cs + rd * sn / om
        y[1] = -r * om * sn + rd * cs
    else:
        rn = r + tau * rd
    y[0] = rn
    if not M.reduced:
        s = (r / rn) * (r / rn)
        for i in range(M.d):
            y[2 + M.d + i] = s * y[2 + M.d + i]


cdef void _m2_C(Model* M, double* y, double tau) noexcept nogil:
    cdef Py_ssize_t i, d = M.d
    cdef double* u = y + 2
    cdef double* w = y + 2 + d
    cdef double ww = 0.0, om, cs, sn, ui, ei, nu = 0.0, uw = 0.0
    for i in range(d):
        ww = ww + w[i] * w[i]
    y[1] = y[1] + tau * y[0] * ww
    if ww > 0.0:
        om = sqrt(ww)
        cs = cos(om * tau)
        sn = sin(om * tau)
        for i in range(d):
            ui = u[i]
            ei = w[i] / om
            u[i] = ui * cs + ei * sn
            w[i] = om * (ei * cs - ui * sn)
    # remove the round-off drift off the constraint manifold (a change of order eps)
    for i in range(d):
        nu = nu + u[i] * u[i]
    nu = sqrt(nu)
    for i in range(d):
        u[i] = u[i] / nu
    for i in range(d):
        uw = uw + u[i] * w[i]
    for i in range(d):
        w[i] = w[i] - uw * u[i]
    M.fn(u, M.g, d, M.params)
    M.nfev += 1


cdef void _m2_lie(Model* M, double* y, double h) noexcept nogil:
    _m2_D(M, y, h)
    _m2_B(M, y, h)
    _m2_A(M, y, h)
    _m2_C(M, y, h)


cdef void _m2_strang(Model* M, double* y, double h) noexcept nogil:
    _m2_D(M, y, 0.5 * h)
    _m2_B(M, y, 0.5 * h)
    _m2_A(M, y, 0.5 * h)
    _m2_C(M, y, h)
    _m2_A(M, y, 0.5 * h)
    _m2_B(M, y, 0.5 * h)
    _m2_D(M, y, 0.5 * h)


cdef inline void _strang(Model* M, double* y, double h) noexcept nogil:
    if M.kind == MODEL_DAMPED:
        _m1_strang(M, y, h)
    else:
        _m2_strang(M, y, h)


cdef void _split_step(Model* M, int method, double* y, double h) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w1, w0, cbrt2 = pow(2.0, 1.0 / 3.0)
    if method == METHOD_EULER:
        if M.kind == MODEL_DAMPED:
            _m1_lie(M, y, h)
        elif M.kind == MODEL_RADANG:
            _m2_lie(M, y, h)
        else:                                   # M4: explicit Euler = gradient descent
            for i in range(M.d):
                y[i] = y[i] - (h / M.mu) * M.g[i]
            _grad_V(M, y)
    elif method == METHOD_VERLET:
        _strang(M, y, h)
    else:                                       # Yoshida's triple jump
        w1 = 1.0 / (2.0 - cbrt2)
        w0 = -cbrt2 / (2.0 - cbrt2)
        _strang(M, y, w1 * h)
        _strang(M, y, w0 * h)
        _strang(M, y, w1 * h)


cdef void _split_init(Model* M, double* y) noexcept nogil:
    """Fill M.g for the first step of a splitting method."""
    if M.kind == MODEL_RADANG:
        M.fn(y + 2, M.g, M.d, M.params)
        M.nfev += 1
    else:
        _grad_V(M, y)


# -------------------------------------------------------------------------------------
# explicit Runge-Kutta

cdef void _rk4_step(Model* M, double t, double* y, double h, double* k1, double* k2,
                    double* k3, double* k4, double* yt) noexcept nogil:
    cdef Py_ssize_t i, n = M.n
    _rhs(M, t, y, k1)
    for i in range(n):
        yt[i] = y[i] + 0.5 * h * k1[i]
    _rhs(M, t + 0.5 * h, yt, k2)
    for i in range(n):
        yt[i] = y[i] + 0.5 * h * k2[i]
    _rhs(M, t + 0.5 * h, yt, k3)
    for i in range(n):
        yt[i] = y[i] + h * k3[i]
    _rhs(M, t + h, yt, k4)
    for i in range(n):
        y[i] = y[i] + (h / 6.0) * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])


# Dormand-Prince 5(4) tableau (Hairer, Norsett & Wanner, Table II.5.2)
cdef double C2 = 1.0 / 5, C3 = 3.0 / 10, C4 = 4.0 / 5, C5 = 8.0 / 9
cdef double A21 = 1.0 / 5
cdef double A31 = 3.0 / 40, A32 = 9.0 / 40
cdef double A41 = 44.0 / 45, A42 = -56.0 / 15, A43 = 32.0 / 9
cdef double A51 = 19372.0 / 6561, A52 = -25360.0 / 2187, A53 = 64448.0 / 6561
cdef double A54 = -212.0 / 729
cdef double A61 = 9017.0 / 3168, A62 = -355.0 / 33, A63 = 46732.0 / 5247
cdef double A64 = 49.0 / 176, A65 = -5103.0 / 18656
cdef double B1 = 35.0 / 384, B3 = 500.0 / 1113, B4 = 125.0 / 192, B5 = -2187.0 / 6784
cdef double B6 = 11.0 / 84
# error coefficients: b (5th order) - b* (4th order)
cdef double E1 = 71.0 / 57600, E3 = -71.0 / 16695, E4 = 71.0 / 1920
cdef double E5 = -17253.0 / 339200, E6 = 22.0 / 525, E7 = -1.0 / 40


# Hairer's continuous extension of dopri5 (contd5, order 4): with s = (t - t_old)/h,
# y(s) = c0 + s (c1 + (1-s) (c2 + s (c3 + (1-s) c4))), c4 = h sum DD_j K_j
cdef double DD1 = -12715105075.0 / 11282082432.0, DD3 = 87487479700.0 / 32700410799.0
cdef double DD4 = -10690763975.0 / 1880347072.0, DD5 = 701980252875.0 / 199316789632.0
cdef double DD6 = -1453857185.0 / 822651844.0, DD7 = 69997945.0 / 29380423.0


# -------------------------------------------------------------------------------------
# DOP853 (Hairer, Norsett & Wanner, Solving ODEs I, §II.10; Hairer's code DOP853):
# 12 stages of an explicit 8th-order Runge-Kutta method, stage 13 = F(t+h, y_new)
# (FSAL), 3 more stages for the 7th-order dense output.  _D8_A[12, :12] are the weights b;
# the embedded 5th- and 3rd-order estimates are err5 = h sum E5_j K_j and
# err3 = h sum (b_j - BHH_j) K_j (docs/integrators.md §5.2).  Numbers as in Hairer's
# dop853.f (the same as scipy/integrate/_ivp/dop853_coefficients.py).
_D8_C = (
    0.0, 0.526001519587677318785587544488e-01, 0.789002279381515978178381316732e-01,
    0.118350341907227396726757197510, 0.281649658092772603273242802490,
    0.333333333333333333333333333333, 0.25, 0.307692307692307692307692307692,
    0.651282051282051282051282051282, 0.6, 0.857142857142857142857142857142, 1.0, 1.0, 0.1,
    0.2, 0.777777777777777777777777777778,
)
_D8_A = {
    (1, 0): 5.26001519587677318785587544488e-2, (2, 0): 1.97250569845378994544595329183e-2,
    (2, 1): 5.91751709536136983633785987549e-2, (3, 0): 2.95875854768068491816892993775e-2,
    (3, 2): 8.87627564304205475450678981324e-2, (4, 0): 2.41365134159266685502369798665e-1,
    (4, 2): -8.84549479328286085344864962717e-1, (4, 3): 9.24834003261792003115737966543e-1,
    (5, 0): 3.7037037037037037037037037037e-2, (5, 3): 1.70828608729473871279604482173e-1,
    (5, 4): 1.25467687566822425016691814123e-1, (6, 0): 3.7109375e-2,
    (6, 3): 1.70252211019544039314978060272e-1, (6, 4): 6.02165389804559606850219397283e-2,
    (6, 5): -1.7578125e-2, (7, 0): 3.70920001185047927108779319836e-2,
    (7, 3): 1.70383925712239993810214054705e-1, (7, 4): 1.07262030446373284651809199168e-1,
    (7, 5): -1.53194377486244017527936158236e-2, (7, 6): 8.27378916381402288758473766002e-3,
    (8, 0): 6.24110958716075717114429577812e-1, (8, 3): -3.36089262944694129406857109825,
    (8, 4): -8.68219346841726006818189891453e-1, (8, 5): 2.75920996994467083049415600797e1,
    (8, 6): 2.01540675504778934086186788979e1, (8, 7): -4.34898841810699588477366255144e1,
    (9, 0): 4.77662536438264365890433908527e-1, (9, 3): -2.48811461997166764192642586468,
    (9, 4): -5.90290826836842996371446475743e-1, (9, 5): 2.12300514481811942347288949897e1,
    (9, 6): 1.52792336328824235832596922938e1, (9, 7): -3.32882109689848629194453265587e1,
    (9, 8): -2.03312017085086261358222928593e-2, (10, 0): -9.3714243008598732571704021658e-1,
    (10, 3): 5.18637242884406370830023853209, (10, 4): 1.09143734899672957818500254654,
    (10, 5): -8.14978701074692612513997267357, (10, 6): -1.85200656599969598641566180701e1,
    (10, 7): 2.27394870993505042818970056734e1, (10, 8): 2.49360555267965238987089396762,
    (10, 9): -3.0467644718982195003823669022, (11, 0): 2.27331014751653820792359768449,
    (11, 3): -1.05344954667372501984066689879e1, (11, 4): -2.00087205822486249909675718444,
    (11, 5): -1.79589318631187989172765950534e1, (11, 6): 2.79488845294199600508499808837e1,
    (11, 7): -2.85899827713502369474065508674, (11, 8): -8.87285693353062954433549289258,
    (11, 9): 1.23605671757943030647266201528e1, (11, 10): 6.43392746015763530355970484046e-1,
    (12, 0): 5.42937341165687622380535766363e-2, (12, 5): 4.45031289275240888144113950566,
    (12, 6): 1.89151789931450038304281599044, (12, 7): -5.8012039600105847814672114227,
    (12, 8): 3.1116436695781989440891606237e-1, (12, 9): -1.52160949662516078556178806805e-1,
    (12, 10): 2.01365400804030348374776537501e-1, (12, 11): 4.47106157277725905176885569043e-2,
    (13, 0): 5.61675022830479523392909219681e-2, (13, 6): 2.53500210216624811088794765333e-1,
    (13, 7): -2.46239037470802489917441475441e-1, (13, 8): -1.24191423263816360469010140626e-1,
    (13, 9): 1.5329179827876569731206322685e-1, (13, 10): 8.20105229563468988491666602057e-3,
    (13, 11): 7.56789766054569976138603589584e-3, (13, 12): -8.298e-3,
    (14, 0): 3.18346481635021405060768473261e-2, (14, 5): 2.83009096723667755288322961402e-2,
    (14, 6): 5.35419883074385676223797384372e-2, (14, 7): -5.49237485713909884646569340306e-2,
    (14, 10): -1.08347328697249322858509316994e-4,
    (14, 11): 3.82571090835658412954920192323e-4,
    (14, 12): -3.40465008687404560802977114492e-4,
    (14, 13): 1.41312443674632500278074618366e-1, (15, 0): -4.28896301583791923408573538692e-1,
    (15, 5): -4.69762141536116384314449447206, (15, 6): 7.68342119606259904184240953878,
    (15, 7): 4.06898981839711007970213554331, (15, 8): 3.56727187455281109270669543021e-1,
    (15, 12): -1.39902416515901462129418009734e-3, (15, 13): 2.9475147891527723389556272149,
    (15, 14): -9.15095847217987001081870187138,
}
_D8_BHH = {
    0: 0.244094488188976377952755905512, 8: 0.733846688281611857341361741547,
    11: 0.220588235294117647058823529412e-1,
}
_D8_E5 = {
    0: 0.1312004499419488073250102996e-1, 5: -0.1225156446376204440720569753e+1,
    6: -0.4957589496572501915214079952, 7: 0.1664377182454986536961530415e+1,
    8: -0.3503288487499736816886487290, 9: 0.3341791187130174790297318841,
    10: 0.8192320648511571246570742613e-1, 11: -0.2235530786388629525884427845e-1,
}
_D8_D = {
    (0, 0): -0.84289382761090128651353491142e+1, (0, 5): 0.56671495351937776962531783590,
    (0, 6): -0.30689499459498916912797304727e+1, (0, 7): 0.23846676565120698287728149680e+1,
    (0, 8): 0.21170345824450282767155149946e+1, (0, 9): -0.87139158377797299206789907490,
    (0, 10): 0.22404374302607882758541771650e+1, (0, 11): 0.63157877876946881815570249290,
    (0, 12): -0.88990336451333310820698117400e-1, (0, 13): 0.18148505520854727256656404962e+2,
    (0, 14): -0.91946323924783554000451984436e+1, (0, 15): -0.44360363875948939664310572000e+1,
    (1, 0): 0.10427508642579134603413151009e+2, (1, 5): 0.24228349177525818288430175319e+3,
    (1, 6): 0.16520045171727028198505394887e+3, (1, 7): -0.37454675472269020279518312152e+3,
    (1, 8): -0.22113666853125306036270938578e+2, (1, 9): 0.77334326684722638389603898808e+1,
    (1, 10): -0.30674084731089398182061213626e+2, (1, 11): -0.93321305264302278729567221706e+1,
    (1, 12): 0.15697238121770843886131091075e+2, (1, 13): -0.31139403219565177677282850411e+2,
    (1, 14): -0.93529243588444783865713862664e+1, (1, 15): 0.35816841486394083752465898540e+2,
    (2, 0): 0.19985053242002433820987653617e+2, (2, 5): -0.38703730874935176555105901742e+3,
    (2, 6): -0.18917813819516756882830838328e+3, (2, 7): 0.52780815920542364900561016686e+3,
    (2, 8): -0.11573902539959630126141871134e+2, (2, 9): 0.68812326946963000169666922661e+1,
    (2, 10): -0.10006050966910838403183860980e+1, (2, 11): 0.77771377980534432092869265740,
    (2, 12): -0.27782057523535084065932004339e+1, (2, 13): -0.60196695231264120758267380846e+2,
    (2, 14): 0.84320405506677161018159903784e+2, (2, 15): 0.11992291136182789328035130030e+2,
    (3, 0): -0.25693933462703749003312586129e+2, (3, 5): -0.15418974869023643374053993627e+3,
    (3, 6): -0.23152937917604549567536039109e+3, (3, 7): 0.35763911791061412378285349910e+3,
    (3, 8): 0.93405324183624310003907691704e+2, (3, 9): -0.37458323136451633156875139351e+2,
    (3, 10): 0.10409964950896230045147246184e+3, (3, 11): 0.29840293426660503123344363579e+2,
    (3, 12): -0.43533456590011143754432175058e+2, (3, 13): 0.96324553959188282948394950600e+2,
    (3, 14): -0.39177261675615439165231486172e+2, (3, 15): -0.14972683625798562581422125276e+3,
}

cdef double D8C[16]
cdef double D8A[16][16]
cdef double D8E3[12]
cdef double D8E5[12]
cdef double D8D[4][16]
# the non-zero a_sj of each row s of A, in increasing j: D8AV[s][k] = a_{s, D8J[s][k]},
# k < D8NZ[s] (the sums of _d8_stage skip the zeros without a test per coefficient)
cdef int D8NZ[16]
cdef int D8J[16][16]
cdef double D8AV[16][16]


def _fill_dop853():
    cdef int i, j
    for i in range(16):
        D8C[i] = _D8_C[i]
        for j in range(16):
            D8A[i][j] = _D8_A.get((i, j), 0.0)
    for i in range(4):
        for j in range(16):
            D8D[i][j] = _D8_D.get((i, j), 0.0)
    for j in range(12):
        D8E5[j] = _D8_E5.get(j, 0.0)
        D8E3[j] = D8A[12][j] - _D8_BHH.get(j, 0.0)
    for i in range(16):
        D8NZ[i] = 0
        for j in range(i):
            if D8A[i][j] != 0.0:
                D8J[i][D8NZ[i]] = j
                D8AV[i][D8NZ[i]] = D8A[i][j]
                D8NZ[i] += 1
        if i > 0 and D8NZ[i] == 0:
            raise AssertionError(f"DOP853 tableau: row {i} of A has no non-zero entry")


_fill_dop853()


cdef void _d8_stage(Model* M, double t, const double* y, double h, double** K,
                    int s, double* yt) noexcept nogil:
    """K[s] = F(t + c_s h, y + h sum_{j<s} a_sj K_j) (s >= 1; zero a_sj skipped).

    Each sum is ((0.0 + a_sj1 K_j1) + a_sj2 K_j2) + ... over the non-zero a_sj in
    increasing j, then y + h (sum): the same operations in the same order as the loop
    over the whole row with a zeroed accumulator, in fewer passes over yt (the first
    term and the last, with y + h (.), are fused into their passes)."""
    cdef Py_ssize_t i, n = M.n
    cdef int k, nz = D8NZ[s]
    cdef double a
    cdef const double* Kj
    a = D8AV[s][0]
    Kj = K[D8J[s][0]]
    if nz == 1:
        for i in range(n):
            yt[i] = y[i] + h * (0.0 + a * Kj[i])
    else:
        for i in range(n):
            yt[i] = 0.0 + a * Kj[i]
        for k in range(1, nz - 1):
            a = D8AV[s][k]
            Kj = K[D8J[s][k]]
            for i in range(n):
                yt[i] = yt[i] + a * Kj[i]
        a = D8AV[s][nz - 1]
        Kj = K[D8J[s][nz - 1]]
        for i in range(n):
            yt[i] = y[i] + h * (yt[i] + a * Kj[i])
    _rhs(M, t + D8C[s] * h, yt, K[s])


cdef void _dop853_step(Model* M, double t, const double* y, double h, double** K,
                       double* yt, double* yn) noexcept nogil:
    """One trial step from (t, y) with K[0] = F(t, y): stages K[1..11], yn, and
    K[12] = F(t + h, yn)."""
    cdef int s
    for s in range(1, 12):
        _d8_stage(M, t, y, h, K, s, yt)
    _d8_stage(M, t, y, h, K, 12, yn)    # row 12 of A = b: yn = y + h sum b_j K_j
    # _d8_stage evaluated F at t + c_12 h = t + h into K[12]: the FSAL stage


cdef double _dop853_err(Model* M, const double* y, const double* yn, double h, double** K,
                        double rtol, double atol) noexcept nogil:
    """Hairer's combined error norm |h| E5² / sqrt(n (E5² + 0.01 E3²)), with
    Ek² = sum_i (ek_i / sc_i)², ek_i = sum_j Ek_j K_ji (no factor h), sc_i = atol + rtol
    max(|y_i|, |yn_i|); docs/integrators.md §5.2.

    e3 and e5 are accumulated a stage at a time in K[13], K[14] (free until the dense
    output's extra stages fill them, after this call): per i the same sums in the same
    order (0.0 + E_0 K_0i) + E_1 K_1i + ... as a loop over j for each i, in loops over i
    the compiler vectorises."""
    cdef Py_ssize_t i, n = M.n
    cdef int j
    cdef double c3, c5, sc, a3 = 0.0, a5 = 0.0, deno
    cdef double* e3 = K[13]
    cdef double* e5 = K[14]
    cdef const double* Kj = K[0]
    c3 = D8E3[0]
    c5 = D8E5[0]
    for i in range(n):
        e3[i] = 0.0 + c3 * Kj[i]
        e5[i] = 0.0 + c5 * Kj[i]
    for j in range(1, 12):
        c3 = D8E3[j]
        c5 = D8E5[j]
        Kj = K[j]
        for i in range(n):
            e3[i] = e3[i] + c3 * Kj[i]
            e5[i] = e5[i] + c5 * Kj[i]
    for i in range(n):
        sc = atol + rtol * (fabs(y[i]) if fabs(y[i]) > fabs(yn[i]) else fabs(yn[i]))
        a3 = a3 + (e3[i] / sc) * (e3[i] / sc)
        a5 = a5 + (e5[i] / sc) * (e5[i] / sc)
    if a5 == 0.0 and a3 == 0.0:
        return 0.0
    deno = a5 + 0.01 * a3
    return fabs(h) * a5 / sqrt(deno * n)


# -------------------------------------------------------------------------------------
# dense output: one row per accepted step, [t_old, t_new, h, c_0 (n), ..., c_{nc-1} (n)],
# evaluated (noether_core/_integrate.py DenseSolution) as
# y = c0 + s (c1 + (1-s) (c2 + s (c3 + (1-s) (c4 + ...)))),  s = (t - t_old)/h.

cdef void _dense_dopri5(Model* M, const double* y, const double* yn, double h, double** K,
                        double* c) noexcept nogil:
    """Hairer's contd5 coefficients (K[6] = F(t+h, yn))."""
    cdef Py_ssize_t i, n = M.n
    cdef double dy, bspl
    for i in range(n):
        dy = yn[i] - y[i]
        bspl = h * K[0][i] - dy
        c[i] = y[i]
        c[n + i] = dy
        c[2 * n + i] = bspl
        c[3 * n + i] = dy - h * K[6][i] - bspl
        c[4 * n + i] = h * (DD1 * K[0][i] + DD3 * K[2][i] + DD4 * K[3][i] + DD5 * K[4][i]
                            + DD6 * K[5][i] + DD7 * K[6][i])


cdef void _dense_dop853(Model* M, double t, const double* y, const double* yn, double h,
                        double** K, double* yt, double* c) noexcept nogil:
    """Hairer's contd8 coefficients: three more stages K[13..15], then
    c1 = Δ, c2 = h f_old − Δ, c3 = 2Δ − h (f_new + f_old), c4..c7 = h sum_j D_rj K_j."""
    cdef Py_ssize_t i, n = M.n
    cdef int s, r, j
    cdef double dy, a
    for s in range(13, 16):
        _d8_stage(M, t, y, h, K, s, yt)
    for i in range(n):
        dy = yn[i] - y[i]
        c[i] = y[i]
        c[n + i] = dy
        c[2 * n + i] = h * K[0][i] - dy
        c[3 * n + i] = 2.0 * dy - h * (K[12][i] + K[0][i])
    for r in range(4):
        for i in range(n):
            yt[i] = 0.0
        for j in range(16):
            a = D8D[r][j]
            if a != 0.0:
                for i in range(n):
                    yt[i] = yt[i] + a * K[j][i]
        for i in range(n):
            c[(4 + r) * n + i] = h * yt[i]


cdef double _dopri_step(Model* M, double t, const double* y, double h, double** K,
                        double* yt, double* yn) noexcept nogil:
    """One trial step from (t, y) with K[0] = F(t, y); fills yn and K[6] = F(t+h, yn).

    Returns the sum of squares of the scaled error NOT yet normalised (caller scales).
    """
    cdef Py_ssize_t i, n = M.n
    for i in range(n):
        yt[i] = y[i] + h * A21 * K[0][i]
    _rhs(M, t + C2 * h, yt, K[1])
    for i in range(n):
        yt[i] = y[i] + h * (A31 * K[0][i] + A32 * K[1][i])
    _rhs(M, t + C3 * h, yt, K[2])
    for i in range(n):
        yt[i] = y[i] + h * (A41 * K[0][i] + A42 * K[1][i] + A43 * K[2][i])
    _rhs(M, t + C4 * h, yt, K[3])
    for i in range(n):
        yt[i] = y[i] + h * (A51 * K[0][i] + A52 * K[1][i] + A53 * K[2][i] + A54 * K[3][i])
    _rhs(M, t + C5 * h, yt, K[4])
    for i in range(n):
        yt[i] = y[i] + h * (A61 * K[0][i] + A62 * K[1][i] + A63 * K[2][i]
                            + A64 * K[3][i] + A65 * K[4][i])
    _rhs(M, t + h, yt, K[5])
    for i in range(n):
        yn[i] = y[i] + h * (B1 * K[0][i] + B3 * K[2][i] + B4 * K[3][i] + B5 * K[4][i]
                            + B6 * K[5][i])
    _rhs(M, t + h, yn, K[6])
    return 0.0


cdef double _dopri_err(Model* M, const double* y, const double* yn, double h, double** K,
                       double rtol, double atol) noexcept nogil:
    """RMS norm of the embedded error estimate scaled by atol + rtol max(|y|, |yn|)."""
    cdef Py_ssize_t i, n = M.n
    cdef double e, sc, acc = 0.0
    for i in range(n):
        e = h * (E1 * K[0][i] + E3 * K[2][i] + E4 * K[3][i] + E5 * K[4][i]
                 + E6 * K[5][i] + E7 * K[6][i])
        sc = atol + rtol * (fabs(y[i]) if fabs(y[i]) > fabs(yn[i]) else fabs(yn[i]))
        acc = acc + (e / sc) * (e / sc)
    return sqrt(acc / n)


cdef double _rms_scaled(const double* x, const double* y, Py_ssize_t n, double rtol,
                        double atol) noexcept nogil:
    cdef Py_ssize_t i
    cdef double acc = 0.0, s
    for i in range(n):
        s = x[i] / (atol + rtol * fabs(y[i]))
        acc = acc + s * s
    return sqrt(acc / n)


cdef double _initial_step(Model* M, double t, const double* y, double* f0, double* y1,
                          double* f1, double rtol, double atol, double direction_T,
                          double order) noexcept nogil:
    """Hairer-Norsett-Wanner's starting step (II.4) for a method of the given order
    (5: dopri5, 8: dop853); f0 = F(t, y) given."""
    cdef Py_ssize_t i, n = M.n
    cdef double d0 = _rms_scaled(y, y, n, rtol, atol)
    cdef double d1 = _rms_scaled(f0, y, n, rtol, atol)
    cdef double h0, d2, h1, mx
    if d0 < 1e-5 or d1 < 1e-5:
        h0 = 1e-6
    else:
        h0 = 0.01 * d0 / d1
    if h0 > direction_T:
        h0 = direction_T
    for i in range(n):
        y1[i] = y[i] + h0 * f0[i]
    _rhs(M, t + h0, y1, f1)
    for i in range(n):
        y1[i] = f1[i] - f0[i]
    d2 = _rms_scaled(y1, y, n, rtol, atol) / h0
    mx = d1 if d1 > d2 else d2
    if mx <= 1e-15:
        h1 = 1e-6 if h0 * 1e-3 < 1e-6 else h0 * 1e-3
    else:
        h1 = pow(0.01 / mx, 1.0 / order)
    h1 = 100.0 * h0 if 100.0 * h0 < h1 else h1
    if not (h1 > 0.0 and isfinite(h1)):         # absurd tolerances: start small
        h1 = 1e-6 * direction_T
    return h1


cdef inline bint _cancelled(Model* M) noexcept nogil:
    """Whether another thread set the run's cancel flag (GridKernel.cancel)."""
    return M.cancel != NULL and _load_flag(M.cancel) != 0


cdef inline bint _stop_now(Model* M) noexcept nogil:
    """The poll every 64 steps: the cancel flag, then (main thread use) Python's signal
    handlers (rules.pxd poll_signals: at most every ~50 ms)."""
    return _cancelled(M) or (M.check_signals and poll_signals(&M.next_poll))


cdef inline bint _finite(const double* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not isfinite(y[i]):
            return False
    return True


cdef inline void _record(double* rec_t, double* rec_y, Py_ssize_t row, double t,
                         const double* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    rec_t[row] = t
    for i in range(n):
        rec_y[row * n + i] = y[i]


# -------------------------------------------------------------------------------------
# drivers

cdef int _fixed_loop(Model* M, int method, double* y, double t0, double h,
                     Py_ssize_t n_steps, Py_ssize_t record_every, double* rec_t,
                     double* rec_y, Py_ssize_t* n_rec, Py_ssize_t* n_done,
                     double** K) noexcept nogil:
    cdef Py_ssize_t s, row = 0, n = M.n
    cdef double t
    _record(rec_t, rec_y, row, t0, y, n)
    row += 1
    n_done[0] = 0
    if n_steps > 0 and method != METHOD_RK4:
        _split_init(M, y)
    for s in range(1, n_steps + 1):
        if (s & 63) == 0 and _stop_now(M):
            n_rec[0] = row
            return NC_ST_INTERRUPTED
        t = t0 + (s - 1) * h
        if method == METHOD_RK4:
            _rk4_step(M, t, y, h, K[0], K[1], K[2], K[3], K[4])
        else:
            _split_step(M, method, y, h)
        n_done[0] = s
        if M.cb_error != NULL:                  # the user's schedule raised
            n_rec[0] = row
            return NC_ST_INTERRUPTED
        if not _finite(y, n):
            n_rec[0] = row
            return NC_ST_NONFINITE_STATE
        if M.kind == MODEL_RADANG and y[0] <= 0.0:
            n_rec[0] = row
            return NC_ST_RADIUS
        if s % record_every == 0:
            _record(rec_t, rec_y, row, t0 + s * h, y, n)
            row += 1
    n_rec[0] = row
    return NC_ST_OK


cdef struct Dense:
    int ncoef                   # coefficient vectors per step: 5 (dopri5), 8 (dop853)
    bint on                     # compute the continuous extension of every accepted step
    bint store                  # keep every step's row (else one scratch row)
    Py_ssize_t stride           # doubles per row: 3 + ncoef n
    Py_ssize_t rows, cap, max_rows
    double* buf                 # rows of [t_old, t_new, h, c_0 .. c_{ncoef-1}]
    PyObject* hook              # event hook(t_old, t_new, h, coefs) -> stop?, or NULL


cdef double* _dense_row(Dense* D) noexcept nogil:
    """The row to fill for the step being accepted (grown by doubling), NULL if the
    budget D.max_rows (or memory) is exhausted."""
    cdef Py_ssize_t cap
    cdef double* p
    if not D.store:
        return D.buf
    if D.rows == D.cap:
        if D.cap >= D.max_rows:
            return NULL
        cap = 2 * D.cap if 2 * D.cap < D.max_rows else D.max_rows
        p = <double*> realloc(D.buf, cap * D.stride * sizeof(double))
        if p == NULL:
            return NULL
        D.buf = p
        D.cap = cap
    return D.buf + D.rows * D.stride


cdef int _call_hook(Model* M, Dense* D, const double* row, Py_ssize_t n) noexcept with gil:
    """Call the event hook on the accepted step's row (GIL held): 1 = stop the run (a
    terminal event, or an exception kept in M.cb_error), 0 = go on."""
    cdef cnp.ndarray coefs
    if M.cb_error != NULL:
        return 1
    try:
        coefs = np.empty((D.ncoef, n))
        memcpy(cnp.PyArray_DATA(coefs), row + 3, D.ncoef * n * sizeof(double))
        return 1 if (<object> D.hook)(row[0], row[1], row[2], coefs) else 0
    except BaseException as exc:
        Py_XINCREF(<PyObject*> exc)
        M.cb_error = <PyObject*> exc
        return 1


cdef struct CEvents:
    Py_ssize_t m                # number of compiled events (0: none)
    const int* kind             # EV_*
    const double* level
    const double* direction
    const Py_ssize_t* terminal  # stop at this occurrence (0: never)
    const double* w             # (m, n) weights of EV_LINEAR and EV_QUAD events
    const double* Q             # (m, n, n) matrices of EV_QUAD events
    double* g                   # (m) g at the start of the current step
    Py_ssize_t* count           # (m) occurrences so far
    double* last_t              # (m) time of the last root (a root on a boundary counts once)
    double* ys                  # (n) scratch: the interpolant at s
    double* root_s              # (m) this step's roots, sorted by s
    Py_ssize_t* root_k
    double* buf                 # rows [t, k, y (n)]
    Py_ssize_t rows, cap, max_rows, stride


cdef inline void _dense_at(const double* c, Py_ssize_t nc, Py_ssize_t n, double s,
                           double* out) noexcept nogil:
    """The step's polynomial at s: c0 + s (c1 + (1-s) (c2 + s (c3 + ...)))."""
    cdef Py_ssize_t i, j
    cdef double acc, s1 = 1.0 - s
    for i in range(n):
        acc = c[(nc - 1) * n + i]
        for j in range(nc - 2, 0, -1):
            acc = c[j * n + i] + (s1 if j % 2 == 1 else s) * acc
        out[i] = c[i] + s * acc


cdef inline double _cev_value(Model* M, CEvents* E, Py_ssize_t k,
                              const double* y) noexcept nogil:
    cdef Py_ssize_t i, j, n = M.n
    cdef double acc = 0.0, row
    cdef const double* Q
    if E.kind[k] == EV_NORM2:
        if M.kind == MODEL_RADANG:
            acc = y[0] * y[0]
        else:
            for i in range(M.d):
                acc = acc + y[i] * y[i]
        return acc - E.level[k]
    if E.kind[k] == EV_QUAD:
        Q = E.Q + k * n * n
        for i in range(n):
            row = 0.0
            for j in range(n):
                row = row + Q[i * n + j] * y[j]
            acc = acc + y[i] * row
    for i in range(n):
        acc = acc + E.w[k * n + i] * y[i]
    return acc - E.level[k]


cdef double _cev_root(Model* M, CEvents* E, Py_ssize_t k, const double* c, Py_ssize_t nc,
                      double ga, double gb, double t_old, double t_new,
                      double h) noexcept nogil:
    """Root in s of g(P(s)) on (0, 1), g(0) = ga and g(1) = gb of opposite signs: the
    Illinois variant of false position (the endpoint kept twice has its value halved),
    bisection after 100 iterations, until the bracket is 4 ulps of t wide."""
    cdef double a = 0.0, b = 1.0, s, gs
    cdef double tmax = fabs(t_old) if fabs(t_old) > fabs(t_new) else fabs(t_new)
    cdef double tol = 4.0 * DBL_EPSILON * (tmax / fabs(h) if tmax > fabs(h) else 1.0)
    cdef int it, side = 0
    for it in range(300):
        s = (a * gb - b * ga) / (gb - ga) if it < 100 else 0.5 * (a + b)
        if not (s > a and s < b):
            s = 0.5 * (a + b)
        _dense_at(c, nc, M.n, s, E.ys)
        gs = _cev_value(M, E, k, E.ys)
        if gs == 0.0:
            return s
        if (gs > 0.0) == (gb > 0.0):
            b = s
            gb = gs
            if side == -1:
                ga = 0.5 * ga
            side = -1
        else:
            a = s
            ga = gs
            if side == 1:
                gb = 0.5 * gb
            side = 1
        if b - a <= tol:
            break
    return 0.5 * (a + b)


cdef int _cev_step(Model* M, CEvents* E, double t_old, double t_new, double h,
                   const double* c, Py_ssize_t nc, const double* y_new) noexcept nogil:
    """solve_ivp's event rule for the compiled events over one accepted step (as
    noether_core/_integrate.py _Events.step): 1 = a terminal event stops the run, -1 = the
    event buffer outgrew its budget, 0 = go on."""
    cdef Py_ssize_t k, r, q, nr = 0, n = M.n, cap
    cdef double g0, g1, d, s, tr
    cdef double* row
    cdef double* p
    cdef bint up, down
    for k in range(E.m):
        g0 = E.g[k]
        g1 = _cev_value(M, E, k, y_new)
        E.g[k] = g1
        up = g0 <= 0.0 and g1 >= 0.0
        down = g0 >= 0.0 and g1 <= 0.0
        d = E.direction[k]
        if not ((up and d > 0.0) or (down and d < 0.0) or ((up or down) and d == 0.0)):
            continue
        if g0 == 0.0 and g1 == 0.0:
            continue
        if g0 == 0.0:
            s = 0.0
        elif g1 == 0.0:
            s = 1.0
        else:
            s = _cev_root(M, E, k, c, nc, g0, g1, t_old, t_new, h)
        q = nr                                  # insertion by s (ties: event order)
        while q > 0 and E.root_s[q - 1] > s:
            E.root_s[q] = E.root_s[q - 1]
            E.root_k[q] = E.root_k[q - 1]
            q -= 1
        E.root_s[q] = s
        E.root_k[q] = k
        nr += 1
    for r in range(nr):
        k = E.root_k[r]
        s = E.root_s[r]
        tr = t_new if s == 1.0 else t_old + s * h
        if E.count[k] > 0 and E.last_t[k] == tr:
            continue
        if E.rows == E.cap:
            if E.cap >= E.max_rows:
                return -1
            cap = 2 * E.cap if 2 * E.cap < E.max_rows else E.max_rows
            p = <double*> realloc(E.buf, cap * E.stride * sizeof(double))
            if p == NULL:
                return -1
            E.buf = p
            E.cap = cap
        row = E.buf + E.rows * E.stride
        row[0] = tr
        row[1] = <double> k
        if s == 1.0:
            memcpy(row + 2, y_new, n * sizeof(double))
        else:
            _dense_at(c, nc, n, s, row + 2)
        E.rows += 1
        E.count[k] += 1
        E.last_t[k] = tr
        if E.terminal[k] > 0 and E.count[k] >= E.terminal[k]:
            return 1
    return 0


cdef int _adaptive_loop(Model* M, int method, double* y, double t0, double t_end,
                        double h_init, double rtol, double atol, Py_ssize_t max_steps,
                        const double* t_eval, Py_ssize_t n_eval, Py_ssize_t record_every,
                        double* rec_t, double* rec_y, Py_ssize_t* n_rec, Py_ssize_t* n_acc,
                        Py_ssize_t* n_rej, double* t_out, double** K, double* yt,
                        double* yn, Dense* D, CEvents* E) noexcept nogil:
    """dopri5 (method METHOD_DOPRI5) or dop853 with exact landing on t_eval, the step
    floor, divergence and signal conventions of docs/integrators.md §5."""
    cdef Py_ssize_t n = M.n, i, row = 0, ie = 0, attempts = 0
    cdef double t = t0, h, hs, err, fac, target, hmin, h_first, t_old
    cdef double* tmp
    cdef double* drow = NULL
    cdef bint landed, last_bad = False, rejected = False
    cdef bint d8 = method == METHOD_DOP853
    cdef int last = 12 if d8 else 6                 # the FSAL stage F(t+h, yn)
    # controller (HNW): h_new = h min(fmax, max(fmin, safe err^(-1/(q+1)))), q the order
    # of the error estimate: dopri5 q = 4, [0.2, 5]; dop853 q = 7, [1/3, 6] (dop853.f)
    cdef double expo = -1.0 / 8.0 if d8 else -0.2
    cdef double fmax = 6.0 if d8 else 5.0
    cdef double fmin = 0.333 if d8 else 0.2
    n_acc[0] = 0
    n_rej[0] = 0
    t_out[0] = t0
    # outputs at t0
    if n_eval > 0:
        while ie < n_eval and t_eval[ie] <= t0:
            _record(rec_t, rec_y, row, t0, y, n)
            row += 1
            ie += 1
    else:
        _record(rec_t, rec_y, row, t0, y, n)
        row += 1
    n_rec[0] = row
    if t_end <= t0:
        return NC_ST_OK
    _rhs(M, t, y, K[0])
    if M.cb_error != NULL:
        return NC_ST_INTERRUPTED
    if not _finite(K[0], n):
        return NC_ST_NONFINITE_STATE
    h = h_init if h_init > 0.0 else _initial_step(M, t, y, K[0], yt, K[1], rtol, atol,
                                                  t_end - t0, 8.0 if d8 else 5.0)
    if M.cb_error != NULL:
        return NC_ST_INTERRUPTED
    h_first = fabs(h)
    for i in range(E.m):
        E.g[i] = _cev_value(M, E, i, y)
    while t < t_end:
        target = t_eval[ie] if (n_eval > 0 and ie < n_eval) else t_end
        # the floor 10·eps·max(|t|, h_first) (docs/integrators.md §5): the spacing of t,
        # where a step stops moving t, or, near t = 0, 10·eps of the first step tried
        # (the problem's own time scale, whatever the units).  Not |target|: at t = 0
        # with t_end ≳ 1e13 that refused every step of an easy problem.
        hmin = 10.0 * DBL_EPSILON * (fabs(t) if fabs(t) > h_first else h_first)
        if not (h >= hmin) or t + 0.5 * h == t:       # (catches a NaN step too)
            t_out[0] = t
            return NC_ST_NONFINITE_STATE if last_bad else NC_ST_STEP_UNDERFLOW
        if attempts >= max_steps:
            t_out[0] = t
            return NC_ST_MAX_STEPS
        if (attempts & 63) == 63 and _stop_now(M):
            t_out[0] = t
            n_rec[0] = row
            return NC_ST_INTERRUPTED
        attempts += 1
        # land exactly on the next output time (stretching h by at most 1% to get there)
        landed = t + 1.01 * h >= target
        hs = target - t if landed else h
        if d8:
            _dop853_step(M, t, y, hs, K, yt, yn)
        else:
            _dopri_step(M, t, y, hs, K, yt, yn)
        if M.cb_error != NULL:                  # the user's schedule raised
            t_out[0] = t
            return NC_ST_INTERRUPTED
        if d8:
            err = _dop853_err(M, y, yn, hs, K, rtol, atol)
        else:
            err = _dopri_err(M, y, yn, hs, K, rtol, atol)
        if not isfinite(err):
            # a non-finite trial state (or an error norm overflowing): shrink the step
            last_bad = not _finite(yn, n)
            n_rej[0] += 1
            rejected = True
            h = 0.2 * hs
            continue
        last_bad = False
        if err <= 1.0:
            fac = fmax if err == 0.0 else 0.9 * pow(err, expo)
            if fac > fmax:
                fac = fmax
            if fac < fmin:
                fac = fmin
            if d8 and rejected and fac > 1.0:   # dop853.f: no growth after a rejection
                fac = 1.0
            rejected = False
            t_old = t
            t = target if landed else t + hs
            if D.on:
                drow = _dense_row(D)
                if drow == NULL:
                    t_out[0] = t_old
                    n_rec[0] = row
                    return _ST_DENSE_MEMORY
                drow[0] = t_old
                drow[1] = t
                drow[2] = hs
                if d8:
                    _dense_dop853(M, t_old, y, yn, hs, K, yt, drow + 3)
                    if M.cb_error != NULL:
                        t_out[0] = t_old
                        return NC_ST_INTERRUPTED
                else:
                    _dense_dopri5(M, y, yn, hs, K, drow + 3)
                if D.store:
                    D.rows += 1
            for i in range(n):
                y[i] = yn[i]
            tmp = K[0]
            K[0] = K[last]
            K[last] = tmp
            n_acc[0] += 1
            # keep the controller's step when the step was shortened to land
            h = hs * fac if not landed or hs * fac > h else h
            if M.kind == MODEL_RADANG and y[0] <= 0.0:
                t_out[0] = t
                n_rec[0] = row
                return NC_ST_RADIUS
            if n_eval > 0:
                while ie < n_eval and t_eval[ie] <= t:
                    _record(rec_t, rec_y, row, t, y, n)
                    row += 1
                    ie += 1
            elif n_acc[0] % record_every == 0 or t >= t_end:
                _record(rec_t, rec_y, row, t, y, n)
                row += 1
            n_rec[0] = row
            if D.hook != NULL and _call_hook(M, D, drow, n):
                t_out[0] = t
                return NC_ST_INTERRUPTED if M.cb_error != NULL else _ST_EVENT
            if E.m > 0:
                i = _cev_step(M, E, drow[0], drow[1], drow[2], drow + 3, D.ncoef, y)
                if i != 0:
                    t_out[0] = t
                    return _ST_EVENT if i > 0 else _ST_DENSE_MEMORY
        else:
            fac = 0.9 * pow(err, expo)
            if fac < fmin:
                fac = fmin
            n_rej[0] += 1
            rejected = True
            h = hs * fac
    t_out[0] = t
    n_rec[0] = row
    return NC_ST_OK


cdef int _model_init(Model* M, int kind, const double[::1] hp, Potential pot,
                     const double[::1] D, object schedule, bint check_signals) except -1:
    """Fill M from the facade's arrays (M.g, M.params are set by the caller)."""
    if hp.shape[0] < 9:
        raise ValueError(f"the model's hyper-parameter row must have 9 entries [m, mu, k, "
                         f"reduced, sched, s1, s2, mirror, p], got {hp.shape[0]}")
    _model_row(M, kind, &hp[0], pot)
    M.D = &D[0] if D.shape[0] > 0 else NULL
    M.check_signals = check_signals
    M.cancel = NULL
    if kind == MODEL_BREGMAN and M.sched == SCHED_USER:
        if schedule is None or not callable(schedule):
            raise TypeError("a user schedule (sched = SCHED_USER) needs schedule= callable")
        M.sched_obj = <PyObject*> schedule
    return 0


cdef int _raise_callback_error(Model* M) except -1:
    """Re-raise the exception the user's schedule raised in the loop (if any)."""
    cdef object exc
    if M.cb_error != NULL:
        exc = <object> M.cb_error
        Py_XDECREF(M.cb_error)
        M.cb_error = NULL
        raise exc
    return 0


def integrate_kernel(object model,      # IN _bridge.ModelInputs
                     double[::1] y,     # IN/OUT initial -> final state
                     object plan,       # IN _bridge.IntegratePlan
                     object record,     # OUT _bridge.Trajectory (preallocated rows)
                     bint check_signals=True):
    """Integrate one trajectory (all arguments validated by noether_core.integrate).

    The argument groups are the named dataclasses of noether_core/_bridge.py: the model
    (hp = [m, mu, k, reduced, sched, s1, s2, mirror, p], the potential's kernel, the
    diagonal mirror D or length 0, the user schedule for sched = SCHED_USER: a callable
    t -> (e^alpha, e^(alpha+beta), gamma') called back with the GIL, whose exception stops
    the run and is re-raised here); the plan (fixed-step methods take ``n_steps`` steps of
    size ``h`` and record every ``record_every``-th state; dopri5 and dop853 use ``h``
    (> 0) as the first trial step (<= 0: automatic), land exactly on each ``t_eval`` and
    record there, or every ``record_every``-th accepted step and the final state if
    t_eval is empty).  Adaptive methods only: ``plan.dense`` keeps every accepted step's
    continuous extension (at most ``plan.max_dense_rows`` rows, else status
    STATUS_DENSE_MEMORY) in ``record.dense`` (rows [t_old, t_new, h, c_0, ..., c_{nc-1}],
    nc = 5 for dopri5, 8 for dop853); ``plan.event_hook`` (a callable or None) is called
    with the GIL after each accepted step as ``hook(t_old, t_new, h, coefs (nc, n))``; a
    true return stops the run with STATUS_TERMINAL_EVENT, an exception is re-raised.
    ``plan.compiled_events`` (or None: kind (m,) intc EV_*, level, direction (m,),
    terminal (m,) intp counts, weights (m, n), matrices (m, n, n), max_rows) are located
    in the loop without
    the GIL; their roots come back in ``record.events``, rows [t, k, y (n)].

    Returns (status, n_rec, steps_done, t_final, nfev, n_accepted, n_rejected).
    """
    cdef Potential pot = model.potential_kernel
    cdef int method = plan.method
    cdef double t0 = plan.t0, h = plan.h, t_end = plan.t_end
    cdef double rtol = plan.rtol, atol = plan.atol
    cdef Py_ssize_t n_steps = plan.n_steps, record_every = plan.record_every
    cdef Py_ssize_t max_steps = plan.max_steps
    cdef const double[::1] t_eval = plan.t_eval
    cdef double[::1] rec_t = record.t
    cdef double[:, ::1] rec_y = record.y
    cdef object hook = getattr(plan, "event_hook", None)
    cdef bint store = getattr(plan, "dense", False)
    cdef Model M
    cdef Dense D
    cdef Py_ssize_t d = pot.d, n = y.shape[0], i
    cdef Py_ssize_t n_rec = 0, n_done = 0, n_acc = 0, n_rej = 0
    cdef int status
    cdef double t_final = t_end
    cdef double* K[16]
    cdef double* work
    cdef int n_k = 16 if method == METHOD_DOP853 else 7
    cdef cnp.ndarray dense_out
    cdef bint adaptive
    cdef CEvents E
    cdef const int[::1] ev_kind
    cdef const double[::1] ev_level
    cdef const double[::1] ev_dir
    cdef const Py_ssize_t[::1] ev_term
    cdef const double[:, ::1] ev_w
    cdef const double[:, :, ::1] ev_Q
    cdef double* ev_work = NULL
    cdef Py_ssize_t m_ev = 0
    adaptive = method == METHOD_DOPRI5 or method == METHOD_DOP853
    if (store or hook is not None) and not adaptive:
        raise ValueError("integrate_kernel: dense output and events are computed in the "
                         "kernel for dopri5 and dop853 only")
    E.m = 0
    E.buf = NULL
    ev_spec = getattr(plan, "compiled_events", None)
    if ev_spec is not None:
        if not adaptive:
            raise ValueError("integrate_kernel: compiled events need dopri5 or dop853")
        ev_kind = ev_spec.kind
        ev_level = ev_spec.level
        ev_dir = ev_spec.direction
        ev_term = ev_spec.terminal
        ev_w = ev_spec.weights
        ev_Q = ev_spec.matrices
        m_ev = ev_kind.shape[0]
        if (ev_level.shape[0] != m_ev or ev_dir.shape[0] != m_ev
                or ev_term.shape[0] != m_ev or ev_w.shape[0] != m_ev
                or ev_w.shape[1] != n or ev_Q.shape[0] != m_ev or ev_Q.shape[1] != n
                or ev_Q.shape[2] != n or m_ev < 1 or ev_spec.max_rows < 1):
            raise ValueError("integrate_kernel: inconsistent compiled event arrays")
    _model_init(&M, model.kind, model.hp, pot, model.D, model.schedule, check_signals)
    M.n = n
    if m_ev > 0:
        ev_work = <double*> malloc((5 * m_ev + n) * sizeof(double))
        E.buf = <double*> malloc(16 * (2 + n) * sizeof(double))
        if ev_work == NULL or E.buf == NULL:
            free(ev_work)
            free(E.buf)
            raise MemoryError("integrator events")
        E.m = m_ev
        E.kind = &ev_kind[0]
        E.level = &ev_level[0]
        E.direction = &ev_dir[0]
        E.terminal = &ev_term[0]
        E.w = &ev_w[0, 0]
        E.Q = &ev_Q[0, 0, 0]
        E.g = ev_work
        E.last_t = ev_work + m_ev
        E.root_s = ev_work + 2 * m_ev
        E.count = <Py_ssize_t*> (ev_work + 3 * m_ev)     # sizeof(Py_ssize_t) <= 8
        E.root_k = <Py_ssize_t*> (ev_work + 4 * m_ev)
        E.ys = ev_work + 5 * m_ev
        for i in range(m_ev):
            E.count[i] = 0
        E.rows = 0
        E.cap = 16
        E.max_rows = ev_spec.max_rows
        E.stride = 2 + n
    D.ncoef = 8 if method == METHOD_DOP853 else 5
    D.on = store or hook is not None or m_ev > 0
    D.store = store
    D.stride = 3 + D.ncoef * n
    D.rows = 0
    D.cap = 1
    D.max_rows = getattr(plan, "max_dense_rows", 0) if store else 1
    D.hook = <PyObject*> hook if hook is not None else NULL
    D.buf = NULL
    if D.on:
        if D.max_rows < 1:
            free(ev_work)
            free(E.buf)
            raise MemoryError("integrate_kernel: max_dense_rows must be >= 1 for dense "
                              "output")
        D.buf = <double*> malloc(D.stride * sizeof(double))
        if D.buf == NULL:
            free(ev_work)
            free(E.buf)
            raise MemoryError("integrator dense output")
    work = <double*> malloc(((n_k + 2) * n + d) * sizeof(double))
    if work == NULL:
        free(D.buf)
        free(ev_work)
        free(E.buf)
        raise MemoryError("integrator workspace")
    for i in range(n_k):
        K[i] = work + i * n
    M.g = work + (n_k + 2) * n
    M.params = pot.new_params()
    try:
        with nogil:
            if adaptive:
                status = _adaptive_loop(&M, method, &y[0], t0, t_end, h, rtol, atol,
                                        max_steps,
                                        &t_eval[0] if t_eval.shape[0] > 0 else NULL,
                                        t_eval.shape[0], record_every, &rec_t[0],
                                        &rec_y[0, 0], &n_rec, &n_acc, &n_rej, &t_final, K,
                                        work + n_k * n, work + (n_k + 1) * n, &D, &E)
                n_done = n_acc
            else:
                K[4] = work + 7 * n
                status = _fixed_loop(&M, method, &y[0], t0, h, n_steps, record_every,
                                     &rec_t[0], &rec_y[0, 0], &n_rec, &n_done, K)
                t_final = t0 + n_done * h
                n_acc = n_done
        if store:
            dense_out = np.empty((D.rows, D.stride))
            if D.rows > 0:
                memcpy(cnp.PyArray_DATA(dense_out), D.buf, D.rows * D.stride * sizeof(double))
            record.dense = dense_out
        if m_ev > 0:
            dense_out = np.empty((E.rows, E.stride))
            if E.rows > 0:
                memcpy(cnp.PyArray_DATA(dense_out), E.buf, E.rows * E.stride * sizeof(double))
            record.events = dense_out
    finally:
        pot.free_params(M.params)
        free(work)
        free(D.buf)
        free(ev_work)
        free(E.buf)
    _raise_callback_error(&M)
    if status == NC_ST_INTERRUPTED:
        reraise_signal()
    return status, n_rec, n_done, t_final, M.nfev, n_acc, n_rej


def rhs_kernel(object model,            # IN _bridge.ModelInputs
               const double[::1] t,     # IN (R,)
               const double[:, ::1] y,  # IN (R, n)
               double[:, ::1] dy):      # OUT (R, n)
    """The integrator's own right-hand side F(t_i, y_i) at each row (``_rhs``).

    An exception of the user's schedule, or of a Python potential's ``fn``, is re-raised.
    Returns the number of gradient evaluations.
    """
    cdef Potential pot = model.potential_kernel
    cdef Model M
    cdef Py_ssize_t R = y.shape[0], n = y.shape[1], r
    cdef double* g
    if t.shape[0] != R or dy.shape[0] != R or dy.shape[1] != n:
        raise ValueError("rhs_kernel: t, y and dy must have matching rows (and y, dy shape)")
    _model_init(&M, model.kind, model.hp, pot, model.D, model.schedule, False)
    M.n = n
    g = <double*> malloc((pot.d if pot.d > 0 else 1) * sizeof(double))
    if g == NULL:
        raise MemoryError("integrator workspace")
    M.g = g
    M.params = pot.new_params()
    try:
        with nogil:
            for r in range(R):
                _rhs(&M, t[r], &y[r, 0], &dy[r, 0])
                if M.cb_error != NULL:
                    break
    finally:
        pot.free_params(M.params)
        free(g)
    _raise_callback_error(&M)
    take_error = getattr(pot, "take_error", None)
    if take_error is not None:
        err = take_error()
        if err is not None:
            raise err[0]
    return M.nfev


# -------------------------------------------------------------------------------------
# grids of trajectories (scan_integrate): many points per call, the GIL released once

cdef extern from "integ_lanes.h" nogil:
    enum: NCI_NL
    enum: NCI_POT_QUADRATIC, NCI_POT_RAYLEIGH
    enum: NCI_LIE, NCI_STRANG, NCI_YOSHIDA, NCI_GD, NCI_RK4
    enum: NCI_M1, NCI_M4, NCI_M2
    enum: NCI_ISA_BASE, NCI_ISA_AVX512
    ctypedef struct nci_ctx:
        int pot
        int model
        int scheme
        Py_ssize_t d
        const double* A
        const double* b
        Py_ssize_t steps
        const int* cancel
        int isa
    ctypedef struct nci_block:
        double c[3][NCI_NL]
        double a[3][NCI_NL]
        double tau[3][NCI_NL]
        double k[NCI_NL]
        double m[NCI_NL]
        double mu[NCI_NL]
        double cs[3][NCI_NL]
        double sn[3][NCI_NL]
        double om[NCI_NL]
        double red[NCI_NL]
        double gam[NCI_NL]
        double km[NCI_NL]
        double* y[NCI_NL]
        int status[NCI_NL]
        Py_ssize_t done[NCI_NL]
        void* work
    Py_ssize_t NCI_WORK(Py_ssize_t d)
    int nci_best_isa()
    void nci_run_block(const nci_ctx* c, nci_block* B)

cdef extern from "stdlib.h" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

#: grid points per SIMD block of the integrator lanes; the instruction sets this build and
#: CPU can run them with (names)
INTEGRATOR_LANES = NCI_NL
_LANE_ISAS = {"base": NCI_ISA_BASE, "avx512": NCI_ISA_AVX512}


def lane_isas():
    """The lane versions this build and CPU run (best last)."""
    return ["base", "avx512"] if nci_best_isa() == NCI_ISA_AVX512 else ["base"]


cdef void _lane_consts(nci_block* B, int l, int kind, int method, double h, double m,
                       double mu, double k, double reduced) noexcept nogil:
    """Lane l's substep constants, by the scalar code's own expressions (_m1_lie,
    _m1_strang with the step _split_step passes it, M4's explicit Euler h / mu; RK4 takes
    h itself; M2: _m2_D's e^{-tau mu / m}, _m2_A's sqrt(k / m), cos, sin at the flows'
    step tau (Lie: h; Strang: half the stage's step), _rhs's mu / m and k / m)."""
    cdef double cbrt2, w1, w0, tau, ta, om
    cdef double taus[3]
    cdef int s, ns
    B.m[l] = m
    B.mu[l] = mu
    B.k[l] = k
    B.red[l] = reduced
    B.gam[l] = mu / m
    B.km[l] = k / m
    om = sqrt(k / m) if k > 0.0 else 1.0
    B.om[l] = om
    for s in range(3):
        B.cs[s][l] = 1.0
        B.sn[s][l] = 0.0
    if method == METHOD_RK4:
        B.tau[0][l] = h
        return
    if kind == MODEL_GFLOW:
        B.a[0][l] = h / mu
        return
    if method == METHOD_EULER:
        if kind == MODEL_RADANG:                # _m2_lie: D, B, A, C all at h
            B.c[0][l] = exp(-h * mu / m)
            B.a[0][l] = h
            B.tau[0][l] = h
            if k > 0.0:
                B.cs[0][l] = cos(om * h)
                B.sn[0][l] = sin(om * h)
            return
        B.c[0][l] = exp(-h * mu / m)
        B.a[0][l] = h / m
        B.tau[0][l] = h
        return
    if method == METHOD_VERLET:
        taus[0] = h
        ns = 1
    else:
        cbrt2 = pow(2.0, 1.0 / 3.0)
        w1 = 1.0 / (2.0 - cbrt2)
        w0 = -cbrt2 / (2.0 - cbrt2)
        taus[0] = w1 * h
        taus[1] = w0 * h
        taus[2] = w1 * h
        ns = 3
    for s in range(ns):
        tau = taus[s]
        if kind == MODEL_RADANG:                # _m2_strang(tau): D B A at tau/2, C at tau
            ta = 0.5 * tau
            B.c[s][l] = exp(-ta * mu / m)
            B.a[s][l] = ta
            B.tau[s][l] = tau
            if k > 0.0:
                B.cs[s][l] = cos(om * ta)
                B.sn[s][l] = sin(om * ta)
            continue
        B.c[s][l] = exp(-0.5 * tau * mu / m)
        B.a[s][l] = 0.5 * tau / m
        B.tau[s][l] = tau


cdef void _model_row(Model* M, int kind, const double* hp, Potential pot) noexcept nogil:
    """Fill M from one grid point's hyper-parameter row (as _model_init; no mirror array,
    no user schedule: the grid kernel runs M1, M2 and M4)."""
    M.kind = kind
    M.d = pot.d
    M.fn = pot.fn
    M.m = hp[0]
    M.mu = hp[1]
    M.k = hp[2]
    M.reduced = <int> hp[3]
    M.sched = <int> hp[4]
    M.s1 = hp[5]
    M.s2 = hp[6]
    M.mirror = <int> hp[7]
    M.p = hp[8]
    M.D = NULL
    M.nfev = 0
    M.check_signals = False
    M.next_poll = 0.0
    M.cb_error = NULL
    M.sched_obj = NULL


cdef class GridKernel:
    """Points ``lo .. hi-1`` of a grid of trajectories of one model class, method and
    potential in one compiled call (``run``), with the GIL released once around all of
    them.  Each point is exactly what :func:`integrate_kernel` computes for the same
    hyper-parameter row, step, tolerances (the same functions, the same operations), with
    nothing recorded but the final state.  ``cancel()`` (from any thread) sets the flag the
    loops poll every 64 steps: the running point stops (status NC_ST_INTERRUPTED) and no
    further point starts.

    Arguments (validated by noether_core.scan_integrate):
    ``kind`` (MODEL_*: M1, M2 or M4), ``method`` (METHOD_*), ``potential_kernel``,
    ``hp`` (P, 9) rows as ModelInputs.hp, ``t0``, ``t_end``; per point ``h`` (P,) (fixed
    step; adaptive: first trial step, <= 0 automatic), ``n_steps`` (P,) (fixed-step
    methods), ``rtol``, ``atol`` (P,), and ``max_steps`` (adaptive).  Outputs (P rows,
    written for the points run): ``y`` (P, n) IN initial / OUT final state, ``t_final``
    (P,), ``counts`` (P, 4) intp: status, nfev, accepted steps, rejected steps.
    """
    cdef int cancel_flag
    cdef Potential pot
    cdef int kind, method
    cdef double t0, t_end
    cdef Py_ssize_t max_steps, P, n
    cdef const double[:, ::1] hp
    cdef const double[::1] h, rtol, atol
    cdef const Py_ssize_t[::1] n_steps
    cdef double[:, ::1] y
    cdef double[::1] t_final
    cdef Py_ssize_t[:, ::1] counts
    cdef readonly Py_ssize_t points_done
    cdef readonly int lane_pot          # NCI_POT_* when the grid runs in lanes, else -1
    cdef readonly int isa
    cdef object lane_A, lane_b

    def __init__(self, int kind, int method, Potential potential_kernel, hp, double t0,
                 double t_end, h, n_steps, rtol, atol, Py_ssize_t max_steps, y, t_final,
                 counts, lane=None, isa=None):
        if kind == MODEL_BREGMAN or not (0 <= kind <= MODEL_GFLOW):
            raise ValueError(f"GridKernel: model kind {kind} is not run on grids (M1, M2, "
                             "M4 only)")
        if not (METHOD_EULER <= method <= METHOD_DOP853):
            raise ValueError(f"GridKernel: unknown method code {method}")
        self.cancel_flag = 0
        self.pot = potential_kernel
        self.kind = kind
        self.method = method
        self.t0 = t0
        self.t_end = t_end
        self.max_steps = max_steps
        self.hp = hp
        self.h = h
        self.n_steps = n_steps
        self.rtol = rtol
        self.atol = atol
        self.y = y
        self.t_final = t_final
        self.counts = counts
        self.P = self.hp.shape[0]
        self.n = self.y.shape[1]
        self.points_done = 0
        if (self.hp.shape[1] != 9 or self.h.shape[0] != self.P
                or self.n_steps.shape[0] != self.P or self.rtol.shape[0] != self.P
                or self.atol.shape[0] != self.P or self.y.shape[0] != self.P
                or self.t_final.shape[0] != self.P or self.counts.shape[0] != self.P
                or self.counts.shape[1] != 4):
            raise ValueError("GridKernel: the per-point arrays must have the grid's "
                             f"{self.P} rows (hp (P, 9), counts (P, 4))")
        if self.n != (2 + 2 * self.pot.d if kind == MODEL_RADANG else
                      self.pot.d if kind == MODEL_GFLOW else 2 * self.pot.d):
            raise ValueError(f"GridKernel: state length {self.n} does not fit the model "
                             f"kind {kind} with d = {self.pot.d}")
        if max_steps < 1 and method >= METHOD_DOPRI5:
            raise ValueError("GridKernel: max_steps must be >= 1")
        # lanes: M1 with a conformal splitting on a potential with a usable lane form
        self.lane_pot = -1
        self.isa = nci_best_isa() if isa is None else _LANE_ISAS[isa]
        if self.isa == NCI_ISA_AVX512 and nci_best_isa() != NCI_ISA_AVX512:
            raise ValueError("GridKernel: this build or CPU cannot run the avx512 lanes")
        if (lane is not None and lane[0] in ("quadratic", "rayleigh") and (
                (kind in (MODEL_DAMPED, MODEL_RADANG) and method <= METHOD_RK4)
                or (kind == MODEL_GFLOW and method in (METHOD_EULER, METHOD_RK4)))):
            self.lane_A = np.ascontiguousarray(lane[1]["A"], dtype=np.float64)
            if self.lane_A.shape != (self.pot.d, self.pot.d):
                raise ValueError("GridKernel: the lane form's A must be (d, d)")
            if lane[0] == "quadratic":
                self.lane_b = np.ascontiguousarray(lane[1]["b"], dtype=np.float64)
                if self.lane_b.shape != (self.pot.d,):
                    raise ValueError("GridKernel: the lane form's b must be (d,)")
                self.lane_pot = NCI_POT_QUADRATIC
            else:
                self.lane_b = self.lane_A
                self.lane_pot = NCI_POT_RAYLEIGH

    def cancel(self):
        """Stop the running point at its next poll and start no other (any thread)."""
        self.cancel_flag = 1

    @property
    def cancelled(self):
        return self.cancel_flag != 0

    def _run_lanes(self, Py_ssize_t lo, Py_ssize_t hi):
        """Points lo .. hi-1 in blocks of NCI_NL lanes sharing a step count (the points
        sorted by it; a short block's spare lanes repeat its last point into scratch)."""
        cdef cnp.ndarray order = np.argsort(np.asarray(self.n_steps[lo:hi]),
                                            kind="stable").astype(np.intp) + lo
        cdef const Py_ssize_t[::1] idx = order
        cdef Py_ssize_t n = self.n, d = self.pot.d, P = hi - lo, j, e, p, i
        cdef int ln, per = 3 if self.method == METHOD_YOSHIDA4 else 1
        cdef bint rk4 = self.method == METHOD_RK4
        cdef nci_ctx C
        cdef nci_block B
        cdef double* spare
        cdef double hh
        cdef bint stop = False
        cdef const double[:, ::1] A = self.lane_A
        cdef const double[::1] b = self.lane_b.reshape(-1)
        C.pot = self.lane_pot
        C.model = (NCI_M1 if self.kind == MODEL_DAMPED else
                   NCI_M2 if self.kind == MODEL_RADANG else NCI_M4)
        C.scheme = (NCI_RK4 if rk4 else NCI_GD if self.kind == MODEL_GFLOW else
                    NCI_LIE if self.method == METHOD_EULER else
                    NCI_STRANG if self.method == METHOD_VERLET else NCI_YOSHIDA)
        C.d = d
        C.A = &A[0, 0]
        C.b = &b[0]
        C.cancel = &self.cancel_flag
        C.isa = self.isa
        B.work = aligned_alloc(64, NCI_WORK(d) * NCI_NL * sizeof(double))
        spare = <double*> malloc(NCI_NL * n * sizeof(double))
        if B.work == NULL or spare == NULL:
            free(B.work)
            free(spare)
            raise MemoryError("integrator lane workspace")
        self.points_done = 0
        try:
            with nogil:
                j = 0
                while j < P and not stop:
                    if _load_flag(&self.cancel_flag) != 0:
                        break
                    e = j + 1               # the block: up to NCI_NL points, equal steps
                    while e < P and e - j < NCI_NL and \
                            self.n_steps[idx[e]] == self.n_steps[idx[j]]:
                        e += 1
                    C.steps = self.n_steps[idx[j]]
                    for ln in range(NCI_NL):
                        p = idx[j + ln] if j + ln < e else idx[e - 1]
                        _lane_consts(&B, ln, self.kind, self.method, self.h[p],
                                     self.hp[p, 0], self.hp[p, 1], self.hp[p, 2],
                                     self.hp[p, 3])
                        if j + ln < e:
                            B.y[ln] = &self.y[p, 0]
                        else:
                            B.y[ln] = spare + ln * n
                            for i in range(n):
                                B.y[ln][i] = self.y[p, i]
                    nci_run_block(&C, &B)
                    for ln in range(e - j):
                        p = idx[j + ln]
                        hh = self.h[p]
                        self.t_final[p] = self.t0 + B.done[ln] * hh
                        self.counts[p, 0] = B.status[ln]
                        self.counts[p, 1] = (4 * B.done[ln] if rk4 else
                                             (1 + per * B.done[ln]) if C.steps > 0 else 0)
                        self.counts[p, 2] = B.done[ln]
                        self.counts[p, 3] = 0
                        if B.status[ln] == NC_ST_INTERRUPTED:
                            stop = True
                        else:
                            self.points_done += 1
                    j = e
        finally:
            free(B.work)
            free(spare)
        return self.points_done

    def run(self, Py_ssize_t lo, Py_ssize_t hi):
        """Integrate points lo .. hi-1 (GIL released); returns the points done."""
        cdef Model M
        cdef Dense D
        cdef CEvents E
        cdef double* K[16]
        cdef double* work
        cdef double rec_t[2]
        cdef double* rec_y
        cdef Py_ssize_t n = self.n, d = self.pot.d, p, i, n_rec = 0, n_done = 0
        cdef Py_ssize_t n_acc = 0, n_rej = 0
        cdef double tf = 0.0
        cdef int status
        cdef void* params
        cdef bint adaptive = self.method >= METHOD_DOPRI5
        cdef int n_k = 16 if self.method == METHOD_DOP853 else 7
        if not (0 <= lo <= hi <= self.P):
            raise ValueError(f"GridKernel.run: need 0 <= lo <= hi <= {self.P}, got "
                             f"lo={lo}, hi={hi}")
        if self.lane_pot >= 0:
            return self._run_lanes(lo, hi)
        E.m = 0
        E.buf = NULL
        D.ncoef = 8 if self.method == METHOD_DOP853 else 5
        D.on = False
        D.store = False
        D.stride = 3 + D.ncoef * n
        D.rows = 0
        D.cap = 1
        D.max_rows = 1
        D.hook = NULL
        D.buf = NULL
        work = <double*> malloc(((n_k + 4) * n + d) * sizeof(double))
        if work == NULL:
            raise MemoryError("integrator grid workspace")
        for i in range(n_k):
            K[i] = work + i * n
        rec_y = work + (n_k + 2) * n                 # 2 rows: t0 and the final state
        params = self.pot.new_params()
        self.points_done = 0
        try:
            with nogil:
                for p in range(lo, hi):
                    if _load_flag(&self.cancel_flag) != 0:
                        break
                    _model_row(&M, self.kind, &self.hp[p, 0], self.pot)
                    M.n = n
                    M.g = work + (n_k + 4) * n
                    M.params = params
                    M.cancel = &self.cancel_flag
                    n_acc = 0
                    n_rej = 0
                    if adaptive:
                        status = _adaptive_loop(
                            &M, self.method, &self.y[p, 0], self.t0, self.t_end,
                            self.h[p], self.rtol[p], self.atol[p], self.max_steps, NULL, 0,
                            self.max_steps + 1, rec_t, rec_y, &n_rec, &n_acc, &n_rej, &tf,
                            K, work + n_k * n, work + (n_k + 1) * n, &D, &E)
                    else:
                        K[4] = work + 7 * n
                        status = _fixed_loop(&M, self.method, &self.y[p, 0], self.t0,
                                             self.h[p], self.n_steps[p],
                                             self.n_steps[p] + 1, rec_t, rec_y, &n_rec,
                                             &n_done, K)
                        tf = self.t0 + n_done * self.h[p]
                        n_acc = n_done
                    self.t_final[p] = tf
                    self.counts[p, 0] = status
                    self.counts[p, 1] = M.nfev
                    self.counts[p, 2] = n_acc
                    self.counts[p, 3] = n_rej
                    if status == NC_ST_INTERRUPTED:
                        break
                    self.points_done += 1
        finally:
            self.pot.free_params(params)
            free(work)
        return self.points_done
