"""Baseline (b) of bench_scan.py: SGD + heavy-ball momentum vectorised over a whole grid.

What a careful NumPy user would write to scan P hyper-parameter points at once: every
array carries the grid as its *last*, contiguous axis (shape (d, P)), so each step is a few
BLAS matrix products plus in-place element-wise ufuncs over d·P numbers, with every buffer
preallocated (``out=``), no Python loop over points and no per-step allocation in the
update.  It computes the same per-point summaries as ``noether_core.scan`` (final q, final
and minimum loss, final |q|², late-time angular update, divergence step) so the two do the
same work; divergence is checked every ``check_every`` steps only (coarser and cheaper than
the compiled per-step check, which favours this baseline).

Semantics are torch.optim.SGD's (dampening 0, no Nesterov): d = g + k q; v = d at the
first step, then v = β v + d; q ← q − η v.  Results agree with the compiled scan to
round-off (the summation order differs: BLAS vs sequential), not bitwise.
"""
import numpy as np

__all__ = ["rayleigh_grad", "bn_unit_grad", "bn_unit_proj_grad", "sgd_momentum_scan"]


class rayleigh_grad:
    """f = ½ qᵀAq/|q|², g = (Aq − 2f q)/|q|² = Aq·ι − q·(2f·ι) with ι = 1/|q|², for P
    columns of Q (d, P) at once (the order of docs/potentials.md §2: three passes over
    (d, P) arrays after the product, no division of a (d, P) array)."""

    def __init__(self, A, P):
        self.A = np.ascontiguousarray(A)
        d = A.shape[0]
        self.AQ = np.empty((d, P))
        self.tmp = np.empty((d, P))
        self.iqq = np.empty(P)
        self.t = np.empty(P)
        self.f = np.empty(P)

    def __call__(self, Q, G):
        np.matmul(self.A, Q, out=self.AQ)
        np.einsum("ip,ip->p", Q, Q, out=self.iqq)
        np.divide(1.0, self.iqq, out=self.iqq)             # ι = 1/|q|²
        np.einsum("ip,ip->p", Q, self.AQ, out=self.t)
        self.t *= self.iqq                                  # t = 2f
        np.multiply(self.t, 0.5, out=self.f)
        self.t *= self.iqq                                  # 2f·ι
        self.AQ *= self.iqq
        np.multiply(Q, self.t, out=self.tmp)
        np.subtract(self.AQ, self.tmp, out=G)
        return self.f


class bn_unit_grad:
    """BatchNorm unit (full batch, eps): z = Xw, ẑ = (z − z̄)/s, f = Σ(ẑ − y)²/2N, for P
    weight columns W (d, P) at once.

    Full-batch algebra an expert would use (docs/potentials.md has the gradient): with the
    column-centred data Xc = X − mean(X), z − z̄ = Xc w directly, and because Xcᵀ1 = 0 the
    mean(δ) term of dz = (δ − mean δ − ẑ mean(δẑ))/s drops out of g = Xcᵀ dz, so
    g = Xcᵀ (e/N − ẑ mean(eẑ)/N)/s with e = ẑ − y.  Two GEMMs, three reductions and a
    handful of in-place ufuncs per step.
    """

    def __init__(self, X, y, P, eps=0.0):
        Xc = X - X.mean(axis=0)
        self.Xc = np.ascontiguousarray(Xc)
        self.XcT = np.ascontiguousarray(Xc.T)
        self.y = np.ascontiguousarray(y)[:, None]
        self.eps = eps
        N = X.shape[0]
        self.N = N
        self.Z = np.empty((N, P))
        self.E = np.empty((N, P))
        self.sd = np.empty(P)
        self.f = np.empty(P)
        self.mdz = np.empty(P)

    def __call__(self, W, G):
        N, Z, E = self.N, self.Z, self.E
        np.matmul(self.Xc, W, out=Z)                        # z − z̄
        np.einsum("np,np->p", Z, Z, out=self.sd)
        self.sd /= N
        self.sd += self.eps
        np.sqrt(self.sd, out=self.sd)                       # s
        Z /= self.sd                                        # ẑ
        np.subtract(Z, self.y, out=E)                       # e = ẑ − y
        np.einsum("np,np->p", E, E, out=self.f)
        self.f *= 0.5 / N
        np.einsum("np,np->p", E, Z, out=self.mdz)
        self.mdz /= N * N                                   # mean(δ ẑ), δ = e/N
        E *= 1.0 / N                                        # δ
        Z *= self.mdz
        E -= Z
        E /= self.sd                                        # dz without its mean
        np.matmul(self.XcT, E, out=G)                       # g = Xcᵀ dz
        return self.f


class bn_unit_proj_grad:
    """The BatchNorm unit on the full batch in O(D²) per point (docs/potentials.md §4a),
    for P weight columns at once: the same algorithm as noether_core's compiled
    BatchNormUnit uses for full batches, so that the comparison with the compiled scan is
    algorithm for algorithm.  With X − mean(X) = QR (thin QR, once), t = Qᵀy,
    ρ² = |y − Qt|²:  U = RW, s = sqrt(|u|²/N + eps), A = U/s, V = A − t,
    f = (|v|² + ρ²)/2N,  G = Rᵀ(V·c₁ − A·c₂) with c₁ = 1/(Ns), c₂ = (vᵀa)/(N²s).  Two
    (D × D)·(D × P) products and under a dozen passes over (D, P) arrays per step."""

    def __init__(self, X, y, P, eps=0.0):
        N, D = X.shape
        Q, R = np.linalg.qr(X - X.mean(axis=0), mode="reduced")
        self.R = np.ascontiguousarray(np.triu(R))
        self.RT = np.ascontiguousarray(self.R.T)
        self.t = (Q.T @ y)[:, None]
        r = y - Q @ (Q.T @ y)
        self.rho2 = float(r @ r)
        self.N, self.eps = N, eps
        self.U = np.empty((D, P))
        self.V = np.empty((D, P))
        self.s = np.empty(P)
        self.f = np.empty(P)
        self.m = np.empty(P)

    def __call__(self, W, G):
        N, U, V = self.N, self.U, self.V
        np.matmul(self.R, W, out=U)
        np.einsum("ip,ip->p", U, U, out=self.s)
        self.s /= N
        self.s += self.eps
        np.sqrt(self.s, out=self.s)
        U /= self.s                                         # a
        np.subtract(U, self.t, out=V)                       # v
        np.einsum("ip,ip->p", V, V, out=self.f)
        self.f += self.rho2
        self.f *= 0.5 / N
        np.einsum("ip,ip->p", V, U, out=self.m)
        self.m /= N * N
        self.m /= self.s                                    # c₂ = m/s
        np.divide(1.0 / N, self.s, out=self.s)              # c₁ = 1/(N s)
        V *= self.s
        U *= self.m
        V -= U                                              # y' = v c₁ − a c₂
        np.matmul(self.RT, V, out=G)
        return self.f


def sgd_momentum_scan(grad, q0, lr, weight_decay, momentum, steps, check_every=100):
    """Run P = len(lr) SGD+momentum runs (one per (lr[p], weight_decay[p])) from q0.

    Parameters
    ----------
    grad : callable(Q (d, P), G (d, P) out) -> f (P,)
    q0 : (d,) initial parameters (shared)
    lr, weight_decay : (P,) arrays
    momentum : float
    steps : int

    Returns
    -------
    dict of arrays: q (P, d), loss, loss_min, norm2, angular_update, stop_step (P,)
    """
    d, P = len(q0), len(lr)
    Q = np.repeat(np.asarray(q0, float)[:, None], P, axis=1)
    G = np.empty((d, P))
    V = np.empty((d, P))
    tmp = np.empty((d, P))
    lr_row = np.asarray(lr, float)[None, :]
    wd_row = np.asarray(weight_decay, float)[None, :]
    loss_min = np.full(P, np.inf)
    stop = np.full(P, -1)
    n_late = -(-steps // 10)
    late_start = steps - n_late
    prev = np.empty((d, P))
    cur = np.empty((d, P))
    nrm = np.empty(P)
    ang = np.zeros(P)
    a = np.empty(P)
    with np.errstate(all="ignore"):
        for n in range(steps):
            f = grad(Q, G)
            np.minimum(loss_min, f, out=loss_min)
            np.multiply(Q, wd_row, out=tmp)
            G += tmp                                        # d = g + k q
            if n == 0:
                V[...] = G
            else:
                V *= momentum
                V += G
            np.multiply(V, lr_row, out=tmp)
            if n >= late_start:                             # q̂_n before the update
                np.einsum("ip,ip->p", Q, Q, out=nrm)
                np.sqrt(nrm, out=nrm)
                np.divide(Q, nrm, out=prev)
            Q -= tmp
            if n >= late_start:                             # |q̂_{n+1} − q̂_n|²
                np.einsum("ip,ip->p", Q, Q, out=nrm)
                np.sqrt(nrm, out=nrm)
                np.divide(Q, nrm, out=cur)
                np.subtract(cur, prev, out=tmp)
                np.einsum("ip,ip->p", tmp, tmp, out=a)
                ang += a
            if n % check_every == check_every - 1:
                bad = ~(np.isfinite(f) & np.isfinite(Q.sum(axis=0)))
                stop[bad & (stop < 0)] = n
        f = grad(Q, G).copy()
        np.minimum(loss_min, f, out=loss_min)
    bad = ~(np.isfinite(f) & np.isfinite(Q.sum(axis=0)))
    stop[bad & (stop < 0)] = steps
    diverged = stop >= 0
    f[diverged] = np.nan
    ang = np.sqrt(ang / n_late)                             # the RMS chord
    ang[diverged] = np.nan
    return {"q": Q.T.copy(), "loss": f, "loss_min": loss_min,
            "norm2": np.einsum("ip,ip->p", Q, Q), "angular_update": ang,
            "stop_step": stop}
