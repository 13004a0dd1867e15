"""_validation.as_float_array's fast path for an already-float64 C-contiguous ndarray
(issue 17 follow-up): the same answers as the general path, in fewer calls.

The fast path is taken only when every check passes at once; any failure (wrong ndim or
shape, empty, a non-finite entry) goes down the general path, which raises with the same
message as before.
"""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from noether_core import _validation as V


class _Sub(np.ndarray):
    """An ndarray subclass: the same data, but never the fast path (type(x) is not
    np.ndarray), so the general path answers for it."""


def _slow(name, x, **kw):
    """The general path on the same data."""
    return V.as_float_array(name, x.view(_Sub), **kw)


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0,
                                                  max_side=5)),
       shape_mode=st.sampled_from(["exact", "none", "wrong", "ndim"]),
       allow_empty=st.booleans(), finite=st.booleans(), copy=st.booleans())
def test_fast_path_equals_general_path(x, shape_mode, allow_empty, finite, copy):
    kw = dict(allow_empty=allow_empty, finite=finite, copy=copy)
    if shape_mode == "exact":
        kw["shape"] = (None,) + x.shape[1:]
    elif shape_mode == "wrong":
        kw["shape"] = x.shape + (1,)
    elif shape_mode == "ndim":
        kw["ndim"] = x.ndim
    try:
        want = _slow("x", x, **kw)
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)) as got:
            V.as_float_array("x", x, **kw)
        assert str(got.value) == str(exc)
        return
    got = V.as_float_array("x", x, **kw)
    assert got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    assert (got is x) == (not copy)             # copy=False hands the array back as is


def test_nonfinite_entries_and_other_inputs():
    big = np.array([1e308, 1e308, -1.0])        # finite entries (no warning, accepted)
    assert V.as_float_array("q", big) is not big
    np.testing.assert_array_equal(V.as_float_array("q", big), big)
    for bad, where in ((np.array([1.0, np.inf, 2.0]), "index 1"),
                       (np.array([[1.0, 2.0], [np.nan, 0.0]]), "index (1, 0)")):
        with pytest.raises(ValueError, match=rf"q must be finite, found .* at {re.escape(where)}"):
            V.as_float_array("q", bad)
    assert np.isnan(V.as_float_array("q", np.array([np.nan]), finite=False)[0])
    # not the fast path's kind of input: the general path as before
    f32 = np.ones(3, dtype=np.float32)
    assert V.as_float_array("q", f32).dtype == np.float64
    swapped = np.ones(3, dtype=">f8")
    np.testing.assert_array_equal(V.as_float_array("q", swapped), np.ones(3))
    strided = np.arange(6.0)[::2]
    out = V.as_float_array("q", strided, copy=False)
    assert out.flags.c_contiguous and out.tolist() == [0.0, 2.0, 4.0]
    masked = np.ma.masked_array(np.ones(3), mask=[False, True, False])
    with pytest.raises(ValueError, match="masked"):
        V.as_float_array("q", masked)
