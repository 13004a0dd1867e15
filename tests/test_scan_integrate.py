"""scan_integrate: grids of continuous-model trajectories (issue 6, integrator scans)."""
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import noether_core as nc

POT = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0, 4.0]))
Y0 = np.array([1.0, 0.5, -0.3, 0.2, 0.0, 0.0, 0.0, 0.0])


def _grid(**kw):
    base = dict(t_end=3.0, method="conformal-verlet", m=[0.2, 0.8], mu=[0.1, 0.6, 1.0],
                k=0.01, h=0.02)
    base.update(kw)
    return nc.scan_integrate(nc.models.Damped, POT, Y0, **base)


def test_each_point_equals_integrate_and_threads_agree():
    """Every point is the separate integrate() call, bitwise, for any thread count."""
    one, two = _grid(threads=1), _grid(threads=2)
    np.testing.assert_array_equal(one.y_final, two.y_final)
    np.testing.assert_array_equal(one.nfev, two.nfev)
    for i, j in [(0, 0), (1, 2)]:
        r = nc.integrate(nc.models.Damped(POT, m=one.axes["m"][i], mu=one.axes["mu"][j],
                                          k=0.01), Y0, t_end=3.0, h=0.02,
                         method="conformal-verlet")
        np.testing.assert_array_equal(r.y_final, one.y_final[i, j])
        assert one.params(i, j)["mu"] == one.axes["mu"][j]


def test_adaptive_run_parameters_as_axes_and_process_pool():
    """rtol as a grid axis; chunks on a process pool give the same numbers."""
    kw = dict(method="dopri5", m=0.5, mu=[0.2, 0.9], k=0.0, rtol=[1e-4, 1e-8], h=None)
    local = _grid(**kw)
    assert local.y_final.shape == (2, 2, 8)
    assert np.all(local.nfev[:, 1] > local.nfev[:, 0])      # tighter rtol, more work
    with ProcessPoolExecutor(2) as ex:
        remote = _grid(executor=ex, n_chunks=3, **kw)
    np.testing.assert_array_equal(local.y_final, remote.y_final)


def test_bad_grids():
    with pytest.raises(ValueError, match="grid axis m is empty"):
        _grid(m=[])
    with pytest.raises(ValueError, match="grid axis mu must be finite"):
        _grid(mu=[0.1, np.nan])
    with pytest.raises(ValueError, match="grid point"):
        _grid(m=[-1.0, 0.5])
    with pytest.raises(TypeError, match="rejects"):
        _grid(lr=[0.1])
    with pytest.raises(TypeError, match="model class"):
        nc.scan_integrate(nc.rules.SGD, POT, Y0, t_end=1.0, method="rk4", m=[1.0])
