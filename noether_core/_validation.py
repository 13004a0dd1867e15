"""Input validation done once, at the door (the kernels trust what passes here).

Every function names the offending argument, the value it got and what is allowed.
Non-contiguous, read-only or float32 input is converted (copied), never rejected.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

__all__ = ["as_float_array", "as_float_vector", "as_scalar", "as_int", "as_bool",
           "as_index_array", "as_rng", "check_size"]

#: largest array (in float64 elements) a constructor builds without being asked twice:
#: 2**31 elements = 16 GiB.  Larger requests are refused with a MemoryError naming the size
#: arguments instead of failing deep inside NumPy (or being OOM-killed).
MAX_ELEMENTS = 2**31


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _first(mask: np.ndarray):
    where = tuple(int(i) for i in np.argwhere(mask)[0])
    return where if len(where) != 1 else where[0]


_F64 = np.dtype(np.float64)


def as_float_array(name: str, x, *, ndim: int | None = None, shape=None,
                   allow_empty: bool = False, finite: bool = True,
                   copy: bool = True) -> np.ndarray:
    """Return ``x`` as a new C-contiguous float64 array, or raise naming ``name``.

    ``shape`` may contain ``None`` for "any length".  Integers, bools and float32 are
    promoted; complex, object and string data are refused, and so is a
    ``numpy.ma.MaskedArray`` with masked entries (its mask would otherwise be dropped
    silently; one without masked entries is an ordinary array).
    """
    if type(x) is np.ndarray and x.dtype is _F64 and x.flags.c_contiguous:
        # fast path: already a plain C-contiguous float64 array (the common case); the
        # same checks, in fewer calls; any failure goes down the general path below,
        # which raises the same message as ever
        if ((ndim is None or x.ndim == ndim)
                and (shape is None or (x.ndim == len(shape) and all(
                    s is None or s == a for s, a in zip(shape, x.shape, strict=True))))
                and (x.size > 0 or allow_empty)
                and (not finite or np.isfinite(x).all())):
            return x.copy() if copy else x
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array of real numbers, got {_describe(x)}")
    if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
        # np.asarray would drop the mask and use whatever the masked slots hold
        raise ValueError(f"{name} is a masked array with {int(np.ma.count_masked(x))} "
                         f"masked entries (first at index "
                         f"{_first(np.ma.getmaskarray(x))}); the masked values would be "
                         "used as they are: fill them first (e.g. x.filled(0.0)) or pass "
                         "a plain array")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(s is not None and s != a
                                         for s, a in zip(shape, arr.shape, strict=True)):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    # copy=False means "no copy unless needed" (NumPy 2's copy=False refuses any copy:
    # a strided or float32 input raised "Unable to avoid copy")
    out = np.array(arr, dtype=np.float64, order="C", copy=True if copy else None)
    if finite and not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(f"{name} must be finite, found {out[where]} at index "
                         f"{where if len(where) != 1 else where[0]}")
    return out


def as_float_vector(name: str, x, n: int) -> np.ndarray:
    """``as_float_array(name, x, shape=(n,))`` for the common case, in fewer calls.

    A short (n <= 64) plain C-contiguous float64 vector of length n, or a list of n
    Python floats, whose entries are finite is returned as a new array; anything else
    (other types, shapes, lengths, non-finite entries) goes to :func:`as_float_array`,
    which accepts or refuses it with its own messages, so the result and every error are
    the same.  Finiteness is read off the entries' Python sum: it is finite only if every
    entry is (an inf or a NaN makes it inf or NaN; Python float addition overflows to inf
    without a warning), and when it overflows for finite entries the general path decides.
    """
    if 0 < n <= 64:
        if type(x) is list:
            if (len(x) == n and all(type(v) is float for v in x)
                    and math.isfinite(sum(x))):
                return np.array(x, dtype=np.float64)
        elif (type(x) is np.ndarray and x.dtype is _F64 and x.ndim == 1
              and x.shape[0] == n and x.flags.c_contiguous
              and math.isfinite(sum(x.tolist()))):
            return x.copy()
    return as_float_array(name, x, shape=(n,))


def as_scalar(name: str, x, *, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real scalar in [lo, hi] (ends open when asked)."""
    if type(x) is float:                        # the common case, without the ABC checks
        pass
    elif isinstance(x, bool) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
            x = x.item()
        else:
            raise TypeError(f"{name} must be a real number, got {_describe(x)}")
    try:
        v = float(x)
    except OverflowError:                       # an int beyond the float64 range
        raise ValueError(f"{name} must be finite, got an integer of {x.bit_length()} bits "
                         "(beyond the float64 range)") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    bad = ((lo is not None and (v < lo or (lo_open and v == lo)))
           or (hi is not None and (v > hi or (hi_open and v == hi))))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{name} must lie in {rng}, got {v}")
    return v


def as_int(name: str, x, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (Python or NumPy, not bool, not float) in [lo, hi]."""
    if isinstance(x, bool) or isinstance(x, float):
        raise TypeError(f"{name} must be an integer, got {_describe(x)}")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_describe(x)}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must lie in [{'-inf' if lo is None else lo}, "
                         f"{'inf' if hi is None else hi}], got {v}")
    return v


def as_bool(name: str, x) -> bool:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    raise TypeError(f"{name} must be True or False, got {_describe(x)}")


def as_index_array(name: str, x, n: int) -> np.ndarray:
    """A 1-D array of integer indices into range(n) (negative indices refused)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"{name} must be a 1-D integer array, got {_describe(x)}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} has indices outside [0, {n}), got range "
                         f"[{arr.min()}, {arr.max()}]")
    return np.array(arr, dtype=np.intp, order="C")


def as_rng(name: str, seed) -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` with errors naming the argument (bools refused)."""
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{name} must be None, an int >= 0, a SeedSequence or a numpy "
                        f"Generator, got {seed!r}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be None, an int >= 0, a SeedSequence or a numpy "
                        f"Generator, got {_describe(seed)} ({exc})") from None


def check_size(what: str, n_elements: int) -> None:
    """Refuse (MemoryError) building more than MAX_ELEMENTS float64 numbers; ``what``
    names the arguments that set the size."""
    if n_elements > MAX_ELEMENTS:
        raise MemoryError(f"{what} asks for {n_elements} numbers ({8 * n_elements / 2**30:.3g}"
                          f" GiB), above the {MAX_ELEMENTS}-element limit")


def _nonfinite(x, depth=0) -> bool:
    if isinstance(x, (float, np.floating)):
        return not math.isfinite(x)
    if isinstance(x, np.ndarray):
        return x.dtype.kind == "f" and not np.all(np.isfinite(x))
    if depth < 2 and isinstance(x, tuple):
        return any(_nonfinite(v, depth + 1) for v in x)
    if depth < 2 and hasattr(x, "__dataclass_fields__"):
        return any(_nonfinite(getattr(x, k), depth + 1) for k in x.__dataclass_fields__)
    return False


def finite_result(fn):
    """Decorate a closed-form function: finite inputs whose result overflows (or divides
    by an underflowed zero) raise a ValueError naming the arguments and their values,
    instead of returning inf/NaN or raising a bare OverflowError/ZeroDivisionError."""
    import functools
    import inspect

    sig = inspect.signature(fn)

    def _args(args, kwargs):
        try:
            b = sig.bind(*args, **kwargs)
        except TypeError:
            return ""
        return ", ".join(f"{k}={_describe(v)}" for k, v in b.arguments.items())

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                out = fn(*args, **kwargs)
        except (OverflowError, ZeroDivisionError) as exc:
            raise ValueError(f"{fn.__name__}({_args(args, kwargs)}): the result is not "
                             f"representable in float64 ({exc})") from None
        if _nonfinite(out):
            raise ValueError(f"{fn.__name__}({_args(args, kwargs)}): the result overflows "
                             "float64 for these arguments")
        return out
    return wrapper
