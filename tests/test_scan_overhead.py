"""The scan facade's fixed cost per call (issue 16, docs/scan.md §"Fixed cost per call"):
the caches and shortcuts that took it from ~0.5-0.9 ms to below 0.1 ms, each checked for
what it must not change.

* The cgroup CPU quota is read once per process (``_parallel.default_threads``) and
  re-read after ``refresh_cpu_limit()``, after ``CPU_LIMIT_TTL`` seconds, under another
  ``CGROUP_ROOT``; the affinity mask and OMP_NUM_THREADS are never cached.
* The column-form template (``rules._grid_template``) equals one rule's
  ``kernel_inputs`` at its initial state, per (class, d), never served for another d.
* The vector column check (``rules._Col.array``) accepts a float64 axis exactly when
  the per-value converter (``V.as_scalar``, what the constructor applies) accepts each
  value, with the same values.
* ``ScanOutputs.empty_fast`` has the shapes, dtypes, contiguity and initial values of
  ``ScanOutputs.empty``.
* The blocks' CSR cached on a potential is that of its blocks, and is rebuilt when the
  blocks mapping is another.
* Job tokens stay unique; consecutive scans with changed arguments are not served stale
  (each point still equals its own ``train`` call, bit for bit: SPEC §1).

No timing is asserted here (speed goals live in benchmarks/bench_scan_overhead.py).
"""
import importlib

import numpy as np
import pytest

import noether_core as nc
from noether_core import _bridge, rules
from noether_core._validation import as_scalar

parallel_mod = importlib.import_module("noether_core._parallel")
scan_mod = importlib.import_module("noether_core._scan")


def _rayleigh(d=5, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    return nc.potentials.RayleighQuotient(M + M.T), rng.normal(size=d)


def _bits(x):
    return np.asarray(x, dtype=np.float64).view(np.int64)


# ---------------------------------------------------------------------------------------
# the CPU count: the cgroup quota cached, the rest read every call


@pytest.fixture
def cg(monkeypatch, tmp_path):
    """8 affinity CPUs, no OMP_NUM_THREADS, a cgroup v2 quota of 2 CPUs at tmp_path."""
    monkeypatch.setattr(parallel_mod.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(parallel_mod, "CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    parallel_mod.refresh_cpu_limit()
    yield tmp_path
    parallel_mod.refresh_cpu_limit()


def test_default_threads_reads_the_quota_once(cg):
    assert parallel_mod.default_threads() == 2 == parallel_mod.usable_cpus()
    (cg / "cpu.max").write_text("300000 100000\n")
    assert parallel_mod.usable_cpus() == 3             # the uncached function reads again
    assert parallel_mod.default_threads() == 2         # cached within CPU_LIMIT_TTL
    parallel_mod.refresh_cpu_limit()                   # the documented refresh
    assert parallel_mod.default_threads() == 3


def test_default_threads_quota_expires(cg, monkeypatch):
    assert parallel_mod.default_threads() == 2
    (cg / "cpu.max").write_text("max 100000\n")
    monkeypatch.setattr(parallel_mod, "CPU_LIMIT_TTL", 0.0)    # every entry has expired
    assert parallel_mod.default_threads() == 8


def test_default_threads_another_root_is_read(cg, monkeypatch, tmp_path_factory):
    assert parallel_mod.default_threads() == 2
    other = tmp_path_factory.mktemp("cg2")
    (other / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(parallel_mod, "CGROUP_ROOT", str(other))
    assert parallel_mod.default_threads() == 1


def test_default_threads_a_new_process_reads_again(cg, monkeypatch):
    assert parallel_mod.default_threads() == 2
    (cg / "cpu.max").write_text("300000 100000\n")
    monkeypatch.setattr(parallel_mod.os, "getpid", lambda: -12345)   # as after a fork
    assert parallel_mod.default_threads() == 3


def test_default_threads_affinity_and_omp_are_not_cached(cg, monkeypatch):
    assert parallel_mod.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert parallel_mod.default_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(parallel_mod.os, "sched_getaffinity", lambda pid: {0},
                        raising=False)
    assert parallel_mod.default_threads() == 1


def test_threads_for_uses_the_cached_default(cg):
    assert nc._grid.threads_for(None, 100) == 2
    assert nc._grid.threads_for(None, 1) == 1
    assert nc._grid.threads_for(5, 100) == 5


def test_job_tokens_are_distinct():
    tokens = {parallel_mod.STOPS.new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert all(str(parallel_mod.os.getpid()) in t.split("-") for t in list(tokens)[:5])


# ---------------------------------------------------------------------------------------
# column forms: the template and the vector check


@pytest.mark.parametrize("cls", [rules.SGD, rules.RMSprop, rules.Adam, rules.AdamW])
def test_grid_template_is_one_rules_kernel_inputs(cls):
    for d in (3, 8, 3):                                 # a miss, another d, a hit
        pot, _ = _rayleigh(d)
        rule = cls(lr=0.01)
        want = rule.kernel_inputs(pot, rule.init_state(pot))
        got = rules._grid_template(cls, pot, lambda rule=rule: rule)
        assert got.kind == want.kind
        assert got.vec.shape == want.vec.shape and not got.vec.any()
        assert got.sca.shape == want.sca.shape and not got.sca.any()
        assert not want.vec.any() and not want.sca.any()   # the zero state it promises
        assert got.hp.shape == want.hp.shape
        np.testing.assert_array_equal(got.pptr, want.pptr)
        np.testing.assert_array_equal(got.pidx, want.pidx)
        for a in (got.hp, got.vec, got.sca, got.pptr, got.pidx):
            assert not a.flags.writeable                  # shared: nobody may write it


_EDGES = [0.0, -0.0, 5e-324, 1e-300, 0.5, 1.0 - 2**-53, 1.0, 1.0 + 2**-52, 2.0, 1e300,
          1.7e308, -5e-324, -1.0, np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("col", [rules._LR, rules._unit_col("momentum"),
                                 rules._Col("dampening", lo=0.0, hi=1.0),
                                 rules._nonneg_col("weight_decay")],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("value", _EDGES)
def test_column_vector_check_is_the_constructors(col, value):
    """_Col.array accepts an axis iff as_scalar (the constructor's converter) accepts
    every value, and returns the very values as_scalar returns (bit for bit, -0.0
    included)."""
    axis = np.array([0.25, value])
    if value == 1.7e308:
        axis = np.array([1.7e308, 1.6e308])    # a sum that overflows: the exact path
    try:
        want = np.array([as_scalar(col.name, v, lo=col.lo, hi=col.hi, lo_open=col.lo_open,
                                   hi_open=col.hi_open) for v in axis.tolist()])
    except ValueError:
        want = None
    got = col.array(axis)
    if want is None:
        assert got is None
    else:
        assert got is not None and np.array_equal(_bits(got), _bits(want))


def test_column_rows_vector_and_per_value_paths_agree():
    """SGD's rows with float64 axes (vector check) equal those with the same values
    passed one at a time through the converters (no vector form) and the rule objects'
    own ``_hp`` rows, bit for bit; an invalid value anywhere refuses the grid."""
    lr = np.array([1e-3, 1e-2, 0.1])
    mom = np.array([0.0, 0.9])
    a = rules.SGD._grid_hp({"weight_decay": 1e-4}, {"lr": lr, "momentum": mom})
    # the per-value path: axes whose dtype the vector form does not take
    lr_obj = np.array([rules._LR(v) for v in lr.tolist()])
    b = rules._column_rows(rules.SGD, {"weight_decay": 1e-4},
                           {"lr": lr_obj, "momentum": mom},
                           {k: (lambda v, c=c: c(v)) for k, c in rules._SGD_COLUMNS.items()})
    assert np.array_equal(_bits(a), _bits(b))
    rows = [rules.SGD(lr=x, momentum=m, weight_decay=1e-4)._hp(None)
            for x in lr for m in mom]
    assert np.array_equal(_bits(a), _bits(np.array(rows)))
    assert rules.SGD._grid_hp({}, {"lr": np.array([0.1, 0.0])}) is None
    assert rules.SGD._grid_hp({}, {"momentum": np.array([0.5, 1.0])}) is None
    assert rules.SGD._grid_hp({}, {"lr": np.array([1, 2])}) is not None   # ints: per value
    assert rules.SGD._grid_hp({}, {"nesterov": np.array([True, False]),
                                   "momentum": np.array([0.0, 0.5])}) is None


# ---------------------------------------------------------------------------------------
# outputs, blocks


@pytest.mark.parametrize("n, d, nb, R, nsym", [(5, 3, 1, 0, 0), (9, 4, 2, 3, 2),
                                              (0, 2, 1, 0, 1), (1, 1, 3, 0, 0)])
def test_empty_fast_matches_empty(n, d, nb, R, nsym):
    a = _bridge.ScanOutputs.empty(n, d, nb, R, nsym)
    b = _bridge.ScanOutputs.empty_fast(n, d, nb, R, nsym)
    for name in ("q", "loss", "loss_min", "norm2", "angular_update", "status", "stop_step",
                 "n_rows", "s_q", "s_loss", "s_g2", "s_bn2", "charge_worst",
                 "charge_worst_step"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
            continue
        assert (x.shape, x.dtype) == (y.shape, y.dtype), name
        assert y.flags.c_contiguous and y.flags.writeable, name
        if name not in ("q", "loss", "loss_min", "norm2", "angular_update"):   # np.empty
            assert np.array_equal(x, y, equal_nan=True), name
    # the summaries do not overlap: each slice is its own memory
    b.q[...] = 1.0
    b.loss[...] = 2.0
    b.loss_min[...] = 3.0
    b.norm2[...] = 4.0
    b.angular_update[...] = 5.0
    assert (b.q == 1).all() and (b.loss == 2).all() and (b.loss_min == 3).all()
    assert (b.norm2 == 4).all() and (b.angular_update == 5).all()


def test_blocks_csr_is_cached_and_follows_the_blocks():
    pot, _ = _rayleigh(6)
    ptr, idx = scan_mod._blocks_csr(pot)
    want = _bridge.csr([pot.blocks[k] for k in pot.blocks])
    np.testing.assert_array_equal(ptr, want[0])
    np.testing.assert_array_equal(idx, want[1])
    assert scan_mod._blocks_csr(pot)[0] is ptr                 # served from the cache
    other = nc.potentials.Quadratic(np.eye(6), np.zeros(6))
    assert scan_mod._blocks_csr(other)[1] is not idx           # per potential
    # another blocks mapping on the same object: read again
    pot.__dict__["_blocks"] = {"a": np.arange(2), "b": np.arange(2, 6)}
    ptr2, idx2 = scan_mod._blocks_csr(pot)
    np.testing.assert_array_equal(ptr2, [0, 2, 6])
    np.testing.assert_array_equal(idx2, np.arange(6))


def test_finite_and_distinct_values_short_and_long_axes():
    for n in (8, 2000):                      # the set check and the np.unique check
        v = np.linspace(1e-3, 0.1, n)
        assert nc._grid.as_axis("lr", v)[0]
        for bad in (np.nan, np.inf, -np.inf):  # the Python sum and the element-wise test
            w = v.copy()
            w[n // 2] = bad
            with pytest.raises(ValueError, match=f"must be finite, found {bad} at index "
                                                 f"{n // 2}"):
                nc._grid.as_axis("lr", w)
        v[-1] = v[0]
        with pytest.raises(ValueError, match="repeated values"):
            nc._grid.as_axis("lr", v)
    big = np.array([1.7e308, 1.6e308])       # finite values whose sum overflows
    assert np.array_equal(nc._grid.as_axis("weight_decay", big)[1], big)
    with pytest.raises(ValueError, match="repeated values"):
        nc._grid.as_axis("weight_decay", np.array([0.0, -0.0]))


# ---------------------------------------------------------------------------------------
# consecutive scans are not served stale


@pytest.mark.parametrize("cls", [rules.SGD, rules.AdamW])
def test_consecutive_scans_with_changed_arguments(cls):
    """Scans one after another, each changing one argument (grid values, fixed values,
    d, q0, the potential): every point equals its own train call, bit for bit (SPEC §1),
    so no cache of the facade served the previous call's inputs."""
    cases = []
    pot8, q8 = _rayleigh(8, seed=1)
    pot3, q3 = _rayleigh(3, seed=2)
    cases.append((pot8, q8, {"lr": [1e-3, 1e-2], "weight_decay": [0.0, 1e-3]}))
    cases.append((pot8, q8, {"lr": [2e-3, 3e-2], "weight_decay": [0.0, 1e-3]}))
    cases.append((pot8, q8 * 2.0, {"lr": [2e-3, 3e-2], "weight_decay": 5e-4}))
    cases.append((pot3, q3, {"lr": [2e-3, 3e-2], "weight_decay": [0.0, 1e-3]}))
    pot8b, q8b = _rayleigh(8, seed=3)
    cases.append((pot8b, q8b, {"lr": [2e-3, 3e-2], "weight_decay": [0.0, 1e-3]}))
    for pot, q0, grid in cases:
        res = nc.scan(cls, pot, q0, steps=7, charges=False, progress=False, seeds=0, **grid)
        for index in np.ndindex(res.shape):
            tr = nc.train(res.rule_at(*index), pot, q0, 7, record_every=7)
            assert np.array_equal(_bits(res.q[index]), _bits(tr.q[-1]))
            assert np.array_equal(_bits(res.loss[index]), _bits(tr.loss[-1]))


def test_seed_axis_and_threads_default_unchanged():
    """With a seed axis the tasks repeat each point's row (the S > 1 path); with S = 1
    the packed rows are used as they are: both equal a scan of the points one by one."""
    pot, q0 = _rayleigh(4)
    lr = [1e-3, 1e-2, 0.1]
    one = nc.scan(rules.SGD, pot, q0, steps=9, lr=lr, momentum=0.9, charges=False,
                  seeds=0)
    many = nc.scan(rules.SGD, pot, q0, steps=9, lr=lr, momentum=0.9, charges=False,
                   seeds=[0, 5])
    for s in range(2):
        assert np.array_equal(_bits(many.q[:, s]), _bits(one.q))
        assert np.array_equal(_bits(many.loss_min[:, s]), _bits(one.loss_min))


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.6), (0.0, -0.0), (1, 0),
                                   (0.9, 1.0), (0.9, np.nan), (0.9, np.inf), (0.9, -1.0),
                                   (0.9,), "x", (np.float32(0.9), 0.99)])
def test_adam_table_bytes_fast_path_is_numpys(betas):
    """_scan._adam_table_bytes reads a fixed ``betas`` pair of Python numbers without
    NumPy: the bytes equal those of the NumPy reading (np.asarray, np.max) it replaces,
    invalid pairs included (their error is the rule's, raised later)."""
    import math

    pot, q0 = _rayleigh(4)
    g = scan_mod._make_grid(rules.Adam, pot, q0, 10**6, None, (0,), None,
                            {"lr": [1e-3, 2e-3], "betas": betas})
    try:
        b = float(np.max(np.asarray([betas], dtype=np.float64).ravel(), initial=0.0))
    except (TypeError, ValueError):
        want = 0
    else:
        if b <= 0.0:
            cols = 2
        elif b < 1.0:
            cols = min(g.steps, int(math.ceil(746.0 / -math.log(b))) + 2)
        else:
            cols = g.steps
        want = 2 * max(cols, 1) * 8
    assert scan_mod._adam_table_bytes(g) == want
