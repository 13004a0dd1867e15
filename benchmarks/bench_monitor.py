"""NoetherMonitor's overhead per training step on the two examples (issue 18: ≤ 10 %).

For each example model (examples/digits_cnn.py: BatchNorm CNN, SGD, float32, batch 64;
examples/char_transformer.py: 2-block transformer with QK-RMSNorm and a LayerNorm-fed
MLP, AdamW, batch 32 × 32 characters) this runs interleaved trials of plain and monitored
training (``--steps`` steps each after 10 warm-up steps, which include the audit and the
block discovery), one intra-op thread, and reports

* the time spent inside the monitor's hooks per step (its direct cost: the device-side
  reductions every step and, amortised, the host-side processing every ``log_every``
  = 100 steps), relative to the median plain step — the figure the target is about;
* the end-to-end medians of plain and monitored steps (on a shared machine these carry
  the load noise: see the spread over trials).

    PYTHONPATH=.:python python benchmarks/bench_monitor.py [--trials 5] [--steps 200]
        [--cases digits,transformer] [--against DIR] [--alternate]

``--against DIR`` compares two versions of the monitor in one run: DIR is another
checkout of the repository (its kernels built, e.g. ``git worktree add /tmp/before
<commit>`` or ``git archive <commit>`` plus the compiled ``noether_core/_kernels/*.so``).
Each trial then runs, for every case, one fresh worker process per version, the two
versions alternating (before, after, before, after, …), so both see the same machine
load; a worker makes the warm-up runs and then one plain and one monitored run of
``--steps`` steps, and the table gives per version the medians over the trials of the
plain step, the time in hooks per step and their ratio, with the ratio's range.

``--alternate`` trains a plain and a monitored copy in one process with their steps
alternating, so the end-to-end difference (means over the pairs) is free of the drift
between consecutive runs that the trial design's end-to-end column carries.

Prints a Markdown table; it does not write benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, HERE)


def _digits(torch):
    import digits_cnn as ex
    X, y = (torch.from_numpy(a) for a in ex.make_digits(4000, seed=0))

    def setup():
        torch.manual_seed(0)
        model = ex.make_model(torch)
        return model, ex.make_optimizer(torch, model)

    def step(model, opt, gen):
        idx = torch.randint(0, len(X), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    return "digits CNN (BatchNorm2d 16+32 ch, 8×8, batch 64, float32, SGD)", setup, step


def _transformer(torch):
    import char_transformer as ex
    _, vocab, data = ex.load_text()
    data = torch.from_numpy(data)

    def setup():
        torch.manual_seed(0)
        model = ex.make_model(torch, len(vocab))
        return model, ex.make_optimizer(torch, model)

    def step(model, opt, gen):
        x, y = ex.batch(torch, data, gen, 32, 32)
        opt.zero_grad()
        out = model(x)
        torch.nn.functional.cross_entropy(out.reshape(-1, len(vocab)),
                                          y.reshape(-1)).backward()
        opt.step()
    return ("char transformer (2 blocks, width 64, QK-RMSNorm + LayerNorm MLP, "
            "batch 32×32, float32, AdamW)", setup, step)


def _run(torch, case, monitored, steps, warmup=10):
    """One run of ``steps`` timed steps after ``warmup``: (median step, seconds in the
    monitor's hooks per step, rows tracked)."""
    from noether_core.torch import NoetherMonitor
    _, setup, step = case
    model, opt = setup()
    mon = NoetherMonitor(model, opt) if monitored else None
    gen = torch.Generator().manual_seed(1)
    ts = []
    h0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            h0 = mon._overhead if mon else 0.0
        t0 = time.perf_counter()
        step(model, opt, gen)
        if i >= warmup:
            ts.append(time.perf_counter() - t0)
    if mon is None:
        return statistics.median(ts), 0.0, 0
    mon.report()                               # the last batch moves to the host too
    return statistics.median(ts), (mon._overhead - h0) / steps, len(mon.report().labels)


def _trial(torch, case, steps):
    """Warm-up runs, then one plain and one monitored run: (plain, monitored, hooks,
    rows)."""
    _run(torch, case, False, steps // 4)
    _run(torch, case, True, steps // 4)
    plain = _run(torch, case, False, steps)[0]
    monit, hook, rows = _run(torch, case, True, steps)
    return plain, monit, hook, rows


def _summary(name, res):
    plain, monit, hooks, rows = (list(x) for x in zip(*res, strict=True))
    p, m, h = (statistics.median(x) for x in (plain, monit, hooks))
    ratios = sorted(hh / pp for hh, pp in zip(hooks, plain, strict=True))
    return (name, f"{rows[0]}", f"{p * 1e3:.2f} ms", f"{m * 1e3:.2f} ms",
            f"{(m / p - 1) * 100:+.1f}%", f"{h * 1e3:.3f} ms",
            f"{statistics.median(ratios) * 100:.1f}%",
            f"{ratios[0] * 100:.1f}–{ratios[-1] * 100:.1f}%")


def measure(torch, case, trials, steps):
    """In-process trials of this tree's monitor (warm-up runs first)."""
    _run(torch, case, False, steps // 4)
    _run(torch, case, True, steps // 4)
    res = []
    for _ in range(trials):
        plain = _run(torch, case, False, steps)[0]
        res.append((plain,) + _run(torch, case, True, steps))
    return _summary(case[0], res)


def step_by_step(torch, case, steps, warmup=30):
    """A plain and a monitored training in the same process, their steps alternating
    (plain, monitored, plain, …) so that both see the same machine state: the end-to-end
    cost without the drift between consecutive runs.  Returns a table row."""
    from noether_core.torch import NoetherMonitor
    name, setup, step = case
    (ma, oa), (mb, ob) = setup(), setup()
    mon = NoetherMonitor(mb, ob)
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(warmup):
        step(ma, oa, ga)
        step(mb, ob, gb)
    h0 = mon._overhead
    ta, tb = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(ma, oa, ga)
        t1 = time.perf_counter()
        step(mb, ob, gb)
        ta.append(t1 - t0)
        tb.append(time.perf_counter() - t1)
    mon.report()
    hook = (mon._overhead - h0) / steps
    pa, pb = statistics.mean(ta), statistics.mean(tb)
    return (name, f"{len(mon.report().labels)}", f"{pa * 1e3:.2f} ms", f"{pb * 1e3:.2f} ms",
            f"{(pb / pa - 1) * 100:+.1f}%", f"{hook * 1e3:.3f} ms",
            f"{hook / pa * 100:.1f}%")


def _worker(version_root, case_name, steps):
    """One trial of ``case_name`` in a fresh process importing noether_core from
    ``version_root``: the parsed JSON line it prints."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([version_root, os.path.join(version_root, "python")])
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", case_name,
                          "--steps", str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(cases, chosen, trials, steps, against):
    """Alternating worker processes of two versions (``against``, then this tree)."""
    here = os.path.abspath(os.path.join(HERE, ".."))
    versions = (("before", os.path.abspath(against)), ("after", here))
    res = {(c, v): [] for c in chosen for v, _ in versions}
    names = {}
    for _ in range(trials):
        for c in chosen:
            for v, root in versions:
                r = _worker(root, c, steps)
                names[c] = r["name"]
                res[(c, v)].append((r["plain"], r["monit"], r["hook"], r["rows"]))
    rows = []
    for c in chosen:
        for v, root in versions:
            rows.append((f"{names[c]}: {v} ({root})",)
                        + _summary("", res[(c, v)])[1:])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--cases", default="digits,transformer",
                    help="comma-separated subset of digits, transformer")
    ap.add_argument("--against", default=None, metavar="DIR",
                    help="another checkout of the repository: compare its monitor "
                         "(before) with this tree's (after), alternating processes")
    ap.add_argument("--alternate", action="store_true",
                    help="one plain and one monitored training whose steps alternate in "
                         "one process (means over --steps pairs): the end-to-end cost")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cases = {"digits": _digits, "transformer": _transformer}
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in chosen if c not in cases]
    if bad or not chosen:
        ap.error(f"--cases must name some of {sorted(cases)}, got {args.cases!r}")
    if args.trials < 1 or args.steps < 4:
        ap.error(f"--trials must be ≥ 1 and --steps ≥ 4, got {args.trials}, {args.steps}")
    if args.against is not None and not os.path.isdir(os.path.join(args.against,
                                                                    "noether_core")):
        ap.error(f"--against must be a checkout holding noether_core/, got "
                 f"{args.against!r}")
    try:
        import torch
    except ImportError:
        print("bench_monitor: torch is not installed; nothing to measure")
        return 0
    torch.set_num_threads(1)
    if args.worker is not None:                 # one trial, in a process of its own
        case = cases[args.worker](torch)
        plain, monit, hook, rows = _trial(torch, case, args.steps)
        print(json.dumps({"name": case[0], "plain": plain, "monit": monit, "hook": hook,
                          "rows": rows}))
        return 0
    from _common import machine, table
    if args.alternate:
        rows = [step_by_step(torch, cases[name](torch), args.steps) for name in chosen]
        print(f"`benchmarks/bench_monitor.py --alternate` on {machine()}; torch "
              f"{torch.__version__}, one intra-op thread; plain and monitored steps "
              f"alternating, means over {args.steps} pairs after 30 warm-up pairs, "
              f"log_every = 100.\n")
        print(table(rows, ["example", "rows tracked", "step, plain (mean)",
                           "step, monitored (mean)", "end-to-end", "time in hooks / step",
                           "hooks / plain step"]))
        return 0
    head = ["example", "rows tracked", "step, plain (median)", "step, monitored (median)",
            "end-to-end", "time in hooks / step", "hooks / plain step (median)",
            "hooks / plain, range over trials"]
    if args.against is None:
        rows = [measure(torch, c(torch), args.trials, args.steps)
                for c in (cases[name] for name in chosen)]
        how = f"{args.trials} interleaved trials × {args.steps} steps in one process"
    else:
        rows = compare(cases, chosen, args.trials, args.steps, args.against)
        how = (f"{args.trials} trials × {args.steps} steps, one process per trial and "
               f"version, versions alternating")
    print(f"`benchmarks/bench_monitor.py` on {machine()}; torch {torch.__version__}, one "
          f"intra-op thread; {how} (after warm-up runs), log_every = 100.\n")
    print(table(rows, head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
