"""Learning rules: torch.optim semantics, compiled loops (noether_core._kernels.rules).

Each rule is an immutable, picklable description with torch's argument names and
defaults; ``noether_core.train`` runs it.  A rule's *state* (momentum buffers, moment
estimates, step counts) is a :class:`RuleState` value: every run returns its final state,
and ``train(..., state=...)`` continues bit for bit.

========================  ==============================================================
rule                      update (g = ∇f(q_n), d = g + k q_n with weight decay k)
========================  ==============================================================
SGD                       v ← βv + (1−τ)d (v = d at the first step); q ← q − η(v or d+βv)
RMSprop                   torch.optim.RMSprop (alpha, eps, weight_decay, momentum, centered)
Adam / AdamW              torch.optim.Adam / AdamW (betas, eps, amsgrad; AdamW decays q)
ScalarRMSProp             the paper's (Sec. 4): q_B ← q_B − η g_B/sqrt(G_B + ε),
                          G_B ← ρG_B + (1−ρ)|g_B|², one scalar G per block
MirrorDescent             ∇h(q_{n+1}) = ∇h(q_n) − η d for separable h (SPEC §1)
========================  ==============================================================
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field, fields

import numpy as np

from . import _validation as V
from ._bridge import RuleInputs, csr

__all__ = ["Rule", "SGD", "RMSprop", "Adam", "AdamW", "ScalarRMSProp", "MirrorDescent",
           "RuleState"]

# kinds, as in noether_core/_kernels/rules.pxd
_SGD, _RMSPROP, _ADAM, _SCALAR_RMSPROP, _MIRROR = range(5)


@dataclass(frozen=True, eq=False)
class RuleState:
    """The state of a learning rule between two steps (a first-class value).

    Attributes
    ----------
    rule : str
        Name of the rule class it belongs to.
    arrays : dict[str, ndarray]
        Per-coordinate buffers, each of length d (e.g. ``momentum_buffer``).
    scalars : dict[str, float]
        Scalar state (e.g. ``step`` for Adam, ``has_buffer`` for SGD, ``G`` values).
    step : int
        Steps taken since the state was created (global step index of the next step).
    rng_state : dict or None
        The bit generator's state after the run (``Generator.bit_generator.state``), so
        a resumed minibatch run draws exactly the rows an unbroken run would.
    last_delta : ndarray or None
        Δ_n = q_n − q_{n−1} of the last step taken (None before any step): the charges
        J_n = ⟨Δ_n, ξ(q_n)⟩ of a resumed run continue from it.
    last_residual : dict or None
        Relative balance-law residual of the last step, per tracked symmetry label.
    last_metric : dict or None
        Metric term (mirror descent) of the last step, per tracked symmetry label.

    Raises
    ------
    TypeError, ValueError
        When made, every field is checked, the message naming the field, the value and
        what is allowed: ``rule`` a str; ``arrays`` a dict of finite real 1-D arrays
        (bool, complex and object arrays refused; stored as float64); ``scalars`` a dict
        of finite real numbers (stored as float), ``"G"`` (ScalarRMSProp) a finite 1-D
        array; ``step`` an int ≥ 0 (not a bool); ``rng_state`` None or a state dict its
        named NumPy bit generator accepts; ``last_delta`` None or a finite real 1-D array;
        ``last_residual``/``last_metric`` None or dicts of finite real numbers.  The
        lengths, and which buffers and scalars a rule needs, depend on the potential: a
        run checks them when it resumes (``train(..., state=...)``), and checks every
        field again (the dicts can be edited after the state is made).
    """

    rule: str
    arrays: dict
    scalars: dict
    step: int = 0
    rng_state: dict | None = field(default=None, repr=False)
    last_delta: np.ndarray | None = field(default=None, repr=False)
    last_residual: dict | None = field(default=None, repr=False)
    last_metric: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        self._validate()

    @classmethod
    def _from_run(cls, rule, arrays, scalars, step, rng_state=None, last_delta=None,
                  last_residual=None, last_metric=None) -> RuleState:
        """A state as a run (or :meth:`copy`) produced it, not validated again: a run that
        diverged or overflowed a buffer returns its state as it is, and resuming from it
        is refused by ``Rule._check_state``, which validates every field."""
        st = object.__new__(cls)
        for name, v in (("rule", rule), ("arrays", arrays), ("scalars", scalars),
                        ("step", step), ("rng_state", rng_state), ("last_delta", last_delta),
                        ("last_residual", last_residual), ("last_metric", last_metric)):
            object.__setattr__(st, name, v)
        return st

    def _validate(self) -> None:
        """Check every field's type and values (not the lengths: those depend on the
        potential, ``Rule._check_state``); real arrays and numbers are stored as float64."""
        if not isinstance(self.rule, str):
            raise TypeError(f"RuleState.rule must be the rule's class name (a str), got "
                            f"{V._describe(self.rule)}")
        if not isinstance(self.arrays, dict):
            raise TypeError("RuleState.arrays must be a dict of name -> 1-D float array, "
                            f"got {V._describe(self.arrays)}")
        object.__setattr__(self, "arrays", {
            _key("arrays", k): _state_vector(f"arrays[{k!r}]", v)
            for k, v in self.arrays.items()})
        if not isinstance(self.scalars, dict):
            raise TypeError("RuleState.scalars must be a dict of name -> finite real "
                            f"number, got {V._describe(self.scalars)}")
        object.__setattr__(self, "scalars", {
            _key("scalars", k): (_state_vector("scalars['G']", v) if k == "G"
                                 else _state_real(f"scalars[{k!r}]", v))
            for k, v in self.scalars.items()})
        step = self.step
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"RuleState.step must be a non-negative int (steps taken), got "
                            f"{V._describe(step)}")
        if step < 0:
            raise ValueError(f"RuleState.step must be a non-negative int (steps taken), got "
                             f"{step}")
        object.__setattr__(self, "step", int(step))
        _check_rng_state(self.rng_state)
        if self.last_delta is not None:
            object.__setattr__(self, "last_delta",
                               _state_vector("last_delta", self.last_delta))
        for name in ("last_residual", "last_metric"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, dict):
                raise TypeError(f"RuleState.{name} must be None or a dict of symmetry label "
                                f"-> finite real number, got {V._describe(v)}")
            object.__setattr__(self, name, {_key(name, k): _state_real(f"{name}[{k!r}]", x)
                                            for k, x in v.items()})

    def copy(self) -> RuleState:
        return RuleState._from_run(
            self.rule, {k: v.copy() for k, v in self.arrays.items()},
            {k: (v.copy() if isinstance(v, np.ndarray) else v)
             for k, v in self.scalars.items()}, self.step,
            None if self.rng_state is None else _copy_rng_state(self.rng_state),
            None if self.last_delta is None else self.last_delta.copy(),
            None if self.last_residual is None else dict(self.last_residual),
            None if self.last_metric is None else dict(self.last_metric))

    def __eq__(self, other):
        if not isinstance(other, RuleState):
            return NotImplemented
        return (self.rule == other.rule and self.step == other.step
                and self.scalars.keys() == other.scalars.keys()
                and all(np.array_equal(self.scalars[k], other.scalars[k], equal_nan=True)
                        for k in self.scalars)
                and self.arrays.keys() == other.arrays.keys()
                and all(np.array_equal(self.arrays[k], other.arrays[k])
                        for k in self.arrays)
                and self.rng_state == other.rng_state
                and ((self.last_delta is None) == (other.last_delta is None))
                and (self.last_delta is None
                     or np.array_equal(self.last_delta, other.last_delta))
                and self.last_residual == other.last_residual
                and self.last_metric == other.last_metric)


def _key(field_name, k):
    if not isinstance(k, str):
        raise TypeError(f"RuleState.{field_name} keys must be names (str), got {k!r}")
    return k


def _state_vector(what, v):
    """A finite real 1-D array as float64 (bool, complex and object arrays refused)."""
    a = np.asarray(v) if not isinstance(v, np.ndarray) else v
    if a.dtype.kind not in "fiu" or a.ndim != 1:
        raise ValueError(f"RuleState.{what} must be a 1-D array of finite real numbers, got "
                         f"{_describe_array(a)}")
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"RuleState.{what} must hold finite values, got {a[bad]} at index "
                         f"{bad}")
    return a


def _state_real(what, v):
    """A finite real number as a float (bool and complex refused)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        raise TypeError(f"RuleState.{what} must be a finite real number, got "
                        f"{V._describe(v)}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"RuleState.{what} must be a finite real number, got {v!r}")
    return x


def _describe_array(a):
    return f"an array of dtype {a.dtype} and shape {a.shape}"


def _bit_generator_names():
    return sorted(n for n in dir(np.random) if isinstance(getattr(np.random, n), type)
                  and issubclass(getattr(np.random, n), np.random.BitGenerator)
                  and getattr(np.random, n) is not np.random.BitGenerator)


def _check_rng_state(st):
    """None, or a NumPy bit generator's ``.state`` dict that the generator accepts."""
    if st is None:
        return
    if not isinstance(st, dict) or "state" not in st:
        raise ValueError("RuleState.rng_state must be None or a NumPy bit generator's state "
                         "dict (Generator.bit_generator.state: keys 'bit_generator', "
                         f"'state', ...), got {V._describe(st)}")
    name = st.get("bit_generator")
    names = _bit_generator_names()
    if name not in names:
        raise ValueError(f"RuleState.rng_state['bit_generator'] must name a NumPy bit "
                         f"generator {names}, got {name!r}")
    bg = getattr(np.random, name)(0)
    try:
        bg.state = st
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"RuleState.rng_state is not a valid {name} state: "
                         f"{type(exc).__name__}: {exc}") from None


def _copy_rng_state(st):
    return {k: (_copy_rng_state(v) if isinstance(v, dict) else v) for k, v in st.items()}


class Rule:
    """Base class of learning rules (immutable; hyper-parameters validated on creation)."""

    kind: int
    vec_names: tuple = ()        # per-coordinate state buffers, in kernel order
    sca_names: tuple = ()        # scalar state, in kernel order

    def params(self) -> dict:
        """Hyper-parameters as a dict (the keywords of the constructor)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def param_names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    def replace(self, **changes) -> Rule:
        """A copy with some hyper-parameters changed (validated again)."""
        unknown = set(changes) - set(self.param_names())
        if unknown:
            raise TypeError(f"{type(self).__name__} has no parameter(s) {sorted(unknown)}; "
                            f"valid: {list(self.param_names())}")
        return type(self)(**{**self.params(), **changes})

    def kinetic_symmetric(self, symmetry, potential) -> bool:
        """Whether this rule's update respects ``symmetry`` (so its balance law is exact).

        True when the update is linear in the current gradient along the generator with a
        step the same on the symmetry's blocks (Euclidean kinetic energy): then the exact
        discrete balance law holds to round-off.  False: the residual of the law measures
        the rule's kinetic symmetry breaking (docs/balance_laws.md, Table 2).
        """
        return False

    # -- kernel inputs (the rule's own business; noether_core._bridge runs them) ----------
    def check_start(self, q0: np.ndarray) -> None:
        """Raise ValueError if the rule cannot start from ``q0`` (default: any finite q0)."""

    def kernel_inputs(self, potential, state: RuleState) -> RuleInputs:
        """This rule at ``state`` as the compiled loop reads it: kind, hyper-parameter row,
        state buffers (copied: the loop updates them in place) and the partition of q into
        parts with their own scalar state."""
        d = potential.dim
        vec = (np.stack([state.arrays[n] for n in self.vec_names]) if self.vec_names
               else np.zeros((0, d)))
        return RuleInputs(self.kind, self._hp(potential), vec,
                          self._pack_scalars(state, potential),
                          *_partition_csr(self, potential))

    def state_arrays(self, inputs: RuleInputs) -> dict:
        """The per-coordinate state buffers after a run, by name (``RuleState.arrays``)."""
        return {n: inputs.vec[i].copy() for i, n in enumerate(self.vec_names)}

    def _hp(self, potential) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def _grid_hp(cls, fixed: dict, axes: dict, potential=None) -> np.ndarray | None:
        """The kernel rows ``_hp`` of every point of a Cartesian grid (flat C order over
        ``axes``, the other parameters from ``fixed`` or the defaults), validated a column
        at a time: scan's fast path, which builds no rule object per point.  ``potential``
        is the grid's, for a row that depends on it (ScalarRMSProp's projected blocks);
        None where the caller has none (a form that needs it then answers None).

        None where the class has no column form, or where some point is invalid (scan
        then builds every point's rule, and the first invalid one raises its error naming
        the point).  A class that provides it promises three things, checked for the
        built-in ones by tests/test_scan.py: it accepts exactly the grids whose every point
        constructs; its rows are ``_hp``'s; its state starts at zeros and its
        ``kinetic_symmetric`` and ``check_start`` do not depend on the parameters that
        vary over the grid (scan asks the grid's first point's ``check_start`` only).  It
        answers for its own class only (None for subclasses, which may change any of this).
        """
        return None

    def _partition(self, potential) -> list:
        """Parts of q with their own scalar state (only ScalarRMSProp uses several)."""
        return [np.arange(potential.dim)]

    def init_state(self, potential) -> RuleState:
        """The state before the first step (torch's: zero buffers, step 0)."""
        d = potential.dim
        arrays = {name: np.zeros(d) for name in self.vec_names}
        scalars = {name: 0.0 for name in self.sca_names}
        # valid by construction: not validated again on every train call
        return RuleState._from_run(type(self).__name__, arrays, scalars, 0)

    def _check_state(self, state: RuleState, potential) -> None:
        """Refuse a state this rule cannot resume on ``potential``: every field valid
        (``RuleState._validate``: the dicts may have been edited since it was made), of
        this rule, with this rule's buffers and scalars and nothing else, each buffer and
        ``last_delta`` of length ``potential.dim``."""
        if not isinstance(state, RuleState):
            raise TypeError(f"state must be a RuleState, got {type(state).__name__}")
        state._validate()
        if state.rule != type(self).__name__:
            raise ValueError(f"state belongs to rule {state.rule}, not {type(self).__name__}")
        d = potential.dim
        for name in self.vec_names:
            a = state.arrays.get(name)
            if a is None or np.shape(a) != (d,):
                raise ValueError(f"state.arrays[{name!r}] must have shape ({d},), "
                                 f"got {'no such array' if a is None else np.shape(a)}")
        extra = sorted(set(state.arrays) - set(self.vec_names))
        if extra:
            raise ValueError(f"state.arrays has {extra}, which {type(self).__name__} does not "
                             f"keep (its buffers: {list(self.vec_names)})")
        needed = self._scalar_names()
        missing = [n for n in needed if n not in state.scalars]
        extra = sorted(set(state.scalars) - set(needed))
        if missing or extra:
            raise ValueError(f"state.scalars of {type(self).__name__} must hold exactly "
                             f"{list(needed)}; missing {missing}, not used {extra}")
        self._check_scalars(state, potential)
        if state.last_delta is not None and state.last_delta.shape != (d,):
            raise ValueError(f"state.last_delta must have shape ({d},) (the last step Δ of "
                             f"a run on this potential), got {state.last_delta.shape}")

    def _check_scalars(self, state: RuleState, potential) -> None:
        """The values of the scalars this rule reads (all present, validated types)."""
        for n in self.sca_names:
            v = state.scalars[n]
            if isinstance(v, np.ndarray):
                raise ValueError(f"state.scalars[{n!r}] must be a number, got an array")
            if n == "step" and (v < 0 or v != math.floor(v)):
                raise ValueError(f"state.scalars['step'] must be a whole number >= 0 (steps "
                                 f"taken), got {v}")
            if n in ("has_buffer", "initialised") and v not in (0.0, 1.0):
                raise ValueError(f"state.scalars[{n!r}] must be 0 or 1, got {v}")

    def _scalar_names(self) -> tuple:
        """The keys of ``RuleState.scalars`` this rule reads."""
        return self.sca_names

    def _pack_scalars(self, state: RuleState, potential) -> np.ndarray:
        return np.array([float(state.scalars[n]) for n in self.sca_names], dtype=np.float64)

    def _unpack_scalars(self, sca: np.ndarray, potential) -> dict:
        return {n: float(v) for n, v in zip(self.sca_names, sca, strict=True)}


def _partition_csr(rule, potential):
    """CSR of the rule's partition; the one-part default is cached on the potential."""
    if type(rule)._partition is not Rule._partition:
        return csr(rule._partition(potential))
    cached = potential.__dict__.get("_whole_csr_cache")
    if cached is None:
        cached = csr([np.arange(potential.dim)])
        potential._whole_csr_cache = cached
    return cached


#: axes up to this length are range-checked in Python (cheaper than two reductions)
_SHORT_AXIS = 512


class _Col:
    """A column converter of ``_column_rows``: ``col(v)`` is the converter
    ``__post_init__`` applies to one value (``V.as_scalar(name, v, lo=..., hi=...)``), and
    ``col.array(a)`` its vector form for a float64 axis: the column itself when every value
    passes that converter (the same float64 values: as_scalar returns ``float(v)``, which
    is ``v`` for a float64), None when one does not (the caller then refuses the grid, and
    the per-point path raises the constructor's error naming the point).  For finite
    float64 values ``lo <= v`` (``lo < v`` when open) and ``v <= hi`` (``v < hi``) are the
    same comparisons as_scalar makes, so the two forms accept the same values."""

    __slots__ = ("name", "lo", "hi", "lo_open", "hi_open")

    def __init__(self, name, lo=None, hi=None, lo_open=False, hi_open=False):
        self.name, self.lo, self.hi = name, lo, hi
        self.lo_open, self.hi_open = lo_open, hi_open

    def __call__(self, v):
        return V.as_scalar(self.name, v, lo=self.lo, hi=self.hi, lo_open=self.lo_open,
                           hi_open=self.hi_open)

    def array(self, a: np.ndarray) -> np.ndarray | None:
        if a.dtype != np.float64 or a.size == 0:
            return None                    # ints, bools: one value at a time
        # every value finite and in range <=> the smallest and the largest are (min and
        # max propagate NaN, and an infinity is the min or the max).  A short axis in
        # Python: a finite sum proves every value finite (a NaN or an infinity makes it
        # non-finite), and then the built-in min and max are the float minimum/maximum
        lst = a.tolist() if a.size <= _SHORT_AXIS else None
        if lst is not None and math.isfinite(sum(lst)):
            lo, hi = min(lst), max(lst)
        else:
            lo, hi = float(np.minimum.reduce(a)), float(np.maximum.reduce(a))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                return None
        if self.lo is not None and (lo <= self.lo if self.lo_open else lo < self.lo):
            return None
        if self.hi is not None and (hi >= self.hi if self.hi_open else hi > self.hi):
            return None
        return a


class _BoolCol:
    """``float(V.as_bool(name, v))`` as a column converter (see :class:`_Col`): a bool
    axis is its 0/1 column, any other dtype goes one value at a time (and is refused)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __call__(self, v):
        return float(V.as_bool(self.name, v))

    def array(self, a: np.ndarray) -> np.ndarray | None:
        return a.astype(np.float64) if a.dtype == np.bool_ else None


_LR = _Col("lr", lo=0.0, lo_open=True)


class _G0Col:
    """ScalarRMSProp's ``G0`` as a column converter (see :class:`_Col`): None is NaN in
    the kernel's row (the first step's |d_B|²), a number is checked as the constructor
    checks it (≥ 0); a float64 axis of such numbers is its own column."""

    __slots__ = ()
    _num = _Col("G0", lo=0.0)

    def __call__(self, v):
        return math.nan if v is None else self._num(v)

    def array(self, a: np.ndarray) -> np.ndarray | None:
        return self._num.array(a)


def _lr(v):
    return _LR(v)


def _unit(name, v):
    return V.as_scalar(name, v, lo=0.0, hi=1.0, hi_open=True)


def _unit_col(name):
    return _Col(name, lo=0.0, hi=1.0, hi_open=True)


def _nonneg_col(name):
    return _Col(name, lo=0.0)


def _column_rows(cls, fixed: dict, axes: dict, convert: dict) -> np.ndarray | None:
    """The ``_hp`` rows of a Cartesian grid, one column per parameter in ``convert``'s
    order (the order of ``_hp``), each axis value passed once through the converter
    ``__post_init__`` applies (so a value is accepted here exactly when the constructor
    accepts it; a converter with a vector form, :class:`_Col`, checks a float64 axis in
    a few array operations); the other parameters from ``fixed`` or the class defaults.
    None when a value is refused (scan's per-point path then raises the constructor's
    error, naming the point).  Flat C order over ``axes``.
    """
    names = list(axes)
    shape = tuple(len(axes[k]) for k in names)
    hp = np.empty(shape + (len(convert),), dtype=np.float64)
    try:
        # the fixed values first, as one row written to every point at once (the axis
        # columns' entries of the row are overwritten below)
        row = [0.0 if k in axes else c(fixed[k] if k in fixed else getattr(cls, k))
               for k, c in convert.items()]
        hp[...] = row
        for j, (k, c) in enumerate(convert.items()):
            if k in axes:
                a = axes[k]
                vals = None
                if isinstance(a, np.ndarray) and hasattr(c, "array"):
                    vals = c.array(a)
                if vals is None:
                    vals = np.array([c(v) for v in a.tolist()], dtype=np.float64)
                view = [1] * len(names)
                view[names.index(k)] = len(vals)
                hp[..., j] = vals.reshape(view)
    except (TypeError, ValueError):
        return None
    return hp.reshape(-1, len(convert))


#: the column converters of the built-in column forms, in the order of their ``_hp``
_SGD_COLUMNS = {"lr": _LR, "momentum": _unit_col("momentum"),
                "dampening": _Col("dampening", lo=0.0, hi=1.0),
                "nesterov": _BoolCol("nesterov"), "weight_decay": _nonneg_col("weight_decay")}
_RMSPROP_COLUMNS = {"lr": _LR, "alpha": _unit_col("alpha"), "eps": _nonneg_col("eps"),
                    "weight_decay": _nonneg_col("weight_decay"),
                    "momentum": _unit_col("momentum"), "centered": _BoolCol("centered")}
_SCALAR_RMSPROP_COLUMNS = {"lr": _LR, "rho": _unit_col("rho"), "eps": _nonneg_col("eps"),
                           "G0": _G0Col(), "weight_decay": _nonneg_col("weight_decay"),
                           "n_projected": float}
_ADAM_COLUMNS = {"lr": _LR, "beta1": _unit_col("betas[0]"), "beta2": _unit_col("betas[1]"),
                 "eps": _nonneg_col("eps"), "weight_decay": _nonneg_col("weight_decay"),
                 "amsgrad": _BoolCol("amsgrad"), "decoupled": float}

#: (rule class, d) -> the kernel inputs every point of a column-form grid shares
_TEMPLATES: dict = {}
#: ScalarRMSProp's: potential (held weakly; a potential's blocks and symmetries are
#: read-only) -> {per_block: the kernel inputs}
_SRMS_TEMPLATES = weakref.WeakKeyDictionary()


def _grid_template(cls, potential, make_rule, fixed=None) -> RuleInputs:
    """What every point of a column-form grid (``Rule._grid_hp``) packs besides its hp
    row, as one point's ``RuleInputs`` (its hp a row of zeros): the kind, the zero state
    (``vec`` (nvec, d), ``sca`` (nsca,)) and the partition of q (CSR).

    Cached per (class, d): a column-form class is one of the built-in classes themselves
    (never a subclass, ``Rule._grid_hp``), whose state starts at zeros of widths fixed by
    its ``vec_names``/``sca_names`` and whose partition is the whole of q, whatever the
    parameters — except ScalarRMSProp, whose partition and number of G's follow
    ``per_block`` (from ``fixed``, the grid's fixed parameters; its column form refuses
    a grid over it or a value other than a bool) and the potential's scale blocks: its
    templates are cached per potential object and ``per_block``.  ``make_rule()`` builds
    one valid rule of the grid, called on a miss only (the template is that rule's
    ``kernel_inputs`` at its initial state).  Callers copy nothing out of it: its arrays
    are read-only."""
    if cls is ScalarRMSProp:
        store = _SRMS_TEMPLATES.setdefault(potential, {})
        key = bool((fixed or {}).get("per_block", cls.per_block))
    else:
        store, key = _TEMPLATES, (cls, potential.dim)
    hit = store.get(key)
    if hit is None:
        rule = make_rule()
        first = rule.kernel_inputs(potential, rule.init_state(potential))
        hit = RuleInputs(first.kind, np.zeros_like(first.hp), first.vec, first.sca,
                         first.pptr.copy(), first.pidx.copy())
        for a in (hit.hp, hit.vec, hit.sca, hit.pptr, hit.pidx):
            a.flags.writeable = False
        store[key] = hit
    return hit


@dataclass(frozen=True)
class SGD(Rule):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    Exactly ``torch.optim.SGD`` (single-tensor path)::

        d = g + weight_decay * q
        v = d (first step) or momentum * v + (1 - dampening) * d
        q = q - lr * (d + momentum * v if nesterov else v)      (q - lr * d if momentum = 0)

    Parameters
    ----------
    lr : float > 0
        Learning rate η (the time step of the continuous models, t = nη).
    momentum : float in [0, 1)
        Heavy-ball β; mass m = η(1+β)/2 and friction μ = 1−β of Eq. 2.
    dampening : float in [0, 1]
    nesterov : bool
        Needs momentum > 0 and dampening = 0 (as torch).
    weight_decay : float ≥ 0
        L2 coefficient k (the spring constant of Eq. 2).
    """

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    kind = _SGD
    vec_names = ("momentum_buffer",)
    sca_names = ("has_buffer",)

    def __post_init__(self):
        object.__setattr__(self, "lr", _lr(self.lr))
        object.__setattr__(self, "momentum", _unit("momentum", self.momentum))
        object.__setattr__(self, "dampening",
                           V.as_scalar("dampening", self.dampening, lo=0.0, hi=1.0))
        object.__setattr__(self, "nesterov", V.as_bool("nesterov", self.nesterov))
        object.__setattr__(self, "weight_decay",
                           V.as_scalar("weight_decay", self.weight_decay, lo=0.0))
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")

    def _hp(self, potential):
        return np.array([self.lr, self.momentum, self.dampening, float(self.nesterov),
                         self.weight_decay])

    @classmethod
    def _grid_hp(cls, fixed, axes, potential=None):
        # SGD itself only: a subclass can change defaults (a plain class attribute),
        # validation (__init__ or __post_init__), rows, laws or state in ways no check of
        # a few methods would catch, so its grids take the per-point path
        if cls is not SGD:
            return None
        hp = _column_rows(cls, fixed, axes, _SGD_COLUMNS)
        # nesterov's column is constant (its first row) unless it is an axis
        if hp is None or (("nesterov" in axes or (len(hp) and hp[0, 3] != 0.0)) and np.any(
                (hp[:, 3] != 0.0) & ((hp[:, 1] <= 0.0) | (hp[:, 2] != 0.0)))):
            return None                     # nesterov without momentum or with dampening
        return hp

    def kinetic_symmetric(self, symmetry, potential) -> bool:
        return True

    def with_buffer(self, potential, momentum_buffer) -> RuleState:
        """A state whose momentum buffer is given (as if resumed mid-run).

        The previous step is taken to be the heavy-ball step of that buffer,
        Δ_0 = −lr·buffer (it sets the first recorded charge J_0 = ⟨Δ_0, ξ(q_0)⟩; the
        dynamics depend only on the buffer).
        """
        if not isinstance(getattr(potential, "dim", None), (int, np.integer)):
            raise TypeError("potential must be a noether_core.potentials.Potential, got "
                            f"{type(potential).__name__}")
        if self.momentum == 0.0:
            raise ValueError("with_buffer needs momentum > 0 (SGD without momentum keeps "
                             "no buffer)")
        buf = V.as_float_array("momentum_buffer", momentum_buffer, shape=(potential.dim,))
        st = self.init_state(potential)
        st.arrays["momentum_buffer"][:] = buf
        st.scalars["has_buffer"] = 1.0
        return RuleState(st.rule, st.arrays, st.scalars, 0, None, -self.lr * buf, None)


@dataclass(frozen=True)
class RMSprop(Rule):
    """``torch.optim.RMSprop``: square_avg ← α·square_avg + (1−α)d², q ← q − lr·d/(√· + eps).

    Parameters as torch: lr (1e-2), alpha (0.99, in [0, 1)), eps (1e-8, ≥ 0),
    weight_decay (0), momentum (0, in [0, 1)), centered (False).
    """

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    kind = _RMSPROP
    vec_names = ("square_avg", "momentum_buffer", "grad_avg")
    sca_names = ("step",)

    def __post_init__(self):
        object.__setattr__(self, "lr", _lr(self.lr))
        object.__setattr__(self, "alpha", _unit("alpha", self.alpha))
        object.__setattr__(self, "eps", V.as_scalar("eps", self.eps, lo=0.0))
        object.__setattr__(self, "weight_decay",
                           V.as_scalar("weight_decay", self.weight_decay, lo=0.0))
        object.__setattr__(self, "momentum", _unit("momentum", self.momentum))
        object.__setattr__(self, "centered", V.as_bool("centered", self.centered))

    def _hp(self, potential):
        return np.array([self.lr, self.alpha, self.eps, self.weight_decay, self.momentum,
                         float(self.centered)])

    @classmethod
    def _grid_hp(cls, fixed, axes, potential=None):
        # RMSprop itself only (see SGD._grid_hp); its state starts at zeros, and it is
        # kinetically symmetric for no parameter value
        if cls is not RMSprop:
            return None
        return _column_rows(cls, fixed, axes, _RMSPROP_COLUMNS)


@dataclass(frozen=True)
class Adam(Rule):
    """``torch.optim.Adam`` (coupled L2 weight decay; ``amsgrad`` supported).

    Parameters as torch: lr (1e-3), betas ((0.9, 0.999), each in [0, 1)), eps (1e-8),
    weight_decay (0), amsgrad (False).
    """

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    kind = _ADAM
    vec_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    sca_names = ("step",)
    _decoupled = False

    def __post_init__(self):
        object.__setattr__(self, "lr", _lr(self.lr))
        b = self.betas
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {b!r}")
        object.__setattr__(self, "betas", (_unit("betas[0]", b[0]), _unit("betas[1]", b[1])))
        object.__setattr__(self, "eps", V.as_scalar("eps", self.eps, lo=0.0))
        object.__setattr__(self, "weight_decay",
                           V.as_scalar("weight_decay", self.weight_decay, lo=0.0))
        object.__setattr__(self, "amsgrad", V.as_bool("amsgrad", self.amsgrad))

    def _hp(self, potential):
        return np.array([self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                         float(self.amsgrad), float(self._decoupled)])

    @classmethod
    def _grid_hp(cls, fixed, axes, potential=None):
        # Adam and AdamW themselves only (see SGD._grid_hp); a grid over the pair
        # ``betas`` takes the per-point path
        if cls not in (Adam, AdamW) or "betas" in axes:
            return None
        betas = fixed.get("betas", cls.betas)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            return None
        fixed = {**fixed, "beta1": betas[0], "beta2": betas[1], "decoupled": cls._decoupled}
        return _column_rows(cls, fixed, axes, _ADAM_COLUMNS)


@dataclass(frozen=True)
class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled decay q ← q(1 − lr·weight_decay).

    Defaults as torch: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    """

    weight_decay: float = 1e-2
    _decoupled = True


@dataclass(frozen=True)
class ScalarRMSProp(Rule):
    """The paper's "norm" RMSProp (Sec. 4, Eq. 18–20), one scalar G per block::

        q_B ← q_B − lr · d_B / sqrt(G_B + eps)
        G_B ← rho · G_B + (1 − rho) · |d_B|²          (d = g + weight_decay · q)

    The update keeps the gradient's direction within each block, so it keeps every
    symmetry plain SGD keeps (docs/balance_laws.md).

    Parameters
    ----------
    lr : float > 0
    rho : float in [0, 1)
    eps : float ≥ 0
    G0 : float ≥ 0 or None
        Initial G of every block; None uses the first step's |d_B|².
    per_block : bool
        True: one G per block carrying a scale symmetry, plus one for the remaining
        coordinates; False: one G for all of q.
    weight_decay : float ≥ 0
    project : bool
        Hold every scale block at unit norm: after its step each scale block is divided
        by its norm (``q_B ← q_B/|q_B|``; the other coordinates are not touched).  This
        is the paper's RMSProp on normalised weight rows (Sec. 4), the rule that
        ``theory.equivalent_rmsprop`` parametrises.  Needs ``per_block=True``; q0 is
        used as given (normalise its scale blocks for a run on the sphere from step 0).
        The projection is not linear in g, so the scale balance laws are not exact under
        it (``kinetic_symmetric`` is False for symmetries on projected blocks).
    """

    lr: float = 1e-2
    rho: float = 0.99
    eps: float = 1e-8
    G0: float | None = None
    per_block: bool = True
    weight_decay: float = 0.0
    project: bool = False

    kind = _SCALAR_RMSPROP
    sca_names = ("initialised",)

    def __post_init__(self):
        object.__setattr__(self, "lr", _lr(self.lr))
        object.__setattr__(self, "rho", _unit("rho", self.rho))
        object.__setattr__(self, "eps", V.as_scalar("eps", self.eps, lo=0.0))
        if self.G0 is not None:
            object.__setattr__(self, "G0", V.as_scalar("G0", self.G0, lo=0.0))
        object.__setattr__(self, "per_block", V.as_bool("per_block", self.per_block))
        object.__setattr__(self, "weight_decay",
                           V.as_scalar("weight_decay", self.weight_decay, lo=0.0))
        if self.G0 == 0.0 and self.eps == 0.0:
            raise ValueError("G0 = 0 with eps = 0 divides by zero at the first step")
        object.__setattr__(self, "project", V.as_bool("project", self.project))
        if self.project and not self.per_block:
            raise ValueError("project=True needs per_block=True (one G and one unit norm "
                             "per scale block), got per_block=False")

    def _n_projected(self, potential):
        """Number of leading parts renormalised after each step (the scale blocks)."""
        if not self.project:
            return 0
        return sum(1 for n in self.part_names(potential) if n != "rest")

    def _hp(self, potential):
        return np.array([self.lr, self.rho, self.eps,
                         math.nan if self.G0 is None else self.G0, self.weight_decay,
                         float(self._n_projected(potential))])

    @classmethod
    def _grid_hp(cls, fixed, axes, potential=None):
        # ScalarRMSProp itself only (see SGD._grid_hp), over lr, rho, eps, G0 and weight
        # decay: per_block and project decide the partition, the number of G's, the
        # projected blocks and the kinetic symmetry, so a grid over either takes the
        # per-point path (which then refuses a grid that changes the partition)
        if cls is not ScalarRMSProp or "per_block" in axes or "project" in axes:
            return None
        try:
            per_block = V.as_bool("per_block", fixed.get("per_block", cls.per_block))
            project = V.as_bool("project", fixed.get("project", cls.project))
        except TypeError:
            return None
        if project and not per_block:
            return None
        if project:
            if potential is None:
                return None                 # the projected blocks are the potential's
            n_proj = float(sum(1 for n in cls(per_block=True, project=True).part_names(
                potential) if n != "rest"))
        else:
            n_proj = 0.0
        hp = _column_rows(cls, {**fixed, "n_projected": n_proj}, axes,
                          _SCALAR_RMSPROP_COLUMNS)
        # G0 = 0 with eps = 0 is the constructor's error; both columns are constant (their
        # first row) unless an axis
        if hp is not None and len(hp) and (
                (hp[0, 3] == 0.0 and hp[0, 2] == 0.0) if "eps" not in axes and "G0" not in axes
                else np.any((hp[:, 3] == 0.0) & (hp[:, 2] == 0.0))):
            return None
        return hp

    def kinetic_symmetric(self, symmetry, potential) -> bool:
        """Exact when all blocks of the symmetry share one G (one step size) and none of
        them is renormalised (``project=True``)."""
        if self.project:
            proj = set(n for n in self.part_names(potential) if n != "rest")
            for b in symmetry.blocks:
                if b in proj or any(np.isin(potential.blocks[b],
                                            potential.blocks[n]).any() for n in proj):
                    return False
        parts = self._partition(potential)
        owner = np.empty(potential.dim, dtype=np.intp)
        for k, idx in enumerate(parts):
            owner[idx] = k
        idx = np.concatenate([potential.blocks[b] for b in symmetry.blocks])
        return bool(np.all(owner[idx] == owner[idx[0]]))

    def part_names(self, potential) -> list:
        """Names of the parts that carry their own G (state.scalars['G'] order)."""
        if not self.per_block:
            return ["q"]
        names = []
        for s in potential.symmetries:
            if s.family == "scale" and s.blocks[0] not in names:
                names.append(s.blocks[0])
        used = np.zeros(potential.dim, bool)
        for n in names:
            used[potential.blocks[n]] = True
        if not used.all():
            names.append("rest")
        return names

    def _partition(self, potential):
        if not self.per_block:
            return [np.arange(potential.dim)]
        names = self.part_names(potential)
        parts, used = [], np.zeros(potential.dim, bool)
        for n in names:
            if n == "rest":
                parts.append(np.flatnonzero(~used))
            else:
                idx = potential.blocks[n]
                if used[idx].any():
                    raise ValueError(f"scale blocks of {potential!r} overlap at block {n!r}")
                used[idx] = True
                parts.append(idx)
        return parts

    def init_state(self, potential):
        names = self.part_names(potential)
        return RuleState._from_run("ScalarRMSProp", {}, {"initialised": 0.0,
                                                         "G": np.zeros(len(names))}, 0)

    def _check_scalars(self, state, potential):
        super()._check_scalars(state, potential)
        n = len(self.part_names(potential))
        G = state.scalars["G"]
        if (not isinstance(G, np.ndarray) or G.shape != (n,) or not np.all(np.isfinite(G))
                or np.any(G < 0)):
            raise ValueError(f"state.scalars['G'] must hold {n} finite values >= 0 (one per "
                             f"part {self.part_names(potential)}), got {G!r}")

    def _scalar_names(self):
        return self.sca_names + ("G",)

    def _pack_scalars(self, state, potential):
        return np.concatenate([[float(state.scalars["initialised"])],
                               np.asarray(state.scalars["G"], dtype=float)])

    def _unpack_scalars(self, sca, potential):
        return {"initialised": float(sca[0]), "G": sca[1:].copy()}


_MAPS = ("euclidean", "diagonal", "pnorm", "entropy")
#: MirrorDescent's column form: lr, weight_decay, the map's index (fixed over the grid,
#: passed as its float), p (set per map by ``_grid_hp``)
_MIRROR_COLUMNS = {"lr": _LR, "weight_decay": _nonneg_col("weight_decay"), "mirror": float,
                   "p": None}


def _NO_P(v):
    """p of a map other than pnorm: None (any other value is refused before), row 1.0."""
    return 1.0


@dataclass(frozen=True)
class MirrorDescent(Rule):
    """Mirror descent ∇h(q_{n+1}) = ∇h(q_n) − lr·(g + weight_decay·q) (SPEC §1).

    Parameters
    ----------
    lr : float > 0
    mirror : {"euclidean", "diagonal", "pnorm", "entropy"}
        h(x) = ½|x|²;  ½ xᵀ diag(D) x;  (1/p) Σ|xᵢ|^p;  Σ xᵢ log xᵢ (needs q > 0).
    D : (d,) array_like of positive numbers, for ``mirror="diagonal"``
    p : float > 1, for ``mirror="pnorm"``
    weight_decay : float ≥ 0
    """

    lr: float = 1e-2
    mirror: str = "euclidean"
    D: tuple | None = None
    p: float | None = None
    weight_decay: float = 0.0

    kind = _MIRROR
    vec_names = ()

    def __post_init__(self):
        object.__setattr__(self, "lr", _lr(self.lr))
        if self.mirror not in _MAPS:
            raise ValueError(f"mirror must be one of {_MAPS}, got {self.mirror!r}")
        if self.mirror == "diagonal":
            if self.D is None:
                raise ValueError("mirror='diagonal' needs D (the positive diagonal of h)")
            D = V.as_float_array("D", self.D, ndim=1)
            if np.any(D <= 0):
                raise ValueError("D must be positive")
            object.__setattr__(self, "D", tuple(float(x) for x in D))
        elif self.D is not None:
            raise ValueError(f"D is only used with mirror='diagonal', not {self.mirror!r}")
        if self.mirror == "pnorm":
            if self.p is None:
                raise ValueError("mirror='pnorm' needs p > 1")
            object.__setattr__(self, "p", V.as_scalar("p", self.p, lo=1.0, lo_open=True))
        elif self.p is not None:
            raise ValueError(f"p is only used with mirror='pnorm', not {self.mirror!r}")
        object.__setattr__(self, "weight_decay",
                           V.as_scalar("weight_decay", self.weight_decay, lo=0.0))

    def _hp(self, potential):
        if self.mirror == "diagonal" and len(self.D) != potential.dim:
            raise ValueError(f"D has length {len(self.D)}, the potential has dim "
                             f"{potential.dim}")
        return np.array([self.lr, self.weight_decay, float(_MAPS.index(self.mirror)),
                         1.0 if self.p is None else self.p])

    def kinetic_symmetric(self, symmetry, potential) -> bool:
        """Always: mirror descent is the massless (Eq. 12) case, its dual-variable law
        ⟨∇h(q_{n+1}) − ∇h(q_n), ξ⟩ = −ηk⟨q_n, ξ⟩ is exact for every h (docs §4); the
        non-Euclidean breaking is reported separately as the metric term."""
        return True

    @classmethod
    def _grid_hp(cls, fixed, axes, potential=None):
        # MirrorDescent itself only (see SGD._grid_hp), with one map for the whole grid:
        # the map decides which of D and p are allowed (a grid over it takes the per-point
        # path), and the diagonal map's D is a kernel input per point, not a column
        if cls is not MirrorDescent or "mirror" in axes or "D" in axes:
            return None
        mirror = fixed.get("mirror", cls.mirror)
        if (not isinstance(mirror, str) or mirror not in _MAPS or mirror == "diagonal"
                or fixed.get("D") is not None):
            return None
        p = fixed.get("p")
        if mirror == "pnorm":
            if "p" not in axes and p is None:
                return None
            p_col = _Col("p", lo=1.0, lo_open=True)
        else:
            if "p" in axes or p is not None:
                return None
            p_col = _NO_P
        fixed = {**fixed, "mirror": float(_MAPS.index(mirror)), "p": p}
        return _column_rows(cls, fixed, axes, {**_MIRROR_COLUMNS, "p": p_col})

    def check_start(self, q0):
        if self.mirror == "entropy" and np.any(np.asarray(q0) <= 0):
            raise ValueError("q0 must be positive for MirrorDescent(mirror='entropy')")

    def kernel_inputs(self, potential, state):
        """Mirror descent keeps no buffers; its kernel rows carry the diagonal D of h
        (``mirror="diagonal"``) instead."""
        vec = (np.array([self.D], dtype=np.float64) if self.mirror == "diagonal"
               else np.zeros((0, potential.dim)))
        return RuleInputs(self.kind, self._hp(potential), vec,
                          self._pack_scalars(state, potential),
                          *_partition_csr(self, potential))

    def state_arrays(self, inputs):
        return {}
