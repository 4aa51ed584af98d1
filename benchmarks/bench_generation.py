"""
Generation speed of the WikiText language model with incremental decoding (KV caches, window caches, constant
states) against recomputing the context for every token, for every causal mechanism.

$ python benchmarks/bench_generation.py                        # 512-token prompt, 1,024 new tokens, 2,048 context
$ python benchmarks/bench_generation.py --mechanisms softmax,linear --new-tokens 256
$ python benchmarks/bench_generation.py --quick                # smoke test: tiny model, 16 + 24 tokens

The model is the `wikitext` task's network at its defaults (width, depth, heads, MLP ratio from the task registry,
training/tasks.py) with the word-level WikiText-2 vocabulary (33,278 tokens), a `--context` position table
(seq_len; 2,048 by default) and random weights (speed and memory do not depend on training). CPU, fp32, batch 1,
eval(), greedy decoding (temperature 0) through LanguageModel.generate with use_cache=True (prefill the prompt,
then one step per token) and use_cache=False (the whole context per token), interleaved run by run
(profiling.time_interleaved); both must draw the same tokens (`same_tokens`). tokens/s = new tokens / median
seconds of a whole generate call, prefill included. State bytes: the blocks' decoding states (Attention.state_bytes)
after the prompt and after the last token's context (min(prompt + new - 1, context) positions). Memory per token:
the PyTorch CPU allocator's peak (profiling.peak_allocated_bytes) while the last token is produced, cached (one
step over the end state) and recomputed (one forward over its context), parameters and the state excluded.
Mechanisms without decoding (supports_decoding False) are timed by recomputation only. Results:
benchmarks/results/generation.{md,json}.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.attention import get_attention, list_attentions  # noqa: E402
from models.language_model import LanguageModel  # noqa: E402
from profiling import peak_allocated_bytes, time_interleaved  # noqa: E402
from profiling.harness import command_line, finish, int_arg, machine, timing_summary, write_results  # noqa: E402
from training.tasks import get_task  # noqa: E402

KIB = 2**10
WIKITEXT2_VOCAB = 33278  # word-level WikiText-2 (datamodules/wikitext.py with tokenizer="word")
OUT = Path(__file__).resolve().parent / "results" / "generation"
QUICK = dict(prompt=16, new_tokens=24, context=32, dim=32, depth=2, heads=4, vocab=101)


def causal_mechanisms() -> List[str]:
    return [n for n in list_attentions() if get_attention(n).supports_causal]


def mechanisms_arg(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = causal_mechanisms()
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--mechanisms must be a comma-separated list of causal mechanisms "
                                         f"({', '.join(known)}), got {text!r}")
    return names


def lm_config(args) -> Dict[str, Any]:
    if args.quick:
        return dict(QUICK, mlp_ratio=4.0)
    d = get_task("wikitext").defaults
    return dict(prompt=args.prompt, new_tokens=args.new_tokens, context=args.context, dim=args.dim or d["dim"],
                depth=args.depth or d["depth"], heads=args.heads or d["heads"], mlp_ratio=d["mlp_ratio"], vocab=args.vocab)


def build(name: str, cfg: Dict[str, Any]) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(cfg["vocab"], cfg["context"], cfg["dim"], cfg["depth"], cfg["heads"], mlp_ratio=cfg["mlp_ratio"],
                         attention=name).eval()


def state_bytes(net: LanguageModel, states) -> int:
    return sum(block.attn.state_bytes(s) for block, s in zip(net.blocks, states))


def run_mechanism(name: str, cfg: Dict[str, Any], prompt: torch.Tensor, runs: int, threads: int) -> Dict[str, Any]:
    net = build(name, cfg)
    decodes = net.supports_decoding
    row: Dict[str, Any] = dict(name=name, decoding=decodes, decoding_state=get_attention(name).decoding_state)
    out: Dict[str, torch.Tensor] = {}

    def generate(cache: bool):
        def call():
            out[cache] = net.generate(prompt, cfg["new_tokens"], temperature=0.0, use_cache=cache)
        return call

    fns = [generate(False)] + ([generate(True)] if decodes else [])
    stats, cpu = time_interleaved(fns, warmup=0, runs=runs, threads=threads)
    row["recomputed"] = timing_summary(stats[0])
    row["recomputed_tokens_per_s"] = cfg["new_tokens"] / (stats[0].median_ms / 1e3)
    row["cpu_seconds"] = cpu
    ids = out[False]
    end = min(ids.shape[1] - 1, cfg["context"])  # positions in the context of the last token drawn
    with torch.no_grad():
        window = ids[:, ids.shape[1] - 1 - end : ids.shape[1] - 1]
        row["recomputed_peak_bytes_per_token"] = peak_allocated_bytes(
            lambda: F.linear(net.encode(window, causal=True)[:, -1], net.embed.weight))
        if not decodes:
            return row
        row["cached"] = timing_summary(stats[1])
        row["cached_tokens_per_s"] = cfg["new_tokens"] / (stats[1].median_ms / 1e3)
        row["speedup"] = row["cached_tokens_per_s"] / row["recomputed_tokens_per_s"]
        row["same_tokens"] = bool(torch.equal(out[True], ids))
        _, states = net.step(prompt[:, -cfg["context"] :])
        row["state_bytes_after_prompt"] = state_bytes(net, states)
        _, states = net.step(window[:, :-1])  # the last token's context, but for its own position
        row["state_bytes_at_end"] = state_bytes(net, states)
        row["state_positions_at_end"] = end
        row["cached_peak_bytes_per_token"] = peak_allocated_bytes(lambda: net._decode(window[:, -1:], states))
    return row


def _kib(x: float) -> str:
    return f"{x / KIB:,.1f}"


def markdown(report: Dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        "# Generation: incremental decoding vs recomputation",
        "",
        f"Machine: {m['cpu_model']}, {m['physical_cores']} physical cores / {m['logical_cpus']} logical, torch "
        f"{m['torch_version']}, {m['torch_threads']} threads; load average {m['load_avg_start']} at the start, "
        f"{m['load_avg_end']} at the end (other processes competing for the CPUs add noise; interleaving spreads it over "
        f"both sides). {m['started_utc']} to {m['finished_utc']}. Command: `{m['command']}`.",
        "",
        f"Language model: dim {c['dim']}, depth {c['depth']}, {c['heads']} heads, MLP ratio {c['mlp_ratio']}, vocabulary "
        f"{c['vocab']}, context (seq_len) {c['context']}; CPU fp32, batch 1, eval(), greedy; prompt {c['prompt']} tokens, "
        f"{c['new_tokens']} new tokens; {c['runs']} timed run(s) of each generate call, interleaved, no warm-up. "
        "tokens/s: new tokens over the median seconds of a whole call (prefill included). State: the blocks' decoding "
        "states after the prompt and after the last token's context. Peak per token: the CPU allocator's peak while the "
        "last token is produced (the state and parameters excluded).",
        "",
        "| mechanism | state | cached tok/s | recomputed tok/s | speedup | same tokens | state KiB after prompt | "
        "state KiB at end | peak KiB per token, cached | peak KiB per token, recomputed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        rec = f"{r['recomputed_tokens_per_s']:.1f}"
        rec_peak = _kib(r["recomputed_peak_bytes_per_token"])
        if not r["decoding"]:
            lines.append(f"| {r['name']} | none | | {rec} | | | | | | {rec_peak} |")
            continue
        lines.append(f"| {r['name']} | {r['decoding_state']} | {r['cached_tokens_per_s']:.1f} | {rec} | {r['speedup']:.2f} | "
                     f"{'yes' if r['same_tokens'] else 'NO'} | {_kib(r['state_bytes_after_prompt'])} | "
                     f"{_kib(r['state_bytes_at_end'])} | {_kib(r['cached_peak_bytes_per_token'])} | {rec_peak} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    ap.add_argument("--prompt", type=int_arg("--prompt"), default=512, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int_arg("--new-tokens"), default=1024, help="tokens generated")
    ap.add_argument("--context", type=int_arg("--context"), default=2048, help="the model's seq_len (position table)")
    ap.add_argument("--mechanisms", type=mechanisms_arg, default=None, help="comma-separated (default: every causal one)")
    ap.add_argument("--dim", type=int_arg("--dim"), default=None, help="default: the wikitext task's")
    ap.add_argument("--depth", type=int_arg("--depth"), default=None, help="default: the wikitext task's")
    ap.add_argument("--heads", type=int_arg("--heads"), default=None, help="default: the wikitext task's")
    ap.add_argument("--vocab", type=int_arg("--vocab"), default=WIKITEXT2_VOCAB)
    ap.add_argument("--runs", type=int_arg("--runs"), default=1, help="timed runs of each generate call")
    ap.add_argument("--threads", type=int_arg("--threads"), default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 16 + 24 tokens, context 32 (a smoke test)")
    ap.add_argument("--out", type=Path, default=OUT, help="output path without suffix (.md and .json are written)")
    args = ap.parse_args(argv)
    cfg = lm_config(args)
    cfg.update(runs=args.runs, threads=args.threads)
    names = args.mechanisms or causal_mechanisms()
    report: Dict[str, Any] = {"machine": machine(args.threads, command_line("bench_generation.py", argv or sys.argv[1:])),
                              "config": cfg, "rows": []}
    prompt = torch.randint(0, cfg["vocab"], (1, cfg["prompt"]), generator=torch.Generator().manual_seed(0))
    for name in names:
        row = run_mechanism(name, cfg, prompt, args.runs, args.threads)
        report["rows"].append(row)
        speed = f"{row['speedup']:.2f}x ({row['cached_tokens_per_s']:.1f} vs " if row["decoding"] else "no cache ("
        print(f"{name}: {speed}{row['recomputed_tokens_per_s']:.1f} tokens/s)", flush=True)
    finish(report["machine"])
    md, js = write_results(args.out, report, markdown(report))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
