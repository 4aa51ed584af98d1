"""Lightning callbacks used by train.py."""
from .checkpoint import LAST, LastCheckpoint, TrainingInterrupted, truncate_events
from .efficiency import EfficiencyMonitor
from .finite_loss import FiniteLossGuard, NonFiniteLossError

__all__ = ["LAST", "EfficiencyMonitor", "FiniteLossGuard", "LastCheckpoint", "NonFiniteLossError", "TrainingInterrupted",
           "truncate_events"]
