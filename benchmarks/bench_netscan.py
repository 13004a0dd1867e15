"""Points sharing a batch: is the first layer cheaper as one product over P points?

Compiles benchmarks/netscan/bench_shared_rows.c against pyx/netmm.h with the project's
flags (-O3 -ffp-contract=off -fno-math-errno; the AVX-512F versions come from
``#pragma GCC target`` as in the package, chosen at run time) and runs it for the
baseline (SSE2) and AVX-512F versions, at batch 32 and at the full batch 2048.  Prints
the binary's tables (ns of thread CPU time per point-step; see the C file's header) and
exits non-zero if any fused result differs from the per-point products by a single bit.

Usage: ``python benchmarks/bench_netscan.py [--cc gcc] [--quick]``.  Analysis:
docs/potentials.md, "Points sharing a batch".
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(HERE, "netscan", "bench_shared_rows.c")
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall",
         "-Wno-aggressive-loop-optimizations", "-Wno-psabi"]


def build(cc, out):
    cmd = [cc, *FLAGS, "-I", os.path.join(ROOT, "pyx"), "-I", os.path.join(HERE, "netscan"),
           SRC, "-o", out, "-lm"]
    subprocess.run(cmd, check=True)
    return cmd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default=os.environ.get("CC", "gcc"))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args(argv)
    rc = 0
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "bench_shared_rows")
        print("build:", " ".join(build(args.cc, exe)), flush=True)
        for isa, name in ((2, "avx512f"), (0, "baseline")):
            for batch, reps in ((32, 400), (2048, 8)):
                if name == "baseline" and batch == 2048:
                    continue          # the baseline is ~20x slower: batch 32 tells enough
                if args.quick:
                    reps = max(1, reps // 4)
                r = subprocess.run([exe, str(isa), str(batch), str(reps)],
                                   capture_output=True, text=True)
                print(r.stdout, end="", flush=True)
                if r.returncode == 3:
                    print(f"({name} not available on this CPU)")
                elif r.returncode:
                    rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
