"""The comparison study: every mechanism a task supports, trained with one recipe, seed and budget, then
accuracy set against latency, memory and FLOPs in one report (docs/study.md).

    python train.py --model vit --attention all --max-steps 300 --seeds 3
    python train.py --model wikitext --attention softmax,performer,linear --attention-opt performer.features=64

A re-run skips finished runs and resumes stopped ones; failures are recorded and the others go on."""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from callbacks import LAST, TrainingInterrupted
from models.attention import list_attentions
from profiling import sweep as sw
from profiling.machine import cpu_model
from profiling.plots import plot_sweep
from training.config import ALL, UsageError, resolve_config
from training.runner import FAILED_FILE, run_args
from training.study_report import write_report
from training.tasks import get_task
from utils.io import write_json

STUDY_FILE = "study.json"
# settings that do not change what a run computes: a finished run with other values still counts
IGNORED_KEYS = {"progress_bar", "num_workers", "cache_dir", "data_dir", "profiler", "source_used", "num_classes",
                "mean", "std"}


def log(message: str) -> None:
    print(f"[study] {message}", flush=True)


def scoped_options(items: List[str], names: List[str]) -> Dict[str, List[str]]:
    """["linformer.k=32", ...] -> {"linformer": ["k=32"]}; an unscoped option is an error in a study."""
    out: Dict[str, List[str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        name, dot, key = head.partition(".")
        if not sep or not dot or not key.strip():
            raise UsageError(f"--attention-opt {item!r}: in a study every option names its mechanism, "
                             f"NAME.KEY=VALUE (e.g. linformer.k=32)")
        if name.strip() not in names:
            raise UsageError(f"--attention-opt {item!r} names unknown attention {name.strip()!r}; known: {', '.join(names)}")
        out.setdefault(name.strip(), []).append(f"{key.strip()}={value}")
    return out


def run_args_for(args: argparse.Namespace, attention: str, seed: int, options: List[str]) -> argparse.Namespace:
    a = copy.copy(args)
    a.attention, a.seed, a.attention_opt = attention, seed, list(options)
    a.seeds, a.study_dir = 1, None
    return a


def plan(args: argparse.Namespace) -> Tuple[Any, List[Dict[str, Any]], List[Dict[str, str]]]:
    """(task, runs to do, skipped mechanisms with reasons). Each run: attention, seed, args, config."""
    if args.model is None:
        raise UsageError("--attention all needs --model (the task whose mechanisms are compared)")
    try:
        task = get_task(args.model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not task.uses_attention:
        raise UsageError(f"--model {args.model} has no attention layer, so there is nothing to compare; "
                         f"train it alone (train.py --model {args.model})")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    for flag, value in (("--ckpt-path", args.ckpt_path), ("--generate", args.generate), ("--fast-dev-run", args.fast_dev_run)):
        if value:
            raise UsageError(f"{flag} does not apply to a study (--attention all); each run trains from scratch and is kept")
    if args.efficiency_callbacks is False:
        raise UsageError("a study reads each run's efficiency.json; leave out --no-efficiency-callbacks")
    known = list_attentions()
    if args.attention == ALL:
        names = known
    else:
        names = list(dict.fromkeys(n.strip() for n in args.attention.split(",") if n.strip()))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"--attention {args.attention}: unknown attention {', '.join(unknown)}; known: {', '.join(known)}")
    opts = scoped_options(args.attention_opt, known)
    if args.seed is not None:
        base_seed = args.seed
    else:  # the YAML file's or the recipe's seed
        probe = run_args_for(args, "softmax", 0, [])
        probe.seed = None
        base_seed = resolve_config(probe)["seed"]
    runs, skipped = [], []
    for name in names:
        for i in range(args.seeds):
            a = run_args_for(args, name, base_seed + i, opts.get(name, []))
            try:
                cfg = resolve_config(a)
            except UsageError as e:
                if i == 0:
                    skipped.append({"attention": name, "reason": str(e)})
                break
            runs.append({"attention": name, "seed": base_seed + i, "args": a, "config": cfg})
    if not runs:
        raise UsageError(f"--model {args.model}: no mechanism applies ({'; '.join(s['reason'] for s in skipped)})")
    return task, runs, skipped


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def find_finished(logdir: Path, cfg: Dict[str, Any]) -> Optional[Path]:
    """The newest version folder under logdir whose results.json holds this config (ignoring IGNORED_KEYS)."""
    want = {k: v for k, v in _plain(cfg).items() if k not in IGNORED_KEYS}
    found = []
    for results in logdir.glob(f"{cfg['model']}-{cfg['attention']}-*/version_*/results.json"):
        try:
            saved = json.loads(results.read_text()).get("config") or {}
        except (OSError, ValueError):
            continue
        if all(saved.get(k) == v for k, v in want.items()):
            found.append(results.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_unfinished(logdir: Path, cfg: Dict[str, Any]) -> Optional[Path]:
    """The newest version folder of this config that a killed or interrupted run left behind: its
    hparams.yaml holds the config, but it has no results.json and is not marked failed (failed.json)."""
    want = {k: v for k, v in _plain(cfg).items() if k not in IGNORED_KEYS}
    found = []
    for hparams in logdir.glob(f"{cfg['model']}-{cfg['attention']}-*/version_*/hparams.yaml"):
        folder = hparams.parent
        if (folder / "results.json").exists() or (folder / FAILED_FILE).exists():
            continue
        try:
            saved = _plain((yaml.full_load(hparams.read_text()) or {}).get("config") or {})
        except (OSError, yaml.YAMLError):
            continue
        if all(saved.get(k) == v for k, v in want.items()):
            found.append(folder)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_run(folder: Path) -> Dict[str, Any]:
    out = {"log_dir": str(folder)}
    for key, name in (("results", "results.json"), ("efficiency", "efficiency.json")):
        path = folder / name
        out[key] = json.loads(path.read_text()) if path.is_file() else None
    return out


def write_study(path: Path, study: Dict[str, Any]) -> None:
    write_json(path, study)


def run_study(args: argparse.Namespace, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Train (or find) every run of the study, then write study.json and the report. Returns the study."""
    task, runs, skipped = plan(args)
    logdir = Path(args.logdir)
    study_dir = Path(args.study_dir) if args.study_dir else logdir / f"study-{task.name}"
    if study_dir.exists() and not study_dir.is_dir():
        raise UsageError(f"--study-dir {study_dir} is a file; give a folder")
    study_dir.mkdir(parents=True, exist_ok=True)
    monitor, mode = task.monitor
    study: Dict[str, Any] = {
        "task": task.name, "monitor": monitor, "mode": mode, "command": shlex.join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)]),
        "seeds": sorted({r["seed"] for r in runs}), "machine": {"cpu": cpu_model()},
        "recipe": {k: v for k, v in _plain(runs[0]["config"]).items() if k not in ("attention", "attention_options", "seed")},
        "skipped": skipped, "runs": [],
    }
    for s in skipped:
        log(f"{s['attention']}: skipped ({s['reason']})")
    records = [{"attention": r["attention"], "seed": r["seed"], "attention_options": _plain(r["config"]["attention_options"]),
                "status": "pending"} for r in runs]
    study["runs"] = records
    write_study(study_dir / STUDY_FILE, study)
    started = time.perf_counter()
    for i, (run, rec) in enumerate(zip(runs, records), 1):
        label = f"{i}/{len(runs)} {run['attention']} seed {run['seed']}"
        done = find_finished(logdir, run["config"])
        if done is not None:
            rec.update(status="finished", reused=True, **read_run(done))
            log(f"{label}: finished earlier, skipped ({done})")
        else:
            run_args_ = resume_unfinished(logdir, run, label)
            log(f"{label}: training ({time.perf_counter() - started:.0f} s into the study)")
            t0 = time.perf_counter()
            try:
                results = run_args(run_args_)
                rec.update(status="finished", reused=False, **read_run(Path(results["log_dir"])))
                log(f"{label}: done in {time.perf_counter() - t0:.0f} s")
            except (KeyboardInterrupt, TrainingInterrupted):
                raise  # the user stopped the study: a re-run resumes this run from its last.ckpt
            except Exception as e:  # noqa: BLE001 - one mechanism's failure must not stop the others
                rec.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           traceback=traceback.format_exc(limit=8))
                log(f"{label}: FAILED ({rec['error']}); going on with the others")
        write_study(study_dir / STUDY_FILE, study)
    if args.study_sweep:
        study["sweep_dir"] = str(sweep(study_dir, runs, task))
    study["report"] = str(write_report(study, study_dir))
    write_study(study_dir / STUDY_FILE, study)
    failed = [r for r in records if r["status"] == "failed"]
    log(f"{len(records) - len(failed)} of {len(records)} runs finished, {len(failed)} failed, {len(skipped)} mechanisms "
        f"skipped; report: {study['report']}")
    return study


def resume_unfinished(logdir: Path, run: Dict[str, Any], label: str) -> argparse.Namespace:
    """The flags for a run: resumed from its last.ckpt when an earlier study was killed or stopped during
    it; an interrupted run that had saved no checkpoint is removed (its TensorBoard files hold only the
    steps before the kill) and trained again."""
    partial = find_unfinished(logdir, run["config"])
    if partial is None:
        return run["args"]
    last = partial / "checkpoints" / LAST
    if last.is_file():
        log(f"{label}: an earlier study stopped during this run; resuming it from {last}")
        a = copy.copy(run["args"])
        a.ckpt_path = str(last)
        return a
    log(f"{label}: removing {partial}, an interrupted run with no checkpoint to resume from")
    shutil.rmtree(partial)
    return run["args"]


def sweep(study_dir: Path, runs: List[Dict[str, Any]], task) -> Path:
    """profile.py's sweep of the study's mechanisms at the model's width and heads, forward + backward, at
    the task's sequence length and 4x below and above it (resumable, like profile.py --resume)."""

    cfg0 = runs[0]["config"]
    n = int(task.sequence_length(cfg0)) if task.sequence_length else 256
    names = list(dict.fromkeys(r["attention"] for r in runs))
    options = {r["attention"]: dict(r["config"]["attention_options"]) for r in runs if r["config"]["attention_options"]}
    gpu = cfg0.get("accelerator") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    cfg = sw.validate(sw.SweepConfig(attentions=names, devices=["cuda" if gpu else "cpu"],
                                     seq_lens=sorted({max(8, n // 4), n, 4 * n}), dim=int(cfg0["dim"]),
                                     heads=int(cfg0["heads"]), batch=1, mode="fwd+bwd", causal=bool(task.causal),
                                     runs=5, warmup=2, max_seconds=30.0, options=options))
    out = study_dir / "sweep"
    log(f"sweep: {len(names)} mechanisms x n = {cfg.seq_lens} at dim {cfg.dim}, {cfg.heads} heads -> {out}")
    rows = sw.run_sweep(cfg, out, resume=(out / "results.jsonl").is_file(), command=None)
    plot_sweep(rows, out)
    return out
