"""What can be predicted on ListOps without reading the expression? Baselines on the generated set.

    python benchmarks/bench_listops_baselines.py [--data-seed 0 --out benchmarks/results/listops_baselines]

Three predictors, fitted on the training split and scored on the validation and test splits (generated, data_seed
0, the cache ListOpsDataModule builds):

- the majority class;
- the outermost-operator rule: the label most frequent in training among expressions with the same first token
  (MIN, MAX, MED or SM), i.e. a model that reads one token;
- a multinomial logistic regression on the bag of tokens (how many of each operator and digit), i.e. a model that
  reads every token but not their order.

The published Transformer figures on ListOps (36.37 % in LRA, 37.1-38.4 % in the PyTorch reproductions) sit next
to the outermost-operator rule: a model that learns only which operator comes first gets most of that accuracy.
A short CPU run at chance level (majority class) has not learned even that.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.listops_format import OPERATORS, VOCAB_SIZE
from datamodules.lra_listops import ListOpsDataModule
from profiling.harness import command_line, finish, int_arg, machine, write_results

SPLITS = ("train", "val", "test")


def token_table(ds) -> tuple:
    """(first token, bag-of-tokens counts (N, vocabulary), label) of every example of a split."""
    first, bags, labels = [], [], []
    for i in range(len(ds)):
        item = ds[i]
        ids = item["input_ids"]
        ids = ids[ids != 0].numpy()
        first.append(int(ids[0]))
        bags.append(np.bincount(ids, minlength=VOCAB_SIZE))
        labels.append(int(item["label"]))
    return np.array(first), np.array(bags, np.float64), np.array(labels)


def interval(acc: float, n: int) -> list:
    half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
    return [acc - half, acc + half]


def baselines(tables: Dict[str, tuple]) -> Dict[str, Dict[str, float]]:
    first, bags, y = tables["train"]
    majority = int(np.bincount(y, minlength=10).argmax())
    rule = {int(f): int(np.bincount(y[first == f], minlength=10).argmax()) for f in np.unique(first)}
    mu, sd = bags.mean(0), bags.std(0) + 1e-9
    x = torch.tensor((bags - mu) / sd, dtype=torch.float64)
    w = torch.zeros(VOCAB_SIZE, 10, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
    target = torch.tensor(y)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, target) + 1e-4 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out: Dict[str, Dict[str, float]] = {}
    for split in SPLITS[1:]:
        f, bag, yy = tables[split]
        with torch.no_grad():
            lr = (torch.tensor((bag - mu) / sd) @ w + b).argmax(1).numpy()
        accs = {"majority class": float(np.mean(yy == majority)),
                "outermost-operator rule": float(np.mean(np.array([rule.get(int(t), majority) for t in f]) == yy)),
                "bag-of-tokens logistic regression": float(np.mean(lr == yy))}
        out[split] = {"examples": len(yy), **{k: {"accuracy": v, "ci95": interval(v, len(yy))} for k, v in accs.items()}}
    out["rule"] = {OPERATORS[t - 1]: label for t, label in sorted(rule.items()) if 1 <= t <= len(OPERATORS)}
    out["majority_label"] = majority
    return out


def render_markdown(report: Dict) -> str:
    m, r = report["machine"], report["result"]
    names = [k for k in r["val"] if k != "examples"]
    lines = ["# ListOps (generated): what a model gets without reading the expression", "",
             f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; torch {m['torch_version']}, Python "
             f"{m['python_version']}; {m['started_utc']}. Command: `{m['command']}`. Data: generated, data_seed "
             f"{report['data_seed']}; fitted on {report['train_examples']:,} training expressions.", "",
             "| predictor | validation accuracy (95 % CI) | test accuracy (95 % CI) |", "|---|---:|---:|"]
    for k in names:
        cells = [f"{100 * r[s][k]['accuracy']:.2f} % ({100 * r[s][k]['ci95'][0]:.1f}-{100 * r[s][k]['ci95'][1]:.1f})"
                 for s in ("val", "test")]
        lines.append(f"| {k} | {cells[0]} | {cells[1]} |")
    rule = ", ".join(f"{op} -> {label}" for op, label in r["rule"].items())
    lines += ["", f"Outermost-operator rule learned from training: {rule}; majority label {r['majority_label']}.", "",
              "Published Transformer accuracy on the release's ListOps: 36.37 % (LRA paper), 37.1-38.4 % (PyTorch "
              "reproductions). The release's data come from the same description; the figures above are for our "
              "generator's data, not the release's.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-seed", type=int_arg("--data-seed", 0), default=0)
    ap.add_argument("--cache-dir", default=None, help="where the generated set is cached (default: the suite's cache)")
    ap.add_argument("--sizes", default=None, help="train,val,test sizes of the generated set (default: LRA's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "listops_baselines")
    args = ap.parse_args(argv)
    kw = {"generated_sizes": tuple(int(s) for s in args.sizes.split(","))} if args.sizes else {}
    dm = ListOpsDataModule(data_source="generated", cache_dir=args.cache_dir, data_seed=args.data_seed, **kw)
    dm.prepare_data()
    dm.setup("fit")
    report: Dict[str, object] = {"machine": machine(torch.get_num_threads(), command_line("bench_listops_baselines.py", argv)),
                                 "data_seed": args.data_seed}
    tables = dict(zip(SPLITS, (token_table(d) for d in (dm.train_set, dm.val_set, dm.test_set))))
    report["train_examples"] = len(tables["train"][2])
    report["result"] = baselines(tables)
    finish(report["machine"])
    md, js = write_results(args.out, report, render_markdown(report))
    print(render_markdown(report))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
