"""
Is a Lightning training step within 5 % of a plain PyTorch loop on the same model and batch?
(CPU, the default ViT recipe, measured side by side in one process.)

The committed results (benchmarks/results/train_step_overhead.{md,json}) come from:

$ python benchmarks/bench_train_step.py

i.e. `train.py --model vit`'s recipe (32 px, patch 4, dim 256, depth 6, heads 8, mlp_ratio 2, drop_path 0.1,
batch 256, AdamW lr 1e-3 wd 0.05 with warm-up + cosine LambdaLR stepped per step, label smoothing 0.1,
gradient clipping 1.0), fp32 on CPU, torch threads = os.cpu_count(), 5 rounds x (1 warm-up + 10 timed
steps) per side, then the resolution phase (below). About 6 minutes on 2 cores. Other examples:

$ python benchmarks/bench_train_step.py --rounds 3 --steps 5 --batch-size 64 --out /tmp/overhead
$ python benchmarks/bench_train_step.py --batch-size 4 --steps 3 --rounds 1 --dim 32 --depth 1 --heads 2  # smoke

The two sides:
  plain      a for loop over the DataLoader: forward, cross-entropy (label smoothing), zero_grad, backward,
             clip_grad_norm_, AdamW step, LambdaLR step; AdamW param groups built by the same rule as
             TaskModule.configure_optimizers (checked against Lightning's optimizer: same parameters in the same
             order, same groups and hyperparameters, same learning rates).
  lightning  the real ImageClassificationModule (task.build_module(cfg, dm, net), as train.py builds it) run by a real
             lightning.Trainer from training.runner.build_trainer: FiniteLossGuard, ModelCheckpoint(save_last),
             LearningRateMonitor(step), a TensorBoardLogger in a temporary folder, per-step torchmetrics
             update (top-1 / top-5 accuracy) and self.log of train/loss; validation off.
Both start from the same weights (one network built by training.runner.prepare, deep-copied), see the same
fixed synthetic CIFAR-shaped batch through a DataLoader(batch_size=None) over a dataset that returns it for
every index, and are seeded identically per round, so they compute the same losses step for step (checked).

Rounds alternate the side that goes first. In each round each side gets a fresh optimizer and scheduler
(total steps = warm-up + timed), runs the warm-up step(s) untimed, then the timed steps. Measures (ms):
  step interval   start of one step to the start of the next (Lightning: on_train_batch_start of the first
                  callback to the next one; the last step ends at on_train_epoch_end): everything Lightning does
                  per step, including data fetch, batch transfer and the logger update after on_train_batch_end.
                  The headline, judged against 1.05.
  batch window    Lightning: on_train_batch_start (first callback) -> on_train_batch_end (last callback);
                  plain: after the batch is fetched -> after the scheduler step.
  epoch / step    Lightning: on_train_epoch_start -> on_train_end (epoch-end metric compute and logging and
                  the last.ckpt write included) over all the round's steps; plain: first fetch -> last step.
  fit / step      trainer.fit() wall time (setup, configure_optimizers, teardown included) over all the
                  round's steps; plain: optimizer construction + the loop.
Ratios are Lightning / plain of the medians over all timed steps (over rounds for epoch and fit), with the
per-round ratios' range and a 95 % bootstrap interval that resamples whole rounds (paired).
Fixed costs measured inside one side (no cross-side noise): per step outside the batch window (interval -
window), per epoch (epoch span - the steps' intervals), per fit() (fit wall - epoch span).

Resolution phase: on a shared 2-core machine a 3 s step jitters by +-10-15 %, which hides a few ms. So the
same interleaved comparison runs again on a tiny step (--resolution-dim/depth/heads/batch, default dim 32,
depth 1, heads 2, batch 4: a few ms per step) where Lightning's fixed per-step cost is resolved to a fraction
of a ms, plus the torchmetrics update timed at both batch sizes (the one per-step cost that grows with the
batch). Projected ratio at the headline config = (plain median + tiny-step difference + metric-update
growth) / plain median, with the difference's bootstrap interval. Garbage collection stays enabled in both
sides (a real loop pays it).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Any, Callable, Dict, List, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics

from models.tasks.base import warmup_cosine
from profiling.harness import command_line, compare_rounds, finish, int_arg, machine, result_paths, write_results
from profiling.timing import time_fn
from training.config import UsageError, resolve_config
from training.config import build_parser as train_parser
from training.runner import build_trainer, prepare
from training.tasks import get_task

TARGET_RATIO = 1.05
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_step_overhead"
PROG = "bench_train_step.py"
BOOTSTRAP_SAMPLES = 2000
SIDES = ("plain", "lightning")


class BenchError(ValueError):
    """Bad input: one sentence, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence on stderr, exit 2 (no usage dump)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


@contextlib.contextmanager
def quiet_and_restored():
    """Lightning's info logs and known warnings silenced; torch threads, the deterministic-algorithms flag and
    the loggers' levels put back afterwards (a benchmark's main() may run inside a test process)."""
    saved_threads = torch.get_num_threads()
    saved_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    saved_levels = [(lg, lg.level) for lg in map(logging.getLogger, ("lightning.pytorch", "lightning.fabric", "lightning"))]
    with warnings.catch_warnings():
        for message, module in ((".*", r"lightning(\.|$)"),
                                (r".*(num_workers|could not find the monitored key|log_every_n_steps).*", "")):
            warnings.filterwarnings("ignore", message=message, module=module)
        try:
            for lg, _ in saved_levels:
                lg.setLevel(logging.ERROR)
            yield
        finally:
            torch.set_num_threads(saved_threads)
            torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
            for lg, level in saved_levels:
                lg.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Lightning training step vs a plain PyTorch loop (CPU, ViT recipe).")
    p.add_argument("--steps", type=int_arg("--steps"), default=10, help="timed steps per side per round (default 10)")
    p.add_argument("--rounds", type=int_arg("--rounds"), default=5, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int_arg("--warmup", 0), default=1,
                   help="untimed steps per side at the start of each round (default 1)")
    p.add_argument("--batch-size", type=int_arg("--batch-size"), default=None,
                   help="images per step (default: the ViT recipe's 256)")
    p.add_argument("--threads", type=int_arg("--threads"), default=None,
                   help="torch CPU threads (default os.cpu_count())")
    p.add_argument("--dim", type=int_arg("--dim"), default=None, help="model width (default: recipe's 256)")
    p.add_argument("--depth", type=int_arg("--depth"), default=None, help="blocks (default: recipe's 6)")
    p.add_argument("--heads", type=int_arg("--heads"), default=None, help="attention heads (default: recipe's 8)")
    p.add_argument("--resolution-steps", type=int_arg("--resolution-steps", 0), default=100,
                   help="timed steps per side per round of the tiny-step resolution phase (default 100; 0 skips it)")
    p.add_argument("--resolution-batch", type=int_arg("--resolution-batch"), default=4,
                   help="batch of the resolution phase (default 4)")
    p.add_argument("--resolution-dim", type=int_arg("--resolution-dim"), default=32, help="(default 32)")
    p.add_argument("--resolution-depth", type=int_arg("--resolution-depth"), default=1, help="(default 1)")
    p.add_argument("--resolution-heads", type=int_arg("--resolution-heads"), default=2, help="(default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the batch and each round (default 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="output path without suffix: writes OUT.md and OUT.json (default benchmarks/results/train_step_overhead)")
    return p


# --------------------------------------------------------------------------- setup
def make_config(batch_size: Optional[int], dim: Optional[int], depth: Optional[int], heads: Optional[int],
                steps_per_round: int, seed: int, what: str = "") -> Dict[str, Any]:
    """The run config exactly as train.py resolves it for `--model vit`, with the sizes given here."""
    recipe = get_task("vit").recipe()
    d, h = dim or recipe["dim"], heads or recipe["heads"]
    if d % h:
        raise BenchError(f"--{what}dim ({d}) must be divisible by --{what}heads ({h})")
    # the efficiency callbacks are left out: Lightning's own cost is measured here, theirs by
    # bench_efficiency_callbacks.py (which turns them on for one side)
    argv = ["--model", "vit", "--data-source", "synthetic", "--accelerator", "cpu", "--devices", "1",
            "--no-progress-bar", "--no-efficiency-callbacks", "--limit-val-batches", "0", "--max-epochs", "1",
            "--max-steps", str(steps_per_round), "--seed", str(seed)]
    for flag, value in (("--batch-size", batch_size), ("--dim", dim), ("--depth", depth), ("--heads", heads)):
        if value is not None:
            argv += [flag, str(value)]
    try:
        return resolve_config(train_parser().parse_args(argv))
    except UsageError as e:
        raise BenchError(str(e)) from None


class FixedBatch(torch.utils.data.Dataset):
    """Returns the same pre-made batch for every index (used with batch_size=None: no collation)."""

    def __init__(self, batch, length: int):
        self.batch, self.length = batch, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.batch


class Setup:
    """One config's network (two identical copies), LightningModule, fixed batch and DataLoader."""

    def __init__(self, cfg: Dict[str, Any], steps_per_round: int, dm=None):
        self.cfg, self.steps_per_round = cfg, steps_per_round
        L.seed_everything(cfg["seed"], workers=True, verbose=False)
        if dm is None:
            self.task, dm, net = prepare(cfg)  # as train.py: the DataModule fixes image size, channels, classes
        else:  # the rest of prepare() on a DataModule already set up (same data settings, only sizes differ)
            self.task = get_task(cfg["model"])
            cfg["source_used"] = dm.source_used
            net = self.task.build_network(cfg, dm)
        self.dm = dm
        self.plain_net = copy.deepcopy(net)  # same initial weights
        self.module = self.task.build_module(cfg, dm, net)
        self.parameters = sum(p.numel() for p in net.parameters())
        g = torch.Generator().manual_seed(cfg["seed"])
        bs, size = int(cfg["batch_size"]), int(cfg["image_size"])
        self.batch = (torch.randn(bs, dm.channels, size, size, generator=g),
                      torch.randint(0, dm.num_classes, (bs,), generator=g))
        self.loader = torch.utils.data.DataLoader(FixedBatch(self.batch, steps_per_round), batch_size=None,
                                                  shuffle=False, num_workers=0)
        self.names = {"plain": {id(p): n for n, p in self.plain_net.named_parameters()},
                      "lightning": {id(p): n for n, p in self.module.net.named_parameters()}}


def plain_optimizer(net, cfg: Dict[str, Any], total: int):
    """AdamW + LambdaLR by the rule of TaskModule.configure_optimizers (verified against Lightning's)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name.endswith(("pos", "cls_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(cfg["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=float(cfg["lr"]), betas=tuple(cfg["betas"]))
    w = float(cfg["warmup"])
    warmup = int(w * total) if w < 1 else int(w)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, float(cfg["min_lr_ratio"])))
    return opt, sched


def group_signature(opt, names: Dict[int, str]) -> List[Dict[str, Any]]:
    return [dict(params=[names[id(p)] for p in g["params"]], weight_decay=g["weight_decay"], betas=list(g["betas"]),
                 eps=g["eps"], initial_lr=g.get("initial_lr")) for g in opt.param_groups]


# --------------------------------------------------------------------------- the two sides
def run_plain(net, loader, cfg, total: int, seed: int) -> Dict[str, Any]:
    smoothing = float(cfg["label_smoothing"])
    clip = float(cfg["gradient_clip_val"] or 0.0)
    net.train()
    c0, t_round = time.process_time(), time.perf_counter()
    opt, sched = plain_optimizer(net, cfg, total)
    params = [p for g in opt.param_groups for p in g["params"]]  # the order Lightning's clipping uses
    t_epoch = time.perf_counter()
    it = iter(loader)  # Lightning makes its iterator (one RNG draw) before on_train_epoch_start, where it is seeded
    torch.manual_seed(seed)
    starts, windows, losses = [], [], []
    for x, y in it:
        t0 = time.perf_counter()
        starts.append(t0)
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        windows.append(time.perf_counter() - t0)
        losses.append(loss.item())
    end = time.perf_counter()
    return dict(
        intervals_ms=[(b - a) * 1e3 for a, b in zip(starts, starts[1:] + [end])],
        windows_ms=[w * 1e3 for w in windows], losses=losses,
        epoch_s=end - t_epoch, fit_s=end - t_round, cpu_util=(time.process_time() - c0) / (end - t_round),
        final_lr=[g["lr"] for g in opt.param_groups], threads=torch.get_num_threads(),
        deterministic=torch.are_deterministic_algorithms_enabled(), _optimizer=opt,
    )


class FirstHooks(L.Callback):
    """First in trainer.callbacks: the start of every step (and of the epoch, its end, the fit's end)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.starts: List[float] = []
        self.epoch_start = self.epoch_end = self.train_end = None
        self.threads = self.deterministic = None

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start = time.perf_counter()
        torch.manual_seed(self.seed)  # the DataLoader iterator exists by now, as in the plain loop when it seeds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())
        self.threads = torch.get_num_threads()
        self.deterministic = torch.are_deterministic_algorithms_enabled()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_end = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.train_end = time.perf_counter()


class LastHooks(L.Callback):
    """Last in trainer.callbacks: the end of every step's batch window, and its loss."""

    def __init__(self):
        self.ends: List[float] = []
        self.losses: List[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def run_lightning(module, loader, cfg, task, logdir: str, seed: int) -> Dict[str, Any]:
    ns = argparse.Namespace(fast_dev_run=0, logdir=logdir)  # the two things build_trainer reads from the CLI args
    t_build = time.perf_counter()
    trainer = build_trainer(cfg, ns, task, None)
    build_s = time.perf_counter() - t_build
    first, last = FirstHooks(seed), LastHooks()  # the batch window spans every other callback's hooks
    trainer.callbacks.insert(0, first)
    trainer.callbacks.append(last)
    c0, t0 = time.process_time(), time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    fit_end = time.perf_counter()
    if len(first.starts) != len(last.ends) or not first.starts or first.train_end is None:
        raise RuntimeError(f"Lightning ran {len(first.starts)} batch starts and {len(last.ends)} batch ends")
    opt = trainer.optimizers[0]
    starts = first.starts
    return dict(
        intervals_ms=[(b - a) * 1e3 for a, b in zip(starts, starts[1:] + [first.epoch_end])],
        windows_ms=[(b - a) * 1e3 for a, b in zip(starts, last.ends)], losses=last.losses,
        epoch_s=first.train_end - first.epoch_start, fit_s=fit_end - t0, trainer_build_s=build_s,
        cpu_util=(time.process_time() - c0) / (fit_end - t0), final_lr=[g["lr"] for g in opt.param_groups],
        threads=first.threads, deterministic=first.deterministic, global_step=trainer.global_step,
        callbacks=[type(c).__name__ for c in trainer.callbacks if c not in (first, last)],
        logger=type(trainer.logger).__name__ if trainer.logger else None, _optimizer=opt,
    )


def run_rounds(setup: Setup, rounds: int, warmup: int, logdir: str, label: str, log: Callable[[str], None],
               records: List[Dict[str, Any]], after_round: Callable[[], None] = lambda: None) -> Dict[str, Any]:
    """Interleaved rounds on one Setup, appended to `records` (timed and warm-up steps); returns the optimizers'
    param-group signatures (from round 1) for the equivalence check."""
    cfg, sigs = setup.cfg, {}
    for r in range(rounds):
        order = list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
        seed = cfg["seed"] + 1000 + r
        rd: Dict[str, Any] = dict(first=order[0])
        for side in order:
            gc.collect()
            if side == "plain":
                rd[side] = run_plain(setup.plain_net, setup.loader, cfg, setup.steps_per_round, seed)
            else:
                rd[side] = run_lightning(setup.module, setup.loader, cfg, setup.task, logdir, seed)
            opt = rd[side].pop("_optimizer")
            if r == 0:
                sigs[side] = group_signature(opt, setup.names[side])
        records.append(rd)
        pm, lm = (median(rd[s]["intervals_ms"][warmup:]) for s in SIDES)
        log(f"{label} round {r + 1}/{rounds} ({order[0]} first): plain {pm:.1f} ms/step, Lightning {lm:.1f} ms/step, "
            f"ratio {lm / pm:.3f}; fit {rd['plain']['fit_s']:.2f} s vs {rd['lightning']['fit_s']:.2f} s; "
            f"CPU use {rd['plain']['cpu_util']:.2f} / {rd['lightning']['cpu_util']:.2f}")
        after_round()
    return sigs


# --------------------------------------------------------------------------- statistics
def timed_rounds(records: List[Dict[str, Any]], warmup: int) -> List[Dict[str, Any]]:
    """The round records with the warm-up steps dropped from the per-step lists."""
    return [{side: {**rd[side], "intervals_ms": rd[side]["intervals_ms"][warmup:],
                    "windows_ms": rd[side]["windows_ms"][warmup:]} for side in SIDES} for rd in records]


def compare(rounds: List[Dict[str, Any]], key: str, per_step: bool, steps_per_round: int, rng: random.Random,
            threads: int, names=SIDES) -> Dict[str, Any]:
    """Lightning vs plain on one measure (profiling.harness.compare_rounds): medians, ratio and difference of
    medians, ratio of minima, per-round ratios, and bootstrap intervals that resample whole rounds (paired)."""
    def values(rd: Dict[str, Any]) -> List[float]:
        return list(rd[key]) if per_step else [rd[key] / steps_per_round * 1e3]  # seconds per round -> ms per step

    return compare_rounds([values(rd["plain"]) for rd in rounds], [values(rd["lightning"]) for rd in rounds], rng,
                          names=names, threads=threads)


MEASURES = [  # key in the round records, per step?, label
    ("intervals_ms", True, "per step, start to start (headline)"),
    ("windows_ms", True, "per step, batch window"),
    ("epoch_s", False, "epoch / steps (warm-up step and epoch-end hooks incl.)"),
    ("fit_s", False, "fit() / steps (setup and teardown incl.)"),
]


def fixed_costs(records: List[Dict[str, Any]], warmup: int) -> Dict[str, Dict[str, float]]:
    """Costs measured inside one side, so free of the cross-side noise (medians over rounds, ms)."""
    out = {}
    for side in SIDES:
        out[side] = dict(
            outside_window_per_step_ms=median([i - w for rd in records for i, w in
                                                zip(rd[side]["intervals_ms"][warmup:], rd[side]["windows_ms"][warmup:])]),
            per_epoch_ms=median([(rd[side]["epoch_s"] - sum(rd[side]["intervals_ms"]) / 1e3) * 1e3 for rd in records]),
            per_fit_ms=median([(rd[side]["fit_s"] - rd[side]["epoch_s"]) * 1e3 for rd in records]),
            first_step_extra_ms=median([rd[side]["intervals_ms"][0] - median(rd[side]["intervals_ms"][warmup:])
                                         for rd in records]) if warmup else None,
        )
    out["lightning"]["trainer_build_ms"] = median([rd["lightning"]["trainer_build_s"] * 1e3 for rd in records])
    return out


def equivalence(records: List[Dict[str, Any]], sigs: Dict[str, Any]) -> Dict[str, Any]:
    losses = {s: [v for rd in records for v in rd[s]["losses"]] for s in SIDES}
    same_groups = sigs.get("plain") == sigs.get("lightning")
    pg = sigs.get("plain") or []
    last = records[-1]
    return dict(
        steps_compared=min(len(losses["plain"]), len(losses["lightning"])),
        max_abs_loss_diff=max(abs(a - b) for a, b in zip(losses["plain"], losses["lightning"])),
        param_groups_identical=same_groups,
        param_groups=("identical (same parameters in the same order, weight decay, betas, eps, initial lr)"
                      if same_groups else "DIFFERENT") + f": {len(pg)} groups of "
                      f"{' + '.join(str(len(s['params'])) for s in pg)} tensors",
        final_lr_plain=last["plain"]["final_lr"], final_lr_lightning=last["lightning"]["final_lr"],
        threads_plain=last["plain"]["threads"], threads_lightning=last["lightning"]["threads"],
        deterministic_plain=last["plain"]["deterministic"], deterministic_lightning=last["lightning"]["deterministic"],
        cpu_util_plain=[round(rd["plain"]["cpu_util"], 2) for rd in records],
        cpu_util_lightning=[round(rd["lightning"]["cpu_util"], 2) for rd in records],
    )


def metric_update_ms(module, batch_size: int, num_classes: int, threads: int) -> float:
    """Median time of one update of the module's train metrics (a fresh copy) at this batch size."""
    metrics = module.make_metrics()
    g = torch.Generator().manual_seed(0)
    preds, target = torch.randn(batch_size, num_classes, generator=g), torch.randint(0, num_classes, (batch_size,), generator=g)
    return time_fn(lambda: metrics.update(preds=preds, target=target), warmup=5, runs=200, threads=threads).median_ms


# --------------------------------------------------------------------------- output
def _fmt_ci(ci, digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}" if ci else "n/a (1 round)"


def write_report(report: Dict[str, Any], out: Path) -> None:
    write_results(out, report, render_markdown(report))


def render_markdown(r: Dict[str, Any]) -> str:
    m, c = r["machine"], r["config"]
    lines = ["# Lightning training step vs a plain PyTorch loop (CPU, ViT recipe)", "",
             f"Target: {r['target']['description']}", ""]
    res = r.get("results")
    if not res:
        lines += [f"Incomplete: {len(r['rounds'])} of {c['rounds']} rounds done.", ""]
    else:
        h = res["measures"]["intervals_ms"]
        lines.append(f"**{res['verdict']}**: Lightning / plain = **{h['ratio']:.3f}** (median step, start to start: "
                     f"{h['lightning']['median_ms']:.1f} ms vs {h['plain']['median_ms']:.1f} ms; per-round ratios "
                     f"{h['per_round_min']:.3f} to {h['per_round_max']:.3f}; 95 % bootstrap over rounds "
                     f"{_fmt_ci(h['bootstrap_ci95'])}); target <= {r['target']['max_ratio']}.")
        rz = res.get("resolution")
        if rz:
            lines.append("")
            lines.append(f"Resolved at a tiny step (below): Lightning's own cost is {rz['overhead_ms']:.2f} ms per step "
                         f"(95 % {_fmt_ci(rz['overhead_ci95_ms'], 2)} ms), i.e. a projected ratio of "
                         f"**{rz['projected_ratio']:.4f}** ({_fmt_ci(rz['projected_ratio_ci95'], 4)}) at the "
                         f"headline config: {'within' if rz['projected_ratio_ci95'][1] <= r['target']['max_ratio'] else 'NOT within'} "
                         f"the target with the whole interval.")
        lines += ["", "| measure (ms per step) | plain PyTorch | Lightning | Lightning / plain | ratio of minima | "
                      "per-round ratios | bootstrap 95 % (ratio) | Lightning - plain |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, _, label in MEASURES:
            s = res["measures"][key]
            lines.append(f"| {label} (n={s['plain']['runs']} per side) | {s['plain']['median_ms']:.1f} | "
                         f"{s['lightning']['median_ms']:.1f} | {s['ratio']:.3f} | {s['ratio_of_minima']:.3f} | "
                         f"{s['per_round_min']:.3f} to {s['per_round_max']:.3f} | {_fmt_ci(s['bootstrap_ci95'])} | "
                         f"{s['difference_ms']:+.1f} |")
        lines += ["", f"Medians of the timed steps (warm-up steps excluded). Step-to-step spread (start to start): "
                  f"plain min {h['plain']['min_ms']:.0f} / p95 {h['plain']['p95_ms']:.0f} / max {h['plain']['max_ms']:.0f} ms, "
                  f"Lightning min {h['lightning']['min_ms']:.0f} / p95 {h['lightning']['p95_ms']:.0f} / max "
                  f"{h['lightning']['max_ms']:.0f} ms: the machine's jitter, which is why the rows differ from one "
                  f"another by more than Lightning's overhead and why the resolution phase exists."]
        fc = res["fixed_costs"]
        lines += ["", "## Fixed costs, measured inside each side", "",
                  "| cost (ms) | plain | Lightning |", "|---|---:|---:|"]
        for k, label in (("outside_window_per_step_ms", "per step, outside the batch window (interval - window)"),
                         ("per_epoch_ms", "per epoch (epoch span - sum of its step intervals)"),
                         ("per_fit_ms", "per fit() call (fit wall time - epoch span)"),
                         ("first_step_extra_ms", "first step of a round over the median step (AdamW state, first-call costs)")):
            a, b = fc["plain"].get(k), fc["lightning"].get(k)
            if a is not None:
                lines.append(f"| {label} | {a:.1f} | {b:.1f} |")
        lines.append(f"| Trainer construction (build_trainer), per run | - | {fc['lightning']['trainer_build_ms']:.1f} |")
        lines += ["", "Per-epoch and per-fit costs are paid once per epoch / run (a real CIFAR-10 epoch at batch 256 "
                  "is about 200 steps), not per step."]
        if rz:
            lines += ["", "## Resolution: Lightning's per-step cost on a tiny step", "",
                      f"The same interleaved comparison ({rz['config']['rounds']} rounds x ({rz['config']['warmup_steps']} + "
                      f"{rz['config']['steps']}) steps per side) on ViT dim {rz['config']['dim']}, depth {rz['config']['depth']}, "
                      f"heads {rz['config']['heads']}, batch {rz['config']['batch_size']} ({rz['config']['parameters']:,} "
                      f"parameters), where a step is milliseconds and the jitter is a fraction of one, so Lightning's "
                      f"fixed per-step work (hooks, training_step wrapper, torchmetrics update, self.log, callbacks, "
                      f"logger connector, optimizer / closure wrapping) shows:", "",
                      "| measure (ms per step) | plain | Lightning | Lightning - plain (95 %) | ratio |", "|---|---:|---:|---:|---:|"]
            for key, _, label in MEASURES[:2]:
                s = rz["measures"][key]
                lines.append(f"| {label.replace(' (headline)', '')} | {s['plain']['median_ms']:.2f} | {s['lightning']['median_ms']:.2f} | "
                             f"{s['difference_ms']:+.2f} ({_fmt_ci(s['difference_ci95_ms'], 2)}) | {s['ratio']:.3f} |")
            lines += ["", f"Losses identical step for step: max |diff| {rz['equivalence']['max_abs_loss_diff']:.3g}. "
                      f"The one per-step cost that grows with the batch, the torchmetrics update (top-1 + top-5 "
                      f"accuracy), takes {rz['metric_update_ms']['resolution_batch']:.3f} ms at batch "
                      f"{rz['config']['batch_size']} and {rz['metric_update_ms']['headline_batch']:.3f} ms at batch "
                      f"{c['batch_size']} (median of 200 calls). Projected Lightning cost at the headline config: "
                      f"{rz['overhead_ms']:.2f} ms on a {h['plain']['median_ms']:.0f} ms "
                      f"step = {100 * (rz['projected_ratio'] - 1):.3f} % (95 % {_fmt_ci(rz['projected_ratio_ci95'], 4)} as a ratio)."]
        e = res["equivalence"]
        lines += ["", "## Same work on both sides", "",
                  f"- Losses, step by step over all {e['steps_compared']} steps: max |plain - Lightning| = "
                  f"{e['max_abs_loss_diff']:.3g} ({'bit-identical' if e['max_abs_loss_diff'] == 0 else 'not bit-identical'}).",
                  f"- Optimizer: {e['param_groups']}; final learning rates plain {[f'{v:.3g}' for v in e['final_lr_plain']]} "
                  f"vs Lightning {[f'{v:.3g}' for v in e['final_lr_lightning']]}.",
                  f"- Threads inside the steps: plain {e['threads_plain']}, Lightning {e['threads_lightning']}; "
                  f"deterministic algorithms (warn-only, as build_trainer sets them): plain {e['deterministic_plain']}, "
                  f"Lightning {e['deterministic_lightning']}.",
                  f"- CPU use (process CPU time / wall time) per round: plain {e['cpu_util_plain']}, Lightning "
                  f"{e['cpu_util_lightning']} (close to {m['torch_threads']}: both threads busy in both)."]
    lines += ["", "## Setup", "",
              f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}; "
              f"torch {m['torch_version']}, lightning {m['lightning_version']}, torchmetrics {m['torchmetrics_version']}, "
              f"Python {m['python_version']}; started {m['started_utc']}, finished {m.get('finished_utc')}; "
              f"load average at start {m['load_avg_start']}, at end {m.get('load_avg_end')}.",
              f"- Command: `{m['command']}`",
              f"- Model: ViT (models.vit.ViT via training.runner.prepare), {c['image_size']} px, patch {c['patch_size']}, "
              f"dim {c['dim']}, depth {c['depth']}, heads {c['heads']}, mlp_ratio {c['mlp_ratio']}, drop_path {c['drop_path']}, "
              f"{c['parameters']:,} parameters; fp32 ({c['precision']}).",
              f"- Batch: one fixed synthetic batch of {c['batch_size']} images (3x{c['image_size']}x{c['image_size']}, "
              f"standard normal) and labels in 0..9, served by DataLoader(batch_size=None) over a dataset returning it.",
              f"- Optimisation: AdamW lr {c['lr']} wd {c['weight_decay']} (no decay on biases, norms, positions, CLS), "
              f"warm-up {c['warmup']} + cosine LambdaLR per step over the {c['warmup_steps'] + c['steps']} steps of a round, "
              f"label smoothing {c['label_smoothing']}, gradient clipping {c['gradient_clip_val']}.",
              f"- Rounds: {c['rounds']}, alternating which side goes first; per side and round {c['warmup_steps']} "
              f"untimed warm-up step(s) then {c['steps']} timed steps; before round 1, one untimed step on a throwaway "
              f"copy of the network warms up the process.",
              f"- Lightning side: {r.get('lightning_setup', {}).get('description', '')}",
              "", "## Method and reading", ""]
    lines += [f"- {n}" for n in r["notes"]]
    lines += ["", "## Rounds (headline config)", "", "| round | first | plain median step (ms) | Lightning median step (ms) | "
              "ratio | plain fit (s) | Lightning fit (s) | CPU use plain / Lightning |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for i, rd in enumerate(r["rounds"]):
        p, li = rd["plain"], rd["lightning"]
        pm, lm = median(p["intervals_ms"][c["warmup_steps"]:]), median(li["intervals_ms"][c["warmup_steps"]:])
        lines.append(f"| {i + 1} | {rd['first']} | {pm:.1f} | {lm:.1f} | {lm / pm:.3f} | {p['fit_s']:.2f} | "
                     f"{li['fit_s']:.2f} | {p['cpu_util']:.2f} / {li['cpu_util']:.2f} |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with quiet_and_restored():
            return _main(args, argv)
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _main(args, argv: List[str]) -> int:
    out = args.out.expanduser()
    if out.is_dir():
        raise BenchError(f"--out {out} is a folder; give a path without suffix such as {out / 'train_step_overhead'}")
    steps_per_round = args.warmup + args.steps
    cfg = make_config(args.batch_size, args.dim, args.depth, args.heads, steps_per_round, args.seed)
    res_steps = args.warmup + args.resolution_steps
    res_cfg = (make_config(args.resolution_batch, args.resolution_dim, args.resolution_depth, args.resolution_heads,
                           res_steps, args.seed, what="resolution-") if args.resolution_steps else None)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # the flag build_trainer's Trainer sets process-wide (deterministic="warn"); set up front so both sides share it
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)

    setup = Setup(cfg, steps_per_round)
    command = command_line("bench_train_step.py", argv)
    report: Dict[str, Any] = dict(
        target=dict(description="A Lightning training step is within 5 % of a plain PyTorch loop on the same model and "
                                "batch (CPU, ViT default, measured side by side).", max_ratio=TARGET_RATIO,
                    judged_on="median step interval (start to start), Lightning / plain"),
        machine=machine(torch.get_num_threads(), command, lightning_version=L.__version__,
                        torchmetrics_version=torchmetrics.__version__),
        config=dict(model="vit", attention=cfg["attention"], batch_size=int(cfg["batch_size"]), image_size=cfg["image_size"],
                    patch_size=cfg["patch_size"], dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"],
                    mlp_ratio=cfg["mlp_ratio"], dropout=cfg["dropout"], drop_path=cfg["drop_path"],
                    parameters=setup.parameters, lr=cfg["lr"], weight_decay=cfg["weight_decay"], warmup=cfg["warmup"],
                    betas=list(cfg["betas"]), label_smoothing=cfg["label_smoothing"],
                    gradient_clip_val=cfg["gradient_clip_val"], precision=cfg["precision"], dtype="float32",
                    device="cpu", deterministic=cfg["deterministic"], log_every_n_steps=cfg["log_every_n_steps"],
                    steps=args.steps, warmup_steps=args.warmup, rounds=args.rounds, seed=cfg["seed"],
                    data_source=cfg["source_used"], resolution_steps=args.resolution_steps),
        lightning_setup={}, rounds=[], results=None, complete=False,
        notes=[
            "Headline = step interval (start of a step to the start of the next): in Lightning it holds everything "
            "done per step (data fetch, batch_to_device, every callback hook, training_step with the torchmetrics "
            "update and self.log, zero_grad, backward, clipping, optimizer and scheduler steps, LearningRateMonitor, "
            "FiniteLossGuard, the logger update after on_train_batch_end).",
            "The epoch row adds per-epoch work (train metrics compute + log_dict, the last.ckpt write of "
            "ModelCheckpoint) and the warm-up step to a short epoch, and the fit row Trainer.fit's setup and "
            "teardown; these rows are means over whole rounds rather than medians of steps, so the machine's jitter "
            "moves them more; the fixed-cost table gives the same costs measured inside each side.",
            "Logging: the recipe's log_every_n_steps (20); each fit() here ends after a handful of steps and "
            "Lightning logs at the last step, so TensorBoard writes happen at least as often as in a real run.",
            "The machine may be shared: CPU use per round (process CPU time / wall time) and the load average are "
            "recorded, and rounds alternate which side goes first so that drifts hit both.",
        ],
    )
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    m = report["machine"]
    log(f"{PROG}: {m['cpu_model']}, {m['logical_cpus']} CPUs, {threads} torch threads, torch {m['torch_version']}, "
        f"lightning {m['lightning_version']}; ViT dim {cfg['dim']} depth {cfg['depth']} heads {cfg['heads']}, "
        f"{setup.parameters:,} params, batch {cfg['batch_size']}; {args.rounds} rounds x ({args.warmup} + {args.steps}) "
        f"steps per side")

    # process warm-up on a throwaway copy: first-call initialisation (oneDNN primitives, allocator) paid by neither side
    t = time.perf_counter()
    run_plain(copy.deepcopy(setup.plain_net), torch.utils.data.DataLoader(FixedBatch(setup.batch, 1), batch_size=None),
              cfg, 1, cfg["seed"])
    log(f"process warm-up step: {time.perf_counter() - t:.2f} s")

    rng = random.Random(cfg["seed"])
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as logdir:
        def save():
            write_report(report, out)

        sigs = run_rounds(setup, args.rounds, args.warmup, logdir, "headline", log, report["rounds"], after_round=save)
        li = report["rounds"][0]["lightning"]
        report["lightning_setup"] = dict(
            callbacks=li["callbacks"], logger=li["logger"],
            description=f"callbacks {', '.join(li['callbacks'])} (+ the two timing callbacks of this script, first "
                        f"and last); logger {li['logger']} in a temporary folder; validation off (limit_val_batches=0); "
                        f"progress bar off; Trainer from training.runner.build_trainer.")
        save()
        timed = timed_rounds(report["rounds"], args.warmup)
        measures = {key: compare(timed, key, per_step, steps_per_round, rng, threads) for key, per_step, _ in MEASURES}
        head = measures["intervals_ms"]
        report["results"] = dict(
            verdict="PASS" if head["ratio"] <= TARGET_RATIO else "FAIL", ratio=head["ratio"],
            plain_ms_per_step=head["plain"]["median_ms"], lightning_ms_per_step=head["lightning"]["median_ms"],
            ratio_ci95=head["bootstrap_ci95"], measures=measures,
            fixed_costs=fixed_costs(report["rounds"], args.warmup),
            equivalence=equivalence(report["rounds"], sigs), resolution=None,
        )
        save()

        if res_cfg is not None:
            tiny = Setup(res_cfg, res_steps, dm=setup.dm)
            run_plain(copy.deepcopy(tiny.plain_net), torch.utils.data.DataLoader(FixedBatch(tiny.batch, 3), batch_size=None),
                      res_cfg, 3, res_cfg["seed"])
            rrecords: List[Dict[str, Any]] = []
            rsigs = run_rounds(tiny, args.rounds, args.warmup, logdir, "resolution", log, rrecords)
            rtimed = timed_rounds(rrecords, args.warmup)
            rmeasures = {key: compare(rtimed, key, True, res_steps, rng, threads) for key, _, _ in MEASURES[:2]}
            num_classes = int(cfg.get("num_classes", 10))
            mu = dict(resolution_batch=metric_update_ms(tiny.module, int(res_cfg["batch_size"]), num_classes, threads),
                      headline_batch=metric_update_ms(setup.module, int(cfg["batch_size"]), num_classes, threads))
            growth = max(0.0, mu["headline_batch"] - mu["resolution_batch"])
            d = rmeasures["intervals_ms"]
            overhead = d["difference_ms"] + growth
            ci = [v + growth for v in d["difference_ci95_ms"]] if d["difference_ci95_ms"] else [overhead, overhead]
            base = head["plain"]["median_ms"]
            report["results"]["resolution"] = dict(
                config=dict(batch_size=int(res_cfg["batch_size"]), dim=res_cfg["dim"], depth=res_cfg["depth"],
                            heads=res_cfg["heads"], parameters=tiny.parameters, steps=args.resolution_steps,
                            warmup_steps=args.warmup, rounds=args.rounds),
                measures=rmeasures, metric_update_ms=mu, metric_growth_ms=growth, overhead_ms=overhead,
                overhead_ci95_ms=ci, projected_ratio=(base + overhead) / base,
                projected_ratio_ci95=[(base + v) / base for v in ci],
                equivalence=equivalence(rrecords, rsigs),
                per_round_difference_ms=[median(rd["lightning"]["intervals_ms"]) - median(rd["plain"]["intervals_ms"])
                                         for rd in rtimed],
            )
    report["complete"] = True
    finish(report["machine"])
    write_report(report, out)

    res = report["results"]
    log(f"{res['verdict']}: Lightning {res['lightning_ms_per_step']:.1f} ms/step vs plain {res['plain_ms_per_step']:.1f} "
        f"ms/step, ratio {res['ratio']:.3f} (per-round {head['per_round_min']:.3f} to {head['per_round_max']:.3f}, "
        f"bootstrap 95 % {_fmt_ci(head['bootstrap_ci95'])}); target <= {TARGET_RATIO}")
    for key, _, label in MEASURES[1:]:
        s = measures[key]
        log(f"  {label}: plain {s['plain']['median_ms']:.1f} ms, Lightning {s['lightning']['median_ms']:.1f} ms, ratio {s['ratio']:.3f}")
    fc = res["fixed_costs"]["lightning"]
    log(f"  Lightning fixed costs: {fc['outside_window_per_step_ms']:.2f} ms/step outside the window, "
        f"{fc['per_epoch_ms']:.1f} ms/epoch, {fc['per_fit_ms']:.0f} ms/fit, Trainer build {fc['trainer_build_ms']:.0f} ms")
    rz = res["resolution"]
    if rz:
        log(f"  resolution (tiny step): Lightning costs {rz['overhead_ms']:.2f} ms/step (95 % {_fmt_ci(rz['overhead_ci95_ms'], 2)}) "
            f"-> projected ratio {rz['projected_ratio']:.4f} ({_fmt_ci(rz['projected_ratio_ci95'], 4)})")
    log(f"  losses max |diff| {res['equivalence']['max_abs_loss_diff']:.3g}; param groups identical: "
        f"{res['equivalence']['param_groups_identical']}")
    md, js = result_paths(out)
    log(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
