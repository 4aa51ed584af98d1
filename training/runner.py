"""One training run: config -> DataModule -> network -> LightningModule -> Trainer.fit -> test of the best
checkpoint -> a one-line summary (and results.json in the run folder).

Runs land in <logdir>/<model>-<attention>-<data source>/version_N/ (TensorBoard events, hparams.yaml,
checkpoints/best-*.ckpt and last.ckpt, results.json). `--ckpt-path last` resumes the newest version of the
same run name in place; `--generate PROMPT` samples from a language-model checkpoint instead of training.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from training.config import UsageError, build_parser, resolve_config
from training.study import is_study, run_study

EXIT_USAGE = 2
EXIT_FAILED = 1


def run_name(cfg: Dict[str, Any]) -> str:
    return f"{cfg['model']}-{cfg['attention']}-{cfg['source_used']}"


def versions(run_dir: Path) -> List[int]:
    out = []
    for p in run_dir.glob("version_*"):
        m = re.fullmatch(r"version_(\d+)", p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def find_last_checkpoint(logdir: Path, model: str, attention: Optional[str]) -> Path:
    """The newest last.ckpt among <logdir>/<model>-<attention>-*/version_*/checkpoints/."""
    pattern = f"{model}-{attention or '*'}-*/version_*/checkpoints/last.ckpt"
    found = sorted(logdir.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--ckpt-path last: no {pattern} under {logdir}; train without --ckpt-path first "
                         f"(or pass a checkpoint file)")
    return found[-1]


def load_checkpoint_config(path: Path) -> Dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to a user
        raise UsageError(f"checkpoint {path} could not be read ({type(e).__name__}); pass a .ckpt written by train.py") from None
    cfg = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(cfg, dict):
        raise UsageError(f"checkpoint {path} has no run config; pass a .ckpt written by train.py")
    return cfg


def resolve_checkpoint(args) -> Optional[Path]:
    if not args.ckpt_path:
        return None
    if args.ckpt_path == "last":
        attention = args.attention
        model = args.model
        if model is None and args.config:
            from training.config import load_yaml

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
    from models.tasks import get_task

    task = get_task(cfg["model"])
    try:
        dm = task.build_datamodule(cfg)  # only validates its settings (batch size, mask, tokenizer, ...): reads nothing
    except (ValueError, TypeError) as e:
        raise UsageError(f"--model {cfg['model']}: {e}") from None
    dm.prepare_data()
    dm.setup("fit")
    cfg["source_used"] = dm.source_used
    for key in ("num_classes", "mean", "std"):
        value = getattr(dm, key, None)
        if value is not None:
            cfg[key] = list(value) if isinstance(value, (tuple, list)) else value
    net = task.build_network(cfg, dm)
    return task, dm, net


def build_trainer(cfg: Dict[str, Any], args, task, logger_version: Optional[int], extra_callbacks: Sequence = ()):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks import EfficiencyMonitor, FiniteLossGuard

    monitor, mode = task.monitor
    fast = int(args.fast_dev_run or 0)
    logger = False if fast else TensorBoardLogger(args.logdir, name=run_name(cfg), version=logger_version,
                                                   default_hp_metric=False)
    callbacks = [FiniteLossGuard(), *extra_callbacks]
    if cfg["efficiency_callbacks"]:  # last: its timed span starts after the other callbacks' batch-start work
        callbacks.append(EfficiencyMonitor(run_info={
            "run": run_name(cfg), "model": cfg["model"], "attention": cfg["attention"],
            "attention_options": cfg["attention_options"], "data_source": cfg["source_used"],
            "batch_size": cfg["batch_size"], "seed": cfg["seed"]}))
    if not fast:
        callbacks += [ModelCheckpoint(monitor=monitor, mode=mode, save_last=True, save_top_k=1,
                                      filename=f"best-{{epoch}}-{{step}}-{{{monitor}:.4f}}", auto_insert_metric_name=False),
                      LearningRateMonitor(logging_interval="step")]
    devices = cfg["devices"]
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        devices = [int(d) for d in devices.split(",") if d != ""] if "," in devices else int(devices)
    kwargs = dict(
        max_epochs=cfg["max_epochs"], max_steps=cfg["max_steps"], precision=cfg["precision"],
        accelerator=cfg["accelerator"], devices=devices, strategy=cfg["strategy"],
        gradient_clip_val=cfg["gradient_clip_val"] or None, accumulate_grad_batches=cfg["accumulate_grad_batches"],
        limit_train_batches=cfg["limit_train_batches"], limit_val_batches=cfg["limit_val_batches"],
        limit_test_batches=cfg["limit_test_batches"], val_check_interval=cfg["val_check_interval"],
        log_every_n_steps=cfg["log_every_n_steps"], deterministic="warn" if cfg["deterministic"] else False, fast_dev_run=fast, logger=logger,
        callbacks=callbacks, default_root_dir=args.logdir,
        # IMDB's length buckets shard themselves across processes; Lightning must not wrap them again
        use_distributed_sampler=not cfg.get("bucket_by_length", False),
        enable_model_summary=False, enable_progress_bar=bool(cfg["progress_bar"]),
        profiler=cfg["profiler"],
    )
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError) as e:  # Lightning's MisconfigurationException is a ValueError
        raise UsageError(f"invalid trainer setting: {str(e).splitlines()[0]}") from None


def count_parameters(net) -> int:
    return sum(p.numel() for p in net.parameters())


def generate(args, ckpt: Path) -> int:
    import torch

    saved = load_checkpoint_config(ckpt)
    cfg = resolve_config(args, saved)
    if cfg["model"] != "wikitext":
        raise UsageError(f"--generate needs a language-model checkpoint (--model wikitext); {ckpt} is a {cfg['model']} run")
    if args.max_new_tokens < 0 or args.temperature < 0 or args.top_k < 0:
        raise UsageError("--max-new-tokens, --temperature and --top-k must be >= 0")
    task, dm, net = prepare(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
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
    if is_study(args.attention):
        raise UsageError(f"--attention {args.attention} is a comparison study; run it through train.py or "
                         f"training.study.run_study")
    ckpt = resolve_checkpoint(args)
    if args.generate is not None:
        if ckpt is None:
            raise UsageError("--generate needs --ckpt-path (a wikitext checkpoint, or 'last')")
        generate(args, ckpt)
        return {}
    cfg = resolve_config(args, load_checkpoint_config(ckpt) if ckpt else None)

    import lightning as L

    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    task, dm, net = prepare(cfg)
    if cfg["compile"]:
        net.compile()  # in place: parameter names (and checkpoints) stay those of the plain network
    module = task.module(net, cfg)
    version = None
    if ckpt is not None:
        m = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
        if m and ckpt.parent.name == "checkpoints" and ckpt.parent.parent.parent.name == run_name(cfg):
            version = int(m.group(1))  # continue the same TensorBoard run
    trainer = build_trainer(cfg, args, task, version, extra_callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    fit_s = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    test = []
    if not args.no_test:
        test = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)
    monitor, _ = task.monitor
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
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
        print(summary_line(results))
    return results


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def summary_line(r: Dict[str, Any]) -> str:
    metric = r["monitor"].split("/", 1)[1]
    test = r["test"].get(f"test/{metric}")
    shown = f"test/{metric} {test:.4f}" if test is not None else "no test"
    best = f"best {r['monitor']} {r['best_val']:.4f}" if r["best_val"] is not None else ""
    return (f"{r['run']}: {shown} | {best} | {r['parameters'] / 1e6:.2f}M params | {r['steps']} steps in "
            f"{r['fit_seconds']:.0f} s on {r['device']} | {r['log_dir'] or 'nothing written (fast dev run)'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from callbacks import NonFiniteLossError
    from datamodules import DataUnavailableError

    try:
        args = build_parser().parse_args(argv)
        if is_study(args.attention):
            run_study(args, list(sys.argv[1:] if argv is None else argv))
        else:
            run_args(args)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DataUnavailableError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0
