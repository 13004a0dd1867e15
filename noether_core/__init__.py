"""noether_core: Noether's learning dynamics, computable, fast and checked.

Learning rules as compiled loops matching ``torch.optim`` (``rules``, ``train``), built-in
potentials with known symmetries (``potentials``), Noether charges and exact discrete
balance laws (``charges``), integrators of the continuous Lagrangian models (``models``,
``integrate``), the closed forms of the paper's Sec. 4 (``theory``), and the conversions
between discrete rules and continuous models (``conventions``).
"""
from . import (charges, conventions, datasets, errors, mirror, models, potentials, rules,
               symmetry, theory)
from ._integrate import IntegrateResult, IntegrationError, NoetherTerms, integrate, noether_terms
from ._scan_integrate import IntegrateScanResult, scan_integrate
from ._train import TrainResult, train
from ._scan import scan, openmp_enabled
from ._scan_result import ScanResult, point_seed
from .errors import DivergenceWarning, NoetherWarning
from .rules import RuleState

__version__ = "0.1.0"

__all__ = ["train", "TrainResult", "RuleState", "potentials", "rules", "conventions", "charges",
           "mirror", "symmetry", "theory", "datasets", "integrate", "IntegrateResult",
           "IntegrationError", "NoetherTerms", "noether_terms", "models", "scan_integrate",
           "IntegrateScanResult", "errors", "DivergenceWarning",
           "NoetherWarning",
           "__version__"]
