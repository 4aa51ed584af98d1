"""The wiring under train.py: the tasks' recipes (recipes.py) and registry (tasks.py), the flags (flags.py) and
flags + YAML into one run config (config.py), one run (runner.py), what it prints (console.py), the comparison
study and its report (study.py, study_report.py), the CLI (cli.py). Importing this package imports nothing
else, so that `train.py --help` (flags.py) needs neither torch nor Lightning."""
