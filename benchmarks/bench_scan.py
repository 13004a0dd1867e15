"""Benchmark of noether_core.scan (issue 6): one run prints every ratio.

A 64 × 64 grid (lr × weight_decay) × 10^4 steps of SGD with momentum 0.9, full batch, on
RayleighQuotient (d = 8) and on BatchNormUnit (N = 64, d = 16), timed as

* the compiled scan with threads=1 and threads=2 (ratio (c): the parallel speed-up);
* (a) a loop of python/noether_ref reference runs, one per grid point: far too slow for
  4096 points, so a strided subsample of points is timed and the time *extrapolated*
  linearly to the whole grid (the script says so in its output);
* (b) benchmarks/numpy_batched.py: the grid vectorised in NumPy (every array (d, P),
  BLAS products, in-place ufuncs), single-threaded BLAS (OPENBLAS_NUM_THREADS=1 etc. are
  set below, before NumPy is imported, so (b) and the threads=1 scan use one core each).

Every timing records the 1-minute load average before and after it (the machine is
shared).  Usage::

    PYTHONPATH=.:python python benchmarks/bench_scan.py            # the full benchmark
    PYTHONPATH=.:python python benchmarks/bench_scan.py --quick    # 16 × 16, 10^3 steps
    ... --write        # also replace the section "## Scans" of benchmarks/RESULTS.md
    ... --mirror       # only the MirrorDescent table (issue 16): lanes vs the scalar loop

``--mirror`` prints (never writes) MirrorDescent scans of every mirror map, lanes against
the scalar loop (``lanes=False``, the same bits), on RayleighQuotient d = 8 and d = 128:
a 16 × 16 grid (lr × weight_decay; p = 3 for pnorm, D_i = 0.5 + i/d for diagonal, entropy
from |q0| + 0.1), 2000 steps (500 at d = 128), charges off and on, ``--threads``
threads, in ns per point-step; every pair is checked bitwise equal.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")   # baseline (b) on one core; scan threads are explicit

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, table, update_results  # noqa: E402
from numpy_batched import bn_unit_grad, bn_unit_proj_grad, rayleigh_grad, sgd_momentum_scan  # noqa: E402

import noether_core as nc  # noqa: E402
from noether_core._kernels.scan import lane_isas  # noqa: E402
from noether_ref import potentials as ref_pot  # noqa: E402
from noether_ref import rules as ref_rules  # noqa: E402

PREFIX = {"rayleigh": "Rayleigh", "bn": "BatchNorm"}


def _load():
    return os.getloadavg()[0]


def _timed(fn, repeat=1):
    """Best wall time of ``repeat`` calls, the last result, and the load before/after."""
    best, out, l0 = np.inf, None, _load()
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out, (l0, _load())


def _problems(n_data=64, d_bn=16, d_ray=8):
    """(name, potential, q0, NumPy baselines [(label, factory(P))], reference gradient)."""
    rng = np.random.default_rng(2026)
    M = rng.normal(size=(d_ray, d_ray))
    A = (M + M.T) / 2
    X = rng.normal(size=(n_data, d_bn))
    y = np.tanh(X @ rng.normal(size=d_bn)) + 0.1 * rng.normal(size=n_data)
    return [
        ("RayleighQuotient d=8", nc.potentials.RayleighQuotient(A), rng.normal(size=d_ray),
         [("batched", lambda P: rayleigh_grad(A, P))], lambda q, rows: ref_pot.rayleigh(q, A)),
        ("BatchNormUnit N=64 d=16", nc.potentials.BatchNormUnit(X, y),
         rng.normal(size=d_bn),
         [("row form", lambda P: bn_unit_grad(X, y, P)),
          ("O(D²) form", lambda P: bn_unit_proj_grad(X, y, P))],
         lambda q, rows: ref_pot.batchnorm_unit(q, X, y, 0.0, rows)),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16x16 grid, 1000 steps")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many timings")
    ap.add_argument("--pairs", type=int, default=5,
                    help="rounds of (b) same-algorithm NumPy and the 2-thread scan timed "
                         "back to back (their ratio's median and range)")
    ap.add_argument("--ref-points", type=int, default=8,
                    help="grid points timed for the reference loop (extrapolated)")
    ap.add_argument("--only", choices=("rayleigh", "bn"), default=None,
                    help="run one of the two problems")
    ap.add_argument("--write", action="store_true",
                    help="write the figures into benchmarks/RESULTS.md, section Scans")
    ap.add_argument("--mirror", action="store_true",
                    help="only the MirrorDescent table: lanes vs scalar loop (printed)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the --mirror table")
    args = ap.parse_args(argv)
    if args.mirror:
        return mirror_table(args)
    n_axis, steps = (16, 1000) if args.quick else (64, 10_000)
    lrs = np.logspace(-3, -1, n_axis)
    wds = np.concatenate([[0.0], np.logspace(-5, -2, n_axis - 1)])
    L, W = np.meshgrid(lrs, wds, indexing="ij")
    P = L.size
    mom = 0.9

    print(f"# scan benchmark: {n_axis}x{n_axis} (lr x weight_decay) grid, {steps} steps, "
          f"SGD momentum={mom}, full batch")
    mach = machine()
    print(f"# machine: {mach}; OpenMP in scan: {nc.openmp_enabled()}; lane kernel "
          f"versions: {lane_isas()}")
    rows = []
    for name, pot, q0, baselines, ref_grad in _problems():
        if args.only and not name.startswith(PREFIX[args.only]):
            continue

        def run_scan(threads, lanes=None, pot=pot, q0=q0):
            return nc.scan(nc.rules.SGD, pot, q0, steps=steps, lr=lrs, weight_decay=wds,
                           momentum=mom, seeds=0, threads=threads, progress=False,
                           charges=False,   # the same work as the NumPy baselines
                           lanes=lanes)

        t1, res, ld1 = _timed(lambda: run_scan(1), args.repeat)
        t2, res2, ld2 = _timed(lambda: run_scan(2), args.repeat)
        ts, res_s, lds = _timed(lambda: run_scan(2, lanes=False), args.repeat)
        for other in (res2, res_s):
            assert all(np.array_equal(getattr(res, k), getattr(other, k), equal_nan=True)
                       for k in ("q", "loss", "loss_min", "angular_update", "stop_step"))

        tbs, agree = [], []
        ldb = ()
        for label, make in baselines:
            tb, out, ld = _timed(lambda make=make, q0=q0: sgd_momentum_scan(
                                     make(P), q0, L.ravel(), W.ravel(), mom, steps),
                                 args.repeat)
            ok = ~res.diverged.ravel()
            rel = np.abs(out["loss_min"][ok] - res.loss_min.ravel()[ok]) / np.maximum(
                np.abs(res.loss_min.ravel()[ok]), 1e-300)
            tbs.append((label, tb))
            agree.append((label, np.median(rel), rel.max()))
            ldb += ld
        tb_best = min(tb for _, tb in tbs)

        # (b) paired: the same-algorithm NumPy program (the last baseline) and the 2-thread
        # scan timed back to back, the order alternating, so that both see the same state
        # of this shared machine; the median of the per-round ratios
        label_same, make_same = baselines[-1]
        pair_ratios = []
        for k in range(args.pairs):
            order = ("numpy", "scan") if k % 2 == 0 else ("scan", "numpy")
            tt = {}
            for what in order:
                t = time.perf_counter()
                if what == "numpy":
                    sgd_momentum_scan(make_same(P), q0, L.ravel(), W.ravel(), mom, steps)
                else:
                    run_scan(2)
                tt[what] = time.perf_counter() - t
            pair_ratios.append(tt["numpy"] / tt["scan"])
        pr = np.array(pair_ratios) if pair_ratios else np.array([np.nan])
        paired = (f"{np.median(pr):.1f}× ({pr.min():.1f}–{pr.max():.1f}, "
                  f"{len(pair_ratios)} rounds)")

        # (a) reference loop over a strided subsample of grid points, extrapolated
        pick = np.linspace(0, P - 1, args.ref_points).round().astype(int)
        t0, l0 = time.perf_counter(), _load()
        worst = 0.0
        for f in pick:
            i, j = np.unravel_index(f, L.shape)
            rule = {"name": "SGD", "lr": L[i, j], "momentum": mom, "weight_decay": W[i, j]}
            r = ref_rules.train(rule, ref_grad, q0, steps, record_every=steps)
            if np.all(np.isfinite(r["q_final"])):
                f_ref = ref_grad(r["q_final"], None)[0]
                worst = max(worst, abs(f_ref - res.loss[i, j]) / abs(res.loss[i, j]))
        ta_sub = time.perf_counter() - t0
        ta = ta_sub * P / len(pick)
        lda = (l0, _load())

        nb = "; ".join(f"{lab} {tb:.2f} s" for lab, tb in tbs)
        vs = "; ".join(f"{lab} {tb / t2:.1f}×" for lab, tb in tbs)
        rows.append([name, res.kernel, f"{t1:.2f} s", f"{t2:.2f} s", f"{ts:.2f} s", nb,
                     f"{ta:.0f} s (extrapolated from {len(pick)} points)",
                     f"{ta / t2:.0f}×", vs, f"{label_same} {paired}", f"{tb_best / t1:.2f}×",
                     f"{t1 / t2:.2f}×",
                     f"{min(ld1 + ld2 + lds + ldb):.1f}–{max(ld1 + ld2 + lds + ldb):.1f}"])
        print(f"\n## {name}  ({P} points x {steps} steps; "
              f"{int(res.diverged.sum())} diverged; kernel {res.kernel})")
        print(f"scan threads=1            {t1:9.2f} s   "
              f"({t1 / P / steps * 1e9:6.1f} ns per point-step)  load {ld1[0]:.2f}->{ld1[1]:.2f}")
        print(f"scan threads=2            {t2:9.2f} s   "
              f"({t2 / P / steps * 1e9:6.1f} ns per point-step)  load {ld2[0]:.2f}->{ld2[1]:.2f}")
        print(f"scalar loop, threads=2    {ts:9.2f} s   (lanes=False; same bits)")
        for label, tb in tbs:
            print(f"(b) NumPy {label:<15} {tb:9.2f} s   ({tb / steps * 1e6:6.1f} us per grid "
                  f"step)   ratio {tb / t2:5.2f}x vs scan2, {tb / t1:5.2f}x vs scan1")
        print(f"(b) paired, {label_same}: NumPy / scan2 median {paired}; rounds: "
              + ", ".join(f"{r:.2f}" for r in pair_ratios))
        print(f"(a) reference loop        {ta:9.2f} s   EXTRAPOLATED from {len(pick)} of "
              f"{P} points ({ta_sub:.2f} s)  load {lda[0]:.2f}->{lda[1]:.2f}")
        print(f"ratios: (a) ref/scan2 = {ta / t2:8.1f}x   (c) scan1/scan2 = {t1 / t2:5.2f}x"
              f"   lanes vs scalar loop (2 threads) = {ts / t2:5.2f}x")
        print(f"agreement (final loss, relative): reference vs scan max {worst:.1e} on the "
              "subsample; NumPy vs scan loss_min: " + "; ".join(
                  f"{lab} median {m:.1e}, max {x:.1e}" for lab, m, x in agree))
    # (c) again, best of 3 alternating runs of the whole grid (robust against a busy
    # machine, whose other processes take a core now and then)
    name, pot, q0 = _problems()[0][:3]
    best = {1: np.inf, 2: np.inf}
    l0 = _load()
    for _ in range(3):
        for th in (1, 2):
            t = time.perf_counter()
            nc.scan(nc.rules.SGD, pot, q0, steps=steps, lr=lrs, weight_decay=wds,
                    momentum=mom, seeds=0, threads=th, progress=False, charges=False)
            best[th] = min(best[th], time.perf_counter() - t)
    probe = (f"(c) best of 3, the {len(lrs)}×{len(wds)} {name} grid, {steps} steps: "
             f"threads=1 {best[1]:.3f} s, threads=2 {best[2]:.3f} s, speed-up "
             f"{best[1] / best[2]:.2f}× (load {l0:.1f}–{_load():.1f})")
    print(probe)
    print(f"\n# load average at end: {os.getloadavg()}")
    header = ["problem", "kernel", "scan, 1 thread", "scan, 2 threads",
              "scalar loop, 2 threads", "(b) NumPy batched, 1 core", "(a) reference loop",
              "(a)/scan2", "(b)/scan2", "(b)/scan2 paired, median (range)", "best (b)/scan1",
              "(c) scan1/scan2",
              "load (1-min avg)"]
    body = (f"`benchmarks/bench_scan.py` (one run{', --quick' if args.quick else ''}): "
            f"{n_axis}×{n_axis} grid (lr ∈ [1e-3, 1e-1] log-spaced × weight_decay ∈ "
            f"{{0}} ∪ [1e-5, 1e-2] log-spaced), {steps} steps of SGD(momentum={mom}), full "
            f"batch, wall time"
            f"{f' (best of {args.repeat} for every timing)' if args.repeat > 1 else ''}.  "
            "Ratios > 1 mean the compiled scan is faster.  "
            "(b) runs with single-threaded BLAS.\n\n"
            f"Machine: {mach}; load average at end {os.getloadavg()[0]:.2f}.\n\n"
            + table(rows, header) + "\n\n" + probe + "\n")
    print("\n" + body)
    if args.write:
        update_results("Scans", body + "\n" + NOTES,
                       "PYTHONPATH=.:python python benchmarks/bench_scan.py --write")
    return rows


def mirror_table(args):
    """MirrorDescent, every map, lanes vs the scalar loop (docs/scan.md §"MirrorDescent
    lanes"), ns per point-step, one process run; each pair checked bitwise equal."""
    n_axis = 8 if args.quick else 16
    lrs = np.logspace(-3, -1, n_axis)
    wds = np.concatenate([[0.0], np.logspace(-5, -2, n_axis - 1)])
    print(f"# MirrorDescent scans: {n_axis}x{n_axis} (lr x weight_decay), RayleighQuotient, "
          f"threads={args.threads}, best of {args.repeat}")
    print(f"# machine: {machine()}; lane kernel versions: {lane_isas()}")
    rows = []
    for d, steps in ((8, 2000), (128, 500)):
        if args.quick:
            steps //= 4
        rng = np.random.default_rng(2026 + d)
        M = rng.normal(size=(d, d))
        pot = nc.potentials.RayleighQuotient((M + M.T) / 2)
        q0 = rng.normal(size=d)
        maps = [("euclidean", {}, q0), ("diagonal", {"D": tuple(0.5 + np.arange(d) / d)}, q0),
                ("pnorm", {"p": 3.0}, q0), ("entropy", {}, np.abs(q0) + 0.1)]
        for mirror, kw, q in maps:
            for charges in (False, True):
                def run(lanes, pot=pot, q=q, kw=kw, mirror=mirror, charges=charges,
                        steps=steps):
                    return nc.scan(nc.rules.MirrorDescent, pot, q, steps=steps, lr=lrs,
                                   weight_decay=wds, mirror=mirror, threads=args.threads,
                                   progress=False, charges=charges, lanes=lanes, **kw)
                tl, rl, ldl = _timed(lambda: run(None), args.repeat)
                ts, rs, lds = _timed(lambda: run(False), args.repeat)
                assert rl.kernel.startswith("lanes[") and rs.kernel == "scalar"
                for k in ("q", "loss", "loss_min", "angular_update", "stop_step"):
                    a, b = getattr(rl, k), getattr(rs, k)
                    assert np.array_equal(a.view(np.int64) if a.dtype == np.float64 else a,
                                          b.view(np.int64) if b.dtype == np.float64 else b)
                ns = 1e9 / (lrs.size * wds.size * steps)
                load = f"{min(ldl + lds):.1f}-{max(ldl + lds):.1f}"
                rows.append([f"d={d}", mirror, "on" if charges else "off",
                             f"{tl * ns:.1f}", f"{ts * ns:.1f}", f"{ts / tl:.2f}x", load])
                print(f"d={d:<4} {mirror:<10} charges {'on ' if charges else 'off'}  lanes "
                      f"{tl * ns:8.1f} ns  scalar {ts * ns:8.1f} ns per point-step  "
                      f"x{ts / tl:5.2f}  (load {load}; {int(rl.diverged.sum())} diverged)")
    header = ["d", "mirror", "charges", "lanes ns/pt-step", "scalar ns/pt-step",
              "scalar/lanes", "load"]
    print("\n" + table(rows, header))
    return rows


NOTES = """Notes.
* Kernel: full-batch SGD on these potentials runs in the lane kernel (pyx/lanes.h, 8 grid
  points per AVX-512 vector, docs/scan.md §"Lanes"); the "scalar loop" column is the same
  scan with `lanes=False` (one point at a time, `run_loop`).  Bitwise: every timed scan is
  checked equal between threads=1, threads=2 and the scalar loop (and the test suite checks
  each point against a separate `train` call).  The NumPy baselines agree with the scan's
  minimum losses to ~1e-15 relative (different summation order); the reference loop's
  final losses agree to 1e-4 or better after 10^4 steps (the script prints the figure; the
  runs near the edge of stability amplify round-off differences over the 10^4 steps).
* BatchNormUnit: the compiled potential uses its exact O(D²)-per-step full-batch form
  (docs/potentials.md §4a).  (b) is given twice: the row form (O(N·D) per point) and the
  same O(D²) form
  (`numpy_batched.bn_unit_proj_grad`), so the ratio against the latter is algorithm
  for algorithm.
* (a) is extrapolated: a strided subsample of grid points is run through
  python/noether_ref/rules.py and the time scaled to the whole grid.
* (b) paired: the same-algorithm NumPy program and the 2-thread scan timed back to back
  for 5 rounds (the order alternating), so both see the same state of this shared
  machine; the median and range of the per-round ratios.  The best-of-3 columns can pair
  a quiet moment of one side with a busy moment of the other.
* Target ≥ 10× over batched NumPy of the same algorithm.  NumPy's batched ufuncs and BLAS
  product are SIMD over the grid too, so what the compiled scan gains per core is the
  fusion of ~15 passes over (d, P) arrays into one loop.  The Rayleigh lane step needs
  123 512-bit multiplies per 8 points and this core completes one per cycle, a floor of
  123 cycles per step (docs/scan.md §"Performance").  The late-window summary is the RMS
  chord (squared chords summed, one square root at the end).
* Threads: blocks of grid points are independent; the 2-thread speed-up is bounded by the
  cores actually free (the load column says how busy the machine was).  The
  line "(c) best of 3" repeats threads=1 and threads=2 alternately on the whole
  RayleighQuotient grid and keeps the best of each."""


if __name__ == "__main__":
    main()
