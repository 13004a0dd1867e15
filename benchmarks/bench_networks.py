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
# noether_core

def ours_train(pot, q0, steps, B, charges, repeat):
    rule = nc.rules.SGD(lr=LR, momentum=MOM, weight_decay=WD)
    bs = None if B == N else B

    def run():
        return nc.train(rule, pot, q0, steps, batch_size=bs, seed=0, record_every=steps,
                        charges=charges, record_q=False)
    run()
    t = _best(run, repeat)
    return t / steps * 1e6, run().loss[-1]


def ours_scan(pot, q0, steps, B, lrs, wds, threads, repeat):
    def run():
        return nc.scan(nc.rules.SGD, pot, q0, steps=steps, batch_size=B, threads=threads,
                       charges=False, progress=False, momentum=MOM, lr=lrs,
                       weight_decay=wds, seeds=0)
    t = _best(run, repeat)
    return t / (steps * len(lrs) * len(wds)) * 1e6


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


def jax_rows(X, y, q0, steps_b, steps_f, steps_s, lrs, wds, repeat):
    try:
        jax, jnp, tb, tf, tv = jax_fns(X, y)
    except ImportError:
        return None
    q0j = jnp.asarray(q0)
    idx = jnp.asarray(batch_indices(steps_b, 32, 1))

    def run_b():
        return jax.block_until_ready(tb(q0j, idx, LR, WD))
    run_b()
    t_b = _best(run_b, repeat) / steps_b * 1e6

    def run_f():
        return jax.block_until_ready(tf(q0j, steps_f, LR, WD))
    run_f()
    t_f = _best(run_f, repeat) / steps_f * 1e6
    loss_f = float(run_f()[1])
    L, W = np.meshgrid(lrs, wds, indexing="ij")
    idx_s = jnp.asarray(batch_indices(steps_s, 32, 2, points=L.size))
    lj, wj = jnp.asarray(L.ravel()), jnp.asarray(W.ravel())

    def run_s():
        return jax.block_until_ready(tv(q0j, idx_s, lj, wj))
    run_s()
    t_s = _best(run_s, repeat) / (steps_s * L.size) * 1e6
    return t_b, t_f, t_s, loss_f


# ---------------------------------------------------------------------------------------
# torch, float64, one thread, eager

def torch_rows(X, y, q0, steps_b, steps_f, repeat):
    try:
        import torch
    except ImportError:
        return None
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
    idx = torch.from_numpy(batch_indices(steps_b, 32, 1))
    run(5, idx)
    t_b = _best(lambda: run(steps_b, idx), repeat) / steps_b * 1e6
    t_f = _best(lambda: run(steps_f, None), repeat) / steps_f * 1e6
    return t_b, t_f, run(steps_f, None)


# ---------------------------------------------------------------------------------------

def _fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke test)")
    ap.add_argument("--skip", default="", help="comma list of jax,torch to leave out")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    k = 10 if args.quick else 1
    sb, sf, ss, st_b, st_f = 20000 // k, 300 // k, 1000 // k, 2000 // k, 100 // k
    repeat = 2 if args.quick else 3
    lrs, wds = np.geomspace(0.01, 0.2, 8), np.geomspace(1e-5, 1e-2, 8)
    X, y, pot, q0 = problem()
    print(machine())
    print(f"BatchNormMLP N={N}, D={D}, widths={WIDTHS}, C={C}; SGD lr={LR}, momentum={MOM}, "
          f"weight decay={WD}; float64\n")

    load0 = _load()
    o_b, _ = ours_train(pot, q0, sb, 32, False, repeat)
    o_bc, _ = ours_train(pot, q0, sb, 32, True, repeat)
    o_f, loss_f = ours_train(pot, q0, sf, N, False, repeat)
    loss_ft = ours_train(pot, q0, st_f, N, False, 1)[1]
    o_fc, _ = ours_train(pot, q0, sf, N, True, repeat)
    o_s = ours_scan(pot, q0, ss, 32, lrs, wds, 2, repeat)
    o_s1 = ours_scan(pot, q0, ss, 32, lrs, wds, 1, repeat)
    load1 = _load()
    j = None if "jax" in skip else jax_rows(X, y, q0, sb, sf, ss, lrs, wds, repeat)
    load2 = _load()
    t = None if "torch" in skip else torch_rows(X, y, q0, st_b, st_f, repeat)
    load3 = _load()

    rows = [("one trajectory, batch 32 (µs/step)", o_b, o_bc, j and j[0], t and t[0], 32),
            ("one trajectory, full batch 2048 (µs/step)", o_f, o_fc, j and j[1], t and t[1],
             N),
            ("8 × 8 (lr × wd) scan, batch 32, 2 threads (µs/point-step)", o_s, None,
             j and j[2], None, 32)]
    print("| workload | ours | ours, charges on | JAX | torch float64 (1 thread) "
          "| JAX / ours | torch / ours | GFLOP/s (ours) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, o, oc, jj, tt, B in rows:
        gf = flops_per_step(B) / (o * 1e3)
        print(f"| {name} | {_fmt(o)} | {_fmt(oc)} | {_fmt(jj)} | {_fmt(tt)} "
              f"| {_fmt(jj and jj / o, 2)} | {_fmt(tt and tt / o, 2)} | {gf:.1f} |")
    print(f"\nscan on 1 thread: {o_s1:.1f} µs/point-step (2 threads: {o_s:.1f}; "
          f"speed-up {o_s1 / o_s:.2f})")
    print(f"load average: {load0:.2f} before ours, {load1:.2f} after, {load2:.2f} after JAX, "
          f"{load3:.2f} after torch")
    print(f"full-batch loss after {sf} steps: ours {loss_f:.15g}"
          + (f", JAX {j[3]:.15g}" if j else "")
          + (f"; after {st_f} steps: ours {loss_ft:.15g}, torch {t[2]:.15g}" if t else ""))
    peak = measured_peak()
    for B in (32, N):
        print(f"FLOPs per step at batch {B}: {flops_per_step(B):,} (matrix products)")
    if peak:
        fma, ma = peak
        print(f"measured one-core peak: {fma:.1f} GFLOP/s with FMA, {ma:.1f} GFLOP/s with "
              "separate multiplies and adds")
        for name, o, _, _, _, B in rows[:2]:
            gf = flops_per_step(B) / (o * 1e3)
            print(f"  {name}: {gf:.1f} GFLOP/s = {gf / fma:.0%} of the FMA peak")
    else:
        print("peak not measured (no AVX-512 or no gcc)")


if __name__ == "__main__":
    main()
