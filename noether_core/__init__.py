"""noether_core: Noether's learning dynamics, computable, fast and checked.

Learning rules as compiled loops matching ``torch.optim`` (``rules``, :func:`train`),
built-in potentials with known symmetries (``potentials``), Noether charges and exact
discrete balance laws (``charges``), integrators of the continuous Lagrangian models
(``models``, :func:`integrate`, :func:`noether_terms`), grids of runs (:func:`scan`,
:func:`scan_integrate`), the closed forms of the paper's Sec. 4 (``theory``), and the
conversions between discrete rules and continuous models (``conventions``).

The public functions live here; the modules that implement them are private
(``_train``, ``_scan``, ``_integrate``, ``_scan_integrate``), and ``_bridge`` is the one
way into the compiled kernels (docs/architecture.md).
"""
from . import (
    audit,
    charges,
    conventions,
    datasets,
    errors,
    mirror,
    models,
    potentials,
    rules,
    symmetry,
    theory,
)
from ._integrate import (
    DenseOutput,
    IntegrateResult,
    IntegrationError,
    LevelEvent,
    NoetherTerms,
    integrate,
    noether_terms,
)
from ._scan import openmp_enabled, scan
from ._scan_integrate import IntegrateScanResult, scan_integrate
from ._scan_result import ScanResult, point_seed
from ._train import ContinuumBalance, TrainResult, continuum_balance, train
from ._version import __version__
from .errors import BudgetError, CallbackError, DivergenceWarning, NoetherWarning
from .rules import RuleState

__all__ = [
    # learning rules on potentials
    "train", "TrainResult", "RuleState", "continuum_balance", "ContinuumBalance",
    # grids
    "scan", "ScanResult", "point_seed", "openmp_enabled",
    "scan_integrate", "IntegrateScanResult",
    # continuous models
    "integrate", "IntegrateResult", "IntegrationError", "NoetherTerms", "noether_terms",
    "DenseOutput", "LevelEvent",
    # modules
    "audit", "charges", "conventions", "datasets", "errors", "mirror", "models",
    "potentials", "rules", "symmetry", "theory",
    # warnings and errors
    "DivergenceWarning", "NoetherWarning", "CallbackError", "BudgetError",
    "__version__",
]
