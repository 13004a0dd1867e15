"""Shared helpers of the benchmarks: timing, machine description, plain-C builds."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "_build")


def best_time(fn, repeat=5, number=1):
    """Best wall time of ``number`` calls, over ``repeat`` trials (seconds per call)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def machine() -> str:
    """The machine line of every benchmark's output: the CPU with its family and model
    (a virtual machine's "model name" can be the same on different generations: AMD
    family 25 is Zen 3/4, family 26 Zen 5), the cores, the versions, the load."""
    cpu = platform.processor() or "unknown CPU"
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break                    # the first processor's block is enough
    except OSError:
        pass
    if "model name" in info:
        cpu = info["model name"]
        if "cpu family" in info:
            cpu += f" (family {info['cpu family']} model {info.get('model', '?')})"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    import noether_core
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"NumPy {np.__version__}, noether_core {noether_core.__version__}; "
            f"load average {load:.2f} at start")


def build_c(name: str, flags=("-O3", "-ffp-contract=off")) -> ctypes.CDLL:
    """Compile benchmarks/<name>.c into a shared library with gcc and load it."""
    os.makedirs(BUILD, exist_ok=True)
    src = os.path.join(HERE, name + ".c")
    out = os.path.join(BUILD, f"{name}.so")
    cmd = ["gcc", *flags, "-shared", "-fPIC", src, "-o", out, "-lm"]
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(out)


def dptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


_NUMBA_GRAD = {}


def numba_rayleigh_grad():
    """The peers' Rayleigh quotient as a numba ``@njit`` function ``grad(A, q, g, Aq)``:
    f = qAq / (2 qq) returned, g = (Aq − (qAq/qq) q) / qq written to ``g`` (``Aq`` is
    scratch), loops in plain order, no fastmath (benchmarks/bench_peers_scan.py and
    bench_train_peers.py call it from their kernels).  Compiled on first use; raises
    ImportError without numba."""
    if "grad" in _NUMBA_GRAD:
        return _NUMBA_GRAD["grad"]
    from numba import njit

    @njit(cache=False)
    def grad(A, q, g, Aq):
        d = q.shape[0]
        qq = 0.0
        for i in range(d):
            qq += q[i] * q[i]
        qAq = 0.0
        for i in range(d):
            s = 0.0
            for j in range(d):
                s += A[i, j] * q[j]
            Aq[i] = s
            qAq += q[i] * s
        t = qAq / qq
        for i in range(d):
            g[i] = (Aq[i] - t * q[i]) / qq
        return 0.5 * t

    _NUMBA_GRAD["grad"] = grad
    return grad


def table(rows, header) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def update_results(section: str, body: str, command: str | None = None) -> None:
    """Replace (or append) ``## section`` in benchmarks/RESULTS.md, headed by today's date
    and the ``command`` that reproduces it."""
    if command is not None:
        import datetime

        body = (f"Latest figures: {datetime.date.today().isoformat()}.  Command: "
                f"`{command}`\n\n{body.lstrip()}")
    path = os.path.join(HERE, "RESULTS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    head = f"## {section}"
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == head), None)
    new = [head, "", body.rstrip(), ""]
    if start is None:
        lines = lines + [""] + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines = lines[:start] + new + lines[end:]
    with open(path, "w") as fh:
        fh.write("\n".join(lines).rstrip() + "\n")
    print(f"wrote section {section!r} of {path}", file=sys.stderr)


def alternate_best(runs: dict, rounds: int, clock=time.process_time) -> dict:
    """{key: the best seconds of ``clock`` of ``rounds`` rounds} of the callables ``runs``,
    each warmed once; every round times each once, in turn, so a slow spell of a shared
    machine hits them alike.

    The default clock is the CPU time of the process (``time.process_time``), right for
    runs on the calling thread alone.  Runs that start worker threads should pass
    ``time.perf_counter``: an OpenMP worker keeps spinning after its parallel region, and
    the kernel adds a running thread's time to the process's CPU time only at a scheduler
    tick (every 4 ms on the machine of RESULTS.md), so the CPU time read when a 10 ms
    multi-threaded run returns is off by up to a tick plus the spin (RESULTS.md, "CPU time
    of a multi-threaded run")."""
    for run in runs.values():                       # warm: build caches, first touch
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for key, run in runs.items():
            t = clock()
            run()
            best[key] = min(best[key], clock() - t)
    return best
