"""How fast does the Pathfinder generator make images, and do simple statistics of them tell the label?

    python benchmarks/bench_pathfinder_generation.py [--images 20000 --processes 2 --out benchmarks/results/pathfinder_generation]

Speed: images/s at each resolution in batches of --batch, made in one process and in --processes worker
processes (each a contiguous share of the indices, as DataLoader workers take batches), and through
PathfinderDataModule's training loader with --processes workers. Target: at least 2,000 images/s at 32 px on
2 cores. Statistics of the 32 px images timed (and of the 128 px ones): label balance; ink, disc distance, disc
positions and dashes drawn per label; attempts; and the cross-validated accuracy of a logistic regression on
those trivial features, which must stay at chance.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from datamodules import pathfinder_generator as gen
from datamodules.lra_pathfinder import PathfinderDataModule
from profiling.harness import command_line, finish, int_arg, machine, write_results

TARGET_32 = 2000  # images/s at 32 px on 2 cores


def speed(resolution: int, n: int, batch: int, processes: int, repeats: int) -> Dict[str, object]:
    """Images/s in one process and in `processes` processes, each batch a task as a DataLoader worker's (the
    images go back to the parent, as batches do); median of `repeats` runs each, after a warm-up."""
    jobs = [(np.arange(a, min(a + batch, n)), "train", 0, resolution) for a in range(0, n, batch)]
    gen.generate(np.arange(batch), "val", resolution=resolution)  # tables built, code paths warm
    one, many = [], []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.starmap(gen.generate, [(np.arange(batch), "val", 0, resolution)] * processes)  # workers warm
        for _ in range(repeats):
            t0 = time.perf_counter()
            for job in jobs:
                gen.generate(*job)
            one.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            pool.starmap(gen.generate, jobs, chunksize=1)
            many.append(n / (time.perf_counter() - t0))
    return {"resolution": resolution, "images": n, "batch": batch, "repeats": repeats,
            "one_process_per_s": statistics.median(one), "one_process_runs": one,
            "processes": processes, "processes_per_s": statistics.median(many), "processes_runs": many}


def loader_speed(resolution: int, batches: int, batch: int, workers: int) -> Dict[str, object]:
    """Images/s through PathfinderDataModule's training loader (generated source, `workers` workers)."""
    dm = PathfinderDataModule(data_source="generated", resolution=resolution, batch_size=batch, num_workers=workers)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    seconds = time.perf_counter() - t0
    del it  # workers shut down here, not in a process forked later for the next resolution's pool
    assert b["input_ids"].shape == (batch, resolution * resolution)
    return {"resolution": resolution, "batch": batch, "batches": batches, "workers": workers,
            "per_s": batches * batch / seconds}


def cv_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5) -> float:
    """Cross-validated accuracy of a logistic regression (Newton's method, a little ridge), standardised."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-9)
    x = np.column_stack([x, np.ones(len(x))])
    correct = 0
    for f in range(folds):
        test = np.arange(len(x)) % folds == f
        a, y, w = x[~test], labels[~test], np.zeros(x.shape[1])
        for _ in range(25):
            p = 1 / (1 + np.exp(-a @ w))
            w -= np.linalg.solve((a * (p * (1 - p))[:, None]).T @ a + 1e-3 * np.eye(len(w)), a.T @ (p - y) + 1e-3 * w)
        correct += int(((x[test] @ w > 0) == labels[test]).sum())
    return correct / len(x)


def label_stats(resolution: int, n: int) -> Dict[str, object]:
    out = gen.generate(np.arange(n), "train", resolution=resolution)
    y = out.labels
    ink = out.images.reshape(n, -1).astype(np.float64).sum(1) / 255  # in full-intensity pixels
    distance = np.linalg.norm(out.discs[:, 0] - out.discs[:, 1], axis=1)
    g = gen.GEOMETRY[resolution]

    def by_label(x):
        return {"positive_mean": float(x[y == 1].mean()), "negative_mean": float(x[y == 0].mean()),
                "std": float(x.std()),
                "difference_in_std": float((x[y == 1].mean() - x[y == 0].mean()) / x.std()) if x.std() > 0 else 0.0}

    trivial = np.column_stack([ink, out.discs.reshape(n, 4), distance, distance**2, out.dashes])
    return {"resolution": resolution, "images": n, "positives": int(y.sum()),
            "ink_pixels": by_label(ink), "disc_distance": by_label(distance),
            "disc_x": by_label(out.discs[..., 0].mean(1)), "disc_y": by_label(out.discs[..., 1].mean(1)),
            "dashes_drawn": by_label(out.dashes.astype(np.float64)), "dashes_possible": g.slots,
            "distractors_drawn_mean": float((out.dashes - 2 * g.contour_length).mean() / g.distractor_length),
            "distractors_possible": g.distractors,
            "first_attempt_share": float((out.attempts == 0).mean()), "attempts_mean": float(out.attempts.mean() + 1),
            "attempts_max": int(out.attempts.max() + 1),
            "logistic_regression_cv_accuracy": cv_accuracy(trivial, y),
            "chance_interval_95": [0.5 - 1.96 * 0.5 / math.sqrt(n), 0.5 + 1.96 * 0.5 / math.sqrt(n)]}


def render_markdown(report: Dict) -> str:
    m = report["machine"]
    lines = ["# Pathfinder generator: speed and label statistics", "",
             f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; torch {m['torch_version']}, numpy "
             f"{m['numpy_version']}, Python {m['python_version']}; {m['started_utc']}; load average "
             f"{m['load_avg_start']} at the start, {m['load_avg_end']} at the end (shared with other agents). "
             f"Command: `{m['command']}`.", "", "## Speed (images/s; median of the runs)", "",
             "| resolution | images | batch | 1 process | runs | processes | N processes | runs |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for s in report["speed"]:
        lines.append(f"| {s['resolution']} | {s['images']:,} | {s['batch']} | {s['one_process_per_s']:,.0f} | "
                     f"{', '.join(f'{x:,.0f}' for x in s['one_process_runs'])} | {s['processes']} | "
                     f"{s['processes_per_s']:,.0f} | {', '.join(f'{x:,.0f}' for x in s['processes_runs'])} |")
    lines += ["", "Through PathfinderDataModule's training loader (generated source): " + "; ".join(
        f"{s['resolution']} px, batches of {s['batch']}, {s['workers']} workers: {s['per_s']:,.0f} images/s"
        for s in report["loader"]) + ".", "",
        f"Target: at least {TARGET_32:,} images/s at 32 px on 2 cores: "
        f"{'met' if report['target_met'] else 'NOT met'}.", "", "## Label statistics", "",
        "| resolution | images | positives | ink px +/- | disc distance +/- | disc x +/- | disc y +/- | dashes +/- | "
        "distractors drawn | first attempt | LR accuracy (chance 95 %) |",
        "|---|---:|---:|---|---|---|---|---|---|---:|---|"]
    def pm(v, fmt=".1f"):
        return f"{v['positive_mean']:{fmt}} / {v['negative_mean']:{fmt}} ({v['difference_in_std']:+.3f} sd)"

    for s in report["stats"]:
        lo, hi = s["chance_interval_95"]
        lines.append(f"| {s['resolution']} | {s['images']:,} | {s['positives']:,} | {pm(s['ink_pixels'])} | "
                     f"{pm(s['disc_distance'], '.2f')} | {pm(s['disc_x'], '.2f')} | {pm(s['disc_y'], '.2f')} | "
                     f"{pm(s['dashes_drawn'], '.2f')} | {s['distractors_drawn_mean']:.2f} of "
                     f"{s['distractors_possible']} | {100 * s['first_attempt_share']:.1f} % | "
                     f"{s['logistic_regression_cv_accuracy']:.4f} ({lo:.3f}-{hi:.3f}) |")
    lines += ["", "+/-: mean over positives / over negatives (difference in standard deviations of all images). "
              "LR: 5-fold cross-validated logistic regression on ink, both disc positions, their distance and its "
              "square, and the dash count; it stays inside the interval that chance alone gives "
              "(0.5 +/- 1.96 x 0.5 / sqrt(n)) when none of them tells the label.", ""]
    lines += [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int_arg("--images"), default=20000, help="32 px images per timed run")
    ap.add_argument("--images-128", type=int_arg("--images-128"), default=2000, help="Path-X images per timed run")
    ap.add_argument("--batch", type=int_arg("--batch"), default=256)
    ap.add_argument("--processes", type=int_arg("--processes"), default=2)
    ap.add_argument("--repeats", type=int_arg("--repeats"), default=3)
    ap.add_argument("--stats-images", type=int_arg("--stats-images"), default=20000)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "pathfinder_generation")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the generator is numpy; the processes are the parallelism
    report: Dict[str, object] = {"machine": machine(1, command_line("bench_pathfinder_generation.py", argv),
                                                    numpy_version=np.__version__)}
    runs: List[Dict[str, object]] = []
    for resolution, n in ((32, args.images), (64, max(args.images // 4, args.batch)), (128, args.images_128),
                          (256, max(args.images_128 // 4, 16))):
        runs.append(speed(resolution, n, min(args.batch, n), args.processes, args.repeats))
        print(f"{resolution} px: {runs[-1]['one_process_per_s']:,.0f} images/s in one process, "
              f"{runs[-1]['processes_per_s']:,.0f} in {args.processes}", flush=True)
    report["speed"] = runs
    report["loader"] = [loader_speed(32, max(4, args.images // args.batch // 4), args.batch, args.processes),
                        loader_speed(128, 4, 32, args.processes)]
    report["target_met"] = runs[0]["processes_per_s"] >= TARGET_32
    report["stats"] = [label_stats(32, args.stats_images), label_stats(128, max(args.stats_images // 10, 100))]
    for s in report["stats"]:
        print(f"{s['resolution']} px statistics: LR accuracy {s['logistic_regression_cv_accuracy']:.4f}", flush=True)
    finish(report["machine"])
    report["notes"] = [
        "Each image is a pure function of (data_seed, split, index); an attempt grows both scenes of its disc "
        "pair and counts when both complete, so disc positions and dash counts have the same law for both "
        "labels by construction; the table measures what is left (ink differs only through anti-aliasing and "
        "where dashes meet discs).",
        "With N processes each batch is a task handed to the next free process and its images are sent back, "
        "as DataLoader workers do; numpy runs single-threaded in each.",
        f"Generator VERSION {gen.VERSION}.",
    ]
    md, js = write_results(args.out, report, render_markdown(report))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
