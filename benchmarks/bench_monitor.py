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
        [--cases digits,transformer]

Prints a Markdown table; it does not write benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def measure(torch, case, trials, steps, warmup=10):
    from noether_core.torch import NoetherMonitor
    name, setup, step = case

    def run(monitored):
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
        if mon is not None:
            mon.report()                       # the last batch moves to the host too
            hook = (mon._overhead - h0) / steps
            rows = len(mon.report().labels)
        else:
            hook, rows = 0.0, 0
        return statistics.median(ts), hook, rows
    run(False)
    run(True)
    plain, monit, hooks = [], [], []
    for _ in range(trials):
        plain.append(run(False)[0])
        m, h, rows = run(True)
        monit.append(m)
        hooks.append(h)
    p, m, h = (statistics.median(x) for x in (plain, monit, hooks))
    ratios = sorted(hh / pp for hh, pp in zip(hooks, plain, strict=True))
    return (name, f"{rows}", f"{p * 1e3:.2f} ms", f"{m * 1e3:.2f} ms",
            f"{(m / p - 1) * 100:+.1f}%", f"{h * 1e3:.3f} ms", f"{h / p * 100:.1f}%",
            f"{ratios[0] * 100:.1f}–{ratios[-1] * 100:.1f}%")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--cases", default="digits,transformer",
                    help="comma-separated subset of digits, transformer")
    args = ap.parse_args(argv)
    cases = {"digits": _digits, "transformer": _transformer}
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in chosen if c not in cases]
    if bad or not chosen:
        ap.error(f"--cases must name some of {sorted(cases)}, got {args.cases!r}")
    try:
        import torch
    except ImportError:
        print("bench_monitor: torch is not installed; nothing to measure")
        return 0
    from _common import machine, table
    torch.set_num_threads(1)
    rows = [measure(torch, c(torch), args.trials, args.steps)
            for c in (cases[name] for name in chosen)]
    print(f"`benchmarks/bench_monitor.py` on {machine()}; torch {torch.__version__}, one "
          f"intra-op thread; {args.trials} interleaved trials × {args.steps} steps "
          f"(after 10 warm-up steps), log_every = 100.\n")
    print(table(rows, ["example", "rows tracked", "step, plain (median)",
                       "step, monitored (median)", "end-to-end", "time in hooks / step",
                       "hooks / plain step", "hooks / plain, range over trials"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
