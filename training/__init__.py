"""The wiring under train.py: the task registry (tasks.py), flags and YAML into one run config (config.py),
one run (runner.py), the comparison study and its report (study.py, study_report.py), the CLI (cli.py)."""
from .cli import main
from .config import UsageError, resolve_config
from .runner import run

__all__ = ["UsageError", "main", "resolve_config", "run"]
