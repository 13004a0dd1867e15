"""``scan(..., batch_streams=...)``: whose minibatch stream a grid point draws from
(docs/scan.md §"Minibatch streams", §"Minibatch lanes").

Under ``"seed"`` every grid point of scan seed s draws from ``numpy.random.default_rng(s)``,
so point i is bitwise ``train(rule_at(i), pot, q0, steps, batch_size=B, seed=s)`` and every
point of one seed sees the same batch at every step (common random numbers).  The lane
kernel puts the tasks of one seed into the same blocks (a slot map) and draws each step's
batch once per block, the rows read by every lane (no gather): the outputs must still be
*bitwise* those of the scalar loop (one Generator per task) and of ``train``, compared as
bits for every compiled version of the lane kernel (NOETHER_LANE_ISA).  ``"point"`` (the
default) keeps the per-point streams of ``point_seed``: unchanged.
"""
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan_lanes import _assert_identical, _bits  # tests/ is on sys.path
from test_scan_lanes_minibatch import RULES, _bn, _scan, minibatch_cases, raw_lane_args

import noether_core as nc
from noether_core import _bridge
from noether_core import _scan as scan_mod
from noether_core._kernels import scan as ks
from noether_core.errors import DivergenceWarning
from noether_ref.potentials import batchnorm_unit

ISAS = ks.lane_isas()


def _seed_scan(pot, q0, lanes, isa=None, **kw):
    return _scan(pot, q0, lanes, isa=isa, batch_streams="seed", **kw)


@pytest.fixture(params=["rows table", "per block"])
def draws(request, monkeypatch):
    """Both ways a seed's lanes get their rows (docs/scan.md §"Minibatch lanes"): drawn
    once per stream for the whole run before the blocks run (the default while the table
    holds at most ``ROWS_TABLE_MAX`` rows), or by each block from the stream, 64 steps
    ahead in four jumped chains (what larger runs do: forced by a zero limit)."""
    if request.param == "per block":
        monkeypatch.setattr(ks, "ROWS_TABLE_MAX", 0)
    return request.param


def _train_point(res, idx, pot, q0, steps, B, record_every=1):
    """``train`` at grid point ``idx`` with the int seed of its scan seed (the "seed"
    mode's contract: ``default_rng(s)``)."""
    names = list(res.axes)
    s = (int(res.axes["seed"][idx[names.index("seed")]]) if "seed" in res.axes
         else int(res.fixed["seed"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        return nc.train(res.rule_at(*idx), pot, q0, steps, batch_size=B, seed=s,
                        record_every=record_every)


# ---- lanes, scalar loop and train: the same bits --------------------------------------

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("charges", [True, False])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_seed_streams_lanes_equal_scalar_loop_bitwise(rule, charges, isa, draws):
    """Every lane rule (SGD incl. Nesterov, Adam, AdamW, RMSprop, ScalarRMSProp), charges on
    and off, S = 2 seeds over grids of 8-24 points (seed-grouped blocks with padding),
    300 steps (past the 256-step cancel boundary; four 64-step draw tables of B = 9 and a
    shorter last one, docs/scan.md), recorded every 7 steps: every output bitwise the
    scalar loop's (one Generator per task, tests/test_scan.py holds it to ``train``)."""
    rule_cls, grid = RULES[rule]
    pot, q0 = _bn(40, 6)
    kw = dict(steps=300, charges=charges, rule_cls=rule_cls, batch_size=9, seeds=(0, 5),
              record_every=7, **grid)
    ref = _seed_scan(pot, q0, False, **kw)
    got = _seed_scan(pot, q0, True, isa=isa, **kw)
    assert ref.kernel == "scalar" and got.kernel == f"lanes[{isa}]"
    assert got.batch_streams == ref.batch_streams == "seed"
    _assert_identical(ref, got)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seeds", [(3,), (0, 1), (4, 9, 2)])
@pytest.mark.parametrize("N,d,B", [(32, 8, 2), (50, 3, 7), (256, 8, 32), (33, 17, 33),
                                   (20, 5, 19)])
def test_seed_streams_sizes_and_seed_counts(N, d, B, seeds, isa, draws):
    """S = 1, 2, 3 seeds over a 5 x 2 grid (10 points: not a multiple of 8, so every
    seed's last block has padding lanes), B from 2 to N, d with and without a _dot4 tail
    and d > 16 (the generic block run); 140 steps (two full draw tables and a partial one
    for B <= 256)."""
    pot, q0 = _bn(N, d, seed=N + d)
    kw = dict(steps=140, lr=np.linspace(0.01, 0.4, 5), momentum=[0.0, 0.9], batch_size=B,
              seeds=seeds, record_every=5)
    _assert_identical(_seed_scan(pot, q0, False, **kw),
                      _seed_scan(pot, q0, True, isa=isa, **kw))


@pytest.mark.parametrize("rule", ["sgd", "adamw", "srms"])
def test_seed_streams_equal_train_per_point(rule):
    """The oracle itself: each point is ``train(rule_at(i), ..., seed=s)`` with the *int*
    seed s (``default_rng(s)``), bitwise: final q and loss, loss_min, block norm, the
    scale law's worst residual, every recorded minibatch loss and |g|^2; and
    ``seed_at`` returns ``SeedSequence(s)``, which reproduces the same run."""
    rule_cls, grid = RULES[rule]
    pot, q0 = _bn(30, 5)
    steps, B = 130, 6
    res = _seed_scan(pot, q0, True, rule_cls=rule_cls, steps=steps, batch_size=B,
                     seeds=(4, 9, 11), record_every=10, **grid)
    assert res.kernel.startswith("lanes") and res.shape[-1] == 3
    for idx in np.ndindex(*res.shape):
        tr = _train_point(res, idx, pot, q0, steps, B)
        assert np.array_equal(_bits(res.q[idx]), _bits(tr.q_final)), idx
        assert _bits(res.loss[idx]) == _bits(tr.loss[-1]), idx
        assert _bits(res.loss_min[idx]) == _bits(np.min(tr.loss)), idx
        assert res.norm2[idx + (0,)] == tr.block_norm2["w"][-1]
        assert res.charge_worst["scale:w"][idx] == tr.charge("scale", "w").worst
        np.testing.assert_array_equal(_bits(res.series["loss"][idx]), _bits(tr.loss[::10]))
        np.testing.assert_array_equal(_bits(res.series["grad_norm2"][idx]),
                                      _bits(tr.grad_norm2[::10]))
        ss = res.seed_at(*idx)
        assert ss.spawn_key == () and ss.entropy == int(res.axes["seed"][idx[-1]])
    idx = (1,) * (res.q.ndim - 2) + (2,)              # a point of the last seed
    tr = nc.train(res.rule_at(*idx), pot, q0, steps, batch_size=B, seed=res.seed_at(*idx))
    assert np.array_equal(_bits(res.q[idx]), _bits(tr.q_final))


# ---- what the points of one seed share --------------------------------------------------

def _draw_batches(seed, N, B, steps):
    """The rows of each step drawn as pyx/rules.pyx _draw_batch does (partial Fisher-Yates
    from the identity, j = i + floor(u (N - i)), u = Generator.random()), written from
    its definition in NumPy: an oracle independent of both kernels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        perm = np.arange(N)
        for i in range(B):
            j = min(i + int(rng.random() * (N - i)), N - 1)
            perm[i], perm[j] = perm[j], perm[i]
        out.append(perm[:B].copy())
    return out


@pytest.mark.parametrize("isa", ISAS)
def test_points_of_a_seed_see_the_same_batches(isa):
    """With lr ~ 1e-300 the step changes no bit of q (lr g is far below half an ulp of q),
    so the loss recorded at step n is the minibatch loss of step n's batch at q0: it
    reveals the batch.  Every point of a seed records the same series, bitwise; it is the
    BatchNorm loss (the NumPy twin, noether_ref) on the rows of ``default_rng(s)``'s
    draws (to 1e-12 relative: the twin sums in another order); the two seeds' series
    differ; and under "point" two points of a seed do not share batches."""
    pot, q0 = _bn(37, 4)
    N, B, steps = 37, 5, 70
    kw = dict(steps=steps, lr=[1e-300, 2e-300, 3e-300], momentum=[0.0, 0.5], batch_size=B,
              seeds=(0, 7), record_every=1, charges=False)
    res = _seed_scan(pot, q0, True, isa=isa, **kw)
    assert res.kernel == f"lanes[{isa}]"
    loss = res.series["loss"][..., :steps]                    # (3, 2, 2, steps)
    for k, s in enumerate((0, 7)):
        series = loss[..., k, :].reshape(-1, steps)
        assert np.all(_bits(series) == _bits(series[0])), s
        X, y = (pot._lane_form()[1][k] for k in ("X", "y"))
        want = [batchnorm_unit(q0, X, y, 0.0, rows)[0] for rows in _draw_batches(s, N, B,
                                                                                  steps)]
        np.testing.assert_allclose(series[0], want, rtol=1e-12, atol=0.0)
    assert not np.array_equal(loss[0, 0, 0], loss[0, 0, 1])
    pt = _scan(pot, q0, True, isa=isa, **kw)
    assert not np.array_equal(pt.series["loss"][0, 0, 0], pt.series["loss"][1, 0, 0])


def test_equal_hyper_parameters_give_equal_trajectories():
    """Dampening does nothing without momentum (torch.optim.SGD): the two dampening
    values of a seed are the same run, so under "seed" their whole outputs are equal bit
    for bit (same batches); under "point" they are not (different streams)."""
    pot, q0 = _bn(40, 6)
    kw = dict(steps=200, lr=np.linspace(0.01, 0.3, 5), momentum=0.0,
              dampening=[0.0, 0.5], batch_size=8, seeds=(1, 2, 3), record_every=9)
    res = _seed_scan(pot, q0, True, **kw)
    for k in ("q", "loss", "loss_min", "norm2", "angular_update"):
        a = getattr(res, k)
        assert np.array_equal(_bits(a[:, 0]), _bits(a[:, 1])), k
    assert np.array_equal(_bits(res.series["q"][:, 0]), _bits(res.series["q"][:, 1]))
    pt = _scan(pot, q0, True, **kw)
    assert not np.array_equal(pt.q[:, 0], pt.q[:, 1])


# ---- the block layout: seed-grouped with padding, or packed with mixed blocks ----------

def test_slot_layouts_both_give_the_same_bits(monkeypatch, draws):
    """The seed-grouped layout (each seed's tasks padded to whole blocks) and the packed
    one (blocks straddling two seeds draw per lane) give the same bits: the layout is a
    choice of speed only.  3 points x 5 seeds makes the layouts differ (5 padded blocks
    against 2 packed ones, both mixed)."""
    pot, q0 = _bn(30, 5)
    kw = dict(steps=90, lr=[0.01, 0.1, 0.3], batch_size=4, seeds=(0, 1, 2, 3, 4),
              record_every=4)
    g = _scan_grid(pot, q0, kw)
    padded = scan_mod._seed_stream_batch(g, 0, g.n_tasks)[2]
    assert padded is not None
    assert padded.size == 5 * 8 and np.all(padded[::8] >= 0)
    ref = _seed_scan(pot, q0, False, **kw)
    _assert_identical(ref, _seed_scan(pot, q0, True, **kw))
    monkeypatch.setattr(scan_mod, "_MIXED_BLOCK_COST", 1)          # now packing is cheaper
    packed = scan_mod._seed_stream_batch(g, 0, g.n_tasks)[2]
    assert packed.size == 2 * 8
    _assert_identical(ref, _seed_scan(pot, q0, True, **kw))


def _scan_grid(pot, q0, kw):
    kw = dict(kw)
    args = scan_mod._grid_args(nc.rules.SGD, pot, q0, kw.pop("steps"), kw.pop("record_every"),
                            kw.pop("seeds"), kw.pop("batch_size"), kw)
    return scan_mod._Grid(*args, batch_streams="seed")


def test_slot_map_is_seed_major():
    """Every block of the seed-grouped layout holds tasks of one seed (task t has seed
    t mod S), each seed's points in ascending order, each task once."""
    pot, q0 = _bn(30, 5)
    g = _scan_grid(pot, q0, dict(steps=5, lr=np.linspace(0.01, 0.1, 11), batch_size=4,
                                 seeds=(5, 6, 7), record_every=None))
    B, rng, slots, stream = scan_mod._seed_stream_batch(g, 0, g.n_tasks)
    assert B == 4 and rng.shape == (33, 4)
    assert np.array_equal(stream, np.arange(33) % 3)
    B, rng, slots1, stream = scan_mod._seed_stream_batch(g, 7, 2)   # a chunk: seeds 1, 2
    assert np.array_equal(stream, [0, 1]) and np.array_equal(rng, want_rows([6, 7]))
    B, rng, slots, stream = scan_mod._seed_stream_batch(g, 0, g.n_tasks)
    assert np.array_equal(np.sort(slots[slots >= 0]), np.arange(33))
    for blk in slots.reshape(-1, 8):
        t = blk[blk >= 0]
        assert len(set(t % 3)) == 1 and np.all(np.diff(t) > 0)
    want = _bridge.pcg64_lane_states([np.random.SeedSequence(s) for s in (5, 6, 7)])
    assert np.array_equal(rng, want[np.arange(33) % 3])


# ---- threads, chunks, executors ---------------------------------------------------------

def want_rows(seeds):
    return _bridge.pcg64_lane_states([np.random.SeedSequence(s) for s in seeds])


def test_budget_counts_the_rows_table():
    """The one budget covers the shared rows (4 bytes each, at most ROWS_TABLE_MAX)."""
    pot, q0 = _bn(30, 5)
    g = _scan_grid(pot, q0, dict(steps=1000, lr=[0.1], batch_size=20, seeds=(1, 2),
                                 record_every=None))
    parts = scan_mod._budget_parts(g, 1, False)
    assert parts["shared batch rows"] >= 4 * 2 * 1000 * 20


def test_seed_streams_threads_and_chunks_identical(draws):
    """Threads and chunking change nothing: 1 and 2 threads, a thread pool with 5 chunks
    (chunks that start mid-seed and mid-point), a process pool."""
    pot, q0 = _bn(64, 8)
    kw = dict(steps=150, lr=np.linspace(0.01, 0.5, 7), momentum=[0.5, 0.9], batch_size=8,
              seeds=(0, 1, 2), record_every=10)
    one = _seed_scan(pot, q0, True, threads=1, **kw)
    _assert_identical(one, _seed_scan(pot, q0, True, threads=2, **kw))
    _assert_identical(one, _seed_scan(pot, q0, False, **kw))
    with ThreadPoolExecutor(3) as ex:
        chunked = _seed_scan(pot, q0, True, executor=ex, n_chunks=5, **kw)
    _assert_identical(one, chunked)
    assert chunked.kernel == one.kernel and chunked.batch_streams == "seed"
    with ProcessPoolExecutor(2) as ex:
        proc = _seed_scan(pot, q0, True, executor=ex, n_chunks=3, **kw)
    _assert_identical(one, proc)


# ---- the keyword ------------------------------------------------------------------------

def test_point_mode_is_the_default_and_unchanged():
    """No keyword and ``batch_streams="point"`` are the same scan, whose points are
    ``train(..., seed=point_seed(s, i))`` (tests/test_scan_lanes_minibatch.py holds every
    point to it); ``seed_at`` gives ``point_seed``."""
    pot, q0 = _bn(30, 4)
    kw = dict(steps=60, lr=[0.05, 0.1, 0.2], batch_size=5, seeds=(3, 8))
    a = _scan(pot, q0, True, **kw)
    b = _scan(pot, q0, True, batch_streams="point", **kw)
    _assert_identical(a, b)
    assert a.batch_streams == b.batch_streams == "point"
    assert a.seed_at(2, 1).spawn_key == (2,)
    tr = nc.train(a.rule_at(2, 1), pot, q0, 60, batch_size=5, seed=nc.point_seed(8, 2))
    assert np.array_equal(_bits(a.q[2, 1]), _bits(tr.q_final))


@pytest.mark.parametrize("bad", ["points", "Seed", "", None, 1, ("seed",)])
def test_bad_batch_streams_refused(bad):
    pot, q0 = _bn(20, 3)
    with pytest.raises(ValueError, match=r"batch_streams must be one of 'point', 'seed', "
                                         r"got " + __import__("re").escape(repr(bad))):
        nc.scan(nc.rules.SGD, pot, q0, steps=3, lr=[0.1], batch_size=4,
                batch_streams=bad, progress=False)
    with pytest.raises(ValueError, match="batch_streams"):       # full batch: still checked
        nc.scan(nc.rules.SGD, pot, q0, steps=3, lr=[0.1], batch_streams=bad,
                progress=False)


@pytest.mark.parametrize("lanes", [True, False])
def test_full_batch_ignores_batch_streams(lanes):
    """A full-batch scan draws nothing: the same bits under either value."""
    pot, q0 = _bn(20, 3)
    kw = dict(steps=50, lr=[0.05, 0.1], momentum=[0.0, 0.9], seeds=(0, 1))
    _assert_identical(_scan(pot, q0, lanes, **kw),
                      _scan(pot, q0, lanes, batch_streams="seed", **kw))


def test_seed_at_and_xarray_after_sel():
    """Under "seed" the stream does not depend on the grid point, so ``seed_at`` answers
    for a result narrowed by ``sel`` too; the xarray Dataset names the mode."""
    pot, q0 = _bn(30, 4)
    res = _seed_scan(pot, q0, True, steps=30, lr=[0.05, 0.1], momentum=[0.0, 0.9],
                     batch_size=5, seeds=(3, 8))
    sub = res.sel(lr=0.1)
    assert sub.seed_at(1, 1).entropy == 8 and sub.seed_at(1, 1).spawn_key == ()
    pytest.importorskip("xarray")
    assert res.to_xarray().attrs["batch_streams"] == "seed"
    pt = _scan(pot, q0, True, steps=30, lr=[0.05, 0.1], batch_size=5, seeds=(3, 8))
    with pytest.raises(ValueError, match="full grid"):
        pt.sel(lr=0.1).seed_at(1)


def test_kernel_refuses_bad_slot_maps():
    P = 9
    args, out = raw_lane_args(P)
    rng = np.zeros((P, 4), np.uint64)
    ok = np.full(16, -1, np.intp)
    ok[:9] = np.arange(9)
    _bridge.lane_kernel(*args, (3, rng, ok)).run()
    assert np.all(out.status == 0)
    bads = [(ok[:15], "multiple of 8"), (ok.astype(np.int64).astype(np.int32), "intp"),
            (np.where(ok == 3, 4, ok), "every task"),
            (np.r_[ok[:8], -1, 8, ok[10:]], "first in every")]
    for slots, match in bads:
        with pytest.raises(ValueError, match=match):
            _bridge.lane_kernel(*args, (3, rng, slots))
    two = np.r_[np.zeros(4, np.intp), np.ones(5, np.intp)]
    _bridge.lane_kernel(*args, (3, rng, ok, two)).run()        # equal states: fine
    rng2 = rng.copy()
    rng2[5, 1] = 1
    for stream, r in [(two * 2, rng), (two[:8], rng), (two, rng2)]:
        with pytest.raises(ValueError, match="task_stream"):
            _bridge.lane_kernel(*args, (3, r, ok, stream))


# ---- any grid ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(minibatch_cases(), st.sampled_from(ISAS))
def test_seed_streams_on_random_cases(case, isa):
    """Any minibatch grid the lanes take gives the scalar loop's bits under "seed" too:
    hypothesis over rules and their hyper-parameters, d 1-20, N 2-40, B 2-N, 1-3 seeds,
    step counts around the cancel boundary, recording, charges, both data forms."""
    pot, q0, rule_cls, kw = case
    ref = _seed_scan(pot, q0, False, rule_cls=rule_cls, **kw)
    got = _seed_scan(pot, q0, True, isa=isa, rule_cls=rule_cls, **kw)
    assert got.kernel == f"lanes[{isa}]"
    _assert_identical(ref, got)
