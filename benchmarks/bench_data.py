"""How fast do the DataModules get real data ready? Cold start (decode / train tokenizer / encode into
a fresh cache), warm start (a second module served from that cache), and CIFAR-10 batch throughput.

Needs real copies in the official layouts; by default ../shared/data next to the repository:

    python benchmarks/bench_data.py [--data ../shared/data --threads 2 --out benchmarks/results/data_loading.md]

Targets (2 CPU cores): CIFAR-10 50,000 JPEGs decoded and cached <= 60 s, then batches of 256 with
augmentation >= 20,000 images/s; IMDB 25,000 reviews, tokenizer trained and encoded <= 30 s;
WikiText-2 <= 15 s; a second run served from the cache <= 3 s each.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from datamodules import CIFAR10DataModule, IMDBDataModule, WikiTextDataModule
from profiling.harness import write_results
from profiling.machine import cpu_model


def ready(make) -> float:
    """Seconds to build a module and run prepare_data + setup("fit") on it."""
    t0 = time.perf_counter()
    dm = make()
    dm.prepare_data()
    dm.setup("fit")
    return time.perf_counter() - t0, dm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batches", type=int, default=60, help="CIFAR-10 batches of 256 to time")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "data_loading.md")
    args = ap.parse_args()
    needed = [args.data / "cifar10-jpg" / "train.tar.gz", args.data / "imdb" / "aclImdb.tar.gz", args.data / "wikitext-2" / "wiki.train.tokens"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"bench_data: real data not found ({', '.join(missing)}); pass --data DIR holding cifar10-jpg/, imdb/ and wikitext-2/", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cache = Path(tempfile.mkdtemp(prefix="bench-data-cache-"))
    rows = []

    def record(name, seconds, target, unit="s", higher_is_better=False, note=""):
        met = seconds >= target if higher_is_better else seconds <= target
        rows.append(dict(step=name, value=seconds, unit=unit, target=target, higher_is_better=higher_is_better, met=met, note=note))
        op = ">=" if higher_is_better else "<="
        print(f"{name:58s} {seconds:12,.2f} {unit:9s} target {op} {target:,} {unit}: {'yes' if met else 'NO'}", flush=True)

    try:
        # --- CIFAR-10
        mk = lambda: CIFAR10DataModule(data_source="local", data_dir=str(args.data / "cifar10-jpg"), cache_dir=str(cache), batch_size=256)  # noqa: E731
        t, dm = ready(mk)
        record("CIFAR-10: decode 60,000 JPEGs into the cache (cold)", t, 60, note=f"train {len(dm.train_set) + len(dm.val_set):,} images incl. validation")
        t, dm = ready(mk)
        record("CIFAR-10: second run from the cache (warm)", t, 3)
        loader = dm.train_dataloader()
        it = iter(loader)
        next(it)  # first batch: loader start-up
        n, t0 = 0, time.perf_counter()
        for _ in range(args.batches):
            try:
                x, *_ = next(it)
            except StopIteration:
                it = iter(loader)
                x, *_ = next(it)
            n += x.shape[0]
        ips = n / (time.perf_counter() - t0)
        record("CIFAR-10: train batches of 256 with augmentation (crop+flip)", ips, 20000, unit="images/s", higher_is_better=True, note=f"num_workers=0, {args.batches} batches")
        # --- IMDB
        mk = lambda: IMDBDataModule(data_source="local", data_dir=str(args.data / "imdb"), cache_dir=str(cache), tokenizer="bpe", vocab_size=16000)  # noqa: E731
        t, dm = ready(mk)
        record("IMDB: read 50,000 reviews, train BPE (16k) on train, encode (cold)", t, 30, note=f"vocab {dm.vocab_size:,}")
        t, _ = ready(mk)
        record("IMDB: second run from the cache (warm)", t, 3)
        # --- WikiText-2
        mk = lambda: WikiTextDataModule(name="wikitext-2", data_source="local", data_dir=str(args.data / "wikitext-2"), cache_dir=str(cache))  # noqa: E731
        t, dm = ready(mk)
        record("WikiText-2: word vocabulary + encode 3 splits (cold)", t, 15, note=f"tokens {dm.tokens_per_split}")
        t, _ = ready(mk)
        record("WikiText-2: second run from the cache (warm)", t, 3)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    lines = [
        "# DataModule preparation and throughput on real data",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {args.threads} torch threads; torch {torch.__version__}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Data: the copies in "
        "`../shared/data` (CIFAR-10 as JPEG tar.gz, IMDB as the official tar.gz, WikiText-2 tokenized files). "
        "Command: `python benchmarks/bench_data.py`. Cold = a fresh cache; warm = a new module on the same cache.",
        "",
        "| step | measured | target | met | note |",
        "|---|---:|---:|---|---|",
    ]
    for r in rows:
        op = ">=" if r["higher_is_better"] else "<="
        lines.append(f"| {r['step']} | {r['value']:,.2f} {r['unit']} | {op} {r['target']:,} {r['unit']} | {'yes' if r['met'] else 'no'} | {r['note']} |")
    write_results(args.out.with_suffix(""), rows, "\n".join(lines) + "\n")  # OUT.md and OUT.json
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
