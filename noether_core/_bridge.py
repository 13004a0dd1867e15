"""The one private bridge between the facade and the compiled training kernels.

The facade validates; this module turns validated objects into *named* kernel inputs, one
small dataclass per argument group, and makes the one compiled call:

==================  =========================================  =========================
group               fields                                     built by
==================  =========================================  =========================
``RuleInputs``      kind, hp, vec, sca, pptr, pidx             ``Rule.kernel_inputs``
``ModelInputs``     kind, hp, potential_kernel, D, schedule    ``Model.kernel_inputs``
``IntegratePlan``   method, t0, t_end, h, n_steps, ...         ``_integrate``
``Trajectory``      t, y (recorded rows)                       ``_integrate``
``GridPlan``        kind, method, hp (P, 9), t0, t_end, h,     ``_scan_integrate``
                    n_steps, rtol, atol, max_steps
``GridOutputs``     y (P, n), t_final, counts (P, 4)           ``_scan_integrate``
``Recording``       every, bptr, bidx, q, loss, g2, bn2        ``_train``
                    (+ bg2, bd2, d_last)
``Batch``           size, bit_generator / generators           ``_train``, ``_scan``
``ChargeLayout``    fam, ptr1, idx1, ptr2, idx2, dirn, optr,   ``charges.layout``
                    omega
``ChargeRecord``    last_delta, last_res, last_metric,         ``charges.record``
                    rec_*, worst*
``ScanPlan``        steps, K, late_start, record_every, R,     ``_scan``
                    n_threads
``ScanOutputs``     q, loss, loss_min, norm2, angular_update,  ``_scan``
                    status, stop_step, n_rows, s_*, charge_*
==================  =========================================  =========================

The potentials' and integrators' kernels are reached through the same door:
``potential_kernels`` (the built-in potentials' ``*Kernel`` classes, pyx/potentials.pyx),
``callback_kernels`` (users' compiled and Python callables, pyx/callbacks.pyx) and
``integrator_kernels`` (pyx/integrators.pyx), each built by its facade module
(``potentials``, ``_integrate``) from validated inputs.

The kernels (pyx/rules.pyx ``train_kernel``, pyx/scan.pyx ``ScanKernel`` and
``LaneScanKernel``) read these by attribute name before they release the GIL; every array
is C-contiguous float64 (intp for indices, intc for families), as the ``# IN``/``# OUT``
comments of the kernels say.  The bridge imports nothing from the facade, so every facade
module may import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from ._kernels import callbacks as callback_kernels
from ._kernels import integrators as integrator_kernels
from ._kernels import monitor as monitor_kernels
from ._kernels import potentials as potential_kernels
from ._kernels import rules as _kr
from ._kernels import scan as _ks

__all__ = ["RuleInputs", "Recording", "Batch", "ChargeLayout", "ChargeRecord", "ScanPlan",
           "ScanOutputs", "csr", "run_train", "scan_kernel", "lane_kernel", "LANES",
           "pcg64_lane_states",
           "LANE_RULE_KINDS",
           "lane_isas", "openmp_enabled", "status_codes", "potential_kernels",
           "callback_kernels", "integrator_kernels", "monitor_kernels", "ModelInputs",
           "IntegratePlan",
           "EventSpec", "Trajectory", "run_integrate", "eval_rhs", "GridPlan", "GridOutputs",
           "grid_kernel"]

#: grid points per SIMD block of the lane kernel
LANES: int = _ks.LANES
#: rows of shared minibatch streams the lane kernel draws ahead per call, at most
#: (pcg64 stream helpers; docs/scan.md §"Minibatch lanes")
ROWS_TABLE_MAX: int = _ks.ROWS_TABLE_MAX
#: the rule kinds (``Rule.kind``) the lane kernel runs
LANE_RULE_KINDS: tuple = tuple(_ks.LANE_RULE_KINDS)


def csr(parts) -> tuple[np.ndarray, np.ndarray]:
    """Compressed rows of a list of index arrays: ``(ptr, idx)``, ``idx[ptr[i]:ptr[i+1]]``
    being ``parts[i]`` (intp, C-contiguous)."""
    ptr = np.zeros(len(parts) + 1, dtype=np.intp)
    ptr[1:] = np.cumsum([len(p) for p in parts])
    idx = np.concatenate(parts).astype(np.intp) if len(parts) else np.zeros(0, np.intp)
    return ptr, np.ascontiguousarray(idx)


def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


@dataclass(eq=False)
class RuleInputs:
    """A learning rule as the training loop reads it (pyx/rules.pyx's table of kinds).

    For one run ``hp`` is (nhp,), ``vec`` (nvec, d) and ``sca`` (nsca,); for a grid each
    has a leading axis of points and ``vec`` is flattened to (P, nvec·d).  ``vec`` and
    ``sca`` are the rule's state (momentum buffers, moments, step count), updated in place
    by a single run; ``pptr``/``pidx`` the partition of q into parts with their own scalar
    state (CSR).
    """

    kind: int
    hp: np.ndarray          # IN
    vec: np.ndarray         # IN/OUT
    sca: np.ndarray         # IN/OUT
    pptr: np.ndarray        # IN
    pidx: np.ndarray        # IN

    def __post_init__(self):
        self.hp, self.vec, self.sca = _f64(self.hp), _f64(self.vec), _f64(self.sca)


@dataclass(eq=False)
class Recording:
    """What a single run records at steps 0, every, 2·every, … (rows preallocated)."""

    every: int
    bptr: np.ndarray        # IN blocks whose |q_B|² is recorded (CSR)
    bidx: np.ndarray
    q: np.ndarray           # OUT (R, d) or (R, 0) when parameters are not recorded
    loss: np.ndarray        # OUT (R,)
    g2: np.ndarray          # OUT (R,)
    bn2: np.ndarray         # OUT (R, nb)
    bg2: np.ndarray | None = None     # OUT (R, nb) per-block |g_B|², optional
    bd2: np.ndarray | None = None     # OUT (R, nb) per-block |Δ_n|², optional
    d_last: np.ndarray | None = None  # IN/OUT (d,) the last step Δ (with bd2)


@dataclass(eq=False)
class Batch:
    """Minibatch draws: ``size`` 0 means the full batch.  One run draws from
    ``bit_generator`` (a NumPy BitGenerator); a grid from ``generators`` (one
    ``numpy.random.Generator`` per point)."""

    size: int = 0
    bit_generator: object | None = None
    generators: list | None = None


@dataclass(eq=False)
class ChargeLayout:
    """The tracked symmetries as the kernel's ChargeSpec reads them (rules.pxd): family
    codes, first and second blocks (CSR), translation directions, rotation Ω's (CSR)."""

    fam: np.ndarray         # IN (nsym,) intc
    ptr1: np.ndarray        # IN
    idx1: np.ndarray
    ptr2: np.ndarray        # IN (rescale's second block; empty otherwise)
    idx2: np.ndarray
    dirn: np.ndarray        # IN concatenated translation directions
    optr: np.ndarray        # IN
    omega: np.ndarray       # IN concatenated row-major Ω's

    @property
    def nsym(self) -> int:
        return len(self.fam)


@dataclass(eq=False)
class ChargeRecord:
    """A single run's charge series and the balance-law state it carries across a resume."""

    last_delta: np.ndarray      # IN/OUT (d,) Δ of the last step
    last_res: np.ndarray        # IN/OUT (nsym,) last step's law residual
    last_metric: np.ndarray     # IN/OUT (nsym,)
    rec_moment: np.ndarray      # OUT (R, nsym)
    rec_charge: np.ndarray      # OUT (R, nsym)
    rec_resid: np.ndarray       # OUT (R, nsym)
    rec_metric: np.ndarray      # OUT (R, nsym)
    worst: np.ndarray           # OUT (nsym,)
    worst_step: np.ndarray      # OUT (nsym,) intp, -1: none
    worst_metric: np.ndarray    # OUT (nsym,)


@dataclass(eq=False)
class ScanPlan:
    """How a grid runs: ``K`` steps per inner call, the late window from ``late_start``,
    series rows every ``record_every`` steps (0: none; ``R`` rows), on ``n_threads``."""

    steps: int
    K: int
    late_start: int
    record_every: int
    R: int
    n_threads: int


@dataclass(eq=False)
class ScanOutputs:
    """Per-point outputs of a grid (leading axis: the points), written by the kernel."""

    q: np.ndarray
    loss: np.ndarray
    loss_min: np.ndarray
    norm2: np.ndarray
    angular_update: np.ndarray
    status: np.ndarray
    stop_step: np.ndarray
    n_rows: np.ndarray
    s_q: np.ndarray
    s_loss: np.ndarray
    s_g2: np.ndarray
    s_bn2: np.ndarray
    charge_worst: np.ndarray | None = None
    charge_worst_step: np.ndarray | None = None
    kernel: str = field(default="")

    @classmethod
    def empty(cls, n: int, d: int, nb: int, R: int, nsym: int) -> ScanOutputs:
        """Outputs for ``n`` points (series rows NaN until written; charges with nsym)."""
        return cls(
            q=np.empty((n, d)), loss=np.empty(n), loss_min=np.empty(n),
            norm2=np.empty((n, nb)), angular_update=np.empty((n, nb)),
            status=np.zeros(n, np.intp), stop_step=np.zeros(n, np.intp),
            n_rows=np.zeros(n, np.intp),
            s_q=np.full((n, R, d), np.nan), s_loss=np.full((n, R), np.nan),
            s_g2=np.full((n, R), np.nan), s_bn2=np.full((n, R, nb), np.nan),
            charge_worst=np.zeros((n, nsym)) if nsym else None,
            charge_worst_step=np.full((n, nsym), -1, dtype=np.intp) if nsym else None)

    @classmethod
    def empty_fast(cls, n: int, d: int, nb: int, R: int, nsym: int) -> ScanOutputs:
        """:meth:`empty` in fewer allocations (the scan facade's fixed cost per call):
        the float summaries are C-contiguous slices of one buffer, the three intp
        counters of another, and without series (R = 0) the series arrays are empty
        arrays of the same shapes, allocated without a fill (they hold no element).
        The same shapes, dtypes, contiguity and initial values as :meth:`empty`."""
        a, b, c = n * d, n * (d + 1), n * (d + 2)
        f = np.empty(c + 2 * n * nb)
        i = np.zeros((3, n), np.intp)
        fill = np.full if R else _no_fill
        return cls(
            q=f[:a].reshape(n, d), loss=f[a:b], loss_min=f[b:c],
            norm2=f[c:c + n * nb].reshape(n, nb), angular_update=f[c + n * nb:].reshape(n, nb),
            status=i[0], stop_step=i[1], n_rows=i[2],
            s_q=fill((n, R, d), np.nan), s_loss=fill((n, R), np.nan),
            s_g2=fill((n, R), np.nan), s_bn2=fill((n, R, nb), np.nan),
            charge_worst=np.zeros((n, nsym)) if nsym else None,
            charge_worst_step=np.full((n, nsym), -1, dtype=np.intp) if nsym else None)

    @classmethod
    def concatenate(cls, parts: list) -> ScanOutputs:
        """The outputs of consecutive chunks of a grid, joined along the points."""
        joined = {}
        for f in fields(cls):
            if f.name == "kernel":
                continue
            arrays = [getattr(p, f.name) for p in parts]
            joined[f.name] = None if arrays[0] is None else np.concatenate(arrays)
        joined["kernel"] = ", ".join(sorted({p.kernel for p in parts}))
        return cls(**joined)


@dataclass(eq=False)
class ModelInputs:
    """A continuous model as the integrators read it (pyx/integrators.pyx ``Model``):
    kind, hyper-parameter row ``[m, mu, k, reduced, sched, s1, s2, mirror, p]``, the
    potential's kernel, the diagonal of a diagonal mirror map (or empty) and, for a user
    Bregman schedule, the callable ``t -> (e^alpha, e^(alpha+beta), gamma')`` called back
    with the GIL (None for a compiled schedule)."""

    kind: int
    hp: np.ndarray            # IN
    potential_kernel: object
    D: np.ndarray             # IN
    schedule: object | None = None

    def __post_init__(self):
        self.hp, self.D = _f64(self.hp), _f64(self.D)


@dataclass(eq=False)
class EventSpec:
    """Events located inside the adaptive loop (pyx/integrators.pyx ``CEvents``): for
    each, g(y) = quantity − level with ``kind`` (integrators.pyx EVENT_KINDS: |q|²,
    ⟨weights, y⟩, or yᵀ matrix y + ⟨weights, y⟩), ``direction`` and ``terminal`` (a count,
    0 = never); at most
    ``max_rows`` roots in all."""

    kind: np.ndarray          # IN (m,) intc
    level: np.ndarray         # IN (m,)
    direction: np.ndarray     # IN (m,)
    terminal: np.ndarray      # IN (m,) intp
    weights: np.ndarray       # IN (m, n)
    matrices: np.ndarray      # IN (m, n, n): g = yᵀ Q y + ⟨w, y⟩ − level for "quadratic"
    max_rows: int = 1

    def __post_init__(self):
        self.kind = np.ascontiguousarray(self.kind, dtype=np.intc)
        self.level, self.direction = _f64(self.level), _f64(self.direction)
        self.terminal = np.ascontiguousarray(self.terminal, dtype=np.intp)
        self.weights = np.ascontiguousarray(self.weights, dtype=np.float64)
        self.matrices = np.ascontiguousarray(self.matrices, dtype=np.float64)


@dataclass(eq=False)
class IntegratePlan:
    """How one trajectory is integrated: ``method`` (integrators.pyx METHOD_*), from
    ``t0``; fixed-step methods take ``n_steps`` steps of ``h`` and record every
    ``record_every``-th state; dopri5 uses ``h`` (> 0) as its first trial step (<= 0:
    automatic), ``rtol``/``atol``/``max_steps``, and lands on each ``t_eval`` (sorted, may
    be empty) up to ``t_end``."""

    method: int
    t0: float
    t_end: float
    h: float
    n_steps: int = 0
    record_every: int = 1
    t_eval: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rtol: float = 0.0
    atol: float = 0.0
    max_steps: int = 0
    # adaptive methods only: keep every accepted step's continuous extension (at most
    # max_dense_rows rows), and/or call event_hook(t_old, t_new, h, coefs) -> stop? after
    # each accepted step (with the GIL)
    dense: bool = False
    max_dense_rows: int = 0
    event_hook: object | None = None
    compiled_events: EventSpec | None = None


@dataclass(eq=False)
class Trajectory:
    """The recorded rows of one trajectory (preallocated; the kernel fills the first
    ``n_rec`` it returns)."""

    t: np.ndarray             # OUT (R,)
    y: np.ndarray             # OUT (R, n)
    dense: np.ndarray | None = None   # OUT (set by the kernel when plan.dense): (S, stride)
    events: np.ndarray | None = None  # OUT (compiled events): rows [t, k, y (n)]


def run_integrate(model: ModelInputs, y: np.ndarray, plan: IntegratePlan,
                  record: Trajectory) -> tuple:
    """One trajectory in one compiled call (GIL released except for Python callbacks);
    ``y`` goes in as the initial and comes out as the final state.  Returns
    ``(status, n_rec, steps_done, t_final, nfev, n_accepted, n_rejected)``."""
    return integrator_kernels.integrate_kernel(model, y, plan, record)


@dataclass(eq=False)
class GridPlan:
    """A grid of trajectories of one model kind and method (``scan_integrate``): one row
    of ``ModelInputs.hp`` per point, from ``t0`` to ``t_end``; per point the step ``h``
    (fixed-step methods, with ``n_steps`` steps; adaptive: first trial step, <= 0
    automatic) and ``rtol``/``atol``; ``max_steps`` bounds every adaptive point."""

    kind: int
    method: int
    hp: np.ndarray            # IN (P, 9)
    t0: float
    t_end: float
    h: np.ndarray             # IN (P,)
    n_steps: np.ndarray       # IN (P,) intp
    rtol: np.ndarray          # IN (P,)
    atol: np.ndarray          # IN (P,)
    max_steps: int = 0
    # the potential's lane form (Potential._lane_form()) or None: M1 grids of the
    # conformal splittings on Quadratic / RayleighQuotient then run in SIMD lanes; isa
    # None = the best version this CPU runs ("base" or "avx512": the tests compare them)
    lane: tuple | None = None
    isa: str | None = None

    def __post_init__(self):
        self.hp, self.h = _f64(self.hp), _f64(self.h)
        self.rtol, self.atol = _f64(self.rtol), _f64(self.atol)
        self.n_steps = np.ascontiguousarray(self.n_steps, dtype=np.intp)


@dataclass(eq=False)
class GridOutputs:
    """What a grid kernel writes per point: ``y`` (P, n) the initial state in, the final
    (or stopping) state out; ``t_final``; ``counts`` (P, 4) intp: kernel status, gradient
    evaluations, accepted steps, rejected steps."""

    y: np.ndarray             # IN/OUT (P, n)
    t_final: np.ndarray       # OUT (P,)
    counts: np.ndarray        # OUT (P, 4) intp

    @classmethod
    def start(cls, y0: np.ndarray, P: int) -> GridOutputs:
        return cls(np.tile(_f64(y0), (P, 1)), np.full(P, np.nan),
                   np.full((P, 4), -1, dtype=np.intp))


def grid_kernel(plan: GridPlan, potential_kernel, out: GridOutputs):
    """A compiled grid kernel (pyx/integrators.pyx ``GridKernel``) over ``plan``'s points:
    ``run(lo, hi)`` integrates points lo..hi-1 with the GIL released once (each point
    exactly ``run_integrate`` of the same row; M1 conformal splittings on a potential
    with a lane form in blocks of ``integrator_kernels.INTEGRATOR_LANES`` SIMD lanes),
    ``cancel()`` stops it from any thread."""
    return integrator_kernels.GridKernel(
        plan.kind, plan.method, potential_kernel, plan.hp, plan.t0, plan.t_end, plan.h,
        plan.n_steps, plan.rtol, plan.atol, plan.max_steps, out.y, out.t_final, out.counts,
        plan.lane, plan.isa)


def eval_rhs(model: ModelInputs, t: np.ndarray, y: np.ndarray, dy: np.ndarray) -> int:
    """The integrators' own right-hand side F(t_i, y_i) into ``dy`` at every row;
    returns the number of gradient evaluations."""
    return integrator_kernels.rhs_kernel(model, t, y, dy)


def run_train(rule: RuleInputs, potential_kernel, q: np.ndarray, steps: int,
              record: Recording, batch: Batch, layout: ChargeLayout | None = None,
              charges: ChargeRecord | None = None) -> tuple[int, int, int]:
    """One trajectory in one compiled call (GIL released); returns
    ``(status, stop_step, rows_recorded)``.  ``q``, ``rule.vec``/``rule.sca`` and the
    outputs are updated in place."""
    return _kr.train_kernel(rule, potential_kernel, q, steps, record, batch, layout, charges)


def _no_fill(shape, value):
    """An empty float64 array of ``shape`` (one of whose sizes is 0: nothing to fill)."""
    return np.empty(shape)


def scan_kernel(rule: RuleInputs, potential_kernel, q0: np.ndarray, plan: ScanPlan,
                record_bptr: np.ndarray, record_bidx: np.ndarray, batch: Batch,
                out: ScanOutputs, layout: ChargeLayout | None = None):
    """The scalar grid kernel (one point at a time per thread), ready to ``run()``."""
    return _ks.ScanKernel(rule, potential_kernel, q0, plan, record_bptr, record_bidx, batch,
                          out, layout)


def lane_kernel(lane_form: tuple, rule: RuleInputs, q0: np.ndarray, plan: ScanPlan,
                record_bptr: np.ndarray, record_bidx: np.ndarray, out: ScanOutputs,
                charge_blocks: tuple[np.ndarray, np.ndarray] | None, isa: str | None,
                batch: tuple[int, np.ndarray] | None = None):
    """The SIMD lane kernel (``LANES`` points per vector; the rule kinds in
    ``LANE_RULE_KINDS``), ready to ``run()``; ``charge_blocks``: CSR of the scale blocks
    whose laws are tracked; ``batch``: None (full batch) or ``(B, rng)``, minibatch lanes
    with each point's PCG64 starting state in a (P, 4) uint64 array
    (:func:`pcg64_lane_states`; docs/scan.md §"Minibatch lanes")."""
    kind, data = lane_form
    data = {k: (_f64(v) if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    return _ks.LaneScanKernel(kind, data, rule, _f64(q0), plan, record_bptr, record_bidx,
                              out, charge_blocks, isa, batch)


def pcg64_lane_states(seed_sequences) -> np.ndarray:
    """The (P, 4) uint64 starting states of minibatch lanes: row p holds NumPy's PCG64
    state of ``np.random.PCG64(seed_sequences[p])`` as (state >> 64, state mod 2**64,
    inc >> 64, inc mod 2**64), the numbers the lane kernel's own PCG64 steps from
    (pyx/lanes.h ``nc_pcg64_next64``)."""
    seqs = list(seed_sequences)
    out = np.empty((len(seqs), 4), dtype=np.uint64)
    mask = (1 << 64) - 1
    for p, ss in enumerate(seqs):
        st = np.random.PCG64(ss).state["state"]
        s, inc = int(st["state"]), int(st["inc"])
        out[p] = (s >> 64, s & mask, inc >> 64, inc & mask)
    return out


def lane_isas() -> list:
    """The lane-kernel versions this CPU runs (names accepted by ``NOETHER_LANE_ISA``)."""
    return list(_ks.lane_isas())


def status_codes() -> dict:
    """Every compiled loop's status code by name (defined once, in pyx/nc_status.h)."""
    return dict(_kr.status_codes())


def openmp_enabled() -> bool:
    """True if the grid kernels were compiled with OpenMP."""
    return bool(_ks.openmp_enabled())
