"""``ScanResult``: the per-point summaries of a :func:`noether_core.scan` grid."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _status
from .rules import Rule

__all__ = ["ScanResult", "point_seed"]


def point_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of grid point ``index`` (flat, C order over the grid axes) under
    scan seed ``seed``: ``SeedSequence(seed).spawn(n_points)[index]``.

    ``train(rule_at_that_point, ..., seed=point_seed(seed, index))`` reproduces the scan's
    point bit for bit, minibatches included.
    """
    return np.random.SeedSequence(seed, spawn_key=(index,))


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
    angular_update : (*shape, nb) array, radians
        Mean angle between successive normalised block vectors q̂_B,n and q̂_B,n+1 over
        the last ``ceil(steps/10)`` steps (the late-time angular update of Sec. 4, whose
        steady value for SGD with momentum is sqrt(2ηk/(1+β))); NaN for diverged points.
    diverged : (*shape,) bool array
    stop_step : (*shape,) int array
        Step at which a non-finite value stopped the point (-1: finished).
    status : (*shape,) int array
        0 finished; 1 non-finite loss; 2 non-finite gradient; 3 non-finite parameters
        after the update; 4 interrupted.
    series : dict or None
        With ``record_every``: ``steps`` (R,), ``q`` (*shape, R, d), ``loss`` (*shape, R),
        ``grad_norm2`` (*shape, R), ``norm2`` (*shape, R, nb) and ``n_rows`` (*shape,):
        the rows ``train(..., record_every=...)`` records (rows past a divergence are NaN).

    balance_residual : (*shape,) array or None
        Worst relative residual, over every step and every tracked symmetry whose law is
        exact for that point's rule (noether_core.charges), of the exact discrete balance
        law — round-off (~1e-16) where theory says so; 0.0 if none is exact.  None with
        ``charges=False``.
    charge_worst, charge_worst_step : dict[str, (*shape,) array]
        Per tracked symmetry ("family:block"): worst relative residual and the step where
        it occurred (-1: none) — equal to ``train(...).charge(...).worst`` of that point.
    charge_exact : dict[str, (*shape,) bool array]
        Whether that symmetry's law is exact for the point's rule (else the residual is a
        measured breaking: kinetic, potential, or an undeclared symmetry).
    untracked : list of (label, reason)
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

    @property
    def shape(self) -> tuple:
        return tuple(len(v) for v in self.axes.values())

    @property
    def diverged(self) -> np.ndarray:
        return (self.status != 0) & (self.status != _status.INTERRUPTED)

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
        for (name, vals), i in zip(self.axes.items(), index):
            if name != "seed":
                out[name] = vals[i].item()
        return out

    def rule_at(self, *index) -> Rule:
        """The rule of the point at ``index``: ``rule_cls(**params(*index))``."""
        return self.rule_cls(**self.params(*index))

    def seed_at(self, *index) -> np.random.SeedSequence:
        """The minibatch stream of the point at ``index`` (``train(..., seed=this)``
        reproduces the point).  Only for a result not narrowed by ``sel`` over grid axes."""
        if len(index) != len(self.axes):
            raise IndexError(f"give one index per axis {list(self.axes)}, got {index}")
        names = list(self.axes)
        grid_idx = tuple(i for n, i in zip(names, index) if n != "seed")
        if len(grid_idx) != len(self.grid_shape):
            raise ValueError("seed_at needs the full grid (this result was narrowed by sel)")
        flat = int(np.ravel_multi_index(grid_idx, self.grid_shape)) if grid_idx else 0
        seed = (self.axes["seed"][index[names.index("seed")]] if "seed" in self.axes
                else self.fixed["seed"])
        return point_seed(int(seed), flat)

    # -- selection ------------------------------------------------------------------------
    def sel(self, **coords) -> "ScanResult":
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
                          list(self.untracked))

    # -- xarray ---------------------------------------------------------------------------
    def to_xarray(self):
        """A labelled ``xarray.Dataset`` (dims: the axes, then ``coord``/``block``/``row``)."""
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
        attrs = {"rule": self.rule_cls.__name__, "steps": self.steps,
                 "batch_size": -1 if self.batch_size is None else self.batch_size}
        attrs.update({f"fixed_{k}": (v if isinstance(v, (int, float, str)) else repr(v))
                      for k, v in self.fixed.items()})
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def __repr__(self):
        ax = ", ".join(f"{k}[{len(v)}]" for k, v in self.axes.items())
        nd = int(self.diverged.sum())
        return (f"ScanResult({self.rule_cls.__name__}, {ax}, steps={self.steps}, "
                f"diverged={nd}/{self.diverged.size})")
