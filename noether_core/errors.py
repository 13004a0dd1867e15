"""Warning and error classes of noether_core.

Invalid arguments raise the standard ``ValueError``/``TypeError`` (and ``MemoryError`` for
a recording above its budget); the classes here are what a run itself reports.
"""

__all__ = ["NoetherWarning", "DivergenceWarning", "IntegrationError", "CallbackError"]


class NoetherWarning(UserWarning):
    """Base class of every warning noether_core emits."""


class DivergenceWarning(NoetherWarning, RuntimeWarning):
    """A run met a non-finite loss, gradient or parameter and stopped early.

    The result object says where (``stop_step``), what (``stop_reason``) and which block.
    """


class IntegrationError(RuntimeError):
    """The adaptive integrator could not reach t_end (step-size underflow or max_steps).

    ``.result`` holds the partial :class:`~noether_core.IntegrateResult` (rows recorded
    so far).
    """

    def __init__(self, msg, result=None):
        super().__init__(msg)
        self.result = result


class CallbackError(RuntimeError):
    """A user potential's function failed inside a run; ``step`` says where.

    The user's exception is ``__cause__``.
    """

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step

    def __reduce__(self):
        # picklable (a worker process's error reaches the caller), step included
        return type(self), (self.args[0] if self.args else "", self.step)
