"""Status codes a compiled loop returns, and what they mean to a user.

The codes themselves are defined once, in the C header ``pyx/nc_status.h``; this module
reads them from the compiled kernels (through noether_core._bridge), so the facade never
spells a number.
"""
from __future__ import annotations

from ._bridge import status_codes

_CODES = status_codes()

OK: int = _CODES["OK"]
NONFINITE_LOSS: int = _CODES["NONFINITE_LOSS"]
NONFINITE_GRAD: int = _CODES["NONFINITE_GRAD"]
NONFINITE_PARAMS: int = _CODES["NONFINITE_PARAMS"]
INTERRUPTED: int = _CODES["INTERRUPTED"]

#: the reason a training loop stopped, by status (None: it finished)
REASON = {OK: None, NONFINITE_LOSS: "non-finite loss", NONFINITE_GRAD: "non-finite gradient",
          NONFINITE_PARAMS: "non-finite parameters after the update",
          INTERRUPTED: "interrupted"}


def reason(status: int) -> str | None:
    """The user-facing reason for ``status`` (None when the run finished)."""
    return REASON.get(int(status), f"status {int(status)}")

# integrators (pyx/integrators.pyx; noether_core/_integrate.py turns them into messages)
NONFINITE_STATE: int = _CODES["NONFINITE_STATE"]
STEP_UNDERFLOW: int = _CODES["STEP_UNDERFLOW"]
MAX_STEPS: int = _CODES["MAX_STEPS"]
RADIUS: int = _CODES["RADIUS"]
