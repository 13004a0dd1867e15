"""noether_core: Noether's learning dynamics, computable, fast and checked.

Learning rules as compiled loops matching ``torch.optim`` (``rules``), built-in potentials
with known symmetries (``potentials``), and the conversions between discrete rules and the
continuous Lagrangian models of Tanaka & Kunin (``conventions``).
"""
from . import conventions, datasets, errors, potentials, rules, symmetry
from ._train import TrainResult, train
from .errors import DivergenceWarning, NoetherWarning
from .rules import RuleState

__version__ = "0.1.0"

__all__ = ["train", "TrainResult", "RuleState", "potentials", "rules", "conventions",
           "symmetry", "errors", "DivergenceWarning", "NoetherWarning", "__version__"]
