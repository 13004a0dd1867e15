"""``integrate``: one compiled call integrates one trajectory of a continuous model.

The public names are re-exported at the top level (``noether_core.integrate``,
``noether_core.IntegrateResult``, ``noether_core.IntegrationError``,
``noether_core.noether_terms``, ``noether_core.NoetherTerms``); this module is private.

Methods (docs/integrators.md derives each one):

====================  =====  ==============================================================
method                order  what it is
====================  =====  ==============================================================
conformal-euler       1      Lie splitting damping∘kick∘drift; on M1 it IS heavy ball
                             (β = e^{−μh/m}, η = h²/m, SPEC §1).  M1, M2.
conformal-verlet      2      Strang splitting, damping flow solved exactly.  M1, M2.
conformal-yoshida4    4      Yoshida's triple-jump composition of conformal-verlet.  M1, M2.
euler                 1      explicit Euler = gradient descent (lr = h/μ).  M4 only.
rk4                   4      classical Runge–Kutta.  Every model.
dopri5                5(4)   adaptive Dormand–Prince, rtol/atol, exact output at t_eval.
dop853                8(5,3) adaptive Dormand–Prince of order 8 (Hairer's DOP853).
====================  =====  ==============================================================

Every method offers ``dense_output=True`` (``result.sol``, a :class:`DenseOutput`) and
``events=`` (root finding on the dense output, as ``scipy.integrate.solve_ivp``).
"""
from __future__ import annotations

import math
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from operator import attrgetter, is_

import numpy as np

from . import _bridge, _status
from . import _validation as V
from .errors import BudgetError, CallbackError, DivergenceWarning, IntegrationError
from .models import Bregman, Damped, GradientFlow, Model, RadialAngular

__all__ = ["integrate", "IntegrateResult", "IntegrationError", "METHODS", "noether_terms",
           "NoetherTerms", "DenseOutput", "LevelEvent"]

METHODS = ("conformal-euler", "conformal-verlet", "conformal-yoshida4", "euler", "rk4",
           "dopri5", "dop853")
ADAPTIVE = ("dopri5", "dop853")
_METHOD_CODE = {"conformal-euler": 0, "euler": 0, "conformal-verlet": 1,
                "conformal-yoshida4": 2, "rk4": 3, "dopri5": 4, "dop853": 5}
_ORDER = {"conformal-euler": 1, "euler": 1, "conformal-verlet": 2, "conformal-yoshida4": 4,
          "rk4": 4, "dopri5": 5, "dop853": 8}
#: order of the dense output's local error O(h^(p+1)) per step: dopri5's continuous
#: extension 4, dop853's 7, the cubic Hermite interpolant of the fixed-step methods 3
DENSE_ORDER = {"dopri5": 4, "dop853": 7}
_HERMITE_ORDER = 3

#: ``status`` → ``message``, SciPy's ``solve_ivp`` wording
STATUS_MESSAGES = {0: "The solver successfully reached the end of the integration interval.",
                   1: "A termination event occurred."}

_INF, _NINF = math.inf, -math.inf
_ST_OK = _status.OK

#: tolerance of the M2 constraint check on y0 (|q̂0| = 1, ⟨q̂0, q̂̇0⟩ = 0)
CONSTRAINT_TOL = 1e-10
#: refuse recording requests above this many bytes
DEFAULT_MAX_RECORD_BYTES = 2 * 2**30





class DenseOutput:
    """The continuous solution of an :func:`integrate` run, callable like SciPy's
    ``OdeSolution``: ``sol(t)`` is the state at t (shape (n,)) or at each of k times
    (shape (n, k)), for t in [``t_min``, ``t_max``].

    One polynomial per step, in the nested form shared by Hairer's codes
    (docs/integrators.md §5.3): with s = (t − t_old)/h,

        y(t) = c₀ + s (c₁ + (1−s)(c₂ + s (c₃ + (1−s)(c₄ + …)))).

    dopri5: Hairer's continuous extension (c₀ … c₄, local error O(h⁵)); dop853: its
    7th-order one (c₀ … c₇, local error O(h⁸)); fixed-step methods: the cubic Hermite
    interpolant of (y, y′) at the step ends (c₀ … c₃, local error O(h⁴)).

    Attributes
    ----------
    t_min, t_max : float
        The interval covered (t0 and the final time of the run).
    ts : (S + 1,) array
        The step boundaries.
    order : int
        p such that the interpolant's own error within a step is O(h^(p+1)).
    """

    def __init__(self, t_old, t_new, h, coefs, t_max, order):
        self._t_old = np.ascontiguousarray(t_old, dtype=float)
        self._t_new = np.ascontiguousarray(t_new, dtype=float)
        self._h = np.ascontiguousarray(h, dtype=float)
        self._c = np.ascontiguousarray(coefs, dtype=float)        # (S, nc, n)
        self.t_min = float(self._t_old[0])
        self.t_max = float(t_max)
        self.order = int(order)

    @property
    def ts(self):
        return np.append(self._t_old, self._t_new[-1])

    @property
    def n_segments(self):
        return len(self._t_old)

    def __repr__(self):
        return (f"DenseOutput(t in [{self.t_min:g}, {self.t_max:g}], "
                f"{self.n_segments} steps, order {self.order})")

    def __call__(self, t):
        ta = np.asarray(t, dtype=float)
        if ta.ndim > 1:
            raise ValueError(f"t must be a scalar or a 1-D array, got shape {ta.shape}")
        flat = np.atleast_1d(ta)
        bad = ~((flat >= self.t_min) & (flat <= self.t_max))
        if np.any(bad):
            raise ValueError(f"t = {flat[bad][0]!r} is outside the interval of the dense "
                             f"output [t_min, t_max] = [{self.t_min!r}, {self.t_max!r}]")
        idx = np.searchsorted(self._t_old, flat, side="right") - 1
        idx = np.clip(idx, 0, len(self._t_old) - 1)
        y = _horner(self._c[idx], (flat - self._t_old[idx]) / self._h[idx])   # (k, n)
        return y[0] if ta.ndim == 0 else y.T


def _horner(c, s):
    """y = c0 + s (c1 + (1−s)(c2 + s (c3 + …))) for rows c (k, nc, n) at s (k,)."""
    s = s[:, None]
    s1 = 1.0 - s
    nc = c.shape[1]
    acc = c[:, nc - 1]
    for j in range(nc - 2, 0, -1):
        acc = c[:, j] + (s1 if j % 2 == 1 else s) * acc
    return c[:, 0] + s * acc


def _hermite_rows(t, y, f):
    """Cubic Hermite coefficients (c₀ … c₃ of DenseOutput's form) between rows of t, y
    with derivatives f: c₁ = Δ, c₂ = h f₀ − Δ, c₃ = 2Δ − h (f₀ + f₁)."""
    h = np.diff(t)[:, None]
    dy = y[1:] - y[:-1]
    c2 = h * f[:-1] - dy
    c3 = 2.0 * dy - h * (f[:-1] + f[1:])
    return np.stack([y[:-1], dy, c2, c3], axis=1)


class LevelEvent:
    """A built-in event located inside the compiled loop: g(t, y) = quantity(y) − level.

    Parameters
    ----------
    quantity : {"q_norm2", "linear", "quadratic"}
        ``"q_norm2"``: |q|², the squared norm of the parameters (M2: r²);
        ``"linear"``: ⟨weights, y⟩ over the whole state (e.g. one coordinate);
        ``"quadratic"``: yᵀ matrix y + ⟨weights, y⟩ (weights optional), e.g. a Noether
        charge (:meth:`noether_charge`).
    level : float
    weights : (n,) array, matrix : (n, n) array
        Over the model's state (n = ``model.state_size``).
    terminal : bool or int ≥ 0, direction : float
        As for ``solve_ivp`` events.

    Notes
    -----
    With ``dopri5``/``dop853`` and only LevelEvents, the roots are found without the GIL
    (Illinois false position on each step's interpolant, to 4 ulps of t), so no Python
    runs per step; in any other case (fixed-step methods, or LevelEvents mixed with
    Python callables) the event is evaluated as a Python callable with the same meaning.

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> from noether_core._integrate import LevelEvent
    >>> model = nc.models.GradientFlow(nc.potentials.Quadratic(np.eye(2)), mu=1.0)
    >>> r = nc.integrate(model, [2.0, 0.0], t_end=5.0, method="dop853", rtol=1e-12,
    ...                  atol=1e-14, events=[LevelEvent("q_norm2", 1.0, terminal=True)])
    >>> bool(abs(r.t_final - np.log(2.0)) < 1e-10)   # |q|² = 4 e^{-2t} reaches 1
    True
    """

    QUANTITIES = ("q_norm2", "linear", "quadratic")

    def __init__(self, quantity, level, *, weights=None, matrix=None, terminal=False,
                 direction=0.0):
        if quantity not in self.QUANTITIES:
            raise ValueError(f"quantity must be one of {self.QUANTITIES}, got {quantity!r}")
        self.quantity = quantity
        self.level = V.as_scalar("level", level)
        if quantity == "linear" and weights is None:
            raise ValueError("quantity='linear' needs weights= (one per state entry)")
        if quantity == "quadratic" and matrix is None:
            raise ValueError("quantity='quadratic' needs matrix= (state size × state size)")
        if quantity == "q_norm2" and weights is not None:
            raise ValueError("weights= is only meaningful for quantity='linear' or "
                             "'quadratic'")
        if quantity != "quadratic" and matrix is not None:
            raise ValueError("matrix= is only meaningful for quantity='quadratic'")
        self.weights = None if weights is None else V.as_float_array("weights", weights,
                                                                     ndim=1)
        self.matrix = None if matrix is None else V.as_float_array("matrix", matrix, ndim=2)
        if not isinstance(terminal, (bool, np.bool_)):
            terminal = V.as_int("terminal", terminal, lo=0)
        self.terminal = terminal
        self.direction = V.as_scalar("direction", direction)

    @classmethod
    def noether_charge(cls, model, family, level, block=None, *, omega=None,
                       translation=None, terminal=False, direction=0.0):
        """The event "the Noether charge J = ⟨Δ_h, ξ(q)⟩ crosses ``level``" (Eq. 9's J,
        as :func:`noether_terms` computes it), for a Damped (Δ_h = m q̇) or Bregman
        (Δ_h = P) model: ξ is linear in q (ξ(q) = G q + c, c ≠ 0 for translations only),
        so J = ⟨P, G q⟩ + ⟨P, c⟩ is a quadratic form of the state plus a linear one.
        ``family``, ``block``, ``omega`` as for :func:`noether_terms`; ``translation`` is
        the unit direction of a translation."""
        from .symmetry import generator

        if not isinstance(model, (Damped, Bregman)):
            raise ValueError("a Noether charge event needs a Damped or Bregman model (its "
                             "state holds q and Δ_h linearly), got "
                             f"{type(model).__name__}")
        pot = model.potential
        sym = _find_symmetry(pot, family, block, translation, omega)
        om = omega if omega is not None else sym.omega
        d = model.dim
        c = generator(sym, np.zeros(d), pot.blocks, om)
        G = np.column_stack([generator(sym, e, pot.blocks, om) - c for e in np.eye(d)])
        scale = model.m if isinstance(model, Damped) else 1.0
        Q = np.zeros((2 * d, 2 * d))
        Q[d:, :d] = scale * G                       # yᵀ Q y = ⟨scale·y[d:], G y[:d]⟩
        w = np.concatenate([np.zeros(d), scale * c])
        return cls("quadratic", level, weights=w, matrix=Q, terminal=terminal,
                   direction=direction)

    def __repr__(self):
        return (f"LevelEvent({self.quantity!r}, {self.level!r}, terminal={self.terminal!r}, "
                f"direction={self.direction!r})")

    def _arrays(self, model):
        """(weights (n,), matrix (n, n)) for this model, zeros where unused."""
        n = model.state_size
        w = np.zeros(n) if self.weights is None else self.weights
        Q = np.zeros((n, n)) if self.matrix is None else self.matrix
        if w.shape != (n,):
            raise ValueError(f"LevelEvent weights must have the state's shape ({n},), got "
                             f"{w.shape}")
        if Q.shape != (n, n):
            raise ValueError(f"LevelEvent matrix must have shape ({n}, {n}) (the state's), "
                             f"got {Q.shape}")
        return w, Q

    def _bind(self, model):
        """The same event as a Python callable g(t, y) for this model."""
        (w, Q), level = self._arrays(model), self.level
        if self.quantity == "linear":
            def g(t, y):
                return float(w @ y) - level
        elif self.quantity == "quadratic":
            def g(t, y):
                return float(y @ (Q @ y)) + float(w @ y) - level
        elif isinstance(model, RadialAngular):
            def g(t, y):
                return float(y[0] * y[0]) - level
        else:
            d = model.dim

            def g(t, y):
                return float(y[:d] @ y[:d]) - level
        g.terminal, g.direction = self.terminal, self.direction
        return g


def _event_spec(events, model, max_rows):
    """The kernel's EventSpec for a list of LevelEvents."""
    codes = _bridge.integrator_kernels.EVENT_KINDS
    return _bridge.EventSpec(
        kind=[codes[e.quantity] for e in events], level=[e.level for e in events],
        direction=[np.sign(e.direction) for e in events],
        terminal=[(1 if e.terminal else 0) if isinstance(e.terminal, (bool, np.bool_))
                  else e.terminal for e in events],
        weights=np.array([e._arrays(model)[0] for e in events]).reshape(len(events), -1),
        matrices=np.array([e._arrays(model)[1] for e in events]).reshape(
            len(events), model.state_size, model.state_size),
        max_rows=max(1, max_rows))


class _Events:
    """solve_ivp's event semantics, one accepted step at a time (:meth:`step`).

    An event g(t, y) has a root in a step when its sign changes from the step's start to
    its end (g_old ≤ 0 ≤ g_new going up, g_old ≥ 0 ≥ g_new going down, filtered by
    ``direction``); the root of g(t, sol(t)) is found by Brent's method on the step's
    interpolant to 4 ulps of t.  ``terminal`` (True or a count) stops the run at that
    occurrence; later roots in the same step are dropped.
    """

    def __init__(self, events, t0, y0):
        self.fns = list(events)
        self.terminal = []
        self.direction = []
        for i, ev in enumerate(self.fns):
            if not callable(ev):
                raise TypeError(f"events[{i}] must be callable as event(t, y) -> float, "
                                f"got {type(ev).__name__}")
            term = getattr(ev, "terminal", False)
            if isinstance(term, (bool, np.bool_)) or term is None:
                count = 1 if term else 0
            else:
                count = V.as_int(f"events[{i}].terminal", term, lo=0)
            self.terminal.append(count)
            self.direction.append(float(np.sign(V.as_scalar(
                f"events[{i}].direction", getattr(ev, "direction", 0.0)))))
        self.count = [0] * len(self.fns)
        self.t_events = [[] for _ in self.fns]
        self.y_events = [[] for _ in self.fns]
        self.g = self._values(t0, y0)
        self.t_stop = None
        self.y_stop = None

    def _values(self, t, y):
        out = []
        for i, ev in enumerate(self.fns):
            v = ev(float(t), y.copy())
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"events[{i}](t, y) must return a real number, got "
                                f"{type(v).__name__}") from None
            out.append(v)
        return out

    def step(self, t_old, t_new, h, coefs):
        """The events in one step (coefs (nc, n) of DenseOutput's form); True = stop."""
        from scipy.optimize import brentq

        c = coefs[None]

        def y_at(t):
            return _horner(c, np.array([(t - t_old) / h]))[0]

        y_new = y_at(t_new)
        g_new = self._values(t_new, y_new)
        roots = []
        for i, (g0, g1) in enumerate(zip(self.g, g_new, strict=True)):
            up = g0 <= 0.0 <= g1
            down = g0 >= 0.0 >= g1
            d = self.direction[i]
            if not ((up and d > 0) or (down and d < 0) or ((up or down) and d == 0)):
                continue
            if g0 == 0.0 and g1 == 0.0:
                continue                           # no sign change: not a crossing
            if g0 == 0.0:
                tr = t_old
            elif g1 == 0.0:
                tr = t_new
            else:
                ev = self.fns[i]
                tr = brentq(lambda t, ev=ev: float(ev(t, y_at(t))), t_old, t_new,
                            xtol=4 * np.finfo(float).eps, rtol=4 * np.finfo(float).eps)
            roots.append((tr, i))
        self.g = g_new
        roots.sort()
        for tr, i in roots:
            if tr == t_old and self.t_events[i] and self.t_events[i][-1] == tr:
                continue                           # counted at the end of the last step
            yr = y_at(tr)
            self.t_events[i].append(tr)
            self.y_events[i].append(yr)
            self.count[i] += 1
            if self.terminal[i] and self.count[i] >= self.terminal[i]:
                self.t_stop, self.y_stop = tr, yr
                return True
        return False

    def results(self, n):
        return ([np.array(t, dtype=float) for t in self.t_events],
                [np.array(y, dtype=float).reshape(len(y), n) for y in self.y_events])


@dataclass(eq=False)
class IntegrateResult:
    """A trajectory of a model.

    Attributes
    ----------
    t : (R,) array
        Recorded times.
    y : (R, n) array
        Recorded states (layout of the model: M1 (q, q̇); M2 (r, ṙ, q̂, q̂̇); M3 (q, P);
        M4 q).
    y_final, t_final
        State and time after the last step taken.
    nfev : int
        Gradient evaluations.
    n_steps, n_rejected : int
        Accepted / rejected steps.
    h : float or None
        Step size used by a fixed-step method (may be T/N, slightly below the h asked,
        so that N steps reach t_end exactly).
    diverged : bool
        True if a non-finite state (or r ≤ 0 in M2) stopped the run; ``message`` says.
    status : int
        As ``scipy.integrate.solve_ivp``: 0 the run reached ``t_end``, 1 a terminal event
        stopped it, −1 it failed (divergence; or the result an :class:`IntegrationError`
        carries).
    message : str
        What happened (SciPy's wording for statuses 0 and 1; the reason for −1).
    sol : DenseOutput or None
        The continuous solution on [t0, t_final] (``dense_output=True``).
    t_events, y_events : list of arrays, or None
        For each event function, the times (k,) and states (k, n) of its roots
        (``events=``); None without events.
    """

    model: Model
    method: str
    t: np.ndarray
    y: np.ndarray
    y_final: np.ndarray
    t_final: float
    nfev: int
    n_steps: int
    n_rejected: int
    h: float | None
    diverged: bool = False
    message: str = STATUS_MESSAGES[0]
    extras: dict = field(default_factory=dict)
    status: int = 0
    sol: DenseOutput | None = None
    t_events: list | None = None
    y_events: list | None = None

    @property
    def success(self) -> bool:
        """True if the run reached ``t_end`` or a terminal event (status ≥ 0)."""
        return self.status >= 0

    @property
    def order(self) -> int:
        return _ORDER[self.method]

    # -- views ----------------------------------------------------------------------------
    @property
    def q(self) -> np.ndarray:
        """Parameters q (Cartesian, q = r q̂ for M2)."""
        d = self.model.dim
        if isinstance(self.model, RadialAngular):
            return self.model.to_cartesian(self.y)[0]
        return self.y[:, :d]

    @property
    def v(self) -> np.ndarray:
        """Velocity q̇ (Cartesian).  M3: e^α(∇h*(∇h(q)+P) − q); M4: the vector field."""
        m, d = self.model, self.model.dim
        if isinstance(m, Damped):
            return self.y[:, d:]
        if isinstance(m, RadialAngular):
            return m.to_cartesian(self.y)[1]
        if isinstance(m, Bregman):
            return m.velocity(self.t, self.y)
        return np.array([-(m.potential.grad(q) + m.k * q) / m.mu for q in self.y])

    def _radang(self, sl):
        if not isinstance(self.model, RadialAngular):
            raise AttributeError(f"only RadialAngular has polar coordinates, not "
                                 f"{type(self.model).__name__}")
        return self.y[:, sl]

    @property
    def r(self):
        return self._radang(0)

    @property
    def rdot(self):
        return self._radang(1)

    @property
    def qhat(self):
        return self._radang(slice(2, 2 + self.model.dim))

    @property
    def qhatdot(self):
        return self._radang(slice(2 + self.model.dim, None))

    @property
    def P(self):
        """Δ_h (Eq. 10) of a Bregman trajectory."""
        if not isinstance(self.model, Bregman):
            raise AttributeError("P is the state of Bregman models only")
        return self.y[:, self.model.dim:]

    def noether_terms(self, family, block=None, *, omega=None, direction=None):
        """The terms of Eq. 9 along this trajectory: see :func:`noether_terms`."""
        return noether_terms(self, family, block, omega=omega, direction=direction)

    def __repr__(self):
        flag = f", {self.message}" if self.diverged else ""
        return (f"IntegrateResult({type(self.model).__name__}, {self.method}, "
                f"rows={len(self.t)}, t_final={self.t_final:g}{flag})")


def _check_radang_y0(model, y, project):
    d = model.dim
    if y[0] <= 0.0:
        raise ValueError(f"y0[0] (the radius r) must be > 0, got {y[0]}")
    u, w = y[2:2 + d], y[2 + d:]
    nu = float(np.linalg.norm(u))
    uw = float(u @ w)
    wn = float(np.linalg.norm(w))
    off = abs(nu - 1.0) > CONSTRAINT_TOL or abs(uw) > CONSTRAINT_TOL * max(1.0, wn)
    if off and not project:
        raise ValueError(
            f"y0 violates the constraint of RadialAngular: |q̂0| = {nu!r} (must be 1) and "
            f"<q̂0, q̂̇0> = {uw!r} (must be 0), tolerance {CONSTRAINT_TOL}; pass "
            "project=True to project y0 onto the constraint, or build y0 with "
            "RadialAngular.from_cartesian(q, v)")
    if nu == 0.0:
        raise ValueError("y0's direction q̂0 is zero and cannot be projected")
    # project always: within tolerance this changes y0 by at most CONSTRAINT_TOL
    u = u / nu
    y[2:2 + d] = u
    y[2 + d:] = w - (u @ w) * u


def integrate(model, y0, *, t_end, h=None, method, record_every=1, t0=0.0, t_eval=None,
              rtol=1e-6, atol=1e-9, max_steps=100_000, project=False,
              max_record_bytes=DEFAULT_MAX_RECORD_BYTES, dense_output=False,
              events=None) -> IntegrateResult:
    """Integrate ``model`` from ``y0`` at ``t0`` to ``t_end`` in one compiled call.

    Parameters
    ----------
    model : Damped, RadialAngular, Bregman or GradientFlow
    y0 : (n,) array_like
        Initial state in the model's layout (see :mod:`noether_core.models`).
    t_end : float ≥ t0
    h : float > 0
        Step size (fixed-step methods, required); initial trial step for dopri5 and
        dop853 (default: automatic).  If (t_end − t0)/h is not an integer N (to 1e-9
        relative), the step is reduced to (t_end − t0)/ceil(...) and reported in
        ``result.h``.
    method : str
        One of ``model.methods`` (table in the module docstring).
    record_every : int ≥ 1
        Record every record_every-th step (fixed-step) / accepted step (dopri5, dop853
        without t_eval; the final state is then always recorded).
    t0 : float
        Initial time (matters for time-dependent Bregman schedules; Nesterov needs t0 > 0).
    t_eval : array_like, optional (dopri5, dop853)
        Sorted times in [t0, t_end] at which to record; the integrator lands exactly on
        each of them (no interpolation).
    rtol, atol : float > 0 (dopri5, dop853)
    max_steps : int ≥ 1 (dopri5, dop853)
        Bound on attempted steps; reaching it raises :class:`IntegrationError`.
    project : bool
        M2 only: project y0 onto |q̂| = 1, ⟨q̂, q̂̇⟩ = 0 instead of refusing it.
    max_record_bytes : int
        Budget of the recorded rows (and of the dense output); above it ``errors.BudgetError``
        (a ValueError and a MemoryError), raised before the records are allocated, or
        when an adaptive run's dense output or events outgrow it.
    dense_output : bool
        Return the continuous solution as ``result.sol`` (:class:`DenseOutput`, called
        like SciPy's ``OdeSolution``): dopri5's 4th-order and dop853's 7th-order
        continuous extensions, the cubic Hermite interpolant for the fixed-step methods
        (which then record every step internally; docs/integrators.md §5.3).
    events : callable or list of callables, optional
        ``event(t, y) -> float`` as in ``solve_ivp``, with optional attributes ``terminal``
        (bool or a count) and ``direction``; roots are located on the dense output
        (``result.t_events``, ``result.y_events``); a terminal one ends the run with
        ``status`` 1 (docs/integrators.md §5.4).

    Returns
    -------
    IntegrateResult
        ``status`` 0 (reached t_end), 1 (terminal event) or −1 (failed), as SciPy's.

    Raises
    ------
    ValueError, TypeError
        Bad input (naming the argument).
    IntegrationError
        Adaptive step-size underflow or max_steps reached (the partial result attached,
        status −1).
    CallbackError
        A ``potentials.Python`` fn raised or returned a bad shape (the user's exception is
        ``__cause__``; KeyboardInterrupt and SystemExit propagate as themselves).

    Notes
    -----
    The loop runs without the GIL, allocates nothing per step and evaluates the gradient
    once per step for the conformal methods (4 for rk4, 6 per accepted dopri5 step, 12
    per accepted dop853 step, + 3 with dense output or events).
    A non-finite state stops the run with a :class:`DivergenceWarning`.  A user Bregman
    schedule (Python callables) runs in the same compiled loop, called back with the GIL
    once per right-hand side; an exception it raises stops the run and is re-raised.

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> osc = nc.potentials.Quadratic(np.eye(1))
    >>> sol = nc.integrate(nc.models.Damped(osc, m=1.0, mu=0.0), np.array([1.0, 0.0]),
    ...                    t_end=np.pi, h=np.pi / 200, method="conformal-yoshida4")
    >>> bool(abs(sol.y_final[0] + 1.0) < 1e-9)       # half a period: q = cos(pi) = -1
    True
    >>> def crossing(t, y):                          # q = cos t reaches 0 at t = pi/2
    ...     return y[0]
    >>> crossing.terminal = True
    >>> r = nc.integrate(nc.models.Damped(osc, m=1.0, mu=0.0), [1.0, 0.0], t_end=10.0,
    ...                  method="dop853", rtol=1e-10, atol=1e-12, events=[crossing],
    ...                  dense_output=True)
    >>> r.status, bool(abs(r.t_events[0][0] - np.pi / 2) < 1e-9)
    (1, True)
    >>> bool(abs(r.sol(np.pi / 4)[0] - np.cos(np.pi / 4)) < 1e-9)
    True
    """
    prep = _prepared(model)
    y, t0, t_end = _check_inputs(model, y0, method, t0, t_end, prep)
    if not (type(record_every) is int and 1 <= record_every <= sys.maxsize):
        record_every = V.as_int("record_every", record_every, lo=1, hi=sys.maxsize)
    if not (type(max_record_bytes) is int and max_record_bytes >= 0):
        max_record_bytes = V.as_int("max_record_bytes", max_record_bytes, lo=0)
    if dense_output is not False and dense_output is not True:
        dense_output = V.as_bool("dense_output", dense_output)
    _check_state(model, y, t0, project)
    adaptive = method in ADAPTIVE
    if events is not None and (callable(events) or isinstance(events, LevelEvent)):
        events = [events]
    events = None if events is None else _as_list("events", events)
    compiled = bool(events) and method in ADAPTIVE and all(
        isinstance(e, LevelEvent) for e in events)
    tracker = None
    if events is not None and not compiled:
        tracker = _Events([e._bind(model) if isinstance(e, LevelEvent) else e
                           for e in events], t0, y)
    if adaptive:
        h, t_eval, n_rec, rtol, atol, max_steps = _adaptive_plan(
            t0, t_end, h, t_eval, rtol, atol, max_steps, record_every)
        n_steps = 0
        run_every = record_every
    else:
        h, n_steps, n_rec = _fixed_plan(method, t0, t_end, h, t_eval, record_every)
        t_eval = np.zeros(0)
        # dense output and events need every step's state: record all, keep every
        # record_every-th row afterwards
        run_every = 1 if (dense_output or tracker is not None) else record_every
        n_rec = n_steps // run_every + 1
    n = prep.n
    need = n_rec * (n + 1) * 8
    if need > max_record_bytes:
        what = (f"(t_end - t0)/h = {n_steps} steps (t_end={t_end}, t0={t0}, h={h}) "
                f"recorded every {run_every}"
                + (" (dense output and events record every step)"
                   if run_every != record_every else "") if not adaptive else
                f"max_steps={max_steps} // record_every={record_every} + 2")
        raise BudgetError(f"recording {n_rec} rows of {n} numbers ({what}) needs "
                          f"{need / 2**20:.1f} MiB > max_record_bytes={max_record_bytes}; "
                          "raise record_every (or pass t_eval)")
    stride = 3 + (8 if method == "dop853" else 5) * n
    # rows the budget leaves (capped where a C count could not hold them: a budget of
    # 10**30 bytes is "unlimited", not an OverflowError)
    row_cap = sys.maxsize // 64
    max_dense_rows = min(row_cap, (max_record_bytes - need) // (8 * stride)) \
        if dense_output else 0
    if dense_output and adaptive and max_dense_rows < 1:
        raise BudgetError(f"dense output needs {8 * stride} bytes per step; "
                          f"max_record_bytes={max_record_bytes} leaves none after the "
                          f"{need} bytes of records")
    spec = _event_spec(events, model, min(row_cap, (max_record_bytes - need) // (8 * (2 + n)))) \
        if compiled else None
    rec_t = np.empty(n_rec)
    rec_y = np.empty((n_rec, n))
    inputs = prep.inputs
    plan = _bridge.IntegratePlan(
        method=_METHOD_CODE[method], t0=t0, t_end=t_end, h=h, n_steps=n_steps,
        record_every=run_every, t_eval=t_eval,
        rtol=rtol if adaptive else 0.0, atol=atol if adaptive else 0.0,
        max_steps=max_steps if adaptive else 0,
        dense=dense_output and adaptive, max_dense_rows=int(max_dense_rows),
        event_hook=tracker.step if (tracker is not None and adaptive) else None,
        compiled_events=spec)
    traj = _bridge.Trajectory(rec_t, rec_y)
    try:
        status, rows, _done, t_final, nfev, n_acc, n_rej = _bridge.run_integrate(
            inputs, y, plan, traj)
    except BaseException:
        _take_callback_error(inputs.potential_kernel)        # forget it: we are raising
        raise
    _raise_callback_error(inputs.potential_kernel, float(t_final))
    # the records are the result's own arrays when the run filled them (no copy)
    res = IntegrateResult(model=model, method=method,
                          t=rec_t if rows == n_rec else rec_t[:rows],
                          y=rec_y if rows == n_rec else rec_y[:rows],
                          y_final=y, t_final=float(t_final), nfev=int(nfev),
                          n_steps=int(n_acc), n_rejected=int(n_rej),
                          h=None if adaptive else h)
    if status == _bridge.integrator_kernels.STATUS_DENSE_MEMORY:
        raise BudgetError(f"the dense output or the events of {method} outgrew "
                          f"max_record_bytes={max_record_bytes} at t={res.t_final!r}; "
                          "raise max_record_bytes")
    if compiled:
        tracker = _CompiledEvents(traj.events, len(events), n)
    if not adaptive and (dense_output or tracker is not None):
        status = _fixed_dense(res, inputs, tracker, status, dense_output)
        res.t, res.y = res.t[::record_every], res.y[::record_every]
    elif dense_output:
        dense = traj.dense
        res.sol = DenseOutput(dense[:, 0], dense[:, 1], dense[:, 2],
                              dense[:, 3:].reshape(len(dense), -1, n), res.t_final,
                              DENSE_ORDER[method]) if len(dense) else None
    if tracker is not None:
        res.t_events, res.y_events = tracker.results(n)
        if status == _bridge.integrator_kernels.STATUS_TERMINAL_EVENT:
            _stop_at_event(res, tracker, t_eval is not None and len(t_eval) > 0)
            status = _status.OK
            res.status = 1
            res.message = STATUS_MESSAGES[1]
    if res.t is not rec_t:                  # a view of the records: keep only its rows
        res.t = res.t.copy()
    if res.y is not rec_y:
        res.y = res.y.copy()
    if status == _ST_OK:
        return res
    return _settle(res, status, rtol=rtol, atol=atol, max_steps=max_steps, t_end=t_end)


class _CompiledEvents:
    """The kernel's event rows [t, k, y] in _Events' interface (results, t_stop)."""

    def __init__(self, rows, m, n):
        k = rows[:, 1].astype(int)
        self.t_events = [rows[k == i, 0].copy() for i in range(m)]
        self.y_events = [rows[k == i, 2:].reshape(-1, n).copy() for i in range(m)]
        self.t_stop = float(rows[-1, 0]) if len(rows) else None
        self.y_stop = rows[-1, 2:].copy() if len(rows) else None

    def results(self, n):
        return self.t_events, self.y_events


def _as_list(name, seq):
    try:
        return list(seq)
    except TypeError:
        raise TypeError(f"{name} must be a callable or a list of callables, got "
                        f"{type(seq).__name__}") from None


def _take_callback_error(kernel):
    take = getattr(kernel, "take_error", None)
    return None if take is None else take()


def _raise_callback_error(kernel, t_final):
    """A Python potential's fn failed in the loop: raise CallbackError from it (Ctrl-C
    and SystemExit propagate as themselves)."""
    err = _take_callback_error(kernel)
    if err is None:
        return
    exc, call = err
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    raise CallbackError(f"the Python potential's fn raised in integrate at gradient "
                        f"evaluation {call + 1} (the run stopped at t={t_final!r}): "
                        f"{type(exc).__name__}: {exc}", call) from exc


def _fixed_dense(res, inputs, tracker, status, dense_output):
    """Dense output and events of a fixed-step run from its every-step records: cubic
    Hermite interpolation of (y, y′) at the step ends (y′ from the compiled right-hand
    side).  A terminal event truncates the run there.  Returns the status."""
    t, y = res.t, res.y
    if len(t) < 2:
        return status
    f = np.empty_like(y)
    _bridge.eval_rhs(inputs, np.ascontiguousarray(t), np.ascontiguousarray(y), f)
    c = _hermite_rows(t, y, f)
    h = np.diff(t)
    S = len(h)
    if tracker is not None:
        for k in range(S):
            if tracker.step(t[k], t[k + 1], h[k], c[k]):
                S = k + 1
                status = _bridge.integrator_kernels.STATUS_TERMINAL_EVENT
                res.n_steps = S
                break
    if dense_output:
        t_max = tracker.t_stop if (tracker is not None and tracker.t_stop is not None) \
            else t[S]
        res.sol = DenseOutput(t[:S], t[1:S + 1], h[:S], c[:S], t_max, _HERMITE_ORDER)
    return status


def _stop_at_event(res, tracker, with_t_eval):
    """Cut the result at the terminal event (as solve_ivp: the final row is the event's
    state unless t_eval chose the rows)."""
    te, ye = tracker.t_stop, tracker.y_stop
    keep = res.t <= te
    res.t, res.y = res.t[keep], res.y[keep]
    if not with_t_eval and (len(res.t) == 0 or res.t[-1] != te):
        res.t = np.append(res.t, te)
        res.y = np.vstack([res.y, ye[None]])
    res.t_final = float(te)
    res.y_final = np.array(ye, dtype=float)
    if res.sol is not None:
        sol = res.sol
        last = max(1, int(np.searchsorted(sol._t_old, te, side="left")))  # t_old < te
        res.sol = DenseOutput(sol._t_old[:last], sol._t_new[:last], sol._h[:last],
                              sol._c[:last], te, sol.order)


class _Prepared:
    """What ``integrate`` needs of a model besides y0 and the times: its kernel inputs
    (``Model.kernel_inputs()``), its state size and whether it is RadialAngular (the
    y0 checks).  Built once per model and kept while the model's constants stay the same
    objects (:func:`_prepared`)."""

    __slots__ = ("ref", "key", "inputs", "n", "radang")

    def __init__(self, model, key):
        self.ref = None if key is None else weakref.ref(model)
        self.key = key
        self.inputs = model.kernel_inputs()
        self.n = model.state_size
        self.radang = isinstance(model, RadialAngular)


#: what a cached preparation depends on, per model class (exact classes only: a subclass
#: may compute its kernel inputs from anything, so it is prepared afresh at every call,
#: as is Bregman, whose schedule and mirror map may hold callables and arrays)
_PREP_KEYS = {Damped: attrgetter("potential", "m", "mu", "k"),
              GradientFlow: attrgetter("potential", "mu", "k"),
              RadialAngular: attrgetter("potential", "m", "mu", "k", "reduced")}
#: id(model) -> _Prepared (each entry holds a weak reference to its model, so a new model
#: at a recycled address is never served another's preparation); cleared when it grows
#: past _PREP_MAX entries
_PREP_CACHE: dict = {}
_PREP_MAX = 256


def _prepared(model) -> _Prepared:
    """``model``'s preparation, from the cache when the model is the same object and its
    constants (the potential, its kernel, m, μ, k, reduced) are the *same objects* as
    when it was built.  Identity, not equality: a new value is a new object, so a
    changed constant is never served stale (and 0.0 / -0.0 or NaN are never confused);
    the cached key holds the old objects, so their ids cannot be recycled meanwhile."""
    get_key = _PREP_KEYS.get(type(model))
    if get_key is None:
        if not isinstance(model, Model):
            raise TypeError("model must be a noether_core.models model (Damped, "
                            "RadialAngular, Bregman, GradientFlow), got "
                            f"{type(model).__name__}")
        return _Prepared(model, None)
    key = get_key(model) + (model.potential._kernel,)
    prep = _PREP_CACHE.get(id(model))
    if (prep is not None and prep.ref() is model and len(prep.key) == len(key)
            and all(map(is_, prep.key, key))):
        return prep
    prep = _Prepared(model, key)
    if len(_PREP_CACHE) >= _PREP_MAX:
        _PREP_CACHE.clear()
    _PREP_CACHE[id(model)] = prep
    return prep


def _check_inputs(model, y0, method, t0, t_end, prep=None):
    """Validate the model, the method, y0's shape and the times; returns (y, t0, t_end).
    ``prep``: the model's :class:`_Prepared` when the caller has it (its state size)."""
    if prep is None and not isinstance(model, Model):
        raise TypeError("model must be a noether_core.models model (Damped, RadialAngular,"
                        f" Bregman, GradientFlow), got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method not in model.methods:
        raise ValueError(f"method {method!r} is not valid for {type(model).__name__}; "
                         f"valid methods: {model.methods}")
    y = V.as_float_vector("y0", y0, model.state_size if prep is None else prep.n)
    # (a finite Python float is what as_scalar returns for it: skip the call)
    t0 = t0 if type(t0) is float and _NINF < t0 < _INF else V.as_scalar("t0", t0)
    t_end = (t_end if type(t_end) is float and _NINF < t_end < _INF
             else V.as_scalar("t_end", t_end))
    if t_end < t0:
        raise ValueError(f"t_end must be >= t0 = {t0}, got {t_end}")
    return y, t0, t_end


def _check_state(model, y, t0, project):
    """Model-specific checks of y0 (M2 constraint, Bregman schedule and mirror domain)."""
    if project is not False and project is not True:
        project = V.as_bool("project", project)
    if isinstance(model, RadialAngular):
        _check_radang_y0(model, y, project)
    elif project:
        raise ValueError("project=True is only meaningful for RadialAngular models")
    if isinstance(model, Bregman):
        if model.schedule.name == "nesterov" and t0 <= 0.0:
            raise ValueError(f"the Nesterov schedule is singular at t = 0 (e^α = n/t): "
                             f"t0 must be > 0, got t0={t0}")
        if model.mirror == "entropy" and np.any(y[:model.dim] <= 0):
            raise ValueError("q0 (y0[:d]) must be positive for the entropy mirror map")


def _adaptive_plan(t0, t_end, h, t_eval, rtol, atol, max_steps, record_every):
    """The adaptive methods' validated settings: (h, t_eval, rows to allocate, rtol,
    atol, max_steps)."""
    # the common case (Python floats and ints in range) is what the V.as_* calls return
    # for it: skip the calls
    if not (type(rtol) is float and 0.0 < rtol < _INF):
        rtol = V.as_scalar("rtol", rtol, lo=0.0, lo_open=True)
    if not (type(atol) is float and 0.0 < atol < _INF):
        atol = V.as_scalar("atol", atol, lo=0.0, lo_open=True)
    if not (type(max_steps) is int and 1 <= max_steps <= sys.maxsize - 2):
        max_steps = V.as_int("max_steps", max_steps, lo=1, hi=sys.maxsize - 2)
    h = 0.0 if h is None else V.as_scalar("h", h, lo=0.0, lo_open=True)
    if t_eval is not None:
        fast = _short_times(t_eval, t0, t_end)
        t_eval = _check_times(t_eval, t0, t_end) if fast is None else fast
        n_rec = len(t_eval)
    else:
        t_eval = np.zeros(0)
        n_rec = max_steps // record_every + 2
    return h, t_eval, n_rec, rtol, atol, max_steps


def _short_times(t_eval, t0, t_end):
    """A short list or tuple of finite Python floats, sorted, within [t0, t_end], as an
    array (what _check_times returns for it); None for anything else, which then goes
    through _check_times and its messages.  Python comparisons beat NumPy's calls on a
    handful of numbers."""
    if (type(t_eval) not in (list, tuple) or not 0 < len(t_eval) <= 64
            or not all(type(v) is float for v in t_eval)
            or not all(map(math.isfinite, t_eval))
            or t_eval[0] < t0 or t_eval[-1] > t_end
            or not all(map(float.__le__, t_eval[:-1], t_eval[1:]))):
        return None
    return np.array(t_eval, dtype=np.float64)


def _check_times(t_eval, t0, t_end):
    """t_eval validated: a finite, sorted 1-D array within [t0, t_end]."""
    t_eval = V.as_float_array("t_eval", t_eval, ndim=1)
    if (t_eval[1:] < t_eval[:-1]).any():
        raise ValueError("t_eval must be sorted in increasing order")
    if t_eval[0] < t0 or t_eval[-1] > t_end:
        raise ValueError(f"t_eval must lie in [t0, t_end] = [{t0}, {t_end}], got "
                         f"[{t_eval[0]}, {t_eval[-1]}]")
    return t_eval


def _fixed_plan(method, t0, t_end, h, t_eval, record_every):
    """A fixed-step method's step: (h, n_steps, rows to allocate), N h = t_end - t0."""
    if t_eval is not None:
        raise ValueError(f"t_eval is only supported by the adaptive methods {ADAPTIVE}, "
                         f"not {method!r}")
    if h is None:
        raise ValueError(f"method {method!r} needs a step size h > 0")
    h = V.as_scalar("h", h, lo=0.0, lo_open=True)
    T = t_end - t0
    if not T / h < sys.maxsize:          # the kernel counts steps in Py_ssize_t
        raise ValueError(f"(t_end - t0)/h = {T / h:.3g} steps is more than a run can "
                         f"count (t_end={t_end}, t0={t0}, h={h}): raise h")
    N = round(T / h)
    if abs(N * h - T) > 1e-9 * max(T, h):
        N = math.ceil(T / h)
        h = T / N
    n_steps = int(N)
    return h, n_steps, n_steps // record_every + 1


def _status_text(method, status, t_final, *, rtol, atol, max_steps, t_end):
    """What a kernel status means: ``(message, error)``; ``error`` is the text of the
    IntegrationError an adaptive failure raises (else None).  ``integrate`` and
    ``scan_integrate`` both word their points' outcomes with it."""
    if status == _status.NONFINITE_STATE:
        return "non-finite state", None
    if status == _status.RADIUS:
        return "the radius r reached 0 (the polar coordinates break down)", None
    if status == _status.STEP_UNDERFLOW:
        return "step size underflow", (
            f"{method}: the step size underflowed at t={t_final!r} (rtol={rtol}, "
            f"atol={atol}): the problem is too stiff or singular there")
    if status == _status.MAX_STEPS:
        return "max_steps reached", (
            f"{method}: max_steps={max_steps} attempted steps reached at t={t_final!r} "
            f"before t_end={t_end}; raise max_steps or loosen rtol/atol")
    return STATUS_MESSAGES[0], None


def _settle(res, status, *, rtol, atol, max_steps, t_end):
    """Turn the kernel's status into the result's flags, a warning or an exception."""
    if status != _status.OK:
        res.status = -1
    if status in (_status.NONFINITE_STATE, _status.RADIUS, _status.STEP_UNDERFLOW,
                  _status.MAX_STEPS):
        res.message, error = _status_text(res.method, status, res.t_final, rtol=rtol,
                                          atol=atol, max_steps=max_steps, t_end=t_end)
        if error is not None:
            raise IntegrationError(error, res)
        res.diverged = True
        warnings.warn(f"{res.method} on {type(res.model).__name__} stopped at "
                      f"t={res.t_final:g}: {res.message}", DivergenceWarning, stacklevel=3)
    return res


# -----------------------------------------------------------------------------------------
# Noether's learning dynamics along a trajectory (Eq. 9, SPEC §3)

@dataclass(eq=False)
class NoetherTerms:
    """The terms of Eq. 9 at the recorded rows of a trajectory.

    ``dJdt + dissipation = dynamic_asymmetry + metric − potential`` with

    ==================  ==========================================================
    J                   ⟨Δ_h, ξ(q)⟩, the Noether charge (Δ_h of Eq. 10)
    dJdt                dJ/dt = ⟨Δ̇_h, ξ⟩ + ⟨Δ_h, Dξ(q)q̇⟩, Δ̇_h from the model's own
                        vector field at the recorded state
    dissipation         γ̇ J
    dynamic_asymmetry   ⟨Δ_h, Dξ(q) q̇⟩ (= ⟨Δ_h, ∂_s Q̇⟩)
    metric              e^α ⟨Δ_h − e^{−α}∇²h(q) q̇, ξ⟩ (zero for Euclidean h)
    potential           e^{α+β} ⟨∇V(q), ξ⟩ (V = f + k|q|²/2; zero for a symmetric V)
    residual            dJdt + dissipation − dynamic_asymmetry − metric + potential
    ==================  ==========================================================

    ``residual`` vanishes to round-off wherever the model is an Euler–Lagrange system of
    the Bregman Lagrangian (M1, M2-exact, M3); for the paper's reduced M2 it measures what
    the dropped coupling breaks.  ``integrated_residual`` is the time-integrated balance
    J(t) − J(t0) − ∫(dynamic_asymmetry + metric − potential − dissipation) dt with the
    integral by a 6-point interpolatory rule on the recorded grid (global error O(Δt⁶)):
    it tends to 0 with the integrator's order — the check that the *numerical* trajectory
    obeys Eq. 9.
    """

    t: np.ndarray
    J: np.ndarray
    dJdt: np.ndarray
    dissipation: np.ndarray
    dynamic_asymmetry: np.ndarray
    metric: np.ndarray
    potential: np.ndarray
    residual: np.ndarray
    integrated_residual: np.ndarray


def _cumulative_quad(t, f, npts=6):
    """∫_{t0}^{t_i} f dt at every grid point, each interval [t_i, t_{i+1}] integrated
    exactly for the degree-5 polynomial through the ``npts`` nearest points (any grid;
    global error O(Δt⁶) for smooth f).  Fewer points: trapezoid."""
    R = len(t)
    out = np.zeros(R)
    if R < npts:
        out[1:] = np.cumsum(0.5 * np.diff(t) * (f[1:] + f[:-1]))
        return out
    i = np.arange(R - 1)
    j0 = np.clip(i - (npts // 2 - 1), 0, R - npts)
    idx = j0[:, None] + np.arange(npts)[None, :]                    # (R-1, npts)
    c = 0.5 * (t[i] + t[i + 1])
    s = 0.5 * (t[i + 1] - t[i])
    x = (t[idx] - c[:, None]) / s[:, None]                          # stencil in [-a, a]
    Vt = x[:, None, :] ** np.arange(npts)[None, :, None]            # (R-1, k, j): x_j^k
    k = np.arange(npts)
    mom = np.where(k % 2 == 0, 2.0 / (k + 1), 0.0)                  # ∫_{-1}^{1} x^k dx
    w = np.linalg.solve(Vt, np.broadcast_to(mom, (R - 1, npts))[..., None])[..., 0]
    out[1:] = np.cumsum(s * np.sum(w * f[idx], axis=1))
    return out


def _find_symmetry(potential, family, block, direction, omega):
    from .symmetry import FAMILIES, Symmetry
    if isinstance(family, Symmetry):
        return family
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or a Symmetry, got {family!r}")
    blocks = None if block is None else ((block,) if isinstance(block, str) else
                                         tuple(block))
    for s in potential.symmetries:
        if s.family == family and (blocks is None or s.blocks == blocks):
            if direction is not None or omega is not None:
                return Symmetry(family, s.blocks, s.exact, direction=direction,
                                omega=omega, note=s.note)
            return s
    if blocks is None:
        raise ValueError(f"{type(potential).__name__} declares no {family!r} symmetry; "
                         "pass block= (and direction=/omega=) to evaluate the terms anyway")
    for b in blocks:
        if b not in potential.blocks:
            raise ValueError(f"no block {b!r}; blocks: {list(potential.blocks)}")
    dirn = None if direction is None else V.as_float_array(
        "direction", direction, shape=(len(potential.blocks[blocks[0]]),))
    return Symmetry(family, blocks, direction=dirn, omega=omega)


def _Dxi(sym, qdot, blocks, omega):
    """Dξ(q) q̇ (ξ is linear in q for every family, so this is ξ evaluated at q̇ minus the
    constant part of a translation)."""
    from .symmetry import generator
    if sym.family == "translation":
        return np.zeros_like(qdot)
    return generator(sym, qdot, blocks, omega)


def _model_rhs(result):
    """y'(t_i) = F(t_i, y_i) at every recorded row, by the integrator's compiled
    right-hand side (the same equations of motion :func:`integrate` steps)."""
    model = result.model
    t = np.ascontiguousarray(result.t, dtype=float)
    y = np.ascontiguousarray(result.y, dtype=float)
    dy = np.empty_like(y)
    _bridge.eval_rhs(model.kernel_inputs(), t, y, dy)
    return dy


def noether_terms(result, family, block=None, *, omega=None, direction=None):
    """The terms of Noether's learning dynamics (Eq. 9) along a trajectory.

    Parameters
    ----------
    result : IntegrateResult
        A trajectory of Damped (M1), RadialAngular (M2, via q = r q̂) or Bregman (M3).
    family : {"translation", "scale", "rescale", "rotation"} or Symmetry
        The symmetry; by default the potential's declared one of that family.
    block : str or (str, str), optional
        Block(s) it acts on (needed when the potential declares no such symmetry: the
        terms are then evaluated for a broken symmetry, and ``potential`` is non-zero).
    omega : (n, n) skew array, for rotations of an isotropic potential.
    direction : unit vector over the block, for translations.

    Returns
    -------
    NoetherTerms

    Notes
    -----
    M1/M2 are the Bregman Lagrangian with Euclidean h, e^α = 1/m, e^{α+β} = 1, γ̇ = μ/m
    (Table 1, "Natural"), so Δ_h = m q̇ and the metric term is identically 0.  M4 has no
    kinetic energy: its charge is zero by Eq. 12 and is not offered here.
    """
    from .symmetry import generator

    if not isinstance(result, IntegrateResult):
        raise TypeError("result must be an IntegrateResult (what noether_core.integrate "
                        f"returns), got {type(result).__name__}")
    if omega is not None:
        omega = V.as_float_array("omega", omega, ndim=2)
    if direction is not None:
        direction = V.as_float_array("direction", direction, ndim=1)
    model = result.model
    if isinstance(model, GradientFlow):
        raise ValueError("GradientFlow (M4) has no kinetic energy: Eq. 12 gives J = 0; "
                         "noether_terms needs a Damped, RadialAngular or Bregman trajectory")
    pot = model.potential
    sym = _find_symmetry(pot, family, block, direction, omega)
    om = omega if omega is not None else sym.omega
    t = result.t
    dy_all = _model_rhs(result)
    R = len(t)
    out = {k: np.empty(R) for k in ("J", "dJdt", "dissipation", "dynamic_asymmetry",
                                    "metric", "potential")}
    q_all, qd_all = result.q, result.v
    for i in range(R):
        q, qd = q_all[i], qd_all[i]
        xi = generator(sym, q, pot.blocks, om)
        dxi = _Dxi(sym, qd, pot.blocks, om)
        if isinstance(model, Bregman):
            ea, eab, gd = model.schedule(float(t[i]))
            Dh = result.y[i, model.dim:]
            Pdot = dy_all[i, model.dim:]
            gV = pot.grad(q)
            metric = ea * ((Dh - model.hess_h(q) * qd / ea) @ xi)
        else:
            ea, eab, gd = 1.0 / model.m, 1.0, model.mu / model.m
            Dh = model.m * qd
            if isinstance(model, RadialAngular):
                dy = dy_all[i]
                d = model.dim
                r, rd, u, w = result.y[i, 0], result.y[i, 1], result.y[i, 2:2 + d], \
                    result.y[i, 2 + d:]
                qdd = dy[1] * u + 2.0 * rd * w + r * dy[2 + d:]
            else:
                qdd = dy_all[i, model.dim:]
            Pdot = model.m * qdd
            gV = pot.grad(q) + model.k * q
            metric = 0.0
        out["J"][i] = Dh @ xi
        out["dynamic_asymmetry"][i] = Dh @ dxi
        out["dJdt"][i] = Pdot @ xi + out["dynamic_asymmetry"][i]
        out["dissipation"][i] = gd * out["J"][i]
        out["metric"][i] = metric
        out["potential"][i] = eab * (gV @ xi)
    rhs_terms = (out["dynamic_asymmetry"] + out["metric"] - out["potential"]
                 - out["dissipation"])
    residual = out["dJdt"] - rhs_terms
    integral = _cumulative_quad(t, rhs_terms)
    return NoetherTerms(t=t.copy(), residual=residual,
                        integrated_residual=out["J"] - out["J"][0] - integral, **out)
