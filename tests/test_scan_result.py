"""ScanResult as the ecosystem reads it, and the thread/progress helpers of the grid engines.

* ``to_xarray``: CF-style ``units``/``long_name`` on every variable and coordinate, the
  status flags from ``_status.REASON``, ``Conventions``;
* ``to_dataframe``: long (tidy) format, one row per point (and seed) and block, every value
  the array entry it came from (exact: it is a copy);
* ``usable_cpus``: affinity, cgroup v2/v1 quota and OMP_NUM_THREADS, every branch on a
  temporary cgroup tree;
* ``want_progress``/``ProgressBar``/``run_with_progress`` with a fake terminal and a fake
  clock; ``point_seed``'s stream is NumPy's PCG64.
"""
import importlib
import re
import sys
import threading
import types
import warnings

import numpy as np
import pytest

import noether_core as nc
from noether_core.errors import DivergenceWarning

parallel_mod = importlib.import_module("noether_core._parallel")
result_mod = importlib.import_module("noether_core._scan_result")

# CF §3.5: flag_meanings is a blank-separated list of words of these characters
CF_FLAG_WORD = re.compile(r"^[A-Za-z0-9_.+@-]+$")


def _rayleigh(d=4, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    return nc.potentials.RayleighQuotient(M + M.T), rng.normal(size=d)


def _layer(seed=0):
    """A potential with several blocks (3 scale blocks W[i] and V)."""
    X, Y = nc.datasets.teacher_regression(16, 3, out=2, seed=seed)
    pot = nc.potentials.BatchNormLayer(X, Y, width=3)
    return pot, np.random.default_rng(seed).normal(size=pot.dim)


@pytest.fixture(scope="module")
def full_result():
    """Two grid axes, a seed axis, charges and a recorded series."""
    pot, q0 = _rayleigh()
    return nc.scan(nc.rules.SGD, pot, q0, steps=40, record_every=20, lr=[0.01, 0.05, 0.1],
                   weight_decay=[0.0, 1e-3], momentum=0.9, seeds=(0, 1), progress=False)


@pytest.fixture(scope="module")
def diverging_result():
    """Several blocks, some points diverging (lr far above 2/L), no charges."""
    pot, q0 = _layer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        return nc.scan(nc.rules.SGD, pot, q0, steps=60, lr=[0.01, 1e3, 1e6],
                       momentum=[0.0, 0.9], charges=False, seeds=0, progress=False)


# ---------------------------------------------------------------------------------------
# usable_cpus


@pytest.fixture
def cpus(monkeypatch, tmp_path):
    """8 CPUs in the affinity mask, no OMP_NUM_THREADS, an empty cgroup tree at tmp_path."""
    monkeypatch.setattr(parallel_mod.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(parallel_mod, "CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cpu").mkdir()
    return tmp_path


def _v1(root, quota, period="100000"):
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_usable_cpus_affinity_without_limits(cpus):
    assert parallel_mod.cgroup_cpu_limit() is None
    assert parallel_mod.usable_cpus() == 8


def test_usable_cpus_without_affinity_uses_cpu_count(cpus, monkeypatch):
    monkeypatch.delattr(parallel_mod.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(parallel_mod.os, "cpu_count", lambda: 6)
    assert parallel_mod.usable_cpus() == 6
    monkeypatch.setattr(parallel_mod.os, "cpu_count", lambda: None)
    assert parallel_mod.usable_cpus() == 1


@pytest.mark.parametrize("text, limit", [
    ("150000 100000\n", 2),       # 1.5 CPUs of bandwidth: ceil
    ("200000 100000\n", 2),
    ("50000 100000\n", 1),        # below one CPU: still one thread
    ("300000 100000\n", 3),
    ("1000000 100000\n", None),   # 10 > 8 affinity CPUs: the affinity decides
    ("max 100000\n", None),       # no limit
    ("max\n", None),
    ("-1 100000\n", None),       # -1 as in cgroup v1: no limit
])
def test_usable_cpus_cgroup_v2(cpus, text, limit):
    (cpus / "cpu.max").write_text(text)
    _v1(cpus, 100000)             # a v1 limit of 1 CPU: v2 takes precedence when it parses
    expect = 8 if limit is None else limit
    assert parallel_mod.usable_cpus() == expect
    if limit is None and not text.startswith("1000000"):
        assert parallel_mod.cgroup_cpu_limit() is None


@pytest.mark.parametrize("text", ["", "garbage\n", "abc 100000\n", "100000 0\n",
                                  "0 100000\n", "-5 100000\n", "1 2 3\n", "1.5 100000\n"])
def test_usable_cpus_malformed_cgroup_v2_is_ignored(cpus, text):
    (cpus / "cpu.max").write_text(text)
    assert parallel_mod.cgroup_cpu_limit() is None
    assert parallel_mod.usable_cpus() == 8
    _v1(cpus, 300000)             # ...and the v1 files are read instead
    assert parallel_mod.usable_cpus() == 3


def test_usable_cpus_unreadable_cgroup_files_are_ignored(cpus):
    (cpus / "cpu.max").mkdir()                       # read() raises IsADirectoryError
    (cpus / "cpu" / "cpu.cfs_quota_us").write_bytes(b"\xff\xfe\x00")   # not text
    (cpus / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert parallel_mod.cgroup_cpu_limit() is None
    assert parallel_mod.usable_cpus() == 8


@pytest.mark.parametrize("quota, period, expect", [
    ("250000", "100000", 3),
    ("100000", "100000", 1),
    ("-1", "100000", 8),          # v1's "no limit"
    ("abc", "100000", 8),
    ("200000", "0", 8),
    ("200000", "x", 8),
])
def test_usable_cpus_cgroup_v1(cpus, quota, period, expect):
    _v1(cpus, quota, period)
    assert parallel_mod.usable_cpus() == expect


def test_usable_cpus_cgroup_v1_needs_both_files(cpus):
    (cpus / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert parallel_mod.usable_cpus() == 8


def test_usable_cpus_cgroup_root_argument(cpus, tmp_path_factory):
    other = tmp_path_factory.mktemp("cg")
    (other / "cpu.max").write_text("200000 100000\n")
    assert parallel_mod.usable_cpus() == 8                 # module root: no limit
    assert parallel_mod.usable_cpus(cgroup_root=other) == 2
    assert parallel_mod.cgroup_cpu_limit(other) == 2


@pytest.mark.parametrize("env, expect", [
    ("1", 1), ("3", 3), (" 4 ", 4), ("4,2", 4), ("16", 8),   # a cap, never a raise
    ("0", 8), ("-2", 8), ("abc", 8), ("", 8), ("2.5", 8),    # not a positive int: ignored
])
def test_usable_cpus_omp_num_threads_caps(cpus, monkeypatch, env, expect):
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert parallel_mod.usable_cpus() == expect


def test_usable_cpus_the_smallest_cap_wins(cpus, monkeypatch):
    (cpus / "cpu.max").write_text("300000 100000\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert parallel_mod.usable_cpus() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert parallel_mod.usable_cpus() == 3


def test_usable_cpus_on_this_machine():
    n = parallel_mod.usable_cpus()
    assert isinstance(n, int) and 1 <= n <= len(parallel_mod.os.sched_getaffinity(0))


def test_scan_results_do_not_depend_on_the_default_thread_count(monkeypatch):
    pot, q0 = _rayleigh()
    kw = dict(steps=50, lr=[0.01, 0.02, 0.05], momentum=[0.0, 0.9], progress=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    a = nc.scan(nc.rules.SGD, pot, q0, **kw)
    monkeypatch.delenv("OMP_NUM_THREADS")
    b = nc.scan(nc.rules.SGD, pot, q0, **kw)
    for name in ("q", "loss", "loss_min", "norm2", "angular_update", "status"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


# ---------------------------------------------------------------------------------------
# progress


class _Stream:
    """A stderr stand-in whose isatty() answers as told."""

    def __init__(self, tty):
        self.tty, self.text = tty, []

    def isatty(self):
        if isinstance(self.tty, BaseException):
            raise self.tty
        return self.tty

    def write(self, s):
        self.text.append(s)
        return len(s)

    def flush(self):
        pass


def test_want_progress_none_only_with_a_terminal_and_tqdm(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is the optional extra 'scan'")
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert parallel_mod.want_progress(None) is True
    assert parallel_mod.want_progress(False) is False
    monkeypatch.setitem(sys.modules, "tqdm", None)          # a terminal but no tqdm
    assert parallel_mod.want_progress(None) is False


@pytest.mark.parametrize("stream", [_Stream(False), None, _Stream(ValueError("closed")),
                                    object()])
def test_want_progress_none_without_a_terminal(monkeypatch, stream):
    monkeypatch.setattr(sys, "stderr", stream)
    assert parallel_mod.want_progress(None) is False


def test_want_progress_true_forces_it_and_needs_tqdm(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is the optional extra 'scan'")
    monkeypatch.setattr(sys, "stderr", _Stream(False))
    assert parallel_mod.want_progress(True) is True
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match="pip install tqdm"):
        parallel_mod.want_progress(True)
    assert parallel_mod.want_progress(False) is False       # False never needs tqdm
    with pytest.raises(TypeError, match="progress"):
        parallel_mod.want_progress("yes")


class _Clock:
    def __init__(self):
        self.t = 100.0

    def perf_counter(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(parallel_mod, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_progress_bar_shows_nothing_before_its_delay(clock, monkeypatch, capsys):
    # before the delay tqdm is not even imported: a missing tqdm.auto would raise
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bar = parallel_mod.ProgressBar(1000, True, delay=1.0)
    for done in (0, 100, 500, 999):
        clock.t += 0.2
        bar(done, 1000)
    assert bar.bar is None
    bar.close()
    assert capsys.readouterr().err == ""


def test_progress_bar_appears_after_its_delay(clock, capsys):
    pytest.importorskip("tqdm", reason="tqdm is the optional extra 'scan'")
    bar = parallel_mod.ProgressBar(1000, True, delay=1.0, unit="chunk", desc="grid")
    bar(10, 1000)
    assert bar.bar is None
    clock.t += 1.5
    bar(400, 1000)
    assert bar.bar is not None and bar.bar.n == 400
    bar(700, 1000)
    assert bar.bar.n == 700
    bar.close()
    assert bar.bar.n == 1000
    err = capsys.readouterr().err
    assert "grid" in err and "chunk" in err


def test_progress_bar_disabled_never_shows(clock, capsys):
    bar = parallel_mod.ProgressBar(1000, False, delay=0.0)
    clock.t += 10.0
    bar(500, 1000)
    bar.close()
    assert bar.bar is None and capsys.readouterr().err == ""


def test_short_scan_with_progress_shows_no_bar(capsys):
    pytest.importorskip("tqdm", reason="tqdm is the optional extra 'scan'")
    pot, q0 = _rayleigh()
    nc.scan(nc.rules.SGD, pot, q0, steps=5, lr=[0.1, 0.2], progress=True)
    assert capsys.readouterr().err == ""


class _Kernel:
    """Stands in for a compiled kernel: run() works until finished or cancelled."""

    def __init__(self, fail=None):
        self.fail, self.done, self.cancelled = fail, 0, threading.Event()

    def run(self):
        for _ in range(5):
            if self.cancelled.wait(0.02):
                return
            self.done += 10
        if self.fail is not None:
            raise self.fail

    def steps_done(self):
        return self.done

    def cancel(self):
        self.cancelled.set()


def test_run_with_progress_polls_and_reraises():
    calls = []
    kern = _Kernel()
    parallel_mod.run_with_progress(kern, 50, lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (50, 50)
    assert all(t == 50 for _, t in calls)
    with pytest.raises(RuntimeError, match="boom"):
        parallel_mod.run_with_progress(_Kernel(RuntimeError("boom")), 50, lambda d, t: None)


def test_run_with_progress_ctrl_c_cancels_the_kernel():
    kern = _Kernel()

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parallel_mod.run_with_progress(kern, 50, interrupt)
    assert kern.cancelled.is_set()
