"""User potentials: compiled callbacks (LowLevelCallable) and Python callables (issue 7).

Checks (docs/byom.md §1–§2; docs/architecture.md "The potential ABI"):

* a ctypes RayleighQuotient compiled here with gcc, and a Cython ``cdef api`` one (same
  operation order as the built-in, same flags: -O3 -ffp-contract=off), give trajectories,
  losses, charges and balance residuals *bitwise* identical to the built-in
  ``RayleighQuotient`` (SPEC §1.1 identity at round-off for both);
* the Python-callable path equals the compiled path bitwise when it computes the same
  arithmetic, and to round-off (1e-12 relative) with NumPy's different summation order;
* wrong signatures are refused at construction with a message naming the ABI; a NaN
  gradient stops the run at the right step; an exception or a malformed return value of a
  Python fn stops the run and is raised with the step (CallbackError, chained);
* check_symmetry confirms a true declaration and flags a false one.
"""
import ctypes
import re
import shutil
import subprocess
import threading
import warnings

import numpy as np
import pytest
import scipy
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import potentials as P
from noether_core.audit import check_symmetry
from noether_core.potentials import CallbackError
from noether_core.symmetry import Symmetry

C_SOURCE = r"""
#include <math.h>
#include <sys/types.h>
/* f = 1/2 q.A.q / |q|^2, g = Aq/|q|^2 - q (2f/|q|^2), params -> A (d x d, row-major).
   The operation order is the built-in's (pyx/potentials.pyx, _c_grad_rayleigh); g holds
   Aq between the two passes instead of a scratch array. */
double rayleigh(const double* q, double* g, ssize_t d, void* params) {
    const double* A = (const double*) params;
    double qAq = 0.0, qq = q[0] * q[0], s;           /* sums from their first term */
    for (ssize_t i = 1; i < d; i++) qq = qq + q[i] * q[i];
    const double iqq = 1.0 / qq;
    for (ssize_t i = 0; i < d; i++) {
        s = A[i * d] * q[0];
        for (ssize_t j = 1; j < d; j++) s = s + A[i * d + j] * q[j];
        qAq = i ? qAq + q[i] * s : q[0] * s;
        g[i] = s * iqq;
    }
    const double t = qAq * iqq, ti = t * iqq;          /* t = 2f */
    for (ssize_t i = 0; i < d; i++) g[i] = g[i] - q[i] * ti;
    return 0.5 * t;
}
/* f = 1/2 |q|^2, but the gradient turns NaN once q[0] drops below params[0] */
double nan_below(const double* q, double* g, ssize_t d, void* params) {
    double f = 0.0;
    for (ssize_t i = 0; i < d; i++) { g[i] = q[i]; f += 0.5 * q[i] * q[i]; }
    if (q[0] < ((const double*) params)[0]) g[d - 1] = NAN;
    return f;
}
"""

ARGTYPES = [ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
            ctypes.c_ssize_t, ctypes.c_void_p]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc/cc) on PATH to build the ctypes test callbacks")
    tmp = tmp_path_factory.mktemp("cb")
    (tmp / "cb.c").write_text(C_SOURCE)
    subprocess.run([gcc, "-O3", "-ffp-contract=off", "-fPIC", "-shared", str(tmp / "cb.c"),
                    "-o", str(tmp / "libcb.so")], check=True)
    lib = ctypes.CDLL(str(tmp / "libcb.so"))
    for name in ("rayleigh", "nan_below"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_double
        fn.argtypes = ARGTYPES
    return lib


def _sym(rng, d):
    a = rng.standard_normal((d, d))
    return np.ascontiguousarray(a + a.T)


def _compiled_rq(lib, A):
    llc = scipy.LowLevelCallable(lib.rayleigh, A.ctypes.data_as(ctypes.c_void_p))
    pot = P.Compiled(llc, A.shape[0], symmetries=[Symmetry("scale", ("q",))])
    pot._keep = A                     # the callback reads A through user_data
    return pot


RULES = [nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
         nc.rules.SGD(lr=0.1, momentum=0.0, weight_decay=0.0),
         nc.rules.Adam(lr=1e-2, weight_decay=1e-4)]


def _assert_bits(a, b):
    """Equal bit for bit (float64 as int64: the sign of a zero counts)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64))


# ---------------------------------------------------------------------------------------
# 1. compiled callbacks

@pytest.mark.parametrize("rule", RULES, ids=["sgdm-wd", "sgd", "adam"])
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(2, 12))
def test_ctypes_rayleigh_is_bitwise_the_builtin(lib, rule, seed, d):
    """Same arithmetic, same flags → the same bits (q, loss, |g|², charge residuals)."""
    rng = np.random.default_rng(seed)
    A = _sym(rng, d)
    q0 = rng.standard_normal(d)
    ref = nc.train(rule, P.RayleighQuotient(A), q0, 300, record_every=7)
    got = nc.train(rule, _compiled_rq(lib, A), q0, 300, record_every=7)
    _assert_bits(got.q, ref.q)
    _assert_bits(got.loss, ref.loss)
    _assert_bits(got.grad_norm2, ref.grad_norm2)
    _assert_bits(got.q_final, ref.q_final)
    assert got.balance_residual() == ref.balance_residual()
    c_got, c_ref = got.charge("scale"), ref.charge("scale")
    _assert_bits(c_got.residual, c_ref.residual)


CYTHON_SOURCE = """
# cython: language_level=3
cdef api double rayleigh(const double* q, double* g, Py_ssize_t d,
                         void* params) noexcept nogil:
    cdef const double* A = <const double*> params
    cdef double qAq = 0.0, qq = q[0] * q[0], s, iqq, t, ti
    cdef Py_ssize_t i, j
    for i in range(1, d):
        qq = qq + q[i] * q[i]
    iqq = 1.0 / qq
    for i in range(d):
        s = A[i * d] * q[0]
        for j in range(1, d):
            s = s + A[i * d + j] * q[j]
        qAq = qAq + q[i] * s if i > 0 else q[0] * s
        g[i] = s * iqq
    t = qAq * iqq
    ti = t * iqq
    for i in range(d):
        g[i] = g[i] - q[i] * ti
    return 0.5 * t
"""

CYTHON_SETUP = """
from setuptools import setup, Extension
from Cython.Build import cythonize
setup(ext_modules=cythonize([Extension("byom_cy_loss", ["byom_cy_loss.pyx"],
      extra_compile_args=["-O3", "-ffp-contract=off"])], quiet=True))
"""


def test_cython_callback(tmp_path):
    """A Cython ``cdef api`` function through LowLevelCallable.from_cython (signature
    'double (double const *, double *, Py_ssize_t, void *)'): bitwise the built-in."""
    pytest.importorskip("Cython", reason="Cython builds the test module")
    import importlib.util
    import sys
    (tmp_path / "byom_cy_loss.pyx").write_text(CYTHON_SOURCE)
    (tmp_path / "setup.py").write_text(CYTHON_SETUP)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                   check=True, capture_output=True)
    so = next(tmp_path.glob("byom_cy_loss*.so"))
    spec = importlib.util.spec_from_file_location("byom_cy_loss", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(7)
    A = _sym(rng, 9)
    cb = scipy.LowLevelCallable.from_cython(mod, "rayleigh", A.ctypes.data_as(ctypes.c_void_p))
    assert cb.signature == "double (double const *, double *, Py_ssize_t, void *)"
    pot = P.Compiled(cb, 9, symmetries=[Symmetry("scale", ("q",))])
    q0 = rng.standard_normal(9)
    rule = nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref = nc.train(rule, P.RayleighQuotient(A), q0, 500, record_every=10)
    got = nc.train(rule, pot, q0, 500, record_every=10)
    np.testing.assert_array_equal(got.q, ref.q)
    assert got.balance_residual() == ref.balance_residual() < 1e-12


def test_compiled_scale_balance_at_round_off(lib):
    """SPEC §1.1 scale identity for SGD(momentum, wd) on the user's callback: the loop
    tracks it in C; round-off of a few O(1) terms → below 1e-12 relative."""
    rng = np.random.default_rng(1)
    A = _sym(rng, 20)
    run = nc.train(nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=5e-3),
                   _compiled_rq(lib, A), rng.standard_normal(20), 5000, record_every=50)
    assert run.charge("scale").law == "exact"
    assert run.balance_residual() < 1e-12


def test_compiled_concurrent_runs_are_independent(lib):
    """user_data is shared read-only by runs in different threads (GIL released)."""
    rng = np.random.default_rng(2)
    A = _sym(rng, 30)
    pot = _compiled_rq(lib, A)
    rule = nc.rules.SGD(lr=0.05, momentum=0.9)
    q0s = rng.standard_normal((4, 30))
    serial = [nc.train(rule, pot, q, 2000, record_every=2000).q_final for q in q0s]
    out = [None] * 4

    def work(i):
        out[i] = nc.train(rule, pot, q0s[i], 2000, record_every=2000).q_final
    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for a, b in zip(serial, out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_compiled_value_and_grad_matches_builtin(lib):
    rng = np.random.default_rng(3)
    A = _sym(rng, 7)
    q = rng.standard_normal(7)
    f1, g1 = P.RayleighQuotient(A).value_and_grad(q)
    f2, g2 = _compiled_rq(lib, A).value_and_grad(q)
    assert f1 == f2
    _assert_bits(g1, g2)
    # signed zeros: a zero row of A and -0 entries make sums of -0 terms, which start
    # from their first term in both (docs/potentials.md §2)
    A0 = A.copy()
    A0[0, :] = A0[:, 0] = 0.0
    q0 = q.copy()
    q0[0] = -0.0
    f1, g1 = P.RayleighQuotient(A0).value_and_grad(q0)
    f2, g2 = _compiled_rq(lib, A0).value_and_grad(q0)
    _assert_bits(f1, f2)
    _assert_bits(g1, g2)


def test_wrong_signature_is_refused_at_construction(lib):
    bad = ctypes.CDLL(lib._name).rayleigh          # a separate handle: own argtypes
    bad.restype = ctypes.c_double
    bad.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
                    ctypes.c_int, ctypes.c_void_p]
    with pytest.raises(TypeError, match=r"signature 'double \(double \*, double \*, int, "
                                        r"void \*\)'.*potential ABI requires"):
        P.Compiled(scipy.LowLevelCallable(bad), 3)
    bad.restype = ctypes.c_float
    bad.argtypes = ARGTYPES
    with pytest.raises(TypeError, match="potential ABI requires"):
        P.Compiled(scipy.LowLevelCallable(bad), 3)
    with pytest.raises(TypeError, match="callback must be a scipy.LowLevelCallable"):
        P.Compiled(lib.rayleigh, 3)
    ok = scipy.LowLevelCallable(lib.rayleigh)
    with pytest.raises(ValueError, match=r"d must lie in \[1, inf\], got 0"):
        P.Compiled(ok, 0)
    with pytest.raises(ValueError, match="names block 'w'"):
        P.Compiled(ok, 3, symmetries=[Symmetry("scale", ("w",))])
    with pytest.raises(ValueError, match="overlaps"):
        P.Compiled(ok, 3, blocks={"a": [0, 1], "b": [1, 2]})


def test_compiled_refuses_pickling_clearly(lib):
    import pickle
    with pytest.raises(TypeError, match="raw C function pointer and cannot be pickled"):
        pickle.dumps(P.Compiled(scipy.LowLevelCallable(lib.rayleigh), 3))


def test_signature_spellings_accepted():
    """C/Cython/ctypes spellings of the ABI (docs/byom.md §1)."""
    from noether_core.potentials import _abi_signature_ok
    for s in ("double (double *, double *, long, void *)",
              "double (double const *, double *, Py_ssize_t, void *)",
              "double (const double *, double *, Py_ssize_t, void *) noexcept nogil"):
        assert _abi_signature_ok(s), s
    for s in ("double (double *, double *, int, void *)", "float (double *, double *, long, "
              "void *)", "double (double *, double *, long)", "void (double *)"):
        assert not _abi_signature_ok(s), s


def test_nan_gradient_stops_the_run_at_its_step(lib):
    """f = ½|q|², plain GD with lr 0.1: q0[0] = 1 → q_n[0] = 0.9ⁿ, which first drops below
    0.5 at n = 7 (0.9⁷ = 0.478); the callback then returns a NaN gradient."""
    thr = np.array([0.5])
    pot = P.Compiled(scipy.LowLevelCallable(lib.nan_below, thr.ctypes.data_as(
        ctypes.c_void_p)), 3)
    with pytest.warns(nc.DivergenceWarning, match="stopped at step 7: non-finite gradient"):
        run = nc.train(nc.rules.SGD(lr=0.1), pot, [1.0, 1.0, 1.0], 100)
    assert run.diverged and run.stop_step == 7
    assert run.stop_reason.startswith("non-finite gradient")
    np.testing.assert_allclose(run.q_final[0], 0.9 ** 7, rtol=1e-15)
    assert len(run.loss) == 7                 # rows 0..6 were recorded


# ---------------------------------------------------------------------------------------
# 2. Python callables

@given(seed=st.integers(0, 2**32 - 1), d=st.integers(2, 10))
def test_python_path_equals_compiled(lib, seed, d):
    rng = np.random.default_rng(seed)
    A = _sym(rng, d)
    comp = _compiled_rq(lib, A)
    q0 = rng.standard_normal(d)
    rule = nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref = nc.train(rule, comp, q0, 200, record_every=5)
    # (a) the same arithmetic through the trampoline: bitwise
    same = P.Python(comp.value_and_grad, d, symmetries=[Symmetry("scale", ("q",))])
    run = nc.train(rule, same, q0, 200, record_every=5)
    np.testing.assert_array_equal(run.q, ref.q)
    np.testing.assert_array_equal(run.loss, ref.loss)
    assert run.balance_residual() == ref.balance_residual()

    # (b) NumPy arithmetic (BLAS summation order): round-off only.  200 steps of a
    # contraction-free map amplify a 1e-16 difference by at most the Lipschitz constant^n
    # of the step; for lr·|A| ≲ 1 and this horizon 1e-11 relative is a safe bound.
    def fn(q):
        qq = q @ q
        Aq = A @ q
        f = 0.5 * (q @ Aq) / qq
        return f, (Aq - 2.0 * f * q) / qq
    run = nc.train(rule, P.Python(fn, d), q0, 200, record_every=5)
    np.testing.assert_allclose(run.q, ref.q, rtol=1e-11, atol=1e-11 * np.abs(ref.q).max())


def _failing(at, kind):
    calls = [0]

    def fn(q):
        calls[0] += 1
        if calls[0] - 1 == at:
            if kind == "raise":
                raise ZeroDivisionError("user bug")
            if kind == "shape":
                return 0.0, np.zeros(len(q) + 1)
            if kind == "scalar":
                return 0.0
            if kind == "complex":
                return 0.0, np.zeros(len(q), dtype=complex)
        return 0.5 * q @ q, q.copy()
    return fn


@pytest.mark.parametrize("kind,cause,msg", [
    ("raise", ZeroDivisionError, "user bug"),
    ("shape", ValueError, r"shape \(4,\); expected \(3,\)"),
    ("scalar", TypeError, "must return a pair"),
    ("complex", TypeError, "dtype complex128")])
def test_python_errors_stop_the_run_and_name_the_step(kind, cause, msg):
    pot = P.Python(_failing(11, kind), 3)
    with pytest.raises(CallbackError, match=f"raised at step 11: {cause.__name__}") as ei:
        nc.train(nc.rules.SGD(lr=0.1, momentum=0.9), pot, np.ones(3), 50)
    assert ei.value.step == 11
    assert isinstance(ei.value.__cause__, cause)
    assert re.search(msg, str(ei.value.__cause__))
    # the potential stays usable: a fresh run of a healthy fn on the same kernel works
    ok = P.Python(_failing(-1, kind), 3)
    run = nc.train(nc.rules.SGD(lr=0.1), ok, np.ones(3), 5)
    np.testing.assert_allclose(run.q_final, 0.9 ** 5, rtol=1e-15)


def test_python_error_of_a_resumed_run_counts_global_steps():
    fn = _failing(4, "raise")
    pot = P.Python(fn, 2)
    first = nc.train(nc.rules.SGD(lr=0.1), pot, np.ones(2), 3)   # calls 0..3 (terminal)
    with pytest.raises(CallbackError, match="at step 3") as ei:
        nc.train(nc.rules.SGD(lr=0.1), pot, first.q_final, 10, state=first.state)
    assert ei.value.step == 3


def test_python_nan_is_a_divergence_not_an_error():
    def fn(q):
        return (np.nan if q[0] < 0.5 else 0.5 * q @ q), q.copy()
    with pytest.warns(nc.DivergenceWarning, match="step 7: non-finite loss"):
        run = nc.train(nc.rules.SGD(lr=0.1), P.Python(fn, 2), np.ones(2), 30)
    assert run.stop_step == 7


def test_python_value_and_grad_raises_the_original():
    with pytest.raises(ZeroDivisionError):
        P.Python(_failing(0, "raise"), 3).value_and_grad(np.ones(3))
    with pytest.raises(TypeError, match="fn must be callable"):
        P.Python(3.0, 2)


def _half_norm(q):
    return 0.5 * q @ q, q.copy()


def test_python_potential_pickles():
    import pickle
    pot = P.Python(_half_norm, 4, blocks={"a": [0, 1], "b": [2, 3]})
    back = pickle.loads(pickle.dumps(pot))
    assert back.dim == 4 and list(back.blocks) == ["a", "b"]
    assert back.value(np.ones(4)) == 2.0


# ---------------------------------------------------------------------------------------
# 3. check_symmetry on user potentials

def test_check_symmetry_confirms_and_refutes(lib):
    rng = np.random.default_rng(5)
    A = _sym(rng, 6)
    good = _compiled_rq(lib, A)
    chk = check_symmetry(good, n_points=64, seed=0)
    assert chk.ok and chk.worst < 1e-13            # exact: round-off of O(d) sums
    # a false declaration: rotation of the whole q (A is not a multiple of I)
    wrong = P.Python(good.value_and_grad, 6,
                     symmetries=[Symmetry("scale", ("q",)), Symmetry("rotation", ("q",))])
    chk = check_symmetry(wrong, n_points=64, seed=0)
    assert not chk.ok
    (s1, r1, v1), (s2, r2, v2) = chk.rows
    assert v1 == "holds" and v2 == "broken" and r2 > 1e-3
    assert "FAILED" in str(chk)


def test_check_symmetry_bad_input(lib):
    with pytest.raises(TypeError, match="potential must be"):
        check_symmetry(lambda q: q)
    with pytest.raises(ValueError, match="points must have shape"):
        check_symmetry(P.Python(_half_norm, 3), points=np.ones((4, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_symmetry(P.Python(_half_norm, 3), n_points=3, seed=1)
