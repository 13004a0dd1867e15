"""The cost cuts of ``integrate`` (docs/integrators.md §10 "Cost of a call") change no
result and no error.

* The per-model preparation cache (``_integrate._prepared``) never serves a changed model
  stale: every check compares against a model built afresh with the new constants (the
  preparation is then new, so nothing is shared with the cached path).
* The fast validation paths (``_validation.as_float_vector``, ``_integrate._short_times``)
  accept and refuse exactly what the general ones do, with the same messages: each is
  checked against the general function on the same input.
* The records are handed to the result without a copy only when the run filled them.

Speed itself is measured in benchmarks/ (``bench_integrators.py --cost``), never here.
"""
import gc

import numpy as np
import pytest

import noether_core as nc
from noether_core import _integrate
from noether_core import _validation as V
from noether_core.models import Bregman, Damped, GradientFlow, RadialAngular


def _rayleigh(d=4, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(A + A.T)


def _y0(d=4, seed=1):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_normal(d), 0.3 * rng.standard_normal(d)])


def _run(model, y0, **kw):
    kw = {"t_end": 3.0, "method": "dop853", "rtol": 1e-9, "atol": 1e-11, **kw}
    return nc.integrate(model, y0, **kw)


def _same(a, b):
    """Bitwise equality of two results' records and counters."""
    return (np.array_equal(a.t, b.t) and np.array_equal(a.y, b.y)
            and np.array_equal(a.y_final, b.y_final) and a.nfev == b.nfev
            and a.n_steps == b.n_steps and a.n_rejected == b.n_rejected)


# -- the preparation cache ----------------------------------------------------------------

@pytest.mark.parametrize("attr, value", [("m", 0.7), ("mu", 0.05), ("k", 0.3),
                                         ("mu", -0.0)])
def test_changed_constant_is_never_served_stale(attr, value):
    pot = _rayleigh()
    y0 = _y0()
    model = Damped(pot, 0.5, 0.3, 0.02)
    first = _run(model, y0)
    assert _same(_run(model, y0), first)                 # unchanged model: same result
    setattr(model, attr, value)
    fresh = Damped(pot, **{"m": 0.5, "mu": 0.3, "k": 0.02, attr: value})
    after = _run(model, y0)
    assert _same(after, _run(fresh, y0))
    if value != 0.0:                                      # (−0.0 == 0.0: same dynamics)
        assert not np.array_equal(after.y_final, first.y_final)
    # the kernel row the run used is the new one, bit for bit (−0.0 included)
    hp = _integrate._prepared(model).inputs.hp
    assert hp.tobytes() == fresh._hp().tobytes()


def test_changed_potential_is_never_served_stale():
    y0 = _y0()
    model = Damped(_rayleigh(seed=0), 0.5, 0.3)
    first = _run(model, y0)
    model.potential = _rayleigh(seed=7)
    after = _run(model, y0)
    assert _same(after, _run(Damped(_rayleigh(seed=7), 0.5, 0.3), y0))
    assert not np.array_equal(after.y_final, first.y_final)


@pytest.mark.parametrize("make, change", [
    (lambda p: GradientFlow(p, mu=1.0, k=0.0), ("k", 0.4)),
    (lambda p: RadialAngular(p, 0.5, 0.3, 0.02), ("reduced", True)),
    (lambda p: RadialAngular(p, 0.5, 0.3, 0.02), ("m", 2.0)),
])
def test_every_cached_class_sees_its_constants(make, change):
    pot = _rayleigh()
    model = make(pot)
    y0 = (RadialAngular.from_cartesian(_y0()[:4], _y0()[4:])
          if isinstance(model, RadialAngular) else
          (_y0()[:4] if isinstance(model, GradientFlow) else _y0()))
    _run(model, y0)
    setattr(model, *change)
    fresh = make(pot)
    setattr(fresh, *change)
    assert _integrate._prepared(model).inputs.hp.tobytes() == fresh._hp().tobytes()
    assert _same(_run(model, y0), _run(fresh, y0))


def test_cache_hit_and_identity_key():
    model = Damped(_rayleigh(), 0.5, 0.3)
    p1 = _integrate._prepared(model)
    assert _integrate._prepared(model) is p1             # same constants: cached
    model.m = float(np.float64(0.5))                      # equal value, a new object
    p2 = _integrate._prepared(model)
    assert p2 is not p1                                   # identity, not equality
    assert p2.inputs.hp.tobytes() == p1.inputs.hp.tobytes()


def test_recycled_ids_are_not_served_another_models_preparation():
    """Models made and dropped in a loop often reuse one address (hence one id); each
    must get its own constants."""
    pot = _rayleigh()
    y0 = _y0()
    for i in range(40):
        m = 0.3 + 0.05 * i
        model = Damped(pot, m, 0.2)
        hp = _integrate._prepared(model).inputs.hp
        assert hp[0] == m
        if i % 10 == 0:
            ref = _run(Damped(pot, m, 0.2), y0)
            assert _same(_run(model, y0), ref)
        del model
        gc.collect()


def test_subclasses_and_bregman_are_prepared_at_every_call():
    class Tunable(Damped):
        """A subclass whose kernel row depends on state the cache cannot see."""
        scale = 1.0

        def _hp(self):
            hp = super()._hp()
            hp[0] *= self.scale
            return hp

    pot = _rayleigh()
    y0 = _y0()
    model = Tunable(pot, 0.5, 0.3)
    _run(model, y0)
    model.scale = 2.0
    assert _same(_run(model, y0), _run(Damped(pot, 1.0, 0.3), y0))
    assert _integrate._prepared(model) is not _integrate._prepared(model)
    breg = Bregman(nc.potentials.Quadratic(np.eye(3)), nc.models.damped(1.0, 0.5))
    assert _integrate._prepared(breg) is not _integrate._prepared(breg)


def test_cache_is_bounded():
    pot = _rayleigh()
    keep = [Damped(pot, 0.5 + i, 0.3) for i in range(_integrate._PREP_MAX + 10)]
    for model in keep:
        _integrate._prepared(model)
    assert len(_integrate._PREP_CACHE) <= _integrate._PREP_MAX


def test_not_a_model_is_refused_by_name():
    with pytest.raises(TypeError, match="model must be a noether_core.models model"):
        nc.integrate(object(), [1.0], t_end=1.0, method="dop853")


# -- fast validation = general validation ---------------------------------------------------

_VECTORS = [
    [0.5, -1.0, 2.0, 3.0],                        # list of floats (fast path)
    np.array([0.5, -1.0, 2.0, 3.0]),              # float64 array (fast path)
    np.array([1e200, 1.0, 2.0, 3.0]),             # finite, x·x overflows: general path
    [1e200, 1.0, 2.0, 3.0],
    [1, 2, 3, 4],                                 # ints: promoted by the general path
    [True, False, 1.0, 2.0],                      # bools: promoted
    np.arange(4, dtype=np.float32),               # float32: promoted
    np.arange(8.0)[::2],                          # strided: copied
    [0.5, np.nan, 2.0, 3.0],                      # refused: not finite
    np.array([0.5, 1.0, np.inf, 3.0]),
    [0.5, 1.0, 2.0],                              # refused: wrong length
    np.zeros((2, 2)),                             # refused: wrong shape
    "abcd", None, [1.0, "a", 2.0, 3.0],           # refused: not numbers
    [0.5, 1.0, 2.0, 2**70],                       # a big int in a list
    [],
]


@pytest.mark.parametrize("x", _VECTORS, ids=range(len(_VECTORS)))
def test_as_float_vector_is_as_float_array(x):
    def call(fn):
        try:
            return fn(), None
        except Exception as exc:                  # compared below: type and message
            return None, (type(exc), str(exc))

    n = 4
    got, err = call(lambda: V.as_float_vector("y0", x, n))
    want, want_err = call(lambda: V.as_float_array("y0", x, shape=(n,)))
    assert err == want_err
    if want is not None:
        assert got.dtype == np.float64 and got.flags.c_contiguous
        assert got.tobytes() == want.tobytes()
        if isinstance(x, np.ndarray):
            assert not np.shares_memory(got, x)   # a new array, as before


def test_as_float_vector_returns_a_copy_the_kernel_may_overwrite():
    y0 = np.array([1.0, 0.0])
    model = Damped(nc.potentials.Quadratic(np.eye(1)), 1.0, 0.0)
    r = nc.integrate(model, y0, t_end=1.0, method="dop853")
    assert np.array_equal(y0, [1.0, 0.0])         # the caller's y0 untouched
    assert not np.shares_memory(r.y_final, y0)


_TIMES = [[0.0, 1.0, 3.0], (0.5, 2.0), [3.0], [0.0, 0.0, 1.0],
          [1.0, 0.5], [-0.1, 1.0], [0.0, 3.5], [0.0, float("nan")], [0.0, float("inf")],
          [0, 1, 2], np.array([0.0, 1.0]), [0.0] * 70 + [1.0], []]


@pytest.mark.parametrize("te", _TIMES, ids=range(len(_TIMES)))
def test_short_times_is_check_times(te):
    t0, t_end = 0.0, 3.0
    fast = _integrate._short_times(te, t0, t_end)
    try:
        want, want_err = _integrate._check_times(te, t0, t_end), None
    except Exception as exc:
        want, want_err = None, (type(exc), str(exc))
    if fast is not None:                           # accepted by the fast path ...
        assert want_err is None                    # ... only what the general one accepts
        assert fast.tobytes() == want.tobytes()
    # and through integrate, the same result or the same error either way
    model = Damped(nc.potentials.Quadratic(np.eye(1)), 1.0, 0.1)
    try:
        r = nc.integrate(model, [1.0, 0.0], t_end=t_end, method="dop853", t_eval=te)
        got_err = None
    except Exception as exc:
        got_err = (type(exc), str(exc))
    assert got_err == want_err
    if want_err is None:
        assert np.array_equal(r.t, want)


# -- records handed over without a copy only when full --------------------------------------

def test_records_are_the_results_own_arrays():
    model = Damped(_rayleigh(), 0.5, 0.3, 0.02)
    y0 = _y0()
    r = _run(model, y0, t_eval=[0.0, 1.0, 3.0])       # every preallocated row filled
    assert r.t.base is None and r.y.base is None
    r = _run(model, y0)                               # rows = accepted steps + 1 of
    assert r.t.base is None and r.y.base is None      # max_steps + 2: copied out
    assert len(r.t) == r.n_steps + 1 and r.y.shape == (len(r.t), 8)
    r = nc.integrate(model, y0, t_end=1.0, h=0.01, method="rk4", record_every=7)
    assert r.t.base is None and len(r.t) == 100 // 7 + 1

