"""Issue 18, theory half: the steady angular update and the |q|² schedule of every rule,
predicted from gradient statistics, against the library's simulations and real torch
training.  Prints figures; writes nothing.

A. ``noether_core.train`` of a BatchNormMLP (widths 32,32) on gaussian_mixture(2048, 16,
   4 classes), batches of 128, 12000 steps; the minibatch gradients replayed from the
   documented draw stream (docs/rules.md §2).
B. (if torch is installed) the same network written in torch (Linear without bias →
   BatchNorm1d → ReLU, × 2, → Linear; float64), trained by torch.optim with the same
   data; gradients read from ``p.grad``, the coupled rules' second moment rebuilt from
   gradients and weights as the optimizer holds it.

Per rule, per hidden weight row (one scale block), over the late window (last 4000
steps): the measured RMS chord |q̂_{n+1} − q̂_n|; ``theory.equilibrium`` from the
window's gradient statistics (steady form); the RMS of ``theory.rule_norm_schedule``'s
predicted chord (time-resolved form); the earlier closed form where one existed
(Nesterov "uncorrelated", AdamW rotational equilibrium); and the largest median |q|²
schedule error over steps ≥ 100.  Median and 10–90 % over live blocks.

C. (if torch is installed) the same torch runs watched by ``NoetherMonitor``:
   ``MonitorReport.equilibrium`` (window the last ``--window`` steps): measured RMS chord
   over predicted (steady ``theory.equilibrium`` from the monitor's window statistics, and
   the online ``rule_norm_schedule``), and the schedule's final |q|² over the measured.

Usage: python benchmarks/theory_check.py [--steps N] [--no-torch] [--parts abc]
(A+B ~2–4 min; C ~1 min per rule at 12000 steps)
"""
import argparse
import sys
import time

import numpy as np

import noether_core as nc
from noether_core import theory as T
from noether_core.datasets import gaussian_mixture
from noether_core.demo import _draw_rows as draw_rows  # the loop's rows, vectorised

WIDTHS = (32, 32)
BATCH = 128

#: (label, theory rule name, hyper-parameters in torch's names)
RULES = [
    ("SGD heavy ball", "sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-3}),
    ("SGD Nesterov", "nesterov", {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-3}),
    ("AdamW b1=0.9", "adamw", {"lr": 1e-2, "betas": (0.9, 0.999), "weight_decay": 0.1}),
    ("AdamW b1=0.7", "adamw", {"lr": 1e-2, "betas": (0.7, 0.999), "weight_decay": 0.1}),
    ("AdamW b1=0.5", "adamw", {"lr": 1e-2, "betas": (0.5, 0.999), "weight_decay": 0.1}),
    ("Adam L2", "adam", {"lr": 1e-2, "betas": (0.9, 0.999), "weight_decay": 2e-3}),
    ("RMSprop L2", "rmsprop", {"lr": 1e-3, "alpha": 0.99, "weight_decay": 0.1}),
]


def nc_rule(name, h):
    if name in ("sgd", "nesterov"):
        return nc.rules.SGD(lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                            nesterov=name == "nesterov")
    if name == "adamw":
        return nc.rules.AdamW(lr=h["lr"], betas=h["betas"], weight_decay=h["weight_decay"])
    if name == "adam":
        return nc.rules.Adam(lr=h["lr"], betas=h["betas"], weight_decay=h["weight_decay"])
    return nc.rules.RMSprop(lr=h["lr"], alpha=h["alpha"], weight_decay=h["weight_decay"])


def old_form(name, h):
    if name == "nesterov":
        return T.steady_angular_update(h["lr"], h["momentum"], h["weight_decay"],
                                       rule="nesterov", assumption="uncorrelated")
    if name == "adamw":
        return T.steady_angular_update(h["lr"], h["betas"][0], h["weight_decay"],
                                       rule="adamw")
    if name == "sgd":
        return T.steady_angular_update(h["lr"], h["momentum"], h["weight_decay"])
    return np.nan


def evaluate(name, h, blocks, window):
    """blocks: list of (Q (N+1, d), G (N, d)).  Returns the figures of one rule."""
    live = [(Q, G) for Q, G in blocks if not np.any(np.all(G == 0.0, axis=1))]
    stats, meas, a = [], [], []
    for Q, G in live:                                 # dead units (no gradient) left out
        kw = {} if name in ("sgd", "nesterov") else {"params": Q[:-1]}
        stats.append(T.gradient_stats(name, G, **kw, **h))
        meas.append(np.sqrt(np.mean(T.angular_updates(Q)[-window:] ** 2)))
        a.append(np.sum(Q * Q, 1))
    a, meas = np.stack(a, 1), np.array(meas)

    def stack(f):
        xs = [getattr(g, f) for g in stats]
        return None if xs[0] is None else np.stack(xs, 1)

    gs = T.GradStats(name, stack("update_sq"), stack("cross"), stack("metric"),
                     stack("precond"), len(live[0][1]), None, stack("shift"))
    eq = T.equilibrium(name, grad_stats=gs.mean(gs.steps - window), **h)
    sc = T.rule_norm_schedule(name, gs, np.sqrt(a[0]), **h)
    steady = eq.angular_update
    sched = np.sqrt(np.mean(sc.angular_update[-window:] ** 2, axis=0))
    med_err = np.median(np.abs(sc.norm_sq / a - 1.0), axis=1)
    regimes = {eq.regime}
    return {"n": len(meas), "chord": float(np.median(meas)),
            "steady": meas / steady, "sched": meas / sched,
            "old": meas / old_form(name, h), "sched_err": float(med_err[100:].max()),
            "regime": ",".join(sorted(regimes))}


def fmt(label, r):
    def q(x):
        return f"{np.median(x):.4f} [{np.percentile(x, 10):.3f},{np.percentile(x, 90):.3f}]"
    old = "   --" if np.all(np.isnan(r["old"])) else f"{np.median(r['old']):.4f}"
    return (f"  {label:<15} {r['n']:3d} {r['chord']:.5f}  {q(r['steady'])}  "
            f"{q(r['sched'])}  {old:>7}  {r['sched_err']:.4f}  {r['regime']}")


HEAD = ("  rule            blk  chord    measured/steady (10-90%)   measured/schedule "
        "(10-90%)   earlier  |q|2 err  regime")


def part_a(steps, window):
    X, y = gaussian_mixture(2048, 16, classes=4, seed=0, separation=1.5)
    pot = nc.potentials.BatchNormMLP(X, y, widths=WIDTHS)
    names = [s.blocks[0] for s in pot.symmetries if s.family == "scale"]
    q0 = pot.init(seed=1)
    print(f"A. noether_core.train, BatchNormMLP {WIDTHS}, batch {BATCH}, {steps} steps, "
          f"late window {window}")
    print(HEAD)
    for label, name, h in RULES:
        t0 = time.perf_counter()
        res = nc.train(nc_rule(name, h), pot, q0, steps, batch_size=BATCH, seed=0,
                       charges=False)
        rows = draw_rows(np.random.default_rng(0), pot.n_data, BATCH, steps)
        G = np.array([pot.grad(res.q[n], rows[n]) for n in range(steps)])
        blocks = [(res.q[:, pot.blocks[nm]], G[:, pot.blocks[nm]]) for nm in names]
        r = evaluate(name, h, blocks, window)
        print(fmt(label, r) + f"  ({time.perf_counter() - t0:.1f} s)")
        sys.stdout.flush()


def _torch_net(torch, name, h):
    """Parts B and C's network in torch (float64; the seed 0 initialisation) and its
    torch.optim optimizer ``name`` with hyper-parameters ``h``."""
    torch.manual_seed(0)
    layers, d_in = [], 16
    for w in WIDTHS:
        layers += [torch.nn.Linear(d_in, w, bias=False), torch.nn.BatchNorm1d(w),
                   torch.nn.ReLU()]
        d_in = w
    model = torch.nn.Sequential(*layers, torch.nn.Linear(d_in, 4)).double()
    if name in ("sgd", "nesterov"):
        opt = torch.optim.SGD(model.parameters(), nesterov=name == "nesterov", **h)
    else:
        opt = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam,
               "rmsprop": torch.optim.RMSprop}[name](model.parameters(), **h)
    return model, opt


def part_b(steps, window):
    try:
        import torch
    except ImportError:
        print("B. skipped: torch is not installed")
        return
    torch.set_num_threads(1)
    X, y = gaussian_mixture(2048, 16, classes=4, seed=0, separation=1.5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(np.asarray(y, dtype=np.int64))
    print(f"B. torch.optim, the same network in torch (float64), batch {BATCH}, {steps} "
          f"steps, late window {window}")
    print(HEAD)
    for label, name, h in RULES:
        t0 = time.perf_counter()
        model, opt = _torch_net(torch, name, h)
        hidden = [m.weight for m in model if isinstance(m, torch.nn.Linear)][:-1]
        Ws = [np.empty((steps + 1,) + tuple(w.shape)) for w in hidden]
        Gs = [np.empty((steps,) + tuple(w.shape)) for w in hidden]
        gen = torch.Generator().manual_seed(0)
        for i, w in enumerate(hidden):
            Ws[i][0] = w.detach().numpy()
        for n in range(steps):
            idx = torch.randperm(len(Xt), generator=gen)[:BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            for i, w in enumerate(hidden):
                Gs[i][n] = w.grad.numpy()
            opt.step()
            for i, w in enumerate(hidden):
                Ws[i][n + 1] = w.detach().numpy()
        blocks = [(W[:, j, :], G[:, j, :]) for W, G in zip(Ws, Gs, strict=True)
                  for j in range(W.shape[1])]
        r = evaluate(name, h, blocks, window)
        print(fmt(label, r) + f"  ({time.perf_counter() - t0:.1f} s)")
        sys.stdout.flush()


def part_c(steps, window):
    """The monitor's own prediction (MonitorReport.equilibrium) on part B's torch runs."""
    try:
        import torch

        from noether_core.torch import NoetherMonitor
    except ImportError:
        print("C. skipped: torch is not installed")
        return
    torch.set_num_threads(1)
    X, y = gaussian_mixture(2048, 16, classes=4, seed=0, separation=1.5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(np.asarray(y, dtype=np.int64))
    print(f"C. NoetherMonitor on B's runs (float64), {steps} steps, "
          f"equilibrium(window={window}/{steps}); median [10-90%] over live rows")
    print("  rule            blk  chord    measured/steady (10-90%)   measured/schedule "
          "(10-90%)   |q|2 sched/meas  regime")
    for label, name, h in RULES:
        t0 = time.perf_counter()
        model, opt = _torch_net(torch, name, h)
        mon = NoetherMonitor(model, opt, record_every=50, log_every=200)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randperm(len(Xt), generator=gen)[:BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
        eq = mon.report().equilibrium(window / steps)
        live = eq.grad_stats["grad_norm2"] > 0
        m = eq.measured_angular_update[live]
        st, sc = m / eq.predicted_angular_update[live], m / eq.scheduled_angular_update[live]
        na = eq.scheduled_norm_sq[live] / eq.measured_norm_sq[live]

        def q(x):
            return (f"{np.median(x):.4f} [{np.percentile(x, 10):.3f},"
                    f"{np.percentile(x, 90):.3f}]")
        print(f"  {label:<15} {live.sum():3d} {np.median(m):.5f}  {q(st)}  {q(sc)}  "
              f"{np.median(na):.4f}  {eq.regime}  ({time.perf_counter() - t0:.1f} s)")
        sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--window", type=int, default=4000)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    a = p.parse_args(argv)
    if "a" in a.parts:
        part_a(a.steps, a.window)
    if not a.no_torch and "b" in a.parts:
        part_b(a.steps, a.window)
    if not a.no_torch and "c" in a.parts:
        part_c(a.steps, a.window)


if __name__ == "__main__":
    main()
