"""What tracking the balance laws costs in a scan: charges on against charges off (issue 16).

The problem and grid of bench_peers_scan.py (RayleighQuotient d = 8, 32 × 32 grid
lr × weight decay, 2000 steps, 2 threads; SGD with momentum 0.9, AdamW, Adam and RMSprop,
the last two with coupled L2 decay), run with ``scan(..., charges=False)`` and
``scan(..., charges=True)`` alternating: every round times each rule off and on once, in
turn, so a slow spell of a shared machine hits both alike.  With one thread the CPU
seconds of the process (``time.process_time``), with more the wall seconds
(``time.perf_counter``), per point-step, the best of ``--rounds`` rounds; the ratio on /
off is taken from those bests.  (The CPU time of a multi-threaded run is not the
kernel's: the OpenMP worker spins after the scan returns, and its time reaches the
process's CPU time only at scheduler ticks, 4 ms apart, against runs of 5–10 ms;
_common.alternate_best, benchmarks/RESULTS.md.)

The divider floors (docs/balance_laws.md §8) are what the square roots and divisions of
the free step add where the divider bounds the step: the charges cannot cost less than
that ratio while every lane stays bitwise the scalar kernel and ``train``.  They are
counted for Zen 4's divider; on Zen 5 (a divider twice as fast) the step is not
divider-bound and there is no such floor (§8, "The L2 cases on Zen 5").

Target (issue 16): charges on ≤ 1.3× charges off.

Usage::

    PYTHONPATH=.:python python benchmarks/bench_scan_charges.py [--rounds R] [--steps N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import alternate_best, machine, table  # noqa: E402
from bench_peers_scan import RULES, _grid, _problem, ours  # noqa: E402

#: docs/balance_laws.md §8, "the divider floor" of each rule's charges on Zen 4 (None: no
#: divider work); Zen 5 has none (§8, "The L2 cases on Zen 5")
FLOORS = {"SGD": None, "AdamW": 1.15, "Adam": 1.57, "RMSprop": 1.79}


def measure(n=32, steps=2000, rounds=7, threads=2, rules=RULES):
    """{rule: (off, on)} in ns per point-step (CPU time with one thread, wall time with
    more), the best of ``rounds`` alternating rounds."""
    A, q0 = _problem(8)
    lr, wd = _grid(n)
    runs = {(r, ch): ours(r, A, q0, lr, wd, steps, charges=ch, threads=threads)
            for r in rules for ch in (False, True)}
    best = alternate_best(runs, rounds,
                          clock=time.process_time if threads == 1 else time.perf_counter)
    scale = 1e9 / (n * n * steps)
    return {r: (best[r, False] * scale, best[r, True] * scale) for r in rules}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(machine())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"\n### 32 x 32 grid x {args.steps} steps, RayleighQuotient d = 8, {args.threads} "
          f"threads, {'CPU' if args.threads == 1 else 'wall'} ns per point-step, best of "
          f"{args.rounds} alternating rounds\n")
    res = measure(steps=args.steps, rounds=args.rounds, threads=args.threads)
    rows = []
    for r, (off, on) in res.items():
        floor = FLOORS[r]
        rows.append([r, f"{off:.1f}", f"{on:.1f}", f"{on / off:.2f}x",
                     "-" if floor is None else f"{floor:.2f}x"])
    print(table(rows, ["rule", "charges off", "charges on", "on / off", "divider floor (Zen 4)"]))


if __name__ == "__main__":
    main()
