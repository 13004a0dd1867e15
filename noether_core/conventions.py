"""Discrete rules ↔ continuous models: the (η, β) ↔ (h, m, μ) conversions of SPEC §1.

Two conventions relate heavy ball with learning rate η and momentum β to the damped
Lagrangian m q̈ + μ q̇ + ∇f + k q = 0 (Eq. 2–3) integrated with time step h:

``"paper"`` (modified equation, the paper's Eq. 2)
    h = η,  m = η(1+β)/2,  μ = 1−β.  Heavy ball is a consistent first-order method for
    this ODE; the identification is exact only to leading order.

``"variational"`` (discrete Euler–Lagrange, SPEC §1; docs/conventions.md)
    β = e^{−μh/m},  η = h²/m.  Heavy ball *is* the variational integrator of
    L_d = h e^{μt_n/m}[(m/2)|Δq/h|² − V(q_n)], exactly; with h = η: m = η, μ = −ln β.

Both agree to leading order as β → 1.  The weight decay k is the same in both.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from . import _validation as V

__all__ = ["Continuous", "Discrete", "to_continuous", "to_discrete", "CONVENTIONS"]

CONVENTIONS = ("paper", "variational")


class Continuous(NamedTuple):
    """Time step h, mass m, friction μ of the damped Lagrangian."""

    h: float
    m: float
    mu: float


class Discrete(NamedTuple):
    """Learning rate η and heavy-ball momentum β."""

    lr: float
    momentum: float


def _conv(convention):
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def to_continuous(lr, momentum=0.0, *, convention="paper", h=None) -> Continuous:
    """(η, β) → (h, m, μ).

    Parameters
    ----------
    lr : float > 0
    momentum : float in [0, 1) ("paper") or (0, 1) ("variational": β = 0 is μ = ∞)
    convention : {"paper", "variational"}
    h : float > 0, optional
        Time step; "paper" fixes h = η (passing another h is an error), "variational"
        defaults to h = η.

    Examples
    --------
    >>> to_continuous(0.1, 0.9)
    Continuous(h=0.1, m=0.095, mu=0.09999999999999998)
    """
    _conv(convention)
    lr = V.as_scalar("lr", lr, lo=0.0, lo_open=True)
    beta = V.as_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    if convention == "paper":
        if h is not None and V.as_scalar("h", h) != lr:
            raise ValueError(f"the paper convention has h = lr = {lr}, got h={h}")
        return Continuous(lr, lr * (1.0 + beta) / 2.0, 1.0 - beta)
    if beta == 0.0:
        raise ValueError("momentum = 0 has no variational (m, mu): it is mu = inf")
    h = lr if h is None else V.as_scalar("h", h, lo=0.0, lo_open=True)
    m = h * h / lr
    return Continuous(h, m, -m * math.log(beta) / h)


def to_discrete(m, mu, *, convention="paper", h=None) -> Discrete:
    """(m, μ[, h]) → (η, β), the inverse of :func:`to_continuous`.

    "paper": β = 1 − μ (needs 0 < μ ≤ 1), η = 2m/(1+β) (h is then η).
    "variational": needs h; β = e^{−μh/m}, η = h²/m.

    Raises ValueError when the result is not a valid SGD pair in float64: η must be
    positive and finite, β below 1 (β = 1 − μ rounds to 1 for μ < 2⁻⁵³, e^{−μh/m} for
    μh/m < 2⁻⁵³; h = 1e-300 makes η = h²/m underflow to 0).
    """
    _conv(convention)
    m = V.as_scalar("m", m, lo=0.0, lo_open=True)
    if convention == "paper":
        mu = V.as_scalar("mu", mu, lo=0.0, hi=1.0, lo_open=True)
        beta = 1.0 - mu
        if not beta < 1.0:
            raise ValueError(f"mu={mu!r} gives momentum = 1 - mu = {beta!r} in float64; SGD "
                             "needs momentum < 1 (allowed: mu >= 1.2e-16)")
        lr = 2.0 * m / (1.0 + beta)
        if not math.isfinite(lr):
            raise ValueError(f"m={m!r} and mu={mu!r} give lr = 2m/(2 - mu) = {lr!r}, which "
                             "overflows float64; SGD needs a finite lr")
        return Discrete(lr, beta)
    mu = V.as_scalar("mu", mu, lo=0.0, lo_open=True)
    if h is None:
        raise ValueError("the variational convention needs the time step h")
    h = V.as_scalar("h", h, lo=0.0, lo_open=True)
    lr, x = h * h / m, mu * h / m
    if not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError(f"h={h!r} and m={m!r} give lr = h**2/m = {lr!r}, outside float64's "
                         "positive finite range; SGD needs 0 < lr < inf")
    beta = math.exp(-x)
    if not beta < 1.0:
        # e^{-x} rounds to 1 for x < 2^-53: SGD needs momentum < 1 (an underflow to 0 for
        # x > 745 is harmless: e^{-x} is then 0 to float64's precision, a valid momentum)
        raise ValueError(f"mu={mu!r}, h={h!r}, m={m!r} give momentum = exp(-mu*h/m) = "
                         f"{beta!r} in float64; SGD needs momentum < 1 (allowed: "
                         "mu*h/m >= 1.2e-16)")
    return Discrete(lr, beta)


to_continuous = V.finite_result(to_continuous)
to_discrete = V.finite_result(to_discrete)
