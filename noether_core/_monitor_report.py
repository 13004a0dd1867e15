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
    """Result of :meth:`MonitorReport.equilibrium`: the steady angular update per block.

    Attributes
    ----------
    predicted_angular_update : (B,) array
        The theory's steady chord |q̂_{n+1} − q̂_n| for each block's rule, from its
        hyper-parameters (those of the window's last step) and the gradient statistics
        measured in the window (docs/monitor.md §4).  NaN where the theory has no form
        for the rule yet.
    measured_angular_update : (B,) array
        RMS of the chord over every step of the window (record_every notwithstanding).
    regime : str
        The correlation assumption the measured lag-one gradient correlation selects
        (median over blocks), or "undetermined".
    correlation : (B,) array
        Σ⟨g_n, g_{n−1}⟩ / Σ|g_n|² over the window: +1 coherent, 0 uncorrelated,
        −1 alternating.
    rule : str
        The identity / theory used (the report's :attr:`MonitorReport.rule`).
    first_step, last_step : int
        The steps n (of n → n+1) the window covers, inclusive.
    grad_stats : dict of (B,) arrays
        The window means the prediction used (gradient statistics only, docs/monitor.md
        §4): ``grad_norm2``, ``grad_lag1``, ``correlation``; for the adaptive rules
        ``update_sq`` |u|², ``metric`` ⟨q̂, P g⟩, ``precond`` ⟨q̂², P⟩ (NaN otherwise) —
        the fields of the theory's ``GradStats``.
    """

    predicted_angular_update: np.ndarray
    measured_angular_update: np.ndarray
    regime: str
    correlation: np.ndarray
    rule: str
    first_step: int
    last_step: int
    grad_stats: dict = field(default_factory=dict)

    def relative_error(self) -> np.ndarray:
        """(predicted − measured)/measured per block."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.predicted_angular_update / self.measured_angular_update - 1.0


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
    predicted_norm2 : dict assumption -> (R+1, B) array
        Eq. 17 prediction of |q_n|² (heavy-ball SGD rows; NaN for other rules).
    final_norm2 : (B,) array
        |q|² after the last step.
    audit_score : (B,) array
        Worst scale cosine over the audit steps.
    scale_cosine : (R, B) array
        |⟨g_n, q_n⟩|/(|g_n||q_n|) at every recorded step.
    hyper : dict
        lr, momentum (β, β₁), dampening, weight_decay, beta2 (β₂, RMSprop's α), eps of
        the last step, per block.
    cumulative : (R, B, 9) array
        Sums over the steps before each recorded step n (0..n−1, every step counted) of
        chord², its count, |g|², ⟨g_n, g_{n−1}⟩, their count, and the adaptive rules'
        |u|², ⟨q̂, P g⟩, ⟨q̂², P⟩ and their count (docs/monitor.md §4).
    final_cumulative : (B, 9) array
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
            return Equilibrium(nan, nan, "undetermined", nan, self.rule, 0, -1)
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
        beta = np.asarray(self.hyper["momentum"], dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c_med = float(np.nanmedian(corr)) if np.isfinite(corr).any() else np.nan
            b_med = float(np.nanmedian(beta)) if np.isfinite(beta).any() else np.nan
        regime = L.regime_of(c_med, b_med)
        pred = np.full(B, np.nan)
        stats = {"grad_norm2": gg, "grad_lag1": gl, "correlation": corr, **ad}
        for rule in dict.fromkeys(self.rules):
            sel = np.array([r == rule for r in self.rules])
            hyp = {k: np.asarray(v, dtype=float)[sel] for k, v in self.hyper.items()
                   if k != "rule"}
            pred[sel] = L.predict_angular_update(
                rule, hyp, {k: v[sel] for k, v in stats.items()}, regime)
        return Equilibrium(pred, measured, regime, corr, self.rule, first, N - 1, stats)

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
            lines.append(f"  angular update per step (chord |q̂_(n+1) − q̂_n|), RMS over "
                         f"steps {eq.first_step}-{eq.last_step}, median over blocks: "
                         f"measured {m:.3e}, predicted {p:.3e} ({self.rule}, gradient "
                         f"correlation regime {eq.regime})")
            if "sgd" in self.rules:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    errs = ", ".join(f"{a} {np.nanmedian(self.prediction_error(a)):.3f}"
                                     for a in PREDICTIONS)
                lines.append("  Eq. 17 |q|² after the last step, median relative error "
                             "per assumption: " + errs)
        lines.append(f"  monitor overhead: {self.overhead_seconds:.3f} s in hooks")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self):
        return (f"MonitorReport(blocks={len(self.labels)}, steps={len(self.steps)}, "
                f"rule={self.rule!r})")
