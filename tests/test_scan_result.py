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
from noether_core import _status
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
# to_xarray


def _all_arrays(ds):
    return {**dict(ds.data_vars), **dict(ds.coords)}


def test_to_xarray_every_variable_and_coordinate_has_cf_units_and_long_name(full_result):
    pytest.importorskip("xarray", reason="xarray is the optional extra 'scan'")
    ds = full_result.to_xarray()
    names = set(_all_arrays(ds))
    # every variable of the result is there (series and charges included)
    assert {"q", "loss", "loss_min", "norm2", "angular_update", "diverged", "stop_step",
            "status", "balance_residual", "charge_worst", "series_q", "series_loss",
            "series_grad_norm2", "series_norm2", "lr", "weight_decay", "seed", "block",
            "coord", "symmetry", "step"} <= names
    for name, arr in _all_arrays(ds).items():
        assert arr.attrs.get("units") == "1", name      # all dimensionless (CF: "1")
        long_name = arr.attrs.get("long_name")
        assert isinstance(long_name, str) and long_name and long_name != name, name
        assert long_name.isascii(), name                 # netCDF-3 safe
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert "chord" in ds["angular_update"].attrs["long_name"]
    assert "|q_B|^2" in ds["norm2"].attrs["long_name"]
    assert ds["lr"].attrs["long_name"] == "learning rate eta"


def test_to_xarray_dims_names_and_dataset_attrs_unchanged(full_result):
    pytest.importorskip("xarray", reason="xarray is the optional extra 'scan'")
    ds = full_result.to_xarray()
    axes = ("lr", "weight_decay", "seed")
    assert ds["loss"].dims == axes
    assert ds["q"].dims == axes + ("coord",)
    assert ds["norm2"].dims == axes + ("block",)
    assert ds["angular_update"].dims == axes + ("block",)
    assert ds["charge_worst"].dims == axes + ("symmetry",)
    assert ds["series_q"].dims == axes + ("step", "coord")
    assert ds.attrs["rule"] == "SGD" and ds.attrs["steps"] == 40
    assert ds.attrs["batch_size"] == -1 and ds.attrs["fixed_momentum"] == 0.9
    # the values are the result's arrays, untouched
    np.testing.assert_array_equal(ds["loss"].values, full_result.loss)
    np.testing.assert_array_equal(ds["status"].values, full_result.status)


def test_to_xarray_status_flags_follow_the_status_table(full_result):
    pytest.importorskip("xarray", reason="xarray is the optional extra 'scan'")
    status = full_result.to_xarray()["status"]
    values = status.attrs["flag_values"]
    meanings = status.attrs["flag_meanings"].split(" ")
    assert values.dtype == full_result.status.dtype          # CF: same type as the data
    assert sorted(values.tolist()) == sorted(_status.REASON)
    assert len(meanings) == len(values) == len(set(meanings))
    assert all(CF_FLAG_WORD.match(m) for m in meanings), meanings
    by_code = dict(zip(values.tolist(), meanings, strict=True))
    assert by_code[_status.OK] == "finished"
    for code, reason in _status.REASON.items():
        if reason is not None:
            assert by_code[code] == reason.replace(" ", "_")


def test_to_xarray_without_charges_and_a_fallback_long_name():
    pytest.importorskip("xarray", reason="xarray is the optional extra 'scan'")
    pot, q0 = _rayleigh()
    res = nc.scan(nc.rules.RMSprop, pot, q0, steps=10, lr=[0.01], centered=[False, True],
                  charges=False, seeds=0, progress=False)
    ds = res.to_xarray()
    assert "balance_residual" not in ds and "symmetry" not in ds.coords
    # an axis the table does not name still gets a long_name saying what it is
    assert ds["centered"].attrs == {"units": "1",
                                    "long_name": "hyper-parameter centered of RMSprop"}
    for name, arr in _all_arrays(ds).items():
        assert arr.attrs["units"] == "1" and arr.attrs["long_name"], name


def test_to_xarray_attrs_survive_netcdf(full_result, tmp_path):
    xr = pytest.importorskip("xarray", reason="xarray is the optional extra 'scan'")
    ds = full_result.to_xarray()
    path = tmp_path / "scan.nc"
    try:
        ds.to_netcdf(path)
    except (ImportError, ValueError) as exc:        # no netCDF backend installed
        pytest.skip(f"no netCDF backend: {exc}")
    with xr.open_dataset(path) as back:
        for name, arr in _all_arrays(back).items():
            assert arr.attrs["units"] == "1", name
            assert arr.attrs["long_name"] == ds[name].attrs["long_name"], name
        assert back["status"].attrs["flag_meanings"] == ds["status"].attrs["flag_meanings"]
        assert back.attrs["Conventions"] == "CF-1.10"


# ---------------------------------------------------------------------------------------
# to_dataframe


def _check_rows(res, df):
    """Every row is the array entry it names (exact: the frame holds copies)."""
    axes, nb = list(res.axes), len(res.blocks)
    assert len(df) == int(np.prod(res.shape, dtype=int)) * nb
    per_point = ["loss", "loss_min", "diverged", "status", "stop_step"]
    if res.balance_residual is not None:
        per_point.append("balance_residual")
    assert df.columns.tolist() == axes + ["block"] + per_point + ["norm2", "angular_update"]
    assert df.index.equals(__import__("pandas").RangeIndex(len(df)))
    row = 0
    for idx in np.ndindex(*res.shape):
        for b, name in enumerate(res.blocks):
            r = df.iloc[row]
            for ax, i in zip(axes, idx, strict=True):
                assert r[ax] == res.axes[ax][i]
            assert r["block"] == name
            for col in per_point:
                np.testing.assert_array_equal(r[col], getattr(res, col)[idx])
            np.testing.assert_array_equal(r["norm2"], res.norm2[idx + (b,)])
            np.testing.assert_array_equal(r["angular_update"],
                                          res.angular_update[idx + (b,)])
            row += 1


def test_to_dataframe_is_long_and_every_row_is_its_array_entry(full_result):
    pytest.importorskip("pandas", reason="pandas is optional")
    df = full_result.to_dataframe()
    assert len(df) == 3 * 2 * 2 * 1
    _check_rows(full_result, df)
    # pandas does the grouping users expect
    mean_loss = df.groupby("lr")["loss"].mean()
    np.testing.assert_allclose(mean_loss.values, full_result.loss.mean(axis=(1, 2)),
                               rtol=1e-15)


def test_to_dataframe_several_blocks_and_diverged_points(diverging_result):
    pytest.importorskip("pandas", reason="pandas is optional")
    res = diverging_result
    assert len(res.blocks) == 4 and res.diverged.any() and not res.diverged.all()
    df = res.to_dataframe()
    assert "balance_residual" not in df.columns and "seed" not in df.columns
    _check_rows(res, df)
    assert df["block"].tolist()[:4] == list(res.blocks)
    assert df["diverged"].dtype == bool
    assert (df.loc[df["diverged"], "status"] != _status.OK).all()
    assert (df.loc[df["diverged"], "stop_step"] >= 0).all()


def test_to_dataframe_of_a_narrowed_result(full_result):
    pytest.importorskip("pandas", reason="pandas is optional")
    one = full_result.sel(lr=0.05, weight_decay=1e-3, seed=1)
    df = one.to_dataframe()
    assert df.columns[0] == "block" and len(df) == len(one.blocks)
    _check_rows(one, df)
    part = full_result.sel(seed=0)
    _check_rows(part, part.to_dataframe())


def test_to_dataframe_without_pandas_says_how_to_install(full_result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        full_result.to_dataframe()


def test_sel_keeps_the_kernel_name(full_result):
    assert full_result.kernel
    assert full_result.sel(seed=0).kernel == full_result.kernel


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


class _WhereKernel:
    """A kernel that records the thread it runs on, optionally meeting others at a
    barrier (which only kernels running at the same time can pass)."""

    def __init__(self, barrier=None):
        self.barrier, self.thread = barrier, None

    def run(self):
        self.thread = threading.get_ident()
        if self.barrier is not None:
            self.barrier.wait(timeout=10)

    def steps_done(self):
        return 0

    def cancel(self):
        pass


def test_run_with_progress_reuses_its_kernel_thread():
    """Consecutive kernels run on one long-lived thread (so an OpenMP team is reused,
    _parallel._KernelThreads), never on the caller's."""
    kernels = [_WhereKernel() for _ in range(5)]
    for k in kernels:
        parallel_mod.run_with_progress(k, 0, lambda done, total: None)
    assert len({k.thread for k in kernels}) == 1
    assert kernels[0].thread != threading.get_ident()
    # an exception does not lose the thread either
    with pytest.raises(RuntimeError, match="boom"):
        parallel_mod.run_with_progress(_Kernel(RuntimeError("boom")), 50, lambda d, t: None)
    again = _WhereKernel()
    parallel_mod.run_with_progress(again, 0, lambda done, total: None)
    assert again.thread == kernels[0].thread


def test_run_with_progress_runs_concurrent_calls_on_their_own_threads():
    """Calls from several threads at once each get a thread (the kernels meet at a
    barrier, which a shared thread would never let them pass: BrokenBarrierError), and
    at most MAX_IDLE threads stay idle afterwards."""
    n = parallel_mod._KernelThreads.MAX_IDLE + 2
    barrier = threading.Barrier(n)
    kernels = [_WhereKernel(barrier) for _ in range(n)]
    errors = []

    def call(k):
        try:
            parallel_mod.run_with_progress(k, 0, lambda done, total: None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    callers = [threading.Thread(target=call, args=(k,)) for k in kernels]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    assert not errors
    assert len({k.thread for k in kernels}) == n
    assert len(parallel_mod._KERNEL_THREADS._idle) <= parallel_mod._KernelThreads.MAX_IDLE


def _child_runs_a_kernel(out):
    k = _WhereKernel()
    parallel_mod.run_with_progress(k, 0, lambda done, total: None)
    out.put(k.thread is not None)


def test_run_with_progress_in_a_forked_child():
    """A forked child has none of the parent's threads: it starts its own kernel thread
    (the idle list is emptied at fork) instead of waiting on a thread that is not there."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    parallel_mod.run_with_progress(_WhereKernel(), 0, lambda done, total: None)
    assert parallel_mod._KERNEL_THREADS._idle            # the parent has an idle thread
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_runs_a_kernel, args=(out,))
    child.start()
    try:
        assert out.get(timeout=30) is True
    finally:
        child.join(30)
    assert child.exitcode == 0


# ---------------------------------------------------------------------------------------
# point_seed


def test_point_seed_is_the_spawned_child_and_drives_pcg64():
    for seed, index, n in [(0, 0, 1), (7, 3, 4), (123, 11, 12)]:
        ss = result_mod.point_seed(seed, index)
        child = np.random.SeedSequence(seed).spawn(n)[index]
        assert ss.entropy == child.entropy and ss.spawn_key == child.spawn_key == (index,)
        assert np.array_equal(ss.generate_state(8), child.generate_state(8))
        a = np.random.default_rng(ss)
        b = np.random.Generator(np.random.PCG64(child))
        assert type(a.bit_generator) is np.random.PCG64
        assert np.array_equal(a.integers(0, 2**62, size=16), b.integers(0, 2**62, size=16))


def test_seed_at_is_point_seed(full_result):
    ss = full_result.seed_at(2, 1, 1)
    flat = np.ravel_multi_index((2, 1), full_result.grid_shape)
    ref = result_mod.point_seed(1, int(flat))
    assert ss.entropy == ref.entropy and ss.spawn_key == ref.spawn_key
