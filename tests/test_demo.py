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
* the figure is written when matplotlib is installed;
* bad options give argparse errors (exit code 2, message naming the option).
"""
import os
import re
import subprocess
import sys
from dataclasses import replace

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
    return demo.run_demo(demo.reduced(), out=str(out))


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


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        demo.DemoConfig(steps=5)
    with pytest.raises(TypeError, match="widths"):
        demo.DemoConfig(widths=16)
    with pytest.raises(ValueError, match="late"):
        demo.DemoConfig(steps=30, late=0.1)
