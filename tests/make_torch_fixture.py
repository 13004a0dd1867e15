"""Generate tests/data/torch_trajectories.npz: known-answer trajectories of torch.optim.

Run once, with the pinned CPU wheel installed (never an unpinned torch)::

    pip install torch==2.13.0
    PYTHONPATH=.:python python tests/make_torch_fixture.py

The file name has no ``test_`` prefix, so pytest does not collect it; the suite
(tests/test_torch_semantics.py) only *reads* the committed fixture and needs no torch.

What it records
---------------
For every learning rule that has a torch counterpart (SGD, RMSprop, Adam, AdamW; the
paper's ScalarRMSProp and MirrorDescent have none and are skipped) and a list of option
sets (torch's defaults, then each option alone and in combination), a float64 trajectory
of ``STEPS`` steps of ``torch.optim.<Rule>`` in which the gradient of every step is the
exact gradient of a noether_core potential at the current parameters
(``pot.value_and_grad``), handed to torch as ``param.grad``.  Potentials:

* ``BatchNormUnit`` (N=32, D=6), full batch and, for a few rules, minibatches of 8 rows
  drawn with noether_ref's replay of the compiled loop's draws (``draw_batch``) from
  ``numpy.random.default_rng(seed)`` — so ``noether_core.train(..., batch_size=8,
  seed=seed)`` sees the same rows;
* ``RayleighQuotient`` (d=5).

Recorded: q_0 … q_STEPS for each case (``q/<i>``), the potentials' data, the exact
options of each case, the defaults read from torch's own signatures, torch's version, the
optimiser code path (see below) and the CPU capability torch dispatched to.

Code path: torch.optim's default on CPU.  ``foreach=None, fused=None`` (the defaults)
resolve through ``torch.optim.optimizer._default_to_fused_or_foreach``: "cpu" is not among
the foreach devices and fused is never chosen by default, so every step runs the
single-tensor implementation (``_single_tensor_sgd`` etc.).  The script checks this and
refuses to write a fixture otherwise.
"""
from __future__ import annotations

import inspect
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, os.path.join(ROOT, "python")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import noether_core as nc  # noqa: E402
from noether_ref.rules import draw_batch  # noqa: E402

TORCH_PIN = "2.13.0"
STEPS = 100
OUT = os.path.join(HERE, "data", "torch_trajectories.npz")

# The hyper-parameters noether_core mirrors, per torch class (torch's own names).
MIRRORED = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
}

# Option sets per rule: {} is torch's defaults.  lr is raised in the others so that the
# 100 steps move q by O(1) and every term of the update matters.
OPTIONS = {
    "SGD": [
        {},
        {"lr": 0.1},                                              # momentum 0
        {"lr": 0.1, "weight_decay": 0.05},                        # momentum 0 + decay
        {"lr": 0.05, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
        {"lr": 0.05, "momentum": 0.5, "dampening": 1.0, "weight_decay": 0.02},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.03},
    ],
    "RMSprop": [
        {},
        {"lr": 0.005, "alpha": 0.9},
        {"lr": 0.005, "eps": 1e-3},
        {"lr": 0.005, "weight_decay": 0.05},
        {"lr": 0.002, "momentum": 0.8},
        {"lr": 0.005, "centered": True},
        {"lr": 0.002, "alpha": 0.95, "eps": 1e-6, "weight_decay": 0.02, "momentum": 0.7,
         "centered": True},
    ],
    "Adam": [
        {},
        {"lr": 0.02, "betas": (0.8, 0.99)},
        {"lr": 0.02, "eps": 1e-4},
        {"lr": 0.02, "weight_decay": 0.05},
        {"lr": 0.02, "amsgrad": True},
        {"lr": 0.02, "betas": (0.5, 0.9), "weight_decay": 0.1, "amsgrad": True},
    ],
    "AdamW": [
        {},
        {"lr": 0.02, "weight_decay": 0.0},
        {"lr": 0.02, "weight_decay": 0.2},
        {"lr": 0.02, "betas": (0.7, 0.95), "eps": 1e-6, "amsgrad": True},
        {"lr": 0.02, "weight_decay": 0.1, "amsgrad": True},
    ],
}

# (rule, option index) pairs also run on minibatches of the BatchNorm unit
MINIBATCH = [("SGD", 4), ("SGD", 7), ("RMSprop", 6), ("Adam", 5), ("AdamW", 4)]
BATCH, SEED = 8, 20261126


def _check_code_path():
    """The default CPU path is the single-tensor one (no foreach, no fused)."""
    from torch.optim.optimizer import _default_to_fused_or_foreach
    p = torch.zeros(3, dtype=torch.float64)
    fused, foreach = _default_to_fused_or_foreach([p], differentiable=False,
                                                  use_fused=False)
    if fused or foreach:
        raise SystemExit(f"unexpected default code path: fused={fused}, foreach={foreach}")
    for name in MIRRORED:
        sig = inspect.signature(getattr(torch.optim, name).__init__)
        for kw in ("foreach", "fused"):
            if kw in sig.parameters and sig.parameters[kw].default is not None:
                raise SystemExit(f"torch.optim.{name}({kw}=...) no longer defaults to None")
    return {"fused": bool(fused), "foreach": bool(foreach),
            "implementation": "_single_tensor_<rule> (torch.optim default on CPU)"}


def _torch_defaults():
    out = {}
    for name, keys in MIRRORED.items():
        sig = inspect.signature(getattr(torch.optim, name).__init__)
        d = {}
        for k in keys:
            v = sig.parameters[k].default
            d[k] = list(v) if isinstance(v, tuple) else v
        out[name] = d
    return out


def _potentials():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((32, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.5])
    y = np.tanh(X @ rng.standard_normal(6)) + 0.1 * rng.standard_normal(32)
    w0 = rng.standard_normal(6)
    M = rng.standard_normal((5, 5))
    A = M + M.T + np.diag([0.0, 1.0, 2.0, 3.0, 4.0])
    v0 = rng.standard_normal(5)
    return {
        "bn": (nc.potentials.BatchNormUnit(X, y), {"X": X, "y": y}, w0),
        "rayleigh": (nc.potentials.RayleighQuotient(A), {"A": A}, v0),
    }


def _trajectory(name, opts, pot, q0, batch_size=None, seed=None):
    param = torch.tensor(q0, dtype=torch.float64, requires_grad=True)
    opt = getattr(torch.optim, name)([param], **opts)
    rng = np.random.default_rng(seed) if batch_size else None
    qs = [q0.copy()]
    for _ in range(STEPS):
        q = param.detach().numpy().copy()
        rows = draw_batch(rng, pot.n_data, batch_size) if batch_size else None
        _, g = pot.value_and_grad(q, rows)
        param.grad = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float64))
        opt.step()
        qs.append(param.detach().numpy().copy())
    q = np.array(qs)
    if not np.all(np.isfinite(q)):
        raise SystemExit(f"{name}{opts}: non-finite trajectory")
    return q


def main():
    if torch.__version__.split("+")[0] != TORCH_PIN:
        raise SystemExit(f"need torch=={TORCH_PIN}, found {torch.__version__}")
    torch.set_default_dtype(torch.float64)
    path = _check_code_path()
    pots = _potentials()
    arrays, cases = {}, []
    for key, (_, data, q0) in pots.items():
        for k, v in data.items():
            arrays[f"pot/{key}/{k}"] = v
        arrays[f"q0/{key}"] = q0
    for name, option_sets in OPTIONS.items():
        for j, opts in enumerate(option_sets):
            runs = [("bn", None), ("rayleigh", None)]
            if (name, j) in MINIBATCH:
                runs.append(("bn", BATCH))
            for key, batch in runs:
                pot, _, q0 = pots[key]
                i = len(cases)
                arrays[f"q/{i}"] = _trajectory(name, opts, pot, q0, batch,
                                               SEED if batch else None)
                cases.append({"rule": name,
                              "options": {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in opts.items()},
                              "potential": key, "batch_size": batch,
                              "seed": SEED if batch else None})
    meta = {
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "code_path": path,
        "dtype": "float64",
        "steps": STEPS,
        "torch_defaults": _torch_defaults(),
        "cases": cases,
        "generator": "tests/make_torch_fixture.py",
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}: {len(cases)} trajectories of {STEPS} steps, torch "
          f"{torch.__version__}, cpu capability {meta['cpu_capability']}, path {path}")


if __name__ == "__main__":
    main()
