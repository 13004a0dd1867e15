"""README's "A tour" code block runs as written (so the README cannot drift from the API)."""
import os
import re


def test_readme_tour_runs(capsys):
    path = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    tour = text.split("## A tour", 1)[1]
    code = re.search(r"```python\n(.*?)```", tour, re.S).group(1)
    ns = {}
    exec(compile(code, "README.md (A tour)", "exec"), ns)
    assert ns["run"].charge("scale", "w").worst < 1e-12
    assert ns["more"].state.step == 21_000
    assert "Symmetric" in capsys.readouterr().out
