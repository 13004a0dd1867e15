"""Shared test configuration.

Hypothesis profiles (select with NOETHER_HYPOTHESIS_PROFILE, default "ci" when the CI
environment variable is set, else "dev"; docs/testing.md §5):

* ``ci``   derandomised (the same examples every run, so a CI failure reproduces
           locally), no example database, no deadline (2 shared cores make timings
           noisy), 25 examples per test so the whole suite stays within a few minutes;
* ``dev``  60 examples, randomised, with the local example database;
* ``fuzz`` 1000 examples, for long local runs (tests/test_fuzz.py: 20 000 bad inputs).

Tests that measure something for the record (the fuzz counts, RSS growth, interrupt
latency) append a line to ``config._noether_summary``; it is printed in pytest's terminal
summary, so it is visible without ``-s``.
"""
import importlib.util
import os

import pytest
from _pytest.doctest import DoctestItem, DoctestModule
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True)
settings.register_profile(
    "dev", deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz", deadline=None, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PROFILE = os.environ.get("NOETHER_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(PROFILE)

# a script, not a test module: it imports torch at the top (to write the torch fixture),
# and --doctest-modules would import it, failing the collection where torch is absent
collect_ignore = ["make_torch_fixture.py"]


@pytest.hookimpl(hookwrapper=True)
def pytest_collect_file(file_path, parent):
    """``--doctest-modules`` (pyproject.toml) is for the package's docstring examples: the
    files under tests/ are collected as tests only, not imported a second time as doctest
    modules (which would count an optional extra's module-level skip twice)."""
    outcome = yield
    outcome.force_result([c for c in outcome.get_result() if not isinstance(c, DoctestModule)])


#: the package's docstring examples that need an optional extra, by the example's name:
#: (the module it imports, the extra that installs it).  Without the module the example is
#: skipped with that reason, as the tests of the same extra are; README's command installs
#: every extra the suite uses, so CI runs them
_DOCTEST_EXTRAS = {
    "noether_core._scan_result.ScanResult.to_xarray": ("xarray", "scan"),
    "noether_core._scan_result.ScanResult.to_dataframe": ("pandas", "scan"),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        need = _DOCTEST_EXTRAS.get(item.name) if isinstance(item, DoctestItem) else None
        if need is not None and importlib.util.find_spec(need[0]) is None:
            item.add_marker(pytest.mark.skip(
                reason=f"the example needs {need[0]}, the optional extra '{need[1]}'"))


def pytest_report_header(config):
    return f"hypothesis profile: {PROFILE} (NOETHER_HYPOTHESIS_PROFILE)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = getattr(config, "_noether_summary", [])
    if lines:
        terminalreporter.section("noether_core measurements")
        for line in lines:
            terminalreporter.write_line(line)
