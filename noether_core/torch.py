"""A live Noether monitor for ordinary PyTorch training loops (optional extra ``torch``).

This is the only module of noether_core that imports torch (at its own import); the core
never does.  Install the pinned CPU wheel with ``pip install "torch==2.13.0"`` (the extra
``noether_core[torch]``).  Without torch the module still imports (its documentation and
:class:`MonitorReport`); constructing a :class:`NoetherMonitor` raises ImportError.

An unchanged training loop, watched (needs a model, an optimizer and data: not a
doctest)::

    mon = NoetherMonitor(model, optimizer)
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    print(mon.report())
    mon.plot().savefig("monitor.png")

What it does (docs/byom.md §4):

1. **Finds the scale-symmetric weights.**  Forward hooks record, during the first forward
   pass, which Linear/Conv output is fed *directly* into a normalisation layer: each output
   row ``W[c]`` of a layer feeding BatchNorm (per-channel statistics) is a scale block; a
   layer feeding LayerNorm/GroupNorm(1 group) normalises jointly, so its whole weight (with
   its bias) is one block.  The audit then confirms each candidate from the gradients the
   optimizer actually receives: the cosine |⟨g, q⟩|/(|g||q|) over the first
   ``audit_steps`` steps must be ≤ ``approx_tol`` (BatchNorm's eps > 0 breaks the symmetry
   by ~eps/var, so exact zeros are not expected in float32 models).  Every other weight row
   is audited the same way; a row that passes without a normalisation layer behind it is
   reported (``unexplained``), not tracked.
2. **Records, per block and per step** n → n+1 (optimizer step pre/post hooks, float64):
   ``|q_n|²``, ``|g_n|²``, ``⟨g_n, q_n⟩``, ``|Δ_{n+1}|²`` with Δ_{n+1} = q_{n+1} − q_n,
   the angular update, i.e. the chord ``|q̂_{n+1} − q̂_n|`` (dimensionless; ≈ the angle in
   radians for small angles), the effective gradient correlation
   ``⟨Δ_n, g_n⟩/(|Δ_n||g_n|)`` (coherent buffer ↔ −1, uncorrelated ↔ 0), and the relative
   residual of the exact discrete balance law of the optimizer actually used, with its
   hyper-parameters read from ``optimizer.param_groups`` at every step (torch.optim.SGD
   with momentum β, dampening τ, weight decay k, changing lr η_n)::

       (a_{n+1} − a_n) − β'(a_n − a_{n−1}) = |Δ_{n+1}|² + β'|Δ_n|² − 2 η_n c_n (k a_n + ⟨g_n, q_n⟩)

   with β' = β η_n/η_{n−1} and c_n = 1 on the buffer's first step, 1 − τ after it
   (docs/byom.md §4.2: an identity of the update, exact for any loss; the ⟨g_n, q_n⟩ term
   is the symmetry breaking, zero for an exact scale symmetry).
3. **Predicts |q|² online** by Eq. 17 (noether_core.theory.norm_schedule, continuous
   form, evaluated as the same exponential moving average one step at a time) under each
   named correlation assumption, and the assumption-free "measured" form driven by the
   run's own |Δ|², so the report can say which regime the run follows.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _validation as V
from . import theory as _th

try:
    import torch
except ImportError:                # the optional extra is not installed (see __init__)
    torch = None

__all__ = ["NoetherMonitor", "MonitorReport"]

if torch is not None:
    _NORMS_PER_CHANNEL = (torch.nn.modules.batchnorm._BatchNorm,)
    _NORMS_JOINT = (torch.nn.LayerNorm,)
    # layers whose weight row W[c] holds every weight of output unit/channel c (transposed
    # convolutions store (in, out, ...) and are left out)
    _PRODUCERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
PREDICTIONS = _th.ASSUMPTIONS + ("measured",)


@dataclass
class _Block:
    label: str
    members: list            # [(param, rows_view_shape)] summed together
    n_rows: int
    source: str               # "BatchNorm", "LayerNorm", "audit"


@dataclass
class MonitorReport:
    """Arrays recorded by :class:`NoetherMonitor` (rows: recorded steps, columns: blocks).

    Attributes
    ----------
    labels : list of str
        One per block, e.g. ``"features.0.weight[3]"`` (a BatchNorm-fed row) or
        ``"fc1.weight+bias"`` (a LayerNorm-fed layer).
    sources : list of str
        The normalisation layer behind each block.
    steps : (R,) int array
        Optimizer step n of each recorded row (the step n → n+1).
    norm2, grad_norm2, grad_dot_q : (R, B) arrays
        |q_n|², |g_n|², ⟨g_n, q_n⟩ (float64 of the parameters and of ``p.grad``).
    step_norm2 : (R, B) array
        |Δ_{n+1}|².
    angular_update : (R, B) array
        The angular update of step n → n+1: the chord |q̂_{n+1} − q̂_n| (dimensionless;
        ≈ the angle in radians for small angles).  :meth:`summary` prints its RMS over the
        second half of the recorded steps per block (the quantity
        ``theory.steady_angular_update`` predicts), median over blocks.
    grad_correlation : (R, B) array
        ⟨Δ_n, g_n⟩/(|Δ_n||g_n|) (NaN at a block's first step).
    balance_residual : (R, B) array
        Relative residual of the exact balance law (NaN where no law applies: other
        optimizers, nesterov/maximize, the first step of a buffer that predates the
        monitor, a joint block whose tensors sit in groups with different
        hyper-parameters).
    predicted_norm2 : dict assumption -> (R+1, B) array
        Eq. 17 prediction of |q_n|² for n = steps and the state after the last step.
    final_norm2 : (B,) array
        |q|² after the last recorded step (what ``predicted_norm2[·][-1]`` predicts).
    audit_score : (B,) array
        Worst scale cosine over the audit steps.
    scale_cosine : (R, B) array
        |⟨g_n, q_n⟩|/(|g_n||q_n|) at every recorded step.
    hyper : dict
        lr, momentum, dampening, weight_decay, nesterov of the (last) group, per block.
    unexplained, rejected : list of (label, score)
        Rows the audit finds scale-symmetric without a normalisation layer behind them;
        normalisation-fed candidates the audit rejects.
    overhead_seconds : float
        Time spent in the monitor's hooks.
    """

    labels: list
    sources: list
    steps: np.ndarray
    norm2: np.ndarray
    grad_norm2: np.ndarray
    grad_dot_q: np.ndarray
    step_norm2: np.ndarray
    angular_update: np.ndarray
    grad_correlation: np.ndarray
    balance_residual: np.ndarray
    predicted_norm2: dict
    final_norm2: np.ndarray
    audit_score: np.ndarray
    scale_cosine: np.ndarray
    hyper: dict
    unexplained: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    overhead_seconds: float = 0.0

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
        return np.nanmedian(np.where(np.isfinite(k), k, np.nan), axis=0)

    def regime(self, window=0.5) -> str:
        """The named assumption nearest the measured gain (median over blocks), or
        "undetermined" without momentum."""
        beta = float(np.median(self.hyper["momentum"]))
        g = float(np.nanmedian(self.measured_gain(window)))
        if not (0.0 < beta < 1.0) or not np.isfinite(g) or g <= 0:
            return "undetermined"
        return _th.nearest_assumption(g, beta)

    def late_angular_update(self) -> np.ndarray:
        """RMS of the chord |q̂_{n+1} − q̂_n| over the second half of the recorded steps,
        per block (B,): the late-window angular update ``theory.steady_angular_update``
        predicts (the balance predicts the mean square; docs/theory.md §3).  NaN for a
        block without a recorded step in that half."""
        late = self.angular_update[len(self.steps) // 2:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN column
            return np.sqrt(np.nanmean(late * late, axis=0))

    def summary(self) -> str:
        B, R = len(self.labels), len(self.steps)
        if B == 0:
            return "NoetherMonitor: no scale-symmetric blocks found"
        lines = [f"NoetherMonitor: {B} scale-symmetric blocks, {R} recorded steps "
                 f"(last step {int(self.steps[-1]) if R else '-'})"]
        srcs = {s: self.sources.count(s) for s in dict.fromkeys(self.sources)}
        lines.append("  blocks: " + ", ".join(f"{n} fed to {s}" for s, n in srcs.items()))
        lines.append(f"  audit: worst scale cosine {np.max(self.audit_score):.2e}; "
                     f"rejected {len(self.rejected)}, unexplained {len(self.unexplained)}")
        if R:
            res = self.balance_residual
            fin = res[np.isfinite(res)]
            lines.append("  exact balance residual (worst relative): "
                         + (f"{fin.max():.2e}" if fin.size else "n/a for this optimizer"))
            late = slice(R // 2, None)
            corr = np.nanmedian(self.grad_correlation[late]) if R > 1 else np.nan
            lines.append(f"  effective gradient correlation <Δ_n,g_n>/(|Δ_n||g_n|), median "
                         f"of the second half: {corr:+.3f}  (coherent -1, uncorrelated 0)")
            kappa = np.nanmedian(self.measured_gain())
            beta = float(np.median(self.hyper["momentum"]))
            lines.append(f"  buffer gain κ measured {kappa:.3g}; coherent "
                         f"{1 / (1 - beta) ** 2:.3g}, uncorrelated {1 / (1 - beta * beta):.3g}"
                         f", alternating {1 / (1 + beta) ** 2:.3g} -> regime: {self.regime()}")
            ang = self.late_angular_update()
            eta, k = float(np.median(self.hyper["lr"])), float(
                np.median(self.hyper["weight_decay"]))
            if k > 0:
                th = float(_th.steady_angular_update(eta, min(beta, 0.999999), k))
                lines.append(f"  angular update per step, chord |q̂_(n+1) − q̂_n|: RMS over "
                             f"the second half, median over blocks {np.nanmedian(ang):.3e}; "
                             f"steady theory sqrt(2ηk/(1+β)) = {th:.3e}")
            lines.append("  Eq. 17 |q|² after the last step, median relative error per "
                         "assumption: " + ", ".join(
                             f"{a} {np.median(self.prediction_error(a)):.3f}"
                             for a in PREDICTIONS))
        lines.append(f"  monitor overhead: {self.overhead_seconds:.3f} s in hooks")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self):
        return (f"MonitorReport(blocks={len(self.labels)}, steps={len(self.steps)}, "
                f"regime={self.regime() if len(self.steps) else '-'!r})")


class NoetherMonitor:
    """Attach to a model and its optimizer; watch the scale-symmetric weights train.

    Parameters
    ----------
    model : torch.nn.Module
    optimizer : torch.optim.Optimizer
        Its step pre/post hooks drive the monitor; nothing in the training loop changes.
        The exact balance law is known for ``torch.optim.SGD`` (momentum, dampening,
        weight decay, any lr schedule; not nesterov/maximize); for other optimizers the
        residual is NaN and everything else is recorded.
    audit_steps : int ≥ 1
        Steps over which each candidate row's scale cosine is audited before it is kept
        (recording starts at step 0 all the same).
    approx_tol : float
        A candidate is kept when its worst cosine ≤ approx_tol (BatchNorm eps makes the
        symmetry approximate: cosines ~eps/var).
    record_every : int ≥ 1
        Record every n-th step (the Eq. 17 recursions still advance every step).

    Notes
    -----
    Cost per step: two float64 copies of the tracked weights and ~10 reductions over them,
    plus O(blocks) NumPy work — a few % of a small CNN's training step on CPU
    (benchmarks/bench_callbacks.py, docs/byom.md §4.4).  Memory: O(steps/record_every ·
    blocks).  :meth:`close` removes the hooks.
    """

    def __init__(self, model, optimizer, *, audit_steps=5, approx_tol=1e-3, record_every=1):
        if torch is None:
            raise ImportError("NoetherMonitor needs PyTorch, which is not installed: "
                              "pip install 'noether_core[torch]' (the pinned CPU wheel "
                              "torch==2.13.0)")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        audit_steps = V.as_int("audit_steps", audit_steps)         # type errors name it
        record_every = V.as_int("record_every", record_every)
        approx_tol = V.as_scalar("approx_tol", approx_tol)
        if audit_steps < 1:
            raise ValueError(f"audit_steps must be an integer ≥ 1, got {audit_steps!r}")
        if record_every < 1:
            raise ValueError(f"record_every must be an integer ≥ 1, got {record_every!r}")
        if not (0.0 < approx_tol < 1.0):
            raise ValueError(f"approx_tol must lie in (0, 1), got {approx_tol!r}")
        self.model, self.optimizer = model, optimizer
        self.audit_steps, self.approx_tol = int(audit_steps), float(approx_tol)
        self.record_every = int(record_every)
        self._names = {p: n for n, p in model.named_parameters()}
        self._group = {}
        for gi, g in enumerate(optimizer.param_groups):
            for p in g["params"]:
                self._group[p] = gi
        self._graph_done = False
        self._outputs = {}             # id(output) -> (output, module) during discovery
        self._fed = []                 # (producer module, norm module)
        self._hooks, self._fwd_hooks = [], []
        for m in model.modules():
            if isinstance(m, _PRODUCERS):
                self._fwd_hooks.append(m.register_forward_hook(self._on_produce))
            if isinstance(m, _NORMS_PER_CHANNEL + _NORMS_JOINT + (torch.nn.GroupNorm,)):
                self._fwd_hooks.append(m.register_forward_pre_hook(self._on_norm))
        self._hooks.append(optimizer.register_step_pre_hook(self._pre))
        self._hooks.append(optimizer.register_step_post_hook(self._post))
        self._step = 0
        self._blocks = None            # decided at the first step
        self._overhead = 0.0
        self._rec = []                 # recorded rows
        self._cos_hist = []

    # -- graph discovery (first forward pass) --------------------------------------------
    def _on_produce(self, module, inputs, output):
        self._seen_forward = True
        if not self._graph_done and isinstance(output, torch.Tensor):
            self._outputs[id(output)] = (output, module)

    def _on_norm(self, module, inputs):
        if self._graph_done or not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        hit = self._outputs.get(id(inputs[0]))
        if hit is not None and hit[0] is inputs[0]:
            joint = isinstance(module, _NORMS_JOINT) or (
                isinstance(module, torch.nn.GroupNorm) and module.num_groups == 1)
            per_channel = isinstance(module, _NORMS_PER_CHANNEL)
            if joint or per_channel:
                self._fed.append((hit[1], module, "per_channel" if per_channel else "joint"))

    # -- candidates ------------------------------------------------------------------------
    def _build_blocks(self):
        self._graph_done = True
        self._outputs.clear()
        if not getattr(self, "_seen_forward", False):
            warnings.warn("NoetherMonitor saw no forward pass before the first optimizer "
                          "step, so it cannot tell which layers feed a normalisation "
                          "layer; create it before the first forward pass", stacklevel=4)
        for h in self._fwd_hooks:          # the graph is known: forward passes run bare
            h.remove()
        self._fwd_hooks = []
        fed_weights = {}
        for prod, norm, kind in self._fed:
            fed_weights[prod.weight] = (prod, norm, kind)
        cands, others = [], []
        for m in self.model.modules():
            if not isinstance(m, _PRODUCERS) or m.weight not in self._group:
                continue
            w = m.weight
            name = self._names.get(w, "?")
            rows = w.shape[0]
            if w in fed_weights:
                prod, norm, kind = fed_weights[w]
                src = type(norm).__name__
                if kind == "per_channel":
                    cands.append(_Block(f"{name}", [(w, (rows, -1))], rows, src))
                else:
                    mem = [(w, (1, -1))]
                    if m.bias is not None and m.bias in self._group:
                        mem.append((m.bias, (1, -1)))
                    cands.append(_Block(f"{name}+bias" if len(mem) == 2 else name, mem, 1,
                                        src))
            else:
                others.append(_Block(name, [(w, (rows, -1))], rows, "audit"))
        self._cands, self._others = cands, others

    # -- per-step statistics -------------------------------------------------------------------
    @staticmethod
    def _rows(t, shape):
        return t.detach().reshape(shape).double()

    def _hyper(self, p):
        g = self.optimizer.param_groups[self._group[p]]
        lr = g.get("lr", float("nan"))
        lr = float(lr.item() if torch.is_tensor(lr) else lr)
        return (lr, float(g.get("momentum", 0.0)), float(g.get("dampening", 0.0)),
                float(g.get("weight_decay", 0.0)), bool(g.get("nesterov", False)),
                bool(g.get("maximize", False)))

    def _pre(self, optimizer, args, kwargs):
        t0 = time.perf_counter()
        if self._blocks is None:
            self._build_blocks()
            self._blocks = self._cands
            self._state = {}
        blocks = self._blocks
        # audit of every candidate and non-candidate weight row during the audit window
        if self._step < self.audit_steps:
            cos = []
            for b in self._cands + self._others:
                w, shape = b.members[0]
                if w.grad is None:
                    cos.append(np.full(b.n_rows, np.nan))
                    continue
                s = np.zeros(b.n_rows)
                gg = np.zeros(b.n_rows)
                qq = np.zeros(b.n_rows)
                for p, shp in b.members:
                    if p.grad is None:
                        continue
                    q, g = self._rows(p, shp), self._rows(p.grad, shp)
                    st = torch.stack([(g * q).sum(1), (g * g).sum(1), (q * q).sum(1)]).numpy()
                    s, gg, qq = s + st[0], gg + st[1], qq + st[2]
                with np.errstate(divide="ignore", invalid="ignore"):
                    cos.append(np.abs(s) / np.sqrt(gg * qq))
            self._cos_hist.append(cos)
        self._pre_stats = []
        for b in blocks:
            rows = []
            for p, shp in b.members:
                if p.grad is None:
                    rows = None
                    break
                q, g = self._rows(p, shp), self._rows(p.grad, shp)
                st = self._state.get(p)
                dprev = None if st is None else st["delta"]
                parts = [(q * q).sum(1), (g * g).sum(1), (g * q).sum(1)]
                parts.append((dprev * g).sum(1) if dprev is not None
                             else torch.full_like(parts[0], float("nan")))
                rows.append(torch.stack(parts))
                self._state.setdefault(p, {"delta": None})["q_old"] = q.clone()
                self._state[p]["first"] = optimizer.state.get(p, {}).get(
                    "momentum_buffer") is None
            self._pre_stats.append(None if rows is None else sum(rows).numpy())
        self._overhead += time.perf_counter() - t0

    def _post(self, optimizer, args, kwargs):
        t0 = time.perf_counter()
        n = self._step
        if n + 1 == self.audit_steps:
            self._finish_audit()
        if not hasattr(self, "_prev"):
            self._init_recursions()
        B = len(self._prev["D"])
        recs = {k: np.full(B, np.nan) for k in ("a", "gg", "gq", "D", "chord", "corr",
                                                 "res", "a1", "cos")}
        for i, b in enumerate(self._blocks):
            pre = self._pre_stats[i]
            if pre is None:
                continue
            a, gg, gq, dg = pre
            D = np.zeros(b.n_rows)
            a1 = np.zeros(b.n_rows)
            for p, shp in b.members:
                st = self._state[p]
                q1 = self._rows(p, shp)
                delta = q1 - st["q_old"]
                r = torch.stack([(delta * delta).sum(1), (q1 * q1).sum(1)]).numpy()
                D, a1 = D + r[0], a1 + r[1]
                st["delta"] = delta
            lr, beta, tau, k, nest, maxim = self._hyper(b.members[0][0])
            same_hyper = all(self._hyper(p) == self._hyper(b.members[0][0])
                             for p, _ in b.members[1:])
            first = self._state[b.members[0][0]]["first"]
            sl = self._slices[i]
            prev = self._prev
            Dn = prev["D"][sl]
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = dg / np.sqrt(Dn * gg)
                r0, r1 = np.sqrt(a), np.sqrt(a1)
                chord = np.sqrt(np.maximum(D - (r1 - r0) ** 2, 0.0) / (r0 * r1))
            # exact balance law of torch.optim.SGD (docs/byom.md §4.2)
            if (isinstance(optimizer, torch.optim.SGD) and not nest and not maxim
                    and same_hyper):
                if first:
                    bp, c, Dn_, a_prev = 0.0, 1.0, np.zeros_like(D), a
                    known = True
                else:
                    known = prev["known"][sl].all()
                    lr_old = prev["lr"][sl]
                    bp, c, Dn_, a_prev = beta * lr / lr_old, 1.0 - tau, Dn, prev["a"][sl]
                lhs1, lhs2 = a1 - a, bp * (a - a_prev)
                rhs = (D, bp * Dn_, -2.0 * lr * c * k * a, -2.0 * lr * c * gq)
                scale = np.abs(a1) + np.abs(a) + np.abs(bp) * (np.abs(a) + np.abs(a_prev)) \
                    + sum(np.abs(t) for t in rhs)
                res = np.abs(lhs1 - lhs2 - sum(rhs)) / scale
                if not known:
                    res = np.full(b.n_rows, np.nan)
                prev["known"][sl] = True
            else:
                res = np.full(b.n_rows, np.nan)
            # Eq. 17 online (noether_core.theory.norm_schedule, continuous form)
            self._advance_predictions(sl, a, gg, D, Dn if not first else np.zeros_like(D),
                                      lr, beta, k)
            prev["a"][sl], prev["D"][sl], prev["lr"][sl] = a, D, lr
            self._hyper_last[sl] = (lr, beta, tau, k)
            with np.errstate(divide="ignore", invalid="ignore"):
                cosv = np.abs(gq) / np.sqrt(gg * a)
            for key, val in (("a", a), ("gg", gg), ("gq", gq), ("D", D), ("chord", chord),
                             ("corr", corr), ("res", res), ("a1", a1), ("cos", cosv)):
                recs[key][sl] = val
        if n % self.record_every == 0:
            recs["pred"] = {a: self._pred_before[a].copy() for a in PREDICTIONS}
            recs["step"] = n
            self._rec.append(recs)
        self._last_a1 = recs["a1"]
        self._pred_after = {a: self._pred_state(a) for a in PREDICTIONS}
        self._step += 1
        self._overhead += time.perf_counter() - t0

    def _init_recursions(self):
        sizes = [b.n_rows for b in self._blocks]
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self._slices = [slice(off[i], off[i + 1]) for i in range(len(sizes))]
        B = int(off[-1])
        self._prev = {"a": np.full(B, np.nan), "D": np.zeros(B), "lr": np.full(B, np.nan),
                      "known": np.zeros(B, dtype=bool)}
        self._hyper_last = np.full((B, 4), np.nan)
        self._r4 = {a: np.full(B, np.nan) for a in _th.ASSUMPTIONS}
        self._am = np.full(B, np.nan)
        self._pred_before = {a: np.full(B, np.nan) for a in PREDICTIONS}

    def _pred_state(self, assumption):
        return (np.sqrt(self._r4[assumption]) if assumption in self._r4
                else self._am.copy())

    def _advance_predictions(self, sl, a, gg, D, Dn, lr, beta, k):
        """One step of the EMA forms of Eq. 17 (theory.norm_schedule, r2_continuous)."""
        new = np.isnan(self._am[sl])
        if new.any():
            for r4 in self._r4.values():
                r4[sl] = np.where(new, a * a, r4[sl])
            self._am[sl] = np.where(new, a, self._am[sl])
        for name in PREDICTIONS:
            self._pred_before[name][sl] = self._pred_state(name)[sl]
        gh2 = gg * a                            # |ĝ|² = |g|²|q|² (scale invariance)
        rate = 4.0 * k / (1.0 - beta)
        lam = math.exp(-rate * lr)
        w = _th._zoh_weight(rate, lr)
        for name, r4 in self._r4.items():
            P = 2.0 * (1.0 + beta) * lr * _th._gain(beta, name) / (1.0 - beta)
            r4[sl] = lam * r4[sl] + P * w * gh2
        rate2 = 2.0 * k / (1.0 - beta)
        lam2 = math.exp(-rate2 * lr)
        b2 = _th._zoh_weight(rate2, lr) / ((1.0 - beta) * lr)
        self._am[sl] = lam2 * self._am[sl] + b2 * (D + beta * Dn)

    def _finish_audit(self):
        """Keep the candidates whose worst cosine over the audit steps ≤ approx_tol."""
        nc = len(self._cands)
        hist = self._cos_hist
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN: no gradient seen
            worst = [np.nanmax(np.stack([h[j] for h in hist]), axis=0)
                     for j in range(len(self._cands) + len(self._others))]
        self._rejected, self._unexplained = [], []
        keep = np.ones(sum(b.n_rows for b in self._cands), dtype=bool)
        off = 0
        self._audit_score = []
        for j, b in enumerate(self._cands):
            for r in range(b.n_rows):
                lab = b.label if b.n_rows == 1 else f"{b.label}[{r}]"
                if not (worst[j][r] <= self.approx_tol):
                    self._rejected.append((lab, float(worst[j][r])))
                    keep[off + r] = False
            self._audit_score.append(worst[j])
            off += b.n_rows
        for j, b in enumerate(self._others):
            for r in range(b.n_rows):
                if worst[nc + j][r] <= self.approx_tol:
                    self._unexplained.append((f"{b.label}[{r}]", float(worst[nc + j][r])))
        self._keep = keep
        self._cos_hist = []

    # -- results ---------------------------------------------------------------------------
    def report(self) -> MonitorReport:
        """The recorded arrays (only blocks that passed the audit) and a printable summary."""
        blocks = self._blocks or []
        labels, sources = [], []
        for b in blocks:
            for r in range(b.n_rows):
                labels.append(b.label if b.n_rows == 1 else f"{b.label}[{r}]")
                sources.append(b.source)
        B = len(labels)
        keep = getattr(self, "_keep", None)
        if keep is None:                         # audit window not over yet
            if self._cos_hist:
                self._finish_audit()
                keep = self._keep
            else:
                keep = np.ones(B, dtype=bool)
        R = len(self._rec)

        def col(key):
            if R == 0:
                return np.zeros((0, int(keep.sum())))
            return np.stack([r[key] for r in self._rec])[:, keep]
        pred = {}
        for a in PREDICTIONS:
            rows = [r["pred"][a] for r in self._rec] + (
                [self._pred_after[a]] if R else [])
            pred[a] = (np.stack(rows)[:, keep] if rows else np.zeros((0, int(keep.sum()))))
        hyp = getattr(self, "_hyper_last", np.full((B, 4), np.nan))[keep]
        return MonitorReport(
            labels=[lab for lab, k in zip(labels, keep, strict=True) if k],
            sources=[s for s, k in zip(sources, keep, strict=True) if k],
            steps=np.array([r["step"] for r in self._rec], dtype=int),
            norm2=col("a"), grad_norm2=col("gg"), grad_dot_q=col("gq"), step_norm2=col("D"),
            angular_update=col("chord"), grad_correlation=col("corr"),
            balance_residual=col("res"), predicted_norm2=pred,
            final_norm2=(self._last_a1[keep] if R else np.zeros(0)),
            audit_score=(np.concatenate(self._audit_score)[keep]
                         if getattr(self, "_audit_score", None) else np.zeros(int(keep.sum()))),
            scale_cosine=col("cos"),
            hyper={"lr": hyp[:, 0], "momentum": hyp[:, 1], "dampening": hyp[:, 2],
                   "weight_decay": hyp[:, 3]},
            unexplained=list(getattr(self, "_unexplained", [])),
            rejected=list(getattr(self, "_rejected", [])),
            overhead_seconds=self._overhead)

    def plot(self, blocks=4, fig=None):
        """A matplotlib figure: |q|² measured vs Eq. 17 per assumption, angular update
        (chord), gradient correlation and balance residual for the first ``blocks`` blocks.

        Drawn on ``fig`` if given (e.g. ``plt.figure()`` to show it with pyplot), else on
        a new :class:`matplotlib.figure.Figure`: pyplot is not imported and the backend is
        left as it is; save it with ``fig.savefig(path)``.
        """
        from matplotlib.figure import Figure
        rep = self.report()
        fig = fig or Figure(figsize=(11, 7))
        axs = fig.subplots(2, 2)
        sel = slice(0, min(blocks, len(rep.labels)))
        ax = axs[0, 0]
        ax.plot(rep.steps, rep.norm2[:, sel], "k-", lw=1)
        for a, st in zip(PREDICTIONS, ("--", ":", "-.", "-"), strict=True):
            ax.plot(rep.steps, rep.predicted_norm2[a][:-1, sel], st, lw=1, label=a)
        ax.set(title="|q|²: measured (black) vs Eq. 17", xlabel="step", yscale="log")
        ax.legend(fontsize=7)
        ax = axs[0, 1]
        ax.plot(rep.steps, rep.angular_update[:, sel], lw=1)
        k, lr, beta = (float(np.median(rep.hyper[x])) for x in ("weight_decay", "lr",
                                                                 "momentum"))
        if k > 0:
            ax.axhline(_th.steady_angular_update(lr, min(beta, 0.999999), k), color="k",
                       ls="--", label="sqrt(2ηk/(1+β))")
            ax.legend(fontsize=7)
        ax.set(title="angular update per step: chord |q̂_(n+1) − q̂_n|", xlabel="step",
               yscale="log")
        ax = axs[1, 0]
        ax.plot(rep.steps, rep.grad_correlation[:, sel], lw=1)
        ax.axhline(-1, color="k", ls=":")
        ax.axhline(0, color="k", ls=":")
        ax.set(title="⟨Δ_n, g_n⟩/(|Δ_n||g_n|)", xlabel="step", ylim=(-1.05, 1.05))
        ax = axs[1, 1]
        ax.semilogy(rep.steps, np.maximum(rep.balance_residual[:, sel], 1e-18), lw=1)
        ax.set(title="exact balance residual (relative)", xlabel="step")
        fig.tight_layout()
        return fig

    def close(self):
        """Remove every hook (the monitor stops recording; report() still works)."""
        for h in self._hooks + self._fwd_hooks:
            h.remove()
        self._hooks = []
