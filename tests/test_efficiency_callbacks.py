"""callbacks/efficiency.py against independent references.

- FLOPs: a stack of linear layers and the softmax attention block, whose FLOPs are known analytically
  (forward: 2 * batch * in * out per linear layer, and the mechanism's own formula; forward + backward: each
  matmul's two gradients, less the input gradient of a first layer whose input needs none). Tolerance 2 %
  (the issue's), though both are integer counts of the same matmuls and agree exactly.
- Latency and data wait, on a ManualClock that only the step and the loader advance: a step that "takes"
  60 ms is measured as 60 ms and a loader that "takes" 50 ms lands in data_wait_ms, not in latency_ms,
  exactly (1e-9 ms: float rounding of the clock's sums), whatever the machine's speed or load. The same
  with real sleeps and time.perf_counter is a slow test (`make test-slow`): measured within
  [sleep, sleep + 100 ms] (sleep is a lower bound; the 100 ms cover Lightning's hooks and a shared,
  loaded machine's scheduling).
- Peak memory: a step that allocates and touches 256 MiB raises the step's peak by 256 MiB (- 4 / + 40 MiB:
  pages released during the step offset a little, other growth adds a little), and agrees within 40 MiB with the allocator's own figure for the same work by the
  profiler method of profiling/memory.py; the step's tensor memory by that method itself is 256 MiB (+ 8 MiB)
  and does not move when the process holds 300 MiB more. On CUDA (when present) the peak equals
  max_memory_allocated.
- FLOPs are counted once per distinct batch shape (the counter opens exactly once per shape), a compiled
  network is counted eagerly and left compiled, and an exception in a counted step leaves no counter open.
- Checkpoints: the records are saved by field name and come back equal; a state in the older positional form
  (records as lists, memory in bytes) still loads.
- TensorBoard carries every promised tag and efficiency.json every field with plausible values, for a
  train.py run; `--no-efficiency-callbacks` writes neither. DDP is covered in test_train_ddp.py, resume in
  test_train_resume.py.
"""
import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from callbacks import EfficiencyMonitor
from callbacks.efficiency import EFFICIENCY_FILE
from callbacks.efficiency_records import TrainRecord, ValRecord
from models.attention import build_attention
from profiling import FlopTally, ManualClock, peak_allocated_bytes
from profiling.peaks import match_device, matmul_dtype, mfu_note, peak_tflops

FLOP_TOL = 0.02
EXACT_MS = 1e-9  # a ManualClock's figures are exact but for float rounding of its sums
SLEEP_TOL_MS = 100.0  # real sleeps (slow tests only): above the sleep, Lightning's hooks and a loaded machine
MIB = 2**20


def take(seconds: float, clock=None) -> None:
    """Spend `seconds`: on the ManualClock when given (exactly, at once), else really (time.sleep)."""
    if clock is not None:
        clock.advance(seconds)
    elif seconds:
        time.sleep(seconds)


class Batches(torch.utils.data.Dataset):
    """Pre-made batches (use with batch_size=None); each __getitem__ takes `delay_s` (a slow loader)."""

    def __init__(self, batches, delay_s: float = 0.0, clock=None):
        self.batches, self.delay_s, self.clock = batches, delay_s, clock

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        take(self.delay_s, self.clock)
        return self.batches[i]


class Regress(L.LightningModule):
    """net(x) -> mean squared output (no matmul in the loss); each step takes `sleep_s` more (see `take`);
    `alloc_mib` allocates and touches that much memory inside the step."""

    def __init__(self, net, sleep_s=0.0, alloc_mib=0, fail_at=None, clock=None):
        super().__init__()
        self.net, self.sleep_s, self.alloc_mib, self.fail_at, self.clock = net, sleep_s, alloc_mib, fail_at, clock

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and batch_idx == self.fail_at:
            raise RuntimeError("deliberate failure")
        take(self.sleep_s, self.clock)
        if self.alloc_mib:
            block = torch.ones(self.alloc_mib * MIB // 4)  # written, so resident
            assert float(block[-1]) == 1.0
            del block
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        take(self.sleep_s, self.clock)
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def fit(tmp_path, module, batches, delay_s=0.0, val_batches=None, **monitor_kw):
    """Train over `batches` (one epoch) with only the EfficiencyMonitor; returns (monitor, efficiency.json).
    The loader and the monitor share the module's clock."""
    clock = getattr(module, "clock", None)
    if clock is not None:
        monitor_kw.setdefault("clock", clock)
    monitor = EfficiencyMonitor(print_table=False, **monitor_kw)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=TensorBoardLogger(tmp_path, name="run"),
                        callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(Batches(batches, delay_s, clock), batch_size=None)
    val = torch.utils.data.DataLoader(Batches(val_batches), batch_size=None) if val_batches else None
    trainer.fit(module, loader, val)
    return monitor, json.loads((Path(trainer.log_dir) / EFFICIENCY_FILE).read_text())


def linear_stack(widths):
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths, widths[1:])])


def linear_stack_flops(widths, batch):
    """(forward, forward + backward): 2 * batch * in * out per layer forward; backward: the weight gradient of
    every layer and the input gradient of every layer but the first (its input is data)."""
    layers = [2 * batch * a * b for a, b in zip(widths, widths[1:])]
    fwd = sum(layers)
    return fwd, fwd + sum(layers) + sum(layers[1:])


def close(measured, expected, tol=FLOP_TOL):
    return abs(measured - expected) <= tol * expected


# ------------------------------------------------------------------ FLOPs
def test_linear_stack_flops_forward_and_backward(tmp_path):
    widths, batch = [64, 128, 96, 10], 16
    batches = [(torch.randn(batch, widths[0]),) for _ in range(3)]
    monitor, eff = fit(tmp_path, Regress(linear_stack(widths)), batches)
    fwd, total = linear_stack_flops(widths, batch)
    assert close(eff["flops_per_sample_fwd"] * batch, fwd) and close(eff["flops_per_sample_fwd_bwd"] * batch, total)
    assert eff["flop_shapes_counted"] == 1
    assert all(r.flops_fwd_bwd == monitor.train[0].flops_fwd_bwd for r in monitor.train)  # later steps reuse the count
    ea = EventAccumulator(str(tmp_path / "run" / "version_0"))
    ea.Reload()
    assert close(ea.Scalars("efficiency/train_gflop_per_step")[-1].value * 1e9, total, FLOP_TOL)
    assert close(ea.Scalars("efficiency/train_gflop_per_sample")[-1].value * 1e9, total / batch, FLOP_TOL)


class AttentionBlock(nn.Module):
    """The softmax attention block on its own; a learned input scale makes the block's input need a gradient,
    as inside a network, so the analytic backward (input and parameter gradients) applies."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.attn = build_attention("softmax", dim, heads)

    def forward(self, x):
        return self.attn(x * self.scale)


def test_softmax_block_flops_forward_and_backward(tmp_path):
    batch, n = 4, 96
    block = AttentionBlock()
    monitor, eff = fit(tmp_path, Regress(block), [(torch.randn(batch, n, 64),) for _ in range(2)])
    fwd, total = block.attn.flops(n, batch=batch), block.attn.flops(n, batch=batch, backward=True)
    assert close(eff["flops_per_sample_fwd"] * batch, fwd) and close(eff["flops_per_sample_fwd_bwd"] * batch, total)


def test_flops_counted_once_per_shape(tmp_path, monkeypatch):
    starts = []
    real_start = FlopTally.start
    monkeypatch.setattr(FlopTally, "start", lambda self: (starts.append(1), real_start(self)))
    widths = [32, 64, 8]
    batches = [(torch.randn(b, 32),) for b in (4, 8, 4, 8, 4, 8)]
    monitor, eff = fit(tmp_path, Regress(linear_stack(widths)), batches)
    assert len(starts) == 2 and eff["flop_shapes_counted"] == 2
    for r in monitor.train:
        assert r.flops_fwd_bwd == linear_stack_flops(widths, r.samples)[1]
    expected = sum(linear_stack_flops(widths, b)[1] for b in (4, 8, 4, 8, 4, 8)) / 36
    assert close(eff["flops_per_sample_fwd_bwd"], expected)


def test_compiled_network_is_counted_eagerly_and_stays_compiled(tmp_path):
    widths = [32, 48, 8]
    net = linear_stack(widths)
    net.compile(backend="eager")
    monitor, eff = fit(tmp_path, Regress(net), [(torch.randn(4, 32),) for _ in range(3)])
    assert close(eff["flops_per_sample_fwd_bwd"] * 4, linear_stack_flops(widths, 4)[1])
    assert net._compiled_call_impl is not None


def test_exception_in_counted_step_leaves_no_counter_open(tmp_path):
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    with pytest.raises(RuntimeError, match="deliberate failure"):
        fit(tmp_path, Regress(linear_stack([8, 8]), fail_at=0), [(torch.randn(2, 8),)])
    assert _get_current_dispatch_mode() is None


# ------------------------------------------------------------------ latency and data wait
def test_latency_of_a_step_that_takes_60_ms_on_a_manual_clock(tmp_path):
    clock = ManualClock(start=100.0)
    batches = [(torch.randn(2, 8),) for _ in range(8)]
    monitor, eff = fit(tmp_path, Regress(linear_stack([8, 8]), sleep_s=0.060, clock=clock), batches, val_batches=batches[:4])
    assert [r.latency_ms for r in monitor.train] == pytest.approx([60.0] * 8, abs=EXACT_MS)
    assert [v.latency_ms for v in monitor.val] == pytest.approx([60.0] * 4, abs=EXACT_MS)
    assert eff["latency_ms_p50"] == pytest.approx(60.0, abs=EXACT_MS) and eff["latency_ms_std"] == pytest.approx(0.0, abs=EXACT_MS)
    assert eff["val_latency_ms_p50"] == pytest.approx(60.0, abs=EXACT_MS)
    assert eff["val_batches_measured"] == 4 and eff["train_batches_measured"] == 8
    assert eff["data_wait_ms_mean"] == pytest.approx(0.0, abs=EXACT_MS)  # nothing in this loader takes time
    assert eff["wall_time_s"] == pytest.approx(12 * 0.060, abs=1e-3)  # 8 + 4 steps; rounded to the ms
    assert eff["latency_clock"] == "manual clock"


def test_slow_loader_wait_is_data_wait_not_latency_on_a_manual_clock(tmp_path):
    clock = ManualClock()
    load_ms, step_ms = 50.0, 20.0
    batches = [(torch.randn(2, 8),) for _ in range(8)]
    monitor, eff = fit(tmp_path, Regress(linear_stack([8, 8]), sleep_s=step_ms / 1e3, clock=clock), batches, delay_s=load_ms / 1e3)
    assert [r.data_wait_ms for r in monitor.train] == pytest.approx([load_ms] * 8, abs=EXACT_MS)
    assert [r.latency_ms for r in monitor.train] == pytest.approx([step_ms] * 8, abs=EXACT_MS)
    assert eff["data_wait_fraction"] == pytest.approx(load_ms / (load_ms + step_ms), abs=1e-12)
    # throughput counts the wait: 2 samples per (50 + 20) ms
    assert eff["samples_per_s"] == pytest.approx(2e3 / (load_ms + step_ms), rel=1e-12)


@pytest.mark.slow
def test_latency_of_a_step_padded_with_a_known_sleep(tmp_path):
    """Real sleeps on the real clock: measured within [sleep, sleep + SLEEP_TOL_MS] (median)."""
    sleep_ms = 60.0
    batches = [(torch.randn(2, 8),) for _ in range(8)]
    _, eff = fit(tmp_path, Regress(linear_stack([8, 8]), sleep_s=sleep_ms / 1e3), batches, val_batches=batches[:4])
    assert sleep_ms <= eff["latency_ms_p50"] <= sleep_ms + SLEEP_TOL_MS, eff["latency_ms_p50"]
    assert sleep_ms <= eff["val_latency_ms_p50"] <= sleep_ms + SLEEP_TOL_MS, eff["val_latency_ms_p50"]
    assert eff["data_wait_ms_mean"] < SLEEP_TOL_MS  # nothing slow in this loader
    assert eff["latency_clock"] == "perf_counter"


@pytest.mark.slow
def test_slow_loader_wait_is_data_wait_not_latency(tmp_path):
    """Real sleeps on the real clock: the loader's sleep is in the wait, not the latency (medians within
    [sleep, sleep + SLEEP_TOL_MS])."""
    load_ms, step_ms = 50.0, 20.0
    batches = [(torch.randn(2, 8),) for _ in range(8)]
    monitor, eff = fit(tmp_path, Regress(linear_stack([8, 8]), sleep_s=step_ms / 1e3), batches, delay_s=load_ms / 1e3)
    waits = sorted(r.data_wait_ms for r in monitor.train)
    assert load_ms <= waits[len(waits) // 2] <= load_ms + SLEEP_TOL_MS, waits
    assert step_ms <= eff["latency_ms_p50"] <= step_ms + SLEEP_TOL_MS, eff["latency_ms_p50"]


# ------------------------------------------------------------------ memory
def test_peak_memory_sees_a_known_allocation_as_the_allocator_does(tmp_path):
    alloc = 256
    batches = [(torch.randn(2, 8),) for _ in range(4)]
    monitor, eff = fit(tmp_path, Regress(linear_stack([8, 8]), alloc_mib=alloc), batches)
    assert eff["memory_method"] == monitor.memory.method and "VmHWM" in eff["memory_method"]
    growth = [r.peak_mem_growth_mib for r in monitor.train]
    assert all(alloc - 4 <= g <= alloc + 40 for g in growth), growth  # pages freed during the step may offset a few MiB
    allocator = peak_allocated_bytes(lambda: torch.ones(alloc * MIB // 4).sum()) / MIB  # profiling's CPU method
    assert abs(min(growth) - allocator) <= 40, (growth, allocator)
    assert eff["peak_mem_mib"] >= eff["peak_mem_growth_mib"] >= alloc - 4
    # the allocator's own figure for the step (profiler events on the first batch), as profile.py reads it
    assert alloc <= eff["step_alloc_peak_mib"] <= alloc + 8 and "profile_memory" in eff["step_alloc_method"]
    assert [r.profiled for r in monitor.train] == [True, False, False, False]  # once per new largest shape


def test_step_tensor_memory_does_not_depend_on_what_the_process_did_before(tmp_path):
    """The process figure on CPU (RSS) carries whatever earlier work left resident; the allocator figure of the
    step does not: a second identical fit, with 300 MiB more held by the process, gets the same figure."""
    batches = [(torch.randn(16, 256),) for _ in range(3)]
    _, first = fit(tmp_path / "a", Regress(linear_stack([256, 1024, 256])), batches)
    ballast = torch.ones(300 * MIB // 4)
    _, second = fit(tmp_path / "b", Regress(linear_stack([256, 1024, 256])), batches)
    assert float(ballast[-1]) == 1.0
    assert second["peak_mem_mib"] > first["peak_mem_mib"] + 250
    assert abs(second["step_alloc_peak_mib"] - first["step_alloc_peak_mib"]) < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA peak memory needs a GPU")
def test_cuda_peak_memory_is_the_allocators(tmp_path):
    from profiling import StepMemory

    meter = StepMemory("cuda")
    meter.start()
    x = torch.ones(64 * MIB // 4, device="cuda")
    reading = meter.stop()
    assert reading.peak_bytes == torch.cuda.max_memory_allocated() and reading.growth_bytes >= x.numel() * 4
    assert reading.reserved_bytes == torch.cuda.memory_reserved()


# ------------------------------------------------------------------ checkpoints
def test_records_travel_in_checkpoints_by_name(tmp_path):
    monitor, _ = fit(tmp_path, Regress(linear_stack([8, 8])), [(torch.randn(2, 8),) for _ in range(3)],
                     val_batches=[(torch.randn(2, 8),)])
    state = monitor.state_dict()
    assert set(state["train"][0]) == {f for f in TrainRecord.__dataclass_fields__}  # a dict by name, every field
    restored = EfficiencyMonitor(print_table=False)
    restored.load_state_dict(state)
    assert restored.train == monitor.train and restored.val == monitor.val and restored.flops == monitor.flops
    assert restored.step_alloc_peak_mib == monitor.step_alloc_peak_mib
    state["train"][0]["a_field_of_a_later_version"] = 1  # ignored, not a failure
    restored.load_state_dict(state)
    assert restored.train == monitor.train


def test_a_checkpoint_of_the_older_positional_form_still_loads():
    """Before records were saved by name: each a list in TrainRecord's old field order (memory in bytes, no
    `profiled` in the oldest), validation as two parallel lists, the step's tensor peak in bytes."""
    old = {"train": [[0, 0, 40.0, None, 300 * MIB, 12 * MIB, None, 8, 512, 1000, 3000],
                     [1, 1, 42.0, 3.0, 301 * MIB, 11 * MIB, None, 8, 512, 1000, 3000, True]],
           "val_latency": [10.0, 11.0], "val_peak": [200 * MIB, 210 * MIB], "flops": {"(8, 64):torch.int64": [1000, 3000]},
           "ptflops_macs_per_sample": 60, "wall_s": 5.0, "unit": "tokens", "step_alloc_peak_bytes": 32 * MIB,
           "alloc_numel": 512}
    monitor = EfficiencyMonitor(print_table=False)
    monitor.load_state_dict(old)
    assert monitor.train == [
        TrainRecord(batch=0, step=0, latency_ms=40.0, data_wait_ms=None, peak_mem_mib=300.0, peak_mem_growth_mib=12.0,
                    reserved_mem_mib=None, samples=8, tokens=512, flops_fwd=1000, flops_fwd_bwd=3000, profiled=False),
        TrainRecord(batch=1, step=1, latency_ms=42.0, data_wait_ms=3.0, peak_mem_mib=301.0, peak_mem_growth_mib=11.0,
                    reserved_mem_mib=None, samples=8, tokens=512, flops_fwd=1000, flops_fwd_bwd=3000, profiled=True)]
    assert monitor.val == [ValRecord(10.0, 200.0), ValRecord(11.0, 210.0)]
    assert monitor.step_alloc_peak_mib == 32.0 and monitor.wall_before_s == 5.0 and monitor.flops == {"(8, 64):torch.int64": (1000, 3000)}
    assert monitor.state_dict()["train"][1]["peak_mem_mib"] == 301.0  # saved again by name


# ------------------------------------------------------------------ MFU table
def test_peak_table_and_precision():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0
    assert peak_tflops("NVIDIA H200", "fp16") == 989.4
    assert match_device("NVIDIA H100 PCIe")[0] == "H100 PCIe" and match_device("NVIDIA L40S") is None
    assert match_device("NVIDIA GH200 480GB")[0].startswith("GH200")  # not the H200 row
    assert matmul_dtype("bf16-mixed") == "bf16" and matmul_dtype("16-mixed") == "fp16" and matmul_dtype("64-true") is None
    assert "no MFU" in mfu_note("AMD EPYC 7B13", "fp32") and mfu_note("NVIDIA H100 80GB HBM3", "bf16") == ""


# ------------------------------------------------------------------ through train.py
STEP_TAGS = {"train_latency_ms", "train_data_wait_ms", "train_peak_mem_mib", "train_peak_mem_growth_mib",
             "train_samples_per_s", "train_patches_per_s", "train_gflop_per_step", "train_gflop_per_sample",
             "train_tflop_per_s"}
EPOCH_TAGS = {"train_latency_ms_p50", "train_latency_ms_p95", "train_latency_ms_p99", "train_latency_ms_mean",
              "train_data_wait_ms_mean", "train_peak_mem_mib_max", "train_samples_per_s_epoch", "val_latency_ms_p50",
              "val_latency_ms_p95", "val_latency_ms_p99", "val_latency_ms_mean", "val_peak_mem_mib_max"}
FIELDS = {"run", "model", "attention", "attention_options", "data_source", "batch_size", "seed", "device", "device_name",
          "precision", "matmul_dtype", "world_size", "parameters", "trainable_parameters", "best_val_metric", "best_val",
          "wall_time_s", "epochs", "steps", "train_batches_measured", "warmup_batches_excluded", "val_batches_measured",
          "latency_clock", "memory_method", "flop_counter", "aggregation", "flops_per_sample_fwd", "flops_per_sample_fwd_bwd",
          "flop_shapes_counted", "ptflops_macs_per_sample_fwd", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99",
          "latency_ms_mean", "latency_ms_std", "data_wait_ms_mean", "data_wait_ms_p95", "data_wait_fraction",
          "peak_mem_mib", "peak_mem_growth_mib", "reserved_mem_mib", "step_alloc_peak_mib", "step_alloc_method", "samples_per_s", "token_unit", "tflop_per_s",
          "peak_tflop_per_s", "mfu_pct", "mfu_note", "val_latency_ms_p50", "val_latency_ms_p95", "val_latency_ms_mean",
          "val_peak_mem_mib"}
TRAIN = ["--data-source", "synthetic", "--accelerator", "cpu", "--no-progress-bar", "--dim", "32", "--depth", "1",
         "--heads", "2", "--batch-size", "8", "--limit-train-batches", "5", "--limit-val-batches", "2",
         "--limit-test-batches", "1", "--max-epochs", "1", "--log-every-n-steps", "1"]


@pytest.mark.usefixtures("training_isolated")
def test_train_py_logs_every_tag_and_writes_efficiency_json(tmp_path, capsys):
    from training.runner import run

    r = run(["--model", "vit", "--attention", "softmax", *TRAIN, "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "efficiency (" in out and "latency p50 / p95" in out  # the console table
    ea = EventAccumulator(r["log_dir"], size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    scalars = {t.split("/", 1)[1] for t in ea.Tags()["scalars"] if t.startswith("efficiency/")}
    assert STEP_TAGS | EPOCH_TAGS <= scalars, (STEP_TAGS | EPOCH_TAGS) - scalars
    assert not {"train_mfu_pct", "train_reserved_mem_mib"} & scalars  # CPU: no MFU, no reserved memory
    assert [e.step for e in ea.Scalars("efficiency/train_latency_ms")] == list(range(5))
    assert "efficiency/methods/text_summary" in ea.Tags()["tensors"]

    eff = json.loads((Path(r["log_dir"]) / EFFICIENCY_FILE).read_text())
    assert FIELDS <= set(eff), FIELDS - set(eff)
    assert eff["patches_per_s"] == pytest.approx(eff["samples_per_s"] * 64)  # 32 px / patch 4 = 64 patches
    assert (eff["model"], eff["attention"], eff["data_source"], eff["world_size"]) == ("vit", "softmax", "synthetic", 1)
    assert eff["parameters"] == r["parameters"] and eff["steps"] == 5 and eff["train_batches_measured"] == 5
    assert eff["warmup_batches_excluded"] == 2 and eff["val_batches_measured"] == 2
    assert 0 < eff["latency_ms_p50"] <= eff["latency_ms_p95"] <= eff["latency_ms_p99"]
    assert eff["data_wait_ms_mean"] >= 0 and 0 <= eff["data_wait_fraction"] < 1
    assert eff["peak_mem_mib"] > 50 and eff["peak_mem_growth_mib"] >= 0 and eff["reserved_mem_mib"] is None
    assert 2.5 < eff["flops_per_sample_fwd_bwd"] / eff["flops_per_sample_fwd"] < 3.0  # ~3x: two gradients per matmul
    assert eff["ptflops_macs_per_sample_fwd"] > 0 and eff["flop_shapes_counted"] == 1
    busy = eff["flops_per_sample_fwd_bwd"] * 8 / (eff["latency_ms_mean"] / 1e3) / 1e12
    assert 0.5 * busy < eff["tflop_per_s"] < 2 * busy
    assert eff["mfu_pct"] is None and eff["mfu_note"].startswith("no MFU")
    assert eff["best_val_metric"] == "val/acc" and eff["best_val"] == pytest.approx(r["best_val"])
    assert 0 < eff["wall_time_s"] < r["fit_seconds"] + 1


@pytest.mark.usefixtures("training_isolated")
def test_language_model_counts_tokens(tmp_path):
    from training.runner import run

    r = run(["--model", "wikitext", "--attention", "softmax", "--seq-len", "32", *TRAIN, "--no-test",
             "--logdir", str(tmp_path)])
    eff = json.loads((Path(r["log_dir"]) / EFFICIENCY_FILE).read_text())
    assert eff["token_unit"] == "tokens" and eff["tokens_per_s"] == pytest.approx(eff["samples_per_s"] * 32)


@pytest.mark.usefixtures("training_isolated")
def test_no_efficiency_callbacks_flag(tmp_path):
    from training.runner import run

    r = run(["--model", "vit", "--attention", "softmax", *TRAIN, "--no-test", "--no-efficiency-callbacks",
             "--logdir", str(tmp_path)])
    assert not (Path(r["log_dir"]) / EFFICIENCY_FILE).exists()
    ea = EventAccumulator(r["log_dir"])
    ea.Reload()
    assert not [t for t in ea.Tags()["scalars"] if t.startswith("efficiency/")]
