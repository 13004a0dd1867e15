"""``ScanResult``: the per-point summaries of a :func:`noether_core.scan` grid."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _status
from .rules import Rule

__all__ = ["ScanResult", "point_seed"]

#: CF ``long_name`` of every data variable and non-axis coordinate of ScanResult.to_xarray
_CF_VARIABLES = {
    "q": "final parameters q",
    "loss": "final loss f(q) on the full data set",
    "loss_min": "smallest loss evaluated during the run",
    "norm2": "squared norm |q_B|^2 of the final parameters of each block",
    "angular_update": "root mean square chord |q_hat(n+1) - q_hat(n)| per step of the "
                      "normalised block over the late window",
    "diverged": "whether a non-finite value stopped the point",
    "stop_step": "step at which a non-finite value stopped the point (-1: finished)",
    "status": "why the point stopped",
    "balance_residual": "worst relative residual of the exact discrete balance laws",
    "charge_worst": "worst relative residual of the discrete balance law of each symmetry",
    "series_q": "parameters q at the recorded step",
    "series_loss": "loss at the recorded step (minibatch of that step; full data at the "
                   "last row)",
    "series_grad_norm2": "squared gradient norm |grad f(q)|^2 at the recorded step",
    "series_norm2": "squared norm |q_B|^2 of each block at the recorded step",
    "block": "parameter block",
    "coord": "index of the parameter coordinate",
    "symmetry": "tracked symmetry (family:block)",
    "step": "training step n of the recorded row",
}

#: CF ``long_name`` of the usual hyper-parameter axes (others: "hyper-parameter <name>")
_HYPER_LONG_NAMES = {
    "lr": "learning rate eta",
    "momentum": "heavy-ball momentum beta",
    "weight_decay": "weight decay (L2 coefficient k)",
    "dampening": "momentum dampening",
    "alpha": "smoothing constant alpha of the squared-gradient average",
    "rho": "smoothing constant rho of the squared-gradient average",
    "eps": "denominator offset eps",
    "seed": "minibatch seed",
}


def _flag_meaning(code: int) -> str:
    """A status code's reason as one CF flag-meaning word ("non-finite_loss")."""
    reason = _status.REASON[code]
    return "finished" if reason is None else reason.replace(" ", "_")


def point_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of grid point ``index`` (flat, C order over the grid axes) under
    scan seed ``seed``.

    Parameters
    ----------
    seed : int ≥ 0
        The scan's seed (one entry of ``scan(..., seeds=...)``).
    index : int ≥ 0
        Flat C-order index of the point over the grid axes.

    Returns
    -------
    numpy.random.SeedSequence
        ``SeedSequence(seed, spawn_key=(index,))``, the same entropy as
        ``SeedSequence(seed).spawn(n_points)[index]``.

    Notes
    -----
    The minibatch stream of the point is NumPy's PCG64 bit generator seeded by this
    sequence: ``numpy.random.default_rng(point_seed(seed, index))``, which is
    ``Generator(PCG64(point_seed(seed, index)))``.  ``train(rule_at_that_point, ...,
    seed=point_seed(seed, index))`` reproduces the scan's point bit for bit, minibatches
    included.

    That is the stream of ``scan(..., batch_streams="point")`` (the default).  Under
    ``batch_streams="seed"`` every point of scan seed ``seed`` draws from
    ``numpy.random.default_rng(seed)`` instead (the same batches at every grid point);
    :meth:`ScanResult.seed_at` returns the right sequence for either mode
    (:func:`task_seed`).

    Examples
    --------
    >>> import numpy as np
    >>> ss = point_seed(7, 3)
    >>> ss.spawn_key
    (3,)
    >>> child = np.random.SeedSequence(7).spawn(4)[3]
    >>> bool(np.all(ss.generate_state(4) == child.generate_state(4)))
    True
    >>> type(np.random.default_rng(ss).bit_generator).__name__
    'PCG64'
    """
    return np.random.SeedSequence(seed, spawn_key=(index,))


#: the values of ``scan(..., batch_streams=...)``
BATCH_STREAMS = ("point", "seed")


def task_seed(seed: int, index: int, batch_streams: str = "point") -> np.random.SeedSequence:
    """The seed sequence whose PCG64 stream grid point ``index`` under scan seed ``seed``
    draws its minibatches from: :func:`point_seed` ``(seed, index)`` under
    ``batch_streams="point"``, ``SeedSequence(seed)`` (the stream of
    ``numpy.random.default_rng(seed)``, whatever the point) under ``"seed"``.

    >>> import numpy as np
    >>> task_seed(7, 3, "seed").spawn_key
    ()
    >>> a = np.random.default_rng(task_seed(7, 3, "seed")).random(3)
    >>> bool(np.array_equal(a, np.random.default_rng(7).random(3)))
    True
    >>> task_seed(7, 3).spawn_key
    (3,)
    """
    if batch_streams == "seed":
        return np.random.SeedSequence(seed)
    if batch_streams == "point":
        return point_seed(seed, index)
    raise ValueError(f"batch_streams must be one of {BATCH_STREAMS}, got {batch_streams!r}")


@dataclass(eq=False)
class ScanResult:
    """Per-point summaries of a scan, as NumPy arrays shaped ``shape`` = the grid axes in
    the order given, then ``seed`` when ``seeds`` was a sequence.

    Attributes
    ----------
    axes : dict[str, ndarray]
        The grid axes (name → values), in array-axis order; ``seed`` last if present.
    fixed : dict
        Hyper-parameters given as single values.
    q : (*shape, d) array
        Final parameters q_steps (for a diverged point: where it stopped, possibly
        non-finite).
    loss : (*shape,) array
        Final loss f(q_steps) on the full data set; NaN for diverged points.
    loss_min : (*shape,) array
        Smallest loss the loop evaluated (each step's minibatch loss, and the final
        full-data loss); for a diverged point, over the steps before it stopped.
    norm2 : (*shape, nb) array
        |q_B|² of the final q for each block in ``blocks``.
    angular_update : (*shape, nb) array
        Root mean square of the chord |q̂_B,n+1 − q̂_B,n| (dimensionless; ≈ the angle in
        radians for small angles) over the transitions into the last ``ceil(steps/10)``
        states: the late-time angular update of Sec. 4, whose steady value for SGD with
        momentum is sqrt(2ηk/(1+β)); the quantity ``theory.angular_updates``, the demo
        and the torch monitor summarise the same way.  NaN for diverged points.
    diverged : (*shape,) bool array
    stop_step : (*shape,) int array
        Step at which a non-finite value stopped the point (-1: finished).
    status : (*shape,) int array
        Why each point stopped: 0 finished, else the code of a non-finite loss, gradient
        or parameters after the update, or of an interruption.  :meth:`stop_reason` names
        a point's code; ``to_xarray()["status"]`` lists every code in its CF
        ``flag_values`` / ``flag_meanings``.
    series : dict or None
        With ``record_every``: ``steps`` (R,), ``q`` (*shape, R, d), ``loss`` (*shape, R),
        ``grad_norm2`` (*shape, R), ``norm2`` (*shape, R, nb) and ``n_rows`` (*shape,):
        the rows ``train(..., record_every=...)`` records (rows past a divergence are NaN).
    balance_residual : (*shape,) array or None
        Worst relative residual, over every step and every tracked symmetry whose law is
        exact for that point's rule (noether_core.charges), of the exact discrete balance
        law — round-off (~1e-16) where theory says so; 0.0 at a point where none of the
        tracked laws is exact for its rule.  None when no symmetry is tracked:
        ``charges=False``, or none of the potential's declared symmetries could be
        tracked (``untracked`` says why).
    charge_worst, charge_worst_step : dict[str, (*shape,) array]
        Per tracked symmetry ("family:block"): worst relative residual and the step where
        it occurred (-1: none) — equal to ``train(...).charge(...).worst`` of that point.
    charge_exact : dict[str, (*shape,) bool array]
        Whether that symmetry's law is exact for the point's rule (else the residual is a
        measured breaking: kinetic, potential, or an undeclared symmetry).
    untracked : list of (label, reason)
    batch_streams : str
        Whose minibatch stream each point drew from: ``"point"`` (its own,
        :func:`point_seed`) or ``"seed"`` (one per scan seed, shared by its points); see
        :meth:`seed_at`.
    batch_form : str
        How a minibatch step read its batch: ``"rows"`` (row by row, bitwise ``train``) or
        ``"moments"`` (through the batch's centred moments, equal to ``train`` to
        round-off; docs/scan.md §"Batch moments").
    kernel : str
        Which compiled loop ran: ``"lanes[<isa>]"`` (NC_NL points per SIMD block, e.g.
        ``"lanes[avx512f]"``) or ``"scalar"`` (one point at a time); both give the same
        bits (docs/scan.md).
    """

    rule_cls: type
    axes: dict
    fixed: dict
    seeds: tuple
    grid_shape: tuple
    blocks: tuple
    steps: int
    record_every: int | None
    batch_size: int | None
    q: np.ndarray
    loss: np.ndarray
    loss_min: np.ndarray
    norm2: np.ndarray
    angular_update: np.ndarray
    status: np.ndarray
    stop_step: np.ndarray
    series: dict | None = None
    elapsed: float = field(default=0.0, repr=False)
    balance_residual: np.ndarray | None = None
    charge_worst: dict = field(default_factory=dict)
    charge_worst_step: dict = field(default_factory=dict)
    charge_exact: dict = field(default_factory=dict)
    untracked: list = field(default_factory=list)
    kernel: str = ""
    batch_streams: str = "point"
    batch_form: str = "rows"

    @property
    def shape(self) -> tuple:
        """Lengths of the axes, in order (the shape of ``loss``)."""
        return tuple(len(v) for v in self.axes.values())

    @property
    def diverged(self) -> np.ndarray:
        """Whether a non-finite value stopped each point (status neither OK nor
        interrupted)."""
        return (self.status != _status.OK) & (self.status != _status.INTERRUPTED)

    def stop_reason(self, *index) -> str | None:
        """Why the point at ``index`` stopped (None if it finished)."""
        return _status.reason(self.status[index])

    def block(self, name: str) -> int:
        """Position of a block in the last axis of ``norm2`` / ``angular_update``."""
        try:
            return self.blocks.index(name)
        except ValueError:
            raise KeyError(f"no block {name!r}; blocks: {list(self.blocks)}") from None

    def params(self, *index) -> dict:
        """The rule's hyper-parameters at ``index`` (one int per axis of this result)."""
        if len(index) != len(self.axes):
            raise IndexError(f"give one index per axis {list(self.axes)}, got {index}")
        out = {k: v for k, v in self.fixed.items() if k != "seed"}
        for (name, vals), i in zip(self.axes.items(), index, strict=True):
            if name != "seed":
                out[name] = vals[i].item()
        return out

    def rule_at(self, *index) -> Rule:
        """The rule of the point at ``index``: ``rule_cls(**params(*index))``."""
        return self.rule_cls(**self.params(*index))

    def seed_at(self, *index) -> np.random.SeedSequence:
        """The minibatch stream of the point at ``index`` (``train(..., seed=this)``
        reproduces the point): ``point_seed(s, flat index)`` under
        ``batch_streams="point"``, ``SeedSequence(s)`` under ``"seed"`` (s: the point's
        scan seed).  Under ``"point"`` only for a result not narrowed by ``sel`` over grid
        axes (the flat index needs the full grid)."""
        if len(index) != len(self.axes):
            raise IndexError(f"give one index per axis {list(self.axes)}, got {index}")
        names = list(self.axes)
        seed = (self.axes["seed"][index[names.index("seed")]] if "seed" in self.axes
                else self.fixed["seed"])
        if self.batch_streams == "seed":
            return task_seed(int(seed), 0, "seed")
        grid_idx = tuple(i for n, i in zip(names, index, strict=True) if n != "seed")
        if len(grid_idx) != len(self.grid_shape):
            raise ValueError("seed_at needs the full grid (this result was narrowed by sel)")
        flat = int(np.ravel_multi_index(grid_idx, self.grid_shape)) if grid_idx else 0
        return task_seed(int(seed), flat, self.batch_streams)

    # -- selection ------------------------------------------------------------------------
    def sel(self, **coords) -> ScanResult:
        """Select by value along named axes (exact up to 1e-12 relative); a selected axis
        is dropped, as in xarray."""
        unknown = set(coords) - set(self.axes)
        if unknown:
            raise KeyError(f"no axis {sorted(unknown)}; axes: {list(self.axes)}")
        index, axes = [], {}
        for name, vals in self.axes.items():
            if name not in coords:
                index.append(slice(None))
                axes[name] = vals
                continue
            want = coords[name]
            hit = np.flatnonzero(np.isclose(vals.astype(float), float(want),
                                            rtol=1e-12, atol=0.0))
            if hit.size == 0:
                raise KeyError(f"{name}={want!r} is not on the grid; values: {vals.tolist()}")
            index.append(int(hit[0]))
        index = tuple(index)
        fixed = dict(self.fixed)
        fixed.update({k: v for k, v in coords.items()})

        def take(a):
            return a[index]

        series = None
        if self.series is not None:
            series = {k: (v if k == "steps" else take(v)) for k, v in self.series.items()}
        return ScanResult(self.rule_cls, axes, fixed, self.seeds, self.grid_shape,
                          self.blocks, self.steps,
                          self.record_every, self.batch_size, take(self.q), take(self.loss),
                          take(self.loss_min), take(self.norm2), take(self.angular_update),
                          take(self.status), take(self.stop_step), series, self.elapsed,
                          None if self.balance_residual is None
                          else take(self.balance_residual),
                          {k: take(v) for k, v in self.charge_worst.items()},
                          {k: take(v) for k, v in self.charge_worst_step.items()},
                          {k: take(v) for k, v in self.charge_exact.items()},
                          list(self.untracked), self.kernel, self.batch_streams,
                          self.batch_form)

    # -- xarray and pandas -----------------------------------------------------------------
    def _cf_attrs(self, name: str) -> dict:
        """CF-style ``units`` and ``long_name`` of a variable or coordinate of
        :meth:`to_xarray` (and ``flag_values``/``flag_meanings`` for ``status``)."""
        if name in _CF_VARIABLES:
            long_name = _CF_VARIABLES[name]
        elif name in self.axes:
            long_name = _HYPER_LONG_NAMES.get(
                name, f"hyper-parameter {name} of {self.rule_cls.__name__}")
        else:
            long_name = name
        attrs = {"units": "1", "long_name": long_name}
        if name == "status":
            codes = sorted(_status.REASON)
            attrs["flag_values"] = np.array(codes, dtype=self.status.dtype)
            attrs["flag_meanings"] = " ".join(_flag_meaning(c) for c in codes)
        return attrs

    def to_xarray(self):
        """A labelled ``xarray.Dataset`` with CF-style attributes.

        Returns
        -------
        xarray.Dataset
            Data variables ``q`` (axes, ``coord``), ``loss``, ``loss_min``, ``diverged``,
            ``stop_step``, ``status`` (axes), ``norm2`` and ``angular_update`` (axes,
            ``block``); with charges ``balance_residual`` and ``charge_worst`` (axes,
            ``symmetry``); with ``record_every`` ``series_q``, ``series_loss``,
            ``series_grad_norm2``, ``series_norm2`` over ``step``.  Coordinates: the axes'
            values, ``block`` names, ``coord`` (0..d−1), ``symmetry`` labels and ``step``.

        Notes
        -----
        Every data variable and coordinate carries CF-style ``units`` and ``long_name``
        attributes.  The library's quantities are dimensionless, so ``units`` is "1"
        throughout (``norm2`` is |q_B|², in the units of q squared; ``angular_update`` is a
        chord between unit vectors); ``status`` also carries ``flag_values`` and
        ``flag_meanings``.  Dataset attributes: ``Conventions = "CF-1.10"``, ``rule``,
        ``steps``, ``batch_size`` (-1: full batch), ``batch_streams``,
        ``batch_form`` and ``fixed_<name>`` per fixed hyper-parameter.

        Examples
        --------
        >>> import numpy as np, noether_core as nc
        >>> pot = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
        >>> ds = nc.scan(nc.rules.SGD, pot, [1.0, 1.0, 1.0], steps=50,
        ...              lr=[0.01, 0.1], momentum=0.9, seeds=0, progress=False).to_xarray()
        >>> ds["loss"].dims
        ('lr',)
        >>> ds["angular_update"].attrs["units"], ds["lr"].attrs["long_name"]
        ('1', 'learning rate eta')
        >>> ds["status"].attrs["flag_meanings"].split()[:2]
        ['finished', 'non-finite_loss']
        >>> ds.attrs["Conventions"]
        'CF-1.10'
        """
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("ScanResult.to_xarray needs xarray: pip install xarray "
                              "(or pip install 'noether_core[scan]')") from None
        dims = list(self.axes)
        coords = {k: np.asarray(v) for k, v in self.axes.items()}
        coords["block"] = list(self.blocks)
        coords["coord"] = np.arange(self.q.shape[-1])
        data = {
            "q": (dims + ["coord"], self.q),
            "loss": (dims, self.loss),
            "loss_min": (dims, self.loss_min),
            "norm2": (dims + ["block"], self.norm2),
            "angular_update": (dims + ["block"], self.angular_update),
            "diverged": (dims, self.diverged),
            "stop_step": (dims, self.stop_step),
            "status": (dims, self.status),
        }
        if self.balance_residual is not None:
            data["balance_residual"] = (dims, self.balance_residual)
            coords["symmetry"] = list(self.charge_worst)
            data["charge_worst"] = (dims + ["symmetry"],
                                    np.stack(list(self.charge_worst.values()), axis=-1))
        if self.series is not None:
            coords["step"] = self.series["steps"]
            s = self.series
            data.update({
                "series_q": (dims + ["step", "coord"], s["q"]),
                "series_loss": (dims + ["step"], s["loss"]),
                "series_grad_norm2": (dims + ["step"], s["grad_norm2"]),
                "series_norm2": (dims + ["step", "block"], s["norm2"]),
            })
        data = {k: (d, v, self._cf_attrs(k)) for k, (d, v) in data.items()}
        coords = {k: (k, v, self._cf_attrs(k)) for k, v in coords.items()}
        attrs = {"Conventions": "CF-1.10", "rule": self.rule_cls.__name__,
                 "steps": self.steps,
                 "batch_size": -1 if self.batch_size is None else self.batch_size,
                 "batch_streams": self.batch_streams, "batch_form": self.batch_form}
        attrs.update({f"fixed_{k}": (v if isinstance(v, (int, float, str)) else repr(v))
                      for k, v in self.fixed.items()})
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def to_dataframe(self):
        """The per-point summaries as a long (tidy) ``pandas.DataFrame``.

        One row per grid point (and seed, when ``seed`` is an axis) and block, in C order
        over the axes with the block fastest.

        Returns
        -------
        pandas.DataFrame
            Columns, in order: one per axis (its value at the row's point), ``block``
            (the block's name), the per-point scalars ``loss``, ``loss_min``,
            ``diverged``, ``status``, ``stop_step`` and, with charges,
            ``balance_residual`` (repeated on each block's row), then the per-block values
            ``norm2`` and ``angular_update``.  The index is a plain ``RangeIndex``.

        Raises
        ------
        ImportError
            pandas is not installed (it is optional: ``pip install pandas``).

        Examples
        --------
        >>> import numpy as np, noether_core as nc
        >>> pot = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
        >>> res = nc.scan(nc.rules.SGD, pot, [1.0, 1.0, 1.0], steps=200,
        ...               lr=[0.01, 0.1], momentum=[0.0, 0.9], seeds=0, progress=False)
        >>> df = res.to_dataframe()
        >>> df.columns.tolist()  # doctest: +NORMALIZE_WHITESPACE
        ['lr', 'momentum', 'block', 'loss', 'loss_min', 'diverged', 'status', 'stop_step',
         'balance_residual', 'norm2', 'angular_update']
        >>> df[["lr", "momentum", "block", "diverged"]]
             lr  momentum block  diverged
        0  0.01       0.0     q     False
        1  0.01       0.9     q     False
        2  0.10       0.0     q     False
        3  0.10       0.9     q     False
        >>> bool((df["loss_min"] <= df["loss"]).all())
        True
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ScanResult.to_dataframe needs pandas: pip install pandas") \
                from None
        shape, nb = self.shape, len(self.blocks)
        n = int(np.prod(shape, dtype=np.intp))
        index = np.indices(shape).reshape(len(shape), n)
        columns = {}
        for (name, vals), ix in zip(self.axes.items(), index, strict=True):
            columns[name] = np.repeat(np.asarray(vals)[ix], nb)
        columns["block"] = np.tile(np.array(self.blocks, dtype=object), n)
        per_point = {"loss": self.loss, "loss_min": self.loss_min,
                     "diverged": self.diverged, "status": self.status,
                     "stop_step": self.stop_step}
        if self.balance_residual is not None:
            per_point["balance_residual"] = self.balance_residual
        per_block = {"norm2": self.norm2, "angular_update": self.angular_update}
        clash = (set(per_point) | set(per_block) | {"block"}) & set(self.axes)
        if clash:
            raise ValueError(f"axis names {sorted(clash)} clash with the columns of "
                             "to_dataframe")
        for name, a in per_point.items():
            columns[name] = np.repeat(np.asarray(a).reshape(n), nb)
        for name, a in per_block.items():
            columns[name] = np.asarray(a).reshape(n * nb)
        return pd.DataFrame(columns)

    def __repr__(self):
        ax = ", ".join(f"{k}[{len(v)}]" for k, v in self.axes.items())
        nd = int(self.diverged.sum())
        return (f"ScanResult({self.rule_cls.__name__}, {ax}, steps={self.steps}, "
                f"diverged={nd}/{self.diverged.size})")
