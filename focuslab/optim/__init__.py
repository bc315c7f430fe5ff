"""Torch optimizers: ``from focuslab.optim import FOCUS, Signum`` (the FOCUS paper's), and Lion and
SGDW, the torch side of focuslab's built-in ``lion`` and ``sgd`` rules."""
from .elementwise import SGDW, Lion
from .focus import FOCUS, Signum

__all__ = ["FOCUS", "Signum", "Lion", "SGDW"]
