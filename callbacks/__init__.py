"""Lightning callbacks used by train.py."""
from .finite_loss import FiniteLossGuard, NonFiniteLossError

__all__ = ["FiniteLossGuard", "NonFiniteLossError"]
