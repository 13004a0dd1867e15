"""NumPy twins of pyx/potentials.pyx: ``f, g = <name>(q, ..., rows=None)``.

``rows`` (1-D integer array or None) selects the minibatch rows of a data potential, in the
order the kernel visits them.
"""
import numpy as np


def quadratic(q, A, b):
    """f = ½ qᵀAq − bᵀq,  g = Aq − b."""
    Aq = A @ q
    return float(q @ (0.5 * Aq - b)), Aq - b


def rayleigh(q, A):
    """f = ½ qᵀAq/|q|²,  g = (Aq − 2f q)/|q|² = Aq·ι − q·(2f·ι), ι = 1/|q|²."""
    Aq = A @ q
    iqq = 1.0 / (q @ q)
    t = (q @ Aq) * iqq                       # 2f
    return float(0.5 * t), Aq * iqq - q * (t * iqq)


_RADIAL = {
    "double_well": (lambda u: 0.25 * (u - 1.0) ** 2, lambda u: 0.5 * (u - 1.0)),
    "log": (lambda u: 0.5 * np.log1p(u), lambda u: 0.5 / (1.0 + u)),
    "gaussian": (lambda u: -np.exp(-0.5 * u), lambda u: 0.5 * np.exp(-0.5 * u)),
}


def radial(q, kind="double_well"):
    """f = φ(|q|²),  g = 2φ'(|q|²) q."""
    phi, dphi = _RADIAL[kind]
    u = q @ q
    return float(phi(u)), 2.0 * dphi(u) * q


def batchnorm_unit(w, X, y, eps=0.0, rows=None):
    """Linear unit → batch normalisation (batch statistics) → squared loss.

    z = Xw, ẑ = (z − z̄)/sqrt(var z + eps), f = (1/2B)Σ(ẑ − y)²;
    dz = (δ − mean δ − ẑ mean(δẑ))/s with δ = (ẑ − y)/B, s = sqrt(var + eps); g = Xᵀdz.
    """
    if rows is not None:
        X, y = X[rows], y[rows]
    B = X.shape[0]
    z = X @ w
    zc = z - z.mean()
    s = np.sqrt((zc @ zc) / B + eps)
    zh = zc / s
    e = zh - y
    f = 0.5 * (e @ e) / B
    delta = e / B
    dz = (delta - delta.mean() - zh * np.mean(delta * zh)) / s
    return float(f), X.T @ dz


# ------------------------------------------------------------------------------------------
# Networks (twins of the NetKernel of pyx/potentials.pyx, written layer by layer)

def _bn_forward(Z, eps):
    """Batch normalisation of the columns of Z: (Ẑ, sd) with sd = sqrt(var + eps)."""
    Zc = Z - Z.mean(axis=0)
    sd = np.sqrt((Zc * Zc).mean(axis=0) + eps)
    return Zc / sd, sd


def _bn_backward(dZh, Zh, sd):
    """dL/dZ from dL/dẐ: (dẐ − mean dẐ − Ẑ·mean(dẐ Ẑ))/sd, per column."""
    return (dZh - dZh.mean(axis=0) - Zh * (dZh * Zh).mean(axis=0)) / sd


def _relu(H):
    """max(H, 0), letting NaN through (as the kernel does: no silent NaN)."""
    return np.where(H <= 0.0, 0.0, H)


def _squared(P, Y):
    """f = (1/2B) Σ|P − Y|², dL/dP."""
    E = P - Y
    B = P.shape[0]
    return 0.5 * np.sum(E * E) / B, E / B


def _xent(logits, labels):
    """Mean softmax cross-entropy, dL/dlogits; the stable log-sum-exp of the kernel:
    each row's loss is (max − logit_y) + log Σ exp(logit − max), softmax = exp(logit − max)/s
    (docs/potentials.md §6: a common offset of the logits cancels exactly)."""
    B = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    gap = m[:, 0] - logits[np.arange(B), labels]
    f = np.sum(gap + np.log(s[:, 0])) / B
    dL = e / s
    dL[np.arange(B), labels] -= 1.0
    return f, dL / B


def _regression_layers(q, X, Y, n_hidden, rows):
    """Batch rows of X and Y (as (N, out)), and q split into (n_hidden × D, out × n_hidden)."""
    Y = Y.reshape(Y.shape[0], -1)
    if rows is not None:
        X, Y = X[rows], Y[rows]
    D, out = X.shape[1], Y.shape[1]
    return X, Y, q[:n_hidden * D].reshape(n_hidden, D), q[n_hidden * D:].reshape(out, n_hidden)


def batchnorm_layer(q, X, Y, width, eps=0.0, rows=None):
    """Z = XWᵀ, Ẑ = BN(Z), A = ReLU(Ẑ), P = AVᵀ, f = (1/2B)Σ|P − Y|²; q = [W, V]."""
    X, Y, W, Vm = _regression_layers(q, X, Y, width, rows)
    Zh, sd = _bn_forward(X @ W.T, eps)
    A = _relu(Zh)
    f, dP = _squared(A @ Vm.T, Y)
    gV = dP.T @ A
    dZh = (dP @ Vm) * (Zh > 0.0)
    gW = _bn_backward(dZh, Zh, sd).T @ X
    return float(f), np.concatenate([gW.ravel(), gV.ravel()])


def softmax_xent(q, X, labels, n_classes, rows=None):
    """logits = XWᵀ + b, f = mean cross-entropy; q = [W (C × D), b]."""
    if rows is not None:
        X, labels = X[rows], labels[rows]
    C, D = n_classes, X.shape[1]
    W = q[:C * D].reshape(C, D)
    b = q[C * D:]
    f, dL = _xent(X @ W.T + b, labels)
    return float(f), np.concatenate([(dL.T @ X).ravel(), dL.sum(axis=0)])


def two_layer(q, X, Y, hidden, activation="relu", rows=None):
    """P = act(XW1ᵀ)W2ᵀ, f = (1/2B)Σ|P − Y|²; q = [W1, W2], relu'(0) = 0."""
    X, Y, W1, W2 = _regression_layers(q, X, Y, hidden, rows)
    H = X @ W1.T
    relu = activation == "relu"
    A = _relu(H) if relu else H
    f, dP = _squared(A @ W2.T, Y)
    dH = dP @ W2
    if relu:
        dH = dH * (H > 0.0)
    return float(f), np.concatenate([(dH.T @ X).ravel(), (dP.T @ A).ravel()])


def batchnorm_mlp(q, X, labels, widths, n_classes, eps=0.0, rows=None):
    """[Linear → BN → γ, β → ReLU] per width, Linear + bias read-out, cross-entropy.

    q = [W1, γ1, β1, …, WL, γL, βL, Wout, bout].
    """
    if rows is not None:
        X, labels = X[rows], labels[rows]
    dims = (X.shape[1],) + tuple(widths)
    params, off = [], 0
    for layer, w in enumerate(widths):
        W = q[off:off + w * dims[layer]].reshape(w, dims[layer])
        off += w * dims[layer]
        params.append((W, q[off:off + w], q[off + w:off + 2 * w]))
        off += 2 * w
    Wo = q[off:off + n_classes * widths[-1]].reshape(n_classes, widths[-1])
    bo = q[off + n_classes * widths[-1]:]
    acts, cache = [X], []
    for W, gam, bet in params:
        Zh, sd = _bn_forward(acts[-1] @ W.T, eps)
        H = gam * Zh + bet
        cache.append((Zh, sd, H))
        acts.append(_relu(H))
    f, dL = _xent(acts[-1] @ Wo.T + bo, labels)
    grads = [(dL.T @ acts[-1]).ravel(), dL.sum(axis=0)]
    dA = dL @ Wo
    for layer in range(len(widths) - 1, -1, -1):
        W, gam, _ = params[layer]
        Zh, sd, H = cache[layer]
        dH = dA * (H > 0.0)
        dZ = _bn_backward(dH * gam, Zh, sd)
        grads = [(dZ.T @ acts[layer]).ravel(), (dH * Zh).sum(axis=0), dH.sum(axis=0)] + grads
        dA = dZ @ W
    return float(f), np.concatenate(grads)
