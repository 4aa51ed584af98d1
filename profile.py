"""What does each attention cost as the sequence grows? The sequence-length sweep's command line.

    python profile.py                                    # every mechanism, cpu+gpu, n = 10 .. 10000
    python profile.py --devices cpu --attentions softmax,linformer,performer --seq-lens 128,512,2048
    python profile.py --mode fwd+bwd --dtype bf16 --causal --runs 20 --warmup 5 --threads 8
    python profile.py --opt linformer.k=128 --opt performer.features=128 --max-seconds-per-point 60
    python profile.py --resume results/sweep-20250101-120000   # finish a killed sweep (same config)
    python profile.py --compare-builtin                  # ours vs PyTorch built-ins (profiling/compare.py)
    python profile.py --breakdown MODEL                  # where a model's time goes (profiling/breakdown.py)

Output (default: a new results/sweep-YYYYmmdd-HHMMSS/, or --out DIR): results.jsonl (one line per
point, written as it finishes), results.csv, env.json, summary.md, and plots unless --no-plots. The
logic lives in profiling/ (sweep.py, report.py); this file only parses flags.

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


# ---------------------------------------------------------------------------------------------- the CLI
# (underscored names only: when imported, this namespace is the standard library's)

# flags each job reads (argparse dests); any other flag given with it would be ignored, so it is refused
_JOB_FLAGS = {
    "compare": ({"compare_builtin", "devices", "dtype", "runs", "warmup", "threads", "out"},
                "it times naive, torch_mha and softmax forward at fixed (batch, n, dim, heads) configurations"),
    "breakdown": ({"breakdown", "attentions", "seq_lens", "devices", "batch", "dim", "heads", "opt", "runs", "warmup",
                   "threads", "out", "no_plots"}, "it times one model's fp32 forward pass, once per sequence length"),
}
_OUTPUT_FILE = {"sweep": "results.jsonl", "compare": "compare_builtin.csv", "breakdown": "breakdown.csv"}
_JOB_FLAG = {"compare": "--compare-builtin", "breakdown": "--breakdown"}


def _build_parser(suppress: bool = False):
    """The flags; with `suppress`, defaults are left out, so parsing shows which flags were given."""
    import argparse
    import os

    class _Parser(argparse.ArgumentParser):
        def error(self, message):  # one line on stderr, exit 2 (argparse's default adds the usage)
            sys.stderr.write(f"profile.py: error: {message} (see --help)\n")
            sys.exit(2)

    class _Once:
        """A flag given twice is refused: argparse would keep the last value and drop the first unsaid."""

        def __call__(self, parser, namespace, values, option_string=None):
            if self.dest in parser.seen:
                shown = "" if values is None or isinstance(values, bool) or self.nargs == 0 else f" (again as {values!r})"
                parser.error(f"{option_string} is given twice{shown}; expected it once")
            parser.seen.add(self.dest)
            super().__call__(parser, namespace, values, option_string)

    class _Store(_Once, argparse._StoreAction):
        pass

    class _StoreTrue(_Once, argparse._StoreTrueAction):
        pass

    p = _Parser(
        prog="profile.py",
        description="Sequence-length sweep of the registered attention mechanisms: time, peak memory, FLOPs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.seen, p.flag_of = set(), {}
    for name in (None, "store"):
        p.register("action", name, _Store)
    p.register("action", "store_true", _StoreTrue)

    def add(*flags, default=None, **kw):
        action = p.add_argument(*flags, default=argparse.SUPPRESS if suppress else default, **kw)
        p.flag_of[action.dest] = flags[0]

    add("--attentions", default=None, help="comma-separated mechanisms (default: every registered one)")
    add("--devices", default="cpu,gpu", help="comma-separated: cpu, gpu (= cuda); a missing GPU is skipped with a warning")
    add("--seq-lens", default="10,100,1000,10000", help="comma-separated sequence lengths")
    add("--dim", type=int, default=512, help="model width")
    add("--heads", type=int, default=8, help="attention heads (must divide --dim)")
    add("--batch", type=int, default=1, help="batch size")
    add("--dtype", default="fp32", help="fp32 | bf16 | fp16 (module and input both cast)")
    add("--mode", default="fwd", help="fwd (no_grad, eval) | fwd+bwd (train, backward of out.sum())")
    add("--causal", action="store_true", default=False, help="causal attention (mechanisms that cannot are recorded as unsupported)")
    add("--runs", type=int, default=10, help="timed runs per point")
    add("--warmup", type=int, default=3, help="untimed warm-up runs per point")
    add("--max-seconds-per-point", dest="max_seconds", type=float, default=120.0, help="time budget per point; over it the point is recorded as timeout")
    add("--threads", type=int, default=os.cpu_count(), help="CPU threads (torch.set_num_threads), recorded with every point")
    add("--opt", action="append", default=[], metavar="NAME.KEY=VALUE", help="a mechanism option, e.g. linformer.k=64 (repeatable)")
    add("--out", default=None, metavar="DIR", help="output folder (default: a new results/sweep-YYYYmmdd-HHMMSS/)")
    add("--resume", default=None, metavar="DIR", help="finish the sweep in DIR: its saved config, overridden by flags given now; finished points are skipped")
    add("--no-plots", action="store_true", default=False, help="skip the plots")
    add("--compare-builtin", action="store_true", default=False, help="compare against PyTorch's built-in attention instead of sweeping")
    add("--breakdown", default=None, metavar="MODEL", help="break a model's time down by component instead of sweeping")
    return p


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"profile.py: error: {message}\n")
    return code


def _shown(dest: str, args, flag_of: dict) -> str:
    """A given flag as the user wrote it: `--mode fwd+bwd`, `--causal`, `--opt linformer.k=8`."""
    value = getattr(args, dest)
    if isinstance(value, bool):
        return flag_of[dest]
    if isinstance(value, list):
        value = " ".join(value)
    return f"{flag_of[dest]} {value}"


def _writable(out, label: str) -> str:
    """Why no folder can be made or written at `out`, or "" (a probe folder is made and removed)."""
    import tempfile
    from pathlib import Path

    out = Path(out)
    parent = out if out.exists() else next((a for a in out.absolute().parents if a.exists()), None)
    if parent is None or not parent.is_dir():
        return f"{label} {out} cannot be created: {parent} is not a folder; expected a folder path"
    try:
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as e:
        return f"{label} {out} cannot be written: creating a folder in {parent} failed ({e.strerror or e}); expected a folder you can write to"
    return ""


def _check_out_dir(out, label: str, job: str) -> str:
    """Why `out` cannot take a new run of `job`, or "" (nothing is created)."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"{label} {out} exists and is not a folder; expected a folder to write the results into"
    held = out / _OUTPUT_FILE[job]
    if held.exists():
        hint = f"continue it with --resume {out}" if job == "sweep" else "move it away"
        return f"{label} {out} already holds {held.name}; {hint} or choose another folder"
    return _writable(out, label)


def _config(args, saved: dict, given: set):
    """SweepConfig from the flags; with --resume, the saved config where a flag was not given."""
    from profiling.sweep import SweepConfig, parse_attentions, parse_devices, parse_opts, parse_seq_lens

    def pick(name, parsed):
        return saved[name] if name in saved and name not in given else parsed()

    return SweepConfig(
        attentions=pick("attentions", lambda: parse_attentions(args.attentions)),
        devices=pick("devices", lambda: parse_devices(args.devices)),
        seq_lens=pick("seq_lens", lambda: parse_seq_lens(args.seq_lens)),
        dim=pick("dim", lambda: args.dim),
        heads=pick("heads", lambda: args.heads),
        batch=pick("batch", lambda: args.batch),
        dtype=pick("dtype", lambda: args.dtype),
        mode=pick("mode", lambda: args.mode),
        causal=pick("causal", lambda: args.causal),
        runs=pick("runs", lambda: args.runs),
        warmup=pick("warmup", lambda: args.warmup),
        max_seconds=pick("max_seconds", lambda: args.max_seconds),
        threads=pick("threads", lambda: args.threads),
        options=pick("options", lambda: parse_opts(args.opt)),
    )


def _breakdown_models() -> dict:
    """Models `--breakdown` can take: name -> builder returning a profiling.breakdown.BreakdownTarget.
    They are task networks, a floor above profiling/, so this top-level file wires them in."""
    from models.encoder import breakdown_target

    return {"encoder": breakdown_target}


def _request(argv):
    """(args, job, config, out_dir, resuming) from the command line, or the one sentence saying why not.
    Everything is checked here, before any folder is made."""
    import json
    from pathlib import Path

    from profiling import sweep as sw

    parser = _build_parser()
    args = parser.parse_args(argv)
    given = set(vars(_build_parser(suppress=True).parse_args(argv)))
    if args.compare_builtin and args.breakdown is not None:
        return f"--compare-builtin and --breakdown {args.breakdown} are two different jobs; expected one of them per run"
    job = "compare" if args.compare_builtin else ("breakdown" if args.breakdown is not None else "sweep")
    if job in _JOB_FLAGS:
        used, what = _JOB_FLAGS[job]
        unused = sorted(given - used, key=list(parser.flag_of).index)
        if unused:
            return f"{_shown(unused[0], args, parser.flag_of)} has no effect with {_JOB_FLAG[job]} ({what}); expected it without that flag"
    if job == "breakdown" and args.breakdown not in _breakdown_models():
        return f"--breakdown {args.breakdown!r} is not a model it knows; expected one of: {', '.join(sorted(_breakdown_models()))}"

    saved: dict = {}
    resume = None
    if args.resume is not None:
        resume = Path(args.resume)
        if args.out is not None:
            return f"--resume {resume} writes into {resume}, so --out {args.out} would be ignored; expected --resume alone"
        if not (resume / "results.jsonl").is_file():
            return f"--resume {resume} holds no results.jsonl; expected the folder of an earlier sweep"
        try:
            saved = json.loads((resume / "env.json").read_text())["config"]
            if not isinstance(saved, dict):
                raise ValueError(saved)
        except (OSError, ValueError, KeyError, TypeError):
            return f"--resume {resume} has no readable env.json with the sweep's config; expected the folder of an earlier sweep, with the env.json profile.py wrote"
    try:
        cfg = _config(args, saved, {{"opt": "options"}.get(g, g) for g in given})
        if job == "breakdown" and "attentions" not in given:
            cfg.attentions = ["softmax"]  # the model's mechanism when none is named (not every registered one)
        cfg = sw.validate(cfg)
    except sw.ConfigError as e:
        return str(e)
    except TypeError as e:  # a saved config with fields this version does not know
        return f"--resume {resume}: its env.json holds a config this version cannot read ({e}); expected one written by this profile.py"
    if job == "breakdown":
        if len(cfg.attentions) != 1:
            return f"--attentions {args.attentions} names {len(cfg.attentions)} mechanisms, but --breakdown breaks down one model; expected one mechanism"
        if "devices" in given and len(cfg.devices) != 1:
            return f"--devices {args.devices} names {len(cfg.devices)} devices, but --breakdown runs on one; expected one device"
    if not sw.available_devices(cfg, warn=lambda message: None):
        shown = args.devices if "devices" in given else ",".join(cfg.devices)
        return f"--devices {shown}: this machine has no GPU (torch.cuda.is_available() is False); expected cpu, or a machine with a GPU"

    if resume is not None:
        out_dir, problem = resume, _writable(resume, "--resume")
    elif args.out is not None:
        out_dir = Path(args.out)
        problem = _check_out_dir(out_dir, "--out", job) if str(args.out).strip() else "--out is empty; expected a folder path"
    else:
        out_dir = sw.default_out_dir(prefix=job)
        problem = _check_out_dir(out_dir, "the default output folder", job)
    if problem:
        return problem
    args.config = cfg  # the validated config, for the jobs below
    return args, job, cfg, out_dir, resume is not None


def _cli_main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    request = _request(argv)
    if isinstance(request, str):
        return _fail(request)
    args, job, cfg, out_dir, resuming = request

    from profiling import sweep as sw

    try:
        if job == "compare":  # out_dir is made when results are written
            from profiling.compare import run_compare_builtin

            run_compare_builtin(args, out_dir)
            return 0
        if job == "breakdown":
            from profiling.breakdown import run_breakdown

            run_breakdown(args, out_dir, models=_breakdown_models())
            return 0
        rows = sw.run_sweep(cfg, out_dir, resume=resuming, command=[sys.executable, *sys.argv])
    except KeyboardInterrupt:
        kept = f"the points measured so far are in {out_dir}; continue with --resume {out_dir}" if job == "sweep" else "nothing was written"
        return _fail(f"interrupted; {kept}", code=130)
    except Exception as e:  # noqa: BLE001 - sorted: a disk or an allocation that fails ends the run in one sentence
        if not (isinstance(e, OSError) or sw.is_oom(e)):
            raise
        kept = f"what was written before is kept in {out_dir}" if out_dir.exists() else "nothing was written"
        return _fail(f"the run stopped: {sw.one_line(e)}; {kept}", code=1)
    from profiling.report import print_summary

    print_summary(rows)
    print(f"results: {out_dir}/ (results.jsonl, results.csv, env.json, summary.md)")
    if not args.no_plots:
        from profiling.plots import plot_sweep

        try:
            paths = plot_sweep(rows, out_dir)
        except Exception as e:  # noqa: BLE001 - the results are already on disk
            print(f"plotting failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"plots: {len(paths)} files in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(_cli_main())
