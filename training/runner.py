"""One training run: config -> DataModule -> network -> LightningModule -> Trainer.fit -> test of the best
checkpoint -> a one-line summary (and results.json in the run folder).

Runs land in <logdir>/<model>-<attention>-<data source>/version_N/ (TensorBoard events, hparams.yaml,
checkpoints/best-*.ckpt and last.ckpt, results.json). `--ckpt-path last` resumes the newest version of the
same run name in place; `--generate PROMPT` samples from a language-model checkpoint instead of training.
"""
from __future__ import annotations

import errno
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import (
    BudgetProgressBar,
    EfficiencyMonitor,
    FiniteLossGuard,
    LastCheckpoint,
    NonFiniteLossError,
    TensorBoardView,
    TrainingInterrupted,
    truncate_events,
)
from profiling.sweep import is_oom, one_line
from training.config import SETTING, UsageError, build_parser, is_study, load_yaml, resolve_config
from training.console import announce_if_slow, quiet_lightning
from training.tasks import get_task
from utils.io import write_json

FAILED_FILE = "failed.json"  # in a run folder whose training raised after its first checkpoint
# Lightning asks the DataLoader itself for a state; ours keep their position in the DataModule's state
# (datamodules/resumable.py), so a mid-epoch resume is exact and this warning does not apply
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
# Lightning 2.6's own use of a torch API that torch 2.13 deprecates: nothing a user of train.py can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# settings a resumed run may change: budget, hardware and bookkeeping, not what the network is
RESUME_FREE = {"max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "limit_test_batches",
               "val_check_interval", "log_every_n_steps", "precision", "accelerator", "devices", "strategy",
               "num_workers", "data_dir", "cache_dir", "profiler", "progress_bar", "efficiency_callbacks",
               "compile", "deterministic", "lr", "weight_decay", "gradient_clip_val", "sample_prompt"}


class RunFailed(RuntimeError):
    """A run stopped by a problem that only shows while it runs (a full disk, memory); the message says
    what happened and where the last good checkpoint is."""


def run_name(cfg: Dict[str, Any]) -> str:
    return f"{cfg['model']}-{cfg['attention']}-{cfg['source_used']}"


def find_last_checkpoint(logdir: Path, model: str, attention: Optional[str]) -> Path:
    """The newest last.ckpt among <logdir>/<model>-<attention>-*/version_*/checkpoints/."""
    pattern = f"{model}-{attention or '*'}-*/version_*/checkpoints/last.ckpt"
    found = sorted(logdir.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--ckpt-path last: no {pattern} under {logdir}; train without --ckpt-path first "
                         f"(or pass a checkpoint file)")
    return found[-1]


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint dict of a train.py run (its config under hyper_parameters); UsageError otherwise."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to a user
        raise UsageError(f"checkpoint {path} could not be read ({type(e).__name__}); pass a .ckpt written by train.py") from None
    cfg = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UsageError(f"checkpoint {path} has no run config; pass a .ckpt written by train.py")
    return ckpt


def check_resumable(cfg: Dict[str, Any], saved: Dict[str, Any], ckpt: Path) -> None:
    """The run to resume must be the checkpoint's model with the checkpoint's attention."""
    for key, flag in (("model", "--model"), ("attention", "--attention")):
        if cfg.get(key) != saved.get(key):
            raise UsageError(f"checkpoint {ckpt} is a {saved.get('model')} run with attention {saved.get('attention')!r}, "
                             f"but {flag} {cfg.get(key)} was asked for; leave out {flag} to resume it, or train "
                             f"without --ckpt-path")


def check_network(net, ckpt_dict: Dict[str, Any], cfg: Dict[str, Any], saved: Dict[str, Any], ckpt: Path) -> None:
    """The checkpoint's weights must fit the network these settings build (same names and shapes)."""
    want = {k[len("net."):]: tuple(v.shape) for k, v in ckpt_dict["state_dict"].items() if k.startswith("net.")}
    have = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if want != have:
        changed = sorted(k for k in set(cfg) | set(saved)
                         if k in SETTING and k not in RESUME_FREE and cfg.get(k) != saved.get(k))
        what = ", ".join(f"{k} {saved.get(k)!r} -> {cfg.get(k)!r}" for k in changed) or "the network's layout"
        raise UsageError(f"checkpoint {ckpt} holds weights of another network shape than these settings build "
                         f"({what}); resume with the checkpoint's settings (leave those flags out)")


def check_validation_interval(cfg: Dict[str, Any], dm) -> None:
    """A step count for --val-check-interval must fit in an epoch (Lightning refuses it only mid-fit)."""
    every, limit = cfg["val_check_interval"], cfg["limit_train_batches"]
    if not isinstance(every, int) or cfg["limit_val_batches"] == 0:
        return
    n = len(dm.train_dataloader())  # before any state is restored, so no resume position is used up
    per_epoch = min(n, limit if isinstance(limit, int) else int(n * limit))
    if every > per_epoch:
        raise UsageError(f"--val-check-interval {every} is more than the {per_epoch} training batches of an epoch; "
                         f"give at most {per_epoch}, or a fraction of the epoch such as 0.5")


def check_logdir(logdir: str, need_bytes: int = 0) -> None:
    """The log folder is a folder (or can become one), can be written, and has room for the run's
    checkpoints. Nothing is created: a probe file is written and removed in the nearest existing folder."""
    path = Path(logdir).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--logdir {logdir} is a file; pass a folder for the runs (it is created if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--logdir {logdir}: {existing} is a file, so the folder cannot be created; pass another folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--logdir {logdir} cannot be written ({e.strerror or type(e).__name__} in {existing}); "
                         f"pass a folder you can write to") from None
    free = shutil.disk_usage(existing).free
    if need_bytes and free < need_bytes:
        raise UsageError(f"--logdir {logdir} has {free / 2**20:,.0f} MiB free but this run's checkpoints need about "
                         f"{need_bytes / 2**20:,.0f} MiB; free some space or pass another folder")


def checkpoint_bytes(net) -> int:
    """About what the run writes: last.ckpt, the best checkpoint and a temporary copy while one is saved,
    each holding the weights and AdamW's two moments (fp32), plus 1 MiB of the rest."""
    params = sum(p.numel() for p in net.parameters())
    return 3 * (12 * params + 2**20)


def resolve_checkpoint(args) -> Optional[Path]:
    if not args.ckpt_path:
        return None
    if args.ckpt_path == "last":
        attention = args.attention
        model = args.model
        if model is None and args.config:
            file_cfg = load_yaml(args.config)
            model, attention = file_cfg.get("model"), attention or file_cfg.get("attention")
        if model is None:
            raise UsageError("--ckpt-path last needs --model (and --attention) to find the run to resume")
        return find_last_checkpoint(Path(args.logdir), model, attention)
    path = Path(args.ckpt_path).expanduser()
    if not path.is_file():
        raise UsageError(f"checkpoint {args.ckpt_path} does not exist; pass a .ckpt file or 'last'")
    return path


def prepare(cfg: Dict[str, Any]):
    """DataModule (data prepared and set up) and network for a config."""
    task = get_task(cfg["model"])
    try:
        dm = task.build_datamodule(cfg)  # only validates its settings (batch size, mask, tokenizer, ...): reads nothing
    except (ValueError, TypeError) as e:
        raise UsageError(f"--model {cfg['model']}: {e}") from None
    with announce_if_slow(f"preparing the data of --model {cfg['model']} (source {cfg['data_source']})"):
        dm.prepare_data()
        dm.setup("fit")
    cfg["source_used"] = dm.source_used  # part of the run's record (its name, hparams.yaml, results.json)
    try:
        net = task.build_network(cfg, dm)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--model {cfg['model']}: {e}") from None
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        raise UsageError(f"--model {cfg['model']}: the network for these sizes does not fit in this machine's "
                         f"memory; lower --dim, --depth, --seq-len or --vocab-size") from None
    return task, dm, net


def build_trainer(cfg: Dict[str, Any], args, task, logger_version: Optional[int], extra_callbacks: Sequence = (),
                  dm=None):
    monitor, mode = task.monitor
    fast = int(args.fast_dev_run or 0)
    logger = False if fast else TensorBoardLogger(args.logdir, name=run_name(cfg), version=logger_version,
                                                   default_hp_metric=False)
    callbacks = [FiniteLossGuard(), *extra_callbacks,
                 TensorBoardView(fixed=log_interval_given(args), config=cfg, tested=not getattr(args, "no_test", False),
                                 tokens=task.sequence_length(cfg) if task.sequence_length else None)]
    if cfg["efficiency_callbacks"]:  # last: its timed span starts after the other callbacks' batch-start work
        callbacks.append(EfficiencyMonitor(hold_allocator_note=not getattr(args, "verbose", False), run_info={
            "run": run_name(cfg), "model": cfg["model"], "attention": cfg["attention"],
            "attention_options": cfg["attention_options"], "data_source": cfg["source_used"],
            "batch_size": cfg["batch_size"], "seed": cfg["seed"]}))
    if not fast:
        # the best-k file only; last.ckpt is LastCheckpoint's (written at every validation, not only on improvement)
        callbacks += [ModelCheckpoint(monitor=monitor, mode=mode, save_last=False, save_top_k=1,
                                      filename=f"best-{{epoch}}-{{step}}-{{{monitor}:.4f}}", auto_insert_metric_name=False),
                      LastCheckpoint(),
                      LearningRateMonitor(logging_interval="step")]
    if cfg["progress_bar"] and _RICH_AVAILABLE:
        callbacks.append(BudgetProgressBar())
    kwargs = dict(
        max_epochs=cfg["max_epochs"], max_steps=cfg["max_steps"], precision=cfg["precision"],
        accelerator=cfg["accelerator"], devices=parse_devices(cfg["devices"]), strategy=cfg["strategy"],
        gradient_clip_val=cfg["gradient_clip_val"] or None, accumulate_grad_batches=cfg["accumulate_grad_batches"],
        limit_train_batches=cfg["limit_train_batches"], limit_val_batches=cfg["limit_val_batches"],
        limit_test_batches=cfg["limit_test_batches"], val_check_interval=cfg["val_check_interval"],
        log_every_n_steps=cfg["log_every_n_steps"], deterministic="warn" if cfg["deterministic"] else False, fast_dev_run=fast, logger=logger,
        callbacks=callbacks, default_root_dir=args.logdir,
        # a DataModule whose loaders all shard themselves says so; Lightning must not wrap them again
        use_distributed_sampler=not getattr(dm, "shards_itself", False),
        enable_model_summary=False, enable_progress_bar=bool(cfg["progress_bar"]),
        profiler=cfg["profiler"],
    )
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, MisconfigurationException, ImportError, RuntimeError) as e:
        # Lightning 2.6's MisconfigurationException is not a ValueError; an accelerator whose package is
        # missing (--accelerator tpu) is an ImportError
        raise UsageError(f"invalid trainer setting: {first_sentence(e)}") from None


def log_interval_given(args) -> bool:
    """--log-every-n-steps, or log_every_n_steps in the --config file: used as given; the recipe's adapts to
    the run's length (TensorBoardView). Arguments that are not train.py's flags (the benchmarks build a trainer
    from a config alone) keep the config's interval."""
    if not hasattr(args, "log_every_n_steps"):
        return True
    config = getattr(args, "config", None)
    return args.log_every_n_steps is not None or bool(config and "log_every_n_steps" in load_yaml(config))


def parse_devices(devices):
    """'auto', '2', '-1' or '0,1' (validated by the config) as Lightning takes them."""
    if isinstance(devices, str) and devices != "auto":
        parts = [d.strip() for d in devices.split(",") if d.strip()]
        return [int(d) for d in parts] if "," in devices else int(parts[0])
    return devices


def count_parameters(net) -> int:
    return sum(p.numel() for p in net.parameters())


def generate(args, ckpt: Path) -> int:
    ckpt_dict = load_checkpoint(ckpt)
    cfg = resolve_config(args, ckpt_dict["hyper_parameters"]["config"])
    if cfg["model"] != "wikitext":
        raise UsageError(f"--generate needs a language-model checkpoint (--model wikitext); {ckpt} is a {cfg['model']} run")
    task, dm, net = prepare(cfg)
    check_network(net, ckpt_dict, cfg, ckpt_dict["hyper_parameters"]["config"], ckpt)
    state = ckpt_dict["state_dict"]
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    ids = dm.encode(args.generate)
    if not ids:
        raise UsageError(f"--generate prompt {args.generate!r} has no tokens in this vocabulary; give some words")
    g = torch.Generator().manual_seed(cfg["seed"])
    out = net.generate(torch.tensor([ids]), args.max_new_tokens, args.temperature, args.top_k or None, generator=g)
    print(args.generate + " " + dm.decode(out[0, len(ids):].tolist()))
    return 0


def run(argv: Optional[Sequence[str]] = None, extra_callbacks: Sequence = ()) -> Dict[str, Any]:
    """Parse, train, test. Returns the results dict (also written to results.json). Raises UsageError for bad
    input, DataUnavailableError when no data source works, NonFiniteLossError when the loss diverges."""
    return run_args(build_parser().parse_args(argv), extra_callbacks)


def run_args(args, extra_callbacks: Sequence = ()) -> Dict[str, Any]:
    """`run` on parsed flags (the comparison study calls this once per mechanism and seed)."""
    with quiet_lightning(verbose=getattr(args, "verbose", False)):
        return _run_args(args, extra_callbacks)


def _run_args(args, extra_callbacks: Sequence = ()) -> Dict[str, Any]:
    if is_study(args.attention):
        raise UsageError(f"--attention {args.attention} is a comparison study; run it through train.py or "
                         f"training.study.run_study")
    check_run_flags(args)
    ckpt = resolve_checkpoint(args)
    if args.generate is not None:
        if ckpt is None:
            raise UsageError("--generate needs --ckpt-path (a wikitext checkpoint, or 'last')")
        generate(args, ckpt)
        return {}
    ckpt_dict = load_checkpoint(ckpt) if ckpt else None
    saved = ckpt_dict["hyper_parameters"]["config"] if ckpt_dict else None
    cfg = resolve_config(args, saved)
    if ckpt is not None:
        check_resumable(cfg, saved, ckpt)
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    task, dm, net = prepare(cfg)
    check_validation_interval(cfg, dm)
    if ckpt is not None:
        check_network(net, ckpt_dict, cfg, saved, ckpt)
    if not args.fast_dev_run:
        check_logdir(args.logdir, checkpoint_bytes(net))
    if cfg["compile"]:
        net.compile()  # in place: parameter names (and checkpoints) stay those of the plain network
    module = task.build_module(cfg, dm, net)
    version = None
    if ckpt is not None:
        m = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
        if m and ckpt.parent.name == "checkpoints" and ckpt.parent.parent.parent.name == run_name(cfg):
            version = int(m.group(1))  # continue the same TensorBoard run, cut back to the checkpoint
            if not args.fast_dev_run and rank_zero_only.rank == 0:  # DDP's other processes start later: never them
                truncate_events(ckpt.parent.parent, ckpt_dict)
    del ckpt_dict
    trainer = build_trainer(cfg, args, task, version, extra_callbacks, dm=dm)
    best_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    start = time.perf_counter()
    fit(trainer, module, dm, ckpt)
    fit_s = time.perf_counter() - start
    best = best_cb.best_model_path if best_cb else ""
    test = []
    if not args.no_test:
        test = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)
    monitor, _ = task.monitor
    best_score = best_cb.best_model_score if best_cb else None
    results = {
        "run": run_name(cfg), "log_dir": trainer.log_dir if trainer.logger else None,
        "model": cfg["model"], "attention": cfg["attention"], "attention_options": cfg["attention_options"],
        "data_source": cfg["source_used"], "parameters": count_parameters(net),
        "monitor": monitor, "best_val": float(best_score) if best_score is not None else None,
        "best_checkpoint": best or None, "test": {k: float(v) for k, v in (test[0] if test else {}).items()},
        "epochs": trainer.current_epoch, "steps": trainer.global_step, "fit_seconds": round(fit_s, 2),
        "device": str(trainer.strategy.root_device), "world_size": trainer.world_size, "config": cfg,
    }
    if trainer.is_global_zero:
        if results["log_dir"]:
            write_json(Path(results["log_dir"]) / "results.json", results)
            (Path(results["log_dir"]) / FAILED_FILE).unlink(missing_ok=True)  # an earlier failure, resumed
        print(summary_line(results))
    return results


def fit(trainer, module, dm, ckpt: Optional[Path]) -> None:
    """trainer.fit, with what can only go wrong while it runs turned into one sentence:
    - a setting Lightning refuses only once it sees the data (a MisconfigurationException before the first
      step) becomes a UsageError;
    - a full disk or exhausted memory becomes RunFailed naming the last good checkpoint.
    A new run that fails before it saved any checkpoint leaves no folder (TensorBoard would show it as a
    run); one that fails later leaves failed.json (the one-line error) beside its checkpoints, so a report
    or a study's re-run can tell it from a finished run (results.json) and from a stopped one (resumable)."""
    run_dir = Path(trainer.log_dir) if trainer.logger else None
    created = [p for p in (run_dir, run_dir.parent, run_dir.parent.parent) if not p.exists()] if run_dir else []
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    except (KeyboardInterrupt, SystemExit, TrainingInterrupted):
        raise  # stopped, not failed: resumable from its last.ckpt
    except BaseException as e:
        error = e
        if isinstance(e, MisconfigurationException) and trainer.global_step == 0:
            error = UsageError(f"invalid setting: {first_sentence(e)}")  # (a ValueError is a bug: its traceback stays)
        elif isinstance(e, OSError) and e.errno == errno.ENOSPC:
            error = RunFailed(f"training stopped at step {trainer.global_step}: the disk is full "
                              f"({e.filename or 'while writing'}); {last_good(trainer)}")
        elif isinstance(e, (RuntimeError, MemoryError)) and not isinstance(e, NonFiniteLossError) and is_oom(e):
            error = RunFailed(f"training stopped at step {trainer.global_step}: out of memory "
                              f"({one_line(e)[:160]}); {last_good(trainer)}")
        if run_dir is not None and trainer.is_global_zero:
            if run_dir in created and not any(run_dir.glob("checkpoints/*.ckpt")):
                shutil.rmtree(run_dir, ignore_errors=True)
                for folder in created[1:]:  # the run-name folder and the log folder, when this run made them
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
            else:
                mark_failed(run_dir, trainer.global_step, error)
        if error is e:
            raise
        raise error from None


def first_sentence(e: BaseException) -> str:
    text = " ".join(str(e).replace("`", "").split())
    return re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(".;") if text else type(e).__name__


def last_good(trainer) -> str:
    last = next((c.last_model_path for c in trainer.callbacks if isinstance(c, LastCheckpoint)), "")
    return (f"the last good checkpoint is {last} (resume with --ckpt-path last)" if last and Path(last).is_file()
            else "no checkpoint had been saved yet")


def mark_failed(run_dir: Path, step: int, error: BaseException) -> None:
    if run_dir.is_dir():
        try:
            write_json(run_dir / FAILED_FILE, {"error": one_line(error), "step": step})
        except OSError:
            pass  # the disk that failed the run may refuse this too; the error itself still reaches the user


def check_run_flags(args) -> None:
    """The flags of a single run that are not settings of the config (those are checked by resolve_config)."""
    if args.fast_dev_run is not None and args.fast_dev_run < 0:
        raise UsageError(f"--fast-dev-run must be a number of batches >= 0, got {args.fast_dev_run}")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--top-k", args.top_k)):
        if value < 0:
            raise UsageError(f"{flag} must be an integer >= 0, got {value}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")


def summary_line(r: Dict[str, Any]) -> str:
    metric = r["monitor"].split("/", 1)[1]
    test = r["test"].get(f"test/{metric}")
    shown = f"test/{metric} {test:.4f}" if test is not None else "no test"
    best = f"best {r['monitor']} {r['best_val']:.4f}" if r["best_val"] is not None else ""
    return (f"{r['run']}: {shown} | {best} | {r['parameters'] / 1e6:.2f}M params | {r['steps']} steps in "
            f"{r['fit_seconds']:.0f} s on {r['device']} | {r['log_dir'] or 'nothing written (fast dev run)'}")
