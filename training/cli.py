"""`python train.py ...`: flags -> one run (runner.py) or a comparison study (study.py), and every error a
user can meet -> one line and an exit code (2 bad input, 1 a failed run, 128 + N stopped by signal N)."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from callbacks import NonFiniteLossError, TrainingInterrupted
from datamodules import DataUnavailableError
from training.config import UsageError, build_parser, is_study
from training.flags import help_requested, print_help
from training.runner import RunFailed, run_args
from training.study import run_study

EXIT_USAGE = 2
EXIT_FAILED = 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    if help_requested(sys.argv[1:] if argv is None else argv):
        return print_help(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if is_study(args.attention):
            run_study(args, list(sys.argv[1:] if argv is None else argv))
        else:
            run_args(args)
    except (UsageError, DataUnavailableError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (NonFiniteLossError, RunFailed) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingInterrupted as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for a process ended by a signal
    return 0
