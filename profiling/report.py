"""The sweep's summary (console tables and summary.md): per device, one row per mechanism with its median time
and peak memory at every length, its scaling exponent, and the length from which it beats `softmax`; in the
decoding mode the time per token, the cache/state size and one step's peak memory against the context length L.
Mechanisms a configuration could not run are listed under their tables with the reason. Everything here takes the
flat rows of profiling/results.py.

    print_summary(read_csv_rows("results/sweep-.../results.csv")); write_summary(rows, out_dir)
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from rich.console import Console
from rich.table import Table

from utils.io import write_text

BASELINE = "softmax"
METRICS = {"time": "median_ms", "memory": "peak_mib", "gflops": "achieved_gflops", "state": "state_mib"}
# per mode: the tables (metric, unit, what "below softmax" means or None), and which of them the console shows
TABLES = {
    "default": ((("time", "median ms", "faster"), ("memory", "peak MiB", "smaller"), ("gflops", "GFLOP/s", None)),
                ("time", "memory")),
    "decode": ((("time", "median ms per token", "faster"), ("state", "state MiB after the prefill", "smaller"),
                ("memory", "peak MiB of one step", "smaller")), ("time", "state", "memory")),
}
STATUS_CELL = {"oom": "oom", "timeout": "timeout", "unsupported": "unsup.", "error": "error"}
CONFIG_FIELDS = ("device", "device_name", "batch", "dim", "heads", "dtype", "mode", "causal")

Crossover = Union[float, str]


def _column(metric: str) -> str:
    return METRICS.get(metric, metric)


def _ok_values(rows: Iterable[Dict], metric: str) -> Dict[int, float]:
    """seq_len -> metric value of the "ok" rows with a positive value (a log needs one)."""
    col = _column(metric)
    out = {}
    for r in rows:
        v = r.get(col)
        if r.get("status") == "ok" and isinstance(v, (int, float)) and v > 0 and r.get("seq_len"):
            out[int(r["seq_len"])] = float(v)
    return out


def loglog_slope(ns: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Least-squares slope of log(y) on log(n) over the positive pairs; None with < 2 of them."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if n and y and n > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def scaling_exponent(rows: Iterable[Dict], metric: str = "time") -> Optional[float]:
    """Log-log least-squares slope over the top decade of the "ok" lengths (n >= max_n / 10, so constant
    overheads at short lengths do not pull it down): 2.0 for t = c * n^2; None with < 2 points."""
    vals = _ok_values(rows, metric)
    if not vals:
        return None
    top = max(vals)
    ns = [n for n in sorted(vals) if n * 10 >= top]
    return loglog_slope(ns, [vals[n] for n in ns])


def _sems(rows: Iterable[Dict], metric: str) -> Dict[int, float]:
    """seq_len -> standard error of the metric's median where the rows carry one (time), else nothing."""
    if _column(metric) != _column("time"):
        return {}
    return {int(r["seq_len"]): float(r["sem_ms"]) for r in rows
            if r.get("status") == "ok" and isinstance(r.get("sem_ms"), (int, float)) and r.get("seq_len")}


def crossover(rows: Iterable[Dict], baseline_rows: Iterable[Dict], metric: str = "time") -> Crossover:
    """Over the lengths both measured ("ok"), the length from which `rows` stay below `baseline_rows` on `metric`
    up to the longest one, interpolated log-log where log(metric / baseline) changes sign: a float, "always"
    (below at every compared length), "never" (not below at the longest) or "n/a" (nothing to compare).
    For time, "below" means below by more than two standard errors of the difference (the runs' s.e.m. of both
    sides combined), so a lead within the noise is not called one."""
    rows, baseline_rows = list(rows), list(baseline_rows)
    mine, base = _ok_values(rows, metric), _ok_values(baseline_rows, metric)
    sem_m, sem_b = _sems(rows, metric), _sems(baseline_rows, metric)
    lens = sorted(set(mine) & set(base))
    if not lens:
        return "n/a"
    margin = {n: 2 * math.hypot(sem_m.get(n, 0.0), sem_b.get(n, 0.0)) for n in lens}
    r = [math.log((mine[n] + margin[n]) / base[n]) for n in lens]  # < 0: below the baseline beyond the noise
    if r[-1] >= 0:
        return "never"
    last_not_below = max((i for i, v in enumerate(r) if v >= 0), default=None)
    if last_not_below is None:
        return "always"
    i = last_not_below
    x0, x1 = math.log(lens[i]), math.log(lens[i + 1])
    frac = r[i] / (r[i] - r[i + 1])  # r[i] >= 0 > r[i + 1]
    return math.exp(x0 + frac * (x1 - x0))


# ---------------------------------------------------------------------------------------------- tables


def group_rows(rows: Iterable[Dict]) -> Dict[Tuple, Dict[str, List[Dict]]]:
    """(device, device_name, batch, dim, heads, dtype, mode, causal) -> attention -> its rows."""
    groups: Dict[Tuple, Dict[str, List[Dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[tuple(r.get(k) for k in CONFIG_FIELDS)][r["attention"]].append(r)
    return {k: dict(v) for k, v in groups.items()}


def fmt_num(v: Optional[float]) -> str:
    if v is None:
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.001 or a == 0:
        return f"{v:.3f}"
    return f"{v:.1e}"


def fmt_crossover(c: Crossover) -> str:
    return f"≈{c:,.0f}" if isinstance(c, float) else c


def _cell(r: Optional[Dict], metric: str) -> str:
    if r is None:
        return "—"
    if r.get("status") != "ok":
        return STATUS_CELL.get(r.get("status"), str(r.get("status")))
    return fmt_num(r.get(_column(metric)))


def _flops_flag(rows: Sequence[Dict]) -> str:
    flagged = [r for r in rows if r.get("flops_flagged") in (True, "True", 1)]
    if not flagged:
        return ""
    ratios = [r["counted_over_analytic"] for r in flagged if isinstance(r.get("counted_over_analytic"), (int, float))]
    lens = sorted(int(r["seq_len"]) for r in flagged)
    where = f"n={lens[0]}" if len(lens) == 1 else f"n={lens[0]}..{lens[-1]}"
    span = f"×{min(ratios):.2f}" if ratios and min(ratios) == max(ratios) else (f"×{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "")
    return f"FLOPs flagged {span} ({where})".replace("  ", " ")


def _title(config: Tuple, threads: Optional[int]) -> str:
    c = dict(zip(CONFIG_FIELDS, config))
    parts = [f"{c['device']} ({c['device_name']})", c["dtype"], c["mode"], "causal" if c["causal"] in (True, "True", 1) else "non-causal",
             f"batch {c['batch']}", f"dim {c['dim']}", f"heads {c['heads']}"]  # fmt: skip
    if c["device"] == "cpu" and threads:
        parts.append(f"{threads} threads")
    return " · ".join(str(p) for p in parts)


def _tables_of(config: Tuple) -> tuple:
    return TABLES["decode" if dict(zip(CONFIG_FIELDS, config))["mode"] == "decode" else "default"]


def skipped(by_attn: Dict[str, List[Dict]], letter: str = "n") -> List[str]:
    """One line per mechanism and reason for its "unsupported" points: `name (n=8, 16): reason`."""
    lines = []
    for name in sorted(by_attn):
        reasons: Dict[str, List[int]] = defaultdict(list)
        for r in by_attn[name]:
            if r.get("status") == "unsupported":
                reasons[str(r.get("reason") or "no reason recorded")].append(int(r["seq_len"]))
        for reason, lens in reasons.items():
            lines.append(f"{name} ({letter}={', '.join(f'{n:,}' for n in sorted(lens))}): {reason}")
    return lines


def summary_tables(rows: Iterable[Dict]) -> List[Dict]:
    """The summary as data: one entry per (device, config), each with a header and body rows for each of its
    mode's tables (TABLES: time and memory, and achieved GFLOP/s for the markdown; in decode, time per token,
    state and one step's memory), the tables the console shows, and the lines of the skipped mechanisms."""
    out = []
    for config, by_attn in sorted(group_rows(rows).items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        specs, console = _tables_of(config)
        n = "L" if dict(zip(CONFIG_FIELDS, config))["mode"] == "decode" else "n"
        lens = sorted({int(r["seq_len"]) for rs in by_attn.values() for r in rs})
        threads = next((r.get("threads") for rs in by_attn.values() for r in rs if r.get("threads")), None)
        base = by_attn.get(BASELINE)
        tables = {}
        for metric, unit, word in specs:
            header = ["attention"] + [f"{n}={length:,}" for length in lens]
            if word:
                header += [f"k (∝ {n}^k)", f"{word} than {BASELINE} from {n}"]
            if metric == "time":
                header.append("notes")
            body = []
            for name in sorted(by_attn, key=lambda a: (a != BASELINE, a)):  # the baseline first
                rs = by_attn[name]
                at = {int(r["seq_len"]): r for r in rs}
                line = [name] + [_cell(at.get(length), metric) for length in lens]
                if word:
                    e = scaling_exponent(rs, metric)
                    line.append("n/a" if e is None else f"{e:.2f}")
                    if base is None:
                        line.append("n/a")
                    elif name == BASELINE:
                        line.append("(baseline)")
                    else:
                        line.append(fmt_crossover(crossover(rs, base, metric)))
                if metric == "time":
                    line.append(_flops_flag(rs))
                body.append(line)
            if metric == "time" and not any(line[-1] for line in body):  # no flags: no notes column
                header.pop()
                body = [line[:-1] for line in body]
            tables[metric] = {"unit": unit, "header": header, "rows": body}
        out.append({"title": _title(config, threads), "config": dict(zip(CONFIG_FIELDS, config)), "tables": tables,
                    "console": console, "skipped": skipped(by_attn, n)})
    return out


def print_summary(rows: Iterable[Dict], console=None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a log file: do not squeeze the tables into 80 columns
            console = Console(width=max(console.width, 200))
    for group in summary_tables(rows):
        for metric in group["console"]:
            t = group["tables"][metric]
            table = Table(title=f"{group['title']} — {t['unit']}", title_justify="left")
            for i, h in enumerate(t["header"]):
                wrap = h == "notes" or " from " in h
                table.add_column(h, justify="left" if i == 0 or h == "notes" else "right", no_wrap=not wrap)
            for line in t["rows"]:
                table.add_row(*line)
            console.print(table)
        if group["skipped"]:
            console.print("not measured (unsupported):", highlight=False, markup=False)
            for line in group["skipped"]:
                console.print(f"  {line}", highlight=False, markup=False)


NOTES = (
    "Exponent: least-squares log-log slope over the top decade of the measured lengths (\"ok\" points with "
    "n >= max_n/10). Crossover: the length from which the mechanism stays below `softmax` up to the longest "
    "compared length (for time: below by more than two standard errors of the difference), interpolated log-log; \"always\" = below at every compared length, \"never\" = not below "
    "at the longest one. Cells: oom / timeout / unsup. (unsupported) / error = the point's status "
    "(reasons in results.csv); — = not measured. Memory: peak bytes allocated during one call above the level "
    "before it (parameters and input excluded; see env.json for the method)."
)
DECODE_NOTES = (
    "Decoding (--mode decode): L is the context, prefilled by one `step` call; time = median of single-token "
    "`step` calls that follow one another from that state (token i sees L + 1 + warm-up + i positions); state = "
    "`state_bytes` of the cache/state right after the prefill (kv-cache: grows with L; window: up to the window; "
    "constant: fixed); peak = bytes allocated during one step above the level before it (the state it starts "
    "from excluded, its new copy included). No FLOPs in this mode."
)


def to_markdown(rows: Iterable[Dict]) -> str:
    lines = ["# Sweep summary", ""]
    groups = summary_tables(rows)
    for group in groups:
        lines += [f"## {group['title']}", ""]
        for t in group["tables"].values():
            lines += [f"**{t['unit']}**", ""]
            lines.append("| " + " | ".join(t["header"]) + " |")
            lines.append("|" + "|".join("---" if h in ("attention", "notes") else "---:" for h in t["header"]) + "|")
            for line in t["rows"]:
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |")
            lines.append("")
        if group["skipped"]:
            lines += ["**not measured (unsupported)**", ""] + [f"- {line}" for line in group["skipped"]] + [""]
    lines += [NOTES, ""]
    if any(g["config"]["mode"] == "decode" for g in groups):
        lines += [DECODE_NOTES, ""]
    return "\n".join(lines)


def write_summary(rows: Iterable[Dict], out_dir: Path) -> Path:
    path = Path(out_dir) / "summary.md"
    write_text(path, to_markdown(list(rows)))
    return path
