"""Closed-form theory of Sec. 4: equilibria, the norm schedule Eq. 17 and its RMSProp twin.

Everything here concerns one block of parameters ``q`` on which the loss is
scale-invariant (BatchNorm / LayerNorm / a Rayleigh quotient), trained by SGD with
learning rate η, heavy-ball momentum β and L2 weight decay k (``torch.optim.SGD``
semantics, dampening 0, no Nesterov unless said).  Notation (SPEC §0, paper Eq. 2–3):

* ``a_n = |q_n|² = r_n²``, ``Δ_n = q_n − q_{n−1}``, ``q̂ = q/|q|``;
* ``g_n = ∇f(q_n)`` and ``ĝ_n = ∇f(q̂_n)``; for a scale-invariant f, ``|ĝ| = |g|·|q|``;
* mass and friction ``m = η(1+β)/2``, ``μ = 1−β``, continuous time ``t = nη``.

Units: a quantity "per step" is per update n → n+1; "per unit time" is per unit of
``t = nη`` (divide a per-step rate by η to get it).

"Angular update" means one quantity throughout the project: the chord ``|q̂_{n+1} − q̂_n|``
of one block over one step (dimensionless; ≈ the angle in radians for small angles: the
angle is ``2 arcsin(chord/2)``).  :func:`angular_updates` gives the series and
:func:`steady_angular_update` the prediction; the balance predicts the mean square, so the
late-window summary comparable with it is the RMS chord (docs/theory.md §3; the demo's and
the PyTorch monitor's summaries).

The one exact fact everything rests on is the discrete scale balance (SPEC §1.1)::

    (a_{n+1} − a_n) − β (a_n − a_{n−1}) = |Δ_{n+1}|² + β|Δ_n|² − 2ηk a_n .

The closed forms follow from it once ``|Δ_{n+1}|²`` is related to ``|g_n|²`` through the
*buffer gain* ``κ = |Δ_{n+1}|²/(η²|g_n|²)``, which depends on how successive gradients
are correlated (SPEC §4 "Caution").  Three named assumptions are offered:

``"coherent"``      the paper's: the buffer sums equal gradients, κ = 1/(1−β)²;
``"uncorrelated"``  minibatch noise, independent directions, κ = 1/(1−β²);
``"alternating"``   successive gradients opposite (the period-2 oscillation of a run at the
                    edge of stability, typical of full-batch late times), κ = 1/(1+β)².

and, where a measured series exists, ``"measured"``: the exact identity driven by the run's
own ``|Δ_n|²``.  Derivations: docs/theory.md.

Every optimizer (docs/theory.md §9): :func:`equilibrium` gives the steady angular update
and steady |q|² of a block under ``"sgd"`` (dampening), ``"nesterov"``, ``"adam"`` (L2),
``"adamw"`` and ``"rmsprop"`` (L2) from the hyper-parameters (torch's names) and window
means of :class:`GradStats`; :func:`gradient_stats` computes those statistics from a
block's gradients (run through the rule's own buffers; the adaptive rules also use the
direction q̂ and, for coupled decay, the optimizer's second moment of g + kq); and
:func:`rule_norm_schedule` predicts |q_n|² and the per-step chord over time from |q_0| and
the per-step statistics.  None of them reads the run's steps, chords or norms.

>>> import numpy as np
>>> g = np.random.default_rng(0).standard_normal((2000, 8))      # a block's gradients
>>> st = gradient_stats("nesterov", g, momentum=0.9)
>>> e = equilibrium("nesterov", lr=0.1, momentum=0.9, weight_decay=1e-3,
...                 grad_stats=st.mean(1000))
>>> e.regime, round(e.angular_update / steady_angular_update(
...     0.1, 0.9, 1e-3, rule="nesterov", assumption="uncorrelated"), 2)
('uncorrelated', 1.0)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validation as V

__all__ = ["ASSUMPTIONS", "buffer_gain", "measured_buffer_gain", "nearest_assumption",
           "steady_angular_speed",
           "steady_angular_update", "steady_radius", "intrinsic_lr", "norm_schedule",
           "NormSchedule", "rmsprop_scale", "RMSPropScale", "equivalent_rmsprop",
           "EquivalentRMSProp", "step_norm2", "angular_updates", "RULES", "GradStats",
           "Equilibrium", "RuleSchedule", "equilibrium", "gradient_stats",
           "rule_norm_schedule"]

#: the named correlation assumptions (``"measured"`` is accepted where a series exists)
ASSUMPTIONS = ("coherent", "uncorrelated", "alternating")


# -- input handling ---------------------------------------------------------------------
# Every public function below carries ``@V.finite_result``: finite inputs far outside the
# physical range (lr = 5e-324, r0 = 1e300) overflow the closed forms, and the decorator
# says so in a ValueError naming the arguments, rather than return inf/NaN.
def _param(name, x, *, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite float array (0-d for a scalar) in the given range, or a clear error."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or array, got {x!r}")
    if np.ndim(x) == 0 and not isinstance(x, np.ndarray):
        return np.asarray(V.as_scalar(name, x, lo=lo, hi=hi, lo_open=lo_open,
                                      hi_open=hi_open))
    arr = V.as_float_array(name, x)
    bad = np.zeros(arr.shape, bool)
    if lo is not None:
        bad |= (arr <= lo) if lo_open else (arr < lo)
    if hi is not None:
        bad |= (arr >= hi) if hi_open else (arr > hi)
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{name} must lie in {rng}, found {arr[i]} at index "
                         f"{i if len(i) != 1 else i[0]}")
    return arr


def _hyper(lr, momentum, weight_decay, *, k_positive=False, why=""):
    eta = _param("lr", lr, lo=0.0, lo_open=True)
    beta = _param("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    if k_positive:
        try:
            k = _param("weight_decay", weight_decay, lo=0.0, lo_open=True)
        except ValueError as exc:
            raise ValueError(f"{exc}{why}") from None
    else:
        k = _param("weight_decay", weight_decay, lo=0.0)
    return eta, beta, k


def _out(x):
    """A Python float for 0-d results, the array otherwise."""
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def _check_grad_stats(grad_stats, name):
    """TypeError unless ``grad_stats`` is a GradStats; ValueError unless it was measured
    for the rule ``name``."""
    if not isinstance(grad_stats, GradStats):
        raise TypeError(f"grad_stats must be a theory.GradStats, got "
                        f"{type(grad_stats).__name__}")
    if grad_stats.rule != name:
        raise ValueError(f"grad_stats were measured for rule={grad_stats.rule!r}, not "
                         f"{name!r}")


def _check_assumption(assumption, allowed=ASSUMPTIONS):
    if not isinstance(assumption, str) or assumption not in allowed:
        raise ValueError(f"assumption must be one of {allowed}, got {assumption!r}")
    return assumption


def _gain(beta, assumption):
    if assumption == "coherent":
        return 1.0 / (1.0 - beta) ** 2
    if assumption == "uncorrelated":
        return 1.0 / (1.0 - beta * beta)
    return 1.0 / (1.0 + beta) ** 2


_NO_STEADY = (" (without weight decay there is no steady state: |q| grows without bound, "
              "Eq. 17 with k = 0)")


# -- buffer gain --------------------------------------------------------------------------
@V.finite_result
def buffer_gain(momentum, assumption="coherent"):
    """Buffer gain κ = |Δ_{n+1}|²/(η²|g_n|²) of heavy ball under a correlation assumption.

    Parameters
    ----------
    momentum : float or array in [0, 1)
        Heavy-ball β.
    assumption : {"coherent", "uncorrelated", "alternating"}
        ``coherent`` (the paper's): 1/(1−β)²; ``uncorrelated``: 1/(1−β²);
        ``alternating`` (period-2, gradients flip sign every step): 1/(1+β)².

    Returns
    -------
    float or ndarray
        κ, dimensionless.

    Notes
    -----
    With Δ_{n+1} = −η Σ_j β^j g_{n−j} (the weight-decay part of the buffer is radial and
    O(ηk) relative in a steady state) and a stationary gradient autocorrelation
    C(l) = ⟨g_n, g_{n−l}⟩/|g|², κ = (1 + 2 Σ_{l≥1} β^l C(l))/(1−β²); the three cases are
    C ≡ 1, C(l≥1) = 0 and C(l) = (−1)^l.  docs/theory.md §2.

    Examples
    --------
    >>> round(buffer_gain(0.9, "coherent"), 9), round(buffer_gain(0.9, "uncorrelated"), 6)
    (100.0, 5.263158)
    """
    beta = _param("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    return _out(_gain(beta, _check_assumption(assumption)))


@V.finite_result
def measured_buffer_gain(delta_norm2, grad_norm2, lr):
    """The measured κ_n = |Δ_{n+1}|²/(η²|g_n|²), step by step.

    Compare with :func:`buffer_gain` to tell which assumption a run follows.

    Parameters
    ----------
    delta_norm2 : (N, ...) array_like
        ``|q_{n+1} − q_n|²`` for n = 0..N−1 (see :func:`step_norm2`).
    grad_norm2 : (N, ...) array_like
        ``|∇f(q_n)|²`` for the same n (the gradient used at step n, no weight decay).
    lr : float > 0

    Returns
    -------
    ndarray, shape of the inputs
        κ_n.

    Raises
    ------
    ValueError
        Where a gradient vanishes exactly (κ_n would be infinite) or the ratio overflows,
        naming the arguments (every public function here refuses a non-finite result).
    """
    D = V.as_float_array("delta_norm2", delta_norm2)
    g2 = V.as_float_array("grad_norm2", grad_norm2)
    if D.shape != g2.shape:
        raise ValueError(f"delta_norm2 and grad_norm2 must have the same shape, got "
                         f"{D.shape} and {g2.shape}")
    if (D < 0).any() or (g2 < 0).any():
        raise ValueError("delta_norm2 and grad_norm2 must be non-negative")
    eta = V.as_scalar("lr", lr, lo=0.0, lo_open=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(g2 > 0, D / (eta * eta * np.where(g2 > 0, g2, 1.0)), np.inf)


@V.finite_result
def nearest_assumption(gain, momentum):
    """The named assumption whose κ (:func:`buffer_gain`) is nearest ``gain`` in log scale.

    Parameters
    ----------
    gain : float > 0
        A measured buffer gain, e.g. the median of :func:`measured_buffer_gain` over a late
        window.
    momentum : float in (0, 1)
        β (at β = 0 all assumptions coincide and the question has no answer).

    Returns
    -------
    str
        One of :data:`ASSUMPTIONS`.

    Examples
    --------
    >>> nearest_assumption(5.0, 0.9)
    'uncorrelated'
    """
    g = V.as_scalar("gain", gain, lo=0.0, lo_open=True)
    beta = V.as_scalar("momentum", momentum, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    return min(ASSUMPTIONS, key=lambda a: abs(np.log(g / _gain(beta, a))))


# -- equilibrium ------------------------------------------------------------------------------
@V.finite_result
def steady_angular_speed(lr, momentum, weight_decay):
    """Steady angular speed |dq̂/dt|* = sqrt(k/m) = sqrt(2k/(η(1+β))), per unit time.

    From the radial equation Eq. 14, m r̈ + μ ṙ = (m|q̂̇|² − k) r, at ṙ = r̈ = 0.

    Parameters
    ----------
    lr, momentum, weight_decay : float or array (broadcast)
        η > 0, β in [0, 1), k ≥ 0.

    Returns
    -------
    float or ndarray
        Radians per unit time t = nη.  Times η it is the per-step chord of
        :func:`steady_angular_update`.

    Examples
    --------
    >>> round(steady_angular_speed(0.1, 0.9, 5e-4), 6)
    0.072548
    """
    eta, beta, k = _hyper(lr, momentum, weight_decay)
    return _out(np.sqrt(2.0 * k / (eta * (1.0 + beta))))


@V.finite_result
def steady_angular_update(lr, momentum, weight_decay, *, rule="sgd", dampening=0.0,
                          assumption="coherent"):
    """Steady per-step angular update |q̂_{n+1} − q̂_n|* of a scale-invariant block.

    ``rule="sgd"`` (heavy ball, the paper's Sec. 4 result)::

        |q̂_{n+1} − q̂_n|* = sqrt(2ηk(1−τ)/(1+β))        (τ = dampening)

    exact at a strict fixed point of the exact balance (SPEC §1.1) — then it is the chord
    |q̂_{n+1} − q̂_n| itself, with no approximation — and, for the a-weighted mean square
    over a statistically stationary window, correct up to the radial share
    ⟨(r_{n+1}−r_n)²⟩/⟨a⟩ (O(ηk) while the radius drifts slowly) and a boundary term that
    decays as 1/window.  It does not depend on the correlation assumption.  It fails where
    the radius jumps: full-batch runs with large β relax in spikes (docs/theory.md §7).

    ``rule="nesterov"`` (torch's nesterov=True): the balance acquires a cross term
    ⟨Δ_n, g_{n−1}⟩, so the result depends on the correlation of successive gradients,
    sqrt(2ηk/(1+β+2βξ)) with ξ = η⟨Δ_n, g_{n−1}⟩/|Δ|² = −(1−β) (coherent),
    −(1+β)/((1+β)² + β⁴/(1−β²)) (uncorrelated), −(1+β)/(1+2β) (alternating); pass
    ``assumption``.  Leading order in ηk (docs/theory.md §6).

    ``rule="adamw"`` (Kosson et al., "Rotational equilibrium"): sqrt(2ηk(1−β₁)/(1+β₁)),
    with ``momentum`` = β₁, assuming uncorrelated gradients, ⟨q, update⟩ ≈ 0 and a
    stationary second-moment estimate (heuristic, not an identity; docs/theory.md §6).

    For the correlation-aware Nesterov form, Adam/RMSprop with L2 decay, AdamW's metric
    term and the steady norms, see :func:`equilibrium` (docs/theory.md §9).

    Parameters
    ----------
    lr, momentum, weight_decay : float or array (broadcast)
        η > 0, β (β₁ for AdamW) in [0, 1), k ≥ 0 (decoupled for AdamW).
    rule : {"sgd", "nesterov", "adamw"}
    dampening : float in [0, 1]
        SGD dampening τ (``rule="sgd"`` only).
    assumption : {"coherent", "uncorrelated", "alternating"}
        Used by ``rule="nesterov"`` only.

    Returns
    -------
    float or ndarray
        Per step: the chord |q̂_{n+1} − q̂_n| (dimensionless; ≈ the angle in radians for
        small angles).  Equals η · :func:`steady_angular_speed` for SGD.  Compare it with
        the RMS of :func:`angular_updates` over a late window (the balance predicts the
        mean square, docs/theory.md §3).

    Examples
    --------
    >>> round(steady_angular_update(0.1, 0.9, 5e-4), 6)
    0.007255
    """
    eta, beta, k = _hyper(lr, momentum, weight_decay)
    _check_assumption(assumption)
    if rule not in ("sgd", "nesterov", "adamw"):
        raise ValueError(f"rule must be one of ('sgd', 'nesterov', 'adamw'), got {rule!r}")
    tau = _param("dampening", dampening, lo=0.0, hi=1.0)
    if rule != "sgd" and np.any(tau != 0.0):
        raise ValueError(f"dampening applies to rule='sgd' only, got dampening={dampening}"
                         f" with rule={rule!r}")
    if rule == "sgd":
        return _out(np.sqrt(2.0 * eta * k * (1.0 - tau) / (1.0 + beta)))
    if rule == "adamw":
        return _out(np.sqrt(2.0 * eta * k * (1.0 - beta) / (1.0 + beta)))
    return _out(np.sqrt(2.0 * eta * k / _nesterov_denominator(beta, assumption)))


def _nesterov_denominator(beta, assumption):
    """1 + β + 2βξ of the Nesterov steady balance, ξ = η⟨Δ_n, g_{n−1}⟩/|Δ|² (§6)."""
    if assumption == "coherent":
        xi = -(1.0 - beta)
    elif assumption == "uncorrelated":
        xi = -(1.0 + beta) / ((1.0 + beta) ** 2 + beta ** 4 / (1.0 - beta * beta))
    else:
        xi = -(1.0 + beta) / (1.0 + 2.0 * beta)
    return 1.0 + beta + 2.0 * beta * xi


@V.finite_result
def steady_radius(lr, momentum, weight_decay, grad_hat_norm, assumption="coherent"):
    """Steady radius r* of a scale-invariant block under SGD with momentum and decay.

    ``r*⁴ = η(1+β) κ |ĝ|² / (2k)`` with the buffer gain κ of :func:`buffer_gain`:

    * ``coherent`` (the paper):   r*⁴ = η(1+β)|ĝ|²/(2k(1−β)²) = (m/(kμ²)) |ĝ|²;
    * ``uncorrelated`` (SPEC §4): r*⁴ = η|ĝ|²/(2k(1−β));
    * ``alternating``:            r*⁴ = η|ĝ|²/(2k(1+β)).

    Derived from the exact balance (SPEC §1.1) at a steady state, (1+β)|Δ|² = 2ηk r²,
    with |Δ|² = η²κ|g|² and |g| = |ĝ|/r (docs/theory.md §3).

    Parameters
    ----------
    lr, momentum : float or array
        η > 0, β in [0, 1).
    weight_decay : float or array > 0
        k (k = 0 has no steady radius).
    grad_hat_norm : float or array ≥ 0
        |ĝ| = |∇f(q̂)|, the gradient norm at the unit-norm direction (not squared).
    assumption : {"coherent", "uncorrelated", "alternating"}

    Returns
    -------
    float or ndarray
        r* (same length unit as q).

    Examples
    --------
    >>> round(steady_radius(0.1, 0.9, 5e-4, 1.0), 4)
    11.7405
    """
    eta, beta, k = _hyper(lr, momentum, weight_decay, k_positive=True, why=_NO_STEADY)
    gh = _param("grad_hat_norm", grad_hat_norm, lo=0.0)
    kappa = _gain(beta, _check_assumption(assumption))
    return _out((eta * (1.0 + beta) * kappa / (2.0 * k)) ** 0.25 * np.sqrt(gh))


@V.finite_result
def intrinsic_lr(lr, momentum, weight_decay, *, assumption="coherent", per_step=False):
    """Intrinsic learning rate |ĝ|/r*² of the steady state.

    Per unit time (default): ``sqrt(2k/(η(1+β)κ))``; coherent: ``sqrt(kμ²/m)`` (the
    paper's; at steady state Eq. 15 reads m q̂̈ + μ q̂̇ = −sqrt(kμ²/m) ĝ/|ĝ|).
    Per step (``per_step=True``): ``η|ĝ|/r*² = sqrt(2ηk/((1+β)κ))`` — the length of the
    step along the *normalised* gradient ĝ/|ĝ| before the momentum amplification;
    coherent: ``(1−β) sqrt(2ηk/(1+β))``, uncorrelated: ``sqrt(2ηk(1−β))``.

    Parameters
    ----------
    lr, momentum, weight_decay : float or array
        η > 0, β in [0, 1), k ≥ 0.
    assumption : {"coherent", "uncorrelated", "alternating"}
    per_step : bool

    Returns
    -------
    float or ndarray
        1/time (t = nη) or dimensionless per step.

    Examples
    --------
    >>> round(intrinsic_lr(0.1, 0.9, 5e-4), 6)
    0.007255
    """
    eta, beta, k = _hyper(lr, momentum, weight_decay)
    kappa = _gain(beta, _check_assumption(assumption))
    per_time = np.sqrt(2.0 * k / (eta * (1.0 + beta) * kappa))
    return _out(per_time * eta if V.as_bool("per_step", per_step) else per_time)


# -- Eq. 17: the norm schedule -------------------------------------------------------------
@dataclass(frozen=True)
class NormSchedule:
    """Result of :func:`norm_schedule`.  Arrays have N+1 rows (n = 0..N).

    Attributes
    ----------
    steps : (N+1,) int array
        n.
    t : (N+1,) array
        n·η (continuous time).
    r2_continuous : (N+1, ...) array
        r²(t_n): Eq. 17 (coherent; its counterpart for other assumptions), or for
        ``"measured"`` the overdamped continuum of the exact identity.
    r2_discrete : (N+1, ...) array
        r²_n from the exact discrete identity (SPEC §1.1) with |Δ_n|² modelled by the
        assumption, or measured (then it is |q_n|² to round-off).
    assumption : str
    decay_per_step : float
        The exponential factor of the continuous form per step: e^{−4ηk/(1−β)} on r⁴, or
        e^{−2ηk/(1−β)} on r² for ``"measured"``.
    """

    steps: np.ndarray
    t: np.ndarray
    r2_continuous: np.ndarray
    r2_discrete: np.ndarray
    assumption: str
    decay_per_step: float


def _ema(x, lam, b, y0):
    """y_{n+1} = lam·y_n + b·x_n along axis 0, y_0 = y0: returns y_0..y_N (IIR filter)."""
    y0 = np.broadcast_to(np.asarray(y0, dtype=np.float64), x.shape[1:])
    zi = (lam * y0)[None, ...]
    from scipy.signal import lfilter  # lazily: scipy.signal costs ~0.6 s to import
    y, _ = lfilter([b], [1.0, -lam], x, axis=0, zi=zi)
    return np.concatenate([y0[None, ...], y], axis=0)


def _zoh_weight(rate, eta):
    """∫_0^η e^{−rate s} ds = −expm1(−rate·η)/rate (→ η as rate → 0)."""
    return -np.expm1(-rate * eta) / rate if rate > 0.0 else eta


@V.finite_result
def norm_schedule(grad_hat_norm2, lr, momentum, weight_decay, r0, assumption="coherent",
                  delta_norm2=None, prev=None):
    """Eq. 17: r²_n of a scale-invariant block from a measured per-step |ĝ_n|² series.

    Two forms side by side (docs/theory.md §4):

    * ``r2_continuous`` — the solution of the overdamped Eq. 16,
      d(r⁴)/dt = −(4k/(1−β)) r⁴ + P |ĝ(t)|², P = 2(1+β)ηκ/(1−β) per unit time
      (coherent: the paper's 4m/μ³ = 2η(1+β)/(1−β)³ of Eq. 17; uncorrelated 2η/(1−β)²;
      alternating 2η/((1−β)(1+β))), with |ĝ(t)|² held constant over each step
      [nη, (n+1)η).  Evaluated exactly for that input as an exponential moving average::

          r⁴_{n+1} = e^{−4ηk/(1−β)} r⁴_n + P·(1 − e^{−4ηk/(1−β)})(1−β)/(4k) · |ĝ_n|²

      never through e^{−ct}∫e^{+cτ}, so any number of steps is overflow-free.
    * ``r2_discrete`` — the exact identity of SPEC §1.1,
      a_{n+1} = (1+β−2ηk) a_n − β a_{n−1} + D_{n+1} + β D_n (a = r², a_{−1} = a_0 and
      D_0 = 0 from rest), with D_{n+1} = η² κ_n |ĝ_n|²/a_n modelled by the assumption
      (κ_n includes the buffer's warm-up from rest, e.g. coherent
      ((1−β^{n+1})/(1−β))²) or, for ``assumption="measured"``, the run's own
      D_{n+1} = |Δ_{n+1}|² (then r2_discrete equals |q_n|² to round-off).

    For ``"measured"`` the continuous column is the overdamped continuum of the same
    identity, da/dt = −(2k/(1−β)) a + (D_{n+1} + βD_n)/((1−β)η), again as an EMA;
    ``grad_hat_norm2`` is not needed then (pass None).

    Parameters
    ----------
    grad_hat_norm2 : (N,) or (N, B) array_like, or None for "measured"
        |ĝ_n|² = |∇f(q_n)|²·|q_n|² for steps n = 0..N−1 (B independent blocks along
        axis 1).  From a ``train`` run with ``record_every=1``:
        ``(res.grad_norm2 * res.norm2(block))[:-1]``.
    lr, momentum, weight_decay : float
        η > 0, β in [0, 1), k ≥ 0 (k = 0: pure accumulation, AdaGrad-like).
    r0 : float or (B,) array > 0
        |q_0|.
    assumption : {"coherent", "uncorrelated", "alternating", "measured"}
    delta_norm2 : (N,) or (N, B) array_like
        |Δ_{n+1}|² = |q_{n+1} − q_n|², n = 0..N−1; required for (only for) "measured".
    prev : (float, float), optional
        (a_{−1}, D_0) = (|q_{−1}|², |Δ_0|²) for a run resumed with a non-zero momentum
        buffer (q_{−1} = q_0 + η·buffer); default: from rest, (r0², 0).

    Returns
    -------
    NormSchedule

    Raises
    ------
    ValueError
        For bad input, or if a modelled discrete recursion leaves a > 0 (hyper-parameters
        far outside the regime where the model means anything).

    Notes
    -----
    Cost O(N·B); the continuous column and the "measured" recursion are IIR filters
    (scipy.signal.lfilter), the modelled recursion a loop over n vectorised over B.
    """
    eta = V.as_scalar("lr", lr, lo=0.0, lo_open=True)
    beta = V.as_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    k = V.as_scalar("weight_decay", weight_decay, lo=0.0)
    _check_assumption(assumption, ASSUMPTIONS + ("measured",))
    measured = assumption == "measured"
    if measured:
        if delta_norm2 is None:
            raise ValueError('assumption="measured" needs delta_norm2 (|q_{n+1} - q_n|^2 '
                             "per step, e.g. step_norm2(res.q) with record_every=1)")
        D = V.as_float_array("delta_norm2", delta_norm2)
        if D.ndim not in (1, 2) or (D < 0).any():
            raise ValueError("delta_norm2 must be a non-negative (N,) or (N, B) array, got "
                             f"shape {D.shape}")
        shape = D.shape
        gh2 = None
        if grad_hat_norm2 is not None:
            gh2 = V.as_float_array("grad_hat_norm2", grad_hat_norm2)
            if gh2.shape != shape:
                raise ValueError(f"grad_hat_norm2 has shape {gh2.shape}, delta_norm2 "
                                 f"{shape}: they must match")
    else:
        if delta_norm2 is not None:
            raise ValueError(f"delta_norm2 is used only with assumption='measured', got "
                             f"assumption={assumption!r}")
        if grad_hat_norm2 is None:
            raise ValueError(f"grad_hat_norm2 is required for assumption={assumption!r}")
        gh2 = V.as_float_array("grad_hat_norm2", grad_hat_norm2)
        if gh2.ndim not in (1, 2):
            raise ValueError(f"grad_hat_norm2 must be (N,) or (N, B), got shape {gh2.shape}")
        shape = gh2.shape
    if gh2 is not None and (gh2 < 0).any():
        raise ValueError("grad_hat_norm2 must be non-negative (it is a squared norm)")
    r0 = _param("r0", r0, lo=0.0, lo_open=True)
    with np.errstate(over="ignore"):
        r0_4 = np.asarray(r0) ** 4
    if not np.all(np.isfinite(r0_4)):                  # the recursion runs on r⁴
        raise ValueError(f"r0 is too large: r0⁴ overflows float64, got {r0}")
    if r0.ndim > 1 or (r0.ndim == 1 and (len(shape) != 2 or r0.shape[0] != shape[1])):
        raise ValueError(f"r0 must be a scalar or have one value per block (shape "
                         f"{shape[1:]}), got shape {r0.shape}")
    a0 = np.broadcast_to(r0 * r0, shape[1:]).astype(np.float64)
    if prev is None:
        a_prev, D0 = a0.copy(), np.zeros(shape[1:])
    else:
        if not isinstance(prev, (tuple, list)) or len(prev) != 2:
            raise TypeError(f"prev must be a pair (a_prev, D0), got {prev!r}")
        a_prev = np.broadcast_to(_param("prev[0]", prev[0], lo=0.0), shape[1:]).astype(float)
        D0 = np.broadcast_to(_param("prev[1]", prev[1], lo=0.0), shape[1:]).astype(float)
    N = shape[0]
    steps = np.arange(N + 1)
    t = eta * steps

    if measured:
        c1 = 1.0 + beta - 2.0 * eta * k
        drive = D.copy()
        drive[1:] += beta * D[:-1]
        drive[0] += beta * D0
        # a_{n+1} − c1 a_n + β a_{n−1} = drive_n  (second-order IIR; initial state from
        # a_0 and a_{−1}: direct form II transposed, zi = [c1 a_0 − β a_{−1}, −β a_0])
        zi = np.stack([c1 * a0 - beta * a_prev, -beta * a0])
        from scipy.signal import lfilter
        y, _ = lfilter([1.0, 0.0, 0.0], [1.0, -c1, beta], drive, axis=0, zi=zi)
        r2_disc = np.concatenate([a0[None, ...], y], axis=0)
        rate = 2.0 * k / (1.0 - beta)
        lam = float(np.exp(-rate * eta))
        b = _zoh_weight(rate, eta) / ((1.0 - beta) * eta)
        r2_cont = _ema(drive, lam, b, a0)
        return NormSchedule(steps, t, r2_cont, r2_disc, assumption, lam)

    kappa = _gain(beta, assumption)
    rate = 4.0 * k / (1.0 - beta)
    lam = float(np.exp(-rate * eta))
    P = 2.0 * (1.0 + beta) * eta * kappa / (1.0 - beta)
    r4 = _ema(gh2, lam, P * _zoh_weight(rate, eta), a0 * a0)
    r2_cont = np.sqrt(r4)
    r2_disc = _model_recursion(gh2, eta, beta, k, assumption, a0, a_prev, D0,
                               warm_up=prev is None)
    return NormSchedule(steps, t, r2_cont, r2_disc, assumption, lam)


def _warmup_gain(beta, assumption, N):
    """κ_n, n = 0..N−1, of a buffer started from rest after n+1 accumulated gradients."""
    n1 = np.arange(1, N + 1, dtype=np.float64)
    if assumption == "coherent":
        return (-np.expm1(n1 * np.log(beta)) / (1.0 - beta)) ** 2 if beta > 0 else np.ones(N)
    if assumption == "uncorrelated":
        return (-np.expm1(2.0 * n1 * np.log(beta)) / (1.0 - beta * beta)
                if beta > 0 else np.ones(N))
    return ((1.0 - (-beta) ** n1) / (1.0 + beta)) ** 2


def _model_recursion(gh2, eta, beta, k, assumption, a0, a_prev, D0, warm_up=True):
    """a_{n+1} = (1+β−2ηk) a_n − β a_{n−1} + D_{n+1} + β D_n,  D_{n+1} = η²κ_n|ĝ_n|²/a_n.

    κ_n is the warm-up gain of a buffer started from rest (``warm_up``), or the steady
    gain for a run resumed with a full buffer (``prev`` given to norm_schedule)."""
    N = gh2.shape[0]
    scalar = gh2.ndim == 1
    gain = (_warmup_gain(beta, assumption, N) if warm_up
            else np.full(N, _gain(beta, assumption)))
    drive = (eta * eta) * gain
    drive = (drive * gh2.T).T
    if scalar:                       # plain floats: ~10x faster per step than 0-d arrays
        drive, a0, a_prev, D0 = drive.tolist(), float(a0), float(a_prev), float(D0)
    out = np.empty((N + 1,) + gh2.shape[1:])
    out[0] = a0
    c1 = 1.0 + beta - 2.0 * eta * k
    a, a_old, D_old = a0, a_prev, D0
    for n in range(N):
        D_new = drive[n] / a
        a_new = c1 * a - beta * a_old + D_new + beta * D_old
        if not (a_new > 0.0 if scalar else np.all(a_new > 0.0)):
            raise ValueError(
                f"the {assumption!r} model recursion left r^2 > 0 at step {n + 1} "
                f"(lr={eta}, momentum={beta}, weight_decay={k}); the hyper-parameters are "
                "far from the overdamped regime the model assumes")
        out[n + 1] = a_new
        a_old, a, D_old = a, a_new, D_new
    return out


# -- Eq. 19–20: RMSProp ------------------------------------------------------------------------
@dataclass(frozen=True)
class RMSPropScale:
    """Result of :func:`rmsprop_scale`: sqrt(G_n), n = 0..N, continuous and discrete."""

    steps: np.ndarray
    t: np.ndarray
    sqrt_G_continuous: np.ndarray
    sqrt_G_discrete: np.ndarray
    decay_per_step: float


@V.finite_result
def rmsprop_scale(grad_norm2, lr, rho, G0):
    """Eq. 20: the scale factor sqrt(G) of the paper's scalar RMSProp from a |g_n|² series.

    * continuous: Eq. 19, η dG/dt = −(1−ρ) G + (1−ρ)|g(t)|², solved (Eq. 20) with |g|²
      held over each step [nη, (n+1)η); evaluated as the EMA
      G_{n+1} = e^{−(1−ρ)} G_n + (1 − e^{−(1−ρ)}) |g_n|² (decay e^{−(1−ρ)} per step,
      rate (1−ρ)/η per unit time);
    * discrete: the rule itself, G_{n+1} = ρ G_n + (1−ρ)|g_n|².

    The two differ by ρ vs e^{−(1−ρ)}, i.e. O((1−ρ)²) per step.

    Parameters
    ----------
    grad_norm2 : (N,) or (N, B) array_like
        |g_n|², n = 0..N−1 (for the unit-norm run of the correspondence, |ĝ_n|²).
    lr : float > 0
        η of the RMSProp run (only sets t = nη).
    rho : float in [0, 1)
    G0 : float or (B,) array ≥ 0

    Returns
    -------
    RMSPropScale
    """
    g2 = V.as_float_array("grad_norm2", grad_norm2)
    if g2.ndim not in (1, 2) or (g2 < 0).any():
        raise ValueError("grad_norm2 must be a non-negative (N,) or (N, B) array, got "
                         f"shape {g2.shape}")
    eta = V.as_scalar("lr", lr, lo=0.0, lo_open=True)
    rho = V.as_scalar("rho", rho, lo=0.0, hi=1.0, hi_open=True)
    G0 = _param("G0", G0, lo=0.0)
    if G0.ndim > 1 or (G0.ndim == 1 and (g2.ndim != 2 or G0.shape[0] != g2.shape[1])):
        raise ValueError(f"G0 must be a scalar or one value per block, got shape {G0.shape}")
    lam = float(np.exp(-(1.0 - rho)))
    cont = _ema(g2, lam, 1.0 - lam, G0)
    disc = _ema(g2, rho, 1.0 - rho, G0)
    steps = np.arange(g2.shape[0] + 1)
    return RMSPropScale(steps, eta * steps, np.sqrt(cont), np.sqrt(disc), lam)


@dataclass(frozen=True)
class EquivalentRMSProp:
    """Scalar-RMSProp hyper-parameters matching SGD on a scale-invariant block."""

    lr: float
    rho: float
    G0: float


@V.finite_result
def equivalent_rmsprop(lr, momentum, weight_decay, r0, assumption="coherent"):
    """The scalar RMSProp (η', ρ, G0) equivalent to SGD(η, β, k) with BatchNorm.

    Matches, step for step, RMSProp's effective learning rate η'/sqrt(G_n) on a unit-norm
    block to SGD's η/((1−β) r_n²), by matching Eq. 17 (per step: decay, prefactor,
    initial value) with Eq. 20 term by term (docs/theory.md §5)::

        ρ  = 1 − 4ηk/(1−β)                       (equal per-step decay)
        η' = sqrt(2ηk/((1+β)κ)) / (1−β)          (coherent: sqrt(2ηk/(1+β)))
        G0 = 2k r0⁴ / ((1+β) η κ)                (coherent: 2k(1−β)² r0⁴/((1+β)η))

    so that G_n = (η'(1−β)/η)² r⁴_n for every n.  The match is exact between the
    per-step (Euler) forms of both recursions and between the continuous forms (then the
    decay is e^{−(1−ρ)} = e^{−4ηk/(1−β)} per step in both).

    Parameters
    ----------
    lr, momentum : float
        SGD's η > 0, β in [0, 1).
    weight_decay : float > 0
        k; needs 4ηk/(1−β) ≤ 1 (else ρ < 0).
    r0 : float > 0
        |q_0| of the SGD run.
    assumption : {"coherent", "uncorrelated", "alternating"}

    Returns
    -------
    EquivalentRMSProp
        (lr, rho, G0); time for RMSProp counts its own steps one for one with SGD's.

    Examples
    --------
    >>> e = equivalent_rmsprop(0.1, 0.9, 5e-4, 1.0)
    >>> round(e.lr, 6), round(e.rho, 6)
    (0.007255, 0.998)
    """
    eta = V.as_scalar("lr", lr, lo=0.0, lo_open=True)
    beta = V.as_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    try:
        k = V.as_scalar("weight_decay", weight_decay, lo=0.0, lo_open=True)
    except ValueError as exc:
        raise ValueError(f"{exc} (k = 0 gives rho = 1: no equivalent RMSProp)") from None
    r0 = V.as_scalar("r0", r0, lo=0.0, lo_open=True)
    kappa = _gain(beta, _check_assumption(assumption))
    one_minus_rho = 4.0 * eta * k / (1.0 - beta)
    if one_minus_rho > 1.0:
        raise ValueError(f"4*lr*weight_decay/(1-momentum) = {one_minus_rho:g} > 1 gives "
                         "rho < 0: no equivalent RMSProp (weight decay too strong)")
    lr_eq = np.sqrt(2.0 * eta * k / ((1.0 + beta) * kappa)) / (1.0 - beta)
    G0 = 2.0 * k * r0 ** 4 / ((1.0 + beta) * eta * kappa)
    return EquivalentRMSProp(float(lr_eq), 1.0 - one_minus_rho, float(G0))


# -- measured series helpers ------------------------------------------------------------------
def _rows(name, q):
    q = V.as_float_array(name, q)
    if q.ndim != 2 or q.shape[0] < 2:
        raise ValueError(f"{name} must be a (R, d) array of at least 2 recorded rows, got "
                         f"shape {q.shape}")
    return q


@V.finite_result
def step_norm2(q):
    """|q_{n+1} − q_n|² between successive recorded rows (record_every=1: |Δ_{n+1}|²).

    Parameters
    ----------
    q : (R, d) array_like
        Recorded parameters of one block (e.g. ``res.q[:, pot.blocks["w"]]``).

    Returns
    -------
    (R−1,) ndarray
    """
    q = _rows("q", q)
    return np.sum(np.diff(q, axis=0) ** 2, axis=1)


@V.finite_result
def angular_updates(q):
    """The angular update: chord |q̂_{n+1} − q̂_n| between successive recorded rows, q̂ = q/|q|.

    The quantity :func:`steady_angular_update` predicts (the angle is
    2 arcsin(chord/2) = chord·(1 + chord²/24 + …)); its late-window summary is the RMS,
    ``np.sqrt(np.mean(angular_updates(q)[-W:] ** 2))``.

    Parameters
    ----------
    q : (R, d) array_like
        Recorded parameters of one block (``record_every=1``: one row per step).

    Returns
    -------
    (R−1,) ndarray
        The chord per step (dimensionless; ≈ the angle in radians for small angles).

    Examples
    --------
    >>> angular_updates([[1.0, 0.0], [0.0, 2.0]]).round(6)         # a quarter turn
    array([1.414214])
    """
    q = _rows("q", q)
    n = np.linalg.norm(q, axis=1)
    if not np.all(n > 0):
        raise ValueError("q has a row of zero norm: its direction is undefined")
    qh = q / n[:, None]
    return np.linalg.norm(np.diff(qh, axis=0), axis=1)



# -- every optimizer: equilibrium and norm schedule from gradient statistics -------------------
# docs/theory.md §9.  One accounting for every rule: the step is Δ_{n+1} = −η u_n − (decay),
# u built by the rule's buffers from the gradients; the norm obeys
#     a_{n+1} = a_n − 2η⟨q_n, u_n⟩ − 2ηλ a_n + η²|u_n|²   (leading order in ηλ)
# and ⟨q_n, u_n⟩ (the "cross term") follows a recursion driven by the same buffers:
# the past steps the buffer still carries, plus the metric term ⟨q_n, P_n g_n⟩ that a
# per-coordinate preconditioner P leaves (zero for SGD by scale invariance).

#: rule names accepted by :func:`equilibrium`, :func:`gradient_stats`, :func:`rule_norm_schedule`
RULES = ("sgd", "nesterov", "adam", "adamw", "rmsprop")


@dataclass(frozen=True)
class GradStats:
    """Gradient statistics of one scale block (or of B blocks, arrays along the last axis).

    Every field is computed from the gradients ``g_n`` of the block alone, run through the
    rule's own buffers with the weights left out (:func:`gradient_stats`), plus — for the
    adaptive rules only — the block's *direction* ``q̂_n`` (never its norm, never its motion).
    Per-step series (shape (N,) or (N, B)) or window means (floats or (B,)): see
    :meth:`mean`.  Units: those of the gradient of the block as trained (no rescaling to
    unit norm).

    Attributes
    ----------
    rule : str
        One of :data:`RULES`.
    update_sq : array
        ``U_n = |u_n|²``, the squared update before the learning rate, built from the
        gradients only: SGD ``|b_{n+1}|²`` (b the momentum buffer of the gradients, with
        dampening); Nesterov ``|w_n|²`` with ``w_n = g_n + β b_{n+1}``; Adam/AdamW
        ``|m̂_n/(sqrt(v̂_n)+ε)|²``; RMSprop ``|g_n/(sqrt(v_n)+ε)|²`` (m, v of the gradients).
    cross : array or None
        Nesterov only: ``⟨w_{n−1}, b_n⟩`` (0 at n = 0), the lag correlation the Nesterov
        balance needs (docs/theory.md §9.3).
    metric : array or None
        Adaptive rules: ``M_n = ⟨q̂_n, P_n g_n⟩`` with ``P = 1/(sqrt(v̂)+ε)`` the rule's
        per-coordinate preconditioner (zero for SGD, where ``⟨q, g⟩ = 0``).  None: taken
        as 0 (the rotational-equilibrium assumption).
    precond : array or None
        Coupled decay (Adam, RMSprop): ``p_n = Σ_i q̂²_{n,i} P_{n,i}``, the
        preconditioner seen by the radial direction; the decay shrinks a by ``2ηk p`` per
        step.  Units 1/gradient.
    steps : int
        Number of steps the statistics were taken over (1 for a single value).
    state : dict or None
        The rule's gradient buffers after the last step (from :func:`gradient_stats`):
        pass it as ``state=`` to continue the series with the next steps' gradients.
    shift : array or None
        Adam/AdamW: ``S_n = ⟨P_n m̂_{n−1}, u_{n−1}⟩`` (0 at n = 0), the previous update
        seen through the current preconditioner; ``S_n/U_{n−1}`` carries the change of P
        from step to step into the cross-term recursion (docs/theory.md §9.4).  None:
        P taken as constant there.  Not used by the steady forms (S = U at a steady
        state).
    """

    rule: str
    update_sq: np.ndarray
    cross: np.ndarray | None = None
    metric: np.ndarray | None = None
    precond: np.ndarray | None = None
    steps: int = 1
    state: dict | None = field(default=None, repr=False, compare=False)
    shift: np.ndarray | None = None

    @classmethod
    def concat(cls, parts):
        """One per-step series from consecutive pieces (``gradient_stats`` called chunk by
        chunk with ``state=`` the previous piece's ``.state``); keeps the last state."""
        parts = list(parts)
        if not parts or not all(isinstance(p, cls) for p in parts):
            raise TypeError("parts must be a non-empty sequence of GradStats")
        if len({p.rule for p in parts}) != 1:
            raise ValueError("parts must all be of one rule")

        def cat(name):
            xs = [getattr(p, name) for p in parts]
            if all(x is None for x in xs):
                return None
            if any(x is None for x in xs):
                raise ValueError(f"{name} is missing from some parts")
            return np.concatenate([np.atleast_1d(x) for x in xs])

        return cls(parts[0].rule, cat("update_sq"), cat("cross"), cat("metric"),
                   cat("precond"), sum(p.steps for p in parts), parts[-1].state,
                   cat("shift"))

    def mean(self, start=0, stop=None):
        """The window mean over steps ``start:stop`` of a per-step series (axis 0).

        Returns a GradStats of floats (one block) or (B,) arrays.
        """
        sl = slice(start, stop)

        def avg(x):
            if x is None:
                return None
            x = np.asarray(x, dtype=np.float64)[sl]
            if x.shape[0] == 0:
                raise ValueError(f"the window {start}:{stop} holds no step of the "
                                 f"{self.steps}-step series")
            return _out(x.mean(axis=0))

        n = len(range(*sl.indices(np.asarray(self.update_sq).shape[0])))
        return GradStats(self.rule, avg(self.update_sq), avg(self.cross), avg(self.metric),
                         avg(self.precond), n, None, avg(self.shift))


@dataclass(frozen=True)
class Equilibrium:
    """Result of :func:`equilibrium`: the steady state of a scale block under one rule.

    Attributes
    ----------
    rule : str
    angular_update : float or (B,) array
        Steady per-step chord |q̂_{n+1} − q̂_n| (dimensionless; ≈ radians), to be compared
        with the RMS chord over a late window (docs/theory.md §3).
    norm_sq : float, (B,) array or None
        Steady |q|² (squared units of q); None where the statistics needed were not given.
    regime : str
        ``"exact"`` (SGD heavy ball: the steady chord holds whatever the gradient
        correlations), ``"uncorrelated"``, ``"coherent"``, ``"alternating"`` or
        ``"correlated"`` (Nesterov: which correlation the measured statistics show),
        ``"rotational"`` (adaptive rules with a negligible metric term, the
        Kosson et al. form) or ``"metric-coupled"`` (the metric term moves the answer by
        more than 1 %), ``"no steady state"`` (weight_decay = 0: |q| grows for ever,
        the chord decays to 0; then angular_update is 0).
    metric_share : float, (B,) array or None
        Adaptive rules with statistics: the share of the norm's steady drive that comes
        from the metric term, −2rM/(2λr²) (0 for the rotational form).
    """

    rule: str
    angular_update: float | np.ndarray
    norm_sq: float | np.ndarray | None
    regime: str
    metric_share: float | np.ndarray | None = None


def _rule_name(rule):
    if not isinstance(rule, str) or rule.lower() not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return rule.lower()


def _rule_hyper(rule, lr, weight_decay, momentum, dampening, nesterov, betas, alpha, eps,
                amsgrad, centered):
    """Validated hyper-parameters of ``rule`` as a dict (torch's names and ranges)."""
    rule = _rule_name(rule)
    h = {"lr": V.as_scalar("lr", lr, lo=0.0, lo_open=True),
         "weight_decay": V.as_scalar("weight_decay", weight_decay, lo=0.0)}
    nesterov = V.as_bool("nesterov", nesterov)
    if rule == "nesterov":
        nesterov, rule = True, "sgd"
    if rule == "sgd":
        h["momentum"] = V.as_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
        h["dampening"] = V.as_scalar("dampening", dampening, lo=0.0, hi=1.0)
        if nesterov and (h["momentum"] <= 0.0 or h["dampening"] != 0.0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        if h["momentum"] == 0.0:
            h["dampening"] = 0.0          # torch applies dampening to a buffer only
        h["nesterov"] = nesterov
        return ("nesterov" if nesterov else "sgd"), h
    if nesterov:
        raise ValueError(f"nesterov=True applies to rule='sgd' only, got rule={rule!r}")
    h["eps"] = V.as_scalar("eps", eps, lo=0.0)
    if rule in ("adam", "adamw"):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        h["beta1"] = V.as_scalar("betas[0]", betas[0], lo=0.0, hi=1.0, hi_open=True)
        h["beta2"] = V.as_scalar("betas[1]", betas[1], lo=0.0, hi=1.0, hi_open=True)
        if V.as_bool("amsgrad", amsgrad):
            raise ValueError("amsgrad=True is not covered by the theory (its running "
                             "maximum of v breaks the stationary-preconditioner step of "
                             "docs/theory.md §9); allowed: amsgrad=False")
        return rule, h
    h["alpha"] = V.as_scalar("alpha", alpha, lo=0.0, hi=1.0, hi_open=True)
    mom = V.as_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    if mom != 0.0 or V.as_bool("centered", centered):
        raise ValueError(f"rule='rmsprop' is derived for momentum=0 and centered=False "
                         f"(torch's defaults), got momentum={momentum}, centered={centered}")
    return rule, h


def _nesterov_ratio(beta, assumption):
    """⟨w_{n−1}, b_n⟩/|w|² of Nesterov under a named correlation assumption (§9.3)."""
    if assumption == "coherent":
        return 1.0
    if assumption == "alternating":
        return 1.0 / (1.0 + 2.0 * beta)
    K = (1.0 + beta) ** 2 + beta ** 4 / (1.0 - beta * beta)
    return (1.0 + beta / (1.0 - beta * beta)) / K


def _stat(name, x, *, lo=None, required=True, rule=""):
    if x is None:
        if required:
            raise ValueError(f"grad_stats.{name} is required for rule={rule!r} "
                             "(see theory.gradient_stats)")
        return None
    return _param(f"grad_stats.{name}", x, lo=lo)


@V.finite_result
def equilibrium(rule, *, lr, weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False,
                betas=(0.9, 0.999), alpha=0.99, eps=1e-8, amsgrad=False, centered=False,
                grad_stats=None, assumption="uncorrelated"):
    """Steady angular update and steady norm of a scale block under one optimizer.

    The hyper-parameters carry torch's names and meanings (``torch.optim.SGD``, ``Adam``,
    ``AdamW``, ``RMSprop``), so a param group's entries can be passed as they are.
    Derivations: docs/theory.md §9 (the equation numbers below are that page's).

    ``rule`` and the closed forms (η = lr, k = weight_decay, U, C, M, p the window means
    of :class:`GradStats`):

    * ``"sgd"`` (heavy ball, dampening τ): chord* = sqrt(2ηk(1−τ)/(1+β)) — exact at a
      steady state whatever the gradient correlations (9.4); |q|²* = ηU(1+β)/(2k(1−τ)).
    * ``"nesterov"`` (or ``nesterov=True``): chord*² = 2ηk/((1−β) + 2β²C/U) (9.6), C/U the
      measured lag correlation of the Nesterov buffer (``grad_stats.cross/update_sq``);
      without statistics the named ``assumption`` sets it; |q|²* = η((1−β)U + 2β²C)/(2k).
    * ``"adamw"`` (decoupled λ = k): r*² solves 2λr² + 2Mr = ηU(1+β₁)/(1−β₁) (9.9);
      chord* = η sqrt(U)/r*.  With M = 0 (or no statistics) chord* =
      sqrt(2ηλ(1−β₁)/(1+β₁)), the rotational-equilibrium form.
    * ``"adam"`` (coupled L2): the same with λ = k·p, p = ``grad_stats.precond`` (9.10).
    * ``"rmsprop"`` (coupled L2, momentum 0): 2kp r² + 2Mr = ηU (9.11).

    Parameters
    ----------
    rule : {"sgd", "nesterov", "adam", "adamw", "rmsprop"}
    lr : float > 0
    weight_decay : float ≥ 0
        k (L2, added to the gradient; AdamW: decoupled λ).  0: no steady state.
    momentum, dampening, nesterov : SGD's (momentum in [0, 1), dampening in [0, 1])
    betas, eps, amsgrad : Adam/AdamW's (amsgrad=False only)
    alpha, eps, centered : RMSprop's (centered=False and momentum=0 only)
    grad_stats : GradStats, optional
        Window means (:meth:`GradStats.mean`) of :func:`gradient_stats` for the same rule;
        floats or (B,) arrays for B blocks.  Needed for ``norm_sq``, for Adam/RMSprop at
        all (their decay acts through p), and for the correlation-aware Nesterov form.
    assumption : {"coherent", "uncorrelated", "alternating"}
        Nesterov without statistics only.

    Returns
    -------
    Equilibrium
        ``.angular_update``, ``.norm_sq``, ``.regime``, ``.metric_share``.

    Examples
    --------
    >>> e = equilibrium("adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999))
    >>> round(e.angular_update, 6), e.regime
    (0.003244, 'rotational')
    >>> round(equilibrium("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4).angular_update, 6)
    0.007255
    """
    name, h = _rule_hyper(rule, lr, weight_decay, momentum, dampening, nesterov, betas,
                          alpha, eps, amsgrad, centered)
    _check_assumption(assumption)
    if grad_stats is not None:
        _check_grad_stats(grad_stats, name)
    eta, k = h["lr"], h["weight_decay"]
    st = grad_stats
    if k == 0.0:
        return Equilibrium(name, 0.0, None, "no steady state")
    if name == "sgd":
        beta, tau = h["momentum"], h["dampening"]
        chord = np.sqrt(2.0 * eta * k * (1.0 - tau) / (1.0 + beta))
        norm = None
        if st is not None:
            U = _stat("update_sq", st.update_sq, lo=0.0, rule=name)
            norm = eta * U * (1.0 + beta) / (2.0 * k * (1.0 - tau))
            chord = chord * np.ones_like(U)
        return Equilibrium(name, _out(chord), None if norm is None else _out(norm), "exact")
    if name == "nesterov":
        beta = h["momentum"]
        if st is None:
            rho = _nesterov_ratio(beta, assumption)
            return Equilibrium(name, _out(np.sqrt(2.0 * eta * k / (1.0 - beta
                                                                  + 2.0 * beta ** 2 * rho))),
                               None, assumption)
        U = _stat("update_sq", st.update_sq, lo=0.0, rule=name)
        C = _stat("cross", st.cross, rule=name)
        den = (1.0 - beta) * U + 2.0 * beta * beta * C
        if np.any((den <= 0.0) & (U > 0.0)):
            raise ValueError("grad_stats give (1-momentum)*update_sq + 2*momentum^2*cross "
                             "<= 0: no steady state of the Nesterov balance (9.6)")
        # a block whose gradient vanishes (a dead unit) only shrinks: chord 0, |q|² → 0
        chord = np.sqrt(2.0 * eta * k * U / np.where(U > 0.0, den, 1.0))
        norm = eta * den / (2.0 * k)
        named = {a: np.sqrt(2.0 * eta * k / (1.0 - beta + 2.0 * beta ** 2
                                              * _nesterov_ratio(beta, a)))
                 for a in ASSUMPTIONS}
        regime = _nearest_regime(chord, named, "correlated")
        return Equilibrium(name, _out(chord), _out(norm), regime)
    # adaptive rules
    gamma = ((1.0 + h["beta1"]) / (1.0 - h["beta1"])) if name in ("adam", "adamw") else 1.0
    coupled = name != "adamw"
    if st is None:
        if coupled:
            raise ValueError(f"rule={name!r} needs grad_stats: its L2 decay acts through the "
                             "preconditioner, p = grad_stats.precond (docs/theory.md §9.5)")
        return Equilibrium(name, _out(np.sqrt(2.0 * eta * k / gamma)), None, "rotational")
    U = _stat("update_sq", st.update_sq, lo=0.0, rule=name)
    M = np.zeros_like(U) if st.metric is None else _stat("metric", st.metric, rule=name)
    lam = k * _stat("precond", st.precond, lo=0.0, rule=name) if coupled else k
    lam = lam * np.ones_like(U)
    drive = eta * U * gamma
    # 2λ r² + 2 M r − drive = 0, the positive root, in the cancellation-free form
    if np.any(lam <= 0.0):
        raise ValueError("grad_stats.precond must be > 0 (a coupled decay acts through it)")
    disc = np.sqrt(M * M + 2.0 * lam * drive)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(M <= 0.0, (disc - M) / (2.0 * lam), drive / (disc + M))
        live = r > 0.0                # a dead unit (no gradient): chord 0, |q|² → 0
        rs = np.where(live, r, 1.0)
        norm = r * r
        chord = np.where(live, eta * np.sqrt(U) / rs, 0.0)
        share = np.where(live, -M / (lam * rs), 0.0)
    rot = np.sqrt(2.0 * eta * lam / gamma)
    regime = ("rotational" if np.all(~live | (np.abs(chord / rot - 1.0) <= 0.01))
              else "metric-coupled")
    return Equilibrium(name, _out(chord), _out(norm), regime, _out(share))


def _nearest_regime(chord, named, other, rtol=0.01):
    """The named regime whose chord is within rtol of every entry of ``chord``, else other."""
    for a, c in named.items():
        if np.all(np.abs(np.asarray(chord) / c - 1.0) <= rtol):
            return a
    return other


def _series(name, x, n_rows=None):
    x = V.as_float_array(name, x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be an (N, d) array (one row per step), got shape "
                         f"{x.shape}")
    if n_rows is not None and x.shape != n_rows:
        raise ValueError(f"{name} has shape {x.shape}, grads {n_rows}: they must match")
    return x


@V.finite_result
def gradient_stats(rule, grads, params=None, *, lr=1.0, weight_decay=0.0, momentum=0.0,
                   dampening=0.0, nesterov=False, betas=(0.9, 0.999), alpha=0.99, eps=1e-8,
                   amsgrad=False, centered=False, state=None):
    """Per-step :class:`GradStats` of one block from its gradient series.

    Runs the rule's buffers (torch semantics, from rest) on the gradients with the weights
    left out: SGD's momentum buffer ``b`` (first step undamped, then ``βb + (1−τ)g``),
    Nesterov's ``w = g + βb``, Adam's bias-corrected ``m̂`` and RMSprop's ``g`` over the
    rule's preconditioner ``P = 1/(sqrt(v̂)+ε)``.

    The adaptive rules also need, from ``params``: the block's direction q̂_n (the metric
    term ⟨q̂, Pg⟩ and the radial preconditioner Σq̂²P) and, for the coupled decay of Adam
    and RMSprop, the decay's share of the second moment: v is the EMA of
    ``(g + k q)²``, the optimizer's own state (torch's ``exp_avg_sq``/``square_avg``).
    Neither the norm |q| nor any step q_{n+1} − q_n enters a statistic otherwise.

    Parameters
    ----------
    rule : {"sgd", "nesterov", "adam", "adamw", "rmsprop"}
    grads : (N, d) array_like
        ∇_B f(q_n) for steps n = 0..N−1 on each step's minibatch (without weight decay).
    params : (N, d) array_like, optional
        q_n at the same steps; adaptive rules only.  Without it the metric term is left
        out (None), v holds g² only and ``precond`` is the plain mean of P over the
        block's coordinates (assumptions, docs/theory.md §9.5).
    lr : ignored (accepted so that a param group can be passed whole)
    weight_decay : float ≥ 0
        Used for the coupled rules' second moment (with ``params``).
    momentum, dampening, nesterov, betas, alpha, eps, amsgrad, centered
        As in :func:`equilibrium`.
    state : dict, optional
        ``.state`` of the GradStats of the previous steps: the buffers continue from it
        (the result is then the next piece of one series, :meth:`GradStats.concat`);
        None: from rest, at step 0.

    Returns
    -------
    GradStats
        Per-step series of length N; :meth:`GradStats.mean` gives a window's means.

    Examples
    --------
    >>> g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> gradient_stats("sgd", g, momentum=0.5).update_sq
    array([1.    , 1.25  , 1.8125])
    """
    name, h = _rule_hyper(rule, 1.0, weight_decay, momentum, dampening, nesterov, betas,
                          alpha, eps, amsgrad, centered)
    G = _series("grads", grads)
    N, d = G.shape
    Q = Qh = None
    if params is not None:
        if name in ("sgd", "nesterov"):
            raise ValueError(f"params are used by the adaptive rules only, got "
                             f"rule={name!r}")
        Q = _series("params", params, G.shape)
        nq = np.linalg.norm(Q, axis=1)
        if not np.all(nq > 0):
            raise ValueError("params has a row of zero norm: its direction is undefined")
        Qh = Q / nq[:, None]
    if state is not None:
        if not isinstance(state, dict) or state.get("rule") != name or state.get("d") != d:
            raise ValueError(f"state must be the .state of a GradStats of rule={name!r} "
                             f"for a block of {d} coordinates")
    n0 = 0 if state is None else state["n"]
    if name in ("sgd", "nesterov"):
        beta, tau = h["momentum"], h["dampening"]
        if beta == 0.0:
            B = G.copy()                                  # no buffer: the step is g
        elif n0 == 0 and tau == 1.0:
            B = G[0] * beta ** np.arange(N, dtype=np.float64)[:, None]
        elif state is not None and tau == 1.0:
            B = state["b"] * beta ** np.arange(1, N + 1, dtype=np.float64)[:, None]
        else:
            # b_{n+1} = β b_n + (1−τ) g_n, an IIR filter; torch's first step b_1 = g_0
            # (undamped) is the same filter fed g_0/(1−τ) from b_0 = 0
            from scipy.signal import lfilter
            X = G.copy()
            if n0 == 0:
                X[0] /= 1.0 - tau
                zi = np.zeros((1, d))
            else:
                zi = (beta * state["b"])[None, :]
            B, _ = lfilter([1.0 - tau], [1.0, -beta], X, axis=0, zi=zi)
        b = B[-1].copy()
        cross = None
        if name == "nesterov":
            W = G + beta * B
            U = np.sum(W * W, axis=1)
            cross = np.zeros(N)
            cross[1:] = np.sum(W[:-1] * B[:-1], axis=1)
            if state is not None and state["w_prev"] is not None:
                cross[0] = state["w_prev"] @ state["b_prev"]
            w_prev, b_prev = W[-1].copy(), b
        else:
            U = np.sum(B * B, axis=1)
            w_prev = b_prev = None
        new = {"rule": name, "d": d, "n": n0 + N, "b": b, "w_prev": w_prev,
               "b_prev": b_prev}
        return GradStats(name, U, cross, None, None, N, new)
    D = G + h["weight_decay"] * Q if (Q is not None and name != "adamw") else G
    if name == "rmsprop":
        v = _ema0(D * D, h["alpha"], None if state is None else state["v"])
        P = 1.0 / (np.sqrt(v) + h["eps"])
        u = P * G
        m = None
    else:
        b1, b2 = h["beta1"], h["beta2"]
        n1 = np.arange(n0 + 1, n0 + N + 1, dtype=np.float64)[:, None]
        m = _ema0(G, b1, None if state is None else state["m"])
        v = _ema0(D * D, b2, None if state is None else state["v"])
        mh = m / -np.expm1(n1 * np.log(b1)) if b1 > 0 else m
        vh = v / -np.expm1(n1 * np.log(b2)) if b2 > 0 else v
        P = 1.0 / (np.sqrt(vh) + h["eps"])
        u = P * mh
        shift = np.zeros(N)
        shift[1:] = np.sum(P[1:] * mh[:-1] * u[:-1], axis=1)
        if state is not None:
            shift[0] = np.sum(P[0] * state["mh"] * state["u"])
    U = np.sum(u * u, axis=1)
    if Qh is None:
        metric, precond = None, P.mean(axis=1)
    else:
        metric = np.sum(Qh * P * G, axis=1)
        precond = np.sum(Qh * Qh * P, axis=1)
    if name == "adamw":
        precond = None
    new = {"rule": name, "d": d, "n": n0 + N, "v": v[-1].copy(),
           "m": None if m is None else m[-1].copy()}
    if m is None:
        shift = None
    else:
        new.update(mh=mh[-1].copy(), u=u[-1].copy())
    return GradStats(name, U, None, metric, precond, N, new, shift)


def _ema0(x, beta, y0=None):
    """y_n = β y_{n−1} + (1−β) x_n along axis 0 from y_{−1} = y0 (default 0: torch's EMA
    buffers from rest)."""
    from scipy.signal import lfilter
    if y0 is None:
        return lfilter([1.0 - beta], [1.0, -beta], x, axis=0)
    y, _ = lfilter([1.0 - beta], [1.0, -beta], x, axis=0, zi=(beta * y0)[None, :])
    return y


@V.finite_result
def rule_norm_schedule(rule, grad_stats, r0, *, lr, weight_decay=0.0, momentum=0.0,
                       dampening=0.0, nesterov=False, betas=(0.9, 0.999), alpha=0.99,
                       eps=1e-8, amsgrad=False, centered=False):
    """|q_n|², n = 0..N, of a scale block predicted from its per-step gradient statistics.

    The norm recursion of docs/theory.md §9 run from rest (every buffer empty at n = 0,
    |q_0| = r0), driven by the series of :func:`gradient_stats` (computed from the
    gradients, plus the direction for the adaptive rules) — never by the run's own |q| or
    steps.  Per rule (x_n the cross term ⟨q_n, u_n⟩, c_n = (1−β₁)/(1−β₁^{n+1}),
    f_n = β₁(1−β₁^n)/(1−β₁^{n+1})):

    * sgd: x_n = β(x_{n−1} − η V_{n−1}) + (1−τ)k a_n, V_n = U_n + 2k s_{n+1} x_n −
      k²s²_{n+1} a_n, a_{n+1} = a_n − 2ηx_n + η²V_n  (9.2, 9.3; s the buffer's scalar gain);
    * nesterov: y_n = β(y_{n−1} − ηC_n) + k a_n, x_n = k a_n + βy_n,
      a_{n+1} = a_n − 2ηx_n + η²U_n  (9.5);
    * adamw: x_n = f_n((1−ηλ)ρ_n x_{n−1} − ηS_n) + c_n r_n M_n,
      a_{n+1} = (1−ηλ)²a_n − 2η(1−ηλ)x_n + η²U_n  (9.7, 9.8; ρ_n = S_n/U_{n−1} with
      ``grad_stats.shift``, else S_n = U_{n−1}, ρ = 1);
    * adam: the same with the decay through the preconditioner, (1−ηλ) → (1−ηk p_n) in
      x and a_{n+1} = (1 − 2ηk p_n) a_n − 2ηx_n + η²U_n;
    * rmsprop: x_n = r_n M_n, a_{n+1} = (1 − 2ηk p_n) a_n − 2ηx_n + η²U_n.

    Parameters
    ----------
    rule : {"sgd", "nesterov", "adam", "adamw", "rmsprop"}
    grad_stats : GradStats
        Per-step series (N,) or (N, B) from :func:`gradient_stats`, starting at step 0.
    r0 : float or (B,) array > 0
        |q_0|.
    lr, weight_decay, ... : the rule's hyper-parameters, as in :func:`equilibrium`.

    Returns
    -------
    RuleSchedule
        ``.norm_sq`` (N+1 rows) and the predicted per-step ``.angular_update`` (N rows).

    Raises
    ------
    ValueError
        If the recursion leaves a > 0 (hyper-parameters outside the small-step regime).
    """
    name, h = _rule_hyper(rule, lr, weight_decay, momentum, dampening, nesterov, betas,
                          alpha, eps, amsgrad, centered)
    _check_grad_stats(grad_stats, name)
    U = V.as_float_array("grad_stats.update_sq", grad_stats.update_sq)
    if U.ndim not in (1, 2) or U.shape[0] < 1:
        raise ValueError(f"grad_stats.update_sq must be a per-step (N,) or (N, B) series, "
                         f"got shape {U.shape}")

    def series(field, required):
        x = getattr(grad_stats, field)
        if x is None:
            if required:
                raise ValueError(f"grad_stats.{field} is required for rule={name!r}")
            return np.zeros(U.shape)
        x = V.as_float_array(f"grad_stats.{field}", x)
        if x.shape != U.shape:
            raise ValueError(f"grad_stats.{field} has shape {x.shape}, update_sq "
                             f"{U.shape}: they must match")
        return x

    coupled = name in ("adam", "rmsprop")
    C = series("cross", name == "nesterov")
    M = series("metric", False)
    p = series("precond", coupled)
    if name in ("adam", "adamw") and grad_stats.shift is not None:
        S = series("shift", False)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.ones(U.shape)
            ratio[1:] = np.where(U[:-1] > 0.0, S[1:] / np.where(U[:-1] > 0.0, U[:-1], 1.0),
                                 1.0)
    else:
        S = np.concatenate([np.zeros((1,) + U.shape[1:]), U[:-1]])   # P constant
        ratio = np.ones(U.shape)
    r0 = _param("r0", r0, lo=0.0, lo_open=True)
    if r0.ndim > 1 or (r0.ndim == 1 and (U.ndim != 2 or r0.shape[0] != U.shape[1])):
        raise ValueError(f"r0 must be a scalar or have one value per block (shape "
                         f"{U.shape[1:]}), got shape {r0.shape}")
    eta, k = h["lr"], h["weight_decay"]
    N = U.shape[0]
    out = np.empty((N + 1,) + U.shape[1:])
    Dn = np.empty(U.shape)
    a = np.broadcast_to(r0 * r0, U.shape[1:]).astype(np.float64)
    out[0] = a
    x = y = np.zeros(U.shape[1:])
    if name in ("adam", "adamw"):
        b1 = h["beta1"]
        bc = -np.expm1(np.arange(1, N + 1) * np.log(b1)) if b1 > 0 else np.ones(N)
    beta = h.get("momentum", 0.0)
    tau = h.get("dampening", 0.0)
    s = Vprev = 0.0
    for n in range(N):
        if name == "sgd":
            s = 1.0 if n == 0 else beta * s + (1.0 - tau)
            x = (1.0 if n == 0 else 1.0 - tau) * k * a + (beta * (x - eta * Vprev)
                                                          if n > 0 else 0.0)
            Vn = U[n] + 2.0 * k * s * x - (k * s) ** 2 * a
            a_new = a - 2.0 * eta * x + eta * eta * Vn
            Vprev = Vn
            Dn[n] = eta * eta * Vn
        elif name == "nesterov":
            y = k * a + (beta * (y - eta * C[n]) if n > 0 else 0.0)
            x = k * a + beta * y
            a_new = a - 2.0 * eta * x + eta * eta * U[n]
            Dn[n] = eta * eta * U[n]
        elif name == "adamw":
            shrink = 1.0 - eta * k
            c = (1.0 - b1) / bc[n]
            x = (b1 * (bc[n - 1] / bc[n]) * (shrink * ratio[n] * x - eta * S[n]) if n > 0
                 else 0.0) + c * np.sqrt(a) * M[n]
            a_new = shrink * shrink * a - 2.0 * eta * shrink * x + eta * eta * U[n]
            Dn[n] = eta * eta * (k * k * a + 2.0 * k * x + U[n])
        elif name == "adam":
            c = (1.0 - b1) / bc[n]
            x = (b1 * (bc[n - 1] / bc[n]) * ((1.0 - eta * k * p[n - 1]) * ratio[n] * x
                                             - eta * S[n]) if n > 0
                 else 0.0) + c * np.sqrt(a) * M[n]
            a_new = (1.0 - eta * k * p[n]) ** 2 * a - 2.0 * eta * x + eta * eta * U[n]
            Dn[n] = eta * eta * ((k * p[n]) ** 2 * a + 2.0 * k * p[n] * x + U[n])
        else:
            x = np.sqrt(a) * M[n]
            a_new = (1.0 - eta * k * p[n]) ** 2 * a - 2.0 * eta * x + eta * eta * U[n]
            Dn[n] = eta * eta * ((k * p[n]) ** 2 * a + 2.0 * k * p[n] * x + U[n])
        if not np.all(a_new > 0.0):
            raise ValueError(f"the {name!r} norm recursion left |q|^2 > 0 at step {n + 1} "
                             f"(r0={_out(r0)}, lr={eta}, weight_decay={k}): far outside "
                             "the small-step regime the model assumes (finite |q|^2 > 0)")
        a = a_new
        out[n + 1] = a
    r = np.sqrt(out)
    c2 = (Dn - np.diff(r, axis=0) ** 2) / (r[:-1] * r[1:])
    return RuleSchedule(name, out, np.sqrt(np.maximum(c2, 0.0)))


@dataclass(frozen=True)
class RuleSchedule:
    """Result of :func:`rule_norm_schedule`.

    Attributes
    ----------
    rule : str
    norm_sq : (N+1,) or (N+1, B) array
        Predicted |q_n|², n = 0..N.
    angular_update : (N,) or (N, B) array
        Predicted chord |q̂_{n+1} − q̂_n| of step n from the predicted step length
        D_n and the predicted norms (law of cosines, docs/theory.md §3); its RMS over a
        window is the time-resolved counterpart of :func:`equilibrium`'s value, valid
        also while the statistics drift.
    """

    rule: str
    norm_sq: np.ndarray
    angular_update: np.ndarray
