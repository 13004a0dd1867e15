"""The network potentials' tiled kernels (pyx/netmm.h; docs/potentials.md §10).

What is checked, and why it can fail:

* each product and the BatchNorm layer, against plain Python loops in the order §10 states
  (Python floats are IEEE doubles: a Python ``s = s + x * w`` is the C operation), bit
  for bit, on shapes that reach every tile and every tail (1 to 19 rows and columns), in
  every instruction set this machine runs: a tile that split or reordered a sum, or a
  vector version that differed from the baseline, fails here;
* whole gradients of the four network potentials: the baseline and AVX-512 versions agree
  bit for bit (no tolerance: §10 claims identical operations);
* the scan of the demo's network at batch 32: every point is ``train`` with the same
  hyper-parameters and ``point_seed``, bit for bit, with 1 and 2 threads (the kernels
  call no BLAS, so there is no BLAS thread pool under the scan's threads);
* the scale law (P.6) at eps = 0 on the demo's shape at batch 32, at round-off.
"""
import math

import numpy as np
import pytest

import noether_core as nc
from noether_core._kernels import potentials as K

ISAS = [0] + ([2] if K._net_isa() == 2 else [])


@pytest.fixture(params=ISAS, ids=lambda i: {0: "baseline", 2: "avx512"}[i])
def isa(request):
    prev = K._net_isa(request.param)
    yield request.param
    K._net_isa(prev)


# ---------------------------------------------------------------------------------------
# the documented order, in Python

def _fwd_ref(In, W, bias):
    """Z[i,u] = (s0 + s1) (+ bias[u]): s0 over even j, s1 over odd j, each from +0."""
    B, n_in = In.shape
    Z = np.empty((B, W.shape[0]))
    for i in range(B):
        for u in range(W.shape[0]):
            s0 = s1 = 0.0
            j = 0
            while j + 1 < n_in:
                s0 = s0 + float(In[i, j]) * float(W[u, j])
                s1 = s1 + float(In[i, j + 1]) * float(W[u, j + 1])
                j += 2
            if j < n_in:
                s0 = s0 + float(In[i, j]) * float(W[u, j])
            z = s0 + s1
            if bias is not None:
                z = z + float(bias[u])
            Z[i, u] = z
    return Z


def _bwd_ref(In, W, dZ):
    """gW[u,j] = sum_i dZ[i,u] In[i,j] (i in order); dIn[i,j] = sum_u dZ[i,u] W[u,j]."""
    B, n_in = In.shape
    n_out = W.shape[0]
    gW = np.empty((n_out, n_in))
    dIn = np.empty((B, n_in))
    for u in range(n_out):
        for j in range(n_in):
            s = 0.0
            for i in range(B):
                s = s + float(dZ[i, u]) * float(In[i, j])
            gW[u, j] = s
    for i in range(B):
        for j in range(n_in):
            s = 0.0
            for u in range(n_out):
                s = s + float(dZ[i, u]) * float(W[u, j])
            dIn[i, j] = s
    return gW, dIn


def _bn_ref(Z, dA, gam, bet, eps, bn, affine, relu):
    """docs/potentials.md §10: the layer forward and backward, element by element."""
    B, w = Z.shape
    Zh, A, dZ = Z.copy(), np.empty_like(Z), dA.copy()
    sd, dg, db = np.zeros(w), np.zeros(w), np.zeros(w)
    for u in range(w):
        if bn:
            m = 0.0
            for i in range(B):
                m = m + float(Z[i, u])
            m = m / B
            ss = 0.0
            for i in range(B):
                c = float(Z[i, u]) - m
                Zh[i, u] = c
                ss = ss + c * c
            sd[u] = math.sqrt(ss / B + eps)
        for i in range(B):
            h = float(Zh[i, u])
            if bn:
                h = h / sd[u]
                Zh[i, u] = h
            if affine:
                h = float(gam[u]) * h + float(bet[u])
            A[i, u] = (0.0 if h <= 0.0 else h) if relu else h
        # backward
        for i in range(B):
            if relu and A[i, u] <= 0.0:
                dZ[i, u] = 0.0
        if not bn:
            continue
        m1 = m2 = g1 = g2 = 0.0
        for i in range(B):
            d, z = float(dZ[i, u]), float(Zh[i, u])
            if affine:
                g1 = g1 + d * z
                g2 = g2 + d
                d = d * float(gam[u])
            m1 = m1 + d
            m2 = m2 + d * z
            dZ[i, u] = d
        m1, m2 = m1 / B, m2 / B
        for i in range(B):
            dZ[i, u] = (float(dZ[i, u]) - m1 - float(Zh[i, u]) * m2) / sd[u]
        dg[u], db[u] = g1, g2
    return Zh, A, sd, dZ, dg, db


def _bits_equal(a, b):
    np.testing.assert_array_equal(np.asarray(a).view(np.int64), np.asarray(b).view(np.int64))


# ---------------------------------------------------------------------------------------

# the last two pass NC_BWDW_ROWS = 64 rows: the weight gradient's sums carry across passes
SHAPES = [(1, 1, 1), (2, 3, 5), (4, 8, 8), (5, 16, 32), (7, 9, 4), (8, 17, 13), (13, 19, 3),
          (9, 2, 19), (12, 32, 12), (65, 7, 9), (150, 16, 11)]


@pytest.mark.parametrize("B,n_in,n_out", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_products_follow_the_documented_order_bitwise(isa, B, n_in, n_out, with_bias):
    """§10 (P.13): each product is the scalar order of the old loops, element for element;
    the values span 12 decades, so a reordered sum would round differently."""
    rng = np.random.default_rng(B * 1000 + n_in * 31 + n_out)
    In = rng.standard_normal((B, n_in)) * 10.0 ** rng.integers(-6, 6, (B, n_in))
    W = rng.standard_normal((n_out, n_in)) * 10.0 ** rng.integers(-6, 6, (n_out, n_in))
    dZ = rng.standard_normal((B, n_out)) * 10.0 ** rng.integers(-6, 6, (B, n_out))
    bias = rng.standard_normal(n_out) if with_bias else None
    Z, gW, dIn = K._net_products(In, W, dZ, bias)
    _bits_equal(Z, _fwd_ref(In, W, bias))
    gW_ref, dIn_ref = _bwd_ref(In, W, dZ)
    _bits_equal(gW, gW_ref)
    _bits_equal(dIn, dIn_ref)


@pytest.mark.parametrize("B,w", [(2, 1), (3, 5), (4, 8), (6, 16), (9, 19), (32, 32),
                                 (5, 29)])
@pytest.mark.parametrize("bn,affine,relu", [(True, True, True), (True, False, True),
                                            (False, False, True), (False, False, False)])
def test_bn_layer_follows_the_documented_order_bitwise(isa, B, w, bn, affine, relu):
    """§10 (P.14): BatchNorm, affine map and ReLU forward, and their backward, are the
    scalar loops' operations in their order; the ReLU at exactly 0 and at -0 included."""
    rng = np.random.default_rng(B * 100 + w)
    Z = rng.standard_normal((B, w)) * 10.0 ** rng.integers(-3, 3, w)
    Z[0, 0] = -0.0
    dA = rng.standard_normal((B, w))
    gam, bet = rng.standard_normal(w), rng.standard_normal(w)
    if not bn:
        Z[B - 1, w - 1] = 0.0
    got = K._net_bn_layer(Z, dA, gam, bet, 1e-3 if bn else 0.0, bn, affine, relu)
    want = _bn_ref(Z, dA, gam, bet, 1e-3 if bn else 0.0, bn, affine, relu)
    for name, g, r in zip(("Zh", "A", "sd", "dZ", "dgam", "dbet"), got, want, strict=True):
        if name in ("dgam", "dbet") and not affine or name == "sd" and not bn:
            continue
        _bits_equal(g, r)


def test_relu_propagates_nan_and_zeroes_minus_zero():
    """ReLU is "0 if h <= 0 else h" in every version: NaN stays NaN, -0 becomes +0."""
    Z = np.array([[np.nan, -0.0, 2.0, -1.0]])
    for i in ISAS:
        prev = K._net_isa(i)
        try:
            _, A, _, _, _, _ = K._net_bn_layer(Z, np.ones_like(Z), np.ones(4), np.zeros(4),
                                               0.0, False, False, True)
        finally:
            K._net_isa(prev)
        assert np.isnan(A[0, 0]) and A[0, 2] == 2.0 and A[0, 3] == 0.0
        assert A[0, 1] == 0.0 and not np.signbit(A[0, 1])


def _networks():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((61, 13))
    lab = rng.integers(0, 5, 61)
    Y = rng.standard_normal((61, 3))
    P = nc.potentials
    return [P.BatchNormMLP(X, lab, widths=(19, 8, 12), n_classes=5),
            P.BatchNormMLP(X, lab, widths=(32, 32), n_classes=5, eps=1e-5),
            P.BatchNormLayer(X, Y, 21), P.SoftmaxCrossEntropy(X, lab, n_classes=5),
            P.TwoLayer(X, Y, 9), P.TwoLayer(X, Y, 17, activation="linear")]


@pytest.mark.skipif(2 not in ISAS, reason="this CPU or build has no AVX-512F version")
@pytest.mark.parametrize("rows", [None, np.arange(61)[::-2], np.array([3, 3, 8])])
def test_network_gradients_identical_in_every_instruction_set(rows):
    rng = np.random.default_rng(11)
    for pot in _networks():
        q = rng.standard_normal(pot.dim)
        out = []
        for i in (0, 2):
            prev = K._net_isa(i)
            try:
                out.append(pot.value_and_grad(q, rows))
            finally:
                K._net_isa(prev)
        assert np.float64(out[0][0]).view(np.int64) == np.float64(out[1][0]).view(np.int64)
        _bits_equal(out[0][1], out[1][1])


def test_net_isa_refuses_what_is_missing():
    with pytest.raises(ValueError, match="isa=7"):
        K._net_isa(7)


# ---------------------------------------------------------------------------------------
# the demo's network: scans, threads, balance law

def _demo(n=2048):
    X, y = nc.datasets.gaussian_mixture(n, 16, classes=4, seed=0)
    pot = nc.potentials.BatchNormMLP(X, y, widths=(32, 32))
    return pot, pot.init(seed=0)


def test_scan_points_are_train_bitwise_at_any_thread_count():
    """A 2 x 2 (lr x weight decay) scan at batch 32: each point equals train with its
    point_seed, bit for bit, and threads=1 and threads=2 give the same bits."""
    pot, q0 = _demo(256)
    lrs, wds = np.array([0.02, 0.1]), np.array([0.0, 5e-4])
    runs = [nc.scan(nc.rules.SGD, pot, q0, steps=40, batch_size=32, threads=t,
                    charges=False, progress=False, momentum=0.9, lr=lrs, weight_decay=wds,
                    seeds=3) for t in (1, 2)]
    _bits_equal(runs[0].q, runs[1].q)
    for i, lr in enumerate(lrs):
        for j, wd in enumerate(wds):
            one = nc.train(nc.rules.SGD(lr=lr, momentum=0.9, weight_decay=wd), pot, q0, 40,
                           batch_size=32, charges=False, seed=nc.point_seed(3, 2 * i + j))
            _bits_equal(runs[0].q[i, j], one.q_final)


def test_scale_law_p6_at_round_off_on_the_demo_shape():
    """(P.6) with eps = 0: <grad_{W_l[u]} f, W_l[u]> = 0 for every hidden unit, per
    minibatch.  Each term of the sum is O(|g||w|); the sum cancels to round-off, a few
    ulps of sum |g_k w_k| (1e-12 of it leaves a margin of ~100x over the observed)."""
    pot, q0 = _demo()
    rng = np.random.default_rng(5)
    q = q0 + 0.3 * rng.standard_normal(pot.dim)
    for rows in (rng.choice(2048, 32, replace=False), None):
        _, g = pot.value_and_grad(q, rows)
        for layer, w in ((1, 32), (2, 32)):
            for u in range(w):
                b = pot.blocks[f"W{layer}[{u}]"]
                terms = g[b] * q[b]
                assert abs(terms.sum()) <= 1e-12 * np.abs(terms).sum(), (layer, u)
