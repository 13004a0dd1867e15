"""The fixed cost of one ``nc.scan`` call (issue 16), with its breakdown, next to the
small-scan comparison with JAX + optax, in one process run.

The fixed cost is the wall time of a tiny lane scan minus its kernel time: a 16 × 16
(lr × weight decay) grid on RayleighQuotient d = 8, 1 step, charges off, of
SGD(momentum 0.9), AdamW, Adam, RMSprop and the paper's ScalarRMSProp (``--rules``; Adam,
RMSprop and ScalarRMSProp with L2 weight decay).  The kernel's two parts are timed inside
the same calls, by wrapping the object ``noether_core._bridge.lane_kernel`` returns:
*build* (the compiled ``LaneScanKernel.__cinit__``: scratch, pointers, Adam's pow table)
and *run* (``kern.run()``).  Printed per rule, as medians over ``--calls`` calls:

* wall: the whole ``nc.scan`` call (not instrumented);
* facade = wall − build − run (the Python around the kernel: what issue 16 bounds by
  0.1 ms), and wall − run (facade plus the compiled build);
* the breakdown: the median time inside each facade phase (the module functions of
  noether_core/_scan.py wrapped with ``time.perf_counter_ns``, a second series of calls;
  each wrapper adds ~0.2 µs).  "rest" is the instrumented wall minus the phases listed.

Then the small-scan table: 16 × 16 × 500 steps at d = 8, ours (2 threads, lanes) against
JAX + optax ``jit(vmap(lax.scan))`` (benchmarks/bench_peers_scan.py's peer; skipped
when JAX or optax is not importable), best of ``--repeat``.

Usage::

    PYTHONPATH=.:python python benchmarks/bench_scan_overhead.py
    ... --threads 1           # the tiny scans on one thread (default: 1; see below)
    ... --calls 3000          # calls per median
    ... --no-peer             # skip JAX
    ... --rules SGD,AdamW     # the rules of the fixed-cost table (default: all five)
    ... --cold                # Adam's pow-table cache emptied before every call
    ... --no-small            # skip the 16 x 16 x 500 table

The tiny scans run with ``threads=1`` by default: with 2 threads the kernel's OpenMP
start-up and barrier (part of *run*, not of the facade) dominate and vary by
milliseconds on a loaded machine; ``--threads 2`` shows it.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, table  # noqa: E402

import noether_core as nc  # noqa: E402
from noether_core import _bridge  # noqa: E402

_scan = sys.modules["noether_core._scan"]

#: the facade's phases, in call order (functions of noether_core/_scan.py; a name the
#: module does not have is skipped, so the script also runs on older versions)
PHASES = ("_grid_args", "_make_grid", "_lane_reason", "_grid_hp", "_check_budget",
          "_pack_rules", "_run_lanes", "_result")


def _problem(d=8, seed=2026):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    return (M + M.T) / 2, rng.normal(size=d)


def _grid(n=16):
    lr = np.geomspace(1e-3, 0.1, n)
    wd = np.concatenate([[0.0], np.geomspace(1e-5, 1e-2, n - 1)])
    return lr, wd


class _Timed:
    """The lane kernel, its run() timed."""

    def __init__(self, kern, log):
        self.kern, self.log, self.isa = kern, log, kern.isa

    def run(self):
        t = time.perf_counter_ns()
        self.kern.run()
        self.log["kernel run"].append(time.perf_counter_ns() - t)

    def steps_done(self):
        return self.kern.steps_done()

    def cancel(self):
        self.kern.cancel()


def _instrument(log, phases):
    """Wrap _bridge.lane_kernel (build and run) and, when ``phases``, the facade's
    phases; returns the undo function."""
    saved = []

    def wrap(mod, name, label):
        f = getattr(mod, name)

        def w(*a, **k):
            t = time.perf_counter_ns()
            try:
                return f(*a, **k)
            finally:
                log[label].append(time.perf_counter_ns() - t)
        saved.append((mod, name, f))
        setattr(mod, name, w)

    lane_kernel = _bridge.lane_kernel

    def timed_lane_kernel(*a, **k):
        t = time.perf_counter_ns()
        kern = lane_kernel(*a, **k)
        log["kernel build"].append(time.perf_counter_ns() - t)
        return _Timed(kern, log)
    saved.append((_bridge, "lane_kernel", lane_kernel))
    _bridge.lane_kernel = timed_lane_kernel
    if phases:
        for name in PHASES:
            if hasattr(_scan, name):
                wrap(_scan, name, name)

    def undo():
        for mod, name, f in reversed(saved):
            setattr(mod, name, f)
    return undo


def _median_us(v):
    return float(np.median(v)) / 1e3 if len(v) else float("nan")


#: the rules timed: class name -> fixed parameters (Adam and RMSprop: L2 weight decay)
RULES = {"SGD": {"momentum": 0.9}, "AdamW": {}, "Adam": {}, "RMSprop": {},
         "ScalarRMSProp": {}}


def _clear_pow_cache():
    """Empty Adam's cache of pow tables (pyx/scan.pyx; absent in older versions)."""
    clear = getattr(sys.modules["noether_core._kernels.scan"], "_pow_cache_clear", None)
    if clear is not None:
        clear()


def overhead(rule, calls, threads, cold=False):
    A, q0 = _problem()
    pot = nc.potentials.RayleighQuotient(A)
    lr, wd = _grid()
    cls = getattr(nc.rules, rule)
    extra = RULES[rule]

    def run():
        return nc.scan(cls, pot, q0, steps=1, lr=lr, weight_decay=wd, charges=False,
                       threads=threads, progress=False, **extra)
    for _ in range(max(20, calls // 20)):
        run()                                            # warm caches and imports
    # 1. wall, build and run in the same calls (only the kernel wrapped)
    log = collections.defaultdict(list)
    undo = _instrument(log, phases=False)
    wall = []
    try:
        for _ in range(calls):
            if cold:
                _clear_pow_cache()                      # every call builds its table
            t = time.perf_counter_ns()
            run()
            wall.append(time.perf_counter_ns() - t)
    finally:
        undo()
    wall = np.array(wall)
    build, krun = np.array(log["kernel build"]), np.array(log["kernel run"])
    direct = len(krun) == len(wall)                   # every call ran on this thread
    facade = wall - build - krun if direct else wall - build
    fig = {"wall": _median_us(wall), "build": _median_us(build), "run": _median_us(krun),
           "facade": _median_us(facade),
           "wall - run": _median_us(wall - krun) if direct else float("nan")}
    # 2. the breakdown (phases wrapped)
    log = collections.defaultdict(list)
    undo = _instrument(log, phases=True)
    wall2 = []
    try:
        for _ in range(calls):
            if cold:
                _clear_pow_cache()
            t = time.perf_counter_ns()
            run()
            wall2.append(time.perf_counter_ns() - t)
    finally:
        undo()
    parts = {}
    for name in PHASES:
        if name in log:
            parts[name] = _median_us(log[name])
    if "_run_lanes" in parts:                          # its Python: minus the kernel
        parts["_run_lanes"] = _median_us(np.array(log["_run_lanes"])
                                         - np.array(log["kernel build"])
                                         - np.array(log["kernel run"]))
    listed = sum(parts.values())            # each phase is called by scan itself
    parts["rest (scan's own lines, outputs, result checks)"] = (
        _median_us(wall2) - _median_us(log["kernel build"]) - _median_us(log["kernel run"])
        - listed)
    return fig, parts


def small_scan(repeat, have_jax, threads):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_peers_scan as peers
    peers._THREADS["n"] = threads
    A, q0 = peers._problem(8)
    lr, wd = peers._grid(16)
    rows = []
    for rule in ("SGD", "AdamW"):
        t, res = peers._best(peers.ours(rule, A, q0, lr, wd, 500), repeat)
        row = [rule, res.kernel, f"{1e3 * t:.3f}", f"{peers._ns(t, 256, 500):.1f}"]
        if have_jax:
            tj, _ = peers._best(peers.jax_runner(rule, A, q0, lr, wd, 500), repeat)
            row += [f"{1e3 * tj:.3f}", f"{peers._ns(tj, 256, 500):.1f}", f"{tj / t:.2f}x"]
        else:
            row += ["—", "—", "—"]
        rows.append(row)
    return table(rows, ["rule", "kernel", "ours ms", "ours ns/pt-step", "JAX ms",
                        "JAX ns/pt-step", "ours vs JAX"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per median")
    ap.add_argument("--threads", type=int, default=1, help="threads of the tiny scans")
    ap.add_argument("--small-threads", type=int, default=2,
                    help="threads of ours in the 16 x 16 x 500 table")
    ap.add_argument("--repeat", type=int, default=7, help="best of, small-scan table")
    ap.add_argument("--no-peer", action="store_true", help="skip JAX + optax")
    ap.add_argument("--rules", default=",".join(RULES),
                    help=f"comma-separated rules of the fixed-cost table ({', '.join(RULES)})")
    ap.add_argument("--cold", action="store_true",
                    help="empty Adam's cache of pow tables before every call (the first "
                         "call with new betas or step count)")
    ap.add_argument("--no-small", action="store_true", help="skip the 16 x 16 x 500 table")
    args = ap.parse_args(argv)
    print(machine())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"noether_core from {os.path.dirname(nc.__file__)}")
    print(f"\n### fixed cost per scan call: 16 x 16 grid, 1 step, RayleighQuotient d = 8, "
          f"charges off, threads={args.threads}, median of {args.calls} calls (µs)"
          f"{'; pow cache emptied before every call' if args.cold else ''}\n")
    rows, breakdowns = [], {}
    for rule in args.rules.split(","):
        if rule not in RULES:
            ap.error(f"--rules: {rule!r} is not one of {', '.join(RULES)}")
        fig, parts = overhead(rule, args.calls, args.threads, args.cold)
        rows.append([rule, f"{fig['wall']:.1f}", f"{fig['build']:.1f}", f"{fig['run']:.1f}",
                     f"{fig['facade']:.1f}", f"{fig['wall - run']:.1f}"])
        breakdowns[rule] = parts
    print(table(rows, ["rule", "wall", "kernel build", "kernel run",
                       "facade (wall - build - run)", "wall - run"]))
    names = list(dict.fromkeys(k for p in breakdowns.values() for k in p))
    print("\n### breakdown of the facade (median µs inside each phase, instrumented calls)\n")
    print(table([[k] + [f"{breakdowns[r].get(k, float('nan')):.1f}" for r in breakdowns]
                 for k in names], ["phase"] + list(breakdowns)))
    if args.no_small:
        return
    have_jax = False
    if not args.no_peer:
        try:
            import jax  # noqa: F401
            import optax  # noqa: F401
            have_jax = True
        except ImportError:
            print("\n(JAX or optax not importable: the peer column is skipped)")
    print(f"\n### small scan: 16 x 16 grid x 500 steps, d = 8, ours on "
          f"{args.small_threads} threads, best of {args.repeat}\n")
    print(small_scan(args.repeat, have_jax, args.small_threads))


if __name__ == "__main__":
    main()
