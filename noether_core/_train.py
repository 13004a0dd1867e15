"""``train``: run a learning rule on a potential in one compiled call."""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _bridge, _status
from . import _validation as V
from . import charges as _charges
from .errors import BudgetError, DivergenceWarning
from .potentials import Potential
from .rules import SGD, Rule, RuleState

__all__ = ["train", "TrainResult", "continuum_balance", "ContinuumBalance"]


#: refuse recording requests above this many bytes (override with max_record_bytes=)
DEFAULT_MAX_RECORD_BYTES = 4 * 2**30


@dataclass(eq=False)
class TrainResult:
    """What one run returns.  Arrays are indexed by recorded row.

    Attributes
    ----------
    steps : (R,) int array
        Global step index n of each recorded row (q_0 is row 0; resumed runs continue the
        count of the state they started from).
    q : (R, d) array or None
        Recorded parameters q_n (None with ``record_q=False``).
    loss : (R,) array
        f(q_n) on the minibatch step n used (for the terminal row, where no step follows,
        on the full data set).
    grad_norm2 : (R,) array
        |∇f(q_n)|² on the same rows as ``loss`` (no weight-decay term).
    block_norm2 : dict[str, (R,) array]
        |q_B|² per named block.
    block_grad_norm2, block_step_norm2 : dict[str, (R,) array]
        With ``block_stats=True``: |∇f(q_n)_B|² (same rows as ``loss``) and |Δ_n|²_B with
        Δ_n = q_n − q_{n−1} (0 at the first row of a fresh run) per block; else empty.
    q_final : (d,) array
        Parameters after the last step taken.
    state : RuleState
        The rule's state after the run; ``train(..., state=result.state)`` resumes.  It
        carries the last step Δ whatever ``charges``/``block_stats`` were, so a resumed
        run's charges continue exactly.  After a divergence it is returned as it is
        (possibly non-finite), and resuming from it is refused.
    diverged : bool
        True if a non-finite value stopped the run early.
    stop_step : int or None
        Global step at which the non-finite value was met.
    stop_reason : str or None
        "non-finite loss", "non-finite gradient" or "non-finite parameters after the update",
        with the first offending block where that can be told.
    charges : dict[str, ChargeSeries]
        Noether charges and balance-law residuals per tracked symmetry, keyed
        ``"family:block"`` (noether_core.charges).  Empty with ``charges=False``.
    untracked : list of (label, reason)
        Declared symmetries that could not be tracked (e.g. rotation without omega).
    """

    rule: Rule
    potential: Potential
    steps: np.ndarray
    q: np.ndarray
    loss: np.ndarray
    grad_norm2: np.ndarray
    block_norm2: dict
    q_final: np.ndarray
    state: RuleState
    record_every: int
    batch_size: int | None
    diverged: bool = False
    stop_step: int | None = None
    stop_reason: str | None = None
    charges: dict = field(default_factory=dict)
    untracked: list = field(default_factory=list)
    block_grad_norm2: dict = field(default_factory=dict)
    block_step_norm2: dict = field(default_factory=dict)

    def charge(self, family: str, block: str | None = None):
        """The ChargeSeries of the symmetry of ``family`` acting on ``block``.

        ``block`` may be omitted when the family has one tracked symmetry.
        """
        hits = [c for c in self.charges.values() if c.symmetry.family == family
                and (block is None or block in c.symmetry.blocks)]
        if len(hits) == 1:
            return hits[0]
        what = f"{family!r}" + ("" if block is None else f" on block {block!r}")
        if not hits:
            raise KeyError(f"no tracked {what} symmetry; tracked: {list(self.charges)}"
                           + (f"; untracked: {self.untracked}" if self.untracked else ""))
        raise KeyError(f"{len(hits)} tracked {what} symmetries, name the block: "
                       f"{[c.label for c in hits][:8]}")

    def balance_residual(self, law: str | None = "exact") -> float:
        """Worst relative balance-law residual over the run and the tracked symmetries.

        ``law="exact"`` (default) considers only the symmetries whose law is exact for this
        rule and potential (round-off expected); ``None`` all of them.  0.0 if none.
        """
        vals = [c.worst for c in self.charges.values() if law is None or c.law == law]
        return max(vals) if vals else 0.0

    def norm2(self, block: str) -> np.ndarray:
        """|q_B|² at the recorded rows for the named block."""
        try:
            return self.block_norm2[block]
        except KeyError:
            raise KeyError(f"no block {block!r}; blocks: {list(self.block_norm2)}") from None

    def __repr__(self):
        flag = f", diverged at step {self.stop_step}: {self.stop_reason}" if self.diverged else ""
        return (f"TrainResult({type(self.rule).__name__}, rows={len(self.steps)}, "
                f"last step={int(self.state.step)}{flag})")


def _check_batch_size(potential, batch_size):
    """None (full batch) or a minibatch size the potential can draw (train and scan)."""
    if batch_size is None:
        return None
    if potential.n_data == 0:
        raise ValueError(f"batch_size={batch_size!r} given, but {type(potential).__name__}"
                         " has no data rows to draw from")
    return V.as_int("batch_size", batch_size, lo=potential.min_batch, hi=potential.n_data)


def _check_omega(omega):
    """omega: None, one (n, n) finite real matrix, or a dict block -> such a matrix."""
    if omega is None:
        return None
    if isinstance(omega, dict):
        return {k: V.as_float_array(f"omega[{k!r}]", v, ndim=2) for k, v in omega.items()}
    return V.as_float_array("omega", omega, ndim=2)


def _make_rng(seed, state):
    """The generator a minibatch run draws from (a Generator passed in is advanced)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None and state is not None and state.rng_state is not None:
        bg_name = state.rng_state["bit_generator"]
        bg_cls = getattr(np.random, bg_name, None)
        if bg_cls is None:
            raise ValueError(f"state.rng_state names an unknown bit generator {bg_name!r}")
        bg = bg_cls()
        bg.state = state.rng_state
        return np.random.Generator(bg)
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(
            seed, (int, np.integer, np.random.SeedSequence))):
        raise TypeError("seed must be None, an int, a SeedSequence or a numpy Generator, "
                        f"got {type(seed).__name__}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(seed)


def _block_csr(potential):
    """CSR of the potential's named blocks (cached on the immutable potential)."""
    cached = potential.__dict__.get("_block_csr_cache")
    if cached is None:
        cached = _bridge.csr([potential.blocks[n] for n in potential.blocks])
        potential._block_csr_cache = cached
    return cached


#: up to this many values in all, the recorded buffers are joined for one finiteness test
_JOIN_FINITE_MAX = 4096


def _all_finite(arrays) -> bool:
    """True when every value of every array is finite: small buffers joined into one
    array and tested in one ``isfinite``/``all`` pass (a call per buffer costs more than
    the copy), larger ones tested one by one (no copy of a long record)."""
    if sum(a.size for a in arrays) <= _JOIN_FINITE_MAX:
        return bool(np.isfinite(np.concatenate([a.ravel() for a in arrays])).all())
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _flag_overflowed_records(res, names, raw=()):
    """A run whose parameters stayed finite can still overflow a recorded statistic
    (|q_B|² or |g|² beyond 1.8e308): flag it like a divergence rather than return inf.

    ``raw``: the recording buffers (cut to the rows written), whose values are exactly
    those of the series checked here; when they are all finite nothing overflowed and the
    series are not looked at one by one."""
    if raw and _all_finite(raw):
        return
    series = [("loss", res.loss), ("|g|²", res.grad_norm2)]
    series += [(f"|q_B|² of block {n!r}", res.block_norm2[n]) for n in names]
    series += [(f"|g_B|² of block {n!r}", v) for n, v in res.block_grad_norm2.items()]
    series += [(f"|Δ|²_B of block {n!r}", v) for n, v in res.block_step_norm2.items()]
    series += [(f"charge {k}", getattr(c, a)) for k, c in res.charges.items()
               for a in ("moment", "charge", "residual")]
    if all(np.isfinite(v).all() for _, v in series):       # the common case: one pass each
        return
    first = None
    for what, v in series:
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size and (first is None or bad[0] < first[0]):
            first = (int(bad[0]), what)
    if first is not None:
        res.diverged = True
        res.stop_step = int(res.steps[first[0]])
        res.stop_reason = (f"recorded {first[1]} overflowed at step {res.stop_step} "
                           "(the parameters stayed finite; rows after it are kept)")
        warnings.warn(f"{type(res.rule).__name__} on {type(res.potential).__name__}: "
                      f"{res.stop_reason}", DivergenceWarning, stacklevel=3)


def train(rule, potential, q0, steps, *, record_every=1, batch_size=None, seed=None,
          state=None, charges=True, omega=None, record_q=True, block_stats=False,
          max_record_bytes=DEFAULT_MAX_RECORD_BYTES) -> TrainResult:
    """Run ``rule`` on ``potential`` from ``q0`` for ``steps`` steps in one compiled call.

    Parameters
    ----------
    rule : Rule
        E.g. ``SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)``.
    potential : Potential
    q0 : (d,) array_like
        Initial parameters (copied; float32 or non-contiguous input is converted).
    steps : int ≥ 0
    record_every : int ≥ 1
        Record q_n, f, |g|², |q_B|² at n = 0, record_every, 2·record_every, … ≤ steps.
        Memory is O(steps/record_every · d).
    batch_size : int or None
        Minibatch size for a data potential (None: full batch).  Each step draws that many
        distinct rows uniformly (consuming ``batch_size`` doubles of the generator).
    seed : None, int, SeedSequence or numpy.random.Generator
        Source of the minibatch draws.  A Generator is advanced in place.  None with a
        ``state`` that carries an RNG state continues that stream.
    state : RuleState, optional
        Start from this rule state (a previous run's ``result.state``, or one built with
        e.g. ``SGD.with_buffer``).  Two runs of n/2 steps chained this way equal one run
        of n steps bit for bit, minibatches included.
    charges : bool or list of Symmetry
        Track Noether charges and the residual of the rule's exact discrete balance law at
        every step, inside the compiled loop (noether_core.charges, SPEC §1.1): True for
        every declared symmetry of the potential, a list for chosen ones, False for none
        (the loop is then a little faster).
    omega : (n, n) array or dict of block name -> array, optional
        Skew matrix Ω of rotation symmetries declared for "every Ω" (e.g. ``Radial``).
    record_q : bool
        Record the parameter rows (default).  False keeps only the scalar and per-block
        series — for long runs of large models.
    block_stats : bool
        Also record per block |∇f_B|² and |Δ_n|²_B (the series Eq. 17 and the "measured"
        assumption of noether_core.theory need), at the recorded rows.
    max_record_bytes : int
        Refuse (``errors.BudgetError``, a MemoryError) a recording request larger than this.

    Returns
    -------
    TrainResult

    Notes
    -----
    The loop runs without the GIL and allocates nothing per step.  A non-finite loss,
    gradient or parameter stops the run at that step: the rows recorded so far are kept,
    ``result.diverged`` is set and a :class:`~noether_core.errors.DivergenceWarning` is
    issued.  Results are bit-reproducible for the same inputs and seed.
    """
    _check_objects(rule, potential)
    d = potential.dim
    q = V.as_float_array("q0", q0, shape=(d,))
    # the kernel counts in Py_ssize_t: larger counts would overflow the C conversion
    steps = V.as_int("steps", steps, lo=0, hi=sys.maxsize)
    record_every = V.as_int("record_every", record_every, lo=1, hi=sys.maxsize)
    max_record_bytes = V.as_int("max_record_bytes", max_record_bytes, lo=0)
    _check_q0_norm(q)
    omega = _check_omega(omega)
    charges = _check_charges_arg(charges)
    rule.check_start(q)
    batch_size = _check_batch_size(potential, batch_size)
    if state is None:
        state = rule.init_state(potential)
    else:
        rule._check_state(state, potential)
        state = state.copy()
    chosen, untracked = _charges.select(potential, charges, omega)
    record_q = V.as_bool("record_q", record_q)
    block_stats = V.as_bool("block_stats", block_stats)
    n_rec = steps // record_every + 1
    _check_record_size(potential, steps, record_every, n_rec, record_q, block_stats,
                       len(chosen), max_record_bytes)

    inputs = rule.kernel_inputs(potential, state)
    # the last step Δ goes to the state whatever is tracked: the charges carry it, else
    # the recording does (block_stats needs it at every step, otherwise once at the end)
    record = _recording(potential, state, n_rec, record_every, record_q, block_stats,
                        need_delta=block_stats or not chosen)
    layout = _charges.layout(potential, chosen) if chosen else None
    crec = _charges.record(potential, chosen, n_rec, state) if chosen else None
    rng = None
    if batch_size is not None:
        rng = _make_rng(seed, state)
    elif seed is not None:
        _make_rng(seed, None)          # validate it all the same
    batch = _bridge.Batch(0 if batch_size is None else batch_size,
                          None if rng is None else rng.bit_generator)
    status, stop, n_done = _bridge.run_train(inputs, potential._kernel, q, steps, record,
                                             batch, layout, crec)
    res = _result(rule, potential, state, inputs, q, record, record_q, crec, chosen,
                  untracked, rng, status, stop, n_done, steps, batch_size)
    if status != _status.OK and hasattr(potential, "_raise_callback_error"):
        potential._raise_callback_error(int(state.step + stop))   # a user fn raised
    if status == _status.OK:
        raw = [record.loss[:n_done], record.g2[:n_done], record.bn2[:n_done]]
        raw += [b[:n_done] for b in (record.bg2, record.bd2) if b is not None]
        if crec is not None:
            raw += [crec.rec_moment[:n_done], crec.rec_charge[:n_done],
                    crec.rec_resid[:n_done]]
        _flag_overflowed_records(res, list(potential.blocks), raw)
    else:
        _flag_divergence(res, status, int(state.step + stop), q)
    return res


def _check_objects(rule, potential):
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a noether_core.rules.Rule, got {type(rule).__name__}")
    if not isinstance(potential, Potential):
        raise TypeError("potential must be a noether_core.potentials.Potential, got "
                        f"{type(potential).__name__}")


#: |q0|² cannot overflow when q0 has at most this many values, none above _Q0_SAFE_MAX
_Q0_SAFE_LEN, _Q0_SAFE_MAX = 10**7, 1e150


def _check_q0_norm(q):
    """Refuse a q0 whose |q0|² overflows (q0 is finite, validated).  Every partial sum of
    |q|² in any order is at most d·max|q_i|²·(1 + 2⁻⁵³)^d ≤ 1.000001e307 < 1.8e308 for
    d ≤ 10⁷ and max|q_i| ≤ 1e150, so such a q0 needs no dot product (nor the errstate
    around it, which costs more than the maximum)."""
    if q.size <= _Q0_SAFE_LEN and \
            float(np.maximum.reduce(np.abs(q), initial=0.0)) <= _Q0_SAFE_MAX:
        return
    with np.errstate(over="ignore"):
        q_norm2 = np.dot(q, q)
    if not np.isfinite(q_norm2):
        raise ValueError("q0 is too large: |q0|² overflows float64 (the run records |q_B|²)")


def _check_charges_arg(charges):
    if not (isinstance(charges, (bool, np.bool_)) or isinstance(charges, (list, tuple))):
        raise TypeError("charges must be True, False or a list of Symmetry objects, got "
                        f"{V._describe(charges)}")
    return bool(charges) if isinstance(charges, np.bool_) else charges


def _check_record_size(potential, steps, record_every, n_rec, record_q, block_stats, nsym,
                       max_record_bytes):
    d, nb = potential.dim, len(potential.blocks)
    need = n_rec * ((d if record_q else 0) + 2 + nb * (3 if block_stats else 1)
                    + 3 * nsym) * 8
    if need > max_record_bytes:
        raise BudgetError(f"recording steps // record_every + 1 = {steps} // {record_every} + 1"
                          f" = {n_rec} rows of {d} parameters needs {need / 2**20:.1f}"
                          f" MiB, above max_record_bytes={max_record_bytes} "
                          f"({max_record_bytes / 2**20:.1f} MiB); raise record_every")


def _recording(potential, state, n_rec, record_every, record_q, block_stats, need_delta):
    """The preallocated rows a run records into (``d_last``, the last step Δ carried on
    from ``state``, when ``need_delta``)."""
    d, nb = potential.dim, len(potential.blocks)
    bptr, bidx = _block_csr(potential)
    rec = _bridge.Recording(every=record_every, bptr=bptr, bidx=bidx,
                            q=np.empty((n_rec, d if record_q else 0)), loss=np.empty(n_rec),
                            g2=np.empty(n_rec), bn2=np.empty((n_rec, nb)))
    if block_stats:
        rec.bg2 = np.empty((n_rec, nb))
        rec.bd2 = np.empty((n_rec, nb))
    if need_delta:
        rec.d_last = (np.zeros(d) if state.last_delta is None
                      else np.array(state.last_delta, dtype=float))
    return rec


def _result(rule, potential, state, inputs, q, record, record_q, crec, chosen, untracked,
            rng, status, stop, n_done, steps, batch_size):
    """The TrainResult and the rule's state after the run."""
    # steps actually applied: a non-finite parameter is met after its update
    taken = (steps if status == _status.OK else
             stop + 1 if status == _status.NONFINITE_PARAMS else stop)
    names = list(potential.blocks)
    if crec is not None:
        labels = [_charges.symmetry_label(s) for s, _ in chosen]
        last_delta = crec.last_delta
        last_residual = dict(zip(labels, map(float, crec.last_res), strict=True))
        last_metric = dict(zip(labels, map(float, crec.last_metric), strict=True))
    else:
        last_delta, last_residual, last_metric = record.d_last, None, None
    new_state = RuleState._from_run(type(rule).__name__, rule.state_arrays(inputs),
                          rule._unpack_scalars(inputs.sca, potential), state.step + taken,
                          None if rng is None else rng.bit_generator.state,
                          last_delta, last_residual, last_metric)

    def per_block(rows):
        return {n: rows[:n_done, i] for i, n in enumerate(names)}

    return TrainResult(
        rule=rule, potential=potential,
        steps=state.step + record.every * np.arange(n_done),
        q=record.q[:n_done] if record_q else None,
        loss=record.loss[:n_done], grad_norm2=record.g2[:n_done],
        block_norm2=per_block(record.bn2), q_final=q, state=new_state,
        record_every=record.every, batch_size=batch_size,
        charges=({} if crec is None else
                 _charges.collect(rule, potential, chosen, crec, n_done, state.step)),
        untracked=untracked,
        block_grad_norm2={} if record.bg2 is None else per_block(record.bg2),
        block_step_norm2={} if record.bd2 is None else per_block(record.bd2))


def _flag_divergence(res, status, stop_step, q):
    """Mark a run stopped by a non-finite value at ``stop_step`` and warn, naming the
    first bad block."""
    names = list(res.potential.blocks)
    res.diverged = True
    res.stop_step = stop_step
    reason = _status.reason(status)
    bad = np.flatnonzero(~np.isfinite(q))
    if bad.size:
        blk = next((n for n in names if np.isin(bad[0], res.potential.blocks[n])), None)
        reason += f" (first in block {blk!r}, index {int(bad[0])})"
    res.stop_reason = reason
    warnings.warn(f"{type(res.rule).__name__} on {type(res.potential).__name__} stopped at "
                  f"step {res.stop_step}: {reason}", DivergenceWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# the continuum link of a recorded heavy-ball run


@dataclass(eq=False)
class ContinuumBalance:
    """Eq. (6.1) of docs/balance_laws.md evaluated on a recorded run
    (:func:`continuum_balance`).

    Attributes
    ----------
    t : (K,) array
        Times t = nη of the interior rows where the balance is evaluated.
    lhs, rhs : (K,) arrays
        m d/dt⟨q̇, q⟩ + μ⟨q̇, q⟩ and m|q̇|² − k|q|² (finite differences in t).
    residual : (K,) array
        |lhs − rhs| / (|m d/dt⟨q̇,q⟩| + |μ⟨q̇,q⟩| + m|q̇|² + k|q|²).
    m, mu, k : floats (the paper's convention, SPEC §0)
    """

    t: np.ndarray
    lhs: np.ndarray
    rhs: np.ndarray
    residual: np.ndarray
    m: float
    mu: float
    k: float


def continuum_balance(run, block: str | None = None) -> ContinuumBalance:
    """Evaluate the continuous-time scale balance on a recorded heavy-ball run.

    ``m d/dt⟨q̇,q⟩ + μ⟨q̇,q⟩ = m|q̇|² − k|q|²`` (SPEC §1.1, the exact form of Eq. 16 before
    the over-damped approximation), with the paper's m = η(1+β)/2, μ = 1−β, t = nη, and
    q̇, d/dt by second-order central differences of the recorded rows.  On a discrete
    trajectory the residual is O(η³) at fixed t: the central difference's O(η²) error
    cancels the O(η²) term of the modified equation (docs/balance_laws.md §6).

    Parameters
    ----------
    run : TrainResult
        An SGD run (no nesterov, dampening 0) recorded with ``record_every=1``, at least
        5 rows.
    block : str, optional
        A scale block of the potential (default: its only scale block).
    """
    if not isinstance(run, TrainResult):
        raise TypeError(f"run must be a TrainResult (what noether_core.train returns), got "
                        f"{type(run).__name__}")
    if block is not None and not isinstance(block, str):
        raise TypeError(f"block must be a block name (str) or None, got {block!r}")
    rule = run.rule
    if not isinstance(rule, SGD) or rule.nesterov or rule.dampening != 0.0:
        raise ValueError("continuum_balance needs an SGD run without nesterov and dampening "
                         f"(the model of Eq. 2), got {rule!r}")
    if run.record_every != 1 or len(run.q) < 5:
        raise ValueError("continuum_balance needs a run recorded with record_every=1 and at "
                         f"least 5 rows, got record_every={run.record_every}, "
                         f"{len(run.q)} rows")
    scale_blocks = [s.blocks[0] for s in run.potential.symmetries if s.family == "scale"]
    if block is None:
        if len(scale_blocks) != 1:
            raise ValueError(f"name the scale block: the potential has {scale_blocks}")
        block = scale_blocks[0]
    elif block not in run.potential.blocks:
        raise ValueError(f"block {block!r} not in {list(run.potential.blocks)[:8]}")
    idx = run.potential.blocks[block]
    eta, beta, k = rule.lr, rule.momentum, rule.weight_decay
    m, mu = eta * (1.0 + beta) / 2.0, 1.0 - beta
    q = run.q[:, idx]
    qdot = (q[2:] - q[:-2]) / (2 * eta)                 # at rows 1 .. R-2
    qc = q[1:-1]
    S = np.einsum("ij,ij->i", qdot, qc)                 # <q̇, q>
    dS = (S[2:] - S[:-2]) / (2 * eta)                   # at rows 2 .. R-3
    S, qdot, qc = S[1:-1], qdot[1:-1], qc[1:-1]
    v2 = np.einsum("ij,ij->i", qdot, qdot)
    a = np.einsum("ij,ij->i", qc, qc)
    lhs = m * dS + mu * S
    rhs = m * v2 - k * a
    scale = np.abs(m * dS) + np.abs(mu * S) + m * v2 + k * a
    with np.errstate(invalid="ignore", divide="ignore"):
        res = np.where(scale > 0, np.abs(lhs - rhs) / scale, 0.0)
    t = (run.steps[2:-2]) * eta
    return ContinuumBalance(t, lhs, rhs, res, m, mu, k)
