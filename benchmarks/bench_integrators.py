"""Compiled integrators vs scipy.integrate.solve_ivp (and diffrax) at matched final error.

    PYTHONPATH=.:python python benchmarks/bench_integrators.py [--peers-only | --grids | --cost]

Problems: M1 Damped on RayleighQuotient (d = 8, T = 20) and M2 RadialAngular (exact) on
the same potential.  For each solver a parameter sweep (h for conformal-verlet, rtol for
dopri5 / RK45 / DOP853) gives (final error, wall time) pairs, time = best of 5 runs; the
time each solver needs for a target error is read off its log-log curve by linear
interpolation.  solve_ivp gets the NumPy right-hand side of python/noether_ref (the same
equations; the gradient is one small matrix-vector product in NumPy).  The reference
solution is DOP853 at rtol = 1e-13, atol = 1e-15.

Second part, "peers side by side" (issue 17): M1 only.  Each peer runs at rtol 1e-6 …
1e-10 (atol = rtol/100): scipy solve_ivp RK45 and DOP853, and, if importable, diffrax
Dopri5, Tsit5 and Dopri8 (PID controller, ``jax.jit`` compiled once per rtol outside the
timing, float64 via ``jax_enable_x64``, time with ``block_until_ready``).  Against each
peer run we take the cheapest of our calls (dopri5 and dop853 over an rtol sweep) whose
final error is at most the peer's, and print both times and the ratio.  Missing peers are
skipped with a message.

Third part, "grids" (issue 17 item 5; ``--grids`` runs only it): ``scan_integrate`` over
32 m × 32 μ (M1 on the same potential, T = 20, 2 threads) against JAX under
``jit(vmap)`` over the same 1024 points: a leapfrog with exact damping (the conformal
Strang splitting, the same arithmetic as our conformal-verlet) at h = 1e-2, and diffrax
Dopri5 (PID controller) against our dopri5 and dop853 at the same rtol (atol = rtol/100).
Errors are the largest over 16 sampled points against scipy's DOP853 at rtol 1e-13.
The peers are optional (skipped with a message when jax/diffrax are missing).

Fourth part, "cost of a call" (``--cost`` runs only it; docs/integrators.md §10): one
``integrate(method="dop853")`` call on the M1 problem split into the compiled kernel
alone (``_bridge.run_integrate`` on inputs built beforehand) and the Python facade
around it (the rest), at three rtols, plus the facade's fixed cost (t_end = t0) and the
default call without ``t_eval``.

Prints Markdown for benchmarks/RESULTS.md (it writes nothing).
"""
import platform
import subprocess
import sys
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


# -- peers side by side (issue 17) --------------------------------------------------------
PEER_RTOLS = (1e-6, 1e-7, 1e-8, 1e-9, 1e-10)


def _diffrax_runners(A, y0, m, mu, k):
    """{name: rtol -> (callable returning q(T), None)} for diffrax's Dopri5, Tsit5, Dopri8,
    or a message if diffrax/jax are not importable."""
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import diffrax
        import jax.numpy as jnp
    except Exception as exc:                       # optional peers
        return {}, f"diffrax peers skipped ({type(exc).__name__}: {exc})"
    Aj = jnp.asarray(A)
    d = A.shape[0]

    def vf(t, y, args):
        q, v = y[:d], y[d:]
        Aq = Aj @ q
        iqq = 1.0 / (q @ q)
        g = Aq * iqq - q * ((q @ Aq) * iqq * iqq) + k * q
        return jnp.concatenate([v, -(mu * v + g) / m])

    term = diffrax.ODETerm(vf)
    yj = jnp.asarray(y0)
    out = {}
    for name in ("Dopri5", "Tsit5", "Dopri8"):
        solver = getattr(diffrax, name)()

        def make(rtol, solver=solver):
            ctrl = diffrax.PIDController(rtol=rtol, atol=rtol * 1e-2)

            @jax.jit
            def run(y):
                sol = diffrax.diffeqsolve(term, solver, 0.0, T, None, y,
                                          stepsize_controller=ctrl,
                                          saveat=diffrax.SaveAt(t1=True), max_steps=10**6)
                return sol.ys[-1]

            run(yj).block_until_ready()                      # compile outside the timing
            return lambda: np.asarray(run(yj).block_until_ready())

        out[f"diffrax {name}"] = make
    return out, None


def peers(model, y0, spec, A):
    """Rows (peer, rtol, peer error, peer time, (our error, our time, our call))."""
    f = lambda t, y: ri.rhs(spec, t, y)                            # noqa: E731
    ref = solve_ivp(f, (0, T), y0, method="DOP853", rtol=1e-13, atol=1e-15).y[:, -1]

    def ours_call(method, tol):
        return lambda: nc.integrate(model, y0, t_end=T, method=method, rtol=tol,
                                    atol=tol * 1e-2, t_eval=[0.0, T]).y_final

    # our errors (deterministic), loosest rtol first
    sweep = {method: [(float(np.abs(ours_call(method, tol)() - ref).max()), tol)
                      for tol in np.logspace(-3, -13, 41)] for method in ("dopri5", "dop853")}
    makers = {f"solve_ivp {meth}": (lambda tol, meth=meth: (lambda: solve_ivp(
        f, (0, T), y0, method=meth, rtol=tol, atol=tol * 1e-2).y[:, -1]))
        for meth in ("RK45", "DOP853")}
    dfx, note = _diffrax_runners(A, y0, spec["m"], spec["mu"], spec["k"])
    makers.update(dfx)
    rows = []
    for name, make in makers.items():
        for tol in PEER_RTOLS:
            run = make(tol)
            t_peer, y = _best(run)
            e_peer = float(np.abs(y - ref).max())
            # per method, the loosest of our rtols meeting the peer's error is its
            # cheapest call (cost grows as rtol tightens); timed right after the peer
            best = None
            for method, pts in sweep.items():
                ok = [(e, t) for e, t in pts if e <= e_peer]
                if not ok:
                    continue
                e, our_tol = ok[0]
                t_ours, _ = _best(ours_call(method, our_tol))
                if best is None or t_ours < best[1]:
                    best = (e, t_ours, f"{method} {our_tol:.1e}")
            rows.append((name, tol, e_peer, t_peer, best))
    return rows, note


def print_peers(rows, note):
    print("### Peers side by side: M1 Damped, RayleighQuotient d=8, T=20\n")
    print("Each peer at rtol (atol = rtol/100); ours = the cheaper of our dopri5 and dop853 "
          "calls at the loosest rtol (swept over 1e-3 … 1e-13, 4 per decade) whose final "
          "error is at most the peer's, timed right after the peer.  Best of 5; diffrax "
          "jit-compiled beforehand, x64.\n")
    if note:
        print(f"*{note}*\n")
    print("| peer | rtol | peer error | peer time | ours (method, rtol) | our error | "
          "our time | peer / ours |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tol, e_peer, t_peer, best in rows:
        if best is None:
            print(f"| {name} | {tol:.0e} | {e_peer:.1e} | {_fmt(t_peer)} | — | — | — | — |")
            continue
        e, t, which = best
        print(f"| {name} | {tol:.0e} | {e_peer:.1e} | {_fmt(t_peer)} | {which} | {e:.1e} | "
              f"{_fmt(t)} | {t_peer / t:.1f}× |")
    print()


# -- grids (issue 17 item 5) -----------------------------------------------------------------
GRID_M = np.linspace(0.2, 2.0, 32)
GRID_MU = np.linspace(0.05, 1.5, 32)
GRID_K = 0.02
GRID_H = 1e-2
GRID_RTOLS = (1e-6, 1e-8)
GRID_THREADS = 2
GRID_ROUNDS = 3                 # rounds of REPEAT calls of every grid call, in turn


def _jax_grid_runners(A, y0):
    """{name: callable -> (1024, 2d) final states} for the JAX leapfrog and, per rtol,
    diffrax Dopri5, all under jit(vmap) over the grid (compiled outside the timing); or a
    message when jax is missing."""
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax
    except Exception as exc:                       # optional peers
        return {}, f"JAX peers skipped ({type(exc).__name__}: {exc})"
    Aj = jnp.asarray(A)
    d = A.shape[0]
    k = GRID_K
    ms, mus = np.meshgrid(GRID_M, GRID_MU, indexing="ij")
    mj, muj = jnp.asarray(ms.ravel()), jnp.asarray(mus.ravel())
    yj = jnp.asarray(y0)
    N = int(round(T / GRID_H))

    def grad(q):
        Aq = Aj @ q
        iqq = 1.0 / (q @ q)
        return Aq * iqq - q * ((q @ Aq) * iqq * iqq) + k * q

    def leapfrog(m, mu):
        h = GRID_H
        c, a = jnp.exp(-0.5 * h * mu / m), 0.5 * h / m

        def body(_, s):
            q, v, g = s
            v = c * v - a * g
            q = q + h * v
            g = grad(q)
            return q, c * (v - a * g), g

        q, v, _ = lax.fori_loop(0, N, body, (yj[:d], yj[d:], grad(yj[:d])))
        return jnp.concatenate([q, v])

    out = {}
    lf = jax.jit(jax.vmap(leapfrog))
    lf(mj, muj).block_until_ready()
    out["JAX leapfrog (exact damping)"] = lambda: np.asarray(lf(mj, muj).block_until_ready())
    try:
        import diffrax
    except Exception as exc:
        return out, f"diffrax skipped ({type(exc).__name__}: {exc})"

    def vf(t, y, args):
        m, mu = args
        return jnp.concatenate([y[d:], -(mu * y[d:] + grad(y[:d])) / m])

    term = diffrax.ODETerm(vf)
    for rtol in GRID_RTOLS:
        ctrl = diffrax.PIDController(rtol=rtol, atol=rtol * 1e-2)

        def one(m, mu, ctrl=ctrl):
            sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), 0.0, T, None, yj, args=(m, mu),
                                      stepsize_controller=ctrl,
                                      saveat=diffrax.SaveAt(t1=True), max_steps=10**5)
            return sol.ys[-1]

        run = jax.jit(jax.vmap(one))
        run(mj, muj).block_until_ready()
        out[f"diffrax Dopri5 {rtol:.0e}"] = (
            lambda run=run: np.asarray(run(mj, muj).block_until_ready()))
    return out, None


def grids(pot, A, y0, spec):
    """Rows (name, time, error, per point µs, per point-step ns or None)."""
    P = GRID_M.size * GRID_MU.size
    rng = np.random.default_rng(5)
    sample = rng.choice(P, 16, replace=False)
    ms, mus = np.meshgrid(GRID_M, GRID_MU, indexing="ij")
    ref = {}
    for p in sample:
        sp = dict(spec, m=ms.ravel()[p], mu=mus.ravel()[p])
        ref[p] = solve_ivp(lambda t, y, sp=sp: ri.rhs(sp, t, y), (0, T), y0, method="DOP853",
                           rtol=1e-13, atol=1e-15).y[:, -1]

    def err(Y):
        return max(float(np.abs(Y[p] - ref[p]).max()) for p in sample)

    def ours(method, **kw):
        return lambda: nc.scan_integrate(Damped, pot, y0, t_end=T, method=method, m=GRID_M,
                                         mu=GRID_MU, k=GRID_K, threads=GRID_THREADS,
                                         **kw).y_final.reshape(P, -1)

    calls = {f"ours conformal-verlet h={GRID_H:g}": ours("conformal-verlet", h=GRID_H),
             f"ours conformal-verlet h={GRID_H:g}, 1 thread": (
                 lambda: nc.scan_integrate(Damped, pot, y0, t_end=T,
                                           method="conformal-verlet", m=GRID_M, mu=GRID_MU,
                                           k=GRID_K, threads=1,
                                           h=GRID_H).y_final.reshape(P, -1))}
    for rtol in GRID_RTOLS:
        for method in ("dopri5", "dop853"):
            calls[f"ours {method} {rtol:.0e}"] = ours(method, rtol=rtol, atol=rtol * 1e-2)
    peers_, note = _jax_grid_runners(A, y0)
    rows = {}
    N = int(round(T / GRID_H))
    # round robin: every call is timed in every round (best of REPEAT each), so a burst
    # of load from other jobs on the shared machine hits all of them alike; best of all
    todo = list(peers_.items()) + list(calls.items())
    best = {}
    for _ in range(GRID_ROUNDS):
        for name, run in todo:
            got = _best(run)
            if name not in best or got[0] < best[name][0]:
                best[name] = got
    for name, _ in todo:
        t, Y = best[name]
        steps = N if "verlet" in name or "leapfrog" in name else None
        rows[name] = (t, err(Y), t / P * 1e6, None if steps is None else t / (P * steps) * 1e9,
                      Y)
    return rows, note


def print_grids(rows, note):
    print(f"### Grids: scan_integrate, 32 m × 32 μ, M1 Damped, RayleighQuotient d=8, T={T:g}"
          f", {GRID_THREADS} threads\n")
    print(f"Best of {GRID_ROUNDS * REPEAT} calls (the whole grid each; {GRID_ROUNDS} rounds "
          "over all the calls in turn, so load from other jobs hits them alike); error = largest "
          "max-abs final error over 16 sampled points against scipy DOP853 at rtol 1e-13; "
          "JAX under jit(vmap) over the 1024 points, compiled beforehand, x64, its default "
          "threads.\n")
    if note:
        print(f"*{note}*\n")
    print("| call | time (grid) | per point | per point-step | max error (16 points) |")
    print("|---|---|---|---|---|")
    for name, (t, e, pp, ps, _) in rows.items():
        print(f"| {name} | {_fmt(t)} | {pp:.1f} µs | "
              f"{'—' if ps is None else f'{ps:.1f} ns'} | {e:.1e} |")
    print()

    def ratio(a, b):
        return f"{rows[a][0] / rows[b][0]:.1f}×" if a in rows and b in rows else "—"

    lf = "JAX leapfrog (exact damping)"
    cv = f"ours conformal-verlet h={GRID_H:g}"
    print("| comparison | peer / ours |")
    print("|---|---|")
    print(f"| {lf} / {cv} | {ratio(lf, cv)} |")
    if lf in rows and cv in rows:
        print(f"| (same scheme: largest |ours − JAX| {np.abs(rows[lf][4] - rows[cv][4]).max():.1e})"
              " | |")
    for rtol in GRID_RTOLS:
        for method in ("dopri5", "dop853"):
            a, b = f"diffrax Dopri5 {rtol:.0e}", f"ours {method} {rtol:.0e}"
            print(f"| {a} / {b} | {ratio(a, b)} |")
    print()


# -- cost of a call (docs/integrators.md §10) ----------------------------------------------
COST_RTOLS = (1e-6, 1e-8, 1e-10)
COST_CALLS = 3000


def _min_us(fn, n=COST_CALLS):
    """Smallest of n timings of fn(), in µs (perf_counter_ns; the minimum, because the
    machine is shared and every disturbance only adds)."""
    best = np.inf
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, time.perf_counter_ns() - t0)
    return best / 1e3


def cost(model, y0):
    """Rows (label, nfev, whole call µs, kernel alone µs)."""
    from noether_core import _bridge

    rows = []
    for tol in COST_RTOLS:
        kw = dict(t_end=T, method="dop853", rtol=tol, atol=tol * 1e-2)
        r = nc.integrate(model, y0, t_eval=[0.0, T], **kw)
        whole = _min_us(lambda kw=kw: nc.integrate(model, y0, t_eval=[0.0, T], **kw))
        inputs = model.kernel_inputs()
        plan = _bridge.IntegratePlan(method=5, t0=0.0, t_end=T, h=0.0,
                                     t_eval=np.array([0.0, T]), rtol=tol, atol=tol * 1e-2,
                                     max_steps=100_000)
        rec = _bridge.Trajectory(np.empty(2), np.empty((2, y0.size)))
        kernel = _min_us(lambda plan=plan, rec=rec, inputs=inputs: _bridge.run_integrate(
            inputs, y0.copy(), plan, rec))
        rows.append((f"rtol {tol:.0e}, t_eval=[0, T]", r.nfev, whole, kernel))
        if tol == COST_RTOLS[0]:
            r = nc.integrate(model, y0, **kw)
            rows.append((f"rtol {tol:.0e}, no t_eval (every step recorded)", r.nfev,
                         _min_us(lambda kw=kw: nc.integrate(model, y0, **kw)), None))
    zero = _min_us(lambda: nc.integrate(model, y0, t_end=0.0, method="dop853",
                                        t_eval=[0.0, 0.0]))
    rows.append(("t_end = t0 (no step: the fixed cost)", 0, zero, None))
    return rows


def print_cost(rows):
    print("### Cost of one `integrate(method=\"dop853\")` call: M1 Damped, RayleighQuotient "
          "d=8, T=20\n")
    print(f"Smallest of {COST_CALLS} calls each (perf_counter_ns); kernel alone = "
          "`_bridge.run_integrate` on inputs built beforehand; facade = whole − kernel.\n")
    print("| call | nfev | whole call | kernel alone | facade | kernel per RHS |")
    print("|---|---|---|---|---|---|")
    for label, nfev, whole, kernel in rows:
        if kernel is None:
            print(f"| {label} | {nfev} | {whole:.1f} µs | — | — | — |")
        else:
            print(f"| {label} | {nfev} | {whole:.1f} µs | {kernel:.1f} µs | "
                  f"{whole - kernel:.1f} µs | {kernel / nfev * 1e3:.0f} ns |")
    print()


def main():
    pot, A, q0, v0 = _problem()
    if "--cost" in sys.argv:
        print_cost(cost(Damped(pot, 0.5, 0.3, 0.02), np.concatenate([q0, v0])))
        return
    if "--grids" in sys.argv:
        grad = lambda q: rp.rayleigh(q, A)[1]                      # noqa: E731
        s1 = {"kind": "damped", "m": 0.5, "mu": 0.3, "k": GRID_K, "grad": grad}
        grows, gnote = grids(pot, A, np.concatenate([q0, v0]), s1)
        print_grids(grows, gnote)
        return
    grad = lambda q: rp.rayleigh(q, A)[1]                          # noqa: E731
    m1 = Damped(pot, 0.5, 0.3, 0.02)
    m2 = RadialAngular(pot, 0.5, 0.3, 0.02)
    s1 = {"kind": "damped", "m": 0.5, "mu": 0.3, "k": 0.02, "grad": grad}
    s2 = {"kind": "radang", "m": 0.5, "mu": 0.3, "k": 0.02, "reduced": False, "grad": grad}
    y1 = np.concatenate([q0, v0])
    prows, pnote = peers(m1, y1, s1, A)
    if "--peers-only" in sys.argv:
        print_peers(prows, pnote)
        return
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
    print_peers(prows, pnote)
    grows, gnote = grids(pot, A, y1, s1)
    print_grids(grows, gnote)
    print("Machine:\n\n```\n" + lscpu.rstrip() + "\n```\n")
    print(f"Python {platform.python_version()}, NumPy {numpy.__version__}, "
          f"SciPy {scipy.__version__}, noether_core {nc.__version__}.\n")


if __name__ == "__main__":
    main()
