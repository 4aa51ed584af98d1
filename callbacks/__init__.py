"""Lightning callbacks used by train.py."""
from .checkpoint import LAST, LastCheckpoint, TrainingInterrupted, truncate_events
from .efficiency import EFFICIENCY_FILE, EfficiencyMonitor
from .finite_loss import FiniteLossGuard, NonFiniteLossError
from .progress import BudgetProgressBar
from .tensorboard_view import TensorBoardView, log_run_summary

__all__ = ["EFFICIENCY_FILE", "LAST", "BudgetProgressBar", "EfficiencyMonitor", "FiniteLossGuard", "LastCheckpoint",
           "NonFiniteLossError", "TensorBoardView", "TrainingInterrupted", "log_run_summary", "truncate_events"]
