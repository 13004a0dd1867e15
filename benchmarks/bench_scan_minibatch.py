"""Minibatch lanes against full-batch lanes (issue 16, item 3; docs/scan.md §"Minibatch
lanes").

Target: a minibatch lane step (BatchNormUnit, N = 256 rows, batch B = 32) costs <= 3x a
full-batch lane step on a data set of the batch's size (N = 32), at d = 8 and d = 32,
SGD (momentum 0.9) and AdamW.  The full batch of 32 rows is timed in both of its forms:
the O(d^2) projection form the potential uses by default (``projection=True``) and the
row form (``projection=False``: the same arithmetic per row as a minibatch step, the
like-for-like count), and the scalar loop's minibatch step beside them.  The minibatch
lanes are timed under both stream mappings (``scan(..., batch_streams=...)``): "point"
(each grid point its own PCG64 stream: eight draws and a gather per block and step) and
"seed" (the points of a seed share ``default_rng(seed)``: one draw per block and step,
the rows read by every lane); and under seed streams with ``batch_form="moments"`` (each
step's batch read through its centred moments, formed once per seed and step and shared
by every lane: O(d^2) per point-step like the projection form; docs/scan.md §"Batch
moments"; round-off, not train's bits).

Every figure is ns per point-step, CPU time of one thread (``threads=1``,
``time.process_time``: the machine is shared, wall time is not the kernel's), the best of
``--repeat`` runs interleaved, all in one process run, so the ratios are measured side
by side.  Prints a table; writes nothing.

    python benchmarks/bench_scan_minibatch.py [--repeat 5] [--steps 400] [--grid 16]

Target (issue 16): the moments column <= 3x the projection column (SGD, d = 8).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import noether_core as nc  # noqa: E402


def _problem(N, d, seed=0, projection=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    y = np.tanh(X @ rng.normal(size=d)) + 0.1 * rng.normal(size=N)
    return nc.potentials.BatchNormUnit(X, y, 1e-5, projection=projection), \
        0.3 * rng.normal(size=d)


RULES = {
    "SGD": (nc.rules.SGD, lambda g: dict(lr=np.geomspace(1e-3, 0.1, g),
                                          weight_decay=np.geomspace(1e-5, 1e-2, g),
                                          momentum=0.9)),
    "AdamW": (nc.rules.AdamW, lambda g: dict(lr=np.geomspace(1e-4, 1e-2, g),
                                              weight_decay=np.geomspace(1e-4, 1e-1, g))),
}


def _time(rule_cls, pot, q0, steps, grid, lanes, batch_size, streams="point", form="rows"):
    t0 = time.process_time()
    res = nc.scan(rule_cls, pot, q0, steps=steps, threads=1, progress=False, lanes=lanes,
                  batch_size=batch_size, charges=False, batch_streams=streams,
                  batch_form=form, **grid)
    dt = time.process_time() - t0
    return dt / (res.q.size // pot.dim * steps) * 1e9, res.kernel


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--scalar-steps", type=int, default=100)
    a = ap.parse_args(argv)
    B, N = 32, 256
    print(f"# minibatch lanes: BatchNormUnit N={N} batch={B} vs full batch on N={B}; "
          f"{a.grid}x{a.grid} grid, {a.steps} steps, 1 thread, CPU ns per point-step, "
          f"best of {a.repeat}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, lane ISA {nc._bridge.lane_isas()[-1]}")
    print("| d | rule | minibatch lanes, point streams | minibatch lanes, seed streams "
          "| seed streams, moments | full 32 rows, projection | full 32 rows, row form "
          "| point vs projection | seed vs projection | moments vs projection "
          "| seed vs row form | moments vs row form | minibatch scalar loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in (8, 32):
        mb, _ = _problem(N, d)
        full_p, q0 = _problem(B, d)
        full_r, _ = _problem(B, d, projection=False)
        for name, (rule_cls, mk) in RULES.items():
            grid = mk(a.grid)
            best = {k: np.inf for k in ("mb", "ms", "mm", "fp", "fr", "sc")}
            for _ in range(a.repeat):
                t, k = _time(rule_cls, mb, q0, a.steps, grid, True, B)
                assert k.startswith("lanes"), k
                best["mb"] = min(best["mb"], t)
                best["ms"] = min(best["ms"], _time(rule_cls, mb, q0, a.steps, grid, True, B,
                                                   "seed")[0])
                best["mm"] = min(best["mm"], _time(rule_cls, mb, q0, a.steps, grid, True, B,
                                                   "seed", "moments")[0])
                best["fp"] = min(best["fp"], _time(rule_cls, full_p, q0, a.steps, grid, True,
                                                   None)[0])
                best["fr"] = min(best["fr"], _time(rule_cls, full_r, q0, a.steps, grid, True,
                                                   None)[0])
            sub = {k: v[:4] if isinstance(v, np.ndarray) else v for k, v in grid.items()}
            for _ in range(max(1, a.repeat // 2)):
                best["sc"] = min(best["sc"], _time(rule_cls, mb, q0, a.scalar_steps, sub,
                                                   False, B)[0])
            print(f"| {d} | {name} | {best['mb']:.1f} | {best['ms']:.1f} | {best['mm']:.1f} "
                  f"| {best['fp']:.1f} | {best['fr']:.1f} | {best['mb'] / best['fp']:.2f}x "
                  f"| {best['ms'] / best['fp']:.2f}x | {best['mm'] / best['fp']:.2f}x "
                  f"| {best['ms'] / best['fr']:.2f}x | {best['mm'] / best['fr']:.2f}x "
                  f"| {best['sc']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
