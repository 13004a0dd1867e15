"""The ``python -m noether_core demo`` job: the paper's Sec. 4 checked on a BatchNorm MLP.

A :class:`~noether_core.potentials.BatchNormMLP` is trained on a seeded Gaussian mixture
(:func:`noether_core.datasets.gaussian_mixture`) by ``SGD(lr, momentum, weight_decay)``
with minibatches in the compiled loop.  Every hidden neuron's incoming weight row is a
scale block B; per block, at every step, the loop records ``a_n = |q_B|²``,
``|g_B(q_n)|²`` and ``D_n = |Δ_n|²_B`` (``train(..., block_stats=True)``) and the residual
of the exact discrete scale balance (SPEC §1.1).  From these the demo computes, per block
and aggregated over blocks (median and 90th percentile):

1. the worst exact balance residual (round-off);
2. the angular update: the per-step chord |q̂ₙ₊₁ − q̂ₙ| (dimensionless; ≈ the angle in
   radians for small angles), its RMS over the late window per block, vs
   ``theory.steady_angular_update`` (docs/theory.md §3);
3. ``r²_n`` vs Eq. 17 (``theory.norm_schedule``) driven by the measured ``|ĝ_n|²``, under
   the correlation assumption the run follows (``theory.nearest_assumption``);
4. the RMSProp correspondence (Sec. 4, Eq. 18–20): the same network with its weight rows
   held at unit norm by the scalar RMSProp of ``theory.equivalent_rmsprop`` vs SGD on the
   free norms, and the same with a wrong ρ.

Each check's tolerance and its derivation: docs/demo.md.  :func:`run_demo` does the work
and returns a :class:`DemoResult`; ``noether_core.__main__`` is the command line.  The
allowed values of every setting are in :data:`BOUNDS`, read by both :class:`DemoConfig` and
the command line.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace

import numpy as np

from . import _validation as V
from . import theory as th
from ._train import train
from .datasets import gaussian_mixture
from .potentials import BatchNormMLP
from .rules import SGD, Adam, AdamW, RMSprop, ScalarRMSProp

__all__ = ["DemoConfig", "Bound", "BOUNDS", "WIDTH_BOUND", "check_widths", "Check",
           "DemoResult", "build_problem", "snapshot_steps", "run_chunked", "baseline_jobs",
           "angle_check", "norm_check", "balance_check", "run_assumption", "rmsprop_jobs",
           "rmsprop_comparison", "run_demo",
           "approximation_bound", "write_figure", "FIGURE_POINTS",
           "runs_total_steps", "reduced", "DEMO_RULES", "RULE_DEFAULTS", "make_rule",
           "run_rule_chunked", "rule_checks", "reduced_rule"]

#: the exact balance (SPEC §1.1) holds to round-off; each relative residual is a few ulp
#: times the number of terms (docs/demo.md §1)
BALANCE_TOL = 1e-12
#: a block passes a statistical check if its error is within 3 standard deviations of the
#: quantity the theory leaves unpredicted; the aggregate check asks this of >= 90% of blocks
QUANTILE = 90.0


@dataclass(frozen=True)
class Bound:
    """The allowed values of one :class:`DemoConfig` field (and of its command-line option).

    Attributes
    ----------
    kind : type
        ``int`` or ``float``.
    lo, hi : number or None
        Lower and upper ends (None: unbounded).
    lo_open, hi_open : bool
        Whether the end itself is excluded (floats only; integer ranges are closed).
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, name, value):
        """``value`` as ``kind`` if allowed; else TypeError/ValueError naming ``name``, the
        value and the allowed range.

        Examples
        --------
        >>> BOUNDS["momentum"].check("momentum", 0.9)
        0.9
        >>> BOUNDS["steps"].check("steps", 5)
        Traceback (most recent call last):
        ...
        ValueError: steps must lie in [20, inf], got 5
        """
        if self.kind is int:
            return V.as_int(name, value, lo=self.lo, hi=self.hi)
        return V.as_scalar(name, value, lo=self.lo, hi=self.hi, lo_open=self.lo_open,
                           hi_open=self.hi_open)

    def describe(self) -> str:
        """The allowed values in words, for help texts.

        Examples
        --------
        >>> BOUNDS["steps"].describe(), BOUNDS["late"].describe()
        ('an integer >= 20', 'a number in (0, 1)')
        """
        what = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return (f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
        return what


#: the allowed values of every :class:`DemoConfig` field but ``widths`` (see
#: :func:`check_widths`): the one table both ``DemoConfig`` and the command line check
#: against.  Relations between fields (batch_size <= n, a positive wrong-rho control, at
#: least 10 late steps) are checked by ``DemoConfig`` after these.
BOUNDS = {
    "steps": Bound(int, lo=20),
    "seed": Bound(int, lo=0),
    "lr": Bound(float, lo=0.0, lo_open=True),
    "momentum": Bound(float, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    "weight_decay": Bound(float, lo=0.0, lo_open=True),
    "batch_size": Bound(int, lo=2),
    "n": Bound(int, lo=2),
    "dim": Bound(int, lo=1),
    "classes": Bound(int, lo=2),
    "separation": Bound(float, lo=0.0),
    "r0": Bound(float, lo=0.0, lo_open=True),
    "wrong_rho_factor": Bound(float, lo=1.0, lo_open=True),
    "late": Bound(float, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    "chunk": Bound(int, lo=1),
}
#: every hidden width
WIDTH_BOUND = Bound(int, lo=2)


def check_widths(widths):
    """The hidden widths as a tuple of ints, each allowed by :data:`WIDTH_BOUND`.

    Examples
    --------
    >>> check_widths([16, 16])
    (16, 16)
    """
    if isinstance(widths, (str, bytes)) or not np.iterable(widths):
        raise TypeError(f"widths must be a sequence of positive integers, got {widths!r}")
    w = tuple(WIDTH_BOUND.check(f"widths[{i}]", x) for i, x in enumerate(widths))
    if not w:
        raise ValueError("widths must hold at least one hidden width, got ()")
    return w


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (the command line's options; defaults are the demo's).

    The allowed values of every field are :data:`BOUNDS` (and :func:`check_widths`), the
    table the command line checks too.

    Attributes
    ----------
    steps : int
        SGD steps (each comparison run takes the same number).
    seed : int
        Seeds the data set, the initial weights and the minibatch draws.
    lr, momentum, weight_decay : float
        η, β, k of ``SGD`` (torch semantics).
    batch_size : int
        Minibatch size.
    n, dim, classes, separation : int, int, int, float
        Gaussian-mixture data set: points, input dimension, classes, distance of every
        class mean from the origin (noise 1 per coordinate).
    widths : tuple of int
        Hidden widths of the BatchNormMLP.
    r0 : float
        Initial norm of every hidden weight row (directions from ``BatchNormMLP.init``).
        Above the equilibrium radius the start is a weight-decay dominated transient, the
        phase in which RMSProp's ρ matters (docs/demo.md §4).
    wrong_rho_factor : float
        The wrong-ρ controls use ``1 − ρ`` multiplied and divided by this factor.
    late : float in (0, 1)
        Fraction of the run (at its end) over which the angular update (the chord
        |q̂ₙ₊₁ − q̂ₙ|) is averaged: its RMS over the last ``int(late * steps)`` steps.
    chunk : int
        Spacing of the grid of direction snapshots: the SGD demo snapshots q at the
        log-spaced grid points it prints (:func:`snapshot_steps`), its compiled calls
        ending there; the ``rule=`` demos make one compiled call per ``chunk`` steps.
    """

    steps: int = 20_000
    seed: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    n: int = 2048
    dim: int = 16
    classes: int = 4
    separation: float = 1.5
    widths: tuple = (32, 32)
    r0: float = 4.0
    wrong_rho_factor: float = 10.0
    late: float = 0.5
    chunk: int = 250

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            value = (check_widths(value) if f.name == "widths"
                     else BOUNDS[f.name].check(f.name, value))
            object.__setattr__(self, f.name, value)
        if self.batch_size > self.n:
            raise ValueError(f"batch_size={self.batch_size} exceeds the data set size "
                             f"n={self.n}")
        one_minus_rho = 4.0 * self.lr * self.weight_decay / (1.0 - self.momentum)
        if one_minus_rho * self.wrong_rho_factor >= 1.0:
            raise ValueError(
                f"4*lr*weight_decay/(1-momentum) * wrong_rho_factor = "
                f"{one_minus_rho * self.wrong_rho_factor:g} >= 1: the wrong-rho control "
                "would have rho <= 0; lower lr, weight_decay or wrong_rho_factor")
        if int(self.late * self.steps) < 10:
            raise ValueError(f"late*steps = {self.late * self.steps:g}: the late window "
                             "needs at least 10 steps")


@dataclass
class Check:
    """One printed check: its error(s), tolerance(s) and verdict."""

    name: str
    passed: bool
    errors: dict            # name -> float (the numbers printed)
    tolerances: dict        # name -> float (same keys where a tolerance applies)
    lines: list             # printed text


@dataclass
class DemoResult:
    """What :func:`run_demo` returns (``passed``: every check within tolerance)."""

    config: DemoConfig
    checks: list
    assumption: str
    text: str
    figure: str | None
    wall_time: float
    series: dict = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# -- the problem and the runs -------------------------------------------------------------------
def build_problem(cfg: DemoConfig):
    """The potential, q0 (every hidden row rescaled to norm r0) and the scale-block names."""
    X, y = gaussian_mixture(cfg.n, cfg.dim, classes=cfg.classes, seed=cfg.seed,
                            separation=cfg.separation)
    pot = BatchNormMLP(X, y, widths=cfg.widths)
    names = [s.blocks[0] for s in pot.symmetries if s.family == "scale"]
    q0 = pot.init(seed=cfg.seed + 1)
    for nm in names:
        idx = pot.blocks[nm]
        q0[idx] *= cfg.r0 / np.linalg.norm(q0[idx])
    return pot, q0, names


@dataclass
class RunRecord:
    """Per-block series of one chunked run (rows n = 0..N)."""

    a: np.ndarray           # (N+1, B) |q_B|²
    g2: np.ndarray          # (N+1, B) |∇_B f(q_n)|² on step n's minibatch (*)
    D: np.ndarray           # (N+1, B) |Δ_n|²_B, 0 at n = 0 (*)
    loss: np.ndarray        # (N+1,) minibatch loss of step n; last row full data
    g2_rest: np.ndarray     # (N+1,) |∇f|² outside the scale blocks (*)
    # (*) None for a run_chunked(..., block_stats=False)
    snap_steps: np.ndarray  # (S,) steps of the direction snapshots
    dirs: list              # per block (S, |B|) unit directions at the snapshots
    worst_residual: float   # worst exact balance residual (nan without charges)
    seconds: float
    diverged: bool


def snapshot_steps(cfg: DemoConfig):
    """The steps at which the demo compares directions (its printed table, docs/demo.md §4).

    The candidate grid is every ``cfg.chunk`` steps (0, chunk, 2·chunk, …, steps); of its
    S + 1 points the demo keeps index 0 and the indices ``round(geomspace(1, S, 7))``:
    log-spaced, so the early separation is resolved and the table stays short.

    Examples
    --------
    >>> snapshot_steps(DemoConfig())
    [0, 250, 500, 1000, 2250, 4750, 9750, 20000]
    """
    grid = list(range(0, cfg.steps, cfg.chunk)) + [cfg.steps]
    S = len(grid) - 1
    sel = sorted({0, *(int(round(x)) for x in np.geomspace(1, S, 7))}) if S else [0]
    return [grid[i] for i in sel]


def run_chunked(rule, pot, q0, names, cfg: DemoConfig, *, charges=False, progress=None,
                stops=None, block_stats=True):
    """Train ``rule`` for ``cfg.steps`` steps in compiled chunks, q snapshot between them.

    Chunks are chained with ``state=`` (bit-identical to one run, minibatch draws
    included) so q can be snapshot between them; within a chunk every step records the
    per-block series (``record_q=False, block_stats=True``).  ``progress`` is called with
    the number of steps done after each chunk.

    Parameters
    ----------
    stops : sequence of int, optional
        The steps at which to snapshot q (a compiled call ends at each; 0 and
        ``cfg.steps`` are always snapshots).  Default: every ``cfg.chunk`` steps.  The demo
        passes :func:`snapshot_steps`, so a 20 000-step run is 7 compiled calls, not 80:
        the series are the same bit for bit, only the snapshots differ.
    block_stats : bool
        Record ``g2``, ``D`` and ``g2_rest`` (default).  False: those fields are None
        (``a``, ``loss`` and the snapshots are kept); the demo's two SGD baselines need
        only their directions and losses, and the loop is ~25 % cheaper without.
    """
    t0 = time.perf_counter()
    if stops is None:
        stops = range(cfg.chunk, cfg.steps, cfg.chunk)
    ends = sorted({int(s) for s in stops if 0 < s < cfg.steps} | {cfg.steps})
    q, state = np.array(q0, dtype=float), None
    a, g2, D, loss, g2r, snaps, steps_at = [], [], [], [], [], [q0.copy()], [0]
    rest = [b for b in pot.blocks if b not in set(names)]      # blocks partition q
    worst, done, diverged = 0.0 if charges else math.nan, 0, False
    stack = lambda d: np.stack([d[nm] for nm in names], axis=1)  # noqa: E731
    for end in ends:
        m = end - done
        res = train(rule, pot, q, m, batch_size=cfg.batch_size,
                    seed=cfg.seed if state is None else None, state=state,
                    charges=charges, record_q=False, block_stats=block_stats)
        # the terminal row of a chunk is evaluated on the full data set; the next chunk's
        # first row is the same q_n with step n's minibatch: keep that one
        last = end >= cfg.steps
        sl = slice(0, None) if last else slice(0, -1)
        a.append(stack(res.block_norm2)[sl])
        loss.append(res.loss[sl])
        if block_stats:
            g2.append(stack(res.block_grad_norm2)[sl])
            D.append(stack(res.block_step_norm2)[sl])
            g2r.append(sum((res.block_grad_norm2[b] for b in rest),
                           np.zeros(len(res.loss)))[sl])
        if charges:
            worst = max(worst, res.balance_residual("exact"))
        state, q = res.state, res.q_final
        done = end
        if res.diverged:
            diverged = True
            break
        snaps.append(q.copy())
        steps_at.append(done)
        if progress is not None:
            progress(m)
    Q = np.array(snaps)
    dirs = []
    for nm in names:
        qb = Q[:, pot.blocks[nm]]
        dirs.append(qb / np.linalg.norm(qb, axis=1, keepdims=True))
    cat = lambda x: np.concatenate(x) if block_stats else None  # noqa: E731
    return RunRecord(np.concatenate(a), cat(g2), cat(D), np.concatenate(loss), cat(g2r),
                     np.array(steps_at), dirs, worst, time.perf_counter() - t0, diverged)


# -- the checks ---------------------------------------------------------------------------------
def _q(x, p):
    return float(np.percentile(x, p))


def _agg(x):
    """(median, 90th percentile) of a per-block array."""
    return float(np.median(x)), _q(x, QUANTILE)


def balance_check(rec: RunRecord) -> Check:
    """Worst in-loop relative residual of the exact balance laws (SPEC §1.1 for the row
    scalings; the read-out translations too) over every step and symmetry."""
    w = rec.worst_residual
    ok = bool(np.isfinite(w) and w <= BALANCE_TOL)
    line = (f"  exact balance (SPEC 1.1), worst relative residual over all steps and "
            f"symmetries: {w:.1e}   [tol {BALANCE_TOL:.0e}: round-off]  "
            f"{'ok' if ok else 'FAIL'}")
    return Check("balance", ok, {"worst_residual": w}, {"worst_residual": BALANCE_TOL},
                 [line])


def chords(a, D):
    """Per-step chord |q̂_{n+1} − q̂_n| from a = |q|² and D_{n+1} = |Δ_{n+1}|² alone.

    The chord is the demo's angular update (dimensionless; ≈ the angle in radians for
    small angles), the quantity ``theory.angular_updates`` computes from the rows.

    Law of cosines: D = (r_{n+1} − r_n)² + r_n r_{n+1} c² (exact), so
    c² = (D − (Δr)²)/(r_n r_{n+1}).  Returns (N, B) chords for n = 0..N−1.
    """
    r = np.sqrt(a)
    c2 = (D[1:] - np.diff(r, axis=0) ** 2) / (r[:-1] * r[1:])
    return np.sqrt(np.maximum(c2, 0.0))


def angle_check(rec: RunRecord, cfg: DemoConfig) -> Check:
    """Late-window RMS chord per block vs sqrt(2ηk/(1+β)) (docs/theory.md §3).

    Summing the exact balance over the window n = s..e−1 gives (theory §3)
    ``Σ w c²/Σ a = P² − Σ(Δr)²/Σa + B_W/((1+β)Σa)`` with ``w = r_n r_{n+1}``,
    ``P = steady_angular_update`` and the boundary term B_W.  The RMS chord differs from
    P by the radial share, the weighting (Σa/Σw, cov(w, c²)) — both computed — and by
    B_W, which at a statistical steady state is a zero-mean fluctuation; its tolerance
    is 3 standard deviations estimated from the window (docs/demo.md §2).
    """
    eta, beta, k = cfg.lr, cfg.momentum, cfg.weight_decay
    P = th.steady_angular_update(eta, beta, k)
    N = rec.a.shape[0] - 1
    W = int(cfg.late * N)
    s, e = N - W, N
    a, D = rec.a, rec.D
    c = chords(a, D)[s:e]                      # steps n = s..e-1
    c2 = c * c
    r = np.sqrt(a)
    w = r[s:e] * r[s + 1:e + 1]
    sum_a = a[s:e].sum(0)
    rms = np.sqrt(c2.mean(0))
    ratio = rms / P
    err = np.abs(ratio ** 2 - 1.0)             # relative error of the mean square chord
    # computed parts: radial share, weighting (Σa/Σw) and covariance of w and c²
    radial = (np.diff(r[s:e + 1], axis=0) ** 2).sum(0) / sum_a / P ** 2
    weighting = np.abs(sum_a / w.sum(0) - 1.0)
    cov = np.abs(((w - w.mean(0)) * (c2 - c2.mean(0))).mean(0)) / (w.mean(0) * P ** 2)
    # boundary term B_W = (a_e − a_s) − β(a_{e−1} − a_{s−1}) + β(D_e − D_s) ≈
    # (1−β)(a_e − a_s) + β[(a_e − a_{e−1}) − (a_s − a_{s−1})] + β(D_e − D_s): its
    # standard deviation at a steady state, from the window's own fluctuations
    sd_a = a[s:e + 1].std(0)
    sd_da = np.diff(a[s - 1:e + 1], axis=0).std(0)
    sd_D = D[s:e + 1].std(0)
    sd_B = np.sqrt(2.0) * ((1 - beta) * sd_a + beta * sd_da + beta * sd_D)
    bnd3 = 3.0 * sd_B / ((1 + beta) * sum_a) / P ** 2
    tol = radial + weighting + cov + bnd3
    within = err <= tol
    frac = float(within.mean())
    ok = bool(np.all(np.isfinite(err)) and np.all(np.isfinite(tol))
              and frac >= QUANTILE / 100.0)
    med, p90 = _agg(ratio)
    lines = [
        f"  angular update per step, late window (last {W} steps), RMS chord |q̂_{{n+1}} - "
        f"q̂_n| per block:",
        f"    theory sqrt(2*lr*k/(1+beta)) = {P:.5f};  measured/theory: median {med:.4f}, "
        f"10-90% [{_q(ratio, 10):.4f}, {p90:.4f}]",
        f"    |ratio^2 - 1|: median {np.median(err):.4f}, p90 {_q(err, QUANTILE):.4f};  "
        f"tolerance per block (radial + weighting + 3 sd of the boundary term): "
        f"median {np.median(tol):.4f}, p90 {_q(tol, QUANTILE):.4f}",
        f"    blocks within tolerance: {int(within.sum())}/{len(err)} "
        f"[need >= {QUANTILE:.0f}%]  {'ok' if ok else 'FAIL'}",
    ]
    return Check("angle", ok,
                 {"ratio_median": med, "ratio_p90": p90,
                  "err_median": float(np.median(err)), "err_p90": _q(err, QUANTILE),
                  "frac_within": frac},
                 {"frac_within": QUANTILE / 100.0}, lines)


def _ema0(x, lam):
    """Weighted sums y_n = Σ_{j<n} λ^{n−1−j} x_j, n = 0..N (y_0 = 0), along axis 0."""
    from scipy.signal import lfilter  # lazily: scipy.signal takes ~1 s to import

    y = lfilter([1.0], [1.0, -lam], x, axis=0)
    return np.concatenate([np.zeros((1,) + x.shape[1:]), y], axis=0)


def effective_gain(rec: RunRecord, cfg: DemoConfig):
    """The buffer gain κ the run's r⁴ actually saw up to each n, per block.

    Eq. 17 integrates κ η²|ĝ_j|² with the weights λ^{n−1−j}, λ its decay per step; the
    run's counterpart of κ|ĝ_j|² is D_{j+1} a_j/η² (definition of κ_j), so
    κ_eff(n) = Σ λ^{n−1−j} D_{j+1} a_j / Σ λ^{n−1−j} η²|ĝ_j|².  (N+1, B), nan at n = 0.
    """
    eta, beta, k = cfg.lr, cfg.momentum, cfg.weight_decay
    lam = math.exp(-4.0 * eta * k / (1.0 - beta))
    a, g2, D = rec.a, rec.g2, rec.D
    num = _ema0(D[1:] * a[:-1], lam)
    den = _ema0(eta * eta * g2[:-1] * a[:-1], lam)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def approximation_bound(a, D, lr, momentum, weight_decay):
    """Bound on the relative r² error of Eq. 17's approximations 2–4 on the true drive.

    From the exact balance multiplied by 2a_n (docs/demo.md §3), with u = a² = r⁴,
    Δa_j = a_{j+1} − a_j, c = 4k/(1−β), λ = e^{−cη}, F_n[x] = Σ_{j<n} λ^{n−1−j} x_j:
    the terms Eq. 17 drops are the inertia −2βa Δ²a/(1−β), the shift
    2βa(D_n − D_{n+1})/(1−β), the square (Δa)² and the continuum (e^{−cη}, zero-order
    hold).  Summing the first two by parts and bounding every term by its absolute value::

        |Δu|/u_n ≤ [2β/(1−β) (a_{n−1}(|Δa_{n−1}| + D_n) + F_n[x]) + F_n[(Δa)²]
                    + F_n[(cη)²u/2 + cη s/2]]/u_n
        x_j = (Δa_j)² + (cη/2)|Δu_j| + (|Δa_{j−1}| + cη a_{j−1}) D_j,
        s_j = 2(1+β) a_j D_{j+1}/(1−β)   (the drive)

    and the relative r² error is half of that.  The bound uses the trajectory's variation
    (|Δa|, D), never the error itself.

    Parameters
    ----------
    a, D : (N+1, B) arrays
        |q_B|² and |Δ_n|²_B (D_0 = 0, a fresh run from rest).
    lr, momentum, weight_decay : float

    Returns
    -------
    (N+1, B) array (row 0: 0)
    """
    eta, beta, k = lr, momentum, weight_decay
    c_eta = 4.0 * eta * k / (1.0 - beta)
    lam = math.exp(-c_eta)
    u = a * a
    da = np.diff(a, axis=0)                                           # Δa_j, j = 0..N−1
    da_prev = np.concatenate([np.zeros((1,) + a.shape[1:]), da[:-1]])  # Δa_{j−1}
    a_prev = np.concatenate([a[:1], a[:-2]])                          # a_{j−1} (a_0 at j=0)
    x = da * da + 0.5 * c_eta * np.abs(np.diff(u, axis=0)) + \
        (np.abs(da_prev) + c_eta * a_prev) * D[:-1]
    inst = np.zeros_like(a)
    inst[1:] = a[:-1] * (np.abs(da) + D[1:])
    g = 2.0 * beta / (1.0 - beta)
    # continuum: e^{−cη} for 1 − cη (difference ≤ (cη)²/2 per step) and the hold weight
    # (1 − e^{−cη})/(cη) for 1 (difference ≤ cη/2) acting on the Euler drive s_j ≥ 0
    s = 2.0 * (1.0 + beta) * a[:-1] * D[1:] / (1.0 - beta)
    cont = _ema0(0.5 * c_eta * c_eta * u[:-1] + 0.5 * c_eta * s, lam)
    bound = 0.5 * (g * (inst + _ema0(x, lam)) + _ema0(da * da, lam) + cont) / u
    bound[0] = 0.0
    return bound


def run_assumption(rec: RunRecord, cfg: DemoConfig, kappa=None) -> str:
    """The named correlation assumption the run follows: ``theory.nearest_assumption`` of
    the median over blocks of the whole-run κ_eff (:func:`effective_gain`; docs/demo.md
    §3).  The RMSProp runs of §4 need only this, so :func:`run_demo` starts them before
    the rest of the SGD run's analysis."""
    kap = effective_gain(rec, cfg) if kappa is None else kappa
    return th.nearest_assumption(float(np.median(kap[-1])), cfg.momentum)


def norm_check(rec: RunRecord, cfg: DemoConfig, times=None):
    """r²_n vs Eq. 17 from the measured |ĝ|² series, under the run's nearest assumption.

    Returns (Check, assumption, series dict).  The error of Eq. 17 is split exactly into
    its two sources (docs/theory.md §4, docs/demo.md §3):

    * e1, the correlation model: Eq. 17 vs the same filter driven by the |ĝ|² that would
      give the run's true steps under κ_A, ``D_{n+1} a_n/(η² κ_A)`` — i.e. κ_A in place of
      the gain the run had.  Theory makes no a priori claim about it beyond "nearest named
      κ"; printed, with κ_eff, as the measure of how well the assumption fits;
    * e2, approximations 2–4 (overdamping, squaring, continuum) on the true drive: the
      part the derivation claims small.  Checked against :func:`approximation_bound`.

    ``|Eq.17/r² − 1| = |(1+e1)(1+e2) − 1|``, so the total error is within
    ``|e1| + bound·(1+|e1|)`` exactly when ``|e2| ≤ bound``.
    """
    eta, beta, k = cfg.lr, cfg.momentum, cfg.weight_decay
    a, g2, D = rec.a, rec.g2, rec.D
    N = a.shape[0] - 1
    r0 = np.sqrt(a[0])
    kap = effective_gain(rec, cfg)
    warm = min(N, max(1, int(round(5.0 / (1.0 - beta)))))   # buffer warm-up, ~5/(1−β)
    assumption = run_assumption(rec, cfg, kap)
    kA = th.buffer_gain(beta, assumption)
    ns = th.norm_schedule((g2 * a)[:-1], eta, beta, k, r0, assumption=assumption)
    true_drive = D[1:] * a[:-1] / (eta * eta * kA)
    star = th.norm_schedule(true_drive, eta, beta, k, r0, assumption=assumption)
    bound = approximation_bound(a, D, eta, beta, k)
    if times is None:
        times = sorted({max(warm, int(N * f)) for f in (0.05, 0.1, 0.25, 0.5, 1.0)})
    lines = [f"  r^2(t) vs Eq. 17 driven by the measured |ĝ|^2 = |g_B|^2 |q_B|^2 series "
             f"(per block; assumption '{assumption}', kappa = {kA:.3g}):",
             f"    buffer gain the run had, kappa_eff (weighted as Eq. 17 weights it, whole "
             f"run): median {np.median(kap[-1]):.3g}, 10-90% [{_q(kap[-1], 10):.3g}, "
             f"{_q(kap[-1], 90):.3g}]; named: "
             + ", ".join(f"{A} {th.buffer_gain(beta, A):.3g}" for A in th.ASSUMPTIONS)
             + f" -> nearest '{assumption}'",
             "    |relative error| per block (median / p90):  Eq. 17 vs run = "
             "(correlation model) x (approximations 2-4)",
             "      step        Eq. 17         kappa part      approx. 2-4      bound 2-4"
             "    within"]
    errors, tols, ok = {}, {}, True
    for n in times:
        err = np.abs(ns.r2_continuous[n] / a[n] - 1.0)
        e1 = np.abs(ns.r2_continuous[n] / star.r2_continuous[n] - 1.0)
        e2 = np.abs(star.r2_continuous[n] / a[n] - 1.0)
        tol = bound[n]
        within = e2 <= tol
        frac = float(within.mean())
        good = bool(np.all(np.isfinite(err)) and np.all(np.isfinite(e2)) and frac == 1.0)
        ok &= good
        errors[f"err_median@{n}"], errors[f"err_p90@{n}"] = _agg(err)
        errors[f"kappa_part_median@{n}"], errors[f"kappa_part_p90@{n}"] = _agg(e1)
        errors[f"approx_median@{n}"], errors[f"approx_p90@{n}"] = _agg(e2)
        errors[f"frac_within@{n}"] = frac
        tols[f"frac_within@{n}"] = 1.0
        lines.append(f"    {n:6d}   {np.median(err):.4f} / {_q(err, QUANTILE):.4f}   "
                     f"{np.median(e1):.4f} / {_q(e1, QUANTILE):.4f}   "
                     f"{np.median(e2):.4f} / {_q(e2, QUANTILE):.4f}   "
                     f"{np.median(tol):.4f} / {_q(tol, QUANTILE):.4f}   "
                     f"{int(within.sum()):3d}/{len(err)}")
        errors[f"bound_median@{n}"] = float(np.median(tol))
    lines.append("    bound 2-4: the terms Eq. 17 drops (inertia, D shift, squaring, continuum), "
                 "bounded on the run's trajectory (docs/demo.md 3);")
    lines.append(f"    need every block within its bound at every time (a bound, not a "
                 f"statistic)  {'ok' if ok else 'FAIL'}")
    series = {"r2_measured": a, "r2_eq17": ns.r2_continuous, "r2_discrete": ns.r2_discrete,
              "r2_true_drive": star.r2_continuous, "kappa_eff": kap}
    return Check("eq17", ok, errors, tols, lines), assumption, series


def _eff_lr_error(rec_sgd, rec_rms, eq, rho, cfg):
    """|log(η'/sqrt(G_n) ÷ η/((1−β) r_n²))| per step and block (N+1, B).

    G_n of the RMSProp run is recomputed exactly from its own |g_B|² series by the rule's
    recursion (``theory.rmsprop_scale(...).sqrt_G_discrete``; eps = 0)."""
    eta, beta = cfg.lr, cfg.momentum
    sqrtG = th.rmsprop_scale(rec_rms.g2[:-1], eq.lr, rho, eq.G0).sqrt_G_discrete
    eff_rms = eq.lr / sqrtG
    eff_sgd = eta / ((1.0 - beta) * rec_sgd.a)
    return np.abs(np.log(eff_rms / eff_sgd)), eff_rms, eff_sgd


def _dir_distance(r1: RunRecord, r2: RunRecord):
    """|q̂¹_B − q̂²_B| at the common snapshots, (S, B)."""
    S = min(len(r1.snap_steps), len(r2.snap_steps))
    return np.stack([np.linalg.norm(d1[:S] - d2[:S], axis=1)
                     for d1, d2 in zip(r1.dirs, r2.dirs, strict=True)], axis=1)


def baseline_jobs(pot, q0, names, cfg: DemoConfig, *, stops=None, progress=None):
    """The two SGD baselines of the direction comparison, as zero-argument callables.

    ``"SGD q0*(1+1e-9)"``: SGD from q0 perturbed by 1e-9 (relative), same minibatches
    (sensitivity to the start); ``"SGD other batches"``: SGD from q0 with the minibatch
    seed ``cfg.seed + 1000`` (independent noise).  Each callable returns the
    :class:`RunRecord` of :func:`run_chunked` (snapshots at ``stops``; no block statistics:
    the comparison reads their directions and losses only).  They depend on
    nothing the SGD run computes, so :func:`run_demo` starts them beside it.
    """
    sgd = SGD(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 2)
    qp = q0 * (1.0 + 1e-9 * rng.standard_normal(q0.shape))
    other = replace(cfg, seed=cfg.seed + 1000)
    return {"SGD q0*(1+1e-9)": lambda: run_chunked(sgd, pot, qp, names, cfg, stops=stops,
                                                   progress=progress, block_stats=False),
            "SGD other batches": lambda: run_chunked(sgd, pot, q0, names, other, stops=stops,
                                                     progress=progress, block_stats=False)}


def _start(jobs, executor):
    """Run ``jobs`` (label -> callable) now, or submit them to ``executor``."""
    if executor is None:
        return {lb: fn() for lb, fn in jobs.items()}
    return {lb: executor.submit(fn) for lb, fn in jobs.items()}


def _finish(started):
    """The results of :func:`_start`, in the jobs' order (waits for submitted ones)."""
    return {lb: (v.result() if isinstance(v, Future) else v) for lb, v in started.items()}


def _rmsprop_setup(assumption, cfg: DemoConfig):
    """(equivalent_rmsprop, {label: ρ}) of the matched run and the two wrong-ρ controls."""
    eq = th.equivalent_rmsprop(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.r0,
                               assumption=assumption)
    f = cfg.wrong_rho_factor
    return eq, {"matched": eq.rho, f"1-rho x{f:g}": 1.0 - f * (1.0 - eq.rho),
                f"1-rho /{f:g}": 1.0 - (1.0 - eq.rho) / f}


def rmsprop_jobs(pot, q0, names, assumption, cfg: DemoConfig, *, stops=None,
                 progress=None):
    """The three RMSProp runs of :func:`rmsprop_comparison` as zero-argument callables
    (label -> callable returning a :class:`RunRecord`): ``ScalarRMSProp(project=True)``
    from q0 with every scale block normalised, at the matched ρ of
    ``theory.equivalent_rmsprop(assumption=...)`` and at the two wrong-ρ controls."""
    eq, rhos = _rmsprop_setup(assumption, cfg)
    qu = np.array(q0, dtype=float)
    for nm in names:
        qu[pot.blocks[nm]] /= np.linalg.norm(qu[pot.blocks[nm]])

    def job(rho):
        rule = ScalarRMSProp(lr=eq.lr, rho=rho, eps=0.0, G0=eq.G0, project=True)
        return lambda: run_chunked(rule, pot, qu, names, cfg, stops=stops, progress=progress)
    return {lb: job(rho) for lb, rho in rhos.items()}


def rmsprop_comparison(pot, q0, names, rec_sgd: RunRecord, assumption, cfg: DemoConfig,
                       progress=None, *, executor=None, baselines=None, runs=None):
    """Scalar RMSProp on unit-norm rows (matched ρ and two wrong ρ) vs the SGD run.

    Returns (Check, series dict).  The check: over the transient window
    n ≤ 3/(1−ρ*) (three memory times of G and of r⁴ — where ρ matters, docs/demo.md §4),
    the time-averaged median-over-blocks |log| effective-learning-rate mismatch of the
    matched run must be below both wrong-ρ runs'.

    Parameters
    ----------
    executor : concurrent.futures.Executor, optional
        Runs the three RMSProp runs (and the baselines, if not given) concurrently; each
        run is independent and its compiled loop releases the GIL, so the results are the
        same as one after the other.  None: one after the other, on this thread.
    baselines : dict, optional
        label -> :class:`RunRecord` or a Future of one, the runs of :func:`baseline_jobs`
        already started; None: started here.  Every run snapshots q at the SGD run's
        ``snap_steps``.
    runs : dict, optional
        Likewise for the three RMSProp runs of :func:`rmsprop_jobs` (same ``assumption``).
    """
    eta, beta = cfg.lr, cfg.momentum
    eq, rhos = _rmsprop_setup(assumption, cfg)
    N = rec_sgd.a.shape[0] - 1
    T = min(N, int(math.ceil(3.0 / (1.0 - eq.rho))))
    stops = [int(x) for x in rec_sgd.snap_steps]
    if baselines is None:
        baselines = _start(baseline_jobs(pot, q0, names, cfg, stops=stops,
                                         progress=progress), executor)
    if runs is None:
        runs = _start(rmsprop_jobs(pot, q0, names, assumption, cfg, stops=stops,
                                   progress=progress), executor)
    recs = _finish(runs)
    errs, effs = {}, {}
    for label, rho in rhos.items():
        if recs[label].diverged:
            raise RuntimeError(f"the RMSProp run ({label}, rho={rho}) diverged")
        errs[label], effs[label], eff_sgd = _eff_lr_error(rec_sgd, recs[label], eq, rho,
                                                          cfg)
    recs.update(_finish(baselines))
    trans = {lb: float(np.mean(np.median(e[1:T + 1], axis=1))) for lb, e in errs.items()}
    late = {lb: float(np.mean(np.median(e[N - int(cfg.late * N):], axis=1)))
            for lb, e in errs.items()}
    wrong = [lb for lb in rhos if lb != "matched"]
    ok = bool(all(np.isfinite(v) for v in trans.values())
              and all(trans["matched"] < trans[lb] for lb in wrong))
    lines = ["  RMSProp correspondence (Sec. 4, Eq. 18-20): SGD on free norms vs the paper's "
             "scalar RMSProp on unit-norm rows,",
             f"    equivalent_rmsprop(assumption='{assumption}'): lr' = {eq.lr:.5f}, rho = "
             f"{eq.rho:.5f}, G0 = {eq.G0:.4g}; wrong-rho controls: "
             + ", ".join(f"{lb} (rho = {rhos[lb]:.5f})" for lb in wrong),
             "    effective learning rate per block, |log(lr'/sqrt(G_n) / (lr/((1-beta)"
             "r_n^2)))|, median over blocks, time-averaged:",
             f"      {'run':<16} transient (n <= {T})   late window"]
    for lb in rhos:
        lines.append(f"      {lb:<16} {trans[lb]:18.4f}   {late[lb]:11.4f}")
    printed = set(snapshot_steps(cfg))
    sel = [i for i, n in enumerate(rec_sgd.snap_steps) if n in printed]
    dist = {lb: _dir_distance(rec_sgd, r) for lb, r in recs.items()}
    lines.append("    direction distance |q̂_SGD - q̂_other| per block, median (random unit "
                 "vectors: ~1.41):")
    lines.append("      step  " + "".join(f"{lb:>20}" for lb in dist))
    for i in sel:
        lines.append(f"      {rec_sgd.snap_steps[i]:6d}" +
                     "".join(f"{np.median(dist[lb][i]):20.3g}" for lb in dist))
    win = max(1, min(N // 10, 500))
    lines.append(f"    loss (minibatch, mean over {win} steps; last: full data set):")
    lines.append("      step  " + "".join(f"{lb:>20}" for lb in ["SGD"] + list(recs)))
    allrec = {"SGD": rec_sgd, **recs}
    for n in [win, N // 4, N // 2, 3 * N // 4, N]:
        if n < win:
            continue
        if n == N:
            vals = [r.loss[-1] for r in allrec.values()]
        else:
            vals = [float(np.mean(r.loss[n - win:n])) for r in allrec.values()]
        lines.append(f"      {n:6d}" + "".join(f"{v:20.4f}" for v in vals))
    # the coordinates outside the scale blocks (gamma, beta, read-out): Sec. 4 says nothing
    # about them; SGD moves them with lr/(1-beta) and decay, RMSProp with its shared "rest" G
    g2r = recs["matched"].g2_rest
    sqrtG_rest = th.rmsprop_scale(g2r[:-1], eq.lr, eq.rho, eq.G0).sqrt_G_discrete
    lr_rest = float(np.median(eq.lr / sqrtG_rest[N - int(cfg.late * N):]))
    n_rest = pot.dim - sum(len(pot.blocks[b]) for b in names)
    lines.append(f"    other parameters (gamma, beta, read-out: {n_rest} of {pot.dim}), outside "
                 f"the correspondence: SGD moves them by lr/(1-beta) = {eta / (1 - beta):.3g}"
                 f" x gradient, with decay;")
    lines.append(f"      RMSProp by lr'/sqrt(G_rest) = {lr_rest:.3g} x gradient (late median; "
                 f"one shared G), no decay")
    lines.append(f"    check: transient mismatch of the matched rho below both wrong-rho "
                 f"controls  {'ok' if ok else 'FAIL'}")
    errors = {f"transient[{lb}]": v for lb, v in trans.items()}
    errors.update({f"late[{lb}]": v for lb, v in late.items()})
    check = Check("rmsprop", ok, errors, {}, lines)
    series = {"eff_lr": effs, "eff_lr_sgd": eff_sgd, "recs": recs, "dist": dist,
              "transient_steps": T, "rhos": rhos, "equivalent": eq}
    return check, series


# -- figure -------------------------------------------------------------------------------------
#: the figures draw at most about this many points per curve (every k-th step): the
#: panels are ~1000 pixels wide, so more points only cost drawing time
FIGURE_POINTS = 1500


def _moving_mean(x, w, rows):
    """Mean of ``x[n-w:n]`` along axis 0 at the window ends ``n`` in ``rows`` (each
    ≥ w), from one cumulative sum."""
    cs = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])
    return (cs[rows] - cs[rows - w]) / w


def write_figure(path, cfg, rec_sgd, norm_series, rms_series, P):
    """Four panels: r² vs Eq. 17; angular update vs theory; effective learning rates;
    SGD vs RMSProp loss.  Returns the path, or None without matplotlib.

    Draws on a :class:`matplotlib.figure.Figure` of its own and saves it with
    ``Figure.savefig``: pyplot is not imported and the process's backend is left as it
    was (a library must not switch it).  Every curve is drawn at every k-th step
    (:data:`FIGURE_POINTS` points at most); the moving averages are computed exactly at
    those steps (cumulative sums), so thinning only drops points, it smooths nothing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    N = rec_sgd.a.shape[0] - 1
    k = max(1, -(-(N + 1) // FIGURE_POINTS))
    n = np.arange(0, N + 1, k)
    fig = Figure(figsize=(11, 8))
    fig.subplots_adjust(left=0.085, right=0.985, bottom=0.065, top=0.91, wspace=0.25,
                        hspace=0.3)
    ax = fig.subplots(2, 2)
    a = norm_series["r2_measured"][n]
    eq = norm_series["r2_eq17"][n]
    for j in range(min(4, a.shape[1])):
        ax[0, 0].plot(n, a[:, j], color=f"C{j}", lw=0.8)
        ax[0, 0].plot(n, eq[:, j], color=f"C{j}", lw=1.2, ls="--")
    ax[0, 0].plot(n, np.median(a, 1), "k", lw=1.5, label="measured (median over blocks)")
    ax[0, 0].plot(n, np.median(eq, 1), "k--", lw=1.5, label="Eq. 17 from measured |ĝ|²")
    ax[0, 0].set(xlabel="step n", ylabel="r² = |q_B|²", yscale="log",
                 title="weight-row norm: run vs Eq. 17 (4 blocks + median)")
    ax[0, 0].legend(fontsize=8)
    c = chords(rec_sgd.a, rec_sgd.D)
    win = max(1, min(N // 20, 500))
    nn = np.arange(win, N + 1, k)                   # window ends: chords n-win .. n-1
    rms = np.sqrt(_moving_mean(c * c, win, nn))
    lo, med, hi = np.percentile(rms, [10, 50, 90], axis=1)
    ax[0, 1].plot(nn, med, "k", label=f"RMS chord over {win} steps (median)")
    ax[0, 1].fill_between(nn, lo, hi, color="0.8", label="10-90% of blocks")
    ax[0, 1].axhline(P, color="C3", ls="--", label="sqrt(2ηk/(1+β))")
    ax[0, 1].set(xlabel="step n", ylabel="chord |q̂ₙ₊₁ − q̂ₙ|", yscale="log",
                 title="angular update per step (chord)")
    ax[0, 1].legend(fontsize=8)
    ax[1, 0].plot(n, np.median(rms_series["eff_lr_sgd"][n], 1), "k", lw=1.5,
                  label="SGD η/((1−β)r²)")
    for i, (lb, e) in enumerate(rms_series["eff_lr"].items()):
        ax[1, 0].plot(n, np.median(e[n], 1), color=f"C{i}", lw=1,
                      label=f"RMSProp η'/√G, {lb}")
    ax[1, 0].set(xlabel="step n", ylabel="effective lr (median over blocks)", yscale="log",
                 title="effective learning rate on the sphere")
    ax[1, 0].legend(fontsize=8)
    lw = max(1, min(N // 20, 500))
    nl = np.arange(lw, N + 1, k)                    # mean of the minibatch losses nl-lw..nl-1
    ax[1, 1].plot(nl, _moving_mean(rec_sgd.loss, lw, nl), "k", lw=1.5, label="SGD")
    for i, (lb, r) in enumerate(rms_series["recs"].items()):
        ax[1, 1].plot(nl, _moving_mean(r.loss, lw, nl), color=f"C{i}", lw=1,
                      label=lb if lb.startswith("SGD") else f"RMSProp, {lb}")
    ax[1, 1].set(xlabel="step n", ylabel=f"minibatch loss ({lw}-step mean)",
                 title="SGD vs RMSProp on unit-norm rows")
    ax[1, 1].legend(fontsize=8)
    fig.suptitle(f"BatchNormMLP {cfg.widths}, SGD(lr={cfg.lr}, momentum={cfg.momentum}, "
                 f"weight_decay={cfg.weight_decay}), batch {cfg.batch_size}, seed {cfg.seed}")
    # zlib level 1: a quarter of the default's encoding time, a somewhat larger file
    fig.savefig(path, dpi=110, pil_kwargs={"compress_level": 1})
    return str(path)


# -- other rules: Nesterov, AdamW, Adam (L2), RMSprop (L2) ---------------------------------------
#: the rules ``python -m noether_core demo --rule`` runs
DEMO_RULES = ("sgd", "nesterov", "adamw", "adam", "rmsprop")
#: per rule, (lr, momentum, weight_decay) when the options are not given, at full size and
#: at the reduced size of :func:`reduced_rule`.  ``momentum`` is β for SGD and Nesterov,
#: β₁ for Adam and AdamW (β₂ = 0.999), the smoothing α of RMSprop's second moment.  The
#: norm's relaxation time 1/(2ηλ_eff) is a few hundred steps, so the late window is
#: stationary on it (docs/theory.md §9.6).  RMSprop with L2 decay shrinks the rows of dead
#: ReLU units geometrically (no gradient, v tracks (kq)²) until they underflow and
#: BatchNorm divides 0 by 0: at full size α = 0.99 does that within 20000 steps, α = 0.9
#: does not (seed 0); the demo then stops with "diverged"
RULE_DEFAULTS = {"sgd": ((0.1, 0.9, 5e-4), (0.1, 0.9, 2e-3)),
                 "nesterov": ((0.1, 0.9, 5e-4), (0.1, 0.9, 2e-3)),
                 "adamw": ((1e-2, 0.9, 0.1), (1e-2, 0.9, 0.2)),
                 "adam": ((1e-2, 0.9, 2e-3), (1e-2, 0.9, 2e-3)),
                 "rmsprop": ((1e-3, 0.9, 0.1), (1e-3, 0.99, 0.1))}
#: issue 18's targets: steady chord within 4 % of the late-window RMS chord and the |q|²
#: schedule within 10 % at every step ≥ 100 (both medians over live blocks)
ANGLE_TOL, NORM_TOL, NORM_FROM = 0.04, 0.10, 100


def _rule_name(rule):
    if rule not in DEMO_RULES:
        raise ValueError(f"rule must be one of {DEMO_RULES}, got {rule!r}")
    return rule


def make_rule(rule, cfg: DemoConfig):
    """(noether_core rule, theory hyper-parameters) of ``rule`` at cfg's lr, momentum and
    weight decay (``momentum``: β, β₁ or RMSprop's α)."""
    eta, mom, k = cfg.lr, cfg.momentum, cfg.weight_decay
    if _rule_name(rule) in ("sgd", "nesterov"):
        return (SGD(lr=eta, momentum=mom, weight_decay=k, nesterov=rule == "nesterov"),
                {"lr": eta, "momentum": mom, "weight_decay": k})
    if rule in ("adamw", "adam"):
        cls = AdamW if rule == "adamw" else Adam
        return (cls(lr=eta, betas=(mom, 0.999), weight_decay=k),
                {"lr": eta, "betas": (mom, 0.999), "weight_decay": k})
    return (RMSprop(lr=eta, alpha=mom, weight_decay=k),
            {"lr": eta, "alpha": mom, "weight_decay": k})


def reduced_rule(rule, **over):
    """:func:`reduced` with ``rule``'s reduced-size hyper-parameters (for the tests)."""
    lr, mom, k = RULE_DEFAULTS[_rule_name(rule)][1]
    return reduced(**{"lr": lr, "momentum": mom, "weight_decay": k, **over})


def _draw_rows(rng, n_data, batch_size, steps, chunk=500):
    """The minibatch rows of ``steps`` consecutive steps of the compiled loop.

    docs/rules.md §2: each step is a partial Fisher–Yates shuffle of the identity over
    ``batch_size`` doubles of the run's generator, in order; here vectorised over steps
    (the doubles are drawn in the same order, so the stream continues exactly).
    """
    out = np.empty((steps, batch_size), dtype=np.intp)
    for s0 in range(0, steps, chunk):
        m = min(chunk, steps - s0)
        u = rng.random((m, batch_size))
        perm = np.tile(np.arange(n_data), (m, 1))
        r = np.arange(m)
        for i in range(batch_size):
            j = np.minimum(i + (u[:, i] * (n_data - i)).astype(np.intp), n_data - 1)
            pi, pj = perm[r, i].copy(), perm[r, j].copy()
            perm[r, i], perm[r, j] = pj, pi
        out[s0:s0 + m] = perm[:, :batch_size]
    return out


@dataclass
class RuleRecord:
    """Per-block series of a chunked run of one rule (rows n = 0..N; stats n = 0..N−1)."""

    a: np.ndarray           # (N+1, B) |q_B|²
    D: np.ndarray           # (N+1, B) |Δ_n|²_B, 0 at n = 0
    stats: list             # per block theory.GradStats (per-step series, N)
    live: np.ndarray        # (B,) bool: the block's gradient never vanished exactly
    loss: np.ndarray        # (N+1,)
    seconds: float
    diverged: bool


def run_rule_chunked(rule, name, hyper, pot, q0, names, cfg: DemoConfig, progress=None):
    """Train ``rule`` in chunks; per step and block record a, D and the gradient
    statistics of ``theory.gradient_stats`` (docs/theory.md §9).

    The gradients are not recorded by the loop; they are recomputed from the recorded
    q_n on step n's minibatch, the rows replayed from the run's seed (:func:`_draw_rows`),
    and streamed block by block through ``gradient_stats(..., state=)`` — no step or norm
    of the run enters a statistic (the adaptive rules use the direction q̂ and, for coupled
    decay, k·q inside the second moment, as the optimizer does).
    """
    t0 = time.perf_counter()
    adaptive = name not in ("sgd", "nesterov")
    rng = np.random.default_rng(cfg.seed)
    q, state = np.array(q0, dtype=float), None
    a, D, loss = [], [], []
    parts = {nm: [] for nm in names}
    states = dict.fromkeys(names)
    live = np.ones(len(names), bool)
    done, diverged = 0, False
    stack = lambda d: np.stack([d[nm] for nm in names], axis=1)  # noqa: E731
    while done < cfg.steps:
        m = min(cfg.chunk, cfg.steps - done)
        res = train(rule, pot, q, m, batch_size=cfg.batch_size,
                    seed=cfg.seed if state is None else None, state=state,
                    charges=False, record_q=True, block_stats=True)
        if res.diverged:
            diverged = True
            break
        last = done + m >= cfg.steps
        sl = slice(0, None) if last else slice(0, -1)
        a.append(stack(res.block_norm2)[sl])
        D.append(stack(res.block_step_norm2)[sl])
        loss.append(res.loss[sl])
        rows = _draw_rows(rng, pot.n_data, cfg.batch_size, m)
        G = np.array([pot.grad(res.q[i], rows[i]) for i in range(m)])
        for j, nm in enumerate(names):
            idx = pot.blocks[nm]
            g = G[:, idx]
            live[j] &= not np.any(np.all(g == 0.0, axis=1))
            extra = (res.q[:-1, idx],) if adaptive else ()
            gs = th.gradient_stats(name, g, *extra, state=states[nm], **hyper)
            parts[nm].append(gs)
            states[nm] = gs.state
        state, q = res.state, res.q_final
        done += m
        if progress is not None:
            progress(m)
    stats = [th.GradStats.concat(parts[nm]) for nm in names] if not diverged else []
    return RuleRecord(np.concatenate(a), np.concatenate(D), stats, live,
                      np.concatenate(loss), time.perf_counter() - t0, diverged)


def _stack_stats(stats, name):
    def st(f):
        xs = [getattr(g, f) for g in stats]
        return None if xs[0] is None else np.stack(xs, axis=1)
    return th.GradStats(name, st("update_sq"), st("cross"), st("metric"), st("precond"),
                        stats[0].steps, None, st("shift"))


def rule_checks(rec: RuleRecord, name, hyper, cfg: DemoConfig):
    """The two checks of a non-SGD demo run (docs/demo.md §5) and the series they use.

    * angle: per live block, the late-window RMS chord (from a and D, :func:`chords`) vs
      ``theory.equilibrium`` fed the same window's gradient statistics; median ratio
      within ``ANGLE_TOL``;
    * schedule: ``theory.rule_norm_schedule`` from |q_0| and the gradient statistics vs
      the run's |q|², median relative error over live blocks at every step ≥
      ``NORM_FROM`` within ``NORM_TOL``; and its predicted RMS chord over the window within
      ``ANGLE_TOL``.
    """
    N = rec.a.shape[0] - 1
    W = int(cfg.late * N)
    live = rec.live
    a, D = rec.a[:, live], rec.D[:, live]
    c = chords(a, D)[N - W:]
    rms = np.sqrt(np.mean(c * c, axis=0))
    gs = _stack_stats([s for s, ok in zip(rec.stats, live, strict=True) if ok], name)
    eq = th.equilibrium(name, grad_stats=gs.mean(N - W), **hyper)
    ratio = rms / eq.angular_update
    sc = th.rule_norm_schedule(name, gs, np.sqrt(a[0]), **hyper)
    sched = np.sqrt(np.mean(sc.angular_update[N - W:] ** 2, axis=0))
    ratio_s = rms / sched
    err = np.abs(sc.norm_sq / a - 1.0)
    med_err = np.median(err, axis=1)
    worst = float(np.max(med_err[NORM_FROM:])) if N > NORM_FROM else float(np.max(med_err))
    ok_a = bool(abs(np.median(ratio) - 1.0) <= ANGLE_TOL)
    ok_s = bool(worst <= NORM_TOL and abs(np.median(ratio_s) - 1.0) <= ANGLE_TOL)
    earlier = None
    if name == "nesterov":
        earlier = ("uncorrelated form", th.steady_angular_update(
            hyper["lr"], hyper["momentum"], hyper["weight_decay"], rule="nesterov",
            assumption="uncorrelated"))
    elif name == "adamw":
        earlier = ("rotational form sqrt(2*lr*wd*(1-b1)/(1+b1))", th.steady_angular_update(
            hyper["lr"], hyper["betas"][0], hyper["weight_decay"], rule="adamw"))
    nb, nl = len(live), int(live.sum())
    lines = [f"  angular update per step, late window (last {W} steps), RMS chord per live "
             f"block ({nl} of {nb}; dead units, whose gradient vanished, left out):",
             f"    theory.equilibrium('{name}') from the window's gradient statistics: "
             f"median {np.median(eq.angular_update):.5f}, regime {eq.regime}",
             f"    measured/theory: median {np.median(ratio):.4f}, 10-90% "
             f"[{_q(ratio, 10):.4f}, {_q(ratio, 90):.4f}]   [need |median - 1| <= "
             f"{ANGLE_TOL:g}]  {'ok' if ok_a else 'FAIL'}"]
    if earlier is not None:
        lines.append(f"    (the {earlier[0]} = {earlier[1]:.5f}: measured/it median "
                     f"{np.median(rms) / earlier[1]:.4f})")
    if eq.metric_share is not None:
        lines.append(f"    metric term's share of the steady norm drive: median "
                     f"{np.median(eq.metric_share):+.3f}")
    n_angle = len(lines)
    lines += ["  |q|^2 schedule from |q_0| and the gradient statistics "
              "(theory.rule_norm_schedule), median over live blocks:",
              "      step   |rel. error|"]
    for n in sorted({NORM_FROM, N // 4, N // 2, N} & set(range(NORM_FROM, N + 1))):
        lines.append(f"    {n:6d}   {med_err[n]:.4f}")
    lines.append(f"    worst over steps >= {NORM_FROM}: {worst:.4f} [need <= {NORM_TOL:g}];"
                 f" its RMS chord over the window: measured/schedule median "
                 f"{np.median(ratio_s):.4f} [need within {ANGLE_TOL:g}]  "
                 f"{'ok' if ok_s else 'FAIL'}")
    checks = [Check("angle", ok_a, {"ratio_median": float(np.median(ratio)),
                                    "err_median": float(abs(np.median(ratio) - 1.0))},
                    {"err_median": ANGLE_TOL}, lines[:n_angle]),
              Check("schedule", ok_s, {"worst_median_err": worst,
                                       "chord_err_median": float(abs(np.median(ratio_s)
                                                                     - 1.0))},
                    {"worst_median_err": NORM_TOL, "chord_err_median": ANGLE_TOL},
                    lines[n_angle:])]
    series = {"a": a, "norm_sq": sc.norm_sq, "chord_rms": rms, "steady": eq.angular_update,
              "sched_chord": sc.angular_update, "chords": c, "equilibrium": eq}
    return checks, series


def _write_rule_figure(path, cfg, name, series):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    a, pred = series["a"], series["norm_sq"]
    n = np.arange(a.shape[0])
    fig = Figure(figsize=(11, 4))
    ax = fig.subplots(1, 2)
    for j in range(min(4, a.shape[1])):
        ax[0].plot(n, a[:, j], color=f"C{j}", lw=0.8)
        ax[0].plot(n, pred[:, j], color=f"C{j}", lw=1.2, ls="--")
    ax[0].set(xlabel="step n", ylabel="|q_B|²", yscale="log",
              title="run (solid) vs rule_norm_schedule (dashed), 4 blocks")
    ax[1].scatter(series["steady"], series["chord_rms"], s=10)
    lim = [float(np.min(series["steady"])) * 0.9, float(np.max(series["steady"])) * 1.1]
    ax[1].plot(lim, lim, "k--", lw=1)
    ax[1].set(xlabel="theory.equilibrium (window statistics)",
              ylabel="measured RMS chord", title="late-window angular update per block")
    fig.suptitle(f"BatchNormMLP {cfg.widths}, {name}(lr={cfg.lr}, momentum/beta1/alpha="
                 f"{cfg.momentum}, weight_decay={cfg.weight_decay}), batch {cfg.batch_size}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def _run_rule_demo(cfg, rule, out, progress, stream):
    import os

    t0 = time.perf_counter()
    pot, q0, names = build_problem(cfg)
    rule_obj, hyper = make_rule(rule, cfg)
    rec = run_rule_chunked(rule_obj, rule, hyper, pot, q0, names, cfg, progress=progress)
    if rec.diverged:
        raise RuntimeError(f"the {rule} run diverged (lr={cfg.lr}); lower lr")
    if rec.live.sum() == 0:
        raise RuntimeError(f"every unit of the {rule} run died (no gradient left)")
    checks, series = rule_checks(rec, rule, hyper, cfg)
    figure = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        figure = _write_rule_figure(os.path.join(out, f"demo_{rule}.png"), cfg, rule,
                                    series)
    wall = time.perf_counter() - t0
    head = [f"noether_core demo --rule {rule}: BatchNormMLP widths {cfg.widths} on "
            f"gaussian_mixture(n={cfg.n}, d={cfg.dim}, classes={cfg.classes}, separation="
            f"{cfg.separation}), {pot.dim} parameters, {len(names)} scale blocks, "
            f"|q_B|(0) = {cfg.r0}",
            f"  {type(rule_obj).__name__}({', '.join(f'{k}={v}' for k, v in hyper.items())}"
            f"{', nesterov=True' if rule == 'nesterov' else ''}), batch {cfg.batch_size}, "
            f"{cfg.steps} steps, seed {cfg.seed}: {rec.seconds:.1f} s; loss "
            f"{np.mean(rec.loss[:10]):.3f} -> {rec.loss[-1]:.3f} (full data)",
            "  predictions use hyper-parameters and gradient statistics only "
            "(docs/theory.md §9), never the run's steps or norms"]
    text = _report(head, checks, out, figure, wall, stream)
    return DemoResult(cfg, checks, series["equilibrium"].regime, text, figure, wall,
                      {rule: rec, "theory": series})


# -- the whole job ------------------------------------------------------------------------------
#: the demo trains this many runs of cfg.steps steps (SGD, three RMSProp, two baselines)
N_RUNS = 6


def runs_total_steps(cfg: DemoConfig, rule="sgd") -> int:
    """Total steps the demo trains (for a progress indication)."""
    return (N_RUNS if _rule_name(rule) == "sgd" else 1) * cfg.steps


class _Shared:
    """The progress callback shared by concurrent runs: serialised by a lock, and the way
    to stop them (after :meth:`stop`, the next chunk boundary of every run raises)."""

    def __init__(self, progress):
        self.progress, self.lock, self.stopped = progress, threading.Lock(), threading.Event()

    def __call__(self, n):
        if self.stopped.is_set():
            raise RuntimeError("the demo was stopped")
        if self.progress is not None:
            with self.lock:
                self.progress(n)

    def stop(self):
        self.stopped.set()


def _prefetch(figure):
    """Import what the analysis (scipy.signal, through theory) and the figure (matplotlib's
    Figure and Agg canvas) need on a daemon thread, while the compiled runs, which release
    the GIL, train: ~1–2 s of imports off the wall time.  Imports are thread-safe (the
    import lock); a missing module is left for the code that needs it to report."""
    def work():
        import importlib
        mods = ["scipy.signal"] + (["matplotlib.figure", "matplotlib.backends.backend_agg"]
                                   if figure else [])
        for mod in mods:
            try:
                importlib.import_module(mod)
            except ImportError:
                pass
    t = threading.Thread(target=work, name="noether-demo-imports", daemon=True)
    t.start()
    return t


def run_demo(cfg: DemoConfig | None = None, out=None, *, progress=None, stream=None,
             rule="sgd", threads=None):
    """Run the demo; print to ``stream`` (None: print nothing) and return a DemoResult.

    Parameters
    ----------
    cfg : DemoConfig
    out : str or path, optional
        Folder for the figure ``demo.png`` (created if missing); None: no figure.  The
        figure needs matplotlib (drawn on a ``matplotlib.figure.Figure``: no pyplot, the
        backend left alone); without it ``DemoResult.figure`` is None.
    progress : callable, optional
        Called with the number of steps just done after every compiled chunk
        (:func:`runs_total_steps` in all).
    stream : file-like, optional
    rule : {"sgd", "nesterov", "adamw", "adam", "rmsprop"}
        "sgd" (default): the paper's Sec. 4 checks (balance, angle, Eq. 17, RMSProp
        correspondence).  Any other: the rule trained with cfg's lr, momentum (β, β₁ or
        RMSprop's α) and weight_decay, checked against ``theory.equilibrium`` and
        ``theory.rule_norm_schedule`` (docs/demo.md §5); the figure is ``demo_<rule>.png``.
    threads : int, optional
        Threads for the SGD demo's six independent runs (SGD and its two baselines, then
        the three RMSProp runs; docs/demo.md §0).  Default: the CPUs this process may use
        (``_parallel.usable_cpus``).  The results do not depend on it: every run is its
        own compiled loop with its own seed.

    Raises
    ------
    RuntimeError
        If a run diverges (non-finite values): the hyper-parameters are outside the
        regime the demo is about.
    """
    import os

    cfg = DemoConfig() if cfg is None else cfg
    if _rule_name(rule) != "sgd":
        return _run_rule_demo(cfg, rule, out, progress, stream)
    if threads is None:
        from ._parallel import usable_cpus
        threads = usable_cpus()
    threads = V.as_int("threads", threads, lo=1)
    t0 = time.perf_counter()
    _prefetch(out is not None)
    pot, q0, names = build_problem(cfg)
    stops = snapshot_steps(cfg)
    shared = _Shared(progress)
    sgd = SGD(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ex = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="noether-demo")
    try:
        f_sgd = ex.submit(run_chunked, sgd, pot, q0, names, cfg, charges=True,
                          progress=shared, stops=stops)
        baselines = _start(baseline_jobs(pot, q0, names, cfg, stops=stops, progress=shared),
                           ex)
        rec = f_sgd.result()
        if rec.diverged:
            raise RuntimeError(f"the SGD run diverged (lr={cfg.lr}); lower lr")
        # the RMSProp runs need only the assumption: they train while the checks run
        runs = _start(rmsprop_jobs(pot, q0, names, run_assumption(rec, cfg), cfg,
                                   stops=stops, progress=shared), ex)
        checks = [balance_check(rec), angle_check(rec, cfg)]
        c_norm, assumption, nseries = norm_check(rec, cfg)
        checks.append(c_norm)
        c_rms, rseries = rmsprop_comparison(pot, q0, names, rec, assumption, cfg,
                                            progress=shared, executor=ex,
                                            baselines=baselines, runs=runs)
        checks.append(c_rms)
    except BaseException:
        shared.stop()                 # running chunks end, pending runs never start
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    figure = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        figure = write_figure(os.path.join(out, "demo.png"), cfg, rec, nseries, rseries,
                              th.steady_angular_update(cfg.lr, cfg.momentum,
                                                       cfg.weight_decay))
    wall = time.perf_counter() - t0
    head = [f"noether_core demo: BatchNormMLP widths {cfg.widths} on gaussian_mixture(n={cfg.n}, "
            f"d={cfg.dim}, classes={cfg.classes}, separation={cfg.separation}), "
            f"{pot.dim} parameters, {len(names)} scale blocks (hidden weight rows), |q_B|(0) "
            f"= {cfg.r0}",
            f"  SGD(lr={cfg.lr}, momentum={cfg.momentum}, weight_decay={cfg.weight_decay}), "
            f"batch {cfg.batch_size}, {cfg.steps} steps, seed {cfg.seed}: "
            f"{rec.seconds:.1f} s; loss {np.mean(rec.loss[:10]):.3f} -> "
            f"{rec.loss[-1]:.3f} (full data)"]
    text = _report(head, checks, out, figure, wall, stream)
    return DemoResult(cfg, checks, assumption, text, figure, wall,
                      {"sgd": rec, "norm": nseries, "rmsprop": rseries})


def reduced(**over):
    """A small configuration that runs in a few seconds (used by the tests)."""
    base = dict(steps=6000, n=256, dim=8, widths=(16, 16), weight_decay=2e-3, r0=3.0,
                chunk=500)
    base.update(over)
    return replace(DemoConfig(), **base)


def _report(head, checks, out, figure, wall, stream) -> str:
    """The demo's printed report: the header lines, every check's lines, the figure's path
    (when an output folder was given) and the verdict; printed to ``stream`` if given."""
    body = [ln for c in checks for ln in c.lines]
    verdict = ("all checks within tolerance" if all(c.passed for c in checks) else
               "CHECK FAILED: " + ", ".join(c.name for c in checks if not c.passed))
    tail = []
    if out is not None:
        tail.append(f"  figure: {figure}" if figure else
                    "  figure: not written (matplotlib is not installed)")
    tail.append(f"  wall time {wall:.1f} s;  {verdict}")
    text = "\n".join(head + body + tail)
    if stream is not None:
        print(text, file=stream)
    return text
