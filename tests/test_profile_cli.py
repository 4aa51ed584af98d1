"""profile.py: bad input fails early and cleanly, a missing GPU is one warning, a killed sweep resumes,
and the file does not break the standard library's `profile` (cProfile, lightning) it shadows."""
import csv
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profile.py"
TINY = ["--dim", "32", "--heads", "4", "--runs", "2", "--warmup", "1", "--threads", "1", "--no-plots"]
HANG_GUARD_S = 900  # subprocess time-outs only turn a hung child into a failure; no test checks speed


def cli(*args, timeout=HANG_GUARD_S):
    return subprocess.run([sys.executable, str(PROFILE), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def listing(path: Path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


BAD_CASES = {  # name -> argv ({tmp}: the test's temporary folder, holding a file "afile" and an empty folder "empty")
    "seq-lens-not-int": ["--seq-lens", "10,abc"],
    "seq-lens-zero": ["--seq-lens", "0,10"],
    "seq-lens-negative": ["--seq-lens=10,-5"],
    "seq-lens-empty": ["--seq-lens="],
    "unknown-attention": ["--attentions", "softmax,nosuch"],
    "unknown-device": ["--devices", "cpu,tpu"],
    "unknown-dtype": ["--dtype", "fp64"],
    "unknown-mode": ["--mode", "bwd"],
    "runs-zero": ["--runs", "0"],
    "runs-not-int": ["--runs", "abc"],
    "warmup-negative": ["--warmup", "-1"],
    "dim-zero": ["--dim", "0"],
    "heads-not-dividing": ["--dim", "32", "--heads", "5"],
    "threads-zero": ["--threads", "0"],
    "budget-zero": ["--max-seconds-per-point", "0"],
    "out-unwritable": ["--out", "{tmp}/afile/sub"],
    "out-is-a-file": ["--out", "{tmp}/afile"],
    "resume-without-results": ["--resume", "{tmp}/empty"],
    "resume-missing-folder": ["--resume", "{tmp}/nowhere"],
    "opt-malformed": ["--opt", "linformer-k-64"],
    "opt-unknown-attention": ["--opt", "nosuch.k=64"],
    "opt-unknown-key": ["--opt", "linformer.nosuch=1"],
    "opt-bad-value": ["--opt", "linformer.k=-1"],
    "unknown-flag": ["--nosuch"],
    "breakdown-unknown-model": ["--breakdown", "resnet"],
}


def bad_argv(name: str, tmp: Path, out: Path):
    (tmp / "afile").write_text("not a folder")
    (tmp / "empty").mkdir(exist_ok=True)
    argv = [a.replace("{tmp}", str(tmp)) for a in BAD_CASES[name]]
    if name == "runs-zero":
        return argv  # the default output folder: results/ must stay as it was
    return argv if ("--out" in argv or "--resume" in argv) else argv + ["--out", str(out)]


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_in_process(name, tmp_path, monkeypatch, capsys):
    """Every bad-input case, through the real `__main__` path of profile.py (in-process, for speed)."""
    out = tmp_path / "out"
    argv = bad_argv(name, tmp_path, out)
    results = REPO / "results"
    before = listing(results)
    monkeypatch.setattr(sys, "argv", [str(PROFILE), *argv])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(PROFILE), run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("profile.py: error: "), (name, err)
    assert not out.exists() and listing(results) == before and not (tmp_path / "nowhere").exists(), name
    if name == "unknown-attention":
        assert "softmax" in err and "linformer" in err  # lists the known ones


def test_bad_input_in_subprocesses(tmp_path):
    """A few cases as real processes, run side by side: exit code 2, one stderr line, no folder."""
    chosen = ["seq-lens-not-int", "unknown-attention", "heads-not-dividing", "resume-without-results"]
    procs = {}
    for name in chosen:
        out = tmp_path / f"out-{name}"
        argv = bad_argv(name, tmp_path, out)
        procs[name] = (out, subprocess.Popen([sys.executable, str(PROFILE), *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=HANG_GUARD_S)
        assert p.returncode == 2, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("profile.py: error: "), (name, stderr)
        assert stdout == "" and not out.exists(), name


def test_missing_gpu_is_one_warning_and_cpu_results_still_come(tmp_path):
    out = tmp_path / "sweep"
    r = cli("--devices", "cpu,gpu", "--attentions", "softmax", "--seq-lens", "8", *TINY, "--out", str(out))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "warning" in warnings[0] and "GPU" in warnings[0], r.stderr
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["attention"], x["device"], x["status"]) for x in rows] == [("softmax", "cpu", "ok")]
    assert {"results.jsonl", "results.csv", "env.json", "summary.md"} <= set(listing(out))
    assert "softmax" in r.stdout and "median ms" in r.stdout  # the console table


# the child for the killed-sweep test: profile.py's real __main__, with append_point wrapped so that,
# once the file holds KILL_AFTER rows, it says so on stdout and waits to be killed: the parent kills a
# sweep that can neither finish nor be between two rows, whatever the machine's speed
KILL_AFTER = 2
MARKER = "rows written; waiting to be killed"
KILLABLE = """
import runpy, signal, sys
import profiling.sweep as sw
real = sw.append_point
def append(path, point):
    real(path, point)
    if len(path.read_text().splitlines()) == {n}:
        print("{marker}", flush=True)
        while True:
            signal.pause()
sw.append_point = append
sys.argv = [{profile!r}, *sys.argv[1:]]
runpy.run_path({profile!r}, run_name="__main__")
"""


def test_killed_sweep_resumes(tmp_path):
    """Kill a real sweep once exactly two points are on disk, resume it: only the missing points are measured."""
    out = tmp_path / "sweep"
    args = ["--devices", "cpu", "--attentions", "softmax,naive", "--seq-lens", "8,16,32,64,128", *TINY, "--out", str(out)]
    code = KILLABLE.format(n=KILL_AFTER, marker=MARKER, profile=str(PROFILE))
    p = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    guard = threading.Timer(HANG_GUARD_S, p.kill)  # a hang guard, not a speed check: a stuck child fails the test
    guard.start()
    try:
        seen = []
        for line in p.stdout:  # blocks until the marker or the child's end: no polling window to miss
            seen.append(line)
            if line.strip() == MARKER:
                break
        else:
            pytest.fail("the sweep ended before writing two rows:\n" + "".join(seen))
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        guard.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    jsonl = out / "results.jsonl"
    kept = [json.loads(line)["key"] for line in jsonl.read_text().splitlines()]
    assert len(kept) == KILL_AFTER
    r = cli("--resume", str(out), "--no-plots")
    assert r.returncode == 0, r.stderr
    lines = [line for line in jsonl.read_text().splitlines() if line.strip()]
    added = [json.loads(line)["key"] for line in lines[len(kept):]]
    assert len(added) == 10 - KILL_AFTER and len(set(kept + added)) == 10  # each point once
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and {x["status"] for x in rows} == {"ok"}
    assert f"{10 - KILL_AFTER} to measure" in r.stdout


# ---------------------------------------------------------------------------------------------- the name trap


def run_py(*args, timeout=HANG_GUARD_S):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_profile_py_help():
    r = cli("--help")
    assert r.returncode == 0 and "--seq-lens" in r.stdout and "--compare-builtin" in r.stdout and "--breakdown" in r.stdout


def test_import_profile_gives_the_standard_library_module():
    r = run_py("-c", f"import cProfile, profile; assert profile.__file__ != {str(PROFILE)!r} or hasattr(profile, 'Profile'); assert hasattr(profile, 'Profile') and hasattr(profile, 'runctx'); print(profile.__file__)")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() != PROFILE


def test_cprofile_runs_profile_py():
    r = run_py("-m", "cProfile", "-o", os.devnull, "profile.py", "--help")
    assert r.returncode == 0, r.stderr
    assert "--seq-lens" in r.stdout


def test_lightning_and_dynamo_import_from_the_repository_root():
    r = run_py("-c", "import lightning, torch._dynamo, profile; assert hasattr(profile, 'Profile')")
    assert r.returncode == 0, r.stderr
