"""noether_core: Noether's learning dynamics, computable, fast and checked.

Learning rules as compiled loops matching ``torch.optim`` (``rules``), built-in potentials
with known symmetries (``potentials``), and the conversions between discrete rules and the
continuous Lagrangian models of Tanaka & Kunin (``conventions``).
"""
from . import charges, conventions, errors, mirror, potentials, rules, symmetry
from . import models
from .integrate import integrate
from ._train import TrainResult, train
from .errors import DivergenceWarning, NoetherWarning
from .rules import RuleState

__version__ = "0.1.0"

__all__ = ["train", "TrainResult", "RuleState", "potentials", "rules", "conventions", "charges",
           "mirror",
           "symmetry", "errors", "integrate", "models", "DivergenceWarning", "NoetherWarning",
           "__version__"]
