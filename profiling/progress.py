"""The sweep's progress: a rich progress bar on a terminal, plain lines elsewhere (pytest, CI, a log file)."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def describe(spec) -> str:
    return f"{spec.attention} {spec.device} n={spec.seq_len}"


def outcome(point: dict) -> str:
    if point["status"] == "ok":
        t, m, d = point["time"], point["memory"], point.get("decode")
        state = f"  state {d['state_bytes'] / 2**20:.3f} MiB" if d else ""
        per = " per token" if d else ""
        return f"ok  {t['median_ms']:.3f} ms{per}  {m['peak_bytes'] / 2**20:.2f} MiB{state}"
    return f"{point['status']}: {point['reason']}"


class SweepProgress:
    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stdout
        self.rich = None
        if self.stream.isatty():
            self.rich = Progress(
                TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.description}"), console=Console(file=self.stream),
            )  # fmt: skip

    def __enter__(self):
        if self.rich is not None:
            self.rich.__enter__()
            self.task = self.rich.add_task("", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.__exit__(*exc)
        return False

    def start(self, spec) -> None:
        if self.rich is not None:
            self.rich.update(self.task, description=describe(spec))
        else:
            print(f"[{self.done + 1}/{self.total}] {describe(spec)} ...", file=self.stream, flush=True)

    def finish(self, spec, point: dict) -> None:
        self.done += 1
        if self.rich is not None:
            self.rich.console.print(f"{describe(spec)}: {outcome(point)}", highlight=False, markup=False)
            self.rich.advance(self.task)
        else:
            print(f"[{self.done}/{self.total}] {describe(spec)}: {outcome(point)}", file=self.stream, flush=True)

    def log(self, text: str) -> None:
        if self.rich is not None:
            self.rich.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)
