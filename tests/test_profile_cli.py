"""profile.py: bad input fails early and cleanly (exit 2, one sentence naming the flag and the value,
nothing written), errors during a run end in one sentence (exit 1, what was written kept), a missing GPU
is one warning, a killed sweep resumes, and the file does not break the standard library's `profile`
(cProfile, lightning) it shadows. No test here depends on the machine's speed: time-outs are hang guards."""
import csv
import json
import os
import re
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


# name -> (argv, what the message must name: the flag and the value). {tmp}: the test's temporary folder,
# holding a file "afile", an empty folder "empty", a folder "noenv" with a results.jsonl but no env.json and
# a folder "done" with a finished sweep's results.jsonl. Without --out or --resume, --out {tmp}/out is added.
BAD_CASES = {
    "seq-lens-not-int": (["--seq-lens", "10,abc"], ["--seq-lens", "'abc'"]),
    "seq-lens-zero": (["--seq-lens", "0,10"], ["--seq-lens", "0,10"]),
    "seq-lens-negative": (["--seq-lens=10,-5"], ["--seq-lens", "-5"]),
    "seq-lens-empty": (["--seq-lens="], ["--seq-lens", "empty"]),
    "seq-lens-empty-item": (["--seq-lens", "10,,100"], ["--seq-lens", "10,,100", "empty item"]),
    "seq-lens-trailing-comma": (["--seq-lens", "10,100,"], ["--seq-lens", "10,100,", "empty item"]),
    "seq-lens-duplicate": (["--seq-lens", "10,100,010"], ["--seq-lens", "10,100,010", "twice"]),
    "seq-lens-absurd": (["--seq-lens", "99999999999999999999999"], ["--seq-lens", "99999999999999999999999", "2^63"]),
    "unknown-attention": (["--attentions", "softmax,nosuch"], ["--attentions", "'nosuch'", "linformer"]),
    "attentions-duplicate": (["--attentions", "softmax,naive,softmax"], ["--attentions", "softmax,naive,softmax", "twice"]),
    "unknown-device": (["--devices", "cpu,tpu"], ["--devices", "'tpu'"]),
    "devices-alias-duplicate": (["--devices", "cpu,gpu,cuda"], ["--devices", "cpu,gpu,cuda", "gpu and cuda are the same"]),
    "devices-gpu-without-a-gpu": (["--devices", "gpu"], ["--devices gpu", "no GPU"]),
    "unknown-dtype": (["--dtype", "fp64"], ["--dtype", "'fp64'", "fp32"]),
    "unknown-mode": (["--mode", "bwd"], ["--mode", "'bwd'", "fwd+bwd", "decode"]),
    "runs-zero": (["--runs", "0"], ["--runs 0"]),
    "runs-not-int": (["--runs", "abc"], ["--runs", "'abc'"]),
    "runs-absurd": (["--runs", "10000000"], ["--runs 10000000", "1000000"]),
    "warmup-negative": (["--warmup", "-1"], ["--warmup -1"]),
    "dim-zero": (["--dim", "0"], ["--dim 0"]),
    "dim-absurd": (["--dim", "4000000000", "--heads", "1"], ["--dim 4000000000", "2^63"]),
    "heads-not-dividing": (["--dim", "32", "--heads", "5"], ["--heads 5", "--dim 32"]),
    "batch-zero": (["--batch", "0"], ["--batch 0"]),
    "threads-zero": (["--threads", "0"], ["--threads 0"]),
    "threads-beyond-the-machine": (["--threads", "100000"], ["--threads 100000", "logical CPUs"]),
    "budget-zero": (["--max-seconds-per-point", "0"], ["--max-seconds-per-point 0"]),
    "budget-nan": (["--max-seconds-per-point", "nan"], ["--max-seconds-per-point nan", "finite"]),
    "budget-inf": (["--max-seconds-per-point", "inf"], ["--max-seconds-per-point inf", "finite"]),
    "budget-not-a-number": (["--max-seconds-per-point", "soon"], ["--max-seconds-per-point", "'soon'"]),
    "flag-twice": (["--dim", "32", "--dim", "64"], ["--dim", "64", "twice"]),
    "positional-argument": (["softmax"], ["softmax"]),
    "unknown-flag": (["--nosuch"], ["--nosuch"]),
    "out-unwritable": (["--out", "{tmp}/afile/sub"], ["--out", "afile/sub"]),
    "out-is-a-file": (["--out", "{tmp}/afile"], ["--out", "afile", "not a folder"]),
    "out-empty": (["--out="], ["--out", "empty"]),
    "out-holds-a-sweep": (["--out", "{tmp}/done"], ["--out", "done", "--resume"]),
    "resume-without-results": (["--resume", "{tmp}/empty"], ["--resume", "empty", "results.jsonl"]),
    "resume-missing-folder": (["--resume", "{tmp}/nowhere"], ["--resume", "nowhere"]),
    "resume-without-env": (["--resume", "{tmp}/noenv"], ["--resume", "noenv", "env.json"]),
    "resume-with-out": (["--resume", "{tmp}/done", "--out", "{tmp}/out"], ["--resume", "--out", "out"]),
    "opt-malformed": (["--opt", "linformer-k-64"], ["--opt", "linformer-k-64"]),
    "opt-unknown-attention": (["--opt", "nosuch.k=64"], ["--opt", "nosuch.k=64"]),
    "opt-unknown-key": (["--opt", "linformer.nosuch=1"], ["--opt", "linformer.nosuch=1"]),
    "opt-bad-value": (["--opt", "linformer.k=-1"], ["--opt", "linformer.k=-1"]),
    "opt-not-finite": (["--opt", "linformer.k=1e999"], ["--opt", "linformer.k=1e999", "finite"]),
    "opt-too-large-to-build": (["--attentions", "linformer", "--opt", "linformer.k=10000000000000"],
                               ["--opt", "linformer.k=10000000000000", "out of memory"]),
    "opt-twice": (["--opt", "linformer.k=8", "--opt", "linformer.k=16"], ["--opt", "linformer.k=16", "again"]),
    "opt-for-a-mechanism-not-swept": (["--attentions", "softmax", "--opt", "linformer.k=8"], ["--opt", "linformer.k=8", "--attentions softmax"]),
    "compare-and-breakdown": (["--compare-builtin", "--breakdown", "encoder"], ["--compare-builtin", "--breakdown encoder"]),
    "compare-ignores-seq-lens": (["--compare-builtin", "--seq-lens", "128"], ["--seq-lens 128", "--compare-builtin"]),
    "compare-ignores-causal": (["--compare-builtin", "--causal"], ["--causal", "--compare-builtin"]),
    "compare-ignores-resume": (["--compare-builtin", "--resume", "{tmp}/done"], ["--resume", "done", "--compare-builtin"]),
    "breakdown-unknown-model": (["--breakdown", "resnet"], ["--breakdown", "'resnet'", "encoder"]),
    "breakdown-empty-model": (["--breakdown="], ["--breakdown", "''"]),
    "breakdown-ignores-dtype": (["--breakdown", "encoder", "--dtype", "bf16"], ["--dtype bf16", "--breakdown"]),
    "breakdown-two-attentions": (["--breakdown", "encoder", "--attentions", "softmax,linformer"], ["--attentions softmax,linformer", "one"]),
    "breakdown-two-devices": (["--breakdown", "encoder", "--devices", "cpu,gpu"], ["--devices cpu,gpu", "one"]),
    "breakdown-opt-for-another-mechanism": (["--breakdown", "encoder", "--opt", "linformer.k=8"], ["--opt", "linformer.k=8", "softmax"]),
}


def fixtures(tmp: Path) -> None:
    (tmp / "afile").write_text("not a folder")
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "noenv").mkdir(exist_ok=True)
    (tmp / "noenv" / "results.jsonl").write_text("")
    (tmp / "done").mkdir(exist_ok=True)
    (tmp / "done" / "results.jsonl").write_text("")
    (tmp / "done" / "env.json").write_text(json.dumps({"config": {}}))


def bad_argv(name: str, tmp: Path, out: Path):
    fixtures(tmp)
    argv = [a.replace("{tmp}", str(tmp)) for a in BAD_CASES[name][0]]
    if name == "runs-zero":
        return argv  # the default output folder: results/ must stay as it was
    given = any(a.split("=")[0] in ("--out", "--resume") for a in argv)
    return argv if given else argv + ["--out", str(out)]


def tree(path: Path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_in_process(name, tmp_path, monkeypatch, capsys):
    """Every bad-input case, through the real `__main__` path of profile.py (in-process, for speed): exit
    code 2, one line on stderr naming the flag and the value, and nothing written anywhere."""
    out = tmp_path / "out"
    argv = bad_argv(name, tmp_path, out)
    if name == "devices-gpu-without-a-gpu":
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = REPO / "results"
    before, before_tmp = listing(results), tree(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(PROFILE), *argv])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(PROFILE), run_name="__main__")
    captured = capsys.readouterr()
    err = captured.err
    assert exc.value.code == 2, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("profile.py: error: "), (name, err)
    for part in BAD_CASES[name][1]:
        assert part in lines[0], (name, part, lines[0])
    assert captured.out == "", name
    assert tree(tmp_path) == before_tmp and listing(results) == before, name


def test_bad_input_in_subprocesses(tmp_path):
    """A few cases as real processes, run side by side: exit code 2, one stderr line and no traceback,
    nothing written."""
    chosen = ["seq-lens-empty-item", "runs-not-int", "opt-for-a-mechanism-not-swept", "compare-and-breakdown",
              "resume-without-results", "budget-inf"]
    fixtures(tmp_path)
    before = tree(tmp_path)
    procs = {}
    for name in chosen:
        argv = bad_argv(name, tmp_path, tmp_path / f"out-{name}")
        procs[name] = subprocess.Popen([sys.executable, str(PROFILE), *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=HANG_GUARD_S)
        assert p.returncode == 2, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("profile.py: error: "), (name, stderr)
        assert "Traceback" not in stderr and stdout == "", name
        assert all(part in stderr for part in BAD_CASES[name][1]), (name, stderr)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------- errors during a run


def run_main(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(PROFILE), *argv])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(PROFILE), run_name="__main__")
    return exc.value.code


SWEEP = ["--devices", "cpu", "--attentions", "softmax", "--seq-lens", "8,16,32", *TINY]


def test_a_disk_that_fills_ends_the_run_in_one_sentence_and_keeps_the_rows(tmp_path, monkeypatch, capsys):
    import errno

    import profiling.sweep as sw

    real = sw.append_point

    def append(path, point):
        if path.exists() and path.read_text().count("\n") >= 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, point)

    monkeypatch.setattr(sw, "append_point", append)
    out = tmp_path / "out"
    code = run_main([*SWEEP, "--out", str(out)], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], lines
    assert lines[0].startswith("profile.py: error: ") and f"kept in {out}" in lines[0]
    assert len((out / "results.jsonl").read_text().splitlines()) == 1  # the point written before the disk filled


def test_an_allocation_that_fails_outside_a_point_ends_in_one_sentence(tmp_path, monkeypatch, capsys):
    import torch

    import profiling.compare as pc

    def compare_config(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pc, "compare_config", compare_config)
    out = tmp_path / "out"
    code = run_main(["--compare-builtin", "--devices", "cpu", "--runs", "1", "--warmup", "0", "--threads", "1", "--out", str(out)], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "out of memory" in lines[0] and "nothing was written" in lines[0], lines
    assert not out.exists()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import profiling.sweep as sw

    real = sw.run_point

    def point(spec, cfg, **kw):
        if spec.seq_len == 16:
            raise KeyboardInterrupt
        return real(spec, cfg, **kw)

    monkeypatch.setattr(sw, "run_point", point)
    out = tmp_path / "out"
    code = run_main([*SWEEP, "--out", str(out)], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(lines) == 1 and f"--resume {out}" in lines[0], lines
    assert len((out / "results.jsonl").read_text().splitlines()) == 1 and (out / "results.csv").is_file()


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


def test_decode_mode_from_the_command_line(tmp_path, monkeypatch, capsys):
    """--mode decode through profile.py's __main__: the per-token tables and the skipped mechanism with its reason
    on the console, state bytes in results.csv, the decoding figures written."""
    out = tmp_path / "decode"
    argv = ["--mode", "decode", "--devices", "cpu", "--attentions", "softmax,linformer", "--seq-lens", "8,16",
            *[a for a in TINY if a != "--no-plots"], "--out", str(out)]
    assert run_main(argv, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "median ms per token" in printed and "state MiB after the prefill" in printed
    assert "linformer (L=8, 16): attention 'linformer' has no incremental decoding" in printed
    with open(out / "results.csv", newline="") as fh:
        rows = {(r["attention"], r["seq_len"]): r for r in csv.DictReader(fh)}
    assert rows["softmax", "16"]["status"] == "ok" and rows["softmax", "16"]["mode"] == "decode"
    assert int(rows["softmax", "16"]["state_bytes"]) == 2 * int(rows["softmax", "8"]["state_bytes"])  # a KV cache
    assert rows["linformer", "8"]["status"] == "unsupported"
    assert {"time.png", "state.png", "memory.png", "speedup.png", "combined.png"} <= set(listing(out))


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
    assert "decode" in r.stdout
    # each default said once, where it says something: no "(default: None)" for an unset flag, no option whose
    # help already names its default gets argparse's second one, and no machine-dependent thread count
    text = " ".join(r.stdout.split())
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    options = re.split(r"\n  (?=-)", r.stdout.split("options:", 1)[1])  # one chunk per option's entry
    assert len(options) > 15
    assert all(o.count("(default") <= 1 for o in options), [o for o in options if o.count("(default") > 1]
    assert "(default: this machine's cores, os.cpu_count())" in text and f"(default: {os.cpu_count()})" not in text
    assert "(default: 512)" in text  # a real default is still shown


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
