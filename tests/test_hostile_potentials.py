"""The potentials under hostile input (issue 19, items 1, 3, 4, 8, 18 and part of 20).

Each test closes the class behind a finding, not only the reported instance:

* minibatch rows: every data potential, through the facade *and* through the compiled
  ``value_and_grad`` the facade calls, refuses a batch longer than the data (the kernels'
  scratch holds n_data rows; duplicates allowed), an out-of-range or empty one, and
  accepts every legal one (checked against the NumPy twin); every kernel refuses arrays of
  the wrong dtype or shape when it is made (item 1);
* immutability: ``blocks`` is a read-only mapping of read-only index arrays, ``blocks``
  and ``symmetries`` cannot be rebound, a Symmetry's arrays are read-only; after every
  attempt ``train`` runs and gives the bits of a fresh potential (item 3);
* one memory budget: every built-in refuses, before allocating, a construction above
  ``max_bytes`` with a ValueError naming the bytes and ``max_bytes``; the estimate bounds
  the traced peak of construction plus one evaluation from above; pickling keeps the
  budget (item 4);
* softmax cross-entropy: f is invariant along its own translations up to offsets of 1e16,
  to the round-off of the logits (exactly when the offset is uniform), compiled and
  twin alike (item 8);
* Symmetry validates every field when made, naming it (item 18);
* repr() of a potential stays short however many blocks it has (item 20).

The budget tests never allocate the huge amounts: they check the refusal, and that the
refusal itself allocates next to nothing (tracemalloc).
"""
import pickle
import re
import tracemalloc

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import noether_core as nc
from noether_core import potentials as P
from noether_core.symmetry import Symmetry
from noether_ref import potentials as R

SEEDS = st.integers(0, 2**32 - 1)
EPS = np.finfo(float).eps


# ------------------------------------------------------------------------------------------
# Small data potentials with their NumPy twins ``ref(q, rows)``

def _data_case(name, rng):
    N = int(rng.integers(3, 9))
    D = int(rng.integers(1, 4))
    X = rng.standard_normal((N, D))
    C = int(rng.integers(2, 4))
    labels = np.arange(N) % C
    Y = rng.standard_normal((N, 2))
    y = rng.standard_normal(N)
    if name == "bn_unit":
        return P.BatchNormUnit(X, y), lambda q, r: R.batchnorm_unit(q, X, y, rows=r)
    if name == "bn_layer":
        return (P.BatchNormLayer(X, Y, width=3),
                lambda q, r: R.batchnorm_layer(q, X, Y, 3, rows=r))
    if name == "softmax":
        return (P.SoftmaxCrossEntropy(X, labels, n_classes=C),
                lambda q, r: R.softmax_xent(q, X, labels, C, rows=r))
    if name == "two_layer":
        return (P.TwoLayer(X, Y, hidden=3),
                lambda q, r: R.two_layer(q, X, Y, 3, rows=r))
    return (P.BatchNormMLP(X, labels, widths=(3, 2), n_classes=C),
            lambda q, r: R.batchnorm_mlp(q, X, labels, (3, 2), C, rows=r))


DATA = ["bn_unit", "bn_layer", "softmax", "two_layer", "bn_mlp"]


# ------------------------------------------------------------------------------------------
# Item 1: rows beyond the scratch

@given(st.sampled_from(DATA), SEEDS, st.integers(1, 40))
@example("bn_unit", 0, 1000)          # the reported instance: BatchNormUnit at 1000 rows
def test_rows_longer_than_the_data_are_refused_everywhere(name, seed, extra):
    """A batch of n_data + extra rows (duplicates, all in range) is refused by the facade
    and by the compiled entry point, naming rows, its length and the limit."""
    rng = np.random.default_rng(seed)
    pot, _ = _data_case(name, rng)
    q = rng.standard_normal(pot.dim)
    rows = rng.integers(0, pot.n_data, pot.n_data + extra)
    limit = f"n_data={pot.n_data}"
    with pytest.raises(ValueError, match=rf"rows has length {len(rows)}.*{limit}"):
        pot.value_and_grad(q, rows=rows)
    with pytest.raises(ValueError, match=rf"rows has length {len(rows)}.*{limit}"):
        pot._kernel.value_and_grad(q, rows)


@given(st.sampled_from(DATA), SEEDS)
def test_compiled_entry_point_checks_indices_and_emptiness(name, seed):
    rng = np.random.default_rng(seed)
    pot, _ = _data_case(name, rng)
    q = rng.standard_normal(pot.dim)
    with pytest.raises(ValueError, match=r"rows has indices outside"):
        pot._kernel.value_and_grad(q, np.array([0, pot.n_data]))
    with pytest.raises(ValueError, match=r"rows has indices outside"):
        pot._kernel.value_and_grad(q, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"rows has length 0"):
        pot._kernel.value_and_grad(q, np.array([], dtype=np.intp))
    with pytest.raises(TypeError, match=r"rows must be a 1-D integer array"):
        pot._kernel.value_and_grad(q, np.array([0.0, 1.0]))


@given(st.sampled_from(DATA), SEEDS, st.data())
def test_every_legal_batch_is_accepted_and_matches_the_twin(name, seed, data):
    """Up to n_data rows, duplicates allowed: the kernel agrees with the NumPy twin."""
    rng = np.random.default_rng(seed)
    pot, ref = _data_case(name, rng)
    q = rng.standard_normal(pot.dim)
    B = data.draw(st.integers(pot.min_batch, pot.n_data), label="B")
    rows = rng.integers(0, pot.n_data, B)
    rows[:2] = rows[0]                          # at least one duplicate
    if pot.min_batch == 2 and len(np.unique(rows)) < 2:
        rows[-1] = (rows[0] + 1) % pot.n_data   # BatchNorm needs two distinct rows
    f, g = pot.value_and_grad(q, rows=rows)
    fr, gr = ref(q, rows)
    # a tiny batch through a ReLU can leave a BatchNorm unit with zero variance (0/0 in
    # both, eps = 0): then both must say NaN
    if np.isnan(fr):
        assert np.isnan(f)
        return
    # the twin sums in another order: TWIN_TOL of tests/test_potentials.py, relative
    assert abs(f - fr) <= 1e-12 * max(1.0, abs(fr))
    np.testing.assert_allclose(g, gr, rtol=0, atol=1e-12 * max(1.0, np.abs(gr).max()))


def test_rows_on_a_potential_without_data_are_refused_by_the_kernel():
    pot = P.Radial(3)
    with pytest.raises(ValueError, match="no data rows"):
        pot._kernel.value_and_grad(np.ones(3), np.array([0]))


def test_kernels_refuse_arrays_of_the_wrong_dtype_or_shape():
    """The compiled classes are entry points too: they check what their loops read."""
    k = nc._bridge.potential_kernels
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="A must be"):
        k.QuadraticKernel(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="b must be"):
        k.QuadraticKernel(np.ones((3, 3)), np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="A must be"):
        k.RayleighQuotientKernel(np.ones((3, 2)))
    with pytest.raises(ValueError, match="Radial needs"):
        k.RadialKernel(0, 0)
    with pytest.raises(ValueError, match="Radial needs"):
        k.RadialKernel(3, 7)
    with pytest.raises(ValueError, match="y must be"):
        k.BatchNormUnitKernel(X, np.ones(3), 0.0)
    with pytest.raises(ValueError, match="R must be"):
        k.BatchNormUnitKernel(X, np.ones(4), 0.0, np.ones((3, 3)), np.ones(2), 0.0)
    dims = np.array([2, 3, 2], dtype=np.intp)
    with pytest.raises(ValueError, match="X must be"):
        k.NetKernel(np.ones((4, 3)), np.ones((4, 2)), None, dims, True, False, True,
                    False, 0.0)
    with pytest.raises(ValueError, match="Y must be"):
        k.NetKernel(X, np.ones((4, 3)), None, dims, True, False, True, False, 0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        k.NetKernel(X, None, np.array([0, 1, 2, 0], dtype=np.intp), dims, True, False,
                    True, False, 0.0)
    with pytest.raises(ValueError, match="labels must be"):
        k.NetKernel(X, None, np.array([0, 1], dtype=np.intp), dims, True, False, True,
                    False, 0.0)
    with pytest.raises(ValueError, match="dims must be"):
        k.NetKernel(X, np.ones((4, 2)), None, np.array([2, 0, 2], dtype=np.intp), True,
                    False, True, False, 0.0)
    with pytest.raises(ValueError, match="cannot be addressed"):
        k.NetKernel(X, np.ones((4, 2)), None, np.array([2, 2**61, 2], dtype=np.intp),
                    True, False, True, False, 0.0)


# ------------------------------------------------------------------------------------------
# Item 3: potentials are immutable after construction

def _all_potentials():
    rng = np.random.default_rng(3)
    pots = {name: _data_case(name, rng)[0] for name in DATA}
    A = rng.standard_normal((3, 3))
    A = A + A.T
    pots["quadratic"] = P.Quadratic(A)
    pots["rayleigh"] = P.RayleighQuotient(A)
    pots["radial"] = P.Radial(3)
    pots["python"] = P.Python(lambda q: (0.5 * float(q @ q), q.copy()), 3,
                              blocks={"a": [0, 1], "b": [2]},
                              symmetries=[Symmetry("rotation", ("a",))])
    return pots


POTS = _all_potentials()


def _attempts(pot):
    """Every way a caller might try to change a potential's metadata: (label, action)."""
    name = next(iter(pot.blocks))
    idx = pot.blocks[name]

    def assign_new():
        pot.blocks["new"] = np.array([0])

    def assign_out_of_range():                  # the reported instance
        pot.blocks[name] = np.array([10**9])

    def delete():
        del pot.blocks[name]

    def write_index():
        idx[0] = 10**9

    def rebind_blocks():
        pot.blocks = {name: np.array([10**9])}

    def rebind_symmetries():
        pot.symmetries = ()

    def write_direction():
        for s in pot.symmetries:
            if s.direction is not None:
                s.direction[0] = np.nan
                return
        raise TypeError("no direction")         # nothing to attempt: counts as refused

    def write_omega():
        Symmetry("rotation", ("q",), omega=np.array([[0.0, 1.0], [-1.0, 0.0]])).omega[0] = 1

    return [assign_new, assign_out_of_range, delete, write_index, rebind_blocks,
            rebind_symmetries, write_direction, write_omega]


@pytest.mark.parametrize("name", sorted(POTS))
def test_metadata_refuses_every_mutation_and_train_still_works(name):
    pot = POTS[name]
    before = {k: v.copy() for k, v in pot.blocks.items()}
    syms = pot.symmetries
    for attempt in _attempts(pot):
        with pytest.raises((TypeError, ValueError, AttributeError)):
            attempt()
    assert {k: v.tolist() for k, v in pot.blocks.items()} == \
        {k: v.tolist() for k, v in before.items()}
    assert pot.symmetries is syms
    assert all(not v.flags.writeable for v in pot.blocks.values())
    # train runs after the attempts, and gives the bits of a fresh copy of the potential
    fresh = pickle.loads(pickle.dumps(pot)) if name != "python" else pot
    q0 = np.random.default_rng(0).standard_normal(pot.dim) * 0.5
    rule = nc.rules.SGD(lr=0.01)
    a = nc.train(rule, pot, q0, 20, block_stats=True)
    b = nc.train(rule, fresh, q0, 20, block_stats=True)
    assert np.array_equal(a.q_final, b.q_final)
    assert np.all(np.isfinite(a.q_final))


@pytest.mark.parametrize("name", sorted(POTS))
def test_no_public_attribute_is_a_writable_container(name):
    """The data a kernel was built from, as the public attributes show it, is read-only,
    and no public attribute is a mutable container (rebinding one changes nothing the
    kernels read: tests/test_scan_lanes.py)."""
    pot = POTS[name]
    public = {k: v for k, v in vars(pot).items() if not k.startswith("_")}
    public.update(blocks=pot.blocks, symmetries=pot.symmetries)
    for attr, value in public.items():
        assert not isinstance(value, (list, dict, set, bytearray)), attr
        if isinstance(value, np.ndarray):
            assert not value.flags.writeable, attr


def test_blocks_are_private_copies_range_checked_at_construction():
    """The caller's index arrays stay writable and cannot alias the potential's; a block
    outside q is refused when the potential is made, not at train time."""
    arr = np.array([0, 1, 2])
    kern = P.Radial(3)._kernel
    pot = P.Potential(kern, {"q": arr}, (), (3,))
    assert arr.flags.writeable
    arr[0] = 10**9
    assert pot.blocks["q"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"blocks index q outside \[0, 3\)"):
        P.Potential(kern, {"q": np.array([0, 3])}, (), (3,))
    with pytest.raises(ValueError, match=r"outside"):
        P.Potential(kern, {"q": np.array([-1])}, (), (3,))
    with pytest.raises(TypeError, match="1-D integer"):
        P.Potential(kern, {"q": np.array([0.0, 1.0])}, (), (3,))
    with pytest.raises(TypeError, match="strings"):
        P.Potential(kern, {0: np.array([0])}, (), (3,))


def test_a_potentials_blocks_serve_as_user_blocks():
    """The read-only mapping is a Mapping: it can seed another potential's blocks."""
    pot = POTS["python"]
    again = P.Python(pot.fn, pot.dim, blocks=pot.blocks)
    assert list(again.blocks) == list(pot.blocks)


# ------------------------------------------------------------------------------------------
# Item 4: one memory budget, estimated before allocating

def _needed(exc: BaseException) -> int:
    m = re.search(r"would need about (\d+) bytes", str(exc))
    assert m, str(exc)
    assert "max_bytes=" in str(exc)
    return int(m.group(1))


@pytest.mark.parametrize("make", [
    lambda: P.BatchNormMLP(np.ones((4, 2)), [0, 1, 0, 1], widths=(10**6, 10**6)),
    lambda: P.Radial(2**31),
    lambda: P.BatchNormLayer(np.ones((10**4, 2)), np.ones(10**4), width=2**20),
    lambda: P.TwoLayer(np.ones((10**4, 2)), np.ones(10**4), hidden=2**20),
], ids=["bn_mlp_1e12", "radial_2^31", "bn_layer_workspace", "two_layer_workspace"])
def test_huge_requests_are_refused_before_allocating(make):
    """The reported instances (10¹² parameters, a 16 GiB index) and two workspaces of
    ~10¹¹ bytes: refused with the bytes named, while allocating next to nothing."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="max_bytes") as info:
            make()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _needed(info.value) > P.DEFAULT_MAX_BYTES
    assert peak < 2**22, f"the refusal allocated {peak} bytes"


def _builders(rng):
    N, D, C = int(rng.integers(2, 60)), int(rng.integers(1, 12)), int(rng.integers(2, 5))
    w1, w2 = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    d = int(rng.integers(1, 60))
    X = rng.standard_normal((N, D))
    X[:2] = rng.standard_normal((2, D)) + 1.0           # two distinct rows
    labels = np.arange(N) % C
    y = rng.standard_normal(N)
    A = rng.standard_normal((d, d))
    A = A + A.T
    return {
        "quadratic": lambda mb: P.Quadratic(A, max_bytes=mb),
        "rayleigh": lambda mb: P.RayleighQuotient(A, max_bytes=mb),
        "radial": lambda mb: P.Radial(d * 1000, max_bytes=mb),
        "bn_unit": lambda mb: P.BatchNormUnit(X, y, max_bytes=mb),
        "bn_layer": lambda mb: P.BatchNormLayer(X, y, width=w1, max_bytes=mb),
        "softmax": lambda mb: P.SoftmaxCrossEntropy(X, labels, n_classes=C, max_bytes=mb),
        "two_layer": lambda mb: P.TwoLayer(X, y, hidden=w1, max_bytes=mb),
        "bn_mlp": lambda mb: P.BatchNormMLP(X, labels, widths=(w1, w2), n_classes=C,
                                            max_bytes=mb),
    }


@given(SEEDS, st.sampled_from(["quadratic", "rayleigh", "radial", "bn_unit", "bn_layer",
                                "softmax", "two_layer", "bn_mlp"]))
def test_budget_is_an_upper_estimate_and_a_sharp_threshold(seed, name):
    """For random sizes: the estimate bounds the traced peak of construction plus one
    evaluation; a budget one byte below it is refused, the estimate itself accepted; the
    budget survives pickling."""
    make = _builders(np.random.default_rng(seed))[name]
    with pytest.raises(ValueError, match="max_bytes=0") as info:
        make(0)
    need = _needed(info.value)
    with pytest.raises(ValueError, match=f"about {need} bytes"):
        make(need - 1)
    pot = make(need)
    q = np.ones(pot.dim)
    tracemalloc.start()
    try:
        pot = make(need)
        pot.value_and_grad(q)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= need, f"{name}: traced peak {peak} above the estimate {need}"
    back = pickle.loads(pickle.dumps(pot))          # rebuilt under the same budget
    assert back.dim == pot.dim


def test_max_bytes_is_validated():
    with pytest.raises(ValueError, match="max_bytes"):
        P.Radial(3, max_bytes=-1)
    with pytest.raises(TypeError, match="max_bytes"):
        P.Radial(3, max_bytes=1.5)


# ------------------------------------------------------------------------------------------
# Item 8: softmax cross-entropy along its own translations, at large offsets

def _logit_scale(pot, q, X):
    """max over rows and classes of Σ_j |x_ij W_cj| + |b_c|: the size of the terms each
    logit sums, which sets its round-off."""
    C, D = pot.n_classes, X.shape[1]
    W, b = q[:C * D].reshape(C, D), q[C * D:]
    return float((np.abs(X) @ np.abs(W).T + np.abs(b)).max())


@given(SEEDS, st.integers(2, 16), st.sampled_from(["b", "W[:,0]"]),
       st.sampled_from([-1.0, 1.0]))
@example(0, 16, "b", 1.0)
def test_softmax_loss_is_invariant_along_its_translations_up_to_1e16(seed, log10_t, block,
                                                                      sign):
    """f(q + t n) = f(q) to the round-off of the shifted logits, ~ε·max|L|: the stable
    log-sum-exp adds log s only after the logit difference (docs/potentials.md, P.9a).
    Compiled kernel and twin alike."""
    rng = np.random.default_rng(seed)
    N, D, C = int(rng.integers(2, 10)), int(rng.integers(1, 4)), int(rng.integers(2, 5))
    X = rng.standard_normal((N, D))
    labels = rng.integers(0, C, N)
    pot = P.SoftmaxCrossEntropy(X, labels, n_classes=C)
    q = rng.standard_normal(pot.dim)
    t = sign * 10.0**log10_t
    sym = next(s for s in pot.symmetries if s.blocks == (block,))
    q2 = nc.symmetry.transform(sym, q, t, pot.blocks)
    f0, g0 = pot.value_and_grad(q)
    f1, g1 = pot.value_and_grad(q2)
    # each logit sums D + 1 terms, each from an entry of q + t n rounded to float64
    # (½ ulp), a product and a sum: (D + 3) ε S per logit, twice for the difference of
    # two logits the loss holds (and the same at q, negligible when t is large)
    S = _logit_scale(pot, q2, X) + _logit_scale(pot, q, X)
    tol = 2 * (D + 3) * EPS * S
    assert abs(f1 - f0) <= tol + 4 * EPS * abs(f0)
    fr, _ = R.softmax_xent(q2, X, labels, C)
    assert abs(fr - f0) <= tol + 4 * EPS * abs(f0)
    # the gradient stays a difference of probabilities: bounded, rows summing to zero
    assert np.all(np.isfinite(g1)) and np.abs(g1[C * D:]).max() <= 1.0 + 1e-12


@given(SEEDS, st.floats(1.0, 1e16), st.sampled_from(["b", "W[:,0]"]), st.booleans())
@example(0, 1e16, "b", True)
@example(0, 2.0**40, "W[:,0]", False)
def test_softmax_exact_translations_leave_f_and_grad_bitwise_unchanged(seed, T, block,
                                                                       minibatch):
    """Relative to the loss scale: inputs on a dyadic grid coarse enough that q + T·1 on
    the block, and every logit, are exact in float64 (up to T = 1e16); the logits then move
    by exactly the same amount in each row, and the stable log-sum-exp returns the same
    bits for f and ∇f.  The old (m + log s) − L_y rounded log s against m: off by up to
    ulp(m)/2 (2.0 instead of log 3 at 1e16)."""
    rng = np.random.default_rng(seed)
    N, D, C = int(rng.integers(2, 10)), int(rng.integers(1, 4)), int(rng.integers(2, 5))
    X = rng.integers(-3, 4, (N, D)).astype(float)
    labels = rng.integers(0, C, N)
    pot = P.SoftmaxCrossEntropy(X, labels, n_classes=C)
    # grid step h = 2**-k: every partial sum of a logit is a multiple of h below
    # 4 (T + 64), so it needs at most 53 bits
    k = min(10, 50 - int(np.ceil(np.log2(T + 64.0))))
    h = 2.0**-k
    T = np.round(T / h) * h                              # T on the grid too
    q = rng.integers(-4, 5, pot.dim) * h
    q2 = q.copy()
    q2[pot.blocks[block]] += T
    assert np.array_equal(q2[pot.blocks[block]] - T, q[pot.blocks[block]])   # exact
    rows = rng.integers(0, N, N) if minibatch else None
    f0, g0 = pot.value_and_grad(q, rows=rows)
    f1, g1 = pot.value_and_grad(q2, rows=rows)
    assert f1 == f0
    assert np.array_equal(g1, g0)
    r = None if rows is None else rows
    assert R.softmax_xent(q2, X, labels, C, rows=r)[0] == R.softmax_xent(
        q, X, labels, C, rows=r)[0]


@given(st.integers(2, 8), st.floats(-1e16, 1e16))
@example(3, 1e16)                       # the reported instance: 2.0 instead of log 3
def test_softmax_equal_logits_give_log_c_at_any_offset(C, t):
    """All-equal logits: the offset is uniform and representable, so f is *exactly* the
    value at offset 0 (log C) — no rounding of log s against m."""
    X = np.zeros((1, 1))
    pot = P.SoftmaxCrossEntropy(X, [0], n_classes=C)
    q = np.zeros(pot.dim)
    q[-C:] = t                                  # b = t (1, ..., 1): every logit is t
    f, g = pot.value_and_grad(q)
    f0, g0 = pot.value_and_grad(np.zeros(pot.dim))
    assert f == f0 and abs(f - np.log(C)) <= 2 * EPS   # libm's log against NumPy's
    assert np.array_equal(g, g0)
    fr = R.softmax_xent(q, X, np.array([0]), C)[0]
    assert fr == R.softmax_xent(np.zeros(pot.dim), X, np.array([0]), C)[0]
    assert abs(fr - np.log(C)) <= 2 * EPS


@given(SEEDS, st.integers(4, 16))
def test_bn_mlp_readout_bias_translation_at_large_offsets(seed, log10_t):
    """The same log-sum-exp serves BatchNormMLP: its "bout" translation holds at large t."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((6, 2))
    labels = np.arange(6) % 3
    pot = P.BatchNormMLP(X, labels, widths=(3,))
    q = rng.standard_normal(pot.dim)
    sym = next(s for s in pot.symmetries if s.blocks == ("bout",))
    t = 10.0**log10_t
    q2 = nc.symmetry.transform(sym, q, t, pot.blocks)
    f0, f1 = pot.value(q), pot.value(q2)
    # logits = A Woutᵀ + bout with |A| ≤ |γ| sqrt(B) + |β| after BatchNorm (|Ẑ| ≤ sqrt(B)):
    # round-off ~ ε (t + |terms|), a few roundings, twice for a difference of logits
    m = np.abs(q).max()
    tol = 16 * EPS * (t + 3 * (m * np.sqrt(6) + m) * m + m)
    assert abs(f1 - f0) <= tol


# ------------------------------------------------------------------------------------------
# Item 18: Symmetry validates every field

BAD_SYMMETRIES = [
    (dict(family="translation", blocks=("b",), direction=[np.nan, 1.0]), ValueError,
     "direction must be finite"),
    (dict(family="translation", blocks=("b",), direction=[np.inf, 1.0]), ValueError,
     "direction must be finite"),
    (dict(family="translation", blocks=("b",), direction=[0.0, 0.0]), ValueError,
     "direction must be a non-zero"),
    (dict(family="translation", blocks=("b",), direction=[]), ValueError, "direction"),
    (dict(family="translation", blocks=("b",), direction=[[1.0]]), ValueError, "direction"),
    (dict(family="translation", blocks=("b",), direction=["x"]), TypeError, "direction"),
    (dict(family="translation", blocks=("b",), direction=[1j, 1.0]), TypeError, "direction"),
    (dict(family="rotation", blocks=("q",), omega=[[0.0, np.nan], [-1.0, 0.0]]), ValueError,
     "omega must be finite"),
    (dict(family="rotation", blocks=("q",), omega=[[0.0, 1.0], [1.0, 0.0]]), ValueError,
     "omega must be a square skew"),
    (dict(family="rotation", blocks=("q",), omega=np.zeros((2, 3))), ValueError,
     "omega must be a square skew"),
    (dict(family="rotation", blocks=("q",), omega=[1.0, 2.0]), ValueError, "omega"),
    (dict(family="scale", blocks="q"), TypeError, "blocks must be a tuple"),
    (dict(family="scale", blocks=(0,)), TypeError, "blocks must hold block names"),
    (dict(family="scale", blocks=None), TypeError, "blocks"),
    (dict(family="rescale", blocks=("a",)), ValueError, "acts on 2 block"),
    (dict(family="bogus", blocks=("a",)), ValueError, "family"),
    (dict(family=["scale"], blocks=("a",)), ValueError, "family"),
    (dict(family="scale", blocks=("a",), exact="yes"), TypeError, "exact"),
    (dict(family="scale", blocks=("a",), note=3), TypeError, "note"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_SYMMETRIES,
                         ids=[m for _, _, m in BAD_SYMMETRIES])
def test_symmetry_refuses_bad_fields_naming_them(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Symmetry(**kwargs)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1,
                max_size=6))
def test_symmetry_direction_is_accepted_iff_finite_and_non_zero(values):
    n = np.array(values)
    ok = np.all(np.isfinite(n)) and np.any(n)
    if ok:
        s = Symmetry("translation", ("b",), direction=values)
        assert np.array_equal(s.direction, n) and not s.direction.flags.writeable
    else:
        with pytest.raises(ValueError, match="direction"):
            Symmetry("translation", ("b",), direction=values)


def test_symmetry_keeps_its_own_read_only_copies():
    n = np.array([1.0, 0.0])
    om = np.array([[0.0, 1.0], [-1.0, 0.0]])
    s = Symmetry("translation", ["b"], direction=n)
    r = Symmetry("rotation", ("q",), omega=om)
    n[0] = np.nan
    om[0, 1] = 5.0
    assert s.blocks == ("b",) and s.direction.tolist() == [1.0, 0.0]
    assert r.omega[0, 1] == 1.0
    assert not s.direction.flags.writeable and not r.omega.flags.writeable
    assert hash(s) == hash(Symmetry("translation", ("b",), direction=[0.0, 1.0]))


# ------------------------------------------------------------------------------------------
# Item 20 (part): a short repr

def test_repr_is_short_however_many_blocks():
    X, Y = nc.datasets.teacher_regression(16, 3, out=1, seed=0)
    pot = P.BatchNormLayer(X, Y, width=50000)           # the reported instance
    text = repr(pot)
    assert len(text) < 200, text
    assert "'W[0]'" in text and "'W[7]'" in text and "'W[8]'" not in text
    assert f"… {len(pot.blocks) - 8} more" in text
    small = P.Radial(3)
    assert repr(small) == "Radial(dim=3, n_data=0, blocks=['q'])"
