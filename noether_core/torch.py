"""A live Noether monitor for ordinary PyTorch training loops (optional extra ``torch``).

This is the only module of noether_core that imports torch (at its own import); the core
never does.  Install the pinned CPU wheel with ``pip install "torch==2.13.0"`` (the extra
``noether_core[torch]``).  Without torch the module still imports (its documentation and
:class:`MonitorReport`); constructing a :class:`NoetherMonitor` raises ImportError.

An unchanged training loop, watched (needs a model, an optimizer and data: not a
doctest)::

    mon = NoetherMonitor(model, optimizer)
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    print(mon.report())
    mon.plot().savefig("monitor.png")

What it does (docs/monitor.md):

1. **Finds the scale-symmetric weights** (§1).  During the first forward pass, hooks see
   which Linear/Conv output is fed *directly* into a normalisation layer: BatchNorm* and
   InstanceNorm* (per channel: each output row ``W[c]`` is a block), LayerNorm, RMSNorm
   and one-group GroupNorm (the whole weight with its bias is one block), GroupNorm with
   G groups (the rows and bias entries of each group's channels are a block); and the
   direction ``v`` of every ``torch.nn.utils.parametrizations.weight_norm`` (each output
   row).  ``params="all"`` tracks every parameter with ndim ≥ 2 per output row instead.
   The gradients of the first ``audit_steps`` steps confirm the candidates.
2. **Records, per block and per optimizer step** n → n+1 (§2), ten inner products
   (|q_n|², |g_n|², ⟨g_n, q_n⟩, |Δ_{n+1}|², …): on an accelerator with torch on the
   parameters' device, moved to the host in batches, at most once per ``log_every``
   steps (no per-step synchronisation; ``.numpy()`` is never called on a device
   tensor); on the CPU with one compiled call per step on NumPy views of the tensors
   (pyx/monitor.pyx, §6; ``NoetherMonitor.cpu_kernel = False`` uses torch there too).
   The gradient is read after the step, so an ``optimizer.step(closure)`` (LBFGS, Lightning) is seen
   with the gradient its closure computed; one record per optimizer step.
3. **Checks the exact per-step identity of the optimizer actually used** (§3), chosen
   from its class and each param group's hyper-parameters: heavy-ball SGD with
   dampening and any lr schedule (B.4), Nesterov (B.6), Adam with L2 decay and AdamW
   (B.7), RMSprop (B.8); ``MonitorReport.rule`` names it.
4. **Measures the gradient statistics of theory.GradStats** per block and step (§4:
   SGD's and Nesterov's buffers of the gradients alone with the lag cross term, Adam's
   moment of the gradients over the optimizer's own preconditioner, the metric and
   radial-preconditioner terms) and **compares the theory with the run**
   (:meth:`MonitorReport.equilibrium`): the steady chord and |q|² of
   ``theory.equilibrium``, and ``theory.rule_norm_schedule`` run online (§5), besides
   Eq. 17 online for heavy ball.

Nothing raises into ``optimizer.step``: a failure inside a hook is stored, recording
stops, and the next public call (:meth:`NoetherMonitor.report`, ``state_dict``, ``plot``)
warns once and reports it (``MonitorReport.error``).
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from . import _bridge
from . import _monitor_laws as L
from . import _validation as V
from ._monitor_report import Equilibrium, MonitorReport

try:
    import torch
except ImportError:                # the optional extra is not installed (see __init__)
    torch = None

__all__ = ["NoetherMonitor", "MonitorReport", "Equilibrium"]

PREDICTIONS = L.PREDICTIONS
_mk = _bridge.monitor_kernels             # pyx/monitor.pyx: the CPU path (docs/monitor.md §6)
#: the order in which the device writes the STATS columns (grouped products, _post)
_DEV = ("gg", "gq", "e", "a", "D", "a1", "gl", "dg", "ug", "cr", "uq", "uu", "pm", "pq")
_DEV_TO_STATS = np.array([_DEV.index(name) for name in L.STATS])
PARAMS = ("normalised", "all")
_STATE_VERSION = 2            # 2: GradStats columns, the online schedule (issue 18)

if torch is not None:
    _PER_CHANNEL = (torch.nn.modules.batchnorm._BatchNorm,
                    torch.nn.modules.instancenorm._InstanceNorm)
    _JOINT = (torch.nn.LayerNorm, torch.nn.RMSNorm)
    _NORMS = _PER_CHANNEL + _JOINT + (torch.nn.GroupNorm,)
    # layers whose weight row W[c] holds every weight of output unit/channel c (transposed
    # convolutions store (in, out, ...) and are left out)
    _PRODUCERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class _Block:
    """A layer-level unit: ``rows`` rows of ``m`` elements each, laid out in the flat
    vector as ``pieces`` (param, dim-0 slice or None) in order; row r is contiguous."""

    def __init__(self, label, pieces, rows, source, row_labels):
        self.label, self.pieces, self.rows, self.source = label, pieces, rows, source
        self.row_labels = row_labels
        self.m = sum(p[sl].numel() if sl is not None else p.numel()
                     for p, sl in pieces) // rows


class _Layout:
    """Blocks laid out in one flat vector: gather a tensor per piece, reduce per row."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.pieces = [pc for b in blocks for pc in b.pieces]
        self.R = sum(b.rows for b in blocks)
        self.segments, off = [], 0
        for b in blocks:                       # (start, end, rows, m)
            self.segments.append((off, off + b.rows * b.m, b.rows, b.m))
            off += b.rows * b.m
        self.N = off

    def flat(self, get, dtype):
        parts = []
        for p, sl in self.pieces:
            t = get(p)
            parts.append((t if sl is None else t[sl]).reshape(-1))
        out = torch.cat(parts)
        return out if out.dtype == dtype else out.to(dtype)

    def flat_into(self, get, out):
        """:meth:`flat` written into ``out`` (a preallocated row)."""
        parts = [(get(p) if sl is None else get(p)[sl]).reshape(-1)
                 for p, sl in self.pieces]
        torch.cat(parts, out=out)              # converts to out's dtype as it copies
        return out

    acc = None                                 # the accumulation dtype (set at build)

    def reduce(self, P, out=None):
        """Per-row sums of the (K, N) products: (K, R), accumulated in ``acc`` (written
        into ``out`` if given)."""
        K, acc = P.shape[0], self.acc
        if len(self.segments) == 1:            # one block: one reduction, straight in
            s, e, r, m = self.segments[0]
            return torch.sum(P[:, s:e].reshape(K, r, m), -1, dtype=acc, out=out)
        if out is None:
            out = torch.empty((K, self.R), dtype=acc, device=P.device)
        r0 = 0
        for s, e, r, m in self.segments:       # each layer's sums straight into its rows
            torch.sum(P[:, s:e].reshape(K, r, m), -1, dtype=acc, out=out[:, r0:r0 + r])
            r0 += r
        return out


class NoetherMonitor:
    """Attach to a model and its optimizer; watch the scale-symmetric weights train.

    Parameters
    ----------
    model : torch.nn.Module
    optimizer : torch.optim.Optimizer
        Its step pre/post hooks drive the monitor; the training loop does not change.
        Exact identities are known for SGD (momentum, dampening, Nesterov, maximize, any
        lr schedule), Adam (L2 decay, amsgrad), AdamW and RMSprop (centered, momentum);
        for other optimizers (LBFGS, …) the residual is NaN and the rest is recorded.
    record_every : int ≥ 1
        Record every n-th step (the recursions and the equilibrium sums still advance
        every step).
    max_records : int ≥ 2 or None
        Bound on the recorded rows: when exceeded, every other row is dropped and the
        stride doubles (memory O(max_records × rows)).  None: unbounded.
    callback : callable or None
        ``callback(dict[str, float])`` every ``log_every`` steps with per-layer
        summaries over those steps (median over the layer's rows): ``"<layer>/
        angular_update"`` (RMS chord), ``"<layer>/predicted_angular_update"``,
        ``"<layer>/scheduled_angular_update"`` (the online rule_norm_schedule's RMS
        chord over those steps), ``"<layer>/norm2"``, ``"<layer>/balance_residual"``
        (worst); e.g.
        ``callback=lambda d: writer.add_scalars("noether", d, mon.step)`` or
        ``callback=wandb.log``.
    log_every : int ≥ 1
        Steps between the moves of the statistics to the host (and callbacks).
    params : {"normalised", "all"}
        "normalised": the weights a normalisation layer or weight_norm makes
        scale-invariant (audited); "all": every parameter with ndim ≥ 2, per output row.
    audit_steps : int ≥ 1
        Steps over which each candidate's scale cosine is audited.
    approx_tol : float in (0, 1)
        A candidate is kept when its worst cosine ≤ approx_tol (BatchNorm's eps makes
        the symmetry approximate: cosines ~eps/var).

    Notes
    -----
    Per step: one flat copy of the tracked weights before the step, ten products into a
    preallocated buffer after it and one float64-accumulated reduction per layer (on the
    CPU all of it in one compiled pass); vectorised host work when a batch arrives.
    docs/monitor.md §6 gives the measured overhead.
    """

    #: use the compiled CPU kernel for parameters on the CPU (False: torch kernels, as on
    #: an accelerator; the two agree to the rounding of a float64 sum)
    cpu_kernel = True

    def __init__(self, model, optimizer, *, record_every=1, max_records=None,
                 callback=None, log_every=100, params="normalised", audit_steps=5,
                 approx_tol=1e-3):
        if torch is None:
            raise ImportError("NoetherMonitor needs PyTorch, which is not installed: "
                              "pip install 'noether_core[torch]' (the pinned CPU wheel "
                              "torch==2.13.0)")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        audit_steps = V.as_int("audit_steps", audit_steps)         # type errors name it
        record_every = V.as_int("record_every", record_every)
        log_every = V.as_int("log_every", log_every)
        approx_tol = V.as_scalar("approx_tol", approx_tol)
        if audit_steps < 1:
            raise ValueError(f"audit_steps must be an integer ≥ 1, got {audit_steps!r}")
        if record_every < 1:
            raise ValueError(f"record_every must be an integer ≥ 1, got {record_every!r}")
        if log_every < 1:
            raise ValueError(f"log_every must be an integer ≥ 1, got {log_every!r}")
        if max_records is not None:
            max_records = V.as_int("max_records", max_records)
            if max_records < 2:
                raise ValueError(f"max_records must be None or an integer ≥ 2, got "
                                 f"{max_records!r}")
        if not (0.0 < approx_tol < 1.0):
            raise ValueError(f"approx_tol must lie in (0, 1), got {approx_tol!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be None or callable, got "
                            f"{type(callback).__name__}")
        if params not in PARAMS:
            raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
        self.model, self.optimizer = model, optimizer
        self.audit_steps, self.approx_tol = int(audit_steps), float(approx_tol)
        self.record_every, self.max_records = int(record_every), max_records
        self.callback, self.log_every, self.params = callback, int(log_every), params
        self._names = {p: n for n, p in model.named_parameters()}
        self._group = {}
        for gi, g in enumerate(optimizer.param_groups):
            for p in g["params"]:
                self._group[p] = gi
        self._graph_done = False
        self._seen_forward = False
        self._outputs = {}             # id(output) -> (output, module) during discovery
        self._fed = []                 # (producer module, norm module)
        self._hooks, self._fwd_hooks = [], []
        for m in model.modules():
            if isinstance(m, _PRODUCERS):
                self._fwd_hooks.append(m.register_forward_hook(self._on_produce))
            if isinstance(m, _NORMS):
                self._fwd_hooks.append(m.register_forward_pre_hook(self._on_norm))
        self._hooks.append(optimizer.register_step_pre_hook(self._pre))
        self._hooks.append(optimizer.register_step_post_hook(self._post))
        self._layout = None            # decided at the first step
        self._rec = None               # the host-side _Recorder
        self._pending = []             # device batches not yet on the host
        self._q0 = None
        self._overhead = 0.0
        self._unavailable = False
        self._load = None              # a state_dict waiting for the blocks
        self.error, self._error_step, self._warned = None, None, False
        self._cos_hist = []
        self._audit_done = False
        self._keep, self._audit_score, self._rejected, self._unexplained = \
            None, None, [], []
        self._n_steps = 0

    @property
    def step(self) -> int:
        """Optimizer steps seen so far (the next step's n)."""
        return self._n_steps

    # -- graph discovery (first forward pass) --------------------------------------------
    def _on_produce(self, module, inputs, output):
        self._seen_forward = True
        if not self._graph_done and isinstance(output, torch.Tensor):
            self._outputs[id(output)] = (output, module)

    def _on_norm(self, module, inputs):
        if self._graph_done or not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        hit = self._outputs.get(id(inputs[0]))
        if hit is not None and hit[0] is inputs[0]:
            self._fed.append((hit[1], module))

    # -- blocks ---------------------------------------------------------------------------
    def _build(self):
        self._graph_done = True
        self._outputs.clear()
        if not self._seen_forward and self.params == "normalised":
            warnings.warn("NoetherMonitor saw no forward pass before the first optimizer "
                          "step, so it cannot tell which layers feed a normalisation "
                          "layer; create it before the first forward pass", stacklevel=4)
        for h in self._fwd_hooks:          # the graph is known: forward passes run bare
            h.remove()
        self._fwd_hooks = []
        fed = {}
        for prod, norm in self._fed:
            fed.setdefault(prod.weight, (prod, norm))
        wn = {}                            # weight_norm directions: v -> dim
        for m in self.model.modules():
            pz = getattr(m, "parametrizations", None)
            if pz is None or "weight" not in pz:
                continue
            for f in pz["weight"]:
                if type(f).__name__ == "_WeightNorm":
                    wn[pz["weight"].original1] = f.dim
        cands, others = [], []
        if self.params == "all":
            for p in self._group:
                if p.ndim >= 2:
                    name = self._names.get(p, "?")
                    src = "unnormalised"
                    if p in fed:
                        src = type(fed[p][1]).__name__
                    elif p in wn:
                        src = "weight_norm"
                    cands.append(self._rows_block(name, p, src))
        else:
            for m in self.model.modules():
                w = getattr(m, "weight", None)
                if not isinstance(m, _PRODUCERS) or w not in self._group:
                    continue
                name = self._names.get(w, "?")
                if w in fed:
                    cands.append(self._fed_block(name, m, fed[w][1]))
                else:
                    others.append(self._rows_block(name, w, "audit"))
            for v, dim in wn.items():
                if v not in self._group:
                    continue
                name = self._names.get(v, "?")
                if dim == 0 or v.ndim == 1:
                    cands.append(self._rows_block(name, v, "weight_norm"))
                elif dim in (-1, None):
                    cands.append(_Block(name, [(v, None)], 1, "weight_norm", [name]))
                else:
                    warnings.warn(f"NoetherMonitor: {name} is a weight_norm direction "
                                  f"normalised along dim={dim}; only dim=0 (rows) and "
                                  f"dim=None are tracked", stacklevel=4)
        self._layout = _Layout(cands)
        self._tracked = list(dict.fromkeys(p for p, _ in self._layout.pieces))
        self._others = _Layout(others) if others else None
        lay = self._layout
        # per row: the param group of its tensors, or mixed
        row_group, mixed = [], []
        for b in cands:
            gs = {self._group[p] for p, _ in b.pieces}
            row_group += [min(gs)] * b.rows
            mixed += [len(gs) > 1] * b.rows
        self._row_group = np.array(row_group, dtype=int)
        self._mixed = np.array(mixed, dtype=bool)
        self._row_block = np.repeat(np.arange(len(cands)), [b.rows for b in cands])
        p0 = next(iter(self._group), None)
        dev = p0.device if p0 is not None else torch.device("cpu")
        # elementwise work in the parameters' precision (float64 if any tracked tensor
        # is, float32 for float32 and the half types), row sums accumulated in float64
        # (float32 on Apple's mps, which has no float64)
        dts = {p.dtype for p in self._tracked} if self._tracked else {torch.float64}
        self._dtype = torch.float64 if torch.float64 in dts else torch.float32
        self._acc = torch.float32 if dev.type == "mps" else torch.float64
        if dev.type == "mps":
            self._dtype = torch.float32
        self._unavailable = dev.type == "meta"
        # two (4, N) buffers used in turn: rows g_n, q_n, Δ_{n+1}, q_{n+1}; the other
        # one holds the previous step's g_{n−1} and Δ_n (no copies between steps)
        self._X = [torch.full((4, lay.N), float("nan"), dtype=self._dtype, device=dev)
                   for _ in range(2)]
        self._cur = 0
        self._mg = None                # Adam (L2)'s moment of the gradients alone
        self._bg = None                # SGD's momentum buffer of the gradients alone
        self._wprev = None             # Nesterov's previous w = g + βb (gradients alone)
        self._P = torch.zeros((len(L.STATS), lay.N), dtype=self._dtype, device=dev)
        self._p9_zero = False          # SGD: P[9] known to hold zeros (skip re-zeroing)
        # the device batch: one (STATS, R) row per step until the next move to the host
        self._batch = torch.zeros((min(self.log_every, 128), len(L.STATS), lay.R),
                                  dtype=self._acc, device=dev)
        lay.acc = self._acc
        if self._others is not None:
            self._others.acc = self._acc
        # on the CPU, the compiled kernel of pyx/monitor.pyx does the per-step gathers,
        # products and row sums in one call (docs/monitor.md §6); torch kernels elsewhere
        self._fast = (self.cpu_kernel and dev.type == "cpu" and lay.N > 0
                      and self._acc == torch.float64
                      and self._dtype in (torch.float32, torch.float64)
                      and all(p.dtype == self._dtype for p in self._tracked))
        self._qv, self._qptr, self._wbuf = None, None, None
        if self._fast:
            self._Xn = [x.numpy() for x in self._X]
            self._batch_np = self._batch.numpy()
            self._seg = np.array([(b.rows, b.m) for b in lay.blocks], dtype=np.intp)
        self._rec = L._Recorder(lay.R, self.record_every, self.max_records)
        if self._load is not None:
            load, self._load = self._load, None
            self._apply_state(load)

    def _rows_block(self, name, p, src):
        rows = p.shape[0] if p.ndim >= 1 else 1
        return _Block(name, [(p, None)], rows, src, [f"{name}[{r}]" for r in range(rows)])

    def _fed_block(self, name, prod, norm):
        w, b = prod.weight, prod.bias
        src = type(norm).__name__
        if isinstance(norm, _PER_CHANNEL):
            return self._rows_block(name, w, src)
        has_b = b is not None and b in self._group
        if isinstance(norm, torch.nn.GroupNorm) and norm.num_groups > 1:
            G, C = norm.num_groups, w.shape[0]
            cg = C // G
            pieces = []
            for g in range(G):
                sl = slice(g * cg, (g + 1) * cg)
                pieces.append((w, sl))
                if has_b:
                    pieces.append((b, sl))
            lab = f"{name}+bias" if has_b else name
            return _Block(lab, pieces, G, src, [f"{lab}[g{g}]" for g in range(G)])
        pieces = [(w, None)] + ([(b, None)] if has_b else [])
        lab = f"{name}+bias" if has_b else name
        return _Block(lab, pieces, 1, src, [lab])

    # -- hyper-parameters ---------------------------------------------------------------
    _KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
             "betas", "decoupled_weight_decay", "eps", "alpha")

    def _group_table(self):
        """(G, len(HYPER)) hyper-parameters of every param group at this step (the
        previous table again when no value changed)."""
        opt = self.optimizer
        key = tuple(tuple(map(g.get, self._KEYS)) for g in opt.param_groups)
        if key == getattr(self, "_table_key", None):
            return self._table
        self._table_key = key
        self._table = self._make_group_table()
        return self._table

    def _make_group_table(self):
        opt = self.optimizer
        T = np.empty((len(opt.param_groups), len(L.HYPER)))
        for gi, g in enumerate(opt.param_groups):
            lr = g.get("lr", float("nan"))
            lr = float(lr.item() if torch.is_tensor(lr) else lr)
            s = -1.0 if g.get("maximize", False) else 1.0
            k = float(g.get("weight_decay", 0.0))
            b2, eps = float("nan"), float(g.get("eps", float("nan")))
            if isinstance(opt, torch.optim.SGD):
                beta = float(g.get("momentum", 0.0))
                tau = float(g.get("dampening", 0.0)) if beta != 0.0 else 0.0
                rule = L.R_NEST if g.get("nesterov", False) else L.R_SGD
            elif isinstance(opt, torch.optim.Adam):
                beta, tau, b2 = float(g["betas"][0]), 0.0, float(g["betas"][1])
                dec = g.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW))
                rule = L.R_ADAMW if dec else L.R_ADAM
            elif isinstance(opt, torch.optim.RMSprop):
                beta, tau, rule = float(g.get("momentum", 0.0)), 0.0, L.R_RMS
                b2 = float(g.get("alpha", float("nan")))
            else:
                beta, tau, rule = float(g.get("momentum", 0.0) or 0.0), 0.0, L.R_OTHER
            T[gi] = (lr, beta, tau, k, s, rule, 0.0, b2, eps)
        return T

    def _rule_name(self):
        opt = self.optimizer
        if isinstance(opt, (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop)):
            return None
        return f"other:{type(opt).__name__}"

    # -- the hooks (never raise into optimizer.step) -------------------------------------
    def _fail(self, exc):
        if self.error is None:
            self.error, self._error_step = exc, self._n_steps
        self._q0 = None

    def _pre(self, optimizer, args, kwargs):
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            if self._layout is None and not self._seen_forward and \
                    self.params == "normalised":
                # optimizer.step(closure) before any forward pass: the closure's forward
                # shows the graph; keep q_n of every parameter until the post hook
                self._snap = {p: p.detach().clone() for p in self._group}
                self._snap_hp = self._hyper_rows_later(optimizer)
            else:
                if self._layout is None:
                    self._build()
                self._capture(optimizer, None, self._hyper_now(optimizer))
            return self._wrap_closure(args, kwargs)
        except Exception as exc:           # noqa: BLE001 (stored, reported at report())
            self._fail(exc)
        finally:
            self._overhead += time.perf_counter() - t0

    def _wrap_closure(self, args, kwargs):
        """optimizer.step(closure): keep the gradient of the closure's first evaluation
        (at q_n; LBFGS evaluates it again at later points before the step ends)."""
        self._g_first = None
        # args = (optimizer, closure?, ...): the wrapped Optimizer.step's own arguments
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if not callable(closure):
            return None
        done = []

        def closure_seen_by_the_monitor():
            loss = closure()
            if not done and self.error is None:
                done.append(True)
                t0 = time.perf_counter()
                try:
                    if self._layout is not None:
                        self._g_first = self._layout.flat(self._grad, self._dtype)
                    else:
                        self._g_first = {p: self._grad(p).clone() for p in self._group}
                except Exception as exc:   # noqa: BLE001 (stored, reported at report())
                    self._fail(exc)
                finally:
                    self._overhead += time.perf_counter() - t0
            return loss
        if len(args) > 1:
            return (args[0], closure_seen_by_the_monitor) + tuple(args[2:]), kwargs
        return args, {**kwargs, "closure": closure_seen_by_the_monitor}

    def _hyper_rows_later(self, optimizer):
        table = self._group_table()
        first = {p: optimizer.state.get(p, {}).get("momentum_buffer") is None
                 for p in self._group}
        return table, first

    def _hyper_now(self, optimizer):
        table = self._group_table()
        n_state = len(optimizer.state)
        if getattr(self, "_first_cache", None) is not None and \
                self._first_cache[0] == n_state:
            return table, self._first_cache[1]     # every buffer exists: none is first
        first = {b.pieces[0][0]: optimizer.state.get(b.pieces[0][0], {}).get(
            "momentum_buffer") is None for b in self._layout.blocks}
        self._first_cache = None if any(first.values()) else (n_state, first)
        return table, first

    def _capture(self, optimizer, get, hyper):
        """q_n (flat; ``get`` None: the parameters themselves) and this step's
        hyper-parameters per row."""
        lay = self._layout
        if lay.R == 0:
            return
        views = None
        if self._fast:
            views = self._param_views() if get is None else self._piece_views(get)
        if views is not None:
            _mk.gather(views, self._Xn[self._cur][1])
            self._q0 = self._X[self._cur][1]
        else:
            self._q0 = lay.flat_into(_detached if get is None else get,
                                     self._X[self._cur][1])
        table, first = hyper
        if table is getattr(self, "_hp_table", None) and \
                first is getattr(self, "_hp_first", None):
            self._hp = self._hp_cached           # the same objects: nothing changed
            return
        f = tuple(first[b.pieces[0][0]] for b in lay.blocks)
        key = (table.tobytes(), f)
        self._hp_table, self._hp_first = table, first
        if key != getattr(self, "_hp_key", None):    # unchanged hyper-parameters: the
            hp = table[self._row_group]               # same (read-only) table again
            hp[self._mixed, L.H_RULE] = L.R_OTHER
            hp[:, L.H_FIRST] = np.array(f, dtype=float)[self._row_block]
            hp.flags.writeable = False
            self._hp_key, self._hp_cached = key, hp
        self._hp = self._hp_cached

    def _post(self, optimizer, args, kwargs):
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            snap = getattr(self, "_snap", None)
            if snap is not None:                 # the first step ran a closure
                self._snap = None
                self._build()
                self._capture(optimizer, lambda p: snap[p], self._snap_hp)
            if self._layout is None:
                return
            lay = self._layout
            if lay.R == 0:
                self._n_steps += 1
                return
            q0, dt = self._q0, self._dtype
            self._q0 = None
            X, Xp = self._X[self._cur], self._X[1 - self._cur]
            gf, self._g_first = getattr(self, "_g_first", None), None
            i = len(self._pending)            # this step's row of the device batch
            if i == self._batch.shape[0]:
                self._batch = torch.cat([self._batch, torch.zeros_like(self._batch)])
                if self._fast:
                    self._batch_np = self._batch.numpy()
            if self._fast:
                self._post_cpu(X, gf, i)
            else:
                self._post_torch(X, Xp, q0, gf, i)
            So = None
            if self._others is not None and self._n_steps < self.audit_steps:
                o = self._others
                qo = o.flat(lambda p: p.detach(), dt)
                go = o.flat(self._grad, dt)
                So = o.reduce(torch.stack([qo * qo, go * go, go * qo]))
            self._pending.append((i, self._hp, So))
            self._cur = 1 - self._cur          # this step's g, Δ: the next one's previous
            self._n_steps += 1
            if self._n_steps % self.log_every == 0:
                self._flush(callback=True)
        except Exception as exc:           # noqa: BLE001 (stored, reported at report())
            self._fail(exc)
        finally:
            self._overhead += time.perf_counter() - t0

    def _post_torch(self, X, Xp, q0, gf, i):
        """The step's statistics with torch kernels on the parameters' device: the
        products in the device order DEV (docs/monitor.md §2), grouped, and their row
        sums into row i of the device batch."""
        lay, P = self._layout, self._P
        q1 = lay.flat_into(_detached, X[3])
        if gf is None:
            g = lay.flat_into(self._grad, X[0])
        elif isinstance(gf, dict):
            g = lay.flat_into(lambda p: gf[p], X[0])
        else:
            g = X[0].copy_(gf)
        torch.sub(q1, q0, out=X[2])
        # g·[g, q_n, Δ_{n+1}] and [q_n, Δ_{n+1}, q_{n+1}]² in one operation each
        torch.mul(X[0:3], g, out=P[0:3])
        torch.mul(X[1:4], X[1:4], out=P[3:6])
        torch.mul(Xp[0:3:2], g, out=P[6:8])     # g_{n−1}·g_n, Δ_n·g_n in one
        if self._adaptive():
            self._adaptive_products(q0, g, P)
            lay.reduce(P, out=self._batch[i])
        elif self._sgd_family():          # GradStats of SGD/Nesterov (cr: Nesterov)
            self._sgd_stats(g, P)
            lay.reduce(P[:10], out=self._batch[i, :10])
        else:                             # the statistics columns stay 0
            lay.reduce(P[:8], out=self._batch[i, :8])

    def _adaptive_products(self, q0, g, P):
        """Adam/AdamW/RMSprop's columns 8 and 10–13 (§4) into the product buffer."""
        u, pre, ug = self._update(q0, g)
        torch.mul(q0, u, out=P[10])
        torch.mul(u, u, out=P[11])
        if ug is None:                # AdamW: |u|² = |U|²/η², set on the host
            P[8].zero_()
        else:
            torch.mul(ug, ug, out=P[8])
        torch.mul(q0, pre * g, out=P[12])
        torch.mul(P[3], pre, out=P[13])

    def _post_cpu(self, X, gf, i):
        """The same statistics on the CPU: the gathers, Δ, the eight base columns and
        (uniform heavy ball or Nesterov coefficients) the buffer of the gradients alone
        in one compiled call (pyx/monitor.pyx); the adaptive rules' columns with torch
        on the same buffers (docs/monitor.md §6)."""
        lay, P = self._layout, self._P
        out = self._batch_np[i]
        qv = self._param_views()
        if qv is None:
            lay.flat_into(_detached, X[3])
        gv = None
        if gf is None:
            gv = self._grad_views()
            if gv is None:
                lay.flat_into(self._grad, X[0])
        elif isinstance(gf, dict):
            gv = self._piece_views(lambda p: gf[p])
            if gv is None:
                lay.flat_into(lambda p: gf[p], X[0])
        else:
            X[0].copy_(gf)
        stats, kw = _mk.STATS_NONE, {}
        sgd = self._sgd_family()
        if sgd:
            beta, c, nest = self._sgd_coefs()
            if not torch.is_tensor(beta):      # one (β, τ, nesterov) for every row
                first = self._bg is None
                if first:
                    self._bg = torch.empty(lay.N, dtype=self._dtype)
                stats = _mk.STATS_NESTEROV if nest else _mk.STATS_SGD
                kw = {"first": first, "beta": beta, "c": c, "b": self._bg.numpy()}
                if nest:
                    have_w = self._wprev is not None and not first
                    if self._wbuf is None:
                        self._wbuf = torch.empty(lay.N, dtype=self._dtype)
                    if have_w and self._wprev is not self._wbuf:
                        self._wbuf.copy_(self._wprev)
                    kw.update(w=self._wbuf.numpy(), have_w=have_w)
        _mk.rows_step(qv, gv, self._Xn[self._cur], self._Xn[1 - self._cur], out,
                      self._seg, stats, **kw)
        if stats == _mk.STATS_NESTEROV:
            self._wprev = self._wbuf
        elif stats == _mk.STATS_SGD:
            self._wprev = None
        if self._adaptive():
            torch.mul(X[1], X[1], out=P[3])           # q_n², read by column 13
            self._adaptive_products(X[1], X[0], P)
            lay.reduce(P[8:14], out=self._batch[i, 8:14])
        elif sgd and stats == _mk.STATS_NONE:          # mixed groups: torch
            self._sgd_stats(X[0], P)
            lay.reduce(P[8:10], out=self._batch[i, 8:10])

    def _piece_views(self, get):
        """NumPy views of the layout's pieces of ``get(p)`` (CPU, C-contiguous, the
        buffers' dtype), or None when one is not such a tensor (then torch gathers)."""
        out, dt = [], self._dtype
        for p, sl in self._layout.pieces:
            t = get(p)
            if t is None or t.layout != torch.strided or t.dtype != dt or \
                    t.device.type != "cpu":
                return None
            if sl is not None:
                t = t[sl]
            if not t.is_contiguous():
                return None
            out.append((t.detach() if t.requires_grad else t).numpy())
        return out

    def _param_views(self):
        """The parameters' pieces as NumPy views, kept while their storage stays."""
        ptrs = [p.data_ptr() for p in self._tracked]
        if ptrs != self._qptr:
            self._qv, self._qptr = self._piece_views(_detached), ptrs
        return self._qv

    def _grad_views(self):
        return self._piece_views(_grad_or_none)

    @staticmethod
    def _grad(p):
        g = p.grad
        if g is None:
            return torch.full_like(p, float("nan")).detach()
        return g.detach()

    def _adaptive(self):
        return isinstance(self.optimizer, (torch.optim.Adam, torch.optim.RMSprop))

    def _sgd_family(self):
        return isinstance(self.optimizer, torch.optim.SGD)

    def _sgd_coefs(self):
        """β, 1 − τ and the Nesterov flag of the tracked rows' groups: floats when every
        group agrees, else flat tensors (rebuilt when a hyper-parameter changes)."""
        key = self._table_key
        if getattr(self, "_sgd_key", None) == key:
            return self._sgd_cache
        grps = self.optimizer.param_groups
        vals = {p: (float(grps[self._group[p]].get("momentum", 0.0)),
                    float(grps[self._group[p]].get("dampening", 0.0)),
                    bool(grps[self._group[p]].get("nesterov", False)))
                for p in self._tracked}
        vals = {p: (b, 1.0 - (t if b != 0.0 else 0.0), n) for p, (b, t, n) in vals.items()}
        if len(set(vals.values())) <= 1:
            beta, c, nest = next(iter(vals.values()), (0.0, 1.0, False))
        else:
            lay, dt = self._layout, self._dtype
            beta = lay.flat(lambda p: torch.full_like(p, vals[p][0], dtype=dt), dt)
            c = lay.flat(lambda p: torch.full_like(p, vals[p][1], dtype=dt), dt)
            nest = lay.flat(lambda p: torch.full_like(p, float(vals[p][2]), dtype=dt), dt)
        self._sgd_key, self._sgd_cache = key, (beta, c, nest)
        return self._sgd_cache

    def _sgd_stats(self, g, P):
        """theory.GradStats of SGD and Nesterov (docs/theory.md §9.2–9.3) from the
        gradients alone, in the flat layout: the buffer b_{n+1} = βb_n + (1−τ)g_n
        (b_1 = g_0, undamped, at the first step the monitor sees), U_n = |b_{n+1}|²
        (SGD) or |w_n|², w_n = g_n + βb_{n+1} (Nesterov), and Nesterov's lag cross term
        C_n = ⟨w_{n−1}, b_n⟩ (0 at the first step) into P[8], P[9]."""
        beta, c, nest = self._sgd_coefs()
        b = self._bg
        if b is None:
            self._bg = b = g.clone()
            P[9].zero_()
            self._p9_zero = True
            w_old = None
        else:
            w_old = self._wprev
            if w_old is not None:
                torch.mul(w_old, b, out=P[9])      # ⟨w_{n−1}, b_n⟩, before b moves on
                self._p9_zero = False
            elif not self._p9_zero:              # (plain SGD: zeroed once, stays 0)
                P[9].zero_()
                self._p9_zero = True
            if torch.is_tensor(c):
                b.mul_(beta).addcmul_(g, c)
            else:
                b.mul_(beta).add_(g, alpha=c)
        if not torch.is_tensor(nest) and not nest:
            torch.mul(b, b, out=P[8])
            self._wprev = None
            return
        w = torch.addcmul(g, b, beta) if torch.is_tensor(beta) else torch.add(g, b,
                                                                             alpha=beta)
        if torch.is_tensor(nest):              # mixed groups: b where not Nesterov
            w = torch.where(nest != 0, w, b)
            P[9].mul_(nest)
            self._p9_zero = False
        torch.mul(w, w, out=P[8])
        self._wprev = w

    def _update(self, q0, g):
        """Adam/AdamW/RMSprop, recomputed in the flat layout from the optimizer's state
        after the step (docs/monitor.md §3, B.7–B.8, and §4):

        * U_n, with q_{n+1} = (1 − ηλ)q_n − U_n (λ: AdamW's decoupled decay);
        * the preconditioner P = 1/(sqrt(v̂) + ε) (RMSprop: 1/avg);
        * u = P m̂ with m̂ the bias-corrected moment of the gradients alone (AdamW: the
          optimizer's own; Adam with L2 decay: a moment the monitor keeps, from the step
          it first saw), or u = P g for RMSprop — the theory's update statistic.
        """
        opt, dt, lay = self.optimizer, self._dtype, self._layout
        if any(not opt.state.get(p) for p in self._tracked):
            nan = torch.full_like(q0, float("nan"))         # a tensor the step skipped
            return nan, nan, nan
        if isinstance(opt, torch.optim.Adam):
            coef = {}
            for p in self._tracked:
                grp, st = opt.param_groups[self._group[p]], opt.state[p]
                lr, step = grp["lr"], st["step"]
                if torch.is_tensor(step) and step.device.type != "cpu":
                    coef = None                              # capturable: per tensor
                    break
                lr, step = float(lr), float(step)
                b1, b2 = grp["betas"]
                coef[p] = (lr, 1 - b1 ** step, (1 - b2 ** step) ** 0.5, float(grp["eps"]),
                           bool(grp.get("amsgrad")), float(b1),
                           bool(grp.get("decoupled_weight_decay",
                                        isinstance(opt, torch.optim.AdamW))))
            if coef and len(set(coef.values())) == 1:        # one step size: flat ops
                lr, bc1, sb2, eps, ams, b1, dec = next(iter(coef.values()))
                m = lay.flat(lambda p: opt.state[p]["exp_avg"], dt)
                v = lay.flat(lambda p: opt.state[p]["max_exp_avg_sq" if ams
                                                    else "exp_avg_sq"], dt)
                pre = v.sqrt_().div_(sb2).add_(eps).reciprocal_()   # in place: fresh
                u = m.mul_(pre).mul_(lr / bc1)
                if dec:
                    return u, pre, None       # u_theory = U/η: |u|² = |U|²/η² (host)
                self._mg = (1.0 - b1) * g if self._mg is None else \
                    torch.lerp(self._mg, g, 1.0 - b1)
                return u, pre, (self._mg * pre).div_(bc1)
        table, ptab, extra = {}, {}, {}
        for p in self._tracked:
            grp, st = opt.param_groups[self._group[p]], opt.state[p]
            lr = grp["lr"]
            lr = lr.to(dt) if torch.is_tensor(lr) and lr.device.type != "cpu" else float(lr)
            if isinstance(opt, torch.optim.Adam):
                b1, b2 = grp["betas"]
                step = st["step"]
                step = step.to(dt) if torch.is_tensor(step) and step.device.type != "cpu" \
                    else float(step)
                bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
                v = st["max_exp_avg_sq"] if grp.get("amsgrad") else st["exp_avg_sq"]
                ptab[p] = 1.0 / (v.detach().to(dt).sqrt() / (bc2 ** 0.5) + grp["eps"])
                table[p] = (lr / bc1) * st["exp_avg"].detach().to(dt) * ptab[p]
            else:                                            # RMSprop
                sa = st["square_avg"].detach().to(dt)
                if grp.get("centered"):
                    ga = st["grad_avg"].detach().to(dt)
                    avg = (sa - ga * ga).sqrt() + grp["eps"]
                else:
                    avg = sa.sqrt() + grp["eps"]
                ptab[p] = 1.0 / avg
                if grp.get("momentum", 0) > 0:
                    table[p] = lr * st["momentum_buffer"].detach().to(dt)
                else:
                    s = -1.0 if grp.get("maximize") else 1.0
                    table[p] = lr * s * self._grad(p).to(dt) / avg
                    if grp.get("weight_decay", 0) != 0:
                        extra[p] = lr * grp["weight_decay"] / avg
        u = lay.flat(lambda p: table[p], dt)
        if extra:          # RMSprop's L2 term lr·k·q_n/avg needs q_n: in the flat layout
            u = u + lay.flat(lambda p: extra.get(p, torch.zeros_like(p, dtype=dt)),
                             dt) * q0
        pre = lay.flat(lambda p: ptab[p], dt)
        if isinstance(opt, torch.optim.RMSprop):
            return u, pre, pre * g
        if all(opt.param_groups[self._group[p]].get("decoupled_weight_decay",
                                                     isinstance(opt, torch.optim.AdamW))
               for p in self._tracked):
            return u, pre, None                          # AdamW: |u|² = |U|²/η²
        return u, pre, torch.full_like(q0, float("nan"))     # per-tensor Adam: no u

    # -- host side --------------------------------------------------------------------------
    def _flush(self, callback=False):
        """Move the pending batches to the host (one transfer) and process them."""
        if not self._pending:
            return
        pend, self._pending = self._pending, []
        T = len(pend)
        R = self._layout.R
        if self._unavailable:
            host = np.full((T, len(L.STATS), R), np.nan)
        else:
            # the one transfer of this batch; the fancy index copies (the device buffer
            # is reused) and puts the columns in STATS order: (T, STATS, R) float64
            host = self._batch[:T].to("cpu", torch.float64).numpy()[:, _DEV_TO_STATS]
        ho = None
        if any(so is not None for _, _, so in pend):
            so = [x for _, _, x in pend if x is not None]
            ho = (np.full((len(so),) + tuple(so[0].shape), np.nan) if self._unavailable
                  else torch.stack(so).to("cpu", torch.float64).numpy())
        hp = np.stack([h for _, h, _ in pend])
        st = np.ascontiguousarray(host.transpose(0, 2, 1))          # (T, R, STATS)
        n0 = self._rec.step
        if n0 < self.audit_steps and not self._audit_done:
            na = min(self.audit_steps - n0, T)
            with np.errstate(divide="ignore", invalid="ignore"):
                cos_c = np.abs(st[:na, :, L.S_GQ]) / np.sqrt(st[:na, :, L.S_GG]
                                                            * st[:na, :, L.S_A])
                if ho is not None:
                    o = ho[:na]
                    cos_o = np.abs(o[:, 2]) / np.sqrt(o[:, 1] * o[:, 0])
                else:
                    cos_o = np.zeros((na, 0))
            self._cos_hist += list(zip(cos_c, cos_o, strict=True))
        self._rec.process_batch(st, hp)
        if self._rec.step >= self.audit_steps and not self._audit_done:
            self._finish_audit()
        if callback and self.callback is not None:
            self._emit()

    def _finish_audit(self):
        """Keep the candidates whose worst cosine over the audit steps ≤ approx_tol."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN: no gradient seen
            wc = np.nanmax(np.stack([c for c, _ in self._cos_hist]), axis=0)
            wo = (np.nanmax(np.stack([o for _, o in self._cos_hist]), axis=0)
                  if self._cos_hist and self._cos_hist[0][1].size else np.zeros(0))
        labels = [lab for b in self._layout.blocks for lab in b.row_labels]
        self._audit_score = wc
        if self.params == "all" or self._unavailable:
            keep = np.ones(len(labels), dtype=bool)
        else:
            keep = wc <= self.approx_tol
        self._rejected = [(lab, float(s)) for lab, s, k in zip(labels, wc, keep,
                                                                strict=True) if not k]
        olabs = [lab for b in (self._others.blocks if self._others else [])
                 for lab in b.row_labels]
        self._unexplained = [(lab, float(s)) for lab, s in zip(olabs, wo, strict=True)
                             if s <= self.approx_tol]
        self._keep = keep
        self._audit_done = True
        self._cos_hist = []

    def _emit(self):
        rms, res = self._rec.take_window()
        rep = self._report_unchecked()
        eq_pred = rep.equilibrium(1.0).predicted_angular_update if rep.labels else []
        keep = self._keep if self._keep is not None else np.ones(len(rms), bool)
        rows = np.flatnonzero(keep)
        out = {}
        for bi, b in enumerate(self._layout.blocks):
            sel = [i for i, r in enumerate(rows) if self._row_block[r] == bi]
            if not sel:
                continue
            ridx = rows[sel]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[f"{b.label}/angular_update"] = float(np.nanmedian(rms[ridx]))
                out[f"{b.label}/predicted_angular_update"] = float(
                    np.nanmedian(np.asarray(eq_pred)[sel]))
                out[f"{b.label}/scheduled_angular_update"] = float(
                    np.nanmedian(self._rec.win_sched[ridx]))
                out[f"{b.label}/norm2"] = float(np.nanmedian(self._rec.last_a1[ridx]))
                out[f"{b.label}/balance_residual"] = float(np.nanmax(res[ridx])) \
                    if np.isfinite(res[ridx]).any() else float("nan")
        try:
            self.callback(out)
        except Exception as exc:           # noqa: BLE001 (a user's callback: reported)
            self.callback = None
            self._fail_callback(exc)

    def _fail_callback(self, exc):
        warnings.warn(f"NoetherMonitor: the callback raised {type(exc).__name__}: {exc}; "
                      f"it is disabled (recording goes on)", RuntimeWarning, stacklevel=2)
        self.callback_error = exc

    def _check_error(self):
        if self.error is not None and not self._warned:
            self._warned = True
            warnings.warn(f"NoetherMonitor stopped recording at step {self._error_step}: "
                          f"{type(self.error).__name__}: {self.error} (caught inside the "
                          f"optimizer's hook; the report covers the steps before it)",
                          RuntimeWarning, stacklevel=3)

    def _sync(self):
        try:
            if self._layout is not None:
                self._flush()
        except Exception as exc:           # noqa: BLE001
            self._fail(exc)
        self._check_error()

    # -- results ---------------------------------------------------------------------------
    def report(self) -> MonitorReport:
        """The recorded arrays (only blocks that passed the audit) and a printable summary.

        Moves pending statistics to the host first; warns once if a hook failed.
        """
        self._sync()
        return self._report_unchecked()

    def _report_unchecked(self):
        lay, rec = self._layout, self._rec
        err = (f"step {self._error_step}: {type(self.error).__name__}: {self.error}"
               if self.error is not None else None)
        if lay is None or rec is None:
            z = np.zeros((0, 0))
            return MonitorReport(
                labels=[], sources=[], rule=self._rule_name() or "-", rules=[],
                steps=np.zeros(0, int), norm2=z, grad_norm2=z, grad_dot_q=z, step_norm2=z,
                angular_update=z, grad_correlation=z, balance_residual=z, update_dot_q=z,
                update_norm2=z, predicted_norm2={a: z for a in PREDICTIONS},
                final_norm2=np.zeros(0), audit_score=np.zeros(0), scale_cosine=z,
                hyper={k: np.zeros(0) for k in ("lr", "momentum", "dampening",
                                                 "weight_decay", "beta2", "eps")},
                cumulative=np.zeros((0, 0, len(L.CUM))),
                final_cumulative=np.zeros((0, len(L.CUM))), error=err,
                overhead_seconds=self._overhead)
        labels = [lab for b in lay.blocks for lab in b.row_labels]
        sources = [b.source for b in lay.blocks for _ in range(b.rows)]
        B = len(labels)
        keep = self._keep
        if keep is None:                    # audit window not over yet
            if self._cos_hist:
                self._finish_audit()
                keep = self._keep
            else:
                keep = np.ones(B, dtype=bool)
        R = len(rec.rec_steps)

        def col(key):
            if R == 0:
                return np.zeros((0, int(keep.sum())))
            return np.stack(rec.rec[key])[:, keep]
        pred = {}
        for a in PREDICTIONS:
            rows = list(rec.rec_pred[a]) + ([rec.pred_after[a]] if R else [])
            pred[a] = (np.stack(rows)[:, keep] if rows else np.zeros((0, int(keep.sum()))))
        hyp = rec.last_hyper[keep]
        codes = hyp[:, L.H_RULE]
        other = self._rule_name()
        rules = [L.RULES[int(c)] if np.isfinite(c) else "other" for c in codes]
        rules = [other if (r == "other" and other) else r for r in rules]
        rule = "+".join(dict.fromkeys(rules)) if rules else (other or "-")
        score = self._audit_score if self._audit_score is not None else np.full(B, np.nan)
        return MonitorReport(
            labels=[lab for lab, k in zip(labels, keep, strict=True) if k],
            sources=[s for s, k in zip(sources, keep, strict=True) if k],
            rule=rule, rules=rules,
            steps=np.array(rec.rec_steps, dtype=int),
            norm2=col("a"), grad_norm2=col("gg"), grad_dot_q=col("gq"), step_norm2=col("D"),
            angular_update=col("chord"), grad_correlation=col("corr"),
            balance_residual=col("res"), update_dot_q=col("uq"), update_norm2=col("uu"),
            predicted_norm2=pred,
            final_norm2=rec.last_a1[keep] if rec.step else np.zeros(int(keep.sum())),
            audit_score=score[keep], scale_cosine=col("cos"),
            hyper={"lr": hyp[:, L.H_LR], "momentum": hyp[:, L.H_BETA],
                   "dampening": hyp[:, L.H_TAU], "weight_decay": hyp[:, L.H_K],
                   "beta2": hyp[:, L.H_BETA2], "eps": hyp[:, L.H_EPS]},
            cumulative=(np.stack(rec.rec_cum)[:, keep] if R
                        else np.zeros((0, int(keep.sum()), len(L.CUM)))),
            final_cumulative=rec.cum[keep].copy(), last_step=rec.step - 1,
            record_stride=rec.stride, values_available=not self._unavailable, error=err,
            unexplained=list(self._unexplained), rejected=list(self._rejected),
            overhead_seconds=self._overhead)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The monitor's state, for ``torch.save`` with the model's and the optimizer's
        (tensors, numbers, strings, lists and dicts only: ``torch.load(weights_only=True)``
        reads it).  A monitor that loads it into a fresh run of the same model continues
        bitwise (on CPU) as if never interrupted."""
        self._sync()
        if self.error is not None:
            raise RuntimeError(f"NoetherMonitor cannot checkpoint: recording stopped at "
                               f"step {self._error_step} ({type(self.error).__name__}: "
                               f"{self.error})") from self.error
        out = {"version": _STATE_VERSION, "params": self.params,
               "record_every": self.record_every, "max_records": self.max_records,
               "audit_steps": self.audit_steps, "approx_tol": self.approx_tol,
               "step": self._n_steps, "overhead": self._overhead, "built": False}
        if self._layout is None:
            return out
        out.update({
            "built": True,
            "labels": [lab for b in self._layout.blocks for lab in b.row_labels],
            "recorder": _to_torch(self._rec.state()),
            "dprev": self._host_copy(self._X[1 - self._cur][2]),
            "mg": None if self._mg is None else self._host_copy(self._mg),
            "bg": None if self._bg is None else self._host_copy(self._bg),
            "wprev": None if self._wprev is None else self._host_copy(self._wprev),
            "gprev": self._host_copy(self._X[1 - self._cur][0]),
            "audit": {"done": self._audit_done,
                      "cos_c": [torch.from_numpy(c.copy()) for c, _ in self._cos_hist],
                      "cos_o": [torch.from_numpy(o.copy()) for _, o in self._cos_hist],
                      "keep": (None if self._keep is None
                               else torch.from_numpy(self._keep.copy())),
                      "score": (None if self._audit_score is None
                                else torch.from_numpy(self._audit_score.copy())),
                      "rejected": [[a, b] for a, b in self._rejected],
                      "unexplained": [[a, b] for a, b in self._unexplained]},
        })
        return out

    def _host_copy(self, t):
        if self._unavailable:          # the meta device holds no values: NaN, honestly
            return torch.full(tuple(t.shape), float("nan"), dtype=torch.float64)
        return t.detach().to("cpu").clone()

    def load_state_dict(self, state):
        """Continue from :meth:`state_dict` (call before the resumed run's first step).

        Raises
        ------
        ValueError
            ``state`` is not a monitor state of this version, or its settings differ from
            this monitor's (``params``, ``record_every``, ``max_records``, ``audit_steps``).
            A block layout that differs is found at the first step (the blocks are
            discovered in the first forward pass) and reported like a hook failure.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("state must be a dict made by NoetherMonitor.state_dict() "
                             f"(version {_STATE_VERSION}), got "
                             f"{type(state).__name__}"
                             + (f" version {state.get('version')!r}"
                                if isinstance(state, dict) else ""))
        for key in ("params", "record_every", "max_records", "audit_steps"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state[{key!r}] = {state.get(key)!r} differs from this "
                                 f"monitor's {key} = {getattr(self, key)!r}")
        if self._n_steps:
            raise ValueError("load_state_dict must be called before the monitor's first "
                             f"step (it has seen {self._n_steps} steps)")
        self._n_steps = int(state["step"])
        self._overhead = float(state["overhead"])
        if state["built"]:
            self._load = state
        else:
            self._load = None

    def _apply_state(self, s):
        labels = [lab for b in self._layout.blocks for lab in b.row_labels]
        if list(s["labels"]) != labels:
            raise ValueError(f"the checkpoint's blocks ({len(s['labels'])} rows, "
                             f"{s['labels'][:3]}…) differ from this model's ({len(labels)}"
                             f" rows, {labels[:3]}…)")
        self._rec = L._Recorder.from_state(_to_numpy(s["recorder"]))
        Xp = self._X[1 - self._cur]
        dev = Xp.device
        Xp[2].copy_(s["dprev"].to(dev, self._dtype))
        Xp[0].copy_(s["gprev"].to(dev, self._dtype))
        self._mg = None if s.get("mg") is None else s["mg"].to(dev, self._dtype)
        # copies: the buffer is updated in place, and the checkpoint stays as loaded
        self._bg = None if s.get("bg") is None else s["bg"].to(dev, self._dtype,
                                                                copy=True)
        self._wprev = None if s.get("wprev") is None else s["wprev"].to(dev, self._dtype)
        a = s["audit"]
        self._audit_done = bool(a["done"])
        self._cos_hist = [(c.numpy().copy(), o.numpy().copy())
                          for c, o in zip(a["cos_c"], a["cos_o"], strict=True)]
        self._keep = None if a["keep"] is None else a["keep"].numpy().copy()
        self._audit_score = None if a["score"] is None else a["score"].numpy().copy()
        self._rejected = [(x, float(y)) for x, y in a["rejected"]]
        self._unexplained = [(x, float(y)) for x, y in a["unexplained"]]

    # -- figure ----------------------------------------------------------------------------
    def plot(self, blocks=4, fig=None):
        """A matplotlib figure: |q|² measured vs Eq. 17, the angular update (chord) with
        the theory's steady value, the gradient correlation and the balance residual for
        the first ``blocks`` blocks.

        Drawn on ``fig`` if given (e.g. ``plt.figure()`` to show it with pyplot), else on
        a new :class:`matplotlib.figure.Figure`: pyplot is not imported and the backend is
        left as it is; save it with ``fig.savefig(path)``.
        """
        from matplotlib.figure import Figure
        rep = self.report()
        fig = fig or Figure(figsize=(11, 7))
        axs = fig.subplots(2, 2)
        sel = slice(0, min(blocks, len(rep.labels)))
        ax = axs[0, 0]
        ax.plot(rep.steps, rep.norm2[:, sel], "k-", lw=1)
        if "sgd" in rep.rules:
            for a, st in zip(PREDICTIONS[:-1], ("--", ":", "-.", "-"), strict=True):
                ax.plot(rep.steps, rep.predicted_norm2[a][:-1, sel], st, lw=1, label=a)
        if len(rep.steps):
            ax.plot(rep.steps, rep.predicted_norm2["schedule"][:-1, sel], "--", lw=1.5,
                    color="tab:gray", label="schedule (theory §9)")
            ax.legend(fontsize=7)
        ax.set(title="|q|²: measured (black)" + (" vs Eq. 17" if "sgd" in rep.rules
                                                  else "") + " and the rule's schedule",
               xlabel="step", yscale="log")
        ax = axs[0, 1]
        ax.plot(rep.steps, rep.angular_update[:, sel], lw=1)
        if len(rep.steps):
            eq = rep.equilibrium()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(np.nanmedian(eq.predicted_angular_update))
            if np.isfinite(p) and p > 0:
                ax.axhline(p, color="k", ls="--", label=f"theory ({rep.rule})")
                ax.legend(fontsize=7)
        ax.set(title="angular update per step: chord |q̂_(n+1) − q̂_n|", xlabel="step",
               yscale="log")
        ax = axs[1, 0]
        ax.plot(rep.steps, rep.grad_correlation[:, sel], lw=1)
        ax.axhline(-1, color="k", ls=":")
        ax.axhline(0, color="k", ls=":")
        ax.set(title="⟨Δ_n, g_n⟩/(|Δ_n||g_n|)", xlabel="step", ylim=(-1.05, 1.05))
        ax = axs[1, 1]
        ax.semilogy(rep.steps, np.maximum(rep.balance_residual[:, sel], 1e-18), lw=1)
        ax.set(title=f"exact balance residual (relative, {rep.rule})", xlabel="step")
        fig.tight_layout()
        return fig

    def close(self):
        """Remove every hook (the monitor stops recording; report() still works)."""
        for h in self._hooks + self._fwd_hooks:
            h.remove()
        self._hooks, self._fwd_hooks = [], []


def _detached(p):
    return p.detach()


def _grad_or_none(p):
    return p.grad


def _to_torch(x):
    """NumPy arrays → CPU tensors, recursively (bitwise)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x).copy())
    if isinstance(x, dict):
        return {k: _to_torch(v) for k, v in x.items()}
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x


def _to_numpy(x):
    if torch.is_tensor(x):
        return x.numpy().copy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    return x
