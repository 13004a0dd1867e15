"""Bad-input fuzzing of every public entry point, against a bounds-checked debug build.

What is checked (issue 8, item 3; docs/architecture.md "the facade validates once"): each call with
one or two malformed arguments either

* works correctly — for inputs that mean the same as a valid one (a list, a
  non-contiguous or read-only view, float32/int data, Fortran order, NumPy scalars, a
  masked array without masked entries) the
  result equals the result for the canonical float64 input, bit for bit; for extreme but
  legal inputs (huge steps, tiny h, lr = 1e300) any NaN/inf in the result comes with the
  result's ``diverged`` flag — or
* raises ValueError / TypeError / MemoryError whose message names the argument (a
  masked array with a masked entry must raise: its mask is never dropped silently; a
  user's misbehaving ``fn`` through train, scan and scan_integrate raises
  ``CallbackError``) —

never a segfault, a hang, an input modified in place, a warning outside the project's
warning classes, or any other exception (IndexError from a Cython bounds check,
OverflowError from a C integer conversion, ZeroDivisionError, SystemError, ...).

How: a session fixture copies the source tree to a temporary directory and builds it with
``NOETHER_DEBUG=1`` (Cython boundscheck/wraparound/initializedcheck on, -O0 -g; ~10 s on 2
cores, measured); the fuzz then runs in a subprocess on that tree (``python
tests/test_fuzz.py --driver``) under an address-space limit (so a huge allocation fails
with MemoryError instead of invoking the OOM killer) and a per-case watchdog: after
CASE_TIMEOUT s it sends SIGINT (a long but legal request, such as 2**31 steps recorded once,
must honour it and counts as handled), 3 s later faulthandler kills the process with a
traceback.  A segfault or a hang thus fails this test, naming the case, instead of killing
pytest; the driver is restarted after the case that killed it.  Two passes: an exhaustive
sweep of every (entry point, argument, malformation) and a hypothesis search over
combinations of two malformed arguments with varied valid bases (examples: 20 × the
profile's max_examples).

Adding an entry point is one row of ``ENTRY_POINTS`` (a name, the callable, a factory of
valid keyword arguments and the kind of each argument).  Set NOETHER_FUZZ_TREE to a
built debug tree to skip the build when iterating locally.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE_TIMEOUT = 5.0          # s per call (the slowest legal case here runs well under 1 s)

# =========================================================================================
# The driver (runs in the subprocess; imports noether_core from the debug tree)
# =========================================================================================

ALLOWED = (ValueError, TypeError, MemoryError)


class A:
    """Kinds of argument, with what a malformation means for them."""

    def __init__(self, kind, *, nullable=False, fixed_shape=True, lo=None, positive=False,
                 names=(), example=None, dict_ok=False):
        self.kind, self.nullable, self.fixed_shape = kind, nullable, fixed_shape
        self.example, self.dict_ok = example, dict_ok
        self.lo, self.positive, self.names = lo, positive, tuple(names)


def _mal_float_array(v):
    """(label, value, category, canonical) for a float array argument's valid value v.

    category: "same" must return the canonical result; "same_or_error" may also raise a
    clean error; "error" must raise; "either" may do both (no silent NaN if it returns).
    """
    v = np.asarray(v, dtype=float)
    out = [("list", v.tolist(), "same", v),
           ("float32", v.astype(np.float32), "same_or_error",
            v.astype(np.float32).astype(float)),
           ("int", np.round(v).astype(np.int64), "same_or_error",
            np.round(v).astype(np.int64).astype(float)),
           ("readonly", _ro(v.copy()), "same", v),
           ("noncontig", _strided(v), "same", v),
           ("nan", _set0(v, np.nan), "error", None),
           ("masked", _masked(v), "error", None),          # a mask is never dropped
           ("unmasked", np.ma.array(v.copy()), "same", v),   # no masked entry: plain
           ("inf", _set0(v, np.inf), "error", None),
           ("-inf", _set0(v, -np.inf), "error", None),
           ("complex", v.astype(complex), "error", None),
           ("object", np.array(v.tolist() if v.ndim else float(v), dtype=object), "either",
            None),
           ("str", "abc", "error", None), ("dict", {}, "error", None),
           ("huge", v * 1e300, "either", None), ("tiny", v * 1e-310, "either", None),
           ("bool", v > 0, "either", None),
           ("empty", np.zeros((0,) * max(v.ndim, 1)), "either", None)]
    if v.ndim == 2:
        out += [("fortran", np.asfortranarray(v), "same", v),
                ("transposed", v.T.copy(), "either", None),
                ("ragged", [list(v[0]), list(v[0][:-1])], "error", None),
                ("flat", v.ravel(), "either", None)]
    if v.ndim >= 1:
        out += [("extra_dim", v[None], "either", None),
                ("longer", np.concatenate([v, v[:1]]), "either", None),
                ("scalar", 1.0, "either", None)]
    return out


def _mal_int_array(v):
    v = np.asarray(v)
    return [("list", v.tolist(), "same", v), ("int32", v.astype(np.int32), "same", v),
            ("uint8", v.astype(np.uint8), "same", v), ("readonly", _ro(v.copy()), "same", v),
            ("noncontig", _strided(v), "same", v),
            ("float", v.astype(float), "error", None), ("negative", -v - 1, "error", None),
            ("huge", v + 2**40, "either", None), ("empty", v[:0], "either", None),
            ("str", "abc", "error", None), ("bool", v > 0, "either", None),
            ("2d", v[None], "either", None)]


def _mal_int(v, a):
    out = [("np.int32", np.int32(v), "same", v), ("np.uint64", np.uint64(v), "same", v),
           ("zero", 0, "either", None), ("-1", -1, "either" if (a.lo is None or a.lo < 0)
                                         else "error", None),
           ("2**31", 2**31, "either", None), ("2**40", 2**40, "either", None),
           ("2**62", 2**62, "either", None), ("2**63", 2**63, "either", None),
           ("2**64", 2**64, "either", None), ("10**30", 10**30, "either", None),
           ("-2**63-1", -2**63 - 1, "either", None),
           ("float", float(v), "error", None), ("float_frac", v + 0.5, "error", None),
           ("nan", float("nan"), "error", None), ("str", str(v), "error", None),
           ("bool", True, "error", None), ("list", [v], "error", None),
           ("complex", complex(v), "error", None)]
    return out


def _mal_float(v, a):
    return [("np.float64", np.float64(v), "same", v),
            ("np.float32", np.float32(v), "same_or_error", float(np.float32(v))),
            ("int", int(v) if float(v).is_integer() else 1, "either", None),
            ("nan", float("nan"), "error", None), ("inf", float("inf"), "error", None),
            ("-inf", float("-inf"), "error", None), ("negative", -abs(v) - 1.0, "either", None),
            ("zero", 0.0, "either", None), ("huge", 1e300, "either", None),
            ("tiny", 5e-324, "either", None), ("str", "0.1", "error", None),
            ("complex", complex(v, 1.0), "error", None), ("bool", True, "either", None),
            ("0d", np.array(v), "either", None), ("1d", np.array([v]), "either", None),
            ("list", [v], "either", None), ("np.nan", np.float64("nan"), "error", None),
            ("bigint", 10**400, "either", None)]


def _mal_seed(v, a):
    return [("np.int64", np.int64(v), "same", v), ("-1", -1, "error", None),
            ("bool", True, "error", None), ("float", 1.0, "error", None),
            ("str", "0", "error", None), ("2**70", 2**70, "either", None),
            ("SeedSequence", np.random.SeedSequence(v), "either", None),
            ("Generator", np.random.default_rng(v), "either", None),
            ("list", [v, 1], "either", None), ("complex", 1j, "error", None)]


def _bad_fns(d=3):
    """Misbehaving user gradient functions fn(q) -> (f, g) for potentials.Python."""
    def raises(q):
        raise RuntimeError("user code failed")
    return [("wrong_shape", lambda q: (0.5 * q @ q, q[:-1]), "error", None),
            ("str_f", lambda q: ("f", q), "error", None),
            ("none", lambda q: None, "error", None),
            ("raises", raises, "error", None),
            ("triple", lambda q: (0.0, q, q), "error", None),
            ("complex_g", lambda q: (0.0, q + 1j), "error", None),
            ("nan_f", lambda q: (float("nan"), q), "either", None),
            ("inf_g", lambda q: (0.0, q * np.inf), "either", None),
            ("list_g", lambda q: (0.5 * q @ q, list(q)), "either", None),
            ("int_g", lambda q: (0, np.zeros(d, dtype=int)), "either", None),
            ("2d_g", lambda q: (0.0, q[None]), "either", None),
            ("mutates_q", lambda q: (float(q @ q), q.__imul__(2.0)), "either", None)]


def _mal_callback(v, a):
    return _bad_fns()


def _mal_bool(v, a):
    return [("np.bool_", np.bool_(v), "same", v), ("int", int(v), "either", None),
            ("str", "yes", "error", None), ("float", 1.0, "either", None),
            ("list", [v], "either", None)]


def _mal_choice(v, a):
    return [("np.str_", np.str_(v), "same", v), ("bogus", "bogus", "error", None),
            ("upper", v.upper(), "either", None), ("int", 1, "error", None),
            ("list", [v], "error", None), ("bytes", v.encode(), "error", None),
            ("dict", {}, "error", None)]


def _mal_obj(v, a):
    return [("int", 1, "error", None), ("str", "x", "error", None),
            ("object", object(), "error", None), ("array", np.zeros(3), "error", None),
            ("list", [v], "error", None)]


MALFORM = {"farray": _mal_float_array, "iarray": _mal_int_array}
MALFORM_SCALAR = {"int": _mal_int, "seed": _mal_seed, "callback": _mal_callback,
                  "float": _mal_float, "bool": _mal_bool, "choice": _mal_choice,
                  "obj": _mal_obj}


def malformations(value, a):
    """Every malformation of one argument whose valid value is ``value``."""
    if value is None:
        value = a.example
    if value is None:
        out = [("str", "abc", "error", None), ("dict", {}, "error", None),
               ("object", object(), "error", None)]
    elif a.kind in MALFORM:
        out = MALFORM[a.kind](value)
    else:
        out = MALFORM_SCALAR[a.kind](value, a)
    out.append(("None", None, "either" if a.nullable else "error", None))
    if a.dict_ok:               # a dict block -> value is a legal form of this argument
        out = [(label, x, "either" if label == "dict" else c, cn)
               for label, x, c, cn in out]
    if a.kind in ("farray",) and not a.fixed_shape:
        # free-length arrays: shape changes are legal, so their outcome is "either"
        out = [(label, x, "either" if label in ("extra_dim", "longer", "flat", "transposed")
                else c, cn) for label, x, c, cn in out]
    return out


def _ro(a):
    a.setflags(write=False)
    return a


def _strided(v):
    v = np.asarray(v)
    big = np.zeros((v.shape[0] * 2,) + v.shape[1:], dtype=v.dtype) if v.ndim else None
    if big is None:
        return v
    big[::2] = v
    return big[::2]


def _masked(v):
    """v as a masked array with its first entry masked (the slot keeps a finite value, so
    only honouring the mask can tell it apart)."""
    mask = np.zeros(v.shape, dtype=bool)
    if mask.size:
        mask.flat[0] = True
    return np.ma.array(v.copy(), mask=mask)


def _set0(v, x):
    v = np.array(v, dtype=float)
    v.flat[0] = x
    return v


# -----------------------------------------------------------------------------------------
# the table of entry points


class Entry:
    def __init__(self, name, fn, valid, args, *, bases=1, allowed=(), nan_ok=False):
        self.name, self.fn, self.valid, self.args, self.bases = name, fn, valid, args, bases
        self.nan_ok = nan_ok      # NaN is the documented answer (f undefined at a 0/0 point)
        self.allowed = tuple(allowed)     # documented extra exceptions (IntegrationError)


def _data(seed=0, n=8, d=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal(n)


_keep = []      # the loaded callback library must outlive every potential made from it

_C_SOURCE = r"""
#include <stddef.h>
/* f = |q|^2 / 2, g = q: the potential ABI, no Python inside (like a user's C code) */
double half_norm2(const double* q, double* g, ptrdiff_t d, void* params) {
    double f = 0.0;
    for (ptrdiff_t i = 0; i < d; i++) { g[i] = q[i]; f += 0.5 * q[i] * q[i]; }
    return f;
}
"""


def _c_half_norm2():
    """A compiled ABI callback (cc -shared), as a ctypes function pointer."""
    import ctypes
    import sysconfig
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="noether_fuzz_cb_"))
    (tmp / "cb.c").write_text(_C_SOURCE)
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp / "cb.so"),
                    str(tmp / "cb.c")], check=True, capture_output=True)
    lib = ctypes.CDLL(str(tmp / "cb.so"))
    _keep.append(lib)
    fn = lib.half_norm2
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
                   ctypes.c_ssize_t, ctypes.c_void_p]
    return fn


def build_entries():
    import noether_core as nc
    from noether_core import (
        IntegrationError,
        conventions,
        datasets,
        mirror,
        models,
        noether_terms,
        symmetry,
        theory,
    )
    from noether_core._integrate import LevelEvent as _LevelEvent
    P, R = nc.potentials, nc.rules

    def rq(seed=0):
        return P.RayleighQuotient(np.diag([1.0, 2.0, 3.0]) + 0.1 * seed)

    def bn(seed=0):
        X, y = _data(seed)
        return P.BatchNormUnit(X, y)

    def sce(seed=0):
        X, _ = _data(seed)
        return P.SoftmaxCrossEntropy(X, np.arange(8) % 3)

    q3 = np.array([1.0, -0.5, 0.3])
    ys = np.concatenate([[1.0, 0.2], q3 / np.linalg.norm(q3), [0.1, 0.2, 0.0]])
    u = ys[2:5]
    ys[5:] -= (u @ ys[5:]) * u
    E = []

    def add(name, fn, valid, args, bases=1, nan_ok=False, allowed=()):
        allowed = tuple(allowed) + ((IntegrationError,) if name.startswith("integrate")
                                    else ())
        E.append(Entry(name, fn, valid, args, bases=bases, nan_ok=nan_ok, allowed=allowed))

    FA, IA = A("farray"), A("iarray")
    pos = A("float", positive=True)

    # ---- train --------------------------------------------------------------------------
    add("train", nc.train,
        lambda s: dict(rule=R.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
                       potential=[rq, bn][s % 2](s), q0=q3 + 0.1 * s, steps=20,
                       record_every=1 + s % 3, seed=s, state=None, charges=True,
                       omega=None, record_q=True, block_stats=bool(s % 2),
                       max_record_bytes=2**30),
        dict(rule=A("obj"), potential=A("obj"), q0=FA, steps=A("int", lo=0),
             record_every=A("int", lo=1), seed=A("seed", nullable=True),
             state=A("obj", nullable=True), charges=A("bool"),
             omega=A("farray", nullable=True, example=np.eye(3) - np.eye(3), dict_ok=True),
             record_q=A("bool"), block_stats=A("bool"), max_record_bytes=A("int", lo=0)),
        bases=4)
    add("train(minibatch)", nc.train,
        lambda s: dict(rule=[R.SGD(lr=0.05, momentum=0.9), R.Adam(lr=0.01),
                             R.ScalarRMSProp(lr=0.01)][s % 3],
                       potential=bn(s), q0=q3, steps=10, batch_size=4, seed=s),
        dict(q0=FA, steps=A("int", lo=0), batch_size=A("int", nullable=True, lo=2),
             seed=A("seed", nullable=True)), bases=3)
    add("train(rotation)", nc.train,
        lambda s: dict(rule=R.SGD(lr=0.05, momentum=0.5), potential=P.Radial(3),
                       q0=q3, steps=10, omega=symmetry.random_skew(3, s)),
        dict(omega=A("farray", nullable=True, dict_ok=True), q0=FA))

    # ---- rules ----------------------------------------------------------------------------
    add("SGD", R.SGD, lambda s: dict(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                                     weight_decay=1e-4),
        dict(lr=pos, momentum=A("float"), dampening=A("float"), nesterov=A("bool"),
             weight_decay=A("float")))
    add("RMSprop", R.RMSprop, lambda s: dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                             momentum=0.0, centered=False),
        dict(lr=pos, alpha=A("float"), eps=A("float"), weight_decay=A("float"),
             momentum=A("float"), centered=A("bool")))
    add("Adam", R.Adam, lambda s: dict(lr=0.001, eps=1e-8, weight_decay=0.0, amsgrad=False),
        dict(lr=pos, eps=A("float"), weight_decay=A("float"), amsgrad=A("bool")))
    add("AdamW.betas", lambda b1, b2: R.AdamW(betas=(b1, b2)), lambda s: dict(b1=0.9, b2=0.999),
        dict(b1=A("float", names=("betas",)), b2=A("float", names=("betas",))))
    add("ScalarRMSProp", R.ScalarRMSProp,
        lambda s: dict(lr=0.01, rho=0.9, eps=1e-8, G0=1.0, per_block=True, weight_decay=0.0),
        dict(lr=pos, rho=A("float"), eps=A("float"), G0=A("float", nullable=True),
             per_block=A("bool"), weight_decay=A("float")))
    add("MirrorDescent", R.MirrorDescent,
        lambda s: dict(lr=0.01, mirror="pnorm", p=3.0, weight_decay=0.0),
        dict(lr=pos, mirror=A("choice"), p=A("float"), weight_decay=A("float")))
    add("MirrorDescent(diagonal)", R.MirrorDescent,
        lambda s: dict(lr=0.01, mirror="diagonal", D=np.array([1.0, 2.0, 0.5])),
        dict(D=FA))
    add("SGD.with_buffer", lambda potential, momentum_buffer:
        R.SGD(lr=0.1, momentum=0.9).with_buffer(potential, momentum_buffer),
        lambda s: dict(potential=rq(s), momentum_buffer=q3),
        dict(potential=A("obj"), momentum_buffer=FA))

    # ---- potentials ------------------------------------------------------------------------
    add("Quadratic", P.Quadratic, lambda s: dict(A=np.diag([1.0, 2.0, 3.0]), b=q3),
        dict(A=A("farray"), b=A("farray", nullable=True)))
    add("RayleighQuotient", P.RayleighQuotient, lambda s: dict(A=np.diag([1.0, 2.0, 3.0])),
        dict(A=FA))
    add("Radial", P.Radial, lambda s: dict(d=3, kind="log"),
        dict(d=A("int", lo=1), kind=A("choice")))
    add("BatchNormUnit", P.BatchNormUnit,
        lambda s: dict(zip(("X", "y"), _data(s), strict=True), eps=0.0),
        dict(X=A("farray", fixed_shape=False), y=FA, eps=A("float")), bases=2)
    add("BatchNormLayer", P.BatchNormLayer,
        lambda s: dict(X=_data(s)[0], Y=_data(s)[1], width=2, eps=0.0),
        dict(X=A("farray", fixed_shape=False), Y=A("farray", fixed_shape=False),
             width=A("int", lo=1), eps=A("float")))
    add("SoftmaxCrossEntropy", P.SoftmaxCrossEntropy,
        lambda s: dict(X=_data(s)[0], labels=np.arange(8) % 3, n_classes=3),
        dict(X=A("farray", fixed_shape=False), labels=IA,
             n_classes=A("int", nullable=True, lo=2)))
    add("TwoLayer", P.TwoLayer,
        lambda s: dict(X=_data(s)[0], Y=_data(s)[1], hidden=2, activation="relu"),
        dict(X=A("farray", fixed_shape=False), Y=A("farray", fixed_shape=False),
             hidden=A("int", lo=1), activation=A("choice")))
    add("BatchNormMLP", P.BatchNormMLP,
        lambda s: dict(X=_data(s)[0], labels=np.arange(8) % 3, widths=(3, 2), eps=0.0),
        dict(X=A("farray", fixed_shape=False), labels=IA, widths=A("obj"), eps=A("float")))
    add("Potential.value_and_grad", lambda potential, q, rows=None:
        potential.value_and_grad(q, rows),
        lambda s: dict(potential=[bn, sce][s % 2](s),
                       q=(q3 if s % 2 == 0 else np.linspace(-1, 1, 12)),
                       rows=np.array([0, 3, 5])),
        dict(q=FA, rows=A("iarray", nullable=True)), bases=2,
        nan_ok=True)   # tests/test_potentials.py: a 0/0 BatchNorm point returns f = NaN

    # ---- models and integrate ------------------------------------------------------------
    add("Damped", models.Damped, lambda s: dict(potential=rq(s), m=1.0, mu=0.5, k=0.1),
        dict(potential=A("obj"), m=pos, mu=A("float"), k=A("float")))
    add("GradientFlow", models.GradientFlow, lambda s: dict(potential=rq(s), mu=1.0, k=0.0),
        dict(potential=A("obj"), mu=pos, k=A("float")))
    add("RadialAngular", models.RadialAngular,
        lambda s: dict(potential=rq(s), m=1.0, mu=0.5, k=0.1, reduced=False),
        dict(potential=A("obj"), m=pos, mu=A("float"), k=A("float"), reduced=A("bool")))
    add("Bregman", models.Bregman,
        lambda s: dict(potential=rq(s), schedule=models.damped(1.0, 0.5), mirror="pnorm",
                       p=3.0),
        dict(potential=A("obj"), schedule=A("obj"), mirror=A("choice"), p=A("float")))
    add("schedules", lambda n, C, m, mu: (models.nesterov(n, C), models.damped(m, mu)),
        lambda s: dict(n=2.0, C=0.25, m=1.0, mu=0.5),
        dict(n=pos, C=pos, m=pos, mu=A("float")))
    add("RadialAngular.from_cartesian", models.RadialAngular.from_cartesian,
        lambda s: dict(q=q3, v=q3[::-1].copy()),
        dict(q=A("farray", names=("v",)), v=A("farray", names=("q",))))
    add("Bregman.state", lambda q, qdot, t0: models.Bregman(
        rq(), models.nesterov()).state(q, qdot, t0),
        lambda s: dict(q=q3, qdot=q3[::-1].copy(), t0=1.0), dict(q=FA, qdot=FA, t0=pos))
    fixed_methods = ("conformal-euler", "conformal-verlet", "conformal-yoshida4", "rk4")
    add("integrate(Damped)", nc.integrate,
        lambda s: dict(model=models.Damped(rq(s), 1.0, 0.5, 0.1),
                       y0=np.concatenate([q3, [0.1, 0.0, -0.2]]), t_end=1.0, h=0.1,
                       method=fixed_methods[s % 4], record_every=1 + s % 2, t0=0.0,
                       max_record_bytes=2**30),
        dict(model=A("obj"), y0=FA, t_end=A("float"), h=A("float", nullable=True),
             method=A("choice"), record_every=A("int", lo=1), t0=A("float"),
             max_record_bytes=A("int", lo=0)), bases=4)
    add("integrate(RadialAngular)", nc.integrate,
        lambda s: dict(model=models.RadialAngular(rq(s), 1.0, 0.5, 0.1, reduced=bool(s % 2)),
                       y0=ys, t_end=1.0, h=0.1, method="conformal-verlet", project=False),
        dict(y0=FA, h=A("float"), project=A("bool")), bases=2)
    add("integrate(GradientFlow)", nc.integrate,
        lambda s: dict(model=models.GradientFlow(rq(s), 1.0, 0.1), y0=q3, t_end=1.0, h=0.1,
                       method="euler"),
        dict(y0=FA, t_end=A("float"), h=A("float")))
    add("integrate(dopri5)", nc.integrate,
        lambda s: dict(model=[models.Damped(rq(s), 1.0, 0.5),
                              models.Bregman(rq(s), models.nesterov())][s % 2],
                       y0=np.concatenate([q3, [0.1, 0.0, -0.2]]), t0=[0.0, 0.5][s % 2],
                       t_end=2.0, method="dopri5", rtol=1e-8, atol=1e-10, max_steps=10_000,
                       t_eval=np.linspace([0.0, 0.5][s % 2], 2.0, 5), h=None),
        dict(y0=FA, t_end=A("float"), rtol=pos, atol=pos, max_steps=A("int", lo=1),
             t_eval=A("farray", nullable=True, fixed_shape=False), h=A("float", nullable=True),
             t0=A("float")), bases=2)

    add("integrate(dop853)", nc.integrate,
        lambda s: dict(model=[models.Damped(rq(s), 1.0, 0.5),
                              models.RadialAngular(rq(s), 1.0, 0.5, 0.1)][s % 2],
                       y0=[np.concatenate([q3, [0.1, 0.0, -0.2]]), ys][s % 2], t0=0.0,
                       t_end=2.0, method="dop853", rtol=1e-9, atol=1e-11, max_steps=10_000,
                       t_eval=None, h=None, dense_output=bool(s % 2)),
        dict(y0=FA, t_end=A("float"), rtol=pos, atol=pos, max_steps=A("int", lo=1),
             t_eval=A("farray", nullable=True, fixed_shape=False), h=A("float", nullable=True),
             t0=A("float"), dense_output=A("bool")), bases=2)
    add("integrate(dense_output)", nc.integrate,
        lambda s: dict(model=models.Damped(rq(s), 1.0, 0.5, 0.1),
                       y0=np.concatenate([q3, [0.1, 0.0, -0.2]]), t_end=1.5,
                       method=("dopri5", "dop853", "conformal-verlet")[s % 3],
                       h=(None, None, 0.05)[s % 3], dense_output=True,
                       record_every=1 + s % 2, max_record_bytes=2**30),
        dict(y0=FA, t_end=A("float"), h=A("float", nullable=True), dense_output=A("bool"),
             record_every=A("int", lo=1), max_record_bytes=A("int", lo=0)), bases=3)

    def crossing(t, y):
        return y[0] - 0.5

    crossing.terminal = True
    crossing.direction = -1.0
    add("integrate(events)", nc.integrate,
        lambda s: dict(model=models.Damped(rq(s), 1.0, 0.5, 0.1),
                       y0=np.concatenate([q3, [0.1, 0.0, -0.2]]), t_end=3.0,
                       method=("dop853", "dopri5", "rk4")[s % 3], h=(None, None, 0.05)[s % 3],
                       events=[crossing, _LevelEvent("q_norm2", 0.5)][:1 + s % 2],
                       dense_output=bool(s % 2)),
        dict(y0=FA, t_end=A("float"), events=A("obj", nullable=True),
             dense_output=A("bool")), bases=3)

    # ---- charges, theory, conventions, symmetry, mirror, datasets -------------------------
    run0 = nc.train(R.SGD(lr=0.05, momentum=0.9), bn(0), q3, 12)
    traj = nc.integrate(models.Damped(P.Radial(3), 1.0, 0.5), np.r_[q3, 0.1, 0.0, -0.2],
                        t_end=1.0, h=0.1, method="conformal-verlet")
    add("continuum_balance", nc.continuum_balance,
        lambda s: dict(run=run0, block="w"), dict(run=A("obj"),
                                                 block=A("choice", nullable=True)))
    add("noether_terms", noether_terms,
        lambda s: dict(result=traj, family="rotation", omega=symmetry.random_skew(3, s)),
        dict(result=A("obj"), family=A("choice"), omega=A("farray")))
    add("to_continuous", conventions.to_continuous,
        lambda s: dict(lr=0.1, momentum=0.9, convention=["paper", "variational"][s % 2]),
        dict(lr=pos, momentum=A("float"), convention=A("choice")), bases=2)
    add("to_discrete", conventions.to_discrete,
        lambda s: dict(m=0.1, mu=0.5, convention="variational", h=0.1),
        dict(m=pos, mu=pos, convention=A("choice"), h=A("float", nullable=True)))
    add("theory.steady_quantities", lambda lr, momentum, weight_decay, grad_hat_norm: (
        theory.steady_angular_speed(lr, momentum, weight_decay),
        theory.steady_angular_update(lr, momentum, weight_decay),
        theory.steady_radius(lr, momentum, weight_decay, grad_hat_norm),
        theory.intrinsic_lr(lr, momentum, weight_decay)),
        lambda s: dict(lr=0.1, momentum=0.9, weight_decay=5e-4, grad_hat_norm=0.5),
        dict(lr=pos, momentum=A("float"), weight_decay=pos, grad_hat_norm=A("float")))
    add("theory.norm_schedule", theory.norm_schedule,
        lambda s: dict(grad_hat_norm2=np.linspace(0.1, 1.0, 20), lr=0.1, momentum=0.9,
                       weight_decay=5e-4, r0=1.0),
        dict(grad_hat_norm2=A("farray", fixed_shape=False), lr=pos, momentum=A("float"),
             weight_decay=pos, r0=pos))
    add("theory.rmsprop_scale", theory.rmsprop_scale,
        lambda s: dict(grad_norm2=np.linspace(0.1, 1.0, 20), lr=0.1, rho=0.9, G0=1.0),
        dict(grad_norm2=A("farray", fixed_shape=False), lr=pos, rho=A("float"), G0=pos))
    add("theory.equivalent_rmsprop", theory.equivalent_rmsprop,
        lambda s: dict(lr=0.1, momentum=0.9, weight_decay=5e-4, r0=1.0),
        dict(lr=pos, momentum=A("float"), weight_decay=pos, r0=pos))
    add("theory.series", lambda q: (theory.step_norm2(q), theory.angular_updates(q)),
        lambda s: dict(q=np.arange(1.0, 13.0).reshape(4, 3)),
        dict(q=A("farray", fixed_shape=False)))
    add("theory.buffer_gain", lambda momentum, assumption:
        theory.buffer_gain(momentum, assumption),
        lambda s: dict(momentum=0.9, assumption="uncorrelated"),
        dict(momentum=A("float"), assumption=A("choice")))
    # the every-optimizer theory (docs/theory.md §9), one row per family of rules with
    # the hyper-parameters that family reads (the others are ignored, not validated)
    t_grads = np.random.default_rng(3).standard_normal((12, 4))
    t_params = np.random.default_rng(4).standard_normal((12, 4)) + 1.0
    t_fam = {"sgd": (("sgd", "nesterov"), dict(momentum=0.9), dict(momentum=A("float"))),
             "adam": (("adam", "adamw"), dict(betas=(0.9, 0.999), eps=1e-8),
                      dict(betas=A("obj"), eps=A("float"))),
             "rmsprop": (("rmsprop",), dict(alpha=0.99, eps=1e-8),
                         dict(alpha=A("float"), eps=A("float")))}

    def t_stats(rule, h):
        kw = {} if rule in ("sgd", "nesterov") else {"params": t_params}
        return theory.gradient_stats(rule, t_grads, **kw, **h)

    for fam, (rules_f, hyp, hyp_args) in t_fam.items():
        nb = len(rules_f)
        add(f"theory.equilibrium({fam})",
            lambda rule, lr, weight_decay, grad_stats, assumption, **h: theory.equilibrium(
                rule, lr=lr, weight_decay=weight_decay, grad_stats=grad_stats,
                assumption=assumption, **h),
            lambda s, r=rules_f, h=hyp: dict(
                rule=r[s % len(r)], lr=0.01, weight_decay=0.05,
                grad_stats=t_stats(r[s % len(r)], h).mean(4), assumption="uncorrelated",
                **h),
            dict(rule=A("choice"), lr=pos, weight_decay=A("float"),
                 grad_stats=A("obj", nullable=True), assumption=A("choice"), **hyp_args),
            bases=nb)
        add(f"theory.gradient_stats({fam})",
            lambda rule, grads, params, weight_decay, **h: theory.gradient_stats(
                rule, grads, params, weight_decay=weight_decay, **h),
            lambda s, r=rules_f, h=hyp, f=fam: dict(
                rule=r[s % len(r)], grads=t_grads,
                params=None if f == "sgd" else t_params, weight_decay=0.05, **h),
            dict(rule=A("choice"), grads=A("farray", fixed_shape=False),
                 weight_decay=A("float"), **hyp_args,
                 **({} if fam == "sgd" else {"params": A("farray", nullable=True)})),
            bases=nb)
        add(f"theory.rule_norm_schedule({fam})",
            lambda rule, grad_stats, r0, lr, weight_decay, **h: theory.rule_norm_schedule(
                rule, grad_stats, r0, lr=lr, weight_decay=weight_decay, **h),
            lambda s, r=rules_f, h=hyp: dict(
                rule=r[s % len(r)], grad_stats=t_stats(r[s % len(r)], h), r0=1.0, lr=0.01,
                weight_decay=0.05, **h),
            dict(rule=A("choice"), grad_stats=A("obj"), r0=pos, lr=pos,
                 weight_decay=A("float"), **hyp_args), bases=nb)
    add("symmetry.generator/transform", lambda q, s, omega: (
        symmetry.generator(symmetry.Symmetry("rotation", ("q",)), q, {"q": np.arange(3)},
                           omega),
        symmetry.transform(symmetry.Symmetry("rotation", ("q",)), q, s, {"q": np.arange(3)},
                           omega)),
        lambda s: dict(q=q3, s=0.1, omega=symmetry.random_skew(3, 0)),
        dict(q=FA, s=A("float"), omega=FA))
    add("symmetry.random_skew", symmetry.random_skew, lambda s: dict(n=3, rng=0),
        dict(n=A("int", lo=0), rng=A("seed", nullable=True)))
    add("MirrorMap", mirror.MirrorMap, lambda s: dict(name="pnorm", p=3.0),
        dict(name=A("choice", names=("mirror",)), p=A("float")))
    add("datasets.gaussian_mixture", datasets.gaussian_mixture,
        lambda s: dict(n=10, d=3, classes=2, seed=s),
        dict(n=A("int", lo=1), d=A("int", lo=1), classes=A("int", lo=2),
             seed=A("seed", nullable=True)))
    add("datasets.teacher_regression", datasets.teacher_regression,
        lambda s: dict(n=10, d=3, out=1, seed=s),
        dict(n=A("int", lo=1), d=A("int", lo=1), out=A("int", lo=1),
             seed=A("seed", nullable=True)))

    # ---- user potentials (potentials.Compiled / Python), audit, torch monitor -------------
    import scipy

    from noether_core import audit
    llc = scipy.LowLevelCallable(_c_half_norm2())
    blocks3 = {"a": np.array([0, 1]), "b": np.array([2])}
    add("potentials.Compiled", P.Compiled,
        lambda s: dict(callback=llc, d=3, blocks=blocks3, symmetries=(), max_bytes=2**30),
        dict(callback=A("obj"), d=A("int", lo=1), blocks=A("obj", nullable=True),
             symmetries=A("obj", nullable=True), max_bytes=A("int", lo=0)))
    add("train(Compiled)", nc.train,
        lambda s: dict(rule=R.SGD(lr=0.1, momentum=0.5), potential=P.Compiled(llc, 3),
                       q0=q3, steps=30, record_every=1 + s % 2), dict(q0=FA, steps=A("int", lo=0),
                                                                   record_every=A("int", lo=1)),
        bases=2)
    add("potentials.Python", P.Python,
        lambda s: dict(fn=lambda q: (0.5 * q @ q, q.copy()), d=3, blocks=blocks3,
                       max_bytes=2**30),
        dict(fn=A("obj"), d=A("int", lo=1), blocks=A("obj", nullable=True),
             max_bytes=A("int", lo=0)))
    add("train(Python fn)", lambda fn, steps: nc.train(R.SGD(lr=0.1), P.Python(fn, 3), q3,
                                                       steps),
        lambda s: dict(fn=lambda q: (0.5 * q @ q, q.copy()), steps=5),
        dict(fn=A("callback"), steps=A("int", lo=0)), allowed=(P.CallbackError,))
    # a misbehaving fn through the grid engines (issue 19 item 11): an "error" fn must
    # raise (CallbackError), never come back as a diverged point
    add("scan(Python fn)", lambda fn, steps, threads: nc.scan(
        R.SGD, P.Python(fn, 3), q3, steps=steps, lr=[0.05, 0.1], threads=threads),
        lambda s: dict(fn=lambda q: (0.5 * q @ q, q.copy()), steps=5, threads=1 + s % 2),
        dict(fn=A("callback"), steps=A("int", lo=1), threads=A("int", nullable=True, lo=1)),
        bases=2, allowed=(P.CallbackError,))
    add("scan_integrate(Python fn)", lambda fn, threads: nc.scan_integrate(
        models.GradientFlow, P.Python(fn, 3), q3, t_end=0.5, method="euler", h=0.05,
        mu=[1.0, 2.0], threads=threads),
        lambda s: dict(fn=lambda q: (0.5 * q @ q, q.copy()), threads=1 + s % 2),
        dict(fn=A("callback"), threads=A("int", nullable=True, lo=1)),
        bases=2, allowed=(P.CallbackError,))
    add("audit.check_symmetry", audit.check_symmetry,
        lambda s: dict(potential=rq(s), n_points=4, seed=s, scale=1.0, tol=1e-8,
                       approx_tol=1e-3),
        dict(potential=A("obj"), n_points=A("int", lo=1), seed=A("seed", nullable=True),
             scale=pos, tol=pos, approx_tol=pos))
    add("audit.audit", audit.audit,
        lambda s: dict(potential_or_fn=bn(s),
                       q_samples=np.random.default_rng(s).standard_normal((9, 3)),
                       tol=1e-8),
        dict(potential_or_fn=A("obj"), q_samples=A("farray", fixed_shape=False), tol=pos))
    add("audit.candidate_blocks", audit.candidate_blocks,
        lambda s: dict(shapes={"W1": (3, 2), "W2": (1, 3)}, columns=True),
        dict(shapes=A("obj"), columns=A("bool")))
    try:
        import torch
    except ImportError:             # the monitor needs torch (an optional dependency)
        torch = None
    if torch is not None:
        from noether_core.torch import NoetherMonitor

        def monitor(model, optimizer, audit_steps=5, approx_tol=1e-3, record_every=1,
                    max_records=None, callback=None, log_every=100, params="normalised"):
            mon = NoetherMonitor(model, optimizer, audit_steps=audit_steps,
                                 approx_tol=approx_tol, record_every=record_every,
                                 max_records=max_records, callback=callback,
                                 log_every=log_every, params=params)
            for h in mon._hooks + mon._fwd_hooks:     # leave the shared model clean
                h.remove()
            return type(mon).__name__
        net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(),
                                  torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        add("torch.NoetherMonitor", monitor,
            lambda s: dict(model=net, optimizer=opt, audit_steps=5, approx_tol=1e-3,
                           record_every=1, max_records=[None, 50][s % 2],
                           callback=[None, print][s % 2], log_every=1 + 49 * (s % 2),
                           params=["normalised", "all"][s % 2]),
            dict(model=A("obj"), optimizer=A("obj"), audit_steps=A("int", lo=1),
                 approx_tol=pos, record_every=A("int", lo=1),
                 max_records=A("int", nullable=True, lo=2),
                 callback=A("obj", nullable=True), log_every=A("int", lo=1),
                 params=A("choice")), bases=2)
    # ---- noether_core.scan, scan_integrate ----------------------------------------------
    add("scan", lambda rule_cls, potential, q0, lr, steps, threads, record_every,
        max_record_bytes: nc.scan(rule_cls, potential, q0, lr=lr, steps=steps,
                                  threads=threads, record_every=record_every, momentum=0.9,
                                  max_record_bytes=max_record_bytes),
        lambda s: dict(rule_cls=R.SGD, potential=[rq, bn][s % 2](s), q0=q3,
                       lr=np.logspace(-3, -1, 3), steps=20, threads=1 + s % 2,
                       record_every=None if s % 2 else 5, max_record_bytes=2**30),
        dict(rule_cls=A("obj"), potential=A("obj"), q0=FA,
             lr=A("farray", fixed_shape=False), steps=A("int", lo=1),
             threads=A("int", nullable=True, lo=1),
             record_every=A("int", nullable=True, lo=1), max_record_bytes=A("int", lo=0)),
        bases=2)
    add("scan_integrate", lambda m, mu, h, t_end: nc.scan_integrate(
        models.Damped, rq(0), np.r_[q3, 0.0, 0.0, 0.0], t_end=t_end, method="conformal-verlet",
        m=m, mu=mu, h=h, threads=1),
        lambda s: dict(m=[0.5, 1.0], mu=0.3, h=0.05, t_end=1.0),
        dict(m=A("farray", fixed_shape=False), mu=pos, h=pos, t_end=pos))
    add("scan_integrate(dop853)", lambda mu, rtol, atol, t_end, threads: nc.scan_integrate(
        models.Damped, rq(0), np.r_[q3, 0.1, 0.0, 0.0], t_end=t_end, method="dop853",
        m=0.7, mu=mu, rtol=rtol, atol=atol, threads=threads),
        lambda s: dict(mu=[0.1, 0.5, 0.9], rtol=[1e-6, 1e-9], atol=1e-12, t_end=2.0,
                       threads=1 + s % 2),
        dict(mu=A("farray", fixed_shape=False), rtol=A("farray", fixed_shape=False),
             atol=pos, t_end=pos, threads=A("int", nullable=True, lo=1)), bases=2)
    return E


# -----------------------------------------------------------------------------------------
# running one case

def fingerprint(x, depth=0):
    """The numbers a result holds (arrays, floats, ints), recursively, for comparison."""
    if depth > 4:
        return ()
    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape, x.tobytes()) if x.dtype != object else repr(x)
    if isinstance(x, str):
        return str(x)
    if isinstance(x, (bool, np.bool_)) or x is None or isinstance(x, complex):
        return repr(x)
    if isinstance(x, (int, float, np.integer, np.floating)):
        return ("num", float(x))
    if isinstance(x, dict):
        return tuple((repr(k), fingerprint(v, depth + 1)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return tuple(fingerprint(v, depth + 1) for v in x)
    d = getattr(x, "__dict__", None)
    if d is not None:
        return (type(x).__name__,) + tuple(
            (k, fingerprint(v, depth + 1)) for k, v in sorted(d.items())
            if not k.startswith("_") and not callable(v) and k != "elapsed")
    if hasattr(x, "__dataclass_fields__"):
        return tuple(fingerprint(getattr(x, k), depth + 1) for k in x.__dataclass_fields__)
    return type(x).__name__


def same_numbers(a, b):
    """Fingerprints equal, float arrays to 1e-12 relative (NumPy code may take another BLAS
    path for a Fortran-ordered or strided input; compiled kernels get C-contiguous float64
    copies and agree bitwise)."""
    if isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], bytes):
        if not (isinstance(b, tuple) and len(b) == 3 and a[:2] == b[:2]):
            return False
        if a[0] in ("<f8", "<f4"):
            x = np.frombuffer(a[2], dtype=a[0])
            y = np.frombuffer(b[2], dtype=a[0])
            return bool(np.allclose(x, y, rtol=1e-12, atol=0, equal_nan=True))
        return a[2] == b[2]
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_numbers(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def nonfinite_unflagged(x, depth=0):
    """A path to a NaN/inf in the result that no ``diverged`` flag accounts for."""
    flag = getattr(x, "diverged", False)
    if np.any(flag):            # a run's bool, or a scan's per-point array
        return None
    if depth > 3:
        return None
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return "array" if not np.all(np.isfinite(x)) else None
    if isinstance(x, (float, np.floating)):
        return "float" if not np.isfinite(x) else None
    if isinstance(x, (list, tuple)):
        items = enumerate(x)
    elif isinstance(x, dict):
        items = x.items()
    elif hasattr(x, "__dict__") and type(x).__module__.startswith("noether_core"):
        items = ((k, v) for k, v in vars(x).items() if not k.startswith("_"))
    else:
        return None
    for k, v in items:
        p = nonfinite_unflagged(v, depth + 1)
        if p:
            return f"{k}.{p}"
    return None


def _snapshot(kwargs):
    return {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}


def call(entry, kwargs):
    """('ok', result) or ('raised', exc) — warnings other than NoetherWarning are errors."""
    import warnings

    from noether_core.errors import NoetherWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # e.g. ComplexWarning: data silently lost
        warnings.simplefilter("ignore", NoetherWarning)
        warnings.simplefilter("ignore", RuntimeWarning)   # numpy's overflow notes
        try:
            return "ok", entry.fn(**kwargs)
        except KeyboardInterrupt:       # the watchdog's SIGINT: a long legal run, stopped
            return "interrupted", None
        except BaseException as exc:  # noqa: BLE001 - classify everything
            if isinstance(exc, SystemExit):
                raise
            return "raised", exc


def check_case(entry, base, changes, canon_cache):
    """Run one case; return None if acceptable, else a failure description."""
    kwargs = dict(base)
    kwargs.update({k: v for k, (lab, v, cat, cn) in changes.items()})
    before = _snapshot(kwargs)
    kind, out = call(entry, kwargs)
    what = ", ".join(f"{k}={lab}" for k, (lab, *_r) in changes.items())
    for k, v in before.items():                      # inputs are never modified
        if isinstance(kwargs[k], np.ndarray) and fingerprint(kwargs[k]) != fingerprint(v):
            return f"{entry.name}({what}): input {k} modified in place"
    cats = {c for (_l, _v, c, _cn) in changes.values()}
    if kind == "interrupted":
        # a legal but long request (e.g. 2**31 steps recorded once): it honoured Ctrl-C
        # (the hard watchdog would have killed a run that did not)
        return None if "error" not in cats else f"{entry.name}({what}): accepted an " \
            "invalid input (ran until interrupted)"
    if kind == "raised":
        if not isinstance(out, ALLOWED + entry.allowed) or isinstance(out, (KeyError,
                                                                            IndexError)):
            return f"{entry.name}({what}): raised {type(out).__name__}: {out}"
        msg = str(out)
        if isinstance(out, entry.allowed):
            return None
        names = set()
        for k in changes:
            names |= {k, *entry.args[k].names}
        if not any(n in msg for n in names):
            return (f"{entry.name}({what}): {type(out).__name__} does not name "
                    f"{sorted(names)}: {msg!r}")
        if cats <= {"same"}:
            return f"{entry.name}({what}): refused an equivalent input: {msg!r}"
        return None
    if "error" in cats:
        return f"{entry.name}({what}): accepted an invalid input (returned {type(out).__name__})"
    bad = None if entry.nan_ok else nonfinite_unflagged(out)
    if bad:
        return f"{entry.name}({what}): non-finite value at {bad} without a diverged flag"
    if cats <= {"same", "same_or_error"}:
        ck = dict(base)
        ck.update({k: cn for k, (_l, _v, _c, cn) in changes.items()})
        ck_kind, ref = call(entry, ck)
        if ck_kind != "ok":
            return f"{entry.name}({what}): canonical input raised {ref!r}"
        if not same_numbers(fingerprint(out), fingerprint(ref)):
            return f"{entry.name}({what}): result differs from the canonical input's"
    return None


def driver(report_path, log_path, seconds_per_case, start):
    """Exhaustive single-argument sweep, then a hypothesis search over pairs.

    Cases are numbered; those before ``start`` are skipped (the parent restarts the driver
    after the case that killed it).  Each case is logged ("CASE i ...") before it runs and
    each failure ("FAIL ...") as it is found, so a crash loses nothing.
    """
    import faulthandler
    import resource
    import signal
    import threading

    soft = 4 * 2**30                                 # huge allocations fail, not OOM-kill
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))
    import noether_core as nc
    from noether_core._kernels import rules as _kr
    debug = False
    try:                                            # the bounds checks really are compiled in
        from noether_core import _bridge  # an empty hp row: hp[0] is out of bounds
        rule = _bridge.RuleInputs(0, np.zeros(0), np.zeros((0, 1)), np.zeros(0),
                                  np.zeros(1, np.intp), np.zeros(0, np.intp))
        rec = _bridge.Recording(1, np.zeros(1, np.intp), np.zeros(0, np.intp),
                                np.zeros((1, 1)), np.zeros(1), np.zeros(1), np.zeros((1, 0)))
        _kr.train_kernel(rule, nc.potentials.RayleighQuotient(np.eye(1))._kernel, np.zeros(1),
                         0, rec, _bridge.Batch())
    except IndexError:
        debug = True
    except Exception:  # noqa: BLE001
        pass
    entries = build_entries()
    log = open(log_path, "w", buffering=1)
    counter = [0, 0]                                 # case index, cases run
    current = [""]
    canon = {}

    def fail(msg):
        log.write("FAIL " + msg.replace("\n", " | ") + "\n")

    def unraisable(u):          # an exception swallowed inside a noexcept kernel function
        fail(f"{current[0]}: exception ignored in {u.object!r}: "
             f"{u.exc_type.__name__}: {u.exc_value}")
    sys.unraisablehook = unraisable

    def one(entry, base, changes):
        i = counter[0]
        counter[0] += 1
        if i < start:
            return
        current[0] = f"{entry.name}({', '.join(f'{k}={c[0]}' for k, c in changes.items())})"
        log.write(f"CASE {i} {current[0]}\n")
        # soft limit: SIGINT (a long legal run must honour it); hard limit 3 s later: the
        # process is killed with a traceback (a hang: the parent records the case)
        soft = threading.Timer(seconds_per_case, os.kill, (os.getpid(), signal.SIGINT))
        soft.start()
        faulthandler.dump_traceback_later(seconds_per_case + 3.0, exit=True, file=log)
        try:
            f = check_case(entry, base, changes, canon)
        finally:
            soft.cancel()
            faulthandler.cancel_dump_traceback_later()
        counter[1] += 1
        if f:
            fail(f)

    t0 = time.perf_counter()
    for e in entries:                                # 1. exhaustive sweep
        base = e.valid(0)
        for arg, a in e.args.items():
            for m in malformations(base[arg], a):
                one(e, base, {arg: m})
    t_sweep = time.perf_counter() - t0

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    n_ex = 20 * settings.default.max_examples

    @st.composite
    def cases(draw):
        e = draw(st.sampled_from(entries))
        base = e.valid(draw(st.integers(0, max(e.bases, 1) - 1)))
        args = draw(st.lists(st.sampled_from(sorted(e.args)), min_size=1, max_size=2,
                             unique=True))
        changes = {}
        for arg in args:
            ms = malformations(base[arg], e.args[arg])
            changes[arg] = ms[draw(st.integers(0, len(ms) - 1))]
        return e, base, changes

    @settings(max_examples=n_ex, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def search(case):
        one(*case)

    t1 = time.perf_counter()
    search()
    report = {"debug_build": debug, "entry_points": len({e.name.split("(")[0] for e in entries}),
              "table_rows": len(entries), "cases_run": counter[1],
              "arguments": sum(len(e.args) for e in entries),
              "sweep_s": round(t_sweep, 2), "search_s": round(time.perf_counter() - t1, 2),
              "search_examples": n_ex, "noether_core": nc.__file__}
    Path(report_path).write_text(json.dumps(report, indent=1))


def run_driver(tree, workdir, *, case_timeout=CASE_TIMEOUT, max_restarts=25):
    """Run the driver on ``tree`` until it completes, restarting after a case that killed
    it (segfault, abort, watchdog); returns (report, failures, cases_run)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(tree / "python"),
                                                       str(ROOT / "tests")]))
    start, failures, cases_run = 0, [], 0
    for attempt in range(max_restarts + 1):
        report, log = workdir / f"report{attempt}.json", workdir / f"cases{attempt}.log"
        proc = subprocess.run([sys.executable, str(Path(__file__)), "--driver", str(report),
                               str(log), str(case_timeout), str(start)], env=env,
                              capture_output=True, text=True, timeout=1800, cwd=tree)
        lines = log.read_text().splitlines() if log.exists() else []
        failures += [ln[5:] for ln in lines if ln.startswith("FAIL ")]
        case_lines = [ln for ln in lines if ln.startswith("CASE ")]
        if proc.returncode == 0:
            rep = json.loads(report.read_text())
            return rep, failures, cases_run + rep["cases_run"]
        if not case_lines:
            raise AssertionError(f"fuzz driver failed before its first case "
                                 f"(rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        last = case_lines[-1].split(" ", 2)
        cases_run += len(case_lines)
        after = "\n".join(lines[lines.index(case_lines[-1]) + 1:])[-1500:]
        failures.append(f"{last[2]}: killed the process (return code {proc.returncode}; "
                        f"-11 is a segfault, 1 the watchdog: no answer "
                        f"{case_timeout + 3:.0f} s, SIGINT ignored): "
                        f"{after or proc.stderr[-1500:]}")
        start = int(last[1]) + 1
    raise AssertionError(f"fuzz driver killed more than {max_restarts} times:\n"
                         + "\n".join(failures))


# =========================================================================================
# The pytest side
# =========================================================================================

def _copy_tree(dst: Path):
    ignore = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "build", "*.html")
    for name in ("noether_core", "pyx", "python"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)


try:
    import pytest
except ImportError:  # the driver subprocess needs no pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def debug_tree(tmp_path_factory):
        """The source tree built with NOETHER_DEBUG=1 (bounds checks on) in a temp dir."""
        given_tree = os.environ.get("NOETHER_FUZZ_TREE")
        if given_tree:
            return Path(given_tree), 0.0
        dst = tmp_path_factory.mktemp("debug_tree")
        _copy_tree(dst)
        env = dict(os.environ, NOETHER_DEBUG="1")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                             cwd=dst, env=env, capture_output=True, text=True, timeout=900)
        build_s = time.perf_counter() - t
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return dst, build_s

    def test_fuzz_bad_inputs(debug_tree, tmp_path, request):
        """Every public entry point × malformed inputs, in a subprocess on the debug build:
        clean ValueError/TypeError/MemoryError naming the argument, or a correct result."""
        tree, build_s = debug_tree
        t = time.perf_counter()
        rep, failures, cases_run = run_driver(tree, tmp_path)
        run_s = time.perf_counter() - t
        assert rep["noether_core"].startswith(str(tree)), rep["noether_core"]
        assert rep["debug_build"], "the fuzz did not run on a bounds-checked build"
        line = (f"fuzz: {rep['entry_points']} entry points ({rep['table_rows']} table rows, "
                f"{rep['arguments']} arguments), {cases_run} inputs tried "
                f"(sweep {rep['sweep_s']} s + {rep['search_examples']} hypothesis examples "
                f"{rep['search_s']} s); debug build {build_s:.1f} s, driver {run_s:.1f} s; "
                f"{len(failures)} failures")
        print("\n" + line)
        request.config._noether_summary = getattr(request.config, "_noether_summary", [])
        request.config._noether_summary.append(line)
        assert not failures, "\n".join(sorted(set(failures))[:80])


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "--driver":
    import numpy as np
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest  # noqa: F401  - loads the hypothesis profile (NOETHER_HYPOTHESIS_PROFILE)
    driver(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
else:
    import numpy as np
