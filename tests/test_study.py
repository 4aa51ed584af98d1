"""The comparison study (training/study.py, training/study_report.py) on a tiny synthetic task: two
mechanisms, a few steps each.

- One command writes study.json, the table (markdown, CSV), the trade-off plots (PNG, PDF), the attention
  maps and report.md, with one row per mechanism holding its efficiency figures.
- A second run of the same command trains nothing: every run is found finished in the log folder.
- A mechanism that fails mid-study is recorded as failed (with its error) and the others complete; it
  leaves no run folder when it failed before its first checkpoint (failed.json beside later ones:
  test_train_cli's NaN test). A study stopped during a run resumes that run from its last.ckpt when run again.
- A mechanism the task cannot use is listed as skipped, with the reason; seeds give mean +- std.
- Bad input (an unscoped option, a task without attention) is one sentence and exit 2.
"""
import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from profiling.plots import overlapping_tick_labels, plt
from training.cli import main
from training.study import STUDY_FILE, scoped_options
from training.study_report import COST_AXES, attention_maps_figure, pareto, tradeoff_figure, write_report
from training.study_report import rows as study_rows

pytestmark = pytest.mark.usefixtures("training_isolated")

TINY = ["--data-source", "synthetic", "--accelerator", "cpu", "--no-progress-bar", "--dim", "32", "--depth", "2",
        "--heads", "2", "--batch-size", "8", "--limit-train-batches", "3", "--limit-val-batches", "2",
        "--limit-test-batches", "1", "--max-epochs", "1", "--log-every-n-steps", "1"]


def study(tmp_path, *argv, sweep=False):
    logdir, out = tmp_path / "logs", tmp_path / "study"
    code = main([*argv, *TINY, "--logdir", str(logdir), "--study-dir", str(out),
                 *([] if sweep else ["--no-study-sweep"])])
    data = json.loads((out / STUDY_FILE).read_text()) if (out / STUDY_FILE).is_file() else None
    return code, data, logdir, out


def versions(logdir: Path):
    return sorted(str(p.relative_to(logdir)) for p in logdir.glob("*/version_*"))


def test_two_mechanisms_table_plots_report_and_rerun_skips(tmp_path, capsys):
    code, data, logdir, out = study(tmp_path, "--model", "vit", "--attention", "softmax,linear", sweep=True)
    assert code == 0
    assert [(r["attention"], r["status"], r["reused"]) for r in data["runs"]] == [("softmax", "finished", False),
                                                                               ("linear", "finished", False)]
    for r in data["runs"]:
        assert r["efficiency"]["latency_ms_p50"] > 0 and r["results"]["test"]["test/acc"] >= 0
    for name in ("table.md", "table.csv", "tradeoff.png", "tradeoff.pdf", "attention_maps.png", "attention_maps.pdf",
                 "report.md"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["attention"] for r in rows] == ["softmax", "linear"]
    for r in rows:
        assert r["metric_name"] == "test/acc" and float(r["latency_ms_p50"]) > 0 and float(r["step_alloc_peak_mib"]) > 0
        assert float(r["gflop_per_sample"]) > 0 and int(r["parameters"]) > 0 and r["data_source"] == "synthetic"
    report = (out / "report.md").read_text()
    assert "| softmax |" in report and "| linear |" in report and "tradeoff.png" in report
    assert "attention_maps.png" in report and "Pareto front" in report
    assert "sweep/summary.md" in report and (out / "sweep" / "results.jsonl").is_file()  # profile.py's sweep, linked
    before = versions(logdir)
    assert len(before) == 2

    code, again, _, _ = study(tmp_path, "--model", "vit", "--attention", "softmax,linear")
    assert code == 0 and [r["reused"] for r in again["runs"]] == [True, True]
    assert versions(logdir) == before  # nothing trained again
    assert "finished earlier, skipped" in capsys.readouterr().out


def test_failing_mechanism_is_recorded_and_the_others_complete(tmp_path, monkeypatch):
    from models.attention.linear import LinearAttention

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(LinearAttention, "forward", broken)
    code, data, logdir, out = study(tmp_path, "--model", "vit", "--attention", "linear,softmax")
    assert code == 0
    status = {r["attention"]: r for r in data["runs"]}
    assert status["linear"]["status"] == "failed" and "simulated kernel failure" in status["linear"]["error"]
    assert status["softmax"]["status"] == "finished" and status["softmax"]["results"]["test"]
    report = (out / "report.md").read_text()
    assert "linear seed 0: failed, RuntimeError: simulated kernel failure" in report
    rows = {r["attention"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert rows["linear"]["status"] == "failed" and rows["softmax"]["status"] == "finished"

    # it failed before its first checkpoint: no folder is left that TensorBoard would show as a run
    assert versions(logdir) == ["vit-softmax-synthetic/version_0"]

    monkeypatch.undo()  # the failure is fixed: a re-run trains linear only
    code, again, _, _ = study(tmp_path, "--model", "vit", "--attention", "linear,softmax")
    assert {r["attention"]: (r["status"], r["reused"]) for r in again["runs"]} == {"linear": ("finished", False),
                                                                                   "softmax": ("finished", True)}


def test_a_study_stopped_mid_run_resumes_that_run_and_leaves_no_orphan(tmp_path, monkeypatch, capsys):
    """Ctrl+C (a real SIGINT to this process) during linear's second training step: the run stops at the end
    of that step with a checkpoint and the study stops (exit 130). The re-run resumes linear in the same
    folder from that checkpoint; one folder per run, no orphan. A run killed before any checkpoint (its
    last.ckpt removed here, as a SIGKILL before the first save leaves it) is removed and trained again."""
    from models.attention.linear import LinearAttention

    forward, calls = LinearAttention.forward, []

    def interrupted_forward(self, *args, **kwargs):
        if self.training:
            calls.append(1)
            if len(calls) == 3:  # depth 2: the first layer of the second training step
                os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LinearAttention, "forward", interrupted_forward)
    code, data, logdir, out = study(tmp_path, "--model", "vit", "--attention", "softmax,linear")
    assert code == 128 + signal.SIGINT
    assert "training stopped by SIGINT after step 2" in capsys.readouterr().err
    assert [(r["attention"], r["status"]) for r in data["runs"]] == [("softmax", "finished"), ("linear", "pending")]
    linear = logdir / "vit-linear-synthetic" / "version_0"
    ckpt = torch.load(linear / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and not (linear / "results.json").exists()

    monkeypatch.undo()
    code, again, _, _ = study(tmp_path, "--model", "vit", "--attention", "softmax,linear")
    assert code == 0 and "resuming it from" in capsys.readouterr().out
    assert {r["attention"]: (r["status"], r["reused"]) for r in again["runs"]} == {"softmax": ("finished", True),
                                                                                   "linear": ("finished", False)}
    assert versions(logdir) == ["vit-linear-synthetic/version_0", "vit-softmax-synthetic/version_0"]
    assert json.loads((linear / "results.json").read_text())["steps"] == 3

    # killed before its first checkpoint: the folder is removed and the run trained again
    (linear / "results.json").unlink()
    (linear / "checkpoints" / "last.ckpt").unlink()
    code, third, _, _ = study(tmp_path, "--model", "vit", "--attention", "softmax,linear")
    assert code == 0 and "an interrupted run with no checkpoint" in capsys.readouterr().out
    assert versions(logdir) == ["vit-linear-synthetic/version_0", "vit-softmax-synthetic/version_0"]
    assert json.loads((linear / "results.json").read_text())["steps"] == 3


def test_causal_task_skips_mechanisms_with_reason_and_seeds_aggregate(tmp_path):
    code, data, logdir, out = study(tmp_path, "--model", "wikitext", "--attention", "linformer,softmax", "--seq-len", "16",
                                    "--seeds", "2")
    assert code == 0
    assert [s["attention"] for s in data["skipped"]] == ["linformer"] and "cannot be causal" in data["skipped"][0]["reason"]
    assert [(r["attention"], r["seed"]) for r in data["runs"]] == [("softmax", 0), ("softmax", 1)]
    table = (out / "table.md").read_text()
    assert "±" in table and "test/ppl" in table  # mean +- std over the two seeds
    assert "linformer: skipped" in (out / "report.md").read_text()


def test_scoped_options_reach_one_mechanism(tmp_path):
    code, data, _, _ = study(tmp_path, "--model", "vit", "--attention", "performer,local", "--attention-opt",
                             "performer.features=16", "--attention-opt", "local.window=4")
    assert code == 0
    opts = {r["attention"]: r["attention_options"] for r in data["runs"]}
    assert opts == {"performer": {"features": 16}, "local": {"window": 4}}


@pytest.mark.parametrize("argv, message", [
    (["--model", "vit", "--attention", "all", "--attention-opt", "k=32"], "every option names its mechanism"),
    (["--model", "inpaint-cnn", "--attention", "all"], "nothing to compare"),
    (["--model", "vit", "--attention", "softmax,nosuch"], "unknown attention nosuch"),
    (["--model", "vit", "--attention", "all", "--no-efficiency-callbacks"], "efficiency.json"),
])
def test_bad_study_input(tmp_path, capsys, argv, message):
    code, data, logdir, _ = study(tmp_path, *argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert data is None and not logdir.exists()


def test_pareto_front():
    pts = [("a", 1.0, 0.5), ("b", 2.0, 0.7), ("c", 3.0, 0.6), ("d", 1.5, 0.5)]
    assert sorted(pareto(pts, maximize=True)) == ["a", "b"]  # c costs more for less; d ties a's metric at more cost
    assert sorted(pareto(pts, maximize=False)) == ["a"]  # lower metric better: a is cheapest and lowest


def test_pareto_front_within_the_error_bars():
    """(name, cost, metric, cost std, metric std): a point leaves the front only where another is no worse on both
    axes and better on one, each gap larger than the two stds added."""
    overlapping = [("a", 1.0, 0.40, 0.1, 0.05), ("b", 2.0, 0.35, 0.1, 0.05)]  # metric gap 0.05 < 0.05 + 0.05
    assert sorted(pareto(overlapping, maximize=True)) == ["a", "b"]  # the data do not rank them: both stay
    assert sorted(pareto([p[:3] for p in overlapping], maximize=True)) == ["a"]  # without the bars, a would win
    clear = [("a", 1.0, 0.40, 0.1, 0.05), ("b", 2.0, 0.20, 0.1, 0.05)]  # metric gap 0.2 > 0.1, cost gap 1 > 0.2
    assert pareto(clear, maximize=True) == ["a"]
    close_cost = [("a", 1.0, 0.40, 0.6, 0.05), ("b", 2.0, 0.20, 0.6, 0.05)]  # cost bars overlap (gap 1 < 1.2)
    assert sorted(pareto(close_cost, maximize=True)) == ["a", "b"]
    same_flops = [("a", 3.0, 0.40, None, 0.05), ("b", 3.0, 0.20, None, 0.05)]  # no spread on cost: equal is no worse
    assert pareto(same_flops, maximize=True) == ["a"]
    assert sorted(pareto([("a", 3.0, 0.40, None, 0.1), ("b", 3.0, 0.30, None, 0.1)], maximize=True)) == ["a", "b"]


def _table_rows(stds):
    """Finished study rows: three mechanisms, metric stds as given."""
    out = []
    for (name, lat, mem, gflop, acc), std in zip([("softmax", 42.0, 28.7, 0.03284, 0.35), ("linear", 44.5, 37.6, 0.02805, 0.34),
                                                 ("local", 65.5, 58.5, 0.03225, 0.10)], stds):
        out.append({"attention": name, "status": "finished", "seeds": 3, "metric": acc, "metric_std": std,
                    "latency_ms_p50": lat, "latency_ms_p50_std": 3.0, "step_alloc_peak_mib": mem, "step_alloc_peak_mib_std": 0.0,
                    "gflop_per_sample": gflop, "gflop_per_sample_std": None})
    return out


def test_tradeoff_figure_rings_only_what_the_error_bars_support_and_says_so():
    study_ = {"task": "vit", "mode": "max", "monitor": "val/acc"}
    fig = tradeoff_figure(study_, _table_rows([0.05, 0.08, 0.02]))
    rings = [{c.get_gid() for c in ax.collections if (c.get_gid() or "").startswith("pareto:")} for ax in fig.axes[:3]]
    # softmax and linear overlap (0.01 apart, bars 0.05 and 0.08): neither is ringed as beating the other on any
    # axis; local is worse than softmax by far more than the bars (0.25 > 0.07) and costs more: off the front
    assert rings == [{"pareto:softmax", "pareto:linear"}] * 3
    caption = fig._suptitle.get_text()
    assert "error bars: ±1 std over 3 seeds" in caption and "Pareto front within the error bars" in caption
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "error bars:\n±1 std over 3 seeds" in legend and "Pareto front within\nthe error bars" in legend
    assert [ax.get_xlabel() for ax in fig.axes[:3]] == [label for _, label in COST_AXES]
    assert all(ax.get_ylabel() == "test/acc" for ax in fig.axes[:3])
    assert overlapping_tick_labels(fig) == []  # the narrow GFLOP range (0.028 to 0.033) reads
    assert len([t for t in fig.axes[2].get_xticklabels() if t.get_text()]) >= 2
    plt.close(fig)
    fig = tradeoff_figure(study_, _table_rows([0.001, 0.001, 0.001]))  # tight bars: the usual ranking comes back
    assert {c.get_gid() for c in fig.axes[1].collections if c.get_gid()} == {"pareto:softmax"}  # cheapest, best
    plt.close(fig)


@pytest.mark.parametrize("task", ["vit", "imdb", "wikitext", "inpaint-transformer"])
def test_committed_studies_tradeoff_ticks_read(task):
    """The committed studies' trade-off figures, drawn from their study.json: every tick label reads."""
    data = json.loads((Path(__file__).resolve().parents[1] / f"benchmarks/results/study-cpu-{task}/study.json").read_text())
    fig = tradeoff_figure(data, study_rows(data))
    assert overlapping_tick_labels(fig) == []
    plt.close(fig)


def test_attention_maps_figure_one_scale_colour_bar_labels_and_a_note_for_linformer():
    maps = {"softmax": [torch.softmax(torch.randn(8, 8), -1) for _ in range(2)],
            "nystromformer": [torch.randn(8, 8) * 0.1, torch.randn(8, 8) * 0.3]}  # signed: a diverging scale for all
    fig = attention_maps_figure("vit", maps, without=["linformer"])
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 4 and len({im.get_clim() for im in images}) == 1  # one colour scale for every panel
    lo, hi = images[0].get_clim()
    assert lo == -hi and hi == pytest.approx(max(float(m.abs().max()) for v in maps.values() for m in v))
    assert {im.get_cmap().name for im in images} == {"RdBu_r"}
    colorbars = [ax for ax in fig.axes if ax.get_ylabel().startswith("attention weight")]
    assert len(colorbars) == 1
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert {ax.get_ylabel() for ax in panels if ax.get_ylabel()} == {"query position"}
    assert {ax.get_xlabel() for ax in panels if ax.get_xlabel()} == {"key position"}
    assert "linformer" in fig._supxlabel.get_text() and "no attention weights" in fig._supxlabel.get_text()
    plt.close(fig)


def test_report_redrawn_from_study_json_keeps_the_drawn_maps(tmp_path):
    study_ = {"task": "vit", "mode": "max", "monitor": "val/acc", "command": "train.py --study", "seeds": [0, 1, 2],
              "machine": {}, "recipe": {}, "runs": [], "skipped": [], "sweep_dir": None}
    for name in ("attention_maps.png", "attention_maps.pdf"):
        (tmp_path / name).write_bytes(b"kept")
    write_report(study_, tmp_path, maps=False)
    assert (tmp_path / "attention_maps.png").read_bytes() == b"kept"
    assert "![attention maps](attention_maps.png)" in (tmp_path / "report.md").read_text()


def test_scoped_options_parse():
    assert scoped_options(["linformer.k=32", "performer.features=64"], ["linformer", "performer"]) == {
        "linformer": ["k=32"], "performer": ["features=64"]}


def test_seeds_start_from_the_config_files_seed(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("seed: 7\n")
    code, data, _, _ = study(tmp_path, "--model", "vit", "--attention", "softmax,linear", "--config", str(cfg), "--seeds", "2",
                             "--limit-train-batches", "1")
    assert code == 0 and data["seeds"] == [7, 8]
    assert [(r["attention"], r["seed"]) for r in data["runs"]] == [("softmax", 7), ("softmax", 8), ("linear", 7), ("linear", 8)]
