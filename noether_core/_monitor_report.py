"""What :class:`noether_core.torch.NoetherMonitor` reports (NumPy only, no torch).

docs/monitor.md defines every field; the identities are in its §3, the equilibrium
prediction in its §4.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _monitor_laws as L
from . import theory as _th

PREDICTIONS = L.PREDICTIONS


@dataclass(frozen=True)
class Equilibrium:
    """Result of :meth:`MonitorReport.equilibrium`: the steady state per block.

    Every prediction comes from the hyper-parameters and the gradient statistics of
    ``theory.GradStats`` the monitor measured (docs/monitor.md §4), never from |Δ|, |q|
    or the chord (the schedule starts from the measured |q|² of the first step the
    monitor saw, its initial condition r0).

    Attributes
    ----------
    predicted_angular_update : (B,) array
        ``theory.equilibrium(rule, ..., grad_stats=<window means>).angular_update``:
        the steady chord |q̂_{n+1} − q̂_n| (docs/theory.md (9.4), (9.6), (9.9)–(9.11)),
        from the hyper-parameters of the window's last step.  It assumes the statistics
        are stationary over the norm's relaxation time (theory.md §9.6).  NaN where the
        theory has no form (rule "other", RMSprop with momentum or centered, …).
    measured_angular_update : (B,) array
        RMS of the chord over every step of the window (record_every notwithstanding).
    regime : str
        theory.equilibrium's regime ("exact" for SGD, "uncorrelated"/"coherent"/
        "alternating"/"correlated" for Nesterov, "rotational"/"metric-coupled" for the
        adaptive rules); several joined by "+" when groups differ; "undetermined"
        without a prediction.
    correlation : (B,) array
        Σ⟨g_n, g_{n−1}⟩ / Σ|g_n|² over the window: +1 coherent, 0 uncorrelated,
        −1 alternating.
    rule : str
        The identity / theory used (the report's :attr:`MonitorReport.rule`).
    first_step, last_step : int
        The steps n (of n → n+1) the window covers, inclusive.
    grad_stats : dict of (B,) arrays
        The window means: ``grad_norm2``, ``grad_lag1``, ``correlation`` and the fields
        of ``theory.GradStats`` — ``update_sq``, ``cross`` (Nesterov; 0 otherwise),
        ``metric``, ``precond`` (adaptive rules; 0 for SGD).
    scheduled_angular_update : (B,) array
        RMS over the window of the chord predicted by ``theory.rule_norm_schedule``'s
        recursion run online from the monitor's first step (time-resolved: follows the
        statistics while they drift; theory.md §9.6).
    predicted_norm_sq : (B,) array
        The steady |q|² of ``theory.equilibrium`` (units of q²).
    scheduled_norm_sq : (B,) array
        |q|² after the last step by the online ``rule_norm_schedule``.
    measured_norm_sq : (B,) array
        |q|² after the last step, measured.
    correlation_regime : str
        The named assumption the lag-one gradient correlation selects through the AR(1)
        buffer gain (B.9) (median over blocks), or "undetermined".
    """

    predicted_angular_update: np.ndarray
    measured_angular_update: np.ndarray
    regime: str
    correlation: np.ndarray
    rule: str
    first_step: int
    last_step: int
    grad_stats: dict = field(default_factory=dict)
    scheduled_angular_update: np.ndarray | None = None
    predicted_norm_sq: np.ndarray | None = None
    scheduled_norm_sq: np.ndarray | None = None
    measured_norm_sq: np.ndarray | None = None
    correlation_regime: str = "undetermined"

    def relative_error(self, which="steady") -> np.ndarray:
        """(predicted − measured)/measured per block; ``which`` = "steady" (the
        equilibrium's chord) or "schedule" (the time-resolved one)."""
        pred = {"steady": self.predicted_angular_update,
                "schedule": self.scheduled_angular_update}.get(which)
        if which not in ("steady", "schedule"):
            raise ValueError(f"which must be 'steady' or 'schedule', got {which!r}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return pred / self.measured_angular_update - 1.0


@dataclass
class MonitorReport:
    """Arrays recorded by :class:`~noether_core.torch.NoetherMonitor` (rows: recorded
    steps, columns: blocks).  docs/monitor.md §2 defines every field.

    Attributes
    ----------
    labels : list of str
        One per block, e.g. ``"features.0.weight[3]"`` (a BatchNorm-fed row),
        ``"fc1.weight+bias"`` (a LayerNorm-fed layer), ``"conv.weight+bias[g1]"`` (group 1
        of a GroupNorm), ``"lin.parametrizations.weight.original1[2]"`` (weight_norm).
    sources : list of str
        The kind behind each block: the normalisation layer's class name
        ("BatchNorm1d", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm2d", …),
        "weight_norm", or "unnormalised" (``params="all"``).
    rule : str
        The exact identity applied: "sgd" (heavy ball, dampening, any lr schedule; Eq.
        B.4), "nesterov" (B.6), "adam" (L2 decay; B.7), "adamw" (B.7), "rmsprop" (B.8),
        "other:<Optimizer>" (no identity: NaN residuals); "a+b" when groups differ.
    rules : list of str
        The rule per block.
    steps : (R,) int array
        Optimizer step n of each recorded row (the step n → n+1).
    norm2, grad_norm2, grad_dot_q : (R, B) arrays
        |q_n|², |g_n|², ⟨g_n, q_n⟩ (float64 of the parameters and of ``p.grad``).
    step_norm2 : (R, B) array
        |Δ_{n+1}|².
    angular_update : (R, B) array
        The chord |q̂_{n+1} − q̂_n| (dimensionless; ≈ the angle in radians).
    grad_correlation : (R, B) array
        ⟨Δ_n, g_n⟩/(|Δ_n||g_n|) (NaN at a block's first step).
    balance_residual : (R, B) array
        Relative residual of the exact identity of the rule (NaN where none applies).
    update_dot_q, update_norm2 : (R, B) arrays
        ⟨q_n, U_n⟩ and |U_n|² of the adaptive rules' update U (0 for SGD).
    predicted_norm2 : dict name -> (R+1, B) array
        |q_n|² predicted at the recorded steps and after the last one: Eq. 17 per
        assumption and its "measured" form (heavy-ball SGD rows; NaN for other rules),
        and "schedule", theory.rule_norm_schedule run online (every rule the theory
        covers; docs/monitor.md §5).
    final_norm2 : (B,) array
        |q|² after the last step.
    audit_score : (B,) array
        Worst scale cosine over the audit steps.
    scale_cosine : (R, B) array
        |⟨g_n, q_n⟩|/(|g_n||q_n|) at every recorded step.
    hyper : dict
        lr, momentum (β, β₁), dampening, weight_decay, beta2 (β₂, RMSprop's α), eps of
        the last step, per block.
    cumulative : (R, B, 12) array
        Sums over the steps before each recorded step n (0..n−1, every step counted) of
        chord², its count, |g|², ⟨g_n, g_{n−1}⟩, their count, theory.GradStats'
        update_sq, metric ⟨q̂, P g⟩, precond ⟨q̂², P⟩, their count, Nesterov's cross, the
        schedule's chord² and its count (``_monitor_laws.CUM``; docs/monitor.md §4).
    final_cumulative : (B, 12) array
        The same after the last step.
    last_step : int
        The last step n processed (−1 before any).
    record_stride : int
        The stride between recorded rows now (record_every, doubled at each decimation).
    values_available : bool
        False when the parameters live on a device whose values cannot be read (the
        ``meta`` device): every number is then NaN.
    error : str or None
        A failure caught inside the optimizer's hooks (recording stopped there).
    unexplained, rejected : list of (label, score)
        Rows the audit finds scale-symmetric without a normalisation behind them;
        candidates the audit rejects.
    overhead_seconds : float
        Time spent in the monitor's hooks.
    """

    labels: list
    sources: list
    rule: str
    rules: list
    steps: np.ndarray
    norm2: np.ndarray
    grad_norm2: np.ndarray
    grad_dot_q: np.ndarray
    step_norm2: np.ndarray
    angular_update: np.ndarray
    grad_correlation: np.ndarray
    balance_residual: np.ndarray
    update_dot_q: np.ndarray
    update_norm2: np.ndarray
    predicted_norm2: dict
    final_norm2: np.ndarray
    audit_score: np.ndarray
    scale_cosine: np.ndarray
    hyper: dict
    cumulative: np.ndarray
    final_cumulative: np.ndarray
    last_step: int = -1
    record_stride: int = 1
    values_available: bool = True
    error: str | None = None
    unexplained: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    overhead_seconds: float = 0.0

    # -- |q|² ------------------------------------------------------------------------------
    def prediction_error(self, assumption) -> np.ndarray:
        """Relative error |predicted − measured|/measured of |q|² after the last step."""
        return np.abs(self.predicted_norm2[assumption][-1] - self.final_norm2) / \
            self.final_norm2

    def measured_gain(self, window=0.5) -> np.ndarray:
        """Median buffer gain κ = |Δ_{n+1}|²/(η²|g_n|²) over the last ``window`` fraction
        of the recorded steps, per block (compare noether_core.theory.buffer_gain)."""
        R = len(self.steps)
        lo = min(int(R * (1 - window)), max(R - 1, 0))
        lr = self.hyper["lr"]
        with np.errstate(divide="ignore", invalid="ignore"):
            k = self.step_norm2[lo:] / (lr * lr * self.grad_norm2[lo:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN column
            return np.nanmedian(np.where(np.isfinite(k), k, np.nan), axis=0)

    def regime(self, window=0.5) -> str:
        """The named assumption nearest the measured buffer gain (median over blocks),
        or "undetermined" without momentum (heavy-ball SGD's reading of the run)."""
        if not len(self.labels):
            return "undetermined"
        beta = float(np.median(self.hyper["momentum"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            g = float(np.nanmedian(self.measured_gain(window)))
        if not (0.0 < beta < 1.0) or not np.isfinite(g) or g <= 0:
            return "undetermined"
        return _th.nearest_assumption(g, beta)

    # -- angular update ----------------------------------------------------------------------
    def late_angular_update(self) -> np.ndarray:
        """RMS of the recorded chord over the second half of the recorded steps, per
        block (B,) (NaN for a block without a recorded step in that half).  See
        :meth:`equilibrium` for the every-step window and the prediction."""
        late = self.angular_update[len(self.steps) // 2:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN column
            return np.sqrt(np.nanmean(late * late, axis=0))

    def equilibrium(self, window=0.5) -> Equilibrium:
        """Predicted and measured steady angular update over the last ``window`` fraction
        of the run (docs/monitor.md §4).

        Parameters
        ----------
        window : float in (0, 1]
            Fraction of the N steps made.  The window starts at a recorded step, the
            first one at or after step ⌈(1 − window)·N⌉ (so with ``record_every`` > 1 it
            is at most one stride shorter), and runs to the last step; inside it every
            step is counted.

        Returns
        -------
        Equilibrium
        """
        w = float(window)
        if not (0.0 < w <= 1.0):
            raise ValueError(f"window must lie in (0, 1], got {window!r}")
        B = len(self.labels)
        N = self.last_step + 1
        nan = np.full(B, np.nan)
        if N <= 0 or B == 0:
            return Equilibrium(nan, nan, "undetermined", nan, self.rule, 0, -1, {}, nan, nan,
                               nan, nan)
        n0 = int(np.ceil((1.0 - w) * N))
        j = min(int(np.searchsorted(self.steps, n0)), len(self.steps) - 1)
        base, first = self.cumulative[j], int(self.steps[j])
        tot = self.final_cumulative - base
        with np.errstate(divide="ignore", invalid="ignore"):
            measured = np.sqrt(tot[:, L.C_CH2] / tot[:, L.C_NCH])
            corr = tot[:, L.C_GL] / tot[:, L.C_GG]
            gg = tot[:, L.C_GG] / tot[:, L.C_N]
            gl = tot[:, L.C_GL] / tot[:, L.C_N]
            ad = {name: tot[:, c] / tot[:, L.C_NAD] for name, c in
                  (("update_sq", L.C_UG), ("metric", L.C_PM), ("precond", L.C_PQ))}
            cross = tot[:, L.C_CR] / tot[:, L.C_NAD]
            sched = np.sqrt(tot[:, L.C_SC2] / tot[:, L.C_NSC])
        beta = np.asarray(self.hyper["momentum"], dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c_med = float(np.nanmedian(corr)) if np.isfinite(corr).any() else np.nan
            b_med = float(np.nanmedian(beta)) if np.isfinite(beta).any() else np.nan
        stats = {"grad_norm2": gg, "grad_lag1": gl, "correlation": corr, "cross": cross,
                 **ad}
        pred, norm, regimes = np.full(B, np.nan), np.full(B, np.nan), []
        for rule in dict.fromkeys(self.rules):
            sel = np.array([r == rule for r in self.rules])
            hyp = {k: np.asarray(v, dtype=float)[sel] for k, v in self.hyper.items()}
            p, n, reg = L.predict_equilibrium(rule, hyp, {k: v[sel] for k, v in
                                                           stats.items()})
            pred[sel], norm[sel] = p, n
            regimes += reg
        regime = "+".join(dict.fromkeys(regimes)) if regimes else "undetermined"
        sched_a = self.predicted_norm2["schedule"][-1] if len(self.steps) else nan
        return Equilibrium(pred, measured, regime, corr, self.rule, first, N - 1, stats,
                           sched, norm, np.asarray(sched_a, dtype=float).copy(),
                           np.asarray(self.final_norm2, dtype=float).copy(),
                           L.regime_of(c_med, b_med))

    # -- text -------------------------------------------------------------------------------
    def summary(self) -> str:
        B, R = len(self.labels), len(self.steps)
        if B == 0:
            head = "NoetherMonitor: no scale-symmetric blocks found"
            return head + (f"\n  error: {self.error}" if self.error else "")
        lines = [f"NoetherMonitor: {B} blocks, rule {self.rule} "
                 f"(identity {', '.join(L.EQUATION.get(r.split(':')[0], '?') for r in dict.fromkeys(self.rules))}), "  # noqa: E501
                 f"{R} recorded steps (last step {self.last_step if R else '-'}, "
                 f"stride {self.record_stride})"]
        srcs = {s: self.sources.count(s) for s in dict.fromkeys(self.sources)}
        lines.append("  blocks: " + ", ".join(f"{n} {s}" for s, n in srcs.items()))
        if self.error:
            lines.append(f"  error: {self.error}")
        if not self.values_available:
            lines.append("  values unavailable: the parameters live on the meta device "
                         "(shapes only, no data); every number below is NaN")
        score = self.audit_score[np.isfinite(self.audit_score)]
        lines.append(f"  audit: worst scale cosine "
                     f"{(f'{score.max():.2e}' if score.size else 'n/a')}; "
                     f"rejected {len(self.rejected)}, unexplained {len(self.unexplained)}")
        if R:
            res = self.balance_residual
            fin = res[np.isfinite(res)]
            lines.append("  exact balance residual (worst relative): "
                         + (f"{fin.max():.2e}" if fin.size else "n/a for this optimizer"))
            late = slice(R // 2, None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                corr = np.nanmedian(self.grad_correlation[late]) if R > 1 else np.nan
            lines.append(f"  effective gradient correlation <Δ_n,g_n>/(|Δ_n||g_n|), median "
                         f"of the second half: {corr:+.3f}  (coherent -1, uncorrelated 0)")
            if "sgd" in self.rules:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    kappa = np.nanmedian(self.measured_gain())
                beta = float(np.median(self.hyper["momentum"]))
                lines.append(f"  buffer gain κ measured {kappa:.3g}; coherent "
                             f"{1 / (1 - beta) ** 2:.3g}, uncorrelated "
                             f"{1 / (1 - beta * beta):.3g}, alternating "
                             f"{1 / (1 + beta) ** 2:.3g} -> regime: {self.regime()}")
            eq = self.equilibrium()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                m, p = np.nanmedian(eq.measured_angular_update), \
                    np.nanmedian(eq.predicted_angular_update)
                ps = np.nanmedian(eq.scheduled_angular_update)
            lines.append(f"  angular update per step (chord |q̂_(n+1) − q̂_n|), RMS over "
                         f"steps {eq.first_step}-{eq.last_step}, median over blocks: "
                         f"measured {m:.3e}, predicted {p:.3e} steady / {ps:.3e} "
                         f"schedule ({self.rule}, regime {eq.regime}; gradient "
                         f"correlation {eq.correlation_regime})")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                es = np.nanmedian(np.abs(eq.scheduled_norm_sq / eq.measured_norm_sq - 1.0))
            lines.append(f"  |q|² after the last step by the rule's schedule (theory §9), "
                         f"median relative error {es:.3f}")
            if "sgd" in self.rules:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    errs = ", ".join(f"{a} {np.nanmedian(self.prediction_error(a)):.3f}"
                                     for a in PREDICTIONS[:-1])
                lines.append("  Eq. 17 |q|² after the last step, median relative error "
                             "per assumption: " + errs)
        lines.append(f"  monitor overhead: {self.overhead_seconds:.3f} s in hooks")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self):
        return (f"MonitorReport(blocks={len(self.labels)}, steps={len(self.steps)}, "
                f"rule={self.rule!r})")
