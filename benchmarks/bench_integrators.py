"""Compiled integrators vs scipy.integrate.solve_ivp at matched final error.

    PYTHONPATH=.:python python benchmarks/bench_integrators.py

Problems: M1 Damped on RayleighQuotient (d = 8, T = 20) and M2 RadialAngular (exact) on
the same potential.  For each solver a parameter sweep (h for conformal-verlet, rtol for
dopri5 / RK45 / DOP853) gives (final error, wall time) pairs, time = best of 5 runs; the
time each solver needs for a target error is read off its log-log curve by linear
interpolation.  solve_ivp gets the NumPy right-hand side of python/noether_ref (the same
equations; the gradient is one small matrix-vector product in NumPy).  The reference
solution is DOP853 at rtol = 1e-13, atol = 1e-15.

Prints a Markdown section for benchmarks/RESULTS.md.
"""
import platform
import subprocess
import time

import numpy as np
from scipy.integrate import solve_ivp

import noether_core as nc
from noether_core.models import Damped, RadialAngular
from noether_ref import integrators as ri
from noether_ref import potentials as rp

D, T = 8, 20.0
TARGETS = (1e-4, 1e-6, 1e-8)
REPEAT = 5


def _best(fn):
    best = np.inf
    out = None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _problem():
    rng = np.random.default_rng(2024)
    A = rng.standard_normal((D, D))
    A = A + A.T
    pot = nc.potentials.RayleighQuotient(A)
    q0 = rng.standard_normal(D)
    v0 = 0.3 * rng.standard_normal(D)
    # m = 0.5, mu = 0.3, k = 0.02: radially overdamped, r stays > 0 (M2 is defined)
    return pot, A, q0, v0


def _curve(run, params, ref):
    pts = []
    for p in params:
        t, y = _best(lambda p=p: run(p))
        err = float(np.abs(y - ref).max())
        pts.append((err, t))
    return sorted(pts)


def _time_at(pts, target):
    """Log-log interpolation of wall time at a given final error (None: out of range)."""
    e = np.log([p[0] for p in pts])
    t = np.log([p[1] for p in pts])
    if not (e.min() <= np.log(target) <= e.max()):
        return None
    order = np.argsort(e)
    return float(np.exp(np.interp(np.log(target), e[order], t[order])))


def bench(name, model, y0, spec, to_cmp):
    f = lambda t, y: ri.rhs(spec, t, y)                            # noqa: E731
    ref = solve_ivp(f, (0, T), y0, method="DOP853", rtol=1e-13, atol=1e-15).y[:, -1]
    ref = to_cmp(ref)
    curves = {
        "compiled conformal-verlet": _curve(
            lambda h: to_cmp(nc.integrate(model, y0, t_end=T, h=h, method="conformal-verlet",
                                          record_every=10**9).y_final),
            [0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4, 3e-5], ref),
        "compiled conformal-yoshida4": _curve(
            lambda h: to_cmp(nc.integrate(model, y0, t_end=T, h=h,
                                          method="conformal-yoshida4",
                                          record_every=10**9).y_final),
            [0.2, 0.1, 0.05, 0.02, 0.01, 0.005], ref),
        "compiled dopri5": _curve(
            lambda tol: to_cmp(nc.integrate(model, y0, t_end=T, method="dopri5",
                                            rtol=tol, atol=tol * 1e-2,
                                            t_eval=[0.0, T]).y_final),
            np.logspace(-2, -12, 11), ref),
    }
    for meth in ("RK45", "DOP853"):
        curves[f"solve_ivp {meth}"] = _curve(
            lambda tol, meth=meth: to_cmp(solve_ivp(f, (0, T), y0, method=meth,
                                                    rtol=tol, atol=tol * 1e-2).y[:, -1]),
            np.logspace(-1, -12, 12), ref)
    rows = []
    for target in TARGETS:
        times = {k: _time_at(v, target) for k, v in curves.items()}
        rows.append((target, times))
    return name, rows


def _fmt(x):
    return "—" if x is None else (f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s")


def _ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.0f}×"


def main():
    pot, A, q0, v0 = _problem()
    grad = lambda q: rp.rayleigh(q, A)[1]                          # noqa: E731
    m1 = Damped(pot, 0.5, 0.3, 0.02)
    m2 = RadialAngular(pot, 0.5, 0.3, 0.02)
    s1 = {"kind": "damped", "m": 0.5, "mu": 0.3, "k": 0.02, "grad": grad}
    s2 = {"kind": "radang", "m": 0.5, "mu": 0.3, "k": 0.02, "reduced": False, "grad": grad}
    results = [
        bench("M1 Damped, RayleighQuotient d=8, T=20", m1, np.concatenate([q0, v0]), s1,
              lambda y: y),
        # M2's error is measured in Cartesian (q, q̇) for every solver
        bench("M2 RadialAngular (exact), RayleighQuotient d=8, T=20", m2,
              RadialAngular.from_cartesian(q0, v0), s2,
              lambda y: np.concatenate(m2.to_cartesian(y))),
    ]
    lscpu = subprocess.run("lscpu | head", shell=True, capture_output=True, text=True).stdout
    import numpy
    import scipy
    print("## Integrators\n")
    print("`benchmarks/bench_integrators.py` (one run).  Wall time (best of 5) to reach a "
          "given max-abs final error in (q, q̇) at T = 20, read off each solver's "
          "error–time curve; ratios = solve_ivp time / compiled time (higher is better "
          "for the compiled kernels).  solve_ivp uses the NumPy right-hand side of "
          "python/noether_ref/integrators.py.\n")
    for name, rows in results:
        print(f"### {name}\n")
        print("| final error | verlet | yoshida4 | dopri5 | RK45 | DOP853 | RK45/verlet | "
              "DOP853/verlet | RK45/dopri5 | DOP853/dopri5 | DOP853/yoshida4 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for target, t in rows:
            cv, dp = t["compiled conformal-verlet"], t["compiled dopri5"]
            y4 = t["compiled conformal-yoshida4"]
            r45, r853 = t["solve_ivp RK45"], t["solve_ivp DOP853"]
            print(f"| {target:.0e} | {_fmt(cv)} | {_fmt(y4)} | {_fmt(dp)} | {_fmt(r45)} | "
                  f"{_fmt(r853)} | {_ratio(r45, cv)} | {_ratio(r853, cv)} | "
                  f"{_ratio(r45, dp)} | {_ratio(r853, dp)} | {_ratio(r853, y4)} |")
        print()
    print("Machine:\n\n```\n" + lscpu.rstrip() + "\n```\n")
    print(f"Python {platform.python_version()}, NumPy {numpy.__version__}, "
          f"SciPy {scipy.__version__}, noether_core {nc.__version__}.\n")


if __name__ == "__main__":
    main()
