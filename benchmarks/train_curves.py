"""Training curves and a results table from train.py run folders (TensorBoard events + results.json).

    python benchmarks/train_curves.py lightning_logs/vit-softmax-local/version_0 ... \
        --out benchmarks/results/train-cpu --machine "2-core AMD EPYC, no GPU"

For each run: one figure (PNG + PDF) with the training loss per step (and its running mean) on the left and
the validation metrics per evaluation on the right; then `summary.md` and `summary.json` in --out: one row per
run with its test metrics, best validation score, parameters, steps, epochs, fit time, device and the command
settings that differ from the task's recipe. Reads the events with TensorBoard's own reader.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from profiling.plots import STYLE, plt  # plt with the Agg backend selected
from training.config import TRAINER_DEFAULTS
from training.tasks import get_task
from utils.io import write_json, write_text

SKIP_SCALARS = ("epoch",)


def read_scalars(run_dir: Path) -> Dict[str, List[Tuple[int, float]]]:
    out: Dict[str, List[Tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def running_mean(values: Sequence[float], window: int) -> List[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(run_dir: Path, results: dict, out: Path) -> Path:
    scalars = read_scalars(run_dir)
    train = scalars.get("train/loss_step", [])
    val_tags = sorted(t for t in scalars if t.startswith("val/") and t != "val/loss")
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.0, 2.6), constrained_layout=True)
        if train:
            steps, values = zip(*train)
            ax1.plot(steps, values, color="0.75", lw=0.6, label="per step")
            ax1.plot(steps, running_mean(values, max(1, len(values) // 40)), color="C0", lw=1.2, label="running mean")
            ax1.legend(frameon=False)
        if "val/loss" in scalars:
            s, v = zip(*scalars["val/loss"])
            ax1.plot(s, v, "o-", color="C3", ms=2.5, lw=1, label="validation")
            ax1.legend(frameon=False)
        ax1.set_xlabel("optimiser step")
        ax1.set_ylabel("loss")
        ax1.set_title("loss")
        for i, tag in enumerate(val_tags):
            s, v = zip(*scalars[tag])
            ax2.plot(s, v, "o-", ms=2.5, lw=1, color=f"C{i}", label=tag)
        ax2.set_xlabel("optimiser step")
        ax2.set_title("validation")
        if val_tags:
            ax2.legend(frameon=False)
        fig.suptitle(f"{results.get('run', run_dir.parent.name)} ({results.get('device', '?')})", fontsize=10)
        stem = out / f"{run_dir.parent.name}-{run_dir.name}"
        for ext in ("png", "pdf"):
            fig.savefig(f"{stem}.{ext}", dpi=150)
        plt.close(fig)
    return Path(f"{stem}.png")


def recipe_changes(config: dict) -> Dict[str, object]:
    recipe = {**get_task(config["model"]).recipe(config.get("recipe")), **TRAINER_DEFAULTS}
    ignore = {"data_dir", "cache_dir", "source_used", "mean", "std", "num_classes", "progress_bar", "profiler"}
    return {k: v for k, v in config.items() if k in recipe and k not in ignore and recipe[k] != v
            and not (isinstance(v, list) and tuple(v) == recipe[k])}


def read_config(run_dir: Path) -> dict:
    hp = yaml.load((run_dir / "hparams.yaml").read_text(), Loader=yaml.FullLoader) or {}  # Lightning writes tuples
    return hp.get("config", {})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (…/<model>-<attention>-<source>/version_N)")
    p.add_argument("--out", required=True, help="folder for the figures and summary.md / summary.json")
    p.add_argument("--machine", default="", help="the machine the runs were made on, for the table's caption")
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    missing = [str(r) for r in runs if not (r / "results.json").is_file() or not (r / "hparams.yaml").is_file()]
    if missing:
        print(f"train_curves.py: error: no results.json / hparams.yaml in {', '.join(missing)}; pass folders written by train.py",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        config = read_config(run)
        figure = plot_run(run, results, out)
        rows.append({**{k: results[k] for k in ("run", "model", "attention", "data_source", "parameters", "monitor",
                                               "best_val", "test", "epochs", "steps", "fit_seconds", "device")},
                     "changes": recipe_changes(config), "figure": figure.name})
    write_json(out / "summary.json", {"machine": args.machine, "runs": rows})
    lines = [f"# Training runs{f' on {args.machine}' if args.machine else ''}", "",
             "| run | test | best val | params | steps (epochs) | fit time | settings changed from the recipe | curve |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        test = ", ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in r["test"].items() if not k.endswith("/loss"))
        best = f"{r['monitor']} {r['best_val']:.4g}" if r["best_val"] is not None else "-"
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "none"
        lines.append(f"| {r['run']} | {test} | {best} | {r['parameters'] / 1e6:.2f}M | {r['steps']} ({r['epochs']}) | "
                     f"{r['fit_seconds']:.0f} s | {changes} | [{r['figure']}]({r['figure']}) |")
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    print(f"wrote {len(rows)} curves and summary.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
