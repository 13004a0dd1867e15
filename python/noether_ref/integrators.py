"""NumPy twin of pyx/integrators.pyx (same operation order, one Python call per stage).

A model is a dict ``spec`` with ``kind`` in {"damped", "radang", "bregman", "gflow"} and
its constants (``m, mu, k, reduced``; for Bregman ``schedule(t) -> (e^α, e^{α+β}, γ̇)``
and ``mirror`` (``"euclidean"|"diagonal"|"pnorm"|"entropy"``, ``D``, ``p``)), plus
``grad(q) -> g`` (the loss gradient, e.g. from noether_ref.potentials).

Also the "NumPy right-hand side" of the benchmarks: :func:`rhs` with ``solve_ivp``.
"""
import math

import numpy as np

__all__ = ["rhs", "integrate", "dopri5"]


# -- mirror maps ------------------------------------------------------------------------
def _dphi(s, x):
    mir = s.get("mirror", "euclidean")
    if mir == "euclidean":
        return x
    if mir == "diagonal":
        return s["D"] * x
    if mir == "pnorm":
        return np.abs(x) ** (s["p"] - 1.0) * np.where(x >= 0.0, 1.0, -1.0)
    return np.log(x) + 1.0


def _dphi_inv(s, y):
    mir = s.get("mirror", "euclidean")
    if mir == "euclidean":
        return y
    if mir == "diagonal":
        return y / s["D"]
    if mir == "pnorm":
        return np.abs(y) ** (1.0 / (s["p"] - 1.0)) * np.where(y >= 0.0, 1.0, -1.0)
    return np.exp(y - 1.0)


def _d2phi(s, x):
    mir = s.get("mirror", "euclidean")
    if mir == "euclidean":
        return np.ones_like(x)
    if mir == "diagonal":
        return s["D"] * np.ones_like(x)
    if mir == "pnorm":
        return (s["p"] - 1.0) * np.abs(x) ** (s["p"] - 2.0)
    return 1.0 / x


def _grad_V(s, q):
    g = s["grad"](q)
    return g + s["k"] * q if s.get("k", 0.0) != 0.0 else g


# -- right-hand sides -------------------------------------------------------------------
def rhs(s, t, y):
    """y' = F(t, y) of the model ``s`` (SPEC §2)."""
    kind = s["kind"]
    if kind == "damped":
        d = len(y) // 2
        q, v = y[:d], y[d:]
        return np.concatenate([v, -(s["mu"] * v + _grad_V(s, q)) / s["m"]])
    if kind == "gflow":
        return -_grad_V(s, y) / s["mu"]
    if kind == "radang":
        d = (len(y) - 2) // 2
        r, rd, u, w = y[0], y[1], y[2:2 + d], y[2 + d:]
        g = s["grad"](u)
        ww = w @ w
        gam = s["mu"] / s["m"]
        cpl = 0.0 if s["reduced"] else 2.0 * rd / r
        return np.concatenate([[rd, -gam * rd + (ww - s["k"] / s["m"]) * r], w,
                               -(gam + cpl) * w - g / (s["m"] * r * r) - ww * u])
    # bregman
    d = len(y) // 2
    q, P = y[:d], y[d:]
    ea, eab, gd = s["schedule"](t)
    g = s["grad"](q)
    qd = ea * (_dphi_inv(s, _dphi(s, q) + P) - q)
    return np.concatenate([qd, (ea - gd) * P - _d2phi(s, q) * qd - eab * g])


# -- conformal splittings ---------------------------------------------------------------
def _m1_lie(s, y, h, g):
    d = len(y) // 2
    c = math.exp(-h * s["mu"] / s["m"])
    y[d:] = c * y[d:] - (h / s["m"]) * g
    y[:d] = y[:d] + h * y[d:]
    return _grad_V(s, y[:d])


def _m1_strang(s, y, h, g):
    d = len(y) // 2
    c = math.exp(-0.5 * h * s["mu"] / s["m"])
    a = 0.5 * h / s["m"]
    y[d:] = c * y[d:] - a * g
    y[:d] = y[:d] + h * y[d:]
    g = _grad_V(s, y[:d])
    y[d:] = c * (y[d:] - a * g)
    return g


def _m2_D(s, y, tau):
    d = (len(y) - 2) // 2
    c = math.exp(-tau * s["mu"] / s["m"])
    y[1] = c * y[1]
    y[2 + d:] = c * y[2 + d:]


def _m2_B(s, y, tau, g):
    d = (len(y) - 2) // 2
    u = y[2:2 + d]
    gu = g @ u
    y[2 + d:] = y[2 + d:] - tau / (s["m"] * y[0] * y[0]) * (g - gu * u)


def _m2_A(s, y, tau):
    d = (len(y) - 2) // 2
    r, rd = y[0], y[1]
    if s["k"] > 0.0:
        om = math.sqrt(s["k"] / s["m"])
        cs, sn = math.cos(om * tau), math.sin(om * tau)
        rn = r * cs + rd * sn / om
        y[1] = -r * om * sn + rd * cs
    else:
        rn = r + tau * rd
    y[0] = rn
    if not s["reduced"]:
        y[2 + d:] = (r / rn) * (r / rn) * y[2 + d:]


def _m2_C(s, y, tau):
    d = (len(y) - 2) // 2
    u, w = y[2:2 + d].copy(), y[2 + d:].copy()
    ww = w @ w
    y[1] = y[1] + tau * y[0] * ww
    if ww > 0.0:
        om = math.sqrt(ww)
        cs, sn = math.cos(om * tau), math.sin(om * tau)
        e = w / om
        u, w = u * cs + e * sn, om * (e * cs - u * sn)
    u = u / math.sqrt(u @ u)
    w = w - (u @ w) * u
    y[2:2 + d], y[2 + d:] = u, w
    return s["grad"](u)


def _m2_lie(s, y, h, g):
    _m2_D(s, y, h)
    _m2_B(s, y, h, g)
    _m2_A(s, y, h)
    return _m2_C(s, y, h)


def _m2_strang(s, y, h, g):
    _m2_D(s, y, 0.5 * h)
    _m2_B(s, y, 0.5 * h, g)
    _m2_A(s, y, 0.5 * h)
    g = _m2_C(s, y, h)
    _m2_A(s, y, 0.5 * h)
    _m2_B(s, y, 0.5 * h, g)
    _m2_D(s, y, 0.5 * h)
    return g


def _split_step(s, method, y, h, g):
    strang = _m1_strang if s["kind"] == "damped" else _m2_strang
    if method == "conformal-euler":
        return (_m1_lie if s["kind"] == "damped" else _m2_lie)(s, y, h, g)
    if method == "euler":                       # M4
        y[:] = y - (h / s["mu"]) * g
        return _grad_V(s, y)
    if method == "conformal-verlet":
        return strang(s, y, h, g)
    cbrt2 = 2.0 ** (1.0 / 3.0)
    w1 = 1.0 / (2.0 - cbrt2)
    w0 = -cbrt2 / (2.0 - cbrt2)
    g = strang(s, y, w1 * h, g)
    g = strang(s, y, w0 * h, g)
    return strang(s, y, w1 * h, g)


def _rk4_step(s, t, y, h):
    k1 = rhs(s, t, y)
    k2 = rhs(s, t + 0.5 * h, y + 0.5 * h * k1)
    k3 = rhs(s, t + 0.5 * h, y + 0.5 * h * k2)
    k4 = rhs(s, t + h, y + h * k3)
    return y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def integrate(s, y0, method, t0, h, n_steps, record_every=1):
    """Fixed-step integration: returns (t, Y) with rows at steps 0, re, 2re, … ≤ n_steps."""
    y = np.array(y0, dtype=float)
    ts, ys = [t0], [y.copy()]
    g = None
    if method != "rk4" and n_steps > 0:
        g = s["grad"](y[2:2 + (len(y) - 2) // 2]) if s["kind"] == "radang" else _grad_V(
            s, y[:len(y) // 2] if s["kind"] == "damped" else y)
    for n in range(1, n_steps + 1):
        if method == "rk4":
            y = _rk4_step(s, t0 + (n - 1) * h, y, h)
        else:
            g = _split_step(s, method, y, h, g)
        if n % record_every == 0:
            ts.append(t0 + n * h)
            ys.append(y.copy())
    return np.array(ts), np.array(ys)


# -- Dormand–Prince 5(4) ----------------------------------------------------------------
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]]
_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


def _rms(x, y, rtol, atol):
    return math.sqrt(np.mean((x / (atol + rtol * np.abs(y))) ** 2))


def _initial_step(s, t, y, f0, rtol, atol, T):
    d0, d1 = _rms(y, y, rtol, atol), _rms(f0, y, rtol, atol)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, T)
    f1 = rhs(s, t + h0, y + h0 * f0)
    d2 = _rms(f1 - f0, y, rtol, atol) / h0
    mx = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if mx <= 1e-15 else (0.01 / mx) ** 0.2
    h1 = min(100.0 * h0, h1)
    return h1 if (h1 > 0.0 and math.isfinite(h1)) else 1e-6 * T


def dopri5(s, y0, t0, t_end, h=0.0, rtol=1e-6, atol=1e-9, max_steps=100_000,
           t_eval=None, record_every=1):
    """Adaptive Dormand–Prince 5(4), the kernel's algorithm: returns (t, Y, status).

    status: "ok", "underflow", "max_steps" or "nonfinite".
    """
    y = np.array(y0, dtype=float)
    t = t0
    ts, ys = [], []
    t_eval = [] if t_eval is None else list(t_eval)
    ie = 0
    if t_eval:
        while ie < len(t_eval) and t_eval[ie] <= t0:
            ts.append(t0)
            ys.append(y.copy())
            ie += 1
    else:
        ts.append(t0)
        ys.append(y.copy())
    if t_end <= t0:
        return np.array(ts), np.array(ys), "ok"
    K0 = rhs(s, t, y)
    if not np.all(np.isfinite(K0)):
        return np.array(ts), np.array(ys), "nonfinite"
    h = h if h > 0 else _initial_step(s, t, y, K0, rtol, atol, t_end - t0)
    h_first = h                    # the step floor's scale near t = 0 (docs/integrators.md §5)
    attempts = acc = 0
    last_bad = False
    while t < t_end:
        target = t_eval[ie] if (t_eval and ie < len(t_eval)) else t_end
        hmin = 10.0 * np.finfo(float).eps * max(abs(t), h_first)
        if not (h >= hmin) or t + 0.5 * h == t:
            return np.array(ts), np.array(ys), "nonfinite" if last_bad else "underflow"
        if attempts >= max_steps:
            return np.array(ts), np.array(ys), "max_steps"
        attempts += 1
        landed = t + 1.01 * h >= target
        hs = target - t if landed else h
        K = [K0]
        for j in range(1, 6):
            yt = y + hs * sum(a * K[i] for i, a in enumerate(_A[j]))
            K.append(rhs(s, t + _C[j] * hs, yt))
        yn = y + hs * sum(b * K[i] for i, b in enumerate(_B))
        K.append(rhs(s, t + hs, yn))
        e = hs * sum(c * K[i] for i, c in enumerate(_E))
        err = math.sqrt(np.mean((e / (atol + rtol * np.maximum(np.abs(y), np.abs(yn)))) ** 2))
        if not math.isfinite(err):
            last_bad = not np.all(np.isfinite(yn))
            h = 0.2 * hs
            continue
        last_bad = False
        if err <= 1.0:
            fac = 5.0 if err == 0.0 else min(5.0, 0.9 * err ** -0.2)
            t = target if landed else t + hs
            y = yn
            K0 = K[6]
            acc += 1
            h = hs * fac if (not landed or hs * fac > h) else h
            if t_eval:
                while ie < len(t_eval) and t_eval[ie] <= t:
                    ts.append(t)
                    ys.append(y.copy())
                    ie += 1
            elif acc % record_every == 0 or t >= t_end:
                ts.append(t)
                ys.append(y.copy())
        else:
            h = hs * max(0.2, 0.9 * err ** -0.2)
    return np.array(ts), np.array(ys), "ok"
