"""What TensorBoard shows of a run (callbacks/tensorboard_view.py), read back with TensorBoard's own reader and
its hparams plugin's parser: the HParams row with the same columns for every task, its metric values, the
training-log interval that adapts to the run's length, validation's scalars at the step of its images, and
the Custom Scalars layout."""
import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from callbacks.tensorboard_view import HPARAM_METRICS, HPARAM_NUMBERS, HPARAM_STRINGS, SUMMARY, log_interval
from training.runner import run

SMALL = ["--dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "8", "--limit-val-batches", "2",
         "--limit-test-batches", "2", "--data-source", "synthetic", "--accelerator", "cpu", "--no-progress-bar"]

pytestmark = pytest.mark.usefixtures("training_isolated")


def test_log_interval_adapts_to_the_budget():
    assert log_interval(20, 30) == 1  # a short run: every step, so loss and learning rate are curves
    assert log_interval(20, 500) == 10  # 50 points
    assert log_interval(20, 20000) == 20  # a long run keeps the recipe's interval
    assert log_interval(20, math.inf) == 20  # no budget known (max_steps -1 and an iterable of unknown length)
    assert log_interval(20, 0) == 1


def events(log_dir):
    ea = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def hparams_of(ea):
    content = ea.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    return experiment, start


def test_hparams_row_curves_and_one_step_per_validation(tmp_path):
    steps = 30
    r = run(["--model", "vit", "--attention", "linformer", "--attention-opt", "k=8", "--image-size", "16", *SMALL,
             "--max-steps", str(steps), "--val-check-interval", "10", "--logdir", str(tmp_path)])
    ea = events(r["log_dir"])
    assert len(list(Path(r["log_dir"]).glob("events.out.tfevents.*"))) == 2  # the fit's and the test's, as before

    # the HParams table: every column declared, this run's values in its row, the metrics as scalars
    experiment, start = hparams_of(ea)
    assert [h.name for h in experiment.hparam_infos] == list(HPARAM_STRINGS + HPARAM_NUMBERS)  # model first
    assert [m.name.tag for m in experiment.metric_infos] == [SUMMARY + m for m in HPARAM_METRICS]
    row = start.hparams
    assert row["model"].string_value == "vit" and row["attention"].string_value == "linformer"
    assert row["attention_options"].string_value == "k=8"
    assert row["data_source"].string_value == "synthetic" and row["recipe"].string_value == "default"
    assert row["metric"].string_value == "val/acc"
    assert (row["dim"].number_value, row["depth"].number_value, row["heads"].number_value) == (32, 1, 2)
    assert row["tokens"].number_value == 17  # (16 / 4)^2 patches + CLS
    assert row["parameters"].number_value == r["parameters"] and row["steps"].number_value == steps
    value = {tag: ea.Scalars(tag)[-1].value for tag in (SUMMARY + m for m in HPARAM_METRICS)}
    assert value[SUMMARY + "test_metric"] == pytest.approx(r["test"]["test/acc"], abs=1e-6)  # float32 in the file
    assert value[SUMMARY + "best_val_metric"] == pytest.approx(r["best_val"], abs=1e-6)
    assert value[SUMMARY + "latency_ms_p50"] > 0 and value[SUMMARY + "samples_per_s"] > 0

    # the recipe's interval of 20 adapted to 30 steps: a point per step for the loss, the rate and the latency
    for tag in ("train/loss_step", "lr-AdamW/pg1", "efficiency/train_latency_ms"):
        assert [e.step for e in ea.Scalars(tag)] == list(range(steps)), tag
    # a validation's scalars, images and efficiency scalars at one step: the optimiser steps taken
    val_steps = [10, 20, 30]
    assert [e.step for e in ea.Scalars("val/loss")] == val_steps
    assert [e.step for e in ea.Scalars("val/acc")] == val_steps
    assert [e.step for e in ea.Scalars("efficiency/val_latency_ms_p50")] == val_steps
    assert "custom_scalars__config__" in ea.Tags()["tensors"]


def test_given_log_interval_is_kept(tmp_path):
    r = run(["--model", "vit", "--attention", "softmax", "--image-size", "16", *SMALL, "--max-steps", "12",
             "--log-every-n-steps", "5", "--logdir", str(tmp_path)])
    ea = events(r["log_dir"])
    assert [e.step for e in ea.Scalars("train/loss_step")] == [4, 9]
    assert [e.step for e in ea.Scalars("efficiency/train_latency_ms")] == [4, 9]  # the same steps as the loss


def test_without_a_test_the_row_is_written_at_the_end_of_the_fit(tmp_path):
    r = run(["--model", "vit", "--attention", "softmax", "--image-size", "16", *SMALL, "--max-steps", "6",
             "--val-check-interval", "3", "--no-test", "--logdir", str(tmp_path)])
    ea = events(r["log_dir"])
    _, start = hparams_of(ea)
    assert start.hparams["attention"].string_value == "softmax"
    assert SUMMARY + "test_metric" not in ea.Tags()["scalars"]  # an empty cell
    assert ea.Scalars(SUMMARY + "best_val_metric")[-1].value == pytest.approx(r["best_val"], abs=1e-6)


def test_images_share_the_validation_step(tmp_path):
    r = run(["--model", "imdb", "--attention", "softmax", "--tokenizer", "byte", "--seq-len", "16", *SMALL,
             "--max-steps", "6", "--val-check-interval", "3", "--logdir", str(tmp_path)])
    ea = events(r["log_dir"])
    assert [i.step for i in ea.Images("val/attention_maps")] == [e.step for e in ea.Scalars("val/loss")] == [3, 6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_a_real_tensorboard_server_shows_one_table(tmp_path):
    """`tensorboard --logdir` over two runs of different tasks, read through its HTTP API on 127.0.0.1: one
    HParams table with a row per run (its attention, its metric values), and curves of more than one point."""
    logs = tmp_path / "logs"
    run(["--model", "vit", "--attention", "linformer", "--image-size", "16", *SMALL, "--max-steps", "20",
         "--val-check-interval", "10", "--logdir", str(logs)])
    run(["--model", "wikitext", "--attention", "linear", "--seq-len", "16", *SMALL, "--max-steps", "20",
         "--val-check-interval", "10", "--logdir", str(logs)])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logs), "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # a hang guard (60 s), not a timing claim
            try:
                with urllib.request.urlopen(base + "/data/runs", timeout=5) as r:
                    if len(json.loads(r.read())) >= 2:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        groups = post(base + "/data/plugin/hparams/session_groups",
                      {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": [],
                       "startIndex": 0, "sliceSize": 10})["sessionGroups"]
        rows = {g["name"]: g for g in groups}
        assert set(rows) == {"vit-linformer-synthetic/version_0", "wikitext-linear-synthetic/version_0"}
        assert rows["vit-linformer-synthetic/version_0"]["hparams"]["attention"] == "linformer"
        assert rows["wikitext-linear-synthetic/version_0"]["hparams"]["metric"] == "val/ppl"
        for g in groups:
            shown = {m["name"]["tag"] for m in g["metricValues"]}
            assert {SUMMARY + "test_metric", SUMMARY + "latency_ms_p50"} <= shown
        experiment = post(base + "/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})
        assert {h["name"] for h in experiment["hparamInfos"]} == set(HPARAM_STRINGS + HPARAM_NUMBERS)  # sorted by it
        for tag in ("train/loss_step", "lr-AdamW/pg1", "efficiency/train_latency_ms"):
            query = urllib.parse.urlencode({"tag": tag, "run": "vit-linformer-synthetic/version_0"})
            with urllib.request.urlopen(f"{base}/data/plugin/scalars/scalars?{query}", timeout=30) as r:
                points = json.loads(r.read())  # [wall time, step, value] each
            assert [p[1] for p in points] == list(range(20)) and all(p[2] > 0 for p in points), tag  # a curve
    finally:
        server.terminate()
        server.wait(timeout=30)
