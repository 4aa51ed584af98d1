"""What does each attention cost as the sequence grows? The sequence-length sweep's command line.

    python profile.py                                    # every mechanism, cpu+gpu, n = 10 .. 10000
    python profile.py --devices cpu --attentions softmax,linformer,performer --seq-lens 128,512,2048
    python profile.py --mode fwd+bwd --dtype bf16 --causal --runs 20 --warmup 5 --threads 8
    python profile.py --mode decode --attentions softmax,linear,retention --seq-lens 256,1024,4096   # per generated token
    python profile.py --opt linformer.k=128 --opt performer.features=128 --max-seconds-per-point 60
    python profile.py --resume results/sweep-20250101-120000   # finish a killed sweep (same config)
    python profile.py --compare-builtin                  # ours vs PyTorch built-ins (profiling/compare.py)
    python profile.py --breakdown MODEL                  # where a model's time goes (profiling/breakdown.py)

Output (default: a new results/sweep-YYYYmmdd-HHMMSS/, or --out DIR): results.jsonl (one line per
point, written as it finishes), results.csv, env.json, summary.md, and plots unless --no-plots. The
flags, their checks and the jobs live in profiling/ (cli.py); this file only hands the command line over.

The name: a top-level `profile.py` shadows the standard library's `profile`, which `cProfile`
imports at import time (and `import lightning` and `torch._dynamo` import cProfile). So this file
is the CLI only when run; when imported it loads the standard library's profile.py and becomes that
module, so `import profile`, `import cProfile`, `import lightning` and
`python -m cProfile profile.py ...` keep working from the repository root.
"""
import sys

if __name__ != "__main__":  # imported as `profile`: become the standard library module (no project imports here)
    import importlib.util as _ilu
    import os as _os
    import sysconfig as _sysconfig

    _path = _os.path.join(_sysconfig.get_paths()["stdlib"], "profile.py")
    _spec = _ilu.spec_from_file_location(__name__, _path)
    _std = _ilu.module_from_spec(_spec)
    sys.modules[__name__] = _std  # the import system returns what sys.modules holds once this file ends
    _spec.loader.exec_module(_std)
    globals().update({k: v for k, v in vars(_std).items()})
    del _ilu, _os, _sysconfig, _path, _spec


if __name__ == "__main__":
    from profiling.cli import main

    sys.exit(main())
