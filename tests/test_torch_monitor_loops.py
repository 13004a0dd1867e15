"""NoetherMonitor in the loops people write (issue 18 "Monitor", issue 19 item 5;
docs/monitor.md).

* every optimizer the monitor knows gets its exact per-step identity (docs/monitor.md §3:
  B.4 heavy ball with dampening, schedules and maximize, B.6 Nesterov, B.7 Adam with L2
  decay/amsgrad and AdamW, B.8 RMSprop plain/centered/momentum): residual ≤ 1e-10 in
  float64, the issue's bound (measured ~2e-16: each term a float64 sum of squares, torch's
  update rounded once per step; 1e-10 leaves six orders for long rows);
* closures (``optimizer.step(closure)``, SGD and LBFGS): one record per step, and the
  gradient the closure computed at q_n (LBFGS evaluates it again later);
* normalisation layers: BatchNorm, InstanceNorm, LayerNorm, RMSNorm, GroupNorm(G > 1),
  weight_norm; ``params="all"``;
* the ``meta`` device (the stand-in for an accelerator) runs without raising and says
  the values are unavailable; a failure inside a hook never reaches optimizer.step;
* ``max_records``, ``callback``/``log_every``, ``state_dict`` (a resumed run gives
  bitwise the report of an uninterrupted one on CPU).
"""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the monitor needs the optional extra torch "
                                            "(pip install 'torch==2.13.0')")
from torch.nn.utils.parametrizations import weight_norm  # noqa: E402

from noether_core import theory  # noqa: E402
from noether_core.torch import NoetherMonitor  # noqa: E402

F = torch.nn.functional
BOUND = 1e-10           # the bound for the float64 identities (see the docstring)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _data(n=256, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, classes, generator=g, dtype=torch.float64)
    y = (X @ W + 0.5 * torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
    return X, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
        torch.nn.Linear(16, 10), torch.nn.LayerNorm(10), torch.nn.ReLU(),
        torch.nn.Linear(10, 3)).double()


def _batches(steps, n=256, batch=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (batch,), generator=g) for _ in range(steps)]


def _train(model, opt, X, y, idxs, closure=False, sched=None):
    for idx in idxs:
        def loss_fn(idx=idx):
            opt.zero_grad()
            loss = F.cross_entropy(model(X[idx]), y[idx])
            loss.backward()
            return loss
        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()
        if sched is not None:
            sched.step()


OPTIMIZERS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3), "sgd"),
    "sgd-dampening": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3,
                                                weight_decay=1e-3), "sgd"),
    "sgd-plain": (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-3), "sgd"),
    "sgd-maximize": (lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, weight_decay=1e-3,
                                               maximize=True), "sgd"),
    "nesterov": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                           weight_decay=1e-3), "nesterov"),
    "adam-l2": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3), "adam"),
    "adam-amsgrad": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3,
                                                amsgrad=True), "adam"),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.7, 0.99),
                                          weight_decay=0.1), "adamw"),
    "adamw-foreach": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1,
                                                  foreach=True), "adamw"),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=1e-3, weight_decay=1e-3), "rmsprop"),
    "rmsprop-centered-momentum": (lambda p: torch.optim.RMSprop(
        p, lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-3), "rmsprop"),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_gets_its_exact_identity(name):
    """docs/monitor.md §3: the identity of each optimizer holds at float64 round-off at
    every step (with an lr schedule, so η_n changes), and the report names it."""
    make, rule = OPTIMIZERS[name]
    X, y = _data()
    model = _mlp()
    opt = make(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)
    mon = NoetherMonitor(model, opt, log_every=9)
    _train(model, opt, X, y, _batches(30), sched=sched)
    rep = mon.report()
    assert rep.rule == rule and set(rep.rules) == {rule}
    assert rep.labels[-1] == "3.weight+bias" and len(rep.labels) == 17
    assert np.all(np.isfinite(rep.balance_residual))
    assert rep.balance_residual.max() <= BOUND
    if rule in ("adam", "adamw", "rmsprop"):
        assert np.all(rep.update_norm2 > 0)      # the adaptive update U is really read


def test_the_identities_tell_optimizers_apart():
    """The residual is a real check: a Nesterov run read with heavy ball's identity B.4,
    or an AdamW run read as Adam (decay not decoupled), misses by far more than the
    bound (the monitor reads the class and the group's hyper-parameters; here they are
    falsified after construction)."""
    X, y = _data()
    for make, fake in ((lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                  weight_decay=1e-2), {"nesterov": False}),
                       (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
                        {"decoupled_weight_decay": False})):
        model = _mlp()
        opt = make(model.parameters())
        mon = NoetherMonitor(model, opt)
        real = mon._group_table

        def lying_table(real=real, fake=fake, opt=opt):
            saved = [dict(g) for g in opt.param_groups]
            for g in opt.param_groups:
                g.update(fake)
            try:
                return real()
            finally:
                for g, s in zip(opt.param_groups, saved, strict=True):
                    g.update({k: s[k] for k in fake})
        mon._group_table = lying_table
        _train(model, opt, X, y, _batches(10))
        res = mon.report().balance_residual
        assert np.nanmax(res[1:]) > 1e3 * BOUND


@pytest.mark.parametrize("kind", ["sgd", "lbfgs"])
def test_closures_one_record_per_step(kind):
    """optimizer.step(closure) before any forward pass (the closure shows the graph):
    one record per optimizer step; the gradient is the closure's first evaluation at q_n
    (the scale cosine stays at BatchNorm's eps level, ~1e-5, even for LBFGS, whose last
    evaluation is elsewhere); with SGD the identity holds and the records equal a
    closure-free run of the same steps bitwise."""
    X, y = _data()
    idxs = _batches(12)
    reps = []
    for closure in (True, False):
        model = _mlp()
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
               if kind == "sgd" else torch.optim.LBFGS(model.parameters(), lr=0.5,
                                                        max_iter=4))
        mon = NoetherMonitor(model, opt)
        _train(model, opt, X, y, idxs, closure=closure)
        reps.append(mon.report())
        if kind == "lbfgs":
            break
    rep = reps[0]
    np.testing.assert_array_equal(rep.steps, np.arange(12))
    assert len(rep.labels) == 17 and rep.rejected == []
    assert np.nanmax(rep.scale_cosine[:, :16]) < 1e-3
    if kind == "sgd":
        assert rep.balance_residual.max() <= BOUND
        for f in ("norm2", "grad_norm2", "grad_dot_q", "step_norm2", "balance_residual"):
            np.testing.assert_array_equal(getattr(rep, f), getattr(reps[1], f))
    else:
        assert rep.rule == "other:LBFGS" and np.all(np.isnan(rep.balance_residual))


class _Norms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.gn = torch.nn.GroupNorm(4, 8)
        self.c2 = torch.nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.inorm = torch.nn.InstanceNorm2d(6, affine=True)
        self.f1 = torch.nn.Linear(6 * 16, 10)
        self.rms = torch.nn.RMSNorm(10)
        self.f2 = weight_norm(torch.nn.Linear(10, 7))
        self.out = torch.nn.Linear(7, 3)

    def forward(self, x):
        x = torch.relu(self.gn(self.c1(x)))
        x = torch.relu(self.inorm(self.c2(x)))
        x = F.avg_pool2d(x, 2).flatten(1)
        x = torch.relu(self.rms(self.f1(x)))
        return self.out(torch.relu(self.f2(x)))


def _norms_run(params, steps=20):
    torch.manual_seed(0)
    model = _Norms().double()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 1, 8, 8, generator=g, dtype=torch.float64)
    y = X.flatten(1)[:, :3].argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    mon = NoetherMonitor(model, opt, params=params)
    _train(model, opt, X, y, _batches(steps, n=128))
    return model, mon.report()


def test_every_normalisation_kind():
    """GroupNorm(4 groups): one block per group's channels with their bias; InstanceNorm:
    per channel; RMSNorm: the whole weight with its bias; weight_norm: each output row of
    the direction v.  Every block passes the scale audit (cosine ≤ 1e-3) and B.4 holds."""
    model, rep = _norms_run("normalised")
    want = ([(f"c1.weight+bias[g{g}]", "GroupNorm") for g in range(4)]
            + [(f"c2.weight[{c}]", "InstanceNorm2d") for c in range(6)]
            + [("f1.weight+bias", "RMSNorm")]
            + [(f"f2.parametrizations.weight.original1[{r}]", "weight_norm")
               for r in range(7)])
    assert list(zip(rep.labels, rep.sources, strict=True)) == want
    assert rep.rejected == [] and rep.unexplained == []
    assert np.all(rep.audit_score < 1e-3)
    # weight_norm is an exact symmetry (no eps): the cosine is round-off
    assert np.all(rep.audit_score[-7:] < 1e-12)
    assert rep.balance_residual.max() <= BOUND
    # a GroupNorm block is its group's 2 channels of c1 (weight rows and bias entries)
    w, b = model.c1.weight.detach(), model.c1.bias.detach()
    a_last = float((w[2:4] ** 2).sum() + (b[2:4] ** 2).sum())
    np.testing.assert_allclose(rep.final_norm2[1], a_last, rtol=1e-14)


def test_params_all_tracks_every_matrix_per_row():
    """params="all": every parameter with ndim ≥ 2, per output row, kept whatever the
    audit says; the sources say which rows a normalisation makes scale-invariant."""
    model, rep = _norms_run("all")
    want = []
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            want += [f"{name}[{r}]" for r in range(p.shape[0])]
    assert sorted(rep.labels) == sorted(want)
    src = dict(zip(rep.labels, rep.sources, strict=True))
    assert src["c1.weight[0]"] == "GroupNorm" and src["out.weight[1]"] == "unnormalised"
    assert src["f2.parametrizations.weight.original1[0]"] == "weight_norm"
    assert rep.rejected == [] and rep.balance_residual.max() <= BOUND
    # an unnormalised row is not scale-invariant: its cosine is far from 0
    assert rep.audit_score[rep.labels.index("out.weight[0]")] > 1e-2


def test_meta_device_runs_and_says_values_are_unavailable():
    """On the meta device (shapes without data, the stand-in for an accelerator whose
    values cannot be read) nothing raises, in the hooks or at report(): the report has
    the blocks, one row per step, NaN values and says so; the callback still fires."""
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                 lambda p: torch.optim.AdamW(p, lr=1e-2)):
        model = torch.nn.Sequential(torch.nn.Linear(12, 8, bias=False),
                                    torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                    torch.nn.Linear(8, 3)).to("meta")
        opt = make(model.parameters())
        seen = []
        mon = NoetherMonitor(model, opt, log_every=4, callback=seen.append)
        with warnings.catch_warnings():
            warnings.simplefilter("error")           # not even a warning
            for _ in range(10):
                opt.zero_grad()
                model(torch.randn(8, 12, device="meta")).sum().backward()
                opt.step()
            rep = mon.report()
            state = mon.state_dict()
        assert rep.error is None and not rep.values_available
        assert len(rep.labels) == 8 and len(rep.steps) == 10
        assert np.all(np.isnan(rep.norm2))
        assert "values unavailable" in str(rep)
        assert len(seen) == 2 and "0.weight/angular_update" in seen[0]
        assert state["step"] == 10


def test_a_failing_hook_never_raises_into_step():
    """Issue 19 item 5: an exception inside the monitor's hook (here injected in its
    per-step statistics at step 3: the compiled CPU path and the torch path alike) is
    caught; optimizer.step goes on; the next public call warns once, naming the step and
    the exception; the report keeps steps 0–2; state_dict refuses with the original as
    __cause__."""
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = NoetherMonitor(model, opt, log_every=1)
    _train(model, opt, X, y, _batches(3))

    def broken(*args, **kwargs):
        raise FloatingPointError("injected")
    mon._post_cpu = mon._post_torch = broken
    w_before = model[0].weight.detach().clone()
    _train(model, opt, X, y, _batches(4, seed=5))         # does not raise
    assert not torch.equal(model[0].weight, w_before)     # the optimizer still stepped
    del mon._post_cpu, mon._post_torch
    with pytest.warns(RuntimeWarning, match=r"stopped recording at step 3: "
                                            r"FloatingPointError: injected"):
        rep = mon.report()
    np.testing.assert_array_equal(rep.steps, [0, 1, 2])
    assert "FloatingPointError" in rep.error and "error:" in str(rep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mon.report()                                      # warned once only
    with pytest.raises(RuntimeError, match="cannot checkpoint") as info:
        mon.state_dict()
    assert isinstance(info.value.__cause__, FloatingPointError)


def test_a_failing_callback_is_disabled_and_reported():
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def bad(d):
        raise KeyError("dashboard down")
    mon = NoetherMonitor(model, opt, log_every=2, callback=bad)
    with pytest.warns(RuntimeWarning, match="callback raised KeyError"):
        _train(model, opt, X, y, _batches(6))
    rep = mon.report()
    assert len(rep.steps) == 6 and rep.error is None        # recording went on


def test_batches_move_to_the_host_once_per_log_every():
    """Statistics stay on the device until log_every steps have accumulated (or a public
    call asks): at most one transfer per log_every steps."""
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = NoetherMonitor(model, opt, log_every=5)
    flushes = []
    real = mon._flush

    def counting(callback=False):
        flushes.append((mon.step, len(mon._pending)))
        return real(callback)
    mon._flush = counting
    _train(model, opt, X, y, _batches(12))
    assert flushes == [(5, 5), (10, 5)]
    assert len(mon._pending) == 2
    mon.report()
    assert flushes[-1] == (12, 2) and mon._pending == []


def test_callback_gets_per_layer_summaries():
    """callback(dict[str, float]) every log_every steps: per layer, the RMS chord over
    those steps (median over the layer's rows), the theory's prediction, |q|², the worst
    residual; the chord equals the one recomputed from the report."""
    X, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    seen = []
    mon = NoetherMonitor(model, opt, log_every=10, callback=seen.append)
    _train(model, opt, X, y, _batches(20))
    assert len(seen) == 2
    d = seen[1]
    assert set(d) == {f"{lay}/{q}" for lay in ("0.weight", "3.weight+bias")
                      for q in ("angular_update", "predicted_angular_update",
                                "scheduled_angular_update", "norm2", "balance_residual")}
    assert all(isinstance(v, float) for v in d.values())
    rep = mon.report()
    ch = rep.angular_update[10:20, :16]
    np.testing.assert_allclose(d["0.weight/angular_update"],
                               np.median(np.sqrt(np.mean(ch * ch, axis=0))), rtol=1e-12)
    np.testing.assert_allclose(d["0.weight/predicted_angular_update"],
                               theory.steady_angular_update(0.1, 0.9, 1e-3), rtol=1e-14)
    assert d["3.weight+bias/balance_residual"] <= BOUND
    # the schedule's chord over the same ten steps (cumulative sums of the report)
    cum = rep.cumulative
    c10, c20 = cum[10], rep.final_cumulative
    from noether_core import _monitor_laws as L
    sched = np.sqrt((c20[:16, L.C_SC2] - c10[:16, L.C_SC2])
                    / (c20[:16, L.C_NSC] - c10[:16, L.C_NSC]))
    np.testing.assert_allclose(d["0.weight/scheduled_angular_update"], np.median(sched),
                               rtol=1e-12)


def test_max_records_decimates_older_rows():
    """max_records bounds the rows: every other row is dropped and the stride doubles,
    so the kept rows are exactly the every-step run's rows at multiples of the stride;
    the equilibrium's window sums still count every step."""
    X, y = _data()
    idxs = _batches(50)
    reps = []
    for mr in (None, 8):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        mon = NoetherMonitor(model, opt, max_records=mr, log_every=7)
        _train(model, opt, X, y, idxs)
        reps.append(mon.report())
    full, thin = reps
    assert len(thin.steps) <= 8 and thin.record_stride == 8
    np.testing.assert_array_equal(thin.steps, np.arange(0, 50, 8))
    np.testing.assert_array_equal(thin.norm2, full.norm2[::8])
    np.testing.assert_array_equal(thin.final_cumulative, full.final_cumulative)
    # the window [24, 49] starts at a recorded step of both: identical sums
    e_full, e_thin = full.equilibrium(0.52), thin.equilibrium(0.52)
    assert e_thin.last_step == e_full.last_step == 49
    assert e_thin.first_step == e_full.first_step == 24
    np.testing.assert_allclose(e_thin.measured_angular_update,
                               e_full.measured_angular_update, rtol=1e-12)


def test_record_every_still_counts_every_step_in_equilibrium():
    """equilibrium(): the RMS chord over the window counts every step even when
    record_every > 1 (the issue's requirement)."""
    X, y = _data()
    idxs = _batches(40)
    reps = []
    for every in (1, 5):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        mon = NoetherMonitor(model, opt, record_every=every)
        _train(model, opt, X, y, idxs)
        reps.append(mon.report())
    full, thin = reps
    e1, e5 = full.equilibrium(0.5), thin.equilibrium(0.5)
    assert e1.first_step == e5.first_step == 20
    ch = full.angular_update[20:]
    want = np.sqrt(np.mean(ch * ch, axis=0))
    np.testing.assert_allclose(e5.measured_angular_update, want, rtol=1e-12)
    np.testing.assert_allclose(e1.measured_angular_update, want, rtol=1e-12)


def _resumable(steps_a, steps_b, split, model_fn, opt_fn, **kw):
    X, y = _data()
    idxs = _batches(steps_a + steps_b)
    # uninterrupted
    model = model_fn()
    opt = opt_fn(model.parameters())
    mon = NoetherMonitor(model, opt, **kw)
    _train(model, opt, X, y, idxs)
    full = mon.report()
    # interrupted at `split`, checkpointed through torch.save / torch.load(weights_only)
    model = model_fn()
    opt = opt_fn(model.parameters())
    mon = NoetherMonitor(model, opt, **kw)
    _train(model, opt, X, y, idxs[:split])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "mon": mon.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model = model_fn(seed=123)                         # fresh weights, overwritten
    model.load_state_dict(ck["model"])
    opt = opt_fn(model.parameters())
    opt.load_state_dict(ck["opt"])
    mon = NoetherMonitor(model, opt, **kw)
    mon.load_state_dict(ck["mon"])
    _train(model, opt, X, y, idxs[split:])
    return full, mon.report()


@pytest.mark.parametrize("cpu_kernel", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("opt_name", ["sgd", "nesterov", "adamw", "adam-l2"])
def test_resumed_run_gives_the_same_report_bitwise(opt_name, cpu_kernel, monkeypatch):
    """state_dict()/load_state_dict(): a run checkpointed at step 23 (mid audit window
    passed, mid log_every batch, mid record stride, after a decimation) and resumed in a
    fresh process state gives bitwise the report of the uninterrupted run (CPU), with the
    compiled CPU path and with the torch kernels an accelerator uses."""
    monkeypatch.setattr(NoetherMonitor, "cpu_kernel", cpu_kernel)
    make = OPTIMIZERS[opt_name][0]
    full, resumed = _resumable(30, 20, 23, _mlp, make, record_every=2, max_records=10,
                               log_every=6, audit_steps=3)
    for f in ("labels", "sources", "rule", "rules", "rejected", "unexplained",
              "last_step", "record_stride"):
        assert getattr(resumed, f) == getattr(full, f), f
    for f in ("steps", "norm2", "grad_norm2", "grad_dot_q", "step_norm2", "angular_update",
              "grad_correlation", "balance_residual", "update_dot_q", "update_norm2",
              "final_norm2", "audit_score", "scale_cosine", "cumulative",
              "final_cumulative"):
        np.testing.assert_array_equal(getattr(resumed, f), getattr(full, f), err_msg=f)
    for a in full.predicted_norm2:
        np.testing.assert_array_equal(resumed.predicted_norm2[a], full.predicted_norm2[a])
    for k in full.hyper:
        np.testing.assert_array_equal(resumed.hyper[k], full.hyper[k])
    e_full, e_res = full.equilibrium(0.5), resumed.equilibrium(0.5)
    for k in e_full.grad_stats:
        np.testing.assert_array_equal(e_res.grad_stats[k], e_full.grad_stats[k])
    assert str(resumed).split("monitor overhead")[0] == str(full).split("monitor overhead")[0]


def test_load_state_dict_refuses_what_does_not_fit():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = NoetherMonitor(model, opt, record_every=2)
    with pytest.raises(ValueError, match="state must be a dict made by"):
        mon.load_state_dict({"version": 99})
    state = NoetherMonitor(_mlp(), torch.optim.SGD(_mlp().parameters(), lr=0.1),
                           record_every=3).state_dict()
    with pytest.raises(ValueError, match=r"state\['record_every'\] = 3 differs"):
        mon.load_state_dict(state)


def test_bad_new_arguments():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="params must be one of"):
        NoetherMonitor(model, opt, params="some")
    with pytest.raises(ValueError, match="max_records must be None or an integer ≥ 2, got 1"):
        NoetherMonitor(model, opt, max_records=1)
    with pytest.raises(ValueError, match="log_every must be an integer ≥ 1, got 0"):
        NoetherMonitor(model, opt, log_every=0)
    with pytest.raises(TypeError, match="callback must be None or callable"):
        NoetherMonitor(model, opt, callback=3)


#: (rule, optimizer, theory hyper-parameters): the five rules of docs/theory.md §9, with
#: decay strong enough that 1500 steps hold ≥ 5 of the norm's relaxation times
EQ_RULES = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-3),
            {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-3}),
    "sgd-dampening": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3,
                                                weight_decay=5e-3),
                      {"lr": 0.1, "momentum": 0.8, "dampening": 0.3, "weight_decay": 5e-3}),
    "nesterov": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                           weight_decay=5e-3),
                 {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-3}),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5),
              {"lr": 1e-2, "weight_decay": 0.5}),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=5e-3),
             {"lr": 1e-2, "weight_decay": 5e-3}),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=2e-3, weight_decay=0.1),
                {"lr": 2e-3, "weight_decay": 0.1}),
}


def _theory_rule(name):
    return "sgd" if name == "sgd-dampening" else name


@pytest.mark.parametrize("name", sorted(EQ_RULES))
def test_window_statistics_are_the_theorys_gradient_stats(name):
    """Item 1 of the monitor's part of issue 18: the monitor's window means equal
    ``theory.gradient_stats`` fed the same gradients (and, for the adaptive rules, the
    same weights) and averaged over the same steps — update_sq (SGD |b|² with dampening,
    Nesterov |w|², Adam/AdamW |P m̂|², RMSprop |P g|²), Nesterov's cross ⟨w_{n−1}, b_n⟩,
    metric ⟨q̂, P g⟩ and precond ⟨q̂², P⟩ (docs/theory.md §9, docs/monitor.md §4).  Both
    sides are float64 sums of the same products in a different order: 1e-10 relative.
    The steady state is then theory.equilibrium of those means, and the online schedule
    is theory.rule_norm_schedule of the per-step series from the first |q| (1e-10)."""
    make, h = EQ_RULES[name]
    rule = _theory_rule(name)
    X, y = _data()
    model = _mlp()
    opt = make(model.parameters())
    mon = NoetherMonitor(model, opt, log_every=7, record_every=3)
    w, lw, lb = model[0].weight, model[3].weight, model[3].bias
    Q, G, Qb, Gb = [], [], [], []
    steps = 40
    for idx in _batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        Q.append(w.detach().numpy().copy())
        G.append(w.grad.numpy().copy())
        Qb.append(torch.cat([lw.detach().reshape(-1), lb.detach()]).numpy().copy())
        Gb.append(torch.cat([lw.grad.reshape(-1), lb.grad]).numpy().copy())
        opt.step()
    rep = mon.report()
    eq = rep.equilibrium(0.5)
    assert eq.first_step == 21                       # recorded steps 0, 3, …: ⌈20⌉ → 21
    blocks = [(f"0.weight[{j}]", np.array(Q)[:, j], np.array(G)[:, j]) for j in range(16)]
    blocks.append(("3.weight+bias", np.array(Qb), np.array(Gb)))
    fields = {"sgd": ("update_sq",), "nesterov": ("update_sq", "cross"),
              "adamw": ("update_sq", "metric"),
              "adam": ("update_sq", "metric", "precond"),
              "rmsprop": ("update_sq", "metric", "precond")}[rule]
    for label, q, g in blocks:
        j = rep.labels.index(label)
        kw = {} if rule in ("sgd", "nesterov") else {"params": q}
        gs = theory.gradient_stats(rule, g, **kw, **h)
        gm = gs.mean(eq.first_step)
        for f in fields:
            np.testing.assert_allclose(eq.grad_stats[f][j], getattr(gm, f), rtol=1e-10,
                                       atol=0, err_msg=f"{name} {label} {f}")
        ref = theory.equilibrium(rule, grad_stats=gm, **h)
        np.testing.assert_allclose(eq.predicted_angular_update[j], ref.angular_update,
                                   rtol=1e-10)
        np.testing.assert_allclose(eq.predicted_norm_sq[j], ref.norm_sq, rtol=1e-10)
        series = theory.GradStats(rule, gs.update_sq, gs.cross, gs.metric, gs.precond,
                                  gs.steps)               # shift: not measured (§5)
        sc = theory.rule_norm_schedule(rule, series, np.linalg.norm(q[0]), **h)
        np.testing.assert_allclose(rep.predicted_norm2["schedule"][:, j],
                                   sc.norm_sq[np.append(rep.steps, steps)], rtol=1e-10)
        np.testing.assert_allclose(
            eq.scheduled_angular_update[j],
            np.sqrt(np.mean(sc.angular_update[eq.first_step:] ** 2)), rtol=1e-10)


def test_window_statistics_with_param_groups_of_different_sgd_rules():
    """The same as above when the param groups differ (the monitor's buffer then runs
    with per-element β, 1 − τ and a Nesterov mask): BatchNorm rows under heavy ball with
    dampening, the LayerNorm block under Nesterov with another β (1e-10 relative)."""
    X, y = _data()
    model = _mlp()
    first = [model[0].weight, model[1].weight, model[1].bias]
    rest = [p for p in model.parameters() if all(p is not q for q in first)]
    h0 = {"momentum": 0.8, "dampening": 0.3, "weight_decay": 5e-3}
    h1 = {"momentum": 0.6, "nesterov": True, "weight_decay": 1e-3}
    opt = torch.optim.SGD([{"params": first, **h0}, {"params": rest, **h1}], lr=0.1)
    mon = NoetherMonitor(model, opt, log_every=5)
    w, lw, lb = model[0].weight, model[3].weight, model[3].bias
    G, Gb = [], []
    for idx in _batches(30):
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        G.append(w.grad.numpy().copy())
        Gb.append(torch.cat([lw.grad.reshape(-1), lb.grad]).numpy().copy())
        opt.step()
    rep = mon.report()
    assert rep.rule == "sgd+nesterov"
    eq = rep.equilibrium(1.0)
    G = np.array(G)
    for j in range(16):
        gs = theory.gradient_stats("sgd", G[:, j], momentum=0.8, dampening=0.3).mean()
        np.testing.assert_allclose(eq.grad_stats["update_sq"][j], gs.update_sq, rtol=1e-10)
        assert eq.grad_stats["cross"][j] == 0.0
    gs = theory.gradient_stats("nesterov", np.array(Gb), momentum=0.6).mean()
    j = rep.labels.index("3.weight+bias")
    np.testing.assert_allclose(eq.grad_stats["update_sq"][j], gs.update_sq, rtol=1e-10)
    np.testing.assert_allclose(eq.grad_stats["cross"][j], gs.cross, rtol=1e-10)
    ref = theory.equilibrium("nesterov", lr=0.1, momentum=0.6, weight_decay=1e-3,
                             grad_stats=gs)
    np.testing.assert_allclose(eq.predicted_angular_update[j], ref.angular_update,
                               rtol=1e-10)


@pytest.mark.parametrize("name", sorted(EQ_RULES))
def test_equilibrium_prediction_meets_the_measured_chord(name):
    """docs/monitor.md §4, issue 18's goal: over the last 30% of 1500 steps of a
    BatchNorm MLP (32 rows, batches of 32) the steady chord of theory.equilibrium from
    the window's gradient statistics meets the measured RMS chord within 4% (median over
    rows) for every rule, and the online rule_norm_schedule's chord within 2%; its |q|²
    after the last step within 3%.  Measured (this run): steady −0.9 … +2.7%, schedule
    ≤ 0.6%, |q|² schedule ≤ 2.2% (figures in docs/monitor.md §4); the steady form is
    the looser one because it assumes the statistics stationary over the relaxation
    time (theory.md §9.6)."""
    make, h = EQ_RULES[name]
    X, y = _data(512, seed=7)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32, bias=False),
                                torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3)).double()
    opt = make(model.parameters())
    mon = NoetherMonitor(model, opt, record_every=10)
    _train(model, opt, X, y, _batches(1500, n=512))
    eq = mon.report().equilibrium(0.3)
    rule = _theory_rule(name)
    assert eq.rule == rule and (eq.first_step, eq.last_step) == (1050, 1499)
    assert abs(np.nanmedian(eq.correlation)) < 0.2          # dead rows: NaN
    assert eq.correlation_regime == "uncorrelated"
    assert eq.regime in {"sgd": ("exact",), "nesterov": ("uncorrelated", "correlated"),
                         "adamw": ("rotational", "metric-coupled"),
                         "adam": ("rotational", "metric-coupled"),
                         "rmsprop": ("rotational", "metric-coupled")}[rule]
    live = eq.grad_stats["grad_norm2"] > 0           # dead units: the theory says 0
    assert live.sum() >= 24
    err = {"steady": np.median(eq.relative_error()[live]),
           "schedule": np.median(eq.relative_error("schedule")[live]),
           "norm": np.median(eq.scheduled_norm_sq[live] / eq.measured_norm_sq[live]) - 1,
           "steady norm": np.median(eq.predicted_norm_sq[live]
                                    / eq.measured_norm_sq[live]) - 1}
    print(name, {k: round(float(v), 4) for k, v in err.items()}, eq.regime)
    assert abs(err["steady"]) < 0.04
    assert abs(err["schedule"]) < 0.02
    assert abs(err["norm"]) < 0.03
    if name == "sgd":
        np.testing.assert_allclose(eq.predicted_angular_update,
                                   theory.steady_angular_update(0.1, 0.9, 5e-3), rtol=1e-14)


def test_batch_boundaries_do_not_change_the_numbers():
    """The host processes a batch of steps vectorised; the report is bitwise the same
    whether the statistics arrive every step (log_every=1) or in batches of 13."""
    X, y = _data()
    idxs = _batches(40)
    reps = []
    for every in (1, 13):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                              weight_decay=1e-3)
        mon = NoetherMonitor(model, opt, log_every=every, record_every=3)
        _train(model, opt, X, y, idxs)
        reps.append(mon.report())
    a, b = reps
    for f in ("norm2", "angular_update", "balance_residual", "cumulative",
              "final_cumulative", "grad_correlation"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    for k in a.predicted_norm2:
        np.testing.assert_array_equal(a.predicted_norm2[k], b.predicted_norm2[k])
