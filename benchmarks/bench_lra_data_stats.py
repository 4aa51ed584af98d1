"""The data statistics behind LRA Text's and Image's conventions, from the real copies (../shared/data):
how long IMDB's reviews are in bytes (how many exceed 1,000 / 4,000 / 4,096, how much text each cut keeps),
and CIFAR-10's 8-bit greyscale values (LRAImageDataModule's, checked against an independent decoding).

    python benchmarks/bench_lra_data_stats.py [--data ../shared/data --out benchmarks/results/lra_data_stats]

Text lengths are counted twice: the review files' bytes as released (`<br />` tags included, as in LRA's
tfds copy) and the bytes LRATextDataModule encodes (IMDB's reader turns `<br />` into spaces). Image: the
module's grey values of all 50,000 training and 10,000 test images, and the same images decoded again with
PIL and converted with exact integer arithmetic. About a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from datamodules.cifar import CIFAR10_MEAN
from datamodules.greyscale import LUMA_WEIGHTS
from datamodules.imdb_readers import _REVIEW_RE, read_aclimdb
from datamodules.lra_image import LRAImageDataModule
from datamodules.lra_text import LRATextDataModule
from profiling.harness import command_line, finish, int_arg, machine, write_results
from utils.stats import percentile

CUTS = (1000, 4000, 4096)  # the released config, the Skyformer port's bytes, the reproductions' model length


def length_stats(lengths: Sequence[int]) -> Dict[str, float]:
    xs = [int(n) for n in lengths]
    total = sum(xs)
    out = dict(n=len(xs), mean=total / len(xs), median=percentile(xs, 50), p90=percentile(xs, 90),
               p95=percentile(xs, 95), p99=percentile(xs, 99), max=max(xs), min=min(xs))
    for cut in CUTS:
        over = sum(n > cut for n in xs)
        out[f"over_{cut}"] = over
        out[f"over_{cut}_pct"] = 100.0 * over / len(xs)
        out[f"bytes_kept_{cut}_pct"] = 100.0 * sum(min(n, cut) for n in xs) / total
    return out


def text_stats(tarball: Path, cache: Path) -> Dict[str, Dict[str, Dict[str, float]]]:
    raw: Dict[str, List[int]] = {"train": [], "test": []}
    with tarfile.open(tarball) as tf:
        for m in tf:  # a header's size is the review file's length in bytes
            match = _REVIEW_RE.search(m.name)
            if m.isfile() and match:
                raw[match.group(1)].append(m.size)
    cleaned = read_aclimdb(tarball)
    seen = {s: [len(t.encode("utf-8")) for t in cleaned[s]["text"]] for s in ("train", "test")}
    # the module's lengths are these cut at 4096: checked, so the table describes what it serves
    dm = LRATextDataModule(data_source="local", data_dir=str(tarball.parent), cache_dir=str(cache))
    dm.setup()
    served = torch.cat([dm.train_set.lengths, dm.val_set.lengths]).sort().values
    assert torch.equal(served, torch.tensor(sorted(min(n, 4096) for n in seen["train"]))), "module lengths differ"
    out = {}
    for name, lengths in (("as released", raw), ("as LRATextDataModule encodes", seen)):
        out[name] = {s: length_stats(lengths[s]) for s in ("train", "test")}
        out[name]["all"] = length_stats(lengths["train"] + lengths["test"])
    return out


def exact_grey(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    return (511 * (2989 * r + 5870 * g + 1140 * b)) // (2 * 10000 * 255)


def independent_grey(tar_path: Path, classes: List[str]) -> np.ndarray:
    """(N, 32, 32) int64 in the module's order (class, then file name), decoded with PIL from the tar.gz."""
    found = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if m.isfile() and m.name.lower().endswith(".jpg"):
                parts = Path(m.name).parts
                with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                    found[(parts[-2], parts[-1])] = exact_grey(np.asarray(im.convert("RGB")))
    return np.stack([found[k] for k in sorted(found, key=lambda k: (classes.index(k[0]), k[1]))])


def grey_stats(pixels: torch.Tensor) -> Dict[str, float]:
    x = pixels.double()
    return dict(images=len(pixels), mean=x.mean().item(), std=x.std().item(), min=int(pixels.min()),
                max=int(pixels.max()), at_0_pct=100.0 * (pixels == 0).double().mean().item(),
                at_255_pct=100.0 * (pixels == 255).double().mean().item())


def image_stats(folder: Path, cache: Path) -> Dict[str, object]:
    dm = LRAImageDataModule(data_source="local", data_dir=str(folder), cache_dir=str(cache))
    dm.setup()
    sets = {"train": (dm.train_set.pixels, dm.train_set.labels), "test": (dm.test_set.pixels, dm.test_set.labels)}
    out: Dict[str, object] = {"published_mean_prediction": 255.5 * sum(w * m for w, m in zip(LUMA_WEIGHTS, CIFAR10_MEAN)) - 0.5}
    for split, (pixels, labels) in sets.items():
        ours = pixels.long().numpy()
        exact = independent_grey(folder / f"{split}.tar.gz", dm.classes).reshape(len(ours), -1)
        diff = ours - exact
        out[split] = dict(grey_stats(pixels), independent_mean=float(exact.mean()),
                          pixels_differing=int((diff != 0).sum()), differences=sorted(set(np.unique(diff).tolist())),
                          class_means={c: pixels[labels == k].double().mean().item() for k, c in enumerate(dm.classes)})
    return out


def render_markdown(report: Dict) -> str:
    m = report["machine"]
    lines = ["# LRA data statistics: Text byte lengths, Image greyscale", "",
             f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; torch {m['torch_version']}, Python "
             f"{m['python_version']}; {m['started_utc']}; load average {m['load_avg_start']} at the start, "
             f"{m['load_avg_end']} at the end (shared with other agents). Command: `{m['command']}`. "
             f"Data: {report['data']}.", "", "## Text: IMDB reviews in bytes", ""]
    for name, splits in report["text"].items():
        lines += [f"Counted {name}:", "",
                  "| split | reviews | mean | median | p90 | p99 | max | > 1,000 | > 4,000 | > 4,096 | kept at 1,000 | "
                  "kept at 4,096 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for split, s in splits.items():
            lines.append(f"| {split} | {s['n']:,} | {s['mean']:,.0f} | {s['median']:,.0f} | {s['p90']:,.0f} | "
                         f"{s['p99']:,.0f} | {s['max']:,} | {s['over_1000']:,} ({s['over_1000_pct']:.1f} %) | "
                         f"{s['over_4000']:,} ({s['over_4000_pct']:.2f} %) | {s['over_4096']:,} "
                         f"({s['over_4096_pct']:.2f} %) | {s['bytes_kept_1000_pct']:.1f} % | "
                         f"{s['bytes_kept_4096_pct']:.2f} % |")
        lines.append("")
    img = report["image"]
    lines += ["## Image: CIFAR-10 in LRA's 8-bit greyscale (values 0-255; tokens are value + 1)", "",
              "| split | images | mean | std | min | max | at 0 | at 255 | independent mean | pixels differing |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for split in ("train", "test"):
        s = img[split]
        lines.append(f"| {split} | {s['images']:,} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']} | {s['max']} | "
                     f"{s['at_0_pct']:.3f} % | {s['at_255_pct']:.3f} % | {s['independent_mean']:.4f} | "
                     f"{s['pixels_differing']:,} (by {s['differences']}) |")
    lines += ["", "Training mean per class: " + ", ".join(f"{c} {v:.1f}" for c, v in img["train"]["class_means"].items())
              + ".", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--threads", type=int_arg("--threads"), default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "lra_data_stats")
    args = ap.parse_args(argv)
    tarball, cifar = args.data / "imdb" / "aclImdb.tar.gz", args.data / "cifar10-jpg"
    missing = [str(p) for p in (tarball, cifar / "train.tar.gz", cifar / "test.tar.gz") if not p.is_file()]
    if missing:
        print(f"bench_lra_data_stats: real data not found ({', '.join(missing)}); pass --data DIR holding imdb/ "
              f"and cifar10-jpg/", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    report = {"machine": machine(args.threads, command_line("bench_lra_data_stats.py", argv)),
              "data": "IMDB aclImdb.tar.gz (official layout); CIFAR-10 as JPEG (quality ~75) train/test tar.gz"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lra-stats-cache-") as cache:
        report["text"] = text_stats(tarball, Path(cache))
        report["image"] = image_stats(cifar, Path(cache))
    report["seconds"] = time.perf_counter() - t0
    finish(report["machine"])
    pred = report["image"]["published_mean_prediction"]
    report["notes"] = [
        "Lengths 'as released' are the review files' sizes, `<br />` tags included as in LRA's tfds copy; 'as "
        "LRATextDataModule encodes' are after IMDB's reader replaces the tags by spaces; the module's own "
        "lengths (train + validation, cut at 4,096) were checked to match the second.",
        "Kept at L: the share of all bytes that a cut at L keeps. The released LRA config cuts at 1,000 bytes, "
        "the Skyformer port at 4,000 (padded to 4,096), LRATextDataModule at 4,096 by default.",
        "Image: 'independent mean' decodes the JPEGs again with PIL and applies trunc(255.5 * (2989 R + 5870 G + "
        "1140 B) / 2,550,000) in integers; the module computes it in float32 as TensorFlow does, which is one "
        "higher on 237 of the 2^24 colours: 'pixels differing' counts the pixels of those colours.",
        f"The published CIFAR-10 channel means {CIFAR10_MEAN} predict a training mean of {pred:.2f} (the luma is "
        f"linear; truncation costs half a level on average); this copy is JPEG, which moves channel means by "
        f"< 1e-3 of full scale.",
        f"Wall time {report['seconds']:.0f} s with {args.threads} torch threads.",
    ]
    md, js = write_results(args.out, report, render_markdown(report))
    print(render_markdown(report))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
