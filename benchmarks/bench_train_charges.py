"""What tracking the balance laws costs in ``train``: charges on against charges off, every
adaptive rule (issue 16).

One trajectory on RayleighQuotient d = 8 (the problem of bench_train_peers.py), 3·10⁴
steps, one row per rule configuration — SGD with momentum 0.9, AdamW, Adam and RMSprop
with and without L2 decay — run with ``train(..., charges=False)`` and
``train(..., charges=True)`` alternating: every round times each configuration off and
on once, in turn, so a slow spell of a shared machine hits both alike.  CPU seconds of
the process (``time.process_time``) per step, the best of ``--rounds`` rounds; the ratio
on / off is taken from those bests.  bench_train_peers.py compares the same loop with a
plain numba loop (SGD and AdamW); this script covers the configurations it does not.

Target (issue 16): charges on ≤ 1.3× charges off.

Usage::

    PYTHONPATH=.:python python benchmarks/bench_train_charges.py [--rounds R] [--steps N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import alternate_best, machine, table  # noqa: E402

import noether_core as nc  # noqa: E402

#: the configurations: label -> rule
CONFIGS = {
    "SGD (momentum 0.9)": lambda: nc.rules.SGD(lr=1e-3, momentum=0.9),
    "AdamW": lambda: nc.rules.AdamW(lr=1e-3, weight_decay=1e-2),
    "Adam": lambda: nc.rules.Adam(lr=1e-3),
    "Adam, L2 decay": lambda: nc.rules.Adam(lr=1e-3, weight_decay=1e-2),
    "RMSprop": lambda: nc.rules.RMSprop(lr=1e-3),
    "RMSprop, L2 decay": lambda: nc.rules.RMSprop(lr=1e-3, weight_decay=1e-2),
}


def _problem(d=8, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient((a + a.T) / 2), rng.standard_normal(d)


def measure(steps=30000, rounds=7, configs=CONFIGS):
    """{label: (off, on)} in CPU ns per step, the best of ``rounds`` alternating rounds."""
    pot, q0 = _problem()

    def runner(rule, charges):
        return lambda: nc.train(rule, pot, q0, steps, record_every=steps, record_q=False,
                                charges=charges)

    runs = {(label, ch): runner(make(), ch) for label, make in configs.items()
            for ch in (False, True)}
    best = alternate_best(runs, rounds)
    return {label: (best[label, False] * 1e9 / steps, best[label, True] * 1e9 / steps)
            for label in configs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30000)
    args = ap.parse_args(argv)
    print(machine())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"\n### train, RayleighQuotient d = 8, {args.steps} steps, CPU ns per step, best "
          f"of {args.rounds} alternating rounds\n")
    res = measure(steps=args.steps, rounds=args.rounds)
    rows = [[label, f"{off:.1f}", f"{on:.1f}", f"{on / off:.2f}x"]
            for label, (off, on) in res.items()]
    print(table(rows, ["rule", "charges off", "charges on", "on / off"]))


if __name__ == "__main__":
    main()
