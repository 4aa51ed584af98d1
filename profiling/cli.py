"""profile.py's command line: its flags, every check of a request before any folder is made (a bad one is one
sentence and exit code 2), and the three jobs it runs (the sweep, --compare-builtin, --breakdown).

    python profile.py --devices cpu --attentions softmax,linformer --seq-lens 128,1024
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Union

from .breakdown import MODELS as BREAKDOWN_MODELS
from .breakdown import run_breakdown
from .compare import run_compare_builtin
from .errors import is_oom, one_line
from .plots import plot_sweep
from .report import print_summary
from .sweep import available_devices, run_sweep
from .sweep_config import (
    ConfigError,
    SweepConfig,
    parse_attentions,
    parse_devices,
    parse_opts,
    parse_seq_lens,
    validate,
)

PROG = "profile.py"
# flags each job reads (argparse dests); any other flag given with it would be ignored, so it is refused
JOB_FLAGS = {
    "compare": ({"compare_builtin", "devices", "dtype", "runs", "warmup", "threads", "out"},
                "it times naive, torch_mha and softmax forward at fixed (batch, n, dim, heads) configurations"),
    "breakdown": ({"breakdown", "attentions", "seq_lens", "devices", "batch", "dim", "heads", "opt", "runs", "warmup",
                   "threads", "out", "no_plots"}, "it times one model's fp32 forward pass, once per sequence length"),
}
OUTPUT_FILE = {"sweep": "results.jsonl", "compare": "compare_builtin.csv", "breakdown": "breakdown.csv"}
JOB_FLAG = {"compare": "--compare-builtin", "breakdown": "--breakdown"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse's default adds the usage)
        sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
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


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" only where it says something: not when the help already names its default, nor
    for a default of None, False or [] (an unset flag)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "(default" in help_text or action.default is None or action.default is False or action.default == []:
            return help_text
        return super()._get_help_string(action)


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The flags; with `suppress`, defaults are left out, so parsing shows which flags were given."""
    p = _Parser(
        prog=PROG,
        description="Sequence-length sweep of the registered attention mechanisms: time, peak memory, FLOPs "
                    "(with --mode decode: time per generated token and cache/state size against the context length).",
        formatter_class=_DefaultsHelp,
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
    add("--seq-lens", default="10,100,1000,10000", help="comma-separated sequence lengths (the context lengths with --mode decode)")
    add("--dim", type=int, default=512, help="model width")
    add("--heads", type=int, default=8, help="attention heads (must divide --dim)")
    add("--batch", type=int, default=1, help="batch size")
    add("--dtype", default="fp32", help="fp32 | bf16 | fp16 (module and input both cast)")
    add("--mode", default="fwd", help="fwd (no_grad, eval) | fwd+bwd (train, backward of out.sum()) | decode (incremental decoding, "
        "causal: time per generated token and cache/state bytes after a context of each --seq-lens; mechanisms without decoding are skipped with the reason)")
    add("--causal", action="store_true", default=False, help="causal attention (mechanisms that cannot are recorded as unsupported)")
    add("--runs", type=int, default=10, help="timed runs per point")
    add("--warmup", type=int, default=3, help="untimed warm-up runs per point")
    add("--max-seconds-per-point", dest="max_seconds", type=float, default=120.0, help="time budget per point; over it the point is recorded as timeout")
    add("--target-seconds-per-point", dest="target_seconds", type=float, default=20.0,
        help="a slow point's warm-up stops after a quarter of this and its timed runs after the rest, once 3 runs are "
        "done (fewer runs, wider error bars, recorded); 0 = always every run")
    add("--threads", type=int, default=os.cpu_count(), help="CPU threads (torch.set_num_threads), recorded with every point "
        "(default: this machine's cores, os.cpu_count())")
    add("--opt", action="append", default=[], metavar="NAME.KEY=VALUE", help="a mechanism option, e.g. linformer.k=64 (repeatable)")
    add("--out", default=None, metavar="DIR", help="output folder (default: a new results/sweep-YYYYmmdd-HHMMSS/)")
    add("--resume", default=None, metavar="DIR", help="finish the sweep in DIR: its saved config, overridden by flags given now; finished points are skipped")
    add("--no-plots", action="store_true", default=False, help="skip the plots")
    add("--compare-builtin", action="store_true", default=False, help="compare against PyTorch's built-in attention instead of sweeping")
    add("--breakdown", default=None, metavar="MODEL", help="break a model's time down by component instead of sweeping")
    return p


def default_out_dir(root: Optional[Path] = None, prefix: str = "sweep") -> Path:
    """A new results/<prefix>-YYYYmmdd-HHMMSS/ under the repository root (not created here)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent / "results"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = root / f"{prefix}-{stamp}"
    i = 2
    while out.exists():
        out = root / f"{prefix}-{stamp}-{i}"
        i += 1
    return out


# ---------------------------------------------------------------------------------------------- the request


@dataclass
class Request:
    args: argparse.Namespace  # the flags, with the validated SweepConfig as args.config
    job: str  # sweep | compare | breakdown
    config: SweepConfig
    out_dir: Path
    resuming: bool


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
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"{label} {out} exists and is not a folder; expected a folder to write the results into"
    held = out / OUTPUT_FILE[job]
    if held.exists():
        hint = f"continue it with --resume {out}" if job == "sweep" else "move it away"
        return f"{label} {out} already holds {held.name}; {hint} or choose another folder"
    return _writable(out, label)


def _config(args, saved: dict, given: set) -> SweepConfig:
    """SweepConfig from the flags; with --resume, the saved config where a flag was not given."""

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
        target_seconds=pick("target_seconds", lambda: args.target_seconds),
        threads=pick("threads", lambda: args.threads),
        options=pick("options", lambda: parse_opts(args.opt)),
    )


def _saved_config(resume: Path, out) -> Union[dict, str]:
    """The config an earlier sweep saved in its env.json, or why it cannot be resumed."""
    if out is not None:
        return f"--resume {resume} writes into {resume}, so --out {out} would be ignored; expected --resume alone"
    if not (resume / "results.jsonl").is_file():
        return f"--resume {resume} holds no results.jsonl; expected the folder of an earlier sweep"
    try:
        saved = json.loads((resume / "env.json").read_text())["config"]
        if not isinstance(saved, dict):
            raise ValueError(saved)
    except (OSError, ValueError, KeyError, TypeError):
        return f"--resume {resume} has no readable env.json with the sweep's config; expected the folder of an earlier sweep, with the env.json profile.py wrote"
    return saved


def request(argv: List[str]) -> Union[Request, str]:
    """The request on the command line, or the one sentence saying why not. Everything is checked here,
    before any folder is made."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = set(vars(build_parser(suppress=True).parse_args(argv)))
    if args.compare_builtin and args.breakdown is not None:
        return f"--compare-builtin and --breakdown {args.breakdown} are two different jobs; expected one of them per run"
    job = "compare" if args.compare_builtin else ("breakdown" if args.breakdown is not None else "sweep")
    if job in JOB_FLAGS:
        used, what = JOB_FLAGS[job]
        unused = sorted(given - used, key=list(parser.flag_of).index)
        if unused:
            return f"{_shown(unused[0], args, parser.flag_of)} has no effect with {JOB_FLAG[job]} ({what}); expected it without that flag"
    if job == "breakdown" and args.breakdown not in BREAKDOWN_MODELS:
        return f"--breakdown {args.breakdown!r} is not a model it knows; expected one of: {', '.join(sorted(BREAKDOWN_MODELS))}"

    saved: dict = {}
    resume = Path(args.resume) if args.resume is not None else None
    if resume is not None:
        saved = _saved_config(resume, args.out)
        if isinstance(saved, str):
            return saved
    try:
        cfg = _config(args, saved, {{"opt": "options"}.get(g, g) for g in given})
        if job == "breakdown" and "attentions" not in given:
            cfg.attentions = ["softmax"]  # the model's mechanism when none is named (not every registered one)
        cfg = validate(cfg)
    except ConfigError as e:
        return str(e)
    except TypeError as e:  # a saved config with fields this version does not know
        return f"--resume {resume}: its env.json holds a config this version cannot read ({e}); expected one written by this profile.py"
    if job == "breakdown":
        if len(cfg.attentions) != 1:
            return f"--attentions {args.attentions} names {len(cfg.attentions)} mechanisms, but --breakdown breaks down one model; expected one mechanism"
        if "devices" in given and len(cfg.devices) != 1:
            return f"--devices {args.devices} names {len(cfg.devices)} devices, but --breakdown runs on one; expected one device"
    if not available_devices(cfg, warn=lambda message: None):
        shown = args.devices if "devices" in given else ",".join(cfg.devices)
        return f"--devices {shown}: this machine has no GPU (torch.cuda.is_available() is False); expected cpu, or a machine with a GPU"

    if resume is not None:
        out_dir, problem = resume, _writable(resume, "--resume")
    elif args.out is not None:
        out_dir = Path(args.out)
        problem = _check_out_dir(out_dir, "--out", job) if str(args.out).strip() else "--out is empty; expected a folder path"
    else:
        out_dir = default_out_dir(prefix=job)
        problem = _check_out_dir(out_dir, "the default output folder", job)
    if problem:
        return problem
    args.config = cfg  # the validated config, for the jobs
    return Request(args, job, cfg, out_dir, resume is not None)


# ---------------------------------------------------------------------------------------------- running it


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    req = request(argv)
    if isinstance(req, str):
        return _fail(req)
    out_dir = req.out_dir
    try:
        if req.job == "compare":  # out_dir is made when results are written
            run_compare_builtin(req.args, out_dir)
            return 0
        if req.job == "breakdown":
            run_breakdown(req.args, out_dir)
            return 0
        rows = run_sweep(req.config, out_dir, resume=req.resuming, command=[sys.executable, *sys.argv])
    except KeyboardInterrupt:
        kept = f"the points measured so far are in {out_dir}; continue with --resume {out_dir}" if req.job == "sweep" else "nothing was written"
        return _fail(f"interrupted; {kept}", code=130)
    except Exception as e:  # noqa: BLE001 - sorted: a disk or an allocation that fails ends the run in one sentence
        if not (isinstance(e, OSError) or is_oom(e)):
            raise
        kept = f"what was written before is kept in {out_dir}" if out_dir.exists() else "nothing was written"
        return _fail(f"the run stopped: {one_line(e)}; {kept}", code=1)
    print_summary(rows)
    print(f"results: {out_dir}/ (results.jsonl, results.csv, env.json, summary.md)")
    if not req.args.no_plots:
        try:
            paths = plot_sweep(rows, out_dir)
        except Exception as e:  # noqa: BLE001 - the results are already on disk
            print(f"plotting failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"plots: {len(paths)} files in {out_dir}/")
    return 0
