"""The training entry point's machinery: flags and YAML into one run config (config.py), and the run itself
(runner.py): DataModule + network + LightningModule + callbacks -> Trainer.fit / test. `train.py` calls `main`."""
from .config import UsageError, resolve_config
from .runner import main, run

__all__ = ["UsageError", "main", "resolve_config", "run"]
