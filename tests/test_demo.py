"""The ``python -m noether_core demo`` job (issue 5 item 3; docs/demo.md).

The demo's numbers are computed from the run, never asserted: these tests run it at
reduced size (``demo.reduced()``: 516 parameters, 6000 steps, weight decay 2e-3 so that
the norm relaxes within the run — a few seconds) and check

* the exit code (0) of the real command line, and that every error it prints is finite
  and within the tolerance it prints;
* on the structured result, every check's errors against its tolerances;
* that the checks can fail: fed a wrong learning rate or weight decay, the angle and
  Eq. 17 checks reject the same run (they are not vacuous);
* the identities the demo relies on (the chord from |q|² and |Δ|² alone, docs/demo.md
  §2; chunked runs equal one run);
* the figure is written when matplotlib is installed, on a ``matplotlib.figure.Figure``:
  pyplot is not imported and the process's backend is left alone;
* bad options give argparse errors (exit code 2, message naming the option), and the
  command line and ``DemoConfig`` accept and reject the same values (one table,
  ``demo.BOUNDS``), with the same message;
* ``noether_core.torch`` imports without torch (the monitor then says what to install).
"""
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import fields, replace

import numpy as np
import pytest

import noether_core as nc
from noether_core import demo
from noether_core.__main__ import main

REDUCED_ARGS = ["--steps", "6000", "--n", "256", "--dim", "8", "--widths", "16,16",
                "--weight-decay", "2e-3", "--r0", "3", "--chunk", "500"]


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo.run_demo(demo.reduced(), out=str(out), threads=2)


def test_reduced_args_are_the_reduced_config():
    """The command-line options above describe the same run as demo.reduced()."""
    d = demo.reduced()
    assert (d.steps, d.n, d.dim, d.widths, d.weight_decay, d.r0, d.chunk) == \
        (6000, 256, 8, (16, 16), 2e-3, 3.0, 500)


def test_every_check_within_tolerance(result):
    """Every check passes, every reported error is finite and within its tolerance."""
    assert [c.name for c in result.checks] == ["balance", "angle", "eq17", "rmsprop"]
    for c in result.checks:
        assert c.passed, "\n".join(c.lines)
        for key, val in c.errors.items():
            assert np.isfinite(val), (c.name, key, val)
        for key, tol in c.tolerances.items():
            if key in c.errors:
                if key.startswith("frac_within"):
                    assert c.errors[key] >= tol, (c.name, key)
                else:
                    assert c.errors[key] <= tol, (c.name, key)
    assert result.passed
    assert result.assumption == "uncorrelated"     # minibatch SGD (docs/theory.md §7)
    bal = result.checks[0]
    assert bal.errors["worst_residual"] <= demo.BALANCE_TOL
    rms = result.checks[3].errors
    matched = rms["transient[matched]"]
    wrong = [v for k, v in rms.items() if k.startswith("transient[") and "matched" not in k]
    assert len(wrong) == 2 and all(matched < w for w in wrong)


def test_figure_written(result):
    """demo.png is written (PNG signature) when matplotlib is installed; else None."""
    if _has_matplotlib():
        assert result.figure is not None and os.path.getsize(result.figure) > 10_000
        with open(result.figure, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"figure: {result.figure}" in result.text
    else:
        assert result.figure is None and "matplotlib is not installed" in result.text


def test_checks_can_fail(result):
    """Fed the wrong hyper-parameters, the angle and Eq. 17 checks reject the same run:
    sqrt(2) too large a predicted chord (lr doubled) and a 4x wrong decay rate are far
    outside the tolerances (a few per cent)."""
    rec, cfg = result.series["sgd"], result.config
    assert demo.angle_check(rec, cfg).passed
    assert not demo.angle_check(rec, replace(cfg, lr=2 * cfg.lr)).passed
    chk, _, _ = demo.norm_check(rec, cfg)
    assert chk.passed
    bad, _, _ = demo.norm_check(rec, replace(cfg, weight_decay=4 * cfg.weight_decay))
    assert not bad.passed
    bad, _, _ = demo.norm_check(rec, replace(cfg, lr=2 * cfg.lr))
    assert not bad.passed


def test_approximation_bound_holds_at_every_step(result):
    """docs/demo.md §3: the terms Eq. 17 drops are bounded by approximation_bound at
    every step and block, not only at the printed times (a bound, not a statistic)."""
    cfg, rec, ser = result.config, result.series["sgd"], result.series["norm"]
    bound = demo.approximation_bound(rec.a, rec.D, cfg.lr, cfg.momentum, cfg.weight_decay)
    e2 = np.abs(ser["r2_true_drive"] / rec.a - 1.0)
    assert np.all(np.isfinite(bound)) and np.all(e2[1:] <= bound[1:])
    # and it is not vacuous: the bound is a few per cent, not O(1)
    assert np.median(bound[1:]) < 0.05


def test_cli_exit_code_and_printed_numbers(tmp_path):
    """``python -m noether_core demo`` at reduced size: exit code 0, and every printed
    error is finite and within the tolerance printed next to it."""
    proc = subprocess.run([sys.executable, "-m", "noether_core", "demo", *REDUCED_ARGS,
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "all checks within tolerance" in out and "FAIL" not in out
    # balance: "residual ...: 3.8e-16   [tol 1e-12: round-off]"
    m = re.search(r"worst relative residual[^:]*: (\S+)\s+\[tol (\S+):", out)
    res, tol = float(m.group(1)), float(m.group(2))
    assert np.isfinite(res) and res <= tol == 1e-12
    # angle: "blocks within tolerance: 31/32 [need >= 90%]"
    m = re.search(r"blocks within tolerance: (\d+)/(\d+) \[need >= (\d+)%\]", out)
    assert int(m.group(1)) >= float(m.group(3)) / 100 * int(m.group(2))
    m = re.search(r"\|ratio\^2 - 1\|: median (\S+), p90 (\S+);", out)
    assert all(np.isfinite(float(x)) for x in m.groups())
    # Eq. 17 table rows: step, then median / p90 of the error, its kappa part, its
    # approximations-2-4 part and their bound, then blocks within / blocks
    rows = re.findall(r"^\s+(\d+)" + r"\s+(\S+) / (\S+)" * 4 + r"\s+(\d+)/(\d+)$", out,
                      flags=re.M)
    assert len(rows) == 5
    for row in rows:
        vals = [float(x) for x in row[1:9]]
        assert all(np.isfinite(v) for v in vals)
        assert int(row[9]) == int(row[10])      # every block within its bound
        assert vals[4] <= vals[6]               # median of approx. 2-4 <= median bound
    # RMSProp: transient mismatches, matched below both wrong-rho controls
    trans = dict(re.findall(r"^\s+(matched|1-rho \S+)\s+(\S+)\s+\S+$", out, flags=re.M))
    assert len(trans) == 3
    vals = {k: float(v) for k, v in trans.items()}
    assert all(np.isfinite(v) for v in vals.values())
    assert all(vals["matched"] < v for k, v in vals.items() if k != "matched")
    if _has_matplotlib():
        assert (tmp_path / "demo.png").is_file()
        assert f"figure: {tmp_path / 'demo.png'}" in out


def test_exit_code_one_when_a_check_fails(monkeypatch, capsys):
    """main() returns 1 when the result says a check failed (wiring of the exit code)."""
    failing = demo.Check("x", False, {"e": 1.0}, {"e": 0.5}, ["  x FAIL"])
    fake = demo.DemoResult(demo.reduced(), [failing], "uncorrelated", "  x FAIL", None, 0.0)
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: fake)
    assert main(["demo", "--no-figure"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv, pattern", [
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--steps", "ten"], "--steps"),
    (["demo", "--lr", "-0.1"], "--lr"),
    (["demo", "--momentum", "1.5"], "--momentum"),
    (["demo", "--weight-decay", "0"], "--weight-decay"),
    (["demo", "--widths", "16,x"], "--widths"),
    (["demo", "--widths", "1"], "--widths"),
    (["demo", "--late", "1"], "--late"),
    (["demo", "--seed", "-3"], "--seed"),
    (["demo", "--batch-size", "300", "--n", "256"], "batch_size"),
    (["demo", "--weight-decay", "0.05"], "rho"),          # 1 - rho x10 > 1: no control
    (["demo", "--bogus"], "unrecognized"),
    ([], "required"),
])
def test_bad_options_are_argparse_errors(argv, pattern, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert re.search(pattern, capsys.readouterr().err)


def test_chords_from_norms_and_steps():
    """c² = (|Δ|² − (Δr)²)/(r_n r_{n+1}) (law of cosines) equals |q̂_{n+1} − q̂_n|²
    computed from the rows; round-off relative to c² ~ 1e-16/c²: 1e-9 for c ~ 1e-3."""
    rng = np.random.default_rng(0)
    q = np.cumsum(1e-3 * rng.standard_normal((200, 7)), axis=0) + rng.standard_normal(7)
    a = np.sum(q * q, axis=1)[:, None]
    D = np.concatenate([[0.0], np.sum(np.diff(q, axis=0) ** 2, axis=1)])[:, None]
    want = nc.theory.angular_updates(q)
    np.testing.assert_allclose(demo.chords(a, D)[:, 0], want, rtol=1e-9)


def test_chunked_run_equals_one_run():
    """Chaining compiled chunks with state= reproduces one run bit for bit (the demo's
    snapshots do not perturb the trajectory)."""
    cfg = demo.reduced(steps=600, chunk=600)
    pot, q0, names = demo.build_problem(cfg)
    rule = nc.rules.SGD(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    one = demo.run_chunked(rule, pot, q0, names, cfg, charges=True)
    many = demo.run_chunked(rule, pot, q0, names, replace(cfg, chunk=70), charges=True)
    for name in ("a", "g2", "D", "loss", "g2_rest"):
        np.testing.assert_array_equal(getattr(one, name), getattr(many, name))
    np.testing.assert_array_equal(one.dirs[0][-1], many.dirs[0][-1])
    assert one.worst_residual <= demo.BALANCE_TOL and many.worst_residual <= demo.BALANCE_TOL
    # calls ending only at chosen snapshots (the demo's snapshot_steps): same series, the
    # same directions at the steps both runs snapshot
    few = demo.run_chunked(rule, pot, q0, names, replace(cfg, chunk=70), charges=True,
                           stops=[140, 350])
    assert list(few.snap_steps) == [0, 140, 350, 600]
    for name in ("a", "g2", "D", "loss", "g2_rest"):
        np.testing.assert_array_equal(getattr(one, name), getattr(few, name))
    for i, n in enumerate(few.snap_steps):
        j = list(many.snap_steps).index(n)
        for d_few, d_many in zip(few.dirs, many.dirs, strict=True):
            np.testing.assert_array_equal(d_few[i], d_many[j])
    # without block statistics (the baselines): the same trajectory, a, losses, directions
    bare = demo.run_chunked(rule, pot, q0, names, cfg, stops=[140, 350], block_stats=False)
    assert bare.g2 is None and bare.D is None and bare.g2_rest is None
    np.testing.assert_array_equal(bare.a, one.a)
    np.testing.assert_array_equal(bare.loss, one.loss)
    for d_bare, d_few in zip(bare.dirs, few.dirs, strict=True):
        np.testing.assert_array_equal(d_bare, d_few)


def test_snapshot_steps_are_the_printed_ones(result):
    """The direction table prints exactly the steps of demo.snapshot_steps, and every run
    snapshots there (log-spaced indices of the every-``chunk`` grid, 0 and the end)."""
    cfg = result.config
    want = demo.snapshot_steps(cfg)
    assert want[0] == 0 and want[-1] == cfg.steps and want == sorted(set(want))
    assert all(n % cfg.chunk == 0 or n == cfg.steps for n in want)
    assert list(result.series["sgd"].snap_steps) == want
    for rec in result.series["rmsprop"]["recs"].values():
        assert list(rec.snap_steps) == want
    text = result.text
    table = text[text.index("direction distance"):text.index("loss (minibatch")]
    printed = [int(ln.split()[0]) for ln in table.splitlines()[2:] if ln.strip()]
    assert printed == want


def _no_timing(text):
    return re.sub(r"\d+\.\d s", "<t>", text)


def test_threads_do_not_change_the_result(result):
    """The six runs are independent compiled loops: on one thread or on two (the fixture),
    every printed number and every recorded series is the same, bit for bit."""
    one = demo.run_demo(result.config, threads=1)
    # the fixture wrote to a folder: its report has a figure line (the path, or "not
    # written" without matplotlib) that a run without a folder does not print
    assert _no_timing(one.text) == _no_timing(re.sub(r"\n  figure: [^\n]*", "", result.text))
    for key in ("a", "g2", "D", "loss", "g2_rest"):
        np.testing.assert_array_equal(getattr(one.series["sgd"], key),
                                      getattr(result.series["sgd"], key))
    for lb, rec in result.series["rmsprop"]["recs"].items():
        np.testing.assert_array_equal(one.series["rmsprop"]["recs"][lb].loss, rec.loss)
    with pytest.raises(ValueError, match="threads"):
        demo.run_demo(result.config, threads=0)


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        demo.DemoConfig(steps=5)
    with pytest.raises(TypeError, match="widths"):
        demo.DemoConfig(widths=16)
    with pytest.raises(ValueError, match="late"):
        demo.DemoConfig(steps=30, late=0.1)


# -- the figure leaves the process's matplotlib state alone ---------------------------------------
_FIGURE_SCRIPT = textwrap.dedent("""
    import os
    import sys
    import matplotlib
    from noether_core import demo, theory
    raw = lambda: dict.__getitem__(matplotlib.rcParams, "backend")  # resolving imports pyplot
    # 1. nothing chose a backend yet: the demo must not choose one, nor import pyplot
    before = raw()
    res = demo.run_demo(demo.reduced(steps=600, chunk=300), out=sys.argv[1])
    assert res.figure is not None, "no figure written"
    assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
    assert raw() == before, f"backend switched: {before!r} -> {raw()!r}"
    # 2. the user chose one: the demo's figure code leaves it
    matplotlib.use("svg")
    cfg = res.config
    demo.write_figure(os.path.join(sys.argv[1], "again.png"), cfg, res.series["sgd"],
                      res.series["norm"], res.series["rmsprop"],
                      theory.steady_angular_update(cfg.lr, cfg.momentum, cfg.weight_decay))
    assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
    assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
    print("figure-ok")
""")


@pytest.mark.skipif(not _has_matplotlib(), reason="the figure needs matplotlib (extra plot)")
def test_figure_does_not_touch_pyplot_or_the_backend(tmp_path):
    """A library must not switch the process's backend: in a fresh process the demo draws
    its figure without importing pyplot and leaves the backend setting as it was, both
    when nothing chose a backend yet (the raw rcParams entry, read without resolving it)
    and when the user chose one (``matplotlib.use("svg")``)."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", _FIGURE_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "figure-ok" in proc.stdout
    for name in ("demo.png", "again.png"):
        with open(tmp_path / name, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# -- one set of bounds for the command line and DemoConfig -----------------------------------------
#: a base run whose relations between fields (batch_size <= n, wrong-rho control, late
#: window) hold at every boundary value tried below, so each field's own bound decides
_BASE = dict(steps=10 ** 8, n=10 ** 6, batch_size=2, lr=1e-6, weight_decay=1e-6,
             momentum=0.5, late=0.5, wrong_rho_factor=10.0)


def _boundary_values(bound):
    """(value, allowed) pairs at and beside each end of ``bound``."""
    out = []
    if bound.kind is int:
        if bound.lo is not None:
            out += [(bound.lo, True), (bound.lo - 1, False)]
        if bound.hi is not None:
            out += [(bound.hi, True), (bound.hi + 1, False)]
        return out
    delta = 1e-6                         # well inside the other constraints of _BASE
    if bound.lo is not None:
        out += ([(bound.lo, False), (bound.lo + delta, True)] if bound.lo_open
                else [(bound.lo, True), (bound.lo - delta, False)])
    if bound.hi is not None:
        out += ([(bound.hi, False), (bound.hi - delta, True)] if bound.hi_open
                else [(bound.hi, True), (bound.hi + delta, False)])
    return out


def _cli(name, text, monkeypatch, capsys):
    """Run the real command line with the base options and ``--<name> text``; returns
    (DemoConfig handed to run_demo or None, error message or None)."""
    seen = {}

    def fake_run(cfg, *a, **k):
        seen["cfg"] = cfg
        return demo.DemoResult(cfg, [], "uncorrelated", "", None, 0.0)
    monkeypatch.setattr(demo, "run_demo", fake_run)
    base = {k: v for k, v in _BASE.items() if k != name}
    argv = ["demo", "--no-figure"] + [f"--{k.replace('_', '-')}={v!r}" for k, v in base.items()]
    argv.append(f"--{name.replace('_', '-')}={text}")
    try:
        assert main(argv) == 0
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        return None, err
    return seen["cfg"], None


def _config(name, value):
    """(DemoConfig or None, error message or None) for the base run with name=value."""
    try:
        return demo.DemoConfig(**{**_BASE, name: value}), None
    except (TypeError, ValueError) as exc:
        return None, str(exc)


def test_every_field_has_one_bound_and_one_option():
    """Every DemoConfig field has its entry in demo.BOUNDS (widths: demo.check_widths)
    and a command-line option, and the option's default is the field's default."""
    from noether_core.__main__ import _DEMO_OPTIONS
    names = [f.name for f in fields(demo.DemoConfig)]
    assert sorted(demo.BOUNDS) == sorted(n for n in names if n != "widths")
    assert sorted(name for _, name, _ in _DEMO_OPTIONS) == sorted(names)
    assert all(opt == "--" + name.replace("_", "-") for opt, name, _ in _DEMO_OPTIONS)


@pytest.mark.parametrize("name", sorted(demo.BOUNDS))
def test_cli_and_config_accept_and_reject_the_same_values(name, monkeypatch, capsys):
    """At and beside every end of every field's bound, and for a value that is no number,
    the command line and DemoConfig agree; a rejection names the argument, the value and
    what is allowed, in the same words (argparse adds "argument --<option>:")."""
    bound = demo.BOUNDS[name]
    cases = _boundary_values(bound)
    assert cases, name
    for value, allowed in cases:
        cfg, err = _config(name, value)
        cli_cfg, cli_err = _cli(name, repr(value), monkeypatch, capsys)
        assert (cfg is not None) == allowed == (cli_cfg is not None), (name, value, err,
                                                                        cli_err)
        if allowed:
            assert getattr(cli_cfg, name) == getattr(cfg, name) == value
            assert cli_cfg == cfg
        else:
            option = "--" + name.replace("_", "-")
            assert cli_err.endswith(f"argument {option}: {err}"), (cli_err, err)
            lo = "-inf" if bound.lo is None else bound.lo
            hi = "inf" if bound.hi is None else bound.hi
            rng = f"{'(' if bound.lo_open else '['}{lo}, {hi}{')' if bound.hi_open else ']'}"
            assert err == f"{name} must lie in {rng}, got {value}"
    _, err = _config(name, "x")
    _, cli_err = _cli(name, "x", monkeypatch, capsys)
    kind = "an integer" if bound.kind is int else "a real number"
    assert err == f"{name} must be {kind}, got 'x'"
    assert cli_err.endswith(f"argument --{name.replace('_', '-')}: {err}")


@pytest.mark.parametrize("widths, allowed", [("2", True), ("16,2", True), ("1", False),
                                             ("16,1", False), ("16,x", False)])
def test_cli_and_config_agree_on_widths(widths, allowed, monkeypatch, capsys):
    pieces = widths.split(",")
    value = tuple(int(p) if p.lstrip("-").isdigit() else p for p in pieces)
    cfg, err = _config("widths", value)
    cli_cfg, cli_err = _cli("widths", widths, monkeypatch, capsys)
    assert (cfg is not None) == allowed == (cli_cfg is not None), (err, cli_err)
    if allowed:
        assert cli_cfg.widths == cfg.widths == value
    else:
        bad = next(i for i, p in enumerate(value) if not isinstance(p, int) or p < 2)
        assert err.startswith(f"widths[{bad}] must ")
        assert f"argument --widths: {err}" in cli_err


# -- the monitor module without torch ---------------------------------------------------------
def test_torch_module_imports_without_torch():
    """noether_core.torch imports where torch is missing (its docs and doctests are
    collected everywhere); constructing the monitor says what to install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None          # as if torch were not installed
        import noether_core.torch as t
        try:
            t.NoetherMonitor(None, None)
        except ImportError as exc:
            assert "noether_core[torch]" in str(exc), exc
            print("import-ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "import-ok" in proc.stdout, proc.stdout + proc.stderr


def test_gitignore_names_the_demo_folder():
    """.gitignore names the folder the command line writes its figure to by default."""
    import argparse
    from pathlib import Path

    from noether_core.__main__ import _demo_parser
    out = _demo_parser(argparse.ArgumentParser().add_subparsers()).get_default("out")
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert f"{out}/" in ignored, (out, ignored)


# -- --rule: Nesterov, AdamW, Adam (L2), RMSprop (L2) (docs/demo.md §5) ------------------------
@pytest.fixture(scope="module")
def rule_results():
    return {r: demo.run_demo(demo.reduced_rule(r), rule=r)
            for r in ("nesterov", "adamw", "adam", "rmsprop")}


@pytest.mark.parametrize("rule", ["nesterov", "adamw", "adam", "rmsprop"])
def test_rule_demo_checks_within_tolerance(rule_results, rule):
    """Each rule at reduced size: the steady angle (window statistics) and the |q|²
    schedule checks pass, with finite errors within the printed tolerances (issue 18:
    4 % and 10 %)."""
    res = rule_results[rule]
    assert [c.name for c in res.checks] == ["angle", "schedule"]
    for c in res.checks:
        assert c.passed, "\n".join(c.lines)
        for key, tol in c.tolerances.items():
            assert np.isfinite(c.errors[key]) and c.errors[key] <= tol, (rule, key)
    assert res.passed and "all checks within tolerance" in res.text
    assert "never the run's steps or norms" in res.text


def test_rule_demo_checks_can_fail(rule_results):
    """Fed a wrong weight decay (×2, a chord √2 off) the angle and schedule checks reject
    the same AdamW run: they are not vacuous."""
    res = rule_results["adamw"]
    rec, cfg = res.series["adamw"], res.config
    _, hyper = demo.make_rule("adamw", cfg)
    ok, _ = demo.rule_checks(rec, "adamw", hyper, cfg)
    assert all(c.passed for c in ok)
    bad, _ = demo.rule_checks(rec, "adamw", {**hyper, "weight_decay": 2 * cfg.weight_decay},
                              cfg)
    assert not any(c.passed for c in bad)


def test_rule_demo_streamed_stats_equal_one_pass(rule_results):
    """The demo streams gradient_stats chunk by chunk (state=); the concatenated series
    has one entry per step (and the schedule a row per step and the start)."""
    res = rule_results["nesterov"]
    rec = res.series["nesterov"]
    N = res.config.steps
    assert all(s.steps == N and len(s.update_sq) == N for s in rec.stats)
    assert rec.a.shape[0] == N + 1 and res.series["theory"]["norm_sq"].shape[0] == N + 1


def test_cli_rule_option(tmp_path):
    """``python -m noether_core demo --rule adamw`` at reduced size: exit code 0, the
    rule's default hyper-parameters when --lr/--weight-decay are not given, the figure
    demo_adamw.png; an unknown rule is an argparse error (exit code 2)."""
    args = ["--steps", "3000", "--n", "256", "--dim", "8", "--widths", "16,16", "--r0", "3",
            "--chunk", "500", "--weight-decay", "0.2"]
    proc = subprocess.run([sys.executable, "-m", "noether_core", "demo", "--rule", "adamw",
                           *args, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "AdamW(lr=0.01, betas=(0.9, 0.999), weight_decay=0.2)" in proc.stdout
    assert "all checks within tolerance" in proc.stdout
    if _has_matplotlib():
        assert os.path.exists(tmp_path / "demo_adamw.png")
    bad = subprocess.run([sys.executable, "-m", "noether_core", "demo", "--rule", "lion"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--rule" in bad.stderr
