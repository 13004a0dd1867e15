"""Continuous-time models of learning (SPEC §2), integrated by :func:`noether_core.integrate`.

==========================  ==================================================  ===========
model                       equations                                           state y
==========================  ==================================================  ===========
``Damped`` (M1, Eq. 2–3)    m q̈ + μ q̇ + ∇f(q) + k q = 0                       (q, q̇)
``RadialAngular`` (M2)      Eq. 13 with q = r q̂, |q̂| = 1 (exact or Eq. 14–15)  (r, ṙ, q̂, q̂̇)
``Bregman`` (M3, Eq. 1)     q̇ = e^α(∇h*(∇h(q)+P) − q),                        (q, P)
                            Ṗ = (e^α − γ̇)P − ∇²h(q)q̇ − e^{α+β}∇f(q)
``GradientFlow`` (M4)       μ q̇ = −∇f(q) − k q                                 q
==========================  ==================================================  ===========

Every model is an immutable description (potential + constants); docs/integrators.md
derives the equations and the structure-preserving splittings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _validation as V
from ._bridge import ModelInputs
from .conventions import to_continuous
from .mirror import MIRRORS, MirrorMap
from .potentials import Potential

__all__ = ["Model", "Damped", "GradientFlow", "RadialAngular", "Bregman", "Schedule",
           "nesterov", "damped", "sgdm", "MIRRORS"]

# model kinds and Bregman schedules, as in pyx/integrators.pyx
_DAMPED, _RADANG, _BREGMAN, _GFLOW = range(4)
_SCHED_CODE = {"nesterov": 0, "damped": 1}
_SCHED_USER = 2             # Python callables, called back from the compiled loop
_SPLIT = ("conformal-euler", "conformal-verlet", "conformal-yoshida4")
_RK = ("rk4", "dopri5", "dop853")


def _potential(p):
    if not isinstance(p, Potential):
        raise TypeError("potential must be a noether_core.potentials.Potential, got "
                        f"{type(p).__name__}")
    return p


class Model:
    """Base class: a potential plus the model's constants.

    Attributes
    ----------
    potential : Potential
    methods : tuple of str
        The integration methods valid for this model.
    """

    kind = -1
    methods: tuple = _RK

    @property
    def dim(self) -> int:
        """Dimension d of q."""
        return self.potential.dim

    @property
    def state_size(self) -> int:
        return 2 * self.dim

    def _hp(self) -> np.ndarray:
        """[m, mu, k, reduced, sched, s1, s2, mirror, p] for the kernel."""
        raise NotImplementedError

    def _mirror_D(self) -> np.ndarray:
        return np.zeros(0)

    def _schedule_callback(self):
        """The Python callable the compiled loop calls back for the schedule (None: the
        model's coefficients are all compiled)."""
        return None

    def kernel_inputs(self) -> ModelInputs:
        """This model as the integrators read it (noether_core._bridge.ModelInputs)."""
        return ModelInputs(self.kind, self._hp(), self.potential._kernel, self._mirror_D(),
                           self._schedule_callback())

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self._describe().items())
        return f"{type(self).__name__}({fields})"

    def _describe(self):
        return {}


class Damped(Model):
    """M1: the damped particle m q̈ + μ q̇ + ∇f(q) + k q = 0 (Eq. 2–3).

    Parameters
    ----------
    potential : Potential
        The loss f.
    m : float > 0
        Mass (time² · loss / parameter² units); m = η(1+β)/2 in the paper's convention.
    mu : float ≥ 0
        Friction; μ = 1 − β in the paper's convention; dissipation rate γ̇ = μ/m.
    k : float ≥ 0
        Weight decay (spring constant).

    Methods: conformal-euler (heavy ball), conformal-verlet, conformal-yoshida4, rk4,
    dopri5, dop853.  State y = (q, q̇), length 2d.
    """

    kind = _DAMPED
    methods = _SPLIT + _RK

    def __init__(self, potential, m, mu, k=0.0):
        self.potential = _potential(potential)
        self.m = V.as_scalar("m", m, lo=0.0, lo_open=True)
        self.mu = V.as_scalar("mu", mu, lo=0.0)
        self.k = V.as_scalar("k", k, lo=0.0)

    @classmethod
    def from_rule(cls, potential, lr, momentum, weight_decay=0.0, *,
                  convention="variational", h=None):
        """The M1 model of heavy ball SGD(lr, momentum, weight_decay) (SPEC §1).

        ``convention="variational"``: heavy ball is *exactly* ``conformal-euler`` on this
        model with step ``model.rule_step`` (= h, default lr): m = h²/lr, μ = −m ln β / h.
        ``convention="paper"``: m = lr(1+β)/2, μ = 1 − β (modified equation, h = lr).
        """
        c = to_continuous(lr, momentum, convention=convention, h=h)
        model = cls(potential, c.m, c.mu, weight_decay)
        model.rule_step = c.h
        return model

    def _hp(self):
        return np.array([self.m, self.mu, self.k, 0, 0, 0, 0, 0, 0], dtype=float)

    def energy(self, y) -> np.ndarray:
        """E = m|q̇|²/2 + f(q) + k|q|²/2 for each row of y (the conserved energy at μ = 0)."""
        y = np.atleast_2d(y)
        d = self.dim
        f = np.array([self.potential.value(row[:d]) for row in y])
        return 0.5 * self.m * np.sum(y[:, d:] ** 2, 1) + f + 0.5 * self.k * np.sum(
            y[:, :d] ** 2, 1)

    def _describe(self):
        return {"potential": self.potential, "m": self.m, "mu": self.mu, "k": self.k}


class GradientFlow(Model):
    """M4: gradient flow μ q̇ = −∇f(q) − k q (the m → 0 limit of M1, Eq. 12).

    Methods: euler (explicit Euler = gradient descent with lr = h/μ), rk4, dopri5, dop853.
    State y = q, length d.
    """

    kind = _GFLOW
    methods = ("euler",) + _RK

    def __init__(self, potential, mu=1.0, k=0.0):
        self.potential = _potential(potential)
        self.mu = V.as_scalar("mu", mu, lo=0.0, lo_open=True)
        self.k = V.as_scalar("k", k, lo=0.0)

    @property
    def state_size(self):
        return self.dim

    def _hp(self):
        return np.array([1.0, self.mu, self.k, 0, 0, 0, 0, 0, 0], dtype=float)

    def _describe(self):
        return {"potential": self.potential, "mu": self.mu, "k": self.k}


def _scale_block_covers(potential):
    d = potential.dim
    for s in potential.symmetries:
        if s.family == "scale" and s.exact:
            idx = np.sort(potential.blocks[s.blocks[0]])
            if len(idx) == d and np.array_equal(idx, np.arange(d)):
                return True
    return False


class RadialAngular(Model):
    """M2: the radial/angular Lagrangian of Eq. 13, q = r q̂ with |q̂| = 1.

    ``reduced=False`` integrates the exact Euler–Lagrange equations (SPEC §2,
    docs/integrators.md)::

        m r̈ + μ ṙ = (m|q̂̇|² − k) r                                        (Eq. 14)
        m q̂̈ + μ q̂̇ + 2m (ṙ/r) q̂̇ = −∇f(q̂)/r² − m|q̂̇|² q̂

    ``reduced=True`` the paper's Eq. 14–15, i.e. without the 2m(ṙ/r)q̂̇ coupling (the
    constraint force −m|q̂̇|²q̂ of the multiplier λ is kept, so |q̂| = 1 still holds).

    The potential must be exactly scale-invariant on all of q (a ``scale`` symmetry whose
    block covers q, e.g. ``RayleighQuotient`` or ``BatchNormUnit(eps=0)``).

    State y = (r, ṙ, q̂, q̂̇), length 2 + 2d.  Methods: all of Damped's.
    """

    kind = _RADANG
    methods = _SPLIT + _RK

    def __init__(self, potential, m, mu, k=0.0, reduced=False):
        self.potential = _potential(potential)
        if not _scale_block_covers(self.potential):
            raise ValueError(
                f"RadialAngular needs a potential with an exact scale symmetry on all of q; "
                f"{type(potential).__name__} declares {self.potential.symmetries!r} over "
                f"blocks {list(self.potential.blocks)} (use Damped for other potentials)")
        self.m = V.as_scalar("m", m, lo=0.0, lo_open=True)
        self.mu = V.as_scalar("mu", mu, lo=0.0)
        self.k = V.as_scalar("k", k, lo=0.0)
        self.reduced = V.as_bool("reduced", reduced)

    @property
    def state_size(self):
        return 2 + 2 * self.dim

    def _hp(self):
        return np.array([self.m, self.mu, self.k, float(self.reduced), 0, 0, 0, 0, 0])

    @staticmethod
    def from_cartesian(q, v) -> np.ndarray:
        """(q, q̇) → y = (r, ṙ, q̂, q̂̇) with r = |q|, q̂ = q/r, ṙ = ⟨q̂, q̇⟩,
        q̂̇ = (q̇ − ṙ q̂)/r."""
        q = V.as_float_array("q", q, ndim=1)
        v = V.as_float_array("v", v, shape=q.shape)
        r = float(np.linalg.norm(q))
        if not np.isfinite(r):
            raise ValueError("q is too large: |q| overflows float64")
        if r == 0.0:
            raise ValueError("q = 0 has no direction (r must be > 0)")
        u = q / r
        rd = float(u @ v)
        return np.concatenate([[r, rd], u, (v - rd * u) / r])

    def to_cartesian(self, y):
        """y rows → (q, q̇) rows: q = r q̂, q̇ = ṙ q̂ + r q̂̇."""
        y = np.asarray(y, dtype=float)
        d = self.dim
        r, rd = y[..., 0:1], y[..., 1:2]
        u, w = y[..., 2:2 + d], y[..., 2 + d:]
        return r * u, rd * u + r * w

    def _describe(self):
        return {"potential": self.potential, "m": self.m, "mu": self.mu, "k": self.k,
                "reduced": self.reduced}


# -----------------------------------------------------------------------------------------
# Bregman Lagrangian (M3)

@dataclass(frozen=True)
class Schedule:
    """Time dependence (α_t, β_t, γ_t) of the Bregman Lagrangian (Eq. 1, Table 1).

    Built-ins are compiled (``nesterov``, ``damped``, ``sgdm``); a user schedule gives
    three callables of t: ``exp_alpha`` = e^{α_t}, ``exp_alpha_beta`` = e^{α_t+β_t} and
    ``gamma_dot`` = γ̇_t, which the equations of motion need; it runs in the same compiled
    loop, which calls the three functions back (taking the GIL) once per right-hand side
    evaluation: the documented slow path.
    """

    name: str
    s1: float = 0.0
    s2: float = 0.0
    exp_alpha: object = None
    exp_alpha_beta: object = None
    gamma_dot: object = None

    def __call__(self, t):
        """(e^α, e^{α+β}, γ̇) at time t."""
        if self.name == "nesterov":
            n, C = self.s1, self.s2
            return n / t, C * n * t ** (n - 1.0), n / t
        if self.name == "damped":
            return 1.0 / self.s1, 1.0, self.s2 / self.s1
        return (float(self.exp_alpha(t)), float(self.exp_alpha_beta(t)),
                float(self.gamma_dot(t)))

    @property
    def compiled(self) -> bool:
        return self.name in ("nesterov", "damped")


def nesterov(n=2.0, C=0.25) -> Schedule:
    """α = log n − log t, β = n log t + log C, γ = n log t (Table 1); singular at t = 0.

    Euclidean Euler–Lagrange equation: q̈ + (n+1)/t q̇ + C n² t^{n−2} ∇f = 0.
    """
    return Schedule("nesterov", V.as_scalar("n", n, lo=0.0, lo_open=True),
                    V.as_scalar("C", C, lo=0.0, lo_open=True))


def damped(m, mu) -> Schedule:
    """The "Natural" row of Table 1: α = −log m, β = log m, γ = μt/m."""
    return Schedule("damped", V.as_scalar("m", m, lo=0.0, lo_open=True),
                    V.as_scalar("mu", mu, lo=0.0))


def sgdm(lr, momentum) -> Schedule:
    """The SGDM row of Table 1: ``damped(m, μ)`` with m = η(1+β)/2, μ = 1−β."""
    c = to_continuous(lr, momentum, convention="paper")
    return damped(c.m, c.mu)


class Bregman(Model):
    """M3: the Bregman Lagrangian L = e^{α+γ}(D_h(q + e^{−α}q̇, q) − e^β f(q)) (Eq. 1).

    Parameters
    ----------
    potential : Potential
    schedule : Schedule or (exp_alpha, exp_alpha_beta, gamma_dot) tuple of callables
    mirror : {"euclidean", "diagonal", "pnorm", "entropy"} or noether_core.mirror.MirrorMap
        Separable h: ½|x|², ½Σ Dᵢxᵢ², (1/p)Σ|xᵢ|^p, Σ xᵢ log xᵢ (needs q > 0).
    D : (d,) positive array for ``mirror="diagonal"``;  p : float > 1 for ``"pnorm"``.

    State y = (q, P) with P = Δ_h = ∇h(q + e^{−α}q̇) − ∇h(q) (Eq. 10); build it from
    (q, q̇) with :meth:`state`.  Methods: rk4, dopri5, dop853.
    """

    kind = _BREGMAN
    methods = _RK

    def __init__(self, potential, schedule, mirror="euclidean", *, D=None, p=None):
        self.potential = _potential(potential)
        if isinstance(schedule, tuple) and len(schedule) == 3 and all(map(callable,
                                                                          schedule)):
            schedule = Schedule("user", exp_alpha=schedule[0], exp_alpha_beta=schedule[1],
                                gamma_dot=schedule[2])
        if not isinstance(schedule, Schedule):
            raise TypeError("schedule must be nesterov(...), damped(...), sgdm(...) or a "
                            "tuple of three callables (exp_alpha, exp_alpha_beta, "
                            f"gamma_dot), got {type(schedule).__name__}")
        self.schedule = schedule
        if isinstance(mirror, MirrorMap):
            if D is not None or p is not None:
                raise ValueError("pass D/p inside the MirrorMap, not next to it")
            mm = mirror
        else:
            if mirror != "diagonal" and D is not None:
                raise ValueError(f"D is only used with mirror='diagonal', not {mirror!r}")
            if mirror != "pnorm" and p is not None:
                raise ValueError(f"p is only used with mirror='pnorm', not {mirror!r}")
            mm = MirrorMap(mirror, D=D, p=p)
        if mm.name == "diagonal" and mm.D.shape != (self.potential.dim,):
            raise ValueError(f"D must have shape ({self.potential.dim},), got {mm.D.shape}")
        self.mirror_map = mm
        self.mirror, self.D, self.p = mm.name, mm.D, mm.p

    def _hp(self):
        sched = _SCHED_CODE.get(self.schedule.name, _SCHED_USER)
        return np.array([1.0, 0.0, 0.0, 0.0, sched, self.schedule.s1, self.schedule.s2,
                         MIRRORS.index(self.mirror), 0.0 if self.p is None else self.p])

    def _mirror_D(self):
        return np.zeros(0) if self.D is None else self.D

    def _schedule_callback(self):
        return None if self.schedule.compiled else self.schedule

    # the separable mirror map, elementwise (noether_core.mirror)
    def grad_h(self, x):
        """∇h(x)."""
        return self.mirror_map.grad(x)

    def grad_h_inv(self, y):
        """∇h*(y) = (∇h)^{-1}(y)."""
        return self.mirror_map.grad_conj(y)

    def hess_h(self, x):
        """The diagonal of ∇²h(x)."""
        return self.mirror_map.hess_diag(x)

    def state(self, q, qdot, t0):
        """y0 = (q, P) with P = ∇h(q + e^{−α(t0)} q̇) − ∇h(q) (Eq. 10)."""
        d = self.dim
        q = V.as_float_array("q", q, shape=(d,))
        qdot = V.as_float_array("qdot", qdot, shape=(d,))
        t0 = V.as_scalar("t0", t0)
        if self.schedule.name == "nesterov" and t0 <= 0.0:
            raise ValueError(f"the Nesterov schedule is singular at t = 0 (e^α = n/t): t0 "
                             f"must be > 0, got t0={t0}")
        ea = self.schedule(t0)[0]
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.concatenate([q, self.grad_h(q + qdot / ea) - self.grad_h(q)])
        if not np.all(np.isfinite(y)):
            raise ValueError(f"P = grad h(q + e^-alpha qdot) - grad h(q) overflows float64 "
                             f"at t0={t0} (e^alpha={ea:g}): q, qdot or t0 too large")
        return y

    def velocity(self, t, y):
        """q̇ = e^α(∇h*(∇h(q) + P) − q) for state rows y at times t."""
        d = self.dim
        y = np.atleast_2d(y)
        ea = np.array([self.schedule(float(s))[0] for s in np.atleast_1d(t)])[:, None]
        q, P = y[:, :d], y[:, d:]
        return ea * (self.grad_h_inv(self.grad_h(q) + P) - q)

    def _describe(self):
        return {"potential": self.potential, "schedule": self.schedule.name,
                "mirror": self.mirror}
