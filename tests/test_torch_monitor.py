"""NoetherMonitor on real PyTorch training loops (issue 7 §4; docs/monitor.md).

Trains a small BatchNorm CNN and a BatchNorm MLP for a few hundred steps with
``torch.optim.SGD(momentum=0.9, weight_decay=...)`` on minibatches and checks:

* the monitor found exactly the BatchNorm-fed weight rows (module graph + gradient audit),
  nothing else, and nothing the audit rejects;
* the exact discrete balance law of SGD (docs/monitor.md Eq. B.4, SPEC §1.1 plus the
  symmetry-breaking term) holds at float64 round-off at every step: < 1e-12 relative
  (each term is a float64 sum of squares, ~1e-16 relative; torch's update rounds q and
  the buffer once per step, so a few ulps of the largest term — 1e-12 leaves a 10⁳ margin);
  the same with a learning-rate schedule and with dampening;
* the online Eq. 17 predictions equal theory.norm_schedule evaluated offline on the
  recorded series (same recursion, different summation: 1e-10 relative);
* Eq. 17 errors (stated in docs/monitor.md §5): the assumption-free "measured" form within
  5% (median over rows) of the final |q|², the assumption of the measured regime within
  25% and better than the paper's "coherent" one, which is off by the factor
  sqrt(κ_coh/κ_unc) − 1 ≈ 3.4 at β = 0.9 on minibatch noise (SPEC §4 Caution).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the monitor needs the optional extra torch "
                                            "(pip install 'torch==2.13.0')")
from noether_core import theory  # noqa: E402
from noether_core.torch import NoetherMonitor  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: torch's second intra-op thread only spins."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _data(n, shape, classes, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    W = torch.randn(int(np.prod(shape)), classes, generator=g, dtype=torch.float64)
    y = (X.reshape(n, -1) @ W + 0.5 * torch.randn(n, classes, generator=g,
                                                 dtype=torch.float64)).argmax(1)
    return X, y


def _train(model, opt, X, y, steps, batch=32, seed=1, sched=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (batch,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 4)).double()


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 24, bias=False), torch.nn.BatchNorm1d(24), torch.nn.ReLU(),
        torch.nn.Linear(24, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
        torch.nn.Linear(16, 16), torch.nn.ReLU(),            # not normalised
        torch.nn.Linear(16, 3)).double()


@pytest.fixture(scope="module")
def cnn_run():
    X, y = _data(256, (1, 8, 8), 4, 0)
    model = _cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    mon = NoetherMonitor(model, opt)
    _train(model, opt, X, y, 300)
    return mon.report()


@pytest.fixture(scope="module")
def mlp_run():
    X, y = _data(512, (12,), 3, 2)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    mon = NoetherMonitor(model, opt)
    _train(model, opt, X, y, 400)
    return mon, mon.report()


def test_cnn_finds_exactly_the_bn_fed_rows(cnn_run):
    rep = cnn_run
    want = [f"0.weight[{i}]" for i in range(6)] + [f"4.weight[{i}]" for i in range(8)]
    assert rep.labels == want
    assert set(rep.sources) == {"BatchNorm2d"}
    assert rep.rejected == [] and rep.unexplained == []
    # BatchNorm eps = 1e-5 breaks the symmetry by ~eps/var: small, not zero
    assert np.all(rep.audit_score < 1e-3)


def test_mlp_finds_exactly_the_bn_fed_rows(mlp_run):
    _, rep = mlp_run
    want = [f"0.weight[{i}]" for i in range(24)] + [f"3.weight[{i}]" for i in range(16)]
    assert rep.labels == want
    assert rep.rejected == [] and rep.unexplained == []


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_exact_balance_residual_at_round_off(which, cnn_run, mlp_run):
    rep = cnn_run if which == "cnn" else mlp_run[1]
    assert np.all(np.isfinite(rep.balance_residual))
    assert rep.balance_residual.max() < 1e-12
    # the breaking term is really there: <g, q> is not zero under BatchNorm(eps > 0)
    assert np.abs(rep.grad_dot_q).max() > 0


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_online_eq17_equals_theory_offline(which, cnn_run, mlp_run):
    rep = cnn_run if which == "cnn" else mlp_run[1]
    lr, beta, k = (float(rep.hyper[x][0]) for x in ("lr", "momentum", "weight_decay"))
    r0 = np.sqrt(rep.norm2[0])
    for a in theory.ASSUMPTIONS:
        off = theory.norm_schedule(rep.grad_norm2 * rep.norm2, lr, beta, k, r0, a)
        np.testing.assert_allclose(rep.predicted_norm2[a], off.r2_continuous, rtol=1e-10)
    off = theory.norm_schedule(None, lr, beta, k, r0, "measured",
                               delta_norm2=rep.step_norm2)
    np.testing.assert_allclose(rep.predicted_norm2["measured"], off.r2_continuous,
                               rtol=1e-10)


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_eq17_error_within_stated_tolerance(which, cnn_run, mlp_run):
    rep = cnn_run if which == "cnn" else mlp_run[1]
    assert np.median(rep.prediction_error("measured")) < 0.05
    regime = rep.regime()
    assert regime == "uncorrelated"          # minibatch noise, β = 0.9 (SPEC §4 Caution)
    assert np.median(rep.prediction_error(regime)) < 0.25
    assert np.median(rep.prediction_error("coherent")) > 1.0
    # the correlation the assumption hinges on: near 0, far from the coherent −1
    late = rep.grad_correlation[len(rep.steps) // 2:]
    assert abs(np.nanmedian(late)) < 0.2


def test_quantities_are_what_they_say(mlp_run):
    """Cross-check recorded series against each other (definitions, docs/monitor.md §2)."""
    _, rep = mlp_run
    # chord² = (D − (r1 − r0)²)/(r0 r1) ≤ D/(r0 r1): the angular update is at most the
    # relative step
    r = np.sqrt(rep.norm2)
    assert np.all(rep.angular_update[:-1] <= np.sqrt(rep.step_norm2[:-1] / (r[:-1] * r[1:]))
                  * (1 + 1e-12))
    c = rep.grad_correlation[1:]
    dead = rep.grad_norm2[1:] == 0              # a dead ReLU unit: no gradient, no angle
    assert np.all(np.isnan(c[dead])) and np.all(np.abs(c[~dead]) <= 1 + 1e-12)
    assert np.all(np.isnan(rep.grad_correlation[0]))
    s = str(rep)
    assert "regime: uncorrelated" in s and "exact balance residual" in s
    # the summary's angular update: RMS chord over the second half, per block
    late = rep.angular_update[len(rep.steps) // 2:]
    np.testing.assert_array_equal(rep.late_angular_update(),
                                  np.sqrt(np.nanmean(late * late, axis=0)))
    # equilibrium(0.5) counts every step of the same half (record_every = 1 here): the
    # same mean square, summed in another order (cumulative sums): 1e-12 relative
    eq = rep.equilibrium(0.5)
    assert (eq.first_step, eq.last_step) == (200, 399)
    np.testing.assert_allclose(eq.measured_angular_update, rep.late_angular_update(),
                               rtol=1e-12)
    assert f"measured {np.nanmedian(eq.measured_angular_update):.3e}" in s


def test_plot_returns_a_figure(mlp_run):
    """plot() draws on a matplotlib.figure.Figure of its own (no pyplot, no backend
    switch; tests/test_demo.py checks the same of the demo in a clean process) that
    saves as a PNG."""
    import io

    from matplotlib.figure import Figure
    mon, _ = mlp_run
    fig = mon.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_and_dampening_keep_the_law_exact():
    X, y = _data(256, (12,), 3, 3)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.8, dampening=0.3,
                          weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    mon = NoetherMonitor(model, opt)
    _train(model, opt, X, y, 60, sched=sched)
    rep = mon.report()
    assert rep.balance_residual.max() < 1e-12
    mon.close()


def test_layernorm_fed_layer_is_one_block():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LayerNorm(10),
                                torch.nn.ReLU(), torch.nn.Linear(10, 3)).double()
    X, y = _data(128, (12,), 3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    mon = NoetherMonitor(model, opt)
    _train(model, opt, X, y, 40)
    rep = mon.report()
    assert rep.labels == ["0.weight+bias"] and rep.sources == ["LayerNorm"]
    assert rep.balance_residual.max() < 1e-12


def test_other_optimizers_record_without_a_law():
    X, y = _data(128, (12,), 3, 5)
    model = _mlp()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    mon = NoetherMonitor(model, opt)
    _train(model, opt, X, y, 20)
    rep = mon.report()
    assert len(rep.labels) == 40
    assert rep.rule == "other:Adagrad"
    assert np.all(np.isnan(rep.balance_residual))
    assert np.all(np.isfinite(rep.norm2))
    assert "n/a for this optimizer" in str(rep)


def test_float32_residual_is_float32_round_off():
    """torch rounds the float32 update: the law holds to ~float32 ulps (1.2e-7)."""
    torch.manual_seed(0)
    model = _mlp().float()
    X, y = _data(256, (12,), 3, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    mon = NoetherMonitor(model, opt)
    _train(model, opt, X.float(), y, 50)
    assert mon.report().balance_residual.max() < 1e-5


def test_record_every_thins_rows_not_the_recursions():
    """record_every=7 keeps rows 0, 7, 14, … of the every-step record, predictions included
    (the Eq. 17 recursions advance every step)."""
    X, y = _data(256, (12,), 3, 7)
    reps = []
    for every in (1, 7):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        mon = NoetherMonitor(model, opt, record_every=every)
        _train(model, opt, X, y, 30)
        reps.append(mon.report())
    full, thin = reps
    np.testing.assert_array_equal(thin.steps, np.arange(0, 30, 7))
    np.testing.assert_array_equal(thin.norm2, full.norm2[::7])
    for a in full.predicted_norm2:
        np.testing.assert_array_equal(thin.predicted_norm2[a][:-1],
                                      full.predicted_norm2[a][:-1][::7])
        np.testing.assert_array_equal(thin.predicted_norm2[a][-1], full.predicted_norm2[a][-1])


def test_monitor_created_after_the_forward_pass_warns():
    X, y = _data(64, (12,), 3, 8)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.nn.functional.cross_entropy(model(X), y).backward()
    mon = NoetherMonitor(model, opt)
    with pytest.warns(UserWarning, match="saw no forward pass"):
        opt.step()
    mon.close()


def test_bad_arguments():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        NoetherMonitor(object(), opt)
    with pytest.raises(TypeError, match="optimizer must be"):
        NoetherMonitor(model, object())
    with pytest.raises(ValueError, match="audit_steps must be an integer ≥ 1, got 0"):
        NoetherMonitor(model, opt, audit_steps=0)
