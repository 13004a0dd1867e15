"""Command line: ``python -m noether_core demo [options]`` (also the ``noether-core`` script).

The demo trains a BatchNorm MLP by SGD with momentum and weight decay in the compiled loop
and checks the paper's Sec. 4 on it: the exact discrete scale balance, the steady angular
update, the norm schedule Eq. 17 and the RMSProp correspondence (noether_core/demo.py;
what every printed number means and why its tolerance is what it is: docs/demo.md).
``--rule nesterov|adamw|adam|rmsprop`` trains that optimizer instead and checks the steady
angular update and the |q|² schedule predicted from gradient statistics (docs/demo.md §5).
Exit code 0 only if every printed check is within its stated tolerance, 1 if one is not,
2 for bad options.
"""
from __future__ import annotations

import argparse
import sys


def _option(name):
    """The argparse type of the option for DemoConfig field ``name``: parses the text as the
    field's kind and checks it against ``demo.BOUNDS[name]``, the table DemoConfig checks
    too, so both accept and reject the same values with the same message."""
    from .demo import BOUNDS

    bound = BOUNDS[name]

    def parse(text):
        try:
            value = bound.kind(text)
        except ValueError:
            what = "an integer" if bound.kind is int else "a real number"
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        try:
            return bound.check(name, value)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _widths(text):
    """The argparse type of --widths: comma-separated, each checked by demo.check_widths."""
    from .demo import check_widths

    w = []
    for i, piece in enumerate(text.split(",")):
        try:
            w.append(int(piece))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"widths[{i}] must be an integer, got {piece!r} (widths are comma-separated, "
                "such as 32,32)") from None
    try:
        return check_widths(w)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: the demo's options: (option, DemoConfig field, help); the allowed values and the
#: default are appended to each help from demo.BOUNDS and DemoConfig
_DEMO_OPTIONS = [
    ("--steps", "steps", "SGD steps"),
    ("--seed", "seed", "seed of data, initial weights and minibatches"),
    ("--lr", "lr", "learning rate eta"),
    ("--momentum", "momentum", "heavy-ball momentum beta (--rule adam/adamw: beta1; "
     "rmsprop: its smoothing alpha)"),
    ("--weight-decay", "weight_decay", "weight decay k (L2; adamw: decoupled)"),
    ("--batch-size", "batch_size", "minibatch size (at most --n)"),
    ("--n", "n", "data points"),
    ("--dim", "dim", "input dimension"),
    ("--classes", "classes", "classes"),
    ("--separation", "separation", "distance of the class means from the origin"),
    ("--widths", "widths", "hidden widths, comma-separated"),
    ("--r0", "r0", "initial norm of every hidden weight row"),
    ("--wrong-rho-factor", "wrong_rho_factor",
     "wrong-rho controls: 1-rho times and divided by this"),
    ("--late", "late", "fraction of the run, at its end, over which the angular update "
     "(the chord |q^_{n+1} - q^_n|) is averaged (RMS)"),
    ("--chunk", "chunk", "spacing of the grid of direction snapshots (the SGD demo's "
     "compiled calls end at the log-spaced ones it prints; --rule: steps per call)"),
]


#: the options whose default depends on --rule (demo.RULE_DEFAULTS)
_PER_RULE = ("lr", "momentum", "weight_decay")


def _demo_parser(sub):
    from .demo import BOUNDS, DEMO_RULES, RULE_DEFAULTS, WIDTH_BOUND, DemoConfig
    d = DemoConfig()
    p = sub.add_parser(
        "demo", help="train a BatchNorm MLP and check the paper's Sec. 4 on it",
        description="Train BatchNormMLP by SGD(momentum, weight decay, minibatches) and "
        "check, per hidden weight row: the exact scale balance (SPEC 1.1), the steady "
        "angular update, r^2(t) vs Eq. 17, and the RMSProp correspondence (Eq. 18-20). "
        "Exit code 0 only if every check is within its stated tolerance (docs/demo.md). "
        "--rule nesterov/adamw/adam/rmsprop trains that optimizer instead and checks the "
        "steady angular update and the |q|^2 schedule predicted from gradient statistics "
        "(docs/theory.md 9).")
    p.add_argument("--rule", choices=DEMO_RULES, default="sgd",
                   help="optimizer (default %(default)s: the paper's Sec. 4 checks)")
    for option, name, text in _DEMO_OPTIONS:
        value = getattr(d, name)
        if name == "widths":
            kind, allowed = _widths, f"each {WIDTH_BOUND.describe()}"
            default = ",".join(str(w) for w in d.widths)
        elif name in _PER_RULE:
            i = _PER_RULE.index(name)
            kind, allowed, value = _option(name), BOUNDS[name].describe(), None
            default = "per rule: " + ", ".join(f"{r} {RULE_DEFAULTS[r][0][i]:g}"
                                               for r in DEMO_RULES)
        else:
            kind, allowed, default = _option(name), BOUNDS[name].describe(), "%(default)s"
        p.add_argument(option, type=kind, default=value, dest=name,
                       help=f"{text}; {allowed} (default {default})")
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

    values = {name: getattr(args, name) for _, name, _ in _DEMO_OPTIONS}
    for i, name in enumerate(_PER_RULE):          # not given: the rule's default
        if values[name] is None:
            values[name] = demo.RULE_DEFAULTS[args.rule][0][i]
    try:
        cfg = demo.DemoConfig(**values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    prog = (_Progress(demo.runs_total_steps(cfg, args.rule)) if sys.stdout.isatty()
            else None)
    try:
        res = demo.run_demo(cfg, out=None if args.no_figure else args.out,
                            progress=prog, stream=None, rule=args.rule)
    except RuntimeError as exc:                       # a diverged run: say so, exit 1
        print(f"noether_core demo: {exc}", file=sys.stderr)
        return 1
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
