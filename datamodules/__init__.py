"""Lightning DataModules for the task models: real loaders that also work offline from local copies
in the official layouts, plus synthetic stand-ins for tests. See common.py for source selection."""
from .common import DATA_SOURCES, DataUnavailableError, SourcedDataModule, default_cache_dir, seeded_split

__all__ = ["DATA_SOURCES", "DataUnavailableError", "SourcedDataModule", "default_cache_dir", "seeded_split"]
