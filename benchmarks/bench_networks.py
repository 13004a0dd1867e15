"""Benchmark of the network potentials (issue 20): the demo's BatchNormMLP against JAX and
a torch loop, in one run, side by side.

Workload (the demo's network): ``gaussian_mixture(2048, 16, classes=4)``, widths (32, 32),
4 classes, eps = 0, SGD with momentum 0.9 and weight decay 5e-4 (torch semantics), float64.

* one trajectory at batch 32 and at full batch 2048 (µs per step):
  ``nc.train`` (charges off, as the others compute none; and on, the default),
  JAX ``jit(lax.scan)`` over the steps, a torch float64 eager loop on one thread;
* an 8 × 8 (lr × weight decay) scan at batch 32 on 2 threads (µs per point-step):
  ``nc.scan(threads=2)`` against JAX ``jit(vmap(lax.scan))`` (XLA's own thread pool on the
  same two cores), each point with its own minibatch stream.

Each figure is the best of a few repeats (the machine is shared: the 1-minute load average
is printed beside each row).  The FLOP count per step is that of the matrix products
(forward 2B·Σ n_in·n_out, backward the same for the weights plus 2B·Σ_{l>1} n_in·n_out for
the inputs); BatchNorm, ReLU and the softmax add O(B·Σw) more, not counted.  The peak is
measured here: a loop of independent 512-bit FMAs (``-mavx512f -mfma``) and, since the
kernels are built without FMA contraction (-ffp-contract=off, docs/potentials.md §10), a
loop of independent multiplies and adds in equal numbers; both are printed.

Usage::

    PYTHONPATH=.:python python benchmarks/bench_networks.py           # the full table
    PYTHONPATH=.:python python benchmarks/bench_networks.py --quick   # fewer steps
    python benchmarks/bench_networks.py --demo [--before TREE] [--rounds 4]

``--demo`` times the whole ``python -m noether_core demo`` (default settings, figure
written to a temporary folder) in fresh processes: wall time and the CPU time of the
process (user + sys, all its threads), this tree and, with ``--before``, another source tree
with built kernels (e.g. ``git archive d5efc8f`` unpacked, the .so files copied in), the
rounds interleaved so that both meet the machine's load alike; it checks that both print
the same report apart from timings and paths.

JAX and torch are optional (a missing one prints "—").  Nothing is written to RESULTS.md.
"""
import os

# single-threaded NumPy BLAS and torch intra-op pool; JAX runs in this process with its
# own pool (2 cores here), which is what the scan comparison wants
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import BUILD, machine  # noqa: E402

import noether_core as nc  # noqa: E402

N, D, WIDTHS, C = 2048, 16, (32, 32), 4
LR, MOM, WD = 0.05, 0.9, 5e-4


def _load():
    return os.getloadavg()[0]


def _best(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def flops_per_step(B):
    dims = (D,) + WIDTHS + (C,)
    fwd = sum(2 * B * dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    bwd_x = sum(2 * B * dims[i] * dims[i + 1] for i in range(1, len(dims) - 1))
    return 2 * fwd + bwd_x


# ---------------------------------------------------------------------------------------
# the machine's peak, measured

_PEAK_C = r"""
#include <immintrin.h>
#include <stdint.h>
/* n iterations of 12 independent chains of 512-bit FMAs (fma = 1), or of a multiply then
   an add (fma = 0: the instruction mix of a build without FMA contraction) */
double peak(int64_t n, int fma) {
    __m512d a[12], x = _mm512_set1_pd(0.5), y = _mm512_set1_pd(1.0);   /* a -> 2 */
    for (int k = 0; k < 12; k++) a[k] = _mm512_set1_pd((double) k);
    if (fma) {
        for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 12
            for (int k = 0; k < 12; k++) a[k] = _mm512_fmadd_pd(a[k], x, y);
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
#pragma GCC unroll 12
            for (int k = 0; k < 12; k++) a[k] = _mm512_add_pd(_mm512_mul_pd(a[k], x), y);
        }
    }
    double s = 0; for (int k = 0; k < 12; k++) s += _mm512_reduce_add_pd(a[k]);
    return s;
}
"""


def measured_peak():
    """(FMA peak, mul+add peak) in GFLOP/s on one core, or None without AVX-512/gcc."""
    try:
        os.makedirs(BUILD, exist_ok=True)
        src, lib = os.path.join(BUILD, "peak.c"), os.path.join(BUILD, "peak.so")
        with open(src, "w") as fh:
            fh.write(_PEAK_C)
        subprocess.run(["gcc", "-O3", "-ffp-contract=off", "-mavx512f", "-mfma", "-shared",
                        "-fPIC", src, "-o", lib], check=True, capture_output=True)
        f = ctypes.CDLL(lib).peak
        f.restype, f.argtypes = ctypes.c_double, [ctypes.c_int64, ctypes.c_int]
        with open("/proc/cpuinfo") as fh:
            if " avx512f" not in fh.read():
                return None
    except (OSError, subprocess.CalledProcessError):
        return None
    n = 20_000_000
    t_fma = _best(lambda: f(n, 1), 3)
    t_ma = _best(lambda: f(n, 0), 3)
    return 12 * 8 * 2 * n / t_fma / 1e9, 12 * 8 * 2 * n / t_ma / 1e9


# ---------------------------------------------------------------------------------------
# the problem, and its batch streams

def problem():
    X, y = nc.datasets.gaussian_mixture(N, D, classes=C, seed=0)
    pot = nc.potentials.BatchNormMLP(X, y, widths=WIDTHS)
    return X, y, pot, pot.init(seed=0)


def batch_indices(steps, B, seed, points=None):
    rng = np.random.default_rng(seed)
    shape = (steps, B) if points is None else (points, steps, B)
    return np.stack([rng.choice(N, B, replace=False) for _ in range(int(np.prod(shape[:-1])))]
                    ).reshape(shape)


# ---------------------------------------------------------------------------------------
# noether_core.  Every implementation returns {workload: (run, work units)}: run() does
# the whole job once; the time per unit is what the table shows.

def ours_jobs(pot, q0, sb, sf, ss, lrs, wds):
    rule = nc.rules.SGD(lr=LR, momentum=MOM, weight_decay=WD)

    def train(steps, bs, charges):
        return lambda: nc.train(rule, pot, q0, steps, batch_size=bs, seed=0,
                                record_every=steps, charges=charges, record_q=False)

    def scan(threads):
        return lambda: nc.scan(nc.rules.SGD, pot, q0, steps=ss, batch_size=32,
                               threads=threads, charges=False, progress=False,
                               momentum=MOM, lr=lrs, weight_decay=wds, seeds=0)

    def pair_of_trains():
        """The 8 x 8 points as train calls, two at a time on two threads (train releases
        the GIL for its whole loop): the scan's arithmetic without its chunking."""
        from concurrent.futures import ThreadPoolExecutor
        pts = [(lr, wd) for lr in lrs for wd in wds]

        def one(p):
            return nc.train(nc.rules.SGD(lr=p[0], momentum=MOM, weight_decay=p[1]), pot, q0,
                            ss, batch_size=32, seed=0, record_every=ss, charges=False,
                            record_q=False)
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(one, pts))
    P = len(lrs) * len(wds)
    return {"b32": (train(sb, 32, False), sb), "b32c": (train(sb, 32, True), sb),
            "full": (train(sf, None, False), sf), "fullc": (train(sf, None, True), sf),
            "scan2": (scan(2), ss * P), "scan1": (scan(1), ss * P),
            "pairs": (pair_of_trains, ss * P)}


# ---------------------------------------------------------------------------------------
# JAX

def jax_fns(X, y):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    dims = (D,) + WIDTHS + (C,)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(q, xb, yb):
        off, h = 0, xb
        for layer in range(len(WIDTHS)):
            n_in, w = dims[layer], dims[layer + 1]
            W = q[off:off + w * n_in].reshape(w, n_in)
            g, b = q[off + w * n_in:off + w * n_in + w], q[off + w * n_in + w:
                                                          off + w * n_in + 2 * w]
            off += w * n_in + 2 * w
            z = h @ W.T
            mu = z.mean(0)
            var = ((z - mu) ** 2).mean(0)
            h = jax.nn.relu(g * (z - mu) / jnp.sqrt(var) + b)
        Wo = q[off:off + C * WIDTHS[-1]].reshape(C, WIDTHS[-1])
        logits = h @ Wo.T + q[off + C * WIDTHS[-1]:]
        lse = jax.nn.logsumexp(logits, axis=1)
        return jnp.mean(lse - jnp.take_along_axis(logits, yb[:, None], 1)[:, 0])

    vg = jax.value_and_grad(loss)

    def sgd(q, buf, g, lr, wd):
        d = g + wd * q
        buf = MOM * buf + d          # buf starts at 0: the first step's buffer is d (torch)
        return q - lr * buf, buf

    def train_batches(q0, idx, lr, wd):
        def step(carry, ib):
            q, buf = carry
            f, g = vg(q, Xj[ib], yj[ib])
            q, buf = sgd(q, buf, g, lr, wd)
            return (q, buf), f
        (q, _), fs = jax.lax.scan(step, (q0, jnp.zeros_like(q0)), idx)
        return q, fs[-1]

    def train_full(q0, steps, lr, wd):
        def step(carry, _):
            q, buf = carry
            f, g = vg(q, Xj, yj)
            q, buf = sgd(q, buf, g, lr, wd)
            return (q, buf), f
        (q, _), _ = jax.lax.scan(step, (q0, jnp.zeros_like(q0)), None, length=steps)
        return q, loss(q, Xj, yj)          # the loss at the last q, as train records it

    return (jax, jnp, jax.jit(train_batches), jax.jit(train_full, static_argnums=1),
            jax.jit(jax.vmap(train_batches, in_axes=(None, 0, 0, 0))))


def jax_jobs(X, y, q0, sb, sf, ss, lrs, wds):
    try:
        jax, jnp, tb, tf, tv = jax_fns(X, y)
    except ImportError:
        return {}, None
    q0j = jnp.asarray(q0)
    idx = jnp.asarray(batch_indices(sb, 32, 1))
    L, W = np.meshgrid(lrs, wds, indexing="ij")
    idx_s = jnp.asarray(batch_indices(ss, 32, 2, points=L.size))
    lj, wj = jnp.asarray(L.ravel()), jnp.asarray(W.ravel())
    jobs = {"b32": (lambda: jax.block_until_ready(tb(q0j, idx, LR, WD)), sb),
            "full": (lambda: jax.block_until_ready(tf(q0j, sf, LR, WD)), sf),
            "scan2": (lambda: jax.block_until_ready(tv(q0j, idx_s, lj, wj)), ss * L.size)}
    for run, _ in jobs.values():
        run()                                               # compile
    return jobs, float(jobs["full"][0]()[1])


# ---------------------------------------------------------------------------------------
# torch, float64, one thread, eager

def torch_jobs(X, y, q0, sb, sf):
    try:
        import torch
    except ImportError:
        return {}, None
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(np.asarray(y, dtype=np.int64))
    dims = (D,) + WIDTHS + (C,)

    def model():
        layers, off = [], 0
        for layer in range(len(WIDTHS)):
            n_in, w = dims[layer], dims[layer + 1]
            lin = torch.nn.Linear(n_in, w, bias=False)
            # torch refuses eps = 0 in training; 1e-300 leaves var + eps = var
            bn = torch.nn.BatchNorm1d(w, eps=1e-300, track_running_stats=False)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(q0[off:off + w * n_in].reshape(w, n_in)))
                off += w * n_in
                bn.weight.copy_(torch.from_numpy(q0[off:off + w]))
                bn.bias.copy_(torch.from_numpy(q0[off + w:off + 2 * w]))
                off += 2 * w
            layers += [lin, bn, torch.nn.ReLU()]
        out = torch.nn.Linear(WIDTHS[-1], C)
        with torch.no_grad():
            out.weight.copy_(torch.from_numpy(q0[off:off + C * WIDTHS[-1]]
                                              .reshape(C, WIDTHS[-1])))
            out.bias.copy_(torch.from_numpy(q0[off + C * WIDTHS[-1]:]))
        return torch.nn.Sequential(*layers, out)

    def run(steps, idx):
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOM, weight_decay=WD)
        for k in range(steps):
            xb, yb = (Xt, yt) if idx is None else (Xt[idx[k]], yt[idx[k]])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(xb), yb)
            loss.backward()
            opt.step()
        with torch.no_grad():               # the loss at the last q, as train records it
            return float(torch.nn.functional.cross_entropy(m(Xt), yt))
    idx = torch.from_numpy(batch_indices(sb, 32, 1))
    run(5, idx)
    return ({"b32": (lambda: run(sb, idx), sb), "full": (lambda: run(sf, None), sf)},
            run(sf, None))


# ---------------------------------------------------------------------------------------

def _fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def nominal_peak():
    """16 FLOP per cycle (two 256-bit FMA pipes; Zen 4 runs a 512-bit FMA over both) at the
    clock /proc/cpuinfo reports: the textbook one-core peak, GFLOP/s."""
    try:
        with open("/proc/cpuinfo") as fh:
            mhz = next(float(ln.split(":")[1]) for ln in fh if ln.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return None
    return 16 * mhz / 1e3


def _demo_once(tree, out):
    """(wall s, CPU s of the child, its stdout) of one ``python -m noether_core demo``."""
    import re
    import resource
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{os.path.join(tree, 'python')}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "noether_core", "demo", "--out", out],
                          capture_output=True, text=True, env=env, cwd=tree, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = re.sub(r"\d+\.\d s", "<t>", proc.stdout).replace(out, "<out>")
    return wall, cpu, text


def demo_timings(before, rounds):
    """Table of the demo's wall and CPU time, this tree vs ``before`` (or alone)."""
    import tempfile
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this tree": here} | ({"before": os.path.abspath(before)} if before else {})
    got = {k: [] for k in trees}
    texts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for label, tree in trees.items():
                load = _load()
                wall, cpu, texts[label] = _demo_once(tree, os.path.join(tmp, "out"))
                got[label].append((wall, cpu, load))
    print("| tree | wall s (each round) | best wall s | CPU s (user+sys, best) | load (1 min) |")
    print("|---|---|---|---|---|")
    for label, rows in got.items():
        walls = [w for w, _, _ in rows]
        print(f"| {label} | {', '.join(f'{w:.1f}' for w in walls)} | {min(walls):.1f} "
              f"| {min(c for _, c, _ in rows):.1f} | {min(x for *_, x in rows):.2f}–"
              f"{max(x for *_, x in rows):.2f} |")
    if before:
        same = texts["this tree"] == texts["before"]
        best = {k: min(w for w, _, _ in v) for k, v in got.items()}
        print(f"speed-up (best wall): {best['before'] / best['this tree']:.2f}x; same report "
              f"apart from timings and paths: {same}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke test)")
    ap.add_argument("--skip", default="", help="comma list of jax,torch to leave out")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (best is kept)")
    ap.add_argument("--demo", action="store_true",
                    help="time `python -m noether_core demo` instead (see the docstring)")
    ap.add_argument("--before", default=None,
                    help="with --demo: another source tree to time in the same rounds")
    args = ap.parse_args(argv)
    if args.demo:
        demo_timings(args.before, args.rounds)
        return
    skip = set(filter(None, args.skip.split(",")))
    k = 10 if args.quick else 1
    sb, sf, ss, st_b, st_f = 20000 // k, 300 // k, 1000 // k, 2000 // k, 100 // k
    lrs, wds = np.geomspace(0.01, 0.2, 8), np.geomspace(1e-5, 1e-2, 8)
    X, y, pot, q0 = problem()
    print(machine())
    print(f"BatchNormMLP N={N}, D={D}, widths={WIDTHS}, C={C}; SGD lr={LR}, momentum={MOM}, "
          f"weight decay={WD}; float64\n")
    impls = {"ours": ours_jobs(pot, q0, sb, sf, ss, lrs, wds)}
    loss_j = loss_t = None
    if "jax" not in skip:
        impls["jax"], loss_j = jax_jobs(X, y, q0, sb, sf, ss, lrs, wds)
    if "torch" not in skip:
        impls["torch"], loss_t = torch_jobs(X, y, q0, st_b, st_f)
    # rounds interleave the implementations, so that each meets the machine's load alike
    best, loads = {}, []
    for _ in range(args.rounds):
        for impl, jobs in impls.items():
            for job, (run, units) in jobs.items():
                loads.append(_load())
                t = time.perf_counter()
                run()
                t = (time.perf_counter() - t) / units * 1e6
                best[impl, job] = min(best.get((impl, job), np.inf), t)
    g = best.get
    rows = [("one trajectory, batch 32 (µs/step)", "b32", 32),
            ("one trajectory, full batch 2048 (µs/step)", "full", N),
            ("8 × 8 (lr × wd) scan, batch 32, 2 threads (µs/point-step)", "scan2", 32)]
    print("| workload | ours | ours, charges on | JAX | torch float64 (1 thread) "
          "| JAX / ours | torch / ours | GFLOP/s (ours) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, job, B in rows:
        o, jj, tt = g(("ours", job)), g(("jax", job)), g(("torch", job))
        gf = flops_per_step(B) / (o * 1e3)          # aggregate over threads for the scan
        print(f"| {name} | {_fmt(o)} | {_fmt(g(('ours', job + 'c')))} | {_fmt(jj)} "
              f"| {_fmt(tt)} | {_fmt(jj and jj / o, 2)} | {_fmt(tt and tt / o, 2)} "
              f"| {gf:.1f} |")
    o1, o2, pr = g(("ours", "scan1")), g(("ours", "scan2")), g(("ours", "pairs"))
    print(f"\nscan: {o1:.1f} µs/point-step on 1 thread, {o2:.1f} on 2 (speed-up "
          f"{o1 / o2:.2f}); the same 64 points as train calls two at a time on two threads: "
          f"{pr:.1f} µs/point-step"
          + (f" ({g(('jax', 'scan2')) / pr:.2f}× JAX jit(vmap))" if ("jax", "scan2") in best
             else ""))
    print("  (the scan runs each point in chunks of K steps, K = 256 KiB / (8·(d + 2 + "
          "blocks)) = 17 here; only the last chunk evaluates its terminal state on the "
          "full data, RunSpec.skip_terminal)")
    print(f"load average (1 min) during the timings: {min(loads):.2f} to {max(loads):.2f}")
    print(f"full-batch loss after {sf} steps: ours "
          f"{ours_final_loss(pot, q0, sf):.15g}"
          + (f", JAX {loss_j:.15g}" if loss_j is not None else "")
          + (f"; after {st_f} steps: ours {ours_final_loss(pot, q0, st_f):.15g}, torch "
             f"{loss_t:.15g}" if loss_t is not None else ""))
    for B in (32, N):
        print(f"FLOPs per step at batch {B}: {flops_per_step(B):,} (matrix products)")
    peak, nom = measured_peak(), nominal_peak()
    if nom:
        print(f"nominal one-core peak: {nom:.1f} GFLOP/s (16 FLOP/cycle at the cpuinfo clock)")
    if peak:
        print(f"measured one-core peak now: {peak[0]:.1f} GFLOP/s with FMA, {peak[1]:.1f} "
              "with separate multiplies and adds (a loaded machine measures less)")
    for name, job, B in rows[:2]:
        gf = flops_per_step(B) / (g(("ours", job)) * 1e3)
        print(f"  {name}: {gf:.1f} GFLOP/s"
              + (f" = {gf / nom:.0%} of the nominal peak" if nom else "")
              + (f", {gf / peak[0]:.0%} of the measured one" if peak else ""))


def ours_final_loss(pot, q0, steps):
    run = nc.train(nc.rules.SGD(lr=LR, momentum=MOM, weight_decay=WD), pot, q0, steps,
                   record_every=steps, charges=False, record_q=False)
    return float(run.loss[-1])


if __name__ == "__main__":
    main()
