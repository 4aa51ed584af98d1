"""Train a task model with a chosen attention mechanism (docs/training.md).

    python train.py --model vit --attention linformer                       # CIFAR-10, the default recipe
    python train.py --model wikitext --attention linear --ckpt-path last --generate "The history of"
    python train.py --model vit --attention all --max-steps 300             # the comparison study

Runs land in lightning_logs/<model>-<attention>-<data source>/version_N/; the machinery is in training/."""
import sys

from training.console import announce_if_slow
from training.flags import help_requested, print_help

if __name__ == "__main__":
    if help_requested(sys.argv[1:]):
        sys.exit(print_help(sys.argv[1:]))  # before torch and Lightning are imported: instant
    # seconds on a cold or busy machine; said at a terminal only, so that bad input stays one line in a pipe
    with announce_if_slow("loading PyTorch, Lightning, the models and the data modules", terminal_only=True):
        from training.cli import main

    sys.exit(main())
