"""LRA ListOps' generator, our own, sampling the trees that lra_benchmarks/data/listops.py samples, plus an
independent evaluator for the tests.

The release's generator draws a tree from the root down: a node at depth < max_depth (the root is depth 1)
is an operator with probability 0.25 (its VALUE_P), else a digit 0-9; a node at max_depth is a digit. An
operator is MIN, MAX, MED or SM (sum modulo 10) with equal chances and has 2..max_args arguments, drawn
uniformly. A tree's length counts its tokens without parentheses (an operator and its `]` count 2, a digit
1) and a tree is kept when min_length < length < max_length (500 and 2000, both exclusive: 501..1,999
tokens). MED of an even count is the mean of the middle two, rounded down (the release's int(np.median)).
With max_depth 10, operators nest at most 9 deep and digits sit at depths 2..10.

Here whole rounds of candidate trees are drawn at once, one depth at a time, with numpy, and a tree is
dropped as soon as its tokens so far plus one per argument still to draw reach max_length. The accepted trees
keep the release's distribution (each tree is drawn independently, and the length test looks at that tree
alone), and the huge trees that would be rejected anyway cost nothing. Lengths, values and token positions
are then computed level by level, bottom up and top down, with no Python loop over nodes.

Determinism: split s of seed S is the concatenation of chunks c = 0, 1, ... of CHUNK accepted trees, chunk c
drawn from its own generator seeded by (VERSION, S, s, c): a split is a pure function of (seed, split), and
its first n examples do not depend on how many more are asked for (chunks could also be drawn in parallel
without changing anything; one process draws the release's 100,000 in about 11 s, so none is started).
Duplicates are dropped by a hash of the token ids (expression_hash): within a split, from val what train
holds, from test what train or val holds, drawing further chunks to refill. At the release's lengths two
equal trees are vanishingly unlikely, so this changes nothing there, but it makes the three splits disjoint
by construction, short synthetic expressions included.

    splits = generate_splits(seed=0)   # {"train", "val", "test"}: tokens, offsets, labels, depths, hashes
    benchmarks/bench_listops_generation.py times it and compares its statistics with a plain sampler's
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
import torch

from utils.checks import check_int

from .listops_format import DIGIT_OFFSET, END_ID, OP_IDS, OPERATORS, TOKENS
from .resumable import mixed_seed

VERSION = 1  # of the sampling and the streams: bump when either changes, so no cache made by another is used
OP_PROB = 0.25  # the release's VALUE_P: below max_depth a node is an operator with this probability
NUM_OPS = len(OPERATORS)
CHUNK = 1000  # accepted trees per chunk: the unit of determinism and of parallel work
ROUND = 4096  # candidate trees drawn at once
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TreeSettings:
    """What a tree may be: the release's flags (lra_benchmarks/data/listops.py) and their defaults."""

    min_length: int = 500  # exclusive
    max_length: int = 2000  # exclusive
    max_depth: int = 10  # levels, the root's included: operators nest at most max_depth - 1 deep
    max_args: int = 10

    def __post_init__(self):
        check_int("min_length", self.min_length, low=0)
        check_int("max_length", self.max_length, low=self.min_length + 2)  # some length must fit between them
        check_int("max_depth", self.max_depth, low=2)  # a length above 1 needs an operator, so two levels
        check_int("max_args", self.max_args, low=2)
        longest = 1
        for _ in range(self.max_depth - 1):  # every operator with max_args arguments, down to max_depth
            longest = 2 + self.max_args * longest
        if longest <= self.min_length:
            raise ValueError(f"min_length must be below {longest}, the longest expression of depth {self.max_depth} "
                             f"with {self.max_args} arguments per operator, got {self.min_length}")


# ------------------------------------------------------------------------------------------- sampling
def _draw_round(rng: np.random.Generator, n_roots: int, cfg: TreeSettings) -> Dict[str, np.ndarray]:
    """One round of candidates, concatenated in order: {"tokens" uint8, "lengths", "labels", "depths"} of the
    accepted ones (depth: how deep operators nest, 1 for an expression without a nested operator)."""
    levels = []  # per depth: (tree id of each node, is_op, symbol: operator code or digit, argument count)
    tree = np.arange(n_roots)
    length = np.zeros(n_roots, np.int64)  # tokens drawn so far
    alive = np.ones(n_roots, bool)
    for depth in range(1, cfg.max_depth + 1):
        n = len(tree)
        is_op = rng.random(n) < OP_PROB if depth < cfg.max_depth else np.zeros(n, bool)
        n_ops = int(is_op.sum())
        sym = np.empty(n, np.int64)
        sym[is_op] = rng.integers(0, NUM_OPS, n_ops)
        sym[~is_op] = rng.integers(0, 10, n - n_ops)
        nargs = np.zeros(n, np.int64)
        nargs[is_op] = rng.integers(2, cfg.max_args + 1, n_ops)
        levels.append((tree, is_op, sym, nargs))
        length += np.bincount(tree, weights=1 + is_op, minlength=n_roots).astype(np.int64)
        pending = np.bincount(tree, weights=nargs, minlength=n_roots).astype(np.int64)
        alive &= length + pending < cfg.max_length  # each argument still to draw adds at least one token
        grow = is_op & alive[tree]
        if not grow.any():
            break
        tree = np.repeat(tree[grow], nargs[grow])
    accepted = alive & (length > cfg.min_length)
    return _serialize(levels, accepted, length)


def _serialize(levels, accepted: np.ndarray, length: np.ndarray) -> Dict[str, np.ndarray]:
    """The accepted trees' tokens in prefix order, their labels and nesting depths, from the levels."""
    new_id = np.cumsum(accepted) - 1
    kept = []
    for tree, is_op, sym, nargs in levels:
        keep = accepted[tree]
        if not keep.any():
            break
        kept.append((new_id[tree[keep]], is_op[keep], sym[keep], nargs[keep]))
    n_trees = int(accepted.sum())
    lengths = length[accepted]
    if n_trees == 0:
        empty = np.zeros(0, np.int64)
        return {"tokens": np.zeros(0, np.uint8), "lengths": empty, "labels": empty, "depths": empty}
    # bottom up: each node's size in tokens and its value
    sizes, values = [None] * len(kept), [None] * len(kept)
    for d in range(len(kept) - 1, -1, -1):
        tree, is_op, sym, nargs = kept[d]
        size = np.ones(len(tree), np.int64)
        value = sym.copy()
        ops = np.flatnonzero(is_op)
        if len(ops):
            k = nargs[ops]
            starts = np.cumsum(k) - k  # each operator's arguments: a contiguous run of the next level
            child_size, child_value = sizes[d + 1], values[d + 1]
            size[ops] = 2 + np.add.reduceat(child_size, starts)
            value[ops] = _apply(sym[ops], child_value, starts, k)
        sizes[d], values[d] = size, value
    assert np.array_equal(sizes[0], lengths), "token count differs from the sampled length"
    # top down: each node's position in the flat token array
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.zeros(int(offsets[-1]), np.uint8)
    pos = offsets[:-1]  # the roots, one per tree in tree order
    depths = np.zeros(n_trees, np.int64)
    for d, (tree, is_op, sym, nargs) in enumerate(kept):
        ops = np.flatnonzero(is_op)
        leaves = np.flatnonzero(~is_op)
        tokens[pos[leaves]] = DIGIT_OFFSET + sym[leaves]
        tokens[pos[ops]] = OP_IDS[sym[ops]]
        tokens[pos[ops] + sizes[d][ops] - 1] = END_ID
        depths[tree[ops]] = d + 1  # levels go down, so the last write is the deepest operator
        if len(ops) and d + 1 < len(kept):
            k = nargs[ops]
            child_size = sizes[d + 1]
            before = np.cumsum(child_size) - child_size  # tokens before each child on its level
            first = np.cumsum(k) - k
            within = before - np.repeat(before[first], k)  # tokens before each child among its siblings
            pos = np.repeat(pos[ops] + 1, k) + within
    return {"tokens": tokens, "lengths": lengths, "labels": values[0], "depths": depths}


def _apply(op: np.ndarray, child_value: np.ndarray, starts: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Each operator's value over its run of arguments (runs given by starts and lengths k)."""
    lo = np.minimum.reduceat(child_value, starts)
    hi = np.maximum.reduceat(child_value, starts)
    sm = np.add.reduceat(child_value, starts) % 10
    # the median from each run's histogram of digits: the values of rank (k-1)//2 and k//2, averaged down
    run = np.repeat(np.arange(len(k)), k)
    hist = np.bincount(run * 10 + child_value, minlength=len(k) * 10).reshape(len(k), 10)
    below = np.cumsum(hist, axis=1)  # below[r, v]: arguments of run r that are <= v
    lower = (below <= ((k - 1) // 2)[:, None]).sum(1)
    upper = (below <= (k // 2)[:, None]).sum(1)
    med = (lower + upper) // 2
    return np.choose(op, [lo, hi, med, sm])  # operator codes index OPERATORS: MIN, MAX, MED, SM


def draw_chunk(seed: int, split: str, chunk: int, cfg: TreeSettings = TreeSettings(), size: int = CHUNK):
    """Chunk `chunk` of (seed, split): its first `size` accepted trees, from its own generator."""
    rng = np.random.default_rng(mixed_seed("lra-listops", VERSION, seed, split, chunk))
    parts, count = [], 0
    while count < size:
        part = _draw_round(rng, ROUND, cfg)
        parts.append(part)
        count += len(part["labels"])
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    n_tokens = int(out["lengths"][:size].sum())
    return {"tokens": out["tokens"][:n_tokens], "lengths": out["lengths"][:size],
            "labels": out["labels"][:size], "depths": out["depths"][:size]}


# ----------------------------------------------------------------------------------------- the splits
def expression_hash(ids) -> bytes:
    """A 16-byte digest of an expression's token ids (bytes, a numpy array or a tensor of ids < 256)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.numpy()
    return hashlib.blake2b(np.asarray(ids, dtype=np.uint8).tobytes(), digest_size=16).digest()


def generate_split(seed: int, split: str, n: int, cfg: TreeSettings = TreeSettings(),
                   exclude: Optional[Set[bytes]] = None) -> Dict[str, object]:
    """n distinct expressions of (seed, split) none of which hashes into `exclude`: {"tokens" uint8,
    "offsets" int64 (n + 1,), "labels" int64, "depths" int64, "hashes": a list of bytes}."""
    check_int("n", n)
    exclude = exclude if exclude is not None else set()
    seen: Set[bytes] = set()
    tokens: List[np.ndarray] = []
    lengths: List[int] = []
    labels: List[int] = []
    depths: List[int] = []
    hashes: List[bytes] = []
    chunk, idle = 0, 0
    while len(tokens) < n:
        part = draw_chunk(seed, split, chunk, cfg)
        chunk, before = chunk + 1, len(tokens)
        ends = np.cumsum(part["lengths"])
        for i, end in enumerate(ends.tolist()):
            ids = part["tokens"][end - int(part["lengths"][i]):end]
            h = expression_hash(ids)
            if h in seen or h in exclude:
                continue
            seen.add(h)
            hashes.append(h)
            tokens.append(ids)
            lengths.append(len(ids))
            labels.append(int(part["labels"][i]))
            depths.append(int(part["depths"][i]))
            if len(tokens) == n:
                break
        idle = idle + 1 if len(tokens) == before else 0
        if idle == 20:  # 20,000 draws and nothing new: the settings allow fewer distinct expressions than asked
            raise ValueError(f"{split} needs {n} distinct expressions, but only {len(tokens)} were found in "
                             f"{chunk * CHUNK} draws with {cfg}: ask for fewer, or allow longer ones")
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return {"tokens": torch.from_numpy(np.concatenate(tokens)), "offsets": torch.from_numpy(offsets),
            "labels": torch.tensor(labels, dtype=torch.int64), "depths": torch.tensor(depths, dtype=torch.int64),
            "hashes": hashes}


def generate_splits(seed: int, sizes: Sequence[int] = (96000, 2000, 2000),
                    cfg: TreeSettings = TreeSettings()) -> Dict[str, Dict[str, object]]:
    """train, val and test of `seed` (generate_split's dicts), pairwise disjoint."""
    out: Dict[str, Dict[str, object]] = {}
    taken: Set[bytes] = set()
    for split, n in zip(SPLITS, sizes):
        out[split] = generate_split(seed, split, n, cfg, exclude=taken)
        taken |= set(out[split]["hashes"])
    return out


# ---------------------------------------------------------------------------------- the evaluator
def evaluate(expression: str) -> int:
    """The value of an expression given as text (parentheses allowed, as the release writes them), computed
    with a stack over the words: a different path from the generator's level-wise computation, for tests."""
    stack: List[list] = []
    result = None
    for word in expression.split():
        if word in ("(", ")"):
            continue
        if word in OPERATORS:
            stack.append([word])
            continue
        if word == TOKENS[END_ID]:
            op, *args = stack.pop()
            if not args:
                raise ValueError(f"{op} without arguments")
            value = _value(op, args)
        elif word.isdigit() and len(word) == 1:
            value = int(word)
        else:
            raise ValueError(f"unknown token {word!r}")
        if stack:
            stack[-1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError("more than one expression")
    if stack or result is None:
        raise ValueError("an unfinished expression")
    return result


def _value(op: str, args: List[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    ordered = sorted(args)  # [MED: the middle one, or the two middle ones' mean rounded down
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
