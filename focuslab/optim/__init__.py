"""Torch optimizers from the FOCUS paper: ``from focuslab.optim import FOCUS, Signum``."""
from .focus import FOCUS, Signum

__all__ = ["FOCUS", "Signum"]
