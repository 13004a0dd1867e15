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
  classical RK4, and adaptive Dormand-Prince 5(4) with exact landing on requested times.
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
from libc.stdlib cimport malloc, free
from libc.float cimport DBL_EPSILON
from cpython.ref cimport PyObject, Py_XINCREF, Py_XDECREF

cimport numpy as cnp

from noether_core._kernels.potentials cimport Potential, grad_fn
from noether_core._kernels.rules cimport poll_signals, reraise_signal
from noether_core._kernels.status cimport *

cnp.import_array()

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
                          double* f1, double rtol, double atol, double direction_T) noexcept nogil:
    """Hairer-Norsett-Wanner's starting step (II.4), for order 5; f0 = F(t, y) given."""
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
        h1 = pow(0.01 / mx, 1.0 / 5.0)
    h1 = 100.0 * h0 if 100.0 * h0 < h1 else h1
    if not (h1 > 0.0 and isfinite(h1)):         # absurd tolerances: start small
        h1 = 1e-6 * direction_T
    return h1


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
        if M.check_signals and (s & 63) == 0 and poll_signals(&M.next_poll):
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


cdef int _dopri_loop(Model* M, double* y, double t0, double t_end, double h_init,
                     double rtol, double atol, Py_ssize_t max_steps, const double* t_eval,
                     Py_ssize_t n_eval, Py_ssize_t record_every, double* rec_t,
                     double* rec_y, Py_ssize_t* n_rec, Py_ssize_t* n_acc,
                     Py_ssize_t* n_rej, double* t_out, double** K, double* yt,
                     double* yn) noexcept nogil:
    cdef Py_ssize_t n = M.n, i, row = 0, ie = 0, attempts = 0
    cdef double t = t0, h, hs, err, fac, target, hmin, h_first
    cdef double* tmp
    cdef bint landed, last_bad = False
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
                                                  t_end - t0)
    if M.cb_error != NULL:
        return NC_ST_INTERRUPTED
    h_first = fabs(h)
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
        if M.check_signals and (attempts & 63) == 63 and poll_signals(&M.next_poll):
            t_out[0] = t
            n_rec[0] = row
            return NC_ST_INTERRUPTED
        attempts += 1
        # land exactly on the next output time (stretching h by at most 1% to get there)
        landed = t + 1.01 * h >= target
        hs = target - t if landed else h
        _dopri_step(M, t, y, hs, K, yt, yn)
        if M.cb_error != NULL:                  # the user's schedule raised
            t_out[0] = t
            return NC_ST_INTERRUPTED
        err = _dopri_err(M, y, yn, hs, K, rtol, atol)
        if not isfinite(err):
            # a non-finite trial state (or an error norm overflowing): shrink the step
            last_bad = not _finite(yn, n)
            n_rej[0] += 1
            h = 0.2 * hs
            continue
        last_bad = False
        if err <= 1.0:
            fac = 5.0 if err == 0.0 else 0.9 * pow(err, -0.2)
            if fac > 5.0:
                fac = 5.0
            t = target if landed else t + hs
            for i in range(n):
                y[i] = yn[i]
            tmp = K[0]
            K[0] = K[6]
            K[6] = tmp
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
        else:
            fac = 0.9 * pow(err, -0.2)
            if fac < 0.2:
                fac = 0.2
            n_rej[0] += 1
            h = hs * fac
    t_out[0] = t
    n_rec[0] = row
    return NC_ST_OK


cdef int _model_init(Model* M, int kind, const double[::1] hp, Potential pot,
                     const double[::1] D, object schedule, bint check_signals) except -1:
    """Fill M from the facade's arrays (M.g, M.params are set by the caller)."""
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
    M.D = &D[0] if D.shape[0] > 0 else NULL
    M.nfev = 0
    M.check_signals = check_signals
    M.next_poll = 0.0
    M.cb_error = NULL
    M.sched_obj = NULL
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
    size ``h`` and record every ``record_every``-th state; dopri5 uses ``h`` (> 0) as the
    first trial step (<= 0: automatic), lands exactly on each ``t_eval`` and records there,
    or every ``record_every``-th accepted step and the final state if t_eval is empty).

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
    cdef Model M
    cdef Py_ssize_t d = pot.d, n = y.shape[0], i
    cdef Py_ssize_t n_rec = 0, n_done = 0, n_acc = 0, n_rej = 0
    cdef int status
    cdef double t_final = t_end
    cdef double* K[7]
    cdef double* work
    _model_init(&M, model.kind, model.hp, pot, model.D, model.schedule, check_signals)
    M.n = n
    work = <double*> malloc((9 * n + d) * sizeof(double))
    if work == NULL:
        raise MemoryError("integrator workspace")
    for i in range(7):
        K[i] = work + i * n
    M.g = work + 9 * n
    M.params = pot.new_params()
    try:
        with nogil:
            if method == METHOD_DOPRI5:
                status = _dopri_loop(&M, &y[0], t0, t_end, h, rtol, atol, max_steps,
                                     &t_eval[0] if t_eval.shape[0] > 0 else NULL,
                                     t_eval.shape[0], record_every, &rec_t[0],
                                     &rec_y[0, 0], &n_rec, &n_acc, &n_rej, &t_final, K,
                                     work + 7 * n, work + 8 * n)
                n_done = n_acc
            else:
                K[4] = work + 7 * n
                status = _fixed_loop(&M, method, &y[0], t0, h, n_steps, record_every,
                                     &rec_t[0], &rec_y[0, 0], &n_rec, &n_done, K)
                t_final = t0 + n_done * h
                n_acc = n_done
    finally:
        pot.free_params(M.params)
        free(work)
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
