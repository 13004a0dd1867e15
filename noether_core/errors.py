"""Warning and error classes of noether_core.

Invalid arguments raise the standard ``ValueError``/``TypeError``; a request above a memory
budget raises :class:`BudgetError` (a ValueError and a MemoryError).  The other classes
here are what a run itself reports.
"""

__all__ = ["NoetherWarning", "DivergenceWarning", "IntegrationError", "CallbackError",
           "BudgetError"]


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

    Raised by ``train``, ``scan`` and ``scan_integrate`` when a
    :class:`~noether_core.potentials.Python` potential's ``fn`` raised an ``Exception``
    or returned a malformed value; the user's exception is ``__cause__`` (KeyboardInterrupt
    and SystemExit raised in ``fn`` propagate as themselves instead).  It pickles, step
    included, so a process-pool worker's error reaches the caller.

    Examples
    --------
    >>> import pickle
    >>> err = pickle.loads(pickle.dumps(CallbackError("fn raised at step 3", 3)))
    >>> err.step, str(err)
    (3, 'fn raised at step 3')
    """

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step

    def __reduce__(self):
        # picklable (a worker process's error reaches the caller), step included
        return type(self), (self.args[0] if self.args else "", self.step)


class BudgetError(ValueError, MemoryError):
    """A request whose estimated allocations exceed its memory budget, refused before
    anything is allocated.

    The message names the bytes it would need, by part, and the keyword that raises the
    budget (``max_record_bytes=`` for ``scan``, ``max_bytes=`` for a potential).  It is a
    ``ValueError`` (the arguments ask for too much) and a ``MemoryError`` (what a budget
    refusal raised before it existed), so either ``except`` catches it.

    Examples
    --------
    >>> issubclass(BudgetError, ValueError) and issubclass(BudgetError, MemoryError)
    True
    """
