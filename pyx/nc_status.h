/* Status codes of every compiled loop, defined once.
 *
 * The training loop (rules.pyx), the scan kernels (scan.pyx, lanes_impl.h) and the
 * integrators (integrators.pyx) return one of these; the .pxd contract
 * noether_core/_kernels/status.pxd declares them to Cython, and the Python facade reads
 * them through noether_core._kernels.rules.status_codes() (noether_core/_status.py), so no
 * number is spelled twice.  0 always means "finished"; NC_ST_INTERRUPTED means a Python
 * signal handler raised (Ctrl-C) or the run was cancelled, and the facade re-raises. */
#ifndef NC_STATUS_H
#define NC_STATUS_H

enum nc_status {
    NC_ST_OK = 0,
    /* training loops: the first non-finite value met in a step */
    NC_ST_NONFINITE_LOSS = 1,
    NC_ST_NONFINITE_GRAD = 2,
    NC_ST_NONFINITE_PARAMS = 3,
    /* every loop */
    NC_ST_INTERRUPTED = 4,
    /* integrators */
    NC_ST_NONFINITE_STATE = 5,   /* a non-finite state or right-hand side */
    NC_ST_STEP_UNDERFLOW = 6,    /* adaptive step size below the spacing of t */
    NC_ST_MAX_STEPS = 7,         /* adaptive driver hit max_steps */
    NC_ST_RADIUS = 8             /* M2: the radius reached zero */
};

#endif
