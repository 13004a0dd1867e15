"""Peer benchmark of noether_core.scan (issue 16): ours against JAX + optax and numba.

One process runs, side by side and in ns per point-step (wall time / (points × steps)):

* **ours**: ``nc.scan`` (the SIMD lane kernel, charges off and on), 2 threads;
* **JAX + optax**: the program a user would write instead, ``jit(vmap(lax.scan))`` over
  the flattened grid, x64 on CPU, the gradient by ``jax.value_and_grad`` (compile time
  excluded: the jitted function is called once before timing);
* **numba**: a plain ``@njit(parallel=True)`` loop over the grid points (``prange``), the
  rule written out per coordinate, no fastmath.

Tables:

1. the 32 × 32 grid (lr × weight decay) × 2000 steps on RayleighQuotient d = 8 for
   SGD(momentum 0.9), AdamW, Adam (L2 weight decay) and RMSprop (L2 weight decay);
2. the d-scaling table: a 16 × 16 grid × 500 steps for d = 8, 32, 128, 512;
3. the fixed cost of one scan call (8 points × 1 step).

Every figure is the best of ``--repeat`` (3) timings; ratios are taken within the run.
Peers that are not importable are skipped with a message (``pip install
noether_core[bench]`` installs them).  Usage::

    PYTHONPATH=.:python python benchmarks/bench_peers_scan.py            # everything
    PYTHONPATH=.:python python benchmarks/bench_peers_scan.py --quick    # smaller grids
    ... --cpu-time     # CPU seconds of the process instead of wall seconds (one thread:
                       # with more, a worker's time is counted at scheduler ticks only,
                       # _common.alternate_best)
    ... --threads 1    # ours and numba on one thread (JAX: XLA_FLAGS, see below)

For one-thread JAX set ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"`` in the environment.  On a machine shared with other
jobs, ``OMP_WAIT_POLICY=passive`` keeps OpenMP's idle threads from spinning, which
otherwise dominates the small grids of the d-scaling table (docs/scan.md §"Lanes").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, numba_rayleigh_grad, table  # noqa: E402

import noether_core as nc  # noqa: E402

RULES = ("SGD", "AdamW", "Adam", "RMSprop")
_THREADS = {"n": 2}
WD_AXIS = (0.0, 1e-2)          # weight decay range of the grid (log-spaced above 0)


def _problem(d, seed=2026):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    return (M + M.T) / 2, rng.normal(size=d)


def _grid(n):
    lr = np.geomspace(1e-3, 0.1, n)
    wd = np.concatenate([[0.0], np.geomspace(1e-5, WD_AXIS[1], n - 1)])
    return lr, wd


_CPU = {"on": False}


def _best(fn, repeat):
    """Best of ``repeat`` timings: wall seconds, or with --cpu-time the CPU seconds this
    process used (every thread's; time.process_time), which a shared machine's other
    processes do not inflate the way they inflate wall time."""
    clock = time.process_time if _CPU["on"] else time.perf_counter
    best, out = np.inf, None
    for _ in range(repeat):
        t = clock()
        out = fn()
        best = min(best, clock() - t)
    return best, out


# ---------------------------------------------------------------------------------------
# ours


def ours(rule, A, q0, lr, wd, steps, charges=False, threads=None):
    pot = nc.potentials.RayleighQuotient(A)
    cls = {"SGD": nc.rules.SGD, "AdamW": nc.rules.AdamW, "Adam": nc.rules.Adam,
           "RMSprop": nc.rules.RMSprop}[rule]
    extra = {"momentum": 0.9} if rule == "SGD" else {}

    threads = threads or _THREADS["n"]

    def run():
        return nc.scan(cls, pot, q0, steps=steps, lr=lr, weight_decay=wd, charges=charges,
                       threads=threads, progress=False, **extra)
    return run


# ---------------------------------------------------------------------------------------
# JAX + optax


def jax_runner(rule, A, q0, lr, wd, steps):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    A_, q0_ = jnp.asarray(A), jnp.asarray(q0)

    def loss(q):
        return 0.5 * (q @ (A_ @ q)) / (q @ q)

    def make(lr_, wd_):
        if rule == "SGD":
            return optax.chain(optax.add_decayed_weights(wd_), optax.sgd(lr_, momentum=0.9))
        if rule == "AdamW":
            return optax.adamw(lr_, weight_decay=wd_)
        if rule == "Adam":
            return optax.chain(optax.add_decayed_weights(wd_), optax.adam(lr_))
        return optax.chain(optax.add_decayed_weights(wd_),
                           optax.rmsprop(lr_, decay=0.99, eps=1e-8))

    def one(lr_, wd_):
        opt = make(lr_, wd_)

        def body(carry, _):
            q, s, fmin = carry
            f, g = jax.value_and_grad(loss)(q)
            upd, s = opt.update(g, s, q)
            return (optax.apply_updates(q, upd), s, jnp.minimum(fmin, f)), None

        (q, _, fmin), _ = jax.lax.scan(body, (q0_, opt.init(q0_), jnp.inf), None,
                                       length=steps)
        return q, fmin

    L, W = np.meshgrid(lr, wd, indexing="ij")
    Lj, Wj = jnp.asarray(L.ravel()), jnp.asarray(W.ravel())
    fn = jax.jit(jax.vmap(one))
    jax.block_until_ready(fn(Lj, Wj))                       # compile

    def run():
        return jax.block_until_ready(fn(Lj, Wj))
    return run


# ---------------------------------------------------------------------------------------
# numba


_NUMBA = {}


def _numba_kernels():
    if _NUMBA:
        return _NUMBA
    import numba
    from numba import njit, prange

    grad = numba_rayleigh_grad()

    @njit(parallel=True)
    def run(kind, A, q0, lr, wd, steps, out_q, out_fmin):
        P, d = lr.shape[0], q0.shape[0]
        for p in prange(P):
            q = q0.copy()
            g = np.empty(d)
            Aq = np.empty(d)
            m1 = np.zeros(d)
            m2 = np.zeros(d)
            fmin = np.inf
            a, k = lr[p], wd[p]
            for n in range(steps):
                f = grad(A, q, g, Aq)
                fmin = min(fmin, f)
                if kind == 0:                        # SGD momentum 0.9, L2
                    for i in range(d):
                        di = g[i] + k * q[i]
                        m1[i] = di if n == 0 else 0.9 * m1[i] + di
                        q[i] -= a * m1[i]
                elif kind == 3:                      # RMSprop alpha 0.99, L2
                    for i in range(d):
                        di = g[i] + k * q[i]
                        m2[i] = 0.99 * m2[i] + 0.01 * di * di
                        q[i] -= a * di / (np.sqrt(m2[i]) + 1e-8)
                else:                                # Adam (1: decoupled, 2: L2)
                    bc1 = 1.0 - 0.9 ** (n + 1)
                    bc2 = 1.0 - 0.999 ** (n + 1)
                    for i in range(d):
                        di = g[i]
                        if kind == 1:
                            q[i] *= 1.0 - a * k
                        else:
                            di += k * q[i]
                        m1[i] = 0.9 * m1[i] + 0.1 * di
                        m2[i] = 0.999 * m2[i] + 0.001 * di * di
                        q[i] -= (a / bc1) * m1[i] / (np.sqrt(m2[i]) / np.sqrt(bc2) + 1e-8)
            out_q[p] = q
            out_fmin[p] = fmin

    _NUMBA["run"] = run
    _NUMBA["version"] = numba.__version__
    return _NUMBA


def numba_runner(rule, A, q0, lr, wd, steps, threads=None):
    k = _numba_kernels()
    import numba

    threads = threads or _THREADS["n"]
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    L, W = np.meshgrid(lr, wd, indexing="ij")
    L, W = L.ravel().copy(), W.ravel().copy()
    kind = RULES.index(rule)
    out_q, out_f = np.empty((L.size, len(q0))), np.empty(L.size)
    k["run"](kind, A, q0, L, W, 2, out_q, out_f)             # compile

    def run():
        k["run"](kind, A, q0, L, W, steps, out_q, out_f)
        return out_q
    return run


# ---------------------------------------------------------------------------------------


def _peers():
    have = {}
    for name, mod in (("jax", "optax"), ("numba", "numba")):
        try:
            __import__(mod)
            if name == "jax":
                __import__("jax")
            have[name] = True
        except ImportError as exc:
            print(f"[skipped] {name}: {exc} (pip install noether_core[bench])")
            have[name] = False
    return have


def _ns(t, points, steps):
    return 1e9 * t / (points * steps)


def grid_table(n, steps, repeat, have, rules=RULES):
    A, q0 = _problem(8)
    lr, wd = _grid(n)
    P = n * n
    rows = []
    for rule in rules:
        t_off, res = _best(ours(rule, A, q0, lr, wd, steps), repeat)
        t_on, _ = _best(ours(rule, A, q0, lr, wd, steps, charges=True), repeat)
        row = [rule, res.kernel, f"{_ns(t_off, P, steps):.1f}", f"{_ns(t_on, P, steps):.1f}"]
        for name, runner in (("jax", jax_runner), ("numba", numba_runner)):
            if have[name]:
                t, _ = _best(runner(rule, A, q0, lr, wd, steps), repeat)
                row += [f"{_ns(t, P, steps):.1f}", f"{t / t_off:.2f}x"]
            else:
                row += ["—", "—"]
        rows.append(row)
    return table(rows, ["rule", "kernel", "ours", "ours, charges on", "JAX+optax",
                        "ours vs JAX", "numba", "ours vs numba"])


def scaling_table(n, steps, dims, repeat, have, rules=("SGD", "AdamW")):
    rows = []
    P = n * n
    for d in dims:
        A, q0 = _problem(d)
        lr, wd = _grid(n)
        lr = lr / max(1.0, d / 8)                       # keep the runs finite as d grows
        for rule in rules:
            t, _ = _best(ours(rule, A, q0, lr, wd, steps), repeat)
            row = [d, rule, f"{_ns(t, P, steps):.1f}"]
            for name, runner in (("jax", jax_runner), ("numba", numba_runner)):
                if have[name]:
                    tp, _ = _best(runner(rule, A, q0, lr, wd, steps), repeat)
                    row += [f"{_ns(tp, P, steps):.1f}", f"{tp / t:.2f}x"]
                else:
                    row += ["—", "—"]
            rows.append(row)
    return table(rows, ["d", "rule", "ours", "JAX+optax", "ours vs JAX", "numba",
                        "ours vs numba"])


def fixed_cost(repeat=50):
    A, q0 = _problem(8)
    pot = nc.potentials.RayleighQuotient(A)
    rows = []
    for rule, cls in (("SGD", nc.rules.SGD), ("AdamW", nc.rules.AdamW)):
        for P in (8, 256):
            lr = np.geomspace(1e-3, 0.1, P)

            def run(cls=cls, lr=lr):
                return nc.scan(cls, pot, q0, steps=1, lr=lr, charges=False, progress=False)
            run()
            t, _ = _best(run, repeat)
            rows.append([rule, P, f"{1e3 * t:.3f}"])
    return table(rows, ["rule", "points", "ms per scan call (1 step)"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16x16 grid, 500 steps, d <= 128")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-scaling", action="store_true", help="skip the d-scaling table")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time CPU seconds of the process (all threads), not wall seconds; "
                         "exact for one thread only (a running worker's time is counted at "
                         "scheduler ticks)")
    ap.add_argument("--threads", type=int, default=2, help="threads of ours and numba")
    ap.add_argument("--scaling-rules", default="SGD,AdamW",
                    help="rules of the d-scaling table, comma-separated (of SGD, AdamW, "
                         "Adam, RMSprop)")
    args = ap.parse_args(argv)
    _CPU["on"] = args.cpu_time
    _THREADS["n"] = args.threads
    print(machine())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    have = _peers()
    n, steps = (16, 500) if args.quick else (32, 2000)
    what = "CPU ns" if args.cpu_time else "ns"
    print(f"\n### {n} x {n} grid (lr x weight decay) x {steps} steps, RayleighQuotient "
          f"d = 8, {args.threads} threads, {what} per point-step (best of {args.repeat})\n")
    print(grid_table(n, steps, args.repeat, have))
    if not args.no_scaling:
        dims = (8, 32, 128) if args.quick else (8, 32, 128, 512)
        print(f"\n### 16 x 16 grid x 500 steps by dimension, {what} per point-step\n")
        print(scaling_table(16, 500, dims, args.repeat, have,
                            rules=tuple(args.scaling_rules.split(","))))
    print("\n### fixed cost per scan call\n")
    print(fixed_cost())


if __name__ == "__main__":
    main()
