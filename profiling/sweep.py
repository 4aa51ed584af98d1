"""The sequence-length sweep: every point (attention x device x seq_len) measured once, each appended to
results.jsonl the moment it finishes; a killed sweep resumes where it stopped. At the end results.csv,
env.json and summary.md. `python profile.py` runs it; in code:

    cfg = validate(SweepConfig(attentions=["softmax", "linformer"], devices=["cpu"], seq_lens=[128, 1024]))
    rows = run_sweep(cfg, Path("results/my-sweep"))

Its pieces: sweep_config.py (what to measure), sweep_point.py (one point), budget.py (its time budget),
results.py (the files), environment.py (env.json), progress.py, report.py (summary.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, List, Optional

import torch

from utils.io import write_json

from .environment import environment, now
from .errors import is_oom, one_line
from .machine import load_average
from .progress import SweepProgress
from .report import write_summary
from .results import FINISHED, append_point, latest_by_key, read_points, repair_jsonl, write_csv
from .sweep_config import ConfigError, SweepConfig, validate
from .sweep_point import PointSpec, run_point
from .timing import Clock

# the sweep's API in one import (training/ builds and runs sweeps with these)
__all__ = ["ConfigError", "SweepConfig", "available_devices", "is_oom", "one_line", "plan", "run_sweep", "validate"]


def plan(cfg: SweepConfig, devices: Optional[List[str]] = None) -> List[PointSpec]:
    """Every point, device by device, mechanism by mechanism, shortest sequence first."""
    return [
        PointSpec(name, dev, n)
        for dev in (devices if devices is not None else cfg.devices)
        for name in cfg.attentions
        for n in sorted(cfg.seq_lens)
    ]


def available_devices(cfg: SweepConfig, warn: Callable[[str], None]) -> List[str]:
    out = []
    for dev in cfg.devices:
        if dev == "cuda" and not torch.cuda.is_available():
            warn("warning: a GPU was requested but torch.cuda.is_available() is False on this machine; running the CPU points only")
            continue
        out.append(dev)
    return out


def _previous_sessions(env_path: Path) -> Optional[list]:
    """The sessions of an earlier env.json (a resumed sweep keeps their history), or None."""
    try:
        prev = json.loads(env_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return prev.get("previous_sessions", []) + [{k: prev.get(k) for k in ("command", "start_time", "end_time", "git_commit", "config")}]


def run_sweep(
    cfg: SweepConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    command: Optional[List[str]] = None,
    warn: Optional[Callable[[str], None]] = None,
    stream=None,
    clock: Optional[Clock] = None,
) -> List[dict]:
    """Run (or finish) a sweep into `out_dir`; returns the flat rows of every point in results.jsonl.
    `clock`: the per-point budget's (see budget.Budget)."""
    validate(cfg)
    out_dir = Path(out_dir)
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    devices = available_devices(cfg, warn)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "results.jsonl"
    env_path = out_dir / "env.json"

    env = environment(cfg, command)
    env["start_time"] = now()
    env["end_time"] = None
    if resume and env_path.exists():
        sessions = _previous_sessions(env_path)
        if sessions is not None:
            env["previous_sessions"] = sessions
    write_json(env_path, env)

    done = set()
    if resume:
        repair_jsonl(jsonl)
        done = {k for k, p in latest_by_key(read_points(jsonl)).items() if p.get("status") in FINISHED}
    todo = [s for s in plan(cfg, devices) if s.key(cfg) not in done]
    skipped = len(plan(cfg, devices)) - len(todo)

    try:
        with SweepProgress(len(todo), stream) as progress:
            if skipped:
                progress.log(f"resuming {out_dir}: {skipped} finished point(s) kept, {len(todo)} to measure")
            for spec in todo:
                progress.start(spec)
                point = run_point(spec, cfg, clock=clock)
                append_point(jsonl, point)
                progress.finish(spec, point)
    finally:  # also after Ctrl-C: the table of what was measured so far (resume for the rest)
        points = list(latest_by_key(read_points(jsonl)).values())
        rows = write_csv(out_dir / "results.csv", points)
        write_summary(rows, out_dir)
        env["end_time"] = now()
        env["load_average_at_end"] = load_average()
        write_json(env_path, env)
    return rows
