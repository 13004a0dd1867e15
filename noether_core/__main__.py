"""Command line: ``python -m noether_core demo [options]`` (also the ``noether-core`` script).

The demo trains a BatchNorm MLP by SGD with momentum and weight decay in the compiled loop
and checks the paper's Sec. 4 on it: the exact discrete scale balance, the steady angular
update, the norm schedule Eq. 17 and the RMSProp correspondence (noether_core/demo.py;
what every printed number means and why its tolerance is what it is: docs/demo.md).
Exit code 0 only if every printed check is within its stated tolerance, 1 if one is not,
2 for bad options.
"""
from __future__ import annotations

import argparse
import sys


def _number(kind, lo, hi=None, lo_open=False, what=""):
    """An argparse type: ``kind`` (int or float) in [lo, hi] (open ends as flagged)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad = (v != v or v in (float("inf"), float("-inf")) or v < lo or (lo_open and v == lo)
               or (hi is not None and v >= hi))
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    return parse


_positive_int = _number(int, 1, what="a positive integer")
_nonneg_int = _number(int, 0, what="a non-negative integer")
_positive_float = _number(float, 0.0, lo_open=True, what="a finite positive number")
_fraction = _number(float, 0.0, hi=1.0, lo_open=True, what="a number in (0, 1)")


def _widths(text):
    try:
        w = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated hidden widths such as 32,32, got {text!r}")
    if not w or any(x < 2 for x in w):
        raise argparse.ArgumentTypeError(f"every hidden width must be >= 2, got {text!r}")
    return w


def _demo_parser(sub):
    from .demo import DemoConfig
    d = DemoConfig()
    p = sub.add_parser(
        "demo", help="train a BatchNorm MLP and check the paper's Sec. 4 on it",
        description="Train BatchNormMLP by SGD(momentum, weight decay, minibatches) and "
        "check, per hidden weight row: the exact scale balance (SPEC 1.1), the steady "
        "angular update, r^2(t) vs Eq. 17, and the RMSProp correspondence (Eq. 18-20). "
        "Exit code 0 only if every check is within its stated tolerance (docs/demo.md).")
    p.add_argument("--steps", type=_positive_int, default=d.steps,
                   help="SGD steps (default %(default)s)")
    p.add_argument("--seed", type=_nonneg_int, default=d.seed,
                   help="seed of data, initial weights and minibatches (default %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=d.lr,
                   help="learning rate eta (default %(default)s)")
    p.add_argument("--momentum", type=_fraction, default=d.momentum,
                   help="heavy-ball momentum beta in (0, 1) (default %(default)s)")
    p.add_argument("--weight-decay", type=_positive_float, default=d.weight_decay,
                   help="L2 weight decay k > 0 (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="minibatch size (default %(default)s)")
    p.add_argument("--n", type=_positive_int, default=d.n,
                   help="data points (default %(default)s)")
    p.add_argument("--dim", type=_positive_int, default=d.dim,
                   help="input dimension (default %(default)s)")
    p.add_argument("--classes", type=_positive_int, default=d.classes,
                   help="classes (default %(default)s)")
    p.add_argument("--separation", type=_positive_float, default=d.separation,
                   help="distance of the class means from the origin (default %(default)s)")
    p.add_argument("--widths", type=_widths, default=d.widths,
                   help="hidden widths, comma-separated (default 32,32)")
    p.add_argument("--r0", type=_positive_float, default=d.r0,
                   help="initial norm of every hidden weight row (default %(default)s)")
    p.add_argument("--wrong-rho-factor", type=_positive_float, default=d.wrong_rho_factor,
                   help="wrong-rho controls: 1-rho times and divided by this (default "
                   "%(default)s)")
    p.add_argument("--late", type=_fraction, default=d.late,
                   help="fraction of the run, at its end, for the late-time angle "
                   "(default %(default)s)")
    p.add_argument("--chunk", type=_positive_int, default=d.chunk,
                   help="steps per compiled call (direction snapshots between calls; "
                   "default %(default)s)")
    p.add_argument("--out", default="noether_demo",
                   help="folder for the figure demo.png (default ./%(default)s)")
    p.add_argument("--no-figure", action="store_true", help="do not write the figure")
    return p


class _Progress:
    """A progress indication on a terminal: tqdm if installed, else a percentage line."""

    def __init__(self, total):
        self.total, self.done, self.bar = total, 0, None
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="step", unit_scale=True, leave=False,
                            file=sys.stdout)
        except ImportError:
            pass

    def __call__(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            sys.stdout.write(f"\r  training ... {100 * self.done / self.total:5.1f}%")
            sys.stdout.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stdout.write("\r" + " " * 40 + "\r")
            sys.stdout.flush()


def _demo(args, parser) -> int:
    from . import demo

    try:
        cfg = demo.DemoConfig(
            steps=args.steps, seed=args.seed, lr=args.lr, momentum=args.momentum,
            weight_decay=args.weight_decay, batch_size=args.batch_size, n=args.n,
            dim=args.dim, classes=args.classes, separation=args.separation,
            widths=args.widths, r0=args.r0, wrong_rho_factor=args.wrong_rho_factor,
            late=args.late, chunk=args.chunk)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    prog = _Progress(demo.runs_total_steps(cfg)) if sys.stdout.isatty() else None
    try:
        res = demo.run_demo(cfg, out=None if args.no_figure else args.out,
                            progress=prog, stream=None)
    finally:
        if prog is not None:
            prog.close()
    print(res.text)
    return 0 if res.passed else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noether_core",
                                     description="noether_core command line")
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo_parser = _demo_parser(sub)
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        return _demo(args, demo_parser)
    return 2                                            # pragma: no cover (argparse exits)


if __name__ == "__main__":
    sys.exit(main())
