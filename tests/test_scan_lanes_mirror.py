"""MirrorDescent in the SIMD lane kernel (docs/scan.md §"MirrorDescent lanes").

Every lane must be bitwise the scalar loop (``lanes=False``) and ``train`` of the same
point: the step ∇h(q_{n+1}) = ∇h(q_n) − lr·(g_n + wd·q_n) (docs/scan.md Eq. (M1)–(M4),
rules.pyx ``_step_mirror``) and the mirror balance law
⟨∇h(q_{n+1}) − ∇h(q^free_{n+1}), ξ(q_n)⟩ = 0 (docs/balance_laws.md (4.1), its residual
relative to Σ(|∇h(q_{n+1})_i| + |∇h(q^free)_i|)|ξ_i|) are the same IEEE operations and the
same libm calls per lane, so there is no tolerance: every comparison is of bits.
The helpers (``_scan``, ``_assert_identical``, ``PROBLEMS``) are those of
tests/test_scan_lanes.py.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_scan_lanes import PROBLEMS, _assert_identical, _bits, _scan, lane_problem

import noether_core as nc
from noether_core import _bridge
from noether_core._kernels import scan as ks

MD = nc.rules.MirrorDescent

# one configuration per mirror map (Eq. (M1)-(M4) of docs/scan.md); D and p fixed per scan
MAPS = {
    "euclidean": dict(mirror="euclidean"),
    "diagonal": dict(mirror="diagonal"),            # D filled in per dimension below
    "pnorm": dict(mirror="pnorm", p=[1.5, 3.0]),     # p a grid axis
    "entropy": dict(mirror="entropy"),
}


def _problem(name, mirror):
    """(potential, q0, fixed keywords) for a lane potential and a mirror map; entropy
    starts from |q0| + 0.1 (it needs q > 0), diagonal gets D_i = 0.5 + i/d."""
    pot, q0 = PROBLEMS[name]
    kw = dict(MAPS[mirror])
    if mirror == "entropy":
        q0 = np.abs(q0) + 0.1
    if mirror == "diagonal":
        kw["D"] = tuple(0.5 + np.arange(pot.dim) / pot.dim)
    return pot, q0, kw


# 11 learning rates x 2 weight decays = 22 points (two full blocks and a partial one of
# 6; x 2 values of p for pnorm: 44); the largest rates make some points diverge
LR = np.array([1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 30.0, 1e3, 1e200])


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("charges", [True, False])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("mirror", sorted(MAPS))
def test_mirror_lanes_equal_scalar_loop_bitwise(mirror, name, charges, isa):
    """Every mirror map, with and without weight decay, on every lane potential (full
    batch), charges on (the scale law of Eq. (M5)) and off: the lane kernel's outputs are
    the scalar loop's bits, stops and stop steps included."""
    pot, q0, kw = _problem(name, mirror)
    grid = dict(steps=300, lr=LR, weight_decay=[0.0, 1e-2], charges=charges, **kw)
    ref = _scan(pot, q0, False, rule_cls=MD, **grid)
    got = _scan(pot, q0, True, isa=isa, rule_cls=MD, **grid)
    assert ref.kernel == "scalar" and got.kernel.startswith("lanes[")
    assert ref.diverged.any() and not ref.diverged.all()     # both paths are exercised
    _assert_identical(ref, got)


@pytest.mark.parametrize("mirror", sorted(MAPS))
def test_mirror_lanes_equal_train_per_point(mirror):
    """Each lane is a separate ``train`` call of the same rule, bitwise: final q, loss and
    the worst relative residual of the scale law (Eq. (M5))."""
    pot, q0, kw = _problem("bn", mirror)
    res = _scan(pot, q0, True, rule_cls=MD, steps=400, lr=[0.01, 0.3, 2.0],
                weight_decay=[0.0, 1e-3], **kw)
    assert res.kernel.startswith("lanes[")
    for idx in np.ndindex(*res.shape):
        tr = nc.train(res.rule_at(*idx), pot, q0, 400, record_every=400)
        if res.diverged[idx]:
            assert tr.diverged and tr.stop_step == res.stop_step[idx]
            continue
        assert np.array_equal(res.q[idx], tr.q_final)
        assert res.loss[idx] == tr.loss[-1]
        assert res.norm2[idx + (0,)] == tr.block_norm2["w"][-1]
        assert res.charge_worst["scale:w"][idx] == tr.charge("scale", "w").worst


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("mirror", sorted(MAPS))
def test_mirror_lanes_record_series_and_stops(mirror, isa):
    """Recorded series (rows of q, loss, |g|², block norms; NaN after a stop, ``n_rows``)
    with record_every dividing or not dividing the steps, divergent lanes among finishing
    ones: bitwise the scalar loop's."""
    pot, q0, kw = _problem("quadratic", mirror)
    for every in (1, 7, 250):
        grid = dict(steps=250, lr=LR[[0, 4, 8, 9, 2]], weight_decay=[0.0, 0.05],
                    record_every=every, charges=True, **kw)
        ref = _scan(pot, q0, False, rule_cls=MD, **grid)
        got = _scan(pot, q0, True, isa=isa, rule_cls=MD, **grid)
        assert got.kernel.startswith("lanes[")
        assert ref.diverged.any() and not ref.diverged.all()
        _assert_identical(ref, got)


@pytest.mark.parametrize("isa", ks.lane_isas())
def test_mirror_map_per_point(isa):
    """The kernel takes the map per point (its row's code; ``nc.scan`` fixes it per scan,
    a string being no axis): euclidean, pnorm and entropy lanes interleaved in one block
    (the entropy and pnorm lanes take the per-lane path, the others the vector form) give
    each the bits of the scalar loop's scan of its own map."""
    pot, q0 = PROBLEMS["rayleigh5"]
    q0 = np.abs(q0) + 0.1
    kind, data = pot._lane_form()
    lrs = LR[:7]
    steps, d = 200, pot.dim
    maps = [(0, dict(mirror="euclidean")), (2, dict(mirror="pnorm", p=3.0)),
            (3, dict(mirror="entropy"))]
    hp = np.array([[lr, wd, code, kw.get("p", 1.0)] for lr in lrs for wd in (0.0, 0.1)
                   for code, kw in maps])
    P = len(hp)
    out = _bridge.ScanOutputs.empty(P, d, 1, 0, 0)
    rule = _bridge.RuleInputs(4, hp, np.zeros((P, 0)), np.zeros((P, 0)),
                              *_bridge.csr([np.arange(d)]))
    plan = _bridge.ScanPlan(steps=steps, K=1, late_start=steps - 20, record_every=0, R=0,
                            n_threads=1)
    kern = _bridge.lane_kernel((kind, data), rule, q0, plan, np.array([0, d], np.intp),
                               np.arange(d, dtype=np.intp), out, None, isa)
    kern.run()
    for m, (_code, kw) in enumerate(maps):
        ref = _scan(pot, q0, False, rule_cls=MD, steps=steps, lr=lrs,
                    weight_decay=[0.0, 0.1], charges=False, **kw)
        sel = np.arange(m, P, len(maps))
        for k in ("q", "loss", "loss_min", "angular_update", "status", "stop_step"):
            a = getattr(ref, k).reshape(len(sel), -1)
            b = getattr(out, k)[sel].reshape(len(sel), -1)
            np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"{kw} {k}")


@pytest.mark.parametrize("isa", ks.lane_isas())
@pytest.mark.parametrize("mirror", sorted(MAPS))
def test_mirror_minibatch_lanes(mirror, isa):
    """Minibatch BatchNormUnit scans of MirrorDescent run in lanes too (the gradient code
    is shared; the same batch stream per point as ``train``): bitwise the scalar loop."""
    pot, q0, kw = _problem("bn", mirror)
    grid = dict(steps=120, lr=LR[:8], weight_decay=[0.0, 1e-2], batch_size=4, seeds=3,
                charges=True, **kw)
    ref = _scan(pot, q0, False, rule_cls=MD, **grid)
    got = _scan(pot, q0, True, isa=isa, rule_cls=MD, **grid)
    assert got.kernel.startswith("lanes[")
    _assert_identical(ref, got)


def test_mirror_lane_selection_and_entropy_start():
    """MirrorDescent grids choose the lanes (``lanes=None``); a tracked law of another
    family still gives the scalar loop's reason; entropy's q0 > 0 is refused before either
    kernel runs, with the same message."""
    pot, q0 = PROBLEMS["rayleigh8"]
    for mirror, kw in MAPS.items():
        _, q, kw = _problem("rayleigh8", mirror)
        res = _scan(pot, q, None, rule_cls=MD, steps=5, lr=[0.1], **kw)
        assert res.kernel.startswith("lanes["), mirror
    with pytest.raises(ValueError, match="translation"):
        nc.scan(MD, pot, q0, steps=5, lr=[0.1], lanes=True, progress=False,
                charges=[nc.symmetry.Symmetry("translation", ("q",), direction=np.ones(8))])
    bad = q0.copy()
    bad[0] = 0.0
    for lanes in (True, False):
        with pytest.raises(ValueError, match="q0 must be positive"):
            nc.scan(MD, pot, bad, steps=5, lr=[0.1], mirror="entropy", lanes=lanes,
                    progress=False)


def test_mirror_lane_kernel_checks_its_rows():
    """The compiled entry point refuses MirrorDescent rows it cannot run (a direct caller
    of the bridge): an unknown map code, pnorm with p <= 1, diagonal without D > 0."""
    pot, q0 = PROBLEMS["rayleigh5"]
    kind, data = pot._lane_form()
    P, d = 3, pot.dim
    plan = _bridge.ScanPlan(steps=5, K=1, late_start=4, record_every=0, R=0, n_threads=1)

    def build(hp, vec):
        out = _bridge.ScanOutputs.empty(P, d, 1, 0, 0)
        rule = _bridge.RuleInputs(4, hp, vec, np.zeros((P, 0)), *_bridge.csr([np.arange(d)]))
        return _bridge.lane_kernel((kind, data), rule, q0, plan, np.array([0, d], np.intp),
                                   np.arange(d, dtype=np.intp), out, None, None)

    hp = np.tile([0.1, 0.0, 0.0, 1.0], (P, 1))
    build(hp, np.zeros((P, 0))).run()                         # a valid euclidean grid
    for col, val, vec, match in [(2, 5.0, np.zeros((P, 0)), "map codes"),
                                 (3, 1.0, np.zeros((P, 0)), "p > 1"),
                                 (2, 1.0, np.zeros((P, 0)), "D > 0"),
                                 (2, 1.0, -np.ones((P, d)), "D > 0")]:
        bad = hp.copy()
        bad[1, col] = val
        if col == 3:
            bad[1, 2] = 2.0
        with pytest.raises(ValueError, match=match):
            build(bad, vec)


# ---------------------------------------------------------------------------------------
# property: random grids, dimensions, maps and hyper-parameters


@st.composite
def mirror_cases(draw):
    pot, d, rng = lane_problem(draw)
    mirror = draw(st.sampled_from(sorted(MAPS)))
    q0 = rng.normal(size=d)
    grid = {"mirror": mirror}
    if mirror == "entropy":
        q0 = np.abs(q0) + draw(st.sampled_from([1e-3, 0.1, 1.0]))
    elif mirror == "diagonal":
        grid["D"] = tuple(10.0 ** rng.uniform(-1, 1, d))
    elif mirror == "pnorm":
        ps = draw(st.lists(st.floats(1.05, 6.0), min_size=1, max_size=3, unique=True))
        grid["p"] = ps if len(ps) > 1 else ps[0]
    n_lr = draw(st.integers(1, 11))
    grid["lr"] = np.unique(10.0 ** rng.uniform(-3, 1.5, n_lr))
    wd = draw(st.sampled_from([0.0, 1e-3, (0.0, 0.1), (0.0, 1e-3, 2.0)]))
    grid["weight_decay"] = list(wd) if isinstance(wd, tuple) else wd
    steps = draw(st.sampled_from([1, 2, 9, 10, 11, 255, 256, 257, 600]))
    record_every = draw(st.sampled_from([None, None, 1, 3, 10, 600]))
    if record_every is not None:
        grid["record_every"] = record_every
    return pot, q0, steps, grid, draw(st.booleans())


@given(mirror_cases())
def test_mirror_lanes_equal_scalar_loop_on_random_grids(case):
    """Any MirrorDescent grid the lane kernel takes gives the scalar loop's bits: d 1-20
    (the generic block run), 1-33 points (partial blocks), p in (1, 6], D over two decades,
    entropy starting near 0, learning rates up to 30 (divergent lanes), weight decay per
    point, step counts around the 256-step poll and the angle window, recorded series,
    charges on and off, on every instruction set."""
    pot, q0, steps, grid, charges = case
    ref = _scan(pot, q0, False, rule_cls=MD, steps=steps, charges=charges, **grid)
    for isa in ks.lane_isas():
        got = _scan(pot, q0, True, isa=isa, rule_cls=MD, steps=steps, charges=charges,
                    **grid)
        assert got.kernel.startswith("lanes[")
        _assert_identical(ref, got)
