"""Compiled training loop vs the NumPy reference loop vs a plain C loop, side by side.

SGD(lr, momentum=0.9, weight_decay=5e-4), 10^4 steps, full batch, on
* RayleighQuotient d = 8,
* BatchNormUnit N = 256, D = 64, in its row form (the algorithm of the plain C and NumPy
  loops) and in its default full-batch O(D²) form (docs/potentials.md §4a);
plus the peak memory of ``train`` with record_every = 100 (and = 1 for contrast).

Usage: python benchmarks/bench_rules.py [--write]   (--write updates RESULTS.md)
Targets (issue 2): ≥ 50× faster than the NumPy loop on d = 8; within 1.5× of plain C.
"""
import ctypes
import json
import os
import subprocess
import sys
import tracemalloc
from functools import partial

import numpy as np
from _common import best_time, build_c, dptr, machine, table, update_results

import noether_core as nc
from noether_ref import potentials as P
from noether_ref import rules as R

STEPS = 10_000
LR, MOM, WD = 0.05, 0.9, 5e-4


def cases():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8))
    A = a @ a.T / 8 + np.eye(8)
    X = rng.standard_normal((256, 64))
    y = np.tanh(X @ rng.standard_normal(64) / 8)
    q_ray, q_bn = rng.standard_normal(8), rng.standard_normal(64)
    bn_ref = lambda q, rows: P.batchnorm_unit(q, X, y, rows=rows)  # noqa: E731
    return [
        ("RayleighQuotient d=8", nc.potentials.RayleighQuotient(A), q_ray,
         lambda q, rows: P.rayleigh(q, A), 0, A, np.zeros(1), 0),
        # the same algorithm as plain C and NumPy: row by row, O(N·D) per step
        ("BatchNormUnit N=256 D=64, row form", nc.potentials.BatchNormUnit(
            X, y, projection=False), q_bn, bn_ref, 1, X, y, 256),
        # the default full-batch form, O(D²) per step (docs/potentials.md §4a), against
        # the same row-form plain C and NumPy loops
        ("BatchNormUnit N=256 D=64, O(D²) form", nc.potentials.BatchNormUnit(X, y),
         q_bn, bn_ref, 1, X, y, 256),
    ]


def peak_bytes(fn):
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def plain_lib():
    """benchmarks/plain_c_sgd.c, compiled now, with its ctypes signature."""
    lib = build_c("plain_c_sgd")
    lib.sgd_plain.restype = ctypes.c_double
    lib.sgd_plain.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.c_long,
                              ctypes.c_long, ctypes.c_double, ctypes.c_double,
                              ctypes.c_double, ctypes.POINTER(ctypes.c_double),
                              ctypes.POINTER(ctypes.c_double), ctypes.c_long]
    return lib


def time_once():
    """Best-of-7 times of compiled train and plain C in this process (JSON on stdout)."""
    lib = plain_lib()
    rule = nc.rules.SGD(lr=LR, momentum=MOM, weight_decay=WD)
    out = []
    for _name, pot, q0, _ref_grad, kind, d0, d1, N in cases():
        def plain(q0=q0, kind=kind, d0=d0, d1=d1, N=N):
            q = q0.copy()
            lib.sgd_plain(kind, dptr(q), len(q0), STEPS, LR, MOM, WD, dptr(d0), dptr(d1), N)
        out.append([best_time(partial(nc.train, rule, pot, q0, STEPS, record_every=100,
                                      charges=False), repeat=7),
                    best_time(plain, repeat=7)])
    print(json.dumps(out))


def across_processes(n=5):
    """compiled/plain-C ratio in n fresh processes: the ratio differs between processes
    (memory layout of the run's buffers), so report its median and range."""
    env = dict(os.environ)
    res = []
    for _ in range(n):
        r = subprocess.run([sys.executable, __file__, "--once"], capture_output=True,
                           text=True, check=True, env=env, cwd=os.path.dirname(__file__))
        res.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return np.array(res)          # (n, case, [compiled, C])


def main(write=False):
    lib = plain_lib()
    rule = nc.rules.SGD(lr=LR, momentum=MOM, weight_decay=WD)
    rows = []
    for name, pot, q0, ref_grad, kind, d0, d1, N in cases():
        d = len(q0)
        run = partial(nc.train, rule, pot, q0, STEPS, record_every=100, charges=False)
        run_ch = partial(nc.train, rule, pot, q0, STEPS, record_every=100)

        def plain(q0=q0, kind=kind, d=d, d0=d0, d1=d1, N=N):
            q = q0.copy()
            lib.sgd_plain(kind, dptr(q), d, STEPS, LR, MOM, WD, dptr(d0), dptr(d1), N)
            return q

        t_comp = best_time(run, repeat=7)
        t_ch = best_time(run_ch, repeat=7)
        t_c = best_time(plain, repeat=7)
        ref = partial(R.train, {"name": "SGD", "lr": LR, "momentum": MOM, "weight_decay": WD},
                      ref_grad, q0, STEPS, record_every=100)
        t_np = best_time(ref, repeat=1)
        q_comp, q_c, q_np = run().q_final, plain(), ref()["q_final"]
        dev_c = np.abs(q_comp - q_c).max() / np.abs(q_c).max()
        dev_np = np.abs(q_comp - q_np).max() / np.abs(q_np).max()
        mem100 = peak_bytes(partial(nc.train, rule, pot, q0, STEPS, record_every=100))
        mem1 = peak_bytes(partial(nc.train, rule, pot, q0, STEPS, record_every=1))
        rows.append([name, f"{t_comp * 1e3:.2f}", f"{t_ch * 1e3:.2f}", f"{t_c * 1e3:.2f}",
                     f"{t_np * 1e3:.0f}", f"{t_np / t_comp:.0f}×", f"{t_comp / t_c:.2f}×",
                     f"{mem100 / 1024:.0f} KiB", f"{mem1 / 1024:.0f} KiB",
                     f"{dev_c:.1e} / {dev_np:.1e}"])
    header = ["case (10^4 steps SGD m=0.9 wd=5e-4)", "compiled train [ms]",
              "… with charges [ms]", "plain C [ms]",
              "NumPy loop [ms]", "NumPy / compiled", "compiled / plain C",
              "peak mem re=100", "peak mem re=1", "rel. dev. vs C / NumPy"]
    body = (f"Machine: {machine()}\n\n" + table(rows, header) + "\n\n"
            "`compiled train` is the whole `noether_core.train(..., charges=False)` call "
            "(validation, allocation, the nogil loop with its per-step finiteness checks, "
            "record_every=100) — the same work as the plain C loop; `… with charges` is the "
            "default call, which also tracks the scale charge and its exact balance law at "
            "every step; `plain C` is benchmarks/plain_c_sgd.c built with gcc -O3 "
            "-ffp-contract=off, called through ctypes; the NumPy loop is "
            "python/noether_ref/rules.py.  BatchNormUnit: the row-form line runs the "
            "same algorithm as plain C and NumPy (its row products use four accumulators, "
            "plain C one); the O(D²) line is the default full-batch form (thin QR of the "
            "centred data once, two triangular D × D products per step) against the same "
            "row-form loops, so its ratios include the algorithmic gain; on d = 8 the "
            "compiled loop's extra "
            "work over plain C is its per-step finiteness checks and the call's validation and "
            "allocation (~35–50 µs per call).  Best of 7 (NumPy: 1 run); the machine is "
            "shared (load above).  Peak memory is "
            "traced Python/NumPy allocation of the call (tracemalloc).  Targets: ≥ 50× "
            "NumPy on d = 8, ≤ 1.5× plain C.")
    proc = across_processes()
    ratios = proc[:, :, 0] / proc[:, :, 1]
    lines = ["", "compiled / plain C across 5 fresh processes (best of 7 in each): "]
    for c, (name, *_rest) in enumerate(cases()):
        lines.append(f"* {name}: median {np.median(ratios[:, c]):.2f}×, range "
                     f"{ratios[:, c].min():.2f}–{ratios[:, c].max():.2f}× (compiled "
                     f"{1e3 * np.median(proc[:, c, 0]):.2f} ms, plain C "
                     f"{1e3 * np.median(proc[:, c, 1]):.2f} ms, medians)")
    lines.append("")
    lines.append("The compiled time is at times bimodal between processes on this machine "
                 "(e.g. 0.5 or 0.85 ms for the d = 8 case; it has switched within a process "
                 "too).  Not the code's memory layout: moving q, the rule state and the "
                 "gradient into one page-aligned block, or A to each of 16 page offsets, "
                 "changed nothing, and a pure-Python loop timed in the same processes did "
                 "not move; in some hours every process is in the fast mode.  Most likely a "
                 "co-tenant on the same physical core (SMT), which slows floating-point "
                 "loops and leaves interpreter-bound ones alone.  The table above is one "
                 "process.")
    body += "\n".join(lines) + "\n"
    print(body)
    if write:
        update_results("Learning rules (issue 2)", body,
                       "PYTHONPATH=.:python python benchmarks/bench_rules.py --write")


if __name__ == "__main__":
    if "--once" in sys.argv:
        time_once()
    else:
        main("--write" in sys.argv)
