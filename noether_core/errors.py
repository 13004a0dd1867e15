"""Warning classes of noether_core (errors are the standard ValueError/TypeError)."""

__all__ = ["NoetherWarning", "DivergenceWarning"]


class NoetherWarning(UserWarning):
    """Base class of every warning noether_core emits."""


class DivergenceWarning(NoetherWarning, RuntimeWarning):
    """A run met a non-finite loss, gradient or parameter and stopped early.

    The result object says where (``stop_step``), what (``stop_reason``) and which block.
    """
