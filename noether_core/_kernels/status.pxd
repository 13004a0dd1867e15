# cython: language_level=3
"""The status codes of every compiled loop (defined once, in pyx/nc_status.h)."""

cdef extern from "nc_status.h":
    cdef enum nc_status:
        NC_ST_OK
        NC_ST_NONFINITE_LOSS
        NC_ST_NONFINITE_GRAD
        NC_ST_NONFINITE_PARAMS
        NC_ST_INTERRUPTED
        NC_ST_NONFINITE_STATE
        NC_ST_STEP_UNDERFLOW
        NC_ST_MAX_STEPS
        NC_ST_RADIUS
