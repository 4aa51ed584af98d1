"""train.py under DDP with two CPU processes (gloo): `python train.py ... --accelerator cpu --devices 2 --strategy ddp`
in a subprocess; Lightning's launcher starts rank 1 itself (it runs the same command line again).

Only rank 0 writes: one version folder, its TensorBoard event files all from rank 0's process (the pid is in
the file name; Lightning writes the fit and the test into two files of that process), one results.json, and
the summary line printed once; one efficiency.json aggregating both ranks' batches. About 9 s per launch on 2 cores (imports twice, the gloo rendezvous), so both
stay in the default suite.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--data-source", "synthetic", "--batch-size", "8",
       "--limit-train-batches", "3", "--limit-val-batches", "2", "--limit-test-batches", "2", "--max-epochs", "1",
       "--dim", "32", "--depth", "1", "--heads", "2", "--seq-len", "32", "--no-progress-bar"]


def launch(tmp_path, *argv):
    """(process, stdout, stderr, logdir); process.pid is rank 0's (the launcher's)."""
    env = dict(os.environ, ATTENTION_SUITE_CACHE=str(tmp_path / "cache"))
    for var in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED"):
        env.pop(var, None)  # a clean launch: Lightning picks a free port itself
    logdir = tmp_path / "logs"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv, *DDP, "--logdir", str(logdir)], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    return p, out, err, logdir


def check_single_writer(p, out, err, logdir: Path, run: str, monitor: str):
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in err
    assert [d.name for d in logdir.iterdir()] == [run]
    versions = [d.name for d in (logdir / run).iterdir()]
    assert versions == ["version_0"], versions
    run_dir = logdir / run / "version_0"
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    pids = {f.name.split(".")[-2] for f in events}  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert events and pids == {str(p.pid)}, [f.name for f in events]
    assert len(events) == 2  # fit + test, both from rank 0 (a single-process run writes the same two)
    assert len(list(logdir.rglob("results.json"))) == 1 and len(list(logdir.rglob("hparams.yaml"))) == 1
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 3 and results["monitor"] == monitor
    assert results["log_dir"] == str(run_dir)
    summaries = [line for line in (out + err).splitlines() if line.startswith(f"{run}: ")]
    assert len(summaries) == 1, summaries  # rank 1 prints nothing (its stdout is the same pipe)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    check_efficiency(logdir, run_dir, out + err)
    return results


def check_efficiency(logdir: Path, run_dir: Path, console: str):
    """The efficiency callbacks under DDP: one efficiency.json (rank 0's), aggregating both ranks' batches
    (3 each), one console table; per-step scalars in rank 0's event file."""
    assert len(list(logdir.rglob("efficiency.json"))) == 1
    eff = json.loads((run_dir / "efficiency.json").read_text())
    assert eff["world_size"] == 2 and eff["train_batches_measured"] == 6 and eff["val_batches_measured"] == 4
    assert "max over ranks" in eff["aggregation"] and "sum over ranks" in eff["aggregation"]
    assert eff["samples_per_s"] > 0 and eff["latency_ms_p50"] > 0 and eff["peak_mem_mib"] > 0
    assert console.count("efficiency (") == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    assert {"efficiency/train_latency_ms", "efficiency/train_samples_per_s", "efficiency/val_latency_ms_p50"} <= set(ea.Tags()["scalars"])


def test_ddp_two_cpu_processes_wikitext(tmp_path):
    p, out, err, logdir = launch(tmp_path, "--model", "wikitext", "--attention", "softmax")
    results = check_single_writer(p, out, err, logdir, "wikitext-softmax-synthetic", "val/ppl")
    assert set(results["test"]) == {"test/loss", "test/ppl", "test/bits_per_token"}


def test_ddp_imdb_length_buckets(tmp_path):
    """IMDB's BucketBatchSampler shards itself (train.py sets use_distributed_sampler=False for it)."""
    p, out, err, logdir = launch(tmp_path, "--model", "imdb", "--attention", "softmax", "--tokenizer", "byte")
    results = check_single_writer(p, out, err, logdir, "imdb-softmax-synthetic", "val/acc")
    assert 0.0 <= results["test"]["test/acc"] <= 1.0
    assert re.search(r"bucket_by_length: true", (logdir / "imdb-softmax-synthetic" / "version_0" / "hparams.yaml").read_text())
