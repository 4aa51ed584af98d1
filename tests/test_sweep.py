"""The sweep (profiling/sweep.py and its pieces: sweep_config, sweep_point, sweep_decode, budget) and its report
(profiling/report.py), on tiny configs; the decoding mode (--mode decode) at the end: its time per token on a
ManualClock that the steps advance, its state bytes against states built in the test.

The per-point time budget is checked on a ManualClock that only a patched forward advances, so which
point times out, in which stage and after how long is known exactly, whatever the machine's speed or
load (the real clock would also charge the first point's FLOP count to its budget). The interval
timer that interrupts a stage is checked with a forward that never returns on its own: only the alarm
can end it, so the test asserts no duration."""
import csv
import json
import signal
import time

import pytest
import torch

import profiling.sweep as sw
import profiling.sweep_point as sp
from models.attention import Attention, build_attention, get_attention
from profiling import ManualClock, is_oom
from profiling.budget import Budget
from profiling.plots import DECODE_FIGURES, plot_sweep
from profiling.report import crossover, scaling_exponent, summary_tables, to_markdown
from profiling.results import CSV_COLUMNS, point_key, read_csv_rows, read_points
from profiling.sweep_config import MAX_RUNS, ConfigError, SweepConfig, parse_opts, validate


def tiny(**kw) -> SweepConfig:
    base = dict(attentions=["softmax"], devices=["cpu"], seq_lens=[8, 16], dim=32, heads=4, runs=2, warmup=1, threads=1, max_seconds=60.0)
    base.update(kw)
    return SweepConfig(**base)


def run(cfg, out, **kw):
    return sw.run_sweep(cfg, out, command=["test"], **kw)


def by_key(rows):
    return {(r["attention"], r["seq_len"]): r for r in rows}


def patch_forward(monkeypatch, name, fn):
    """Replace `name`'s forward by fn(original, self, x, *args, **kw)."""
    cls = get_attention(name)
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x, *a, **k: fn(original, self, x, *a, **k))


def test_tiny_sweep_writes_every_file(tmp_path):
    cfg = tiny(attentions=["softmax", "linformer", "performer"])
    rows = run(cfg, tmp_path)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    with open(tmp_path / "results.csv", newline="") as fh:
        assert next(csv.reader(fh)) == CSV_COLUMNS
    csv_rows = read_csv_rows(tmp_path / "results.csv")
    assert len(csv_rows) == 6
    for r in csv_rows:
        assert r["median_ms"] > 0 and r["peak_mib"] >= 0 and r["threads"] == 1 and r["runs"] == 2
        assert r["analytic_gflop"] > 0 and r["achieved_gflops"] > 0 and r["memory_method"]
        assert r["counted_over_analytic"] == pytest.approx(1.0, abs=0.02) and r["flops_flagged"] is False
    points = read_points(tmp_path / "results.jsonl")
    assert len(points) == 6 and all(p["key"] == point_key(p["attention"], "cpu", p["seq_len"], 1, 32, 4, "fp32", "fwd", False) for p in points)
    # the generic rule: a mechanism with a max_seq_len option gets the longest swept length
    lin = [p for p in points if p["attention"] == "linformer"]
    assert all(p["options"] == {"max_seq_len": 16} for p in lin)
    env = json.loads((tmp_path / "env.json").read_text())
    for key in ("torch", "python", "platform", "cpu_model", "cuda_devices", "threads", "dtype", "dtype_note", "mode", "git_commit", "command", "start_time", "end_time", "memory_methods", "flop_conventions"):
        assert key in env, key
    assert env["threads"] == 1 and env["end_time"] and env["command"] == ["test"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| linformer |" in summary and "n=16" in summary and "faster than softmax" in summary


def test_fwd_bwd_bf16_counts_the_backward(tmp_path):
    rows = run(tiny(seq_lens=[8], mode="fwd+bwd", dtype="bf16"), tmp_path)
    (r,) = rows
    assert r["status"] == "ok" and r["dtype"] == "bf16" and r["mode"] == "fwd+bwd"
    assert r["ptflops_gmac"] is None and "forward pass only" in r["flops_note"]
    attn = get_attention("softmax")(32, 4)
    assert r["analytic_gflop"] == pytest.approx(attn.flops(8, 1, False, backward=True) / 1e9)
    assert r["counted_over_analytic"] == pytest.approx(1.0, abs=0.02)


def test_unsupported_points_say_why(tmp_path):
    rows = by_key(run(tiny(attentions=["linformer", "softmax"], causal=True), tmp_path / "causal"))
    assert rows["softmax", 8]["status"] == "ok"
    assert rows["linformer", 8]["status"] == "unsupported" and "cannot be causal" in rows["linformer", 8]["reason"]

    rows = by_key(run(tiny(attentions=["linformer"], options={"linformer": {"max_seq_len": 8}}), tmp_path / "maxlen"))
    assert rows["linformer", 8]["status"] == "ok"
    assert rows["linformer", 16]["status"] == "unsupported" and "max_seq_len=8" in rows["linformer", 16]["reason"]
    assert json.loads(rows["linformer", 16]["options"]) == {"max_seq_len": 8}  # the user's value wins


def test_construction_error_is_unsupported(tmp_path, monkeypatch):
    real = sp.build_attention

    def build(name, *a, **k):
        if name == "naive":
            raise ValueError("naive cannot be built like this; use softmax")
        return real(name, *a, **k)

    monkeypatch.setattr(sp, "build_attention", build)
    rows = by_key(run(tiny(attentions=["naive", "softmax"], seq_lens=[8]), tmp_path))
    assert rows["naive", 8]["status"] == "unsupported" and rows["naive", 8]["reason"] == "naive cannot be built like this; use softmax"
    assert rows["softmax", 8]["status"] == "ok"


def test_oom_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def fwd(original, self, x, *a, **k):
        if x.shape[1] == 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, x, *a, **k)

    patch_forward(monkeypatch, "softmax", fwd)
    rows = by_key(run(tiny(attentions=["softmax", "naive"]), tmp_path))
    assert rows["softmax", 16]["status"] == "oom" and "out of memory" in rows["softmax", 16]["reason"]
    assert rows["softmax", 16]["median_ms"] is None
    assert [rows[k]["status"] for k in (("softmax", 8), ("naive", 8), ("naive", 16))] == ["ok"] * 3


def test_oom_messages_are_recognised():
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes"))
    assert is_oom(RuntimeError("not enough memory: you tried to allocate 1 GB"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_timeout_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    clock = ManualClock()

    def slow(original, self, x, *a, **k):
        if x.shape[1] == 16:
            clock.advance(10.0)  # a call at n = 16 "takes" 10 s; every other call takes no time
        return original(self, x, *a, **k)

    patch_forward(monkeypatch, "softmax", slow)
    rows = by_key(run(tiny(attentions=["softmax", "naive"], max_seconds=1.0), tmp_path, clock=clock))
    assert rows["softmax", 16]["status"] == "timeout" and rows["softmax", 16]["median_ms"] is None
    # the first check after the FLOP count (one call) stops it, without measuring memory or time
    assert rows["softmax", 16]["reason"] == "over the --max-seconds-per-point budget of 1 s: stopped during FLOP counting after 10.0 s"
    assert rows["softmax", 16]["elapsed_s"] == 10.0 and rows["softmax", 16]["peak_mib"] is None
    assert [rows[k]["status"] for k in (("softmax", 8), ("naive", 8), ("naive", 16))] == ["ok"] * 3
    assert rows["softmax", 8]["elapsed_s"] == 0.0


def test_the_alarm_interrupts_a_stage_that_never_ends(monkeypatch):
    """A forward that never returns at n = 16: only the interval timer can stop the point (a 0.2 s budget
    on the real clock); the point is recorded as a timeout, interrupted, and the alarm is disarmed."""
    def forever(original, self, x, *a, **k):
        if x.shape[1] == 16:
            while True:
                time.sleep(0.01)
        return original(self, x, *a, **k)

    patch_forward(monkeypatch, "softmax", forever)
    handler = signal.getsignal(signal.SIGALRM)
    point = sp.run_point(sp.PointSpec("softmax", "cpu", 16), tiny(max_seconds=0.2))
    assert point["status"] == "timeout" and point["reason"].startswith("over the --max-seconds-per-point budget of 0.2 s: stopped during FLOP counting (interrupted)")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) == handler


def test_a_budget_too_long_for_the_interval_timer_still_arms_it():
    with Budget(1e300):  # setitimer overflows a time_t far below this
        left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 0 < left <= Budget.MAX_ALARM_S and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_killed_sweep_resumes_only_the_missing_points(tmp_path, monkeypatch):
    cfg = tiny(attentions=["softmax", "naive"])
    run(cfg, tmp_path)
    jsonl = tmp_path / "results.jsonl"
    lines = jsonl.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    # a run killed while writing its third point: two full lines and half of the third
    jsonl.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    (tmp_path / "results.csv").unlink()
    measured = []
    real = sw.run_point
    monkeypatch.setattr(sw, "run_point", lambda spec, c, **kw: measured.append(spec.key(c)) or real(spec, c, **kw))
    rows = run(cfg, tmp_path, resume=True)
    expected_missing = [json.loads(line)["key"] for line in lines[2:]]
    assert measured == expected_missing
    keys = [r["attention"] + str(r["seq_len"]) for r in read_csv_rows(tmp_path / "results.csv")]
    assert sorted(keys) == sorted(["softmax8", "softmax16", "naive8", "naive16"]) and len(rows) == 4
    assert len(read_points(jsonl)) == 4  # the broken half-line is skipped, the new points start their own lines
    env = json.loads((tmp_path / "env.json").read_text())
    assert len(env["previous_sessions"]) == 1


def test_error_points_are_retried_on_resume(tmp_path, monkeypatch):
    def boom(original, self, x, *a, **k):
        if x.shape[1] == 16:
            raise RuntimeError("boom\nsecond line")
        return original(self, x, *a, **k)

    cfg = tiny()
    with monkeypatch.context() as m:
        patch_forward(m, "softmax", boom)
        rows = by_key(run(cfg, tmp_path))
    assert rows["softmax", 16]["status"] == "error" and rows["softmax", 16]["reason"] == "RuntimeError: boom"
    measured = []
    real = sw.run_point
    monkeypatch.setattr(sw, "run_point", lambda spec, c, **kw: measured.append(spec.seq_len) or real(spec, c, **kw))
    rows = run(cfg, tmp_path, resume=True)
    assert measured == [16]
    assert sorted((r["seq_len"], r["status"]) for r in rows) == [(8, "ok"), (16, "ok")]


def test_a_missing_gpu_is_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warnings = []
    rows = run(tiny(devices=["cpu", "cuda"], seq_lens=[8]), tmp_path, warn=warnings.append)
    assert len(warnings) == 1 and "GPU" in warnings[0]
    assert [r["device"] for r in rows] == ["cpu"]


def test_opts_are_parsed_and_validated():
    assert parse_opts(["linformer.k=64", "linformer.sharing=kv", "performer.features=16"]) == {
        "linformer": {"k": 64, "sharing": "kv"},
        "performer": {"features": 16},
    }
    # values as utils.checks.parse_value reads them: true/false/none/null in any case, then Python literals
    assert parse_opts(["performer.redraw_interval=NONE", "linformer.k=0x10"]) == {"performer": {"redraw_interval": None},
                                                                             "linformer": {"k": 16}}
    for bad in ("linformer.k", "linformer=3", "nosuch.k=1", "linformer.nosuch=1", "linformer.causal=True", "linformer.k="):
        with pytest.raises(ConfigError):
            parse_opts([bad])
    with pytest.raises(ConfigError, match="invalid"):
        validate(tiny(attentions=["linformer"], options={"linformer": {"k": -1}}))


@pytest.mark.parametrize("kw, message", [
    (dict(options={"linformer": {"k": 8}}), "--opt linformer.k=8 is for 'linformer', which is not measured"),
    (dict(attentions=["softmax", "softmax"]), "--attentions 'softmax,softmax' names softmax twice"),
    (dict(devices=["cpu", "cpu"]), "--devices 'cpu,cpu' names cpu twice"),
    (dict(seq_lens=[8, 8]), "--seq-lens '8,8' names 8 twice"),
    (dict(seq_lens=[8.5]), "--seq-lens has 8.5"),
    (dict(max_seconds=float("inf")), "--max-seconds-per-point inf"),
    (dict(max_seconds=True), "--max-seconds-per-point True"),
    (dict(runs=MAX_RUNS + 1), f"--runs {MAX_RUNS + 1}"),
    (dict(causal="yes"), "--causal 'yes'"),
    (dict(batch=2**40, seq_lens=[2**20], dim=2**10), "2^63"),
])
def test_validate_refuses_what_the_cli_refuses(kw, message):
    """A config built in code (the study's sweep, a notebook) meets the same checks as the command line."""
    with pytest.raises(ConfigError) as e:
        validate(tiny(**kw))
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- report


def rows_of(name, values, metric="median_ms", status=None):
    return [{"attention": name, "seq_len": n, "status": (status or {}).get(n, "ok"), metric: v} for n, v in values.items()]


def test_scaling_exponent_fits_the_top_decade():
    lens = [10, 100, 1000, 10000]
    assert scaling_exponent(rows_of("a", {n: 3e-6 * n**2 for n in lens}), "time") == pytest.approx(2.0)
    assert scaling_exponent(rows_of("a", {n: 0.5 * n for n in lens}, "peak_mib"), "memory") == pytest.approx(1.0)
    # constant overhead at short lengths is outside the top decade and does not bend the slope
    overhead = {10: 5.0, 100: 5.0, 1000: 1e-6 * 1000**2, 10000: 1e-6 * 10000**2}
    assert scaling_exponent(rows_of("a", overhead), "time") == pytest.approx(2.0)
    # the longest point ran out of memory: the top decade is that of the longest "ok" one
    r = rows_of("a", {10: 1.0, 100: 10.0, 1000: 100.0, 10000: None}, status={10000: "oom"})
    assert scaling_exponent(r, "time") == pytest.approx(1.0)
    assert scaling_exponent(rows_of("a", {10: 1.0, 1000: 4.0}), "time") is None  # one point in the top decade
    assert scaling_exponent([], "time") is None


def test_crossover_interpolates_log_log():
    lens = [10, 100, 500, 2000, 10000]
    base = rows_of("softmax", {n: 1e-6 * n**2 for n in lens})
    linear = rows_of("lin", {n: 1e-3 * n for n in lens})  # equal at n = 1000
    assert crossover(linear, base, "time") == pytest.approx(1000.0, rel=1e-9)
    assert crossover(rows_of("x", {n: 0.5e-6 * n**2 for n in lens}), base, "time") == "always"
    assert crossover(rows_of("x", {n: 2e-6 * n**2 for n in lens}), base, "time") == "never"
    assert crossover(linear, [], "time") == "n/a"
    # a failed baseline point is not compared
    base_oom = rows_of("softmax", {10: 1e-4, 100: 1e-2, 500: 0.25, 2000: None, 10000: None}, status={2000: "oom", 10000: "oom"})
    assert crossover(linear, base_oom, "time") == "never"


def test_crossover_needs_a_lead_beyond_the_noise():
    """A time lead within two standard errors of the difference is not a lead: the committed default sweep's
    n = 10 'linear always faster' rested on one slow softmax point."""
    def with_sem(rows, sem):
        return [dict(r, sem_ms=sem[r["seq_len"]]) for r in rows]

    base = with_sem(rows_of("softmax", {10: 1.6, 100: 2.0, 1000: 30.0}), {10: 0.25, 100: 0.01, 1000: 0.5})
    lin = rows_of("lin", {10: 0.7, 100: 1.5, 1000: 18.0})  # faster than softmax's median everywhere
    # small noise: 0.7 + 2 * hypot(0.2, 0.25) = 1.34 < 1.6 and 1.5 + 2 * hypot(0.01, 0.01) < 2.0: a lead throughout
    assert crossover(with_sem(lin, {10: 0.2, 100: 0.01, 1000: 0.5}), base, "time") == "always"
    # the n = 10 lead within the noise (0.7 + 2 * hypot(0.6, 0.25) = 2.0 > 1.6): the lead starts between 10 and 100
    c = crossover(with_sem(lin, {10: 0.6, 100: 0.01, 1000: 0.5}), base, "time")
    assert isinstance(c, float) and 10 < c < 100
    # without s.e.m. (memory, or rows that lack it) medians decide
    assert crossover(lin, rows_of("softmax", {10: 1.6, 100: 2.0, 1000: 30.0}), "time") == "always"
    assert crossover(rows_of("m", {10: 1.0, 100: 1.0}, "peak_mib"), rows_of("b", {10: 2.0, 100: 2.0}, "peak_mib"), "memory") == "always"


def test_summary_tables_show_statuses_and_flags():
    common = dict(device="cpu", device_name="cpu", batch=1, dim=32, heads=4, dtype="fp32", mode="fwd", causal=False, threads=2)
    rows = []
    for name, times in (("softmax", {10: 1.0, 100: 10.0, 1000: 100.0}), ("linear", {10: 2.0, 100: 4.0, 1000: 8.0})):
        for n, t in times.items():
            rows.append(dict(common, attention=name, seq_len=n, status="ok", median_ms=t, peak_mib=t / 10, flops_flagged=False))
    rows[-1].update(status="oom", median_ms=None, peak_mib=None)
    rows[0].update(flops_flagged=True, counted_over_analytic=0.5)
    (group,) = summary_tables(rows)
    time_rows = {r[0]: r for r in group["tables"]["time"]["rows"]}
    assert time_rows["linear"][3] == "oom"
    assert time_rows["linear"][5] == "≈27"  # 2·(n/10)^log10(2) = n/10 at n = 10·2^(1/(1 - log10 2)) ≈ 27
    assert "FLOPs flagged" in time_rows["softmax"][-1]
    assert "| linear |" in to_markdown(rows)


# ---------------------------------------------------------------------------------------------- decoding mode


def patch_step(monkeypatch, fn):
    """Replace Attention.step (every mechanism's) by fn(original, self, x, state)."""
    original = Attention.step
    monkeypatch.setattr(Attention, "step", lambda self, x, state=None: fn(original, self, x, state))


def built_state(name, L, options=None):
    """A state built here, as a user would: the mechanism at the sweep's width, causal, L positions stepped in."""
    torch.manual_seed(0)
    attn = build_attention(name, 32, 4, causal=True, **(options or {})).eval()
    with torch.no_grad():
        _, state = attn.step(torch.randn(1, L, 32))
    return attn, state


def test_decode_mode_times_tokens_and_records_state_bytes(tmp_path, monkeypatch):
    """A ManualClock that every step advances by 1 ms per position: the prefill of L positions "takes" L ms and
    each single-token step 1 ms, so the time per token is 1 ms exactly, whatever the machine."""
    clock = ManualClock()

    def step(original, self, x, state):
        clock.advance(1e-3 * x.shape[1])
        return original(self, x, state)

    patch_step(monkeypatch, step)
    cfg = tiny(mode="decode", attentions=["softmax", "linear", "retention", "local", "linformer"], options={"local": {"window": 3}})
    rows = by_key(run(cfg, tmp_path, clock=clock))
    points = {(p["attention"], p["seq_len"]): p for p in read_points(tmp_path / "results.jsonl")}
    steps = 1 + cfg.warmup + cfg.runs  # one for the peak memory, then warm-up and timed ones
    for name in ("softmax", "linear", "retention", "local"):
        for L in (8, 16):
            r, p = rows[name, L], points[name, L]
            assert r["status"] == "ok" and r["mode"] == "decode" and r["causal"] is True, r["reason"]
            assert p["key"] == point_key(name, "cpu", L, 1, 32, 4, "fp32", "decode", True)
            assert r["median_ms"] == pytest.approx(1.0, abs=1e-6) and r["runs"] == cfg.runs  # per token (float clock sums: 1e-6)
            assert r["prefill_ms"] == pytest.approx(float(L), abs=1e-6)  # one step call over the whole context
            # prefill: one warm-up and one timed call; then the steps
            assert r["elapsed_s"] == pytest.approx((2 * L + steps) / 1e3, abs=1e-9)
            assert r["flops_flagged"] is None and r["analytic_gflop"] is None and r["achieved_gflops"] is None  # no FLOPs here
            attn, state = built_state(name, L, cfg.options.get(name))
            assert r["state_bytes"] == attn.state_bytes(state) and r["decoding_state"] == attn.decoding_state
            assert r["state_mib"] == r["state_bytes"] / 2**20
            assert p["decode"]["steps"] == steps
            attn, state = built_state(name, L + steps, cfg.options.get(name))
            assert p["decode"]["state_bytes_after_steps"] == attn.state_bytes(state)
    # a KV cache grows with the context: 2 (k, v) x heads 4 x L x head dim 8 x 4 bytes (fp32)
    assert [rows["softmax", L]["state_bytes"] for L in (8, 16)] == [2 * 4 * L * 8 * 4 for L in (8, 16)]
    # its one step allocates the new cache of L + 1 positions (the old one freed after it)
    assert rows["softmax", 16]["peak_mib"] * 2**20 >= rows["softmax", 16]["state_bytes"] * 17 / 16
    # constant states do not: linear's sum_j phi(k_j)^T [v_j, 1] is heads 4 x 8 x 9 numbers of 4 bytes
    assert rows["linear", 8]["state_bytes"] == rows["linear", 16]["state_bytes"] == 4 * 8 * 9 * 4
    assert rows["retention", 8]["state_bytes"] == rows["retention", 16]["state_bytes"] > 0
    # a window of 3 keeps the same few positions at both lengths
    assert rows["local", 8]["decoding_state"] == "window" and rows["local", 8]["state_bytes"] == rows["local", 16]["state_bytes"]
    # no decoding: skipped with the reason, in the rows and in the summary
    for L in (8, 16):
        assert rows["linformer", L]["status"] == "unsupported" and rows["linformer", L]["median_ms"] is None
        assert rows["linformer", L]["reason"].startswith("attention 'linformer' has no incremental decoding (supports_decoding is False): it cannot be causal")
    summary = (tmp_path / "summary.md").read_text()
    assert "**median ms per token**" in summary and "**state MiB after the prefill**" in summary and "L=16" in summary
    assert f"- linformer (L=8, 16): {rows['linformer', 8]['reason']}" in summary
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["mode"] == "decode" and "state_bytes" in env["mode_note"]


def test_decode_mode_options_and_lengths(tmp_path):
    """A max_seq_len option gets the longest context plus the positions the steps add; one the user sets too
    short for a context and its steps makes that point unsupported, saying so."""
    cfg = tiny(mode="decode", attentions=["cosformer"], seq_lens=[8, 16], runs=2, warmup=1)
    rows = by_key(run(cfg, tmp_path / "generic"))
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all(json.loads(r["options"]) == {"max_seq_len": 16 + 4} for r in rows.values())
    cfg = tiny(mode="decode", attentions=["cosformer"], seq_lens=[8, 16], options={"cosformer": {"max_seq_len": 12}})
    rows = by_key(run(cfg, tmp_path / "short"))
    assert rows["cosformer", 8]["status"] == "ok"  # 8 + 4 steps = 12 positions
    assert rows["cosformer", 16]["status"] == "unsupported"
    assert rows["cosformer", 16]["reason"] == ("context 16 plus 4 decoding steps exceeds max_seq_len=12 of attention 'cosformer'; "
                                               "raise it with --opt cosformer.max_seq_len=N")


def test_decode_mode_timeout_names_its_stage(tmp_path, monkeypatch):
    clock = ManualClock()

    def step(original, self, x, state):
        if x.shape[1] == 1 and state["pos"] >= 16:
            clock.advance(10.0)  # a single-token step after a context of 16 "takes" 10 s
        return original(self, x, state)

    patch_step(monkeypatch, step)
    rows = by_key(run(tiny(mode="decode", max_seconds=1.0), tmp_path, clock=clock))
    assert rows["softmax", 8]["status"] == "ok"
    r = rows["softmax", 16]
    assert r["status"] == "timeout" and r["median_ms"] is None
    # the first step measures the peak memory: a shielded stage, stopped right after it
    assert r["reason"] == "over the --max-seconds-per-point budget of 1 s: stopped during peak-memory measurement after 10.0 s"
    assert r["state_bytes"] == 2 * 4 * 16 * 8 * 4  # measured before the budget ran out


def test_decode_mode_resumes_and_plots(tmp_path, monkeypatch):
    cfg = tiny(mode="decode", attentions=["softmax", "linear", "linformer"])
    rows = run(cfg, tmp_path)
    measured = []
    real = sw.run_point
    monkeypatch.setattr(sw, "run_point", lambda spec, c, **kw: measured.append(spec.key(c)) or real(spec, c, **kw))
    assert len(run(cfg, tmp_path, resume=True)) == 6 and measured == []  # every point finished, unsupported ones too
    names = {p.name for p in plot_sweep(rows, tmp_path)}
    assert names == {f"{f}.{ext}" for f in DECODE_FIGURES for ext in ("png", "pdf")}
    # a fwd and a decode configuration in one folder: each gets its own set, named by its mode
    both = rows + run(tiny(), tmp_path / "fwd")
    names = {p.name for p in plot_sweep(both, tmp_path / "both", figures=("state", "time"))}
    assert names == {f"{f}_d32_h4_b1_fp32_{m}.{ext}" for f, m in (("time", "fwd"), ("time", "decode_causal"), ("state", "decode_causal"))
                     for ext in ("png", "pdf")}


def test_progress_line_of_a_decoding_point(tmp_path):
    import io

    stream = io.StringIO()
    run(tiny(mode="decode", seq_lens=[8]), tmp_path, stream=stream)
    assert "ms per token" in stream.getvalue() and "state 0.002 MiB" in stream.getvalue()  # 2 x 4 x 8 x 8 x 4 B
