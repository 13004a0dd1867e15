"""The caches behind the fixed cost of a call (issue 16): Adam's table of bias
corrections shared across scan calls (pyx/scan.pyx ``_cached_pow_table``,
``_adam_pow_rows``), the charge layout kept per potential (``charges.layout``) and the
one-pass finiteness check of a run's recorded series (``_train._all_finite``).

Each is checked for what it must not change: a cached value is the one a fresh
computation gives for the same inputs, bit for bit, and is never served for other inputs
(other betas, step counts, initial steps, signs of zero, symmetries, directions, Ω's,
blocks); scans and trainings with the caches warm equal those with the caches cleared,
and the lanes still equal the scalar loop (SPEC §1: every grid point is its own
``train`` call).  No timing is asserted here (benchmarks/bench_scan_overhead.py,
benchmarks/bench_train_peers.py).
"""
import importlib

import numpy as np
import pytest

import noether_core as nc
from noether_core import _bridge, charges
from noether_core._kernels import scan as ks
from noether_core.symmetry import Symmetry

train_mod = importlib.import_module("noether_core._train")


def _bits(x):
    return np.asarray(x, dtype=np.float64).view(np.int64)


def _rayleigh(d=6, seed=3):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d))
    return nc.potentials.RayleighQuotient(M + M.T), rng.normal(size=d)


# ---------------------------------------------------------------------------------------
# Adam's pow table


def _pow_reference(beta, s0, steps):
    """The definition (the two-pass version _pow_table replaced): L = one past the last
    column where some row's pow is non-zero before its first 0 (plus one zero column when
    L < steps); every entry pow(beta_k, s0_k + n + 1) with the step count incremented by
    1.0 (Python's float power calls the same C pow)."""
    L = 0
    for b, s in zip(beta, s0, strict=True):
        st = float(s)
        for n in range(steps):
            st += 1.0
            if float(b) ** st == 0.0:
                break
            L = max(L, n + 1)
    if L < steps:
        L += 1
    out = np.empty((len(beta), L))
    for k, (b, s) in enumerate(zip(beta, s0, strict=True)):
        st = float(s)
        for n in range(L):
            st += 1.0
            out[k, n] = float(b) ** st
    return out


@pytest.mark.parametrize("steps", [0, 1, 2, 255, 256, 257, 700, 1500, 2100])
def test_pow_table_is_the_two_pass_definition(steps):
    """One pow per entry (values kept from the pass that finds L, a buffer grown past 256
    columns by doubling): the same shape and bits as the definition, rows that underflow
    at different steps (0.5 at ~1075, 0.6 at ~1460) and a resumed step count included."""
    beta = np.array([0.9, 0.5, 0.6, 0.0, 0.999, 0.5])
    s0 = np.array([0.0, 0.0, 3.0, 0.0, 12.0, 900.0])
    got = ks._pow_table(beta, s0, steps)
    ref = _pow_reference(beta, s0, steps)
    assert got.shape == ref.shape
    assert np.array_equal(_bits(got), _bits(ref))


def test_pow_table_signed_zero_rows():
    """pow(-0, odd n) = -0: the table keeps the sign (bitwise the definition)."""
    got = ks._pow_table(np.array([-0.0, 0.0]), np.array([0.0, 0.0]), 5)
    ref = _pow_reference([-0.0, 0.0], [0.0, 0.0], 5)
    assert np.array_equal(_bits(got), _bits(ref))


def _rows_reference(hp, sca0, steps):
    """Per point p and j = 0, 1: the row pow(beta_{j+1}(p), s0_p + n + 1), n < steps."""
    out = np.empty((hp.shape[0], 2, steps))
    for p in range(hp.shape[0]):
        for j in range(2):
            st = float(sca0[p, 0])
            for n in range(steps):
                st += 1.0
                out[p, j, n] = float(hp[p, 1 + j]) ** st
    return out


def _rows_of(table, rows, steps):
    P = rows.shape[0]
    out = np.zeros((P, 2, steps))
    L = min(steps, table.shape[1])
    for p in range(P):
        for j in range(2):
            out[p, j, :L] = table[rows[p, j], :L]     # past the table: pow is exactly 0
    return out


def _adam_hp(P, b1, b2):
    hp = np.zeros((P, 7))
    hp[:, 0] = np.geomspace(1e-3, 1e-1, P)
    hp[:, 1], hp[:, 2], hp[:, 3] = b1, b2, 1e-8
    return hp


@pytest.mark.parametrize("case", ["same", "equal_betas", "beta1_axis", "beta2_axis",
                                  "resumed", "signed_zero", "nan"])
def test_adam_rows_fast_and_general_paths(case):
    """Every point reads, through its two row indices, pow(beta_j, s0 + n + 1): the one
    pass for a grid whose betas and s0 are everywhere the same, np.unique otherwise."""
    ks._pow_cache_clear()
    P, steps = 11, 40
    hp = _adam_hp(P, 0.9, 0.999)
    sca = np.zeros((P, 1))
    if case == "equal_betas":
        hp[:, 1] = hp[:, 2] = 0.7
    elif case == "beta1_axis":
        hp[:, 1] = np.linspace(0.5, 0.95, P)
    elif case == "beta2_axis":
        hp[::2, 2] = 0.99
    elif case == "resumed":
        sca[:, 0] = np.arange(P) % 3 * 5.0
    elif case == "signed_zero":
        hp[:, 1] = 0.0
        hp[3, 1] = -0.0
    elif case == "nan":
        hp[:, 1] = np.nan
    table, rows = ks._adam_pow_rows(hp, sca, steps)
    assert rows.shape == (P, 2) and rows.dtype == np.intp and rows.flags.c_contiguous
    assert table.dtype == np.float64 and table.flags.c_contiguous
    assert 0 <= rows.min() and rows.max() < table.shape[0]
    got, ref = _rows_of(table, rows, steps), _rows_reference(hp, sca, steps)
    if case == "signed_zero":
        # +0 and -0 are equal keys (as np.unique merges them): the rows may hold either
        # sign, and 1 - pow(+-0, n) = 1 either way (the bias corrections the kernel forms)
        assert np.array_equal(1.0 - got, 1.0 - ref)
        assert np.array_equal(_bits(1.0 - got), _bits(1.0 - ref))
    elif case == "nan":
        assert np.isnan(got[:, 0]).all() and np.array_equal(got[:, 1], ref[:, 1])
    else:
        assert np.array_equal(_bits(got), _bits(ref))
    if case in ("same", "equal_betas"):
        assert table.shape[0] == (1 if case == "equal_betas" else 2)   # the one-pass path


def test_pow_cache_never_stale_and_bounded():
    """A table is served again only for the same distinct (beta, s0) rows (exact bytes:
    +0 and -0 are different keys) and the same step count; it is read-only; the cache
    holds at most _POW_CACHE_MAX tables, none above _POW_CACHE_ENTRY_BYTES."""
    ks._pow_cache_clear()
    keys = np.array([[0.9, 0.0], [0.999, 0.0]])
    t1 = ks._cached_pow_table(keys, 100)
    assert not t1.flags.writeable
    assert ks._cached_pow_table(keys.copy(), 100) is t1            # same values: shared
    variants = [(np.array([[0.9, 0.0], [0.99, 0.0]]), 100),        # another beta
                (np.array([[0.9, 1.0], [0.999, 1.0]]), 100),       # another initial step
                (keys, 101),                                       # another step count
                (np.array([[-0.0, 0.0]]), 3), (np.array([[0.0, 0.0]]), 3)]
    for k, steps in variants:
        t = ks._cached_pow_table(k, steps)
        assert t is not t1
        assert np.array_equal(_bits(t), _bits(_pow_reference(k[:, 0], k[:, 1], steps)))
    assert _bits(ks._cached_pow_table(np.array([[-0.0, 0.0]]), 3))[0, 0] != \
        _bits(ks._cached_pow_table(np.array([[0.0, 0.0]]), 3))[0, 0]
    for i in range(3 * ks._POW_CACHE_MAX):                         # bounded
        ks._cached_pow_table(np.array([[0.5 + i * 1e-3, 0.0]]), 10)
    n, nbytes = ks._pow_cache_info()
    assert n <= ks._POW_CACHE_MAX
    assert nbytes <= ks._POW_CACHE_MAX * ks._POW_CACHE_ENTRY_BYTES
    big_steps = ks._POW_CACHE_ENTRY_BYTES // 8 + 10                # one row above the limit
    ks._pow_cache_clear()
    big = ks._cached_pow_table(np.array([[0.9999, 0.0]]), big_steps)
    assert big.nbytes > ks._POW_CACHE_ENTRY_BYTES and ks._pow_cache_info() == (0, 0)


def _scan(cls, pot, q0, lanes, **kw):
    return nc.scan(cls, pot, q0, progress=False, threads=1, lanes=lanes, charges=False,
                   **kw)


def _same_scan(a, b):
    for k in ("q", "loss", "loss_min", "angular_update"):
        assert np.array_equal(_bits(getattr(a, k)), _bits(getattr(b, k))), k
    assert np.array_equal(a.status, b.status)


@pytest.mark.parametrize("cls", [nc.rules.Adam, nc.rules.AdamW])
def test_adam_scans_warm_cold_and_scalar_agree(cls):
    """Consecutive lane scans that share or change the cached table (betas, steps, equal
    betas) equal the same scans with the cache cleared and the scalar loop, bit for bit.
    (Rows whose betas or initial steps differ between points, the general path, are
    covered by tests/test_scan_lanes.py's random rows against the scalar kernel.)"""
    pot, q0 = _rayleigh()
    grids = [dict(steps=300, lr=[1e-3, 1e-2, 5e-2], weight_decay=[0.0, 1e-2]),
             dict(steps=300, lr=[1e-3, 1e-2, 5e-2], weight_decay=[0.0, 1e-2]),   # warm
             dict(steps=300, lr=[1e-3, 1e-2], betas=(0.5, 0.6)),
             dict(steps=301, lr=[1e-3, 1e-2], betas=(0.5, 0.6)),
             dict(steps=1600, lr=[1e-3, 1e-2], betas=(0.5, 0.6)),      # past the underflow
             dict(steps=200, lr=[1e-3, 1e-2], betas=(0.7, 0.7))]
    for kw in grids:
        warm = _scan(cls, pot, q0, True, **kw)
        ks._pow_cache_clear()
        cold = _scan(cls, pot, q0, True, **kw)
        scalar = _scan(cls, pot, q0, False, **kw)
        assert warm.kernel.startswith("lanes") and scalar.kernel == "scalar"
        _same_scan(warm, cold)
        _same_scan(warm, scalar)


# ---------------------------------------------------------------------------------------
# the charge layout kept per potential


def _layout_arrays(lay):
    return [getattr(lay, k) for k in ("fam", "ptr1", "idx1", "ptr2", "idx2", "dirn",
                                      "optr", "omega")]


def _same_layout(a, b):
    for x, y in zip(_layout_arrays(a), _layout_arrays(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous
        assert np.array_equal(x, y)


def test_layout_is_kept_and_equals_a_fresh_build():
    pot, _ = _rayleigh()
    chosen, _ = charges.select(pot, True, None)
    lay = charges.layout(pot, chosen)
    _same_layout(lay, charges._build_layout(pot.blocks, chosen))
    assert charges.layout(pot, list(chosen)) is lay                # same choice: kept
    assert all(not a.flags.writeable for a in _layout_arrays(lay))
    other, _ = _rayleigh(seed=4)                                   # another potential
    assert charges.layout(other, charges.select(other, True, None)[0]) is not lay


def test_layout_follows_the_symmetries():
    """Another Ω, translation direction, family, block or choice is another layout."""
    d = 4
    A = np.diag([1.0, 2.0, 3.0, 4.0])
    pot = nc.potentials.Quadratic(A)
    blk = list(pot.blocks)[0]
    rng = np.random.default_rng(0)
    layouts = []
    choices = [
        [Symmetry("scale", (blk,))],
        [Symmetry("translation", (blk,), direction=np.eye(d)[0])],
        [Symmetry("translation", (blk,), direction=np.eye(d)[1])],
        [Symmetry("rotation", (blk,), omega=nc.symmetry.random_skew(d, rng))],
        [Symmetry("rotation", (blk,), omega=nc.symmetry.random_skew(d, rng))],
        [Symmetry("scale", (blk,)), Symmetry("translation", (blk,), direction=np.ones(d))],
    ]
    for syms in choices:
        chosen, untracked = charges.select(pot, syms, None)
        assert not untracked
        lay = charges.layout(pot, chosen)
        _same_layout(lay, charges._build_layout(pot.blocks, chosen))
        layouts.append(lay)
    assert len({id(x) for x in layouts}) == len(layouts)
    # the same values again (new objects): the same layouts
    for syms, lay in zip(choices[:3], layouts[:3], strict=True):
        again = [Symmetry(s.family, s.blocks, direction=s.direction) for s in syms]
        assert charges.layout(pot, charges.select(pot, again, None)[0]) is lay


def test_layout_omega_argument_changes_the_layout():
    """A rotation declared without a fixed Ω, tracked with omega= passed per call: each Ω
    its own layout; a train run with a warm cache equals the same run built fresh."""
    pot, q0 = _rayleigh(d=4)
    blk = list(pot.blocks)[0]
    rot = [Symmetry("rotation", (blk,))]
    rng = np.random.default_rng(1)
    oms = [nc.symmetry.random_skew(4, rng) for _ in range(3)]
    runs = []
    for om in oms + oms[:1]:
        chosen, untracked = charges.select(pot, rot, om)
        assert not untracked
        lay = charges.layout(pot, chosen)
        _same_layout(lay, charges._build_layout(pot.blocks, chosen))
        runs.append(nc.train(nc.rules.SGD(lr=0.05, momentum=0.9), pot, q0, 30,
                             charges=rot, omega=om))
    assert charges.layout(pot, charges.select(pot, rot, oms[0])[0]) is \
        charges.layout(pot, charges.select(pot, rot, oms[0].copy())[0])
    assert charges.layout(pot, charges.select(pot, rot, oms[0])[0]) is not \
        charges.layout(pot, charges.select(pot, rot, oms[1])[0])
    a, b = runs[0], runs[3]
    (key,) = a.charges
    assert np.array_equal(_bits(a.charges[key].moment), _bits(b.charges[key].moment))
    assert a.charges[key].worst == b.charges[key].worst
    assert not np.array_equal(runs[0].charges[key].moment, runs[1].charges[key].moment)


def test_layout_rebuilt_when_the_blocks_mapping_is_another():
    pot, _ = _rayleigh()
    chosen, _ = charges.select(pot, True, None)
    lay = charges.layout(pot, chosen)
    name = list(pot.blocks)[0]
    from types import MappingProxyType
    idx = np.array(pot.blocks[name][::-1])                        # other indices
    idx.setflags(write=False)
    pot._blocks = MappingProxyType({name: idx})
    lay2 = charges.layout(pot, chosen)
    assert lay2 is not lay
    assert np.array_equal(lay2.idx1, idx)


def test_layout_cache_is_bounded():
    pot, _ = _rayleigh(d=4)
    rng = np.random.default_rng(2)
    for _ in range(3 * charges._LAYOUT_CACHE_MAX):
        chosen, _ = charges.select(pot, True, nc.symmetry.random_skew(4, rng))
        charges.layout(pot, chosen)
        assert len(pot._layout_cache) <= charges._LAYOUT_CACHE_MAX


@pytest.mark.parametrize("rule", [nc.rules.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
                                  nc.rules.AdamW(lr=1e-2),
                                  nc.rules.RMSprop(lr=1e-3, weight_decay=1e-3)])
def test_train_with_warm_layout_equals_uncached(rule, monkeypatch):
    """train with the layout kept equals train with the layout built every call, every
    output bit for bit (charges included), and its resume continues as before."""
    pot, q0 = _rayleigh()
    warm = [nc.train(rule, pot, q0, 60, record_every=3) for _ in range(2)]
    monkeypatch.setattr(charges, "layout",
                        lambda p, c: charges._build_layout(p.blocks, c))
    cold = nc.train(rule, pot, q0, 60, record_every=3)
    for w in warm:
        for k in ("q", "loss", "grad_norm2", "q_final"):
            assert np.array_equal(_bits(getattr(w, k)), _bits(getattr(cold, k))), k
        for lab, c in cold.charges.items():
            for k in ("moment", "charge", "residual", "metric"):
                assert np.array_equal(_bits(getattr(w.charges[lab], k)),
                                      _bits(getattr(c, k))), (lab, k)
            assert w.charges[lab].worst == c.worst
            assert w.charges[lab].worst_step == c.worst_step


# ---------------------------------------------------------------------------------------
# the recorded series' finiteness in one pass


@pytest.mark.parametrize("values, expect", [
    ([np.ones(3), np.zeros((2, 0))], True),
    ([np.ones(3), np.array([1.0, np.nan])], False),
    ([np.array([np.inf, -np.inf])], False),
    ([np.array([1e308, 1e308]), np.ones((2, 3))], True),      # finite, their sum is not
    ([np.zeros(0)], True),
    ([np.ones(5000), np.array([[1.0], [-np.inf]])], False),   # above the joined size
    ([np.ones(5000), np.ones((3, 2))], True),
])
def test_all_finite(values, expect):
    """The joined (or one-by-one) test is element-wise isfinite."""
    assert train_mod._all_finite(values) is expect
    assert expect == all(np.isfinite(v).all() for v in values)


def test_huge_finite_records_are_not_flagged():
    """Recorded values whose sum overflows but which are each finite (a loss of 1e308 at
    every row) do not flag the run."""
    pot = nc.potentials.Python(lambda q: (1e308, np.zeros(2)), 2)
    res = nc.train(nc.rules.SGD(lr=0.1), pot, np.array([1.0, 1.0]), 4, charges=False)
    assert len(res.loss) == 5 and (res.loss == 1e308).all()      # their sum overflows
    assert not res.diverged


def test_csr_unchanged_by_bridge():
    """_bridge.csr's rows: the parts, intp, C-contiguous (its callers' contract)."""
    parts = [np.array([3, 1], dtype=np.int32), np.zeros(0, np.intp), np.array([0])]
    ptr, idx = _bridge.csr(parts)
    assert ptr.dtype == idx.dtype == np.intp and idx.flags.c_contiguous
    assert ptr.tolist() == [0, 2, 2, 3] and idx.tolist() == [3, 1, 0]


@pytest.mark.parametrize("scale", [0.0, 1.0, 1e150, 1.1e150, 1e153, 4e153, 5e153, 1e154,
                                   1e200, 1e300])
@pytest.mark.parametrize("d", [1, 8, 33])
def test_q0_norm_check_is_the_dot_products(scale, d):
    """q0 is refused exactly when its dot product with itself overflows (the shortcut
    for small values only skips a dot product that cannot overflow)."""
    q = np.linspace(-1.0, 1.0, d) * scale
    q[0] = scale
    with np.errstate(over="ignore"):
        overflows = not np.isfinite(np.dot(q, q))
    if overflows:
        with pytest.raises(ValueError, match="q0 is too large"):
            train_mod._check_q0_norm(q)
    else:
        train_mod._check_q0_norm(q)


@pytest.mark.parametrize("betas", [(0.9, 0.999), [0.5, 0.6], (0.0, -0.0), (1, True),
                                   (np.float64(0.8), 0.99), np.array([0.9, 0.99]),
                                   (0.9, 1.0 - 1e-9)])
def test_adam_table_bytes_cache_is_never_stale(betas):
    """The bound kept per (steps, betas) equals the one computed without the cache, for
    each step count in turn (a changed step count is another key)."""
    scan_mod = importlib.import_module("noether_core._scan")
    pot, q0 = _rayleigh(d=4)
    for steps in (1, 500, 10**6, 500):
        g = scan_mod._make_grid(nc.rules.Adam, pot, q0, steps, None, (0,), None,
                                {"lr": [1e-3, 2e-3], "betas": betas})
        pairs = (g.axes["betas"].tolist() if "betas" in g.axes
                 else [g.fixed.get("betas", nc.rules.Adam.betas)])
        want = scan_mod._adam_table_bytes_of(steps, pairs)
        assert scan_mod._adam_table_bytes(g) == want == scan_mod._adam_table_bytes(g)
