"""Lightning callbacks used by train.py."""
from .efficiency import EfficiencyMonitor
from .finite_loss import FiniteLossGuard, NonFiniteLossError

__all__ = ["EfficiencyMonitor", "FiniteLossGuard", "NonFiniteLossError"]
