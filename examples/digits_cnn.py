"""A BatchNorm CNN on 8×8 digit images, trained by SGD, watched by NoetherMonitor.

The images are drawn by this script (no download, no scikit-learn): the ten digits of a
5×7 bitmap font, placed at a random offset in an 8×8 frame, with random contrast, an
occasional doubled stroke and Gaussian pixel noise.  The network is two Conv→BatchNorm
→ReLU→pool stages and a linear read-out; each convolution's output channel W[c] feeds a
BatchNorm channel, so the loss is invariant to its scale and the monitor tracks it
(docs/monitor.md).

    python examples/digits_cnn.py                  # 3000 steps, ~1 min on one CPU core
    python examples/digits_cnn.py --steps 20       # a smoke run (the test suite's)

Prints the test accuracy and the monitor's report (the exact balance residual of SGD,
Eq. B.4; the angular update against sqrt(2ηk/(1+β)); Eq. 17) and saves the figure.
Without torch it says so and exits with status 0.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

FONT = {  # 5 columns × 7 rows, '#' = ink
    0: [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    1: ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    2: [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    3: ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
    4: ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    5: ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    6: ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
    7: ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    8: [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    9: [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
}
GLYPHS = np.array([[[c == "#" for c in row] for row in FONT[d]] for d in range(10)],
                  dtype=np.float32)                                  # (10, 7, 5)


def make_digits(n, seed=0, noise=0.35):
    """n images (n, 1, 8, 8) float32 and labels (n,) int64, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    X = np.zeros((n, 1, 8, 8), dtype=np.float32)
    for i, d in enumerate(y):
        g = GLYPHS[d]
        if rng.random() < 0.3:                        # a doubled (bold) stroke
            g = np.maximum(g, np.pad(g, ((0, 0), (1, 0)))[:, :5])
        dy, dx = rng.integers(0, 2), rng.integers(0, 4)
        X[i, 0, dy:dy + 7, dx:dx + 5] = g * rng.uniform(0.6, 1.0)
    X += rng.normal(0.0, noise, X.shape).astype(np.float32)
    return X, y.astype(np.int64)


def make_model(torch):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 2 * 2, 10))


def make_optimizer(torch, model, lr=0.05):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="digits_cnn_monitor.png", help="figure path")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("digits_cnn: this example needs PyTorch (pip install 'noether_core[torch]');"
              " skipped")
        return 0
    from noether_core.torch import NoetherMonitor
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    Xtr, ytr = (torch.from_numpy(a) for a in make_digits(4000, seed=args.seed))
    Xte, yte = (torch.from_numpy(a) for a in make_digits(1000, seed=args.seed + 1))
    model = make_model(torch)
    opt = make_optimizer(torch, model)
    mon = NoetherMonitor(model, opt, max_records=2000)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(Xtr), (args.batch,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        if (step + 1) % max(args.steps // 5, 1) == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item()
    print(f"test accuracy {acc:.3f} on {len(yte)} images")
    rep = mon.report()
    print(rep)
    eq = rep.equilibrium(0.3)
    print(f"equilibrium over steps {eq.first_step}-{eq.last_step}: predicted "
          f"{np.nanmedian(eq.predicted_angular_update):.3e}, measured "
          f"{np.nanmedian(eq.measured_angular_update):.3e} (median over "
          f"{len(rep.labels)} channels), regime {eq.regime}")
    mon.plot().savefig(args.out)
    print(f"figure saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
