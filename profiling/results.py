"""The sweep's results files and their schema: results.jsonl (one nested point per line, appended and fsynced
as each point finishes, so a killed sweep loses nothing) and results.csv (one flat row per point, CSV_COLUMNS,
written atomically). `flatten` turns a point into a row; the report and the plots read flat rows, so they work
the same from a finished results.csv or a live results.jsonl.

Point (nested):
    key            "attention|device|seq_len|batch|dim|heads|dtype|mode|causal" (resume identity)
    attention, device ("cpu" | "cuda"), device_name, seq_len, batch, dim, heads,
    dtype ("fp32" | "bf16" | "fp16"), mode ("fwd" | "fwd+bwd" | "decode"), causal (bool; true in decode),
    options (dict)
    status         "ok" | "oom" | "timeout" | "unsupported" | "error"
    reason         why a point is not "ok" (one sentence), else null
    time           TimingStats.to_dict() (ms) or null; in decode: of one single-token step (time per token)
    memory         MemoryStats.to_dict() or null; in decode: the peak of one single-token step
    flops          FlopReport.to_dict() or null (analytic, counted, ptflops MACs, ratio, flagged); null in decode
    decode         in decode, else null: decoding_state ("kv-cache" | "window" | "constant"), state_bytes (the
                   state after the prefill of seq_len positions), prefill (TimingStats of that one step call),
                   steps (single-token steps taken after it), state_bytes_after_steps
    achieved_gflops  analytic FLOPs / median time, or null
    elapsed_s      wall time spent on the point
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from utils.io import write_text

FINISHED = ("ok", "oom", "timeout", "unsupported")  # not re-run on --resume ("error" is retried)

CSV_COLUMNS = [
    "attention", "device", "device_name", "seq_len", "batch", "dim", "heads", "dtype", "mode", "causal",
    "status", "reason",
    "median_ms", "mean_ms", "std_ms", "sem_ms", "min_ms", "p95_ms", "p99_ms", "max_ms", "runs", "threads", "clock",
    "peak_mib", "module_mib", "memory_method",
    "analytic_gflop", "counted_gflop", "ptflops_gmac", "counted_over_analytic", "flops_flagged", "flops_note",
    "achieved_gflops", "options", "elapsed_s",
    "decoding_state", "state_bytes", "state_mib", "prefill_ms",
]  # fmt: skip


def point_key(attention: str, device: str, seq_len: int, batch: int, dim: int, heads: int, dtype: str, mode: str, causal: bool) -> str:
    return "|".join(map(str, (attention, device, seq_len, batch, dim, heads, dtype, mode, int(bool(causal)))))


def flatten(point: Dict) -> Dict:
    t, m, f, d = (point.get(k) or {} for k in ("time", "memory", "flops", "decode"))
    g = lambda v, s=1.0: None if v is None else v / s  # noqa: E731
    row = {k: point.get(k) for k in ("attention", "device", "device_name", "seq_len", "batch", "dim", "heads", "dtype", "mode", "causal", "status", "reason", "achieved_gflops", "elapsed_s")}
    row.update({k: t.get(k) for k in ("median_ms", "mean_ms", "std_ms", "sem_ms", "min_ms", "p95_ms", "p99_ms", "max_ms", "runs", "threads", "clock")})
    row.update(
        peak_mib=g(m.get("peak_bytes"), 2**20),
        module_mib=g(m.get("module_bytes"), 2**20),
        memory_method=m.get("method"),
        analytic_gflop=g(f.get("analytic_flops"), 1e9),
        counted_gflop=g(f.get("counted_flops"), 1e9),
        ptflops_gmac=g(f.get("ptflops_macs"), 1e9),
        counted_over_analytic=f.get("counted_over_analytic"),
        flops_flagged=f.get("flagged"),
        flops_note=f.get("note") or None,
        options=json.dumps(point.get("options") or {}, sort_keys=True),
        decoding_state=d.get("decoding_state"),
        state_bytes=d.get("state_bytes"),
        state_mib=g(d.get("state_bytes"), 2**20),
        prefill_ms=(d.get("prefill") or {}).get("median_ms"),
    )
    return {c: row.get(c) for c in CSV_COLUMNS}


def read_points(path: Path) -> List[Dict]:
    """Points from results.jsonl; a truncated last line (a killed run) is ignored."""
    points = []
    if not Path(path).exists():
        return points
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return points


def latest_by_key(points: Iterable[Dict]) -> Dict[str, Dict]:
    out: Dict[str, Dict] = {}
    for p in points:
        out[p["key"]] = p
    return out


def _num(v: Optional[str]):
    if v in (None, ""):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(v, v)


def read_csv_rows(path: Path) -> List[Dict]:
    with open(path, newline="") as fh:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def append_point(path: Path, point: Dict) -> None:
    """One line, flushed and fsynced before the next point starts: a killed sweep loses nothing. (An append,
    not an atomic replace: the lines already there stay as they are.)"""
    with open(path, "a") as fh:
        fh.write(json.dumps(point, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def repair_jsonl(path: Path) -> None:
    """A killed run can leave a half-written last line; end the file with a newline so the next
    append starts a line of its own (read_points skips the broken one)."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())


def write_csv(path: Path, points: Iterable[Dict]) -> List[Dict]:
    """results.csv of `points`, atomically; returns the flat rows."""
    rows = [flatten(p) for p in points]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
    return rows
