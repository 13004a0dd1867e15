"""NumPy twin of pyx/integrators.pyx (same operation order, one Python call per stage).

A model is a dict ``spec`` with ``kind`` in {"damped", "radang", "bregman", "gflow"} and
its constants (``m, mu, k, reduced``; for Bregman ``schedule(t) -> (e^α, e^{α+β}, γ̇)``
and ``mirror`` (``"euclidean"|"diagonal"|"pnorm"|"entropy"``, ``D``, ``p``)), plus
``grad(q) -> g`` (the loss gradient, e.g. from noether_ref.potentials).

Also the "NumPy right-hand side" of the benchmarks: :func:`rhs` with ``solve_ivp``.
"""
import math

import numpy as np

__all__ = ["rhs", "integrate", "dopri5", "dop853", "dense_eval"]


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


def _initial_step(s, t, y, f0, rtol, atol, T, order=5):
    d0, d1 = _rms(y, y, rtol, atol), _rms(f0, y, rtol, atol)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, T)
    f1 = rhs(s, t + h0, y + h0 * f0)
    d2 = _rms(f1 - f0, y, rtol, atol) / h0
    mx = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if mx <= 1e-15 else (0.01 / mx) ** (1.0 / order)
    h1 = min(100.0 * h0, h1)
    return h1 if (h1 > 0.0 and math.isfinite(h1)) else 1e-6 * T


# Hairer's continuous extension of dopri5 (contd5): c4 = h sum _DD_j K_j
_DD = [-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799,
       -10690763975 / 1880347072, 701980252875 / 199316789632, -1453857185 / 822651844,
       69997945 / 29380423]

# -- DOP853 (Hairer, Norsett & Wanner I §II.10; the numbers of Hairer's dop853.f) -------
_D8_C = (
    0.0, 0.526001519587677318785587544488e-01, 0.789002279381515978178381316732e-01,
    0.118350341907227396726757197510, 0.281649658092772603273242802490,
    0.333333333333333333333333333333, 0.25, 0.307692307692307692307692307692,
    0.651282051282051282051282051282, 0.6, 0.857142857142857142857142857142, 1.0, 1.0, 0.1,
    0.2, 0.777777777777777777777777777778,
)
_D8_A = {
    (1, 0): 5.26001519587677318785587544488e-2, (2, 0): 1.97250569845378994544595329183e-2,
    (2, 1): 5.91751709536136983633785987549e-2, (3, 0): 2.95875854768068491816892993775e-2,
    (3, 2): 8.87627564304205475450678981324e-2, (4, 0): 2.41365134159266685502369798665e-1,
    (4, 2): -8.84549479328286085344864962717e-1, (4, 3): 9.24834003261792003115737966543e-1,
    (5, 0): 3.7037037037037037037037037037e-2, (5, 3): 1.70828608729473871279604482173e-1,
    (5, 4): 1.25467687566822425016691814123e-1, (6, 0): 3.7109375e-2,
    (6, 3): 1.70252211019544039314978060272e-1, (6, 4): 6.02165389804559606850219397283e-2,
    (6, 5): -1.7578125e-2, (7, 0): 3.70920001185047927108779319836e-2,
    (7, 3): 1.70383925712239993810214054705e-1, (7, 4): 1.07262030446373284651809199168e-1,
    (7, 5): -1.53194377486244017527936158236e-2, (7, 6): 8.27378916381402288758473766002e-3,
    (8, 0): 6.24110958716075717114429577812e-1, (8, 3): -3.36089262944694129406857109825,
    (8, 4): -8.68219346841726006818189891453e-1, (8, 5): 2.75920996994467083049415600797e1,
    (8, 6): 2.01540675504778934086186788979e1, (8, 7): -4.34898841810699588477366255144e1,
    (9, 0): 4.77662536438264365890433908527e-1, (9, 3): -2.48811461997166764192642586468,
    (9, 4): -5.90290826836842996371446475743e-1, (9, 5): 2.12300514481811942347288949897e1,
    (9, 6): 1.52792336328824235832596922938e1, (9, 7): -3.32882109689848629194453265587e1,
    (9, 8): -2.03312017085086261358222928593e-2, (10, 0): -9.3714243008598732571704021658e-1,
    (10, 3): 5.18637242884406370830023853209, (10, 4): 1.09143734899672957818500254654,
    (10, 5): -8.14978701074692612513997267357, (10, 6): -1.85200656599969598641566180701e1,
    (10, 7): 2.27394870993505042818970056734e1, (10, 8): 2.49360555267965238987089396762,
    (10, 9): -3.0467644718982195003823669022, (11, 0): 2.27331014751653820792359768449,
    (11, 3): -1.05344954667372501984066689879e1, (11, 4): -2.00087205822486249909675718444,
    (11, 5): -1.79589318631187989172765950534e1, (11, 6): 2.79488845294199600508499808837e1,
    (11, 7): -2.85899827713502369474065508674, (11, 8): -8.87285693353062954433549289258,
    (11, 9): 1.23605671757943030647266201528e1, (11, 10): 6.43392746015763530355970484046e-1,
    (12, 0): 5.42937341165687622380535766363e-2, (12, 5): 4.45031289275240888144113950566,
    (12, 6): 1.89151789931450038304281599044, (12, 7): -5.8012039600105847814672114227,
    (12, 8): 3.1116436695781989440891606237e-1, (12, 9): -1.52160949662516078556178806805e-1,
    (12, 10): 2.01365400804030348374776537501e-1, (12, 11): 4.47106157277725905176885569043e-2,
    (13, 0): 5.61675022830479523392909219681e-2, (13, 6): 2.53500210216624811088794765333e-1,
    (13, 7): -2.46239037470802489917441475441e-1, (13, 8): -1.24191423263816360469010140626e-1,
    (13, 9): 1.5329179827876569731206322685e-1, (13, 10): 8.20105229563468988491666602057e-3,
    (13, 11): 7.56789766054569976138603589584e-3, (13, 12): -8.298e-3,
    (14, 0): 3.18346481635021405060768473261e-2, (14, 5): 2.83009096723667755288322961402e-2,
    (14, 6): 5.35419883074385676223797384372e-2, (14, 7): -5.49237485713909884646569340306e-2,
    (14, 10): -1.08347328697249322858509316994e-4,
    (14, 11): 3.82571090835658412954920192323e-4,
    (14, 12): -3.40465008687404560802977114492e-4,
    (14, 13): 1.41312443674632500278074618366e-1, (15, 0): -4.28896301583791923408573538692e-1,
    (15, 5): -4.69762141536116384314449447206, (15, 6): 7.68342119606259904184240953878,
    (15, 7): 4.06898981839711007970213554331, (15, 8): 3.56727187455281109270669543021e-1,
    (15, 12): -1.39902416515901462129418009734e-3, (15, 13): 2.9475147891527723389556272149,
    (15, 14): -9.15095847217987001081870187138,
}
_D8_BHH = {
    0: 0.244094488188976377952755905512, 8: 0.733846688281611857341361741547,
    11: 0.220588235294117647058823529412e-1,
}
_D8_E5 = {
    0: 0.1312004499419488073250102996e-1, 5: -0.1225156446376204440720569753e+1,
    6: -0.4957589496572501915214079952, 7: 0.1664377182454986536961530415e+1,
    8: -0.3503288487499736816886487290, 9: 0.3341791187130174790297318841,
    10: 0.8192320648511571246570742613e-1, 11: -0.2235530786388629525884427845e-1,
}
_D8_D = {
    (0, 0): -0.84289382761090128651353491142e+1, (0, 5): 0.56671495351937776962531783590,
    (0, 6): -0.30689499459498916912797304727e+1, (0, 7): 0.23846676565120698287728149680e+1,
    (0, 8): 0.21170345824450282767155149946e+1, (0, 9): -0.87139158377797299206789907490,
    (0, 10): 0.22404374302607882758541771650e+1, (0, 11): 0.63157877876946881815570249290,
    (0, 12): -0.88990336451333310820698117400e-1, (0, 13): 0.18148505520854727256656404962e+2,
    (0, 14): -0.91946323924783554000451984436e+1, (0, 15): -0.44360363875948939664310572000e+1,
    (1, 0): 0.10427508642579134603413151009e+2, (1, 5): 0.24228349177525818288430175319e+3,
    (1, 6): 0.16520045171727028198505394887e+3, (1, 7): -0.37454675472269020279518312152e+3,
    (1, 8): -0.22113666853125306036270938578e+2, (1, 9): 0.77334326684722638389603898808e+1,
    (1, 10): -0.30674084731089398182061213626e+2, (1, 11): -0.93321305264302278729567221706e+1,
    (1, 12): 0.15697238121770843886131091075e+2, (1, 13): -0.31139403219565177677282850411e+2,
    (1, 14): -0.93529243588444783865713862664e+1, (1, 15): 0.35816841486394083752465898540e+2,
    (2, 0): 0.19985053242002433820987653617e+2, (2, 5): -0.38703730874935176555105901742e+3,
    (2, 6): -0.18917813819516756882830838328e+3, (2, 7): 0.52780815920542364900561016686e+3,
    (2, 8): -0.11573902539959630126141871134e+2, (2, 9): 0.68812326946963000169666922661e+1,
    (2, 10): -0.10006050966910838403183860980e+1, (2, 11): 0.77771377980534432092869265740,
    (2, 12): -0.27782057523535084065932004339e+1, (2, 13): -0.60196695231264120758267380846e+2,
    (2, 14): 0.84320405506677161018159903784e+2, (2, 15): 0.11992291136182789328035130030e+2,
    (3, 0): -0.25693933462703749003312586129e+2, (3, 5): -0.15418974869023643374053993627e+3,
    (3, 6): -0.23152937917604549567536039109e+3, (3, 7): 0.35763911791061412378285349910e+3,
    (3, 8): 0.93405324183624310003907691704e+2, (3, 9): -0.37458323136451633156875139351e+2,
    (3, 10): 0.10409964950896230045147246184e+3, (3, 11): 0.29840293426660503123344363579e+2,
    (3, 12): -0.43533456590011143754432175058e+2, (3, 13): 0.96324553959188282948394950600e+2,
    (3, 14): -0.39177261675615439165231486172e+2, (3, 15): -0.14972683625798562581422125276e+3,
}


def _d8_stage(s, t, y, h, K, st):
    """y + h sum_{j<st} a_{st,j} K_j (zero coefficients skipped, in j order) and F there."""
    acc = np.zeros_like(y)
    for j in range(st):
        a = _D8_A.get((st, j), 0.0)
        if a != 0.0:
            acc = acc + a * K[j]
    yt = y + h * acc
    return yt, rhs(s, t + _D8_C[st] * h, yt)


def _dense_dopri5(y, yn, h, K):
    dy = yn - y
    bspl = h * K[0] - dy
    c4 = h * (_DD[0] * K[0] + _DD[2] * K[2] + _DD[3] * K[3] + _DD[4] * K[4] + _DD[5] * K[5]
              + _DD[6] * K[6])
    return np.array([y, dy, bspl, dy - h * K[6] - bspl, c4])


def _dense_dop853(s, t, y, yn, h, K):
    K = list(K)
    for st in range(13, 16):
        K.append(_d8_stage(s, t, y, h, K, st)[1])
    dy = yn - y
    rows = [y, dy, h * K[0] - dy, 2.0 * dy - h * (K[12] + K[0])]
    for r in range(4):
        acc = np.zeros_like(y)
        for j in range(16):
            a = _D8_D.get((r, j), 0.0)
            if a != 0.0:
                acc = acc + a * K[j]
        rows.append(h * acc)
    return np.array(rows)


def dense_eval(rows, t):
    """Evaluate dense rows [(t_old, t_new, h, C (nc, n))] at t (scalar, inside them):
    y = c0 + s (c1 + (1-s) (c2 + s (c3 + ...))), s = (t - t_old)/h."""
    for t_old, t_new, h, C in rows:
        if t_old <= t <= t_new:
            x = (t - t_old) / h
            acc = C[-1]
            for j in range(len(C) - 2, 0, -1):
                acc = C[j] + ((1.0 - x) if j % 2 == 1 else x) * acc
            return C[0] + x * acc
    raise ValueError(f"t={t} outside the dense output")


def _trial(s, method, t, y, hs, K0, rtol, atol):
    """One trial step: (yn, stages K incl. the FSAL one, error norm)."""
    K = [K0]
    if method == "dop853":
        for st in range(1, 12):
            K.append(_d8_stage(s, t, y, hs, K, st)[1])
        yn, f_new = _d8_stage(s, t, y, hs, K, 12)
        K.append(f_new)
        sc = atol + rtol * np.maximum(np.abs(y), np.abs(yn))
        b = [_D8_A.get((12, j), 0.0) for j in range(12)]
        e5 = sum(_D8_E5.get(j, 0.0) * K[j] for j in range(12))
        e3 = sum((b[j] - _D8_BHH.get(j, 0.0)) * K[j] for j in range(12))
        a5, a3 = np.sum((e5 / sc) ** 2), np.sum((e3 / sc) ** 2)
        if a5 == 0.0 and a3 == 0.0:
            return yn, K, 0.0
        return yn, K, abs(hs) * a5 / math.sqrt((a5 + 0.01 * a3) * len(y))
    for j in range(1, 6):
        yt = y + hs * sum(a * K[i] for i, a in enumerate(_A[j]))
        K.append(rhs(s, t + _C[j] * hs, yt))
    yn = y + hs * sum(b * K[i] for i, b in enumerate(_B))
    K.append(rhs(s, t + hs, yn))
    e = hs * sum(c * K[i] for i, c in enumerate(_E))
    err = math.sqrt(np.mean((e / (atol + rtol * np.maximum(np.abs(y), np.abs(yn)))) ** 2))
    return yn, K, err


def dopri5(s, y0, t0, t_end, h=0.0, rtol=1e-6, atol=1e-9, max_steps=100_000,
           t_eval=None, record_every=1, dense=False, method="dopri5"):
    """Adaptive Dormand–Prince 5(4) (or ``method="dop853"``), the kernel's algorithm:
    returns (t, Y, status), plus the dense rows [(t_old, t_new, h, C)] if ``dense``.

    status: "ok", "underflow", "max_steps" or "nonfinite".
    """
    d8 = method == "dop853"
    expo, fmax, fmin = (-1.0 / 8.0, 6.0, 0.333) if d8 else (-0.2, 5.0, 0.2)
    y = np.array(y0, dtype=float)
    t = t0
    ts, ys, rows = [], [], []

    def out(status):
        res = (np.array(ts), np.array(ys), status)
        return res + (rows,) if dense else res

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
        return out("ok")
    K0 = rhs(s, t, y)
    if not np.all(np.isfinite(K0)):
        return out("nonfinite")
    h = h if h > 0 else _initial_step(s, t, y, K0, rtol, atol, t_end - t0,
                                      8 if d8 else 5)
    h_first = h                    # the step floor's scale near t = 0 (docs/integrators.md §5)
    attempts = acc = 0
    last_bad = rejected = False
    while t < t_end:
        target = t_eval[ie] if (t_eval and ie < len(t_eval)) else t_end
        hmin = 10.0 * np.finfo(float).eps * max(abs(t), h_first)
        if not (h >= hmin) or t + 0.5 * h == t:
            return out("nonfinite" if last_bad else "underflow")
        if attempts >= max_steps:
            return out("max_steps")
        attempts += 1
        landed = t + 1.01 * h >= target
        hs = target - t if landed else h
        yn, K, err = _trial(s, method, t, y, hs, K0, rtol, atol)
        if not math.isfinite(err):
            last_bad = not np.all(np.isfinite(yn))
            rejected = True
            h = 0.2 * hs
            continue
        last_bad = False
        if err <= 1.0:
            fac = fmax if err == 0.0 else min(fmax, max(fmin, 0.9 * err ** expo))
            if d8 and rejected:
                fac = min(fac, 1.0)
            rejected = False
            t_old = t
            t = target if landed else t + hs
            if dense:
                C = _dense_dop853(s, t_old, y, yn, hs, K) if d8 else _dense_dopri5(
                    y, yn, hs, K)
                rows.append((t_old, t, hs, C))
            y = yn
            K0 = K[-1]
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
            rejected = True
            h = hs * max(fmin, 0.9 * err ** expo)
    return out("ok")


def dop853(s, y0, t0, t_end, h=0.0, rtol=1e-6, atol=1e-9, max_steps=100_000, t_eval=None,
           record_every=1, dense=False):
    """Hairer's DOP853 (8th order, 5th/3rd-order error estimate), the kernel's algorithm."""
    return dopri5(s, y0, t0, t_end, h, rtol, atol, max_steps, t_eval, record_every, dense,
                  method="dop853")
