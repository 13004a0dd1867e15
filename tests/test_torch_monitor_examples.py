"""The monitored examples run (issue 18 "Examples"; docs/monitor.md "Examples").

Each example runs for a few steps in a fresh process (``--steps``), prints the monitor's
report and saves its figure as a PNG; without torch each says it is skipped and exits 0.
The digits generator is checked on its own: ten classes, the glyphs of the font, every
class present.
"""
import os
import runpy
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPTS = ["digits_cnn.py", "char_transformer.py"]


def _run(args, code=None, timeout=300):
    cmd = [sys.executable] + (["-c", code] if code else args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=dict(os.environ))


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_a_few_steps(script, tmp_path):
    pytest.importorskip("torch", reason="the examples need the optional extra torch")
    out = tmp_path / "fig.png"
    proc = _run([os.path.join(EXAMPLES, script), "--steps", "12", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NoetherMonitor:" in proc.stdout and "exact balance residual" in proc.stdout
    assert "12 recorded steps (last step 11" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_without_torch_is_skipped_cleanly(script):
    code = textwrap.dedent(f"""
        import sys, runpy
        sys.modules["torch"] = None              # as if torch were not installed
        sys.argv = [{script!r}, "--steps", "3"]
        try:
            runpy.run_path({os.path.join(EXAMPLES, script)!r}, run_name="__main__")
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("exited-0")
    """)
    proc = _run(None, code=code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout and "exited-0" in proc.stdout


def test_digits_generator():
    ex = runpy.run_path(os.path.join(EXAMPLES, "digits_cnn.py"))
    X, y = ex["make_digits"](500, seed=3, noise=0.0)
    assert X.shape == (500, 1, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert set(y.tolist()) == set(range(10))
    # without noise each image is its glyph (bold or not) times a contrast in [0.6, 1],
    # at one of the 2 × 4 offsets of a 7 × 5 glyph in the 8 × 8 frame
    for img, d in zip(X[:50, 0], y[:50], strict=True):
        ink = img > 0
        assert 0.6 <= img[ink].max() <= 1.0
        glyph = ex["GLYPHS"][d].astype(bool)
        fits = []
        for dy in range(2):
            for dx in range(4):
                box = np.zeros((8, 8), bool)
                box[dy:dy + 7, dx:dx + 5] = True
                inside = ink[dy:dy + 7, dx:dx + 5]
                fits.append(not ink[~box].any() and bool(np.all(inside[glyph])))
        assert any(fits)


def test_transformer_text_is_shipped():
    ex = runpy.run_path(os.path.join(EXAMPLES, "char_transformer.py"))
    text, vocab, data = ex["load_text"]()
    assert 2000 < len(text) < 10000 and text.isascii()
    assert "".join(vocab[i] for i in data[:10]) == text[:10]
