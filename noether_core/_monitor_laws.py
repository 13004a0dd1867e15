"""The host side of :class:`noether_core.torch.NoetherMonitor` (NumPy only, no torch).

The monitor's hooks compute, on the parameters' device, ten inner products per tracked row
and per optimizer step (the ``STAT_*`` columns below) and move them to the host in batches.
This module turns them, one step at a time and vectorised over rows, into everything the
report holds: the chord, the gradient correlation, the relative residual of the exact
per-step balance identity of the optimizer that made the step (docs/monitor.md §3:
B.4 heavy-ball SGD, B.6 Nesterov, B.7 Adam/AdamW, B.8 RMSprop), the Eq. 17 recursions,
the thinned records and the cumulative sums behind ``MonitorReport.equilibrium``.

Everything is a deterministic function of the per-step statistics and hyper-parameters in
the order the steps were made, so a run resumed from :meth:`_Recorder.state` gives bitwise
the numbers of an uninterrupted one whatever the batch boundaries were.
"""
from __future__ import annotations

import numpy as np

from . import theory as _th

# -- per-step statistics of one row (columns of the device-side batch) ----------------------
#: a_n = |q_n|², |g_n|², ⟨g_n, q_n⟩, ⟨Δ_n, g_n⟩, D_{n+1} = |Δ_{n+1}|², a_{n+1},
#: ⟨Δ_{n+1}, g_n⟩, ⟨g_n, g_{n−1}⟩, ⟨q_n, U_n⟩, |U_n|² (U: the adaptive rules' update),
#: and the gradient statistics of theory.GradStats (docs/monitor.md §4): update_sq |u_n|²
#: (SGD |b_{n+1}|², Nesterov |w_n|², Adam/AdamW |P m̂|², RMSprop |P g|², all of the
#: gradients alone), ⟨q_n, P g_n⟩, ⟨q_n², P⟩ (P the preconditioner), Nesterov's cross
#: term ⟨w_{n−1}, b_n⟩
STATS = ("a", "gg", "gq", "dg", "D", "a1", "e", "gl", "uq", "uu", "ug", "pm", "pq", "cr")
(S_A, S_GG, S_GQ, S_DG, S_D, S_A1, S_E, S_GL, S_UQ, S_UU, S_UG, S_PM, S_PQ, S_CR) = \
    range(len(STATS))

# -- hyper-parameters of one row at one step (columns of the host-side table) ---------------
#: lr η_n, momentum β (β₁ for Adam, RMSprop's momentum), dampening τ, weight decay k
#: (λ for AdamW), sign s (−1 with maximize), rule code, first step of SGD's buffer
HYPER = ("lr", "momentum", "dampening", "weight_decay", "sign", "rule", "first", "beta2",
         "eps")
(H_LR, H_BETA, H_TAU, H_K, H_S, H_RULE, H_FIRST, H_BETA2, H_EPS) = range(len(HYPER))

#: the identities the monitor knows, by code (H_RULE); "other" has none (NaN residual)
RULES = ("other", "sgd", "nesterov", "adam", "adamw", "rmsprop")
R_OTHER, R_SGD, R_NEST, R_ADAM, R_ADAMW, R_RMS = range(len(RULES))
#: the equation of docs/monitor.md §3 each rule's residual checks
EQUATION = {"sgd": "B.4", "nesterov": "B.6", "adam": "B.7", "adamw": "B.7",
            "rmsprop": "B.8", "other": "none"}

#: |q|² predictions: Eq. 17 per assumption and its measured form (heavy ball), and
#: "schedule", theory.rule_norm_schedule's recursion run online (every rule)
PREDICTIONS = _th.ASSUMPTIONS + ("measured", "schedule")
#: cumulative sums kept per row (every step counted, record_every or not): chord², its
#: count, |g|², ⟨g_n, g_{n−1}⟩, their count; theory.GradStats' update_sq, metric,
#: precond and their count, Nesterov's cross; the schedule's predicted chord², its count
CUM = ("chord2", "n_chord", "gg", "gl", "n", "update_sq", "metric", "precond", "n_ad",
       "cross", "sched2", "n_sched")
(C_CH2, C_NCH, C_GG, C_GL, C_N, C_UG, C_PM, C_PQ, C_NAD, C_CR, C_SC2, C_NSC) = \
    range(len(CUM))
#: recorded fields (rows: recorded steps)
FIELDS = ("a", "gg", "gq", "D", "chord", "corr", "res", "cos", "uq", "uu")


def _zoh(rate, eta):
    """∫_0^η e^{−rate·s} ds elementwise (theory._zoh_weight for arrays)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rate > 0.0, -np.expm1(-rate * eta) / np.where(rate > 0, rate, 1.0),
                        eta)


def balance_residual(st, hp, prev):
    """Relative residual of the exact per-step identity of each row's rule (docs §3).

    Parameters
    ----------
    st : (..., R, len(STATS)) array
        Statistics (one row per step and tracked row).
    hp : (..., R, len(HYPER)) array
        Hyper-parameters of the same steps.
    prev : dict of (..., R) arrays
        The previous step's ``a``, ``D``, ``lr``, ``beta``, ``k``, ``s``, ``gq``, ``e``,
        ``rule`` and ``known`` (whether that step was processed for the row).

    Returns
    -------
    (..., R) array
        |LHS − RHS| / (sum of the absolute values of every term), NaN where no identity
        applies (rule "other", a buffer older than the monitor, mixed hyper-parameters).
    """
    a, gq, D, a1, uq, uu = (st[..., i] for i in (S_A, S_GQ, S_D, S_A1, S_UQ, S_UU))
    lr, beta, tau, k, s, code = (hp[..., i] for i in (H_LR, H_BETA, H_TAU, H_K, H_S,
                                                       H_RULE))
    first = hp[..., H_FIRST] != 0
    res = np.full(a.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # heavy ball and Nesterov (B.4, B.6): the buffer eliminated through Δ_n
        hb = (code == R_SGD) | (code == R_NEST)
        nest = code == R_NEST
        cont = ~first & prev["known"] & (prev["rule"] == code)
        ok = hb & (first | cont)
        if ok.any():
            c = np.where(first, 1.0, 1.0 - tau)
            bp = np.where(first, 0.0, np.where(
                nest, beta * beta * lr / (prev["beta"] * prev["lr"]), beta * lr / prev["lr"]))
            Dn = np.where(first, 0.0, prev["D"])
            ap = np.where(first, a, prev["a"])
            qd = k * a + s * gq                                   # ⟨q_n, d_n⟩
            lhs1, lhs2 = a1 - a, bp * (a - ap)
            t_kin = (D, bp * Dn)
            t_force = np.where(nest, -2.0 * lr * (1.0 + beta * c) * qd, -2.0 * lr * c * qd)
            # Nesterov's memory term 2η β²/β_{n−1} ⟨q_n, d_{n−1}⟩ (0 on the first step)
            qd_prev = prev["s"] * (prev["gq"] + prev["e"]) + \
                prev["k"] * (a + prev["a"] - prev["D"]) / 2.0
            t_mem = np.where(nest & ~first,
                             2.0 * lr * beta * beta / prev["beta"] * qd_prev, 0.0)
            rhs = t_kin[0] + t_kin[1] + t_force + t_mem
            scale = np.abs(a1) + np.abs(a) + np.abs(bp) * (np.abs(a) + np.abs(ap)) \
                + np.abs(t_kin[0]) + np.abs(t_kin[1]) + np.abs(t_force) + np.abs(t_mem)
            r = np.abs(lhs1 - lhs2 - rhs) / scale
            res = np.where(ok, r, res)
        # Adam, AdamW, RMSprop (B.7, B.8): q_{n+1} = (1 − ηλ) q_n − U_n
        ad = (code == R_ADAM) | (code == R_ADAMW) | (code == R_RMS)
        if ad.any():
            shrink = np.where(code == R_ADAMW, 1.0 - lr * k, 1.0)
            t1, t2, t3 = shrink * shrink * a, -2.0 * shrink * uq, uu
            r = np.abs(a1 - t1 - t2 - t3) / (np.abs(a1) + np.abs(t1) + np.abs(t2)
                                              + np.abs(t3))
            res = np.where(ad, r, res)
    return res


def ar1_gain(corr, beta):
    """Buffer gain κ = (1 + βC)/((1 − βC)(1 − β²)) of a gradient autocorrelation
    C(l) = C^l (lag-one correlation C; docs/monitor.md §4): 1/(1−β)² at C = 1,
    1/(1−β²) at C = 0, 1/(1+β)² at C = −1 (theory.buffer_gain's three cases)."""
    return (1.0 + beta * corr) / ((1.0 - beta * corr) * (1.0 - beta * beta))


def regime_of(corr, beta):
    """The named assumption nearest the AR(1) gain of lag-one correlation ``corr``; at
    β = 0 the assumptions coincide and the nearest correlation (+1, 0, −1) names it."""
    if not np.isfinite(corr):
        return "undetermined"
    c = float(np.clip(corr, -1.0, 1.0))
    if 0.0 < beta < 1.0 and abs(c) < 1.0:
        return _th.nearest_assumption(float(ar1_gain(c, beta)), float(beta))
    return "coherent" if c > 0.5 else ("alternating" if c < -0.5 else "uncorrelated")


def predict_equilibrium(rule, hyper, stats):
    """The theory's steady state per row: the one place rules meet noether_core.theory
    (docs/monitor.md §4).

    Parameters
    ----------
    rule : str
        One of :data:`RULES`.
    hyper : dict of (B,) arrays
        ``lr``, ``momentum`` (β, β₁, RMSprop's momentum), ``dampening``,
        ``weight_decay``, ``beta2`` (β₂, or RMSprop's α), ``eps`` of the rows.
    stats : dict of (B,) arrays
        Window means of the fields of ``theory.GradStats``: ``update_sq``, ``cross``
        (Nesterov), ``metric``, ``precond`` (adaptive rules).  Never the weights' motion.

    Returns
    -------
    angular_update, norm_sq : (B,) arrays
        ``theory.equilibrium(rule, ..., grad_stats=GradStats(...))``'s steady chord and
        |q|²; NaN where the theory has no form (rule "other", hyper-parameters it
        refuses, rows without statistics).
    regimes : list of str
        The regime of each call (one per group of rows with equal hyper-parameters).
    """
    B = len(np.asarray(hyper["lr"]))
    chord, norm, regimes = np.full(B, np.nan), np.full(B, np.nan), []
    if rule not in _th.RULES:
        return chord, norm, regimes
    H = np.stack([np.asarray(hyper[x], dtype=float) for x in
                  ("lr", "momentum", "dampening", "weight_decay", "beta2", "eps")], axis=1)
    need = {"update_sq": True, "cross": rule == "nesterov",
            "metric": rule in ("adam", "adamw", "rmsprop"),
            "precond": rule in ("adam", "rmsprop")}
    ok = np.all(np.isfinite(H[:, :4]), axis=1)
    for f, used in need.items():
        if used:
            ok &= np.isfinite(np.asarray(stats[f], dtype=float))
    rows = np.flatnonzero(ok)
    if rows.size == 0:
        return chord, norm, regimes
    # rows of one param group share every hyper-parameter (NaN, unused ones too)
    _, group = np.unique(np.nan_to_num(H[rows], nan=-1.0), axis=0, return_inverse=True)
    for gi in np.unique(group):
        idx = rows[group.reshape(-1) == gi]
        lr, beta, tau, k, b2, eps = (float(v) for v in H[idx[0]])
        gs = _th.GradStats(rule, **{f: (np.asarray(stats[f], dtype=float)[idx] if used
                                        else None) for f, used in need.items()})
        kw = {"lr": lr, "weight_decay": k}
        if rule in ("sgd", "nesterov"):
            kw.update(momentum=beta, dampening=tau)
        elif rule == "rmsprop":
            kw.update(alpha=b2, momentum=beta, eps=eps)
        else:
            kw.update(betas=(beta, b2), eps=eps)
        try:
            eq = _th.equilibrium(rule, grad_stats=gs, **kw)
        except (ValueError, TypeError):
            continue                  # outside the theory's domain: NaN
        chord[idx] = eq.angular_update
        norm[idx] = np.nan if eq.norm_sq is None else eq.norm_sq
        regimes.append(eq.regime)
    return chord, norm, regimes


def _bias_corrections(beta, n):
    """Adam's first-moment bias corrections 1 − β^(n+1) and 1 − β^n (docs/theory.md
    (9.8)), as −expm1(m log β); 1 where β = 0 (no moment)."""
    lb = np.log(np.where(beta > 0.0, beta, 0.5))
    return (np.where(beta > 0.0, -np.expm1((n + 1.0) * lb), 1.0),
            np.where(beta > 0.0, -np.expm1(n * lb), 1.0))


class _Recorder:
    """Per-step host processing of the monitor's statistics (one instance per monitor).

    Parameters
    ----------
    n_rows : int
        Tracked rows (all candidates, kept or not).
    record_every : int
        Initial record stride; doubled each time ``max_records`` is exceeded.
    max_records : int or None
        Bound on the recorded rows (older rows decimated: every other one dropped).
    """

    def __init__(self, n_rows, record_every, max_records):
        R = n_rows
        self.R, self.stride, self.max_records = R, int(record_every), max_records
        self.step = 0
        self.prev = {"a": np.full(R, np.nan), "D": np.zeros(R), "lr": np.full(R, np.nan),
                     "beta": np.full(R, np.nan), "k": np.zeros(R), "s": np.ones(R),
                     "gq": np.zeros(R), "e": np.zeros(R), "rule": np.full(R, -1.0),
                     "known": np.zeros(R, dtype=bool)}
        self.r4 = {a: np.full(R, np.nan) for a in _th.ASSUMPTIONS}
        self.am = np.full(R, np.nan)
        self.pred_after = {a: np.full(R, np.nan) for a in PREDICTIONS}
        self.cum = np.zeros((R, len(CUM)))
        self.last_a1 = np.full(R, np.nan)
        self.sch = {key: np.full(R, np.nan) for key in self._SCH}
        self.last_hyper = np.full((R, len(HYPER)), np.nan)
        self.rec = {f: [] for f in FIELDS}
        self.rec_pred = {a: [] for a in PREDICTIONS}
        self.rec_cum, self.rec_steps = [], []
        # the callback window (log_every steps): sums of chord², counts, worst residual
        self.win = np.zeros((R, 4))
        self.win_res = np.full(R, np.nan)

    # -- a batch of steps ----------------------------------------------------------------
    def process(self, st, hp):
        """Advance by one optimizer step: ``st`` (R, STATS), ``hp`` (R, HYPER)."""
        self.process_batch(st[None], hp[None])

    def process_batch(self, st, hp):
        """Advance by T optimizer steps: ``st`` (T, R, STATS), ``hp`` (T, R, HYPER).

        Vectorised over the steps where the arithmetic is elementwise; the recursions
        (Eq. 17, the cumulative sums) run step after step, so the results are bitwise
        those of T calls of :meth:`process`, whatever the batch boundaries."""
        T = st.shape[0]
        n0 = self.step
        a, gg, gq, dg, D, a1 = (st[..., i] for i in (S_A, S_GG, S_GQ, S_DG, S_D, S_A1))
        known = np.isfinite(a) & np.isfinite(D)
        cur = {"a": a, "D": D, "lr": hp[..., H_LR], "beta": hp[..., H_BETA],
               "k": hp[..., H_K], "s": hp[..., H_S], "gq": gq, "e": st[..., S_E],
               "rule": hp[..., H_RULE], "known": known}
        prev = {k: np.concatenate([self.prev[k][None], v[:-1]]) for k, v in cur.items()}
        with np.errstate(divide="ignore", invalid="ignore"):
            r0, r1 = np.sqrt(a), np.sqrt(a1)
            chord = np.sqrt(np.maximum(D - (r1 - r0) ** 2, 0.0) / (r0 * r1))
            corr = dg / np.sqrt(prev["D"] * gg)
            cos = np.abs(gq) / np.sqrt(gg * a)
        res = balance_residual(st, hp, prev)
        # cumulative sums, every step: the same additions, in the same order, as a loop
        c2 = chord * chord
        fin = np.isfinite(c2)
        g_ok = np.isfinite(st[..., S_GL]) & np.isfinite(gg)
        with np.errstate(divide="ignore", invalid="ignore"):
            metric, precond = st[..., S_PM] / r0, st[..., S_PQ] / a
            # AdamW's u is its own update over η (the device leaves |u|² to the host)
            ug = np.where(hp[..., H_RULE] == R_ADAMW,
                          st[..., S_UU] / (hp[..., H_LR] * hp[..., H_LR]), st[..., S_UG])
            metric = np.where(hp[..., H_RULE] >= R_ADAM, metric, 0.0)    # SGD: ⟨q, g⟩ = 0
            precond = np.where(hp[..., H_RULE] >= R_ADAM, precond, 0.0)
        ad = np.isin(hp[..., H_RULE], (R_SGD, R_NEST, R_ADAM, R_ADAMW, R_RMS)) \
            & np.isfinite(metric) & np.isfinite(precond) & np.isfinite(ug) \
            & np.isfinite(st[..., S_CR])
        # theory.rule_norm_schedule's recursion, step after step (docs/monitor.md §5)
        sch_a, sch_c2 = self._schedule(st, hp, ug, metric, precond)
        s_ok = np.isfinite(sch_c2)
        inc = np.stack([np.where(fin, c2, 0.0), fin, np.where(g_ok, gg, 0.0),
                        np.where(g_ok, st[..., S_GL], 0.0), g_ok,
                        np.where(ad, ug, 0.0), np.where(ad, metric, 0.0),
                        np.where(ad, precond, 0.0), ad, np.where(ad, st[..., S_CR], 0.0),
                        np.where(s_ok, sch_c2, 0.0), s_ok], axis=-1)
        self.win[:, 0] += inc[:, :, C_CH2].sum(0)
        self.win[:, 1] += fin.sum(0)
        self.win[:, 2] += inc[:, :, C_SC2].sum(0)
        self.win[:, 3] += s_ok.sum(0)
        inc[0] += self.cum
        cums = np.cumsum(inc, axis=0)
        cum_before = np.concatenate([self.cum[None], cums[:-1]])
        self.cum = cums[-1].copy()
        self.win_res = np.fmax(self.win_res, np.fmax.reduce(res, axis=0))
        fields = (a, gg, gq, D, chord, corr, res, cos, st[..., S_UQ], st[..., S_UU])
        # Eq. 17 recursions, step after step (the three r⁴ and the measured a stacked:
        # Y ← Λ Y + I), and the records where a step is recorded
        lam, incr, lam2, incr2 = self._pred_coefficients(st, hp, prev)
        hb = (hp[..., H_RULE] == R_SGD) & (hp[..., H_BETA] < 1.0)
        names = list(self.r4)
        Lam = np.concatenate([np.broadcast_to(lam[:, None], (T, len(names)) + lam.shape[1:]),
                              lam2[:, None]], axis=1)                       # (T, 4, R)
        Inc = np.concatenate([incr.transpose(1, 0, 2), incr2[:, None]], axis=1)
        Y = np.stack([self.r4[x] for x in names] + [self.am])              # (4, R)
        check_new = bool((np.isnan(self.am) & hb.any(axis=0)).any())
        fields = np.stack(fields, axis=1)                                   # (T, F, R)
        if self.max_records is None:
            # no decimation within the batch (the stride stays): only the recursion runs
            # step after step; the records are taken afterwards, vectorised (the same
            # values: elementwise sqrt is correctly rounded)
            Ys = np.empty((T,) + Y.shape)
            for t in range(T):
                if check_new:
                    new = np.isnan(Y[-1]) & hb[t]
                    if new.any():
                        Y[:-1, new] = a[t][new] * a[t][new]
                        Y[-1, new] = a[t][new]
                Ys[t] = Y
                Y = Lam[t] * Y + Inc[t]
            ts = np.flatnonzero((n0 + np.arange(T)) % self.stride == 0)
            if ts.size:
                rows = fields[ts]                                           # a copy
                for i, f in enumerate(FIELDS):
                    self.rec[f].extend(rows[:, i])
                pred = np.concatenate([np.sqrt(Ys[ts, :-1]), Ys[ts, -1:],
                                       sch_a[ts][:, None]], axis=1)
                for i, name in enumerate(PREDICTIONS):
                    self.rec_pred[name].extend(pred[:, i])
                self.rec_cum.extend(cum_before[ts])
                self.rec_steps.extend(int(n0 + t) for t in ts)
        for t in range(T if self.max_records is not None else 0):
            if check_new:
                new = np.isnan(Y[-1]) & hb[t]
                if new.any():
                    Y[:-1, new] = a[t][new] * a[t][new]
                    Y[-1, new] = a[t][new]
            n = n0 + t
            if n % self.stride == 0:
                row = fields[t].copy()
                for i, f in enumerate(FIELDS):
                    self.rec[f].append(row[i])
                pred = np.concatenate([np.sqrt(Y[:-1]), Y[-1:], sch_a[t][None]])
                for i, name in enumerate(PREDICTIONS):
                    self.rec_pred[name].append(pred[i])
                self.rec_cum.append(cum_before[t])
                self.rec_steps.append(n)
                if self.max_records is not None and len(self.rec_steps) > self.max_records:
                    self._decimate()
            Y = Lam[t] * Y + Inc[t]
        for i, name in enumerate(names):
            self.r4[name] = Y[i].copy()
        self.am = Y[-1].copy()
        for k, v in cur.items():
            self.prev[k] = v[-1].copy()
        self.last_a1 = a1[-1].copy()
        self.last_hyper = hp[-1].copy()
        self.pred_after = {name: self._pred_state(name) for name in PREDICTIONS}
        self.step = n0 + T

    def _decimate(self):
        """Keep the recorded rows whose step is a multiple of twice the stride."""
        self.stride *= 2
        keep = [i for i, s in enumerate(self.rec_steps) if s % self.stride == 0]
        for d in (self.rec, self.rec_pred):
            for key in d:
                d[key] = [d[key][i] for i in keep]
        self.rec_cum = [self.rec_cum[i] for i in keep]
        self.rec_steps = [self.rec_steps[i] for i in keep]

    def _pred_state(self, name):
        if name == "schedule":
            return self.sch["a"].copy()
        return np.sqrt(self.r4[name]) if name in self.r4 else self.am.copy()

    #: per-row state of the online rule_norm_schedule: predicted a, cross terms x, y,
    #: SGD's buffer gain s and |v|², the previous U and p, steps since the start
    _SCH = ("a", "x", "y", "s", "V", "U", "p", "n")

    def _schedule(self, st, hp, ug, metric, precond):
        """theory.rule_norm_schedule (docs/theory.md §9, (9.2)–(9.11)) advanced one step
        at a time per row, driven by the gradient statistics only and started from the
        measured |q|² of the first step the monitor sees (its r0); the hyper-parameters
        of each step (schedules allowed).  Returns the predicted a_n *before* each step
        (T, R) and the predicted chord² of each step (T, R); NaN for rows without a
        theory (rule "other", amsgrad-free details aside) or once the recursion leaves
        a > 0.  Adam/AdamW: P taken constant in the cross term (GradStats.shift not
        measured)."""
        T = st.shape[0]
        out_a, out_c2 = np.full((T, self.R), np.nan), np.full((T, self.R), np.nan)
        S = self.sch
        code, eta, beta, tau, k = (hp[..., i] for i in (H_RULE, H_LR, H_BETA, H_TAU, H_K))
        Us, Cs = ug, st[..., S_CR]
        live_all = np.isin(code, (R_SGD, R_NEST, R_ADAM, R_ADAMW, R_RMS)) & \
            np.isfinite(Us) & np.isfinite(Cs) & np.isfinite(metric) & np.isfinite(precond)
        present = [int(c) for c in np.unique(code[live_all])]
        if not present:
            return out_a, out_c2
        if self.fast_schedule and len(present) == 1 and live_all.all():
            new = np.isnan(S["a"])           # started as the general loop's t = 0 does
            if new.any():
                S["a"][new] = st[0, new, S_A]
                for key in self._SCH[1:]:
                    S[key][new] = 0.0
            fast = self._schedule_fast(present[0], S, eta, beta, tau, k, Us, Cs, metric,
                                       precond)
            if fast is not None:
                return fast
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for t in range(T):
                live = live_all[t]
                new = live & np.isnan(S["a"])
                if new.any():
                    S["a"][new] = st[t, new, S_A]
                    for key in self._SCH[1:]:
                        S[key][new] = 0.0
                st_t = self._schedule_step(present, S, code[t], eta[t], beta[t], tau[t],
                                           k[t], Us[t], Cs[t], metric[t], precond[t])
                c2 = st_t.pop("c2")
                ok = live & (st_t["a"] > 0.0)
                if ok.all():                    # every row live and a > 0: no masking
                    out_a[t] = S["a"]
                    out_c2[t] = c2
                    S.update(st_t)
                    continue
                out_a[t] = np.where(live, S["a"], np.nan)
                out_c2[t] = np.where(ok, c2, np.nan)
                a_old = S["a"]
                for key, v in st_t.items():
                    S[key] = np.where(ok, v, S[key])
                S["a"] = np.where(ok, st_t["a"], np.where(live, np.nan, a_old))
        return out_a, out_c2

    #: take :meth:`_schedule_fast` when it applies (False: always the general loop;
    #: the tests compare the two bitwise)
    fast_schedule = True

    def _schedule_fast(self, c, S, eta, beta, tau, k, U, C, M, p):
        """:meth:`_schedule`'s recursion for a batch in which every row is live at every
        step and follows one rule ``c``, with the rows' state already started: the same
        floating-point operations on every element, in the same order, as
        :meth:`_schedule_step` (so bitwise its results), but everything that does not
        depend on the recursion's state (the step counts n, the bias corrections, the
        products of hyper-parameters, the previous step's U and p) computed for all
        steps at once, and the chord after the loop; the loop keeps ~10 operations on
        (R,) arrays per step.  Returns None (nothing changed) when the recursion leaves
        a > 0 in the batch: the general loop then masks step by step."""
        T, R = eta.shape
        a, x, y, s, Vp, Up0, pp0, n0 = (S[key] for key in self._SCH)
        a_b = np.empty((T, R))                  # a before each step
        xs_t = np.empty((T, R))
        n = n0 + np.arange(T, dtype=float)[:, None]        # n + 1.0 step after step
        f = (n == 0.0).astype(float)
        nf = 1.0 - f
        e2 = eta * eta
        eta2 = 2.0 * eta
        Up = np.concatenate([Up0[None], U[:-1]])            # the state U, p of each step
        pp = np.concatenate([pp0[None], p[:-1]])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if c == R_SGD:                                   # (9.2), (9.3)
                s_t = np.empty((T, R))
                for t in range(T):                          # the buffer gain alone
                    s = f[t] + nf[t] * (beta[t] * s + (1.0 - tau[t]))
                    s_t[t] = s
                c1 = (1.0 - tau * nf) * k
                c2 = nf * beta
                k2 = 2.0 * k
                c3 = k2 * s_t
                c4 = (k * s_t) ** 2
                V_t = np.empty((T, R))
                for t in range(T):
                    a_b[t] = a
                    x = c1[t] * a + c2[t] * (x - eta[t] * Vp)
                    Vp = U[t] + c3[t] * x - c4[t] * a
                    a = a - eta2[t] * x + e2[t] * Vp
                    V_t[t] = Vp
                D = e2 * V_t
                fin = {"x": x, "s": s, "V": Vp}
            elif c == R_NEST:                                # (9.5)
                c2 = nf * beta
                etaC = eta * C
                e2U = e2 * U
                for t in range(T):
                    a_b[t] = a
                    ka = k[t] * a
                    y = ka + c2[t] * (y - etaC[t])
                    x = ka + beta[t] * y
                    a = a - eta2[t] * x + e2U[t]
                D = e2 * U
                fin = {"x": x, "y": y}
            else:
                if c == R_RMS:                               # (9.11)
                    lam = k * p
                    a_coef = (1.0 - eta * lam) ** 2
                    for t in range(T):
                        a_b[t] = a
                        x = np.sqrt(a) * M[t]
                        xs_t[t] = x
                        a = a_coef[t] * a - eta2[t] * x + e2[t] * U[t]
                else:                                        # (9.8), (9.10)
                    bc, bcp = _bias_corrections(beta, n)
                    if c == R_ADAMW:
                        shrink, lam = 1.0 - eta * k, k
                        a_coef = shrink * shrink
                        x_coef = eta2 * shrink
                    else:
                        shrink, lam = 1.0 - eta * k * pp, k * p
                        a_coef = (1.0 - eta * lam) ** 2
                        x_coef = eta2
                    ca = nf * beta * (bcp / bc)
                    cb = (1.0 - beta) / bc
                    etaUp = eta * Up
                    e2U = e2 * U
                    for t in range(T):
                        a_b[t] = a
                        x = ca[t] * (shrink[t] * x - etaUp[t]) + cb[t] * np.sqrt(a) * M[t]
                        xs_t[t] = x
                        a = a_coef[t] * a - x_coef[t] * x + e2U[t]
                D = e2 * (lam * lam * a_b + 2.0 * lam * xs_t + U)
                fin = {"x": x}
            a_a = np.concatenate([a_b[1:], a[None]])          # a after each step
            if not (a_a > 0.0).all():
                return None                   # the general loop masks the rows
            r0, r1 = np.sqrt(a_b), np.sqrt(a_a)
            c2 = np.maximum((D - (r1 - r0) ** 2) / (r0 * r1), 0.0)
        S.update(fin)
        S["a"], S["U"], S["p"], S["n"] = a, U[-1].copy(), p[-1].copy(), n[-1] + 1.0
        return a_b, c2

    def _pred_coefficients(self, st, hp, prev):
        """Per step and row: r⁴ ← λ r⁴ + incr (per assumption) and a ← λ' a + incr' of
        Eq. 17's EMA forms (theory.norm_schedule, r2_continuous; docs/monitor.md §5);
        NaN on rows that are not heavy-ball SGD (Eq. 17 is SGD's)."""
        a, gg, D = st[..., S_A], st[..., S_GG], st[..., S_D]
        lr, beta, k = hp[..., H_LR], hp[..., H_BETA], hp[..., H_K]
        hb = (hp[..., H_RULE] == R_SGD) & (beta < 1.0)
        Dn = np.where(hp[..., H_FIRST] != 0, 0.0, prev["D"])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            gh2 = gg * a                        # |ĝ|² = |g|²|q|² (scale invariance)
            rate = 4.0 * k / (1.0 - beta)
            lam = np.where(hb, np.exp(-rate * lr), np.nan)
            w = _zoh(rate, lr)
            incr = np.stack([np.where(hb, 2.0 * (1.0 + beta) * lr * _th._gain(beta, name)
                                      / (1.0 - beta) * w * gh2, np.nan)
                             for name in self.r4])
            rate2 = 2.0 * k / (1.0 - beta)
            lam2 = np.where(hb, np.exp(-rate2 * lr), np.nan)
            b2 = _zoh(rate2, lr) / ((1.0 - beta) * lr)
            incr2 = np.where(hb, b2 * (D + beta * Dn), np.nan)
        return lam, incr, lam2, incr2

    @staticmethod
    def _schedule_step(present, S, code, eta, beta, tau, k, U, C, M, p):
        """One step of every rule in ``present`` (rule codes) for all rows; each row's
        own rule picked with np.select only when several rules are present.  The first
        step of a row (n = 0: the buffers start empty) enters through 0/1 factors."""
        a, x, y, s, Vp, Up, pp, n = (S[key] for key in _Recorder._SCH)
        f = (n == 0.0).astype(float)
        nf = 1.0 - f
        e2 = eta * eta
        res = {}
        for c in present:
            if c == R_SGD:                                   # (9.2), (9.3)
                s_new = f + nf * (beta * s + (1.0 - tau))
                xs = (1.0 - tau * nf) * k * a + nf * beta * (x - eta * Vp)
                V = U + 2.0 * k * s_new * xs - (k * s_new) ** 2 * a
                res[c] = dict(x=xs, s=s_new, V=V, a=a - 2.0 * eta * xs + e2 * V, D=e2 * V)
            elif c == R_NEST:                                # (9.5)
                y_new = k * a + nf * beta * (y - eta * C)
                xs = k * a + beta * y_new
                res[c] = dict(x=xs, y=y_new, a=a - 2.0 * eta * xs + e2 * U, D=e2 * U)
            elif c == R_RMS:                                 # (9.11)
                xs = np.sqrt(a) * M
                lam = k * p
                res[c] = dict(x=xs, a=(1.0 - eta * lam) ** 2 * a - 2.0 * eta * xs + e2 * U,
                              D=e2 * (lam * lam * a + 2.0 * lam * xs + U))
            else:                                            # (9.8), (9.10)
                bc, bcp = _bias_corrections(beta, n)
                if c == R_ADAMW:
                    shrink, lam = 1.0 - eta * k, k
                else:
                    shrink, lam = 1.0 - eta * k * pp, k * p
                xs = nf * beta * (bcp / bc) * (shrink * x - eta * Up) + \
                    (1.0 - beta) / bc * np.sqrt(a) * M
                if c == R_ADAMW:
                    a_new = shrink * shrink * a - 2.0 * eta * shrink * xs + e2 * U
                else:
                    a_new = (1.0 - eta * lam) ** 2 * a - 2.0 * eta * xs + e2 * U
                res[c] = dict(x=xs, a=a_new, D=e2 * (lam * lam * a + 2.0 * lam * xs + U))
        if len(present) == 1:
            r = res[present[0]]
        else:
            conds = {c: code == c for c in present}
            r = {}
            for key, keep in (("x", x), ("y", y), ("s", s), ("V", Vp), ("a", a),
                              ("D", np.nan)):
                cs = [c for c in present if key in res[c]]
                r[key] = np.select([conds[c] for c in cs], [res[c][key] for c in cs], keep)
        out = {"x": r["x"], "y": r.get("y", y), "s": r.get("s", s), "V": r.get("V", Vp),
               "U": U, "p": p, "n": n + 1.0, "a": r["a"]}
        r0, r1 = np.sqrt(a), np.sqrt(r["a"])
        out["c2"] = np.maximum((r["D"] - (r1 - r0) ** 2) / (r0 * r1), 0.0)
        return out

    # -- the callback window -------------------------------------------------------------
    def take_window(self):
        """(RMS chord, worst residual) per row since the last call; resets the window."""
        with np.errstate(divide="ignore", invalid="ignore"):
            rms = np.sqrt(self.win[:, 0] / self.win[:, 1])
            self.win_sched = np.sqrt(self.win[:, 2] / self.win[:, 3])
        res = self.win_res.copy()
        self.win[:] = 0.0
        self.win_res[:] = np.nan
        return rms, res

    # -- checkpoints ---------------------------------------------------------------------
    _SCALARS = ("R", "stride", "max_records", "step")
    _ARRAYS = ("am", "cum", "last_a1", "last_hyper", "win", "win_res")

    def state(self):
        """Everything needed to continue bitwise: a dict of arrays, lists and scalars
        (copies)."""
        return {
            **{k: getattr(self, k) for k in self._SCALARS},
            **{k: getattr(self, k).copy() for k in self._ARRAYS},
            "prev": {k: v.copy() for k, v in self.prev.items()},
            "r4": {k: v.copy() for k, v in self.r4.items()},
            "sch": {k: v.copy() for k, v in self.sch.items()},
            "pred_after": {k: v.copy() for k, v in self.pred_after.items()},
            "rec": {k: np.array(v).reshape(len(v), self.R) for k, v in self.rec.items()},
            "rec_pred": {k: np.array(v).reshape(len(v), self.R)
                         for k, v in self.rec_pred.items()},
            "rec_cum": np.array(self.rec_cum).reshape(len(self.rec_cum), self.R, len(CUM)),
            "rec_steps": np.array(self.rec_steps, dtype=np.int64),
        }

    @classmethod
    def from_state(cls, s):
        self = cls.__new__(cls)
        for k in cls._SCALARS:
            setattr(self, k, s[k])
        for k in cls._ARRAYS:
            setattr(self, k, np.array(s[k], dtype=float))
        self.prev = {k: np.array(v) for k, v in s["prev"].items()}
        self.prev["known"] = self.prev["known"].astype(bool)
        self.r4 = {k: np.array(v, dtype=float) for k, v in s["r4"].items()}
        self.sch = {k: np.array(v, dtype=float) for k, v in s["sch"].items()}
        self.pred_after = {k: np.array(v, dtype=float) for k, v in s["pred_after"].items()}
        self.rec = {k: list(np.array(v, dtype=float)) for k, v in s["rec"].items()}
        self.rec_pred = {k: list(np.array(v, dtype=float)) for k, v in s["rec_pred"].items()}
        self.rec_cum = list(np.array(s["rec_cum"], dtype=float))
        self.rec_steps = [int(x) for x in np.asarray(s["rec_steps"])]
        return self
